/* The robust layer against a real Mosquitto and a fault-injection proxy:
 * broker restarts under load at QoS 1 and 2, half-open connections caught by
 * keepalive, the delivery policies (deadline, drop, until delivered), the
 * reconnect backoff as observed on the wire, the server list, credentials
 * changed by the pre-connect hook, the offline queue's bounds, a reconnect
 * storm of a thousand clients and the recovery of a session the broker lost.
 *
 * Each test starts its own broker (and proxy), counts callbacks, asserts the
 * counts after uv_run, closes every handle and checks uv_loop_close(). A
 * watchdog bounds every loop and names the phase a stuck scenario was in.
 * Loop tests: index 0 runs MQTT 3.1.1, index 1 MQTT 5 (more indexes, where
 * present, vary one more setting). Each test prints its duration. */
#include <check.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "proxy.h"
#include "uvmqtt.h"

#define WATCHDOG_MS     30000
#define TCASE_TIMEOUT_S 60

/* ---- Loop, watchdog, timers, broker and proxy -------------------------------------- */

static uv_loop_t g_loop;
static uv_timer_t g_watchdog;
static uv_timer_t g_step; /* the scenario's next one-shot step */
static uv_timer_t g_pace; /* the scenario's repeating work */
static void (*g_step_fn)(void);
static void (*g_pace_fn)(void);
static test_broker_t g_broker;
static fault_proxy_t g_proxy;
static int g_proxy_running;
static char g_uri[64];
static char g_proxy_uri[64];
static uint64_t g_started_ms;
static const char *g_phase = "start";
static void (*g_dump)(void); /* prints a stuck scenario's state */

static uint64_t mono_ms(void) {
  return uv_hrtime() / 1000000u;
}

static uint64_t now_ms(void) {
  return uv_now(&g_loop);
}

static void watchdog_cb(uv_timer_t *timer) {
  (void)timer;
  if (g_dump) g_dump();
  test_broker_cleanup(&g_broker);
  ck_abort_msg("the scenario did not finish in time (phase: %s)", g_phase);
}

/* The watchdog is unreferenced: uv_run() returns once the scenario closed
 * its handles and stopped its timers; the watchdog only fires when stuck. */
static void loop_start(uint64_t timeout_ms) {
  /* libuv writes with write(2): a peer that went away must not kill the
   * process, as in any libuv program. */
  signal(SIGPIPE, SIG_IGN);
  g_started_ms = mono_ms();
  ck_assert_int_eq(uv_loop_init(&g_loop), 0);
  ck_assert_int_eq(uv_timer_init(&g_loop, &g_watchdog), 0);
  ck_assert_int_eq(uv_timer_start(&g_watchdog, watchdog_cb, timeout_ms, 0), 0);
  uv_unref((uv_handle_t *)&g_watchdog);
  ck_assert_int_eq(uv_timer_init(&g_loop, &g_step), 0);
  ck_assert_int_eq(uv_timer_init(&g_loop, &g_pace), 0);
}

static void loop_run(void) {
  uv_run(&g_loop, UV_RUN_DEFAULT);
}

static void loop_finish(void) {
  uv_close((uv_handle_t *)&g_watchdog, NULL);
  uv_close((uv_handle_t *)&g_step, NULL);
  uv_close((uv_handle_t *)&g_pace, NULL);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&g_loop), 0);
}

static void step_cb(uv_timer_t *timer) {
  (void)timer;
  g_step_fn();
}

static void pace_cb(uv_timer_t *timer) {
  (void)timer;
  g_pace_fn();
}

/* Runs fn once after ms; a later call replaces a pending step. */
static void after(uint64_t ms, void (*fn)(void)) {
  g_step_fn = fn;
  ck_assert_int_eq(uv_timer_start(&g_step, step_cb, ms, 0), 0);
}

static void every(uint64_t ms, void (*fn)(void)) {
  g_pace_fn = fn;
  ck_assert_int_eq(uv_timer_start(&g_pace, pace_cb, ms, ms), 0);
}

static void broker_start(const char *extra) {
  ck_assert_msg(test_broker_start(&g_broker, extra) == 0, "mosquitto did not start");
  snprintf(g_uri, sizeof g_uri, "mqtt://127.0.0.1:%d", g_broker.port);
}

/* Both block the loop for a moment (the broker's exit, its start): the loop
 * time is refreshed after, so the scenario's clock stays true. */
static void broker_stop_now(void) {
  ck_assert_int_eq(test_broker_stop(&g_broker), 0);
  uv_update_time(&g_loop);
}

static void broker_restart_now(void) {
  ck_assert_msg(test_broker_restart(&g_broker) == 0, "mosquitto did not restart");
  uv_update_time(&g_loop);
}

/* The last lines of the broker's log on stderr, to explain a failure. */
static void broker_log_tail(int lines) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "tail -n %d %s/mosquitto.log >&2", lines, g_broker.dir);
  (void)test_run(cmd, 5);
}

static void broker_finish(void) {
  test_broker_cleanup(&g_broker);
}

static void proxy_begin(void) {
  ck_assert_int_eq(proxy_start(&g_proxy, &g_loop, g_broker.port), 0);
  g_proxy_running = 1;
  snprintf(g_proxy_uri, sizeof g_proxy_uri, "mqtt://127.0.0.1:%d", g_proxy.port);
}

static void proxy_end(void) {
  if (!g_proxy_running) return;
  g_proxy_running = 0;
  proxy_stop(&g_proxy);
}

static uint8_t version_of(int index) {
  return (index & 1) == 0 ? UVMQTT_V311 : UVMQTT_V5;
}

static const char *version_name(uint8_t v) {
  return v == UVMQTT_V5 ? "v5" : "v3.1.1";
}

static void report(const char *name, uint8_t version, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One line per test on stdout: what it proved, and how long it took. */
static void report(const char *name, uint8_t version, const char *fmt, ...) {
  va_list ap;
  printf("robust: %s %s: ", name, version ? version_name(version) : "");
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf(" (%llu ms)\n", (unsigned long long)(mono_ms() - g_started_ms));
  fflush(stdout);
}

static int bytes_is(uvmqtt_bytes_t b, const char *s) {
  size_t n = strlen(s);
  return b.len == n && (n == 0 || memcmp(b.data, s, n) == 0);
}

/* A payload holding a decimal number, or -1. */
static long payload_num(uvmqtt_bytes_t b) {
  char buf[16];
  if (b.len == 0 || b.len >= sizeof buf) return -1;
  memcpy(buf, b.data, b.len);
  buf[b.len] = '\0';
  char *end;
  long v = strtol(buf, &end, 10);
  return *end == '\0' ? v : -1;
}

/* ---- A client with counters and scenario hooks ------------------------------------- */

typedef struct peer_s peer_t;

struct peer_s {
  uvmqtt_client_t client;
  uint8_t version;
  int up;          /* connected, as the callbacks tell */
  int connects;    /* on_connect with status 0 */
  int failures;    /* on_connect with an error */
  int last_status; /* of the last on_connect */
  uint8_t last_reason;
  uint8_t session_present;
  char server[128];
  int disconnects; /* every on_disconnect, failed attempts included */
  int losses;      /* on_disconnect ending an established connection */
  uvmqtt_disconnect_t first_loss;
  uvmqtt_disconnect_t disc; /* the last */
  int pre_connects;
  uint32_t last_pre_attempt;
  int subacks;
  int messages;
  int published;
  int closing;
  int closed;

  void (*on_up)(peer_t *p, int status, const uvmqtt_connack_t *ack);
  void (*on_down)(peer_t *p, const uvmqtt_disconnect_t *d, int was_up);
  void (*on_msg)(peer_t *p, const uvmqtt_message_t *m);
  void (*on_pub)(peer_t *p, int status, uint8_t reason, intptr_t index);
  void (*on_pre)(peer_t *p, uint32_t attempt);
  void (*on_suback)(peer_t *p, uint8_t granted);
};

static void cb_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  peer_t *p = client->data;
  ck_assert_ptr_nonnull(ack);
  ck_assert_ptr_nonnull(ack->server);
  snprintf(p->server, sizeof p->server, "%s", ack->server);
  p->last_status = status;
  p->last_reason = ack->reason;
  if (status == 0) {
    p->connects++;
    p->up = 1;
    p->session_present = ack->session_present;
  } else {
    ck_assert_int_lt(status, 0);
    p->failures++;
  }
  if (p->on_up) p->on_up(p, status, ack);
}

