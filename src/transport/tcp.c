/* The TCP transport: resolve a name, try each address until one connects,
 * then a non-blocking socket in the loop's poller (poller.h).
 *
 * Why not uv_tcp_t: a gateway holds thousands of idle connections, and a
 * uv_tcp_t is 248 bytes of stream machinery (write queues, connect and
 * shutdown requests, accept state), and even a uv_poll_t is 160. The socket
 * calls the stream would make are few and done here: connect, recv,
 * sendmsg, shutdown. State that only a connection attempt needs (the
 * resolver's request, the address list) lives in one allocation while the
 * attempt runs, and writes the socket did not take at once wait in a FIFO,
 * so an open idle connection holds its fd and a few fields.
 *
 * With an HTTP proxy, the connection goes to the proxy, and a CONNECT step
 * runs between the TCP connection and on_connect: the owner (or TLS or
 * WebSocket above) sees a stream to the broker, as without a proxy. */
#include "transport/transport.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/alloc.h"
#include "transport/http.h"
#include "transport/proxy.h"
#include "transport/read_pool.h"
#include "uvmqtt/errors.h"

/* A read that fills the pool's buffer may have more behind it: read again,
 * up to this many times per readiness event (as libuv's streams do), so one
 * busy connection cannot starve the others. */
#define READS_PER_EVENT 32

/* sendmsg takes at most IOV_MAX buffers at a time. */
#define MAX_IOV 64

/* The CONNECT step of one connection attempt. */
typedef struct uvmqtt__proxy_step_s {
  char *head; /* the proxy's answer while it arrives */
  size_t head_len;
  uint8_t done;          /* the proxy answered 2xx: the tunnel is up */
  uint8_t write_pending; /* the request is still in the write queue */
  size_t request_len;
  char request[];
} proxy_step_t;

/* A connection attempt: the resolver's request and the addresses to try. */
typedef struct uvmqtt__dial_s {
  uv_getaddrinfo_t req;
  uvmqtt__transport_t *t; /* NULL once the transport no longer waits for the resolver */
  struct addrinfo *addrs; /* resolved (ours to free), or NULL for a caller's list */
  struct addrinfo *next_addr;
  int last_error;
  uint8_t resolving; /* the resolver has not called back yet */
} dial_t;

/* Bytes write() accepted that the socket has not taken yet, with the
 * owner's argument; completed in order. */
typedef struct uvmqtt__tcp_write_s {
  struct uvmqtt__tcp_write_s *next;
  void *arg;
  size_t bytes; /* what is left */
  unsigned first, nbufs;
  uv_buf_t bufs[];
} write_req_t;

static void try_next_addr(uvmqtt__transport_t *t);

static int os_error(void) {
  return errno == 0 ? UV_EIO : -errno;
}

static void start_reading(uvmqtt__transport_t *t) {
  uvmqtt__read_pool_ref();
  t->reading = 1;
}

/* Watches what the connection needs now: input while reading, room to
 * write while writes wait (or the connect completes). */
static int watch(uvmqtt__transport_t *t) {
  if (t->fd < 0 || t->deferred) return 0;
  int events = 0;
  if (t->state == UVMQTT__T_CONNECTING || t->wq_head != NULL) events |= UV_WRITABLE;
  if (t->reading) events |= UV_READABLE;
  if (events == t->events) return 0;
  int r = uvmqtt__poller_watch(t->poller, t, t->fd, t->events, events);
  if (r == 0) t->events = (uint8_t)events;
  return r;
}

static void unwatch(uvmqtt__transport_t *t) {
  (void)uvmqtt__poller_watch(t->poller, t, t->fd, t->events, 0);
  t->events = 0;
}

static void stop_reading(uvmqtt__transport_t *t) {
  if (!t->reading) return;
  t->reading = 0;
  (void)watch(t);
  uvmqtt__read_pool_unref();
}

static void proxy_free(uvmqtt__transport_t *t) {
  if (t->proxy == NULL) return;
  uvmqtt__free(t->proxy->head);
  uvmqtt__free(t->proxy);
  t->proxy = NULL;
}

/* The attempt is over (connected, failed or closed). A resolver still
 * running keeps the block until it calls back. */
