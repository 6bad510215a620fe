/* The sans-I/O MQTT session; see session.h for the model. */
#include "session.h"

#include <string.h>

#include "alloc.h"
#include "codec_internal.h"

#define DEFAULT_MAX_QUEUED       65536u
#define DEFAULT_MAX_QUEUED_BYTES (16u * 1024u * 1024u)
#define DEFAULT_MAX_PACKET       (16u * 1024u * 1024u)
/* Without a broker Receive Maximum (3.1.1), cap our own window. */
#define DEFAULT_WINDOW 65535u

static void *dec_alloc(void *ud, size_t size) {
  (void)ud;
  return uvmqtt__malloc(size);
}

static void dec_free(void *ud, void *ptr) {
  (void)ud;
  uvmqtt__free(ptr);
}

static const uvmqtt_codec_mem_t dec_mem = {dec_alloc, dec_free, NULL};

/* ---- Lists ---------------------------------------------------------------- */

static void list_push(uvmqtt__msg_list_t *l, uvmqtt__msg_t *m) {
  m->next = NULL;
  if (l->tail)
    l->tail->next = m;
  else
    l->head = m;
  l->tail = m;
}

static uvmqtt__msg_t *list_pop(uvmqtt__msg_list_t *l) {
  uvmqtt__msg_t *m = l->head;
  if (m) {
    l->head = m->next;
    if (l->head == NULL) l->tail = NULL;
    m->next = NULL;
  }
  return m;
}

/* Unlinks m given its predecessor (NULL when m is the head). */
static void list_unlink(uvmqtt__msg_list_t *l, uvmqtt__msg_t *prev, uvmqtt__msg_t *m) {
  if (prev)
    prev->next = m->next;
  else
    l->head = m->next;
  if (l->tail == m) l->tail = prev;
  m->next = NULL;
}

/* Appends every message of `from` to the front of `to`, keeping order. */
static void list_prepend_all(uvmqtt__msg_list_t *to, uvmqtt__msg_list_t *from) {
  if (from->head == NULL) return;
  from->tail->next = to->head;
  to->head = from->head;
  if (to->tail == NULL) to->tail = from->tail;
  from->head = from->tail = NULL;
}

/* ---- Store hooks ---------------------------------------------------------- */

static void store_update(uvmqtt__session_t *s, const uvmqtt__msg_t *m, uint8_t phase) {
  /* An update the store cannot make leaves the log one phase behind: after a
   * crash the message is resent (at least once), never lost. */
  if (s->store) (void)s->store->update(s->store->state, m->seq, phase, m->id, NULL, NULL);
}

static void store_wait_link(uvmqtt__session_t *s, uvmqtt__store_wait_t *w) {
  w->prev = NULL;
  w->next = s->store_waits;
  if (w->next) w->next->prev = w;
  s->store_waits = w;
}

static void store_wait_unlink(uvmqtt__session_t *s, uvmqtt__store_wait_t *w) {
  if (w->prev)
    w->prev->next = w->next;
  else if (s && s->store_waits == w)
    s->store_waits = w->next;
  if (w->next) w->next->prev = w->prev;
  w->next = w->prev = NULL;
}

static void on_store_done(void *arg, int status) {
  uvmqtt__store_wait_t *w = arg;
  uvmqtt__session_t *s = w->s;
  if (s) {
    store_wait_unlink(s, w);
    if (s->ev->stored) s->ev->stored(s->owner, w->arg, status);
  }
  uvmqtt__free(w);
}

static int store_append(uvmqtt__session_t *s, const uvmqtt__msg_t *m) {
  uvmqtt__store_wait_t *w = uvmqtt__calloc(1, sizeof *w);
  if (w == NULL) return UVMQTT_ENOMEM;
  w->s = s;
  w->arg = m->arg;
  uvmqtt_store_record_t rec;
  memset(&rec, 0, sizeof rec);
  rec.seq = m->seq;
  rec.packet = m->data;
  rec.len = m->len;
  rec.phase = UVMQTT_STORE_QUEUED;
  rec.policy = m->policy;
  rec.deadline_unix_ms = m->deadline ? (uint64_t)((int64_t)m->deadline + s->wall_offset_ms) : 0;
  int err = s->store->append(s->store->state, &rec, on_store_done, w);
  if (err) {
    /* Kept in memory all the same; the owner reports the failure later,
     * never from inside the publish call. */
    w->status = err;
    w->next = s->store_failed;
    s->store_failed = w;
    return 0;
  }
  store_wait_link(s, w);
  return 0;
}

static void on_phase_stored(void *arg, int status);

/* Records a phase change whose packet (PUBLISH under a new id, PUBREL) must
 * not reach the broker before the store has it: otherwise a process killed
 * in between would come back one phase behind the broker and repeat a step
 * the broker already took (a second PUBLISH of a QoS 2 message the broker
 * released is a second delivery). Returns 1 when the packet must wait for
 * on_phase_stored(), 0 when it may go now (no store, or a store that failed:
 * the client keeps running in memory). */
static int store_update_then_send(uvmqtt__session_t *s, uvmqtt__msg_t *m, uint8_t phase) {
  if (s->store == NULL) return 0;
  uvmqtt__store_wait_t *w = uvmqtt__calloc(1, sizeof *w);
  if (w == NULL) {
    store_update(s, m, phase);
    return 0;
  }
  w->s = s;
  w->msg = m;
  if (s->store->update(s->store->state, m->seq, phase, m->id, on_phase_stored, w) != 0) {
    uvmqtt__free(w);
    return 0;
  }
  store_wait_link(s, w);
  m->wait = w;
  return 1;
}

static int out_append(uvmqtt__session_t *s, const uint8_t *bytes, size_t len, uint64_t now);
static int out_ack(uvmqtt__session_t *s, uint8_t type, uint16_t id, uint8_t reason, uint64_t now);
static int out_publish(uvmqtt__session_t *s, uvmqtt__msg_t *m, uint64_t now);

