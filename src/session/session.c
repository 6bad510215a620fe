/* The sans-I/O MQTT session; see session.h for the model.
 *
 * Every outgoing byte passes one gate (gate(), gate_publish()): the phase
 * decides which packet types may go out at all, and the limits of the
 * current connection's CONNACK (Receive Maximum, Maximum Packet Size,
 * Maximum QoS, Retain Available, Topic Alias Maximum) decide for each
 * PUBLISH whether it goes now, later, or never (it then completes with a
 * named error instead of looping through reconnects). */
#include "session/session.h"

#include <stddef.h>
#include <string.h>

#include "base/alloc.h"
#include "codec/codec_internal.h"
#include "codec/utf8.h"

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

/* ---- The active block ------------------------------------------------------ */

/* Every path that puts work into the session (a byte of output, a message,
 * a request, a packet id, an incoming QoS 2 id, an alias) calls this first,
 * so that a failure is UVMQTT_ENOMEM before anything changed. */
static int act_need(uvmqtt__session_t *s) {
  if (s->act) return 0;
  s->act = uvmqtt__calloc(1, sizeof *s->act);
  return s->act ? 0 : UVMQTT_ENOMEM;
}

/* Nothing in the block is worth keeping. Messages are counted in `queued`
 * from publish to completion, wherever they are (a list, the output, a
 * write in progress, a local list being completed), so a block is never
 * freed under a message. */
static int act_idle(const uvmqtt__session_active_t *a) {
  return a->queued == 0 && a->out.len == 0 && a->out.npubs == 0 && a->queue.head == NULL &&
         a->resend.head == NULL && a->window.head == NULL && a->reqs == NULL && a->ids_used == 0 &&
         a->rx_qos2_count == 0 && a->aliases == NULL && a->alias_out == NULL &&
         a->store_waits == NULL && a->store_failed == NULL;
}

static void act_free(uvmqtt__session_t *s) {
  uvmqtt__session_active_t *a = s->act;
  uvmqtt__free(a->out.buf);
  uvmqtt__free(a->out.pubs);
  uvmqtt__free(a->rx_qos2);
  uvmqtt__free(a->ids);
  uvmqtt__free(a);
  s->act = NULL;
}

/* Entry points bracket their work with enter()/leave(): the owner's
 * callbacks may call in again, and only the outermost call may free the
 * block, once no caller is walking its lists. */
static void enter(uvmqtt__session_t *s) {
  s->depth++;
}

static void leave(uvmqtt__session_t *s) {
  if (--s->depth == 0 && s->act && act_idle(s->act)) act_free(s);
}

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

/* Inserts m by publish order. Lists are nearly always appended to in order,
 * so the walk is short where it matters. */
static void list_insert_by_seq(uvmqtt__msg_list_t *l, uvmqtt__msg_t *m) {
  if (l->tail == NULL || l->tail->seq < m->seq) {
    list_push(l, m);
    return;
  }
  uvmqtt__msg_t *prev = NULL, *at = l->head;
  while (at && at->seq < m->seq) {
    prev = at;
    at = at->next;
  }
  m->next = at;
  if (prev)
    prev->next = m;
  else
    l->head = m;
}

/* Moves every message of `from` into `to`, keeping publish order. */
static void list_merge_by_seq(uvmqtt__msg_list_t *to, uvmqtt__msg_list_t *from) {
  uvmqtt__msg_t *m;
  while ((m = list_pop(from)) != NULL)
    list_insert_by_seq(to, m);
}

/* ---- Packet ids ------------------------------------------------------------ */

/* Exact tracking: one bit per id, allocated while any id is in use, so an
 * idle client holds none and an id is never issued twice whatever the order
 * of acks, restores and reconnects. */
#define ID_WORDS (65536u / 64u)

int uvmqtt__session_id_in_use(const uvmqtt__session_t *s, uint16_t id) {
  return s->act && s->act->ids != NULL && (s->act->ids[id >> 6] >> (id & 63) & 1u);
}

static int id_take(uvmqtt__session_t *s, uint16_t id) {
  int err = act_need(s);
  if (err) return err;
  if (s->act->ids == NULL) {
    s->act->ids = uvmqtt__calloc(ID_WORDS, sizeof *s->act->ids);
    if (s->act->ids == NULL) return UVMQTT_ENOMEM;
  }
  s->act->ids[id >> 6] |= (uint64_t)1 << (id & 63);
  s->act->ids_used++;
  return 0;
}

static void id_release(uvmqtt__session_t *s, uint16_t id) {
  if (id == 0 || !uvmqtt__session_id_in_use(s, id)) return;
  s->act->ids[id >> 6] &= ~((uint64_t)1 << (id & 63));
  if (--s->act->ids_used == 0) {
    uvmqtt__free(s->act->ids);
    s->act->ids = NULL;
  }
}

/* The next free id after the last one issued. Returns the id, 0 when all
 * 65535 are in use, or UVMQTT_ENOMEM. */
static int next_packet_id(uvmqtt__session_t *s) {
  if (s->act && s->act->ids_used >= 65535u) return 0;
  for (uint32_t tries = 0; tries < 65536u; tries++) {
    uint16_t id = s->next_id++;
    if (s->next_id == 0) s->next_id = 1;
    if (id == 0 || uvmqtt__session_id_in_use(s, id)) continue;
    int err = id_take(s, id);
    return err ? err : id;
  }
  return 0;
}

static void msg_set_id(uvmqtt__msg_t *m, uint16_t id) {
  m->id = id;
  if (m->id_off) {
    m->data[m->id_off] = (uint8_t)(id >> 8);
    m->data[m->id_off + 1] = (uint8_t)id;
  }
}

/* ---- Store hooks ---------------------------------------------------------- */

static void store_update(uvmqtt__session_t *s, const uvmqtt__msg_t *m, uint8_t phase) {
  /* An update the store cannot make leaves the log one phase behind: after a
   * crash the message is resent (at least once), never lost. */
  if (s->store) (void)s->store->update(s->store->state, m->seq, phase, m->id, NULL, NULL);
}

static void store_wait_link(uvmqtt__session_t *s, uvmqtt__store_wait_t *w) {
  w->prev = NULL;
  w->next = s->act->store_waits;
  if (w->next) w->next->prev = w;
  s->act->store_waits = w;
}

static void store_wait_unlink(uvmqtt__session_t *s, uvmqtt__store_wait_t *w) {
  if (w->prev)
    w->prev->next = w->next;
  else if (s && s->act->store_waits == w)
    s->act->store_waits = w->next;
  if (w->next) w->next->prev = w->prev;
  w->next = w->prev = NULL;
}

