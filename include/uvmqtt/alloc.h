/** \file
 * uvmqtt: the allocator every allocation of the library goes through.
 *
 * Free of libuv, so the codec and session layers can use it; <uvmqtt.h>
 * includes it.
 */
#ifndef UVMQTT_ALLOC_H
#define UVMQTT_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Allocator ---------------------------------------------------------- */

/** Allocates like malloc(). */
typedef void *(*uvmqtt_malloc_func)(size_t size);
/** Resizes like realloc(). */
typedef void *(*uvmqtt_realloc_func)(void *ptr, size_t size);
/** Allocates zeroed memory like calloc(). */
typedef void *(*uvmqtt_calloc_func)(size_t count, size_t size);
/** Releases like free(). */
typedef void (*uvmqtt_free_func)(void *ptr);

/** Replaces the allocator every uvmqtt allocation uses. Call before any other
 * uvmqtt function. Returns 0 or UVMQTT_EINVAL (a NULL function). */
int uvmqtt_replace_allocator(uvmqtt_malloc_func m, uvmqtt_realloc_func r, uvmqtt_calloc_func c,
                             uvmqtt_free_func f);

#ifdef __cplusplus
}
#endif
#endif
