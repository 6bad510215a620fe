/* The poller: one epoll set per loop for every TCP socket on it.
 *
 * A gateway holds thousands of idle connections in one loop. With a
 * uv_poll_t per socket, each costs 160 bytes of handle and a slot in
 * libuv's fd-indexed watcher table; here the sockets sit in one epoll set of
 * our own, and one uv_poll_t watches that set's descriptor. A socket's
 * registration is then its fd and an events mask in the transport, and the
 * kernel's epoll entry.
 *
 * The poller also brings the callbacks that must come from the loop rather
 * than from inside a call (a transport's close completing, the next address
 * after a failed attempt): a transport is deferred onto a list that one
 * uv_idle_t works through, in order.
 *
 * Its handles exist only while needed (the epoll set from the first socket
 * on, active while a socket is watched; the idle handle while a transport
 * waits), so a loop with no connection open holds nothing active.
 */
#ifndef UVMQTT_POLLER_H
#define UVMQTT_POLLER_H

#include <stdint.h>
#include <uv.h>

typedef struct uvmqtt__poller_s uvmqtt__poller_t;
struct uvmqtt__transport_s;

/* A new poller on `loop`, or NULL when out of memory. Opens nothing. */
uvmqtt__poller_t *uvmqtt__poller_new(uv_loop_t *loop);

/* Closes the poller's handles; the memory goes in their close callbacks
 * (at once when none is open). No transport may be watched or deferred
 * then. Safe from inside the poller's own callbacks. */
void uvmqtt__poller_free(uvmqtt__poller_t *p);

uv_loop_t *uvmqtt__poller_loop(const uvmqtt__poller_t *p);

/* Makes the poller watch `fd` for `events` (UV_READABLE, UV_WRITABLE;
 * errors and hang-ups always) on behalf of `t`, where `was` is what it
 * watched so far (0: not registered). 0 removes the registration. Returns 0
 * or a negative error (epoll's, as -errno), with nothing changed then. */
int uvmqtt__poller_watch(uvmqtt__poller_t *p, struct uvmqtt__transport_s *t, int fd, int was,
                         int events);

/* The socket of `t` is closing: releases what the poller kept for it
 * beyond the registration (which watch(..., 0) removed). */
void uvmqtt__poller_forget(uvmqtt__poller_t *p, struct uvmqtt__transport_s *t);

/* How many sockets of this loop may have a poll handle of their own (see
 * poller.c), for tests. */
void uvmqtt__poller_set_direct_max(uvmqtt__poller_t *p, uint32_t n);

/* Queues `t` for uvmqtt__transport_tcp_deferred() from the loop, after the
 * transports queued before it. `t` must not be queued already. */
void uvmqtt__poller_defer(uvmqtt__poller_t *p, struct uvmqtt__transport_s *t);

/* The poller's calls into the TCP transport (tcp.c). `status` is 0 or a
 * negative error (the socket reported one); `events` what is ready, among
 * what it watches. */
void uvmqtt__transport_tcp_ready(struct uvmqtt__transport_s *t, int status, int events);
void uvmqtt__transport_tcp_deferred(struct uvmqtt__transport_s *t);

#endif
