/* HTTP CONNECT proxies: a real tinyproxy started by each test on a free
 * loopback port, in front of a Mosquitto with a TLS listener (mqtts://)
 * and of the WebSocket servers of the WebSocket suite (ws://, wss://).
 * A QoS 1 stream of 10,000 messages through the tunnel must come back
 * complete and in order; refusals (a port the proxy does not allow,
 * missing or wrong credentials) end the attempt with their own error; the
 * proxy can also come from the environment (https_proxy, no_proxy). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker.h"
#include "certs.h"
#include "node_server.h"
#include "uvmqtt.h"

#define WATCHDOG_MS     60000
#define TCASE_TIMEOUT_S 90
#define STREAM_COUNT    10000
#define FAIL_TIMEOUT_MS 4000

static uv_loop_t g_loop;
static uv_timer_t g_watchdog;
static test_broker_t g_broker;
static test_node_t g_node;

/* ---- tinyproxy ----------------------------------------------------------------------------------
 */

static struct {
  pid_t pid;
  int port;
} g_proxy;

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

/* Starts tinyproxy in the foreground on a free port, allowing CONNECT to
 * `allowed_port` only, with Basic authentication when `auth` ("user pass"). */
static void proxy_start(int allowed_port, const char *auth) {
  g_proxy.port = test_free_port();
  ck_assert_int_gt(g_proxy.port, 0);
  const char *conf = test_cert("tinyproxy.conf");
  FILE *f = fopen(conf, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f,
          "Port %d\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nConnectPort %d\n"
          "MaxClients 20\nLogLevel Warning\n",
          g_proxy.port, allowed_port);
  if (auth != NULL) fprintf(f, "BasicAuth %s\n", auth);
  fclose(f);
  const char *log = test_cert("tinyproxy.log");
  fflush(NULL);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    FILE *out = freopen(log, "w", stdout);
    (void)out;
    dup2(STDOUT_FILENO, STDERR_FILENO);
    execlp("tinyproxy", "tinyproxy", "-d", "-c", conf, (char *)NULL);
    fprintf(stderr, "exec tinyproxy: %s\n", strerror(errno));
    _exit(127);
  }
  g_proxy.pid = pid;
  int tries = 0;
  while (!port_accepts(g_proxy.port) && tries++ < 250)
    usleep(20000);
  ck_assert_msg(tries <= 250, "tinyproxy did not open port %d (is it installed? see %s)",
                g_proxy.port, log);
}

static void proxy_stop(void) {
  if (g_proxy.pid <= 0) return;
  kill(g_proxy.pid, SIGTERM);
  waitpid(g_proxy.pid, NULL, 0);
  g_proxy.pid = 0;
}

/* Mosquitto with a TLS listener on a second free port; returns that port. */
static int broker_start_tls(void) {
  int tls_port = test_free_port();
  char extra[1024];
  snprintf(extra, sizeof extra, "listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n",
           tls_port, test_cert("ca.crt"), test_cert("server.crt"), test_cert("server.key"));
  ck_assert_msg(test_broker_start(&g_broker, extra) == 0, "mosquitto did not start");
  int tries = 0;
  while (!port_accepts(tls_port) && tries++ < 250)
    usleep(20000);
  ck_assert_msg(tries <= 250, "TLS listener did not open");
  return tls_port;
}

/* ---- A client that streams QoS 1 messages to itself -------------------------------------------
 */

static struct {
  uvmqtt_client_t client;
  int count; /* messages to stream */
  int connect_calls;
  int connect_status;
  int disconnect_calls;
  int disconnect_status;
  int closed;
  int messages;
  int published;
  int publish_failures;
  int next_expected;
  int out_of_order;
  uint64_t started;
  uint64_t elapsed_ms;
} g;

static void on_closed(uvmqtt_client_t *client) {
  (void)client;
  g.closed++;
}

static void on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  g.disconnect_calls++;
  g.disconnect_status = info->status;
  if (g.elapsed_ms == 0) g.elapsed_ms = uv_now(&g_loop) - g.started;
  if (!info->will_retry) uvmqtt_close(client, on_closed);
}

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  (void)client;
  (void)reason;
  (void)arg;
  g.published++;
  if (status != 0) g.publish_failures++;
}

static void on_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  (void)arg;
  char text[16];
  size_t n = m->payload.len < sizeof text - 1 ? m->payload.len : sizeof text - 1;
  memcpy(text, m->payload.data, n);
  text[n] = '\0';
  if (atoi(text) != g.next_expected) g.out_of_order++;
  g.next_expected = atoi(text) + 1;
  if (++g.messages == g.count) {
    int rc = uvmqtt_disconnect(client, 0);
    ck_assert_msg(rc == 0, "disconnect: %s", uvmqtt_err_name(rc));
  }
}

