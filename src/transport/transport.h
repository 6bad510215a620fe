/* The transport interface: a byte stream to the broker over libuv.
 *
 * One small vtable that TCP, TLS and WebSocket fill. The
 * transport has no timer of its own: the client enforces the connect timeout
 * by closing it, and its socket sits in the loop's poller (poller.h), so an
 * idle connection costs the fields below.
 */
#ifndef UVMQTT_TRANSPORT_H
#define UVMQTT_TRANSPORT_H

#include <stdint.h>
#include <uv.h>

#include "transport/poller.h"

typedef struct uvmqtt__transport_s uvmqtt__transport_t;

typedef struct {
  /* The stream is up (status 0) or every resolved address failed (status is
   * the last error: UV_ECONNREFUSED, UV_EAI_NONAME...). After a failure the
   * transport is already idle again: close it (on_close follows) before
   * reuse. */
  void (*on_connect)(uvmqtt__transport_t *t, int status);
  /* Bytes arrived (nread > 0; the buffer is the shared read pool's and is
   * valid only during the call: consume or copy), or the stream ended
   * (nread < 0: UV_EOF or an error). After nread < 0 no more reads come. */
  void (*on_read)(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data);
  /* A write that write() left pending finished; `arg` is the one given to
   * write(). Called exactly once for every write() that returned 0, also when
   * the transport is closed first (status UV_ECANCELED). */
  void (*on_write)(uvmqtt__transport_t *t, int status, void *arg);
  /* close() finished: every handle is closed; the struct may be freed. */
  void (*on_close)(uvmqtt__transport_t *t);
} uvmqtt__transport_cbs_t;

typedef struct {
  /* Resolve `host` (uv_getaddrinfo, never blocking; a bare name or address,
   * no brackets) and connect to each address in turn until one succeeds.
   * Reading starts as soon as the stream is up. Returns 0 or a negative error
   * (nothing started then): UVMQTT_EBUSY when not idle, UVMQTT_EINVAL,
   * UVMQTT_ENOMEM, or a libuv error. */
  int (*connect)(uvmqtt__transport_t *t, const char *host, uint16_t port);
  /* Queue bufs for writing (uv_try_write first, uv_write for the rest). The
   * buffers must stay valid until on_write(arg). Returns 1 when everything
   * was written at once (no on_write follows: release the buffers now), 0
   * when the rest is pending (on_write follows), or a negative error (no
   * on_write follows; part of the bytes may have gone, so close the
   * transport): UVMQTT_ENOTCONN when not open, UVMQTT_ENOMEM, or a libuv
   * error such as UV_EPIPE. */
  int (*write)(uvmqtt__transport_t *t, const uv_buf_t *bufs, unsigned nbufs, void *arg);
  /* Half-closes: once the writes accepted so far are out (and, for TLS, a
   * close_notify after them), the write side shuts down (FIN) while reads
   * go on, so the peer reads everything and closes its side. Closing the
   * socket with unread input would send RST instead and the peer could drop
   * what it had not processed yet. Returns 0 or a negative error
   * (UVMQTT_ENOTCONN when not open). */
  int (*shutdown)(uvmqtt__transport_t *t);
  /* Bytes accepted by write() whose on_write has not come yet. */
  size_t (*write_queue_size)(const uvmqtt__transport_t *t);
  /* Stop everything; on_close follows (always asynchronously). Safe to call
   * from any callback, in any state, twice. */
  void (*close)(uvmqtt__transport_t *t);
} uvmqtt__transport_vtbl_t;

typedef enum {
  UVMQTT__T_IDLE = 0,
  UVMQTT__T_RESOLVING,
  UVMQTT__T_CONNECTING,
  UVMQTT__T_OPEN,
  UVMQTT__T_CLOSING,
  UVMQTT__T_CLOSED
} uvmqtt__transport_state_t;

