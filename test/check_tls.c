/* TLS against a real Mosquitto on 127.0.0.1: publish and subscribe at every
 * QoS, client certificates, each verification failure with its own error,
 * `insecure`, plaintext and TLS crossed on the wrong ports, configuration
 * errors, session resumption across reconnects, a broker restart under a
 * QoS 1 stream, a hundred connect/close cycles without a leak, and the heap
 * that a thousand idle TLS connections hold.
 *
 * The certificates are made with the openssl command in a temporary
 * directory once per test case: a CA, a server certificate for localhost and
 * 127.0.0.1, a client certificate (with a plain and an encrypted key), a
 * second unrelated CA, an expired server certificate and one for another
 * host name. One broker per test listens in plaintext and on four TLS
 * listeners: the good certificate, the same with require_certificate, the
 * wrong host name and the expired certificate. */
#include <arpa/inet.h>
#include <check.h>
#include <ftw.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker.h"
#include "certs.h"
#include "client/client_impl.h"
#include "proxy.h"
#include "transport/tls.h"
#include "uvmqtt.h"

/* Each scenario must finish well within its test case's Check timeout, so
 * the watchdog's message, not a bare timeout, reports a stuck scenario. */
#define WATCHDOG_MS     30000
#define TCASE_TIMEOUT_S 60
/* The connect timeout of scenarios that must fail: a failure that takes
 * this long was a hang, not a clean error. */
#define FAIL_TIMEOUT_MS 4000

#define CYCLES           100
#define MANY_CLIENTS     1000
#define MANY_IN_FLIGHT   50
#define MANY_WATCHDOG_MS 200000
#define MANY_TIMEOUT_S   300
#define MANY_SETTLE_MS   300
/* Heap per idle TLS connection, both libraries together: about 530 bytes
 * with OpenSSL 3.0 once the connection left OpenSSL for tls_record.c (the
 * TLS state, its keys and the TCP transport's share); one that kept its SSL
 * object (7.6 KiB alone) or any record buffer would cross the bound. Per
 * client, the connection and the client itself: about 1.9 KiB. */
#define MANY_CONN_BOUND   1024u
#define MANY_CLIENT_BOUND 2560u

#define ROBUST_MESSAGES   120
#define ROBUST_RESTART_AT 60

/* ---- Certificates -------------------------------------------------------------------------- */

/* ---- Loop, watchdog and broker ----------------------------------------------------------------
 */

static uv_loop_t g_loop;
static uv_timer_t g_watchdog;
static test_broker_t g_broker;

static struct {
  int tls;     /* the server certificate */
  int mtls;    /* the same, require_certificate true */
  int wrong;   /* a certificate for wrong.example */
  int expired; /* the server's names, expired */
} g_port;

static void loop_start(uint64_t timeout_ms) {
  test_loop_start(&g_loop, &g_watchdog, timeout_ms, &g_broker);
}

static void loop_run(void) {
  uv_run(&g_loop, UV_RUN_DEFAULT);
}

static void loop_finish(void) {
  test_loop_finish(&g_loop, &g_watchdog);
}

static int port_accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons((uint16_t)port);
  int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  close(fd);
  return ok;
}

/* test_broker_start() waits for the plaintext listener only. */
static void wait_tls_listeners(void) {
  int ports[4] = {g_port.tls, g_port.mtls, g_port.wrong, g_port.expired};
  for (int i = 0; i < 4; i++) {
    int tries = 0;
    while (!port_accepts(ports[i]) && tries++ < 250)
      usleep(20000);
    ck_assert_msg(tries <= 250, "TLS listener on port %d did not open", ports[i]);
  }
}

static int distinct_port(const int *taken, int n) {
  for (int tries = 0; tries < 50; tries++) {
    int p = test_free_port();
    int clash = p <= 0;
    for (int i = 0; i < n && !clash; i++)
      clash = taken[i] == p;
    if (!clash) return p;
  }
  ck_abort_msg("no free port");
  return -1;
}

static int listener(char *out, size_t cap, int port, const char *certname, const char *more) {
  return snprintf(out, cap, "listener %d 127.0.0.1\ncafile %s\ncertfile %s.crt\nkeyfile %s.key\n%s",
                  port, test_cert("ca.crt"), test_cert(certname), test_cert(certname), more);
}

/* One broker: plaintext on g_broker.port, TLS on the four g_port listeners,
 * plus `more` config lines. */
static void broker_start(const char *more) {
  int taken[4];
  for (int i = 0; i < 4; i++)
    taken[i] = distinct_port(taken, i);
  g_port.tls = taken[0];
  g_port.mtls = taken[1];
  g_port.wrong = taken[2];
  g_port.expired = taken[3];
  char extra[2048];
  size_t n = 0;
  n += (size_t)snprintf(extra + n, sizeof extra - n, "%s\n", more);
  n += (size_t)listener(extra + n, sizeof extra - n, g_port.tls, "server", "");
  n += (size_t)listener(extra + n, sizeof extra - n, g_port.mtls, "server",
                        "require_certificate true\n");
  n += (size_t)listener(extra + n, sizeof extra - n, g_port.wrong, "wronghost", "");
  n += (size_t)listener(extra + n, sizeof extra - n, g_port.expired, "expired", "");
  ck_assert_uint_lt(n, sizeof extra);
  ck_assert_msg(test_broker_start(&g_broker, extra) == 0, "mosquitto did not start");
  wait_tls_listeners();
}

static void broker_finish(void) {
  test_broker_cleanup(&g_broker);
}

static const char *uri(const char *scheme, const char *host, int port) {
  static char bufs[8][96];
  static unsigned next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s://%s:%d", scheme, host, port);
  return b;
}

/* ---- A client with counters ---------------------------------------------------------------- */

typedef struct peer_s peer_t;

struct peer_s {
  uvmqtt_client_t client;
  uv_timer_t timer;
  int connect_calls;
  int connect_ok;
  int connect_status;
  uint64_t started_ms;
  uint64_t connect_ms; /* from uvmqtt_connect() to the last on_connect */
  int reused[8];       /* per successful connection: was the TLS session resumed */
  int disconnect_calls;
  int close_calls;
  int messages;
  int publish_calls;
  int publish_failures;
  int suback_calls;

  void (*connected)(peer_t *p, int status);
  void (*message)(peer_t *p, const uvmqtt_message_t *m);
  void (*published)(peer_t *p, int status, int index);
  void (*subscribed)(peer_t *p);
  void (*delayed)(peer_t *p);
};