/* The store has the phase change: the packet it held back goes out now if
 * the connection is up, else with the resend after the next CONNACK. A
 * store error changes nothing: the packet goes all the same. */
static void on_phase_stored(void *arg, int status) {
  (void)status;
  uvmqtt__store_wait_t *w = arg;
  uvmqtt__session_t *s = w->s;
  uvmqtt__msg_t *m = w->msg;
  if (s) store_wait_unlink(s, w);
  uvmqtt__free(w);
  if (s == NULL || m == NULL) return;
  m->wait = NULL;
  if (m->state == UVMQTT__MSG_STORING) m->state = UVMQTT__MSG_WAIT_ACK;
  if (s->state != UVMQTT__S_ONLINE) return;
  /* The session has no clock: the latest time it was given stands in. At
   * worst keepalive sends one PINGREQ early. */
  uint64_t now = s->last_send > s->last_recv ? s->last_send : s->last_recv;
  int err = m->state == UVMQTT__MSG_WAIT_COMP ? out_ack(s, UVMQTT_PUBREL, m->id, 0, now)
                                              : out_publish(s, m, now);
  /* Out of memory: the resend after the next reconnect sends it. */
  (void)err;
  if (s->ev->wake) s->ev->wake(s->owner);
}

/* The message is gone: a confirmation still due finds nothing to send. */
static void store_wait_forget(uvmqtt__msg_t *m) {
  if (m->wait) m->wait->msg = NULL;
  m->wait = NULL;
}

int uvmqtt__session_report_store_failures(uvmqtt__session_t *s) {
  int any = 0;
  while (s->store_failed) {
    uvmqtt__store_wait_t *w = s->store_failed;
    s->store_failed = w->next;
    if (s->ev->stored) s->ev->stored(s->owner, w->arg, w->status);
    uvmqtt__free(w);
    any = 1;
  }
  return any;
}

static void store_detach(uvmqtt__session_t *s) {
  /* Appends still in progress finish after the session is gone. */
  for (uvmqtt__store_wait_t *w = s->store_waits; w; w = w->next)
    w->s = NULL;
  s->store_waits = NULL;
  while (s->store_failed) {
    uvmqtt__store_wait_t *w = s->store_failed;
    s->store_failed = w->next;
    uvmqtt__free(w);
  }
}

/* ---- Output --------------------------------------------------------------- */

static int out_reserve(uvmqtt__output_t *o, size_t extra) {
  if (o->cap - o->len >= extra) return 0;
  size_t cap = o->cap ? o->cap : 256;
  while (cap - o->len < extra)
    cap *= 2;
  uint8_t *buf = uvmqtt__realloc(o->buf, cap);
  if (buf == NULL) return UVMQTT_ENOMEM;
  o->buf = buf;
  o->cap = cap;
  return 0;
}

static int out_append(uvmqtt__session_t *s, const uint8_t *bytes, size_t len, uint64_t now) {
  int err = out_reserve(&s->out, len);
  if (err) return err;
  memcpy(s->out.buf + s->out.len, bytes, len);
  s->out.len += len;
  s->last_send = now;
  return 0;
}

static int out_packet(uvmqtt__session_t *s, const uvmqtt_packet_t *pkt, uint64_t now) {
  ssize_t size = uvmqtt_encode_size(pkt, s->version);
  if (size < 0) return (int)size;
  int err = out_reserve(&s->out, (size_t)size);
  if (err) return err;
  ssize_t n = uvmqtt_encode(pkt, s->version, s->out.buf + s->out.len, s->out.cap - s->out.len);
  if (n < 0) return (int)n;
  s->out.len += (size_t)n;
  s->last_send = now;
  return 0;
}

/* A two-byte-id ack (PUBACK, PUBREC, PUBREL, PUBCOMP) in its shortest form. */
static int out_ack(uvmqtt__session_t *s, uint8_t type, uint16_t id, uint8_t reason, uint64_t now) {
  uint8_t b[4] = {(uint8_t)((type << 4) | (type == UVMQTT_PUBREL ? 2 : 0)), 2, (uint8_t)(id >> 8),
                  (uint8_t)id};
  if (reason != 0 && s->version == UVMQTT_V5) {
    uint8_t r[5] = {b[0], 3, b[2], b[3], reason};
    return out_append(s, r, sizeof r, now);
  }
  return out_append(s, b, sizeof b, now);
}

/* Writes the PUBLISH of m. Its stored bytes are always what the next send
 * must be: once they went out under this packet id, a resend is a DUP. */
static int out_publish(uvmqtt__session_t *s, uvmqtt__msg_t *m, uint64_t now) {
  int err = out_append(s, m->data, m->len, now);
  if (err) return err;
  m->sent = 1;
  if (m->qos > 0) m->data[0] |= 0x08;
  return 0;
}

/* ---- Init and teardown ------------------------------------------------------ */

void uvmqtt__session_init(uvmqtt__session_t *s, void *owner, const uvmqtt__session_events_t *ev,
                          uint8_t version) {
  memset(s, 0, sizeof *s);
  s->owner = owner;
  s->ev = ev;
  s->version = version;
  s->next_id = 1;
  s->broker_max_qos = 2;
  s->broker_retain = 1;
  s->broker_receive_max = DEFAULT_WINDOW;
  s->max_inflight = DEFAULT_WINDOW;
  s->max_queued = DEFAULT_MAX_QUEUED;
  s->max_queued_bytes = DEFAULT_MAX_QUEUED_BYTES;
  s->our_max_packet = DEFAULT_MAX_PACKET;
  uvmqtt_decoder_init(&s->dec, version, 0, &dec_mem);
}

static void msg_finish(uvmqtt__session_t *s, uvmqtt__msg_t *m, int status, uint8_t reason) {
  store_wait_forget(m);
  store_update(s, m, UVMQTT_STORE_DONE);
  s->queued--;
  s->queued_bytes -= m->len;
  if (s->ev->publish_done) s->ev->publish_done(s->owner, m, status, reason);
  uvmqtt__free(m);
}

