#include "transport/read_pool.h"

#include <assert.h>

#include "base/alloc.h"

/* Thread-local: every loop of a thread runs its callbacks one at a time, so
 * they may share the buffer; loops on other threads get their own. */
static _Thread_local char *pool_buf;
static _Thread_local unsigned pool_refs;
static _Thread_local unsigned pool_size; /* 0 until the first allocation */

void uvmqtt__read_pool_ref(void) {
  pool_refs++;
}

void uvmqtt__read_pool_unref(void) {
  assert(pool_refs > 0);
  if (--pool_refs == 0) {
    uvmqtt__free(pool_buf);
    pool_buf = NULL;
    pool_size = 0;
  }
}

void uvmqtt__read_pool_alloc(uv_buf_t *buf) {
  if (pool_size == 0) pool_size = UVMQTT__READ_POOL_MIN;
  if (pool_buf == NULL) pool_buf = uvmqtt__malloc(pool_size);
  if (pool_buf == NULL) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init(pool_buf, pool_size);
}

void uvmqtt__read_pool_filled(void) {
  if (pool_size >= UVMQTT__READ_POOL_SIZE) return;
  uvmqtt__free(pool_buf);
  pool_buf = NULL;
  pool_size = UVMQTT__READ_POOL_SIZE;
}

size_t uvmqtt__read_pool_bytes(void) {
  return pool_buf != NULL ? pool_size : 0;
}