static void cb_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  peer_t *p = client->data;
  ck_assert_ptr_nonnull(ack);
  p->connect_calls++;
  p->connect_status = status;
  p->connect_ms = uv_now(&g_loop) - p->started_ms;
  if (status == 0) {
    if (p->connect_ok < 8)
      p->reused[p->connect_ok] = uvmqtt__tls_ctx_reused(client->impl->cfg->tls);
    p->connect_ok++;
  }
  if (p->connected) p->connected(p, status);
}

static void cb_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  peer_t *p = client->data;
  (void)info;
  p->disconnect_calls++;
}

static void cb_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  peer_t *p = client->data;
  (void)arg;
  p->messages++;
  if (p->message) p->message(p, m);
}

static void cb_closed(uvmqtt_client_t *client) {
  peer_t *p = client->data;
  p->close_calls++;
  ck_assert_ptr_null(client->impl);
  uv_close((uv_handle_t *)&p->timer, NULL);
}

static void cb_suback(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                      void *arg) {
  peer_t *p = client->data;
  (void)arg;
  ck_assert_msg(status == 0, "subscribe: %s", uvmqtt_err_name(status));
  ck_assert_uint_eq(count, 1);
  ck_assert_uint_le(reasons[0], 2);
  p->suback_calls++;
  if (p->subscribed) p->subscribed(p);
}

static void cb_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  peer_t *p = client->data;
  (void)reason;
  p->publish_calls++;
  if (status != 0) p->publish_failures++;
  if (p->published) p->published(p, status, (int)(intptr_t)arg);
}

static void peer_options(uvmqtt_options_t *o, const char *server, const uvmqtt_tls_options_t *tls) {
  uvmqtt_options_init(o);
  o->uri = server;
  o->tls = tls;
  o->no_reconnect = 1;
}

static void peer_init(peer_t *p, const uvmqtt_options_t *o) {
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = cb_connect;
  cbs.on_disconnect = cb_disconnect;
  cbs.on_message = cb_message;
  int rc = uvmqtt_client_init(&g_loop, &p->client, o, &cbs);
  ck_assert_msg(rc == 0, "client_init: %s", uvmqtt_err_name(rc));
  p->client.data = p;
  ck_assert_int_eq(uv_timer_init(&g_loop, &p->timer), 0);
  p->timer.data = p;
}

static void peer_connect(peer_t *p) {
  p->started_ms = uv_now(&g_loop);
  int rc = uvmqtt_connect(&p->client);
  ck_assert_msg(rc == 0, "connect: %s", uvmqtt_err_name(rc));
}

static void peer_close(peer_t *p) {
  uvmqtt_close(&p->client, cb_closed);
}

static void peer_subscribe(peer_t *p, const char *filter, uint8_t qos) {
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)filter;
  sub.filter.len = (uint32_t)strlen(filter);
  sub.options = UVMQTT_SUB_QOS(qos);
  int rc = uvmqtt_subscribe(&p->client, &sub, 1, NULL, NULL, cb_suback, NULL);
  ck_assert_msg(rc == 0, "subscribe: %s", uvmqtt_err_name(rc));
}

static void peer_publish(peer_t *p, const char *topic, const void *data, size_t len, uint8_t qos,
                         int index) {
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.qos = qos;
  int rc = uvmqtt_publish(&p->client, topic, data, len, &o, cb_published, (void *)(intptr_t)index);
  ck_assert_msg(rc == 0, "publish: %s", uvmqtt_err_name(rc));
}

static void delay_cb(uv_timer_t *timer) {
  peer_t *p = timer->data;
  p->delayed(p);
}

static void peer_after(peer_t *p, uint64_t ms, void (*fn)(peer_t *p)) {
  p->delayed = fn;
  ck_assert_int_eq(uv_timer_start(&p->timer, delay_cb, ms, 0), 0);
}

/* TLS options trusting the test CA. */
static void tls_trusting_ca(uvmqtt_tls_options_t *t) {
  memset(t, 0, sizeof *t);
  t->ca_file = test_cert("ca.crt");
}

/* The scenarios' shared state: a fresh process per test (fork mode). */
static struct {
  peer_t a, b;
  uint8_t qos;
  uint8_t no_handover; /* the connection stays with OpenSSL */
  uint8_t *big;
  size_t big_len;
  int seen[ROBUST_MESSAGES];
  int published;
  int restarted;
} g;

/* ---- Expecting a connection, or a given failure --------------------------------------------- */

/* Connected: one QoS 1 round trip through the broker proves bytes flow both
 * ways over the TLS stream; then close. */
static void expect_published(peer_t *p, int status, int index) {
  (void)index;
  ck_assert_msg(status == 0, "publish over TLS: %s", uvmqtt_err_name(status));
  peer_close(p);
}

static void expect_connected(peer_t *p, int status) {
  if (status != 0) {
    peer_close(p);
    return;
  }
  p->published = expect_published;
  peer_publish(p, "tls/expect", "ping", 4, 1, 0);
}

/* Connects once to `server` with `tls` and checks the outcome: 0 for a
 * working connection, or the exact error of the failed attempt, which must
 * come well before the connect timeout. */
static void run_expect(const char *server, const uvmqtt_tls_options_t *tls, int expected) {
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  peer_options(&o, server, tls);
  o.connect_timeout_ms = FAIL_TIMEOUT_MS;
  peer_t *p = &g.a;
  peer_init(p, &o);
  p->connected = expect_connected;
  peer_connect(p);
  loop_run();
  ck_assert_int_eq(p->connect_calls, 1);
  ck_assert_msg(p->connect_status == expected, "%s: expected %s, got %s (%s)", server,
                uvmqtt_err_name(expected), uvmqtt_err_name(p->connect_status),
                uvmqtt_strerror(p->connect_status));
  if (expected == 0) {
    ck_assert_int_eq(p->publish_calls, 1);
    ck_assert_int_eq(p->publish_failures, 0);
  } else {
    ck_assert_msg(p->connect_ms < FAIL_TIMEOUT_MS, "the failure took %llu ms",
                  (unsigned long long)p->connect_ms);
  }
  ck_assert_int_eq(p->close_calls, 1);
  loop_finish();
}

/* ---- Publish and subscribe ------------------------------------------------------------------ */

static const char *pubsub_payload(int i, size_t *len) {
  switch (i) {
  case 0: *len = 5; return "hello";
  case 1: *len = g.big_len; return (const char *)g.big;
  default: *len = 3; return "bye";
  }
}

static void pubsub_maybe_done(peer_t *p) {
  if (p->messages == 3 && p->publish_calls == 3) peer_close(p);
}