static void aliases_free(uvmqtt__session_t *s) {
  if (s->aliases == NULL) return;
  for (uint32_t i = 0; i < s->our_alias_max; i++)
    uvmqtt__free((void *)s->aliases[i].data);
  uvmqtt__free(s->aliases);
  s->aliases = NULL;
}

void uvmqtt__session_free(uvmqtt__session_t *s, int status) {
  uvmqtt__msg_t *m;
  uvmqtt__session_lost(s, status, s->last_recv);
  /* What the delivery policies kept is still owed to the broker: the store
   * keeps it for the next process. DONE would mean delivered or given up. */
  s->store = NULL;
  while ((m = list_pop(&s->window)) != NULL) {
    if (m->qos > 0) s->inflight--;
    msg_finish(s, m, status, 0);
  }
  while ((m = list_pop(&s->queue)) != NULL)
    msg_finish(s, m, status, 0);
  while (s->reqs) {
    uvmqtt__req_t *r = s->reqs;
    s->reqs = r->next;
    if (s->ev->request_done) s->ev->request_done(s->owner, r, status, NULL);
    uvmqtt__free(r);
  }
  uvmqtt__free(s->rx_qos2);
  s->rx_qos2 = NULL;
  s->rx_qos2_count = s->rx_qos2_cap = 0;
  aliases_free(s);
  uvmqtt_decoder_reset(&s->dec);
  uvmqtt__free(s->out.buf);
  memset(&s->out, 0, sizeof s->out);
  store_detach(s);
}

/* ---- Packet ids ------------------------------------------------------------------- */

static int id_in_use(const uvmqtt__session_t *s, uint16_t id) {
  for (const uvmqtt__msg_t *m = s->window.head; m; m = m->next)
    if (m->qos > 0 && m->id == id) return 1;
  for (const uvmqtt__req_t *r = s->reqs; r; r = r->next)
    if (r->id == id) return 1;
  return 0;
}

/* The oldest serial among ids in use, to skip the scan when no wrap-around
 * can have happened since. */
static uint64_t oldest_serial(const uvmqtt__session_t *s) {
  uint64_t oldest = s->ids_issued;
  /* The window is in send order, so its head holds its oldest id. */
  if (s->window.head && s->window.head->serial < oldest) oldest = s->window.head->serial;
  if (s->reqs && s->reqs->serial < oldest) oldest = s->reqs->serial;
  return oldest;
}

static uint16_t next_packet_id(uvmqtt__session_t *s, uint64_t *serial) {
  int scan = s->ids_issued - oldest_serial(s) >= 65535u;
  for (uint32_t tries = 0; tries < 65536u; tries++) {
    uint16_t id = s->next_id++;
    if (s->next_id == 0) s->next_id = 1;
    if (id == 0) continue;
    if (scan && id_in_use(s, id)) continue;
    *serial = s->ids_issued++;
    return id;
  }
  return 0;
}

/* ---- Connect ---------------------------------------------------------------------- */

int uvmqtt__session_connect(uvmqtt__session_t *s, const uvmqtt_packet_t *connect, uint64_t now) {
  if (connect->type != UVMQTT_CONNECT || connect->u.connect.protocol_level != s->version)
    return UVMQTT_EINVAL;
  uvmqtt_decoder_reset(&s->dec);
  s->out.len = 0;
  s->our_keepalive_s = connect->u.connect.keep_alive;
  s->keepalive_s = s->our_keepalive_s;
  s->clean_start = connect->u.connect.clean_start;
  s->our_receive_max = 65535;
  if (s->version == UVMQTT_V5) {
    const uvmqtt_props_t *p = &connect->props;
    if (UVMQTT_HAS(p, UVMQTT_PROP_RECEIVE_MAXIMUM)) s->our_receive_max = p->receive_maximum;
    uint16_t alias_max =
        UVMQTT_HAS(p, UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM) ? p->topic_alias_maximum : 0;
    if (alias_max != s->our_alias_max) {
      aliases_free(s);
      s->our_alias_max = alias_max;
    }
  }
  /* Never unbounded: the decoder buffers a split packet at its declared
   * size, so a limit is what keeps five bytes from costing 256 MiB. */
  s->dec.max_packet_size =
      (s->version == UVMQTT_V5 && UVMQTT_HAS(&connect->props, UVMQTT_PROP_MAXIMUM_PACKET_SIZE))
          ? connect->props.maximum_packet_size
          : s->our_max_packet;
  s->state = UVMQTT__S_CONNECTING;
  s->ping_outstanding = 0;
  s->last_recv = now;
  /* Broker limits are per connection: back to the defaults until CONNACK. */
  s->broker_max_qos = 2;
  s->broker_retain = 1;
  s->broker_receive_max = DEFAULT_WINDOW;
  s->broker_max_packet = 0;
  return out_packet(s, connect, now);
}

/* Messages go back to the queue after a reconnect without session: the
 * broker forgot them, so they are published again as new (at least once). */
static void requeue_window_as_new(uvmqtt__session_t *s) {
  uvmqtt__msg_list_t again = {NULL, NULL};
  uvmqtt__msg_t *m;
  while ((m = list_pop(&s->window)) != NULL) {
    if (m->qos > 0) s->inflight--;
    if (m->state == UVMQTT__MSG_WAIT_COMP) {
      /* The broker had taken ownership (PUBREC): sending it again would
       * duplicate an exactly-once message. */
      msg_finish(s, m, 0, 0);
      continue;
    }
    m->state = UVMQTT__MSG_QUEUED;
    m->data[0] &= (uint8_t)~0x08; /* not a duplicate for a broker without the session */
    store_wait_forget(m);
    store_update(s, m, UVMQTT_STORE_QUEUED);
    list_push(&again, m);
  }
  list_prepend_all(&s->queue, &again);
}

/* After a reconnect with the session present: resend the window in order
 * (PUBLISH with DUP, or PUBREL), then the queue follows via pump. */
