/* The TCP transport against a small echo server on the test's loop, and
 * self-tests of the test support library (proxy, broker launcher, fake
 * broker). Every test counts callbacks, asserts them after uv_run and checks
 * that the loop closes cleanly. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/alloc.h"
#include "broker.h"
#include "fake_broker.h"
#include "proxy.h"
#include "transport/read_pool.h"
#include "transport/transport.h"
#include "uvmqtt.h"

/* ---- An echo server ------------------------------------------------------ */

typedef enum {
  ECHO_BACK = 0, /* send every byte back */
  ECHO_NO_READ,  /* accept, never read: the client's writes pile up */
  ECHO_CLOSE     /* accept and close at once */
} echo_mode_t;

typedef struct echo_server_s echo_server_t;

typedef struct echo_conn_s {
  uv_tcp_t tcp;
  echo_server_t *srv;
  struct echo_conn_s *next;
} echo_conn_t;

struct echo_server_s {
  uv_tcp_t tcp;
  uv_loop_t *loop;
  int port;
  echo_mode_t mode;
  int accepted;
  int eofs; /* connections the peer closed */
  size_t received;
  echo_conn_t *conns;
};

typedef struct {
  uv_write_t req;
  char bytes[];
} echo_write_t;

static void check_done(void);

static void echo_conn_closed_cb(uv_handle_t *handle) {
  echo_conn_t *conn = handle->data;
  for (echo_conn_t **p = &conn->srv->conns; *p != NULL; p = &(*p)->next) {
    if (*p == conn) {
      *p = conn->next;
      break;
    }
  }
  free(conn);
  check_done();
}

static void echo_conn_close(echo_conn_t *conn) {
  if (!uv_is_closing((uv_handle_t *)&conn->tcp))
    uv_close((uv_handle_t *)&conn->tcp, echo_conn_closed_cb);
}

static void echo_alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  echo_write_t *w = malloc(sizeof(*w) + 65536);
  *buf = w != NULL ? uv_buf_init(w->bytes, 65536) : uv_buf_init(NULL, 0);
}

static void echo_write_cb(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void echo_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  echo_conn_t *conn = stream->data;
  echo_write_t *w =
      buf->base != NULL ? (echo_write_t *)(buf->base - offsetof(echo_write_t, bytes)) : NULL;
  if (nread <= 0) {
    free(w);
    if (nread < 0) {
      conn->srv->eofs++;
      echo_conn_close(conn);
    }
    return;
  }
  conn->srv->received += (size_t)nread;
  uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
  if (uv_write(&w->req, stream, &out, 1, echo_write_cb) != 0) free(w);
}

static void echo_connection_cb(uv_stream_t *server, int status) {
  echo_server_t *srv = server->data;
  ck_assert_int_eq(status, 0);
  echo_conn_t *conn = calloc(1, sizeof(*conn));
  ck_assert_ptr_nonnull(conn);
  conn->srv = srv;
  uv_tcp_init(srv->loop, &conn->tcp);
  conn->tcp.data = conn;
  conn->next = srv->conns;
  srv->conns = conn;
  ck_assert_int_eq(uv_accept(server, (uv_stream_t *)&conn->tcp), 0);
  srv->accepted++;
  if (srv->mode == ECHO_BACK)
    uv_read_start((uv_stream_t *)&conn->tcp, echo_alloc_cb, echo_read_cb);
  else if (srv->mode == ECHO_CLOSE)
    echo_conn_close(conn);
}

/* Listens on ip:<free port>. Returns 0 or the libuv error of bind/listen
 * (the handle is then closed). */
static int echo_start(echo_server_t *srv, uv_loop_t *loop, const char *ip, echo_mode_t mode) {
  memset(srv, 0, sizeof(*srv));
  srv->loop = loop;
  srv->mode = mode;
  uv_tcp_init(loop, &srv->tcp);
  srv->tcp.data = srv;
  struct sockaddr_storage ss;
  int r = strchr(ip, ':') != NULL ? uv_ip6_addr(ip, 0, (struct sockaddr_in6 *)&ss)
                                  : uv_ip4_addr(ip, 0, (struct sockaddr_in *)&ss);
  ck_assert_int_eq(r, 0);
  r = uv_tcp_bind(&srv->tcp, (struct sockaddr *)&ss, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&srv->tcp, 16, echo_connection_cb);
  int len = sizeof(ss);
  if (r == 0) r = uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&ss, &len);
  if (r != 0) {
    uv_close((uv_handle_t *)&srv->tcp, NULL);
    return r;
  }
  srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

static void echo_stop(echo_server_t *srv) {
  if (!uv_is_closing((uv_handle_t *)&srv->tcp)) uv_close((uv_handle_t *)&srv->tcp, NULL);
  for (echo_conn_t *c = srv->conns; c != NULL; c = c->next)
    echo_conn_close(c);
}

/* ---- A transport owner that counts callbacks ----------------------------- */

typedef struct client_s {
  uvmqtt__transport_t t; /* first: the callbacks cast back */
  int connects;
  int connect_status;
  int reads;       /* on_read calls with bytes */
  int read_errors; /* on_read calls with nread < 0 */
  int read_status; /* the last nread < 0 */
  int reads_after_close;
  int writes;       /* on_write calls */
  int write_status; /* the last on_write status */
  int closes;
  int closing;
  size_t pool_at_read;  /* read pool size seen inside on_read */
  size_t pool_at_close; /* read pool size seen inside on_close */
  /* Behaviour. */
  const char *send;        /* written from on_connect */
  const uint8_t *send_bin; /* written from on_connect after `send` */
  size_t send_bin_len;
  int close_on_connect;
  int close_on_read;            /* close from the first on_read */
  size_t expect;                /* close once this many bytes came back */
  int close_in_close;           /* call close again from on_close */
  struct client_s *close_next;  /* closed from this one's on_close */
  struct client_s *close_other; /* closed from this one's first on_read */
  /* Received bytes. */
  uint8_t *rx;
  size_t rx_len;
  size_t rx_cap;
} client_t;

static void client_close(client_t *c) {
  c->closing = 1;
  uvmqtt__transport_close(&c->t);
}

static void on_connect(uvmqtt__transport_t *t, int status) {
  client_t *c = (client_t *)t;
  c->connects++;
  c->connect_status = status;
  if (status < 0 || c->close_on_connect) {
    client_close(c);
    return;
  }
  if (c->send != NULL) {
    uv_buf_t b = uv_buf_init((char *)c->send, (unsigned)strlen(c->send));
    ck_assert_int_eq(uvmqtt__transport_write(t, &b, 1, NULL), 1);
  }
  if (c->send_bin != NULL) {
    uv_buf_t b = uv_buf_init((char *)c->send_bin, (unsigned)c->send_bin_len);
    ck_assert_int_eq(uvmqtt__transport_write(t, &b, 1, NULL), 1);
  }
}