static void on_store_done(void *arg, int status) {
  uvmqtt__store_wait_t *w = arg;
  uvmqtt__session_t *s = w->s;
  if (s) {
    enter(s);
    store_wait_unlink(s, w);
    if (s->ev->stored) s->ev->stored(s->owner, w->arg, status);
  }
  uvmqtt__free(w);
  if (s) leave(s);
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
    w->next = s->act->store_failed;
    s->act->store_failed = w;
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

static void phase_stored(uvmqtt__session_t *s, uvmqtt__msg_t *m);

/* The store has the phase change: the packet it held back may go out. A
 * store error changes nothing: the packet goes all the same. */
static void on_phase_stored(void *arg, int status) {
  (void)status;
  uvmqtt__store_wait_t *w = arg;
  uvmqtt__session_t *s = w->s;
  uvmqtt__msg_t *m = w->msg;
  if (s == NULL) {
    uvmqtt__free(w);
    return;
  }
  enter(s);
  store_wait_unlink(s, w);
  uvmqtt__free(w);
  if (m) {
    m->wait = NULL;
    phase_stored(s, m);
  }
  leave(s);
}

/* The message is gone: a confirmation still due finds nothing to send. */
static void store_wait_forget(uvmqtt__msg_t *m) {
  if (m->wait) m->wait->msg = NULL;
  m->wait = NULL;
}

static int session_report_store_failures(uvmqtt__session_t *s) {
  int any = 0;
  while (s->act && s->act->store_failed) {
    uvmqtt__store_wait_t *w = s->act->store_failed;
    s->act->store_failed = w->next;
    if (s->ev->stored) s->ev->stored(s->owner, w->arg, w->status);
    uvmqtt__free(w);
    any = 1;
  }
  return any;
}

static void store_detach(uvmqtt__session_t *s) {
  if (s->act == NULL) return;
  /* Appends still in progress finish after the session is gone. */
  for (uvmqtt__store_wait_t *w = s->act->store_waits; w; w = w->next)
    w->s = NULL;
  s->act->store_waits = NULL;
  while (s->act->store_failed) {
    uvmqtt__store_wait_t *w = s->act->store_failed;
    s->act->store_failed = w->next;
    uvmqtt__free(w);
  }
}

/* ---- The gate and the output ------------------------------------------------ */

/* May a packet of `type` and `len` bytes go out now? 0: yes; 1: not in this
 * phase; UVMQTT_EPKTTOOBIG: never on this connection. */
static int gate(const uvmqtt__session_t *s, uint8_t type, size_t len) {
  switch (s->state) {
  case UVMQTT__S_CONNECTING:
    if (type != UVMQTT_CONNECT && type != UVMQTT_AUTH) return 1;
    break;
  case UVMQTT__S_ONLINE: break;
  case UVMQTT__S_DRAINING:
    /* A drain ends the connection: no new exchange starts, authentication
     * included. */
    if (type == UVMQTT_PUBLISH || type == UVMQTT_SUBSCRIBE || type == UVMQTT_UNSUBSCRIBE ||
        type == UVMQTT_AUTH)
      return 1;
    break;
  default: return 1; /* OFFLINE, TERMINATING */
  }
  /* [MQTT-3.1.2-24]: nothing larger than the broker's Maximum Packet Size. */
  if (s->broker_max_packet && len > s->broker_max_packet) return UVMQTT_EPKTTOOBIG;
  return 0;
}

/* Past its deadline a message is stale: it never goes out again. */
static int past_deadline(const uvmqtt__msg_t *m, uint64_t now) {
  return m->policy == UVMQTT_DELIVERY_DEADLINE && m->deadline != 0 && now >= m->deadline;
}

/* The gate for a PUBLISH: the phase and size, then this connection's
 * CONNACK limits, then (when `slot`) a free unit of the Receive Maximum.
 * 0: send it now; 1: not now; < 0: never on this connection, complete it
 * with this error. */
static int gate_publish(const uvmqtt__session_t *s, const uvmqtt__msg_t *m, int slot,
                        uint64_t now) {
  int g = gate(s, UVMQTT_PUBLISH, m->len);
  if (g) return g;
  if (past_deadline(m, now)) return UVMQTT_EEXPIRED;
  if (m->qos > s->broker_max_qos) return UVMQTT_EQOSNOTSUP;
  if (m->retain && !s->broker_retain) return UVMQTT_ERETAINNOTSUP;
  /* [MQTT-3.3.2-9]: an alias within this connection's Topic Alias Maximum;
   * one without a topic only on the connection that set it up. */
  if (m->alias && (m->alias > s->broker_alias_max || (m->topic_len == 0 && m->conn != s->conn)))
    return UVMQTT_ETOPICALIAS;
  if (slot && m->qos > 0 &&
      (s->act->inflight >= s->broker_receive_max || s->act->inflight >= s->max_inflight))
    return 1;
  return 0;
}

/* Room for one more QoS 0 PUBLISH record in the output. */
static int out_pubs_reserve(uvmqtt__session_t *s) {
  int err = act_need(s);
  if (err) return err;
  uvmqtt__output_t *o = &s->act->out;
  if (o->npubs < o->pubs_cap) return 0;
  uint32_t cap = o->pubs_cap ? o->pubs_cap * 2 : (s->out_pubs_hint > 16 ? s->out_pubs_hint : 16u);
  uvmqtt__out_pub_t *p = uvmqtt__realloc(o->pubs, (size_t)cap * sizeof *p);
  if (p == NULL) return UVMQTT_ENOMEM;
  o->pubs = p;
  o->pubs_cap = cap;
  return 0;
}

/* A new output starts at the size of the last one written, so that a steady
 * stream of messages costs one allocation per write, not a series of
 * reallocations; an idle connection keeps only that number. */
static int out_reserve(uvmqtt__session_t *s, size_t extra) {
  int err = act_need(s);
  if (err) return err;
  uvmqtt__output_t *o = &s->act->out;
  if (o->cap - o->len >= extra) return 0;
  size_t hint = (size_t)s->out_hint * UVMQTT__OUT_HINT_UNIT;
  size_t cap = o->cap ? o->cap : (hint > 256 ? hint : 256);
  while (cap - o->len < extra)
    cap *= 2;
  uint8_t *buf = uvmqtt__realloc(o->buf, cap);
  if (buf == NULL) return UVMQTT_ENOMEM;
  o->buf = buf;
  o->cap = cap;
  return 0;
}

/* Appends bytes the caller has passed through the gate. */
static int out_append(uvmqtt__session_t *s, const uint8_t *bytes, size_t len, uint64_t now) {
  int err = out_reserve(s, len);
  if (err) return err;
  memcpy(s->act->out.buf + s->act->out.len, bytes, len);
  s->act->out.len += len;
  uvmqtt__session_set_time(s, UVMQTT__T_SEND, now);
  return 0;
}

/* Encodes a packet through the gate. Returns 0 (written), 1 (the gate is
 * closed: nothing written) or a negative error. */
static int out_packet(uvmqtt__session_t *s, const uvmqtt_packet_t *pkt, uint64_t now) {
  ssize_t size = uvmqtt_encode_size(pkt, s->version);
  if (size < 0) return (int)size;
  int g = gate(s, pkt->type, (size_t)size);
  if (g) return g;
  int err = out_reserve(s, (size_t)size);
  if (err) return err;
  ssize_t n = uvmqtt_encode(pkt, s->version, s->act->out.buf + s->act->out.len,
                            s->act->out.cap - s->act->out.len);
  if (n < 0) return (int)n;
  s->act->out.len += (size_t)n;
  uvmqtt__session_set_time(s, UVMQTT__T_SEND, now);
  return 0;
}

/* A two-byte-id ack (PUBACK, PUBREC, PUBREL, PUBCOMP) in its shortest form,
 * through the gate: 0, 1 (gate closed) or a negative error. */
static int out_ack(uvmqtt__session_t *s, uint8_t type, uint16_t id, uint8_t reason, uint64_t now) {
  uint8_t b[5] = {(uint8_t)((type << 4) | (type == UVMQTT_PUBREL ? 2 : 0)), 2, (uint8_t)(id >> 8),
                  (uint8_t)id, reason};
  size_t len = 4;
  if (reason != 0 && s->version == UVMQTT_V5) {
    b[1] = 3;
    len = 5;
  }
  int g = gate(s, type, len);
  return g ? g : out_append(s, b, len, now);
}

/* ---- Automatic outgoing topic aliases ----------------------------------------- */

static void alias_out_free(uvmqtt__session_t *s) {
  if (s->act == NULL || s->act->alias_out == NULL) return;
  for (uint32_t i = 0; i < s->alias_out_max; i++)
    uvmqtt__free(s->act->alias_out[i].topic);
  uvmqtt__free(s->act->alias_out);
  s->act->alias_out = NULL;
}

/* The alias for a topic on this connection: *bound is 1 when the broker
 * knows it already (the PUBLISH may leave the topic out), 0 when the alias
 * is to be set up (or taken over from the least recently used topic) by
 * this PUBLISH. Returns 0 (no alias: automatic aliases are off, or no
 * memory) or the alias. The table changes only in alias_out_commit(), once
 * the PUBLISH is in the output. */
static uint16_t alias_out_find(uvmqtt__session_t *s, const uint8_t *topic, uint16_t len,
                               int *bound) {
  *bound = 0;
  if (s->alias_out_max == 0 || len == 0) return 0;
  if (s->act->alias_out == NULL) {
    s->act->alias_out = uvmqtt__calloc(s->alias_out_max, sizeof *s->act->alias_out);
    if (s->act->alias_out == NULL) return 0;
  }
  uint32_t victim = 0;
  for (uint32_t i = 0; i < s->alias_out_max; i++) {
    uvmqtt__alias_out_t *a = &s->act->alias_out[i];
    if (a->topic && a->len == len && memcmp(a->topic, topic, len) == 0) {
      *bound = 1;
      return (uint16_t)(i + 1);
    }
    /* A free slot first (used 0), else the least recently used. */
    if (a->topic == NULL
            ? s->act->alias_out[victim].topic != NULL
            : (s->act->alias_out[victim].topic && a->used < s->act->alias_out[victim].used))
      victim = i;
  }
  return (uint16_t)(victim + 1);
}

/* Records that a PUBLISH carrying `alias` (and, unless bound, its topic)
 * went into the output. Returns 0, or UVMQTT_ENOMEM (nothing changed). */
static int alias_out_commit(uvmqtt__session_t *s, uint16_t alias, const uint8_t *topic,
                            uint16_t len, int bound) {
  uvmqtt__alias_out_t *a = &s->act->alias_out[alias - 1];
  if (!bound) {
    uint8_t *copy = a->topic && a->len >= len ? a->topic : uvmqtt__malloc(len);
    if (copy == NULL) return UVMQTT_ENOMEM;
    if (copy != a->topic) uvmqtt__free(a->topic);
    memcpy(copy, topic, len);
    a->topic = copy;
    a->len = len;
  }
  a->used = ++s->act->alias_out_clock;
  return 0;
}

/* The fixed header of an encoded packet: the type byte plus the
 * remaining-length varint. */
static uint32_t fixed_header_len(const uint8_t *p) {
  uint32_t n = 1;
  while (p[n] & 0x80)
    n++;
  return n + 1;
}

/* What the encoded PUBLISH of `len` bytes in m->data says of itself: where
 * its topic and packet id sit, its QoS and its retain flag. */
static void msg_set_layout(uvmqtt__msg_t *m, uint32_t len) {
  uint32_t fixed = fixed_header_len(m->data);
  m->len = len;
  m->topic_off = fixed + 2;
  m->topic_len = (uint16_t)((m->data[fixed] << 8) | m->data[fixed + 1]);
  m->qos = (m->data[0] >> 1) & 3;
  m->retain = m->data[0] & 1;
  m->id_off = m->qos ? m->topic_off + m->topic_len : 0;
}

/* Writes m's PUBLISH with a Topic Alias, rebuilt from its stored bytes
 * (which stay as they are: a resend on another connection needs the full
 * topic): the topic is left out when the alias is bound, and the alias
 * property goes first in the property block. Returns 0 when written, 1 when
 * the message goes out plainly instead (no alias, no memory, or a packet the
 * alias would push past the broker's Maximum Packet Size). */
static int out_publish_aliased(uvmqtt__session_t *s, uvmqtt__msg_t *m, uint64_t now) {
  const uint8_t *topic = m->data + m->topic_off;
  int bound;
  uint16_t alias = alias_out_find(s, topic, m->topic_len, &bound);
  if (alias == 0) return 1;
  /* The stored packet: fixed header, topic, packet id, properties, payload. */
  uint32_t props_at = m->topic_off + m->topic_len + (m->qos ? 2u : 0u);
  uint32_t plen = 0, mult = 1, pl_bytes = 0;
  uint8_t b;
  do {
    b = m->data[props_at + pl_bytes++];
    plen += (b & 0x7Fu) * mult;
    mult <<= 7;
  } while (b & 0x80u);
  uint32_t rest_at = props_at + pl_bytes; /* the old properties, then the payload */
  uint32_t rest = m->len - rest_at;
  uint32_t new_plen = plen + 3;
  uint32_t topic_out = bound ? 0u : m->topic_len;
  uint64_t remaining = 2u + (uint64_t)topic_out + (m->qos ? 2u : 0u) +
                       (uint64_t)uvmqtt_varint_size(new_plen) + 3u + rest;
  if (remaining > UVMQTT_MAX_REMAINING_LENGTH) return 1;
  size_t total = 1u + (size_t)uvmqtt_varint_size((uint32_t)remaining) + (size_t)remaining;
  if (s->broker_max_packet && total > s->broker_max_packet) return 1;
  if (out_reserve(s, total) != 0) return 1;
  if (alias_out_commit(s, alias, topic, m->topic_len, bound) != 0) return 1;
  uint8_t *p = s->act->out.buf + s->act->out.len;
  size_t n = 0;
  p[n++] = m->data[0];
  n += uvmqtt__varint_write(p + n, (uint32_t)remaining);
  p[n++] = (uint8_t)(topic_out >> 8);
  p[n++] = (uint8_t)topic_out;
  if (topic_out) memcpy(p + n, topic, topic_out);
  n += topic_out;
  if (m->qos) {
    p[n++] = m->data[m->id_off];
    p[n++] = m->data[m->id_off + 1];
  }
  n += uvmqtt__varint_write(p + n, new_plen);
  p[n++] = UVMQTT_PROP_TOPIC_ALIAS;
  p[n++] = (uint8_t)(alias >> 8);
  p[n++] = (uint8_t)alias;
  memcpy(p + n, m->data + rest_at, rest);
  n += rest;
  s->act->out.len += n;
  uvmqtt__session_set_time(s, UVMQTT__T_SEND, now);
  return 0;
}

/* Writes the PUBLISH of m (already through gate_publish). Its stored bytes
 * are always what the next send must be: once they went out under this
 * packet id, a resend is a DUP. */
static int out_publish(uvmqtt__session_t *s, uvmqtt__msg_t *m, uint64_t now) {
  int err = 0;
  if (s->alias_out_max == 0 || m->alias != 0 || out_publish_aliased(s, m, now) != 0)
    err = out_append(s, m->data, m->len, now);
  if (err) return err;
  m->sent = 1;
  m->conn = s->conn;
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
  s->dec_max = DEFAULT_MAX_PACKET;
}

/* Drops a split packet's state (a new connection, a loss, the end). */
static void dec_drop(uvmqtt__session_t *s) {
  /* A loss reported from a callback inside recv: recv drops it on return. */
  if (s->dec == NULL || s->receiving) return;
  uvmqtt_decoder_reset(s->dec);
  uvmqtt__free(s->dec);
  s->dec = NULL;
}

static void msg_finish(uvmqtt__session_t *s, uvmqtt__msg_t *m, int status, uint8_t reason) {
  store_wait_forget(m);
  store_update(s, m, UVMQTT_STORE_DONE);
  id_release(s, m->id);
  s->act->queued--;
  s->act->queued_bytes -= m->len;
  uvmqtt__done_t d = {m->cb, m->arg, m->id, m->restored};
  uvmqtt__free(m);
  if (s->ev->publish_done) s->ev->publish_done(s->owner, &d, status, reason);
}

/* The message a QoS 0 PUBLISH published straight into the output becomes
 * when the output is lost before the write: its bytes, as queued messages
 * keep them. NULL without memory. */
static uvmqtt__msg_t *out_pub_to_msg(uvmqtt__session_t *s, const uvmqtt__out_pub_t *op,
                                     uint64_t now) {
  uvmqtt__msg_t *m = uvmqtt__malloc(sizeof *m + op->len);
  if (m == NULL) return NULL;
  memset(m, 0, sizeof *m);
  memcpy(m->data, s->act->out.buf + op->off, op->len);
  msg_set_layout(m, op->len);
  m->seq = op->seq;
  m->created = now;
  m->deadline = op->deadline;
  m->cb = op->cb;
  m->arg = op->arg;
  m->conn = s->conn;
  m->policy = op->policy;
  return m;
}

/* Completes a QoS 0 PUBLISH of an output. */
static void out_pub_finish(uvmqtt__session_t *s, const uvmqtt__out_pub_t *op, int status) {
  if (op->msg) {
    msg_finish(s, op->msg, status, 0);
    return;
  }
  s->act->queued--;
  s->act->queued_bytes -= op->len;
  uvmqtt__done_t d = {op->cb, op->arg, 0, 0};
  if (s->ev->publish_done) s->ev->publish_done(s->owner, &d, status, 0);
}

static void aliases_free(uvmqtt__session_t *s) {
  if (s->act == NULL || s->act->aliases == NULL) return;
  for (uint32_t i = 0; i < s->our_alias_max; i++)
    uvmqtt__free((void *)s->act->aliases[i].data);
  uvmqtt__free(s->act->aliases);
  s->act->aliases = NULL;
}

static void request_finish(uvmqtt__session_t *s, uvmqtt__req_t *r, int status,
                           const uvmqtt_packet_t *ack, int *stop) {
  id_release(s, r->id);
  int st = s->ev->request_done ? s->ev->request_done(s->owner, r, status, ack) : 0;
  if (stop) *stop = st;
  uvmqtt__free(r);
}

static void finish_list(uvmqtt__session_t *s, uvmqtt__msg_list_t *l, int status) {
  uvmqtt__msg_t *m;
  while ((m = list_pop(l)) != NULL)
    msg_finish(s, m, status, 0);
}

void uvmqtt__session_free(uvmqtt__session_t *s, int status) {
  enter(s);
  uvmqtt__session_lost(s, status, uvmqtt__session_time(s, UVMQTT__T_RECV));
  /* What the delivery policies kept is still owed to the broker: the store
   * keeps it for the next process. DONE would mean delivered or given up. */
  s->store = NULL;
  dec_drop(s);
  if (s->act == NULL) {
    s->alias_out_max = 0;
    s->depth--;
    return;
  }
  s->act->inflight = 0;
  finish_list(s, &s->act->window, status);
  finish_list(s, &s->act->resend, status);
  finish_list(s, &s->act->queue, status);
  while (s->act->reqs) {
    uvmqtt__req_t *r = s->act->reqs;
    s->act->reqs = r->next;
    request_finish(s, r, status, NULL, NULL);
  }
  uvmqtt__free(s->act->ids);
  s->act->ids = NULL;
  s->act->ids_used = 0;
  uvmqtt__free(s->act->rx_qos2);
  s->act->rx_qos2 = NULL;
  s->act->rx_qos2_count = s->act->rx_qos2_cap = 0;
  aliases_free(s);
  alias_out_free(s);
  s->alias_out_max = 0;
  uvmqtt__free(s->act->out.buf);
  uvmqtt__free(s->act->out.pubs);
  memset(&s->act->out, 0, sizeof s->act->out);
  store_detach(s);
  /* Everything is gone, whatever the counters say (a write the owner never
   * reported back): nothing may outlive the session. A call in progress
   * further out (free from a callback) frees it on its way out. */
  if (--s->depth == 0) act_free(s);
}

/* ---- Connect ---------------------------------------------------------------------- */

static int session_connect(uvmqtt__session_t *s, const uvmqtt_packet_t *connect, uint64_t now) {
  if (connect->type != UVMQTT_CONNECT || connect->u.connect.protocol_level != s->version)
    return UVMQTT_EINVAL;
  dec_drop(s);
  if (s->act) {
    s->act->out.len = 0;
    s->act->out.has_ping = 0;
  }
  s->conn++;
  s->keepalive_s = connect->u.connect.keep_alive;
  s->clean_start = connect->u.connect.clean_start != 0;
  s->our_receive_max = 65535;
  /* Topic aliases belong to one network connection [MQTT-3.3.2-7]. */
  aliases_free(s);
  s->our_alias_max = 0;
  alias_out_free(s);
  s->alias_out_max = 0;
  if (s->version == UVMQTT_V5) {
    const uvmqtt_props_t *p = &connect->props;
    if (UVMQTT_HAS(p, UVMQTT_PROP_RECEIVE_MAXIMUM)) s->our_receive_max = p->receive_maximum;
    if (UVMQTT_HAS(p, UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM)) s->our_alias_max = p->topic_alias_maximum;
  }
  /* Never unbounded: the decoder buffers a split packet at its declared
   * size, so a limit is what keeps five bytes from costing 256 MiB. */
  s->dec_max =
      (s->version == UVMQTT_V5 && UVMQTT_HAS(&connect->props, UVMQTT_PROP_MAXIMUM_PACKET_SIZE))
          ? connect->props.maximum_packet_size
          : s->our_max_packet;
  s->state = UVMQTT__S_CONNECTING;
  s->ping = 0;
  uvmqtt__session_set_time(s, UVMQTT__T_RECV, now);
  uvmqtt__session_set_time(s, UVMQTT__T_WRITTEN, now);
  /* Broker limits are per connection: back to the defaults until CONNACK. */
  s->broker_max_qos = 2;
  s->broker_retain = 1;
  s->broker_receive_max = DEFAULT_WINDOW;
  s->broker_max_packet = 0;
  s->broker_alias_max = 0;
  s->reauth = 0;
  s->auth_method = NULL;
  s->auth_method_len = 0;
  if (s->version == UVMQTT_V5 && UVMQTT_HAS(&connect->props, UVMQTT_PROP_AUTHENTICATION_METHOD)) {
    /* An MQTT string: a longer one fails to encode below. */
    s->auth_method = connect->props.authentication_method.data;
    s->auth_method_len = (uint16_t)connect->props.authentication_method.len;
  }
  return out_packet(s, connect, now);
}

/* The broker kept no session, so it knows none of our packet ids: every
 * message with one goes back to the queue as new (at least once). A QoS 2
 * message past PUBREC is the exception: the broker may have delivered it
 * (or not), so it is never reported delivered without its PUBCOMP; an
 * until-delivered one is published again, the others complete with
 * UVMQTT_ESESSIONLOST (a custom policy decides). */
static int keep_at_session_loss(uvmqtt__session_t *s, uvmqtt__msg_t *m, uint64_t now);

static void requeue_as_new(uvmqtt__session_t *s, uint64_t now) {
  uvmqtt__msg_list_t again = {NULL, NULL}, lost = {NULL, NULL};
  uvmqtt__msg_t *m;
  if (s->act == NULL) return;
  while ((m = list_pop(&s->act->window)) != NULL) {
    s->act->inflight--;
    list_push(
        m->state == UVMQTT__MSG_WAIT_COMP && !keep_at_session_loss(s, m, now) ? &lost : &again, m);
  }
  list_merge_by_seq(&again, &s->act->resend);
  while ((m = list_pop(&again)) != NULL) {
    id_release(s, m->id);
    msg_set_id(m, 0);
    m->state = UVMQTT__MSG_QUEUED;
    m->data[0] &= (uint8_t)~0x08; /* not a duplicate for a broker without the session */
    store_wait_forget(m);
    store_update(s, m, UVMQTT_STORE_QUEUED);
    list_insert_by_seq(&s->act->queue, m);
  }
  finish_list(s, &lost, UVMQTT_ESESSIONLOST);
}

/* With the session present: PUBREL again for what is past PUBREC (the
 * resend list follows through pump, in order, as slots allow). */
static int resend_pubrels(uvmqtt__session_t *s, uint64_t now) {
  if (s->act == NULL) return 0;
  for (uvmqtt__msg_t *m = s->act->window.head; m; m = m->next) {
    if (m->state != UVMQTT__MSG_WAIT_COMP || m->wait) continue;
    int err = out_ack(s, UVMQTT_PUBREL, m->id, 0, now);
    if (err < 0) return err;
  }
  return 0;
}

/* Requests waiting for their ack go again; one the new connection's Maximum
 * Packet Size forbids fails instead of looping. */
static int resend_requests(uvmqtt__session_t *s, uint64_t now) {
  if (s->act == NULL) return 0;
  for (uvmqtt__req_t **pp = &s->act->reqs; *pp;) {
    uvmqtt__req_t *r = *pp;
    int g = gate(s, r->type, r->len);
    if (g < 0) {
      *pp = r->next;
      int stop = 0;
      request_finish(s, r, g, NULL, &stop);
      if (stop) return 1;
      continue;
    }
    if (g == 0) {
      int err = out_append(s, r->data, r->len, now);
      if (err) return err;
    }
    pp = &r->next;
  }
  return 0;
}

static void recompute_expiry(uvmqtt__session_t *s);
static void rx_qos2_clear(uvmqtt__session_t *s);

/* The Authentication Method of an AUTH or CONNACK from the broker: it must
 * be the one the CONNECT named [MQTT-4.12.0-5]; without one in the CONNECT
 * the broker may not start an exchange [MQTT-4.12.0-6]. A successful
 * CONNACK may leave the method out. */
static int check_auth_method(const uvmqtt__session_t *s, const uvmqtt_packet_t *p) {
  int has = (int)UVMQTT_HAS(&p->props, UVMQTT_PROP_AUTHENTICATION_METHOD);
  if (s->auth_method_len == 0)
    return has || UVMQTT_HAS(&p->props, UVMQTT_PROP_AUTHENTICATION_DATA) ? UVMQTT_EPROTOCOL : 0;
  if (!has) return p->type == UVMQTT_AUTH ? UVMQTT_EAUTHMETHOD : 0;
  const uvmqtt_bytes_t *m = &p->props.authentication_method;
  if (m->len != s->auth_method_len || memcmp(m->data, s->auth_method, m->len) != 0)
    return UVMQTT_EAUTHMETHOD;
  return 0;
}

/* Hands an authentication step to the owner's mechanism. */
static int auth_step(uvmqtt__session_t *s, const uvmqtt_packet_t *p) {
  if (s->ev->auth == NULL) return UVMQTT_EAUTH;
  return s->ev->auth(s->owner, p);
}

static int connected(const uvmqtt__session_t *s);

static int on_auth(uvmqtt__session_t *s, const uvmqtt_packet_t *p) {
  if (s->auth_method_len == 0) return UVMQTT_EPROTOCOL;
  int err = check_auth_method(s, p);
  if (err) return err;
  if (s->state == UVMQTT__S_CONNECTING) {
    /* Before CONNACK the broker only continues; success is the CONNACK. */
    if (p->reason != 0x18) return UVMQTT_EPROTOCOL;
    return auth_step(s, p);
  }
  if (!connected(s) || !s->reauth) return UVMQTT_EPROTOCOL;
  if (p->reason == 0x19) return UVMQTT_EPROTOCOL; /* only the client starts one */
  if (p->reason == 0x00) s->reauth = 0;
  return auth_step(s, p);
}

static int session_auth(uvmqtt__session_t *s, uint8_t reason, const uvmqtt_bytes_t *data,
                        uint64_t now) {
  if (s->version != UVMQTT_V5 || s->auth_method_len == 0) return UVMQTT_EINVAL;
  if (reason != 0x18 && reason != 0x19) return UVMQTT_EINVAL;
  if (reason == 0x19) {
    if (s->state != UVMQTT__S_ONLINE) return UVMQTT_ENOTCONN;
    if (s->reauth) return UVMQTT_EBUSY;
  }
  uvmqtt_packet_t a;
  memset(&a, 0, sizeof a);
  a.type = UVMQTT_AUTH;
  a.reason = reason;
  a.props.has = 1ull << UVMQTT_PROP_AUTHENTICATION_METHOD;
  a.props.authentication_method.data = s->auth_method;
  a.props.authentication_method.len = s->auth_method_len;
  if (data && data->len) {
    a.props.has |= 1ull << UVMQTT_PROP_AUTHENTICATION_DATA;
    a.props.authentication_data = *data;
  }
  int err = out_packet(s, &a, now);
  if (err == 1) return UVMQTT_ENOTCONN;
  if (err) return err;
  if (reason == 0x19) s->reauth = 1;
  return 0;
}

static int on_connack(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  if (s->state != UVMQTT__S_CONNECTING) return UVMQTT_EUNEXPECTED;
  if (p->reason != 0) {
    s->state = UVMQTT__S_TERMINATING;
    if (s->ev->connack && s->ev->connack(s->owner, p)) return 1;
    /* A refusal of our credentials during enhanced authentication is the
     * mechanism's failure: named apart, with the reason code beside it. */
    if (s->auth_method_len && (p->reason == 0x86 || p->reason == 0x87 || p->reason == 0x8C))
      return UVMQTT_EAUTH;
    return UVMQTT_EREFUSED;
  }
  if (s->version == UVMQTT_V5) {
    int err = check_auth_method(s, p);
    /* The mechanism checks the broker's last word (a SCRAM server
     * signature) before the connection counts as up. */
    if (err == 0 && s->auth_method_len) err = auth_step(s, p);
    if (err) return err;
  }
  /* A session we asked the broker to discard cannot be present
   * [MQTT-3.2.2-4]; 3.1.1 brokers are held to the same rule. */
  if (p->session_present && s->clean_start) return UVMQTT_EPROTOCOL;
  /* A 3.1 CONNACK does not say whether the broker kept the session. A 3.1
   * broker must keep it when asked (clean session 0), so the client resumes
   * it: PUBREL rather than a second PUBLISH of a QoS 2 message, as with a
   * 3.1.1 broker that says it kept one. */
  int present = p->session_present || (s->version == UVMQTT_V31 && !s->clean_start);
  if (s->version == UVMQTT_V5) {
    const uvmqtt_props_t *pr = &p->props;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_RECEIVE_MAXIMUM)) s->broker_receive_max = pr->receive_maximum;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_MAXIMUM_QOS)) s->broker_max_qos = pr->maximum_qos;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_RETAIN_AVAILABLE)) s->broker_retain = pr->retain_available != 0;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_MAXIMUM_PACKET_SIZE))
      s->broker_max_packet = pr->maximum_packet_size;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM))
      s->broker_alias_max = pr->topic_alias_maximum;
    s->alias_out_max =
        s->alias_out_want < s->broker_alias_max ? s->alias_out_want : s->broker_alias_max;
    if (UVMQTT_HAS(pr, UVMQTT_PROP_SERVER_KEEP_ALIVE)) s->keepalive_s = pr->server_keep_alive;
  }
  s->state = UVMQTT__S_ONLINE;
  int err = 0;
  if (present) {
    err = resend_pubrels(s, now);
  } else {
    /* No session on the broker: our incoming QoS 2 state is void too. */
    rx_qos2_clear(s);
    requeue_as_new(s, now);
    recompute_expiry(s);
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
  if (s->act == NULL) return;
  for (uvmqtt__msg_t *m = s->act->queue.head; m; m = m->next)
    if (expirable(m) && (next == 0 || m->deadline < next)) next = m->deadline;
  s->act->next_expiry = next;
}