static int resend_window(uvmqtt__session_t *s, uint64_t now) {
  for (uvmqtt__msg_t *m = s->window.head; m; m = m->next) {
    /* Held back for the store: on_phase_stored() sends it, and every later
     * message of the window waits too (the store confirms in order). */
    if (m->wait) break;
    int err = m->state == UVMQTT__MSG_WAIT_COMP ? out_ack(s, UVMQTT_PUBREL, m->id, 0, now)
                                                : out_publish(s, m, now);
    if (err) return err;
  }
  return 0;
}

static int resend_requests(uvmqtt__session_t *s, uint64_t now) {
  for (uvmqtt__req_t *r = s->reqs; r; r = r->next) {
    int err = out_append(s, r->data, r->len, now);
    if (err) return err;
  }
  return 0;
}

static int on_connack(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  if (s->state != UVMQTT__S_CONNECTING) return UVMQTT_EUNEXPECTED;
  if (p->reason != 0) {
    s->state = UVMQTT__S_OFFLINE;
    if (s->ev->connack && s->ev->connack(s->owner, p)) return 1;
    return UVMQTT_EREFUSED;
  }
  if (s->version == UVMQTT_V5) {
    const uvmqtt_props_t *pr = &p->props;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_RECEIVE_MAXIMUM)) s->broker_receive_max = pr->receive_maximum;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_MAXIMUM_QOS)) s->broker_max_qos = pr->maximum_qos;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_RETAIN_AVAILABLE)) s->broker_retain = pr->retain_available;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_MAXIMUM_PACKET_SIZE))
      s->broker_max_packet = pr->maximum_packet_size;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_SERVER_KEEP_ALIVE)) s->keepalive_s = pr->server_keep_alive;
  }
  s->state = UVMQTT__S_ONLINE;
  int err;
  if (p->session_present && !s->clean_start) {
    err = resend_window(s, now);
  } else {
    /* No session on the broker: our incoming QoS 2 state is void too. */
    s->rx_qos2_count = 0;
    requeue_window_as_new(s);
    err = 0;
  }
  if (err == 0) err = resend_requests(s, now);
  if (err) return err;
  if (s->ev->connack && s->ev->connack(s->owner, p)) return 1;
  uvmqtt__session_pump(s, now);
  return 0;
}

/* ---- Outgoing publish --------------------------------------------------------------- */

/* Only a message never handed to the socket may expire: one that was may
 * have reached the broker, and calling it expired would be a lie. (A message
 * back in the queue after a reconnect without session was sent before.) */
static int expirable(const uvmqtt__msg_t *m) {
  return m->deadline != 0 && !m->sent;
}

static void recompute_expiry(uvmqtt__session_t *s) {
  uint64_t next = 0;
  for (uvmqtt__msg_t *m = s->queue.head; m; m = m->next)
    if (expirable(m) && (next == 0 || m->deadline < next)) next = m->deadline;
  s->next_expiry = next;
}

static int make_room(uvmqtt__session_t *s, size_t len) {
  while (s->queued + 1 > s->max_queued || s->queued_bytes + len > s->max_queued_bytes) {
    if (s->overflow != UVMQTT_OVERFLOW_DROP_OLDEST || s->queue.head == NULL)
      return UVMQTT_EQUEUEFULL;
    uvmqtt__msg_t *old = list_pop(&s->queue);
    msg_finish(s, old, UVMQTT_EDROPPED, 0);
  }
  return 0;
}

int uvmqtt__session_publish(uvmqtt__session_t *s, const char *topic, const void *payload,
                            size_t len, const uvmqtt_publish_opts_t *opts, uint8_t policy,
                            uint32_t deadline_ms, uvmqtt_publish_cb cb, void *arg, uint64_t now) {
  static const uvmqtt_publish_opts_t zero_opts;
  if (opts == NULL) opts = &zero_opts;
  if (topic == NULL || (payload == NULL && len > 0)) return UVMQTT_EINVAL;
  if (opts->qos > 2) return UVMQTT_EBADQOS;
  if (len > UVMQTT_MAX_REMAINING_LENGTH) return UVMQTT_EPKTTOOBIG;
  if (opts->qos > s->broker_max_qos) return UVMQTT_EQOSNOTSUP;
  if (opts->retain && !s->broker_retain) return UVMQTT_ERETAINNOTSUP;

  uvmqtt_packet_t pkt;
  memset(&pkt, 0, sizeof pkt);
  pkt.type = UVMQTT_PUBLISH;
  pkt.packet_id = opts->qos ? 1 : 0; /* patched when sent */
  size_t topic_len = strlen(topic);
  if (topic_len > 65535) return UVMQTT_EBADTOPIC;
  pkt.u.publish.topic.data = (const uint8_t *)topic;
  pkt.u.publish.topic.len = (uint32_t)topic_len;
  pkt.u.publish.payload.data = payload;
  pkt.u.publish.payload.len = (uint32_t)len;
  pkt.u.publish.qos = opts->qos;
  pkt.u.publish.retain = opts->retain;
  if (opts->props && s->version == UVMQTT_V5) pkt.props = *opts->props;
  ssize_t size = uvmqtt_encode_size(&pkt, s->version);
  if (size < 0) return (int)size;
  if (s->broker_max_packet && (size_t)size > s->broker_max_packet) return UVMQTT_EPKTTOOBIG;
  int err = make_room(s, (size_t)size);
  if (err) return err;

  uvmqtt__msg_t *m = uvmqtt__malloc(sizeof *m + (size_t)size);
  if (m == NULL) return UVMQTT_ENOMEM;
  ssize_t n = uvmqtt__encode_checked(&pkt, s->version, m->data, (size_t)size);
  if (n < 0) {
    uvmqtt__free(m);
    return (int)n;
  }
  /* The fixed header is the type byte plus the remaining-length varint. */
  uint32_t fixed = 1;
  while (m->data[fixed] & 0x80)
    fixed++;
  fixed++;
  m->next = NULL;
  m->seq = s->next_seq++;
  m->created = now;
  m->deadline = (policy == UVMQTT_DELIVERY_DEADLINE) ? now + deadline_ms : 0;
  m->serial = 0;
  m->cb = cb;
  m->arg = arg;
  m->len = (uint32_t)size;
  m->topic_off = fixed + 2;
  m->topic_len = (uint16_t)topic_len;
  m->id_off = opts->qos ? fixed + 2 + (uint32_t)topic_len : 0;
  m->id = 0;
  m->qos = opts->qos;
  m->policy = policy;
  m->state = UVMQTT__MSG_QUEUED;
  m->sent = 0;
  m->restored = 0;
  m->wait = NULL;
  if (s->store) {
    err = store_append(s, m);
    if (err) {
      uvmqtt__free(m);
      return err;
    }
  }
  s->queued++;
  s->queued_bytes += m->len;
  list_push(&s->queue, m);
  if (expirable(m) && (s->next_expiry == 0 || m->deadline < s->next_expiry))
    s->next_expiry = m->deadline;
  uvmqtt__session_pump(s, now);
  return 0;
}