static void on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  client_t *c = (client_t *)t;
  if (c->closing) c->reads_after_close++;
  if (nread < 0) {
    c->read_errors++;
    c->read_status = (int)nread;
    client_close(c);
    return;
  }
  c->reads++;
  c->pool_at_read = uvmqtt__read_pool_bytes();
  size_t n = (size_t)nread;
  if (c->rx_len + n > c->rx_cap) n = c->rx_cap - c->rx_len;
  memcpy(c->rx + c->rx_len, data, n);
  c->rx_len += n;
  if (c->close_other != NULL && !c->close_other->closing) client_close(c->close_other);
  if (c->close_on_read || (c->expect > 0 && c->rx_len >= c->expect)) client_close(c);
}

static void on_write(uvmqtt__transport_t *t, int status, void *arg) {
  client_t *c = (client_t *)t;
  c->writes++;
  c->write_status = status;
  /* Writes that carry an arg count their own completions there. */
  if (arg != NULL) ++*(int *)arg;
}

/* Test-wide state for when to stop the servers: once every client closed,
 * or when the test's own condition holds. */
static struct {
  int live_clients;
  int (*done)(void);
  echo_server_t *srv;
  fault_proxy_t *proxy;
  fake_broker_t *fb;
  uvmqtt__poller_t *poller; /* the test loop's, made by the first client */
} g;

static void check_done(void) {
  int done = g.done != NULL ? g.done() : g.live_clients == 0;
  if (!done) return;
  if (g.srv != NULL) echo_stop(g.srv);
  if (g.proxy != NULL) proxy_stop(g.proxy);
  if (g.fb != NULL) fake_broker_stop(g.fb);
}

static void on_close(uvmqtt__transport_t *t) {
  client_t *c = (client_t *)t;
  c->closes++;
  c->pool_at_close = uvmqtt__read_pool_bytes();
  if (c->close_in_close) uvmqtt__transport_close(t);
  if (c->close_next != NULL) client_close(c->close_next);
  g.live_clients--;
  check_done();
}

static const uvmqtt__transport_cbs_t client_cbs = {on_connect, on_read, on_write, on_close};

/* One poller per test, as the client layer keeps one per loop. */
static uvmqtt__poller_t *test_poller(uv_loop_t *loop) {
  if (g.poller == NULL) g.poller = uvmqtt__poller_new(loop);
  ck_assert_ptr_nonnull(g.poller);
  ck_assert_ptr_eq(uvmqtt__poller_loop(g.poller), loop);
  return g.poller;
}

static void client_init(client_t *c, uv_loop_t *loop, size_t rx_cap) {
  memset(c, 0, sizeof(*c));
  uvmqtt__transport_tcp_init(&c->t, test_poller(loop), &client_cbs);
  c->t.data = c;
  c->rx_cap = rx_cap;
  c->rx = rx_cap > 0 ? malloc(rx_cap) : NULL;
  g.live_clients++;
}

static void client_free(client_t *c) {
  free(c->rx);
}

static void setup(void) {
  memset(&g, 0, sizeof(g));
}

static void finish_loop(uv_loop_t *loop) {
  ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  /* Every transport has closed: the poller's handles close now. */
  uvmqtt__poller_free(g.poller);
  g.poller = NULL;
  ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(loop), 0);
  ck_assert_uint_eq(uvmqtt__read_pool_bytes(), 0);
}

/* ---- Connect, write, read ------------------------------------------------ */

/* Connects to an echo server on `ip` through `host`; 0 when the machine
 * has no such address (the test then checks nothing else). */
static int echo_roundtrip(const char *ip, const char *host) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  int r = echo_start(&srv, &loop, ip, ECHO_BACK);
  if (r == UV_EADDRNOTAVAIL || r == UV_EAFNOSUPPORT) {
    finish_loop(&loop);
    return 0;
  }
  ck_assert_int_eq(r, 0);
  g.srv = &srv;
  client_t c;
  client_init(&c, &loop, 64);
  c.send = "hello";
  c.expect = 5;
  ck_assert_uint_eq(uvmqtt__read_pool_bytes(), 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, host, (uint16_t)srv.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_int_eq(c.rx_len, 5);
  ck_assert_mem_eq(c.rx, "hello", 5);
  ck_assert_uint_eq(c.pool_at_read, UVMQTT__READ_POOL_MIN);
  ck_assert_int_eq(c.writes, 0);
  ck_assert_int_eq(c.closes, 1);
  ck_assert_int_eq(c.reads_after_close, 0);
  ck_assert_int_eq(c.t.state, UVMQTT__T_CLOSED);
  ck_assert_int_eq(srv.accepted, 1);
  client_free(&c);
  return 1;
}

START_TEST(transport_echo_ipv4) {
  ck_assert_int_eq(echo_roundtrip("127.0.0.1", "127.0.0.1"), 1);
}
END_TEST

START_TEST(transport_echo_ipv6) {
  /* Machines without an IPv6 loopback skip the round trip. */
  if (!echo_roundtrip("::1", "::1")) fprintf(stderr, "transport_echo_ipv6: no ::1, skipped\n");
}
END_TEST

START_TEST(transport_echo_localhost) {
  /* Where "localhost" also resolves to ::1 and that comes first, the
   * transport has to move on to 127.0.0.1. */
  ck_assert_int_eq(echo_roundtrip("127.0.0.1", "localhost"), 1);
}
END_TEST

START_TEST(transport_connect_refused) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  client_t c;
  client_init(&c, &loop, 0);
  int port = test_free_port();
  ck_assert_int_gt(port, 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, UV_ECONNREFUSED);
  ck_assert_int_eq(c.closes, 1);
  ck_assert_int_eq(c.reads + c.read_errors, 0);
  client_free(&c);
}
END_TEST

/* An address list like a resolver's: each entry with its own port. */
typedef struct {
  struct addrinfo ai[3];
  struct sockaddr_storage sa[3];
  int count;
} addr_list_t;

static void addr_list_add(addr_list_t *l, const char *ip, int port) {
  int i = l->count++;
  ck_assert_int_lt(i, 3);
  struct addrinfo *ai = &l->ai[i];
  memset(ai, 0, sizeof(*ai));
  if (strchr(ip, ':') != NULL) {
    ck_assert_int_eq(uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&l->sa[i]), 0);
    ai->ai_family = AF_INET6;
    ai->ai_addrlen = sizeof(struct sockaddr_in6);
  } else {
    ck_assert_int_eq(uv_ip4_addr(ip, port, (struct sockaddr_in *)&l->sa[i]), 0);
    ai->ai_family = AF_INET;
    ai->ai_addrlen = sizeof(struct sockaddr_in);
  }
  ai->ai_socktype = SOCK_STREAM;
  ai->ai_protocol = IPPROTO_TCP;
  ai->ai_addr = (struct sockaddr *)&l->sa[i];
  if (i > 0) l->ai[i - 1].ai_next = ai;
}

