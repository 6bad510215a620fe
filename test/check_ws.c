/* MQTT over WebSocket (ws:// and wss://).
 *
 * Real brokers on loopback ports the system picks: aedes (MQTT 3.1.1) behind
 * a `ws` WebSocket server, and for MQTT 5 a Mosquitto started by the test
 * behind a WebSocket-to-TCP relay (Debian 12's Mosquitto cannot serve
 * WebSocket itself), each in plaintext and behind TLS with the test
 * certificates. A QoS 1 stream of 10,000 messages goes through each and must
 * come back complete and in order.
 *
 * A scripted server (test/support/ws_fake.js) covers what real servers do
 * not do on demand: an MQTT packet split across many frames, many packets in
 * one frame, a ping in the middle of a packet, a close frame from the
 * server, a text frame, and each way to refuse or botch the upgrade. Each
 * ends in delivered messages or one named error. */
#include <check.h>
#include <signal.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "certs.h"
#include "node_server.h"
#include "transport/http.h"
#include "transport/ws.h"
#include "uvmqtt.h"

#define WATCHDOG_MS     60000
#define TCASE_TIMEOUT_S 90
#define STREAM_COUNT    10000
#define FAIL_TIMEOUT_MS 4000

static uv_loop_t g_loop;
static uv_timer_t g_watchdog;
static test_broker_t g_broker;
static test_node_t g_node;

static void node_start(const char *script, const char *const *args, int needs_npm) {
  ck_assert_msg(test_node_start(&g_node, script, args, needs_npm) == 0,
                "could not start %s (see stderr)", script);
}

/* ---- A client that records what happened ------------------------------------------------- */

static struct {
  uvmqtt_client_t client;
  int connect_calls;
  int connect_status;
  int disconnect_calls;
  int disconnect_status;
  int closed;
  int messages;
  int published;
  int publish_failures;
  int next_expected; /* the stream: the index the next message must carry */
  int out_of_order;
  const char *const *want; /* the scripted scenarios: the payloads expected */
  int want_count;
  int stop_after_messages;     /* close (not disconnect) once all arrived */
  uint32_t connect_timeout_ms; /* 0: FAIL_TIMEOUT_MS */
  uint64_t started;
  uint64_t elapsed_ms;
} g;

static void on_closed(uvmqtt_client_t *client) {
  (void)client;
  g.closed++;
}

static void finish(void) {
  if (g.elapsed_ms == 0) g.elapsed_ms = uv_now(&g_loop) - g.started;
  uvmqtt_close(&g.client, on_closed);
}

static void on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  (void)client;
  g.disconnect_calls++;
  g.disconnect_status = info->status;
  if (!info->will_retry) finish();
}

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  (void)client;
  (void)reason;
  (void)arg;
  g.published++;
  if (status != 0) g.publish_failures++;
}

static void on_stream_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  (void)arg;
  char text[16];
  size_t n = m->payload.len < sizeof text - 1 ? m->payload.len : sizeof text - 1;
  memcpy(text, m->payload.data, n);
  text[n] = '\0';
  if (atoi(text) != g.next_expected) g.out_of_order++;
  g.next_expected = atoi(text) + 1;
  g.messages++;
  if (g.messages == STREAM_COUNT) {
    /* The graceful stop: DISCONNECT, a close frame, and the half-close. */
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
  for (int i = 0; i < STREAM_COUNT; i++) {
    char payload[16];
    int len = snprintf(payload, sizeof payload, "%d", i);
    int rc = uvmqtt_publish(client, "ws/stream", payload, (size_t)len, &o, on_published, NULL);
    ck_assert_msg(rc == 0, "publish %d: %s", i, uvmqtt_err_name(rc));
  }
}

static void on_stream_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  g.connect_calls++;
  g.connect_status = status;
  if (status != 0) return;
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)"ws/stream";
  sub.filter.len = 9;
  sub.options = UVMQTT_SUB_QOS(1);
  int rc = uvmqtt_subscribe(client, &sub, 1, NULL, NULL, on_suback, NULL);
  ck_assert_msg(rc == 0, "subscribe: %s", uvmqtt_err_name(rc));
}

