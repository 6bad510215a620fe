/* The sans-I/O session: bytes and time in, bytes and events out. Each test
 * plays the broker by hand with encoded packets and decodes what the session
 * writes. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "session/session.h"
#include "uvmqtt/alloc.h"

/* What the session's active block holds; it has none while idle. */
#define ACT_N(s, field) ((s).act ? (s).act->field : 0)
#define ACT_P(s, field) ((s).act ? (s).act->field : NULL)

#define MAX_OUT 256

typedef struct {
  uvmqtt__session_t s;
  int connacks;
  int messages;
  int done;
  int last_status;
  uint8_t last_reason;
  int statuses[256];
  void *args[256]; /* each completed publish's arg, in completion order */
  int requests;
  int disconnects;
  int wakes;
  char last_topic[128];
  int auths;           /* enhanced authentication steps handed to the owner */
  uint8_t auth_reason; /* the last one's reason (0 for CONNACK) */
  int auth_fail;       /* the owner's mechanism refuses */
  uint64_t clock;      /* what ev_now() reports */
  /* Decoded output of the last drain. */
  uint8_t *raw;
  size_t raw_len;
  uvmqtt_packet_t out[MAX_OUT];
  int nout;
} fixture_t;

static int ev_connack(void *o, const uvmqtt_packet_t *p) {
  (void)p;
  ((fixture_t *)o)->connacks++;
  return 0;
}

static int ev_message(void *o, const uvmqtt_packet_t *p, uvmqtt_bytes_t topic) {
  fixture_t *f = o;
  (void)p;
  f->messages++;
  size_t n = topic.len < sizeof f->last_topic - 1 ? topic.len : sizeof f->last_topic - 1;
  memcpy(f->last_topic, topic.data, n);
  f->last_topic[n] = '\0';
  return 0;
}

static int ev_done(void *o, const uvmqtt__done_t *m, int status, uint8_t reason) {
  fixture_t *f = o;
  if (f->done < 256) {
    f->statuses[f->done] = status;
    f->args[f->done] = m->arg;
  }
  f->done++;
  f->last_status = status;
  f->last_reason = reason;
  return 0;
}

static int ev_request(void *o, uvmqtt__req_t *r, int status, const uvmqtt_packet_t *ack) {
  (void)r;
  (void)ack;
  fixture_t *f = o;
  f->requests++;
  f->last_status = status;
  return 0;
}

static int ev_disconnect(void *o, const uvmqtt_packet_t *p) {
  (void)p;
  ((fixture_t *)o)->disconnects++;
  return 0;
}

static void ev_stored(void *o, void *arg, int status) {
  (void)arg;
  fixture_t *f = o;
  f->requests += 1000; /* counted apart from requests: thousands */
  f->last_status = status;
}

static void ev_wake(void *o) {
  ((fixture_t *)o)->wakes++;
}

/* The owner's clock, for what the session does outside its calls. */
static uint64_t ev_now(void *o) {
  return ((fixture_t *)o)->clock;
}

/* The owner's mechanism: answers a continue with "resp". */
static int ev_auth(void *o, const uvmqtt_packet_t *p) {
  fixture_t *f = o;
  f->auths++;
  f->auth_reason = p->type == UVMQTT_CONNACK ? 0 : p->reason;
  if (f->auth_fail) return UVMQTT_EAUTH;
  if (f->auth_reason != 0x18) return 0;
  uvmqtt_bytes_t d = {(const uint8_t *)"resp", 4};
  return uvmqtt__session_auth(&f->s, 0x18, &d, 0);
}

static const uvmqtt__session_events_t events = {ev_connack, ev_message,    ev_done,
                                                ev_request, ev_disconnect, ev_stored,
                                                ev_wake,    ev_now,        ev_auth};

/* Takes the session's output and decodes every packet in it. */
static int drain(fixture_t *f) {
  free(f->raw);
  f->raw = NULL;
  f->nout = 0;
  uvmqtt__output_t o;
  if (!uvmqtt__session_take_output(&f->s, &o)) return 0;
  f->raw = malloc(o.len);
  memcpy(f->raw, o.buf, o.len);
  f->raw_len = o.len;
  /* Written as soon as it was queued. */
  uvmqtt__session_written(&f->s, &o, 0, uvmqtt__session_time(&f->s, UVMQTT__T_SEND));
  size_t off = 0;
  while (off < f->raw_len && f->nout < MAX_OUT) {
    /* A whole-buffer decode: the packet's own length says where it ends. */
    size_t len = 1, mult = 1, rem = 0;
    uint8_t b;
    do {
      b = f->raw[off + len];
      rem += (b & 127u) * mult;
      mult *= 128;
      len++;
    } while (b & 128u);
    int err = uvmqtt_decode_packet(f->raw + off, len + rem, f->s.version, &f->out[f->nout]);
    ck_assert_msg(err == 0, "session wrote a packet the codec rejects: %s", uvmqtt_strerror(err));
    f->nout++;
    off += len + rem;
  }
  return f->nout;
}

static void feed_packet(fixture_t *f, const uvmqtt_packet_t *p, uint64_t now, int expect) {
  uint8_t buf[1024];
  ssize_t n = uvmqtt_encode(p, f->s.version, buf, sizeof buf);
  ck_assert_int_gt(n, 0);
  ck_assert_int_eq(uvmqtt__session_recv(&f->s, buf, (size_t)n, now), expect);
}

static void feed_ack(fixture_t *f, uint8_t type, uint16_t id, uint8_t reason, uint64_t now) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = type;
  p.packet_id = id;
  p.reason = reason;
  feed_packet(f, &p, now, 0);
}

/* A CONNECT of client "sess" for `version`, without properties. */
static uvmqtt_packet_t connect_packet(uint8_t version, uint8_t clean) {
  uvmqtt_packet_t c;
  memset(&c, 0, sizeof c);
  c.type = UVMQTT_CONNECT;
  c.u.connect.protocol_level = version;
  c.u.connect.clean_start = clean;
  c.u.connect.client_id.data = (const uint8_t *)"sess";
  c.u.connect.client_id.len = 4;
  return c;
}

static void setup_session(fixture_t *f, uint8_t version, uint8_t clean, uint16_t keepalive) {
  memset(f, 0, sizeof *f);
  uvmqtt__session_init(&f->s, f, &events, version);
  uvmqtt_packet_t c = connect_packet(version, clean);
  c.u.connect.keep_alive = keepalive;
  if (version == UVMQTT_V5) {
    c.props.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM;
    c.props.topic_alias_maximum = 4;
  }
  ck_assert_int_eq(uvmqtt__session_connect(&f->s, &c, 0), 0);
  ck_assert_int_eq(drain(f), 1);
  ck_assert_int_eq(f->out[0].type, UVMQTT_CONNECT);
}

static void connack(fixture_t *f, uint8_t session_present, const uvmqtt_props_t *props) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_CONNACK;
  p.session_present = session_present;
  if (props) p.props = *props;
  feed_packet(f, &p, 0, 0);
}

/* A SUBSCRIBE for the one filter `sub` (its packet id is the session's). */
static uvmqtt_packet_t subscribe_packet(const uvmqtt_topic_sub_t *sub) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_SUBSCRIBE;
  p.u.subscribe.subs = sub;
  p.u.subscribe.count = 1;
  return p;
}

static void teardown(fixture_t *f) {
  uvmqtt__session_free(&f->s, UVMQTT_ECLOSED);
  free(f->raw);
  f->raw = NULL;
}

static void publish(fixture_t *f, const char *topic, uint8_t qos, uint8_t policy, uint32_t dl,
                    uint64_t now, int expect) {
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.qos = qos;
  o.policy = policy;
  o.deadline_ms = dl;
  ck_assert_int_eq(uvmqtt__session_publish(&f->s, topic, "payload", 7, &o, now), expect);
}

/* ---- QoS flows ------------------------------------------------------------ */

START_TEST(session_connect_and_connack) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 30);
  ck_assert_int_eq(f.s.state, UVMQTT__S_CONNECTING);
  connack(&f, 0, NULL);
  ck_assert_int_eq(f.connacks, 1);
  ck_assert_int_eq(f.s.state, UVMQTT__S_ONLINE);
  teardown(&f);
}
END_TEST

START_TEST(session_publish_qos1_acked) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 30);
  connack(&f, 0, NULL);
  publish(&f, "a/b", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  ck_assert_int_eq(f.out[0].u.publish.qos, 1);
  uint16_t id = f.out[0].packet_id;
  ck_assert_uint_ne(id, 0);
  ck_assert_int_eq(ACT_N(f.s, inflight), 1);
  feed_ack(&f, UVMQTT_PUBACK, id, 0, 2);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, 0);
  ck_assert_int_eq(ACT_N(f.s, inflight), 0);
  ck_assert_int_eq(ACT_N(f.s, queued), 0);
  teardown(&f);
}
END_TEST

START_TEST(session_publish_qos2_flow) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 30);
  connack(&f, 0, NULL);
  publish(&f, "q2", 2, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(drain(&f), 1);
  uint16_t id = f.out[0].packet_id;
  feed_ack(&f, UVMQTT_PUBREC, id, 0, 2);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBREL);
  ck_assert_uint_eq(f.out[0].packet_id, id);
  ck_assert_int_eq(f.done, 0);
  feed_ack(&f, UVMQTT_PUBCOMP, id, 0, 3);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, 0);
  teardown(&f);
}
END_TEST

START_TEST(session_v5_puback_failure_reason_is_data) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 30);
  connack(&f, 0, NULL);
  publish(&f, "denied", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  drain(&f);
  feed_ack(&f, UVMQTT_PUBACK, f.out[0].packet_id, 0x87, 2);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, 0);
  ck_assert_int_eq(f.last_reason, 0x87);
  teardown(&f);
}
END_TEST

START_TEST(session_unexpected_acks_ignored) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 30);
  connack(&f, 0, NULL);
  feed_ack(&f, UVMQTT_PUBACK, 77, 0, 1);
  feed_ack(&f, UVMQTT_PUBCOMP, 78, 0, 1);
  ck_assert_int_eq(f.done, 0);
  ck_assert_int_eq(drain(&f), 0);
  /* An unknown PUBREL is answered so the broker can forget the id. */
  feed_ack(&f, UVMQTT_PUBREL, 79, 0, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBCOMP);
  ck_assert_uint_eq(f.out[0].packet_id, 79);
  if (_i) ck_assert_int_eq(f.out[0].reason, 0x92);
  teardown(&f);
}
END_TEST

static void feed_publish(fixture_t *f, const char *topic, uint8_t qos, uint16_t id, uint8_t dup,
                         const uvmqtt_props_t *props, int expect) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_PUBLISH;
  p.packet_id = id;
  p.u.publish.qos = qos;
  p.u.publish.dup = dup;
  p.u.publish.topic.data = (const uint8_t *)topic;
  p.u.publish.topic.len = (uint32_t)strlen(topic);
  p.u.publish.payload.data = (const uint8_t *)"x";
  p.u.publish.payload.len = 1;
  if (props) p.props = *props;
  feed_packet(f, &p, 1, expect);
}

START_TEST(session_incoming_qos2_exactly_once) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 30);
  connack(&f, 0, NULL);
  feed_publish(&f, "in", 2, 9, 0, NULL, 0);
  ck_assert_int_eq(f.messages, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBREC);
  /* The broker resends before our PUBREC reached it: no second delivery. */
  feed_publish(&f, "in", 2, 9, 1, NULL, 0);
  ck_assert_int_eq(f.messages, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBREC);
  feed_ack(&f, UVMQTT_PUBREL, 9, 0, 2);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBCOMP);
  ck_assert_int_eq(f.out[0].reason, 0);
  /* After PUBREL the id is free: the same id is a new message. */
  feed_publish(&f, "in", 2, 9, 0, NULL, 0);
  ck_assert_int_eq(f.messages, 2);
  teardown(&f);
}
END_TEST

START_TEST(session_incoming_qos1_acked_after_callback) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 30);
  connack(&f, 0, NULL);
  feed_publish(&f, "in/1", 1, 5, 0, NULL, 0);
  ck_assert_int_eq(f.messages, 1);
  ck_assert_str_eq(f.last_topic, "in/1");
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBACK);
  ck_assert_uint_eq(f.out[0].packet_id, 5);
  teardown(&f);
}
END_TEST

/* ---- Broker limits ----------------------------------------------------------- */