START_TEST(transport_connect_next_address) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_BACK), 0);
  g.srv = &srv;
  int refusing = test_free_port();
  addr_list_t list = {.count = 0};
  /* Without IPv6 the first attempt fails at once instead of refusing: the
   * transport moves on either way. */
  addr_list_add(&list, "::1", refusing);
  addr_list_add(&list, "127.0.0.1", refusing);
  addr_list_add(&list, "127.0.0.1", srv.port);
  client_t c;
  client_init(&c, &loop, 64);
  c.send = "next";
  c.expect = 4;
  ck_assert_int_eq(uvmqtt__transport_tcp_connect_addrs(&c.t, list.ai), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_int_eq(c.rx_len, 4);
  ck_assert_mem_eq(c.rx, "next", 4);
  ck_assert_int_eq(c.closes, 1);
  ck_assert_int_eq(srv.accepted, 1);
  client_free(&c);
}
END_TEST

START_TEST(transport_connect_every_address_refuses) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  addr_list_t list = {.count = 0};
  addr_list_add(&list, "127.0.0.1", test_free_port());
  addr_list_add(&list, "127.0.0.1", test_free_port());
  client_t c;
  client_init(&c, &loop, 0);
  ck_assert_int_eq(uvmqtt__transport_tcp_connect_addrs(&c.t, list.ai), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, UV_ECONNREFUSED);
  ck_assert_int_eq(c.closes, 1);
  client_free(&c);
}
END_TEST

START_TEST(transport_eof_from_peer) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_CLOSE), 0);
  g.srv = &srv;
  client_t c;
  client_init(&c, &loop, 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)srv.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_int_eq(c.read_errors, 1);
  ck_assert(c.read_status == UV_EOF || c.read_status == UV_ECONNRESET);
  ck_assert_int_eq(c.closes, 1);
  client_free(&c);
}
END_TEST

START_TEST(transport_misuse_errors) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  client_t c;
  client_init(&c, &loop, 0);
  uv_buf_t b = uv_buf_init("x", 1);
  ck_assert_int_eq(uvmqtt__transport_write(&c.t, &b, 1, NULL), UVMQTT_ENOTCONN);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "", 1883), UVMQTT_EINVAL);
  ck_assert_int_eq(uvmqtt__transport_tcp_connect_addrs(&c.t, NULL), UVMQTT_EINVAL);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", 1), 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", 1), UVMQTT_EBUSY);
  ck_assert_int_eq(uvmqtt__transport_write(&c.t, &b, 1, NULL), UVMQTT_ENOTCONN);
  client_close(&c);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 0);
  ck_assert_int_eq(c.closes, 1);
  client_free(&c);
}
END_TEST

/* Connects again from on_close: a closed transport is reusable. */
static int reuse_port;
static int reuse_rounds;

static void reuse_on_close(uvmqtt__transport_t *t) {
  client_t *c = (client_t *)t;
  c->closes++;
  if (++reuse_rounds < 2) {
    c->closing = 0;
    c->rx_len = 0;
    ck_assert_int_eq(uvmqtt__transport_connect(t, "127.0.0.1", (uint16_t)reuse_port), 0);
    return;
  }
  g.live_clients--;
  check_done();
}

START_TEST(transport_reconnect_after_close) {
  static const uvmqtt__transport_cbs_t cbs = {on_connect, on_read, on_write, reuse_on_close};
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_BACK), 0);
  g.srv = &srv;
  client_t c;
  client_init(&c, &loop, 16);
  c.t.cb = &cbs;
  c.send = "again";
  c.expect = 5;
  reuse_port = srv.port;
  reuse_rounds = 0;
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)srv.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 2);
  ck_assert_int_eq(c.closes, 2);
  ck_assert_int_eq(srv.accepted, 2);
  ck_assert_int_eq(c.rx_len, 5);
  client_free(&c);
}
END_TEST

/* ---- Large and pending writes -------------------------------------------- */

#define BIG_SIZE (8u << 20)
#define BIG_BUFS 128u

static uint8_t *pattern_new(size_t len) {
  uint8_t *p = malloc(len);
  ck_assert_ptr_nonnull(p);
  uint32_t x = 2463534242u;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = (uint8_t)x;
  }
  return p;
}

static uint8_t *big_data;
static int big_write_result;
static size_t big_queue_after_write;
static int big_write_done;

static void big_on_connect(uvmqtt__transport_t *t, int status) {
  client_t *c = (client_t *)t;
  c->connects++;
  c->connect_status = status;
  ck_assert_int_eq(status, 0);
  /* Many buffers, so the partial write lands inside one of them and the
   * rest must be re-sliced; the first is shorter, so that no boundary
   * between buffers meets one of the 64 KiB sendmsg calls either. */
  uv_buf_t bufs[BIG_BUFS];
  size_t each = BIG_SIZE / BIG_BUFS, skew = 1000;
  bufs[0] = uv_buf_init((char *)big_data, (unsigned)(each - skew));
  for (unsigned i = 1; i < BIG_BUFS; i++)
    bufs[i] = uv_buf_init((char *)big_data + i * each - skew, (unsigned)each);
  bufs[BIG_BUFS - 1].len += skew;
  big_write_result = uvmqtt__transport_write(t, bufs, BIG_BUFS, &big_write_done);
  big_queue_after_write = t->vt->write_queue_size(t);
}

/* Sends BIG_SIZE bytes to an echo server, directly or through the proxy,
 * and checks every byte that comes back. */
static void large_echo(int through_proxy) {
  static const uvmqtt__transport_cbs_t cbs = {big_on_connect, on_read, on_write, on_close};
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_BACK), 0);
  g.srv = &srv;
  int port = srv.port;
  fault_proxy_t proxy;
  if (through_proxy) {
    ck_assert_int_eq(proxy_start(&proxy, &loop, srv.port), 0);
    g.proxy = &proxy;
    port = proxy.port;
  }
  big_data = pattern_new(BIG_SIZE);
  big_write_done = 0;
  client_t c;
  client_init(&c, &loop, BIG_SIZE);
  c.t.cb = &cbs;
  c.expect = BIG_SIZE;
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(big_write_result, 0);
  ck_assert_uint_gt(big_queue_after_write, 0);
  ck_assert_uint_lt(big_queue_after_write, BIG_SIZE + 1);
  ck_assert_int_eq(big_write_done, 1);
  ck_assert_int_eq(c.writes, 1);
  ck_assert_int_eq(c.write_status, 0);
  ck_assert_uint_eq(c.t.vt->write_queue_size(&c.t), 0);
  ck_assert_uint_eq(c.rx_len, BIG_SIZE);
  ck_assert(memcmp(c.rx, big_data, BIG_SIZE) == 0);
  ck_assert_int_eq(c.closes, 1);
  /* Reads that filled the small buffer made it grow to the full size. */
  ck_assert_uint_eq(c.pool_at_read, UVMQTT__READ_POOL_SIZE);
  free(big_data);
  client_free(&c);
}