static void client_start(const char *uri, uint8_t version, int tls, uvmqtt_callbacks_t *cbs) {
  static uvmqtt_tls_options_t t;
  memset(&t, 0, sizeof t);
  t.ca_file = test_cert("ca.crt");
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.version = version;
  o.no_reconnect = 1;
  o.connect_timeout_ms = g.connect_timeout_ms ? g.connect_timeout_ms : FAIL_TIMEOUT_MS;
  if (tls) o.tls = &t;
  cbs->on_disconnect = on_disconnect;
  int rc = uvmqtt_client_init(&g_loop, &g.client, &o, cbs);
  ck_assert_msg(rc == 0, "client_init: %s", uvmqtt_err_name(rc));
  g.started = uv_now(&g_loop);
  rc = uvmqtt_connect(&g.client);
  ck_assert_msg(rc == 0, "connect: %s", uvmqtt_err_name(rc));
}

/* ---- Real brokers: 10,000 QoS 1 messages round trip --------------------------------------- */

/* _i: 0 ws:// MQTT 3.1.1 (aedes), 1 ws:// MQTT 5 (relay + Mosquitto),
 * 2 wss:// MQTT 3.1.1, 3 wss:// MQTT 5. The certificate is verified
 * (127.0.0.1 is in the server certificate). */
START_TEST(ws_stream_qos1) {
  memset(&g, 0, sizeof g);
  int v5 = _i & 1, tls = _i >= 2;
  const char *crt = test_cert("server.crt"), *key = test_cert("server.key");
  if (v5) {
    ck_assert_msg(test_broker_start(&g_broker, "") == 0, "mosquitto did not start");
    char target[16];
    snprintf(target, sizeof target, "%d", g_broker.port);
    const char *args[] = {target, tls ? "--tls" : NULL, crt, key, NULL};
    node_start("ws_relay.js", args, 1);
  } else {
    const char *args[] = {tls ? "--tls" : NULL, crt, key, NULL};
    node_start("ws_broker.js", args, 1);
  }
  test_loop_start(&g_loop, &g_watchdog, WATCHDOG_MS, v5 ? &g_broker : NULL);
  char uri[96];
  snprintf(uri, sizeof uri, "%s://127.0.0.1:%d/mqtt", tls ? "wss" : "ws", g_node.port);
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_stream_connect;
  cbs.on_message = on_stream_message;
  client_start(uri, v5 ? UVMQTT_V5 : UVMQTT_V311, tls, &cbs);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  test_loop_finish(&g_loop, &g_watchdog);
  printf("ws stream %s v%s: %d messages, QoS 1 round trip in %llu ms\n", tls ? "wss" : "ws",
         v5 ? "5" : "3.1.1", g.messages, (unsigned long long)g.elapsed_ms);
  ck_assert_int_eq(g.connect_calls, 1);
  ck_assert_msg(g.connect_status == 0, "connect: %s", uvmqtt_err_name(g.connect_status));
  ck_assert_int_eq(g.messages, STREAM_COUNT);
  ck_assert_int_eq(g.out_of_order, 0);
  ck_assert_int_eq(g.published, STREAM_COUNT);
  ck_assert_int_eq(g.publish_failures, 0);
  /* The graceful stop ended with the server closing: status 0. */
  ck_assert_int_eq(g.disconnect_calls, 1);
  ck_assert_msg(g.disconnect_status == 0, "disconnect: %s", uvmqtt_err_name(g.disconnect_status));
  ck_assert_int_eq(g.closed, 1);
  test_node_stop(&g_node);
  if (v5) test_broker_cleanup(&g_broker);
}
END_TEST

/* ---- The scripted server ----------------------------------------------------------------------
 */

static void on_fake_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)client;
  (void)ack;
  g.connect_calls++;
  g.connect_status = status;
}