START_TEST(session_receive_maximum_honoured) {
  for (uint16_t max = 1; max <= 3; max++) {
    fixture_t f;
    setup_session(&f, UVMQTT_V5, 1, 30);
    uvmqtt_props_t pr;
    memset(&pr, 0, sizeof pr);
    pr.has = 1ull << UVMQTT_PROP_RECEIVE_MAXIMUM;
    pr.receive_maximum = max;
    connack(&f, 0, &pr);
    for (int i = 0; i < 5; i++)
      publish(&f, "rm", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
    ck_assert_int_eq(drain(&f), max);
    uint16_t first = f.out[0].packet_id;
    feed_ack(&f, UVMQTT_PUBACK, first, 0, 2);
    ck_assert_int_eq(drain(&f), 1); /* one slot freed, one more sent */
    ck_assert_int_eq(ACT_N(f.s, inflight), max);
    teardown(&f);
  }
}
END_TEST

START_TEST(session_max_inflight_caps_window) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 1, 0);
  f.s.max_inflight = 2;
  connack(&f, 0, NULL);
  for (int i = 0; i < 5; i++)
    publish(&f, "mi", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(drain(&f), 2);
  feed_ack(&f, UVMQTT_PUBACK, f.out[0].packet_id, 0, 2);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(ACT_N(f.s, inflight), 2);
  teardown(&f);
}
END_TEST

START_TEST(session_broker_limits_fail_locally) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 30);
  uvmqtt_props_t pr;
  memset(&pr, 0, sizeof pr);
  pr.has = (1ull << UVMQTT_PROP_MAXIMUM_QOS) | (1ull << UVMQTT_PROP_RETAIN_AVAILABLE) |
           (1ull << UVMQTT_PROP_MAXIMUM_PACKET_SIZE);
  pr.maximum_qos = 0;
  pr.retain_available = 0;
  pr.maximum_packet_size = 64;
  connack(&f, 0, &pr);
  publish(&f, "t", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, UVMQTT_EQOSNOTSUP);
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.retain = 1;
  o.policy = UVMQTT_DELIVERY_DROP;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "t", "x", 1, &o, 1), UVMQTT_ERETAINNOTSUP);
  char big[100];
  memset(big, 'x', sizeof big);
  o.retain = 0;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "t", big, sizeof big, &o, 1), UVMQTT_EPKTTOOBIG);
  ck_assert_int_eq(ACT_N(f.s, queued), 0);
  teardown(&f);
}
END_TEST

START_TEST(session_server_keep_alive_applied) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 60);
  uvmqtt_props_t pr;
  memset(&pr, 0, sizeof pr);
  pr.has = 1ull << UVMQTT_PROP_SERVER_KEEP_ALIVE;
  pr.server_keep_alive = 5;
  connack(&f, 0, &pr);
  /* 5 s, not 60, on the keepalive grid (a sixteenth: 312 ms steps). */
  ck_assert_uint_eq(uvmqtt__session_next_deadline(&f.s), 5000 - 5000 % 312);
  teardown(&f);
}
END_TEST

/* Keepalive deadlines sit on a grid, so that a loop wakes once for the
 * pings of many clients: never later than keep_alive for a PINGREQ (up to
 * one step early), never earlier than the bounded wait for its answer. */
START_TEST(session_keepalive_grid) {
  static fixture_t f[3];
  const uint64_t starts[3] = {100, 700, 1300};
  for (int i = 0; i < 3; i++) {
    memset(&f[i], 0, sizeof f[i]);
    uvmqtt__session_init(&f[i].s, &f[i], &events, UVMQTT_V311);
    uvmqtt_packet_t c = connect_packet(UVMQTT_V311, 1);
    c.u.connect.keep_alive = 60;
    ck_assert_int_eq(uvmqtt__session_connect(&f[i].s, &c, starts[i]), 0);
    drain(&f[i]);
    uvmqtt_packet_t p;
    memset(&p, 0, sizeof p);
    p.type = UVMQTT_CONNACK;
    feed_packet(&f[i], &p, starts[i], 0);
  }
  /* 60 s keepalive: steps of 1 s. The first two share their deadline. */
  ck_assert_uint_eq(uvmqtt__session_next_deadline(&f[0].s), 60000);
  ck_assert_uint_eq(uvmqtt__session_next_deadline(&f[1].s), 60000);
  ck_assert_uint_eq(uvmqtt__session_next_deadline(&f[2].s), 61000);
  for (int i = 0; i < 3; i++) {
    uint64_t d = uvmqtt__session_next_deadline(&f[i].s);
    ck_assert_uint_le(d, starts[i] + 60000);
    ck_assert_uint_gt(d + UVMQTT__KEEPALIVE_GRID_MS, starts[i] + 60000);
    ck_assert_int_eq(uvmqtt__session_tick(&f[i].s, d - 1), 0);
    ck_assert_int_eq(drain(&f[i]), 0);
    ck_assert_int_eq(uvmqtt__session_tick(&f[i].s, d), 0);
    ck_assert_int_eq(drain(&f[i]), 1);
    ck_assert_int_eq(f[i].out[0].type, UVMQTT_PINGREQ);
  }
  /* The wait for PINGRESP (half a keep_alive from the write) ends on a
   * step too, never before it has run its length. */
  uint64_t wait = uvmqtt__session_next_deadline(&f[0].s);
  ck_assert_uint_ge(wait, 60000 + 30000);
  ck_assert_uint_eq(wait % 1000, 0);
  for (int i = 0; i < 3; i++)
    teardown(&f[i]);
}
END_TEST

/* ---- Keepalive ------------------------------------------------------------------ */

START_TEST(session_keepalive_ping_and_timeout) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 10);
  connack(&f, 0, NULL);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 9999), 0);
  ck_assert_int_eq(drain(&f), 0);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 10000), 0);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PINGREQ);
  /* Silent broker: detected half a keepalive after the ping (1.5x in all). */
  ck_assert_uint_eq(uvmqtt__session_next_deadline(&f.s), 15000);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 14999), 0);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 15000), UVMQTT_EKEEPALIVE);
  teardown(&f);
}
END_TEST

START_TEST(session_keepalive_pingresp_keeps_alive) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 1, 10);
  connack(&f, 0, NULL);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 10000), 0);
  drain(&f);
  uint8_t pingresp[2] = {0xD0, 0};
  ck_assert_int_eq(uvmqtt__session_recv(&f.s, pingresp, 2, 10100), 0);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 15000), 0);
  ck_assert_int_eq(f.s.ping, 0);
  teardown(&f);
}
END_TEST

/* ---- Reconnects ------------------------------------------------------------------- */

static void reconnect(fixture_t *f, uint8_t session_present) {
  uvmqtt_packet_t c = connect_packet(f->s.version, 0);
  c.u.connect.keep_alive = 30;
  ck_assert_int_eq(uvmqtt__session_connect(&f->s, &c, 100), 0);
  drain(f);
  connack(f, session_present, NULL);
}

START_TEST(session_resend_with_session_present) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 0, 30);
  connack(&f, 0, NULL);
  publish(&f, "one", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  publish(&f, "two", 2, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  drain(&f);
  uint16_t id1 = f.out[0].packet_id, id2 = f.out[1].packet_id;
  feed_ack(&f, UVMQTT_PUBREC, id2, 0, 2);
  drain(&f); /* PUBREL */
  uvmqtt__session_lost(&f.s, UV_EOF, 3);
  ck_assert_int_eq(f.done, 0);
  reconnect(&f, 1);
  /* PUBRELs first (in PUBREC order), then the PUBLISH resends in their
   * first-send order [MQTT-4.6.0-1, -4]. */
  ck_assert_int_eq(drain(&f), 2);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBREL);
  ck_assert_uint_eq(f.out[0].packet_id, id2);
  ck_assert_int_eq(f.out[1].type, UVMQTT_PUBLISH);
  ck_assert_int_eq(f.out[1].u.publish.dup, 1);
  ck_assert_uint_eq(f.out[1].packet_id, id1);
  teardown(&f);
}
END_TEST

/* A 3.1 CONNACK cannot say whether the session was kept: asked for with
 * clean session 0, it is resumed (PUBREL, DUP resends); with clean session
 * 1 there is none. */
START_TEST(session_v31_resumes_asked_session) {
  fixture_t f;
  setup_session(&f, UVMQTT_V31, 0, 30);
  ck_assert_uint_eq(f.out[0].u.connect.protocol_level, UVMQTT_V31);
  connack(&f, 0, NULL);
  publish(&f, "one", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  publish(&f, "two", 2, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  drain(&f);
  uint16_t id1 = f.out[0].packet_id, id2 = f.out[1].packet_id;
  feed_ack(&f, UVMQTT_PUBREC, id2, 0, 2);
  drain(&f); /* PUBREL */
  uvmqtt__session_lost(&f.s, UV_EOF, 3);
  reconnect(&f, 0);
  ck_assert_int_eq(drain(&f), 2);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBREL);
  ck_assert_uint_eq(f.out[0].packet_id, id2);
  ck_assert_int_eq(f.out[1].type, UVMQTT_PUBLISH);
  ck_assert_uint_eq(f.out[1].u.publish.dup, 1);
  ck_assert_uint_eq(f.out[1].packet_id, id1);
  teardown(&f);
}
END_TEST

START_TEST(session_republish_without_session) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 0, 30);
  connack(&f, 0, NULL);
  publish(&f, "one", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  drain(&f);
  uvmqtt__session_lost(&f.s, UV_EOF, 3);
  reconnect(&f, 0);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  ck_assert_int_eq(f.out[0].u.publish.dup, 0);
  ck_assert_int_eq(f.done, 0);
  teardown(&f);
}
END_TEST

START_TEST(session_offline_queue_sent_on_connack) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 30);
  uvmqtt__session_lost(&f.s, UV_EOF, 1);
  for (int i = 0; i < 3; i++)
    publish(&f, "q", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(drain(&f), 0);
  reconnect(&f, 0);
  ck_assert_int_eq(drain(&f), 3);
  teardown(&f);
}
END_TEST

/* ---- Delivery policies ------------------------------------------------------------- */

START_TEST(session_deadline_expires_unsent_only) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  connack(&f, 0, NULL);
  publish(&f, "sent", 1, UVMQTT_DELIVERY_DEADLINE, 1000, 0, 0);
  drain(&f); /* handed to the socket: not expirable any more */
  uvmqtt__session_lost(&f.s, UV_EOF, 10);
  publish(&f, "unsent", 1, UVMQTT_DELIVERY_DEADLINE, 1000, 20, 0);
  ck_assert_uint_eq(uvmqtt__session_next_deadline(&f.s), 1020);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 1019), 0);
  ck_assert_int_eq(f.done, 0);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 1020), 0);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, UVMQTT_EEXPIRED);
  ck_assert_int_eq(ACT_N(f.s, queued), 1); /* the one in flight stays until acked */
  reconnect(&f, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].u.publish.dup, 1); /* only the sent one goes again */
  teardown(&f);
}
END_TEST

/* At a loss, a deadline message past its deadline is not kept: the one
 * handed to the socket completes with the connection's error (it may have
 * arrived), the one never sent expires. */
START_TEST(session_deadline_past_at_loss) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.max_inflight = 1;
  connack(&f, 0, NULL);
  publish(&f, "sent", 1, UVMQTT_DELIVERY_DEADLINE, 100, 0, 0);
  publish(&f, "waiting", 1, UVMQTT_DELIVERY_DEADLINE, 100, 0, 0); /* the window is full */
  publish(&f, "young", 1, UVMQTT_DELIVERY_DEADLINE, 1000, 0, 0);
  ck_assert_int_eq(drain(&f), 1);
  uvmqtt__session_lost(&f.s, UV_EOF, 200); /* before any tick saw the deadline */
  ck_assert_int_eq(f.done, 2);
  ck_assert_int_eq(f.statuses[0], UV_EOF);
  ck_assert_int_eq(f.statuses[1], UVMQTT_EEXPIRED);
  ck_assert_int_eq(ACT_N(f.s, queued), 1);
  reconnect(&f, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].u.publish.dup, 0); /* "young", never sent before */
  teardown(&f);
}
END_TEST

typedef struct {
  int calls;
  int last_status;
  uvmqtt_pending_info_t seen[4];
} decide_log_t;

/* Keeps what is on topic "keep", drops the rest. */
static int decide_by_topic(void *state, const uvmqtt_pending_info_t *msg, int status) {
  decide_log_t *log = state;
  if (log->calls < 4) log->seen[log->calls] = *msg;
  log->calls++;
  log->last_status = status;
  return msg->topic.len == 4 && memcmp(msg->topic.data, "keep", 4) == 0;
}

START_TEST(session_custom_policy_decides_at_loss) {
  fixture_t f;
  decide_log_t log;
  memset(&log, 0, sizeof log);
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.decide = decide_by_topic;
  f.s.decide_state = &log;
  connack(&f, 0, NULL);
  publish(&f, "keep", 1, UVMQTT_DELIVERY_CUSTOM, 0, 10, 0);
  publish(&f, "drop", 2, UVMQTT_DELIVERY_CUSTOM, 0, 20, 0);
  ck_assert_int_eq(drain(&f), 2);
  uvmqtt__session_lost(&f.s, UVMQTT_EKEEPALIVE, 50);
  /* Asked once per message, in order, with what it needs to decide. */
  ck_assert_int_eq(log.calls, 2);
  ck_assert_int_eq(log.last_status, UVMQTT_EKEEPALIVE);
  ck_assert_int_eq(log.seen[0].qos, 1);
  ck_assert_int_eq(log.seen[0].sent, 1);
  ck_assert_uint_eq(log.seen[0].payload_len, 7); /* "payload" */
  ck_assert_uint_eq(log.seen[0].age_ms, 40);
  ck_assert_int_eq(log.seen[1].qos, 2);
  ck_assert_uint_eq(log.seen[1].age_ms, 30);
  /* The dropped one completes with the connection's error. */
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, UVMQTT_EKEEPALIVE);
  ck_assert_int_eq(ACT_N(f.s, queued), 1);
  /* The kept one goes again after the reconnect, as a duplicate. */
  reconnect(&f, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  ck_assert_int_eq(f.out[0].u.publish.dup, 1);
  ck_assert_int_eq(f.out[0].u.publish.topic.len, 4);
  ck_assert_mem_eq(f.out[0].u.publish.topic.data, "keep", 4);
  /* Without a decide function a custom message is kept. */
  f.s.decide = NULL;
  uvmqtt__session_lost(&f.s, UV_EOF, 60);
  ck_assert_int_eq(ACT_N(f.s, queued), 1);
  teardown(&f);
}
END_TEST