START_TEST(transport_large_write) {
  large_echo(0);
}
END_TEST

START_TEST(proxy_large_transfer_in_order) {
  /* More than the proxy's 4 MiB queue bound: reading pauses and resumes. */
  large_echo(1);
}
END_TEST

#define PENDING_WRITES 4

static int pending_done[PENDING_WRITES];
static int pending_results[PENDING_WRITES];

static void pending_on_connect(uvmqtt__transport_t *t, int status) {
  client_t *c = (client_t *)t;
  c->connects++;
  ck_assert_int_eq(status, 0);
  /* The server never reads: after the socket buffers fill, the writes
   * queue. */
  for (int i = 0; i < PENDING_WRITES; i++) {
    uv_buf_t b = uv_buf_init((char *)big_data, BIG_SIZE);
    pending_results[i] = uvmqtt__transport_write(t, &b, 1, &pending_done[i]);
  }
  client_close(c);
}

START_TEST(transport_close_with_writes_pending) {
  static const uvmqtt__transport_cbs_t cbs = {pending_on_connect, on_read, on_write, on_close};
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_NO_READ), 0);
  g.srv = &srv;
  big_data = pattern_new(BIG_SIZE);
  memset(pending_done, 0, sizeof(pending_done));
  client_t c;
  client_init(&c, &loop, 0);
  c.t.cb = &cbs;
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)srv.port), 0);
  finish_loop(&loop);
  int pending = 0;
  for (int i = 0; i < PENDING_WRITES; i++) {
    ck_assert(pending_results[i] == 0 || pending_results[i] == 1);
    if (pending_results[i] == 0) pending++;
    ck_assert_int_eq(pending_done[i], pending_results[i] == 0 ? 1 : 0);
  }
  ck_assert_int_gt(pending, 0);
  ck_assert_int_eq(c.writes, pending);
  ck_assert_int_eq(c.write_status, UV_ECANCELED);
  ck_assert_uint_eq(c.t.vt->write_queue_size(&c.t), 0);
  ck_assert_int_eq(c.closes, 1);
  free(big_data);
  client_free(&c);
}
END_TEST

/* ---- Close in every state ------------------------------------------------ */

START_TEST(transport_close_idle) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  client_t c;
  client_init(&c, &loop, 0);
  client_close(&c);
  client_close(&c);
  ck_assert_int_eq(c.closes, 0); /* never synchronous */
  finish_loop(&loop);
  ck_assert_int_eq(c.closes, 1);
  client_free(&c);
}
END_TEST

START_TEST(transport_close_during_resolve) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  client_t c;
  client_init(&c, &loop, 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "localhost", 1883), 0);
  ck_assert_int_eq(c.t.state, UVMQTT__T_RESOLVING);
  client_close(&c);
  ck_assert_int_eq(c.closes, 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 0);
  ck_assert_int_eq(c.closes, 1);
  ck_assert_ptr_null(c.t.dial);
  client_free(&c);
}
END_TEST

START_TEST(transport_close_during_connect) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_BACK), 0);
  g.srv = &srv;
  addr_list_t list = {.count = 0};
  addr_list_add(&list, "127.0.0.1", srv.port);
  client_t c;
  client_init(&c, &loop, 0);
  ck_assert_int_eq(uvmqtt__transport_tcp_connect_addrs(&c.t, list.ai), 0);
  ck_assert_int_eq(c.t.state, UVMQTT__T_CONNECTING);
  ck_assert_ptr_nonnull(c.t.dial);
  ck_assert_int_eq(c.t.events, UV_WRITABLE); /* the poller watches the connect */
  client_close(&c);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 0);
  ck_assert_int_eq(c.closes, 1);
  ck_assert_ptr_null(c.t.dial);
  ck_assert_int_eq(c.t.events, 0);
  ck_assert_int_eq(c.t.deferred, 0);
  ck_assert_int_eq(c.t.fd, -1);
  client_free(&c);
}
END_TEST

START_TEST(transport_close_in_on_connect) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_BACK), 0);
  g.srv = &srv;
  client_t c;
  client_init(&c, &loop, 0);
  c.close_on_connect = 1;
  c.close_in_close = 1;
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)srv.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_int_eq(c.reads + c.read_errors, 0);
  ck_assert_int_eq(c.closes, 1);
  client_free(&c);
}
END_TEST

START_TEST(transport_close_in_on_read) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_BACK), 0);
  g.srv = &srv;
  client_t c;
  client_init(&c, &loop, 64);
  c.send = "read and close";
  c.close_on_read = 1;
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)srv.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.reads, 1);
  ck_assert_int_eq(c.reads_after_close, 0);
  ck_assert_int_eq(c.closes, 1);
  ck_assert_uint_eq(c.pool_at_close, 0);
  client_free(&c);
}
END_TEST

/* The poller hands out a batch of events at once. Two sockets are made
 * readable before the loop runs, so both are in one batch: the first
 * reader closes the other, whose event later in the batch must go unheard
 * (and, under the sanitizers, touch nothing freed). _i sockets have a poll
 * handle of their own, the others are in the loop's epoll set. */
START_TEST(transport_close_other_in_same_batch) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvmqtt__poller_set_direct_max(test_poller(&loop), (uint32_t)_i);
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(lfd, 0);
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sin;
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
  ck_assert_int_eq(listen(lfd, 4), 0);
  ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
  addr_list_t list = {.count = 0};
  addr_list_add(&list, "127.0.0.1", ntohs(sin.sin_port));
  client_t c[2];
  for (int i = 0; i < 2; i++) {
    client_init(&c[i], &loop, 16);
    c[i].close_on_read = 1;
    ck_assert_int_eq(uvmqtt__transport_tcp_connect_addrs(&c[i].t, list.ai), 0);
  }
  c[0].close_other = &c[1];
  c[1].close_other = &c[0];
  for (int i = 0; i < 1000 && c[0].connects + c[1].connects < 2; i++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(c[0].connect_status, 0);
  ck_assert_int_eq(c[1].connect_status, 0);
  ck_assert_int_eq((c[0].t.direct != NULL) + (c[1].t.direct != NULL), _i);
  int peer[2];
  for (int i = 0; i < 2; i++) {
    peer[i] = accept(lfd, NULL, NULL);
    ck_assert_int_ge(peer[i], 0);
    ck_assert_int_eq(send(peer[i], "x", 1, 0), 1);
  }
  finish_loop(&loop);
  ck_assert_int_eq(c[0].reads + c[1].reads, 1);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(c[i].reads_after_close, 0);
    ck_assert_int_eq(c[i].read_errors, 0);
    ck_assert_int_eq(c[i].closes, 1);
    client_free(&c[i]);
    close(peer[i]);
  }
  close(lfd);
}
END_TEST

/* ---- The shared read pool ------------------------------------------------ */