/* Puts messages make_room() took back at the head of the queue, in order. */
static void undrop(uvmqtt__session_t *s, uvmqtt__msg_list_t *dropped) {
  if (dropped->head == NULL) return;
  dropped->tail->next = s->act->queue.head;
  s->act->queue.head = dropped->head;
  if (s->act->queue.tail == NULL) s->act->queue.tail = dropped->tail;
  dropped->head = dropped->tail = NULL;
}

/* Takes the oldest unsent messages into `dropped` until one more message of
 * `len` bytes fits. They stay counted until the caller completes them, once
 * the new message is queued: a publish from their callbacks must not take
 * the room they made, or both would be lost. */
static int make_room(uvmqtt__session_t *s, size_t len, uvmqtt__msg_list_t *dropped) {
  uint32_t n = s->act->queued;
  size_t bytes = s->act->queued_bytes;
  while (n + 1 > s->max_queued || bytes + len > s->max_queued_bytes) {
    if (s->overflow != UVMQTT_OVERFLOW_DROP_OLDEST || s->act->queue.head == NULL) {
      undrop(s, dropped);
      return UVMQTT_EQUEUEFULL;
    }
    uvmqtt__msg_t *old = list_pop(&s->act->queue);
    n--;
    bytes -= old->len;
    list_push(dropped, old);
  }
  return 0;
}

