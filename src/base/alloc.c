#include "base/alloc.h"

#include <stdlib.h>
#include <string.h>

#include "uvmqtt/alloc.h"
#include "uvmqtt/errors.h"

static uvmqtt_malloc_func g_malloc = malloc;
static uvmqtt_realloc_func g_realloc = realloc;
static uvmqtt_calloc_func g_calloc = calloc;
static uvmqtt_free_func g_free = free;

int uvmqtt_replace_allocator(uvmqtt_malloc_func m, uvmqtt_realloc_func r, uvmqtt_calloc_func c,
                             uvmqtt_free_func f) {
  if (m == NULL || r == NULL || c == NULL || f == NULL) return UVMQTT_EINVAL;
  g_malloc = m;
  g_realloc = r;
  g_calloc = c;
  g_free = f;
  return 0;
}

void *uvmqtt__malloc(size_t size) {
  /* malloc(0) may return NULL; callers treat NULL as failure, so ask for 1. */
  return g_malloc(size ? size : 1);
}

void *uvmqtt__calloc(size_t count, size_t size) {
  return g_calloc(count ? count : 1, size ? size : 1);
}

void *uvmqtt__realloc(void *ptr, size_t size) {
  return g_realloc(ptr, size ? size : 1);
}

void uvmqtt__free(void *ptr) {
  if (ptr != NULL) g_free(ptr);
}

char *uvmqtt__strdup(const char *s, int *err) {
  if (s == NULL) return NULL;
  size_t n = strlen(s);
  char *copy = uvmqtt__malloc(n + 1);
  if (copy == NULL) {
    *err = UVMQTT_ENOMEM;
    return NULL;
  }
  memcpy(copy, s, n + 1);
  return copy;
}

uint8_t *uvmqtt__memdup(const void *p, size_t n, int *err) {
  uint8_t *copy = uvmqtt__malloc(n);
  if (copy == NULL) {
    *err = UVMQTT_ENOMEM;
    return NULL;
  }
  if (n) memcpy(copy, p, n);
  return copy;
}