START_TEST(session_drop_policy_fails_at_loss) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  connack(&f, 0, NULL);
  publish(&f, "d", 1, UVMQTT_DELIVERY_DROP, 0, 0, 0);
  publish(&f, "k", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  drain(&f);
  uvmqtt__session_lost(&f.s, UV_ECONNRESET, 5);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, UV_ECONNRESET);
  ck_assert_int_eq(ACT_N(f.s, queued), 1);
  teardown(&f);
}
END_TEST

/* A QoS 0 message published while nothing waits goes straight into the
 * output: its bytes are exactly the encoder's for every topic length (the
 * copy and the topic check work in words), and every check of the general
 * path still refuses what it must, leaving no block behind. */
START_TEST(session_qos0_direct_bytes_and_refusals) {
  fixture_t f;
  uint8_t version = _i ? UVMQTT_V5 : UVMQTT_V311;
  setup_session(&f, version, 1, 0);
  connack(&f, 0, NULL);
  drain(&f);
  static const size_t payload_lens[] = {0, 1, 64, 300};
  static uint8_t payload[300];
  for (size_t i = 0; i < sizeof payload; i++)
    payload[i] = (uint8_t)(i * 7);
  char topic[81];
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  for (size_t tl = 1; tl <= 80; tl++) {
    for (size_t k = 0; k < tl; k++)
      topic[k] = (char)(k % 9 == 8 ? '/' : 'a' + (int)(k % 26));
    topic[tl] = 0;
    for (size_t pi = 0; pi < 4; pi++) {
      size_t pl = payload_lens[pi];
      ck_assert_int_eq(uvmqtt__session_publish(&f.s, topic, payload, pl, &o, 1), 0);
      ck_assert_ptr_null(f.s.act->queue.head);
      ck_assert_ptr_null(f.s.act->out.pubs[f.s.act->out.npubs - 1].msg);
      uvmqtt_packet_t pkt;
      memset(&pkt, 0, sizeof pkt);
      pkt.type = UVMQTT_PUBLISH;
      pkt.u.publish.topic.data = (const uint8_t *)topic;
      pkt.u.publish.topic.len = (uint32_t)tl;
      pkt.u.publish.payload.data = payload;
      pkt.u.publish.payload.len = (uint32_t)pl;
      uint8_t want[512];
      ssize_t n = uvmqtt_encode(&pkt, version, want, sizeof want);
      ck_assert_int_gt(n, 0);
      int done = f.done;
      ck_assert_int_eq(drain(&f), 1);
      ck_assert_int_eq(f.done, done + 1);
      ck_assert_uint_eq(f.raw_len, (size_t)n);
      ck_assert_mem_eq(f.raw, want, (size_t)n);
    }
    /* A wildcard or a byte that is not UTF-8 at each place: refused, and
     * the block the refused message would have needed is gone. */
    for (size_t k = 0; k < tl; k++) {
      static const struct {
        uint8_t byte;
        int err;
      } bad[] = {{'+', UVMQTT_ETOPICWILD}, {'#', UVMQTT_ETOPICWILD}, {0xFF, UVMQTT_EBADUTF8}};
      for (size_t b = 0; b < 3; b++) {
        char saved = topic[k];
        topic[k] = (char)bad[b].byte;
        ck_assert_ptr_null(f.s.act);
        ck_assert_int_eq(uvmqtt__session_publish(&f.s, topic, "x", 1, &o, 1), bad[b].err);
        ck_assert_ptr_null(f.s.act);
        topic[k] = saved;
      }
    }
  }
  /* Multi-byte UTF-8 takes the full scan, and passes. */
  ck_assert_int_eq(
      uvmqtt__session_publish(&f.s, "caf\xc3\xa9/\xe2\x82\xac/long-enough", "x", 1, &o, 1), 0);
  ck_assert_int_eq(drain(&f), 1);
  /* The queue bounds count what the output holds. */
  f.s.max_queued = 2;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "q", "x", 1, &o, 1), 0);
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "q", "x", 1, &o, 1), 0);
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "q", "x", 1, &o, 1), UVMQTT_EQUEUEFULL);
  ck_assert_int_eq(drain(&f), 2);
  f.s.max_queued = 100;
  /* Larger than the broker's Maximum Packet Size: never on this connection. */
  f.s.broker_max_packet = 32;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "big", payload, 64, &o, 1), UVMQTT_EPKTTOOBIG);
  ck_assert_ptr_null(f.s.act);
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "small", payload, 8, &o, 1), 0);
  ck_assert_int_eq(drain(&f), 1);
  teardown(&f);
}
END_TEST

START_TEST(session_queue_bounds) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.max_queued = 3;
  for (int i = 0; i < 3; i++)
    publish(&f, "b", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  publish(&f, "b", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, UVMQTT_EQUEUEFULL);
  ck_assert_int_eq(f.done, 0);
  f.s.overflow = UVMQTT_OVERFLOW_DROP_OLDEST;
  publish(&f, "b", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, UVMQTT_EDROPPED);
  ck_assert_int_eq(ACT_N(f.s, queued), 3);
  teardown(&f);
}
END_TEST

/* ---- Packet ids ------------------------------------------------------------------------ */

START_TEST(session_packet_ids_never_reused_in_flight) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 1, 0);
  connack(&f, 0, NULL);
  /* Fill the id space but one, acking all but the first few. */
  publish(&f, "keep", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  drain(&f);
  uint16_t held = f.out[0].packet_id;
  for (int i = 0; i < 70000; i++) {
    publish(&f, "x", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
    ck_assert_int_eq(drain(&f), 1);
    ck_assert_uint_ne(f.out[0].packet_id, held);
    ck_assert_uint_ne(f.out[0].packet_id, 0);
    feed_ack(&f, UVMQTT_PUBACK, f.out[0].packet_id, 0, 0);
  }
  ck_assert_int_eq(ACT_N(f.s, inflight), 1);
  teardown(&f);
}
END_TEST

/* ---- Topic aliases and bad input --------------------------------------------------------- */

START_TEST(session_incoming_topic_alias) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 0);
  connack(&f, 0, NULL);
  uvmqtt_props_t pr;
  memset(&pr, 0, sizeof pr);
  pr.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS;
  pr.topic_alias = 2;
  feed_publish(&f, "long/topic/name", 0, 0, 0, &pr, 0);
  ck_assert_str_eq(f.last_topic, "long/topic/name");
  feed_publish(&f, "", 0, 0, 0, &pr, 0);
  ck_assert_int_eq(f.messages, 2);
  ck_assert_str_eq(f.last_topic, "long/topic/name");
  /* An alias beyond our maximum is a protocol error. */
  pr.topic_alias = 5;
  feed_publish(&f, "x", 0, 0, 0, &pr, UVMQTT_ETOPICALIAS);
  teardown(&f);
}
END_TEST

START_TEST(session_unknown_alias_rejected) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 0);
  connack(&f, 0, NULL);
  uvmqtt_props_t pr;
  memset(&pr, 0, sizeof pr);
  pr.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS;
  pr.topic_alias = 1;
  feed_publish(&f, "", 0, 0, 0, &pr, UVMQTT_ETOPICALIAS);
  teardown(&f);
}
END_TEST

START_TEST(session_incoming_size_bounded_by_default) {
  fixture_t f;
  memset(&f, 0, sizeof f);
  uvmqtt__session_init(&f.s, &f, &events, UVMQTT_V311);
  ck_assert_uint_eq(f.s.our_max_packet, 16u * 1024 * 1024);
  f.s.our_max_packet = 100;
  uvmqtt_packet_t c = connect_packet(UVMQTT_V311, 0);
  ck_assert_int_eq(uvmqtt__session_connect(&f.s, &c, 0), 0);
  drain(&f);
  connack(&f, 0, NULL);
  /* A PUBLISH declaring 200 bytes is refused before anything is buffered. */
  uint8_t head[3] = {0x30, 0xC8, 0x01};
  ck_assert_int_eq(uvmqtt__session_recv(&f.s, head, sizeof head, 1), UVMQTT_ETOOLARGE);
  teardown(&f);
}
END_TEST

START_TEST(session_malformed_input_sends_disconnect) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 0);
  connack(&f, 0, NULL);
  drain(&f);
  /* PUBACK with reserved flag bits set. */
  uint8_t bad[4] = {0x41, 2, 0, 1};
  int err = uvmqtt__session_recv(&f.s, bad, sizeof bad, 1);
  ck_assert_int_eq(err, UVMQTT_EBADFLAGS);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_DISCONNECT);
  ck_assert_int_eq(f.out[0].reason, 0x81);
  teardown(&f);
}
END_TEST

/* The client offers no Authentication Method, so an AUTH from the broker is
 * a protocol error, answered with DISCONNECT 0x82. */
START_TEST(session_unrequested_auth_is_protocol_error) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 0);
  connack(&f, 0, NULL);
  drain(&f);
  uint8_t auth[2] = {UVMQTT_AUTH << 4, 0}; /* reason 0x00, no properties */
  ck_assert_int_eq(uvmqtt__session_recv(&f.s, auth, sizeof auth, 1), UVMQTT_EPROTOCOL);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_DISCONNECT);
  ck_assert_int_eq(f.out[0].reason, 0x82);
  teardown(&f);
}
END_TEST

START_TEST(session_packet_before_connack_is_protocol_error) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 1, 0);
  uint8_t puback[4] = {0x40, 2, 0, 1};
  ck_assert_int_eq(uvmqtt__session_recv(&f.s, puback, sizeof puback, 1), UVMQTT_EUNEXPECTED);
  teardown(&f);
}
END_TEST

START_TEST(session_refused_connack) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 1, 0);
  uint8_t refused[4] = {0x20, 2, 0, 5};
  ck_assert_int_eq(uvmqtt__session_recv(&f.s, refused, sizeof refused, 1), UVMQTT_EREFUSED);
  ck_assert_int_eq(f.connacks, 1);
  ck_assert_int_eq(f.s.state, UVMQTT__S_TERMINATING);
  teardown(&f);
}
END_TEST

START_TEST(session_subscribe_request_roundtrip) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 0);
  connack(&f, 0, NULL);
  uvmqtt_topic_sub_t sub = {{(const uint8_t *)"a/+", 3}, 1};
  uvmqtt_packet_t p = subscribe_packet(&sub);
  ck_assert_int_eq(uvmqtt__session_request(&f.s, &p, NULL, NULL, 1), 0);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_SUBSCRIBE);
  uint8_t code = 1;
  uvmqtt_packet_t ack;
  memset(&ack, 0, sizeof ack);
  ack.type = UVMQTT_SUBACK;
  ack.packet_id = f.out[0].packet_id;
  ack.u.suback.codes = &code;
  ack.u.suback.count = 1;
  feed_packet(&f, &ack, 2, 0);
  ck_assert_int_eq(f.requests, 1);
  ck_assert_int_eq(f.last_status, 0);
  teardown(&f);
}
END_TEST

/* Output the owner never took did not reach the socket: a QoS 0 message in
 * it follows its delivery policy at the loss instead of failing. */
START_TEST(session_unsent_qos0_follows_policy_at_loss) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  connack(&f, 0, NULL);
  publish(&f, "kept", 0, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  publish(&f, "gone", 0, UVMQTT_DELIVERY_DROP, 0, 0, 0);
  uvmqtt__session_lost(&f.s, UV_EOF, 1);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.statuses[0], UV_EOF);
  reconnect(&f, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  ck_assert_int_eq(f.out[0].u.publish.topic.len, 4);
  ck_assert_int_eq(memcmp(f.out[0].u.publish.topic.data, "kept", 4), 0);
  ck_assert_int_eq(f.done, 2);
  ck_assert_int_eq(f.statuses[1], 0);
  teardown(&f);
}
END_TEST

/* Publishes once from inside the callback of a dropped message. */
static int ev_done_republish(void *o, const uvmqtt__done_t *m, int status, uint8_t reason) {
  fixture_t *f = o;
  ev_done(o, m, status, reason);
  if (status == UVMQTT_EDROPPED && f->done == 1) {
    uvmqtt__publish_t p;
    memset(&p, 0, sizeof p);
    p.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
    ck_assert_int_eq(uvmqtt__session_publish(&f->s, "again", "x", 1, &p, 0), 0);
  }
  return 0;
}

