/* The client against a real Mosquitto on 127.0.0.1: connect and disconnect,
 * publish and subscribe at every QoS and payload size, retained messages,
 * wills, persistent sessions, refused CONNACKs, shared subscriptions,
 * per-subscription callbacks, synchronous publish errors, closing from
 * inside callbacks and a thousand idle clients on one loop.
 *
 * Every test starts its own broker with a config it writes, counts
 * callbacks, asserts the counts after uv_run, closes every handle and checks
 * that uv_loop_close() succeeds. A watchdog timer bounds every loop. Tests
 * that make sense for both protocol versions are loop tests: index 0 runs
 * MQTT 3.1.1, index 1 MQTT 5, and index 2, where there is one, MQTT 3.1. */
#include <check.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "client/client_impl.h"
#include "transport/read_pool.h"
#include "uvmqtt.h"

/* Each scenario must finish well within its test case's Check timeout, so
 * the watchdog's message, not a bare timeout, reports a stuck scenario. */
#define WATCHDOG_MS     20000
#define TCASE_TIMEOUT_S 40

#define MANY_CLIENTS     1000
#define MANY_IN_FLIGHT   50 /* connection attempts at a time, below the listen backlog */
#define MANY_WATCHDOG_MS 100000
#define MANY_TIMEOUT_S   150
#define MANY_BYTES_BOUND 4096 /* per idle client */
#define MANY_SETTLE_MS   200

/* ---- Loop, watchdog and broker -------------------------------------------------------- */

static uv_loop_t g_loop;
static uv_timer_t g_watchdog;
static test_broker_t g_broker;
static char g_uri[64];

static void loop_start(uint64_t timeout_ms) {
  test_loop_start(&g_loop, &g_watchdog, timeout_ms, &g_broker);
}

static void loop_run(void) {
  uv_run(&g_loop, UV_RUN_DEFAULT);
}

static void loop_finish(void) {
  test_loop_finish(&g_loop, &g_watchdog);
}

static void broker_start(const char *extra) {
  ck_assert_msg(test_broker_start(&g_broker, extra) == 0, "mosquitto did not start");
  snprintf(g_uri, sizeof g_uri, "mqtt://127.0.0.1:%d", g_broker.port);
}

static void broker_finish(void) {
  test_broker_cleanup(&g_broker);
}

/* 1 when the broker's log holds `needle` on some line. */
static int broker_log_has(const char *needle) {
  char path[512], line[1024];
  snprintf(path, sizeof path, "%s/mosquitto.log", g_broker.dir);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  int found = 0;
  while (!found && fgets(line, sizeof line, f) != NULL)
    found = strstr(line, needle) != NULL;
  fclose(f);
  return found;
}

/* Index 2 runs MQTT 3.1 ("MQIsdp") in the tests that cover it. */
static uint8_t version_of(int index) {
  return index == 0 ? UVMQTT_V311 : index == 1 ? UVMQTT_V5 : UVMQTT_V31;
}

static int bytes_is(uvmqtt_bytes_t b, const char *s) {
  size_t n = strlen(s);
  return b.len == n && (n == 0 || memcmp(b.data, s, n) == 0);
}

/* A pattern that is not periodic in 256, so a payload shifted by any
 * offset does not compare equal. */
static void fill(uint8_t *buf, size_t len, unsigned seed) {
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(i * 131u + (i >> 8) * 7u + seed * 29u);
}

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* ---- A client with counters and scenario hooks ------------------------------------------- */

typedef struct peer_s peer_t;

struct peer_s {
  uvmqtt_client_t client;
  uv_timer_t timer; /* the scenario's delays and polls; closed with the client */
  uint8_t version;

  int connect_calls;
  int connect_status;
  uint8_t connack_reason;
  uint8_t session_present;
  int disconnect_calls;
  uvmqtt_disconnect_t disc;
  int close_calls;
  int message_calls;
  int suback_calls;
  uint8_t granted; /* the last SUBACK's reason code */
  int unsuback_calls;
  int publish_issued;
  int publish_calls;
  int publish_failures;     /* callbacks with a status other than 0 */
  int publish_out_of_order; /* callbacks whose index is not the next one */
  int stopped_calls;
  int pre_connect_calls;

  void (*connected)(peer_t *p, int status);
  void (*disconnected)(peer_t *p);
  void (*subscribed)(peer_t *p);
  void (*unsubscribed)(peer_t *p);
  void (*message)(peer_t *p, const uvmqtt_message_t *m);
  void (*published)(peer_t *p, int status, uint8_t reason, int index);
  void (*stopped)(peer_t *p); /* a uvmqtt_disconnect() finished */
  void (*delayed)(peer_t *p);
  void (*pre_connect)(peer_t *p, uint32_t attempt);
};

static void cb_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  peer_t *p = client->data;
  p->connect_calls++;
  p->connect_status = status;
  ck_assert_ptr_nonnull(ack);
  p->connack_reason = ack->reason;
  p->session_present = ack->session_present;
  ck_assert_ptr_nonnull(ack->server);
  ck_assert_str_eq(ack->server, g_uri);
  if (status == 0) {
    ck_assert_uint_eq(ack->reason, 0);
    if (p->version == UVMQTT_V5)
      ck_assert_ptr_nonnull(ack->props);
    else
      ck_assert_ptr_null(ack->props);
  }
  if (p->connected) p->connected(p, status);
}

static void cb_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  peer_t *p = client->data;
  p->disconnect_calls++;
  p->disc = *info;
  if (p->disconnected) p->disconnected(p);
}

static void cb_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  peer_t *p = client->data;
  ck_assert_ptr_null(arg);
  p->message_calls++;
  if (p->version == UVMQTT_V5)
    ck_assert_ptr_nonnull(m->props);
  else
    ck_assert_ptr_null(m->props);
  ck_assert_uint_le(m->qos, 2);
  if (m->qos == 0)
    ck_assert_uint_eq(m->packet_id, 0);
  else
    ck_assert_uint_ne(m->packet_id, 0);
  if (p->message) p->message(p, m);
}

static void cb_closed(uvmqtt_client_t *client) {
  peer_t *p = client->data;
  p->close_calls++;
  ck_assert_int_eq(p->close_calls, 1);
  ck_assert_ptr_null(client->impl);
  uv_close((uv_handle_t *)&p->timer, NULL);
}

static void cb_suback(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                      void *arg) {
  peer_t *p = client->data;
  (void)arg;
  p->suback_calls++;
  ck_assert_msg(status == 0, "subscribe: %s", uvmqtt_err_name(status));
  ck_assert_uint_eq(count, 1);
  ck_assert_ptr_nonnull(reasons);
  p->granted = reasons[0];
  if (p->subscribed) p->subscribed(p);
}

static void cb_unsuback(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                        void *arg) {
  peer_t *p = client->data;
  (void)arg;
  p->unsuback_calls++;
  ck_assert_msg(status == 0, "unsubscribe: %s", uvmqtt_err_name(status));
  if (p->version == UVMQTT_V5) {
    /* v5 UNSUBACK carries one reason code per filter: 0x00 success. */
    ck_assert_uint_eq(count, 1);
    ck_assert_uint_eq(reasons[0], 0);
  } else {
    ck_assert_uint_eq(count, 0);
  }
  if (p->unsubscribed) p->unsubscribed(p);
}

static void cb_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  peer_t *p = client->data;
  int index = (int)(intptr_t)arg;
  if (index != p->publish_calls) p->publish_out_of_order++;
  p->publish_calls++;
  if (status != 0) p->publish_failures++;
  if (p->published) p->published(p, status, reason, index);
}

/* The PUBACK/PUBCOMP reason code for a publish that no subscription
 * matched: v5's 0x10 "no matching subscribers", a success code. */
static uint8_t no_subscribers(const peer_t *p) {
  return p->version == UVMQTT_V5 ? 0x10 : 0;
}

static void cb_pre_connect(uvmqtt_client_t *client, uint32_t attempt) {
  peer_t *p = client->data;
  p->pre_connect_calls++;
  ck_assert_uint_ge(attempt, 1);
  if (p->pre_connect) p->pre_connect(p, attempt);
}

static void peer_options(uvmqtt_options_t *o, uint8_t version) {
  uvmqtt_options_init(o);
  o->uri = g_uri;
  o->version = version;
  /* A lost connection fails the scenario instead of retrying quietly. */
  o->no_reconnect = 1;
}

/* Prepares `p` with `o`, or with peer_options() defaults when NULL. */
static void peer_init(peer_t *p, uint8_t version, const uvmqtt_options_t *o) {
  uvmqtt_options_t defaults;
  if (o == NULL) {
    peer_options(&defaults, version);
    o = &defaults;
  }
  ck_assert_uint_eq(o->version, version);
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = cb_connect;
  cbs.on_disconnect = cb_disconnect;
  cbs.on_message = cb_message;
  cbs.pre_connect = cb_pre_connect;
  p->version = version;
  int rc = uvmqtt_client_init(&g_loop, &p->client, o, &cbs);
  ck_assert_msg(rc == 0, "client_init: %s", uvmqtt_err_name(rc));
  p->client.data = p;
  ck_assert_int_eq(uv_timer_init(&g_loop, &p->timer), 0);
  p->timer.data = p;
}

static void peer_connect(peer_t *p) {
  int rc = uvmqtt_connect(&p->client);
  ck_assert_msg(rc == 0, "connect: %s", uvmqtt_err_name(rc));
}

static void peer_close(peer_t *p) {
  uvmqtt_close(&p->client, cb_closed);
}

