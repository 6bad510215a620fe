/* The client against a scripted fake broker: faults and protocol corners a
 * real broker will not produce on demand. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_broker.h"
#include "uvmqtt.h"

typedef struct {
  uv_loop_t loop;
  fake_broker_t fb;
  const char *bind_address;
  int sub_id_dispatch;
  int got_a, got_b;
  void (*on_resubscribe)(uvmqtt_client_t *c, int status, const char *filter, uint8_t reason);
  /* SUBSCRIBEs as the broker saw them: filters, Subscription Identifier,
   * encoded size; and what on_resubscribe reported. */
  int sub_filters[16];
  uint32_t sub_id[16];
  size_t sub_size[16];
  int nsub_rx;
  int resub_reports;
  int resub_refused;
  int resub_errors;
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
  /* Knobs of the disconnect and connect-option tests. */
  int clean_start;        /* 1: the client asks for clean start */
  int no_max_packet_size; /* options.no_max_packet_size */
  int port_override;      /* connect here instead of the fake broker */
  uint8_t connack_reason; /* CONNACK reason/return code */
  int disconnect_on_failed_connect;
  int disconnect_in_publish_cb;
  int flood; /* the broker sends QoS 0 publishes from flood_timer */
  uv_timer_t flood_timer;
  /* What the broker received, in order. */
  uint8_t rx_types[4096];
  int nrx;
  int saw_disconnect;
  int after_disconnect; /* packets received after a DISCONNECT */
  int rx_index[256];    /* burst PUBLISH count per message index */
  /* What the client reported. */
  int disconnect_rc;
  int disconnect_calls; /* uvmqtt_disconnect() calls made by callbacks */
  int last_will_retry;
  int burst_status[256];
  int burst_done;
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
  if (!uv_is_closing((uv_handle_t *)&f->flood_timer))
    uv_close((uv_handle_t *)&f->flood_timer, on_handle_closed);
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

static void on_flood(uv_timer_t *t);

static void broker_packet(fake_broker_t *fb, fake_conn_t *conn, const uvmqtt_packet_t *pkt) {
  fx_t *f = fb->data;
  f->conn = conn;
  if (f->nrx < (int)sizeof f->rx_types) f->rx_types[f->nrx] = pkt->type;
  f->nrx++;
  if (f->saw_disconnect) f->after_disconnect++;
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
    ack.reason = f->connack_reason;
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
    if (pkt->u.publish.payload.len >= 1 && pkt->u.publish.topic.len == 5 &&
        memcmp(pkt->u.publish.topic.data, "burst", 5) == 0)
      f->rx_index[pkt->u.publish.payload.data[0]]++;
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
    if (f->nsub_rx < 16) {
      f->sub_filters[f->nsub_rx] = (int)pkt->u.subscribe.count;
      f->sub_id[f->nsub_rx] = pkt->props.subscription_id;
      f->sub_size[f->nsub_rx] = (size_t)uvmqtt_encode_size(pkt, f->version);
    }
    f->nsub_rx++;
    /* Filters under deny/ are refused (0x87, not authorized). */
    size_t off = 0;
    uvmqtt_topic_sub_t sub;
    for (uint32_t i = 0;
         i < 8 && uvmqtt_subs_next(UVMQTT_SUBSCRIBE, pkt->u.subscribe.raw, &off, &sub) == 1; i++)
      if (sub.filter.len >= 5 && memcmp(sub.filter.data, "deny/", 5) == 0) codes[i] = 0x87;
    uvmqtt_packet_t ack;
    memset(&ack, 0, sizeof ack);
    ack.type = UVMQTT_SUBACK;
    ack.packet_id = pkt->packet_id;
    ack.u.suback.codes = codes;
    ack.u.suback.count = pkt->u.subscribe.count < 8 ? pkt->u.subscribe.count : 8;
    ck_assert_int_eq(fake_send_packet(conn, &ack), 0);
    return;
  }
  case UVMQTT_DISCONNECT:
    f->saw_disconnect++;
    f->broker_disconnect_reason = pkt->reason;
    /* Keep talking after the DISCONNECT: the client must still end with a
     * FIN, reading and dropping what comes. */
    if (f->flood) on_flood(&f->flood_timer);
    return;
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
  if (status < 0 && f->disconnect_on_failed_connect) {
    f->disconnect_calls++;
    f->disconnect_rc = uvmqtt_disconnect(c, 0);
  }
}