static int connected(const uvmqtt__session_t *s) {
  return s->state == UVMQTT__S_ONLINE || s->state == UVMQTT__S_DRAINING;
}

/* A QoS 0 PUBLISH may skip the queue when nothing waits before it, it goes
 * out at once, and all it needs besides its bytes fits an output record:
 * online, below the output's high water, nothing queued or to resend, no
 * store, no properties or aliases, a policy the session applies itself. */
static int direct_ok(const uvmqtt__session_t *s, const uvmqtt__publish_t *p) {
  const uvmqtt__session_active_t *a = s->act;
  /* Field by field: the owner stored them one by one, and a load merged
   * across several of those stores stalls (no store forwarding). */
  uint8_t policy = *(const volatile uint8_t *)&p->policy;
  return *(const volatile uint8_t *)&p->qos == 0 && s->state == UVMQTT__S_ONLINE &&
         (a == NULL || (a->queue.head == NULL && a->resend.head == NULL &&
                        a->out.len < UVMQTT__OUT_HIGH_WATER)) &&
         s->store == NULL && s->alias_out_max == 0 && policy != UVMQTT_DELIVERY_CUSTOM &&
         !(policy == UVMQTT_DELIVERY_DEADLINE && p->deadline_ms == 0); /* stale at once */
}

/* Copies n bytes; up to 64 without a call: most topics and many payloads
 * are short, and a call to memcpy costs more than the copy. */
static inline void copy_short(uint8_t *d, const uint8_t *t, size_t n) {
  if (n > 64) {
    memcpy(d, t, n);
  } else if (n >= 16) {
    /* 16-byte blocks, the last one overlapping the one before. */
    for (size_t i = 0; i + 16 < n; i += 16)
      memcpy(d + i, t + i, 16);
    memcpy(d + n - 16, t + n - 16, 16);
  } else if (n >= 8) {
    memcpy(d, t, 8);
    memcpy(d + n - 8, t + n - 8, 8);
  } else if (n >= 4) {
    memcpy(d, t, 4);
    memcpy(d + n - 4, t + n - 4, 4);
  } else if (n > 0) {
    d[0] = t[0];
    d[n / 2] = t[n / 2];
    d[n - 1] = t[n - 1];
  }
}

/* Encodes a QoS 0 PUBLISH that direct_ok() let through straight into the
 * output: no message is allocated and the bytes are copied once. The queue
 * bounds count it until its write completes, as they count a queued QoS 0
 * message in the output. */
static int publish_direct(uvmqtt__session_t *s, const uint8_t *topic, size_t topic_len,
                          const void *payload, size_t len, const uvmqtt__publish_t *p,
                          uint64_t now) {
  size_t rem = 2 + topic_len + (s->version == UVMQTT_V5 ? 1u : 0u) + len;
  if (rem > UVMQTT_MAX_REMAINING_LENGTH) return UVMQTT_EPKTTOOBIG;
  size_t total = 1u + (size_t)uvmqtt__varint_size((uint32_t)rem) + rem;
  int g = gate(s, UVMQTT_PUBLISH, total); /* online (direct_ok): 0 or too large */
  if (g < 0) return g;
  int err = uvmqtt__topic_check(topic, topic_len);
  if (err) return err;
  uvmqtt__session_active_t *a = s->act;
  if ((a ? a->queued : 0) + 1 > s->max_queued ||
      (a ? a->queued_bytes : 0) + total > s->max_queued_bytes)
    return UVMQTT_EQUEUEFULL;
  if (a == NULL || a->out.cap - a->out.len < total || a->out.npubs == a->out.pubs_cap) {
    if (out_reserve(s, total) != 0 || out_pubs_reserve(s) != 0) return UVMQTT_ENOMEM;
    a = s->act;
  }
  uint8_t *b = a->out.buf + a->out.len;
  b[0] = (uint8_t)((UVMQTT_PUBLISH << 4) | (p->retain ? 1u : 0u));
  size_t n = 1 + uvmqtt__varint_write(b + 1, (uint32_t)rem);
  b[n++] = (uint8_t)(topic_len >> 8);
  b[n++] = (uint8_t)topic_len;
  copy_short(b + n, topic, topic_len);
  n += topic_len;
  if (s->version == UVMQTT_V5) b[n++] = 0; /* no properties */
  copy_short(b + n, payload, len);
  n += len;
  uvmqtt__out_pub_t *op = &a->out.pubs[a->out.npubs++];
  op->msg = NULL;
  op->cb = p->cb;
  op->arg = p->arg;
  op->seq = s->next_seq++;
  op->deadline = p->policy == UVMQTT_DELIVERY_DEADLINE ? now + p->deadline_ms : 0;
  op->off = (uint32_t)a->out.len;
  op->len = (uint32_t)n;
  op->policy = p->policy;
  a->out.len += n;
  a->queued++;
  a->queued_bytes += n;
  uvmqtt__session_set_time(s, UVMQTT__T_SEND, now);
  return 0;
}

