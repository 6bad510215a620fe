/* uvmqtt-bench-paho: the benchmark workloads on Paho C's MQTTAsync.
 *
 * Paho runs its own threads (one sending, one receiving, shared by every
 * client) and calls back from them, which is the only way MQTTAsync is used.
 * The engine's libuv loop keeps the timers (pacing, progress, phases); a
 * recursive mutex serialises the engine between that loop and Paho's
 * threads. Publishing from a completion callback happens on Paho's thread,
 * as an application would do it. */
#include <MQTTAsync.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define DISCONNECT_TIMEOUT_MS 1000

typedef struct {
  MQTTAsync handle;
  bench_client_t *cl;
  int created;
} p_client_t;

typedef struct {
  pthread_mutex_t mutex;
  char uri[300];
  int v5;
} driver_state_t;

static driver_state_t g_ds;

static void drv_lock(bench_t *b) {
  driver_state_t *ds = b->drv_state;
  pthread_mutex_lock(&ds->mutex);
}

static void drv_unlock(bench_t *b) {
  driver_state_t *ds = b->drv_state;
  pthread_mutex_unlock(&ds->mutex);
}

/* ---- Library callbacks (Paho's threads) --------------------------------------------- */

static bench_client_t *cl_of(void *context) {
  return ((p_client_t *)context)->cl;
}

static void on_connected(void *context, MQTTAsync_successData *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_connected(cl->bench, cl);
}

static void on_connected5(void *context, MQTTAsync_successData5 *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_connected(cl->bench, cl);
}

static void on_connect_failed(void *context, MQTTAsync_failureData *r) {
  bench_client_t *cl = cl_of(context);
  fprintf(stderr, "paho connect failed: %d %s\n", r ? r->code : 0,
          r && r->message ? r->message : "");
  bench_on_down(cl->bench, cl, 0);
}

static void on_connect_failed5(void *context, MQTTAsync_failureData5 *r) {
  bench_client_t *cl = cl_of(context);
  fprintf(stderr, "paho connect failed: %d %s\n", r ? r->code : 0,
          r && r->message ? r->message : "");
  bench_on_down(cl->bench, cl, 0);
}

static void on_lost(void *context, char *cause) {
  (void)cause;
  bench_client_t *cl = cl_of(context);
  bench_on_down(cl->bench, cl, 0);
}

static int on_arrived(void *context, char *topic, int topic_len, MQTTAsync_message *msg) {
  (void)topic_len;
  bench_client_t *cl = cl_of(context);
  bench_on_message(cl->bench, cl, msg->payload, (size_t)msg->payloadlen);
  MQTTAsync_freeMessage(&msg);
  MQTTAsync_free(topic);
  return 1;
}

static void on_subscribed(void *context, MQTTAsync_successData *r) {
  bench_client_t *cl = cl_of(context);
  bench_on_subscribed(cl->bench, cl, r == NULL || r->alt.qos < 0x80);
}

static void on_subscribed5(void *context, MQTTAsync_successData5 *r) {
  bench_client_t *cl = cl_of(context);
  bench_on_subscribed(cl->bench, cl, r == NULL || r->reasonCode < 0x80);
}

static void on_subscribe_failed(void *context, MQTTAsync_failureData *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_subscribed(cl->bench, cl, 0);
}

static void on_subscribe_failed5(void *context, MQTTAsync_failureData5 *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_subscribed(cl->bench, cl, 0);
}

static void on_sent(void *context, MQTTAsync_successData *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_published(cl->bench, cl, 1);
}

static void on_sent5(void *context, MQTTAsync_successData5 *r) {
  bench_client_t *cl = cl_of(context);
  bench_on_published(cl->bench, cl, r == NULL || r->reasonCode < 0x80);
}

static void on_send_failed(void *context, MQTTAsync_failureData *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_published(cl->bench, cl, 0);
}

static void on_send_failed5(void *context, MQTTAsync_failureData5 *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_published(cl->bench, cl, 0);
}