static void peer_subscribe(peer_t *p, const char *filter, uint8_t qos, uvmqtt_message_cb cb,
                           void *arg) {
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)filter;
  sub.filter.len = (uint32_t)strlen(filter);
  sub.options = UVMQTT_SUB_QOS(qos);
  int rc = uvmqtt_subscribe(&p->client, &sub, 1, NULL, cb, cb_suback, arg);
  ck_assert_msg(rc == 0, "subscribe %s: %s", filter, uvmqtt_err_name(rc));
}

static void peer_unsubscribe(peer_t *p, const char *filter) {
  const char *filters[1] = {filter};
  int rc = uvmqtt_unsubscribe(&p->client, filters, 1, cb_unsuback, NULL);
  ck_assert_msg(rc == 0, "unsubscribe %s: %s", filter, uvmqtt_err_name(rc));
}

/* Publishes with the publish's issue index as the callback's arg, so
 * cb_published can check the completion order. */
static void peer_publish(peer_t *p, const char *topic, const void *data, size_t len, uint8_t qos,
                         uint8_t retain) {
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.qos = qos;
  o.retain = retain;
  int rc = uvmqtt_publish(&p->client, topic, data, len, &o, cb_published,
                          (void *)(intptr_t)p->publish_issued);
  ck_assert_msg(rc == 0, "publish %s: %s", topic, uvmqtt_err_name(rc));
  p->publish_issued++;
}

static void poll_stopped_cb(uv_timer_t *timer) {
  peer_t *p = timer->data;
  uvmqtt_stats_t st;
  uvmqtt_client_stats(&p->client, &st);
  if (st.connected) return;
  uv_timer_stop(timer);
  p->stopped_calls++;
  p->stopped(p);
}

/* Sends DISCONNECT and runs `then` once the connection is gone. The API has
 * no callback for that moment, so the peer's timer polls the stats. */
static void peer_disconnect(peer_t *p, void (*then)(peer_t *p)) {
  int rc = uvmqtt_disconnect(&p->client, 0);
  ck_assert_msg(rc == 0, "disconnect: %s", uvmqtt_err_name(rc));
  p->stopped = then;
  ck_assert_int_eq(uv_timer_start(&p->timer, poll_stopped_cb, 5, 5), 0);
}

static void delay_cb(uv_timer_t *timer) {
  peer_t *p = timer->data;
  p->delayed(p);
}

static void peer_after(peer_t *p, uint64_t ms, void (*fn)(peer_t *p)) {
  p->delayed = fn;
  ck_assert_int_eq(uv_timer_start(&p->timer, delay_cb, ms, 0), 0);
}

/* The scenarios' shared state: a fresh process per test (fork mode), so a
 * file-scope struct is clean at the start of each. */
static struct {
  peer_t a, b, c;
  int done;
  uint8_t qos;
  int subscribed;
  int seen[1000];
  int got_a, got_b, got_default, got_will, got_mark, got_topic;
  uint8_t *payloads[5];
} g;

/* ---- Connect and disconnect --------------------------------------------------------------- */

static void connect_stopped(peer_t *p) {
  /* Disconnected: a second disconnect has nothing to end. */
  ck_assert_int_eq(uvmqtt_disconnect(&p->client, 0), UVMQTT_ENOTCONN);
  peer_close(p);
}

static void connect_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  ck_assert_uint_eq(p->session_present, 0);
  /* v5 without a client id: the broker assigned one. */
  const char *id = uvmqtt_client_id(&p->client);
  ck_assert_ptr_nonnull(id);
  ck_assert_uint_gt(strlen(id), 0);
  uvmqtt_stats_t st;
  uvmqtt_client_stats(&p->client, &st);
  ck_assert_uint_eq(st.connected, 1);
  ck_assert_uint_eq(st.attempts, 1);
  peer_disconnect(p, connect_stopped);
}

START_TEST(client_connect_disconnect) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_t *p = &g.a;
  peer_init(p, v, NULL);
  p->connected = connect_connected;
  peer_connect(p);
  ck_assert_int_eq(uvmqtt_connect(&p->client), UVMQTT_EBUSY);
  loop_run();
  ck_assert_int_eq(p->connect_calls, 1);
  ck_assert_int_eq(p->connect_status, 0);
  ck_assert_int_eq(p->stopped_calls, 1);
  ck_assert_int_eq(p->disconnect_calls, 1); /* the clean end of uvmqtt_disconnect() */
  ck_assert_int_eq(p->disc.status, 0);
  ck_assert_int_eq(p->disc.will_retry, 0);
  ck_assert_int_eq(p->close_calls, 1);
  /* Mosquitto names the protocol it saw: p1 is MQTT 3.1. */
  if (v == UVMQTT_V31) ck_assert(broker_log_has("(p1, c1, k60"));
  loop_finish();
  broker_finish();
}
END_TEST

START_TEST(client_v31_client_id_limit) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = "mqtt://127.0.0.1:1";
  o.version = UVMQTT_V31;
  o.client_id = "abcdefghijklmnopqrstuvwx"; /* 24 bytes: more than 3.1 allows */
  uvmqtt_client_t c;
  ck_assert_int_eq(uvmqtt_client_init(&loop, &c, &o, NULL), UVMQTT_ECLIENTID);
  o.version = UVMQTT_V311;
  ck_assert_int_eq(uvmqtt_client_init(&loop, &c, &o, NULL), 0);
  uvmqtt_close(&c, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

static void stopped_attempt_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  ck_assert_int_eq(p->pre_connect_calls, 2);
  peer_close(p);
}

/* An attempt stopped by uvmqtt_disconnect() reports nothing and leaves the
 * client stopped, so it connects again. */
static void stopped_attempt_retry(peer_t *p) {
  ck_assert_int_eq(p->connect_calls, 0);
  ck_assert_int_eq(p->disconnect_calls, 0);
  p->pre_connect = NULL;
  p->connected = stopped_attempt_connected;
  int rc = uvmqtt_connect(&p->client);
  ck_assert_msg(rc == 0, "connect after a stopped attempt: %s", uvmqtt_err_name(rc));
}

static void hook_stop(peer_t *p, uint32_t attempt) {
  ck_assert_uint_eq(attempt, 1);
  int rc = uvmqtt_disconnect(&p->client, 0);
  ck_assert_msg(rc == 0, "disconnect in pre_connect: %s", uvmqtt_err_name(rc));
  peer_after(p, 100, stopped_attempt_retry);
}

START_TEST(client_disconnect_in_pre_connect) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_t *p = &g.a;
  peer_init(p, v, NULL);
  p->pre_connect = hook_stop;
  peer_connect(p);
  loop_run();
  ck_assert_int_eq(p->pre_connect_calls, 2);
  ck_assert_int_eq(p->connect_calls, 1);
  ck_assert_int_eq(p->connect_status, 0);
  ck_assert_int_eq(p->disconnect_calls, 0);
  ck_assert_int_eq(p->close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

START_TEST(client_disconnect_while_connecting) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_t *p = &g.a;
  peer_init(p, v, NULL);
  peer_connect(p);
  /* The TCP connection is under way: dropping it is all there is to do. */
  ck_assert_int_eq(uvmqtt_disconnect(&p->client, 0), 0);
  peer_after(p, 100, stopped_attempt_retry);
  loop_run();
  ck_assert_int_eq(p->pre_connect_calls, 2);
  ck_assert_int_eq(p->connect_calls, 1);
  ck_assert_int_eq(p->connect_status, 0);
  ck_assert_int_eq(p->disconnect_calls, 0);
  ck_assert_int_eq(p->close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Publish and subscribe: every QoS, payload sizes ---------------------------------------- */

static const size_t sizes[5] = {0, 1, 64, 65536, 1048576};

static void sizes_maybe_done(void) {
  if (g.done || g.b.message_calls < 5 || g.a.publish_calls < 5) return;
  g.done = 1;
  peer_close(&g.a);
  peer_close(&g.b);
}

static void sizes_published(peer_t *p, int status, uint8_t reason, int index) {
  (void)p;
  ck_assert_msg(status == 0, "publish %d: %s", index, uvmqtt_err_name(status));
  ck_assert_uint_eq(reason, 0);
  sizes_maybe_done();
}

static void sizes_message(peer_t *p, const uvmqtt_message_t *m) {
  int i = p->message_calls - 1;
  ck_assert_int_lt(i, 5);
  ck_assert(bytes_is(m->topic, "size/t"));
  ck_assert_uint_eq(m->qos, g.qos);
  ck_assert_uint_eq(m->retain, 0);
  ck_assert_uint_eq(m->dup, 0);
  ck_assert_uint_eq(m->payload.len, sizes[i]);
  if (sizes[i] > 0)
    ck_assert_msg(memcmp(m->payload.data, g.payloads[i], sizes[i]) == 0,
                  "payload %zu bytes differs", sizes[i]);
  sizes_maybe_done();
}

static void sizes_pub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  for (int i = 0; i < 5; i++)
    peer_publish(p, "size/t", g.payloads[i], sizes[i], g.qos, 0);
}

static void sizes_subscribed(peer_t *p) {
  ck_assert_uint_eq(p->granted, g.qos);
  peer_connect(&g.a);
}

static void sizes_sub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "size/t", g.qos, NULL, NULL);
}

