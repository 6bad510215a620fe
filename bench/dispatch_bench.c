/* How a received message finds its subscription's callback among 10,000
 * subscriptions: by matching the topic against every stored filter, or, with
 * sub_id_dispatch, by the Subscription Identifier the client gave the
 * subscription (a hash lookup). Prints ns per lookup for both.
 *
 *   uvmqtt-dispatch-bench [SUBSCRIPTIONS]   (default 10000)
 *
 * The clients stay offline: the subscriptions are stored and their
 * SUBSCRIBEs queued, which is all dispatch needs. No traffic. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/client_impl.h"

static void on_message(uvmqtt_client_t *c, const uvmqtt_message_t *m, void *arg) {
  (void)c;
  (void)m;
  (void)arg;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 10000;
  if (n <= 0 || n > 1000000) {
    fprintf(stderr, "usage: uvmqtt-dispatch-bench [SUBSCRIPTIONS]\n");
    return 2;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = "mqtt://127.0.0.1:1";
  o.version = UVMQTT_V5;
  o.sub_id_dispatch = 1;
  o.max_queued = (uint32_t)n + 16;
  uvmqtt_client_t client;
  if (uvmqtt_client_init(&loop, &client, &o, NULL) != 0) return 1;
  uvmqtt__client_t *c = client.impl;
  char filter[64], topic[64];
  for (int i = 0; i < n; i++) {
    snprintf(filter, sizeof filter, "site/%d/+/temp", i);
    uvmqtt_topic_sub_t sub = {{(const uint8_t *)filter, (uint32_t)strlen(filter)}, 0};
    if (uvmqtt_subscribe(&client, &sub, 1, NULL, on_message, NULL, NULL) != 0) return 1;
  }
  /* Topics spread over every subscription, so a filter walk goes half way
   * on average, as it would for messages of every kind. */
  unsigned seed = 1;
  int match_rounds = 20000, id_rounds = 2000000;
  volatile uintptr_t sink = 0;
  double t0 = now_s();
  for (int r = 0; r < match_rounds; r++) {
    seed = seed * 1103515245u + 12345u;
    int i = (int)(seed % (unsigned)n);
    int len = snprintf(topic, sizeof topic, "site/%d/room/temp", i);
    uvmqtt_bytes_t t = {(const uint8_t *)topic, (uint32_t)len};
    sink += (uintptr_t)uvmqtt__subs_match(c, t);
  }
  double match_ns = (now_s() - t0) / match_rounds * 1e9;
  t0 = now_s();
  for (int r = 0; r < id_rounds; r++) {
    seed = seed * 1103515245u + 12345u;
    uint32_t id = seed % (unsigned)n + 1;
    sink += (uintptr_t)uvmqtt__subs_by_id(c, id);
  }
  double id_ns = (now_s() - t0) / id_rounds * 1e9;
  printf("%d subscriptions: filter matching %.0f ns per message, subscription identifier %.1f ns "
         "per message (%.0fx)\n",
         n, match_ns, id_ns, id_ns > 0 ? match_ns / id_ns : 0.0);
  uvmqtt_close(&client, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return sink == 1 ? 3 : 0;
}
