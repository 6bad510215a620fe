/* MQTT 5 pieces against a scripted broker that shows what the client sent:
 * properties on UNSUBSCRIBE. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_broker.h"
#include "uvmqtt.h"

typedef struct {
  uv_loop_t loop;
  fake_broker_t fb;
  uvmqtt_client_t client;
  uv_timer_t watchdog;
  int unsubscribes;
  uint32_t user_count;
  char user_key[16], user_value[16];
  int unsuback_calls;
  int unsuback_status;
  uint8_t unsuback_reason;
  int closed;
} vx_t;

static void vx_packet(fake_broker_t *fb, fake_conn_t *conn, const uvmqtt_packet_t *pkt) {
  vx_t *x = fb->data;
  if (pkt->type != UVMQTT_UNSUBSCRIBE) {
    fake_default_answer(conn, pkt);
    return;
  }
  x->unsubscribes++;
  x->user_count = pkt->props.user_count;
  size_t off = 0;
  uvmqtt_prop_t pr;
  while (uvmqtt_props_next(pkt->props.raw, &off, &pr) == 1) {
    if (pr.id != UVMQTT_PROP_USER_PROPERTY) continue;
    snprintf(x->user_key, sizeof x->user_key, "%.*s", (int)pr.str.len, pr.str.data);
    snprintf(x->user_value, sizeof x->user_value, "%.*s", (int)pr.value.len, pr.value.data);
  }
  static const uint8_t codes[] = {0x11}; /* no subscription existed */
  uvmqtt_packet_t a;
  memset(&a, 0, sizeof a);
  a.type = UVMQTT_UNSUBACK;
  a.packet_id = pkt->packet_id;
  a.u.suback.codes = codes;
  a.u.suback.count = 1;
  ck_assert_int_eq(fake_send_packet(conn, &a), 0);
}

static void vx_closed(uvmqtt_client_t *c) {
  ((vx_t *)c->data)->closed++;
}

static void vx_unsuback(uvmqtt_client_t *c, int status, const uint8_t *reasons, size_t count,
                        void *arg) {
  vx_t *x = c->data;
  (void)arg;
  x->unsuback_calls++;
  x->unsuback_status = status;
  if (count == 1) x->unsuback_reason = reasons[0];
  uvmqtt_close(c, vx_closed);
  fake_broker_stop(&x->fb);
  uv_close((uv_handle_t *)&x->watchdog, NULL);
}

static void vx_connect(uvmqtt_client_t *c, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  ck_assert_int_eq(status, 0);
  const char *filters[] = {"a/b"};
  uvmqtt_user_prop_t up = {{(const uint8_t *)"why", 3}, {(const uint8_t *)"done", 4}};
  uvmqtt_props_t props;
  memset(&props, 0, sizeof props);
  /* UNSUBSCRIBE carries user properties only. */
  props.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS;
  props.topic_alias = 1;
  ck_assert_int_eq(uvmqtt_unsubscribe_props(c, filters, 1, &props, vx_unsuback, NULL),
                   UVMQTT_EBADPROP);
  memset(&props, 0, sizeof props);
  props.user = &up;
  props.user_count = 1;
  ck_assert_int_eq(uvmqtt_unsubscribe_props(c, filters, 1, &props, vx_unsuback, NULL), 0);
}

static void vx_watchdog(uv_timer_t *t) {
  (void)t;
  ck_abort_msg("scenario did not finish in time");
}

START_TEST(v5_unsubscribe_with_user_properties) {
  vx_t *x = calloc(1, sizeof *x);
  ck_assert_int_eq(uv_loop_init(&x->loop), 0);
  x->fb.data = x;
  ck_assert_int_eq(fake_broker_start(&x->fb, &x->loop, vx_packet), 0);
  uv_timer_init(&x->loop, &x->watchdog);
  uv_timer_start(&x->watchdog, vx_watchdog, 8000, 0);
  char uri[64];
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%d", x->fb.port);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.version = UVMQTT_V5;
  o.no_reconnect = 1;
  uvmqtt_callbacks_t cb;
  memset(&cb, 0, sizeof cb);
  cb.on_connect = vx_connect;
  x->client.data = x;
  ck_assert_int_eq(uvmqtt_client_init(&x->loop, &x->client, &o, &cb), 0);
  ck_assert_int_eq(uvmqtt_connect(&x->client), 0);
  ck_assert_int_eq(uv_run(&x->loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(x->unsubscribes, 1);
  ck_assert_uint_eq(x->user_count, 1);
  ck_assert_str_eq(x->user_key, "why");
  ck_assert_str_eq(x->user_value, "done");
  ck_assert_int_eq(x->unsuback_calls, 1);
  ck_assert_int_eq(x->unsuback_status, 0);
  ck_assert_uint_eq(x->unsuback_reason, 0x11);
  ck_assert_int_eq(x->closed, 1);
  ck_assert_int_eq(uv_loop_close(&x->loop), 0);
  free(x);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("v5");
  TCase *tc = tcase_create("props");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, v5_unsubscribe_with_user_properties);
  suite_add_tcase(s, tc);
  return s;
}