/* Index: version * 3 + QoS. */
START_TEST(client_pubsub_payload_sizes) {
  uint8_t v = version_of(_i / 3);
  g.qos = (uint8_t)(_i % 3);
  for (int i = 0; i < 5; i++) {
    g.payloads[i] = malloc(sizes[i] + 1);
    ck_assert_ptr_nonnull(g.payloads[i]);
    fill(g.payloads[i], sizes[i], (unsigned)i + 1);
  }
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, v, NULL);
  peer_init(&g.b, v, NULL);
  g.a.connected = sizes_pub_connected;
  g.a.published = sizes_published;
  g.b.connected = sizes_sub_connected;
  g.b.subscribed = sizes_subscribed;
  g.b.message = sizes_message;
  peer_connect(&g.b);
  loop_run();
  ck_assert_int_eq(g.b.suback_calls, 1);
  ck_assert_int_eq(g.b.message_calls, 5);
  ck_assert_int_eq(g.a.publish_calls, 5);
  ck_assert_int_eq(g.a.publish_failures, 0);
  ck_assert_int_eq(g.a.publish_out_of_order, 0);
  ck_assert_int_eq(g.a.disconnect_calls + g.b.disconnect_calls, 0);
  ck_assert_int_eq(g.a.close_calls, 1);
  ck_assert_int_eq(g.b.close_calls, 1);
  loop_finish();
  broker_finish();
  for (int i = 0; i < 5; i++)
    free(g.payloads[i]);
}
END_TEST

/* ---- A thousand QoS 1 messages in order -------------------------------------------------------
 */

#define ORDERED_COUNT 1000

static void ordered_maybe_done(void) {
  if (g.done || g.b.message_calls < ORDERED_COUNT || g.a.publish_calls < ORDERED_COUNT) return;
  g.done = 1;
  peer_close(&g.a);
  peer_close(&g.b);
}

static void ordered_published(peer_t *p, int status, uint8_t reason, int index) {
  (void)p;
  ck_assert_msg(status == 0, "publish %d: %s", index, uvmqtt_err_name(status));
  ck_assert_uint_eq(reason, 0);
  ordered_maybe_done();
}

static void ordered_message(peer_t *p, const uvmqtt_message_t *m) {
  ck_assert_uint_eq(m->qos, 1);
  ck_assert_uint_eq(m->payload.len, 4);
  uint32_t index = get_u32(m->payload.data);
  ck_assert_uint_eq(index, (uint32_t)(p->message_calls - 1));
  ordered_maybe_done();
}

static void ordered_pub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  for (uint32_t i = 0; i < ORDERED_COUNT; i++) {
    uint8_t buf[4];
    put_u32(buf, i);
    peer_publish(p, "order/t", buf, sizeof buf, 1, 0);
  }
}

static void ordered_subscribed(peer_t *p) {
  ck_assert_uint_eq(p->granted, 1);
  peer_connect(&g.a);
}

static void ordered_sub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "order/t", 1, NULL, NULL);
}

START_TEST(client_qos1_ordered_1000) {
  uint8_t v = version_of(_i);
  /* Room for every message while the subscriber's window is full. */
  broker_start("max_queued_messages 5000\n");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, v, NULL);
  peer_init(&g.b, v, NULL);
  g.a.connected = ordered_pub_connected;
  g.a.published = ordered_published;
  g.b.connected = ordered_sub_connected;
  g.b.subscribed = ordered_subscribed;
  g.b.message = ordered_message;
  peer_connect(&g.b);
  loop_run();
  ck_assert_int_eq(g.b.message_calls, ORDERED_COUNT);
  ck_assert_int_eq(g.a.publish_calls, ORDERED_COUNT);
  ck_assert_int_eq(g.a.publish_failures, 0);
  ck_assert_int_eq(g.a.publish_out_of_order, 0);
  ck_assert_int_eq(g.a.close_calls + g.b.close_calls, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Retained messages ------------------------------------------------------------------------
 */

static void retain_maybe_done(void) {
  if (g.done || g.b.message_calls < 2 || g.a.publish_calls < 2) return;
  g.done = 1;
  peer_close(&g.a);
  peer_close(&g.b);
}

static void retain_message(peer_t *p, const uvmqtt_message_t *m) {
  ck_assert(bytes_is(m->topic, "ret/t"));
  ck_assert_uint_eq(m->qos, 1);
  if (p->message_calls == 1) {
    /* Stored before the subscription: delivered because of it, flagged. */
    ck_assert(bytes_is(m->payload, "kept"));
    ck_assert_uint_eq(m->retain, 1);
    peer_publish(&g.a, "ret/t", "live", 4, 1, 1);
  } else {
    /* Forwarded to an existing subscription: the flag is cleared. */
    ck_assert_int_eq(p->message_calls, 2);
    ck_assert(bytes_is(m->payload, "live"));
    ck_assert_uint_eq(m->retain, 0);
  }
  retain_maybe_done();
}

static void retain_sub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "ret/#", 1, NULL, NULL);
}

static void retain_published(peer_t *p, int status, uint8_t reason, int index) {
  ck_assert_msg(status == 0, "publish %d: %s", index, uvmqtt_err_name(status));
  if (index == 0) {
    /* Nobody subscribed yet: v5 says so, with a success code. */
    ck_assert_uint_eq(reason, no_subscribers(p));
    peer_connect(&g.b);
  } else {
    ck_assert_uint_eq(reason, 0);
  }
  retain_maybe_done();
}

static void retain_pub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_publish(p, "ret/t", "kept", 4, 1, 1);
}

START_TEST(client_retained_message) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, v, NULL);
  peer_init(&g.b, v, NULL);
  g.a.connected = retain_pub_connected;
  g.a.published = retain_published;
  g.b.connected = retain_sub_connected;
  g.b.message = retain_message;
  peer_connect(&g.a);
  loop_run();
  ck_assert_int_eq(g.b.message_calls, 2);
  ck_assert_int_eq(g.a.publish_calls, 2);
  ck_assert_int_eq(g.a.publish_failures, 0);
  ck_assert_int_eq(g.a.close_calls + g.b.close_calls, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Wills --------------------------------------------------------------------------------------
 */

static void will_options(uvmqtt_options_t *o, uint8_t version, const char *id) {
  peer_options(o, version);
  o->client_id = id;
  o->will_topic = "will/t";
  o->will_payload = "gone";
  o->will_payload_len = 4;
  o->will_qos = 1;
}

static void will_message(peer_t *p, const uvmqtt_message_t *m) {
  ck_assert(bytes_is(m->topic, "will/t"));
  ck_assert(bytes_is(m->payload, "gone"));
  ck_assert_uint_eq(m->qos, 1);
  g.got_will++;
  peer_close(p);
}

static void will_dying_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  /* No DISCONNECT: the broker sees the connection die and sends the will. */
  peer_close(p);
}

static void will_watcher_subscribed(peer_t *p) {
  ck_assert_uint_eq(p->granted, 1);
  peer_connect(&g.a);
}

static void will_watcher_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "will/t", 1, NULL, NULL);
}

START_TEST(client_will_sent_on_close) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  will_options(&o, v, "will-dies");
  peer_init(&g.a, v, &o);
  peer_init(&g.b, v, NULL);
  g.a.connected = will_dying_connected;
  g.b.connected = will_watcher_connected;
  g.b.subscribed = will_watcher_subscribed;
  g.b.message = will_message;
  peer_connect(&g.b);
  loop_run();
  ck_assert_int_eq(g.a.connect_calls, 1);
  ck_assert_int_eq(g.a.disconnect_calls, 0);
  ck_assert_int_eq(g.a.close_calls, 1);
  ck_assert_int_eq(g.got_will, 1);
  ck_assert_int_eq(g.b.close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

static void nowill_message(peer_t *p, const uvmqtt_message_t *m) {
  if (bytes_is(m->topic, "will/t")) {
    g.got_will++;
    return;
  }
  ck_assert(bytes_is(m->topic, "mark/t"));
  g.got_mark++;
  peer_close(p);
}

static void nowill_mark(peer_t *p) {
  peer_publish(p, "mark/t", "m", 1, 1, 0);
}

static void nowill_leaver_stopped(peer_t *p) {
  peer_close(p);
  /* Give the broker ample time to publish a will it should not have, then
   * send a marker through it: a will would arrive before the marker. */
  peer_after(&g.b, 300, nowill_mark);
}

static void nowill_leaver_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_disconnect(p, nowill_leaver_stopped);
}

static void nowill_watcher_subscribed(peer_t *p) {
  if (p->suback_calls == 2) peer_connect(&g.a);
}

static void nowill_watcher_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "will/t", 1, NULL, NULL);
  peer_subscribe(p, "mark/t", 1, NULL, NULL);
}

START_TEST(client_will_not_sent_on_disconnect) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  will_options(&o, v, "will-leaves");
  peer_init(&g.a, v, &o);
  peer_init(&g.b, v, NULL);
  g.a.connected = nowill_leaver_connected;
  g.b.connected = nowill_watcher_connected;
  g.b.subscribed = nowill_watcher_subscribed;
  g.b.message = nowill_message;
  peer_connect(&g.b);
  loop_run();
  ck_assert_int_eq(g.a.stopped_calls, 1);
  ck_assert_int_eq(g.a.disconnect_calls, 1);
  ck_assert_int_eq(g.a.disc.status, 0);
  ck_assert_int_eq(g.got_will, 0);
  ck_assert_int_eq(g.got_mark, 1);
  ck_assert_int_eq(g.a.close_calls + g.b.close_calls, 2);
  /* The broker logs a DISCONNECT it received this way; a dropped
   * connection reads "closed its connection". */
  ck_assert_msg(broker_log_has("Client will-leaves disconnected"),
                "the broker did not log a DISCONNECT from the client");
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Persistent sessions
 * -------------------------------------------------------------------------- */

#define AWAY_COUNT 3

static void session_message(peer_t *p, const uvmqtt_message_t *m) {
  /* Only the second connection may get these. */
  ck_assert_int_eq(p->connect_calls, 2);
  ck_assert(bytes_is(m->topic, "sess/t"));
  ck_assert_uint_eq(m->qos, 1);
  ck_assert_uint_eq(m->payload.len, 4);
  ck_assert_uint_eq(get_u32(m->payload.data), (uint32_t)(p->message_calls - 1));
  if (p->message_calls == AWAY_COUNT) {
    peer_close(&g.a);
    peer_close(&g.b);
  }
}

