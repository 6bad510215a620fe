/* uvmqtt-bench-mosquitto: the benchmark workloads on libmosquitto.
 *
 * libmosquitto is driven through its external-loop API on the same libuv
 * loop as the engine: a uv_poll_t on mosquitto_socket() calls
 * mosquitto_loop_read() when readable and mosquitto_loop_write() when
 * writable (watched only while mosquitto_want_write()), and a one-second
 * timer calls mosquitto_loop_misc() for keepalive. Connecting uses the
 * blocking mosquitto_connect_bind(), as the library's documentation asks for
 * when no library thread runs; on loopback it returns at once and CONNACK
 * arrives through the loop like any packet. */
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define MISC_PERIOD_MS 1000

typedef struct {
  struct mosquitto *mosq;
  bench_client_t *cl;
  uv_poll_t poll;
  int poll_events;
  uint8_t poll_open;
  uint8_t dead; /* connection lost or refused: no more library calls but destroy */
  uint8_t closing;
} m_client_t;

typedef struct {
  uv_timer_t misc;
} driver_state_t;

static void lost(m_client_t *m);
static void on_poll(uv_poll_t *p, int status, int events);

/* Watches writability only while the library has output queued, since
 * level-triggered readiness on an idle socket would spin the loop. */
static void update_events(m_client_t *m) {
  if (!m->poll_open || m->dead || m->closing) return;
  int want = UV_READABLE | (mosquitto_want_write(m->mosq) ? UV_WRITABLE : 0);
  if (want == m->poll_events) return;
  m->poll_events = want;
  uv_poll_start(&m->poll, want, on_poll);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  m_client_t *m = p->data;
  int rc = status < 0 ? MOSQ_ERR_CONN_LOST : MOSQ_ERR_SUCCESS;
  if (rc == MOSQ_ERR_SUCCESS && (events & UV_READABLE)) rc = mosquitto_loop_read(m->mosq, 1);
  if (rc == MOSQ_ERR_SUCCESS && !m->dead && (events & UV_WRITABLE))
    rc = mosquitto_loop_write(m->mosq, 1);
  if (rc != MOSQ_ERR_SUCCESS)
    lost(m);
  else
    update_events(m);
}

static void lost(m_client_t *m) {
  if (m->dead || m->closing) return;
  m->dead = 1;
  if (m->poll_open) uv_poll_stop(&m->poll);
  bench_on_down(m->cl->bench, m->cl, 0);
}

/* ---- Library callbacks ----------------------------------------------------------------- */

static void on_connect(struct mosquitto *mosq, void *obj, int rc) {
  (void)mosq;
  m_client_t *m = obj;
  if (rc == 0)
    bench_on_connected(m->cl->bench, m->cl);
  else
    lost(m);
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc) {
  (void)mosq;
  m_client_t *m = obj;
  if (rc != 0) lost(m);
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid) {
  (void)mosq;
  (void)mid;
  m_client_t *m = obj;
  bench_on_published(m->cl->bench, m->cl, 1);
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int count,
                         const int *granted) {
  (void)mosq;
  (void)mid;
  m_client_t *m = obj;
  bench_on_subscribed(m->cl->bench, m->cl, count >= 1 && granted[0] < 0x80);
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg) {
  (void)mosq;
  m_client_t *m = obj;
  bench_on_message(m->cl->bench, m->cl, msg->payload, (size_t)msg->payloadlen);
}

/* ---- Driver ------------------------------------------------------------------------------- */

static void on_misc(uv_timer_t *t) {
  bench_t *b = t->data;
  for (uint32_t i = 0; i < b->nclients; i++) {
    m_client_t *m = b->clients[i].drv;
    if (m == NULL || m->dead || m->closing || !m->poll_open) continue;
    if (mosquitto_loop_misc(m->mosq) != MOSQ_ERR_SUCCESS)
      lost(m);
    else
      update_events(m);
  }
}

static int drv_setup(bench_t *b) {
  driver_state_t *ds = b->drv_state;
  mosquitto_lib_init();
  uv_timer_init(b->loop, &ds->misc);
  ds->misc.data = b;
  uv_timer_start(&ds->misc, on_misc, MISC_PERIOD_MS, MISC_PERIOD_MS);
  /* The engine's handles decide when the run is over, not this one. */
  uv_unref((uv_handle_t *)&ds->misc);
  return 0;
}