static client_t *pool_a, *pool_b;

/* a closes once both have read; its on_close then closes b, so b is still
 * reading while a goes. */
static void pool_on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  on_read(t, nread, data);
  if (pool_a->reads > 0 && pool_b->reads > 0 && !pool_a->closing) client_close(pool_a);
}

START_TEST(transport_read_pool_shared_and_freed) {
  static const uvmqtt__transport_cbs_t cbs = {on_connect, pool_on_read, on_write, on_close};
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_BACK), 0);
  g.srv = &srv;
  client_t a, b;
  client_init(&a, &loop, 16);
  client_init(&b, &loop, 16);
  a.t.cb = &cbs;
  b.t.cb = &cbs;
  a.send = "a";
  b.send = "b";
  a.close_next = &b;
  pool_a = &a;
  pool_b = &b;
  ck_assert_uint_eq(uvmqtt__read_pool_bytes(), 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&a.t, "127.0.0.1", (uint16_t)srv.port), 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&b.t, "127.0.0.1", (uint16_t)srv.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(a.reads, 1);
  ck_assert_int_eq(b.reads, 1);
  ck_assert_uint_eq(a.pool_at_read, UVMQTT__READ_POOL_MIN);
  ck_assert_uint_eq(b.pool_at_read, UVMQTT__READ_POOL_MIN);
  ck_assert_uint_eq(a.pool_at_close, UVMQTT__READ_POOL_MIN); /* b still reads */
  ck_assert_uint_eq(b.pool_at_close, 0);                     /* the last one */
  ck_assert_int_eq(a.closes + b.closes, 2);
  client_free(&a);
  client_free(&b);
}
END_TEST

/* ---- Allocation failures ------------------------------------------------- */

static int allocs_until_failure;

static void *failing_malloc(size_t size) {
  if (allocs_until_failure > 0 && --allocs_until_failure == 0) return NULL;
  return malloc(size);
}

/* Fails the n-th uvmqtt allocation during one echo round trip. */
static void run_with_failing_alloc(int n, client_t *c) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  echo_server_t srv;
  ck_assert_int_eq(echo_start(&srv, &loop, "127.0.0.1", ECHO_BACK), 0);
  g.srv = &srv;
  client_init(c, &loop, 16);
  /* The same allocations whatever UVMQTT_DIRECT_POLL_MAX says. */
  uvmqtt__poller_set_direct_max(test_poller(&loop), 1);
  c->send = "x";
  c->expect = 1;
  allocs_until_failure = n;
  ck_assert_int_eq(uvmqtt_replace_allocator(failing_malloc, realloc, calloc, free), 0);
  int r = uvmqtt__transport_connect(&c->t, "127.0.0.1", (uint16_t)srv.port);
  if (r < 0) {
    c->connect_status = r;
    client_close(c);
  }
  finish_loop(&loop);
  ck_assert_int_eq(uvmqtt_replace_allocator(malloc, realloc, calloc, free), 0);
  ck_assert_int_eq(c->closes, 1);
  client_free(c);
}

START_TEST(transport_alloc_failures) {
  client_t c;
  /* 1: the attempt's state (the resolver request). */
  run_with_failing_alloc(1, &c);
  ck_assert_int_eq(c.connects, 0);
  ck_assert_int_eq(c.connect_status, UVMQTT_ENOMEM);
  /* 2: the socket's own poll handle: it goes to the loop's epoll set
   * instead, and the round trip is whole. */
  run_with_failing_alloc(2, &c);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_int_eq(c.read_errors, 0);
  ck_assert_uint_eq(c.rx_len, 1);
  /* 3: the read pool's buffer. */
  run_with_failing_alloc(3, &c);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_int_eq(c.read_errors, 1);
  ck_assert_int_eq(c.read_status, UV_ENOBUFS);
}
END_TEST

/* ---- The fault proxy ----------------------------------------------------- */

static void proxy_setup(uv_loop_t *loop, echo_server_t *srv, fault_proxy_t *proxy) {
  ck_assert_int_eq(uv_loop_init(loop), 0);
  ck_assert_int_eq(echo_start(srv, loop, "127.0.0.1", ECHO_BACK), 0);
  ck_assert_int_eq(proxy_start(proxy, loop, srv->port), 0);
  g.srv = srv;
  g.proxy = proxy;
}

START_TEST(proxy_pass_echo) {
  uv_loop_t loop;
  echo_server_t srv;
  fault_proxy_t proxy;
  proxy_setup(&loop, &srv, &proxy);
  client_t c;
  client_init(&c, &loop, 64);
  c.send = "through the proxy";
  c.expect = strlen(c.send);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)proxy.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_uint_eq(c.rx_len, strlen(c.send));
  ck_assert_mem_eq(c.rx, c.send, c.rx_len);
  ck_assert_int_eq(proxy.accepted, 1);
  ck_assert_int_eq(srv.accepted, 1);
  client_free(&c);
}
END_TEST

static uv_timer_t silence_timer;

static void close_client_cb(uv_timer_t *timer) {
  client_close(timer->data);
  uv_close((uv_handle_t *)timer, NULL);
}

/* Writes, then waits 200 ms for an answer that must not come. */
static void silence_on_connect(uvmqtt__transport_t *t, int status) {
  on_connect(t, status);
  uv_timer_init(uvmqtt__poller_loop(t->poller), &silence_timer);
  silence_timer.data = t;
  uv_timer_start(&silence_timer, close_client_cb, 200, 0);
}

START_TEST(proxy_blackhole_keeps_connection_silent) {
  static const uvmqtt__transport_cbs_t cbs = {silence_on_connect, on_read, on_write, on_close};
  uv_loop_t loop;
  echo_server_t srv;
  fault_proxy_t proxy;
  proxy_setup(&loop, &srv, &proxy);
  proxy_set_mode(&proxy, PROXY_BLACKHOLE);
  client_t c;
  client_init(&c, &loop, 64);
  c.t.cb = &cbs;
  c.send = "into the void";
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)proxy.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_int_eq(c.reads + c.read_errors, 0); /* neither bytes nor EOF */
  ck_assert_int_eq(c.closes, 1);
  ck_assert_int_eq(proxy.accepted, 1);
  ck_assert_int_eq(srv.accepted, 0);
  client_free(&c);
}
END_TEST

START_TEST(proxy_refuse_closes_new_connections) {
  uv_loop_t loop;
  echo_server_t srv;
  fault_proxy_t proxy;
  proxy_setup(&loop, &srv, &proxy);
  proxy_set_mode(&proxy, PROXY_REFUSE);
  client_t c;
  client_init(&c, &loop, 64);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)proxy.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.read_errors, 1);
  ck_assert_int_eq(c.reads, 0);
  ck_assert_int_eq(proxy.accepted, 1);
  ck_assert_int_eq(srv.accepted, 0);
  client_free(&c);
}
END_TEST

