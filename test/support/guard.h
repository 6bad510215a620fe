/* Guard bytes around encode buffers: any write outside [buf, buf+cap) shows. */
#ifndef TEST_GUARD_H
#define TEST_GUARD_H

#include <stddef.h>
#include <stdint.h>

#define GUARD_SIZE 32
#define GUARD_BYTE 0xA5

/* A buffer of `cap` usable bytes between two guard zones (heap). */
uint8_t *guard_alloc(size_t cap);
/* 1 if both guard zones are intact. */
int guard_intact(const uint8_t *buf, size_t cap);
void guard_free(uint8_t *buf);

#endif