static void session_published(peer_t *p, int status, uint8_t reason, int index) {
  (void)index;
  ck_assert_int_eq(status, 0);
  ck_assert_uint_eq(reason, 0);
  if (p->publish_calls == AWAY_COUNT) peer_connect(&g.a);
}

static void session_publisher_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  for (uint32_t i = 0; i < AWAY_COUNT; i++) {
    uint8_t buf[4];
    put_u32(buf, i);
    peer_publish(p, "sess/t", buf, sizeof buf, 1, 0);
  }
}

static void session_away(peer_t *p) {
  (void)p;
  peer_connect(&g.b);
}

static void session_subscribed(peer_t *p) {
  ck_assert_uint_eq(p->granted, 1);
  peer_disconnect(p, session_away);
}

static void session_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  if (p->connect_calls == 1) {
    ck_assert_uint_eq(p->session_present, 0);
    peer_subscribe(p, "sess/t", 1, NULL, NULL);
  } else {
    ck_assert_uint_eq(p->session_present, 1);
  }
}

START_TEST(client_persistent_session) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  peer_options(&o, v);
  o.client_id = "persistent";
  o.clean_start = 0;
  uvmqtt_props_t props;
  memset(&props, 0, sizeof props);
  if (v == UVMQTT_V5) {
    /* v5 ends the session with the connection unless told otherwise. */
    props.has = 1ull << UVMQTT_PROP_SESSION_EXPIRY_INTERVAL;
    props.session_expiry_interval = 300;
    o.connect_props = &props;
  }
  peer_init(&g.a, v, &o);
  peer_init(&g.b, v, NULL);
  g.a.connected = session_connected;
  g.a.subscribed = session_subscribed;
  g.a.message = session_message;
  g.b.connected = session_publisher_connected;
  g.b.published = session_published;
  peer_connect(&g.a);
  loop_run();
  ck_assert_int_eq(g.a.connect_calls, 2);
  ck_assert_uint_eq(g.a.session_present, 1);
  ck_assert_int_eq(g.a.stopped_calls, 1);
  ck_assert_int_eq(g.a.disconnect_calls, 1);
  ck_assert_int_eq(g.a.disc.status, 0);
  ck_assert_int_eq(g.a.message_calls, AWAY_COUNT);
  ck_assert_int_eq(g.b.publish_calls, AWAY_COUNT);
  ck_assert_int_eq(g.a.close_calls + g.b.close_calls, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Refused CONNACK ----------------------------------------------------------------------------
 */

/* Mosquitto answers a wrong password with 3.1.1's return code 5 (not
 * authorized) and v5's 0x87 (not authorized), not with "bad user name or
 * password". */
#define REFUSED_V311 0x05
#define REFUSED_V5   0x87

static void refused_good_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect with the right password: %s", uvmqtt_err_name(status));
  peer_close(p);
}

static void refused_bad_disconnected(peer_t *p) {
  ck_assert_int_eq(p->disc.will_retry, 0);
  ck_assert_int_eq(p->disc.status, UVMQTT_EREFUSED);
  ck_assert_uint_eq(p->disc.reason, p->connack_reason);
  peer_close(p);
  peer_connect(&g.b);
}

static void refused_bad_connected(peer_t *p, int status) {
  ck_assert_msg(status == UVMQTT_EREFUSED, "wrong password: %s", uvmqtt_err_name(status));
  uint8_t want = p->version == UVMQTT_V5 ? REFUSED_V5 : REFUSED_V311;
  ck_assert_msg(p->connack_reason == want, "reason 0x%02x, expected 0x%02x", p->connack_reason,
                want);
}

static void auth_options(uvmqtt_options_t *o, uint8_t version, const char *password) {
  peer_options(o, version);
  o->username = "user";
  o->password = password;
  o->password_len = strlen(password);
}

START_TEST(client_refused_connack) {
  uint8_t v = version_of(_i);
  char dir[64], cmd[256], extra[256];
  snprintf(dir, sizeof dir, "/tmp/uvmqtt-passwd-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(cmd, sizeof cmd, "mosquitto_passwd -b -c %s/passwd user pass", dir);
  ck_assert_msg(test_run(cmd, 10) == 0, "mosquitto_passwd failed");
  snprintf(extra, sizeof extra, "allow_anonymous false\npassword_file %s/passwd\n", dir);
  broker_start(extra);
  /* Mosquitto read the file at start: remove it now, so a failing
   * assertion below leaves nothing behind. */
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  ck_assert_int_eq(test_run(cmd, 10), 0);
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  auth_options(&o, v, "wrong");
  peer_init(&g.a, v, &o);
  auth_options(&o, v, "pass");
  peer_init(&g.b, v, &o);
  g.a.connected = refused_bad_connected;
  g.a.disconnected = refused_bad_disconnected;
  g.b.connected = refused_good_connected;
  peer_connect(&g.a);
  loop_run();
  ck_assert_int_eq(g.a.connect_calls, 1);
  ck_assert_int_eq(g.a.connect_status, UVMQTT_EREFUSED);
  ck_assert_int_eq(g.a.disconnect_calls, 1);
  ck_assert_int_eq(g.b.connect_calls, 1);
  ck_assert_int_eq(g.b.connect_status, 0);
  ck_assert_int_eq(g.b.disconnect_calls, 0);
  ck_assert_int_eq(g.a.close_calls + g.b.close_calls, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Shared subscriptions
 * ------------------------------------------------------------------------ */

#define SHARED_COUNT 100

static void shared_finish(peer_t *p) {
  (void)p;
  peer_close(&g.a);
  peer_close(&g.b);
  peer_close(&g.c);
}

static void shared_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  ck_assert(bytes_is(m->topic, "t"));
  ck_assert_uint_eq(m->payload.len, 4);
  uint32_t index = get_u32(m->payload.data);
  ck_assert_uint_lt(index, SHARED_COUNT);
  g.seen[index]++;
  /* Wait a little after the last one for duplicates before closing. */
  if (++g.got_topic == SHARED_COUNT) peer_after(&g.c, 200, shared_finish);
}

static void shared_published(peer_t *p, int status, uint8_t reason, int index) {
  (void)p;
  (void)index;
  ck_assert_int_eq(status, 0);
  ck_assert_uint_eq(reason, 0);
}

static void shared_publisher_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  for (uint32_t i = 0; i < SHARED_COUNT; i++) {
    uint8_t buf[4];
    put_u32(buf, i);
    peer_publish(p, "t", buf, sizeof buf, 1, 0);
  }
}

static void shared_subscribed(peer_t *p) {
  ck_assert_uint_eq(p->granted, 1);
  if (++g.subscribed == 2) peer_connect(&g.c);
}

static void shared_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "$share/g/t", 1, NULL, NULL);
}

START_TEST(client_shared_subscription) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_t *subs[2] = {&g.a, &g.b};
  for (int i = 0; i < 2; i++) {
    peer_init(subs[i], v, NULL);
    subs[i]->connected = shared_connected;
    subs[i]->subscribed = shared_subscribed;
    subs[i]->message = shared_message;
  }
  peer_init(&g.c, v, NULL);
  g.c.connected = shared_publisher_connected;
  g.c.published = shared_published;
  peer_connect(&g.a);
  peer_connect(&g.b);
  loop_run();
  for (int i = 0; i < SHARED_COUNT; i++)
    ck_assert_msg(g.seen[i] == 1, "message %d arrived %d times", i, g.seen[i]);
  ck_assert_int_eq(g.a.message_calls + g.b.message_calls, SHARED_COUNT);
  ck_assert_int_gt(g.a.message_calls, 0);
  ck_assert_int_gt(g.b.message_calls, 0);
  ck_assert_int_eq(g.c.publish_calls, SHARED_COUNT);
  ck_assert_int_eq(g.c.publish_failures, 0);
  ck_assert_int_eq(g.a.close_calls + g.b.close_calls + g.c.close_calls, 3);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Per-subscription callbacks
 * ------------------------------------------------------------------- */

static int tag_a, tag_b;

static void routed_maybe_done(peer_t *p) {
  if (g.done || g.got_a + g.got_b + g.got_default < 4 || p->publish_calls < 4) return;
  g.done = 1;
  peer_close(p);
}

static void routed_a(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  ck_assert_ptr_eq(arg, &tag_a);
  ck_assert(bytes_is(m->topic, "a/1") || bytes_is(m->topic, "a/2/3"));
  g.got_a++;
  routed_maybe_done(client->data);
}

static void routed_b(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  ck_assert_ptr_eq(arg, &tag_b);
  ck_assert(bytes_is(m->topic, "b/x"));
  g.got_b++;
  routed_maybe_done(client->data);
}

static void routed_default(peer_t *p, const uvmqtt_message_t *m) {
  ck_assert(bytes_is(m->topic, "c/t"));
  g.got_default++;
  routed_maybe_done(p);
}

static void routed_published(peer_t *p, int status, uint8_t reason, int index) {
  (void)index;
  ck_assert_int_eq(status, 0);
  ck_assert_uint_eq(reason, 0);
  routed_maybe_done(p);
}

static void routed_subscribed(peer_t *p) {
  if (p->suback_calls < 3) return;
  peer_publish(p, "a/1", "1", 1, 1, 0);
  peer_publish(p, "b/x", "2", 1, 1, 0);
  peer_publish(p, "c/t", "3", 1, 1, 0);
  peer_publish(p, "a/2/3", "4", 1, 1, 0);
}