static int session_publish(uvmqtt__session_t *s, const char *topic, const void *payload, size_t len,
                           const uvmqtt__publish_t *p, uint64_t now) {
  if (topic == NULL || p == NULL || (payload == NULL && len > 0)) return UVMQTT_EINVAL;
  if (p->qos > 2) return UVMQTT_EBADQOS;
  if (len > UVMQTT_MAX_REMAINING_LENGTH) return UVMQTT_EPKTTOOBIG;
  const uvmqtt_props_t *props = s->version == UVMQTT_V5 ? p->props : NULL;
  uint16_t alias = props && UVMQTT_HAS(props, UVMQTT_PROP_TOPIC_ALIAS) ? props->topic_alias : 0;
  /* [MQTT-3.3.4-6]: only the broker sets Subscription Identifiers. */
  if (props && (UVMQTT_HAS(props, UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER) || props->sub_id_count))
    return UVMQTT_EBADPROP;
  /* The session owns every alias while it picks them itself. */
  if (alias && s->alias_out_want) return UVMQTT_EINVAL;
  size_t topic_len = strlen(topic);
  if (topic_len > 65535) return UVMQTT_EBADTOPIC;
  /* An alias without a topic needs the mapping of the connection it is
   * published on. */
  if (topic_len == 0 && (alias == 0 || !connected(s))) return UVMQTT_EBADTOPIC;
  if (connected(s)) {
    /* The limits of the connection in force; offline, the gate checks each
     * message against the next connection's. */
    if (p->qos > s->broker_max_qos) return UVMQTT_EQOSNOTSUP;
    if (p->retain && !s->broker_retain) return UVMQTT_ERETAINNOTSUP;
    if (alias > s->broker_alias_max) return UVMQTT_ETOPICALIAS;
  }
  /* uvmqtt__session_publish() took every QoS 0 message direct_ok() lets
   * through; this one waits in the queue. */

  /* Cleared as far as the encoder reads it: the header, the PUBLISH, and
   * the properties in v5 only (3.1.1 ignores them; they are most of the
   * struct, and clearing them for every queued message was measurable). */
  uvmqtt_packet_t pkt;
  memset(&pkt, 0, offsetof(uvmqtt_packet_t, props));
  memset(&pkt.u.publish, 0, sizeof pkt.u.publish);
  if (s->version == UVMQTT_V5) {
    if (props)
      pkt.props = *props;
    else
      memset(&pkt.props, 0, sizeof pkt.props);
  }
  pkt.type = UVMQTT_PUBLISH;
  pkt.packet_id = p->qos ? 1 : 0; /* patched when it gets an id */
  pkt.u.publish.topic.data = (const uint8_t *)topic;
  pkt.u.publish.topic.len = (uint32_t)topic_len;
  pkt.u.publish.payload.data = payload;
  pkt.u.publish.payload.len = (uint32_t)len;
  pkt.u.publish.qos = p->qos;
  pkt.u.publish.retain = p->retain;
  ssize_t size = uvmqtt_encode_size(&pkt, s->version);
  if (size < 0) return (int)size;
  if (connected(s) && s->broker_max_packet && (size_t)size > s->broker_max_packet)
    return UVMQTT_EPKTTOOBIG;
  /* The block first: once make_room() took messages out, only their
   * completion may follow. */
  int err = act_need(s);
  if (err) return err;
  uvmqtt__msg_list_t dropped = {NULL, NULL};
  err = make_room(s, (size_t)size, &dropped);
  if (err) return err;

  uvmqtt__msg_t *m = uvmqtt__malloc(sizeof *m + (size_t)size);
  if (m == NULL) {
    undrop(s, &dropped);
    return UVMQTT_ENOMEM;
  }
  ssize_t n = uvmqtt__encode_checked(&pkt, s->version, m->data, (size_t)size);
  if (n < 0) {
    uvmqtt__free(m);
    undrop(s, &dropped);
    return (int)n;
  }
  memset(m, 0, sizeof *m);
  msg_set_layout(m, (uint32_t)size);
  m->seq = s->next_seq++;
  m->created = now;
  m->deadline = (p->policy == UVMQTT_DELIVERY_DEADLINE) ? now + p->deadline_ms : 0;
  m->cb = p->cb;
  m->arg = p->arg;
  m->conn = s->conn;
  m->alias = alias;
  m->policy = p->policy;
  m->state = UVMQTT__MSG_QUEUED;
  if (s->store) {
    err = store_append(s, m);
    if (err) {
      uvmqtt__free(m);
      undrop(s, &dropped);
      return err;
    }
  }
  s->act->queued++;
  s->act->queued_bytes += m->len;
  list_push(&s->act->queue, m);
  if (expirable(m) && (s->act->next_expiry == 0 || m->deadline < s->act->next_expiry))
    s->act->next_expiry = m->deadline;
  finish_list(s, &dropped, UVMQTT_EDROPPED);
  uvmqtt__session_pump(s, now);
  return 0;
}

/* A message the gate refused for good leaves its list and completes. */
static void refuse(uvmqtt__session_t *s, uvmqtt__msg_list_t *l, uvmqtt__msg_t *m, int err) {
  list_unlink(l, NULL, m);
  msg_finish(s, m, err, 0);
}

static void session_pump(uvmqtt__session_t *s, uint64_t now) {
  int expiry_changed = 0;
  if (s->act == NULL) return; /* nothing waits */
  /* Resends first, in their first-send order [MQTT-4.6.0-1]. */
  while (s->act->resend.head && s->act->out.len < UVMQTT__OUT_HIGH_WATER) {
    uvmqtt__msg_t *m = s->act->resend.head;
    int g = gate_publish(s, m, 1, now);
    if (g == 1) break;
    if (g < 0) {
      refuse(s, &s->act->resend, m, g);
      continue;
    }
    if (out_reserve(s, m->len) != 0) break; /* out of memory: retry later */
    list_pop(&s->act->resend);
    (void)out_publish(s, m, now);
    m->state = UVMQTT__MSG_WAIT_ACK;
    s->act->inflight++;
    list_push(&s->act->window, m);
  }
  while (s->act->resend.head == NULL && s->act->queue.head &&
         s->act->out.len < UVMQTT__OUT_HIGH_WATER) {
    uvmqtt__msg_t *m = s->act->queue.head;
    int g = gate_publish(s, m, 1, now);
    if (g == 1) break;
    expiry_changed |= m->deadline != 0;
    if (g < 0) {
      refuse(s, &s->act->queue, m, g);
      continue;
    }
    if (out_reserve(s, m->len) != 0) break; /* out of memory: retry later */
    if (m->qos == 0) {
      if (out_pubs_reserve(s) != 0) break;
      list_pop(&s->act->queue);
      (void)out_publish(s, m, now);
      m->state = UVMQTT__MSG_WRITING;
      m->next = NULL;
      uvmqtt__out_pub_t *op = &s->act->out.pubs[s->act->out.npubs++];
      memset(op, 0, sizeof *op);
      op->msg = m;
      op->len = m->len;
      continue;
    }
    int id = next_packet_id(s);
    if (id <= 0) break; /* every id in use (or no memory): wait for acks */
    list_pop(&s->act->queue);
    msg_set_id(m, (uint16_t)id);
    m->data[0] &= (uint8_t)~0x08; /* a new id: the first send under it */
    s->act->inflight++;
    list_push(&s->act->window, m);
    /* A stored message goes out once the store knows its packet id. */
    if (store_update_then_send(s, m, UVMQTT_STORE_SENT)) {
      m->state = UVMQTT__MSG_STORING;
    } else {
      (void)out_publish(s, m, now);
      m->state = UVMQTT__MSG_WAIT_ACK;
    }
  }
  if (expiry_changed) recompute_expiry(s);
}

static void check_drained(uvmqtt__session_t *s, uint64_t now);

/* The PUBLISHes in flight on the wire (sent, not yet completed) fill this
 * connection's Receive Maximum or our own cap. */
static int window_full(const uvmqtt__session_t *s) {
  uint32_t sent = 0;
  for (const uvmqtt__msg_t *m = s->act->window.head; m; m = m->next)
    if (m->state == UVMQTT__MSG_WAIT_ACK || m->state == UVMQTT__MSG_WAIT_COMP) sent++;
  return sent >= s->broker_receive_max || sent >= s->max_inflight;
}

/* The store confirmed the phase that lets m's next packet go. */
static void phase_stored(uvmqtt__session_t *s, uvmqtt__msg_t *m) {
  /* The session has no clock: the owner's, or else the latest time it was
   * given, which may be long past (a deadline would pass unnoticed). */
  uint64_t now = s->ev->now ? s->ev->now(s->owner)
                 : uvmqtt__session_time(s, UVMQTT__T_SEND) > uvmqtt__session_time(s, UVMQTT__T_RECV)
                     ? uvmqtt__session_time(s, UVMQTT__T_SEND)
                     : uvmqtt__session_time(s, UVMQTT__T_RECV);
  if (m->state == UVMQTT__MSG_WAIT_COMP) {
    if (out_ack(s, UVMQTT_PUBREL, m->id, 0, now) != 0) return; /* resent after the next CONNACK */
  } else if (m->state == UVMQTT__MSG_STORING) {
    int g = gate_publish(s, m, 0, now);
    /* Its slot was counted under the limits of the connection it got its id
     * on; after a reconnect the new CONNACK's Receive Maximum may be full
     * with PUBLISHes already sent. */
    if (g == 0 && window_full(s)) g = 1;
    uvmqtt__msg_t *prev = NULL;
    for (uvmqtt__msg_t *at = s->act->window.head; at != m; at = at->next)
      prev = at;
    if (g < 0) {
      list_unlink(&s->act->window, prev, m);
      s->act->inflight--;
      msg_finish(s, m, g, 0);
    } else if (g == 1 || out_reserve(s, m->len) != 0) {
      /* Not on this connection: it waits with the resends, its id known to
       * the store (and maybe to the broker). */
      list_unlink(&s->act->window, prev, m);
      s->act->inflight--;
      m->state = UVMQTT__MSG_READY;
      list_insert_by_seq(&s->act->resend, m);
      uvmqtt__session_pump(s, now);
    } else {
      (void)out_publish(s, m, now);
      m->state = UVMQTT__MSG_WAIT_ACK;
    }
  } else {
    return;
  }
  check_drained(s, now);
  if (s->ev->wake) s->ev->wake(s->owner);
}