static const uvmqtt__session_events_t republish_events = {
    ev_connack, ev_message, ev_done_republish, ev_request, ev_disconnect, ev_stored, ev_wake,
    ev_now,     NULL};

/* Under the drop-oldest rule a publish never fails for room once it dropped
 * messages to make it, even when a callback of a dropped message publishes
 * and takes the room meanwhile. */
START_TEST(session_drop_oldest_room_kept_for_the_publish) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.ev = &republish_events;
  connack(&f, 0, NULL);
  f.s.max_inflight = 1;
  f.s.max_queued = 2;
  f.s.overflow = UVMQTT_OVERFLOW_DROP_OLDEST;
  publish(&f, "sent", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);   /* in flight */
  publish(&f, "queued", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0); /* waits for a slot */
  publish(&f, "new", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  /* "queued" made room for "new"; the QoS 0 "again" published from its
   * callback then dropped "new", the oldest unsent: each fate is reported. */
  ck_assert_int_eq(f.done, 2);
  ck_assert_int_eq(f.statuses[0], UVMQTT_EDROPPED);
  ck_assert_int_eq(f.statuses[1], UVMQTT_EDROPPED);
  teardown(&f);
}
END_TEST

START_TEST(session_free_completes_everything) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  connack(&f, 0, NULL);
  publish(&f, "a", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  drain(&f);
  publish(&f, "b", 0, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0); /* in the output */
  uvmqtt__session_lost(&f.s, UV_EOF, 1);
  publish(&f, "c", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0); /* queued */
  teardown(&f);
  ck_assert_int_eq(f.done, 3);
  /* The QoS 0 message never left the output, so its policy kept it. */
  ck_assert_int_eq(f.statuses[0], UVMQTT_ECLOSED);
  ck_assert_int_eq(f.statuses[1], UVMQTT_ECLOSED);
  ck_assert_int_eq(f.statuses[2], UVMQTT_ECLOSED);
}
END_TEST

/* ---- Store hooks -------------------------------------------------------------------------- */

/* A store in test memory: records what the session tells it. */
typedef struct {
  uvmqtt_store_record_t rec[16];
  uint8_t bytes[16][64];
  int n;
  int updates;
  uvmqtt_store_done_cb done[16];
  void *done_arg[16];
  /* Phase changes not confirmed yet, in call order. */
  uvmqtt_store_done_cb update_done[16];
  void *update_arg[16];
  int nupdate_waits;
  int fail_append;
} mem_store_t;

static int ms_append(void *st, const uvmqtt_store_record_t *r, uvmqtt_store_done_cb done,
                     void *arg) {
  mem_store_t *m = st;
  if (m->fail_append) return UV_ENOSPC;
  ck_assert_int_lt(m->n, 16);
  ck_assert_uint_le(r->len, 64);
  m->rec[m->n] = *r;
  memcpy(m->bytes[m->n], r->packet, r->len);
  m->rec[m->n].packet = m->bytes[m->n];
  m->done[m->n] = done;
  m->done_arg[m->n] = arg;
  m->n++;
  return 0;
}

static int ms_update(void *st, uint64_t seq, uint8_t phase, uint16_t id, uvmqtt_store_done_cb done,
                     void *arg) {
  mem_store_t *m = st;
  m->updates++;
  if (done) {
    ck_assert_int_lt(m->nupdate_waits, 16);
    m->update_done[m->nupdate_waits] = done;
    m->update_arg[m->nupdate_waits] = arg;
    m->nupdate_waits++;
  }
  for (int i = 0; i < m->n; i++) {
    if (m->rec[i].seq == seq) {
      m->rec[i].phase = phase;
      m->rec[i].packet_id = id;
    }
  }
  return 0;
}

/* The store confirms every phase change it was given, in order. */
static int ms_confirm(mem_store_t *m) {
  int n = m->nupdate_waits;
  for (int i = 0; i < n; i++)
    m->update_done[i](m->update_arg[i], 0);
  m->nupdate_waits = 0;
  return n;
}

/* The store confirms every append it was given, in order. */
static void ms_confirm_appends(mem_store_t *m) {
  for (int i = 0; i < m->n; i++)
    m->done[i](m->done_arg[i], 0);
}

static int ms_load(void *st, uvmqtt_store_each_cb each, void *arg) {
  mem_store_t *m = st;
  for (int i = 0; i < m->n; i++)
    if (m->rec[i].phase != UVMQTT_STORE_DONE) each(arg, &m->rec[i]);
  return 0;
}