static void cb_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *d) {
  peer_t *p = client->data;
  int was_up = p->up;
  p->up = 0;
  p->disconnects++;
  p->disc = *d;
  if (was_up && p->losses++ == 0) p->first_loss = *d;
  if (p->on_down) p->on_down(p, d, was_up);
}

static void cb_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  peer_t *p = client->data;
  (void)arg;
  p->messages++;
  if (p->on_msg) p->on_msg(p, m);
}

static void cb_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  peer_t *p = client->data;
  p->published++;
  if (p->on_pub) p->on_pub(p, status, reason, (intptr_t)arg);
}

static void cb_pre_connect(uvmqtt_client_t *client, uint32_t attempt) {
  peer_t *p = client->data;
  ck_assert_uint_ge(attempt, 1);
  p->pre_connects++;
  p->last_pre_attempt = attempt;
  if (p->on_pre) p->on_pre(p, attempt);
}

static void cb_suback(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                      void *arg) {
  peer_t *p = client->data;
  (void)arg;
  ck_assert_msg(status == 0, "subscribe: %s", uvmqtt_err_name(status));
  ck_assert_uint_eq(count, 1);
  ck_assert_uint_lt(reasons[0], 0x80);
  p->subacks++;
  if (p->on_suback) p->on_suback(p, reasons[0]);
}

static void cb_closed(uvmqtt_client_t *client) {
  peer_t *p = client->data;
  p->closed++;
  ck_assert_ptr_null(client->impl);
}

/* Reconnects 100 ms after every loss or failure, forever: the scenarios
 * that are not about the policy want a quick, predictable retry. */
static uvmqtt_backoff_t g_fixed_100 = {100, 0, 0, 0, 0};

static void options_for(uvmqtt_options_t *o, uint8_t version, const char *uri) {
  uvmqtt_options_init(o);
  o->uri = uri;
  o->version = version;
  o->reconnect.fn = uvmqtt_reconnect_fixed;
  o->reconnect.state = &g_fixed_100;
  o->connect_timeout_ms = 2000;
}

/* A session the broker keeps across disconnects (and, with persistence,
 * restarts). `props` must live until peer_init(). */
static void persistent(uvmqtt_options_t *o, const char *id, uvmqtt_props_t *props) {
  o->client_id = id;
  o->clean_start = 0;
  memset(props, 0, sizeof *props);
  if (o->version == UVMQTT_V5) {
    /* v5 ends the session with the connection unless told otherwise. */
    props->has = 1ull << UVMQTT_PROP_SESSION_EXPIRY_INTERVAL;
    props->session_expiry_interval = 600;
    o->connect_props = props;
  }
}

static void peer_init(peer_t *p, const uvmqtt_options_t *o) {
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = cb_connect;
  cbs.on_disconnect = cb_disconnect;
  cbs.on_message = cb_message;
  cbs.pre_connect = cb_pre_connect;
  p->version = o->version;
  int rc = uvmqtt_client_init(&g_loop, &p->client, o, &cbs);
  ck_assert_msg(rc == 0, "client_init: %s", uvmqtt_err_name(rc));
  p->client.data = p;
}

static void peer_connect(peer_t *p) {
  int rc = uvmqtt_connect(&p->client);
  ck_assert_msg(rc == 0, "connect: %s", uvmqtt_err_name(rc));
}

static void peer_close(peer_t *p) {
  if (p->closing) return;
  p->closing = 1;
  uvmqtt_close(&p->client, cb_closed);
}

static void peer_subscribe(peer_t *p, const char *filter, uint8_t qos) {
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)filter;
  sub.filter.len = (uint32_t)strlen(filter);
  sub.options = UVMQTT_SUB_QOS(qos);
  int rc = uvmqtt_subscribe(&p->client, &sub, 1, NULL, NULL, cb_suback, NULL);
  ck_assert_msg(rc == 0, "subscribe %s: %s", filter, uvmqtt_err_name(rc));
}

/* Publishes a text payload with `index` as the callback's arg. Returns
 * uvmqtt_publish's result. */
static int peer_publish(peer_t *p, const char *topic, const char *text, uint8_t qos, uint8_t kind,
                        uint32_t deadline_ms, intptr_t index) {
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.qos = qos;
  o.delivery.kind = kind;
  o.delivery.deadline_ms = deadline_ms;
  return uvmqtt_publish(&p->client, topic, text, strlen(text), &o, cb_published, (void *)index);
}

static uvmqtt_stats_t stats_of(peer_t *p) {
  uvmqtt_stats_t st;
  uvmqtt_client_stats(&p->client, &st);
  return st;
}

/* The scenarios' shared state: a fresh process per test (fork mode), so a
 * file-scope struct is clean at the start of each. */
#define RESTART_COUNT 10000

static struct {
  peer_t a, b, c;
  uint8_t qos;
  int finishing;
  /* Broker restarts. */
  int issued;
  int issued_while_down;
  int restarts;
  int down;
  uint64_t down_at;
  int done_total;
  int bad;
  int bad_status;
  int distinct;
  int dups;
  uint8_t done[RESTART_COUNT];
  uint16_t recv[RESTART_COUNT];
  /* Single-message scenarios. */
  int got;
  int got_other;
  int pub_status[8];
  int pub_calls[8];
  uint64_t pub_at[8];
  uint64_t t_mark;
  uint64_t t_detect;
  uint64_t t_back;
  int rc[8];
  int delivered[8];
  int variant; /* the scenario's setting under test */
  int other_sent;
} g;

/* ---- Broker restarts under load ---------------------------------------------------- */

#define RESTART_BATCH    20 /* messages per tick: 4000/s, so ~2.5 s of publishing */
#define RESTART_PACE_MS  5
#define RESTART_TIMES    3
#define RESTART_DOWN_MS  300
#define RESTART_GRACE_MS 300
#define RESTART_TOPIC    "robust/n"
#define RESTART_WATCHDOG 90000
#define RESTART_TIMEOUT  120

/* Keep every message: the subscriber may be away while thousands pile up. */
#define RESTART_BROKER_CONF "persistence true\nmax_queued_messages 0\n"

static void restart_close(void) {
  g_phase = "closing";
  peer_close(&g.a);
  peer_close(&g.b);
}

static void restart_tick(void) {
  for (int i = 0; i < RESTART_BATCH && g.issued < RESTART_COUNT; i++) {
    char text[16];
    snprintf(text, sizeof text, "%d", g.issued);
    int rc = peer_publish(&g.a, RESTART_TOPIC, text, g.qos, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0,
                          g.issued);
    ck_assert_msg(rc == 0, "publish %d: %s", g.issued, uvmqtt_err_name(rc));
    g.issued++;
    if (g.down) g.issued_while_down++;
  }
  uint64_t now = now_ms();
  if (!g.down && g.restarts < RESTART_TIMES &&
      g.issued >= (g.restarts + 1) * RESTART_COUNT / (RESTART_TIMES + 1) && g.a.up && g.b.up) {
    g_phase = "broker down";
    broker_stop_now();
    g.down = 1;
    g.down_at = now_ms();
  } else if (g.down && now >= g.down_at + RESTART_DOWN_MS) {
    broker_restart_now();
    g.down = 0;
    g.restarts++;
    g_phase = "broker back";
  } else if (g.restarts == RESTART_TIMES && g.issued == RESTART_COUNT &&
             g.done_total == RESTART_COUNT && g.distinct == RESTART_COUNT) {
    /* Everything arrived: wait a little for late duplicates, then stop. */
    g_phase = "grace";
    uv_timer_stop(&g_pace);
    after(RESTART_GRACE_MS, restart_close);
  }
}

static void restart_published(peer_t *p, int status, uint8_t reason, intptr_t index) {
  (void)p;
  ck_assert(index >= 0 && index < RESTART_COUNT);
  g.done[index]++;
  g.done_total++;
  if ((status != 0 || reason >= 0x80) && g.bad++ == 0) g.bad_status = status;
}

static void restart_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  ck_assert(bytes_is(m->topic, RESTART_TOPIC));
  ck_assert_uint_eq(m->qos, g.qos);
  long n = payload_num(m->payload);
  ck_assert_msg(n >= 0 && n < RESTART_COUNT, "payload %.*s", (int)m->payload.len,
                (const char *)m->payload.data);
  if (g.recv[n]++ == 0)
    g.distinct++;
  else
    g.dups++;
}

static void restart_pub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status != 0) return; /* an attempt while the broker is away */
  if (p->connects == 1) {
    g_phase = "publishing";
    every(RESTART_PACE_MS, restart_tick);
  } else {
    ck_assert_msg(p->session_present, "publisher lost its session in restart %d", g.restarts);
  }
}

