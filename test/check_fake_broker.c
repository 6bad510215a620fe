/* The client against a scripted fake broker: faults and protocol corners a
 * real broker will not produce on demand. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "fake_broker.h"
#include "uvmqtt.h"

typedef struct {
  uv_loop_t loop;
  fake_broker_t fb;
  uvmqtt_client_t client;
  uv_timer_t watchdog;
  uv_timer_t ack_timer;
  uint8_t version;
  /* Script knobs. */
  int silent;                 /* never answer PINGREQ */
  int no_connack;             /* never answer CONNECT */
  const uint8_t *connack_raw; /* answer CONNECT with these bytes instead */
  size_t connack_raw_len;
  uvmqtt_props_t connack_props;
  uint8_t session_present;
  int ack_form;   /* v5 PUBACK encoding under test */
  int delay_acks; /* ack PUBLISH from a timer, one at a time */
  /* Observations. */
  int connects;
  int disconnects;
  int last_disc_status;
  int connect_status;
  int published;
  int publish_status[64];
  uint8_t publish_reason[64];
  int messages;
  char topics[8][64];
  int broker_publishes;
  int broker_pingreqs;
  int broker_pubcomps;
  int broker_subscribes;
  int broker_disconnect_reason;
  int dup_seen;
  uint16_t first_id;
  uint16_t unacked[64];
  int nunacked;
  int max_unacked;
  uint64_t t_connected;
  uint64_t t_lost;
  int closed;
  int stop_after_publishes;
  int close_in_message;
  fake_conn_t *conn;
} fx_t;

static fx_t *fx_of_client(uvmqtt_client_t *c) {
  return c->data;
}

static void on_client_closed(uvmqtt_client_t *c) {
  fx_of_client(c)->closed++;
}

static void on_handle_closed(uv_handle_t *h) {
  (void)h;
}

static void finish(fx_t *f) {
  uvmqtt_close(&f->client, on_client_closed);
  fake_broker_stop(&f->fb);
  uv_timer_stop(&f->watchdog);
  if (!uv_is_closing((uv_handle_t *)&f->watchdog))
    uv_close((uv_handle_t *)&f->watchdog, on_handle_closed);
  if (!uv_is_closing((uv_handle_t *)&f->ack_timer))
    uv_close((uv_handle_t *)&f->ack_timer, on_handle_closed);
}

static void on_watchdog(uv_timer_t *t) {
  (void)t;
  ck_abort_msg("scenario did not finish in time");
}

static void send_ack(fx_t *f, uint8_t type, uint16_t id, uint8_t reason) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = type;
  p.packet_id = id;
  p.reason = reason;
  ck_assert_int_eq(fake_send_packet(f->conn, &p), 0);
}

/* The four encodings of a v5 PUBACK a broker may choose. */
static void send_puback_form(fx_t *f, uint16_t id, int form) {
  uint8_t b[32];
  size_t n = 0;
  b[n++] = 0x40;
  switch (form) {
  case 0:
    b[n++] = 2;
    b[n++] = (uint8_t)(id >> 8);
    b[n++] = (uint8_t)id;
    break;
  case 1:
    b[n++] = 3;
    b[n++] = (uint8_t)(id >> 8);
    b[n++] = (uint8_t)id;
    b[n++] = 0x10;
    break;
  case 2:
    b[n++] = 4;
    b[n++] = (uint8_t)(id >> 8);
    b[n++] = (uint8_t)id;
    b[n++] = 0x10;
    b[n++] = 0;
    break;
  default:
    /* reason 0x10 + one user property "k"="v" */
    b[n++] = 11;
    b[n++] = (uint8_t)(id >> 8);
    b[n++] = (uint8_t)id;
    b[n++] = 0x10;
    b[n++] = 7;
    b[n++] = 0x26;
    b[n++] = 0;
    b[n++] = 1;
    b[n++] = 'k';
    b[n++] = 0;
    b[n++] = 1;
    b[n++] = 'v';
    break;
  }
  ck_assert_int_eq(fake_send(f->conn, b, n), 0);
}