static void on_suback(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                      void *arg) {
  (void)arg;
  (void)count;
  ck_assert_msg(status == 0 && reasons[0] == 1, "subscribe failed");
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.qos = 1;
  for (int i = 0; i < g.count; i++) {
    char payload[16];
    int len = snprintf(payload, sizeof payload, "%d", i);
    int rc = uvmqtt_publish(client, "proxy/stream", payload, (size_t)len, &o, on_published, NULL);
    ck_assert_msg(rc == 0, "publish %d: %s", i, uvmqtt_err_name(rc));
  }
}

static void on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  g.connect_calls++;
  g.connect_status = status;
  if (status != 0) return;
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)"proxy/stream";
  sub.filter.len = 12;
  sub.options = UVMQTT_SUB_QOS(1);
  int rc = uvmqtt_subscribe(client, &sub, 1, NULL, NULL, on_suback, NULL);
  ck_assert_msg(rc == 0, "subscribe: %s", uvmqtt_err_name(rc));
}

/* Connects to `uri` through `proxy` (NULL: proxy_from_env) and streams
 * `count` messages; checks the connect status and, for a working tunnel,
 * the stream and the graceful stop. */
static void run(const char *uri, const char *proxy, uint8_t version, int count, int expected) {
  /* Fresh counters, also when the cases share one process (CK_FORK=no). */
  memset(&g, 0, sizeof g);
  static uvmqtt_tls_options_t t;
  memset(&t, 0, sizeof t);
  t.ca_file = test_cert("ca.crt");
  test_loop_start(&g_loop, &g_watchdog, WATCHDOG_MS, g_broker.pid > 0 ? &g_broker : NULL);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.version = version;
  o.no_reconnect = 1;
  o.connect_timeout_ms = FAIL_TIMEOUT_MS;
  o.tls = &t;
  o.proxy = proxy;
  o.proxy_from_env = proxy == NULL;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_connect;
  cbs.on_disconnect = on_disconnect;
  cbs.on_message = on_message;
  g.count = count;
  int rc = uvmqtt_client_init(&g_loop, &g.client, &o, &cbs);
  ck_assert_msg(rc == 0, "client_init: %s", uvmqtt_err_name(rc));
  g.started = uv_now(&g_loop);
  rc = uvmqtt_connect(&g.client);
  ck_assert_msg(rc == 0, "connect: %s", uvmqtt_err_name(rc));
  uv_run(&g_loop, UV_RUN_DEFAULT);
  test_loop_finish(&g_loop, &g_watchdog);
  ck_assert_int_eq(g.connect_calls, 1);
  ck_assert_msg(g.connect_status == expected, "%s: connect %s (%s), want %s", uri,
                uvmqtt_err_name(g.connect_status), uvmqtt_strerror(g.connect_status),
                uvmqtt_err_name(expected));
  ck_assert_int_eq(g.closed, 1);
  if (expected != 0) {
    ck_assert_msg(g.elapsed_ms < FAIL_TIMEOUT_MS, "the failure took %llu ms",
                  (unsigned long long)g.elapsed_ms);
    return;
  }
  printf("proxy %s: %d messages, QoS 1 round trip in %llu ms\n", uri, g.messages,
         (unsigned long long)g.elapsed_ms);
  ck_assert_int_eq(g.messages, count);
  ck_assert_int_eq(g.out_of_order, 0);
  ck_assert_int_eq(g.published, count);
  ck_assert_int_eq(g.publish_failures, 0);
  ck_assert_int_eq(g.disconnect_calls, 1);
  ck_assert_msg(g.disconnect_status == 0, "disconnect: %s", uvmqtt_err_name(g.disconnect_status));
}

static const char *url(const char *scheme, const char *userinfo, int port) {
  static char bufs[4][160];
  static unsigned next;
  char *b = bufs[next++ % 4];
  snprintf(b, sizeof bufs[0], "%s://%s%s127.0.0.1:%d", scheme, userinfo ? userinfo : "",
           userinfo ? "@" : "", port);
  return b;
}

static void finish(void) {
  proxy_stop();
  test_node_stop(&g_node);
  test_broker_cleanup(&g_broker);
}

/* ---- Tests
 * ---------------------------------------------------------------------------------------- */