static void restart_sub_suback(peer_t *p, uint8_t granted) {
  (void)p;
  ck_assert_uint_eq(granted, g.qos);
  peer_connect(&g.a);
}

static void restart_sub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status != 0) return;
  if (p->connects == 1) {
    ck_assert_uint_eq(p->session_present, 0);
    peer_subscribe(p, RESTART_TOPIC, g.qos);
  } else {
    ck_assert_msg(p->session_present, "subscriber lost its session in restart %d", g.restarts);
  }
}

static void restart_down(peer_t *p, const uvmqtt_disconnect_t *d, int was_up) {
  (void)p;
  (void)was_up;
  ck_assert_msg(d->will_retry, "gave up: %s", uvmqtt_err_name(d->status));
}

static void restart_dump(void) {
  uvmqtt_stats_t pa = stats_of(&g.a), sb = stats_of(&g.b);
  int missing = 0, first = -1, last = -1;
  for (int i = 0; i < RESTART_COUNT; i++) {
    if (g.recv[i] != 0) continue;
    if (missing++ == 0) first = i;
    last = i;
  }
  fprintf(stderr,
          "restart: issued %d, completed %d, received %d distinct (%d missing: %d..%d), %d "
          "duplicates, restarts %d, down %d\n"
          "  publisher: up %d, queued %u, inflight %u, attempts %u, losses %d\n"
          "  subscriber: up %d, queued %u, inflight %u, attempts %u, losses %d\n",
          g.issued, g.done_total, g.distinct, missing, first, last, g.dups, g.restarts, g.down,
          g.a.up, pa.queued, pa.inflight, pa.attempts, g.a.losses, g.b.up, sb.queued, sb.inflight,
          sb.attempts, g.b.losses);
  fprintf(stderr, "  publisher's last loss: %s, last connect: %s\n",
          uvmqtt_err_name(g.a.disc.status), uvmqtt_err_name(g.a.last_status));
  broker_log_tail(20);
}

/* A persistent QoS `qos` subscriber and an until-delivered publisher of
 * RESTART_COUNT numbered messages; the broker (with persistence) restarts
 * RESTART_TIMES times while the publisher keeps publishing. */
static void restart_scenario(uint8_t version, uint8_t qos) {
  g.qos = qos;
  g_dump = restart_dump;
  broker_start(RESTART_BROKER_CONF);
  loop_start(RESTART_WATCHDOG);
  /* Small delays keep the test quick; backoff spreads the two clients. */
  uvmqtt_backoff_t quick = {50, 200, 0, 0, 0};
  uvmqtt_options_t o;
  uvmqtt_props_t pub_props, sub_props;
  options_for(&o, version, g_uri);
  o.reconnect.fn = uvmqtt_reconnect_backoff;
  o.reconnect.state = &quick;
  persistent(&o, "robust-pub", &pub_props);
  peer_init(&g.a, &o);
  persistent(&o, "robust-sub", &sub_props);
  peer_init(&g.b, &o);
  g.a.on_up = restart_pub_up;
  g.a.on_pub = restart_published;
  g.a.on_down = restart_down;
  g.b.on_up = restart_sub_up;
  g.b.on_msg = restart_message;
  g.b.on_suback = restart_sub_suback;
  g.b.on_down = restart_down;
  peer_connect(&g.b);
  loop_run();

  int missing = 0, first_missing = -1, undone = 0, twice = 0;
  for (int i = 0; i < RESTART_COUNT; i++) {
    if (g.recv[i] == 0 && missing++ == 0) first_missing = i;
    if (g.done[i] == 0) undone++;
    if (g.done[i] > 1) twice++;
  }
  report(qos == 1 ? "restart qos1" : "restart qos2", version,
         "%d messages, %d restarts, %d published while down, %d duplicates, %d+%d reconnects",
         RESTART_COUNT, g.restarts, g.issued_while_down, g.dups, g.a.connects - 1,
         g.b.connects - 1);
  ck_assert_int_eq(g.restarts, RESTART_TIMES);
  ck_assert_msg(g.issued_while_down > 0, "nothing was published while the broker was down");
  ck_assert_msg(missing == 0, "%d messages never arrived, the first %d", missing, first_missing);
  ck_assert_msg(undone == 0 && twice == 0, "%d publishes never completed, %d completed twice",
                undone, twice);
  ck_assert_msg(g.bad == 0, "%d publishes failed, the first with %s", g.bad,
                uvmqtt_err_name(g.bad_status));
  if (qos == 2) ck_assert_msg(g.dups == 0, "%d duplicates at QoS 2", g.dups);
  ck_assert_int_ge(g.a.losses, RESTART_TIMES);
  ck_assert_int_ge(g.b.losses, RESTART_TIMES);
  ck_assert_int_eq(g.a.closed + g.b.closed, 2);
  loop_finish();
  broker_finish();
}

START_TEST(robust_restart_qos1) {
  restart_scenario(version_of(_i), 1);
}
END_TEST

START_TEST(robust_restart_qos2) {
  restart_scenario(version_of(_i), 2);
}
END_TEST

/* ---- Half-open connection ------------------------------------------------------------- */

#define HALF_KEEPALIVE_S 1
#define HALF_TOPIC       "robust/half"
/* Keepalive: a PINGREQ after one quiet interval, the loss half an interval
 * later; the connection was quiet for up to 200 ms before the black-hole. */
#define HALF_DETECT_MAX_MS (HALF_KEEPALIVE_S * 1500 + 500)

static void half_close(void) {
  peer_close(&g.a);
  peer_close(&g.b);
  proxy_end();
}

static void half_check_done(void) {
  if (g.got >= 1 && g.pub_calls[0] == 1 && !g.finishing) {
    g.finishing = 1;
    g_phase = "grace";
    after(200, half_close);
  }
}

static void half_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  ck_assert(bytes_is(m->topic, HALF_TOPIC));
  if (bytes_is(m->payload, "during"))
    g.got++;
  else
    g.got_other++;
  half_check_done();
}

static void half_published(peer_t *p, int status, uint8_t reason, intptr_t index) {
  (void)p;
  (void)reason;
  ck_assert_int_eq(index, 0);
  g.pub_status[0] = status;
  g.pub_calls[0]++;
  half_check_done();
}

static void half_pass(void) {
  g_phase = "proxy passes again";
  proxy_set_mode(&g_proxy, PROXY_PASS);
}

static void half_blackhole(void) {
  g_phase = "black-hole";
  proxy_set_mode(&g_proxy, PROXY_BLACKHOLE);
  g.t_mark = now_ms();
  ck_assert_int_eq(
      peer_publish(&g.a, HALF_TOPIC, "during", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0), 0);
  /* Handed to the (silently dead) socket, waiting for an ack. */
  ck_assert_uint_eq(stats_of(&g.a).inflight, 1);
}

static void half_pub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status != 0) return;
  if (p->connects == 1) after(200, half_blackhole);
  if (p->connects == 2) g.t_back = now_ms();
}

static void half_pub_down(peer_t *p, const uvmqtt_disconnect_t *d, int was_up) {
  ck_assert(d->will_retry);
  if (was_up && p->losses == 1) {
    g.t_detect = now_ms();
    ck_assert_msg(d->status == UVMQTT_EKEEPALIVE, "half-open connection ended with %s",
                  uvmqtt_err_name(d->status));
    after(300, half_pass);
  }
}

static void half_sub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  ck_assert_int_eq(status, 0);
  ck_assert_int_eq(p->connects, 1);
  peer_subscribe(p, HALF_TOPIC, 1);
}

static void half_sub_suback(peer_t *p, uint8_t granted) {
  (void)p;
  ck_assert_uint_eq(granted, 1);
  peer_connect(&g.a);
}

