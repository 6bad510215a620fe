/* uvmqtt-bench: the uvmqtt driver of the benchmark harness, plus the raw TCP
 * baseline. Usage: uvmqtt-bench conn|pub|sub|pubsub|raw [options]. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "uvmqtt.h"

/* Poll period while waiting for graceful disconnects to finish, and how long
 * one may take before the client is closed anyway. */
#define CLOSE_POLL_MS 5
#define CLOSE_WAIT_NS (2000ull * 1000 * 1000)

typedef struct {
  uvmqtt_client_t client;
  uint8_t disconnecting;
  uint64_t disconnect_ns;
} uv_client_t;

typedef struct {
  uv_timer_t close_poll;
  uint32_t disconnecting;
  uvmqtt_backoff_t backoff;
  uvmqtt_tls_options_t tls;
  char uri[300];
} driver_state_t;

/* ---- Counting allocator ---------------------------------------------------------- */

/* Live bytes the library holds. The benchmark is single-threaded, so a
 * plain counter is exact. malloc_usable_size counts what each block really
 * costs, not only what was asked for. */
static size_t g_lib_live;

static void *count_malloc(size_t n) {
  void *p = malloc(n);
  if (p) g_lib_live += malloc_usable_size(p);
  return p;
}

static void *count_calloc(size_t count, size_t n) {
  void *p = calloc(count, n);
  if (p) g_lib_live += malloc_usable_size(p);
  return p;
}

static void *count_realloc(void *old, size_t n) {
  size_t before = old ? malloc_usable_size(old) : 0;
  void *p = realloc(old, n);
  if (p) g_lib_live = g_lib_live - before + malloc_usable_size(p);
  return p;
}

static void count_free(void *p) {
  if (p) g_lib_live -= malloc_usable_size(p);
  free(p);
}

static size_t lib_heap(void) {
  return g_lib_live;
}

/* ---- Library callbacks -------------------------------------------------------------- */

static bench_client_t *bench_client_of(uvmqtt_client_t *client) {
  return client->data;
}

static void on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  bench_client_t *cl = bench_client_of(client);
  if (status != 0) return;
  /* Which node took the connection: counted per server of -U. */
  const bench_opts_t *o = cl->bench->o;
  for (uint32_t i = 0; o->nuris > 1 && i < o->nuris; i++)
    if (ack->server && strcmp(ack->server, o->uris[i]) == 0) cl->bench->r.node_connects[i]++;
  bench_on_connected(cl->bench, cl);
}

static void on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  bench_client_t *cl = bench_client_of(client);
  bench_on_down(cl->bench, cl, info->will_retry);
}

static void on_message(uvmqtt_client_t *client, const uvmqtt_message_t *msg, void *arg) {
  (void)arg;
  bench_client_t *cl = bench_client_of(client);
  bench_on_message(cl->bench, cl, msg->payload.data, msg->payload.len);
}

static void on_subscribed(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                          void *arg) {
  (void)arg;
  bench_client_t *cl = bench_client_of(client);
  bench_on_subscribed(cl->bench, cl, status == 0 && count >= 1 && reasons[0] < 0x80);
}

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  (void)arg;
  bench_client_t *cl = bench_client_of(client);
  bench_on_published(cl->bench, cl, status == 0 && reason < 0x80);
}

static void on_closed(uvmqtt_client_t *client) {
  bench_client_t *cl = bench_client_of(client);
  bench_on_closed(cl->bench, cl);
}

static const uvmqtt_callbacks_t callbacks = {
    .on_connect = on_connect, .on_disconnect = on_disconnect, .on_message = on_message};

/* ---- Driver ------------------------------------------------------------------------------- */

static int drv_setup(bench_t *b) {
  driver_state_t *ds = b->drv_state;
  const char *h = b->o->host;
  const char *scheme = b->o->ws ? (b->o->tls ? "wss" : "ws") : (b->o->tls ? "mqtts" : "mqtt");
  snprintf(ds->uri, sizeof ds->uri, strchr(h, ':') ? "%s://[%s]:%d%s" : "%s://%s:%d%s", scheme, h,
           b->o->port, b->o->ws ? b->o->ws_path : "");
  ds->tls.ca_file = b->o->cafile;
  ds->tls.insecure = (uint8_t)b->o->insecure;
  /* A few quick retries, so a refused connection ends the run instead of
   * backing off for minutes. */
  ds->backoff.min_ms = 200;
  ds->backoff.max_ms = 2000;
  ds->backoff.max_attempts = 3;
  uv_timer_init(b->loop, &ds->close_poll);
  ds->close_poll.data = b;
  return 0;
}