static void dial_end(uvmqtt__transport_t *t) {
  dial_t *d = t->dial;
  if (d == NULL) return;
  t->dial = NULL;
  if (d->addrs != NULL) uv_freeaddrinfo(d->addrs);
  d->addrs = NULL;
  d->next_addr = NULL;
  d->t = NULL;
  if (!d->resolving) uvmqtt__free(d);
}

static dial_t *dial_begin(uvmqtt__transport_t *t, int initial_error) {
  dial_t *d = uvmqtt__malloc(sizeof *d);
  if (d == NULL) return NULL;
  memset(d, 0, sizeof *d);
  d->t = t;
  d->req.data = d;
  d->last_error = initial_error;
  t->dial = d;
  return d;
}

/* Completes every write still queued with `status` (UV_ECANCELED at a
 * close), in order. */
static void fail_writes(uvmqtt__transport_t *t, int status) {
  while (t->wq_head != NULL) {
    write_req_t *w = t->wq_head;
    t->wq_head = w->next;
    if (t->wq_head == NULL) t->wq_tail = NULL;
    t->pending_bytes -= w->bytes;
    void *arg = w->arg;
    uvmqtt__free(w);
    if (t->proxy != NULL && arg == t->proxy) {
      t->proxy->write_pending = 0;
      continue;
    }
    t->cb->on_write(t, status, arg);
  }
}

/* Completes a close once the socket is closed. Only ever reached from a
 * libuv callback, so on_close is always asynchronous. */
static void maybe_finish_close(uvmqtt__transport_t *t) {
  if (t->state != UVMQTT__T_CLOSING) return;
  if (t->deferred || t->fd >= 0) return;
  dial_end(t);
  proxy_free(t);
  if (t->reading) {
    t->reading = 0;
    uvmqtt__read_pool_unref();
  }
  t->state = UVMQTT__T_CLOSED;
  t->cb->on_close(t);
}

/* From the loop, after close_handle: the socket closes, and what waited
 * for it goes on. */
void uvmqtt__transport_tcp_deferred(uvmqtt__transport_t *t) {
  t->deferred = 0;
  if (t->fd >= 0) {
    close(t->fd);
    t->fd = -1;
  }
  /* Writes queued on a connection that is gone: the close, or a failed
   * proxy step, ends them. */
  fail_writes(t, UV_ECANCELED);
  if (t->state == UVMQTT__T_CONNECTING)
    try_next_addr(t);
  else
    maybe_finish_close(t);
}

/* Takes the socket (if any) out of the poller, and has the poller call
 * back from the loop, where the socket closes and the transport goes on
 * (the next address, or on_close): the owner never hears of either from
 * inside its own call. */
static void close_handle(uvmqtt__transport_t *t) {
  if (t->deferred) return;
  unwatch(t);
  uvmqtt__poller_forget(t->poller, t);
  t->deferred = 1;
  uvmqtt__poller_defer(t->poller, t);
}

static void proxy_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data);

/* Hands input to the owner (or the proxy step) until the socket is empty,
 * the owner stops reading or closes, or the per-event bound is reached. */
static void do_read(uvmqtt__transport_t *t) {
  for (int i = 0; i < READS_PER_EVENT && t->reading && t->state == UVMQTT__T_OPEN; i++) {
    uv_buf_t buf;
    uvmqtt__read_pool_alloc(&buf);
    ssize_t n;
    if (buf.base == NULL) {
      n = UV_ENOBUFS; /* as a libuv stream reports a read without a buffer */
    } else {
      do
        n = recv(t->fd, buf.base, buf.len, 0);
      while (n < 0 && errno == EINTR);
      if (n == 0) n = UV_EOF;
      if (n < 0 && n != UV_EOF) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        n = os_error();
      }
    }
    if (t->proxy != NULL && !t->proxy->done) {
      proxy_read(t, n, (const uint8_t *)buf.base);
      if (n < 0 || (size_t)n < buf.len) return;
      continue;
    }
    if (n > 0) {
      t->cb->on_read(t, n, (const uint8_t *)buf.base);
      if ((size_t)n < buf.len) return;
      uvmqtt__read_pool_filled();
      continue;
    }
    stop_reading(t);
    t->cb->on_read(t, n, NULL);
    return;
  }
}

/* One sendmsg() carries at most this much: loopback TCP builds segments of
 * up to 64 KiB and pushes each call's as one burst. Measured on loopback
 * into a fast reader: the same bytes cost the kernel about 40% less time
 * in 64 KiB calls than in calls of 150 KiB and more. */