START_TEST(session_store_phases_recorded) {
  mem_store_t ms;
  memset(&ms, 0, sizeof ms);
  uvmqtt_store_t store = {&ms, ms_append, ms_update, ms_load, NULL, NULL, NULL};
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.store = &store;
  connack(&f, 0, NULL);
  publish(&f, "s1", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  publish(&f, "s2", 2, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  ck_assert_int_eq(ms.n, 2);
  ck_assert_uint_lt(ms.rec[0].seq, ms.rec[1].seq);
  ck_assert_int_eq(ms.rec[0].phase, UVMQTT_STORE_SENT);
  /* No PUBLISH before the store has its packet id. */
  ck_assert_int_eq(drain(&f), 0);
  ck_assert_int_eq(ms_confirm(&ms), 2);
  ck_assert_int_eq(f.wakes, 2);
  ck_assert_int_eq(drain(&f), 2);
  uint16_t id2 = f.out[1].packet_id;
  ck_assert_uint_eq(ms.rec[0].packet_id, f.out[0].packet_id);
  ck_assert_uint_eq(ms.rec[1].packet_id, id2);
  /* A PUBLISH the broker cannot have seen yet is not acknowledged. */
  ck_assert_int_eq(f.out[1].u.publish.dup, 0);
  feed_ack(&f, UVMQTT_PUBREC, id2, 0, 1);
  ck_assert_int_eq(ms.rec[1].phase, UVMQTT_STORE_PUBREC);
  /* No PUBREL before the store knows of the PUBREC, even when the broker
   * repeats it. */
  feed_ack(&f, UVMQTT_PUBREC, id2, 0, 1);
  ck_assert_int_eq(drain(&f), 0);
  ck_assert_int_eq(ms_confirm(&ms), 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBREL);
  ck_assert_uint_eq(f.out[0].packet_id, id2);
  feed_ack(&f, UVMQTT_PUBACK, ms.rec[0].packet_id, 0, 1);
  ck_assert_int_eq(ms.rec[0].phase, UVMQTT_STORE_DONE);
  /* The store confirms later; the owner hears of it then. */
  ms.done[0](ms.done_arg[0], 0);
  ck_assert_int_eq(f.requests, 1000);
  teardown(&f);
  /* An append confirmed after the session is gone is harmless. */
  ms.done[1](ms.done_arg[1], 0);
  ck_assert_int_eq(f.requests, 1000);
}
END_TEST

/* A PUBLISH that waited for the store across a reconnect goes out within the
 * new CONNACK's Receive Maximum, not the old connection's. */
START_TEST(session_store_wait_honours_new_receive_maximum) {
  mem_store_t ms;
  memset(&ms, 0, sizeof ms);
  uvmqtt_store_t store = {&ms, ms_append, ms_update, ms_load, NULL, NULL, NULL};
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 0, 0);
  f.s.store = &store;
  connack(&f, 0, NULL);
  publish(&f, "s1", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  publish(&f, "s2", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  ck_assert_int_eq(drain(&f), 0); /* both wait for the store */
  uvmqtt__session_lost(&f.s, UV_EOF, 1);
  uvmqtt_packet_t c = connect_packet(UVMQTT_V5, 0);
  ck_assert_int_eq(uvmqtt__session_connect(&f.s, &c, 2), 0);
  drain(&f);
  uvmqtt_props_t props;
  memset(&props, 0, sizeof props);
  props.has = 1ull << UVMQTT_PROP_RECEIVE_MAXIMUM;
  props.receive_maximum = 1;
  connack(&f, 1, &props);
  ck_assert_int_eq(ms_confirm(&ms), 2);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  uint16_t id = f.out[0].packet_id;
  feed_ack(&f, UVMQTT_PUBACK, id, 0, 3);
  /* The second goes once the first is acknowledged. */
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  ck_assert_uint_ne(f.out[0].packet_id, id);
  teardown(&f);
  ms_confirm_appends(&ms); /* after the session is gone */
}
END_TEST

/* A PUBLISH held back for the store is judged against its deadline when the
 * store confirms, at the owner's present time. */
START_TEST(session_store_wait_honours_deadline) {
  mem_store_t ms;
  memset(&ms, 0, sizeof ms);
  uvmqtt_store_t store = {&ms, ms_append, ms_update, ms_load, NULL, NULL, NULL};
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.store = &store;
  connack(&f, 0, NULL);
  publish(&f, "s1", 1, UVMQTT_DELIVERY_DEADLINE, 100, 10, 0);
  ck_assert_int_eq(drain(&f), 0); /* waits for the store */
  f.clock = 500;                  /* the deadline (110) passed meanwhile */
  ck_assert_int_eq(ms_confirm(&ms), 1);
  ck_assert_int_eq(drain(&f), 0);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, UVMQTT_EEXPIRED);
  teardown(&f);
  ms_confirm_appends(&ms); /* after the session is gone */
}
END_TEST

START_TEST(session_store_restore_resends_pubrel) {
  mem_store_t ms;
  memset(&ms, 0, sizeof ms);
  uvmqtt_store_t store = {&ms, ms_append, ms_update, ms_load, NULL, NULL, NULL};
  /* A first process: one QoS 2 past PUBREC, one QoS 1 sent, one queued. */
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.store = &store;
  connack(&f, 0, NULL);
  publish(&f, "a", 2, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  publish(&f, "b", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  ck_assert_int_eq(ms_confirm(&ms), 2);
  ck_assert_int_eq(drain(&f), 2);
  uint16_t ida = f.out[0].packet_id, idb = f.out[1].packet_id;
  feed_ack(&f, UVMQTT_PUBREC, ida, 0, 1);
  uvmqtt__session_lost(&f.s, UV_EOF, 2);
  publish(&f, "c", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  /* The process dies: the session is dropped without the store hearing of it. */
  f.s.store = NULL;
  teardown(&f);

  fixture_t g;
  memset(&g, 0, sizeof g);
  uvmqtt__session_init(&g.s, &g, &events, UVMQTT_V311);
  g.s.store = &store;
  ck_assert_int_eq(uvmqtt__session_restore(&g.s, 0), 0);
  /* One past PUBREC holds a slot; one sent waits to be resent. */
  ck_assert_int_eq(ACT_N(g.s, inflight), 1);
  ck_assert_int_eq(ACT_N(g.s, queued), 3);
  uvmqtt_packet_t c = connect_packet(UVMQTT_V311, 0);
  ck_assert_int_eq(uvmqtt__session_connect(&g.s, &c, 0), 0);
  drain(&g);
  connack(&g, 1, NULL);
  ck_assert_int_eq(drain(&g), 2);
  ck_assert_int_eq(g.out[0].type, UVMQTT_PUBREL);
  ck_assert_uint_eq(g.out[0].packet_id, ida);
  ck_assert_int_eq(g.out[1].type, UVMQTT_PUBLISH);
  ck_assert_uint_eq(g.out[1].packet_id, idb);
  ck_assert_int_eq(g.out[1].u.publish.dup, 1);
  /* The queued one waits for the store to have its new id (the first
   * process's PUBREC confirmation comes first and finds nothing). */
  ck_assert_int_eq(ms_confirm(&ms), 2);
  ck_assert_int_eq(drain(&g), 1);
  ck_assert_int_eq(g.out[0].type, UVMQTT_PUBLISH);
  ck_assert_int_eq(g.out[0].u.publish.dup, 0);
  ck_assert_uint_ne(g.out[0].packet_id, ida);
  ck_assert_uint_ne(g.out[0].packet_id, idb);
  teardown(&g);
  /* The first process's appends complete into nothing (it is gone). */
  for (int i = 0; i < ms.n; i++)
    ms.done[i](ms.done_arg[i], 0);
  ck_assert_int_eq(f.requests, 0);
}
END_TEST

/* Closing is not delivering: what the policies keep stays unfinished in the
 * store for the next process; only what they give up is marked done. */
START_TEST(session_store_close_keeps_unfinished) {
  mem_store_t ms;
  memset(&ms, 0, sizeof ms);
  uvmqtt_store_t store = {&ms, ms_append, ms_update, ms_load, NULL, NULL, NULL};
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.store = &store;
  f.s.max_inflight = 1;
  connack(&f, 0, NULL);
  publish(&f, "sent", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  publish(&f, "queued", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  publish(&f, "drop", 1, UVMQTT_DELIVERY_DROP, 0, 0, 0);
  ck_assert_int_eq(ms_confirm(&ms), 1);
  ck_assert_int_eq(drain(&f), 1);
  teardown(&f);
  ck_assert_int_eq(f.done, 3); /* every publish completed, with UVMQTT_ECLOSED */
  ck_assert_int_eq(ms.n, 3);
  ck_assert_int_eq(ms.rec[0].phase, UVMQTT_STORE_SENT);
  ck_assert_int_eq(ms.rec[1].phase, UVMQTT_STORE_QUEUED);
  ck_assert_int_eq(ms.rec[2].phase, UVMQTT_STORE_DONE);
  for (int i = 0; i < ms.n; i++)
    ms.done[i](ms.done_arg[i], 0);
}
END_TEST

START_TEST(session_store_refusal_reported_later) {
  mem_store_t ms;
  memset(&ms, 0, sizeof ms);
  ms.fail_append = 1;
  uvmqtt_store_t store = {&ms, ms_append, ms_update, ms_load, NULL, NULL, NULL};
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.store = &store;
  publish(&f, "x", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 0, 0);
  ck_assert_int_eq(f.requests, 0);         /* not from inside the publish call */
  ck_assert_int_eq(ACT_N(f.s, queued), 1); /* kept in memory */
  ck_assert_int_eq(uvmqtt__session_report_store_failures(&f.s), 1);
  ck_assert_int_eq(f.requests, 1000);
  ck_assert_int_eq(f.last_status, UV_ENOSPC);
  teardown(&f);
}
END_TEST

/* ---- Regressions: where two features meet ------------------------------------------ */

/* The type of the last packet in the last drain, walking the raw bytes (a
 * drain decodes at most MAX_OUT packets). */
static int raw_count_and_last(const fixture_t *f, uint8_t *last) {
  size_t off = 0;
  int n = 0;
  while (off < f->raw_len) {
    size_t len = 1, mult = 1, rem = 0;
    uint8_t b;
    do {
      b = f->raw[off + len];
      rem += (b & 127u) * mult;
      mult *= 128;
      len++;
    } while (b & 128u);
    *last = f->raw[off] >> 4;
    off += len + rem;
    n++;
  }
  return n;
}

/* Defect 1: nothing goes out after DISCONNECT, whatever was queued (more
 * QoS 0 than the high-water mark, acks for packets read later). */
START_TEST(session_nothing_after_disconnect) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 0);
  connack(&f, 0, NULL);
  publish(&f, "q1", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  static char payload[1024];
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  for (int i = 0; i < 100; i++)
    ck_assert_int_eq(uvmqtt__session_publish(&f.s, "bulk", payload, sizeof payload, &o, 1), 0);
  drain(&f);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  uint16_t id = f.out[0].packet_id;
  /* The QoS 1 handshake is in flight: the stop waits for it, and the QoS 0
   * messages beyond the high-water mark stay queued. */
  ck_assert_int_eq(uvmqtt__session_stop(&f.s, 0, 2), 1);
  ck_assert_int_eq(f.s.state, UVMQTT__S_DRAINING);
  uvmqtt__session_pump(&f.s, 2);
  ck_assert_int_eq(drain(&f), 0);        /* no new PUBLISH while draining */
  feed_ack(&f, UVMQTT_PUBACK, id, 0, 3); /* the last handshake ends: DISCONNECT */
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_DISCONNECT);
  ck_assert(uvmqtt__session_terminating(&f.s));
  /* After it: a publish queues, an incoming QoS 1 PUBLISH is not acked. */
  publish(&f, "late", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 4, 0);
  uint8_t in[] = {0x32, 6, 0, 1, 't', 0, 9, 'x'};
  ck_assert_int_eq(uvmqtt__session_recv(&f.s, in, sizeof in, 5), 0);
  ck_assert_int_eq(drain(&f), 0);
  ck_assert_int_eq(f.messages, 0);
  ck_assert_int_gt(ACT_N(f.s, queued), 0);
  teardown(&f);
}
END_TEST

/* Defect 1, the flood: a stop with QoS 0 queued past the output's high
 * water (300 KiB) ends in DISCONNECT as the very last bytes. */
START_TEST(session_disconnect_is_last_after_flood) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 1, 0);
  connack(&f, 0, NULL);
  static char payload[1024];
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  for (int i = 0; i < 300; i++)
    ck_assert_int_eq(uvmqtt__session_publish(&f.s, "bulk", payload, sizeof payload, &o, 1), 0);
  ck_assert_ptr_nonnull(f.s.act->queue.head); /* the rest wait in the queue */
  ck_assert_int_eq(uvmqtt__session_stop(&f.s, 0, 2), 0);
  drain(&f);
  uint8_t last = 0;
  int n = raw_count_and_last(&f, &last);
  ck_assert_int_gt(n, 1);
  ck_assert_int_eq(last, UVMQTT_DISCONNECT);
  uvmqtt__session_pump(&f.s, 3);
  ck_assert_int_eq(drain(&f), 0);
  /* What never went out stays queued: a later connect resumes it. */
  ck_assert_int_gt(ACT_N(f.s, queued), 0);
  teardown(&f);
}
END_TEST

static void setup_v5_props(uvmqtt_props_t *pr) {
  memset(pr, 0, sizeof *pr);
}

/* Defect 2: the CONNACK of the connection a message goes out on decides:
 * queued offline, then refused by Maximum QoS / Retain Available with a
 * named error; resent under a smaller Receive Maximum and Maximum Packet
 * Size without exceeding them. */
START_TEST(session_connack_limits_apply_to_queued_and_resent) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 0, 0);
  uvmqtt__session_lost(&f.s, UV_EOF, 1);
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.qos = 2;
  o.retain = 1;
  o.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "r", "x", 1, &o, 1), 0);
  o.qos = 1;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "r", "x", 1, &o, 1), 0);
  reconnect(&f, 0);
  uvmqtt_packet_t none;
  (void)none;
  teardown(&f);

  setup_session(&f, UVMQTT_V5, 0, 0);
  uvmqtt__session_lost(&f.s, UV_EOF, 1);
  o.qos = 2;
  o.retain = 0;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "q2", "x", 1, &o, 1), 0);
  o.qos = 1;
  o.retain = 1;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "rt", "x", 1, &o, 1), 0);
  uvmqtt_packet_t c = connect_packet(UVMQTT_V5, 0);
  ck_assert_int_eq(uvmqtt__session_connect(&f.s, &c, 2), 0);
  drain(&f);
  uvmqtt_props_t pr;
  setup_v5_props(&pr);
  pr.has = (1ull << UVMQTT_PROP_MAXIMUM_QOS) | (1ull << UVMQTT_PROP_RETAIN_AVAILABLE);
  pr.maximum_qos = 1;
  pr.retain_available = 0;
  connack(&f, 0, &pr);
  ck_assert_int_eq(drain(&f), 0);
  ck_assert_int_eq(f.done, 2);
  ck_assert_int_eq(f.statuses[0], UVMQTT_EQOSNOTSUP);
  ck_assert_int_eq(f.statuses[1], UVMQTT_ERETAINNOTSUP);
  teardown(&f);

  /* Resent under a Receive Maximum of 2, then a Maximum Packet Size of 20. */
  setup_session(&f, UVMQTT_V5, 0, 0);
  connack(&f, 0, NULL);
  for (int i = 0; i < 10; i++)
    publish(&f, i < 5 ? "a" : "a-much-longer-topic-name", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1,
            0);
  ck_assert_int_eq(drain(&f), 10);
  uvmqtt__session_lost(&f.s, UV_EOF, 2);
  ck_assert_int_eq(uvmqtt__session_connect(&f.s, &c, 3), 0);
  drain(&f);
  pr.has = 1ull << UVMQTT_PROP_RECEIVE_MAXIMUM;
  pr.receive_maximum = 2;
  connack(&f, 1, &pr);
  ck_assert_int_eq(drain(&f), 2);
  ck_assert_int_eq(f.out[0].u.publish.dup, 1);
  ck_assert_int_eq(ACT_N(f.s, inflight), 2);
  feed_ack(&f, UVMQTT_PUBACK, f.out[0].packet_id, 0, 4);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(ACT_N(f.s, inflight), 2);
  uvmqtt__session_lost(&f.s, UV_EOF, 5);
  ck_assert_int_eq(uvmqtt__session_connect(&f.s, &c, 6), 0);
  drain(&f);
  pr.has = 1ull << UVMQTT_PROP_MAXIMUM_PACKET_SIZE;
  pr.maximum_packet_size = 20;
  connack(&f, 1, &pr);
  int n = drain(&f);
  for (int i = 0; i < n; i++)
    ck_assert_uint_le(f.raw_len, 20u * (unsigned)n);
  /* The five long ones can never go on this connection: they complete. */
  int toobig = 0;
  for (int i = 0; i < f.done && i < 256; i++)
    toobig += f.statuses[i] == UVMQTT_EPKTTOOBIG;
  ck_assert_int_eq(toobig, 5);
  ck_assert_int_eq(n, 4);
  teardown(&f);
}
END_TEST

/* Defect 3: an id held by an unacknowledged message is never issued again,
 * however many ids go round. */
START_TEST(session_packet_id_exact_across_wrap) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 1, 0);
  connack(&f, 0, NULL);
  publish(&f, "held", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(drain(&f), 1);
  uint16_t held = f.out[0].packet_id;
  for (int i = 0; i < 140000; i++) {
    publish(&f, "t", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
    ck_assert_int_eq(drain(&f), 1);
    if (f.out[0].packet_id == held) ck_abort_msg("id %u reissued while in flight", held);
    feed_ack(&f, UVMQTT_PUBACK, f.out[0].packet_id, 0, 1);
  }
  ck_assert_int_eq(ACT_N(f.s, ids_used), 1);
  ck_assert(uvmqtt__session_id_in_use(&f.s, held));
  teardown(&f);
}
END_TEST

/* Defect 4: a message waiting for the store does not hold back the resend
 * of the messages behind it. */
START_TEST(session_store_wait_does_not_stall_resend) {
  mem_store_t ms;
  memset(&ms, 0, sizeof ms);
  uvmqtt_store_t store = {&ms, ms_append, ms_update, ms_load, NULL, NULL, NULL};
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.store = &store;
  connack(&f, 0, NULL);
  publish(&f, "a", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  publish(&f, "b", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(ms_confirm(&ms), 2);
  ck_assert_int_eq(drain(&f), 2);
  /* c gets its id but the store has not confirmed it when the link drops. */
  publish(&f, "c", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 2, 0);
  ck_assert_int_eq(drain(&f), 0);
  uvmqtt__session_lost(&f.s, UV_EOF, 3);
  reconnect(&f, 1);
  /* a and b go again although c still waits for the store. */
  ck_assert_int_eq(drain(&f), 2);
  ck_assert_int_eq(f.out[0].u.publish.dup, 1);
  ck_assert_int_eq(f.out[1].u.publish.dup, 1);
  ck_assert_int_eq(ms_confirm(&ms), 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  teardown(&f);
  ms_confirm_appends(&ms); /* after the session is gone */
}
END_TEST

/* Defect 5: a QoS 2 message past PUBREC is never reported delivered when
 * the broker lost the session: until-delivered publishes it again, the
 * others complete with UVMQTT_ESESSIONLOST. */
START_TEST(session_qos2_lost_session_never_success) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  connack(&f, 0, NULL);
  publish(&f, "keep", 2, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  publish(&f, "drop", 2, UVMQTT_DELIVERY_DEADLINE, 60000, 1, 0);
  ck_assert_int_eq(drain(&f), 2);
  uint16_t a = f.out[0].packet_id, b = f.out[1].packet_id;
  feed_ack(&f, UVMQTT_PUBREC, a, 0, 2);
  feed_ack(&f, UVMQTT_PUBREC, b, 0, 2);
  drain(&f);
  uvmqtt__session_lost(&f.s, UV_EOF, 3);
  ck_assert_int_eq(f.done, 0);
  reconnect(&f, 0);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.statuses[0], UVMQTT_ESESSIONLOST);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  ck_assert_int_eq(f.out[0].u.publish.dup, 0);
  ck_assert_int_eq(f.out[0].u.publish.qos, 2);
  teardown(&f);
}
END_TEST

/* Defect 6: Session Present 1 in answer to Clean Start 1 closes. */
START_TEST(session_present_to_clean_start_is_protocol_error) {
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 0);
  uint8_t ack[] = {0x20, 2, 1, 0};
  uint8_t ack5[] = {0x20, 3, 1, 0, 0};
  if (_i)
    ck_assert_int_eq(uvmqtt__session_recv(&f.s, ack5, sizeof ack5, 1), UVMQTT_EPROTOCOL);
  else
    ck_assert_int_eq(uvmqtt__session_recv(&f.s, ack, sizeof ack, 1), UVMQTT_EPROTOCOL);
  ck_assert_int_eq(f.connacks, 0);
  ck_assert(uvmqtt__session_terminating(&f.s));
  teardown(&f);
}
END_TEST

/* Defect 9: a PINGREQ stuck behind a slow uplink is timed from its write,
 * and any byte received counts as a sign of life. */
START_TEST(session_ping_timed_from_write) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 1, 10);
  connack(&f, 0, NULL);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 10000), 0);
  ck_assert_int_eq(f.s.ping, 1);
  /* Not written yet: half a keepalive later is no timeout. */
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 16000), 0);
  uvmqtt__output_t o;
  ck_assert(uvmqtt__session_take_output(&f.s, &o));
  uvmqtt__session_written(&f.s, &o, 0, 18000);
  ck_assert_int_eq(f.s.ping, 2);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 22000), 0);
  /* Half a packet arrives: alive. */
  uint8_t half[] = {0x30};
  ck_assert_int_eq(uvmqtt__session_recv(&f.s, half, 1, 22500), 0);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 26000), 0);
  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 27500), UVMQTT_EKEEPALIVE);
  teardown(&f);
}
END_TEST