static void on_disconnected(void *context, MQTTAsync_successData *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_closed(cl->bench, cl);
}

static void on_disconnected5(void *context, MQTTAsync_successData5 *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_closed(cl->bench, cl);
}

static void on_disconnect_failed(void *context, MQTTAsync_failureData *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_closed(cl->bench, cl);
}

static void on_disconnect_failed5(void *context, MQTTAsync_failureData5 *r) {
  (void)r;
  bench_client_t *cl = cl_of(context);
  bench_on_closed(cl->bench, cl);
}

/* ---- Driver -------------------------------------------------------------------------------- */

static int drv_setup(bench_t *b) {
  driver_state_t *ds = b->drv_state;
  const char *h = b->o->host;
  /* MQTTAsync speaks WebSocket itself ("ws://", "wss://" with a path). */
  const char *scheme = b->o->ws ? (b->o->tls ? "wss" : "ws") : (b->o->tls ? "ssl" : "tcp");
  snprintf(ds->uri, sizeof ds->uri, strchr(h, ':') ? "%s://[%s]:%d%s" : "%s://%s:%d%s", scheme, h,
           b->o->port, b->o->ws ? b->o->ws_path : "");
  ds->v5 = b->o->version == 5;
  return 0;
}

static int drv_connect(bench_t *b, bench_client_t *cl) {
  driver_state_t *ds = b->drv_state;
  p_client_t *p = calloc(1, sizeof *p);
  if (p == NULL) return -1;
  cl->drv = p;
  p->cl = cl;
  MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
  if (ds->v5) co.MQTTVersion = MQTTVERSION_5;
  /* Paho refuses sends beyond this many queued commands, connected or not;
   * the engine's window (-F) is the limit being measured. */
  co.maxBufferedMessages = (int)b->o->inflight + 16;
  int rc = MQTTAsync_createWithOptions(&p->handle, ds->uri, cl->id, MQTTCLIENT_PERSISTENCE_NONE,
                                       NULL, &co);
  if (rc != MQTTASYNC_SUCCESS) {
    fprintf(stderr, "MQTTAsync_create: %s\n", MQTTAsync_strerror(rc));
    return -1;
  }
  p->created = 1;
  MQTTAsync_setCallbacks(p->handle, p, on_lost, on_arrived, NULL);
  MQTTAsync_connectOptions opts = MQTTAsync_connectOptions_initializer;
  MQTTAsync_connectOptions opts5 = MQTTAsync_connectOptions_initializer5;
  MQTTAsync_connectOptions *o = ds->v5 ? &opts5 : &opts;
  o->keepAliveInterval = b->o->keepalive;
  o->maxInflight = (int)b->o->inflight;
  o->context = p;
  MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
  if (b->o->tls) {
    ssl.trustStore = b->o->cafile;
    ssl.enableServerCertAuth = !b->o->insecure;
    ssl.verify = !b->o->insecure; /* the host name */
    o->ssl = &ssl;
  }
  if (ds->v5) {
    o->cleanstart = 1;
    o->onSuccess5 = on_connected5;
    o->onFailure5 = on_connect_failed5;
  } else {
    o->cleansession = 1;
    o->onSuccess = on_connected;
    o->onFailure = on_connect_failed;
  }
  rc = MQTTAsync_connect(p->handle, o);
  if (rc != MQTTASYNC_SUCCESS) {
    fprintf(stderr, "MQTTAsync_connect: %s\n", MQTTAsync_strerror(rc));
    return -1;
  }
  return 0;
}

static void response_options(driver_state_t *ds, MQTTAsync_responseOptions *r, p_client_t *p,
                             MQTTAsync_onSuccess *ok, MQTTAsync_onFailure *fail,
                             MQTTAsync_onSuccess5 *ok5, MQTTAsync_onFailure5 *fail5) {
  MQTTAsync_responseOptions init = MQTTAsync_responseOptions_initializer;
  *r = init;
  r->context = p;
  if (ds->v5) {
    r->onSuccess5 = ok5;
    r->onFailure5 = fail5;
  } else {
    r->onSuccess = ok;
    r->onFailure = fail;
  }
}