static void pubsub_subscribed(peer_t *p) {
  /* TLS 1.3 after the CONNACK: the rest runs on the record layer, unless
   * the options keep OpenSSL. */
  ck_assert_int_eq(uvmqtt__transport_tls_handed_over(&p->client.impl->tr), g.no_handover ? 0 : 1);
  for (int i = 0; i < 3; i++) {
    size_t len;
    const char *data = pubsub_payload(i, &len);
    peer_publish(p, "tls/pubsub", data, len, g.qos, i);
  }
}

static void pubsub_message(peer_t *p, const uvmqtt_message_t *m) {
  size_t len;
  const char *want = pubsub_payload(p->messages - 1, &len);
  ck_assert_uint_eq(m->qos, g.qos);
  ck_assert_uint_eq(m->payload.len, len);
  ck_assert_msg(memcmp(m->payload.data, want, len) == 0, "payload %d differs", p->messages - 1);
  pubsub_maybe_done(p);
}

static void pubsub_published(peer_t *p, int status, int index) {
  ck_assert_msg(status == 0, "publish %d: %s", index, uvmqtt_err_name(status));
  pubsub_maybe_done(p);
}

static void pubsub_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  peer_subscribe(p, "tls/pubsub", g.qos);
}

/* Three messages, one of them 300 KB (many TLS records each way, more than
 * the socket takes at once), at QoS _i, with MQTT 5 for QoS 2; index 3:
 * QoS 1 with no_handover (OpenSSL keeps the connection). */
START_TEST(tls_pubsub_qos) {
  g.qos = (uint8_t)(_i == 3 ? 1 : _i);
  g.no_handover = _i == 3;
  g.big_len = 300000;
  g.big = malloc(g.big_len);
  ck_assert_ptr_nonnull(g.big);
  for (size_t i = 0; i < g.big_len; i++)
    g.big[i] = (uint8_t)(i * 131u + (i >> 8) * 7u);
  broker_start("");
  loop_start(WATCHDOG_MS);
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  t.no_handover = g.no_handover;
  uvmqtt_options_t o;
  peer_options(&o, uri("mqtts", "127.0.0.1", g_port.tls), &t);
  if (_i == 2) o.version = UVMQTT_V5;
  peer_t *p = &g.a;
  peer_init(p, &o);
  p->connected = pubsub_connected;
  p->subscribed = pubsub_subscribed;
  p->message = pubsub_message;
  p->published = pubsub_published;
  peer_connect(p);
  loop_run();
  ck_assert_int_eq(p->connect_calls, 1);
  ck_assert_int_eq(p->connect_status, 0);
  ck_assert_int_eq(p->suback_calls, 1);
  ck_assert_int_eq(p->messages, 3);
  ck_assert_int_eq(p->publish_calls, 3);
  ck_assert_int_eq(p->publish_failures, 0);
  ck_assert_int_eq(p->disconnect_calls, 0);
  ck_assert_int_eq(p->close_calls, 1);
  loop_finish();
  broker_finish();
  free(g.big);
}
END_TEST

/* ---- Verification -------------------------------------------------------------------------- */

/* 0: an IP address (matched against the certificate's IP entry, no SNI);
 * 1: the host name (DNS entry, SNI); 2: "ssl://", TLS 1.3 only with one
 * ciphersuite, ALPN offered and no SNI. */
START_TEST(tls_verified_connection) {
  broker_start("");
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  static const char *const alpn[] = {"mqtt", "x-uvmqtt-test"};
  const char *server = uri("mqtts", "127.0.0.1", g_port.tls);
  if (_i == 1) server = uri("mqtts", "localhost", g_port.tls);
  if (_i == 2) {
    server = uri("ssl", "localhost", g_port.tls);
    t.min_version = UVMQTT_TLS_1_3;
    t.ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
    t.alpn = alpn;
    t.alpn_count = 2;
    t.no_sni = 1;
  }
  run_expect(server, &t, 0);
  broker_finish();
}
END_TEST

static int password_from_callback(char *buf, int size, void *arg) {
  const char *pw = arg;
  int n = (int)strlen(pw);
  if (n > size) return -1;
  memcpy(buf, pw, (size_t)n);
  return n;
}

/* The listener that requires a certificate accepts ours: 0 with a plain
 * key, 1 with an encrypted key and its password, 2 with the password from a
 * callback. */
START_TEST(tls_client_certificate) {
  broker_start("");
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  t.cert_file = test_cert("client.crt");
  t.key_file = test_cert(_i == 0 ? "client.key" : "client-enc.key");
  if (_i == 1) t.key_password = TEST_KEY_PASSWORD;
  if (_i == 2) {
    t.key_password_cb = password_from_callback;
    t.key_password_arg = (void *)(uintptr_t)TEST_KEY_PASSWORD;
  }
  run_expect(uri("mqtts", "localhost", g_port.mtls), &t, 0);
  broker_finish();
}
END_TEST

START_TEST(tls_client_certificate_missing) {
  broker_start("");
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  run_expect(uri("mqtts", "localhost", g_port.mtls), &t, UVMQTT_ETLSPEERCERT);
  broker_finish();
}
END_TEST

/* 0: trusting only an unrelated CA; 1: the system's trust store, which
 * does not hold the test CA. */
START_TEST(tls_unknown_ca) {
  broker_start("");
  uvmqtt_tls_options_t t;
  memset(&t, 0, sizeof t);
  t.ca_file = test_cert("other.crt");
  run_expect(uri("mqtts", "localhost", g_port.tls), _i == 0 ? &t : NULL, UVMQTT_ETLSUNKNOWNCA);
  broker_finish();
}
END_TEST

START_TEST(tls_expired_certificate) {
  broker_start("");
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  run_expect(uri("mqtts", "localhost", g_port.expired), &t, UVMQTT_ETLSEXPIRED);
  broker_finish();
}
END_TEST

/* A valid certificate for wrong.example: 0 reached as localhost, 1 as
 * 127.0.0.1. */
START_TEST(tls_wrong_host_name) {
  broker_start("");
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  run_expect(uri("mqtts", _i == 0 ? "localhost" : "127.0.0.1", g_port.wrong), &t,
             UVMQTT_ETLSHOSTNAME);
  broker_finish();
}
END_TEST

/* `insecure` accepts what verification refuses: 0 the wrong host name
 * under an unrelated CA, 1 the expired certificate, 2 no CA at all. */
START_TEST(tls_insecure_connects) {
  broker_start("");
  uvmqtt_tls_options_t t;
  memset(&t, 0, sizeof t);
  t.insecure = 1;
  int port = g_port.wrong;
  if (_i == 0) t.ca_file = test_cert("other.crt");
  if (_i == 1) port = g_port.expired;
  run_expect(uri("mqtts", "localhost", port), &t, 0);
  broker_finish();
}
END_TEST