/* Defect 11: incoming aliases end with their connection; an outgoing alias
 * beyond the broker's Topic Alias Maximum never goes out; a client PUBLISH
 * cannot carry a Subscription Identifier. */
START_TEST(session_topic_alias_scoped_and_bounded) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 0);
  uvmqtt_props_t pr;
  setup_v5_props(&pr);
  pr.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM;
  pr.topic_alias_maximum = 2;
  connack(&f, 0, &pr);
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_PUBLISH;
  p.u.publish.topic.data = (const uint8_t *)"a/b";
  p.u.publish.topic.len = 3;
  p.props.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS;
  p.props.topic_alias = 1;
  feed_packet(&f, &p, 1, 0);
  ck_assert_int_eq(f.messages, 1);
  uvmqtt_props_t out;
  setup_v5_props(&out);
  out.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS;
  out.topic_alias = 3;
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  o.props = &out;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "x", "1", 1, &o, 2), UVMQTT_ETOPICALIAS);
  out.topic_alias = 2;
  uvmqtt__session_lost(&f.s, UV_EOF, 3);
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "x", "1", 1, &o, 3), 0);
  out.has = 1ull << UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "x", "1", 1, &o, 3), UVMQTT_EBADPROP);
  /* Next connection: no aliases either way. */
  uvmqtt_packet_t c = connect_packet(UVMQTT_V5, 1);
  c.props.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM;
  c.props.topic_alias_maximum = 4;
  ck_assert_int_eq(uvmqtt__session_connect(&f.s, &c, 4), 0);
  drain(&f);
  connack(&f, 0, NULL);
  ck_assert_int_eq(drain(&f), 0);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.last_status, UVMQTT_ETOPICALIAS);
  p.u.publish.topic.len = 0;
  feed_packet(&f, &p, 5, UVMQTT_ETOPICALIAS);
  ck_assert_int_eq(f.messages, 1);
  teardown(&f);
}
END_TEST

/* ---- Automatic outgoing topic aliases ---------------------------------------- */

static void connect_v5_alias(fixture_t *f, uint16_t want, uint16_t broker_max, uint8_t clean) {
  setup_session(f, UVMQTT_V5, clean, 0);
  f->s.alias_out_want = want;
  uvmqtt_props_t pr;
  memset(&pr, 0, sizeof pr);
  if (broker_max) {
    pr.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM;
    pr.topic_alias_maximum = broker_max;
  }
  connack(f, 0, &pr);
}

static uint16_t out_alias(const fixture_t *f, int i) {
  return UVMQTT_HAS(&f->out[i].props, UVMQTT_PROP_TOPIC_ALIAS) ? f->out[i].props.topic_alias : 0;
}

#define ALIAS_RUN 10000

/* Publishes ALIAS_RUN QoS 1 messages on one 100-byte topic, acking each,
 * and returns the bytes written for them. Halfway, with `reconnect`, the
 * connection drops with three messages unacknowledged and comes back with
 * the session: the first resend carries the full topic again. */