static void client_disconnect_cb(uvmqtt_client_t *c, const uvmqtt_disconnect_t *d) {
  fx_t *f = fx_of_client(c);
  f->disconnects++;
  f->last_disc_status = d->status;
  f->last_will_retry = d->will_retry;
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
  uv_timer_init(&f->loop, &f->flood_timer);
  f->flood_timer.data = f;

  char uri[64];
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%d",
           f->port_override ? f->port_override : f->fb.port);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.version = version;
  o.client_id = "fake-test";
  o.keepalive = keepalive;
  o.no_reconnect = (uint8_t)no_reconnect;
  o.connect_timeout_ms = 400;
  o.clean_start = (uint8_t)f->clean_start;
  o.no_max_packet_size = (uint8_t)f->no_max_packet_size;
  o.bind_address = f->bind_address;
  o.sub_id_dispatch = (uint8_t)f->sub_id_dispatch;
  o.connect_props = connect_props;
  o.reconnect.fn = uvmqtt_reconnect_fixed;
  o.reconnect.state = &fast_retry;
  uvmqtt_callbacks_t cb;
  memset(&cb, 0, sizeof cb);
  cb.on_connect = client_connect_cb;
  cb.on_disconnect = client_disconnect_cb;
  cb.on_message = client_message_cb;
  cb.on_resubscribe = f->on_resubscribe;
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

/* ---- Graceful disconnect and connect options ------------------------------------------------- */

/* 4 KiB each: 320 KiB, past the output's high water (UVMQTT__OUT_HIGH_WATER,
 * 256 KiB), so that the last of them wait in the queue. */
#define BURST_QOS0      80
#define BURST_QOS1      10
#define BURST_PAYLOAD   4096
#define BURST_NOT_FIRED 1 /* burst_status before the callback ran */

static void burst_cb(uvmqtt_client_t *c, int status, uint8_t reason, void *arg) {
  fx_t *f = fx_of_client(c);
  (void)reason;
  f->burst_status[(int)(intptr_t)arg] = status;
  f->burst_done++;
  int idx = (int)(intptr_t)arg;
  int want =
      f->disconnect_in_publish_cb == 1 || (f->disconnect_in_publish_cb == 2 && idx >= BURST_QOS0);
  if (want && f->disconnect_calls == 0) {
    f->disconnect_calls++;
    f->disconnect_rc = uvmqtt_disconnect(c, 0);
  }
}

/* Publishes the burst: message i carries i in its first byte, so the broker
 * can tell which ones it received. */
static void publish_burst(fx_t *f) {
  static uint8_t payload[BURST_PAYLOAD];
  for (int i = 0; i < BURST_QOS0 + BURST_QOS1; i++) {
    uvmqtt_publish_opts_t o;
    memset(&o, 0, sizeof o);
    o.qos = i < BURST_QOS0 ? 0 : 1;
    payload[0] = (uint8_t)i;
    f->burst_status[i] = BURST_NOT_FIRED;
    ck_assert_int_eq(uvmqtt_publish(&f->client, "burst", payload, sizeof payload, &o, burst_cb,
                                    (void *)(intptr_t)i),
                     0);
  }
}

/* DISCONNECT goes after what was queued and nothing goes after it, and no
 * publish completes successfully unless the broker got it. Index bit 0
 * picks the version; index / 2 picks when uvmqtt_disconnect() is called:
 * 0 right after the burst, 1 from the first publish completion (a QoS 0
 * write), 2 from the first QoS 1 completion (a PUBACK). */