/* The cut test ends when the client closed and the server saw the end. */
static echo_server_t *cut_srv;
static int cut_done(void) {
  return g.live_clients == 0 && cut_srv->eofs == 1;
}

START_TEST(proxy_cut_after_bytes) {
  uv_loop_t loop;
  echo_server_t srv;
  fault_proxy_t proxy;
  proxy_setup(&loop, &srv, &proxy);
  proxy.cut_after = 10;
  cut_srv = &srv;
  g.done = cut_done;
  client_t c;
  client_init(&c, &loop, 64);
  c.send = "0123456789abcdefghij";
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)proxy.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connect_status, 0);
  ck_assert_uint_eq(srv.received, 10);
  ck_assert_int_eq(c.read_errors, 1);
  ck_assert_uint_le(c.rx_len, 10);
  ck_assert_int_eq(c.closes, 1);
  client_free(&c);
}
END_TEST

static uint64_t delay_start;
static uint64_t delay_elapsed;

static void delay_on_connect(uvmqtt__transport_t *t, int status) {
  client_t *c = (client_t *)t;
  c->connects++;
  ck_assert_int_eq(status, 0);
  delay_start = uv_now(uvmqtt__poller_loop(t->poller));
  /* Three writes: the proxy must keep their order. */
  const char *parts[] = {"abc", "def", "ghi"};
  for (int i = 0; i < 3; i++) {
    uv_buf_t b = uv_buf_init((char *)parts[i], 3);
    ck_assert_int_eq(uvmqtt__transport_write(t, &b, 1, NULL), 1);
  }
}

static void delay_on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  on_read(t, nread, data);
  client_t *c = (client_t *)t;
  if (c->rx_len == 9 && delay_elapsed == 0) {
    uv_update_time(uvmqtt__poller_loop(t->poller));
    delay_elapsed = uv_now(uvmqtt__poller_loop(t->poller)) - delay_start;
  }
}

START_TEST(proxy_delay_keeps_order) {
  static const uvmqtt__transport_cbs_t cbs = {delay_on_connect, delay_on_read, on_write, on_close};
  uv_loop_t loop;
  echo_server_t srv;
  fault_proxy_t proxy;
  proxy_setup(&loop, &srv, &proxy);
  proxy.delay_ms = 100;
  delay_elapsed = 0;
  client_t c;
  client_init(&c, &loop, 64);
  c.t.cb = &cbs;
  c.expect = 9;
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)proxy.port), 0);
  finish_loop(&loop);
  ck_assert_uint_eq(c.rx_len, 9);
  ck_assert_mem_eq(c.rx, "abcdefghi", 9);
  /* 100 ms each way; the loop clock counts whole milliseconds. */
  ck_assert_uint_ge(delay_elapsed, 199);
  client_free(&c);
}
END_TEST

static void cut_all_on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  client_t *c = (client_t *)t;
  c->expect = 0;
  on_read(t, nread, data);
  if (nread > 0 && c->rx_len == 4) proxy_cut_all(g.proxy);
}

START_TEST(proxy_cut_all_closes_links) {
  static const uvmqtt__transport_cbs_t cbs = {on_connect, cut_all_on_read, on_write, on_close};
  uv_loop_t loop;
  echo_server_t srv;
  fault_proxy_t proxy;
  proxy_setup(&loop, &srv, &proxy);
  client_t c;
  client_init(&c, &loop, 64);
  c.t.cb = &cbs;
  c.send = "ping";
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)proxy.port), 0);
  finish_loop(&loop);
  ck_assert_uint_eq(c.rx_len, 4);
  ck_assert_int_eq(c.read_errors, 1);
  ck_assert_int_eq(c.closes, 1);
  client_free(&c);
}
END_TEST

/* ---- The fake broker ----------------------------------------------------- */

/* Encodes a CONNECT (clean start, keepalive 30, client id "t") followed by a
 * PINGREQ into out; returns the length. */
static size_t encode_connect_ping(uint8_t version, uint8_t *out, size_t cap) {
  uvmqtt_packet_t pkt;
  memset(&pkt, 0, sizeof(pkt));
  pkt.type = UVMQTT_CONNECT;
  pkt.u.connect.protocol_level = version;
  pkt.u.connect.clean_start = 1;
  pkt.u.connect.keep_alive = 30;
  pkt.u.connect.client_id.data = (const uint8_t *)"t";
  pkt.u.connect.client_id.len = 1;
  ssize_t n = uvmqtt_encode(&pkt, version, out, cap);
  ck_assert_int_gt(n, 0);
  memset(&pkt, 0, sizeof(pkt));
  pkt.type = UVMQTT_PINGREQ;
  ssize_t m = uvmqtt_encode(&pkt, version, out + n, cap - (size_t)n);
  ck_assert_int_eq(m, 2);
  return (size_t)(n + m);
}

/* Decodes every packet in buf into types[]; returns how many. */
static int decode_all(const uint8_t *buf, size_t len, uint8_t version, uint8_t *types,
                      uint8_t *reasons, int max) {
  uvmqtt_decoder_t dec;
  uvmqtt_decoder_init(&dec, version, 0, NULL);
  int count = 0;
  size_t off = 0;
  while (off < len && count < max) {
    uvmqtt_packet_t pkt;
    int got = 0;
    ssize_t n = uvmqtt_decode(&dec, buf + off, len - off, &pkt, &got);
    ck_assert_int_ge(n, 0);
    off += (size_t)n;
    if (!got) break;
    types[count] = pkt.type;
    reasons[count] = pkt.reason;
    count++;
  }
  uvmqtt_decoder_reset(&dec);
  return count;
}

static void fake_setup(uv_loop_t *loop, fake_broker_t *fb, fake_packet_cb on_packet) {
  ck_assert_int_eq(uv_loop_init(loop), 0);
  memset(fb, 0, sizeof(*fb));
  ck_assert_int_eq(fake_broker_start(fb, loop, on_packet), 0);
  ck_assert_int_gt(fb->port, 0);
  g.fb = fb;
}

static void check_default_answers(uint8_t version) {
  uv_loop_t loop;
  fake_broker_t fb;
  fake_setup(&loop, &fb, NULL);
  uint8_t out[64];
  client_t c;
  client_init(&c, &loop, 64);
  c.send_bin = out;
  c.send_bin_len = encode_connect_ping(version, out, sizeof(out));
  c.expect = version == UVMQTT_V5 ? 5 + 2 : 4 + 2; /* CONNACK, PINGRESP */
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)fb.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(fb.connections, 1);
  ck_assert_int_eq(fb.packets, 2);
  ck_assert_int_eq(fb.version, version);
  ck_assert_int_eq(fb.decode_errors, 0);
  ck_assert_ptr_null(fb.conns);
  uint8_t types[4], reasons[4];
  ck_assert_int_eq(decode_all(c.rx, c.rx_len, version, types, reasons, 4), 2);
  ck_assert_int_eq(types[0], UVMQTT_CONNACK);
  ck_assert_int_eq(reasons[0], 0);
  ck_assert_int_eq(types[1], UVMQTT_PINGRESP);
  client_free(&c);
}