static void on_ack_timer(uv_timer_t *t) {
  fx_t *f = t->data;
  if (f->nunacked == 0) return;
  uint16_t id = f->unacked[0];
  memmove(f->unacked, f->unacked + 1, (size_t)(--f->nunacked) * sizeof f->unacked[0]);
  send_ack(f, UVMQTT_PUBACK, id, 0);
}

static void broker_packet(fake_broker_t *fb, fake_conn_t *conn, const uvmqtt_packet_t *pkt) {
  fx_t *f = fb->data;
  f->conn = conn;
  switch (pkt->type) {
  case UVMQTT_CONNECT: {
    if (f->no_connack) return;
    if (f->connack_raw) {
      ck_assert_int_eq(fake_send(conn, f->connack_raw, f->connack_raw_len), 0);
      return;
    }
    uvmqtt_packet_t ack;
    memset(&ack, 0, sizeof ack);
    ack.type = UVMQTT_CONNACK;
    ack.session_present = f->session_present;
    ack.props = f->connack_props;
    ck_assert_int_eq(fake_send_packet(conn, &ack), 0);
    return;
  }
  case UVMQTT_PINGREQ:
    f->broker_pingreqs++;
    if (!f->silent) fake_default_answer(conn, pkt);
    return;
  case UVMQTT_PUBLISH:
    f->broker_publishes++;
    if (pkt->u.publish.dup) f->dup_seen++;
    if (f->first_id == 0) f->first_id = pkt->packet_id;
    if (pkt->u.publish.qos == 1) {
      if (f->delay_acks) {
        f->unacked[f->nunacked++] = pkt->packet_id;
        if (f->nunacked > f->max_unacked) f->max_unacked = f->nunacked;
      } else if (f->stop_after_publishes && f->broker_publishes == f->stop_after_publishes) {
        fake_conn_close(conn); /* lose the connection before acking */
      } else if (f->version == UVMQTT_V5) {
        send_puback_form(f, pkt->packet_id, f->ack_form);
      } else {
        send_ack(f, UVMQTT_PUBACK, pkt->packet_id, 0);
      }
    }
    return;
  case UVMQTT_PUBCOMP: f->broker_pubcomps++; return;
  case UVMQTT_SUBSCRIBE: {
    f->broker_subscribes++;
    uint8_t codes[8] = {0};
    uvmqtt_packet_t ack;
    memset(&ack, 0, sizeof ack);
    ack.type = UVMQTT_SUBACK;
    ack.packet_id = pkt->packet_id;
    ack.u.suback.codes = codes;
    ack.u.suback.count = pkt->u.subscribe.count < 8 ? pkt->u.subscribe.count : 8;
    ck_assert_int_eq(fake_send_packet(conn, &ack), 0);
    return;
  }
  case UVMQTT_DISCONNECT: f->broker_disconnect_reason = pkt->reason; return;
  default: return;
  }
}

static void client_connect_cb(uvmqtt_client_t *c, int status, const uvmqtt_connack_t *ack) {
  fx_t *f = fx_of_client(c);
  (void)ack;
  f->connect_status = status;
  if (status == 0) {
    f->connects++;
    f->t_connected = uv_now(&f->loop);
  }
}

static void client_disconnect_cb(uvmqtt_client_t *c, const uvmqtt_disconnect_t *d) {
  fx_t *f = fx_of_client(c);
  f->disconnects++;
  f->last_disc_status = d->status;
  f->t_lost = uv_now(&f->loop);
}

static void client_message_cb(uvmqtt_client_t *c, const uvmqtt_message_t *m, void *arg) {
  fx_t *f = fx_of_client(c);
  (void)arg;
  if (f->messages < 8) {
    size_t n = m->topic.len < 63 ? m->topic.len : 63;
    memcpy(f->topics[f->messages], m->topic.data, n);
    f->topics[f->messages][n] = '\0';
  }
  f->messages++;
  if (f->close_in_message) finish(f);
}

static void publish_cb(uvmqtt_client_t *c, int status, uint8_t reason, void *arg) {
  fx_t *f = fx_of_client(c);
  (void)arg;
  if (f->published < 64) {
    f->publish_status[f->published] = status;
    f->publish_reason[f->published] = reason;
  }
  f->published++;
}

/* Reconnect quickly: the tests wait for the second connection. */
static uvmqtt_backoff_t fast_retry = {20, 50, 0, 0, 1};

