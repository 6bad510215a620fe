/* The TCP transport: resolve a name, try each address until one connects,
 * then a plain libuv stream. Requests live on the heap only while in use, so
 * an open idle connection holds nothing but its uv_tcp_t.
 *
 * With an HTTP proxy, the connection goes to the proxy, and a CONNECT step
 * runs between the TCP connection and on_connect: the owner (or TLS or
 * WebSocket above) sees a stream to the broker, as without a proxy. */
#include "transport/transport.h"

#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "transport/http.h"
#include "transport/proxy.h"
#include "transport/read_pool.h"
#include "uvmqtt/errors.h"

/* The CONNECT step of one connection attempt. */
typedef struct uvmqtt__proxy_step_s {
  char *head; /* the proxy's answer while it arrives */
  size_t head_len;
  uint8_t done;          /* the proxy answered 2xx: the tunnel is up */
  uint8_t write_pending; /* the request is still in the socket's queue */
  size_t request_len;
  char request[];
} proxy_step_t;

/* One uv_write that uv_try_write could not finish: the request, the user's
 * argument and the buffers that are left, advanced past what already went. */
typedef struct {
  uv_write_t req;
  uvmqtt__transport_t *t;
  void *arg;
  size_t bytes;
  uv_buf_t bufs[];
} write_req_t;

static void try_next_addr(uvmqtt__transport_t *t);

static void start_reading(uvmqtt__transport_t *t) {
  uvmqtt__read_pool_ref();
  t->reading = 1;
}

static void stop_reading(uvmqtt__transport_t *t) {
  if (!t->reading) return;
  t->reading = 0;
  uv_read_stop((uv_stream_t *)&t->tcp);
  uvmqtt__read_pool_unref();
}

static void proxy_free(uvmqtt__transport_t *t) {
  if (t->proxy == NULL) return;
  uvmqtt__free(t->proxy->head);
  uvmqtt__free(t->proxy);
  t->proxy = NULL;
}

static void drop_addrs(uvmqtt__transport_t *t) {
  /* A list given to connect_addrs() is the caller's: only resolved lists are
   * recorded in addrs. */
  if (t->addrs != NULL) uv_freeaddrinfo(t->addrs);
  t->addrs = NULL;
  t->next_addr = NULL;
}

/* Completes a close once the resolver, the connect request and the handle
 * have all called back. Only ever reached from a libuv callback, so on_close
 * is always asynchronous. */
static void maybe_finish_close(uvmqtt__transport_t *t) {
  if (t->state != UVMQTT__T_CLOSING) return;
  if (t->resolve != NULL || t->connect_req != NULL || t->tcp_open) return;
  drop_addrs(t);
  proxy_free(t);
  if (t->reading) {
    t->reading = 0;
    uvmqtt__read_pool_unref();
  }
  t->state = UVMQTT__T_CLOSED;
  t->cb->on_close(t);
}

static void tcp_closed_cb(uv_handle_t *handle) {
  uvmqtt__transport_t *t = handle->data;
  t->tcp_open = 0;
  if (t->state == UVMQTT__T_CONNECTING)
    try_next_addr(t);
  else
    maybe_finish_close(t);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  uvmqtt__read_pool_alloc(buf);
}

static void proxy_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data);

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  uvmqtt__transport_t *t = stream->data;
  if (nread != 0 && t->proxy != NULL && !t->proxy->done) {
    proxy_read(t, nread, (const uint8_t *)buf->base);
    return;
  }
  if (nread > 0) {
    t->cb->on_read(t, nread, (const uint8_t *)buf->base);
    return;
  }
  /* 0 is libuv's "nothing this time" (EAGAIN): no event for the owner. */
  if (nread == 0) return;
  stop_reading(t);
  t->cb->on_read(t, nread, NULL);
}

static void proxy_send(uvmqtt__transport_t *t);

static void connect_cb(uv_connect_t *req, int status) {
  uvmqtt__transport_t *t = req->data;
  uvmqtt__free(req);
  t->connect_req = NULL;
  /* After close() the status is UV_ECANCELED and the owner hears nothing:
   * the handle's close callback completes the close. */
  if (t->state == UVMQTT__T_CLOSING) return;
  if (status == 0) status = uv_read_start((uv_stream_t *)&t->tcp, alloc_cb, read_cb);
  if (status < 0) {
    t->last_error = status;
    /* The socket of a failed attempt is spent: close it and try the next
     * address from its close callback. */
    uv_close((uv_handle_t *)&t->tcp, tcp_closed_cb);
    return;
  }
  drop_addrs(t);
  start_reading(t);
  /* Nagle would hold back small packets such as PINGREQ and PUBACK; a
   * failure here costs latency only, so the stream is used regardless. */
  uv_tcp_nodelay(&t->tcp, 1);
  t->state = UVMQTT__T_OPEN;
  if (t->proxy != NULL) {
    proxy_send(t);
    return;
  }
  t->cb->on_connect(t, 0);
}