static void on_fake_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  (void)client;
  (void)arg;
  ck_assert_int_lt(g.messages, g.want_count);
  const char *want = g.want[g.messages];
  ck_assert_msg(m->payload.len == strlen(want) && memcmp(m->payload.data, want, strlen(want)) == 0,
                "message %d: got \"%.*s\", want \"%s\"", g.messages, (int)m->payload.len,
                (const char *)m->payload.data, want);
  g.messages++;
  if (g.messages == g.want_count && g.stop_after_messages) finish();
}

/* Runs the scripted server's `scenario` and checks: the connect status, the
 * payloads delivered in order, and (when expect_disconnect) the status that
 * ended the connection. */
static void run_fake(const char *scenario, int connect_status, const char *const *want,
                     int want_count, int stop_after_messages, int disconnect_status) {
  uint32_t timeout = g.connect_timeout_ms;
  /* Fresh counters, also when the cases share one process (CK_FORK=no). */
  memset(&g, 0, sizeof g);
  g.connect_timeout_ms = timeout;
  const char *args[] = {scenario, NULL};
  node_start("ws_fake.js", args, 0);
  test_loop_start(&g_loop, &g_watchdog, WATCHDOG_MS, NULL);
  g.want = want;
  g.want_count = want_count;
  g.stop_after_messages = stop_after_messages;
  char uri[96];
  snprintf(uri, sizeof uri, "ws://127.0.0.1:%d", g_node.port);
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_fake_connect;
  cbs.on_message = on_fake_message;
  client_start(uri, UVMQTT_V311, 0, &cbs);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  test_loop_finish(&g_loop, &g_watchdog);
  ck_assert_int_eq(g.connect_calls, 1);
  ck_assert_msg(g.connect_status == connect_status, "%s: connect %s, want %s", scenario,
                uvmqtt_err_name(g.connect_status), uvmqtt_err_name(connect_status));
  ck_assert_int_eq(g.messages, want_count);
  if (!stop_after_messages) {
    ck_assert_int_eq(g.disconnect_calls, 1);
    ck_assert_msg(g.disconnect_status == disconnect_status, "%s: disconnect %s, want %s", scenario,
                  uvmqtt_err_name(g.disconnect_status), uvmqtt_err_name(disconnect_status));
  }
  if (connect_status != 0 && connect_status != UVMQTT_ECONNTIMEDOUT)
    ck_assert_msg(g.elapsed_ms < FAIL_TIMEOUT_MS, "the failure took %llu ms",
                  (unsigned long long)g.elapsed_ms);
  ck_assert_int_eq(g.closed, 1);
  /* The script exits 3 when the client broke the protocol (an unmasked
   * frame, a wrong pong). */
  ck_assert_int_eq(test_node_stop(&g_node), 0);
}

START_TEST(ws_packet_split_across_frames) {
  static const char *const want[] = {"split across many frames"};
  run_fake("split", 0, want, 1, 1, 0);
}
END_TEST

START_TEST(ws_packets_in_one_frame) {
  static const char *const want[] = {"one", "two", "three"};
  run_fake("many", 0, want, 3, 1, 0);
}
END_TEST

START_TEST(ws_ping_inside_packet) {
  static const char *const want[] = {"around a ping", "pong seen"};
  run_fake("ping", 0, want, 2, 1, 0);
}
END_TEST

/* The server's close frame ends the stream like a FIN: UV_EOF. */
START_TEST(ws_server_close_frame) {
  static const char *const want[] = {"before close"};
  run_fake("close", 0, want, 1, 0, UV_EOF);
}
END_TEST

START_TEST(ws_text_frame_refused) {
  run_fake("text", 0, NULL, 0, 0, UVMQTT_EWSFRAME);
}
END_TEST

/* A server that hangs up on the upgrade request: UVMQTT_EWSCLOSED. One that
 * never answers: the connect timeout. */
START_TEST(ws_upgrade_unanswered) {
  g.connect_timeout_ms = 1000;
  run_fake(_i == 0 ? "hangup" : "silent", _i == 0 ? UVMQTT_EWSCLOSED : UVMQTT_ECONNTIMEDOUT, NULL,
           0, 0, _i == 0 ? UVMQTT_EWSCLOSED : UVMQTT_ECONNTIMEDOUT);
}
END_TEST

