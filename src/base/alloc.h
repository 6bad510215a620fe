/* The one allocator every uvmqtt allocation goes through, so tests can swap
 * it (and fail the i-th allocation) with uvmqtt_replace_allocator(). */
#ifndef UVMQTT_BASE_ALLOC_H
#define UVMQTT_BASE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *uvmqtt__malloc(size_t size);
void *uvmqtt__calloc(size_t count, size_t size);
void *uvmqtt__realloc(void *ptr, size_t size);
void uvmqtt__free(void *ptr);

/* Copies of caller-owned options. On failure they return NULL and set *err
 * to UVMQTT_ENOMEM (and leave it alone otherwise), so that a run of copies
 * checks once at the end. strdup of NULL is NULL without an error. */
char *uvmqtt__strdup(const char *s, int *err);
uint8_t *uvmqtt__memdup(const void *p, size_t n, int *err);

#endif