START_TEST(robust_half_open) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  proxy_begin();
  uvmqtt_options_t o;
  options_for(&o, v, g_proxy_uri);
  o.keepalive = HALF_KEEPALIVE_S;
  o.connect_timeout_ms = 1000;
  peer_init(&g.a, &o);
  options_for(&o, v, g_uri);
  peer_init(&g.b, &o);
  g.a.on_up = half_pub_up;
  g.a.on_down = half_pub_down;
  g.a.on_pub = half_published;
  g.b.on_up = half_sub_up;
  g.b.on_suback = half_sub_suback;
  g.b.on_msg = half_message;
  peer_connect(&g.b);
  loop_run();
  uint64_t detect = g.t_detect - g.t_mark;
  report("half-open", v, "keepalive caught it after %llu ms, back %llu ms after that",
         (unsigned long long)detect, (unsigned long long)(g.t_back - g.t_detect));
  ck_assert_int_eq(g.a.losses, 1);
  ck_assert_int_eq(g.a.first_loss.status, UVMQTT_EKEEPALIVE);
  ck_assert_msg(detect <= HALF_DETECT_MAX_MS, "detected after %llu ms", (unsigned long long)detect);
  ck_assert_int_eq(g.a.connects, 2);
  ck_assert_int_eq(g.pub_calls[0], 1);
  ck_assert_msg(g.pub_status[0] == 0, "publish: %s", uvmqtt_err_name(g.pub_status[0]));
  ck_assert_int_ge(g.got, 1);
  ck_assert_int_eq(g.got_other, 0);
  ck_assert_int_eq(g.b.losses, 0);
  ck_assert_int_eq(g.a.closed + g.b.closed, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Deadline delivery ------------------------------------------------------------------ */

#define DL_DEADLINE_MS 500
#define DL_SLACK_MS    250
#define DL_DOWN_MS     1200 /* broker away, counted from the publish */
#define DL_TOPIC       "robust/dl"

static void dl_close(void) {
  peer_close(&g.a);
  peer_close(&g.b);
}

static void dl_restart(void) {
  g_phase = "broker back";
  broker_restart_now();
  g.t_back = now_ms();
}

static void dl_stop(void) {
  g_phase = "broker down";
  broker_stop_now();
}

static void dl_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  ck_assert(bytes_is(m->topic, DL_TOPIC));
  if (bytes_is(m->payload, "kept")) {
    /* Anything sent after "kept" would follow it: wait a little more. */
    if (g.got++ == 0) {
      g_phase = "grace";
      after(500, dl_close);
    }
  } else {
    g.got_other++;
  }
}

static void dl_published(peer_t *p, int status, uint8_t reason, intptr_t index) {
  (void)reason;
  ck_assert(index >= 0 && index < 2);
  g.pub_status[index] = status;
  g.pub_calls[index]++;
  g.pub_at[index] = now_ms();
  /* Expired messages leave the queue; "kept" waits for the broker. */
  if (index == 0) ck_assert_uint_eq(stats_of(p).queued, 1);
}

static void dl_pub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status == 0 && p->connects == 1) after(100, dl_stop);
}

static void dl_pub_down(peer_t *p, const uvmqtt_disconnect_t *d, int was_up) {
  ck_assert(d->will_retry);
  if (!was_up || p->losses != 1) return;
  g_phase = "publishing while down";
  g.t_mark = now_ms();
  ck_assert_int_eq(
      peer_publish(p, DL_TOPIC, "expired", 1, UVMQTT_DELIVERY_DEADLINE, DL_DEADLINE_MS, 0), 0);
  ck_assert_int_eq(peer_publish(p, DL_TOPIC, "kept", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1), 0);
  ck_assert_uint_eq(stats_of(p).queued, 2);
  after(DL_DOWN_MS, dl_restart);
}

static void dl_sub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status == 0 && p->connects == 1) peer_subscribe(p, DL_TOPIC, 1);
}

static void dl_sub_suback(peer_t *p, uint8_t granted) {
  (void)p;
  ck_assert_uint_eq(granted, 1);
  peer_connect(&g.a);
}

START_TEST(robust_deadline_expires) {
  uint8_t v = version_of(_i);
  /* Persistence keeps the subscriber's subscription across the restart, so
   * whatever the publisher sends afterwards reaches it. */
  broker_start("persistence true\n");
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  uvmqtt_props_t props;
  options_for(&o, v, g_uri);
  peer_init(&g.a, &o);
  persistent(&o, "robust-dl-sub", &props);
  peer_init(&g.b, &o);
  g.a.on_up = dl_pub_up;
  g.a.on_down = dl_pub_down;
  g.a.on_pub = dl_published;
  g.b.on_up = dl_sub_up;
  g.b.on_suback = dl_sub_suback;
  g.b.on_msg = dl_message;
  peer_connect(&g.b);
  loop_run();
  uint64_t expired_after = g.pub_at[0] - g.t_mark;
  report("deadline", v, "expired after %llu ms (deadline %d ms), broker back after %llu ms",
         (unsigned long long)expired_after, DL_DEADLINE_MS,
         (unsigned long long)(g.t_back - g.t_mark));
  ck_assert_int_eq(g.pub_calls[0], 1);
  ck_assert_msg(g.pub_status[0] == UVMQTT_EEXPIRED, "deadline publish: %s",
                uvmqtt_err_name(g.pub_status[0]));
  ck_assert_uint_ge(expired_after, DL_DEADLINE_MS);
  ck_assert_uint_le(expired_after, DL_DEADLINE_MS + DL_SLACK_MS);
  ck_assert_uint_lt(g.pub_at[0], g.t_back);
  ck_assert_int_eq(g.pub_calls[1], 1);
  ck_assert_msg(g.pub_status[1] == 0, "kept publish: %s", uvmqtt_err_name(g.pub_status[1]));
  ck_assert_int_ge(g.got, 1);
  ck_assert_msg(g.got_other == 0, "the expired message reached the subscriber");
  ck_assert_int_eq(g.a.closed + g.b.closed, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Drop delivery ---------------------------------------------------------------------- */

#define DROP_TOPIC "robust/drop"

static void drop_close(void) {
  peer_close(&g.a);
  peer_close(&g.b);
  proxy_end();
}

static void drop_check_done(void) {
  if (g.got == 1 && g.pub_calls[1] == 1 && !g.finishing) {
    g.finishing = 1;
    g_phase = "grace";
    after(300, drop_close);
  }
}

static void drop_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  if (bytes_is(m->payload, "marker"))
    g.got++;
  else
    g.got_other++;
  drop_check_done();
}

static void drop_published(peer_t *p, int status, uint8_t reason, intptr_t index) {
  (void)p;
  (void)reason;
  ck_assert(index >= 0 && index < 2);
  g.pub_status[index] = status;
  g.pub_calls[index]++;
  drop_check_done();
}

static uint8_t drop_kind(void) {
  /* Odd indexes set DROP as the client's default instead of per message. */
  return g.variant ? UVMQTT_DELIVERY_DEFAULT : UVMQTT_DELIVERY_DROP;
}

static void drop_pass(void) {
  g_phase = "proxy passes again";
  uvmqtt_stats_t st = stats_of(&g.a);
  ck_assert_uint_eq(st.queued, 0);
  ck_assert_uint_eq(st.inflight, 0);
  proxy_set_mode(&g_proxy, PROXY_PASS);
}

static void drop_cut(void) {
  g_phase = "cut";
  proxy_set_mode(&g_proxy, PROXY_REFUSE);
  proxy_cut_all(&g_proxy);
}

static void drop_pub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status != 0) return;
  if (p->connects == 1) {
    /* Sent but never acknowledged: the cut must complete it, not keep it. */
    proxy_set_mode(&g_proxy, PROXY_BLACKHOLE);
    ck_assert_int_eq(peer_publish(p, DROP_TOPIC, "lost", 1, drop_kind(), 0, 0), 0);
    ck_assert_uint_eq(stats_of(p).inflight, 1);
    after(100, drop_cut);
  } else if (p->connects == 2) {
    g_phase = "marker";
    ck_assert_int_eq(peer_publish(p, DROP_TOPIC, "marker", 1, drop_kind(), 0, 1), 0);
  }
}

static void drop_pub_down(peer_t *p, const uvmqtt_disconnect_t *d, int was_up) {
  ck_assert(d->will_retry);
  if (!was_up || p->losses != 1) return;
  g_phase = "publishing while down";
  /* The cut already completed the unacknowledged message. */
  ck_assert_int_eq(g.pub_calls[0], 1);
  for (uint8_t qos = 0; qos <= 2; qos++) {
    int rc = peer_publish(p, DROP_TOPIC, "offline", qos, drop_kind(), 0, 7);
    ck_assert_msg(rc == UVMQTT_ENOTCONN, "QoS %u while down: %s", qos, uvmqtt_err_name(rc));
  }
  uvmqtt_stats_t st = stats_of(p);
  ck_assert_uint_eq(st.queued, 0);
  ck_assert_uint_eq(st.inflight, 0);
  ck_assert_uint_eq(st.queued_bytes, 0);
  after(300, drop_pass);
}

static void drop_sub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, DROP_TOPIC, 1);
}