static int session_request(uvmqtt__session_t *s, const uvmqtt_packet_t *pkt, uvmqtt__cb_fn cb,
                           void *arg, uint64_t now) {
  if (pkt == NULL || (pkt->type != UVMQTT_SUBSCRIBE && pkt->type != UVMQTT_UNSUBSCRIBE))
    return UVMQTT_EINVAL;
  uvmqtt_packet_t copy = *pkt;
  copy.packet_id = 1; /* placeholder for sizing and validation */
  ssize_t size = uvmqtt_encode_size(&copy, s->version);
  if (size < 0) return (int)size;
  int g = gate(s, pkt->type, (size_t)size);
  if (g < 0) return g;
  /* Room in the output first: once queued, a request must go out. */
  if (g == 0 && out_reserve(s, (size_t)size) != 0) return UVMQTT_ENOMEM;
  uvmqtt__req_t *r = uvmqtt__malloc(sizeof *r + (size_t)size);
  if (r == NULL) return UVMQTT_ENOMEM;
  memset(r, 0, sizeof *r);
  int id = next_packet_id(s);
  if (id <= 0) {
    uvmqtt__free(r);
    return id == 0 ? UVMQTT_EQUEUEFULL : id;
  }
  r->cb = cb;
  r->arg = arg;
  r->type = pkt->type;
  r->len = (uint32_t)size;
  r->id = (uint16_t)id;
  copy.packet_id = r->id;
  ssize_t n = uvmqtt_encode(&copy, s->version, r->data, (size_t)size);
  if (n < 0) {
    id_release(s, r->id);
    uvmqtt__free(r);
    return (int)n;
  }
  s->last_req_id = r->id;
  uvmqtt__req_t **tail = &s->act->reqs;
  while (*tail)
    tail = &(*tail)->next;
  *tail = r;
  /* Offline or before CONNACK: sent by resend_requests() on connect. */
  if (g == 0) (void)out_append(s, r->data, r->len, now); /* room reserved above */
  return 0;
}

/* ---- Graceful stop ------------------------------------------------------------------- */

/* Nothing in flight in either direction: no PUBLISH sent on this connection
 * waiting for its ack, no incoming QoS 2 waiting for PUBREL. */
static int quiescent(const uvmqtt__session_t *s) {
  if (s->act == NULL) return 1;
  if (s->act->rx_qos2_count) return 0;
  for (const uvmqtt__msg_t *m = s->act->window.head; m; m = m->next)
    if (m->state == UVMQTT__MSG_WAIT_ACK || m->state == UVMQTT__MSG_WAIT_COMP) return 0;
  return 1;
}

static int session_stop_now(uvmqtt__session_t *s, uint64_t now) {
  int err = 0;
  if (connected(s)) {
    uvmqtt_packet_t d;
    memset(&d, 0, sizeof d);
    d.type = UVMQTT_DISCONNECT;
    d.reason = s->version == UVMQTT_V5 ? s->stop_reason : 0;
    err = out_packet(s, &d, now);
  }
  if (s->state != UVMQTT__S_OFFLINE) s->state = UVMQTT__S_TERMINATING;
  return err < 0 ? err : 0;
}

static int session_stop(uvmqtt__session_t *s, uint8_t reason, uint64_t now) {
  if (s->state == UVMQTT__S_DRAINING) return 1;
  if (s->state != UVMQTT__S_ONLINE) return UVMQTT_ENOTCONN;
  s->stop_reason = reason;
  s->state = UVMQTT__S_DRAINING;
  if (!quiescent(s)) return 1;
  int err = uvmqtt__session_stop_now(s, now);
  return err;
}

static void check_drained(uvmqtt__session_t *s, uint64_t now) {
  if (s->state != UVMQTT__S_DRAINING || !quiescent(s)) return;
  (void)uvmqtt__session_stop_now(s, now);
  if (s->ev->wake) s->ev->wake(s->owner);
}

/* ---- Incoming ------------------------------------------------------------------------ */

static uvmqtt__msg_t *window_find(uvmqtt__session_t *s, uint16_t id, uvmqtt__msg_t **prev_out) {
  uvmqtt__msg_t *prev = NULL;
  if (s->act == NULL) return NULL;
  for (uvmqtt__msg_t *m = s->act->window.head; m; prev = m, m = m->next) {
    if (m->id == id) {
      *prev_out = prev;
      return m;
    }
  }
  return NULL;
}

static int window_complete(uvmqtt__session_t *s, uvmqtt__msg_t *prev, uvmqtt__msg_t *m,
                           uint8_t reason, uint64_t now) {
  list_unlink(&s->act->window, prev, m);
  s->act->inflight--;
  msg_finish(s, m, 0, reason);
  uvmqtt__session_pump(s, now);
  check_drained(s, now);
  return 0;
}

static int on_ack(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  uvmqtt__msg_t *prev, *m = window_find(s, p->packet_id, &prev);
  /* An ack for a PUBLISH not sent on this connection is as unexpected as
   * one for an id never used. */
  if (m && m->state == UVMQTT__MSG_STORING) m = NULL;
  int err;
  switch (p->type) {
  case UVMQTT_PUBACK:
    /* An ack for nothing we sent (or of the wrong kind) is ignored. */
    if (m && m->qos == 1) return window_complete(s, prev, m, p->reason, now);
    return 0;
  case UVMQTT_PUBREC:
    if (m && m->qos == 2 && m->state == UVMQTT__MSG_WAIT_ACK) {
      /* A refusal ends the exchange: no PUBREL [MQTT-4.3.3-4]. */
      if (p->reason >= 0x80) return window_complete(s, prev, m, p->reason, now);
      m->state = UVMQTT__MSG_WAIT_COMP;
      /* The PUBREL waits until the store knows of the PUBREC. */
      if (store_update_then_send(s, m, UVMQTT_STORE_PUBREC)) return 0;
      err = out_ack(s, UVMQTT_PUBREL, p->packet_id, 0, now);
      return err < 0 ? err : 0;
    }
    if (m && m->state == UVMQTT__MSG_WAIT_COMP && !m->wait) {
      err = out_ack(s, UVMQTT_PUBREL, p->packet_id, 0, now);
      return err < 0 ? err : 0;
    }
    if (m || p->reason >= 0x80) return 0;
    /* Unknown id: release it so the broker can forget it. */
    err = out_ack(s, UVMQTT_PUBREL, p->packet_id, 0x92, now);
    return err < 0 ? err : 0;
  case UVMQTT_PUBCOMP:
    if (m && m->qos == 2 && m->state == UVMQTT__MSG_WAIT_COMP)
      return window_complete(s, prev, m, p->reason, now);
    return 0;
  default: return UVMQTT_EUNEXPECTED;
  }
}

static int rx_qos2_find(const uvmqtt__session_t *s, uint16_t id) {
  if (s->act == NULL) return -1;
  for (uint32_t i = 0; i < s->act->rx_qos2_count; i++)
    if (s->act->rx_qos2[i] == id) return (int)i;
  return -1;
}

/* With a store, incoming QoS 2 ids outlive the process (see store.h). */
static void rx_qos2_store(uvmqtt__session_t *s, uint16_t id, int waiting) {
  if (s->store && s->store->incoming) (void)s->store->incoming(s->store->state, id, waiting);
}

static int rx_qos2_add(uvmqtt__session_t *s, uint16_t id) {
  int err = act_need(s);
  if (err) return err;
  if (s->act->rx_qos2_count == s->act->rx_qos2_cap) {
    uint32_t cap = s->act->rx_qos2_cap ? s->act->rx_qos2_cap * 2 : 4;
    uint16_t *ids = uvmqtt__realloc(s->act->rx_qos2, cap * sizeof *ids);
    if (ids == NULL) return UVMQTT_ENOMEM;
    s->act->rx_qos2 = ids;
    s->act->rx_qos2_cap = cap;
  }
  s->act->rx_qos2[s->act->rx_qos2_count++] = id;
  return 0;
}

/* The broker kept no session: no PUBREL will come for any id. */
static void rx_qos2_clear(uvmqtt__session_t *s) {
  if (s->act == NULL) return;
  for (uint32_t i = 0; i < s->act->rx_qos2_count; i++)
    rx_qos2_store(s, s->act->rx_qos2[i], 0);
  s->act->rx_qos2_count = 0;
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
  if (act_need(s) != 0) return UVMQTT_ENOMEM;
  if (s->act->aliases == NULL) {
    s->act->aliases = uvmqtt__calloc(s->our_alias_max, sizeof *s->act->aliases);
    if (s->act->aliases == NULL) return UVMQTT_ENOMEM;
  }
  uvmqtt_bytes_t *slot = &s->act->aliases[alias - 1];
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
  if (s->state == UVMQTT__S_DRAINING) return 0; /* the broker sends it again next time */
  if (s->state != UVMQTT__S_ONLINE) return UVMQTT_EUNEXPECTED;
  uvmqtt_bytes_t topic;
  int err = resolve_alias(s, p, &topic);
  if (err) return err;
  uint8_t qos = p->u.publish.qos;
  if (qos == 2) {
    if (rx_qos2_find(s, p->packet_id) >= 0) { /* a duplicate: acknowledge only */
      err = out_ack(s, UVMQTT_PUBREC, p->packet_id, 0, now);
      return err < 0 ? err : 0;
    }
    if ((s->act ? s->act->rx_qos2_count : 0) >= s->our_receive_max) return UVMQTT_ERECVMAX;
    err = rx_qos2_add(s, p->packet_id);
    if (err) return err;
    rx_qos2_store(s, p->packet_id, 1);
  }
  if (s->ev->message && s->ev->message(s->owner, p, topic)) return 1;
  if (qos == 0) return 0;
  err = out_ack(s, qos == 1 ? UVMQTT_PUBACK : UVMQTT_PUBREC, p->packet_id, 0, now);
  return err < 0 ? err : 0;
}

static int on_pubrel(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  int i = rx_qos2_find(s, p->packet_id);
  int err;
  if (i < 0) {
    err = out_ack(s, UVMQTT_PUBCOMP, p->packet_id, 0x92, now);
  } else {
    s->act->rx_qos2[i] = s->act->rx_qos2[--s->act->rx_qos2_count];
    rx_qos2_store(s, p->packet_id, 0);
    err = out_ack(s, UVMQTT_PUBCOMP, p->packet_id, 0, now);
  }
  check_drained(s, now);
  return err < 0 ? err : 0;
}

static int on_suback(uvmqtt__session_t *s, const uvmqtt_packet_t *p) {
  uint8_t want = p->type == UVMQTT_SUBACK ? UVMQTT_SUBSCRIBE : UVMQTT_UNSUBSCRIBE;
  if (s->act == NULL) return 0; /* an ack for nothing pending is ignored */
  for (uvmqtt__req_t **pp = &s->act->reqs; *pp; pp = &(*pp)->next) {
    uvmqtt__req_t *r = *pp;
    if (r->id != p->packet_id || r->type != want) continue;
    *pp = r->next;
    int stop = 0;
    request_finish(s, r, 0, p, &stop);
    return stop ? 1 : 0;
  }
  return 0; /* an ack for nothing pending is ignored */
}