static void routed_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "a/#", 1, routed_a, &tag_a);
  peer_subscribe(p, "b/+", 1, routed_b, &tag_b);
  peer_subscribe(p, "c/#", 1, NULL, NULL);
}

START_TEST(client_per_subscription_callbacks) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, v, NULL);
  g.a.connected = routed_connected;
  g.a.subscribed = routed_subscribed;
  g.a.message = routed_default;
  g.a.published = routed_published;
  peer_connect(&g.a);
  loop_run();
  ck_assert_int_eq(g.got_a, 2);
  ck_assert_int_eq(g.got_b, 1);
  ck_assert_int_eq(g.got_default, 1);
  ck_assert_int_eq(g.a.message_calls, 1);
  ck_assert_int_eq(g.a.publish_calls, 4);
  ck_assert_int_eq(g.a.close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Outgoing topic aliases ---------------------------------------------------------- */

#define ALIAS_MSGS   60
#define ALIAS_TOPICS 6

/* Topic i % ALIAS_TOPICS for message i: six topics through four aliases,
 * so aliases pass from topic to topic. */
static void alias_topic(char *buf, size_t size, int i) {
  snprintf(buf, size, "alias/topic/%d", (i * 7 + i / 5) % ALIAS_TOPICS);
}

static void alias_maybe_done(void) {
  if (g.done || g.b.message_calls < ALIAS_MSGS || g.a.publish_calls < ALIAS_MSGS) return;
  g.done = 1;
  peer_close(&g.a);
  peer_close(&g.b);
}

static void alias_message(peer_t *p, const uvmqtt_message_t *m) {
  ck_assert_uint_eq(m->payload.len, 4);
  int i = (int)get_u32(m->payload.data);
  ck_assert_int_eq(i, p->message_calls - 1);
  char want[64];
  alias_topic(want, sizeof want, i);
  ck_assert_msg(bytes_is(m->topic, want), "message %d on the wrong topic", i);
  alias_maybe_done();
}

static void alias_published(peer_t *p, int status, uint8_t reason, int index) {
  (void)p;
  (void)reason;
  ck_assert_msg(status == 0, "publish %d: %s", index, uvmqtt_err_name(status));
  alias_maybe_done();
}

static void alias_pub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  /* Mosquitto's default Topic Alias Maximum (10) leaves room for four. */
  ck_assert_uint_eq(p->client.impl->sess.alias_out_max, 4);
  for (int i = 0; i < ALIAS_MSGS; i++) {
    char topic[64];
    uint8_t buf[4];
    alias_topic(topic, sizeof topic, i);
    put_u32(buf, (uint32_t)i);
    peer_publish(p, topic, buf, sizeof buf, 1, 0);
  }
}

static void alias_subscribed(peer_t *p) {
  (void)p;
  peer_connect(&g.a);
}

static void alias_sub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "alias/#", 1, NULL, NULL);
}

START_TEST(client_topic_alias_out) {
  broker_start("");
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  peer_options(&o, UVMQTT_V5);
  o.topic_alias_out = 4;
  peer_init(&g.a, UVMQTT_V5, &o);
  peer_init(&g.b, UVMQTT_V5, NULL);
  g.a.connected = alias_pub_connected;
  g.a.published = alias_published;
  g.b.connected = alias_sub_connected;
  g.b.subscribed = alias_subscribed;
  g.b.message = alias_message;
  peer_connect(&g.b);
  loop_run();
  ck_assert_int_eq(g.b.message_calls, ALIAS_MSGS);
  ck_assert_int_eq(g.a.publish_calls, ALIAS_MSGS);
  ck_assert_int_eq(g.a.publish_failures, 0);
  ck_assert_int_eq(g.a.disconnect_calls + g.b.disconnect_calls, 0);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Request/response ------------------------------------------------------------------ */

#define RR_REQUESTS 5

static void rr_maybe_done(void) {
  if (g.done || g.got_a < RR_REQUESTS || g.got_b < 1) return;
  g.done = 1;
  peer_close(&g.a);
  peer_close(&g.b);
}

static void rr_response(uvmqtt_client_t *client, int status, const uvmqtt_message_t *m, void *arg) {
  (void)client;
  int i = (int)(intptr_t)arg;
  if (i < 0) {
    /* The request nobody answers. */
    ck_assert_int_eq(status, UVMQTT_ETIMEDOUT);
    ck_assert_ptr_null(m);
    g.got_b++;
  } else {
    ck_assert_msg(status == 0, "request %d: %s", i, uvmqtt_err_name(status));
    char want[16];
    snprintf(want, sizeof want, "re:q%d", i);
    ck_assert_msg(bytes_is(m->payload, want), "request %d got another's response", i);
    ck_assert(bytes_is(m->topic, "reply/a"));
    g.seen[i]++;
    g.got_a++;
  }
  rr_maybe_done();
}

/* The responder answers on the Response Topic with the Correlation Data. */
static void rr_serve(peer_t *p, const uvmqtt_message_t *m) {
  ck_assert_ptr_nonnull(m->props);
  ck_assert(UVMQTT_HAS(m->props, UVMQTT_PROP_RESPONSE_TOPIC));
  ck_assert(UVMQTT_HAS(m->props, UVMQTT_PROP_CORRELATION_DATA));
  char topic[64], payload[32];
  snprintf(topic, sizeof topic, "%.*s", (int)m->props->response_topic.len,
           m->props->response_topic.data);
  int n = snprintf(payload, sizeof payload, "re:%.*s", (int)m->payload.len, m->payload.data);
  uvmqtt_props_t pr;
  memset(&pr, 0, sizeof pr);
  pr.has = 1ull << UVMQTT_PROP_CORRELATION_DATA;
  pr.correlation_data = m->props->correlation_data;
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.qos = 1;
  o.props = &pr;
  ck_assert_int_eq(uvmqtt_publish(&p->client, topic, payload, (size_t)n, &o, NULL, NULL), 0);
  /* A stray answer with unknown Correlation Data is dropped by the requester. */
  pr.correlation_data.data = (const uint8_t *)"not-a-request-id";
  pr.correlation_data.len = 16;
  ck_assert_int_eq(uvmqtt_publish(&p->client, topic, "stray", 5, &o, NULL, NULL), 0);
}

static void rr_requester_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  for (int i = 0; i < RR_REQUESTS; i++) {
    char q[8];
    int n = snprintf(q, sizeof q, "q%d", i);
    uvmqtt_publish_opts_t o;
    memset(&o, 0, sizeof o);
    o.qos = (uint8_t)(i % 2);
    ck_assert_int_eq(uvmqtt_request(&p->client, "svc/echo", q, (size_t)n, &o, "reply/a", 5000,
                                    rr_response, (void *)(intptr_t)i),
                     0);
  }
  ck_assert_int_eq(uvmqtt_request(&p->client, "svc/none", "x", 1, NULL, "reply/a", 300, rr_response,
                                  (void *)(intptr_t)-1),
                   0);
}

static void rr_responder_subscribed(peer_t *p) {
  (void)p;
  peer_connect(&g.a);
}

static void rr_responder_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "svc/echo", 1, NULL, NULL);
}

START_TEST(client_request_response) {
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, UVMQTT_V5, NULL);
  peer_init(&g.b, UVMQTT_V5, NULL);
  /* Not without a callback, and only to a topic name. */
  ck_assert_int_eq(uvmqtt_request(&g.a.client, "t", "", 0, NULL, "r", 10, NULL, NULL),
                   UVMQTT_EINVAL);
  ck_assert_int_eq(uvmqtt_request(&g.a.client, "t", "", 0, NULL, "r/+", 10, rr_response, NULL),
                   UVMQTT_EBADTOPIC);
  g.a.connected = rr_requester_connected;
  g.b.connected = rr_responder_connected;
  g.b.subscribed = rr_responder_subscribed;
  g.b.message = rr_serve;
  peer_connect(&g.b);
  loop_run();
  ck_assert_int_eq(g.got_a, RR_REQUESTS);
  ck_assert_int_eq(g.got_b, 1);
  for (int i = 0; i < RR_REQUESTS; i++)
    ck_assert_int_eq(g.seen[i], 1);
  /* The stray answers reached neither a request nor on_message. */
  ck_assert_int_eq(g.a.message_calls, 0);
  ck_assert_int_eq(g.a.close_calls + g.b.close_calls, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Unsubscribe
 * ---------------------------------------------------------------------------------- */

static void unsub_unsubscribed(peer_t *p) {
  /* Published in this order, the marker comes after a delivery on u/t. */
  peer_publish(p, "u/t", "two", 3, 1, 0);
  peer_publish(p, "u/mark", "end", 3, 1, 0);
}

static void unsub_message(peer_t *p, const uvmqtt_message_t *m) {
  if (bytes_is(m->topic, "u/t")) {
    ck_assert(bytes_is(m->payload, "one"));
    g.got_topic++;
    peer_unsubscribe(p, "u/t");
    return;
  }
  ck_assert(bytes_is(m->topic, "u/mark"));
  g.got_mark++;
  peer_close(p);
}

static void unsub_subscribed(peer_t *p) {
  if (p->suback_calls == 2) peer_publish(p, "u/t", "one", 3, 1, 0);
}

static void unsub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "u/t", 1, NULL, NULL);
  peer_subscribe(p, "u/mark", 1, NULL, NULL);
}

