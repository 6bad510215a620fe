/* Random valid MQTT packets and field-by-field comparison of packets.
 *
 * Shared by the codec round-trip test, the fuzz targets and the seed corpus
 * generator, so all three agree on what "the same packet" means. The
 * functions are static inline so each user compiles only what it calls,
 * without unused-function warnings.
 *
 * A packet here is always in the form the encoder takes: repeated
 * properties and topic filters as arrays, `raw` views empty. A decoded
 * packet is brought into that form with pm_from_decoded().
 */
#ifndef UVMQTT_PACKET_MODEL_H
#define UVMQTT_PACKET_MODEL_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uvmqtt/codec.h"

/* ---- PRNG ------------------------------------------------------------------ */

/* splitmix64: tiny, fast and fully determined by its seed, so a failing
 * case can be replayed from the printed seed. */
typedef struct {
  uint64_t s;
} pm_rng_t;

static inline uint64_t pm_next(pm_rng_t *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform enough in [0, n) for test data; 0 when n is 0. */
static inline uint32_t pm_below(pm_rng_t *r, uint32_t n) {
  return n == 0 ? 0 : (uint32_t)(pm_next(r) % n);
}

static inline int pm_chance(pm_rng_t *r, uint32_t percent) {
  return pm_below(r, 100) < percent;
}

/* ---- Which properties each packet may carry (MQTT 5.0 table 2-4) ---------- */

#define PM_BIT(id) (1ull << (id))

static inline uint64_t pm_allowed_props(uint8_t kind) {
  switch (kind) {
  case UVMQTT_PROPS_CONNECT:
    return PM_BIT(0x11) | PM_BIT(0x15) | PM_BIT(0x16) | PM_BIT(0x17) | PM_BIT(0x19) | PM_BIT(0x21) |
           PM_BIT(0x22) | PM_BIT(0x26) | PM_BIT(0x27);
  case UVMQTT_PROPS_CONNACK:
    return PM_BIT(0x11) | PM_BIT(0x12) | PM_BIT(0x13) | PM_BIT(0x15) | PM_BIT(0x16) | PM_BIT(0x1A) |
           PM_BIT(0x1C) | PM_BIT(0x1F) | PM_BIT(0x21) | PM_BIT(0x22) | PM_BIT(0x24) | PM_BIT(0x25) |
           PM_BIT(0x26) | PM_BIT(0x27) | PM_BIT(0x28) | PM_BIT(0x29) | PM_BIT(0x2A);
  case UVMQTT_PROPS_PUBLISH:
    return PM_BIT(0x01) | PM_BIT(0x02) | PM_BIT(0x03) | PM_BIT(0x08) | PM_BIT(0x09) | PM_BIT(0x0B) |
           PM_BIT(0x23) | PM_BIT(0x26);
  case UVMQTT_PROPS_WILL:
    return PM_BIT(0x01) | PM_BIT(0x02) | PM_BIT(0x03) | PM_BIT(0x08) | PM_BIT(0x09) | PM_BIT(0x18) |
           PM_BIT(0x26);
  case UVMQTT_PROPS_PUBACK:
  case UVMQTT_PROPS_SUBACK: return PM_BIT(0x1F) | PM_BIT(0x26);
  case UVMQTT_PROPS_SUBSCRIBE: return PM_BIT(0x0B) | PM_BIT(0x26);
  case UVMQTT_PROPS_UNSUBSCRIBE: return PM_BIT(0x26);
  case UVMQTT_PROPS_DISCONNECT: return PM_BIT(0x11) | PM_BIT(0x1C) | PM_BIT(0x1F) | PM_BIT(0x26);
  case UVMQTT_PROPS_AUTH: return PM_BIT(0x15) | PM_BIT(0x16) | PM_BIT(0x1F) | PM_BIT(0x26);
  default: return 0;
  }
}

/* The property set kind of a packet type. */
static inline uint8_t pm_props_kind(uint8_t type) {
  switch (type) {
  case UVMQTT_PUBREC:
  case UVMQTT_PUBREL:
  case UVMQTT_PUBCOMP: return UVMQTT_PROPS_PUBACK;
  case UVMQTT_UNSUBACK: return UVMQTT_PROPS_SUBACK;
  default: return type;
  }
}

/* ---- Random packets --------------------------------------------------------- */

#define PM_LIST  8
#define PM_ARENA (80u * 1024u)

/* One generated packet and the storage its views point into. */
typedef struct {
  uvmqtt_packet_t pkt;
  uvmqtt_user_prop_t user[PM_LIST];
  uvmqtt_user_prop_t will_user[PM_LIST];
  uint32_t sub_ids[PM_LIST];
  uvmqtt_topic_sub_t subs[PM_LIST];
  uint8_t codes[PM_LIST];
  uint8_t arena[PM_ARENA];
  size_t used;
  /* Generation knobs: the largest payload (0 picks the default) and the
   * percentage of optional properties to include. */
  uint32_t max_payload;
  uint32_t prop_percent;
} pm_gen_t;

static inline uint8_t *pm_take(pm_gen_t *g, size_t n) {
  if (g->used + n > sizeof g->arena) abort();
  uint8_t *p = g->arena + g->used;
  g->used += n;
  return p;
}

/* Appends one random character as UTF-8; never U+0000, never a wildcard or
 * '/', so callers decide where separators go. */
static inline size_t pm_put_char(pm_rng_t *r, uint8_t *out) {
  static const char *const multi[] = {"\xc3\xa9",         "\xc2\x80",        "\xdf\xbf",
                                      "\xe6\x97\xa5",     "\xef\xbf\xbf",    "\xed\x9f\xbf",
                                      "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf"};
  if (pm_chance(r, 85)) {
    static const char ascii[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "
                                "-_.$:;,!~";
    out[0] = (uint8_t)ascii[pm_below(r, sizeof ascii - 1)];
    return 1;
  }
  const char *m = multi[pm_below(r, sizeof multi / sizeof multi[0])];
  size_t n = strlen(m);
  memcpy(out, m, n);
  return n;
}

/* A UTF-8 string of up to max_chars characters (possibly empty). */
static inline uvmqtt_bytes_t pm_string(pm_gen_t *g, pm_rng_t *r, uint32_t max_chars) {
  uint32_t chars = pm_below(r, max_chars + 1);
  uint8_t *p = pm_take(g, (size_t)chars * 4);
  size_t n = 0;
  for (uint32_t i = 0; i < chars; i++)
    n += pm_put_char(r, p + n);
  return (uvmqtt_bytes_t){p, (uint32_t)n};
}

static inline uvmqtt_bytes_t pm_binary(pm_gen_t *g, pm_rng_t *r, uint32_t max_len) {
  uint32_t n = pm_below(r, max_len + 1);
  uint8_t *p = pm_take(g, n);
  for (uint32_t i = 0; i < n; i++)
    p[i] = (uint8_t)pm_next(r);
  return (uvmqtt_bytes_t){p, n};
}

/* A level of a topic name: may be empty, never holds '/' or wildcards. A
 * leading '$' can appear, which matters to matching, not to the codec. */
static inline size_t pm_level(pm_rng_t *r, uint8_t *out, uint32_t max_chars) {
  uint32_t chars = pm_below(r, max_chars + 1);
  size_t n = 0;
  for (uint32_t i = 0; i < chars; i++)
    n += pm_put_char(r, out + n);
  return n;
}

/* A non-empty topic name of one to four levels. */
static inline uvmqtt_bytes_t pm_topic(pm_gen_t *g, pm_rng_t *r) {
  uint32_t levels = 1 + pm_below(r, 4);
  uint8_t *p = pm_take(g, levels * (8 * 4 + 1));
  size_t n = 0;
  for (uint32_t i = 0; i < levels; i++) {
    if (i > 0) p[n++] = '/';
    n += pm_level(r, p + n, 8);
  }
  if (n == 0) p[n++] = '/';
  return (uvmqtt_bytes_t){p, (uint32_t)n};
}

/* A topic filter: levels that may be '+', a trailing '#', and in v5 now and
 * then a "$share/Name/" prefix. *shared tells whether it got one. */
static inline uvmqtt_bytes_t pm_filter(pm_gen_t *g, pm_rng_t *r, uint8_t version, int *shared) {
  uint32_t levels = 1 + pm_below(r, 4);
  uint8_t *p = pm_take(g, 7 + 8 * 4 + 1 + levels * (8 * 4 + 1));
  size_t n = 0;
  *shared = version == UVMQTT_V5 && pm_chance(r, 15);
  if (*shared) {
    memcpy(p, "$share/", 7);
    n = 7;
    do {
      n += pm_put_char(r, p + n);
    } while (pm_chance(r, 70));
    p[n++] = '/';
  }
  for (uint32_t i = 0; i < levels; i++) {
    if (i > 0) p[n++] = '/';
    uint32_t pick = pm_below(r, 10);
    if (pick == 0) {
      p[n++] = '+';
    } else if (pick == 1 && i + 1 == levels) {
      p[n++] = '#';
    } else {
      n += pm_level(r, p + n, 8);
    }
  }
  /* A filter, even after a share prefix, is never empty. */
  if (n == 0 || p[n - 1] == '/') {
    if (n == 0 || *shared) p[n++] = 'x';
  }
  return (uvmqtt_bytes_t){p, (uint32_t)n};
}

static inline uint8_t pm_pick(pm_rng_t *r, const uint8_t *set, size_t n) {
  return set[pm_below(r, (uint32_t)n)];
}

#define PM_PICK(r, arr) pm_pick((r), (arr), sizeof(arr) / sizeof((arr)[0]))

/* Fills `p` with a random subset of the properties allowed for `kind`, each
 * with a valid value. User properties go to `user` (PM_LIST slots). */
static inline void pm_random_props(pm_gen_t *g, pm_rng_t *r, uint8_t kind, uvmqtt_props_t *p,
                                   uvmqtt_user_prop_t *user) {
  memset(p, 0, sizeof *p);
  uint64_t allowed = pm_allowed_props(kind);
  uint64_t has = 0;
  for (unsigned id = 1; id < 64; id++) {
    if (((allowed >> id) & 1u) && pm_chance(r, g->prop_percent)) has |= PM_BIT(id);
  }
  /* Authentication Data needs an Authentication Method beside it; AUTH
   * always names its method. */
  if (kind == UVMQTT_PROPS_AUTH) has |= PM_BIT(0x15);
  if (has & PM_BIT(0x16)) has |= PM_BIT(0x15);
  for (unsigned id = 1; id < 64; id++) {
    if (!((has >> id) & 1u)) continue;
    switch (id) {
    case 0x01: p->payload_format_indicator = (uint8_t)pm_below(r, 2); break;
    case 0x02: p->message_expiry_interval = (uint32_t)pm_next(r); break;
    case 0x03: p->content_type = pm_string(g, r, 20); break;
    case 0x08: p->response_topic = pm_topic(g, r); break;
    case 0x09: p->correlation_data = pm_binary(g, r, 24); break;
    case 0x0B:
      if (kind == UVMQTT_PROPS_PUBLISH) {
        p->sub_id_count = 1 + pm_below(r, 3);
        for (uint32_t i = 0; i < p->sub_id_count; i++) {
          g->sub_ids[i] = 1 + pm_below(r, UVMQTT_MAX_REMAINING_LENGTH);
        }
        p->subscription_id = g->sub_ids[0];
      } else {
        p->subscription_id = 1 + pm_below(r, UVMQTT_MAX_REMAINING_LENGTH);
        g->sub_ids[0] = p->subscription_id;
        p->sub_id_count = 1;
      }
      p->sub_ids = g->sub_ids;
      break;
    case 0x11: p->session_expiry_interval = (uint32_t)pm_next(r); break;
    case 0x12: p->assigned_client_identifier = pm_string(g, r, 23); break;
    case 0x13: p->server_keep_alive = (uint16_t)pm_next(r); break;
    case 0x15: p->authentication_method = pm_string(g, r, 16); break;
    case 0x16: p->authentication_data = pm_binary(g, r, 32); break;
    case 0x17: p->request_problem_information = (uint8_t)pm_below(r, 2); break;
    case 0x18: p->will_delay_interval = (uint32_t)pm_next(r); break;
    case 0x19: p->request_response_information = (uint8_t)pm_below(r, 2); break;
    case 0x1A: p->response_information = pm_string(g, r, 20); break;
    case 0x1C: p->server_reference = pm_string(g, r, 20); break;
    case 0x1F: p->reason_string = pm_string(g, r, 30); break;
    case 0x21: p->receive_maximum = (uint16_t)(1 + pm_below(r, 65535)); break;
    case 0x22: p->topic_alias_maximum = (uint16_t)pm_next(r); break;
    case 0x23: p->topic_alias = (uint16_t)(1 + pm_below(r, 65535)); break;
    case 0x24: p->maximum_qos = (uint8_t)pm_below(r, 2); break;
    case 0x25: p->retain_available = (uint8_t)pm_below(r, 2); break;
    case 0x26:
      p->user_count = 1 + pm_below(r, 4);
      for (uint32_t i = 0; i < p->user_count; i++) {
        user[i].key = pm_string(g, r, 10);
        user[i].value = pm_string(g, r, 14);
      }
      p->user = user;
      break;
    case 0x27: p->maximum_packet_size = 1 + pm_below(r, 0xFFFFFFFFu); break;
    case 0x28: p->wildcard_subscription_available = (uint8_t)pm_below(r, 2); break;
    case 0x29: p->subscription_identifier_available = (uint8_t)pm_below(r, 2); break;
    case 0x2A: p->shared_subscription_available = (uint8_t)pm_below(r, 2); break;
    default: break;
    }
  }
  p->has = has;
}

/* A payload of random bytes, or of UTF-8 text when the Payload Format
 * Indicator says so. Mostly short; now and then up to `limit` (capped by
 * max_payload), long enough for a two- or three-byte remaining length. */
static inline uvmqtt_bytes_t pm_payload(pm_gen_t *g, pm_rng_t *r, int utf8, uint32_t limit) {
  uint32_t cap = g->max_payload ? g->max_payload : 70000;
  if (cap > limit) cap = limit;
  uint32_t max = pm_chance(r, 3) ? cap : (pm_chance(r, 20) ? 400 : 40);
  if (max > cap) max = cap;
  if (utf8) return pm_string(g, r, max / 4);
  return pm_binary(g, r, max);
}

static const uint8_t pm_connack_v5[] = {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
                                        0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
                                        0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F};
static const uint8_t pm_puback_v5[] = {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99};
static const uint8_t pm_pubrel_v5[] = {0x00, 0x92};
static const uint8_t pm_suback_v5[] = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87,
                                       0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2};
static const uint8_t pm_suback_v311[] = {0x00, 0x01, 0x02, 0x80};
static const uint8_t pm_unsuback_v5[] = {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91};
static const uint8_t pm_disconnect_v5[] = {
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
    0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2};
static const uint8_t pm_auth_v5[] = {0x00, 0x18, 0x19};

static inline uint16_t pm_packet_id(pm_rng_t *r) {
  return (uint16_t)(1 + pm_below(r, 65535));
}

/* Generates a random valid packet of `type` for `version` into g->pkt. */
static inline void pm_random_packet(pm_gen_t *g, pm_rng_t *r, uint8_t type, uint8_t version) {
  uvmqtt_packet_t *pkt = &g->pkt;
  int v5 = version == UVMQTT_V5;
  g->used = 0;
  if (g->prop_percent == 0) g->prop_percent = 50;
  memset(pkt, 0, sizeof *pkt);
  pkt->type = type;
  if (v5) pm_random_props(g, r, pm_props_kind(type), &pkt->props, g->user);

  switch (type) {
  case UVMQTT_CONNECT: {
    uvmqtt_connect_t *c = &pkt->u.connect;
    c->protocol_level = version;
    c->clean_start = (uint8_t)pm_below(r, 2);
    c->keep_alive = (uint16_t)pm_next(r);
    c->client_id = pm_string(g, r, 23);
    /* A 3.1.1 server must refuse an empty client id with a persistent
     * session (section 3.1.3.1). */
    if (!v5 && c->client_id.len == 0) c->clean_start = 1;
    c->will = pm_chance(r, 50);
    if (c->will) {
      c->will_qos = (uint8_t)pm_below(r, 3);
      c->will_retain = (uint8_t)pm_below(r, 2);
      if (v5) pm_random_props(g, r, UVMQTT_PROPS_WILL, &c->will_props, g->will_user);
      c->will_topic = pm_topic(g, r);
      /* The will payload carries a two-byte length. */
      c->will_payload = pm_payload(g, r, v5 && c->will_props.payload_format_indicator, 65535);
    }
    c->has_username = pm_chance(r, 50);
    if (c->has_username) c->username = pm_string(g, r, 12);
    /* 3.1.1 allows a password only together with a user name. */
    c->has_password = (v5 || c->has_username) && pm_chance(r, 50);
    if (c->has_password) c->password = pm_binary(g, r, 16);
    break;
  }
  case UVMQTT_CONNACK:
    pkt->reason = v5 ? PM_PICK(r, pm_connack_v5) : (uint8_t)pm_below(r, 6);
    pkt->session_present = pkt->reason == 0 ? (uint8_t)pm_below(r, 2) : 0;
    break;
  case UVMQTT_PUBLISH: {
    uvmqtt_publish_t *p = &pkt->u.publish;
    p->qos = (uint8_t)pm_below(r, 3);
    p->retain = (uint8_t)pm_below(r, 2);
    p->dup = p->qos > 0 ? (uint8_t)pm_below(r, 2) : 0;
    if (p->qos > 0) pkt->packet_id = pm_packet_id(r);
    /* With a Topic Alias the topic name may be left empty. */
    if (UVMQTT_HAS(&pkt->props, UVMQTT_PROP_TOPIC_ALIAS) && pm_chance(r, 40)) {
      p->topic = (uvmqtt_bytes_t){NULL, 0};
    } else {
      p->topic = pm_topic(g, r);
    }
    p->payload = pm_payload(g, r, v5 && pkt->props.payload_format_indicator, PM_ARENA / 2);
    break;
  }
  case UVMQTT_PUBACK:
  case UVMQTT_PUBREC:
    pkt->packet_id = pm_packet_id(r);
    if (v5) pkt->reason = PM_PICK(r, pm_puback_v5);
    break;
  case UVMQTT_PUBREL:
  case UVMQTT_PUBCOMP:
    pkt->packet_id = pm_packet_id(r);
    if (v5) pkt->reason = PM_PICK(r, pm_pubrel_v5);
    break;
  case UVMQTT_SUBSCRIBE:
  case UVMQTT_UNSUBSCRIBE: {
    pkt->packet_id = pm_packet_id(r);
    uint32_t n = 1 + pm_below(r, PM_LIST);
    for (uint32_t i = 0; i < n; i++) {
      int shared = 0;
      g->subs[i].filter = pm_filter(g, r, version, &shared);
      uint8_t opt = 0;
      if (type == UVMQTT_SUBSCRIBE) {
        opt = UVMQTT_SUB_QOS(pm_below(r, 3));
        if (v5) {
          /* No Local on a shared subscription is a protocol error. */
          if (!shared && pm_chance(r, 50)) opt |= UVMQTT_SUB_NO_LOCAL;
          if (pm_chance(r, 50)) opt |= UVMQTT_SUB_RETAIN_AS_PUBLISHED;
          opt |= UVMQTT_SUB_RETAIN_HANDLING(pm_below(r, 3));
        }
      }
      g->subs[i].options = opt;
    }
    pkt->u.subscribe.subs = g->subs;
    pkt->u.subscribe.count = n;
    break;
  }
  case UVMQTT_SUBACK:
  case UVMQTT_UNSUBACK: {
    pkt->packet_id = pm_packet_id(r);
    uint32_t n = 1 + pm_below(r, PM_LIST);
    if (type == UVMQTT_UNSUBACK && !v5) n = 0;
    for (uint32_t i = 0; i < n; i++) {
      if (type == UVMQTT_SUBACK) {
        g->codes[i] = v5 ? PM_PICK(r, pm_suback_v5) : PM_PICK(r, pm_suback_v311);
      } else {
        g->codes[i] = PM_PICK(r, pm_unsuback_v5);
      }
    }
    pkt->u.suback.codes = n ? g->codes : NULL;
    pkt->u.suback.count = n;
    break;
  }
  case UVMQTT_DISCONNECT:
    if (v5) pkt->reason = PM_PICK(r, pm_disconnect_v5);
    break;
  case UVMQTT_AUTH: pkt->reason = PM_PICK(r, pm_auth_v5); break;
  default: break;
  }
}

/* ---- Decoded packets into encoder form --------------------------------------- */

/* A decoded packet with its repeated fields copied out of `raw` into arrays
 * it owns. Free with pm_model_free(). */
typedef struct {
  uvmqtt_packet_t pkt;
  uvmqtt_user_prop_t *user;
  uvmqtt_user_prop_t *will_user;
  uint32_t *sub_ids;
  uvmqtt_topic_sub_t *subs;
} pm_model_t;

static inline void pm_model_free(pm_model_t *m) {
  free(m->user);
  free(m->will_user);
  free(m->sub_ids);
  free(m->subs);
  memset(m, 0, sizeof *m);
}

static inline int pm_bytes_eq(uvmqtt_bytes_t a, uvmqtt_bytes_t b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

static inline void pm_say(char *why, size_t cap, const char *fmt, ...) {
  if (why == NULL || cap == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, cap, fmt, ap);
  va_end(ap);
}

/* Checks that one walked property agrees with the decoded struct field. */
static inline int pm_prop_matches_field(const uvmqtt_props_t *p, const uvmqtt_prop_t *pr) {
  switch (pr->id) {
  case 0x01: return pr->u32 == p->payload_format_indicator;
  case 0x02: return pr->u32 == p->message_expiry_interval;
  case 0x03: return pm_bytes_eq(pr->str, p->content_type);
  case 0x08: return pm_bytes_eq(pr->str, p->response_topic);
  case 0x09: return pm_bytes_eq(pr->str, p->correlation_data);
  case 0x0B: return 1; /* a list, checked by the caller */
  case 0x11: return pr->u32 == p->session_expiry_interval;
  case 0x12: return pm_bytes_eq(pr->str, p->assigned_client_identifier);
  case 0x13: return pr->u32 == p->server_keep_alive;
  case 0x15: return pm_bytes_eq(pr->str, p->authentication_method);
  case 0x16: return pm_bytes_eq(pr->str, p->authentication_data);
  case 0x17: return pr->u32 == p->request_problem_information;
  case 0x18: return pr->u32 == p->will_delay_interval;
  case 0x19: return pr->u32 == p->request_response_information;
  case 0x1A: return pm_bytes_eq(pr->str, p->response_information);
  case 0x1C: return pm_bytes_eq(pr->str, p->server_reference);
  case 0x1F: return pm_bytes_eq(pr->str, p->reason_string);
  case 0x21: return pr->u32 == p->receive_maximum;
  case 0x22: return pr->u32 == p->topic_alias_maximum;
  case 0x23: return pr->u32 == p->topic_alias;
  case 0x24: return pr->u32 == p->maximum_qos;
  case 0x25: return pr->u32 == p->retain_available;
  case 0x26: return 1; /* a list, checked by the caller */
  case 0x27: return pr->u32 == p->maximum_packet_size;
  case 0x28: return pr->u32 == p->wildcard_subscription_available;
  case 0x29: return pr->u32 == p->subscription_identifier_available;
  case 0x2A: return pr->u32 == p->shared_subscription_available;
  default: return 0;
  }
}

/* Walks a decoded property set's `raw`, checks every property against the
 * struct and `has`, and copies the user properties and subscription
 * identifiers into new arrays. Returns 0, or -1 with a reason in `why`. */
static inline int pm_props_from_decoded(uvmqtt_props_t *p, uvmqtt_user_prop_t **user_out,
                                        uint32_t **sub_out, char *why, size_t cap) {
  uvmqtt_user_prop_t *user = NULL;
  uint32_t *subs = NULL;
  if (p->user_count > 0) user = calloc(p->user_count, sizeof *user);
  if (p->sub_id_count > 0) subs = calloc(p->sub_id_count, sizeof *subs);
  *user_out = user;
  *sub_out = subs;
  if ((p->user_count > 0 && user == NULL) || (p->sub_id_count > 0 && subs == NULL)) abort();

  uint64_t seen = 0;
  uint32_t nu = 0;
  uint32_t ns = 0;
  size_t off = 0;
  uvmqtt_prop_t pr;
  int rc;
  while ((rc = uvmqtt_props_next(p->raw, &off, &pr)) == 1) {
    if (pr.id >= 64) {
      pm_say(why, cap, "props_next yielded id 0x%02x", pr.id);
      return -1;
    }
    seen |= PM_BIT(pr.id);
    if (!pm_prop_matches_field(p, &pr)) {
      pm_say(why, cap, "property 0x%02x in raw differs from the decoded field", pr.id);
      return -1;
    }
    if (pr.id == UVMQTT_PROP_USER_PROPERTY) {
      if (nu >= p->user_count) {
        pm_say(why, cap, "more user properties in raw than user_count %u", p->user_count);
        return -1;
      }
      user[nu].key = pr.str;
      user[nu].value = pr.value;
      nu++;
    } else if (pr.id == UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER) {
      if (ns == 0 && pr.u32 != p->subscription_id) {
        pm_say(why, cap, "first subscription id %u, field says %u", pr.u32, p->subscription_id);
        return -1;
      }
      if (ns >= p->sub_id_count) {
        pm_say(why, cap, "more subscription ids in raw than sub_id_count %u", p->sub_id_count);
        return -1;
      }
      subs[ns++] = pr.u32;
    }
  }
  if (rc < 0) {
    pm_say(why, cap, "props_next failed at offset %zu: %d", off, rc);
    return -1;
  }
  if (seen != p->has) {
    pm_say(why, cap, "has %#llx but raw holds %#llx", (unsigned long long)p->has,
           (unsigned long long)seen);
    return -1;
  }
  if (nu != p->user_count || ns != p->sub_id_count) {
    pm_say(why, cap, "raw holds %u user props / %u sub ids, counts say %u / %u", nu, ns,
           p->user_count, p->sub_id_count);
    return -1;
  }
  p->user = user;
  p->sub_ids = subs;
  p->raw = (uvmqtt_bytes_t){NULL, 0};
  return 0;
}

/* Copies a decoded packet into encoder form. Views still point into the
 * decoder's input. Returns 0, or -1 with a reason when the decoded packet
 * contradicts itself (its raw walks disagree with its fields). */
static inline int pm_from_decoded(pm_model_t *m, const uvmqtt_packet_t *decoded, char *why,
                                  size_t cap) {
  memset(m, 0, sizeof *m);
  m->pkt = *decoded;
  uvmqtt_packet_t *p = &m->pkt;
  if (pm_props_from_decoded(&p->props, &m->user, &m->sub_ids, why, cap) != 0) return -1;
  if (p->type == UVMQTT_CONNECT && p->u.connect.will) {
    uint32_t *will_subs = NULL;
    int rc = pm_props_from_decoded(&p->u.connect.will_props, &m->will_user, &will_subs, why, cap);
    free(will_subs);
    if (rc != 0) return -1;
    if (p->u.connect.will_props.sub_id_count != 0) {
      pm_say(why, cap, "will properties hold subscription ids");
      return -1;
    }
  }
  if (p->type == UVMQTT_SUBSCRIBE || p->type == UVMQTT_UNSUBSCRIBE) {
    uvmqtt_subscribe_t *s = &p->u.subscribe;
    if (s->count > 0) m->subs = calloc(s->count, sizeof *m->subs);
    if (s->count > 0 && m->subs == NULL) abort();
    size_t off = 0;
    uint32_t n = 0;
    uvmqtt_topic_sub_t sub;
    int rc;
    while ((rc = uvmqtt_subs_next(p->type, s->raw, &off, &sub)) == 1) {
      if (n >= s->count) {
        pm_say(why, cap, "more filters in raw than count %u", s->count);
        return -1;
      }
      m->subs[n++] = sub;
    }
    if (rc < 0 || n != s->count) {
      pm_say(why, cap, "subs_next: rc %d after %u of %u filters", rc, n, s->count);
      return -1;
    }
    s->subs = m->subs;
    s->raw = (uvmqtt_bytes_t){NULL, 0};
  }
  return 0;
}

/* ---- Comparison --------------------------------------------------------------- */

static inline int pm_props_eq(const uvmqtt_props_t *a, const uvmqtt_props_t *b, const char *what,
                              char *why, size_t cap) {
  if (a->has != b->has) {
    pm_say(why, cap, "%s: has %#llx vs %#llx", what, (unsigned long long)a->has,
           (unsigned long long)b->has);
    return 0;
  }
  for (unsigned id = 1; id < 64; id++) {
    if (!((a->has >> id) & 1u)) continue;
    int same;
    switch (id) {
    case 0x01: same = a->payload_format_indicator == b->payload_format_indicator; break;
    case 0x02: same = a->message_expiry_interval == b->message_expiry_interval; break;
    case 0x03: same = pm_bytes_eq(a->content_type, b->content_type); break;
    case 0x08: same = pm_bytes_eq(a->response_topic, b->response_topic); break;
    case 0x09: same = pm_bytes_eq(a->correlation_data, b->correlation_data); break;
    case 0x0B:
      same = a->subscription_id == b->subscription_id && a->sub_id_count == b->sub_id_count &&
             memcmp(a->sub_ids, b->sub_ids, a->sub_id_count * sizeof(uint32_t)) == 0;
      break;
    case 0x11: same = a->session_expiry_interval == b->session_expiry_interval; break;
    case 0x12:
      same = pm_bytes_eq(a->assigned_client_identifier, b->assigned_client_identifier);
      break;
    case 0x13: same = a->server_keep_alive == b->server_keep_alive; break;
    case 0x15: same = pm_bytes_eq(a->authentication_method, b->authentication_method); break;
    case 0x16: same = pm_bytes_eq(a->authentication_data, b->authentication_data); break;
    case 0x17: same = a->request_problem_information == b->request_problem_information; break;
    case 0x18: same = a->will_delay_interval == b->will_delay_interval; break;
    case 0x19: same = a->request_response_information == b->request_response_information; break;
    case 0x1A: same = pm_bytes_eq(a->response_information, b->response_information); break;
    case 0x1C: same = pm_bytes_eq(a->server_reference, b->server_reference); break;
    case 0x1F: same = pm_bytes_eq(a->reason_string, b->reason_string); break;
    case 0x21: same = a->receive_maximum == b->receive_maximum; break;
    case 0x22: same = a->topic_alias_maximum == b->topic_alias_maximum; break;
    case 0x23: same = a->topic_alias == b->topic_alias; break;
    case 0x24: same = a->maximum_qos == b->maximum_qos; break;
    case 0x25: same = a->retain_available == b->retain_available; break;
    case 0x26:
      same = a->user_count == b->user_count;
      for (uint32_t i = 0; same && i < a->user_count; i++) {
        same = pm_bytes_eq(a->user[i].key, b->user[i].key) &&
               pm_bytes_eq(a->user[i].value, b->user[i].value);
      }
      break;
    case 0x27: same = a->maximum_packet_size == b->maximum_packet_size; break;
    case 0x28:
      same = a->wildcard_subscription_available == b->wildcard_subscription_available;
      break;
    case 0x29:
      same = a->subscription_identifier_available == b->subscription_identifier_available;
      break;
    case 0x2A: same = a->shared_subscription_available == b->shared_subscription_available; break;
    default: same = 0; break;
    }
    if (!same) {
      pm_say(why, cap, "%s: property 0x%02x differs", what, id);
      return 0;
    }
  }
  return 1;
}

#define PM_FIELD(cond, name)                                                                       \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      pm_say(why, cap, "%s differs", name);                                                        \
      return 0;                                                                                    \
    }                                                                                              \
  } while (0)