static int handle_packet(uvmqtt__session_t *s, const uvmqtt_packet_t *p, uint64_t now) {
  if (s->ping == 2) s->ping = 0; /* any packet proves the broker alive */
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
  case UVMQTT_AUTH: return on_auth(s, p);
  default: return UVMQTT_EUNEXPECTED; /* CONNECT, SUBSCRIBE... sent to a client */
  }
}

static int recv_packets(uvmqtt__session_t *s, uvmqtt_decoder_t *dec, const uint8_t *data,
                        size_t len, uint64_t now) {
  size_t off = 0;
  while (off < len) {
    uvmqtt_packet_t pkt;
    int got = 0;
    ssize_t n = uvmqtt_decode(dec, data + off, len - off, &pkt, &got);
    int err = n < 0 ? (int)n : 0;
    /* A 3.1.1 broker answers a v5 CONNECT with a 3.1.1 CONNACK (no
     * properties, or its code 0x01 "unacceptable protocol version"), which
     * does not parse as v5: name that cause rather than the parse error. */
    if (n < 0 && s->state == UVMQTT__S_CONNECTING && s->version == UVMQTT_V5 &&
        (dec->header >> 4) == UVMQTT_CONNACK && err != UVMQTT_ETOOLARGE && err != UVMQTT_ENOMEM)
      err = UVMQTT_EV5UNSUPPORTED;
    if (err == 0 && got) err = handle_packet(s, &pkt, now);
    if (err == 1) return 0; /* the owner is closing: stop quietly */
    if (err) {
      /* A v5 client tells the broker why before closing (best effort);
       * nothing goes out after that. */
      if (s->version == UVMQTT_V5 && connected(s) && err != UVMQTT_EDISCONNECTED &&
          err != UVMQTT_EREFUSED) {
        s->stop_reason = (uint8_t)uvmqtt_err_reason(err);
        (void)uvmqtt__session_stop_now(s, now);
      }
      if (s->state != UVMQTT__S_OFFLINE) s->state = UVMQTT__S_TERMINATING;
      return err;
    }
    /* A drain ended, or a callback ended the connection: the rest is not ours. */
    if (s->state == UVMQTT__S_TERMINATING || s->state == UVMQTT__S_OFFLINE) return 0;
    off += (size_t)n;
  }
  return 0;
}

static int session_recv(uvmqtt__session_t *s, const uint8_t *data, size_t len, uint64_t now) {
  if (s->state == UVMQTT__S_TERMINATING || s->state == UVMQTT__S_OFFLINE) return 0;
  if (len)
    uvmqtt__session_set_time(s, UVMQTT__T_RECV,
                             now); /* any byte is a sign of life, also half a packet */
  /* Between packets a decoder on the stack serves; it is kept only if the
   * input ends inside a packet. */
  uvmqtt_decoder_t local, *dec = s->dec;
  if (dec == NULL) {
    uvmqtt_decoder_init(&local, s->version, s->dec_max, &dec_mem);
    dec = &local;
  }
  s->receiving = 1;
  int err = recv_packets(s, dec, data, len, now);
  s->receiving = 0;
  int keep = err == 0 && uvmqtt_decoder_busy(dec) && s->state != UVMQTT__S_TERMINATING &&
             s->state != UVMQTT__S_OFFLINE;
  if (dec == &local) {
    if (keep) {
      s->dec = uvmqtt__malloc(sizeof *s->dec);
      if (s->dec != NULL) {
        *s->dec = local; /* its buffer, if any, moves with it */
        return 0;
      }
      err = UVMQTT_ENOMEM;
    }
    uvmqtt_decoder_reset(&local);
  } else if (!keep) {
    dec_drop(s);
  }
  return err;
}

/* ---- Connection loss and time ----------------------------------------------------------- */

static int ask_custom(uvmqtt__session_t *s, uvmqtt__msg_t *m, int status, uint64_t now) {
  if (s->decide == NULL) return 1;
  uvmqtt_pending_info_t info;
  info.topic.data = m->data + m->topic_off;
  info.topic.len = m->topic_len;
  /* The payload's place is not kept per message; decoding our own packet
   * finds it without allocating, and only at a loss. */
  uvmqtt_packet_t p;
  info.payload_len =
      uvmqtt_decode_packet(m->data, m->len, s->version, &p) == 0 ? p.u.publish.payload.len : m->len;
  info.qos = m->qos;
  info.sent = m->sent;
  info.age_ms = now - m->created;
  info.arg = m->arg;
  return s->decide(s->decide_state, &info, status) != 0;
}

/* Applies the delivery policy of m at a connection loss: 1 keeps it. */
static int keep_at_loss(uvmqtt__session_t *s, uvmqtt__msg_t *m, int status, uint64_t now) {
  switch (m->policy) {
  case UVMQTT_DELIVERY_DROP: return 0;
  /* Past its deadline a message is stale: one that was sent is not resent
   * after the reconnect, one that never was expires. */
  case UVMQTT_DELIVERY_DEADLINE: return m->deadline == 0 || now < m->deadline;
  case UVMQTT_DELIVERY_CUSTOM: return ask_custom(s, m, status, now);
  default: return 1;
  }
}

static int keep_at_session_loss(uvmqtt__session_t *s, uvmqtt__msg_t *m, uint64_t now) {
  switch (m->policy) {
  case UVMQTT_DELIVERY_UNTIL_DELIVERED: return 1;
  case UVMQTT_DELIVERY_CUSTOM: return ask_custom(s, m, UVMQTT_ESESSIONLOST, now);
  default: return 0;
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
      if (is_window) s->act->inflight--;
      list_push(&dropped, m);
    } else {
      prev = m;
    }
    m = next;
  }
  while ((m = list_pop(&dropped)) != NULL)
    msg_finish(s, m, expirable(m) && m->deadline <= now ? UVMQTT_EEXPIRED : status, 0);
}

static void session_lost(uvmqtt__session_t *s, int status, uint64_t now) {
  uvmqtt__msg_t *m;
  /* Output the owner never took did not reach the socket: its QoS 0
   * messages were never sent, so they go back to the queue and their
   * delivery policy decides below, like any unsent message. One published
   * straight into the output becomes a message of its own now (without
   * memory for that, it fails with UVMQTT_ENOMEM below). */
  s->state = UVMQTT__S_OFFLINE;
  s->ping = 0;
  dec_drop(s);
  if (s->act == NULL) return;
  uint32_t unkept = 0;
  for (uint32_t i = 0; i < s->act->out.npubs; i++) {
    uvmqtt__out_pub_t *op = &s->act->out.pubs[i];
    m = op->msg ? op->msg : out_pub_to_msg(s, op, now);
    if (m == NULL) {
      s->act->out.pubs[unkept++] = *op;
      continue;
    }
    m->state = UVMQTT__MSG_QUEUED;
    m->sent = 0;
    list_insert_by_seq(&s->act->queue, m);
  }
  s->act->out.npubs = 0;
  s->act->out.len = 0;
  s->act->out.has_ping = 0;
  /* Topic aliases die with the connection [MQTT-3.3.2-7]: the next one
   * starts without (uvmqtt__session_connect() drops them too), and an
   * offline session keeps no block for them. Inside recv the topic handed
   * to a callback may still be one of them. */
  if (!s->receiving) aliases_free(s);
  alias_out_free(s);
  /* PUBLISHes sent on this connection wait to be resent on the next; what
   * is past PUBREC keeps its slot (its PUBREL goes again), and so does what
   * waits for the store. */
  uvmqtt__msg_list_t sent = {NULL, NULL};
  uvmqtt__msg_t *prev = NULL;
  m = s->act->window.head;
  while (m) {
    uvmqtt__msg_t *next = m->next;
    if (m->state == UVMQTT__MSG_WAIT_ACK) {
      list_unlink(&s->act->window, prev, m);
      s->act->inflight--;
      m->state = UVMQTT__MSG_READY;
      list_push(&sent, m);
    } else {
      prev = m;
    }
    m = next;
  }
  list_merge_by_seq(&s->act->resend, &sent);
  apply_loss_policy(s, &s->act->window, 1, status, now);
  apply_loss_policy(s, &s->act->resend, 0, status, now);
  apply_loss_policy(s, &s->act->queue, 0, status, now);
  recompute_expiry(s);
  for (uint32_t i = 0; i < unkept; i++) {
    uvmqtt__out_pub_t op = s->act->out.pubs[i];
    out_pub_finish(s, &op, UVMQTT_ENOMEM);
  }
}