START_TEST(client_unsubscribe_stops_delivery) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, v, NULL);
  g.a.connected = unsub_connected;
  g.a.subscribed = unsub_subscribed;
  g.a.unsubscribed = unsub_unsubscribed;
  g.a.message = unsub_message;
  peer_connect(&g.a);
  loop_run();
  ck_assert_int_eq(g.a.unsuback_calls, 1);
  ck_assert_int_eq(g.got_topic, 1);
  ck_assert_int_eq(g.got_mark, 1);
  ck_assert_int_eq(g.a.close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Options refused at init
 * ---------------------------------------------------------------------- */

START_TEST(client_init_rejects_bad_options) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvmqtt_client_t client;
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = "mqtt://127.0.0.1:1";
  ck_assert_int_eq(uvmqtt_client_init(NULL, &client, &o, NULL), UVMQTT_EINVAL);
  ck_assert_int_eq(uvmqtt_client_init(&loop, NULL, &o, NULL), UVMQTT_EINVAL);
  ck_assert_int_eq(uvmqtt_client_init(&loop, &client, NULL, NULL), UVMQTT_EINVAL);
  o.version = 6; /* no such protocol level */
  ck_assert_int_eq(uvmqtt_client_init(&loop, &client, &o, NULL), UVMQTT_EINVAL);
  o.version = UVMQTT_V5;
  o.will_topic = "a/+";
  ck_assert_int_eq(uvmqtt_client_init(&loop, &client, &o, NULL), UVMQTT_EBADTOPIC);
  o.will_topic = NULL;
  o.delivery.kind = UVMQTT_DELIVERY_CUSTOM; /* without a decide function */
  ck_assert_int_eq(uvmqtt_client_init(&loop, &client, &o, NULL), UVMQTT_EINVAL);
  o.delivery.kind = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  /* Enhanced authentication would wait for AUTH steps the client never
   * sends. */
  uvmqtt_props_t props;
  memset(&props, 0, sizeof props);
  props.has = 1ull << UVMQTT_PROP_AUTHENTICATION_METHOD;
  props.authentication_method.data = (const uint8_t *)"SCRAM-SHA-1";
  props.authentication_method.len = 11;
  o.connect_props = &props;
  ck_assert_int_eq(uvmqtt_client_init(&loop, &client, &o, NULL), UVMQTT_EINVAL);
  /* Nothing was allocated or started by the refusals. */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* Clients without a client id on 3.1.1 get one made up; two alike would
 * make the broker disconnect one of them. */
#define ID_CLIENTS 2000

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

START_TEST(client_generated_ids_unique) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvmqtt_client_t *clients = calloc(ID_CLIENTS, sizeof *clients);
  char **ids = calloc(ID_CLIENTS, sizeof *ids);
  ck_assert_ptr_nonnull(clients);
  ck_assert_ptr_nonnull(ids);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = "mqtt://127.0.0.1:1";
  for (int i = 0; i < ID_CLIENTS; i++) {
    ck_assert_int_eq(uvmqtt_client_init(&loop, &clients[i], &o, NULL), 0);
    const char *id = ((uvmqtt__client_t *)clients[i].impl)->client_id;
    ck_assert_uint_eq(strlen(id), 23); /* the most a 3.1.1 broker must take */
    ids[i] = strdup(id);
  }
  qsort(ids, ID_CLIENTS, sizeof *ids, cmp_str);
  for (int i = 1; i < ID_CLIENTS; i++)
    ck_assert_msg(strcmp(ids[i - 1], ids[i]) != 0, "client id %s made twice", ids[i]);
  for (int i = 0; i < ID_CLIENTS; i++) {
    uvmqtt_close(&clients[i], NULL);
    free(ids[i]);
  }
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  free(ids);
  free(clients);
}
END_TEST

/* ---- Synchronous publish errors
 * ---------------------------------------------------------------------- */

static void check_publish_errors(peer_t *p) {
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.qos = 1;
  int rc = uvmqtt_publish(&p->client, NULL, "x", 1, &o, cb_published, NULL);
  ck_assert_msg(rc == UVMQTT_EINVAL, "NULL topic: %s", uvmqtt_err_name(rc));
  rc = uvmqtt_publish(&p->client, "a/+", "x", 1, &o, cb_published, NULL);
  /* A wildcard in a topic name: the more precise of the two codes. */
  ck_assert_msg(rc == UVMQTT_ETOPICWILD || rc == UVMQTT_EBADTOPIC, "'+': %s", uvmqtt_err_name(rc));
  ck_assert_msg(rc == UVMQTT_ETOPICWILD, "'+': %s", uvmqtt_err_name(rc));
  rc = uvmqtt_publish(&p->client, "a/#", "x", 1, &o, cb_published, NULL);
  ck_assert_msg(rc == UVMQTT_ETOPICWILD, "'#': %s", uvmqtt_err_name(rc));
  o.qos = 3;
  rc = uvmqtt_publish(&p->client, "a/b", "x", 1, &o, cb_published, NULL);
  ck_assert_msg(rc == UVMQTT_EBADQOS, "QoS 3: %s", uvmqtt_err_name(rc));
  o.qos = 1;
  rc = uvmqtt_publish(&p->client, "a/b", NULL, 1, &o, cb_published, NULL);
  ck_assert_msg(rc == UVMQTT_EINVAL, "NULL payload with a length: %s", uvmqtt_err_name(rc));
}

static void errors_published(peer_t *p, int status, uint8_t reason, int index) {
  ck_assert_int_eq(index, 0);
  ck_assert_msg(status == 0, "drop-policy publish while connected: %s", uvmqtt_err_name(status));
  ck_assert_uint_eq(reason, no_subscribers(p));
  peer_close(p);
  /* Closing: publishing is refused at once. */
  int rc = uvmqtt_publish(&p->client, "a/b", "x", 1, NULL, cb_published, NULL);
  ck_assert_msg(rc == UVMQTT_ECLOSED, "publish while closing: %s", uvmqtt_err_name(rc));
}

static void errors_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  check_publish_errors(p);
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.qos = 1;
  o.delivery.kind = UVMQTT_DELIVERY_DROP;
  int rc = uvmqtt_publish(&p->client, "a/b", "x", 1, &o, cb_published, (void *)(intptr_t)0);
  ck_assert_msg(rc == 0, "drop-policy publish while connected: %s", uvmqtt_err_name(rc));
}

START_TEST(client_publish_errors) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_t *p = &g.a;
  peer_init(p, v, NULL);
  p->connected = errors_connected;
  p->published = errors_published;
  /* Never connected. */
  check_publish_errors(p);
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.delivery.kind = UVMQTT_DELIVERY_DROP;
  int rc = uvmqtt_publish(&p->client, "a/b", "x", 1, &o, cb_published, NULL);
  ck_assert_msg(rc == UVMQTT_ENOTCONN, "drop policy offline: %s", uvmqtt_err_name(rc));
  ck_assert_int_eq(p->publish_calls, 0);
  peer_connect(p);
  loop_run();
  /* The errors never ran a callback: only the drop-policy publish did. */
  ck_assert_int_eq(p->publish_calls, 1);
  ck_assert_int_eq(p->publish_failures, 0);
  ck_assert_int_eq(p->close_calls, 1);
  rc = uvmqtt_publish(&p->client, "a/b", "x", 1, NULL, cb_published, NULL);
  ck_assert_msg(rc == UVMQTT_ECLOSED, "publish after close: %s", uvmqtt_err_name(rc));
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Closing from inside callbacks
 * ---------------------------------------------------------------- */

static void cb_closed_again(uvmqtt_client_t *client) {
  (void)client;
  ck_abort_msg("a second uvmqtt_close() ran its callback");
}

static void close_twice(peer_t *p) {
  peer_close(p);
  uvmqtt_close(&p->client, cb_closed_again);
}

static void close_in_connect(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  close_twice(p);
}

START_TEST(client_close_in_on_connect) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, v, NULL);
  g.a.connected = close_in_connect;
  peer_connect(&g.a);
  loop_run();
  ck_assert_int_eq(g.a.connect_calls, 1);
  ck_assert_int_eq(g.a.disconnect_calls, 0);
  ck_assert_int_eq(g.a.close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

static void close_in_message(peer_t *p, const uvmqtt_message_t *m) {
  ck_assert(bytes_is(m->topic, "x/t"));
  close_twice(p);
}

static void close_msg_published(peer_t *p, int status, uint8_t reason, int index) {
  (void)p;
  (void)reason;
  (void)index;
  /* The PUBACK may come before or after the message: either way once. */
  ck_assert_msg(status == 0 || status == UVMQTT_ECLOSED, "publish: %s", uvmqtt_err_name(status));
}

static void close_msg_subscribed(peer_t *p) {
  peer_publish(p, "x/t", "x", 1, 1, 0);
}

static void close_msg_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, "x/t", 1, NULL, NULL);
}