/* mqtts:// through the tunnel: the certificate is still checked against
 * the broker's name, not the proxy's. */
START_TEST(proxy_mqtts_stream) {
  int tls_port = broker_start_tls();
  proxy_start(tls_port, NULL);
  run(url("mqtts", NULL, tls_port), url("http", NULL, g_proxy.port), UVMQTT_V311, STREAM_COUNT, 0);
  finish();
}
END_TEST

/* Through the proxy: _i 0 ws:// to aedes (MQTT 3.1.1), 1 wss:// and 2 ws://
 * to the relay in front of Mosquitto (MQTT 5). */
START_TEST(proxy_websocket_stream) {
  const char *crt = test_cert("server.crt"), *key = test_cert("server.key");
  if (_i == 0) {
    const char *args[] = {NULL};
    ck_assert(test_node_start(&g_node, "ws_broker.js", args, 1) == 0);
  } else {
    ck_assert_msg(test_broker_start(&g_broker, "") == 0, "mosquitto did not start");
    char target[16];
    snprintf(target, sizeof target, "%d", g_broker.port);
    const char *args[] = {target, _i == 1 ? "--tls" : NULL, crt, key, NULL};
    ck_assert(test_node_start(&g_node, "ws_relay.js", args, 1) == 0);
  }
  proxy_start(g_node.port, NULL);
  run(url(_i == 1 ? "wss" : "ws", NULL, g_node.port), url("http", NULL, g_proxy.port),
      _i == 0 ? UVMQTT_V311 : UVMQTT_V5, 1000, 0);
  finish();
}
END_TEST

/* A port the proxy does not allow: 403 from tinyproxy, UVMQTT_EPROXY. */
START_TEST(proxy_refuses_port) {
  int tls_port = broker_start_tls();
  proxy_start(tls_port, NULL);
  run(url("mqtt", NULL, g_broker.port), url("http", NULL, g_proxy.port), UVMQTT_V311, 1,
      UVMQTT_EPROXY);
  finish();
}
END_TEST

/* Basic authentication: _i 0 no credentials, 1 wrong ones (both 407,
 * UVMQTT_EPROXYAUTH), 2 the right ones, percent-encoded. */
START_TEST(proxy_basic_auth) {
  int tls_port = broker_start_tls();
  proxy_start(tls_port, "alice s3cret");
  static const char *const userinfo[] = {NULL, "alice:wrong", "alice:s3%63ret"};
  run(url("mqtts", NULL, tls_port), url("http", userinfo[_i], g_proxy.port), UVMQTT_V311, 100,
      _i == 2 ? 0 : UVMQTT_EPROXYAUTH);
  finish();
}
END_TEST

/* proxy_from_env: _i 0 https_proxy is used for mqtts://; 1 no_proxy names
 * the host, so the client goes direct (the proxy, which allows no port of
 * the broker, would refuse); 2 http_proxy is not used for mqtts://. */
START_TEST(proxy_from_environment) {
  int tls_port = broker_start_tls();
  proxy_start(_i == 0 ? tls_port : 1, NULL);
  const char *proxy_url = url("http", NULL, g_proxy.port);
  if (_i == 0) setenv("https_proxy", proxy_url, 1);
  if (_i == 1) {
    setenv("HTTPS_PROXY", proxy_url, 1);
    setenv("no_proxy", "example.com, 127.0.0.1:8883", 1);
  }
  if (_i == 2) setenv("http_proxy", proxy_url, 1);
  run(url("mqtts", NULL, tls_port), NULL, UVMQTT_V311, 100, 0);
  finish();
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  /* libuv writes with write(2): a peer that went away must not kill the
   * process, as in any libuv program. A broker closes as soon as it reads
   * DISCONNECT, so the close frame (or close_notify) behind it may meet a
   * reset connection. */
  signal(SIGPIPE, SIG_IGN);
  Suite *s = suite_create("proxy");
  TCase *tc = tcase_create("tinyproxy");
  tcase_set_timeout(tc, TCASE_TIMEOUT_S);
  tcase_add_unchecked_fixture(tc, test_certs_dir_make, test_certs_dir_remove);
  tcase_add_test(tc, proxy_mqtts_stream);
  tcase_add_loop_test(tc, proxy_websocket_stream, 0, 3);
  tcase_add_test(tc, proxy_refuses_port);
  tcase_add_loop_test(tc, proxy_basic_auth, 0, 3);
  tcase_add_loop_test(tc, proxy_from_environment, 0, 3);
  suite_add_tcase(s, tc);
  return s;
}