static int session_tick(uvmqtt__session_t *s, uint64_t now) {
  if (s->act && s->act->next_expiry && now >= s->act->next_expiry) {
    /* Unlink first, report after: a callback may publish, which changes the
     * queue under a running walk. */
    uvmqtt__msg_list_t expired = {NULL, NULL};
    uvmqtt__msg_t *prev = NULL, *m = s->act->queue.head;
    while (m) {
      uvmqtt__msg_t *next = m->next;
      if (expirable(m) && m->deadline <= now) {
        list_unlink(&s->act->queue, prev, m);
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
  uint64_t due = uvmqtt__session_next_deadline(s);
  if (!connected(s) || s->keepalive_s == 0 || due == 0 || now < due) return 0;
  if (s->ping) return UVMQTT_EKEEPALIVE;
  static const uint8_t pingreq[2] = {UVMQTT_PINGREQ << 4, 0};
  if (gate(s, UVMQTT_PINGREQ, sizeof pingreq) == 0 &&
      out_append(s, pingreq, sizeof pingreq, now) == 0) {
    s->ping = 1;
    uvmqtt__session_set_time(s, UVMQTT__T_PING, now);
    s->act->out.has_ping = 1;
  }
  return 0;
}

static uint64_t max3(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t m = a > b ? a : b;
  return m > c ? m : c;
}

/* Keepalive: a PINGREQ goes out after keep_alive of quiet. It is timed from
 * when its write completed, not when it was queued (behind a slow uplink it
 * may wait long in the socket), and any byte from the broker counts as an
 * answer, and so does any later write completing: the kernel's send buffer
 * only drains while the broker acknowledges our bytes, and on a slow uplink
 * the PINGREQ may sit there behind megabytes the broker has yet to read. A
 * PINGREQ that cannot even be written is given a whole keep_alive without
 * any write progress or byte received.
 *
 * The deadlines sit on a grid of a sixteenth of keep_alive, at most
 * UVMQTT__KEEPALIVE_GRID_MS: a PINGREQ goes out up to one step early (the
 * protocol allows it: keep_alive bounds the silence, it does not set the
 * beat) and the wait for its answer ends up to one step late. A loop holding
 * thousands of clients then wakes once per step for every ping due in it,
 * and writes them and reads their answers in one burst, instead of waking
 * once per client. */
static uint64_t keepalive_grid(uint64_t ka_ms) {
  uint64_t g = ka_ms / 16;
  if (g > UVMQTT__KEEPALIVE_GRID_MS) g = UVMQTT__KEEPALIVE_GRID_MS;
  return g ? g : 1;
}

uint64_t uvmqtt__session_next_deadline(const uvmqtt__session_t *s) {
  uint64_t next = s->act ? s->act->next_expiry : 0;
  if (connected(s) && s->keepalive_s) {
    uint64_t ka = (uint64_t)s->keepalive_s * 1000u;
    uint64_t g = keepalive_grid(ka);
    uint64_t t;
    if (s->ping == 2)
      t = max3(uvmqtt__session_time(s, UVMQTT__T_PING), uvmqtt__session_time(s, UVMQTT__T_RECV),
               uvmqtt__session_time(s, UVMQTT__T_WRITTEN)) +
          ka / 2;
    else if (s->ping == 1)
      t = max3(uvmqtt__session_time(s, UVMQTT__T_PING), uvmqtt__session_time(s, UVMQTT__T_WRITTEN),
               uvmqtt__session_time(s, UVMQTT__T_RECV)) +
          ka;
    else
      t = (uvmqtt__session_time(s, UVMQTT__T_SEND) < uvmqtt__session_time(s, UVMQTT__T_RECV)
               ? uvmqtt__session_time(s, UVMQTT__T_SEND)
               : uvmqtt__session_time(s, UVMQTT__T_RECV)) +
          ka;
    if (s->ping)
      t += (g - t % g) % g;
    else
      t -= t % g;
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
  ctx->err = act_need(s);
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
  msg_set_layout(m, rec->len);
  m->seq = rec->seq;
  m->created = ctx->now;
  if (rec->deadline_unix_ms) {
    int64_t local = (int64_t)rec->deadline_unix_ms - s->wall_offset_ms;
    m->deadline = local > 0 ? (uint64_t)local : 1;
  }
  m->policy = rec->policy ? rec->policy : UVMQTT_DELIVERY_UNTIL_DELIVERED;
  m->restored = 1;
  if (s->next_seq <= rec->seq) s->next_seq = rec->seq + 1;
  s->act->queued++;
  s->act->queued_bytes += m->len;
  m->alias = UVMQTT_HAS(&p.props, UVMQTT_PROP_TOPIC_ALIAS) ? p.props.topic_alias : 0;
  /* A message that may have gone out under its id keeps it; so does one
   * past PUBREC, whose PUBREL goes next. A record that claims an id in use
   * already is corrupt, and is queued as new rather than trusted. */
  if (m->qos > 0 && rec->phase != UVMQTT_STORE_QUEUED && rec->packet_id != 0 &&
      !uvmqtt__session_id_in_use(s, rec->packet_id) && id_take(s, rec->packet_id) == 0) {
    msg_set_id(m, rec->packet_id);
    m->data[0] |= 0x08; /* it may have gone out under this id */
    m->sent = 1;
    if (rec->phase == UVMQTT_STORE_PUBREC) {
      m->state = UVMQTT__MSG_WAIT_COMP;
      s->act->inflight++;
      list_push(&s->act->window, m);
    } else {
      m->state = UVMQTT__MSG_READY;
      list_push(&s->act->resend, m);
    }
    /* New ids start after the restored ones. */
    if (m->id >= s->next_id) s->next_id = (uint16_t)(m->id + 1); /* 0 is skipped */
  } else {
    m->data[0] &= (uint8_t)~0x08;
    m->state = UVMQTT__MSG_QUEUED;
    list_push(&s->act->queue, m);
  }
}

static void restore_incoming(void *arg, uint16_t id) {
  restore_ctx_t *ctx = arg;
  if (ctx->err == 0 && id != 0 && rx_qos2_find(ctx->s, id) < 0) ctx->err = rx_qos2_add(ctx->s, id);
}

static int session_restore(uvmqtt__session_t *s, uint64_t now) {
  if (s->store == NULL || s->store->load == NULL) return 0;
  restore_ctx_t ctx = {s, now, 0};
  int err = s->store->load(s->store->state, restore_one, &ctx);
  if (err == 0) err = ctx.err;
  if (err == 0 && s->store->load_incoming)
    err = s->store->load_incoming(s->store->state, restore_incoming, &ctx);
  if (err == 0) err = ctx.err;
  recompute_expiry(s);
  return err;
}

/* The largest output size hint fits its 16 bits. */
_Static_assert(UVMQTT__OUT_HIGH_WATER * 2 / UVMQTT__OUT_HINT_UNIT <= UINT16_MAX,
               "out_hint overflows");

/* ---- Output hand-off ------------------------------------------------------------------------ */

static int session_take_output(uvmqtt__session_t *s, uvmqtt__output_t *out) {
  if (s->act == NULL || s->act->out.len == 0) return 0;
  *out = s->act->out;
  memset(&s->act->out, 0, sizeof s->act->out);
  return 1;
}

static void session_written(uvmqtt__session_t *s, uvmqtt__output_t *out, int status, uint64_t now) {
  /* A callback may publish: that goes to the session's output, never to
   * this one. */
  uint32_t npubs = out->npubs;
  for (uint32_t i = 0; i < npubs; i++)
    out_pub_finish(s, &out->pubs[i], status);
  if (status == 0) {
    uvmqtt__session_set_time(s, UVMQTT__T_WRITTEN, now);
    if (out->has_ping && s->ping == 1) {
      s->ping = 2;
      uvmqtt__session_set_time(s, UVMQTT__T_PING, now);
    }
  }
  size_t hint = out->len < UVMQTT__OUT_HIGH_WATER * 2 ? out->len : UVMQTT__OUT_HIGH_WATER * 2;
  s->out_hint = (uint16_t)((hint + UVMQTT__OUT_HINT_UNIT - 1) / UVMQTT__OUT_HINT_UNIT);
  s->out_pubs_hint = (uint16_t)(npubs < UINT16_MAX ? npubs : UINT16_MAX);
  /* While busy, keep the buffer for the next output rather than allocating
   * again; an idle connection keeps none. */
  const uvmqtt__session_active_t *a = s->act;
  int busy = a && (a->queue.head != NULL || a->window.head != NULL || a->resend.head != NULL);
  if (busy && s->act->out.buf == NULL && out->cap <= UVMQTT__OUT_HIGH_WATER * 2) {
    s->act->out.buf = out->buf;
    s->act->out.cap = out->cap;
  } else {
    uvmqtt__free(out->buf);
  }
  if (busy && s->act->out.pubs == NULL) {
    s->act->out.pubs = out->pubs;
    s->act->out.pubs_cap = out->pubs_cap;
  } else {
    uvmqtt__free(out->pubs);
  }
  memset(out, 0, sizeof *out);
}

/* ---- Entry points ------------------------------------------------------------------------ */

/* Each call the owner makes may end with the session idle: the outermost
 * one frees the active block then (see enter()). */

int uvmqtt__session_restore(uvmqtt__session_t *s, uint64_t now) {
  enter(s);
  int err = session_restore(s, now);
  leave(s);
  return err;
}

int uvmqtt__session_report_store_failures(uvmqtt__session_t *s) {
  enter(s);
  int any = session_report_store_failures(s);
  leave(s);
  return any;
}

int uvmqtt__session_connect(uvmqtt__session_t *s, const uvmqtt_packet_t *connect, uint64_t now) {
  enter(s);
  int err = session_connect(s, connect, now);
  leave(s);
  return err;
}

int uvmqtt__session_recv(uvmqtt__session_t *s, const uint8_t *data, size_t len, uint64_t now) {
  enter(s);
  int err = session_recv(s, data, len, now);
  leave(s);
  return err;
}

void uvmqtt__session_lost(uvmqtt__session_t *s, int status, uint64_t now) {
  enter(s);
  session_lost(s, status, now);
  leave(s);
}

int uvmqtt__session_publish(uvmqtt__session_t *s, const char *topic, const void *payload,
                            size_t len, const uvmqtt__publish_t *p, uint64_t now) {
  /* A steady stream of QoS 0 messages goes straight into the output, after
   * the checks session_publish() would make for it: no block is walked, so
   * no enter()/leave(), but a block allocated for a message that then
   * failed is freed as leave() would. */
  if (topic != NULL && p != NULL && (payload != NULL || len == 0) &&
      len <= UVMQTT_MAX_REMAINING_LENGTH && (s->version != UVMQTT_V5 || p->props == NULL) &&
      (!*(const volatile uint8_t *)&p->retain || s->broker_retain) && direct_ok(s, p)) {
    size_t topic_len = strlen(topic);
    if (topic_len - 1 < 65535) { /* 1 to 65535 */
      int err = publish_direct(s, (const uint8_t *)topic, topic_len, payload, len, p, now);
      if (err && s->depth == 0 && s->act && act_idle(s->act)) act_free(s);
      return err;
    }
  }
  enter(s);
  int err = session_publish(s, topic, payload, len, p, now);
  leave(s);
  return err;
}

int uvmqtt__session_request(uvmqtt__session_t *s, const uvmqtt_packet_t *pkt, uvmqtt__cb_fn cb,
                            void *arg, uint64_t now) {
  enter(s);
  int err = session_request(s, pkt, cb, arg, now);
  leave(s);
  return err;
}

int uvmqtt__session_auth(uvmqtt__session_t *s, uint8_t reason, const uvmqtt_bytes_t *data,
                         uint64_t now) {
  enter(s);
  int err = session_auth(s, reason, data, now);
  leave(s);
  return err;
}

int uvmqtt__session_stop(uvmqtt__session_t *s, uint8_t reason, uint64_t now) {
  enter(s);
  int err = session_stop(s, reason, now);
  leave(s);
  return err;
}

int uvmqtt__session_stop_now(uvmqtt__session_t *s, uint64_t now) {
  enter(s);
  int err = session_stop_now(s, now);
  leave(s);
  return err;
}

int uvmqtt__session_tick(uvmqtt__session_t *s, uint64_t now) {
  enter(s);
  int err = session_tick(s, now);
  leave(s);
  return err;
}

void uvmqtt__session_pump(uvmqtt__session_t *s, uint64_t now) {
  enter(s);
  session_pump(s, now);
  leave(s);
}

int uvmqtt__session_take_output(uvmqtt__session_t *s, uvmqtt__output_t *out) {
  enter(s);
  int any = session_take_output(s, out);
  leave(s);
  return any;
}

void uvmqtt__session_written(uvmqtt__session_t *s, uvmqtt__output_t *out, int status,
                             uint64_t now) {
  enter(s);
  session_written(s, out, status, now);
  leave(s);
}

void uvmqtt__session_stats(const uvmqtt__session_t *s, uint32_t *inflight, uint32_t *queued,
                           size_t *queued_bytes) {
  const uvmqtt__session_active_t *a = s->act;
  uint32_t n = 0;
  for (const uvmqtt__msg_t *m = a ? a->queue.head : NULL; m; m = m->next)
    n++;
  *inflight = a ? a->inflight : 0;
  *queued = n;
  *queued_bytes = a ? a->queued_bytes : 0;
}
