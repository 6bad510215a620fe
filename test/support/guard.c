#include "guard.h"

#include <stdlib.h>
#include <string.h>

/* The usable bytes start out holding a fixed pattern rather than whatever the
 * heap had, so a failing run repeats byte for byte. */
#define FILL_BYTE 0x5A

uint8_t *guard_alloc(size_t cap) {
  uint8_t *base = malloc(cap + 2 * GUARD_SIZE);
  if (base == NULL) return NULL;
  memset(base, GUARD_BYTE, GUARD_SIZE);
  memset(base + GUARD_SIZE, FILL_BYTE, cap);
  memset(base + GUARD_SIZE + cap, GUARD_BYTE, GUARD_SIZE);
  return base + GUARD_SIZE;
}

int guard_intact(const uint8_t *buf, size_t cap) {
  for (size_t i = 0; i < GUARD_SIZE; i++) {
    if (buf[-(ptrdiff_t)GUARD_SIZE + (ptrdiff_t)i] != GUARD_BYTE) return 0;
    if (buf[cap + i] != GUARD_BYTE) return 0;
  }
  return 1;
}

void guard_free(uint8_t *buf) {
  if (buf != NULL) free(buf - GUARD_SIZE);
}