#define SEND_CHUNK (64u * 1024u)

static ssize_t send_iov(int fd, struct iovec *iov, unsigned n) {
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = n;
  ssize_t r;
  /* MSG_NOSIGNAL: a peer that closed gives EPIPE, not a SIGPIPE that would
   * end the application. */
  do
    r = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  return r;
}

/* Sends what the socket takes of bufs, in calls of at most SEND_CHUNK
 * bytes and MAX_IOV buffers, until it takes less than offered. Returns the
 * bytes sent, 0 when it takes nothing now, or a negative error. */
static ssize_t send_bufs(int fd, const uv_buf_t *bufs, unsigned nbufs) {
  size_t sent = 0, off = 0; /* off: into bufs[0] */
  while (nbufs > 0) {
    struct iovec iov[MAX_IOV];
    unsigned n = 0;
    size_t want = 0;
    while (n < nbufs && n < MAX_IOV && want < SEND_CHUNK) {
      size_t len = bufs[n].len - (n == 0 ? off : 0);
      if (len > SEND_CHUNK - want) len = SEND_CHUNK - want;
      iov[n].iov_base = bufs[n].base + (n == 0 ? off : 0);
      iov[n].iov_len = len;
      want += len;
      n++;
    }
    ssize_t r = send_iov(fd, iov, n);
    if (r < 0) {
      if (sent > 0) return (ssize_t)sent;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return os_error();
    }
    sent += (size_t)r;
    if ((size_t)r < want) break;
    /* Past what went: whole buffers, then into the next. */
    size_t left = (size_t)r;
    while (nbufs > 0 && left >= bufs[0].len - off) {
      left -= bufs[0].len - off;
      off = 0;
      bufs++;
      nbufs--;
    }
    off += left;
  }
  return (ssize_t)sent;
}

/* Moves `w` past `n` sent bytes. */
static void advance(write_req_t *w, size_t n) {
  w->bytes -= n;
  while (n > 0) {
    uv_buf_t *b = &w->bufs[w->first];
    if (n < b->len) {
      b->base += n;
      b->len -= n;
      return;
    }
    n -= b->len;
    w->first++;
  }
  while (w->first < w->nbufs && w->bufs[w->first].len == 0)
    w->first++;
}

static void proxy_write_done(uvmqtt__transport_t *t, int status);

/* The socket has room: sends the queued writes in order, completing each
 * that is out. A failed send ends the connection like a read error. */
static void do_write(uvmqtt__transport_t *t) {
  while (t->wq_head != NULL && t->state == UVMQTT__T_OPEN) {
    write_req_t *w = t->wq_head;
    ssize_t n = send_bufs(t->fd, w->bufs + w->first, w->nbufs - w->first);
    if (n < 0) {
      /* Reported through the read side, once (after EOF the owner is
       * closing already): the queued writes end with the close. */
      int err = (int)n;
      unwatch(t);
      if (!t->reading) return;
      t->reading = 0;
      uvmqtt__read_pool_unref();
      t->cb->on_read(t, err, NULL);
      return;
    }
    if (n == 0) break;
    t->pending_bytes -= (size_t)n;
    advance(w, (size_t)n);
    if (w->bytes > 0) continue;
    t->wq_head = w->next;
    if (t->wq_head == NULL) t->wq_tail = NULL;
    void *arg = w->arg;
    uvmqtt__free(w);
    if (t->proxy != NULL && arg == t->proxy) {
      proxy_write_done(t, 0);
      continue;
    }
    t->cb->on_write(t, 0, arg);
  }
  if (t->wq_head == NULL && t->shut_pending && t->state == UVMQTT__T_OPEN) {
    t->shut_pending = 0;
    (void)shutdown(t->fd, SHUT_WR);
  }
  (void)watch(t);
}

static void proxy_send(uvmqtt__transport_t *t);

static void connected(uvmqtt__transport_t *t) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) {
    t->dial->last_error = -err;
    /* The socket of a failed attempt is spent: close it and try the next
     * address from its close callback. */
    close_handle(t);
    return;
  }
  /* Nagle would hold back small packets such as PINGREQ and PUBACK; a
   * failure here costs latency only, so the stream is used regardless. */
  int on = 1;
  (void)setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  t->state = UVMQTT__T_OPEN;
  start_reading(t);
  int r = watch(t);
  if (r < 0) {
    stop_reading(t);
    t->state = UVMQTT__T_CONNECTING;
    t->dial->last_error = r;
    close_handle(t);
    return;
  }
  /* Through a proxy the attempt goes on until it answers (a refusal ends
   * it like a failed connection). */
  if (t->proxy != NULL) {
    proxy_send(t);
    return;
  }
  dial_end(t);
  t->cb->on_connect(t, 0);
}