static size_t alias_run(uint16_t want, int reconnect) {
  fixture_t f;
  connect_v5_alias(&f, want, 10, 0);
  char topic[101];
  memset(topic, 't', 100);
  topic[100] = '\0';
  topic[0] = 'a';
  topic[1] = '/';
  size_t bytes = 0;
  uint16_t pending[3];
  int npending = 0;
  for (int i = 0; i < ALIAS_RUN; i++) {
    publish(&f, topic, 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
    ck_assert_int_eq(drain(&f), 1);
    bytes += f.raw_len;
    ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
    uint16_t alias = out_alias(&f, 0);
    if (want == 0) {
      ck_assert_uint_eq(alias, 0);
      ck_assert_uint_eq(f.out[0].u.publish.topic.len, 100);
    } else {
      ck_assert_uint_eq(alias, 1);
      /* Only the first PUBLISH of a connection names the topic. */
      ck_assert_uint_eq(f.out[0].u.publish.topic.len, i == 0 ? 100 : 0);
    }
    uint16_t id = f.out[0].packet_id;
    if (reconnect && i >= ALIAS_RUN / 2 - 3 && i < ALIAS_RUN / 2) {
      pending[npending++] = id;
      continue;
    }
    feed_ack(&f, UVMQTT_PUBACK, id, 0, 1);
    if (reconnect && i == ALIAS_RUN / 2) break;
  }
  if (reconnect) {
    ck_assert_int_eq(npending, 3);
    /* The stored message still holds its topic. */
    uvmqtt_packet_t stored;
    const uvmqtt__msg_t *m = ACT_P(f.s, window.head);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(uvmqtt_decode_packet(m->data, m->len, UVMQTT_V5, &stored), 0);
    ck_assert_uint_eq(stored.u.publish.topic.len, 100);
    ck_assert(!UVMQTT_HAS(&stored.props, UVMQTT_PROP_TOPIC_ALIAS));
    uvmqtt__session_lost(&f.s, UV_EOF, 2);
    uvmqtt_packet_t c;
    memset(&c, 0, sizeof c);
    c.type = UVMQTT_CONNECT;
    c.u.connect.protocol_level = UVMQTT_V5;
    c.u.connect.client_id.data = (const uint8_t *)"sess";
    c.u.connect.client_id.len = 4;
    ck_assert_int_eq(uvmqtt__session_connect(&f.s, &c, 3), 0);
    drain(&f);
    uvmqtt_props_t pr;
    memset(&pr, 0, sizeof pr);
    pr.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM;
    pr.topic_alias_maximum = 10;
    connack(&f, 1, &pr);
    ck_assert_int_eq(drain(&f), 3);
    bytes += f.raw_len;
    for (int k = 0; k < 3; k++) {
      ck_assert_int_eq(f.out[k].type, UVMQTT_PUBLISH);
      ck_assert_uint_eq(f.out[k].packet_id, pending[k]);
      ck_assert_uint_eq(f.out[k].u.publish.dup, 1);
      ck_assert_uint_eq(out_alias(&f, k), want ? 1 : 0);
      ck_assert_uint_eq(f.out[k].u.publish.topic.len, want && k > 0 ? 0 : 100);
      feed_ack(&f, UVMQTT_PUBACK, pending[k], 0, 4);
    }
    for (int i = ALIAS_RUN / 2 + 1; i < ALIAS_RUN; i++) {
      publish(&f, topic, 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 5, 0);
      ck_assert_int_eq(drain(&f), 1);
      bytes += f.raw_len;
      ck_assert_uint_eq(f.out[0].u.publish.topic.len, want ? 0 : 100);
      feed_ack(&f, UVMQTT_PUBACK, f.out[0].packet_id, 0, 5);
    }
  }
  ck_assert_int_eq(f.done, ALIAS_RUN);
  ck_assert_int_eq(f.last_status, 0);
  teardown(&f);
  return bytes;
}

START_TEST(session_topic_alias_out_saves_bytes) {
  size_t plain = alias_run(0, 0), aliased = alias_run(8, 0);
  printf("topic_alias_out: %d QoS 1 publishes on a 100-byte topic: %zu bytes without aliases, "
         "%zu with\n",
         ALIAS_RUN, plain, aliased);
  ck_assert_uint_lt(aliased, plain / 4);
  size_t plain_rc = alias_run(0, 1), aliased_rc = alias_run(8, 1);
  printf("topic_alias_out: the same with a reconnect halfway: %zu bytes without aliases, %zu "
         "with\n",
         plain_rc, aliased_rc);
  /* Three resends, of which one names the topic again. */
  ck_assert_uint_eq(plain_rc, plain + 3 * (plain / ALIAS_RUN));
  ck_assert_uint_lt(aliased_rc, plain_rc / 4);
}
END_TEST

/* Least recently used replacement, bounded by the broker's maximum, none
 * without one, and the application's own aliases refused meanwhile. */
START_TEST(session_topic_alias_out_lru_and_bounds) {
  fixture_t f;
  connect_v5_alias(&f, 8, 2, 1);
  static const char *const seq[] = {"A", "B", "A", "C", "B", "A", "A", "C"};
  /* A:1 set, B:2 set, A:1 bound, C takes 2 (B least recent), B takes 1
   * (A least recent), A takes 2 (C), A bound, C takes 1 (B). */
  static const uint16_t alias[] = {1, 2, 1, 2, 1, 2, 2, 1};
  static const uint8_t bound[] = {0, 0, 1, 0, 0, 0, 1, 0};
  for (int i = 0; i < 8; i++) {
    publish(&f, seq[i], 0, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
    ck_assert_int_eq(drain(&f), 1);
    ck_assert_msg(out_alias(&f, 0) == alias[i], "publish %d: alias %u", i, out_alias(&f, 0));
    ck_assert_uint_eq(f.out[0].u.publish.topic.len, bound[i] ? 0 : 1);
  }
  uvmqtt_props_t own;
  memset(&own, 0, sizeof own);
  own.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS;
  own.topic_alias = 1;
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  o.props = &own;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "A", "1", 1, &o, 2), UVMQTT_EINVAL);
  teardown(&f);

  /* A broker without Topic Alias Maximum gets none. */
  connect_v5_alias(&f, 8, 0, 1);
  publish(&f, "A", 0, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  publish(&f, "A", 0, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(drain(&f), 2);
  ck_assert_uint_eq(out_alias(&f, 0) + out_alias(&f, 1), 0);
  teardown(&f);

  /* An alias that would push a packet past Maximum Packet Size is left out. */
  setup_session(&f, UVMQTT_V5, 1, 0);
  f.s.alias_out_want = 4;
  uvmqtt_props_t pr;
  memset(&pr, 0, sizeof pr);
  pr.has = 1ull << UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM | 1ull << UVMQTT_PROP_MAXIMUM_PACKET_SIZE;
  pr.topic_alias_maximum = 4;
  pr.maximum_packet_size = 14; /* "A" and "payload": exactly 13 bytes plain, 16 aliased */
  connack(&f, 0, &pr);
  publish(&f, "A", 0, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_uint_eq(out_alias(&f, 0), 0);
  ck_assert_uint_eq(f.raw_len, 13);
  teardown(&f);
}
END_TEST

/* ---- Enhanced authentication ------------------------------------------------- */

/* Connects with Authentication Method "M" and initial data "hi". */
static void connect_auth(fixture_t *f) {
  memset(f, 0, sizeof *f);
  uvmqtt__session_init(&f->s, f, &events, UVMQTT_V5);
  uvmqtt_packet_t c;
  memset(&c, 0, sizeof c);
  c.type = UVMQTT_CONNECT;
  c.u.connect.protocol_level = UVMQTT_V5;
  c.u.connect.clean_start = 1;
  c.u.connect.client_id.data = (const uint8_t *)"sess";
  c.u.connect.client_id.len = 4;
  c.props.has = 1ull << UVMQTT_PROP_AUTHENTICATION_METHOD | 1ull << UVMQTT_PROP_AUTHENTICATION_DATA;
  c.props.authentication_method.data = (const uint8_t *)"M";
  c.props.authentication_method.len = 1;
  c.props.authentication_data.data = (const uint8_t *)"hi";
  c.props.authentication_data.len = 2;
  ck_assert_int_eq(uvmqtt__session_connect(&f->s, &c, 0), 0);
  ck_assert_int_eq(drain(f), 1);
}

static void feed_auth(fixture_t *f, uint8_t reason, const char *method, int expect) {
  uvmqtt_packet_t a;
  memset(&a, 0, sizeof a);
  a.type = UVMQTT_AUTH;
  a.reason = reason;
  if (method) {
    a.props.has =
        1ull << UVMQTT_PROP_AUTHENTICATION_METHOD | 1ull << UVMQTT_PROP_AUTHENTICATION_DATA;
    a.props.authentication_method.data = (const uint8_t *)method;
    a.props.authentication_method.len = (uint32_t)strlen(method);
    a.props.authentication_data.data = (const uint8_t *)"srv";
    a.props.authentication_data.len = 3;
  }
  feed_packet(f, &a, 1, expect);
}

static void connack_auth(fixture_t *f, const char *method, int expect) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_CONNACK;
  if (method) {
    p.props.has = 1ull << UVMQTT_PROP_AUTHENTICATION_METHOD;
    p.props.authentication_method.data = (const uint8_t *)method;
    p.props.authentication_method.len = (uint32_t)strlen(method);
  }
  feed_packet(f, &p, 1, expect);
}

START_TEST(session_auth_exchange_and_reauth) {
  fixture_t f;
  connect_auth(&f);
  /* Before CONNACK only AUTH may follow CONNECT, and only the exchange. */
  publish(&f, "t", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_int_eq(drain(&f), 0);
  feed_auth(&f, 0x18, "M", 0);
  ck_assert_int_eq(f.auths, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_AUTH);
  ck_assert_uint_eq(f.out[0].reason, 0x18);
  ck_assert(f.out[0].props.authentication_method.len == 1 &&
            f.out[0].props.authentication_method.data[0] == 'M');
  ck_assert_uint_eq(f.out[0].props.authentication_data.len, 4);
  /* The CONNACK's success goes to the mechanism before anything else. */
  connack_auth(&f, "M", 0);
  ck_assert_int_eq(f.auths, 2);
  ck_assert_uint_eq(f.auth_reason, 0);
  ck_assert_int_eq(f.s.state, UVMQTT__S_ONLINE);
  ck_assert_int_eq(drain(&f), 1); /* the queued PUBLISH */
  uint16_t id = f.out[0].packet_id;
  /* Online, the broker may not start or continue an exchange unasked. */
  ck_assert_int_eq(uvmqtt__session_auth(&f.s, 0x19, NULL, 2), 0);
  ck_assert_int_eq(uvmqtt__session_auth(&f.s, 0x19, NULL, 2), UVMQTT_EBUSY);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_uint_eq(f.out[0].reason, 0x19);
  /* Messages flow meanwhile. */
  feed_ack(&f, UVMQTT_PUBACK, id, 0, 2);
  ck_assert_int_eq(f.done, 1);
  publish(&f, "t", 0, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 2, 0);
  ck_assert_int_eq(drain(&f), 1);
  feed_auth(&f, 0x18, "M", 0);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_uint_eq(f.out[0].reason, 0x18);
  feed_auth(&f, 0x00, "M", 0);
  ck_assert_int_eq(f.auths, 4);
  ck_assert_int_eq(f.s.reauth, 0);
  /* Done: another AUTH from the broker is a protocol error. */
  feed_auth(&f, 0x18, "M", UVMQTT_EPROTOCOL);
  teardown(&f);
}
END_TEST

START_TEST(session_auth_method_must_match) {
  fixture_t f;
  connect_auth(&f);
  feed_auth(&f, 0x18, "N", UVMQTT_EAUTHMETHOD);
  ck_assert_int_eq(f.auths, 0);
  teardown(&f);

  connect_auth(&f);
  feed_auth(&f, 0x18, NULL, UVMQTT_EAUTHMETHOD);
  teardown(&f);

  connect_auth(&f);
  connack_auth(&f, "N", UVMQTT_EAUTHMETHOD);
  ck_assert_int_eq(f.connacks, 0);
  teardown(&f);

  /* Success is the CONNACK, never an AUTH 0x00 before it. */
  connect_auth(&f);
  feed_auth(&f, 0x00, "M", UVMQTT_EPROTOCOL);
  teardown(&f);

  /* The broker refuses the credentials: the mechanism failed. */
  connect_auth(&f);
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_CONNACK;
  p.reason = 0x86;
  feed_packet(&f, &p, 1, UVMQTT_EAUTH);
  teardown(&f);

  /* The mechanism refuses the broker's success (a wrong server signature). */
  connect_auth(&f);
  f.auth_fail = 1;
  connack_auth(&f, "M", UVMQTT_EAUTH);
  ck_assert_int_eq(f.connacks, 0);
  teardown(&f);

  /* Without a method of ours, AUTH properties in CONNACK are an error. */
  setup_session(&f, UVMQTT_V5, 1, 0);
  connack_auth(&f, "M", UVMQTT_EPROTOCOL);
  ck_assert_int_eq(uvmqtt__session_auth(&f.s, 0x19, NULL, 1), UVMQTT_EINVAL);
  teardown(&f);

  /* No re-authentication starts during a drain. */
  connect_auth(&f);
  connack_auth(&f, "M", 0);
  publish(&f, "t", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  drain(&f);
  ck_assert_int_eq(uvmqtt__session_stop(&f.s, 0, 2), 1);
  ck_assert_int_eq(uvmqtt__session_auth(&f.s, 0x19, NULL, 2), UVMQTT_ENOTCONN);
  teardown(&f);
}
END_TEST

/* Defect 12: an unknown PUBREC with a failure reason gets no PUBREL. */
START_TEST(session_unknown_failed_pubrec_no_pubrel) {
  fixture_t f;
  setup_session(&f, UVMQTT_V5, 1, 0);
  connack(&f, 0, NULL);
  feed_ack(&f, UVMQTT_PUBREC, 77, 0x80, 1);
  ck_assert_int_eq(drain(&f), 0);
  feed_ack(&f, UVMQTT_PUBREC, 78, 0, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBREL);
  ck_assert_int_eq(f.out[0].reason, 0x92);
  teardown(&f);
}
END_TEST

/* Defect 13: a request that fails for lack of memory is not queued, so its
 * callback never runs. */
static int g_fail_after = -1;
static void *failing_malloc(size_t n) {
  return g_fail_after-- == 0 ? NULL : malloc(n);
}
static void *failing_realloc(void *p, size_t n) {
  return g_fail_after-- == 0 ? NULL : realloc(p, n);
}
static void *failing_calloc(size_t a, size_t b) {
  return g_fail_after-- == 0 ? NULL : calloc(a, b);
}

START_TEST(session_request_enomem_leaves_nothing) {
  uvmqtt_topic_sub_t sub = {{(const uint8_t *)"a/#", 3}, 1};
  uvmqtt_packet_t p = subscribe_packet(&sub);
  int failures = 0;
  for (int k = 0; k < 6; k++) {
    fixture_t f;
    setup_session(&f, UVMQTT_V311, 1, 0);
    connack(&f, 0, NULL);
    uvmqtt_replace_allocator(failing_malloc, failing_realloc, failing_calloc, free);
    g_fail_after = k;
    int err = uvmqtt__session_request(&f.s, &p, NULL, NULL, 1);
    g_fail_after = -1;
    uvmqtt_replace_allocator(malloc, realloc, calloc, free);
    if (err) {
      failures++;
      ck_assert_int_eq(err, UVMQTT_ENOMEM);
      ck_assert_ptr_null(f.s.act); /* idle again: nothing kept */
    } else {
      ck_assert_ptr_nonnull(ACT_P(f.s, reqs));
    }
    int before = f.requests;
    teardown(&f);
    ck_assert_int_eq(f.requests - before, err ? 0 : 1);
  }
  ck_assert_int_gt(failures, 0);
}
END_TEST

/* A QoS 0 PUBLISH with nothing waiting before it goes straight into the
 * output, allocating nothing; behind queued messages it keeps its place;
 * completions come in publish order; one that cannot become a message of
 * its own at a loss (no memory) fails with UVMQTT_ENOMEM, never silently. */
START_TEST(session_qos0_direct_path) {
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  connack(&f, 0, NULL);
  drain(&f);
  uvmqtt__publish_t o;
  memset(&o, 0, sizeof o);
  o.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  /* Warm: one write sizes the next output. */
  for (int i = 0; i < 50; i++)
    ck_assert_int_eq(uvmqtt__session_publish(&f.s, "t", "p", 1, &o, 1), 0);
  drain(&f);
  f.done = 0;
  uvmqtt_replace_allocator(failing_malloc, failing_realloc, failing_calloc, free);
  /* The active block (the drained session was idle and held none), the
   * output buffer and its records, then nothing. */
  ck_assert_ptr_null(f.s.act);
  g_fail_after = 3;
  for (intptr_t i = 0; i < 50; i++) {
    o.arg = (void *)(i + 1);
    ck_assert_int_eq(uvmqtt__session_publish(&f.s, "t", "p", 1, &o, 1), 0);
  }
  ck_assert_int_ge(g_fail_after, 0); /* at most three allocations for 50 publishes */
  g_fail_after = -1;
  uvmqtt_replace_allocator(malloc, realloc, calloc, free);
  ck_assert_int_eq(ACT_N(f.s, queued), 50);
  ck_assert_int_eq(drain(&f), 50);
  ck_assert_int_eq(f.done, 50);
  for (intptr_t i = 0; i < 50; i++) {
    ck_assert_int_eq(f.statuses[i], 0);
    ck_assert_ptr_eq(f.args[i], (void *)(i + 1));
  }
  ck_assert_int_eq(ACT_N(f.s, queued), 0);

  /* Lost before the write: one is rebuilt and kept, the next finds no
   * memory and fails. */
  f.done = 0;
  o.arg = (void *)1;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "kept", "p", 1, &o, 1), 0);
  o.arg = (void *)2;
  ck_assert_int_eq(uvmqtt__session_publish(&f.s, "nomem", "p", 1, &o, 1), 0);
  uvmqtt_replace_allocator(failing_malloc, failing_realloc, failing_calloc, free);
  g_fail_after = 1;
  uvmqtt__session_lost(&f.s, UV_EOF, 2);
  g_fail_after = -1;
  uvmqtt_replace_allocator(malloc, realloc, calloc, free);
  ck_assert_int_eq(f.done, 1);
  ck_assert_int_eq(f.statuses[0], UVMQTT_ENOMEM);
  ck_assert_ptr_eq(f.args[0], (void *)2);
  ck_assert_int_eq(ACT_N(f.s, queued), 1);
  reconnect(&f, 1);
  ck_assert_int_eq(drain(&f), 1);
  ck_assert_int_eq(f.out[0].type, UVMQTT_PUBLISH);
  ck_assert_int_eq(memcmp(f.out[0].u.publish.topic.data, "kept", 4), 0);
  ck_assert_int_eq(f.done, 2);
  ck_assert_int_eq(f.statuses[1], 0);
  ck_assert_ptr_eq(f.args[1], (void *)1);
  teardown(&f);
}
END_TEST

/* Gateway scale: an idle connection holds the session's core alone. The
 * core stays within its bound (it is embedded in every client), and once
 * every exchange has settled (QoS 0, 1 and 2 both ways, a subscription, a
 * keepalive ping) the active block and all else the traffic allocated is
 * freed again. */
#define SESSION_CORE_MAX 168u
static long g_live; /* allocations made and not yet freed */
static void *counting_malloc(size_t n) {
  void *p = malloc(n);
  g_live += p != NULL;
  return p;
}
static void *counting_realloc(void *p, size_t n) {
  void *q = realloc(p, n);
  g_live += q != NULL && p == NULL;
  return q;
}
static void *counting_calloc(size_t a, size_t b) {
  void *p = calloc(a, b);
  g_live += p != NULL;
  return p;
}
static void counting_free(void *p) {
  g_live -= p != NULL;
  free(p);
}

static uint16_t out_id(fixture_t *f, uint8_t type) {
  ck_assert_int_eq(drain(f), 1);
  ck_assert_int_eq(f->out[0].type, type);
  return f->out[0].packet_id;
}

START_TEST(session_idle_holds_core_only) {
  ck_assert_uint_le(sizeof(uvmqtt__session_t), SESSION_CORE_MAX);
  fixture_t f;
  setup_session(&f, (uint8_t)_i ? UVMQTT_V5 : UVMQTT_V311, 1, 30);
  connack(&f, 0, NULL);
  drain(&f);
  ck_assert_ptr_null(f.s.act);
  ck_assert_ptr_null(f.s.dec);
  g_live = 0;
  uvmqtt_replace_allocator(counting_malloc, counting_realloc, counting_calloc, counting_free);

  publish(&f, "q0", 0, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  ck_assert_ptr_nonnull(f.s.act);
  out_id(&f, UVMQTT_PUBLISH);
  ck_assert_ptr_null(f.s.act);
  publish(&f, "q1", 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  feed_ack(&f, UVMQTT_PUBACK, out_id(&f, UVMQTT_PUBLISH), 0, 1);
  publish(&f, "q2", 2, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0, 1, 0);
  uint16_t id = out_id(&f, UVMQTT_PUBLISH);
  feed_ack(&f, UVMQTT_PUBREC, id, 0, 1);
  ck_assert_ptr_nonnull(f.s.act); /* waiting for PUBCOMP */
  ck_assert_uint_eq(out_id(&f, UVMQTT_PUBREL), id);
  feed_ack(&f, UVMQTT_PUBCOMP, id, 0, 1);
  ck_assert_int_eq(f.done, 3);

  uvmqtt_topic_sub_t sub = {{(const uint8_t *)"a/+", 3}, 1};
  uvmqtt_packet_t p = subscribe_packet(&sub);
  ck_assert_int_eq(uvmqtt__session_request(&f.s, &p, NULL, NULL, 1), 0);
  uint8_t code = 1;
  uvmqtt_packet_t ack;
  memset(&ack, 0, sizeof ack);
  ack.type = UVMQTT_SUBACK;
  ack.packet_id = out_id(&f, UVMQTT_SUBSCRIBE);
  ack.u.suback.codes = &code;
  ack.u.suback.count = 1;
  feed_packet(&f, &ack, 2, 0);
  ck_assert_int_eq(f.requests, 1);

  feed_publish(&f, "a/1", 1, 7, 0, NULL, 0);
  ck_assert_uint_eq(out_id(&f, UVMQTT_PUBACK), 7);
  feed_publish(&f, "a/2", 2, 8, 0, NULL, 0);
  ck_assert_uint_eq(out_id(&f, UVMQTT_PUBREC), 8);
  ck_assert_ptr_nonnull(f.s.act); /* waiting for PUBREL */
  feed_ack(&f, UVMQTT_PUBREL, 8, 0, 2);
  ck_assert_uint_eq(out_id(&f, UVMQTT_PUBCOMP), 8);
  ck_assert_int_eq(f.messages, 2);

  ck_assert_int_eq(uvmqtt__session_tick(&f.s, 100000), 0);
  out_id(&f, UVMQTT_PINGREQ);
  uvmqtt_packet_t pong;
  memset(&pong, 0, sizeof pong);
  pong.type = UVMQTT_PINGRESP;
  feed_packet(&f, &pong, 100001, 0);

  uvmqtt_replace_allocator(malloc, realloc, calloc, free);
  ck_assert_ptr_null(f.s.act);
  ck_assert_ptr_null(f.s.dec);
  ck_assert_int_eq(g_live, 0);
  ck_assert_int_eq(f.s.state, UVMQTT__S_ONLINE);
  teardown(&f);
}
END_TEST

/* The keepalive times are ages before the latest one: exact in any order
 * within 49 days of each other, and older ones read as 49 days old. */
START_TEST(session_times_kept_as_ages) {
  uvmqtt__session_t s;
  uvmqtt__session_init(&s, NULL, &events, UVMQTT_V311);
  uvmqtt__session_set_time(&s, UVMQTT__T_SEND, 1000);
  uvmqtt__session_set_time(&s, UVMQTT__T_RECV, 5000);
  uvmqtt__session_set_time(&s, UVMQTT__T_WRITTEN, 3000);
  uvmqtt__session_set_time(&s, UVMQTT__T_PING, 4000);
  uvmqtt__session_set_time(&s, UVMQTT__T_RECV, 2000); /* earlier than the latest */
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_SEND), 1000);
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_RECV), 2000);
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_WRITTEN), 3000);
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_PING), 4000);
  uint64_t later = 2000 + (uint64_t)UINT32_MAX;
  uvmqtt__session_set_time(&s, UVMQTT__T_WRITTEN, later);
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_WRITTEN), later);
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_RECV), 2000);
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_SEND), 2000); /* saturated */
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_PING), 4000);
  uvmqtt__session_set_time(&s, UVMQTT__T_SEND, 0);
  ck_assert_uint_eq(uvmqtt__session_time(&s, UVMQTT__T_SEND), 2000); /* saturated */
  uvmqtt__session_free(&s, UVMQTT_ECLOSED);
}
END_TEST