START_TEST(client_close_in_on_message) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, v, NULL);
  g.a.connected = close_msg_connected;
  g.a.subscribed = close_msg_subscribed;
  g.a.message = close_in_message;
  g.a.published = close_msg_published;
  peer_connect(&g.a);
  loop_run();
  ck_assert_int_eq(g.a.message_calls, 1);
  ck_assert_int_eq(g.a.publish_calls, 1);
  ck_assert_int_eq(g.a.disconnect_calls, 0);
  ck_assert_int_eq(g.a.close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

static int close_pub_statuses[2];

static void close_pub_published(peer_t *p, int status, uint8_t reason, int index) {
  ck_assert_int_lt(index, 2);
  close_pub_statuses[index] = status;
  if (index == 0) {
    ck_assert_int_eq(status, 0);
    ck_assert_uint_eq(reason, no_subscribers(p));
    close_twice(p);
  }
}

static void close_pub_connected(peer_t *p, int status) {
  ck_assert_int_eq(status, 0);
  peer_publish(p, "y/t", "1", 1, 1, 0);
  peer_publish(p, "y/t", "2", 1, 1, 0);
}

START_TEST(client_close_in_publish_cb) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  peer_init(&g.a, v, NULL);
  g.a.connected = close_pub_connected;
  g.a.published = close_pub_published;
  close_pub_statuses[1] = 1;
  peer_connect(&g.a);
  loop_run();
  /* Closing inside the first completion stops the input: the second
   * publish completes with UVMQTT_ECLOSED, exactly once. */
  ck_assert_int_eq(g.a.publish_calls, 2);
  ck_assert_int_eq(g.a.publish_out_of_order, 0);
  ck_assert_int_eq(close_pub_statuses[0], 0);
  ck_assert_int_eq(close_pub_statuses[1], UVMQTT_ECLOSED);
  ck_assert_int_eq(g.a.close_calls, 1);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- A thousand idle clients
 * ------------------------------------------------------------------------ */

/* Counts the library's live heap bytes. A header before each block keeps
 * its size; it is not counted. */
typedef union {
  max_align_t align;
  size_t size;
} alloc_header_t;

static size_t live_bytes, live_blocks;

static void *count_malloc(size_t n) {
  alloc_header_t *h = malloc(sizeof *h + n);
  if (h == NULL) return NULL;
  h->size = n;
  live_bytes += n;
  live_blocks++;
  return h + 1;
}

static void *count_calloc(size_t count, size_t n) {
  if (n != 0 && count > SIZE_MAX / n) return NULL;
  void *p = count_malloc(count * n);
  if (p != NULL) memset(p, 0, count * n);
  return p;
}

static void *count_realloc(void *p, size_t n) {
  if (p == NULL) return count_malloc(n);
  alloc_header_t *h = (alloc_header_t *)p - 1;
  size_t old = h->size;
  alloc_header_t *moved = realloc(h, sizeof *moved + n);
  if (moved == NULL) return NULL;
  moved->size = n;
  live_bytes = live_bytes - old + n;
  return moved + 1;
}

static void count_free(void *p) {
  if (p == NULL) return;
  alloc_header_t *h = (alloc_header_t *)p - 1;
  live_bytes -= h->size;
  live_blocks--;
  free(h);
}

static struct {
  uvmqtt_client_t *clients;
  uv_timer_t settle;
  int started;
  int connected;
  int closed;
  size_t bytes_connected;
  size_t blocks_connected;
  size_t pool_connected;
} many;

static void many_closed(uvmqtt_client_t *client) {
  ck_assert_ptr_null(client->impl);
  many.closed++;
}

static void many_settled(uv_timer_t *timer) {
  many.bytes_connected = live_bytes;
  many.blocks_connected = live_blocks;
  many.pool_connected = uvmqtt__read_pool_bytes();
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
  ck_assert_msg(status == 0, "client %d: connect: %s", (int)(intptr_t)client->data,
                uvmqtt_err_name(status));
  many.connected++;
  many_start_next();
  /* Idle: let the last CONNECT writes and CONNACK reads finish first. */
  if (many.connected == MANY_CLIENTS)
    ck_assert_int_eq(uv_timer_start(&many.settle, many_settled, MANY_SETTLE_MS, 0), 0);
}

static void many_on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  ck_abort_msg("client %d lost its connection: %s", (int)(intptr_t)client->data,
               uvmqtt_err_name(info->status));
}

START_TEST(client_many_idle_clients) {
  ck_assert_int_eq(uvmqtt_replace_allocator(count_malloc, count_realloc, count_calloc, count_free),
                   0);
  ck_assert_msg(test_raise_fd_limit(MANY_CLIENTS + 512) == 0, "RLIMIT_NOFILE hard limit too low");
  broker_start("max_connections -1\n");
  loop_start(MANY_WATCHDOG_MS);
  many.clients = calloc(MANY_CLIENTS, sizeof *many.clients);
  ck_assert_ptr_nonnull(many.clients);
  ck_assert_int_eq(uv_timer_init(&g_loop, &many.settle), 0);
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = many_on_connect;
  cbs.on_disconnect = many_on_disconnect;
  for (int i = 0; i < MANY_CLIENTS; i++) {
    uvmqtt_options_t o;
    peer_options(&o, UVMQTT_V311);
    ck_assert_int_eq(uvmqtt_client_init(&g_loop, &many.clients[i], &o, &cbs), 0);
    many.clients[i].data = (void *)(intptr_t)i;
  }
  for (int i = 0; i < MANY_IN_FLIGHT; i++)
    many_start_next();
  loop_run();
  ck_assert_int_eq(many.connected, MANY_CLIENTS);
  ck_assert_int_eq(many.closed, MANY_CLIENTS);
  size_t per_client = many.bytes_connected / MANY_CLIENTS;
  size_t per_client_no_pool = (many.bytes_connected - many.pool_connected) / MANY_CLIENTS;
  printf("client: %d idle clients: %zu live bytes in %zu blocks, %zu bytes per client "
         "(%zu without the shared %zu-byte read pool); sizeof uvmqtt_client_t %zu, "
         "struct uvmqtt__client_s %zu (session %zu, transport %zu)\n",
         MANY_CLIENTS, many.bytes_connected, many.blocks_connected, per_client, per_client_no_pool,
         many.pool_connected, sizeof(uvmqtt_client_t), sizeof(struct uvmqtt__client_s),
         sizeof(uvmqtt__session_t), sizeof(uvmqtt__transport_t));
  fflush(stdout);
  ck_assert_msg(per_client < MANY_BYTES_BOUND, "%zu bytes per idle client", per_client);
  /* Everything the library allocated came back once every client closed. */
  ck_assert_msg(live_bytes == 0 && live_blocks == 0, "%zu bytes in %zu blocks leaked", live_bytes,
                live_blocks);
  loop_finish();
  broker_finish();
  free(many.clients);
  ck_assert_int_eq(uvmqtt_replace_allocator(malloc, realloc, calloc, free), 0);
}
END_TEST

/* ---- Graceful stops mid-stream ----------------------------------------------------------------
 */

#define GS_ITERATIONS  20
#define GS_STREAM      100 /* QoS 1 messages published per iteration */
#define GS_STOP_AFTER  20  /* the subscriber stops after receiving this many */
#define GS_WILL_WAIT   300 /* ms to wait for a will that must not come */
#define GS_WATCHDOG_MS 60000
#define GS_TIMEOUT_S   90

static struct {
  peer_t subs[GS_ITERATIONS];
  char ids[GS_ITERATIONS][32];
  char wills[GS_ITERATIONS][32];
  int iteration;
  int bad_disc_status; /* a stop that did not end with on_disconnect status 0 */
  int first_bad_status;
} gs;

static void gs_next(peer_t *p);

static void gs_watcher_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  if (m->topic.len >= 2 && memcmp(m->topic.data, "w/", 2) == 0) g.got_will++;
}

static void gs_sub_disconnected(peer_t *p) {
  if (p->disc.status != 0 || p->disc.will_retry != 0) {
    if (gs.bad_disc_status++ == 0) gs.first_bad_status = p->disc.status;
  }
  peer_close(p);
  /* A will would reach the watcher within this wait. */
  peer_after(&g.c, GS_WILL_WAIT, gs_next);
}

static void gs_sub_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)m;
  if (p->message_calls == GS_STOP_AFTER) {
    int rc = uvmqtt_disconnect(&p->client, 0);
    ck_assert_msg(rc == 0, "disconnect: %s", uvmqtt_err_name(rc));
  }
}

static void gs_sub_subscribed(peer_t *p) {
  (void)p;
  /* The stream starts once the subscriber listens, and outlasts it. */
  uint8_t buf[4];
  for (int i = 0; i < GS_STREAM; i++) {
    put_u32(buf, (uint32_t)i);
    peer_publish(&g.b, "stream/t", buf, sizeof buf, 1, 0);
  }
}

static void gs_sub_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  peer_subscribe(p, "stream/t", 1, NULL, NULL);
}

static void gs_next(peer_t *unused) {
  (void)unused;
  if (gs.iteration == GS_ITERATIONS) {
    peer_close(&g.b);
    peer_close(&g.c);
    return;
  }
  int i = gs.iteration++;
  peer_t *p = &gs.subs[i];
  uvmqtt_options_t o;
  peer_options(&o, g.b.version);
  snprintf(gs.ids[i], sizeof gs.ids[i], "gs-sub-%d", i);
  snprintf(gs.wills[i], sizeof gs.wills[i], "w/%d", i);
  o.client_id = gs.ids[i];
  o.will_topic = gs.wills[i];
  o.will_payload = "gone";
  o.will_payload_len = 4;
  o.will_qos = 1;
  peer_init(p, g.b.version, &o);
  p->connected = gs_sub_connected;
  p->subscribed = gs_sub_subscribed;
  p->message = gs_sub_message;
  p->disconnected = gs_sub_disconnected;
  peer_connect(p);
}

static void gs_publisher_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  gs_next(p);
}

static void gs_watcher_subscribed(peer_t *p) {
  (void)p;
  peer_connect(&g.b);
}

static void gs_watcher_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  peer_subscribe(p, "w/#", 1, NULL, NULL);
}

/* A subscriber with a will, stopped with uvmqtt_disconnect() while a QoS 1
 * stream flows to it, ends cleanly: the broker must never publish its will,
 * in any of many tries (a stop that lets the broker see a dropped
 * connection instead of the DISCONNECT shows up as a will). */