/* The poller reports a socket error (EPOLLERR) as UV_EBADF; the socket
 * itself says what happened. The socket leaves the poller, which would
 * report the error again and again. */
static int socket_error(uvmqtt__transport_t *t, int status) {
  int err = 0;
  socklen_t len = sizeof err;
  unwatch(t);
  if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) return -err;
  return status;
}

void uvmqtt__transport_tcp_ready(uvmqtt__transport_t *t, int status, int events) {
  /* An event of this batch for a socket a callback took out meanwhile. */
  if (t->deferred || t->events == 0) return;
  events &= t->events;
  if (t->state == UVMQTT__T_CONNECTING) {
    if (status < 0) {
      t->dial->last_error = socket_error(t, status);
      close_handle(t);
      return;
    }
    connected(t);
    return;
  }
  if (t->state != UVMQTT__T_OPEN) return;
  if (status < 0) {
    /* What arrived before the error (a reset) is read first, as the
     * stream would: it may say why the peer gave up. recv then reports the
     * error itself. */
    unwatch(t);
    if (t->reading) do_read(t);
    if (t->state != UVMQTT__T_OPEN || !t->reading) return;
    status = socket_error(t, status);
    stop_reading(t);
    t->cb->on_read(t, status, NULL);
    return;
  }
  /* Writes first: a read may make the owner write (an ack) or close. */
  if (events & UV_WRITABLE) do_write(t);
  if ((events & UV_READABLE) && t->state == UVMQTT__T_OPEN) do_read(t);
}

/* Binds the socket to the local address the owner chose before it
 * connects. With the port left 0, IP_BIND_ADDRESS_NO_PORT lets the kernel
 * pick the port at connect() for the 4-tuple, rather than reserving one per
 * local address at bind(): thousands of connections from a few local
 * addresses to one broker would otherwise run out of ports, or make the
 * kernel search its port range for every connection. */
static int bind_local(uvmqtt__transport_t *t) {
  int on = 1;
  int port = t->bind->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)t->bind)->sin6_port
                                            : ((const struct sockaddr_in *)t->bind)->sin_port;
#ifdef IP_BIND_ADDRESS_NO_PORT
  if (port == 0) (void)setsockopt(t->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof on);
#else
  (void)on;
  (void)port;
#endif
  socklen_t len =
      t->bind->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  return bind(t->fd, t->bind, len) == 0 ? 0 : os_error();
}

/* Opens a socket for `ai` and starts connecting. Returns 0 (the poller
 * watches the connect, or the socket closes from the loop) or an error
 * (nothing open). */
static int start_connect(uvmqtt__transport_t *t, const struct addrinfo *ai) {
  t->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (t->fd < 0) return os_error();
  int r = t->bind != NULL ? bind_local(t) : 0;
  if (r == 0) {
    int c;
    do
      c = connect(t->fd, ai->ai_addr, ai->ai_addrlen);
    while (c < 0 && errno == EINTR);
    if (c < 0 && errno != EINPROGRESS) r = os_error();
  }
  if (r != 0) {
    close(t->fd);
    t->fd = -1;
    return r;
  }
  t->events = 0;
  /* Even a connect that completed at once reports from the loop. */
  r = watch(t);
  if (r != 0) {
    t->dial->last_error = r;
    close_handle(t);
  }
  return 0;
}

static void try_next_addr(uvmqtt__transport_t *t) {
  dial_t *d = t->dial;
  while (d->next_addr != NULL) {
    struct addrinfo *ai = d->next_addr;
    d->next_addr = ai->ai_next;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    /* A local address of another family cannot reach this one. */
    if (t->bind != NULL && t->bind->sa_family != ai->ai_family) {
      d->last_error = UV_EAFNOSUPPORT;
      continue;
    }
    int r = start_connect(t, ai);
    if (r == 0) return;
    d->last_error = r;
    /* on_connect must come from the loop: the next address is tried from
     * the poller's callback. */
    close_handle(t);
    return;
  }
  int err = d->last_error;
  dial_end(t);
  t->state = UVMQTT__T_IDLE;
  t->cb->on_connect(t, err);
}