static void drop_sub_suback(peer_t *p, uint8_t granted) {
  (void)p;
  (void)granted;
  peer_connect(&g.a);
}

START_TEST(robust_drop_offline) {
  uint8_t v = version_of(_i);
  g.variant = _i >> 1;
  broker_start("");
  loop_start(WATCHDOG_MS);
  proxy_begin();
  uvmqtt_options_t o;
  options_for(&o, v, g_proxy_uri);
  if (g.variant) o.delivery.kind = UVMQTT_DELIVERY_DROP;
  peer_init(&g.a, &o);
  options_for(&o, v, g_uri);
  peer_init(&g.b, &o);
  g.a.on_up = drop_pub_up;
  g.a.on_down = drop_pub_down;
  g.a.on_pub = drop_published;
  g.b.on_up = drop_sub_up;
  g.b.on_suback = drop_sub_suback;
  g.b.on_msg = drop_message;
  peer_connect(&g.b);
  loop_run();
  report(g.variant ? "drop (client default)" : "drop (per message)", v,
         "in-flight message completed with %s, offline publishes refused",
         uvmqtt_err_name(g.pub_status[0]));
  ck_assert_int_eq(g.pub_calls[0], 1);
  ck_assert_int_lt(g.pub_status[0], 0);
  ck_assert_msg(g.pub_status[0] == g.a.first_loss.status,
                "dropped message completed with %s, the connection ended with %s",
                uvmqtt_err_name(g.pub_status[0]), uvmqtt_err_name(g.a.first_loss.status));
  ck_assert_int_eq(g.pub_calls[1], 1);
  ck_assert_int_eq(g.pub_status[1], 0);
  ck_assert_int_eq(g.a.published, 2); /* never for the refused ones */
  ck_assert_int_eq(g.got, 1);
  ck_assert_msg(g.got_other == 0, "a dropped message was delivered");
  ck_assert_int_eq(g.a.connects, 2);
  ck_assert_int_eq(g.a.closed + g.b.closed, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Backoff as seen on the wire -------------------------------------------------------- */

#define BO_MIN_MS   100
#define BO_MAX_MS   1600
#define BO_DOWN_MS  10000 /* the broker down 10 s */
#define BO_SLACK_MS 250 /* timer lateness on a busy machine */
#define BO_MAX_RECS 64

static struct {
  uvmqtt_backoff_t state;
  uvmqtt_reconnect_info_t info[BO_MAX_RECS];
  int64_t delay[BO_MAX_RECS];
  uint64_t at[BO_MAX_RECS];
  int n;
  uint64_t pre_at[BO_MAX_RECS + 1];
  int npre;
  uint64_t t_down;
  uint64_t t_pass;
} bo;

/* The built-in backoff, with every question and answer written down. */
static int64_t bo_policy(void *state, const uvmqtt_reconnect_info_t *info) {
  int64_t d = uvmqtt_reconnect_backoff(state, info);
  ck_assert_int_lt(bo.n, BO_MAX_RECS);
  bo.info[bo.n] = *info;
  bo.delay[bo.n] = d;
  bo.at[bo.n] = now_ms();
  bo.n++;
  return d;
}

static uint64_t bo_ceiling(uint32_t attempt) {
  uint64_t c = BO_MIN_MS;
  for (uint32_t k = 1; k < attempt && c < BO_MAX_MS; k++)
    c *= 2;
  return c < BO_MAX_MS ? c : BO_MAX_MS;
}

static void bo_pass(void) {
  g_phase = "proxy passes again";
  bo.t_pass = now_ms();
  proxy_set_mode(&g_proxy, PROXY_PASS);
}

static void bo_down(void) {
  g_phase = "refusing";
  proxy_set_mode(&g_proxy, PROXY_REFUSE);
  proxy_cut_all(&g_proxy);
  bo.t_down = now_ms();
  after(BO_DOWN_MS, bo_pass);
}

static void bo_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status != 0) return;
  if (p->connects == 1) after(200, bo_down);
  if (p->connects == 2) {
    g.t_back = now_ms();
    peer_close(p);
    proxy_end();
  }
}

static void bo_pre(peer_t *p, uint32_t attempt) {
  (void)p;
  (void)attempt;
  ck_assert_int_le(bo.npre, BO_MAX_RECS);
  bo.pre_at[bo.npre++] = now_ms();
}

static void bo_disc(peer_t *p, const uvmqtt_disconnect_t *d, int was_up) {
  (void)p;
  (void)was_up;
  /* on_disconnect reports what the policy just answered. */
  ck_assert_int_ge(bo.n, 1);
  ck_assert(d->will_retry);
  ck_assert_int_eq((int64_t)d->retry_in_ms, bo.delay[bo.n - 1]);
  ck_assert_uint_eq(d->attempt, bo.info[bo.n - 1].attempt);
}

START_TEST(robust_backoff_delays) {
  broker_start("");
  loop_start(WATCHDOG_MS);
  proxy_begin();
  bo.state.min_ms = BO_MIN_MS;
  bo.state.max_ms = BO_MAX_MS;
  uvmqtt_options_t o;
  options_for(&o, UVMQTT_V311, g_proxy_uri);
  o.reconnect.fn = bo_policy;
  o.reconnect.state = &bo.state;
  peer_init(&g.a, &o);
  g.a.on_up = bo_up;
  g.a.on_pre = bo_pre;
  g.a.on_down = bo_disc;
  peer_connect(&g.a);
  loop_run();

  printf("robust: backoff: policy answers (attempt: delay ms, down ms):");
  for (int i = 0; i < bo.n; i++)
    printf(" %u:%lld/%llu", bo.info[i].attempt, (long long)bo.delay[i],
           (unsigned long long)bo.info[i].down_ms);
  printf("\n");
  report("backoff", 0, "%d attempts while refused for %d ms, back %llu ms after the proxy passed",
         bo.n, BO_DOWN_MS, (unsigned long long)(g.t_back - bo.t_pass));
  /* The initial attempt, one per answer, the last one succeeding. */
  ck_assert_int_eq(bo.npre, bo.n + 1);
  ck_assert_int_ge(bo.n, 5);
  ck_assert_int_eq(g.a.failures, bo.n - 1);
  ck_assert_int_eq(g.a.losses, 1);
  ck_assert_msg(bo.info[0].connected_ms >= 150, "connection lived %llu ms",
                (unsigned long long)bo.info[0].connected_ms);
  int distinct = 0, misnumbered = -1;
  for (int i = 0; i < bo.n; i++) {
    const uvmqtt_reconnect_info_t *in = &bo.info[i];
    /* Checked last, so the timing checks below still run on a misnumbering. */
    if (in->attempt != (uint32_t)i + 1 && misnumbered < 0) misnumbered = i;
    ck_assert_int_lt(in->status, 0);
    if (i > 0) ck_assert_uint_eq(in->connected_ms, 0);
    /* down_ms counts from the loss. */
    uint64_t down = bo.at[i] - bo.t_down;
    ck_assert_msg(in->down_ms + 50 >= down && in->down_ms <= down + 50,
                  "answer %d: down_ms %llu, but %llu ms since the cut", i,
                  (unsigned long long)in->down_ms, (unsigned long long)down);
    uint64_t ceiling = bo_ceiling(in->attempt ? in->attempt : 1);
    ck_assert_msg(bo.delay[i] >= 0 && (uint64_t)bo.delay[i] <= ceiling,
                  "answer %d (attempt %u): %lld ms, bound %llu", i, in->attempt,
                  (long long)bo.delay[i], (unsigned long long)ceiling);
    /* The next attempt starts when the policy said, give or take a tick. */
    uint64_t gap = bo.pre_at[i + 1] - bo.at[i];
    ck_assert_msg(gap >= (uint64_t)bo.delay[i] && gap <= (uint64_t)bo.delay[i] + BO_SLACK_MS,
                  "answer %d: waited %llu ms for a %lld ms delay", i, (unsigned long long)gap,
                  (long long)bo.delay[i]);
    int seen = 0;
    for (int j = 0; j < i && !seen; j++)
      seen = bo.delay[j] == bo.delay[i];
    if (!seen) distinct++;
  }
  ck_assert_msg(distinct >= 3, "only %d distinct delays in %d", distinct, bo.n);
  ck_assert_uint_le(g.t_back - bo.t_pass, BO_MAX_MS + 500);
  /* The first retry after a loss is attempt 1, then 2, 3... */
  ck_assert_msg(misnumbered < 0, "answer %d was for attempt %u, expected %d", misnumbered,
                misnumbered < 0 ? 0 : bo.info[misnumbered].attempt, misnumbered + 1);
  ck_assert_int_eq(g.a.closed, 1);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Server list -------------------------------------------------------------------------- */

#define SL_MAX 8

static struct {
  char dead[64];
  int status[SL_MAX];
  char server[SL_MAX][64];
  int n;
} sl;

static void sl_cut(void) {
  g_phase = "cut";
  proxy_cut_all(&g_proxy);
}

static void sl_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  ck_assert_int_lt(sl.n, SL_MAX);
  sl.status[sl.n] = status;
  snprintf(sl.server[sl.n], sizeof sl.server[0], "%s", ack->server);
  sl.n++;
  if (status != 0) return;
  if (p->connects == 1) after(100, sl_cut);
  if (p->connects == 2) {
    peer_close(p);
    proxy_end();
  }
}