/* Work that starts from idle first allocates the active block: when that
 * (or anything after it) fails, the call reports UVMQTT_ENOMEM, nothing is
 * queued, no callback runs, and the session is idle again, holding nothing. */
START_TEST(session_active_block_enomem) {
  int failures = 0;
  for (int qos = 0; qos <= 1; qos++) {
    for (int k = 0; k < 4; k++) {
      fixture_t f;
      setup_session(&f, UVMQTT_V311, 1, 0);
      connack(&f, 0, NULL);
      drain(&f);
      ck_assert_ptr_null(f.s.act);
      uvmqtt_replace_allocator(failing_malloc, failing_realloc, failing_calloc, free);
      g_fail_after = k;
      int err = uvmqtt__session_publish(
          &f.s, "t", "p", 1,
          &(uvmqtt__publish_t){.qos = (uint8_t)qos, .policy = UVMQTT_DELIVERY_UNTIL_DELIVERED}, 1);
      g_fail_after = -1;
      uvmqtt_replace_allocator(malloc, realloc, calloc, free);
      if (err) {
        failures++;
        ck_assert_int_eq(err, UVMQTT_ENOMEM);
        ck_assert_ptr_null(f.s.act);
        ck_assert_int_eq(drain(&f), 0);
      } else {
        ck_assert_int_eq(ACT_N(f.s, queued), 1);
        /* An output that found no memory is retried by the next pump. */
        uvmqtt__session_pump(&f.s, 1);
        uint16_t id = out_id(&f, UVMQTT_PUBLISH);
        if (qos) feed_ack(&f, UVMQTT_PUBACK, id, 0, 1);
        ck_assert_int_eq(f.done, 1);
        ck_assert_int_eq(f.last_status, 0);
        ck_assert_ptr_null(f.s.act);
      }
      ck_assert_int_eq(f.done, err ? 0 : 1);
      teardown(&f);
      ck_assert_int_eq(f.done, err ? 0 : 1);
    }
  }
  ck_assert_int_gt(failures, 0);
}
END_TEST

/* Defect 16: with a store, the incoming QoS 2 ids waiting for PUBREL
 * outlive the process: a restarted subscriber answers the broker's DUP
 * resend with PUBREC and does not deliver it again. */
static uint8_t g_in_ids[65536];
static int mi_incoming(void *st, uint16_t id, int waiting) {
  (void)st;
  g_in_ids[id] = (uint8_t)waiting;
  return 0;
}
static int mi_load_incoming(void *st, void (*each)(void *arg, uint16_t id), void *arg) {
  (void)st;
  for (uint32_t id = 1; id < 65536u; id++)
    if (g_in_ids[id]) each(arg, (uint16_t)id);
  return 0;
}

START_TEST(session_store_incoming_qos2_survives_restart) {
  mem_store_t ms;
  memset(&ms, 0, sizeof ms);
  memset(g_in_ids, 0, sizeof g_in_ids);
  uvmqtt_store_t store = {&ms, ms_append, ms_update, ms_load, NULL, mi_incoming, mi_load_incoming};
  fixture_t f;
  setup_session(&f, UVMQTT_V311, 0, 0);
  f.s.store = &store;
  connack(&f, 0, NULL);
  feed_publish(&f, "in", 2, 5, 0, NULL, 0);
  feed_publish(&f, "in", 2, 6, 0, NULL, 0);
  ck_assert_int_eq(f.messages, 2);
  feed_ack(&f, UVMQTT_PUBREL, 6, 0, 1);
  ck_assert_int_eq(g_in_ids[5], 1);
  ck_assert_int_eq(g_in_ids[6], 0);
  f.s.store = NULL; /* the process ends */
  teardown(&f);

  fixture_t g;
  memset(&g, 0, sizeof g);
  uvmqtt__session_init(&g.s, &g, &events, UVMQTT_V311);
  g.s.store = &store;
  ck_assert_int_eq(uvmqtt__session_restore(&g.s, 0), 0);
  ck_assert_int_eq(ACT_N(g.s, rx_qos2_count), 1);
  uvmqtt_packet_t c = connect_packet(UVMQTT_V311, 0);
  ck_assert_int_eq(uvmqtt__session_connect(&g.s, &c, 0), 0);
  drain(&g);
  connack(&g, 1, NULL);
  feed_publish(&g, "in", 2, 5, 1, NULL, 0); /* the broker's resend */
  ck_assert_int_eq(g.messages, 0);
  ck_assert_int_eq(drain(&g), 1);
  ck_assert_int_eq(g.out[0].type, UVMQTT_PUBREC);
  feed_ack(&g, UVMQTT_PUBREL, 5, 0, 2);
  ck_assert_int_eq(drain(&g), 1);
  ck_assert_int_eq(g.out[0].type, UVMQTT_PUBCOMP);
  ck_assert_int_eq(g.out[0].reason, 0);
  ck_assert_int_eq(g_in_ids[5], 0);
  teardown(&g);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("session");
  TCase *flows = tcase_create("flows");
  tcase_add_loop_test(flows, session_connect_and_connack, 0, 2);
  tcase_add_loop_test(flows, session_publish_qos1_acked, 0, 2);
  tcase_add_loop_test(flows, session_publish_qos2_flow, 0, 2);
  tcase_add_loop_test(flows, session_qos0_direct_bytes_and_refusals, 0, 2);
  tcase_add_test(flows, session_v5_puback_failure_reason_is_data);
  tcase_add_loop_test(flows, session_unexpected_acks_ignored, 0, 2);
  tcase_add_loop_test(flows, session_incoming_qos2_exactly_once, 0, 2);
  tcase_add_loop_test(flows, session_incoming_qos1_acked_after_callback, 0, 2);
  tcase_add_loop_test(flows, session_subscribe_request_roundtrip, 0, 2);
  suite_add_tcase(s, flows);

  TCase *limits = tcase_create("limits");
  tcase_add_test(limits, session_receive_maximum_honoured);
  tcase_add_test(limits, session_max_inflight_caps_window);
  tcase_add_test(limits, session_broker_limits_fail_locally);
  tcase_add_test(limits, session_server_keep_alive_applied);
  tcase_add_test(limits, session_keepalive_grid);
  tcase_add_loop_test(limits, session_keepalive_ping_and_timeout, 0, 2);
  tcase_add_test(limits, session_keepalive_pingresp_keeps_alive);
  tcase_add_test(limits, session_packet_ids_never_reused_in_flight);
  tcase_set_timeout(limits, 60);
  suite_add_tcase(s, limits);

  TCase *recon = tcase_create("reconnect");
  tcase_add_loop_test(recon, session_resend_with_session_present, 0, 2);
  tcase_add_loop_test(recon, session_republish_without_session, 0, 2);
  tcase_add_test(recon, session_v31_resumes_asked_session);
  tcase_add_test(recon, session_offline_queue_sent_on_connack);
  tcase_add_test(recon, session_deadline_expires_unsent_only);
  tcase_add_test(recon, session_deadline_past_at_loss);
  tcase_add_test(recon, session_custom_policy_decides_at_loss);
  tcase_add_test(recon, session_drop_policy_fails_at_loss);
  tcase_add_test(recon, session_queue_bounds);
  tcase_add_test(recon, session_drop_oldest_room_kept_for_the_publish);
  tcase_add_test(recon, session_free_completes_everything);
  tcase_add_test(recon, session_unsent_qos0_follows_policy_at_loss);
  tcase_add_test(recon, session_qos0_direct_path);
  suite_add_tcase(s, recon);

  TCase *bad = tcase_create("bad_input");
  tcase_add_test(bad, session_incoming_topic_alias);
  tcase_add_test(bad, session_unknown_alias_rejected);
  tcase_add_test(bad, session_malformed_input_sends_disconnect);
  tcase_add_test(bad, session_incoming_size_bounded_by_default);
  tcase_add_test(bad, session_unrequested_auth_is_protocol_error);
  tcase_add_test(bad, session_packet_before_connack_is_protocol_error);
  tcase_add_test(bad, session_refused_connack);
  suite_add_tcase(s, bad);

  TCase *gate = tcase_create("gate");
  tcase_add_loop_test(gate, session_nothing_after_disconnect, 0, 2);
  tcase_add_test(gate, session_disconnect_is_last_after_flood);
  tcase_add_test(gate, session_connack_limits_apply_to_queued_and_resent);
  tcase_add_test(gate, session_packet_id_exact_across_wrap);
  tcase_add_test(gate, session_store_wait_does_not_stall_resend);
  tcase_add_test(gate, session_qos2_lost_session_never_success);
  tcase_add_loop_test(gate, session_present_to_clean_start_is_protocol_error, 0, 2);
  tcase_add_test(gate, session_ping_timed_from_write);
  tcase_add_test(gate, session_topic_alias_scoped_and_bounded);
  tcase_add_test(gate, session_topic_alias_out_saves_bytes);
  tcase_add_test(gate, session_auth_exchange_and_reauth);
  tcase_add_test(gate, session_auth_method_must_match);
  tcase_add_test(gate, session_topic_alias_out_lru_and_bounds);
  tcase_add_test(gate, session_unknown_failed_pubrec_no_pubrel);
  tcase_add_test(gate, session_request_enomem_leaves_nothing);
  tcase_add_test(gate, session_store_incoming_qos2_survives_restart);
  tcase_add_loop_test(gate, session_idle_holds_core_only, 0, 2);
  tcase_add_test(gate, session_active_block_enomem);
  tcase_add_test(gate, session_times_kept_as_ages);
  tcase_set_timeout(gate, 60);
  suite_add_tcase(s, gate);

  TCase *store = tcase_create("store");
  tcase_add_test(store, session_store_phases_recorded);
  tcase_add_test(store, session_store_wait_honours_deadline);
  tcase_add_test(store, session_store_wait_honours_new_receive_maximum);
  tcase_add_test(store, session_store_restore_resends_pubrel);
  tcase_add_test(store, session_store_close_keeps_unfinished);
  tcase_add_test(store, session_store_refusal_reported_later);
  suite_add_tcase(s, store);
  return s;
}