static int drv_connect(bench_t *b, bench_client_t *cl) {
  driver_state_t *ds = b->drv_state;
  uv_client_t *u = calloc(1, sizeof *u);
  if (u == NULL) return UVMQTT_ENOMEM;
  cl->drv = u;
  uvmqtt_options_t opts;
  uvmqtt_options_init(&opts);
  opts.uri = ds->uri;
  /* Several servers: client k starts on server k mod n, then goes round
   * the list from there, so the clients spread evenly over a cluster and
   * each can fail over to the other nodes. */
  const char *list[BENCH_MAX_URIS];
  uint32_t n = b->o->nuris;
  if (n > 1) {
    uint32_t k = (uint32_t)(cl - b->clients);
    for (uint32_t i = 0; i < n; i++)
      list[i] = b->o->uris[(k + i) % n];
    opts.uris = list;
    opts.uri_count = n;
  }
  opts.version = b->o->version == 5 ? UVMQTT_V5 : UVMQTT_V311;
  opts.client_id = cl->id;
  opts.keepalive = (uint16_t)b->o->keepalive;
  opts.reconnect.fn = uvmqtt_reconnect_backoff;
  opts.reconnect.state = &ds->backoff;
  if (b->o->tls) opts.tls = &ds->tls;
  opts.bind_address = cl->bind_addr;
  int rc = uvmqtt_client_init(b->loop, &u->client, &opts, &callbacks);
  if (rc < 0) {
    fprintf(stderr, "uvmqtt_client_init: %s\n", uvmqtt_strerror(rc));
    free(u);
    cl->drv = NULL;
    return rc;
  }
  u->client.data = cl;
  rc = uvmqtt_connect(&u->client);
  if (rc < 0) fprintf(stderr, "uvmqtt_connect: %s\n", uvmqtt_strerror(rc));
  return rc;
}

static int drv_subscribe(bench_t *b, bench_client_t *cl, const char *filter, int qos) {
  (void)b;
  uv_client_t *u = cl->drv;
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)filter;
  sub.filter.len = (uint32_t)strlen(filter);
  sub.options = UVMQTT_SUB_QOS(qos);
  int rc = uvmqtt_subscribe(&u->client, &sub, 1, NULL, NULL, on_subscribed, NULL);
  if (rc < 0) fprintf(stderr, "uvmqtt_subscribe: %s\n", uvmqtt_strerror(rc));
  return rc;
}

/* Built once, as an application publishing at a fixed QoS would. */
static const uvmqtt_publish_opts_t publish_opts[3] = {{.qos = 0}, {.qos = 1}, {.qos = 2}};

static int drv_publish(bench_t *b, bench_client_t *cl, const void *payload, size_t len, int qos) {
  (void)b;
  uv_client_t *u = cl->drv;
  return uvmqtt_publish(&u->client, cl->topic, payload, len, &publish_opts[qos], on_published,
                        NULL);
}

static void close_now(bench_client_t *cl) {
  uv_client_t *u = cl->drv;
  uvmqtt_close(&u->client, on_closed);
}

/* uvmqtt_disconnect() has no completion callback: the client's stats say
 * when the connection is gone, so closing then loses nothing. */
static void on_close_poll(uv_timer_t *t) {
  bench_t *b = t->data;
  driver_state_t *ds = b->drv_state;
  uint64_t now = bench_now_ns();
  for (uint32_t i = 0; i < b->nclients && ds->disconnecting; i++) {
    bench_client_t *cl = &b->clients[i];
    uv_client_t *u = cl->drv;
    if (u == NULL || !u->disconnecting) continue;
    uvmqtt_stats_t st;
    uvmqtt_client_stats(&u->client, &st);
    if (st.connected && now - u->disconnect_ns < CLOSE_WAIT_NS) continue;
    u->disconnecting = 0;
    ds->disconnecting--;
    close_now(cl);
  }
  if (ds->disconnecting == 0) uv_timer_stop(t);
}

static void drv_close(bench_t *b, bench_client_t *cl) {
  driver_state_t *ds = b->drv_state;
  uv_client_t *u = cl->drv;
  if (u == NULL) {
    bench_on_closed(b, cl);
    return;
  }
  if (uvmqtt_disconnect(&u->client, 0) < 0) {
    close_now(cl);
    return;
  }
  u->disconnecting = 1;
  u->disconnect_ns = bench_now_ns();
  if (ds->disconnecting++ == 0) uv_timer_start(&ds->close_poll, on_close_poll, 0, CLOSE_POLL_MS);
}

static void drv_teardown(bench_t *b) {
  driver_state_t *ds = b->drv_state;
  if (!uv_is_closing((uv_handle_t *)&ds->close_poll))
    uv_close((uv_handle_t *)&ds->close_poll, NULL);
  uv_run(b->loop, UV_RUN_NOWAIT);
  for (uint32_t i = 0; i < b->nclients; i++) {
    /* Only clients that never reached their close callback still hold
     * memory: after a forced stop they are left for the process exit. */
    if (b->clients[i].state == BENCH_CL_CLOSED) free(b->clients[i].drv);
    b->clients[i].drv = NULL;
  }
}

static const bench_driver_t driver = {
    .name = "uvmqtt",
    .loop_model = "libuv loop, one thread, uvmqtt callbacks",
    .threaded = 0,
    .setup = drv_setup,
    .connect = drv_connect,
    .subscribe = drv_subscribe,
    .publish = drv_publish,
    .close = drv_close,
    .teardown = drv_teardown,
    .lib_heap = lib_heap,
};

int main(int argc, char **argv) {
  bench_opts_t o;
  unsigned all = (1u << BENCH_CONN) | (1u << BENCH_PUB) | (1u << BENCH_SUB) | (1u << BENCH_PUBSUB) |
                 (1u << BENCH_RAW);
  int rc = bench_parse_options(argc, argv, "uvmqtt-bench", all, &o);
  if (rc != 0) return rc < 0 ? 2 : 0;
  if (o.cmd == BENCH_RAW) return bench_raw_run(&o);
  /* A write to a server that just died (a cluster node failing over) must
   * fail with EPIPE, not end the run. */
  signal(SIGPIPE, SIG_IGN);
  uvmqtt_replace_allocator(count_malloc, count_realloc, count_calloc, count_free);
  static driver_state_t ds;
  return bench_main(&o, &driver, &ds);
}