START_TEST(robust_server_list) {
  uint8_t v = version_of(_i);
  broker_start("");
  loop_start(WATCHDOG_MS);
  proxy_begin();
  int dead_port = test_free_port();
  ck_assert_int_gt(dead_port, 0);
  snprintf(sl.dead, sizeof sl.dead, "mqtt://127.0.0.1:%d", dead_port);
  const char *uris[2] = {sl.dead, g_proxy_uri};
  uvmqtt_backoff_t quick = {50, 0, 0, 0, 0};
  uvmqtt_options_t o;
  options_for(&o, v, NULL);
  o.uris = uris;
  o.uri_count = 2;
  o.reconnect.state = &quick;
  peer_init(&g.a, &o);
  g.a.on_up = sl_up;
  peer_connect(&g.a);
  loop_run();
  report("server list", v, "%d attempts", sl.n);
  /* Round the list: dead, broker; after the cut, dead again, broker. */
  ck_assert_int_eq(sl.n, 4);
  for (int i = 0; i < 4; i++) {
    if (i % 2 == 0) {
      ck_assert_msg(sl.status[i] < 0, "attempt %d via the dead port: %s", i,
                    uvmqtt_err_name(sl.status[i]));
      ck_assert_str_eq(sl.server[i], sl.dead);
    } else {
      ck_assert_msg(sl.status[i] == 0, "attempt %d via the broker: %s", i,
                    uvmqtt_err_name(sl.status[i]));
      ck_assert_str_eq(sl.server[i], g_proxy_uri);
    }
  }
  ck_assert_int_eq(g.a.losses, 1);
  ck_assert_int_eq(g.a.closed, 1);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Credentials from the pre-connect hook ------------------------------------------------ */

static char g_passwd_dir[64];

static void creds_pre(peer_t *p, uint32_t attempt) {
  /* The first attempt keeps the wrong password from the options; after the
   * refusal the hook puts the right one in. */
  if (attempt >= 2 && p->failures >= 1) {
    int rc = uvmqtt_client_set_credentials(&p->client, "user", "pass", 4);
    ck_assert_msg(rc == 0, "set_credentials: %s", uvmqtt_err_name(rc));
  }
}

static void creds_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  if (p->failures + p->connects == 1) {
    ck_assert_msg(status == UVMQTT_EREFUSED, "wrong password: %s", uvmqtt_err_name(status));
    /* Mosquitto answers 5 (3.1.1) or 0x87 (v5), not authorized. */
    uint8_t want = p->version == UVMQTT_V5 ? 0x87 : 0x05;
    ck_assert_uint_eq(ack->reason, want);
  } else {
    ck_assert_msg(status == 0, "right password: %s", uvmqtt_err_name(status));
    peer_close(p);
  }
}

static void creds_down(peer_t *p, const uvmqtt_disconnect_t *d, int was_up) {
  (void)p;
  ck_assert(!was_up);
  ck_assert_int_eq(d->status, UVMQTT_EREFUSED);
  ck_assert(d->will_retry);
}

START_TEST(robust_pre_connect_credentials) {
  uint8_t v = version_of(_i);
  snprintf(g_passwd_dir, sizeof g_passwd_dir, "/tmp/uvmqtt-passwd-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(g_passwd_dir));
  char cmd[256], extra[256];
  snprintf(cmd, sizeof cmd, "mosquitto_passwd -b -c %s/passwd user pass", g_passwd_dir);
  ck_assert_msg(test_run(cmd, 10) == 0, "mosquitto_passwd failed");
  snprintf(extra, sizeof extra, "allow_anonymous false\npassword_file %s/passwd\n", g_passwd_dir);
  broker_start(extra);
  loop_start(WATCHDOG_MS);
  uvmqtt_options_t o;
  options_for(&o, v, g_uri);
  o.username = "user";
  o.password = "wrong";
  o.password_len = 5;
  peer_init(&g.a, &o);
  g.a.on_pre = creds_pre;
  g.a.on_up = creds_up;
  g.a.on_down = creds_down;
  peer_connect(&g.a);
  loop_run();
  report("pre_connect credentials", v, "refused once, then connected");
  ck_assert_int_eq(g.a.pre_connects, 2);
  ck_assert_uint_eq(g.a.last_pre_attempt, 2);
  ck_assert_int_eq(g.a.failures, 1);
  ck_assert_int_eq(g.a.connects, 1);
  ck_assert_int_eq(g.a.disconnects, 1);
  ck_assert_int_eq(g.a.closed, 1);
  loop_finish();
  broker_finish();
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_passwd_dir);
  ck_assert_int_eq(test_run(cmd, 10), 0);
}
END_TEST

/* ---- Offline queue overflow ------------------------------------------------------------------ */

#define OQ_MAX   5
#define OQ_TRIES 7
#define OQ_TOPIC "robust/oq"

static void oq_close(void) {
  peer_close(&g.a);
  peer_close(&g.b);
  proxy_end();
}

static int oq_expected_delivered(int index) {
  /* REJECT_NEW keeps the first OQ_MAX, DROP_OLDEST the last OQ_MAX. */
  return g.variant == UVMQTT_OVERFLOW_REJECT_NEW ? index < OQ_MAX : index >= OQ_TRIES - OQ_MAX;
}

static void oq_check_done(void) {
  int done = 0;
  for (int i = 0; i < OQ_TRIES; i++)
    done += g.pub_calls[i];
  if (done == OQ_MAX + (g.variant == UVMQTT_OVERFLOW_DROP_OLDEST ? OQ_TRIES - OQ_MAX : 0) &&
      g.got == OQ_MAX && !g.finishing) {
    g.finishing = 1;
    g_phase = "grace";
    after(200, oq_close);
  }
}

static void oq_published(peer_t *p, int status, uint8_t reason, intptr_t index) {
  (void)p;
  (void)reason;
  ck_assert(index >= 0 && index < OQ_TRIES);
  g.pub_status[index] = status;
  g.pub_calls[index]++;
  oq_check_done();
}

static void oq_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  long n = payload_num(m->payload);
  ck_assert(n >= 0 && n < OQ_TRIES);
  g.delivered[n]++;
  g.got++;
  oq_check_done();
}

static void oq_pass(void) {
  g_phase = "proxy passes again";
  proxy_set_mode(&g_proxy, PROXY_PASS);
}

static void oq_cut(void) {
  g_phase = "cut";
  proxy_set_mode(&g_proxy, PROXY_REFUSE);
  proxy_cut_all(&g_proxy);
}

static void oq_pub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status == 0 && p->connects == 1) after(50, oq_cut);
}

static void oq_pub_down(peer_t *p, const uvmqtt_disconnect_t *d, int was_up) {
  ck_assert(d->will_retry);
  if (!was_up || p->losses != 1) return;
  g_phase = "publishing offline";
  for (int i = 0; i < OQ_TRIES; i++) {
    char text[8];
    snprintf(text, sizeof text, "%d", i);
    g.rc[i] = peer_publish(p, OQ_TOPIC, text, 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, i);
  }
  uvmqtt_stats_t st = stats_of(p);
  ck_assert_uint_eq(st.queued, OQ_MAX);
  if (g.variant == UVMQTT_OVERFLOW_REJECT_NEW) {
    for (int i = 0; i < OQ_TRIES; i++)
      ck_assert_int_eq(g.rc[i], i < OQ_MAX ? 0 : UVMQTT_EQUEUEFULL);
    for (int i = 0; i < OQ_TRIES; i++)
      ck_assert_int_eq(g.pub_calls[i], 0);
  } else {
    for (int i = 0; i < OQ_TRIES; i++) {
      ck_assert_int_eq(g.rc[i], 0);
      /* The oldest ones made room, each at once. */
      ck_assert_int_eq(g.pub_calls[i], i < OQ_TRIES - OQ_MAX ? 1 : 0);
      if (i < OQ_TRIES - OQ_MAX) ck_assert_int_eq(g.pub_status[i], UVMQTT_EDROPPED);
    }
  }
  after(200, oq_pass);
}