void uvmqtt__session_pump(uvmqtt__session_t *s, uint64_t now) {
  int expiry_changed = 0;
  while (s->state == UVMQTT__S_ONLINE && s->queue.head && s->out.len < UVMQTT__OUT_HIGH_WATER) {
    uvmqtt__msg_t *m = s->queue.head;
    if (m->qos > 0 && (s->inflight >= s->broker_receive_max || s->inflight >= s->max_inflight))
      break;
    if (s->broker_max_packet && m->len > s->broker_max_packet) {
      list_pop(&s->queue);
      expiry_changed |= m->deadline != 0;
      msg_finish(s, m, UVMQTT_EPKTTOOBIG, 0);
      continue;
    }
    if (m->qos > 0) {
      uint16_t id = next_packet_id(s, &m->serial);
      if (id == 0) break; /* every id in use: wait for acks */
      m->id = id;
      m->data[0] &= (uint8_t)~0x08; /* a new id: the first send under it */
      m->data[m->id_off] = (uint8_t)(id >> 8);
      m->data[m->id_off + 1] = (uint8_t)id;
    }
    if (m->qos == 0) {
      if (out_publish(s, m, now) != 0) break; /* out of memory: retry later */
      list_pop(&s->queue);
      m->state = UVMQTT__MSG_WRITING;
      list_push(&s->out.msgs, m);
    } else {
      /* A stored message goes out once the store knows its packet id. */
      if (!store_update_then_send(s, m, UVMQTT_STORE_SENT)) {
        if (out_publish(s, m, now) != 0) break; /* out of memory: retry later */
        m->state = UVMQTT__MSG_WAIT_ACK;
      } else {
        m->state = UVMQTT__MSG_STORING;
      }
      list_pop(&s->queue);
      s->inflight++;
      list_push(&s->window, m);
    }
    expiry_changed |= m->deadline != 0;
  }
  if (expiry_changed) recompute_expiry(s);
}

int uvmqtt__session_request(uvmqtt__session_t *s, const uvmqtt_packet_t *pkt,
                            uvmqtt_subscribe_cb cb, void *arg, uint64_t now) {
  if (pkt->type != UVMQTT_SUBSCRIBE && pkt->type != UVMQTT_UNSUBSCRIBE) return UVMQTT_EINVAL;
  uvmqtt_packet_t copy = *pkt;
  copy.packet_id = 1; /* placeholder for sizing and validation */
  ssize_t size = uvmqtt_encode_size(&copy, s->version);
  if (size < 0) return (int)size;
  if (s->broker_max_packet && (size_t)size > s->broker_max_packet) return UVMQTT_EPKTTOOBIG;
  uvmqtt__req_t *r = uvmqtt__malloc(sizeof *r + (size_t)size);
  if (r == NULL) return UVMQTT_ENOMEM;
  r->next = NULL;
  r->cb = cb;
  r->arg = arg;
  r->type = pkt->type;
  r->len = (uint32_t)size;
  r->id = next_packet_id(s, &r->serial);
  if (r->id == 0) {
    uvmqtt__free(r);
    return UVMQTT_EQUEUEFULL;
  }
  copy.packet_id = r->id;
  s->last_req_id = r->id;
  ssize_t n = uvmqtt_encode(&copy, s->version, r->data, (size_t)size);
  if (n < 0) {
    uvmqtt__free(r);
    return (int)n;
  }
  uvmqtt__req_t **tail = &s->reqs;
  while (*tail)
    tail = &(*tail)->next;
  *tail = r;
  /* Offline or before CONNACK: sent by resend_requests() on connect. */
  if (s->state == UVMQTT__S_ONLINE) return out_append(s, r->data, r->len, now);
  return 0;
}

int uvmqtt__session_send_packet(uvmqtt__session_t *s, const uvmqtt_packet_t *pkt, uint64_t now) {
  return out_packet(s, pkt, now);
}

/* ---- Incoming ------------------------------------------------------------------------ */

static uvmqtt__msg_t *window_find(uvmqtt__session_t *s, uint16_t id, uvmqtt__msg_t **prev_out) {
  uvmqtt__msg_t *prev = NULL;
  for (uvmqtt__msg_t *m = s->window.head; m; prev = m, m = m->next) {
    if (m->qos > 0 && m->id == id) {
      *prev_out = prev;
      return m;
    }
  }
  return NULL;
}

static int window_complete(uvmqtt__session_t *s, uvmqtt__msg_t *prev, uvmqtt__msg_t *m,
                           uint8_t reason, uint64_t now) {
  list_unlink(&s->window, prev, m);
  s->inflight--;
  msg_finish(s, m, 0, reason);
  uvmqtt__session_pump(s, now);
  return 0;
}