/* Binds the socket to the local address the owner chose before it
 * connects. With the port left 0, IP_BIND_ADDRESS_NO_PORT lets the kernel
 * pick the port at connect() for the 4-tuple, rather than reserving one per
 * local address at bind(): thousands of connections from a few local
 * addresses to one broker would otherwise run out of ports, or make the
 * kernel search its port range for every connection. */
static int bind_local(uvmqtt__transport_t *t) {
  uv_os_fd_t fd;
  int on = 1;
  int port = t->bind->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)t->bind)->sin6_port
                                            : ((const struct sockaddr_in *)t->bind)->sin_port;
#ifdef IP_BIND_ADDRESS_NO_PORT
  if (port == 0 && uv_fileno((uv_handle_t *)&t->tcp, &fd) == 0)
    (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof on);
#else
  (void)fd;
  (void)on;
  (void)port;
#endif
  return uv_tcp_bind(&t->tcp, t->bind, 0);
}

static void try_next_addr(uvmqtt__transport_t *t) {
  while (t->next_addr != NULL) {
    struct addrinfo *ai = t->next_addr;
    t->next_addr = ai->ai_next;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    /* A local address of another family cannot reach this one. */
    if (t->bind != NULL && t->bind->sa_family != ai->ai_family) {
      t->last_error = UV_EAFNOSUPPORT;
      continue;
    }
    int r = uv_tcp_init_ex(t->loop, &t->tcp, (unsigned)ai->ai_family);
    if (r < 0) {
      t->last_error = r;
      continue;
    }
    t->tcp.data = t;
    t->tcp_open = 1;
    if (t->bind != NULL) r = bind_local(t);
    uv_connect_t *req = r < 0 ? NULL : uvmqtt__malloc(sizeof(*req));
    if (r < 0) {
      /* the bind failed: this address is out of reach */
    } else if (req == NULL) {
      r = UVMQTT_ENOMEM;
    } else {
      req->data = t;
      r = uv_tcp_connect(req, &t->tcp, ai->ai_addr, connect_cb);
      if (r == 0) {
        t->connect_req = req;
        return;
      }
      uvmqtt__free(req);
    }
    t->last_error = r;
    uv_close((uv_handle_t *)&t->tcp, tcp_closed_cb);
    return;
  }
  drop_addrs(t);
  t->state = UVMQTT__T_IDLE;
  t->cb->on_connect(t, t->last_error);
}

static void resolved_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  uvmqtt__transport_t *t = req->data;
  uvmqtt__free(req);
  t->resolve = NULL;
  if (t->state == UVMQTT__T_CLOSING) {
    /* Cancelled (UV_EAI_CANCELED), or the lookup finished before the
     * cancellation reached it: either way the owner hears nothing. */
    uv_freeaddrinfo(res);
    maybe_finish_close(t);
    return;
  }
  if (status < 0) {
    t->state = UVMQTT__T_IDLE;
    t->cb->on_connect(t, status);
    return;
  }
  t->addrs = res;
  t->next_addr = res;
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
  uv_getaddrinfo_t *req = uvmqtt__malloc(sizeof(*req));
  if (req != NULL) req->data = t;
  int r = req != NULL ? uv_getaddrinfo(t->loop, req, resolved_cb, dial, service, &hints)
                      : UVMQTT_ENOMEM;
  if (r < 0) {
    uvmqtt__free(req);
    proxy_free(t);
    return r;
  }
  t->resolve = req;
  t->port = port;
  t->pending_bytes = 0;
  t->last_error = UV_EAI_NONAME;
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
  t->addrs = NULL;
  t->next_addr = list;
  t->pending_bytes = 0;
  t->last_error = UV_EAI_ADDRFAMILY;
  t->state = UVMQTT__T_CONNECTING;
  try_next_addr(t);
  return 0;
}

static void proxy_fail(uvmqtt__transport_t *t, int err);

