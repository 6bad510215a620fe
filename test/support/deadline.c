/* The deadline scenario of the multi-node suites: see deadline.h. */
#include "deadline.h"

#include <check.h>
#include <stdio.h>
#include <string.h>

#include "scene.h"

/* The callbacks reach the scenario through this: one runs per process. */
static test_deadline_t *dl;

static void finish(void) {
  test_scene.phase = "closing";
  test_peer_close_all(&dl->sub, 1);
  test_peer_close_all(&dl->pub, 1);
}

static void nodes_back(void) {
  dl->phase = TEST_DEADLINE_BACK;
  dl->t_back = test_mono_ms();
  dl->bring_back();
}

static void expire_done(uvmqtt_client_t *c, int status, uint8_t reason, void *arg) {
  (void)c;
  (void)reason;
  (void)arg;
  dl->expire_calls++;
  dl->expire_status = status;
  dl->t_expired = test_mono_ms();
  /* The nodes come back only once the message is gone for good. */
  test_scene_after(200, nodes_back);
}

static void marker_done(uvmqtt_client_t *c, int status, uint8_t reason, void *arg) {
  (void)c;
  (void)reason;
  (void)arg;
  dl->marker_calls++;
  dl->marker_status = status;
}

static void publish(void) {
  test_scene.phase = "publishing while down";
  uvmqtt_publish_opts_t po;
  memset(&po, 0, sizeof po);
  po.qos = 1;
  po.delivery.kind = UVMQTT_DELIVERY_DEADLINE;
  po.delivery.deadline_ms = dl->deadline_ms;
  dl->t_publish = test_mono_ms();
  ck_assert_int_eq(uvmqtt_publish(&dl->pub.c, dl->topic, "expire", 6, &po, expire_done, NULL), 0);
  /* An until-delivered message after it: once it arrives, anything the
   * cluster would deliver has had its chance. */
  po.delivery.kind = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  po.delivery.deadline_ms = 0;
  ck_assert_int_eq(uvmqtt_publish(&dl->pub.c, dl->topic, "marker", 6, &po, marker_done, NULL), 0);
}

/* Once, when the publisher knows it is offline: a message handed to a
 * dying connection is not expirable. */
static void publish_soon(void) {
  dl->phase = TEST_DEADLINE_PUBLISHED;
  test_scene_after(50, publish);
}

void test_deadline_down(void) {
  test_scene.phase = "all nodes down";
  dl->phase = TEST_DEADLINE_DOWN;
  if (!dl->pub.up) publish_soon();
}

static void maybe_start(void) {
  if (dl->phase == TEST_DEADLINE_SETUP && dl->sub.subscribed && dl->pub.connects) {
    dl->phase = TEST_DEADLINE_KILLING;
    dl->kill_all();
  }
}

static void on_subscribed(uvmqtt_client_t *c, int status, const uint8_t *reasons, size_t count,
                          void *arg) {
  (void)c;
  (void)arg;
  ck_assert_int_eq(status, 0);
  ck_assert(count == 1 && reasons[0] == 1);
  dl->sub.subscribed++;
  maybe_start();
}

static void on_connect(uvmqtt_client_t *c, int status, const uvmqtt_connack_t *ack) {
  test_peer_t *p = c->data;
  test_peer_up(p, status, ack);
  if (status != 0) return;
  if (p == &dl->sub && p->connects == 1) test_peer_subscribe(p, dl->topic, on_subscribed);
  maybe_start();
}

static void on_down(uvmqtt_client_t *c, const uvmqtt_disconnect_t *d) {
  test_peer_t *p = c->data;
  test_peer_down(c, d);
  /* A failed retry can report another loss before the publish: once. */
  if (p == &dl->pub && dl->phase == TEST_DEADLINE_DOWN) publish_soon();
}

static void on_message(uvmqtt_client_t *c, const uvmqtt_message_t *m, void *arg) {
  (void)c;
  (void)arg;
  if (m->payload.len == 6 && memcmp(m->payload.data, "expire", 6) == 0) dl->got_expire++;
  if (m->payload.len == 6 && memcmp(m->payload.data, "marker", 6) == 0) {
    dl->got_marker++;
    if (!dl->finishing) {
      dl->finishing = 1;
      dl->t_marker = test_mono_ms();
      /* Anything late would arrive in this second. */
      test_scene_after(1000, finish);
    }
  }
}

void test_deadline_start(test_deadline_t *d) {
  dl = d;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_connect;
  cbs.on_disconnect = on_down;
  cbs.on_message = on_message;
  test_peer_t *peers[2] = {&d->sub, &d->pub};
  for (int i = 0; i < 2; i++) {
    test_peer_t *p = peers[i];
    snprintf(p->id, sizeof p->id, i ? "dl-pub" : "dl-sub");
    const char *list[TEST_PEER_NODES];
    uvmqtt_options_t o;
    test_peer_options(&o, list, i, p->id, 0, &d->policy);
    ck_assert_int_eq(uvmqtt_client_init(&test_scene.loop, &p->c, &o, &cbs), 0);
    p->c.data = p;
    ck_assert_int_eq(uvmqtt_connect(&p->c), 0);
  }
  test_scene.phase = "connecting";
}

void test_deadline_assert(const test_deadline_t *d) {
  ck_assert_int_eq(d->expire_calls, 1);
  ck_assert_int_eq(d->expire_status, UVMQTT_EEXPIRED);
  ck_assert_int_eq(d->marker_calls, 1);
  ck_assert_int_eq(d->marker_status, 0);
  ck_assert_int_ge(d->got_marker, 1);
  ck_assert_int_eq(d->got_expire, 0);
}