START_TEST(fake_nothing_after_disconnect) {
  fx_t *f = calloc(1, sizeof *f);
  uint8_t v = (_i & 1) ? UVMQTT_V5 : UVMQTT_V311;
  f->disconnect_in_publish_cb = _i / 2;
  fx_start(f, v, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  ck_assert_int_eq(f->connects, 1);
  publish_burst(f);
  if (!f->disconnect_in_publish_cb) {
    f->disconnect_calls++;
    f->disconnect_rc = uvmqtt_disconnect(&f->client, 0);
  }
  RUN_UNTIL(f, f->disconnects == 1, 4000);
  /* Let the broker read whatever else may still be on its way. */
  run_for(f, 100);
  ck_assert_int_eq(f->disconnect_calls, 1);
  ck_assert_int_eq(f->disconnect_rc, 0);
  ck_assert_int_eq(f->disconnects, 1);
  ck_assert_msg(f->last_disc_status == 0, "on_disconnect status %s",
                uvmqtt_err_name(f->last_disc_status));
  ck_assert_int_eq(f->fb.decode_errors, 0);
  ck_assert_int_le(f->nrx, (int)sizeof f->rx_types);
  ck_assert_int_eq(f->saw_disconnect, 1);
  ck_assert_msg(f->rx_types[f->nrx - 1] == UVMQTT_DISCONNECT, "last packet type %d, not DISCONNECT",
                f->rx_types[f->nrx - 1]);
  ck_assert_int_eq(f->after_disconnect, 0);
  int lies = 0, first_lie = -1;
  for (int i = 0; i < BURST_QOS0 + BURST_QOS1; i++) {
    if (f->burst_status[i] == 0 && f->rx_index[i] == 0) {
      if (first_lie < 0) first_lie = i;
      lies++;
    }
  }
  int received = 0, ok = 0;
  for (int i = 0; i < BURST_QOS0 + BURST_QOS1; i++) {
    received += f->rx_index[i] != 0;
    ok += f->burst_status[i] == 0;
  }
  printf("fake_nothing_after_disconnect %d: the broker got %d of %d, %d reported done\n", _i,
         received, BURST_QOS0 + BURST_QOS1, ok);
  fflush(stdout);
  ck_assert_msg(lies == 0, "%d publishes reported 0 but never reached the broker (first: #%d)",
                lies, first_lie);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

/* Binds a loopback port and lets it go, so nothing listens there. */
static int unused_port(uv_loop_t *loop) {
  uv_tcp_t tcp;
  struct sockaddr_in sa;
  uv_tcp_init(loop, &tcp);
  uv_ip4_addr("127.0.0.1", 0, &sa);
  ck_assert_int_eq(uv_tcp_bind(&tcp, (const struct sockaddr *)&sa, 0), 0);
  int len = sizeof sa;
  ck_assert_int_eq(uv_tcp_getsockname(&tcp, (struct sockaddr *)&sa, &len), 0);
  uv_close((uv_handle_t *)&tcp, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return ntohs(sa.sin_port);
}

/* uvmqtt_disconnect() from on_connect(status < 0) stops the client: no
 * second attempt although the policy would retry within 20 ms. Index 0: a
 * port where nothing listens; 1: a CONNACK that refuses. */
START_TEST(fake_disconnect_from_failed_on_connect) {
  fx_t *f = calloc(1, sizeof *f);
  f->disconnect_on_failed_connect = 1;
  if (_i == 0) {
    uv_loop_t probe;
    ck_assert_int_eq(uv_loop_init(&probe), 0);
    f->port_override = unused_port(&probe);
    ck_assert_int_eq(uv_loop_close(&probe), 0);
  } else {
    f->connack_reason = 5; /* 3.1.1: not authorized */
  }
  fx_start(f, UVMQTT_V311, 30, 0, NULL);
  run_for(f, 500);
  uvmqtt_stats_t st;
  uvmqtt_client_stats(&f->client, &st);
  ck_assert_msg(f->connect_status < 0, "on_connect status %d", f->connect_status);
  ck_assert_int_eq(f->connects, 0);
  ck_assert_int_eq(f->disconnect_calls, 1);
  ck_assert_int_eq(f->disconnect_rc, 0);
  ck_assert_uint_eq(st.attempts, 1);
  ck_assert_int_eq(f->disconnects, 1);
  ck_assert_int_eq(f->last_will_retry, 0);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

/* A malformed packet followed at once by the broker dropping the
 * connection: the codec's error is the cause, not what the socket said
 * afterwards. Index 0: reset (RST); 1: close (FIN). */
START_TEST(fake_bad_packet_cause_survives_reset) {
  fx_t *f = calloc(1, sizeof *f);
  fx_start(f, UVMQTT_V5, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  ck_assert_int_eq(f->connects, 1);
  static const uint8_t bad[] = {0x41, 2, 0, 1}; /* PUBACK with reserved flags */
  ck_assert_int_eq(fake_send(f->conn, bad, sizeof bad), 0);
  if (_i == 0)
    fake_conn_reset(f->conn);
  else
    fake_conn_close(f->conn);
  RUN_UNTIL(f, f->disconnects == 1, 2000);
  ck_assert_int_eq(f->disconnects, 1);
  ck_assert_msg(f->last_disc_status == UVMQTT_EBADFLAGS, "on_disconnect status %s, not %s",
                uvmqtt_err_name(f->last_disc_status), uvmqtt_err_name(UVMQTT_EBADFLAGS));
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

/* A broker claiming a session for a client that asked for a clean start
 * breaks the protocol: the client must not come up. */
START_TEST(fake_session_present_to_clean_start_refused) {
  fx_t *f = calloc(1, sizeof *f);
  f->clean_start = 1;
  f->session_present = 1;
  fx_start(f, _i ? UVMQTT_V5 : UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->disconnects == 1 && f->fb.closed == 1, 2000);
  ck_assert_int_eq(f->connects, 0);
  ck_assert_msg(f->connect_status == UVMQTT_EPROTOCOL, "on_connect status %s",
                uvmqtt_err_name(f->connect_status));
  ck_assert_int_eq(f->disconnects, 1);
  ck_assert_msg(f->last_disc_status == UVMQTT_EPROTOCOL, "on_disconnect status %s",
                uvmqtt_err_name(f->last_disc_status));
  ck_assert_int_eq(f->fb.closed, 1);
  uvmqtt_stats_t st;
  uvmqtt_client_stats(&f->client, &st);
  ck_assert_uint_eq(st.connected, 0);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

/* no_max_packet_size leaves Maximum Packet Size out of the v5 CONNECT; by
 * default it is there. Index 0: default; 1: the option set. */
START_TEST(fake_minimal_connect_v5) {
  fx_t *f = calloc(1, sizeof *f);
  f->no_max_packet_size = _i;
  fx_start(f, UVMQTT_V5, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  ck_assert_int_eq(f->connects, 1);
  ck_assert_uint_gt(f->fb.first_read_len, 0);
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  int rc = uvmqtt_decode_packet(f->fb.first_read, f->fb.first_read_len, UVMQTT_V5, &p);
  ck_assert_msg(rc == 0, "CONNECT does not decode: %s", uvmqtt_err_name(rc));
  ck_assert_int_eq(p.type, UVMQTT_CONNECT);
  ck_assert_int_eq(p.u.connect.protocol_level, UVMQTT_V5);
  ck_assert_int_eq(UVMQTT_HAS(&p.props, UVMQTT_PROP_MAXIMUM_PACKET_SIZE) != 0, _i == 0);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

#define SLOW_MESSAGES 192 /* of 64 KiB: 12 MiB, more than the sockets hold or drain in 4 s */
#define SLOW_PAYLOAD  (64 * 1024)

/* A broker that reads slowly but steadily is alive: with keepalive 1 s and
 * the client's output backed up behind a slow uplink, the PINGREQ waits in
 * the queue and the broker answers it once it reads it. The client must not
 * call the connection dead while its bytes keep flowing. Index 0: the broker
 * reads 1 KiB every 100 ms; 1: 16 KiB every 10 ms (about 1.6 MB/s). */
START_TEST(fake_keepalive_slow_uplink) {
  fx_t *f = calloc(1, sizeof *f);
  fx_start(f, UVMQTT_V311, 1, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  ck_assert_int_eq(f->connects, 1);
  f->fb.read_chunk = _i ? 16384 : 1024;
  f->fb.read_pause_ms = _i ? 10 : 100;
  uint8_t *payload = calloc(1, SLOW_PAYLOAD);
  ck_assert_ptr_nonnull(payload);
  for (int i = 0; i < SLOW_MESSAGES; i++)
    ck_assert_int_eq(uvmqtt_publish(&f->client, "bulk", payload, SLOW_PAYLOAD, NULL, NULL, NULL),
                     0);
  free(payload);
  uint64_t read_before = f->fb.bytes_read;
  RUN_UNTIL(f, f->disconnects > 0, 4000);
  ck_assert_msg(
      f->disconnects == 0, "connection lost after %llu ms: %s (broker read %llu bytes, %d PINGREQ)",
      (unsigned long long)(f->t_lost - f->t_connected), uvmqtt_err_name(f->last_disc_status),
      (unsigned long long)(f->fb.bytes_read - read_before), f->broker_pingreqs);
  /* The scenario did what it claims: bytes flowed, and the output was still
   * backed up at the end. */
  ck_assert_uint_gt(f->fb.bytes_read - read_before, 10 * 1024);
  uvmqtt_stats_t st;
  uvmqtt_client_stats(&f->client, &st);
  ck_assert_uint_gt(st.queued_bytes + st.write_bytes, 0);
  f->fb.read_pause_ms = 0;
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

static void on_flood(uv_timer_t *t) {
  fx_t *f = t->data;
  /* Stop once the connection is going: f->conn is freed after its close. */
  if (f->fb.closed || f->fb.decode_errors || f->conn == NULL) {
    uv_timer_stop(t);
    return;
  }
  static uint8_t payload[1024];
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_PUBLISH;
  p.u.publish.topic.data = (const uint8_t *)"flood";
  p.u.publish.topic.len = 5;
  p.u.publish.payload.data = payload;
  p.u.publish.payload.len = sizeof payload;
  for (int i = 0; i < 16; i++)
    (void)fake_send_packet(f->conn, &p);
}

/* After uvmqtt_disconnect() the client half-closes: the broker reads
 * DISCONNECT and then EOF, never a reset, although it keeps sending QoS 0
 * messages the whole time. */
START_TEST(fake_graceful_disconnect_half_closes) {
  fx_t *f = calloc(1, sizeof *f);
  fx_start(f, _i ? UVMQTT_V5 : UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  ck_assert_int_eq(f->connects, 1);
  f->flood = 1;
  uv_timer_start(&f->flood_timer, on_flood, 0, 5);
  run_for(f, 50);
  ck_assert_int_gt(f->messages, 0);
  ck_assert_int_eq(uvmqtt_disconnect(&f->client, 0), 0);
  RUN_UNTIL(f, f->disconnects == 1 && f->fb.closed == 1, 4000);
  ck_assert_int_eq(f->disconnects, 1);
  ck_assert_msg(f->last_disc_status == 0, "on_disconnect status %s",
                uvmqtt_err_name(f->last_disc_status));
  ck_assert_int_eq(f->saw_disconnect, 1);
  ck_assert_int_eq(f->after_disconnect, 0);
  ck_assert_int_eq(f->fb.closed, 1);
  ck_assert_msg(f->fb.eofs == 1 && f->fb.read_errors == 0,
                "the broker's read ended with %s, not EOF", uv_err_name(f->fb.last_read_error));
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

/* A client bound to a local address connects from it, with a port the
 * kernel chose at connect time; an address of the other family cannot
 * reach an IPv4 server; a malformed one fails init. */
START_TEST(fake_bind_address_used) {
  fx_t *f = calloc(1, sizeof *f);
  f->bind_address = _i ? "127.0.0.7:0" : "127.0.0.7";
  fx_start(f, UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  ck_assert_int_eq(f->connects, 1);
  const struct sockaddr_in *peer = (const struct sockaddr_in *)&f->fb.last_peer;
  ck_assert_int_eq(peer->sin_family, AF_INET);
  char ip[32];
  uv_ip4_name(peer, ip, sizeof ip);
  ck_assert_str_eq(ip, "127.0.0.7");
  ck_assert_int_ne(ntohs(peer->sin_port), 0);
  finish(f);
  fx_end(f);
  free(f);

  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvmqtt_client_t c;
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = "mqtt://127.0.0.1:1";
  const char *bad[] = {"127.0.0", "127.0.0.7:", "127.0.0.7:70000", "[::1", "host.example"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    o.bind_address = bad[i];
    ck_assert_msg(uvmqtt_client_init(&loop, &c, &o, NULL) == UVMQTT_EINVAL, "%s accepted", bad[i]);
  }
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(fake_bind_address_other_family_fails) {
  fx_t *f = calloc(1, sizeof *f);
  f->bind_address = "::1";
  fx_start(f, UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->connect_status != 0, 2000);
  ck_assert_int_eq(f->connects, 0);
  ck_assert_int_eq(f->connect_status, UV_EAFNOSUPPORT);
  ck_assert_int_eq(f->fb.connections, 0);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

static void resub_cb(uvmqtt_client_t *c, int status, const char *filter, uint8_t reason) {
  fx_t *f = fx_of_client(c);
  f->resub_reports++;
  if (status < 0) f->resub_errors++;
  if (status == 0 && reason >= 0x80) {
    ck_assert_str_eq(filter, "deny/x");
    f->resub_refused++;
  }
}

/* Defect 10: after a session loss the client subscribes again with each
 * call's properties (its Subscription Identifier), split to fit the new
 * connection's Maximum Packet Size, and reports each filter's outcome: a
 * refusal reaches on_resubscribe instead of leaving the client silently
 * without the subscription. */
START_TEST(fake_resubscribe_keeps_props_splits_reports) {
  fx_t *f = calloc(1, sizeof *f);
  f->on_resubscribe = resub_cb;
  fx_start(f, UVMQTT_V5, 30, 0, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  uvmqtt_topic_sub_t a[4] = {{{(const uint8_t *)"a/1", 3}, 1},
                             {{(const uint8_t *)"a/2", 3}, 1},
                             {{(const uint8_t *)"a/3", 3}, 1},
                             {{(const uint8_t *)"a/4", 3}, 1}};
  uvmqtt_topic_sub_t d = {{(const uint8_t *)"deny/x", 6}, 0};
  uvmqtt_props_t pa, pd;
  memset(&pa, 0, sizeof pa);
  memset(&pd, 0, sizeof pd);
  pa.has = 1ull << UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER;
  pa.subscription_id = 7;
  pd.has = 1ull << UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER;
  pd.subscription_id = 9;
  ck_assert_int_eq(uvmqtt_subscribe(&f->client, a, 4, &pa, NULL, NULL, NULL), 0);
  ck_assert_int_eq(uvmqtt_subscribe(&f->client, &d, 1, &pd, NULL, NULL, NULL), 0);
  RUN_UNTIL(f, f->broker_subscribes == 2, 2000);
  ck_assert_int_eq(f->sub_filters[0], 4);
  ck_assert_uint_eq(f->sub_id[0], 7);
  /* The next connection finds no session and allows 20-byte packets. */
  f->connack_props.has = 1ull << UVMQTT_PROP_MAXIMUM_PACKET_SIZE;
  f->connack_props.maximum_packet_size = 20;
  fake_conn_close(f->conn);
  RUN_UNTIL(f, f->connects == 2 && f->resub_reports == 5, 3000);
  ck_assert_int_eq(f->connects, 2);
  ck_assert_int_eq(f->resub_reports, 5);
  ck_assert_int_eq(f->resub_refused, 1);
  ck_assert_int_eq(f->resub_errors, 0);
  int filters_a = 0, filters_d = 0;
  for (int i = 2; i < f->nsub_rx && i < 16; i++) {
    ck_assert_uint_le(f->sub_size[i], 20);
    ck_assert_msg(f->sub_id[i] == 7 || f->sub_id[i] == 9, "SUBSCRIBE %d lost its identifier", i);
    if (f->sub_id[i] == 7) filters_a += f->sub_filters[i];
    if (f->sub_id[i] == 9) filters_d += f->sub_filters[i];
  }
  ck_assert_int_gt(f->nsub_rx - 2, 2); /* split: more SUBSCRIBEs than calls */
  ck_assert_int_eq(filters_a, 4);
  ck_assert_int_eq(filters_d, 1);
  finish(f);
  fx_end(f);
  free(f);
}
END_TEST

/* Allocation calls the library makes per message in steady state, counted
 * through its allocator: QoS 0 and QoS 1 publishes, and received QoS 1
 * messages. The broker side allocates with plain malloc and is not
 * counted. */
static size_t g_alloc_calls;
static void *calls_malloc(size_t n) {
  g_alloc_calls++;
  return malloc(n);
}
static void *calls_realloc(void *p, size_t n) {
  g_alloc_calls++;
  return realloc(p, n);
}
static void *calls_calloc(size_t a, size_t b) {
  g_alloc_calls++;
  return calloc(a, b);
}

#define ALLOC_MESSAGES 4000

static double allocs_per_publish(fx_t *f, uint8_t qos) {
  uvmqtt_publish_opts_t o = {qos, 0, NULL, {0, 0}};
  int before = f->published;
  size_t calls = g_alloc_calls;
  /* In rounds of 100, as an application publishing steadily would. */
  for (int r = 0; r < ALLOC_MESSAGES / 100; r++) {
    for (int i = 0; i < 100; i++)
      ck_assert_int_eq(
          uvmqtt_publish(&f->client, "alloc/t", "0123456789abcdef", 16, &o, publish_cb, NULL), 0);
    int want = before + (r + 1) * 100;
    RUN_UNTIL(f, f->published == want, 4000);
    ck_assert_int_eq(f->published, want);
  }
  return (double)(g_alloc_calls - calls) / ALLOC_MESSAGES;
}

START_TEST(fake_allocations_per_message) {
  fx_t *f = calloc(1, sizeof *f);
  ck_assert_int_eq(uvmqtt_replace_allocator(calls_malloc, calls_realloc, calls_calloc, free), 0);
  fx_start(f, UVMQTT_V311, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  ck_assert_int_eq(f->connects, 1);
  double q0 = allocs_per_publish(f, 0);
  double q1 = allocs_per_publish(f, 1);
  /* Received: the broker sends QoS 1 messages, the client acknowledges. */
  size_t calls = g_alloc_calls;
  for (int r = 0; r < ALLOC_MESSAGES / 100; r++) {
    for (int i = 0; i < 100; i++) {
      uvmqtt_packet_t p;
      memset(&p, 0, sizeof p);
      p.type = UVMQTT_PUBLISH;
      p.packet_id = (uint16_t)(i + 1);
      p.u.publish.qos = 1;
      p.u.publish.topic.data = (const uint8_t *)"alloc/in";
      p.u.publish.topic.len = 8;
      p.u.publish.payload.data = (const uint8_t *)"0123456789abcdef";
      p.u.publish.payload.len = 16;
      ck_assert_int_eq(fake_send_packet(f->conn, &p), 0);
    }
    int want = (r + 1) * 100;
    RUN_UNTIL(f, f->messages == want, 4000);
    ck_assert_int_eq(f->messages, want);
  }
  double rx = (double)(g_alloc_calls - calls) / ALLOC_MESSAGES;
  printf("allocation calls per message: QoS 0 publish %.2f, QoS 1 publish %.2f, received QoS 1 "
         "%.2f\n",
         q0, q1, rx);
  fflush(stdout);
  /* A QoS 0 publish goes straight into the output; a QoS 1 publish is kept
   * until its PUBACK, in one allocation. The rest is per write (an output
   * buffer and its write bookkeeping, released when the connection goes idle
   * between rounds), not per message. */
  ck_assert_msg(q0 <= 0.1, "%.2f allocations per QoS 0 publish", q0);
  ck_assert_msg(q1 <= 1.2, "%.2f allocations per QoS 1 publish", q1);
  ck_assert_msg(rx <= 0.2, "%.2f allocations per received message", rx);
  finish(f);
  fx_end(f);
  ck_assert_int_eq(uvmqtt_replace_allocator(malloc, realloc, calloc, free), 0);
  free(f);
}
END_TEST

static void dispatch_a(uvmqtt_client_t *c, const uvmqtt_message_t *m, void *arg) {
  (void)m;
  (void)arg;
  fx_of_client(c)->got_a++;
}

static void dispatch_b(uvmqtt_client_t *c, const uvmqtt_message_t *m, void *arg) {
  (void)m;
  (void)arg;
  fx_of_client(c)->got_b++;
}

static void send_with_sub_id(fx_t *f, uint32_t sub_id) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_PUBLISH;
  p.u.publish.topic.data = (const uint8_t *)"x/y";
  p.u.publish.topic.len = 3;
  p.u.publish.payload.data = (const uint8_t *)"m";
  p.u.publish.payload.len = 1;
  if (sub_id) {
    p.props.has = 1ull << UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER;
    p.props.subscription_id = sub_id;
  }
  ck_assert_int_eq(fake_send_packet(f->conn, &p), 0);
}

/* sub_id_dispatch: each subscribe call with a callback gets its own
 * Subscription Identifier, and a message carrying one goes to that call's
 * callback by the identifier alone (here even one whose filter does not
 * match the topic, which filter matching would never choose); a message
 * without one is matched by filter as before. */
START_TEST(fake_dispatch_by_subscription_identifier) {
  fx_t *f = calloc(1, sizeof *f);
  f->sub_id_dispatch = 1;
  fx_start(f, UVMQTT_V5, 30, 1, NULL);
  RUN_UNTIL(f, f->connects == 1, 2000);
  uvmqtt_topic_sub_t a = {{(const uint8_t *)"other/#", 7}, 0};
  uvmqtt_topic_sub_t b = {{(const uint8_t *)"x/#", 3}, 0};
  ck_assert_int_eq(uvmqtt_subscribe(&f->client, &a, 1, NULL, dispatch_a, NULL, NULL), 0);
  ck_assert_int_eq(uvmqtt_subscribe(&f->client, &b, 1, NULL, dispatch_b, NULL, NULL), 0);
  RUN_UNTIL(f, f->broker_subscribes == 2, 2000);
  ck_assert_uint_ne(f->sub_id[0], 0);
  ck_assert_uint_ne(f->sub_id[1], 0);
  ck_assert_uint_ne(f->sub_id[0], f->sub_id[1]);
  send_with_sub_id(f, f->sub_id[0]);
  RUN_UNTIL(f, f->got_a == 1, 2000);
  ck_assert_int_eq(f->got_a, 1);
  ck_assert_int_eq(f->got_b, 0);
  send_with_sub_id(f, 0);
  RUN_UNTIL(f, f->got_b == 1, 2000);
  ck_assert_int_eq(f->got_a, 1);
  ck_assert_int_eq(f->got_b, 1);
  /* Unsubscribed: its identifier no longer dispatches. */
  const char *gone[] = {"other/#"};
  ck_assert_int_eq(uvmqtt_unsubscribe(&f->client, gone, 1, NULL, NULL), 0);
  send_with_sub_id(f, f->sub_id[0]);
  RUN_UNTIL(f, f->got_b == 2, 2000);
  ck_assert_int_eq(f->got_a, 1);
  ck_assert_int_eq(f->got_b, 2);
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
  tcase_add_loop_test(tc, fake_nothing_after_disconnect, 0, 6);
  tcase_add_loop_test(tc, fake_disconnect_from_failed_on_connect, 0, 2);
  tcase_add_loop_test(tc, fake_bad_packet_cause_survives_reset, 0, 2);
  tcase_add_loop_test(tc, fake_session_present_to_clean_start_refused, 0, 2);
  tcase_add_loop_test(tc, fake_minimal_connect_v5, 0, 2);
  tcase_add_loop_test(tc, fake_bind_address_used, 0, 2);
  tcase_add_test(tc, fake_bind_address_other_family_fails);
  tcase_add_test(tc, fake_resubscribe_keeps_props_splits_reports);
  tcase_add_test(tc, fake_allocations_per_message);
  tcase_add_test(tc, fake_dispatch_by_subscription_identifier);
  tcase_add_loop_test(tc, fake_keepalive_slow_uplink, 0, 2);
  tcase_add_loop_test(tc, fake_graceful_disconnect_half_closes, 0, 2);
  suite_add_tcase(s, tc);
  return s;
}