static void write_cb(uv_write_t *req, int status) {
  write_req_t *w = req->data;
  uvmqtt__transport_t *t = w->t;
  void *arg = w->arg;
  t->pending_bytes -= w->bytes;
  uvmqtt__free(w);
  if (t->proxy != NULL && arg == t->proxy) {
    /* The CONNECT request: the owner never wrote it. */
    t->proxy->write_pending = 0;
    if (t->proxy->done) {
      proxy_free(t);
    } else if (status < 0 && t->state == UVMQTT__T_OPEN) {
      proxy_fail(t, status);
    }
    return;
  }
  t->cb->on_write(t, status, arg);
}

static int tcp_write(uvmqtt__transport_t *t, const uv_buf_t *bufs, unsigned nbufs, void *arg) {
  if (t->state != UVMQTT__T_OPEN) return UVMQTT_ENOTCONN;
  size_t total = 0;
  for (unsigned i = 0; i < nbufs; i++)
    total += bufs[i].len;
  uv_stream_t *stream = (uv_stream_t *)&t->tcp;
  /* uv_try_write refuses (UV_EAGAIN) while earlier writes are queued, which
   * keeps the byte order. */
  int n = uv_try_write(stream, bufs, nbufs);
  if (n == UV_EAGAIN)
    n = 0;
  else if (n < 0)
    return n;
  t->sent_total += (size_t)n;
  if ((size_t)n == total) return 1;

  size_t skip = (size_t)n;
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
  w->t = t;
  w->arg = arg;
  w->bytes = total - (size_t)n;
  w->req.data = w;
  int r = uv_write(&w->req, stream, w->bufs, rest, write_cb);
  if (r < 0) {
    uvmqtt__free(w);
    return r;
  }
  t->pending_bytes += w->bytes;
  t->sent_total += w->bytes;
  return 0;
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  /* Nothing to report: reads end with EOF or the owner's close. */
  (void)status;
  uvmqtt__free(req);
}

static int tcp_shutdown(uvmqtt__transport_t *t) {
  if (t->state != UVMQTT__T_OPEN) return UVMQTT_ENOTCONN;
  uv_shutdown_t *req = uvmqtt__malloc(sizeof *req);
  if (req == NULL) return UVMQTT_ENOMEM;
  int err = uv_shutdown(req, (uv_stream_t *)&t->tcp, shutdown_cb);
  if (err) uvmqtt__free(req);
  return err;
}

int uvmqtt__tcp_bytes_acked(int fd, uint64_t *acked);

int uvmqtt__transport_acked_progress(uvmqtt__transport_t *t, uint64_t mark) {
  uv_os_fd_t fd;
  uint64_t acked;
  if (t->state != UVMQTT__T_OPEN || uv_fileno((uv_handle_t *)&t->tcp, &fd) != 0 ||
      uvmqtt__tcp_bytes_acked(fd, &acked) != 0)
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
  if (t->resolve != NULL) uv_cancel((uv_req_t *)t->resolve);
  if (t->tcp_open) {
    /* Closing the handle also completes a pending connect and every queued
     * write with UV_ECANCELED before the close callback. Between two
     * attempts the handle is already closing. */
    if (!uv_is_closing((uv_handle_t *)&t->tcp)) uv_close((uv_handle_t *)&t->tcp, tcp_closed_cb);
  } else if (t->resolve == NULL) {
    /* Nothing is in flight (idle, or after a failed connect), yet on_close
     * must come from the loop: a fresh handle without a socket closes on the
     * next iteration and allocates nothing. Without an address family
     * uv_tcp_init creates no socket, so it cannot fail. */
    uv_tcp_init(t->loop, &t->tcp);
    t->tcp.data = t;
    t->tcp_open = 1;
    uv_close((uv_handle_t *)&t->tcp, tcp_closed_cb);
  }
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
  t->last_error = err;
  t->next_addr = NULL;
  t->state = UVMQTT__T_CONNECTING;
  uv_close((uv_handle_t *)&t->tcp, tcp_closed_cb);
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
  t->cb->on_connect(t, 0);
  /* Bytes behind the answer already belong to the tunnel. */
  if (t->state == UVMQTT__T_OPEN && t->reading && step->head_len > head_len)
    t->cb->on_read(t, (ssize_t)(step->head_len - head_len), (uint8_t *)step->head + head_len);
  if (t->state == UVMQTT__T_OPEN && t->reading && len > take)
    t->cb->on_read(t, (ssize_t)(len - take), data + take);
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

void uvmqtt__transport_tcp_init(uvmqtt__transport_t *t, uv_loop_t *loop,
                                const uvmqtt__transport_cbs_t *cb) {
  void *data = t->data;
  memset(t, 0, sizeof(*t));
  t->data = data;
  t->vt = &tcp_vtbl;
  t->cb = cb;
  t->loop = loop;
  t->state = UVMQTT__T_IDLE;
}