static int drv_connect(bench_t *b, bench_client_t *cl) {
  m_client_t *m = calloc(1, sizeof *m);
  if (m == NULL) return -1;
  cl->drv = m;
  m->cl = cl;
  m->mosq = mosquitto_new(cl->id, true, m);
  if (m->mosq == NULL) return -1;
  mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                       b->o->version == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
  mosquitto_max_inflight_messages_set(m->mosq, b->o->inflight);
  mosquitto_connect_callback_set(m->mosq, on_connect);
  mosquitto_disconnect_callback_set(m->mosq, on_disconnect);
  mosquitto_publish_callback_set(m->mosq, on_publish);
  mosquitto_subscribe_callback_set(m->mosq, on_subscribe);
  mosquitto_message_callback_set(m->mosq, on_message);
  if (b->o->tls) {
    /* No CA file: the system's trust store, as uvmqtt does. */
    if (b->o->cafile == NULL) mosquitto_int_option(m->mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
    int trc = mosquitto_tls_set(m->mosq, b->o->cafile, NULL, NULL, NULL, NULL);
    if (trc == MOSQ_ERR_SUCCESS && b->o->insecure) trc = mosquitto_tls_insecure_set(m->mosq, true);
    if (trc != MOSQ_ERR_SUCCESS) {
      fprintf(stderr, "mosquitto_tls_set: %s\n", mosquitto_strerror(trc));
      m->dead = 1;
      return -1;
    }
  }
  int rc = mosquitto_connect_bind(m->mosq, b->o->host, b->o->port, b->o->keepalive, cl->bind_addr);
  if (rc != MOSQ_ERR_SUCCESS) {
    fprintf(stderr, "mosquitto_connect: %s\n", mosquitto_strerror(rc));
    m->dead = 1;
    return -1;
  }
  if (uv_poll_init(b->loop, &m->poll, mosquitto_socket(m->mosq)) != 0) return -1;
  m->poll.data = m;
  m->poll_open = 1;
  m->poll_events = 0;
  update_events(m);
  return 0;
}

static int drv_subscribe(bench_t *b, bench_client_t *cl, const char *filter, int qos) {
  (void)b;
  m_client_t *m = cl->drv;
  int rc = mosquitto_subscribe(m->mosq, NULL, filter, qos);
  update_events(m);
  return rc == MOSQ_ERR_SUCCESS ? 0 : -1;
}

static int drv_publish(bench_t *b, bench_client_t *cl, const void *payload, size_t len, int qos) {
  (void)b;
  m_client_t *m = cl->drv;
  if (m->dead) return -1;
  int rc = mosquitto_publish(m->mosq, NULL, cl->topic, (int)len, payload, qos, false);
  update_events(m);
  return rc == MOSQ_ERR_SUCCESS ? 0 : -1;
}

static void release(m_client_t *m) {
  bench_client_t *cl = m->cl;
  if (m->mosq) {
    /* DISCONNECT goes out at once: outside a callback libmosquitto writes
     * immediately, then closes the socket. */
    if (!m->dead) mosquitto_disconnect(m->mosq);
    mosquitto_destroy(m->mosq);
  }
  cl->drv = NULL;
  free(m);
  bench_on_closed(cl->bench, cl);
}

static void on_poll_closed(uv_handle_t *h) {
  release(h->data);
}

static void drv_close(bench_t *b, bench_client_t *cl) {
  m_client_t *m = cl->drv;
  if (m == NULL) {
    bench_on_closed(b, cl);
    return;
  }
  m->closing = 1;
  /* The poll handle goes first: libuv must stop watching a descriptor
   * before anyone closes it. */
  if (m->poll_open)
    uv_close((uv_handle_t *)&m->poll, on_poll_closed);
  else
    release(m);
}

static void drv_teardown(bench_t *b) {
  driver_state_t *ds = b->drv_state;
  uv_close((uv_handle_t *)&ds->misc, NULL);
  uv_run(b->loop, UV_RUN_NOWAIT);
  mosquitto_lib_cleanup();
}

static const bench_driver_t driver = {
    .name = "mosquitto",
    .loop_model = "libuv loop, one thread: uv_poll on mosquitto_socket() driving "
                  "mosquitto_loop_read/write, loop_misc every second",
    .threaded = 0,
    .setup = drv_setup,
    .connect = drv_connect,
    .subscribe = drv_subscribe,
    .publish = drv_publish,
    .close = drv_close,
    .teardown = drv_teardown,
    .ws_unsupported = "libmosquitto has no WebSocket client",
};

int main(int argc, char **argv) {
  bench_opts_t o;
  unsigned cmds = (1u << BENCH_CONN) | (1u << BENCH_PUB) | (1u << BENCH_SUB) | (1u << BENCH_PUBSUB);
  int rc = bench_parse_options(argc, argv, "uvmqtt-bench-mosquitto", cmds, &o);
  if (rc != 0) return rc < 0 ? 2 : 0;
  static driver_state_t ds;
  return bench_main(&o, &driver, &ds);
}