static void fx_start(fx_t *f, uint8_t version, uint16_t keepalive, int no_reconnect,
                     const uvmqtt_props_t *connect_props) {
  ck_assert_int_eq(uv_loop_init(&f->loop), 0);
  f->version = version;
  f->fb.data = f;
  ck_assert_int_eq(fake_broker_start(&f->fb, &f->loop, broker_packet), 0);
  uv_timer_init(&f->loop, &f->watchdog);
  uv_timer_start(&f->watchdog, on_watchdog, 8000, 0);
  uv_timer_init(&f->loop, &f->ack_timer);
  f->ack_timer.data = f;

  char uri[64];
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%d", f->fb.port);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.version = version;
  o.client_id = "fake-test";
  o.keepalive = keepalive;
  o.no_reconnect = (uint8_t)no_reconnect;
  o.connect_timeout_ms = 400;
  o.clean_start = 0;
  o.connect_props = connect_props;
  o.reconnect.fn = uvmqtt_reconnect_fixed;
  o.reconnect.state = &fast_retry;
  uvmqtt_callbacks_t cb;
  memset(&cb, 0, sizeof cb);
  cb.on_connect = client_connect_cb;
  cb.on_disconnect = client_disconnect_cb;
  cb.on_message = client_message_cb;
  f->client.data = f;
  ck_assert_int_eq(uvmqtt_client_init(&f->loop, &f->client, &o, &cb), 0);
  ck_assert_int_eq(uvmqtt_connect(&f->client), 0);
}