/* ---- Wrong ports ------------------------------------------------------------------------------
 */

static void crossed_connected(peer_t *p, int status) {
  (void)status;
  peer_close(p);
}

/* Connects once and returns the failure, which must be an error, not a
 * hang: it comes within the connect timeout. */
static int crossed_attempt(const char *server, const uvmqtt_tls_options_t *tls) {
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  peer_options(&o, server, tls);
  o.connect_timeout_ms = FAIL_TIMEOUT_MS;
  peer_t *p = &g.a;
  peer_init(p, &o);
  p->connected = crossed_connected;
  peer_connect(p);
  loop_run();
  ck_assert_int_eq(p->connect_calls, 1);
  ck_assert_int_eq(p->connect_ok, 0);
  ck_assert_int_lt(p->connect_status, 0);
  ck_assert_uint_le(p->connect_ms, FAIL_TIMEOUT_MS + 500);
  ck_assert_int_eq(p->close_calls, 1);
  loop_finish();
  printf("%s: %s (%s) after %llu ms\n", server, uvmqtt_err_name(p->connect_status),
         uvmqtt_strerror(p->connect_status), (unsigned long long)p->connect_ms);
  return p->connect_status;
}

START_TEST(tls_plain_client_on_tls_port) {
  broker_start("");
  int err = crossed_attempt(uri("mqtt", "127.0.0.1", g_port.tls), NULL);
  /* The broker's TLS layer refuses the CONNECT bytes and hangs up. */
  ck_assert_int_ne(err, UVMQTT_ECONNTIMEDOUT);
  broker_finish();
}
END_TEST

START_TEST(tls_client_on_plain_port) {
  broker_start("");
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  int err = crossed_attempt(uri("mqtts", "127.0.0.1", g_broker.port), &t);
  /* Mosquitto reads the ClientHello as a malformed CONNECT and hangs up. */
  ck_assert_int_eq(err, UVMQTT_ETLSCLOSED);
  broker_finish();
}
END_TEST

/* ---- Configuration errors ----------------------------------------------------------------- */

static int init_error(const uvmqtt_tls_options_t *t, const char *server) {
  uvmqtt_options_t o;
  peer_options(&o, server, t);
  uvmqtt_client_t c;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  int rc = uvmqtt_client_init(&g_loop, &c, &o, &cbs);
  if (rc == 0) {
    uvmqtt_close(&c, NULL);
    uv_run(&g_loop, UV_RUN_DEFAULT);
  }
  return rc;
}

START_TEST(tls_config_errors) {
  ck_assert_int_eq(uv_loop_init(&g_loop), 0);
  const char *server = "mqtts://localhost:1";
  uvmqtt_tls_options_t t;

  tls_trusting_ca(&t);
  ck_assert_int_eq(init_error(&t, server), 0);
  /* TLS options also load at init for a plaintext server list. */
  ck_assert_int_eq(init_error(&t, "mqtt://localhost:1"), 0);
  t.ca_file = test_cert("missing.crt");
  ck_assert_int_eq(init_error(&t, server), UVMQTT_ETLSCONFIG);
  ck_assert_int_eq(init_error(&t, "mqtt://localhost:1"), UVMQTT_ETLSCONFIG);

  tls_trusting_ca(&t);
  t.cert_file = test_cert("client.crt");
  t.key_file = test_cert("client-enc.key");
  ck_assert_int_eq(init_error(&t, server), UVMQTT_ETLSCONFIG); /* no password */
  t.key_password = "wrong";
  ck_assert_int_eq(init_error(&t, server), UVMQTT_ETLSCONFIG);
  t.key_password = TEST_KEY_PASSWORD;
  ck_assert_int_eq(init_error(&t, server), 0);
  t.key_password = NULL;
  t.key_file = test_cert("server.key"); /* not the certificate's key */
  ck_assert_int_eq(init_error(&t, server), UVMQTT_ETLSCONFIG);
  t.cert_file = NULL; /* a key without a certificate */
  ck_assert_int_eq(init_error(&t, server), UVMQTT_ETLSCONFIG);

  tls_trusting_ca(&t);
  t.min_version = 0x0301;
  ck_assert_int_eq(init_error(&t, server), UVMQTT_ETLSCONFIG);
  tls_trusting_ca(&t);
  t.ciphers = "NO-SUCH-CIPHER";
  ck_assert_int_eq(init_error(&t, server), UVMQTT_ETLSCONFIG);
  tls_trusting_ca(&t);
  t.ciphersuites = "TLS_NO_SUCH_SUITE";
  ck_assert_int_eq(init_error(&t, server), UVMQTT_ETLSCONFIG);

  static const char *const bad_alpn[] = {"mqtt", ""};
  tls_trusting_ca(&t);
  t.alpn = bad_alpn;
  t.alpn_count = 2;
  ck_assert_int_eq(init_error(&t, server), UVMQTT_EINVAL);
  t.alpn = NULL;
  ck_assert_int_eq(init_error(&t, server), UVMQTT_EINVAL);

  ck_assert_str_eq(uvmqtt_err_name(UVMQTT_ETLSHOSTNAME), "UVMQTT_ETLSHOSTNAME");
  ck_assert_ptr_nonnull(strstr(uvmqtt_strerror(UVMQTT_ETLSEXPIRED), "expired"));
  ck_assert_int_eq(uv_loop_close(&g_loop), 0);
}
END_TEST

/* ---- Session resumption ------------------------------------------------------------------------
 */

static fault_proxy_t g_proxy;

static void resume_cut(peer_t *p) {
  (void)p;
  proxy_cut_all(&g_proxy);
}

static void resume_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  if (p->connect_ok == 1) {
    /* TLS 1.3 tickets follow the handshake: give them time to arrive,
     * then drop the connection under the client. */
    peer_after(p, 300, resume_cut);
  } else {
    proxy_stop(&g_proxy);
    peer_close(p);
  }
}

/* A connection cut under the client; the reconnect offers the saved
 * session: resumed (0), or not offered with no_resumption (1). */
