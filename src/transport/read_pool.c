#include "transport/read_pool.h"

#include <assert.h>

#include "base/alloc.h"

/* Thread-local: every loop of a thread runs its callbacks one at a time, so
 * they may share the buffer; loops on other threads get their own. */
static _Thread_local char *pool_buf;
static _Thread_local unsigned pool_refs;

void uvmqtt__read_pool_ref(void) {
  pool_refs++;
}

void uvmqtt__read_pool_unref(void) {
  assert(pool_refs > 0);
  if (--pool_refs == 0) {
    uvmqtt__free(pool_buf);
    pool_buf = NULL;
  }
}

void uvmqtt__read_pool_alloc(uv_buf_t *buf) {
  if (pool_buf == NULL) pool_buf = uvmqtt__malloc(UVMQTT__READ_POOL_SIZE);
  if (pool_buf == NULL) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init(pool_buf, UVMQTT__READ_POOL_SIZE);
}

size_t uvmqtt__read_pool_bytes(void) {
  return pool_buf != NULL ? UVMQTT__READ_POOL_SIZE : 0;
}