/* Each botched upgrade fails the attempt with its own error: _i picks it. */
START_TEST(ws_upgrade_refused) {
  static const struct {
    const char *scenario;
    int status;
  } cases[] = {
      {"bad-accept", UVMQTT_EWSACCEPT},    {"status-200", UVMQTT_EWSHANDSHAKE},
      {"status-401", UVMQTT_EWSHANDSHAKE}, {"huge-header", UVMQTT_EWSHEADER},
      {"no-protocol", UVMQTT_EWSPROTOCOL},
  };
  run_fake(cases[_i].scenario, cases[_i].status, NULL, 0, 0, cases[_i].status);
}
END_TEST

/* ---- The transport alone: closing in every state ------------------------------------------- */

static struct {
  uvmqtt__transport_t t;
  int mode;
  int connects;
  int connect_status;
  int reads;
  int read_end; /* the nread < 0 that ended the stream, if any */
  int writes;
  int closes;
} tr;

static void tr_close(void) {
  uvmqtt__transport_close(&tr.t);
  /* Twice is allowed and changes nothing. */
  uvmqtt__transport_close(&tr.t);
}

static void tr_on_connect(uvmqtt__transport_t *t, int status) {
  (void)t;
  tr.connects++;
  tr.connect_status = status;
  if (status != 0 || tr.mode == 1) {
    tr_close();
    return;
  }
  /* Any binary frame is a CONNECT to the script, which answers with one
   * frame holding four packets. */
  static const uint8_t connect_bytes[] = {0x10, 0x00};
  uv_buf_t buf = uv_buf_init((char *)connect_bytes, sizeof connect_bytes);
  int rc = uvmqtt__transport_write(&tr.t, &buf, 1, NULL);
  ck_assert_int_ge(rc, 0);
  if (rc == 0) tr.writes++;
}

static void tr_on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  (void)t;
  (void)data;
  if (nread < 0) {
    tr.read_end = (int)nread;
    tr_close();
    return;
  }
  tr.reads++;
  /* Mode 2 closes inside the first chunk wslay hands over; mode 3 half-
   * closes (a close frame, then FIN) and reads until the server closes. */
  if (tr.mode == 2) tr_close();
  if (tr.mode == 3 && tr.reads == 1) ck_assert_int_eq(uvmqtt__transport_shutdown(&tr.t), 0);
}

static void tr_on_write(uvmqtt__transport_t *t, int status, void *arg) {
  (void)t;
  (void)status;
  (void)arg;
  tr.writes--;
}

static void tr_on_close(uvmqtt__transport_t *t) {
  (void)t;
  tr.closes++;
}

static const uvmqtt__transport_cbs_t tr_cbs = {tr_on_connect, tr_on_read, tr_on_write, tr_on_close};

/* _i: 0 close while resolving (right after connect()), 1 in on_connect,
 * 2 in on_read in the middle of a frame, 3 shutdown after the first read
 * (the script answers the close frame and hangs up: UV_EOF), 4 an upgrade
 * the server hangs up on (UVMQTT_EWSCLOSED). Each ends with exactly one
 * on_close, every handle closed and, under the sanitizers, nothing leaked. */
START_TEST(ws_transport_close_in_every_state) {
  memset(&tr, 0, sizeof tr);
  tr.mode = _i;
  const char *args[] = {_i == 4 ? "hangup" : "many", NULL};
  node_start("ws_fake.js", args, 0);
  test_loop_start(&g_loop, &g_watchdog, WATCHDOG_MS, NULL);
  uvmqtt__ws_options_t o = {"/mqtt", "http://localhost", NULL, 0};
  uvmqtt__poller_t *poller = uvmqtt__poller_new(&g_loop);
  ck_assert_ptr_nonnull(poller);
  ck_assert_int_eq(uvmqtt__transport_ws_init(&tr.t, poller, &tr_cbs, NULL, &o), 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&tr.t, "127.0.0.1", (uint16_t)g_node.port), 0);
  if (_i == 0) tr_close();
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uvmqtt__poller_free(poller);
  test_loop_finish(&g_loop, &g_watchdog);
  ck_assert_int_eq(tr.closes, 1);
  ck_assert_int_eq(tr.writes, 0);
  ck_assert_int_eq(tr.connects, _i == 0 ? 0 : 1);
  if (_i == 4) ck_assert_int_eq(tr.connect_status, UVMQTT_EWSCLOSED);
  if (_i == 2) ck_assert_int_eq(tr.reads, 1);
  if (_i == 3) {
    ck_assert_int_ge(tr.reads, 1);
    ck_assert_int_eq(tr.read_end, UV_EOF);
  }
  /* The transport is plain TCP again, ready for another init. */
  ck_assert_ptr_null(tr.t.outer);
  ck_assert_int_eq(test_node_stop(&g_node), 0);
}
END_TEST

