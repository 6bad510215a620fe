/* The read pool: one buffer shared by every transport on a thread.
 *
 * libuv calls alloc_cb, reads, and hands the bytes to read_cb before it calls
 * alloc_cb again, and the transports' read callbacks consume the bytes before
 * they return. So one buffer serves every connection of a thread, and an idle
 * connection holds no read buffer at all. The buffer is allocated on the first
 * read after a transport takes a reference and freed when the last reference
 * goes.
 *
 * It starts at 16 KiB, which covers what idle and lightly loaded
 * connections read, and grows to 64 KiB once a read fills it: a busy
 * connection then reads in large steps, as libuv's streams do, while a
 * gateway of quiet connections spends less of its memory on input.
 */
#ifndef UVMQTT_READ_POOL_H
#define UVMQTT_READ_POOL_H

#include <stddef.h>
#include <uv.h>

#define UVMQTT__READ_POOL_MIN  16384u
#define UVMQTT__READ_POOL_SIZE 65536u

/* A transport takes a reference when it starts reading and drops it when it
 * stops reading or closes. Neither call allocates. */
void uvmqtt__read_pool_ref(void);
void uvmqtt__read_pool_unref(void);

/* For a libuv alloc_cb: hands out the shared buffer, allocating it on first
 * use. When the allocation fails, *buf is empty and libuv then reports
 * UV_ENOBUFS to the read callback. */
void uvmqtt__read_pool_alloc(uv_buf_t *buf);

/* A read filled the buffer handed out: the next one is the full size.
 * Call once the bytes are consumed. */
void uvmqtt__read_pool_filled(void);

/* Bytes the pool holds right now (0, UVMQTT__READ_POOL_MIN or
 * UVMQTT__READ_POOL_SIZE), for tests. */
size_t uvmqtt__read_pool_bytes(void);

#endif