static int on_ack(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  uvmqtt__msg_t *prev, *m = window_find(s, p->packet_id, &prev);
  /* An ack for a PUBLISH not sent yet is as unexpected as one for an id
   * never used. */
  if (m && m->state == UVMQTT__MSG_STORING) m = NULL;
  switch (p->type) {
  case UVMQTT_PUBACK:
    /* An ack for nothing we sent (or of the wrong kind) is ignored. */
    if (m && m->qos == 1) return window_complete(s, prev, m, p->reason, now);
    return 0;
  case UVMQTT_PUBREC:
    if (m && m->qos == 2 && m->state == UVMQTT__MSG_WAIT_ACK) {
      if (p->reason >= 0x80) return window_complete(s, prev, m, p->reason, now);
      m->state = UVMQTT__MSG_WAIT_COMP;
      /* The PUBREL waits until the store knows of the PUBREC. */
      if (store_update_then_send(s, m, UVMQTT_STORE_PUBREC)) return 0;
      return out_ack(s, UVMQTT_PUBREL, p->packet_id, 0, now);
    }
    if (m && m->state == UVMQTT__MSG_WAIT_COMP)
      return m->wait ? 0 : out_ack(s, UVMQTT_PUBREL, p->packet_id, 0, now);
    /* Unknown id: release it so the broker can forget it. */
    return out_ack(s, UVMQTT_PUBREL, p->packet_id, 0x92, now);
  case UVMQTT_PUBCOMP:
    if (m && m->qos == 2 && m->state == UVMQTT__MSG_WAIT_COMP)
      return window_complete(s, prev, m, p->reason, now);
    return 0;
  default: return UVMQTT_EUNEXPECTED;
  }
}

static int rx_qos2_find(const uvmqtt__session_t *s, uint16_t id) {
  for (uint32_t i = 0; i < s->rx_qos2_count; i++)
    if (s->rx_qos2[i] == id) return (int)i;
  return -1;
}

static int rx_qos2_add(uvmqtt__session_t *s, uint16_t id) {
  if (s->rx_qos2_count == s->rx_qos2_cap) {
    uint32_t cap = s->rx_qos2_cap ? s->rx_qos2_cap * 2 : 4;
    uint16_t *ids = uvmqtt__realloc(s->rx_qos2, cap * sizeof *ids);
    if (ids == NULL) return UVMQTT_ENOMEM;
    s->rx_qos2 = ids;
    s->rx_qos2_cap = cap;
  }
  s->rx_qos2[s->rx_qos2_count++] = id;
  return 0;
}

/* Resolves an incoming topic alias (v5): a topic with an alias sets the
 * mapping, an empty topic uses it. */
static int resolve_alias(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uvmqtt_bytes_t *topic) {
  *topic = p->u.publish.topic;
  if (!UVMQTT_HAS(&p->props, UVMQTT_PROP_TOPIC_ALIAS)) {
    return topic->len ? 0 : UVMQTT_EBADTOPIC;
  }
  uint16_t alias = p->props.topic_alias;
  if (alias == 0 || alias > s->our_alias_max) return UVMQTT_ETOPICALIAS;
  if (s->aliases == NULL) {
    s->aliases = uvmqtt__calloc(s->our_alias_max, sizeof *s->aliases);
    if (s->aliases == NULL) return UVMQTT_ENOMEM;
  }
  uvmqtt_bytes_t *slot = &s->aliases[alias - 1];
  if (topic->len == 0) {
    if (slot->data == NULL) return UVMQTT_ETOPICALIAS;
    *topic = *slot;
    return 0;
  }
  uint8_t *copy = uvmqtt__malloc(topic->len);
  if (copy == NULL) return UVMQTT_ENOMEM;
  memcpy(copy, topic->data, topic->len);
  uvmqtt__free((void *)slot->data);
  slot->data = copy;
  slot->len = topic->len;
  return 0;
}

static int on_publish(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  if (s->state != UVMQTT__S_ONLINE) return UVMQTT_EUNEXPECTED;
  uvmqtt_bytes_t topic;
  int err = resolve_alias(s, p, &topic);
  if (err) return err;
  uint8_t qos = p->u.publish.qos;
  if (qos == 2) {
    if (rx_qos2_find(s, p->packet_id) >= 0) /* a duplicate: acknowledge only */
      return out_ack(s, UVMQTT_PUBREC, p->packet_id, 0, now);
    if (s->rx_qos2_count >= s->our_receive_max) return UVMQTT_ERECVMAX;
    err = rx_qos2_add(s, p->packet_id);
    if (err) return err;
  }
  if (s->ev->message && s->ev->message(s->owner, p, topic)) return 1;
  if (qos == 1) return out_ack(s, UVMQTT_PUBACK, p->packet_id, 0, now);
  if (qos == 2) return out_ack(s, UVMQTT_PUBREC, p->packet_id, 0, now);
  return 0;
}

static int on_pubrel(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  int i = rx_qos2_find(s, p->packet_id);
  if (i < 0) return out_ack(s, UVMQTT_PUBCOMP, p->packet_id, 0x92, now);
  s->rx_qos2[i] = s->rx_qos2[--s->rx_qos2_count];
  return out_ack(s, UVMQTT_PUBCOMP, p->packet_id, 0, now);
}

static int on_suback(uvmqtt__session_t *s, const uvmqtt_packet_t *p) {
  uint8_t want = p->type == UVMQTT_SUBACK ? UVMQTT_SUBSCRIBE : UVMQTT_UNSUBSCRIBE;
  for (uvmqtt__req_t **pp = &s->reqs; *pp; pp = &(*pp)->next) {
    uvmqtt__req_t *r = *pp;
    if (r->id != p->packet_id || r->type != want) continue;
    *pp = r->next;
    int stop = s->ev->request_done ? s->ev->request_done(s->owner, r, 0, p) : 0;
    uvmqtt__free(r);
    return stop ? 1 : 0;
  }
  return 0; /* an ack for nothing pending is ignored */
}