static void fx_end(fx_t *f) {
  ck_assert_int_eq(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(f->closed, 1);
  ck_assert_int_eq(uv_loop_close(&f->loop), 0);
}

/* Runs the loop until `cond` holds or `ms` pass. */
#define RUN_UNTIL(f, cond, ms)                                                                     \
  do {                                                                                             \
    uint64_t until_ = uv_now(&(f)->loop) + (ms);                                                   \
    while (!(cond) && uv_now(&(f)->loop) < until_)                                                 \
      uv_run(&(f)->loop, UV_RUN_ONCE);                                                             \
  } while (0)

static void on_wake(uv_timer_t *t) {
  (void)t;
}

/* Runs the loop for `ms`, whether or not anything happens. */
static void run_for(fx_t *f, uint64_t ms) {
  uv_timer_t wake;
  uv_timer_init(&f->loop, &wake);
  uv_timer_start(&wake, on_wake, ms, 0);
  uint64_t until = uv_now(&f->loop) + ms;
  while (uv_now(&f->loop) < until)
    uv_run(&f->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&wake, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* ---- Tests ---------------------------------------------------------------- */

START_TEST(fake_keepalive_timeout_on_silence) {
  fx_t *f = calloc(1, sizeof *f);
  f->silent = 1;
  fx_start(f, UVMQTT_V311, 1, 1, NULL);
  RUN_UNTIL(f, f->disconnects > 0, 4000);
  ck_assert_int_eq(f->connects, 1);
  ck_assert_int_eq(f->last_disc_status, UVMQTT_EKEEPALIVE);
  ck_assert_int_ge(f->broker_pingreqs, 1);
  uint64_t took = f->t_lost - f->t_connected;
  ck_assert_msg(took >= 1000 && took <= 1600, "keepalive timeout after %llu ms",
                (unsigned long long)took);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_receive_maximum_honoured) {
  for (uint16_t max = 1; max <= 3; max++) {
    fx_t *f = calloc(1, sizeof *f);
    f->delay_acks = 1;
    f->connack_props.has = 1ull << UVMQTT_PROP_RECEIVE_MAXIMUM;
    f->connack_props.receive_maximum = max;
    fx_start(f, UVMQTT_V5, 30, 1, NULL);
    RUN_UNTIL(f, f->connects == 1, 2000);
    uvmqtt_publish_opts_t o;
    memset(&o, 0, sizeof o);
    o.qos = 1;
    for (int i = 0; i < 10; i++)
      ck_assert_int_eq(uvmqtt_publish(&f->client, "rm", "x", 1, &o, publish_cb, NULL), 0);
    uv_timer_start(&f->ack_timer, on_ack_timer, 10, 10);
    RUN_UNTIL(f, f->published == 10, 4000);
    ck_assert_int_eq(f->published, 10);
    ck_assert_int_eq(f->max_unacked, max);
    finish(f);
    fx_end(f);
    free(f);
  }
}
END_TEST

START_TEST(fake_unexpected_acks_ignored) {
  fx_t *f = calloc(1, sizeof *f);
  fx_start(f, UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  send_ack(f, UVMQTT_PUBACK, 999, 0);
  send_ack(f, UVMQTT_PUBCOMP, 998, 0);
  send_ack(f, UVMQTT_PUBREL, 55, 0); /* unknown: must be answered with PUBCOMP */
  RUN_UNTIL(f, f->broker_pubcomps == 1, 2000);
  ck_assert_int_eq(f->broker_pubcomps, 1);
  uvmqtt_publish_opts_t o = {1, 0, NULL, {0, 0}};
  ck_assert_int_eq(uvmqtt_publish(&f->client, "ok", "x", 1, &o, publish_cb, NULL), 0);
  RUN_UNTIL(f, f->published == 1, 2000);
  ck_assert_int_eq(f->publish_status[0], 0);
  ck_assert_int_eq(f->disconnects, 0);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_server_keep_alive_applied) {
  fx_t *f = calloc(1, sizeof *f);
  f->connack_props.has = 1ull << UVMQTT_PROP_SERVER_KEEP_ALIVE;
  f->connack_props.server_keep_alive = 1;
  fx_start(f, UVMQTT_V5, 60, 1, NULL);
  RUN_UNTIL(f, f->broker_pingreqs >= 1, 3000);
  ck_assert_int_ge(f->broker_pingreqs, 1);
  ck_assert_int_eq(f->disconnects, 0);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_maximum_qos_and_packet_size_enforced_locally) {
  fx_t *f = calloc(1, sizeof *f);
  f->connack_props.has =
      (1ull << UVMQTT_PROP_MAXIMUM_QOS) | (1ull << UVMQTT_PROP_MAXIMUM_PACKET_SIZE);
  f->connack_props.maximum_qos = 0;
  f->connack_props.maximum_packet_size = 100;
  fx_start(f, UVMQTT_V5, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  uvmqtt_publish_opts_t o = {1, 0, NULL, {0, 0}};
  ck_assert_int_eq(uvmqtt_publish(&f->client, "q", "x", 1, &o, publish_cb, NULL),
                   UVMQTT_EQOSNOTSUP);
  char big[200];
  memset(big, 'b', sizeof big);
  o.qos = 0;
  ck_assert_int_eq(uvmqtt_publish(&f->client, "q", big, sizeof big, &o, publish_cb, NULL),
                   UVMQTT_EPKTTOOBIG);
  ck_assert_int_eq(uvmqtt_publish(&f->client, "q", big, 50, &o, publish_cb, NULL), 0);
  RUN_UNTIL(f, f->broker_publishes == 1, 2000);
  ck_assert_int_eq(f->broker_publishes, 1);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_topic_alias_resolved) {
  fx_t *f = calloc(1, sizeof *f);
  uvmqtt_props_t cp;
  memset(&cp, 0, sizeof cp);
  cp.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM;
  cp.topic_alias_maximum = 5;
  fx_start(f, UVMQTT_V5, 30, 1, &cp);
  RUN_UNTIL(f, f->connects == 1, 2000);
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_PUBLISH;
  p.props.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS;
  p.props.topic_alias = 3;
  p.u.publish.topic.data = (const uint8_t *)"sensors/room/7";
  p.u.publish.topic.len = 14;
  ck_assert_int_eq(fake_send_packet(f->conn, &p), 0);
  p.u.publish.topic.len = 0;
  ck_assert_int_eq(fake_send_packet(f->conn, &p), 0);
  RUN_UNTIL(f, f->messages == 2, 2000);
  ck_assert_int_eq(f->messages, 2);
  ck_assert_str_eq(f->topics[0], "sensors/room/7");
  ck_assert_str_eq(f->topics[1], "sensors/room/7");
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_v5_ack_encodings) {
  fx_t *f = calloc(1, sizeof *f);
  f->ack_form = _i;
  fx_start(f, UVMQTT_V5, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  uvmqtt_publish_opts_t o = {1, 0, NULL, {0, 0}};
  ck_assert_int_eq(uvmqtt_publish(&f->client, "a", "x", 1, &o, publish_cb, NULL), 0);
  RUN_UNTIL(f, f->published == 1, 2000);
  ck_assert_int_eq(f->published, 1);
  ck_assert_int_eq(f->publish_status[0], 0);
  ck_assert_int_eq(f->publish_reason[0], _i == 0 ? 0 : 0x10);
  ck_assert_int_eq(f->disconnects, 0);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_malformed_packet_closes_with_codec_error) {
  fx_t *f = calloc(1, sizeof *f);
  fx_start(f, _i ? UVMQTT_V5 : UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  static const uint8_t bad[] = {0x41, 2, 0, 1}; /* PUBACK with reserved flags */
  ck_assert_int_eq(fake_send(f->conn, bad, sizeof bad), 0);
  RUN_UNTIL(f, f->disconnects == 1, 2000);
  ck_assert_int_eq(f->last_disc_status, UVMQTT_EBADFLAGS);
  if (_i) {
    RUN_UNTIL(f, f->broker_disconnect_reason != 0, 500);
    ck_assert_int_eq(f->broker_disconnect_reason, 0x81);
  }
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_oversized_remaining_length_rejected) {
  fx_t *f = calloc(1, sizeof *f);
  uvmqtt_props_t cp;
  memset(&cp, 0, sizeof cp);
  cp.has = 1ull << UVMQTT_PROP_MAXIMUM_PACKET_SIZE;
  cp.maximum_packet_size = 1024;
  fx_start(f, UVMQTT_V5, 30, 1, &cp);
  RUN_UNTIL(f, f->connects == 1, 2000);
  static const uint8_t huge[] = {0x30, 0xff, 0xff, 0xff, 0x7f}; /* 256 MiB PUBLISH */
  ck_assert_int_eq(fake_send(f->conn, huge, sizeof huge), 0);
  RUN_UNTIL(f, f->disconnects == 1, 2000);
  ck_assert_int_eq(f->last_disc_status, UVMQTT_ETOOLARGE);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_truncated_packet_then_close) {
  fx_t *f = calloc(1, sizeof *f);
  fx_start(f, UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  static const uint8_t half[] = {0x30, 20, 0, 5, 'a', 'b'};
  ck_assert_int_eq(fake_send(f->conn, half, sizeof half), 0);
  fake_conn_close(f->conn);
  RUN_UNTIL(f, f->disconnects == 1, 2000);
  ck_assert_int_eq(f->last_disc_status, UV_EOF);
  ck_assert_int_eq(f->messages, 0);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_connack_stall_times_out) {
  fx_t *f = calloc(1, sizeof *f);
  f->no_connack = 1;
  fx_start(f, UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->disconnects == 1, 3000);
  ck_assert_int_eq(f->connect_status, UVMQTT_ECONNTIMEDOUT);
  ck_assert_int_eq(f->last_disc_status, UVMQTT_ECONNTIMEDOUT);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

/* A 3.1.1-only broker (aedes, for one) answers a v5 CONNECT with a 3.1.1
 * CONNACK: refused with 0x01 "unacceptable protocol version", or accepted
 * without the property length v5 requires. Either way the client names the
 * cause instead of reporting a malformed packet. */
START_TEST(fake_v311_connack_to_v5_named) {
  static const uint8_t refused[] = {0x20, 0x02, 0x00, 0x01};
  static const uint8_t accepted[] = {0x20, 0x02, 0x00, 0x00};
  fx_t *f = calloc(1, sizeof *f);
  f->connack_raw = _i ? accepted : refused;
  f->connack_raw_len = 4;
  fx_start(f, UVMQTT_V5, 30, 1, NULL);
  RUN_UNTIL(f, f->disconnects == 1, 3000);
  ck_assert_int_eq(f->connects, 0);
  ck_assert_int_eq(f->connect_status, UVMQTT_EV5UNSUPPORTED);
  ck_assert_int_eq(f->last_disc_status, UVMQTT_EV5UNSUPPORTED);
  ck_assert_str_eq(uvmqtt_strerror(UVMQTT_EV5UNSUPPORTED), "the broker does not support MQTT 5");
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

/* A connection lost before the PUBACK: after reconnecting into the same
 * session the PUBLISH goes again, same id, with DUP set. */
START_TEST(fake_resend_with_dup_after_loss) {
  fx_t *f = calloc(1, sizeof *f);
  f->stop_after_publishes = 1;
  f->session_present = 1;
  fx_start(f, _i ? UVMQTT_V5 : UVMQTT_V311, 30, 0, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  uvmqtt_publish_opts_t o = {1, 0, NULL, {0, 0}};
  ck_assert_int_eq(uvmqtt_publish(&f->client, "r", "x", 1, &o, publish_cb, NULL), 0);
  RUN_UNTIL(f, f->published == 1, 3000);
  ck_assert_int_eq(f->published, 1);
  ck_assert_int_eq(f->publish_status[0], 0);
  ck_assert_int_eq(f->connects, 2);
  ck_assert_int_eq(f->broker_publishes, 2);
  ck_assert_int_eq(f->dup_seen, 1);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

START_TEST(fake_close_inside_message_callback) {
  fx_t *f = calloc(1, sizeof *f);
  f->close_in_message = 1;
  fx_start(f, UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_PUBLISH;
  p.u.publish.topic.data = (const uint8_t *)"t";
  p.u.publish.topic.len = 1;
  /* Two messages in one read: the second must not be delivered after close. */
  ck_assert_int_eq(fake_send_packet(f->conn, &p), 0);
  ck_assert_int_eq(fake_send_packet(f->conn, &p), 0);
  fx_end(f);
  ck_assert_int_le(f->messages, 2);
  ck_assert_int_ge(f->messages, 1);
  free(f);
}
END_TEST

/* A SUBSCRIBE queued before the connection goes once, and after a
 * reconnect without session the stored subscription goes once again. */
START_TEST(fake_subscribe_sent_once_and_restored) {
  fx_t *f = calloc(1, sizeof *f);
  f->stop_after_publishes = 1;
  fx_start(f, UVMQTT_V311, 30, 0, NULL);
  uvmqtt_topic_sub_t sub = {{(const uint8_t *)"s/#", 3}, 1};
  ck_assert_int_eq(uvmqtt_subscribe(&f->client, &sub, 1, NULL, NULL, NULL, NULL), 0);
  RUN_UNTIL(f, f->broker_subscribes == 1, 2000);
  uvmqtt_publish_opts_t o = {1, 0, NULL, {0, 0}};
  ck_assert_int_eq(uvmqtt_publish(&f->client, "r", "x", 1, &o, publish_cb, NULL), 0);
  RUN_UNTIL(f, f->connects == 2 && f->broker_subscribes == 2, 3000);
  run_for(f, 200); /* nothing more may come */
  ck_assert_int_eq(f->connects, 2);
  ck_assert_int_eq(f->broker_subscribes, 2);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("fake_broker");
  TCase *tc = tcase_create("faults");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, fake_keepalive_timeout_on_silence);
  tcase_add_test(tc, fake_receive_maximum_honoured);
  tcase_add_test(tc, fake_unexpected_acks_ignored);
  tcase_add_test(tc, fake_server_keep_alive_applied);
  tcase_add_test(tc, fake_maximum_qos_and_packet_size_enforced_locally);
  tcase_add_test(tc, fake_topic_alias_resolved);
  tcase_add_loop_test(tc, fake_v5_ack_encodings, 0, 4);
  tcase_add_loop_test(tc, fake_malformed_packet_closes_with_codec_error, 0, 2);
  tcase_add_test(tc, fake_oversized_remaining_length_rejected);
  tcase_add_test(tc, fake_truncated_packet_then_close);
  tcase_add_test(tc, fake_connack_stall_times_out);
  tcase_add_loop_test(tc, fake_v311_connack_to_v5_named, 0, 2);
  tcase_add_loop_test(tc, fake_resend_with_dup_after_loss, 0, 2);
  tcase_add_test(tc, fake_close_inside_message_callback);
  tcase_add_test(tc, fake_subscribe_sent_once_and_restored);
  suite_add_tcase(s, tc);
  return s;
}