/* 1 if a and b (both in encoder form) carry the same packet in `version`,
 * else 0 with the first difference named in `why`. Only the fields that the
 * packet type defines are compared. */
static inline int pm_packet_eq(const uvmqtt_packet_t *a, const uvmqtt_packet_t *b, uint8_t version,
                               char *why, size_t cap) {
  PM_FIELD(a->type == b->type, "type");
  int v5 = version == UVMQTT_V5;
  if (a->type == UVMQTT_CONNECT) v5 = a->u.connect.protocol_level == UVMQTT_V5;
  if (v5 && !pm_props_eq(&a->props, &b->props, "props", why, cap)) return 0;
  switch (a->type) {
  case UVMQTT_CONNECT: {
    const uvmqtt_connect_t *x = &a->u.connect;
    const uvmqtt_connect_t *y = &b->u.connect;
    PM_FIELD(x->protocol_level == y->protocol_level, "protocol_level");
    PM_FIELD(x->clean_start == y->clean_start, "clean_start");
    PM_FIELD(x->keep_alive == y->keep_alive, "keep_alive");
    PM_FIELD(pm_bytes_eq(x->client_id, y->client_id), "client_id");
    PM_FIELD(x->will == y->will, "will");
    if (x->will) {
      PM_FIELD(x->will_qos == y->will_qos, "will_qos");
      PM_FIELD(x->will_retain == y->will_retain, "will_retain");
      PM_FIELD(pm_bytes_eq(x->will_topic, y->will_topic), "will_topic");
      PM_FIELD(pm_bytes_eq(x->will_payload, y->will_payload), "will_payload");
      if (v5 && !pm_props_eq(&x->will_props, &y->will_props, "will_props", why, cap)) return 0;
    }
    PM_FIELD(x->has_username == y->has_username, "has_username");
    if (x->has_username) PM_FIELD(pm_bytes_eq(x->username, y->username), "username");
    PM_FIELD(x->has_password == y->has_password, "has_password");
    if (x->has_password) PM_FIELD(pm_bytes_eq(x->password, y->password), "password");
    break;
  }
  case UVMQTT_CONNACK:
    PM_FIELD(a->session_present == b->session_present, "session_present");
    PM_FIELD(a->reason == b->reason, "reason");
    break;
  case UVMQTT_PUBLISH: {
    const uvmqtt_publish_t *x = &a->u.publish;
    const uvmqtt_publish_t *y = &b->u.publish;
    PM_FIELD(x->qos == y->qos, "qos");
    PM_FIELD(x->retain == y->retain, "retain");
    PM_FIELD(x->dup == y->dup, "dup");
    if (x->qos > 0) PM_FIELD(a->packet_id == b->packet_id, "packet_id");
    PM_FIELD(pm_bytes_eq(x->topic, y->topic), "topic");
    PM_FIELD(pm_bytes_eq(x->payload, y->payload), "payload");
    break;
  }
  case UVMQTT_PUBACK:
  case UVMQTT_PUBREC:
  case UVMQTT_PUBREL:
  case UVMQTT_PUBCOMP:
    PM_FIELD(a->packet_id == b->packet_id, "packet_id");
    PM_FIELD(a->reason == b->reason, "reason");
    break;
  case UVMQTT_SUBSCRIBE:
  case UVMQTT_UNSUBSCRIBE: {
    const uvmqtt_subscribe_t *x = &a->u.subscribe;
    const uvmqtt_subscribe_t *y = &b->u.subscribe;
    PM_FIELD(a->packet_id == b->packet_id, "packet_id");
    PM_FIELD(x->count == y->count, "filter count");
    for (uint32_t i = 0; i < x->count; i++) {
      PM_FIELD(pm_bytes_eq(x->subs[i].filter, y->subs[i].filter), "filter");
      if (a->type == UVMQTT_SUBSCRIBE) {
        PM_FIELD(x->subs[i].options == y->subs[i].options, "subscription options");
      }
    }
    break;
  }
  case UVMQTT_SUBACK:
  case UVMQTT_UNSUBACK: {
    const uvmqtt_suback_t *x = &a->u.suback;
    const uvmqtt_suback_t *y = &b->u.suback;
    PM_FIELD(a->packet_id == b->packet_id, "packet_id");
    PM_FIELD(x->count == y->count, "code count");
    PM_FIELD(x->count == 0 || memcmp(x->codes, y->codes, x->count) == 0, "codes");
    break;
  }
  case UVMQTT_DISCONNECT:
  case UVMQTT_AUTH: PM_FIELD(a->reason == b->reason, "reason"); break;
  default: break;
  }
  return 1;
}

#undef PM_FIELD

#endif