static int handle_packet(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  s->last_recv = now;
  s->ping_outstanding = 0; /* any packet proves the broker alive */
  if (s->state == UVMQTT__S_CONNECTING && p->type != UVMQTT_CONNACK &&
      !(p->type == UVMQTT_AUTH || p->type == UVMQTT_DISCONNECT))
    return UVMQTT_EUNEXPECTED;
  switch (p->type) {
  case UVMQTT_CONNACK: return on_connack(s, p, now);
  case UVMQTT_PUBLISH: return on_publish(s, p, now);
  case UVMQTT_PUBACK:
  case UVMQTT_PUBREC:
  case UVMQTT_PUBCOMP: return on_ack(s, p, now);
  case UVMQTT_PUBREL: return on_pubrel(s, p, now);
  case UVMQTT_SUBACK:
  case UVMQTT_UNSUBACK: return on_suback(s, p);
  case UVMQTT_PINGRESP: return 0;
  case UVMQTT_DISCONNECT:
    if (s->ev->disconnect && s->ev->disconnect(s->owner, p)) return 1;
    return UVMQTT_EDISCONNECTED;
  /* The client never sends an Authentication Method, so the broker must
   * not start an AUTH exchange [MQTT-4.12.0-6]: a protocol error. */
  case UVMQTT_AUTH: return UVMQTT_EPROTOCOL;
  default: return UVMQTT_EUNEXPECTED; /* CONNECT, SUBSCRIBE... sent to a client */
  }
}

int uvmqtt__session_recv(uvmqtt__session_t *s, const uint8_t *data, size_t len, uint64_t now) {
  size_t off = 0;
  while (off < len) {
    uvmqtt_packet_t pkt;
    int got = 0;
    ssize_t n = uvmqtt_decode(&s->dec, data + off, len - off, &pkt, &got);
    int err = n < 0 ? (int)n : 0;
    if (err == 0 && got) err = handle_packet(s, &pkt, now);
    if (err == 1) return 0; /* the owner is closing: stop quietly */
    if (err) {
      /* A v5 client tells the broker why before closing (best effort). */
      if (s->version == UVMQTT_V5 && s->state == UVMQTT__S_ONLINE && err != UVMQTT_EDISCONNECTED &&
          err != UVMQTT_EREFUSED) {
        uvmqtt_packet_t d;
        memset(&d, 0, sizeof d);
        d.type = UVMQTT_DISCONNECT;
        d.reason = (uint8_t)uvmqtt_err_reason(err);
        (void)out_packet(s, &d, now);
      }
      return err;
    }
    off += (size_t)n;
  }
  return 0;
}

/* ---- Connection loss and time ----------------------------------------------------------- */

/* Applies the delivery policy of m at a connection loss: 1 keeps it. */
static int keep_at_loss(uvmqtt__session_t *s, uvmqtt__msg_t *m, int status, uint64_t now) {
  switch (m->policy) {
  case UVMQTT_DELIVERY_DROP: return 0;
  /* Past its deadline a message is stale: one that was sent is not resent
   * after the reconnect, one that never was expires. */
  case UVMQTT_DELIVERY_DEADLINE: return m->deadline == 0 || now < m->deadline;
  case UVMQTT_DELIVERY_CUSTOM: {
    if (s->decide == NULL) return 1;
    uvmqtt_pending_info_t info;
    info.topic.data = m->data + m->topic_off;
    info.topic.len = m->topic_len;
    /* The payload's place is not kept per message; decoding our own packet
     * finds it without allocating, and only at a loss. */
    uvmqtt_packet_t p;
    info.payload_len = uvmqtt_decode_packet(m->data, m->len, s->version, &p) == 0
                           ? p.u.publish.payload.len
                           : m->len;
    info.qos = m->qos;
    info.sent = m->sent;
    info.age_ms = now - m->created;
    info.arg = m->arg;
    return s->decide(s->decide_state, &info, status) != 0;
  }
  default: return 1;
  }
}

static void apply_loss_policy(uvmqtt__session_t *s, uvmqtt__msg_list_t *l, int is_window,
                              int status, uint64_t now) {
  uvmqtt__msg_list_t dropped = {NULL, NULL};
  uvmqtt__msg_t *prev = NULL, *m = l->head;
  while (m) {
    uvmqtt__msg_t *next = m->next;
    if (!keep_at_loss(s, m, status, now)) {
      list_unlink(l, prev, m);
      if (is_window) s->inflight--;
      list_push(&dropped, m);
    } else {
      prev = m;
    }
    m = next;
  }
  while ((m = list_pop(&dropped)) != NULL)
    msg_finish(s, m, expirable(m) && m->deadline <= now ? UVMQTT_EEXPIRED : status, 0);
}

void uvmqtt__session_lost(uvmqtt__session_t *s, int status, uint64_t now) {
  uvmqtt__msg_t *m;
  /* Output that never reached the socket: QoS 0 messages in it are lost
   * with the connection (at most once). */
  while ((m = list_pop(&s->out.msgs)) != NULL)
    msg_finish(s, m, status, 0);
  s->out.len = 0;
  s->state = UVMQTT__S_OFFLINE;
  s->ping_outstanding = 0;
  uvmqtt_decoder_reset(&s->dec);
  apply_loss_policy(s, &s->window, 1, status, now);
  apply_loss_policy(s, &s->queue, 0, status, now);
  recompute_expiry(s);
}