static void resolved_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  dial_t *d = req->data;
  uvmqtt__transport_t *t = d->t;
  d->resolving = 0;
  if (t == NULL || t->state == UVMQTT__T_CLOSING) {
    /* Cancelled (UV_EAI_CANCELED), or the lookup finished before the
     * cancellation reached it: either way the owner hears nothing. */
    uv_freeaddrinfo(res);
    if (t == NULL) {
      uvmqtt__free(d);
      return;
    }
    maybe_finish_close(t);
    return;
  }
  if (status < 0) {
    dial_end(t);
    t->state = UVMQTT__T_IDLE;
    t->cb->on_connect(t, status);
    return;
  }
  d->addrs = res;
  d->next_addr = res;
  t->state = UVMQTT__T_CONNECTING;
  try_next_addr(t);
}

static int can_connect(const uvmqtt__transport_t *t) {
  return t->state == UVMQTT__T_IDLE || t->state == UVMQTT__T_CLOSED;
}

static int proxy_begin(uvmqtt__transport_t *t, const char *host, uint16_t port);

static int tcp_connect(uvmqtt__transport_t *t, const char *host, uint16_t port) {
  if (host == NULL || host[0] == '\0') return UVMQTT_EINVAL;
  if (!can_connect(t)) return UVMQTT_EBUSY;
  const char *dial = host;
  uint16_t dial_port = port;
  if (t->proxy_cfg != NULL) {
    int err = proxy_begin(t, host, port);
    if (err) return err;
    dial = t->proxy_cfg->host;
    dial_port = t->proxy_cfg->port;
  }
  char service[8];
  snprintf(service, sizeof(service), "%u", (unsigned)dial_port);
  /* No AI_ADDRCONFIG: it hides ::1 (and on some systems 127.0.0.1) when the
   * machine has no other address of that family, which breaks loopback. */
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = AI_NUMERICSERV;
  dial_t *d = dial_begin(t, UV_EAI_NONAME);
  int r = d != NULL ? uv_getaddrinfo(uvmqtt__poller_loop(t->poller), &d->req, resolved_cb, dial,
                                     service, &hints)
                    : UVMQTT_ENOMEM;
  if (r < 0) {
    dial_end(t);
    proxy_free(t);
    return r;
  }
  d->resolving = 1;
  t->pending_bytes = 0;
  t->state = UVMQTT__T_RESOLVING;
  return 0;
}