static int drv_subscribe(bench_t *b, bench_client_t *cl, const char *filter, int qos) {
  p_client_t *p = cl->drv;
  MQTTAsync_responseOptions r;
  response_options(b->drv_state, &r, p, on_subscribed, on_subscribe_failed, on_subscribed5,
                   on_subscribe_failed5);
  int rc = MQTTAsync_subscribe(p->handle, filter, qos, &r);
  return rc == MQTTASYNC_SUCCESS ? 0 : -1;
}

static int drv_publish(bench_t *b, bench_client_t *cl, const void *payload, size_t len, int qos) {
  p_client_t *p = cl->drv;
  MQTTAsync_responseOptions r;
  response_options(b->drv_state, &r, p, on_sent, on_send_failed, on_sent5, on_send_failed5);
  int rc = MQTTAsync_send(p->handle, cl->topic, (int)len, payload, qos, 0, &r);
  static int reported;
  if (rc != MQTTASYNC_SUCCESS && !reported++)
    fprintf(stderr, "MQTTAsync_send: %s (reported once)\n", MQTTAsync_strerror(rc));
  return rc == MQTTASYNC_SUCCESS ? 0 : -1;
}

static void drv_close(bench_t *b, bench_client_t *cl) {
  driver_state_t *ds = b->drv_state;
  p_client_t *p = cl->drv;
  if (p == NULL || !p->created || !MQTTAsync_isConnected(p->handle)) {
    bench_on_closed(b, cl);
    return;
  }
  MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
  MQTTAsync_disconnectOptions d5 = MQTTAsync_disconnectOptions_initializer5;
  MQTTAsync_disconnectOptions *o = ds->v5 ? &d5 : &d;
  o->timeout = DISCONNECT_TIMEOUT_MS;
  o->context = p;
  if (ds->v5) {
    o->onSuccess5 = on_disconnected5;
    o->onFailure5 = on_disconnect_failed5;
  } else {
    o->onSuccess = on_disconnected;
    o->onFailure = on_disconnect_failed;
  }
  if (MQTTAsync_disconnect(p->handle, o) != MQTTASYNC_SUCCESS) bench_on_closed(b, cl);
}

/* Handles are destroyed here, on the main thread, once Paho will call no
 * more callbacks for them. */
static void drv_teardown(bench_t *b) {
  for (uint32_t i = 0; i < b->nclients; i++) {
    p_client_t *p = b->clients[i].drv;
    if (p == NULL) continue;
    if (p->created) MQTTAsync_destroy(&p->handle);
    free(p);
    b->clients[i].drv = NULL;
  }
}

static const bench_driver_t driver = {
    .name = "paho",
    .loop_model = "Paho MQTTAsync threads (callbacks on Paho's threads); libuv loop for "
                  "timers, engine serialised by a mutex",
    .threaded = 1,
    .setup = drv_setup,
    .connect = drv_connect,
    .subscribe = drv_subscribe,
    .publish = drv_publish,
    .close = drv_close,
    .teardown = drv_teardown,
    .lock = drv_lock,
    .unlock = drv_unlock,
    .ifaddr_unsupported = "MQTTAsync has no option to bind a local address",
};

int main(int argc, char **argv) {
  bench_opts_t o;
  unsigned cmds = (1u << BENCH_CONN) | (1u << BENCH_PUB) | (1u << BENCH_SUB) | (1u << BENCH_PUBSUB);
  int rc = bench_parse_options(argc, argv, "uvmqtt-bench-paho", cmds, &o);
  if (rc != 0) return rc < 0 ? 2 : 0;
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  /* Recursive: an engine call may publish, and a library that completes a
   * publish inside the call would re-enter the engine on the same thread. */
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(&g_ds.mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  rc = bench_main(&o, &driver, &g_ds);
  pthread_mutex_destroy(&g_ds.mutex);
  return rc;
}