struct uvmqtt__transport_s {
  void *data; /* the owner's */
  const uvmqtt__transport_vtbl_t *vt;
  const uvmqtt__transport_cbs_t *cb;
  uvmqtt__poller_t *poller; /* the loop's (the owner's) */
  /* Never both at once: a deferred transport's socket is out of the
   * poller (close_handle releases the handle before it defers), and
   * nothing registers the socket again until the deferral has run. */
  union {
    /* The socket's own poll handle, for the first few sockets of a loop
     * (poller.c); NULL: the socket is in the loop's epoll set. */
    struct uvmqtt__poller_direct_s *direct;
    /* While `deferred`: the poller's list of transports waiting for a
     * callback from the loop. */
    struct uvmqtt__transport_s *defer_next;
  };
  size_t pending_bytes; /* accepted by write(), not yet completed */
  /* Writes the socket did not take at once, in order (tcp.c). */
  struct uvmqtt__tcp_write_s *wq_head, *wq_tail;
  struct uvmqtt__dial_s *dial; /* during a connection attempt only */
  const struct sockaddr *bind; /* the local address to connect from, or NULL (the owner's) */
  uint64_t acked;              /* the peer's acknowledged byte count when last asked */
  uint64_t sent_total;         /* bytes accepted by write() on this connection */
  /* The WebSocket layer's state while it sits on top. It cannot live behind
   * t->cb as TLS's does, because over TLS t->cb is TLS's. */
  void *outer;
  /* The HTTP proxy to tunnel through (the owner's, see
   * uvmqtt__transport_tcp_set_proxy), and the CONNECT step's state while
   * it runs. */
  const struct uvmqtt__proxy_config_s *proxy_cfg;
  struct uvmqtt__proxy_step_s *proxy;
  int fd; /* the socket, or -1 */
  uint8_t state;
  /* The socket is closing, or a callback waits for the loop: the poller
   * calls back (uvmqtt__transport_tcp_deferred) before anything goes on. */
  uint8_t deferred;
  uint8_t reading;
  uint8_t events;       /* what the poller watches (UV_READABLE, UV_WRITABLE); 0: not in it */
  uint8_t shut_pending; /* shutdown() waits for the queued writes */
};

/* Prepares a TCP transport on the poller's loop: clears every field except
 * `data`. Never allocates. The poller must outlive the transport's close. */
void uvmqtt__transport_tcp_init(uvmqtt__transport_t *t, uvmqtt__poller_t *poller,
                                const uvmqtt__transport_cbs_t *cb);

/* Like connect(), but tries the entries of `list` in order (each with the
 * port in its own address) instead of resolving a name, so tests can build a
 * list whose first addresses refuse. The list stays the caller's and must
 * outlive the attempt. Returns 0, UVMQTT_EINVAL for a list without an IPv4
 * or IPv6 address, or UVMQTT_EBUSY when the transport is not idle. */
int uvmqtt__transport_tcp_connect_addrs(uvmqtt__transport_t *t, struct addrinfo *list);

/* 1 when the peer acknowledged more of our bytes since the last call, and
 * not yet all of the first `mark` bytes written: a sign of life while a
 * PINGREQ (the mark's last byte) waits behind data in the kernel's send
 * buffer. Once the peer's TCP has the PINGREQ this says 0, and keepalive's
 * own wait for an answer decides. 0 also where the kernel does not say. */
int uvmqtt__transport_acked_progress(uvmqtt__transport_t *t, uint64_t mark);

/* Sends at once what the socket takes of bufs, queuing nothing (for a
 * layer above that copies the rest itself). Returns the bytes sent,
 * UV_EAGAIN when none could go (or writes are queued: the order holds),
 * UVMQTT_ENOTCONN when not open, or a socket error. */
int uvmqtt__transport_tcp_try_write(uvmqtt__transport_t *t, const uv_buf_t *bufs, unsigned nbufs);
/* Makes the next connect() go through the HTTP proxy `cfg` (NULL: none):
 * it reaches the proxy instead, asks it with CONNECT for host:port, and
 * reports on_connect only once the proxy answered 2xx (or with
 * UVMQTT_EPROXY, UVMQTT_EPROXYAUTH, UVMQTT_EPROXYHEADER or
 * UVMQTT_EPROXYCLOSED). TLS and WebSocket layered above then run through
 * the tunnel unchanged. Call after the init functions (TCP, TLS or
 * WebSocket), before connect(); `cfg` must outlive the attempt. */
void uvmqtt__transport_tcp_set_proxy(uvmqtt__transport_t *t,
                                     const struct uvmqtt__proxy_config_s *cfg);

#define uvmqtt__transport_connect(t, host, port) ((t)->vt->connect((t), (host), (port)))
#define uvmqtt__transport_write(t, b, n, a)      ((t)->vt->write((t), (b), (n), (a)))
#define uvmqtt__transport_close(t)               ((t)->vt->close(t))
#define uvmqtt__transport_shutdown(t)            ((t)->vt->shutdown(t))

#endif