int uvmqtt__transport_tcp_connect_addrs(uvmqtt__transport_t *t, struct addrinfo *list) {
  /* Without one IP address the attempt would fail before returning, and
   * on_connect must never come from inside connect. */
  const struct addrinfo *ai = list;
  while (ai != NULL && ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
    ai = ai->ai_next;
  if (ai == NULL) return UVMQTT_EINVAL;
  if (!can_connect(t)) return UVMQTT_EBUSY;
  dial_t *d = dial_begin(t, UV_EAI_ADDRFAMILY);
  if (d == NULL) return UVMQTT_ENOMEM;
  d->next_addr = list;
  t->pending_bytes = 0;
  t->state = UVMQTT__T_CONNECTING;
  try_next_addr(t);
  return 0;
}

static void proxy_fail(uvmqtt__transport_t *t, int err);

/* Queues bufs (from `skip` bytes in) behind the writes already waiting. */
static int enqueue(uvmqtt__transport_t *t, const uv_buf_t *bufs, unsigned nbufs, size_t skip,
                   size_t left, void *arg) {
  unsigned first = 0;
  while (skip >= bufs[first].len) {
    skip -= bufs[first].len;
    first++;
  }
  unsigned rest = nbufs - first;
  write_req_t *w = uvmqtt__malloc(sizeof(*w) + rest * sizeof(uv_buf_t));
  if (w == NULL) return UVMQTT_ENOMEM;
  memcpy(w->bufs, bufs + first, rest * sizeof(uv_buf_t));
  w->bufs[0].base += skip;
  w->bufs[0].len -= skip;
  w->next = NULL;
  w->arg = arg;
  w->bytes = left;
  w->first = 0;
  w->nbufs = rest;
  int r = 0;
  if (t->wq_head == NULL) {
    t->wq_head = w;
    t->wq_tail = w;
    r = watch(t);
    if (r < 0) {
      t->wq_head = t->wq_tail = NULL;
      uvmqtt__free(w);
      return r;
    }
  } else {
    t->wq_tail->next = w;
    t->wq_tail = w;
  }
  t->pending_bytes += left;
  return 0;
}

int uvmqtt__transport_tcp_try_write(uvmqtt__transport_t *t, const uv_buf_t *bufs, unsigned nbufs) {
  if (t->state != UVMQTT__T_OPEN) return UVMQTT_ENOTCONN;
  /* Behind queued bytes nothing may jump the line. */
  if (t->wq_head != NULL) return UV_EAGAIN;
  ssize_t n = send_bufs(t->fd, bufs, nbufs);
  if (n < 0) return (int)n;
  if (n == 0) return UV_EAGAIN;
  t->sent_total += (size_t)n;
  return (int)n;
}

static int tcp_write(uvmqtt__transport_t *t, const uv_buf_t *bufs, unsigned nbufs, void *arg) {
  if (t->state != UVMQTT__T_OPEN) return UVMQTT_ENOTCONN;
  size_t total = 0;
  for (unsigned i = 0; i < nbufs; i++)
    total += bufs[i].len;
  /* One attempt: a socket that takes less than it was offered is full. */
  size_t n = 0;
  if (t->wq_head == NULL) {
    ssize_t r = send_bufs(t->fd, bufs, nbufs);
    if (r < 0) return (int)r;
    n = (size_t)r;
  }
  t->sent_total += total;
  if (n == total) return 1;
  int r = enqueue(t, bufs, nbufs, n, total - n, arg);
  if (r < 0) t->sent_total -= total - n;
  return r;
}

static int tcp_shutdown(uvmqtt__transport_t *t) {
  if (t->state != UVMQTT__T_OPEN) return UVMQTT_ENOTCONN;
  if (t->wq_head != NULL) {
    /* After the queued bytes: the write side drains first. */
    t->shut_pending = 1;
    return 0;
  }
  return shutdown(t->fd, SHUT_WR) == 0 ? 0 : os_error();
}

int uvmqtt__tcp_bytes_acked(int fd, uint64_t *acked);

int uvmqtt__transport_acked_progress(uvmqtt__transport_t *t, uint64_t mark) {
  uint64_t acked;
  if (t->state != UVMQTT__T_OPEN || t->fd < 0 || uvmqtt__tcp_bytes_acked(t->fd, &acked) != 0)
    return 0;
  int progress = acked > t->acked && acked < mark;
  t->acked = acked;
  return progress;
}

static size_t tcp_write_queue_size(const uvmqtt__transport_t *t) {
  return t->pending_bytes;
}

static void tcp_close(uvmqtt__transport_t *t) {
  if (t->state == UVMQTT__T_CLOSING || t->state == UVMQTT__T_CLOSED) return;
  t->state = UVMQTT__T_CLOSING;
  /* The resolver calls back either way: with UV_EAI_CANCELED, or with its
   * result when the lookup was already running. */
  if (t->dial != NULL && t->dial->resolving) uv_cancel((uv_req_t *)&t->dial->req);
  /* The socket, if any, closes from the loop, and on_close follows there,
   * without waiting for the resolver (its callback finds the transport
   * gone). Between two attempts that callback is queued already. */
  close_handle(t);
}

/* ---- The HTTP CONNECT step --------------------------------------------------------------- */

static size_t put(char *out, size_t at, const char *v) {
  size_t n = strlen(v);
  if (out != NULL) memcpy(out + at, v, n);
  return at + n;
}

static size_t connect_request(char *out, const char *host, uint16_t port, const char *auth) {
  char port_str[8];
  snprintf(port_str, sizeof port_str, ":%u", (unsigned)port);
  int v6 = strchr(host, ':') != NULL;
  size_t at = 0;
  /* The target twice: in the request line and as Host, which HTTP/1.1
   * requires. */
  for (int i = 0; i < 2; i++) {
    at = put(out, at, i == 0 ? "CONNECT " : "Host: ");
    at = put(out, at, v6 ? "[" : "");
    at = put(out, at, host);
    at = put(out, at, v6 ? "]" : "");
    at = put(out, at, port_str);
    at = put(out, at, i == 0 ? " HTTP/1.1\r\n" : "\r\n");
  }
  if (auth[0] != '\0') {
    at = put(out, at, "Proxy-Authorization: ");
    at = put(out, at, auth);
    at = put(out, at, "\r\n");
  }
  return put(out, at, "\r\n");
}

static int proxy_begin(uvmqtt__transport_t *t, const char *host, uint16_t port) {
  if (strpbrk(host, "\r\n ") != NULL) return UVMQTT_EINVAL;
  proxy_free(t);
  size_t len = connect_request(NULL, host, port, t->proxy_cfg->auth);
  proxy_step_t *step = uvmqtt__calloc(1, sizeof *step + len);
  if (step == NULL) return UVMQTT_ENOMEM;
  step->request_len = connect_request(step->request, host, port, t->proxy_cfg->auth);
  t->proxy = step;
  return 0;
}

/* Ends the attempt like a failed TCP connection: the socket closes, and
 * its close callback finds no address left and reports `err`. */
static void proxy_fail(uvmqtt__transport_t *t, int err) {
  t->proxy->done = 1;
  stop_reading(t);
  t->dial->last_error = err;
  t->dial->next_addr = NULL;
  t->state = UVMQTT__T_CONNECTING;
  close_handle(t);
}

static void proxy_write_done(uvmqtt__transport_t *t, int status) {
  t->proxy->write_pending = 0;
  if (t->proxy->done) {
    proxy_free(t);
  } else if (status < 0 && t->state == UVMQTT__T_OPEN) {
    proxy_fail(t, status);
  }
}

static void proxy_send(uvmqtt__transport_t *t) {
  proxy_step_t *step = t->proxy;
  uv_buf_t buf = uv_buf_init(step->request, (unsigned)step->request_len);
  int r = tcp_write(t, &buf, 1, step);
  if (r == 0) step->write_pending = 1;
  if (r < 0) proxy_fail(t, r);
}

static void proxy_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  proxy_step_t *step = t->proxy;
  if (nread < 0) {
    proxy_fail(t, nread == UV_EOF || nread == UV_ECONNRESET ? UVMQTT_EPROXYCLOSED : (int)nread);
    return;
  }
  if (step->head == NULL) step->head = uvmqtt__malloc(UVMQTT__HTTP_HEAD_MAX);
  if (step->head == NULL) {
    proxy_fail(t, UVMQTT_ENOMEM);
    return;
  }
  size_t len = (size_t)nread, room = UVMQTT__HTTP_HEAD_MAX - step->head_len;
  size_t take = len < room ? len : room;
  memcpy(step->head + step->head_len, data, take);
  step->head_len += take;
  size_t head_len = 0;
  int r = uvmqtt__proxy_parse_response(step->head, step->head_len, &head_len);
  if (r == 0) return;
  if (r < 0) {
    proxy_fail(t, r);
    return;
  }
  step->done = 1;
  dial_end(t);
  t->cb->on_connect(t, 0);
  /* Bytes behind the answer already belong to the tunnel. */
  if (t->state == UVMQTT__T_OPEN && t->reading && step->head_len > head_len)
    t->cb->on_read(t, (ssize_t)(step->head_len - head_len), (uint8_t *)step->head + head_len);
  if (t->state == UVMQTT__T_OPEN && t->reading && len > take)
    t->cb->on_read(t, (ssize_t)(len - take), data + take);
  if (t->proxy != step) return; /* closed and freed meanwhile */
  uvmqtt__free(step->head);
  step->head = NULL;
  if (!step->write_pending) proxy_free(t);
}

void uvmqtt__transport_tcp_set_proxy(uvmqtt__transport_t *t,
                                     const struct uvmqtt__proxy_config_s *cfg) {
  t->proxy_cfg = cfg;
}

static const uvmqtt__transport_vtbl_t tcp_vtbl = {
    .connect = tcp_connect,
    .write = tcp_write,
    .shutdown = tcp_shutdown,
    .write_queue_size = tcp_write_queue_size,
    .close = tcp_close,
};

void uvmqtt__transport_tcp_init(uvmqtt__transport_t *t, uvmqtt__poller_t *poller,
                                const uvmqtt__transport_cbs_t *cb) {
  void *data = t->data;
  memset(t, 0, sizeof(*t));
  t->data = data;
  t->vt = &tcp_vtbl;
  t->cb = cb;
  t->poller = poller;
  t->fd = -1;
  t->state = UVMQTT__T_IDLE;
}