START_TEST(tls_session_resumption) {
  broker_start("");
  loop_start(WATCHDOG_MS);
  ck_assert_int_eq(proxy_start(&g_proxy, &g_loop, g_port.tls), 0);
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  t.no_resumption = (uint8_t)(_i == 1);
  uvmqtt_backoff_t retry = {.min_ms = 100};
  uvmqtt_options_t o;
  peer_options(&o, uri("mqtts", "localhost", g_proxy.port), &t);
  o.no_reconnect = 0;
  o.reconnect.fn = uvmqtt_reconnect_fixed;
  o.reconnect.state = &retry;
  peer_t *p = &g.a;
  peer_init(p, &o);
  p->connected = resume_connected;
  peer_connect(p);
  loop_run();
  ck_assert_int_eq(p->connect_ok, 2);
  ck_assert_int_eq(p->disconnect_calls, 1);
  ck_assert_int_eq(p->reused[0], 0);
  ck_assert_int_eq(p->reused[1], _i == 0);
  ck_assert_int_eq(g_proxy.accepted, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- A broker restart under a QoS 1 stream
 * -------------------------------------------------------- */

static void robust_maybe_done(void) {
  for (int i = 0; i < ROBUST_MESSAGES; i++)
    if (g.seen[i] == 0) return;
  if (g.a.publish_calls < ROBUST_MESSAGES) return;
  peer_close(&g.a);
  peer_close(&g.b);
}

static void robust_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  ck_assert_uint_eq(m->qos, 1);
  char text[16];
  ck_assert_uint_lt(m->payload.len, sizeof text);
  memcpy(text, m->payload.data, m->payload.len);
  text[m->payload.len] = '\0';
  int i = atoi(text);
  ck_assert_int_lt(i, ROBUST_MESSAGES);
  g.seen[i]++;
  robust_maybe_done();
}

static void robust_published(peer_t *p, int status, int index) {
  (void)p;
  ck_assert_msg(status == 0, "publish %d: %s", index, uvmqtt_err_name(status));
  robust_maybe_done();
}

static void robust_next(peer_t *p) {
  if (g.published == ROBUST_RESTART_AT && !g.restarted) {
    g.restarted = 1;
    ck_assert_int_eq(test_broker_restart(&g_broker), 0);
    wait_tls_listeners();
  }
  char text[16];
  int n = snprintf(text, sizeof text, "%d", g.published);
  peer_publish(p, "tls/robust", text, (size_t)n, 1, g.published);
  if (++g.published < ROBUST_MESSAGES) peer_after(p, 10, robust_next);
}

static void robust_sub_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "subscriber: %s", uvmqtt_err_name(status));
  if (p->connect_ok == 1) peer_subscribe(p, "tls/robust", 1);
}

static void robust_subscribed(peer_t *p) {
  (void)p;
  if (g.a.connect_ok == 0) peer_connect(&g.a);
}

static void robust_pub_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "publisher: %s", uvmqtt_err_name(status));
  if (p->connect_ok == 1) robust_next(p);
}

static void robust_options(uvmqtt_options_t *o, const uvmqtt_tls_options_t *t,
                           uvmqtt_backoff_t *retry, const char *id) {
  peer_options(o, uri("mqtts", "localhost", g_port.tls), t);
  o->client_id = id;
  o->clean_start = 0;
  o->no_reconnect = 0;
  o->reconnect.fn = uvmqtt_reconnect_fixed;
  o->reconnect.state = retry;
}

/* Both clients over TLS with persistent sessions and a retry every 100 ms;
 * the broker (persistence on) restarts halfway through 120 QoS 1 messages.
 * Every message arrives and every publish completes with success. */
START_TEST(tls_robust_broker_restart) {
  broker_start("persistence true");
  loop_start(WATCHDOG_MS);
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  uvmqtt_backoff_t retry = {.min_ms = 100};
  uvmqtt_options_t o;
  robust_options(&o, &t, &retry, "tls-robust-pub");
  peer_init(&g.a, &o);
  g.a.connected = robust_pub_connected;
  g.a.published = robust_published;
  robust_options(&o, &t, &retry, "tls-robust-sub");
  peer_init(&g.b, &o);
  g.b.connected = robust_sub_connected;
  g.b.subscribed = robust_subscribed;
  g.b.message = robust_message;
  peer_connect(&g.b);
  loop_run();
  ck_assert_int_eq(g.restarted, 1);
  for (int i = 0; i < ROBUST_MESSAGES; i++)
    ck_assert_msg(g.seen[i] >= 1, "message %d lost", i);
  ck_assert_int_eq(g.a.publish_calls, ROBUST_MESSAGES);
  ck_assert_int_eq(g.a.publish_failures, 0);
  ck_assert_int_ge(g.a.connect_ok, 2);
  ck_assert_int_ge(g.b.connect_ok, 2);
  ck_assert_int_eq(g.a.close_calls, 1);
  ck_assert_int_eq(g.b.close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Counting the heap of both libraries ------------------------------------------------------
 */

typedef union {
  max_align_t align;
  size_t size;
} alloc_header_t;

typedef struct {
  atomic_size_t bytes;
  atomic_size_t blocks;
} heap_count_t;

static heap_count_t heap_ours, heap_ssl;

static void *count_alloc(heap_count_t *h, size_t n) {
  alloc_header_t *a = malloc(sizeof *a + n);
  if (a == NULL) return NULL;
  a->size = n;
  atomic_fetch_add(&h->bytes, n);
  atomic_fetch_add(&h->blocks, 1);
  return a + 1;
}

static void *count_realloc(heap_count_t *h, void *p, size_t n) {
  if (p == NULL) return count_alloc(h, n);
  alloc_header_t *a = (alloc_header_t *)p - 1;
  size_t old = a->size;
  alloc_header_t *moved = realloc(a, sizeof *moved + n);
  if (moved == NULL) return NULL;
  moved->size = n;
  atomic_fetch_add(&h->bytes, n);
  atomic_fetch_sub(&h->bytes, old);
  return moved + 1;
}

static void count_free(heap_count_t *h, void *p) {
  if (p == NULL) return;
  alloc_header_t *a = (alloc_header_t *)p - 1;
  atomic_fetch_sub(&h->bytes, a->size);
  atomic_fetch_sub(&h->blocks, 1);
  free(a);
}

static void *ours_malloc(size_t n) {
  return count_alloc(&heap_ours, n);
}

static void *ours_calloc(size_t count, size_t n) {
  if (n != 0 && count > SIZE_MAX / n) return NULL;
  void *p = count_alloc(&heap_ours, count * n);
  if (p != NULL) memset(p, 0, count * n);
  return p;
}

static void *ours_realloc(void *p, size_t n) {
  return count_realloc(&heap_ours, p, n);
}

static void ours_free(void *p) {
  count_free(&heap_ours, p);
}

static void *ssl_malloc(size_t n, const char *file, int line) {
  (void)file;
  (void)line;
  return count_alloc(&heap_ssl, n);
}

static void *ssl_realloc(void *p, size_t n, const char *file, int line) {
  (void)file;
  (void)line;
  return count_realloc(&heap_ssl, p, n);
}

static void ssl_free(void *p, const char *file, int line) {
  (void)file;
  (void)line;
  count_free(&heap_ssl, p);
}

/* Must run before anything in the process touches OpenSSL. */
static void count_heaps(void) {
  ck_assert_msg(CRYPTO_set_mem_functions(ssl_malloc, ssl_realloc, ssl_free) == 1,
                "OpenSSL allocated before the test could count");
  ck_assert_int_eq(uvmqtt_replace_allocator(ours_malloc, ours_realloc, ours_calloc, ours_free), 0);
}

static size_t heap_total(void) {
  return atomic_load(&heap_ours.bytes) + atomic_load(&heap_ssl.bytes);
}

/* ---- Connect/close cycles ----------------------------------------------------------------------
 */

static struct {
  uvmqtt_tls_options_t tls;
  char server[96];
  int cycles;
  size_t ssl_after_first;
  size_t ssl_blocks_after_first;
  uv_timer_t settle;
} cyc;

static void cycle_start(void);

/* Every byte uvmqtt allocated is back once the loop has turned once more
 * after the close: the loop's shared context (its timer) closes with the
 * last client, and its memory goes in that timer's close callback. */
static void cycle_settle_closed(uv_handle_t *timer) {
  (void)timer;
  ck_assert_uint_eq(atomic_load(&heap_ours.bytes), 0);
  if (cyc.cycles < CYCLES) cycle_start();
}

static void cycle_settled(uv_timer_t *timer) {
  uv_close((uv_handle_t *)timer, cycle_settle_closed);
}

/* The peer is reused only once its timer finished closing. */
static void cycle_closed(uv_handle_t *timer) {
  (void)timer;
  cyc.cycles++;
  if (cyc.cycles == 1) {
    cyc.ssl_after_first = atomic_load(&heap_ssl.bytes);
    cyc.ssl_blocks_after_first = atomic_load(&heap_ssl.blocks);
  }
  ck_assert_int_eq(uv_timer_init(&g_loop, &cyc.settle), 0);
  ck_assert_int_eq(uv_timer_start(&cyc.settle, cycle_settled, 0, 0), 0);
}

static void cycle_close_cb(uvmqtt_client_t *client) {
  peer_t *p = client->data;
  p->close_calls++;
  uv_close((uv_handle_t *)&p->timer, cycle_closed);
}

static void cycle_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "cycle %d: %s", cyc.cycles, uvmqtt_err_name(status));
  uvmqtt_close(&p->client, cycle_close_cb);
}