START_TEST(fake_broker_default_answers_v311) {
  check_default_answers(UVMQTT_V311);
}
END_TEST

START_TEST(fake_broker_default_answers_v5) {
  check_default_answers(UVMQTT_V5);
}
END_TEST

/* A script: refuse CONNECT with reason 0x87 (not authorized), then drop the
 * connection on PINGREQ. */
static uint8_t scripted_types[8];
static int scripted_count;

static void scripted_on_packet(fake_broker_t *fb, fake_conn_t *conn, const uvmqtt_packet_t *pkt) {
  ck_assert_ptr_eq(fake_conn_broker(conn), fb);
  if (scripted_count < 8) scripted_types[scripted_count++] = pkt->type;
  if (pkt->type == UVMQTT_CONNECT) {
    uvmqtt_packet_t reply;
    memset(&reply, 0, sizeof(reply));
    reply.type = UVMQTT_CONNACK;
    reply.reason = 0x87;
    ck_assert_int_eq(fake_send_packet(conn, &reply), 0);
  } else if (pkt->type == UVMQTT_PINGREQ) {
    fake_conn_close(conn);
  }
}

/* Sends the first half of the bytes now and the rest 20 ms later, so the
 * fake broker decodes a packet that arrives in two reads. */
static uv_timer_t split_timer;

static void split_rest_cb(uv_timer_t *timer) {
  client_t *c = timer->data;
  size_t half = c->send_bin_len / 2;
  uv_buf_t b = uv_buf_init((char *)c->send_bin + half, (unsigned)(c->send_bin_len - half));
  ck_assert_int_eq(uvmqtt__transport_write(&c->t, &b, 1, NULL), 1);
  uv_close((uv_handle_t *)timer, NULL);
}

static void split_on_connect(uvmqtt__transport_t *t, int status) {
  client_t *c = (client_t *)t;
  c->connects++;
  ck_assert_int_eq(status, 0);
  uv_buf_t b = uv_buf_init((char *)c->send_bin, (unsigned)(c->send_bin_len / 2));
  ck_assert_int_eq(uvmqtt__transport_write(t, &b, 1, NULL), 1);
  uv_timer_init(uvmqtt__poller_loop(t->poller), &split_timer);
  split_timer.data = c;
  uv_timer_start(&split_timer, split_rest_cb, 20, 0);
}

START_TEST(fake_broker_scripted_answers_split_input) {
  static const uvmqtt__transport_cbs_t cbs = {split_on_connect, on_read, on_write, on_close};
  uv_loop_t loop;
  fake_broker_t fb;
  fake_setup(&loop, &fb, scripted_on_packet);
  scripted_count = 0;
  uint8_t out[64];
  client_t c;
  client_init(&c, &loop, 64);
  c.t.cb = &cbs;
  c.send_bin = out;
  c.send_bin_len = encode_connect_ping(UVMQTT_V5, out, sizeof(out));
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)fb.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(scripted_count, 2);
  ck_assert_int_eq(scripted_types[0], UVMQTT_CONNECT);
  ck_assert_int_eq(scripted_types[1], UVMQTT_PINGREQ);
  ck_assert_int_eq(c.read_errors, 1); /* the broker dropped the connection */
  uint8_t types[4], reasons[4];
  ck_assert_int_eq(decode_all(c.rx, c.rx_len, UVMQTT_V5, types, reasons, 4), 1);
  ck_assert_int_eq(types[0], UVMQTT_CONNACK);
  ck_assert_int_eq(reasons[0], 0x87);
  ck_assert_int_eq(fb.closed, 0); /* closed by the broker, not the client */
  client_free(&c);
}
END_TEST

START_TEST(fake_broker_drops_malformed_input) {
  static const uint8_t garbage[] = {0x00, 0x00}; /* packet type 0 is reserved */
  uv_loop_t loop;
  fake_broker_t fb;
  fake_setup(&loop, &fb, NULL);
  client_t c;
  client_init(&c, &loop, 16);
  c.send_bin = garbage;
  c.send_bin_len = sizeof(garbage);
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)fb.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(fb.decode_errors, 1);
  ck_assert_int_eq(fb.packets, 0);
  ck_assert_int_eq(c.read_errors, 1);
  ck_assert_uint_eq(c.rx_len, 0);
  client_free(&c);
}
END_TEST

static void stop_on_connect(uvmqtt__transport_t *t, int status) {
  on_connect(t, status);
  fake_broker_stop(g.fb);
}

START_TEST(fake_broker_stop_closes_connections) {
  static const uvmqtt__transport_cbs_t cbs = {stop_on_connect, on_read, on_write, on_close};
  uv_loop_t loop;
  fake_broker_t fb;
  fake_setup(&loop, &fb, NULL);
  client_t c;
  client_init(&c, &loop, 16);
  c.t.cb = &cbs;
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)fb.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(c.connects, 1);
  ck_assert_int_eq(c.read_errors, 1);
  ck_assert_int_le(fb.connections, 1);
  ck_assert_ptr_null(fb.conns);
  client_free(&c);
}
END_TEST

START_TEST(fake_broker_through_proxy) {
  uv_loop_t loop;
  fake_broker_t fb;
  fake_setup(&loop, &fb, NULL);
  fault_proxy_t proxy;
  ck_assert_int_eq(proxy_start(&proxy, &loop, fb.port), 0);
  g.proxy = &proxy;
  proxy.delay_ms = 10;
  uint8_t out[64];
  client_t c;
  client_init(&c, &loop, 64);
  c.send_bin = out;
  c.send_bin_len = encode_connect_ping(UVMQTT_V311, out, sizeof(out));
  c.expect = 4 + 2;
  ck_assert_int_eq(uvmqtt__transport_connect(&c.t, "127.0.0.1", (uint16_t)proxy.port), 0);
  finish_loop(&loop);
  ck_assert_int_eq(proxy.accepted, 1);
  ck_assert_int_eq(fb.packets, 2);
  ck_assert_uint_eq(c.rx_len, 6);
  client_free(&c);
}
END_TEST

/* ---- The Mosquitto launcher ---------------------------------------------- */

/* A minimal MQTT 3.1.1 CONNECT (clean session, keepalive 60, empty client
 * id) and the CONNACK a broker accepts it with. */
static const char raw_connect[] = "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
static const uint8_t raw_connack[] = {0x20, 0x02, 0x00, 0x00};

static void mqtt_on_connect(uvmqtt__transport_t *t, int status) {
  client_t *c = (client_t *)t;
  c->connects++;
  c->connect_status = status;
  if (status < 0) {
    client_close(c);
    return;
  }
  uv_buf_t b = uv_buf_init((char *)raw_connect, sizeof(raw_connect) - 1);
  ck_assert_int_eq(uvmqtt__transport_write(t, &b, 1, NULL), 1);
}