START_TEST(client_graceful_stop_sends_no_will) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(GS_WATCHDOG_MS);
  peer_init(&g.b, v, NULL);
  peer_init(&g.c, v, NULL);
  g.b.connected = gs_publisher_connected;
  g.c.connected = gs_watcher_connected;
  g.c.subscribed = gs_watcher_subscribed;
  g.c.message = gs_watcher_message;
  peer_connect(&g.c);
  loop_run();
  ck_assert_int_eq(gs.iteration, GS_ITERATIONS);
  int stopped = 0, not_logged = 0, first_not_logged = -1;
  for (int i = 0; i < GS_ITERATIONS; i++) {
    stopped += gs.subs[i].disconnect_calls;
    ck_assert_int_eq(gs.subs[i].close_calls, 1);
    /* Mosquitto logs a DISCONNECT it received this way; a dropped
     * connection reads "closed its connection". */
    char needle[64];
    snprintf(needle, sizeof needle, "Client %s disconnected", gs.ids[i]);
    if (!broker_log_has(needle)) {
      if (first_not_logged < 0) first_not_logged = i;
      not_logged++;
    }
  }
  ck_assert_int_eq(stopped, GS_ITERATIONS);
  ck_assert_msg(gs.bad_disc_status == 0, "%d stops did not end with status 0 (first: %s)",
                gs.bad_disc_status, uvmqtt_err_name(gs.first_bad_status));
  ck_assert_msg(g.got_will == 0, "%d wills published after graceful stops", g.got_will);
  ck_assert_msg(not_logged == 0, "%d stops not logged as a DISCONNECT by the broker (first: %s)",
                not_logged, first_not_logged < 0 ? "-" : gs.ids[first_not_logged]);
  ck_assert_int_eq(g.b.close_calls + g.c.close_calls, 2);
  loop_finish();
  broker_finish();
}
END_TEST

#define EO_COUNT      500
#define EO_STOP_AFTER 150 /* the first instance stops after receiving this many */
#define EO_SETTLE_MS  3000

static struct {
  int dups;
  int first_dup;
  int distinct;
  int publisher_done;
  int second_up;
  int stop_from_timer; /* stop from a timer, with acknowledgements under way */
  uint64_t settle_until;
} eo;

static void eo_finish(peer_t *p) {
  (void)p;
  peer_close(&g.b);
  peer_close(&g.c);
}

/* Waits until every number arrived, or for a while after the publisher
 * finished, whichever comes first. */
static void eo_poll(peer_t *p) {
  if (eo.distinct == EO_COUNT || uv_now(&g_loop) >= eo.settle_until) {
    eo_finish(p);
    return;
  }
  peer_after(p, 50, eo_poll);
}

static void eo_maybe_settle(void) {
  if (!eo.publisher_done || !eo.second_up) return;
  eo.settle_until = uv_now(&g_loop) + EO_SETTLE_MS;
  peer_after(&g.b, 50, eo_poll);
}

static void eo_stop(peer_t *p) {
  int rc = uvmqtt_disconnect(&p->client, 0);
  ck_assert_msg(rc == 0, "disconnect: %s", uvmqtt_err_name(rc));
}

static void eo_message(peer_t *p, const uvmqtt_message_t *m) {
  ck_assert(bytes_is(m->topic, "eo/t"));
  ck_assert_uint_eq(m->qos, 2);
  ck_assert_uint_eq(m->payload.len, 4);
  uint32_t n = get_u32(m->payload.data);
  ck_assert_uint_lt(n, EO_COUNT);
  if (g.seen[n]++ == 0)
    eo.distinct++;
  else if (eo.dups++ == 0)
    eo.first_dup = (int)n;
  if (p == &g.a && p->message_calls == EO_STOP_AFTER) {
    if (eo.stop_from_timer)
      peer_after(p, 0, eo_stop);
    else
      eo_stop(p);
  }
}

static void eo_second_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  ck_assert_uint_eq(p->session_present, 1);
  eo.second_up = 1;
  eo_maybe_settle();
}

static void eo_first_disconnected(peer_t *p) {
  ck_assert_msg(p->disc.status == 0, "graceful stop: %s", uvmqtt_err_name(p->disc.status));
  peer_close(p);
  peer_connect(&g.c);
}

static void eo_published(peer_t *p, int status, uint8_t reason, int index) {
  (void)reason;
  (void)index;
  ck_assert_msg(status == 0, "publish: %s", uvmqtt_err_name(status));
  if (p->publish_calls == EO_COUNT) {
    eo.publisher_done = 1;
    eo_maybe_settle();
  }
}

static void eo_publisher_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  uint8_t buf[4];
  for (uint32_t i = 0; i < EO_COUNT; i++) {
    put_u32(buf, i);
    peer_publish(p, "eo/t", buf, sizeof buf, 2, 0);
  }
}

static void eo_subscribed(peer_t *p) {
  ck_assert_uint_eq(p->granted, 2);
  peer_connect(&g.b);
}

static void eo_first_connected(peer_t *p, int status) {
  ck_assert_msg(status == 0, "connect: %s", uvmqtt_err_name(status));
  peer_subscribe(p, "eo/t", 2, NULL, NULL);
}

/* A persistent QoS 2 subscriber stopped gracefully mid-stream and resumed
 * by a new client with the same id: each message arrives exactly once
 * across the two instances. Index bit 0 picks the version; bit 1 stops from
 * a timer instead of from inside on_message, so the stop finds PUBREC and
 * PUBREL exchanges at other stages. */
START_TEST(client_qos2_subscriber_restart_exactly_once) {
  uint8_t v = version_of(_i & 1);
  eo.stop_from_timer = (_i & 2) != 0;
  broker_start("");
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  peer_options(&o, v);
  o.client_id = "eo-sub";
  o.clean_start = 0;
  uvmqtt_props_t props;
  memset(&props, 0, sizeof props);
  if (v == UVMQTT_V5) {
    /* v5 ends the session with the connection unless told otherwise. */
    props.has = 1ull << UVMQTT_PROP_SESSION_EXPIRY_INTERVAL;
    props.session_expiry_interval = 300;
    o.connect_props = &props;
  }
  peer_init(&g.a, v, &o);
  peer_init(&g.c, v, &o);
  peer_init(&g.b, v, NULL);
  g.a.connected = eo_first_connected;
  g.a.subscribed = eo_subscribed;
  g.a.message = eo_message;
  g.a.disconnected = eo_first_disconnected;
  g.c.connected = eo_second_connected;
  g.c.message = eo_message;
  g.b.published = eo_published;
  g.b.connected = eo_publisher_connected;
  peer_connect(&g.a);
  loop_run();
  ck_assert_int_eq(g.a.disconnect_calls, 1);
  ck_assert_int_eq(g.b.publish_calls, EO_COUNT);
  ck_assert_int_eq(g.c.connect_calls, 1);
  int missing = 0, first_missing = -1;
  for (int i = 0; i < EO_COUNT; i++) {
    if (g.seen[i] == 0) {
      if (first_missing < 0) first_missing = i;
      missing++;
    }
  }
  printf("client: exactly once (%s, stop from %s): first instance %d, second %d messages\n",
         v == UVMQTT_V5 ? "v5" : "3.1.1", eo.stop_from_timer ? "a timer" : "on_message",
         g.a.message_calls, g.c.message_calls);
  fflush(stdout);
  ck_assert_msg(eo.dups == 0, "%d duplicates (first: #%d; first instance got %d, second %d)",
                eo.dups, eo.first_dup, g.a.message_calls, g.c.message_calls);
  ck_assert_msg(missing == 0, "%d messages never arrived (first: #%d)", missing, first_missing);
  ck_assert_int_eq(g.a.close_calls + g.b.close_calls + g.c.close_calls, 3);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Suite
 * ----------------------------------------------------------------------------------------- */

static TCase *tcase(Suite *s, const char *name, int timeout_s) {
  TCase *tc = tcase_create(name);
  tcase_set_timeout(tc, timeout_s);
  suite_add_tcase(s, tc);
  return tc;
}

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("client");
  TCase *tc = tcase(s, "connect", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, client_connect_disconnect, 0, 3);
  tcase_add_loop_test(tc, client_disconnect_in_pre_connect, 0, 2);
  tcase_add_loop_test(tc, client_disconnect_while_connecting, 0, 2);
  tcase_add_loop_test(tc, client_refused_connack, 0, 2);
  tcase_add_test(tc, client_init_rejects_bad_options);
  tcase_add_test(tc, client_generated_ids_unique);
  tcase_add_test(tc, client_v31_client_id_limit);
  tcase_add_loop_test(tc, client_persistent_session, 0, 2);

  tc = tcase(s, "publish", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, client_pubsub_payload_sizes, 0, 9);
  tcase_add_loop_test(tc, client_qos1_ordered_1000, 0, 3);
  tcase_add_loop_test(tc, client_retained_message, 0, 2);
  tcase_add_loop_test(tc, client_publish_errors, 0, 2);
  tcase_add_test(tc, client_topic_alias_out);

  tc = tcase(s, "will", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, client_will_sent_on_close, 0, 2);
  tcase_add_loop_test(tc, client_will_not_sent_on_disconnect, 0, 2);

  tc = tcase(s, "graceful", GS_TIMEOUT_S);
  tcase_add_loop_test(tc, client_graceful_stop_sends_no_will, 0, 2);
  tcase_add_loop_test(tc, client_qos2_subscriber_restart_exactly_once, 0, 4);

  tc = tcase(s, "subscribe", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, client_shared_subscription, 0, 2);
  tcase_add_loop_test(tc, client_per_subscription_callbacks, 0, 2);
  tcase_add_loop_test(tc, client_unsubscribe_stops_delivery, 0, 2);
  tcase_add_test(tc, client_request_response);

  tc = tcase(s, "close", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, client_close_in_on_connect, 0, 2);
  tcase_add_loop_test(tc, client_close_in_on_message, 0, 2);
  tcase_add_loop_test(tc, client_close_in_publish_cb, 0, 2);

  tc = tcase(s, "scale", MANY_TIMEOUT_S);
  tcase_add_test(tc, client_many_idle_clients);
  return s;
}