static void cycle_start(void) {
  memset(&g.a, 0, sizeof g.a);
  uvmqtt_options_t o;
  peer_options(&o, cyc.server, &cyc.tls);
  peer_init(&g.a, &o);
  g.a.connected = cycle_connected;
  peer_connect(&g.a);
}

/* A hundred clients one after the other, each through init, resolve, TCP,
 * the TLS handshake with a client certificate, CONNACK and close. Every
 * byte uvmqtt allocated is back after each close; OpenSSL holds no more
 * after the hundredth than after the first (its one-time tables aside).
 * Under LeakSanitizer the build also proves nothing leaked at exit. */
START_TEST(tls_hundred_cycles) {
  count_heaps();
  broker_start("");
  loop_start(WATCHDOG_MS * 2);
  tls_trusting_ca(&cyc.tls);
  cyc.tls.cert_file = test_cert("client.crt");
  cyc.tls.key_file = test_cert("client.key");
  snprintf(cyc.server, sizeof cyc.server, "%s", uri("mqtts", "localhost", g_port.mtls));
  cycle_start();
  loop_run();
  ck_assert_int_eq(cyc.cycles, CYCLES);
  ck_assert_uint_eq(atomic_load(&heap_ours.bytes), 0);
  ck_assert_uint_eq(atomic_load(&heap_ours.blocks), 0);
  size_t ssl_now = atomic_load(&heap_ssl.bytes);
  printf("tls: OpenSSL live heap after cycle 1: %zu bytes in %zu blocks, after %d: %zu in %zu\n",
         cyc.ssl_after_first, cyc.ssl_blocks_after_first, CYCLES, ssl_now,
         (size_t)atomic_load(&heap_ssl.blocks));
  ck_assert_msg(ssl_now <= cyc.ssl_after_first, "OpenSSL grew by %zu bytes over %d cycles",
                ssl_now - cyc.ssl_after_first, CYCLES);
  loop_finish();
  broker_finish();
  ck_assert_int_eq(uvmqtt_replace_allocator(malloc, realloc, calloc, free), 0);
}
END_TEST

/* ---- A thousand idle TLS clients --------------------------------------------------------------
 */

static struct {
  uvmqtt_client_t *clients;
  uv_timer_t settle;
  int started;
  int connected;
  int closed;
  size_t before_init; /* both heaps before any client existed */
  size_t after_init;  /* every client initialised, none connected */
  size_t idle;        /* every client connected and idle */
} many;

static void many_closed(uvmqtt_client_t *client) {
  ck_assert_ptr_null(client->impl);
  many.closed++;
}

static void many_settled(uv_timer_t *timer) {
  many.idle = heap_total();
  uv_close((uv_handle_t *)timer, NULL);
  for (int i = 0; i < MANY_CLIENTS; i++)
    uvmqtt_close(&many.clients[i], many_closed);
}

static void many_start_next(void) {
  if (many.started == MANY_CLIENTS) return;
  int rc = uvmqtt_connect(&many.clients[many.started++]);
  ck_assert_msg(rc == 0, "connect: %s", uvmqtt_err_name(rc));
}

static void many_on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  ck_assert_msg(status == 0, "client %d: %s", (int)(intptr_t)client->data, uvmqtt_err_name(status));
  many.connected++;
  many_start_next();
  if (many.connected == MANY_CLIENTS)
    ck_assert_int_eq(uv_timer_start(&many.settle, many_settled, MANY_SETTLE_MS, 0), 0);
}

static void many_on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  ck_abort_msg("client %d lost its connection: %s", (int)(intptr_t)client->data,
               uvmqtt_err_name(info->status));
}

/* A thousand clients with equal options (so one configuration and one
 * SSL_CTX with the test CA), each with an idle TLS connection: the heap of
 * uvmqtt and OpenSSL together, per client and per connection (what
 * connecting added to the initialised clients). */
