/* The failover scenario of the multi-node suites: see failover.h. */
#include "failover.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scene.h"

/* The callbacks reach the scenario through this: one runs per process. */
static test_failover_t *fo;

int test_failover_msgs(const test_failover_t *f) {
  return f->pubs_n * f->per_pub;
}

void test_failover_finish(void) {
  test_scene.phase = "closing";
  test_scene_stop_timers();
  test_peer_close_all(fo->pubs, fo->pubs_n);
  test_peer_close_all(fo->subs, fo->subs_n);
}

test_failover_poll_t test_failover_poll(test_failover_t *f) {
  test_failover_poll_t s = {0, 0, 0, 1};
  for (int i = 0; i < f->pubs_n; i++) {
    s.done += f->pubs[i].done;
    s.up += f->pubs[i].up;
  }
  for (int j = 0; j < f->subs_n; j++) {
    s.complete += f->subs[j].unique == test_failover_msgs(f);
    s.all_up &= f->subs[j].up;
  }
  /* A line every 5 s, for a run that stalls. */
  if (++f->checks % 50 == 0) {
    printf("%s: %llu ms: %d published, %d acknowledged, %d publishers up; subscribers:", f->label,
           (unsigned long long)(test_mono_ms() - f->t_start), f->published, s.done, s.up);
    for (int j = 0; j < f->subs_n; j++)
      printf(" %d%s@%d", f->subs[j].unique, f->subs[j].up ? "" : "(down)", f->subs[j].node + 1);
    printf("\n");
    fflush(stdout);
  }
  if (s.done == test_failover_msgs(f) && f->t_published == 0) f->t_published = test_mono_ms();
  return s;
}

void test_failover_print_missing(const test_failover_t *f, const test_peer_t *p, int most) {
  for (int k = 0, shown = 0; k < test_failover_msgs(f) && shown < most; k++)
    if (!p->seen[k]) printf(" %d/%d", k / f->per_pub, k % f->per_pub), shown++;
  printf("\n");
}

static void on_published(uvmqtt_client_t *c, int status, uint8_t reason, void *arg) {
  (void)reason;
  (void)arg;
  test_peer_published(c->data, status);
}

static void on_tick(uv_timer_t *t) {
  (void)t;
  for (int i = 0; i < fo->pubs_n; i++) {
    test_peer_t *p = &fo->pubs[i];
    if (p->sent == fo->per_pub) continue;
    char topic[64], payload[32];
    snprintf(topic, sizeof topic, "%s/%d", fo->topic, i);
    int len = snprintf(payload, sizeof payload, "%d", i * fo->per_pub + p->sent);
    uvmqtt_publish_opts_t po;
    memset(&po, 0, sizeof po);
    po.qos = 1;
    po.delivery.kind = UVMQTT_DELIVERY_UNTIL_DELIVERED;
    int rc = uvmqtt_publish(&p->c, topic, payload, (size_t)len, &po, on_published, NULL);
    ck_assert_msg(rc == 0, "publish: %s", uvmqtt_err_name(rc));
    p->sent++;
    fo->published++;
  }
  if (fo->published == test_failover_msgs(fo)) uv_timer_stop(&test_scene.tick);
}

static void start_publishing(void) {
  test_scene.phase = "publishing";
  fo->t_start = test_mono_ms();
  uv_timer_start(&test_scene.tick, on_tick, 0, fo->tick_ms);
  uv_timer_start(&test_scene.check, fo->check, 100, 100);
  fo->on_publishing();
}

static void on_pub_connect(uvmqtt_client_t *c, int status, const uvmqtt_connack_t *ack) {
  test_peer_t *p = c->data;
  test_peer_up(p, status, ack);
  if (status == 0 && p->connects == 1 && ++fo->pubs_ready == fo->pubs_n) start_publishing();
}

/* Each client listed from node `i % 3` on, so the nodes share them. */
static void connect_all(test_peer_t *peers, int n, const char *kind,
                        const uvmqtt_callbacks_t *cbs) {
  for (int i = 0; i < n; i++) {
    test_peer_t *p = &peers[i];
    const char *list[TEST_PEER_NODES];
    uvmqtt_options_t o;
    snprintf(p->id, sizeof p->id, "fo-%s-%d", kind, i);
    test_peer_options(&o, list, i % 3, p->id, 0, &fo->policy);
    ck_assert_int_eq(uvmqtt_client_init(&test_scene.loop, &p->c, &o, cbs), 0);
    p->c.data = p;
    ck_assert_int_eq(uvmqtt_connect(&p->c), 0);
  }
}

static void start_publishers(void) {
  test_scene.phase = "publishers connecting";
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_pub_connect;
  cbs.on_disconnect = test_peer_down;
  connect_all(fo->pubs, fo->pubs_n, "pub", &cbs);
}

static void on_subscribed(uvmqtt_client_t *c, int status, const uint8_t *reasons, size_t count,
                          void *arg) {
  (void)c;
  test_peer_t *p = arg;
  ck_assert_int_eq(status, 0);
  ck_assert(count == 1 && reasons[0] == 1);
  p->subscribed++;
  if (++fo->subs_ready == fo->subs_n) start_publishers();
}

static void on_sub_connect(uvmqtt_client_t *c, int status, const uvmqtt_connack_t *ack) {
  test_peer_t *p = c->data;
  test_peer_up(p, status, ack);
  /* Subscribed once: after that the cluster keeps the subscription in the
   * session, and the client subscribes again by itself where a node
   * answers without the session. */
  if (status == 0 && p->connects == 1) {
    char filter[64];
    snprintf(filter, sizeof filter, "%s/#", fo->topic);
    test_peer_subscribe(p, filter, on_subscribed);
  }
}

static void on_message(uvmqtt_client_t *c, const uvmqtt_message_t *m, void *arg) {
  (void)arg;
  test_peer_count(c->data, test_peer_payload_number(m), test_failover_msgs(fo));
}

void test_failover_start(test_failover_t *f) {
  fo = f;
  f->pubs = calloc((size_t)f->pubs_n, sizeof *f->pubs);
  f->subs = calloc((size_t)f->subs_n, sizeof *f->subs);
  ck_assert(f->pubs != NULL && f->subs != NULL);
  for (int j = 0; j < f->subs_n; j++) {
    f->subs[j].seen = calloc((size_t)test_failover_msgs(f), 1);
    ck_assert_ptr_nonnull(f->subs[j].seen);
  }
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_sub_connect;
  cbs.on_disconnect = test_peer_down;
  cbs.on_message = on_message;
  connect_all(f->subs, f->subs_n, "sub", &cbs);
  test_scene.phase = "subscribers connecting";
}

void test_failover_free(test_failover_t *f) {
  for (int j = 0; j < f->subs_n; j++)
    free(f->subs[j].seen);
  free(f->pubs);
  free(f->subs);
  f->pubs = f->subs = NULL;
}