static void oq_sub_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  ck_assert_int_eq(status, 0);
  peer_subscribe(p, OQ_TOPIC, 1);
}

static void oq_sub_suback(peer_t *p, uint8_t granted) {
  (void)p;
  (void)granted;
  peer_connect(&g.a);
}

START_TEST(robust_queue_overflow) {
  uint8_t v = version_of(_i);
  g.variant = _i >> 1 ? UVMQTT_OVERFLOW_DROP_OLDEST : UVMQTT_OVERFLOW_REJECT_NEW;
  broker_start("");
  loop_start(WATCHDOG_MS);
  proxy_begin();
  uvmqtt_options_t o;
  options_for(&o, v, g_proxy_uri);
  o.max_queued = OQ_MAX;
  o.overflow = (uint8_t)g.variant;
  peer_init(&g.a, &o);
  options_for(&o, v, g_uri);
  peer_init(&g.b, &o);
  g.a.on_up = oq_pub_up;
  g.a.on_down = oq_pub_down;
  g.a.on_pub = oq_published;
  g.b.on_up = oq_sub_up;
  g.b.on_suback = oq_sub_suback;
  g.b.on_msg = oq_message;
  peer_connect(&g.b);
  loop_run();
  const char *mode = g.variant == UVMQTT_OVERFLOW_REJECT_NEW ? "reject new" : "drop oldest";
  report(mode, v, "%d of %d publishes delivered", g.got, OQ_TRIES);
  /* Every publish is accounted for exactly once: refused at the call,
   * dropped by a callback, or delivered with a callback. */
  for (int i = 0; i < OQ_TRIES; i++) {
    int delivered = g.delivered[i];
    if (oq_expected_delivered(i)) {
      ck_assert_msg(delivered == 1, "message %d delivered %d times", i, delivered);
      ck_assert_int_eq(g.pub_calls[i], 1);
      ck_assert_int_eq(g.pub_status[i], 0);
    } else if (g.variant == UVMQTT_OVERFLOW_REJECT_NEW) {
      ck_assert_msg(g.rc[i] == UVMQTT_EQUEUEFULL, "message %d: %s", i, uvmqtt_err_name(g.rc[i]));
      ck_assert_int_eq(delivered, 0);
      ck_assert_int_eq(g.pub_calls[i], 0);
    } else {
      ck_assert_msg(delivered == 0, "dropped message %d was delivered", i);
      ck_assert_int_eq(g.pub_calls[i], 1);
      ck_assert_int_eq(g.pub_status[i], UVMQTT_EDROPPED);
    }
  }
  ck_assert_int_eq(g.got, OQ_MAX);
  ck_assert_int_eq(g.a.closed + g.b.closed, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Reconnect storm ------------------------------------------------------------------------- */

#define STORM_CLIENTS   1000
#define STORM_IN_FLIGHT 50 /* initial attempts at a time, below the listen backlog */
#define STORM_MIN_MS    100
#define STORM_MAX_MS    2000
#define STORM_DOWN_MS   500
#define STORM_SLACK_MS  1500 /* a thousand handshakes on a small machine */
#define STORM_BUCKET_MS 250
#define STORM_WATCHDOG  120000
#define STORM_TIMEOUT   180

static struct {
  uvmqtt_client_t *clients;
  uint64_t *back_ms; /* since the broker stopped */
  uv_work_t work;
  int work_rc;
  uvmqtt_backoff_t policy;
  int started;
  int connected;
  int reconnected;
  int failures;
  int losses;
  int closed;
  int phase; /* 0: first connects, 1: after the stop */
  uint64_t t_loss;
  uint64_t t_back;
} storm;

static void storm_closed(uvmqtt_client_t *client) {
  ck_assert_ptr_null(client->impl);
  storm.closed++;
}

static void storm_close(void) {
  g_phase = "closing";
  for (int i = 0; i < STORM_CLIENTS; i++)
    uvmqtt_close(&storm.clients[i], storm_closed);
}

/* The broker stops and starts on the thread pool: the loop keeps running,
 * so the clients' timers fire when their policy says, not in a burst after
 * a blocked loop resumes. */
static void storm_stop_work(uv_work_t *work) {
  (void)work;
  storm.work_rc = test_broker_stop(&g_broker);
}

static void storm_restart_work(uv_work_t *work) {
  (void)work;
  storm.work_rc = test_broker_restart(&g_broker);
  storm.t_back = mono_ms();
}

static void storm_restarted(uv_work_t *work, int status) {
  (void)work;
  ck_assert_int_eq(status, 0);
  ck_assert_msg(storm.work_rc == 0, "mosquitto did not restart");
  g_phase = "broker back";
}

static void storm_restart(void) {
  g_phase = "broker restarting";
  ck_assert_int_eq(uv_queue_work(&g_loop, &storm.work, storm_restart_work, storm_restarted), 0);
}

static void storm_stopped(uv_work_t *work, int status) {
  (void)work;
  ck_assert_int_eq(status, 0);
  ck_assert_int_eq(storm.work_rc, 0);
  after(STORM_DOWN_MS, storm_restart);
}

static void storm_stop(void) {
  g_phase = "broker down";
  storm.phase = 1;
  storm.t_loss = mono_ms();
  ck_assert_int_eq(uv_queue_work(&g_loop, &storm.work, storm_stop_work, storm_stopped), 0);
}

static void storm_start_next(void) {
  if (storm.started == STORM_CLIENTS) return;
  int rc = uvmqtt_connect(&storm.clients[storm.started++]);
  ck_assert_msg(rc == 0, "connect: %s", uvmqtt_err_name(rc));
}

static void storm_on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  int i = (int)(intptr_t)client->data;
  if (storm.phase == 0) {
    ck_assert_msg(status == 0, "client %d: connect: %s", i, uvmqtt_err_name(status));
    storm.connected++;
    storm_start_next();
    if (storm.connected == STORM_CLIENTS) after(200, storm_stop);
    return;
  }
  if (status != 0) {
    storm.failures++;
    return;
  }
  ck_assert_msg(storm.back_ms[i] == 0, "client %d connected twice", i);
  storm.back_ms[i] = mono_ms() - storm.t_loss;
  if (++storm.reconnected == STORM_CLIENTS) after(100, storm_close);
}

static void storm_on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *d) {
  int i = (int)(intptr_t)client->data;
  ck_assert_msg(storm.phase == 1, "client %d lost its connection early: %s", i,
                uvmqtt_err_name(d->status));
  ck_assert_msg(d->will_retry, "client %d gave up: %s", i, uvmqtt_err_name(d->status));
  storm.losses++;
}

