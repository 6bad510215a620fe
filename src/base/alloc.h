/* The one allocator every uvmqtt allocation goes through, so tests can swap
 * it (and fail the i-th allocation) with uvmqtt_replace_allocator(). */
#ifndef UVMQTT_BASE_ALLOC_H
#define UVMQTT_BASE_ALLOC_H

#include <stddef.h>

void *uvmqtt__malloc(size_t size);
void *uvmqtt__calloc(size_t count, size_t size);
void *uvmqtt__realloc(void *ptr, size_t size);
void uvmqtt__free(void *ptr);

#endif