START_TEST(tls_many_idle_clients) {
  count_heaps();
  ck_assert_msg(test_raise_fd_limit(MANY_CLIENTS * 2 + 512) == 0,
                "RLIMIT_NOFILE hard limit too low");
  broker_start("max_connections -1");
  loop_start(MANY_WATCHDOG_MS);
  many.clients = calloc(MANY_CLIENTS, sizeof *many.clients);
  ck_assert_ptr_nonnull(many.clients);
  ck_assert_int_eq(uv_timer_init(&g_loop, &many.settle), 0);
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = many_on_connect;
  cbs.on_disconnect = many_on_disconnect;
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  const char *server = uri("mqtts", "localhost", g_port.tls);
  many.before_init = heap_total();
  for (int i = 0; i < MANY_CLIENTS; i++) {
    uvmqtt_options_t o;
    peer_options(&o, server, &t);
    ck_assert_int_eq(uvmqtt_client_init(&g_loop, &many.clients[i], &o, &cbs), 0);
    many.clients[i].data = (void *)(intptr_t)i;
  }
  many.after_init = heap_total();
  /* A thousand SSL_CTX take seconds to build (more under sanitizers), and
   * connect deadlines count from the loop's cached clock. */
  uv_update_time(&g_loop);
  for (int i = 0; i < MANY_IN_FLIGHT; i++)
    many_start_next();
  loop_run();
  ck_assert_int_eq(many.connected, MANY_CLIENTS);
  ck_assert_int_eq(many.closed, MANY_CLIENTS);
  size_t per_client = (many.idle - many.before_init) / MANY_CLIENTS;
  size_t per_ctx = (many.after_init - many.before_init) / MANY_CLIENTS;
  size_t per_conn = (many.idle - many.after_init) / MANY_CLIENTS;
  printf("tls: %d idle TLS clients: %zu heap bytes per client (uvmqtt + OpenSSL), of which "
         "%zu for the client and its SSL_CTX and %zu for the connection\n",
         MANY_CLIENTS, per_client, per_ctx, per_conn);
  fflush(stdout);
  ck_assert_msg(per_conn < MANY_CONN_BOUND, "%zu bytes per idle TLS connection", per_conn);
  ck_assert_msg(per_client < MANY_CLIENT_BOUND, "%zu bytes per idle TLS client", per_client);
  ck_assert_uint_eq(atomic_load(&heap_ours.bytes), 0);
  ck_assert_uint_eq(atomic_load(&heap_ours.blocks), 0);
  loop_finish();
  broker_finish();
  free(many.clients);
  ck_assert_int_eq(uvmqtt_replace_allocator(malloc, realloc, calloc, free), 0);
}
END_TEST

/* ---- A TLS context shared explicitly ------------------------------------------------------------
 */

#define SHARED_CLIENTS        16 /* on the test's loop, two configurations */
#define SHARED_THREAD_CLIENTS 8  /* on a second loop, in its own thread */

typedef struct {
  uv_loop_t *loop;
  uvmqtt_client_t *clients;
  int count;
  int started;
  int connected;
  int closed;
  int handed_over;
  uv_timer_t settle;
  void (*all_connected)(void);
} shared_group_t;

static struct {
  uvmqtt_tls_context_t *ctx;
  char server[96];
  shared_group_t main, thread;
  uvmqtt_client_t main_clients[SHARED_CLIENTS];
  uvmqtt_client_t thread_clients[SHARED_THREAD_CLIENTS];
  uv_sem_t thread_ready;
  uv_thread_t tid;
  unsigned long handshakes, resumed;
} sh;

static void shared_closed(uvmqtt_client_t *client) {
  shared_group_t *gr = client->data;
  gr->closed++;
}

static void shared_close_all(shared_group_t *gr) {
  for (int i = 0; i < gr->count; i++) {
    /* Idle after its CONNACK: each connection runs on the record layer. */
    gr->handed_over += uvmqtt__transport_tls_handed_over(&gr->clients[i].impl->tr);
    uvmqtt_close(&gr->clients[i], shared_closed);
  }
}

static void shared_settled(uv_timer_t *timer) {
  shared_group_t *gr = timer->data;
  uv_close((uv_handle_t *)timer, NULL);
  gr->all_connected();
}

static void shared_on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  shared_group_t *gr = client->data;
  ck_assert_msg(status == 0, "shared context client: %s", uvmqtt_err_name(status));
  gr->connected++;
  /* One at a time: each connection finds the session its predecessor kept
   * (its tickets arrive before its CONNACK). */
  if (gr->started < gr->count) {
    ck_assert_int_eq(uvmqtt_connect(&gr->clients[gr->started++]), 0);
  } else if (gr->connected == gr->count) {
    /* The hand-over follows the read that brought the last CONNACK. */
    ck_assert_int_eq(uv_timer_start(&gr->settle, shared_settled, 0, 0), 0);
  }
}

static void shared_group_init(shared_group_t *gr, uv_loop_t *loop, uvmqtt_client_t *clients,
                              int count, void (*all_connected)(void)) {
  memset(gr, 0, sizeof *gr);
  gr->loop = loop;
  gr->clients = clients;
  gr->count = count;
  gr->all_connected = all_connected;
  ck_assert_int_eq(uv_timer_init(loop, &gr->settle), 0);
  gr->settle.data = gr;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = shared_on_connect;
  cbs.on_disconnect = many_on_disconnect;
  for (int i = 0; i < count; i++) {
    uvmqtt_options_t o;
    peer_options(&o, sh.server, NULL);
    o.tls_context = sh.ctx;
    /* Different options, different configurations: still one context. */
    o.keepalive = (uint16_t)(i % 2 ? 30 : 60);
    ck_assert_int_eq(uvmqtt_client_init(loop, &clients[i], &o, &cbs), 0);
    clients[i].data = gr;
  }
}

static void shared_thread_connected(void) {
  shared_close_all(&sh.thread);
}