START_TEST(robust_reconnect_storm) {
  ck_assert_msg(test_raise_fd_limit(STORM_CLIENTS + 512) == 0, "RLIMIT_NOFILE hard limit too low");
  broker_start("max_connections -1\n");
  loop_start(STORM_WATCHDOG);
  storm.clients = calloc(STORM_CLIENTS, sizeof *storm.clients);
  storm.back_ms = calloc(STORM_CLIENTS, sizeof *storm.back_ms);
  ck_assert(storm.clients != NULL && storm.back_ms != NULL);
  /* One policy state shared by every client, as the header allows. */
  storm.policy.min_ms = STORM_MIN_MS;
  storm.policy.max_ms = STORM_MAX_MS;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = storm_on_connect;
  cbs.on_disconnect = storm_on_disconnect;
  for (int i = 0; i < STORM_CLIENTS; i++) {
    uvmqtt_options_t o;
    options_for(&o, UVMQTT_V311, g_uri);
    o.reconnect.fn = uvmqtt_reconnect_backoff;
    o.reconnect.state = &storm.policy;
    ck_assert_int_eq(uvmqtt_client_init(&g_loop, &storm.clients[i], &o, &cbs), 0);
    storm.clients[i].data = (void *)(intptr_t)i;
  }
  for (int i = 0; i < STORM_IN_FLIGHT; i++)
    storm_start_next();
  loop_run();

  uint64_t down = storm.t_back - storm.t_loss;
  uint64_t last = 0;
  int buckets[64] = {0};
  int fine[1024] = {0};
  for (int i = 0; i < STORM_CLIENTS; i++) {
    uint64_t t = storm.back_ms[i];
    if (t > last) last = t;
    int b = (int)(t / STORM_BUCKET_MS);
    buckets[b < 63 ? b : 63]++;
    int f = (int)(t / 50);
    fine[f < 1023 ? f : 1023]++;
  }
  int busiest = 0;
  for (int i = 0; i < 1024; i++)
    if (fine[i] > busiest) busiest = fine[i];
  printf("robust: storm: %d clients, broker back %llu ms after the loss; reconnect times since "
         "the loss, %d ms buckets:\n",
         STORM_CLIENTS, (unsigned long long)down, STORM_BUCKET_MS);
  for (int b = 0; b <= (int)(last / STORM_BUCKET_MS) && b < 64; b++) {
    printf("  %5d-%5d ms %4d ", b * STORM_BUCKET_MS, (b + 1) * STORM_BUCKET_MS, buckets[b]);
    for (int k = 0; k < buckets[b]; k += 10)
      printf("#");
    printf("\n");
  }
  report("storm", 0, "%d reconnected, %d failed attempts, last after %llu ms, busiest 50 ms: %d",
         storm.reconnected, storm.failures, (unsigned long long)last, busiest);
  ck_assert_int_eq(storm.reconnected, STORM_CLIENTS);
  ck_assert_int_ge(storm.losses, STORM_CLIENTS);
  ck_assert_int_eq(storm.closed, STORM_CLIENTS);
  ck_assert_msg(last <= down + STORM_MAX_MS + STORM_SLACK_MS,
                "the last client came back %llu ms after the loss; the broker was back at %llu",
                (unsigned long long)last, (unsigned long long)down);
  ck_assert_msg(busiest < STORM_CLIENTS / 2, "%d of %d clients reconnected in the same 50 ms",
                busiest, STORM_CLIENTS);
  loop_finish();
  broker_finish();
  free(storm.clients);
  free(storm.back_ms);
}
END_TEST

/* ---- Session recovery without a session ----------------------------------------------------- */

#define RS_TOPIC     "robust/rs/a"
#define RS_FILTER    "robust/rs/#"
#define RS_IN_FLIGHT 3

static void rs_close(void) {
  peer_close(&g.a);
  peer_close(&g.b);
  proxy_end();
}

static void rs_check_done(void) {
  int done = 0;
  for (int i = 0; i < RS_IN_FLIGHT; i++)
    done += g.pub_calls[i];
  if (done == RS_IN_FLIGHT && g.got >= RS_IN_FLIGHT && g.b.up && !g.other_sent) {
    /* The resent messages came back through the restored subscription; a
     * message from another client must too. */
    g_phase = "other publisher";
    g.other_sent = 1;
    ck_assert_int_eq(peer_publish(&g.b, "robust/rs/b", "other", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED,
                                  0, RS_IN_FLIGHT),
                     0);
  }
  if (g.got_other == 1 && !g.finishing) {
    g.finishing = 1;
    g_phase = "grace";
    uvmqtt_stats_t st = stats_of(&g.a);
    ck_assert_uint_eq(st.queued, 0);
    ck_assert_uint_eq(st.inflight, 0);
    after(200, rs_close);
  }
}

static void rs_message(peer_t *p, const uvmqtt_message_t *m) {
  (void)p;
  if (bytes_is(m->topic, RS_TOPIC)) {
    long n = payload_num(m->payload);
    ck_assert(n >= 0 && n < RS_IN_FLIGHT);
    g.delivered[n]++;
    g.got++;
  } else {
    ck_assert(bytes_is(m->topic, "robust/rs/b"));
    g.got_other++;
  }
  rs_check_done();
}

static void rs_published(peer_t *p, int status, uint8_t reason, intptr_t index) {
  (void)p;
  (void)reason;
  ck_assert(index >= 0 && index <= RS_IN_FLIGHT);
  g.pub_status[index] = status;
  g.pub_calls[index]++;
  rs_check_done();
}

static void rs_restart(void) {
  g_phase = "broker restart";
  ck_assert_uint_eq(stats_of(&g.a).inflight, RS_IN_FLIGHT);
  broker_stop_now();
  broker_restart_now();
  proxy_set_mode(&g_proxy, PROXY_PASS);
}

static void rs_blackhole(void) {
  g_phase = "black-hole";
  proxy_set_mode(&g_proxy, PROXY_BLACKHOLE);
  for (int i = 0; i < RS_IN_FLIGHT; i++) {
    char text[8];
    snprintf(text, sizeof text, "%d", i);
    ck_assert_int_eq(peer_publish(&g.a, RS_TOPIC, text, 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, i),
                     0);
  }
  after(200, rs_restart);
}

static void rs_a_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status != 0) return;
  if (p->connects == 1) {
    peer_subscribe(p, RS_FILTER, 1);
  } else {
    /* The broker forgot everything: the client must restore it. */
    ck_assert_uint_eq(p->session_present, 0);
    rs_check_done();
  }
}

static void rs_a_suback(peer_t *p, uint8_t granted) {
  (void)granted;
  ck_assert_int_eq(p->subacks, 1);
  peer_connect(&g.b);
}

static void rs_b_up(peer_t *p, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  if (status != 0) return;
  if (p->connects == 1) after(100, rs_blackhole);
  rs_check_done();
}

START_TEST(robust_session_recovery) {
  uint8_t v = version_of(_i);
  int clean = (_i >> 1) == 0;
  broker_start("");
  loop_start(WATCHDOG_MS);
  proxy_begin();
  uvmqtt_options_t o;
  uvmqtt_props_t props;
  options_for(&o, v, g_proxy_uri);
  if (!clean) persistent(&o, "robust-rs", &props);
  peer_init(&g.a, &o);
  options_for(&o, v, g_uri);
  peer_init(&g.b, &o);
  g.a.on_up = rs_a_up;
  g.a.on_suback = rs_a_suback;
  g.a.on_msg = rs_message;
  g.a.on_pub = rs_published;
  g.b.on_up = rs_b_up;
  g.b.on_pub = rs_published;
  peer_connect(&g.a);
  loop_run();
  report(clean ? "session recovery (clean start)" : "session recovery (persistent)", v,
         "%d resent messages and one other delivered after the broker forgot the session", g.got);
  ck_assert_int_eq(g.a.connects, 2);
  ck_assert_int_eq(g.a.subacks, 1); /* the automatic re-subscription has no callback */
  for (int i = 0; i < RS_IN_FLIGHT; i++) {
    ck_assert_int_eq(g.pub_calls[i], 1);
    ck_assert_msg(g.pub_status[i] == 0, "message %d: %s", i, uvmqtt_err_name(g.pub_status[i]));
    ck_assert_int_eq(g.delivered[i], 1);
  }
  ck_assert_int_eq(g.pub_calls[RS_IN_FLIGHT], 1);
  ck_assert_int_eq(g.got_other, 1);
  ck_assert_int_eq(g.a.closed + g.b.closed, 2);
  loop_finish();
  broker_finish();
}
END_TEST

/* ---- Suite ------------------------------------------------------------------------------------
 */

static TCase *tcase(Suite *s, const char *name, int timeout_s) {
  TCase *tc = tcase_create(name);
  tcase_set_timeout(tc, timeout_s);
  suite_add_tcase(s, tc);
  return tc;
}

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("robust");
  TCase *tc = tcase(s, "restart", RESTART_TIMEOUT);
  tcase_add_loop_test(tc, robust_restart_qos1, 0, 2);
  tcase_add_loop_test(tc, robust_restart_qos2, 0, 2);

  tc = tcase(s, "faults", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, robust_half_open, 0, 2);
  tcase_add_loop_test(tc, robust_session_recovery, 0, 4);

  tc = tcase(s, "delivery", TCASE_TIMEOUT_S);
  tcase_add_loop_test(tc, robust_deadline_expires, 0, 2);
  tcase_add_loop_test(tc, robust_drop_offline, 0, 4);
  tcase_add_loop_test(tc, robust_queue_overflow, 0, 4);

  tc = tcase(s, "reconnect", TCASE_TIMEOUT_S);
  tcase_add_test(tc, robust_backoff_delays);
  tcase_add_loop_test(tc, robust_server_list, 0, 2);
  tcase_add_loop_test(tc, robust_pre_connect_credentials, 0, 2);

  tc = tcase(s, "storm", STORM_TIMEOUT);
  tcase_add_test(tc, robust_reconnect_storm);
  return s;
}