int uvmqtt__session_tick(uvmqtt__session_t *s, uint64_t now) {
  if (s->next_expiry && now >= s->next_expiry) {
    /* Unlink first, report after: a callback may publish, which changes the
     * queue under a running walk. */
    uvmqtt__msg_list_t expired = {NULL, NULL};
    uvmqtt__msg_t *prev = NULL, *m = s->queue.head;
    while (m) {
      uvmqtt__msg_t *next = m->next;
      if (expirable(m) && m->deadline <= now) {
        list_unlink(&s->queue, prev, m);
        list_push(&expired, m);
      } else {
        prev = m;
      }
      m = next;
    }
    recompute_expiry(s);
    while ((m = list_pop(&expired)) != NULL)
      msg_finish(s, m, UVMQTT_EEXPIRED, 0);
  }
  if (s->state == UVMQTT__S_OFFLINE || s->keepalive_s == 0) return 0;
  uint64_t ka = (uint64_t)s->keepalive_s * 1000u;
  if (s->ping_outstanding) {
    if (now >= s->ping_sent + ka / 2) return UVMQTT_EKEEPALIVE;
    return 0;
  }
  if (s->state == UVMQTT__S_ONLINE) {
    uint64_t quiet = s->last_send < s->last_recv ? s->last_send : s->last_recv;
    if (now >= quiet + ka) {
      static const uint8_t pingreq[2] = {UVMQTT_PINGREQ << 4, 0};
      if (out_append(s, pingreq, sizeof pingreq, now) == 0) {
        s->ping_outstanding = 1;
        s->ping_sent = now;
      }
    }
  }
  return 0;
}

uint64_t uvmqtt__session_next_deadline(const uvmqtt__session_t *s) {
  uint64_t next = s->next_expiry;
  if (s->state == UVMQTT__S_ONLINE && s->keepalive_s) {
    uint64_t ka = (uint64_t)s->keepalive_s * 1000u;
    uint64_t t;
    if (s->ping_outstanding) {
      t = s->ping_sent + ka / 2;
    } else {
      uint64_t quiet = s->last_send < s->last_recv ? s->last_send : s->last_recv;
      t = quiet + ka;
    }
    if (next == 0 || t < next) next = t;
  }
  return next;
}

/* ---- Restore from a store ------------------------------------------------------------ */

typedef struct {
  uvmqtt__session_t *s;
  uint64_t now;
  int err;
} restore_ctx_t;

static void restore_one(void *arg, const uvmqtt_store_record_t *rec) {
  restore_ctx_t *ctx = arg;
  uvmqtt__session_t *s = ctx->s;
  if (ctx->err) return;
  /* Only well-formed PUBLISH packets of our version come back. */
  uvmqtt_packet_t p;
  if (rec->len < 2 || (rec->packet[0] >> 4) != UVMQTT_PUBLISH ||
      uvmqtt_decode_packet(rec->packet, rec->len, s->version, &p) != 0) {
    ctx->err = UVMQTT_EMALFORMED;
    return;
  }
  uvmqtt__msg_t *m = uvmqtt__malloc(sizeof *m + rec->len);
  if (m == NULL) {
    ctx->err = UVMQTT_ENOMEM;
    return;
  }
  memset(m, 0, sizeof *m);
  memcpy(m->data, rec->packet, rec->len);
  uint32_t fixed = 1;
  while (m->data[fixed] & 0x80)
    fixed++;
  fixed++;
  m->seq = rec->seq;
  m->created = ctx->now;
  if (rec->deadline_unix_ms) {
    int64_t local = (int64_t)rec->deadline_unix_ms - s->wall_offset_ms;
    m->deadline = local > 0 ? (uint64_t)local : 1;
  }
  m->len = rec->len;
  m->topic_off = fixed + 2;
  m->topic_len = (uint16_t)p.u.publish.topic.len;
  m->qos = p.u.publish.qos;
  m->id_off = m->qos ? fixed + 2 + m->topic_len : 0;
  m->policy = rec->policy ? rec->policy : UVMQTT_DELIVERY_UNTIL_DELIVERED;
  m->restored = 1;
  if (s->next_seq <= rec->seq) s->next_seq = rec->seq + 1;
  s->queued++;
  s->queued_bytes += m->len;
  if (m->qos > 0 && rec->phase != UVMQTT_STORE_QUEUED && rec->packet_id != 0) {
    m->id = rec->packet_id;
    m->data[0] |= 0x08; /* it may have gone out under this id */
    m->data[m->id_off] = (uint8_t)(m->id >> 8);
    m->data[m->id_off + 1] = (uint8_t)m->id;
    m->sent = 1;
    m->serial = s->ids_issued++;
    m->state = rec->phase == UVMQTT_STORE_PUBREC ? UVMQTT__MSG_WAIT_COMP : UVMQTT__MSG_WAIT_ACK;
    s->inflight++;
    list_push(&s->window, m);
    /* New ids start after the restored ones, so they cannot collide. */
    if (m->id >= s->next_id) s->next_id = (uint16_t)(m->id + 1); /* 0 is skipped */
  } else {
    m->state = UVMQTT__MSG_QUEUED;
    list_push(&s->queue, m);
  }
}

int uvmqtt__session_restore(uvmqtt__session_t *s, uint64_t now) {
  if (s->store == NULL || s->store->load == NULL) return 0;
  restore_ctx_t ctx = {s, now, 0};
  int err = s->store->load(s->store->state, restore_one, &ctx);
  if (err == 0) err = ctx.err;
  recompute_expiry(s);
  return err;
}

/* ---- Output hand-off ------------------------------------------------------------------------ */

int uvmqtt__session_take_output(uvmqtt__session_t *s, uvmqtt__output_t *out) {
  if (s->out.len == 0) return 0;
  *out = s->out;
  memset(&s->out, 0, sizeof s->out);
  return 1;
}

void uvmqtt__session_written(uvmqtt__session_t *s, uvmqtt__output_t *out, int status) {
  uvmqtt__msg_t *m;
  while ((m = list_pop(&out->msgs)) != NULL)
    msg_finish(s, m, status, 0);
  /* While busy, keep the buffer for the next output rather than allocating
   * again; an idle connection keeps none. */
  int busy = s->queue.head != NULL || s->window.head != NULL;
  if (busy && s->out.buf == NULL && out->cap <= UVMQTT__OUT_HIGH_WATER * 2) {
    s->out.buf = out->buf;
    s->out.cap = out->cap;
  } else {
    uvmqtt__free(out->buf);
  }
  memset(out, 0, sizeof *out);
}
