/* The publisher of the store suite's crash loop, built on the public API
 * only: it opens the file store, connects with a fixed client id and
 * clean_start 0, waits until the messages restored from an earlier run are
 * acknowledged, then publishes numbered UNTIL_DELIVERED messages
 * "r<run>:<n>" with at most WINDOW unacknowledged. Each message the store
 * reports durable (on_stored, status 0) is appended as a line to LOG, so the
 * test knows which messages must arrive.
 *
 *   store_crash_pub PORT DIR CLIENT_ID QOS RUN MODE LOG
 *
 * MODE "kill": publishes until killed (exits 3 if it reaches LIMIT first).
 * MODE "drain": publishes DRAIN_COUNT, exits 0 once everything is
 * acknowledged, after closing the client and the store. Other exits: 2 bad
 * arguments or store, 4 a store error, 5 a failed publish, 6 time out. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "uvmqtt.h"

#define WINDOW      10
#define LIMIT       5000
#define DRAIN_COUNT 10
#define PUMP_MS     5
#define MAX_RUN_MS  60000

typedef struct {
  uv_loop_t *loop;
  uvmqtt_client_t client;
  uvmqtt_store_t *store;
  uv_timer_t pump;
  uv_timer_t limit;
  uvmqtt_backoff_t backoff;
  char topic[32];
  int qos;
  int run;
  int drain;
  int log_fd;
  int started;
  int restored_acked;
  unsigned next;
  unsigned outstanding;
  int exit_code;
} pub_t;

static pub_t g;

static void on_store_closed(void *arg) {
  (void)arg;
}

static void on_client_closed(uvmqtt_client_t *client) {
  (void)client;
  g.store->close(g.store->state, on_store_closed, NULL);
  uv_close((uv_handle_t *)&g.pump, NULL);
  uv_close((uv_handle_t *)&g.limit, NULL);
}

static void finish(int code) {
  if (g.exit_code < 0) g.exit_code = code;
  uv_timer_stop(&g.pump);
  uvmqtt_close(&g.client, on_client_closed);
}

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  (void)client;
  g.outstanding--;
  if (status != 0 || reason >= 0x80) {
    fprintf(stderr, "store_crash_pub: r%d:%u failed: %s (reason 0x%02x)\n", g.run,
            (unsigned)(uintptr_t)arg, uvmqtt_strerror(status), reason);
    finish(5);
  }
}

static void on_stored(uvmqtt_client_t *client, int status, void *arg) {
  (void)client;
  if (status != 0) {
    fprintf(stderr, "store_crash_pub: store: %s\n", uvmqtt_strerror(status));
    finish(4);
    return;
  }
  char line[32];
  int n = snprintf(line, sizeof line, "r%d:%u\n", g.run, (unsigned)(uintptr_t)arg);
  /* One write on an O_APPEND descriptor: a kill leaves whole lines. */
  if (write(g.log_fd, line, (size_t)n) != n) finish(4);
}

static void pump(uv_timer_t *t) {
  (void)t;
  uvmqtt_stats_t st;
  uvmqtt_client_stats(&g.client, &st);
  if (!g.restored_acked) {
    /* Restored messages first, so the broker never sees more than about
     * WINDOW unacknowledged messages from this client. */
    if (st.queued != 0 || st.inflight != 0) return;
    g.restored_acked = 1;
  }
  unsigned limit = g.drain ? DRAIN_COUNT : LIMIT;
  while (g.outstanding < WINDOW && g.next < limit) {
    char payload[32];
    int n = snprintf(payload, sizeof payload, "r%d:%u", g.run, g.next);
    uvmqtt_publish_opts_t po;
    memset(&po, 0, sizeof po);
    po.qos = (uint8_t)g.qos;
    po.delivery.kind = UVMQTT_DELIVERY_UNTIL_DELIVERED;
    int rc = uvmqtt_publish(&g.client, g.topic, payload, (size_t)n, &po, on_published,
                            (void *)(uintptr_t)g.next);
    if (rc != 0) {
      fprintf(stderr, "store_crash_pub: publish: %s\n", uvmqtt_strerror(rc));
      finish(5);
      return;
    }
    g.outstanding++;
    g.next++;
  }
  if (g.next == limit && g.outstanding == 0 && st.queued == 0 && st.inflight == 0)
    finish(g.drain ? 0 : 3);
}

static void on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)client;
  (void)ack;
  if (status != 0 || g.started) return;
  g.started = 1;
  uv_timer_start(&g.pump, pump, 0, PUMP_MS);
}

static void on_limit(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "store_crash_pub: run %d did not finish in time\n", g.run);
  finish(6);
}

int main(int argc, char **argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: store_crash_pub PORT DIR CLIENT_ID QOS RUN kill|drain LOG\n");
    return 2;
  }
  memset(&g, 0, sizeof g);
  g.exit_code = -1;
  g.loop = uv_default_loop();
  g.qos = atoi(argv[4]);
  g.run = atoi(argv[5]);
  g.drain = strcmp(argv[6], "drain") == 0;
  snprintf(g.topic, sizeof g.topic, "store/crash/q%d", g.qos);
  g.log_fd = open(argv[7], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int rc = uvmqtt_file_store_open(g.loop, argv[2], argv[3], NULL, &g.store);
  if (g.log_fd < 0 || rc != 0) {
    fprintf(stderr, "store_crash_pub: cannot open the store or log: %s\n", uvmqtt_strerror(rc));
    return 2;
  }
  char uri[64];
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%s", argv[1]);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.client_id = argv[3];
  o.clean_start = 0;
  o.store = g.store;
  g.backoff.min_ms = 50;
  o.reconnect.fn = uvmqtt_reconnect_fixed;
  o.reconnect.state = &g.backoff;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_connect;
  cbs.on_stored = on_stored;
  rc = uvmqtt_client_init(g.loop, &g.client, &o, &cbs);
  if (rc == 0) rc = uvmqtt_connect(&g.client);
  if (rc != 0) {
    fprintf(stderr, "store_crash_pub: client: %s\n", uvmqtt_strerror(rc));
    return 2;
  }
  uv_timer_init(g.loop, &g.pump);
  uv_timer_init(g.loop, &g.limit);
  uv_timer_start(&g.limit, on_limit, MAX_RUN_MS, 0);
  uv_run(g.loop, UV_RUN_DEFAULT);
  close(g.log_fd);
  uv_loop_close(g.loop);
  return g.exit_code;
}