static void shared_thread(void *arg) {
  (void)arg;
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  shared_group_init(&sh.thread, &loop, sh.thread_clients, SHARED_THREAD_CLIENTS,
                    shared_thread_connected);
  uv_sem_post(&sh.thread_ready);
  ck_assert_int_eq(uvmqtt_connect(&sh.thread_clients[sh.thread.started++]), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}

static void shared_main_connected(void) {
  /* The second loop is done with the context: every handshake counted. */
  ck_assert_int_eq(uv_thread_join(&sh.tid), 0);
  uvmqtt__tls_ctx_counts(sh.main_clients[0].impl->cfg->tls, &sh.handshakes, &sh.resumed);
  shared_close_all(&sh.main);
}

/* One context from uvmqtt_tls_context_new() for clients of two
 * configurations on the test's loop and for clients on a second loop in
 * another thread. The application frees its reference before any client
 * connects; the clients keep the context alive, every connection after the
 * first of each loop resumes a session another client kept, and once the
 * last client closed nothing of uvmqtt's heap is left. */
START_TEST(tls_shared_context) {
  count_heaps();
  broker_start("");
  loop_start(WATCHDOG_MS);
  uvmqtt_tls_options_t t;
  tls_trusting_ca(&t);
  ck_assert_int_eq(uvmqtt_tls_context_new(&sh.ctx, &t), 0);
  snprintf(sh.server, sizeof sh.server, "%s", uri("mqtts", "localhost", g_port.tls));
  shared_group_init(&sh.main, &g_loop, sh.main_clients, SHARED_CLIENTS, shared_main_connected);
  ck_assert_int_eq(uv_sem_init(&sh.thread_ready, 0), 0);
  ck_assert_int_eq(uv_thread_create(&sh.tid, shared_thread, NULL), 0);
  uv_sem_wait(&sh.thread_ready);
  uv_sem_destroy(&sh.thread_ready);
  uvmqtt_tls_context_free(sh.ctx);
  sh.ctx = NULL;
  ck_assert_int_eq(uvmqtt_connect(&sh.main_clients[sh.main.started++]), 0);
  loop_run();
  int total = SHARED_CLIENTS + SHARED_THREAD_CLIENTS;
  printf("tls: shared context: %lu handshakes, %lu resumed\n", sh.handshakes, sh.resumed);
  ck_assert_int_eq(sh.main.connected, SHARED_CLIENTS);
  ck_assert_int_eq(sh.thread.connected, SHARED_THREAD_CLIENTS);
  ck_assert_int_eq(sh.main.closed, SHARED_CLIENTS);
  ck_assert_int_eq(sh.thread.closed, SHARED_THREAD_CLIENTS);
  ck_assert_int_eq(sh.main.handed_over + sh.thread.handed_over, total);
  ck_assert_uint_eq(sh.handshakes, (unsigned long)total);
  /* The two loops' first handshakes may both be full ones. */
  ck_assert_uint_ge(sh.resumed, (unsigned long)total - 2);
  ck_assert_uint_eq(atomic_load(&heap_ours.bytes), 0);
  ck_assert_uint_eq(atomic_load(&heap_ours.blocks), 0);
  loop_finish();
  broker_finish();
  ck_assert_int_eq(uvmqtt_replace_allocator(malloc, realloc, calloc, free), 0);
}
END_TEST

/* Building a context reports bad options as client_init() does, and a
 * client given both TLS options and a context is refused. */
START_TEST(tls_shared_context_errors) {
  ck_assert_int_eq(uv_loop_init(&g_loop), 0);
  uvmqtt_tls_options_t t;
  uvmqtt_tls_context_t *ctx = (uvmqtt_tls_context_t *)&t;
  tls_trusting_ca(&t);
  ck_assert_int_eq(uvmqtt_tls_context_new(NULL, &t), UVMQTT_EINVAL);
  t.ca_file = test_cert("missing.crt");
  ck_assert_int_eq(uvmqtt_tls_context_new(&ctx, &t), UVMQTT_ETLSCONFIG);
  ck_assert_ptr_null(ctx);
  tls_trusting_ca(&t);
  t.ciphersuites = "TLS_NO_SUCH_SUITE";
  ck_assert_int_eq(uvmqtt_tls_context_new(&ctx, &t), UVMQTT_ETLSCONFIG);
  tls_trusting_ca(&t);
  t.min_version = 0x0301;
  ck_assert_int_eq(uvmqtt_tls_context_new(&ctx, &t), UVMQTT_ETLSCONFIG);
  tls_trusting_ca(&t);
  ck_assert_int_eq(uvmqtt_tls_context_new(&ctx, &t), 0);
  ck_assert_ptr_nonnull(ctx);

  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  uvmqtt_client_t c;
  uvmqtt_options_t o;
  peer_options(&o, "mqtts://localhost:1", &t);
  o.tls_context = ctx;
  ck_assert_int_eq(uvmqtt_client_init(&g_loop, &c, &o, &cbs), UVMQTT_EINVAL);
  o.tls = NULL;
  ck_assert_int_eq(uvmqtt_client_init(&g_loop, &c, &o, &cbs), 0);
  uvmqtt_tls_context_free(ctx);
  uvmqtt_close(&c, NULL);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uvmqtt_tls_context_free(NULL);
  ck_assert_int_eq(uv_loop_close(&g_loop), 0);
}
END_TEST

/* ---- Suite --------------------------------------------------------------------------------------
 */

static TCase *tcase(Suite *s, const char *name, int timeout_s) {
  TCase *tc = tcase_create(name);
  tcase_set_timeout(tc, timeout_s);
  tcase_add_unchecked_fixture(tc, test_certs_dir_make, test_certs_dir_remove);
  suite_add_tcase(s, tc);
  return tc;
}

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("tls");
  TCase *tc = tcase(s, "pubsub", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, tls_pubsub_qos, 0, 4);

  tc = tcase(s, "verify", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, tls_verified_connection, 0, 3);
  tcase_add_loop_test(tc, tls_client_certificate, 0, 3);
  tcase_add_test(tc, tls_client_certificate_missing);
  tcase_add_loop_test(tc, tls_unknown_ca, 0, 2);
  tcase_add_test(tc, tls_expired_certificate);
  tcase_add_loop_test(tc, tls_wrong_host_name, 0, 2);
  tcase_add_loop_test(tc, tls_insecure_connects, 0, 3);

  tc = tcase(s, "ports", TCASE_TIMEOUT_S);
  tcase_add_test(tc, tls_plain_client_on_tls_port);
  tcase_add_test(tc, tls_client_on_plain_port);

  tc = tcase(s, "config", TCASE_TIMEOUT_S);
  tcase_add_test(tc, tls_config_errors);

  tc = tcase(s, "resume", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, tls_session_resumption, 0, 2);
  tcase_add_test(tc, tls_robust_broker_restart);

  tc = tcase(s, "leaks", TCASE_TIMEOUT_S * 2);
  tcase_add_test(tc, tls_hundred_cycles);

  tc = tcase(s, "shared", TCASE_TIMEOUT_S);
  tcase_add_test(tc, tls_shared_context);
  tcase_add_test(tc, tls_shared_context_errors);

  tc = tcase(s, "scale", MANY_TIMEOUT_S);
  tcase_add_test(tc, tls_many_idle_clients);
  return s;
}