/* ---- The upgrade-response parser alone ------------------------------------------------------ */

static const char ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

static int ws_parse(const char *head) {
  size_t len = 0;
  return uvmqtt__ws_parse_response(head, strlen(head), ACCEPT, &len);
}

START_TEST(ws_parser_rules) {
#define OK_HEAD                                                                                    \
  "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"              \
  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n"
  size_t len = 0;
  const char frames[] = OK_HEAD "\r\n\x82\x02";
  ck_assert_int_eq(uvmqtt__ws_parse_response(frames, sizeof frames - 1, ACCEPT, &len), 1);
  ck_assert_uint_eq(len, sizeof frames - 3);
  /* Every byte short of the blank line: not yet. */
  for (size_t n = 0; n < sizeof frames - 3; n++)
    ck_assert_int_eq(uvmqtt__ws_parse_response(frames, n, ACCEPT, &len), 0);
  /* Names are case-insensitive, Upgrade and Connection are token lists. */
  ck_assert_int_eq(ws_parse("HTTP/1.1 101 x\r\nupgrade: h2c, WebSocket\r\nCONNECTION: keep-alive, "
                            "upgrade\r\nsec-websocket-accept:s3pPLMBiTxaQ9kYGzzhZRbK+xOo=  \r\n"
                            "sec-websocket-protocol: mqtt\r\n\r\n"),
                   1);
  ck_assert_int_eq(ws_parse("HTTP/1.1 200 OK\r\n\r\n"), UVMQTT_EWSHANDSHAKE);
  ck_assert_int_eq(ws_parse("HTTP/1.1 401 Unauthorized\r\nbad line\r\n\r\n"), UVMQTT_EWSHANDSHAKE);
  ck_assert_int_eq(ws_parse("HTTP/1.1 101 x\r\nConnection: Upgrade\r\n\r\n"), UVMQTT_EWSUPGRADE);
  ck_assert_int_eq(ws_parse("HTTP/1.1 101 x\r\nUpgrade: websocketx\r\nConnection: Upgrade\r\n\r\n"),
                   UVMQTT_EWSUPGRADE);
  ck_assert_int_eq(ws_parse("HTTP/1.1 101 x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo\r\n\r\n"),
                   UVMQTT_EWSACCEPT);
  /* Twice, even if both are right: one value was expected. */
  ck_assert_int_eq(ws_parse(OK_HEAD "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"),
                   UVMQTT_EWSACCEPT);
  ck_assert_int_eq(ws_parse(OK_HEAD "Sec-WebSocket-Protocol: mqttv3.1\r\n\r\n"),
                   UVMQTT_EWSPROTOCOL);
  ck_assert_int_eq(ws_parse("HTTP/1.1 101 x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                            "Sec-WebSocket-Protocol: MQTT\r\n\r\n"),
                   UVMQTT_EWSPROTOCOL);
  ck_assert_int_eq(ws_parse(OK_HEAD "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
                   UVMQTT_EWSHEADER);
  /* Malformed: a bare LF, a folded line, a space before the colon, a bad
   * status line, a control character. */
  ck_assert_int_eq(ws_parse(OK_HEAD "X: a\nY: b\r\n\r\n"), UVMQTT_EWSHEADER);
  ck_assert_int_eq(ws_parse(OK_HEAD " folded\r\n\r\n"), UVMQTT_EWSHEADER);
  ck_assert_int_eq(ws_parse(OK_HEAD "X : a\r\n\r\n"), UVMQTT_EWSHEADER);
  ck_assert_int_eq(ws_parse("HTTP/2 101 x\r\n\r\n"), UVMQTT_EWSHEADER);
  ck_assert_int_eq(ws_parse("HTTP/1.1 1010 x\r\n\r\n"), UVMQTT_EWSHEADER);
  ck_assert_int_eq(ws_parse(OK_HEAD "X: a\x01b\r\n\r\n"), UVMQTT_EWSHEADER);
  /* The size bound: 8 KiB without a blank line is refused, whatever comes. */
  static char big[UVMQTT__HTTP_HEAD_MAX + 100];
  memset(big, 'a', sizeof big);
  memcpy(big, OK_HEAD, strlen(OK_HEAD));
  ck_assert_int_eq(uvmqtt__ws_parse_response(big, UVMQTT__HTTP_HEAD_MAX - 1, ACCEPT, &len), 0);
  ck_assert_int_eq(uvmqtt__ws_parse_response(big, UVMQTT__HTTP_HEAD_MAX, ACCEPT, &len),
                   UVMQTT_EWSHEADER);
  ck_assert_int_eq(uvmqtt__ws_parse_response(big, sizeof big, ACCEPT, &len), UVMQTT_EWSHEADER);
#undef OK_HEAD
}
END_TEST

START_TEST(proxy_parser_rules) {
  size_t len = 0;
  const char ok[] = "HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n\x10";
  ck_assert_int_eq(uvmqtt__proxy_parse_response(ok, sizeof ok - 1, &len), 1);
  ck_assert_uint_eq(len, sizeof ok - 2);
  ck_assert_int_eq(uvmqtt__proxy_parse_response(ok, 20, &len), 0);
  const char *auth = "HTTP/1.0 407 Proxy Authentication Required\r\n\r\n";
  ck_assert_int_eq(uvmqtt__proxy_parse_response(auth, strlen(auth), &len), UVMQTT_EPROXYAUTH);
  const char *denied = "HTTP/1.1 403 Access violation\r\n\r\n";
  ck_assert_int_eq(uvmqtt__proxy_parse_response(denied, strlen(denied), &len), UVMQTT_EPROXY);
  const char *junk = "SSH-2.0-OpenSSH\r\n\r\n";
  ck_assert_int_eq(uvmqtt__proxy_parse_response(junk, strlen(junk), &len), UVMQTT_EPROXYHEADER);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  /* libuv writes with write(2): a peer that went away must not kill the
   * process, as in any libuv program. A broker closes as soon as it reads
   * DISCONNECT, so the close frame (or close_notify) behind it may meet a
   * reset connection. */
  signal(SIGPIPE, SIG_IGN);
  Suite *s = suite_create("ws");
  TCase *tc = tcase_create("parser");
  tcase_add_test(tc, ws_parser_rules);
  tcase_add_test(tc, proxy_parser_rules);
  suite_add_tcase(s, tc);
  tc = tcase_create("brokers");
  tcase_set_timeout(tc, TCASE_TIMEOUT_S);
  tcase_add_unchecked_fixture(tc, test_certs_dir_make, test_certs_dir_remove);
  tcase_add_loop_test(tc, ws_stream_qos1, 0, 4);
  suite_add_tcase(s, tc);
  tc = tcase_create("scripted");
  tcase_set_timeout(tc, TCASE_TIMEOUT_S);
  tcase_add_test(tc, ws_packet_split_across_frames);
  tcase_add_test(tc, ws_packets_in_one_frame);
  tcase_add_test(tc, ws_ping_inside_packet);
  tcase_add_test(tc, ws_server_close_frame);
  tcase_add_test(tc, ws_text_frame_refused);
  tcase_add_loop_test(tc, ws_upgrade_refused, 0, 5);
  tcase_add_loop_test(tc, ws_upgrade_unanswered, 0, 2);
  tcase_add_loop_test(tc, ws_transport_close_in_every_state, 0, 5);
  suite_add_tcase(s, tc);
  return s;
}