/* Sends CONNECT to 127.0.0.1:port and returns the connect status; *c holds
 * what came back. */
static int mqtt_probe(uv_loop_t *loop, int port, client_t *c) {
  static const uvmqtt__transport_cbs_t cbs = {mqtt_on_connect, on_read, on_write, on_close};
  client_init(c, loop, 16);
  c->t.cb = &cbs;
  c->expect = sizeof(raw_connack);
  ck_assert_int_eq(uvmqtt__transport_connect(&c->t, "127.0.0.1", (uint16_t)port), 0);
  ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(c->closes, 1);
  return c->connect_status;
}

START_TEST(broker_start_stop_restart) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  test_broker_t b;
  ck_assert_int_eq(test_broker_start(&b, "persistence true"), 0);
  ck_assert_int_gt(b.pid, 0);
  client_t c;
  ck_assert_int_eq(mqtt_probe(&loop, b.port, &c), 0);
  ck_assert_uint_eq(c.rx_len, sizeof(raw_connack));
  ck_assert_mem_eq(c.rx, raw_connack, sizeof(raw_connack));
  client_free(&c);

  ck_assert_int_eq(test_broker_stop(&b), 0);
  ck_assert_int_eq(b.pid, 0);
  ck_assert_int_eq(mqtt_probe(&loop, b.port, &c), UV_ECONNREFUSED);
  client_free(&c);
  /* Persistence was asked for: the broker saved its database on SIGTERM. */
  char path[512];
  struct stat st;
  snprintf(path, sizeof(path), "%s/mosquitto.db", b.dir);
  ck_assert_int_eq(stat(path, &st), 0);

  int port = b.port;
  ck_assert_int_eq(test_broker_restart(&b), 0);
  ck_assert_int_eq(b.port, port);
  ck_assert_int_eq(mqtt_probe(&loop, b.port, &c), 0);
  ck_assert_mem_eq(c.rx, raw_connack, sizeof(raw_connack));
  client_free(&c);

  char dir[sizeof(b.dir)];
  memcpy(dir, b.dir, sizeof(dir));
  test_broker_cleanup(&b);
  ck_assert_int_eq(b.pid, 0);
  ck_assert_int_ne(stat(dir, &st), 0);
  finish_loop(&loop);
}
END_TEST

START_TEST(broker_cleaned_up_at_exit) {
  /* A child starts a broker and exits without cleaning up, as a test does
   * when an assertion fails. */
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  fflush(stdout);
  fflush(stderr);
  pid_t child = fork();
  ck_assert_int_ge(child, 0);
  if (child == 0) {
    test_broker_t b;
    if (test_broker_start(&b, NULL) != 0) _exit(2);
    if (write(fds[1], &b, sizeof(b)) != (ssize_t)sizeof(b)) _exit(3);
    exit(0);
  }
  close(fds[1]);
  test_broker_t b;
  ck_assert_int_eq(read(fds[0], &b, sizeof(b)), sizeof(b));
  close(fds[0]);
  int status;
  ck_assert_int_eq(waitpid(child, &status, 0), child);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  struct stat st;
  ck_assert_int_ne(stat(b.dir, &st), 0);
  ck_assert_int_ne(kill(b.pid, 0), 0);
}
END_TEST

START_TEST(support_run_with_timeout) {
  ck_assert_int_eq(test_run("exit 3", 10), 3);
  uint64_t start = uv_hrtime();
  ck_assert_int_eq(test_run("sleep 30", 1), -1);
  ck_assert_uint_lt(uv_hrtime() - start, 10ull * 1000 * 1000 * 1000);
  ck_assert_ptr_nonnull(test_build_root());
  ck_assert_ptr_nonnull(test_source_root());
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("transport");

  TCase *tc = tcase_create("connect");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_add_test(tc, transport_echo_ipv4);
  tcase_add_test(tc, transport_echo_ipv6);
  tcase_add_test(tc, transport_echo_localhost);
  tcase_add_test(tc, transport_connect_refused);
  tcase_add_test(tc, transport_connect_next_address);
  tcase_add_test(tc, transport_connect_every_address_refuses);
  tcase_add_test(tc, transport_eof_from_peer);
  tcase_add_test(tc, transport_misuse_errors);
  tcase_add_test(tc, transport_reconnect_after_close);
  suite_add_tcase(s, tc);

  tc = tcase_create("write");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, transport_large_write);
  tcase_add_test(tc, transport_close_with_writes_pending);
  suite_add_tcase(s, tc);

  tc = tcase_create("close");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_add_test(tc, transport_close_idle);
  tcase_add_test(tc, transport_close_during_resolve);
  tcase_add_test(tc, transport_close_during_connect);
  tcase_add_test(tc, transport_close_in_on_connect);
  tcase_add_test(tc, transport_close_in_on_read);
  tcase_add_loop_test(tc, transport_close_other_in_same_batch, 0, 3);
  suite_add_tcase(s, tc);

  tc = tcase_create("read_pool");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_add_test(tc, transport_read_pool_shared_and_freed);
  tcase_add_test(tc, transport_alloc_failures);
  suite_add_tcase(s, tc);

  tc = tcase_create("proxy");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, proxy_pass_echo);
  tcase_add_test(tc, proxy_large_transfer_in_order);
  tcase_add_test(tc, proxy_blackhole_keeps_connection_silent);
  tcase_add_test(tc, proxy_refuse_closes_new_connections);
  tcase_add_test(tc, proxy_cut_after_bytes);
  tcase_add_test(tc, proxy_delay_keeps_order);
  tcase_add_test(tc, proxy_cut_all_closes_links);
  suite_add_tcase(s, tc);

  tc = tcase_create("fake_broker");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_add_test(tc, fake_broker_default_answers_v311);
  tcase_add_test(tc, fake_broker_default_answers_v5);
  tcase_add_test(tc, fake_broker_scripted_answers_split_input);
  tcase_add_test(tc, fake_broker_drops_malformed_input);
  tcase_add_test(tc, fake_broker_stop_closes_connections);
  tcase_add_test(tc, fake_broker_through_proxy);
  suite_add_tcase(s, tc);

  tc = tcase_create("broker");
  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, broker_start_stop_restart);
  /* Its child calls exit(), which runs libuv's thread pool destructor; in a
   * child forked from a process whose pool threads exist (CK_FORK=no, after
   * earlier tests used the pool) that destructor joins threads the child
   * does not have. Fork mode gives every test a fresh process. */
  const char *fork_mode = getenv("CK_FORK");
  if (fork_mode == NULL || strcmp(fork_mode, "no") != 0)
    tcase_add_test(tc, broker_cleaned_up_at_exit);
  tcase_add_test(tc, support_run_with_timeout);
  suite_add_tcase(s, tc);

  return s;
}
