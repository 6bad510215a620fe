/* MQTT 3.1, 3.1.1 and 5.0 packets: validation, decoding (whole packets and
 * the incremental decoder) and size-then-write encoding. Properties live in
 * props.c.
 *
 * MQTT 3.1 (protocol name "MQIsdp", level 3) is 3.1.1 with a few
 * differences, each handled where it applies: the protocol name, a client id
 * of 1 to 23 bytes, a CONNACK whose first byte is reserved (no Session
 * Present flag), SUBACK return codes 0-2 only (no 0x80 failure code; a
 * broker's 0x80 is still accepted, since 3.1 brokers that took up 3.1.1's
 * failure code send it), a DUP flag allowed on PUBREL, SUBSCRIBE and
 * UNSUBSCRIBE, and an unused reserved CONNECT flag. */
#include <string.h>

#include "codec/codec_internal.h"
#include "codec/utf8.h"

/* The biggest whole packet: a one-byte type, four length bytes and the
 * largest remaining length. */
#define MAX_PACKET ((uint64_t)UVMQTT_MAX_REMAINING_LENGTH + 5)

enum { ST_TYPE, ST_LENGTH, ST_BODY };

/* ---- Shared validation ---------------------------------------------------- */

static int version_ok(uint8_t version) {
  return version == UVMQTT_V31 || version == UVMQTT_V311 || version == UVMQTT_V5;
}

/* MQTT 3.1 limits client ids to 23 bytes and forbids an empty one. */
#define V31_MAX_CLIENT_ID 23

/* Checks the first byte of a packet: type and reserved flag bits
 * (MQTT 3.1.1 section 2.2.2, MQTT 5.0 section 2.1.3). `version` 0 means no
 * CONNECT has set it yet, so only a CONNECT may come. */
static int check_header(uint8_t b, uint8_t version) {
  uint8_t type = b >> 4;
  uint8_t flags = b & 0x0F;
  if (type == 0) return UVMQTT_EBADTYPE;
  if (version == 0 && type != UVMQTT_CONNECT) return UVMQTT_EPROTOCOL;
  if (type == UVMQTT_AUTH && version != 0 && version != UVMQTT_V5) return UVMQTT_EBADTYPE;
  switch (type) {
  case UVMQTT_PUBLISH:
    if ((flags & 0x06) == 0x06) return UVMQTT_EBADQOS;
    /* DUP must be 0 for QoS 0 ([MQTT-3.3.1-2]). */
    if ((flags & 0x0E) == 0x08) return UVMQTT_EBADFLAGS;
    return 0;
  case UVMQTT_PUBREL:
  case UVMQTT_SUBSCRIBE:
  case UVMQTT_UNSUBSCRIBE:
    /* MQTT 3.1 sets DUP on these QoS 1 packets when it sends them again. */
    if (version == UVMQTT_V31 && flags == 0x0A) return 0;
    return flags == 0x02 ? 0 : UVMQTT_EBADFLAGS;
  default: return flags == 0 ? 0 : UVMQTT_EBADFLAGS;
  }
}

/* The reason codes MQTT 5.0 allows in each packet (section 2.4 and the
 * tables of sections 3.2.2.2, 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3,
 * 3.11.3, 3.14.2.1 and 3.15.2.1). */
static const uint8_t connack_codes[] = {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
                                        0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
                                        0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F};
static const uint8_t puback_codes[] = {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99};
static const uint8_t pubrel_codes[] = {0x00, 0x92};
static const uint8_t suback_codes[] = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87,
                                       0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2};
static const uint8_t unsuback_codes[] = {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91};
static const uint8_t disconnect_codes[] = {
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
    0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2};
static const uint8_t auth_codes[] = {0x00, 0x18, 0x19};

#define IN(list, rc) (memchr((list), (rc), sizeof(list)) != NULL)

/* 1 if `rc` is a reason code MQTT 5.0 allows in a packet of `type`. */
static int reason_ok_v5(uint8_t type, uint8_t rc) {
  switch (type) {
  case UVMQTT_CONNACK: return IN(connack_codes, rc);
  case UVMQTT_PUBACK:
  case UVMQTT_PUBREC: return IN(puback_codes, rc);
  case UVMQTT_PUBREL:
  case UVMQTT_PUBCOMP: return IN(pubrel_codes, rc);
  case UVMQTT_SUBACK: return IN(suback_codes, rc);
  case UVMQTT_UNSUBACK: return IN(unsuback_codes, rc);
  case UVMQTT_DISCONNECT: return IN(disconnect_codes, rc);
  case UVMQTT_AUTH: return IN(auth_codes, rc);
  default: return rc == 0;
  }
}

static int reason_ok(uint8_t type, uint8_t version, uint8_t rc) {
  if (version == UVMQTT_V5) return reason_ok_v5(type, rc);
  if (type == UVMQTT_CONNACK) return rc <= 5;
  if (type == UVMQTT_SUBACK) return rc <= 2 || rc == 0x80;
  return rc == 0;
}

/* What the encoder may write: MQTT 3.1 has no SUBACK failure code. */
static int reason_ok_out(uint8_t type, uint8_t version, uint8_t rc) {
  if (version == UVMQTT_V31 && type == UVMQTT_SUBACK) return rc <= 2;
  return reason_ok(type, version, rc);
}

/* A topic name other than empty: valid UTF-8 without wildcards. */
static int check_topic_name(const uint8_t *t, size_t n) {
  /* Runs on every PUBLISH: UTF-8 and wildcards in one pass. */
  return uvmqtt__utf8_scan(t, n, 1);
}

static int check_filter(uvmqtt_bytes_t f) {
  if (f.len == 0) return UVMQTT_EBADTOPIC;
  int err = uvmqtt_utf8_check(f.data, f.len);
  if (err) return err;
  return uvmqtt_filter_check(f.data, f.len) ? UVMQTT_EBADTOPIC : 0;
}

static int is_shared(uvmqtt_bytes_t f) {
  return f.len >= 7 && memcmp(f.data, "$share/", 7) == 0;
}

/* Subscription options (MQTT 3.1.1 section 3.8.3.1, MQTT 5.0 section
 * 3.8.3.1). */
static int check_subopt(uint8_t version, uint8_t opt, uvmqtt_bytes_t filter) {
  if (version != UVMQTT_V5) {
    if (opt & 0xFC) return UVMQTT_EBADSUBOPT;
  } else {
    if (opt & 0xC0) return UVMQTT_EBADSUBOPT;
    if ((opt & 0x30) == 0x30) return UVMQTT_EBADSUBOPT;
    /* No Local on a shared subscription is a protocol error ([MQTT-3.8.3-4]). */
    if ((opt & UVMQTT_SUB_NO_LOCAL) && is_shared(filter)) return UVMQTT_EBADSUBOPT;
  }
  return (opt & 3) == 3 ? UVMQTT_EBADQOS : 0;
}

/* ---- Decoding --------------------------------------------------------------- */

typedef struct {
  const uint8_t *p;
  const uint8_t *end;
} rd_t;

static inline size_t rd_left(const rd_t *r) {
  return (size_t)(r->end - r->p);
}

static inline int rd_u8(rd_t *r, uint8_t *v) {
  if (r->p == r->end) return UVMQTT_ESHORT;
  *v = *r->p++;
  return 0;
}

static inline int rd_u16(rd_t *r, uint16_t *v) {
  if (rd_left(r) < 2) return UVMQTT_ESHORT;
  *v = uvmqtt__get16(r->p);
  r->p += 2;
  return 0;
}

static inline int rd_bytes(rd_t *r, uvmqtt_bytes_t *b) {
  if (rd_left(r) < 2) return UVMQTT_ESHORT;
  uint32_t n = uvmqtt__get16(r->p);
  if (rd_left(r) - 2 < n) return UVMQTT_ESHORT;
  b->data = r->p + 2;
  b->len = n;
  r->p += 2 + n;
  return 0;
}

static inline int rd_string(rd_t *r, uvmqtt_bytes_t *b) {
  int err = rd_bytes(r, b);
  return err ? err : uvmqtt_utf8_check(b->data, b->len);
}

static inline int rd_packet_id(rd_t *r, uint16_t *id) {
  int err = rd_u16(r, id);
  if (err) return err;
  return *id ? 0 : UVMQTT_EPACKETID;
}

static int rd_props(rd_t *r, uvmqtt_props_kind_t kind, uvmqtt_props_t *props) {
  size_t used;
  int err = uvmqtt__props_decode(r->p, rd_left(r), kind, props, &used);
  if (err) return err;
  r->p += used;
  return 0;
}

static int decode_connect(rd_t *r, uvmqtt_packet_t *pkt) {
  uvmqtt_connect_t *c = &pkt->u.connect;
  uvmqtt_bytes_t name;
  uint8_t flags;
  int err = rd_bytes(r, &name);
  if (err) return err;
  if ((err = rd_u8(r, &c->protocol_level))) return err;
  /* "MQIsdp" goes with level 3 only, "MQTT" with 4 and 5. */
  int v31 = c->protocol_level == UVMQTT_V31;
  if (v31 ? (name.len != 6 || memcmp(name.data, "MQIsdp", 6) != 0)
          : (name.len != 4 || memcmp(name.data, "MQTT", 4) != 0))
    return UVMQTT_EBADPROTO;
  if (!version_ok(c->protocol_level)) return UVMQTT_EBADPROTO;
  if ((err = rd_u8(r, &flags))) return err;
  if ((err = rd_u16(r, &c->keep_alive))) return err;

  /* Connect flags (MQTT 3.1.1 section 3.1.2.3, MQTT 5.0 section 3.1.2.3). */
  c->clean_start = (flags >> 1) & 1;
  c->will = (flags >> 2) & 1;
  c->will_qos = (flags >> 3) & 3;
  c->will_retain = (flags >> 5) & 1;
  c->has_password = (flags >> 6) & 1;
  c->has_username = (flags >> 7) & 1;
  /* MQTT 3.1 calls bit 0 unused rather than reserved: it is ignored. */
  if ((flags & 1) && !v31) return UVMQTT_EBADCONNECT;
  if (!c->will && (c->will_qos || c->will_retain)) return UVMQTT_EBADCONNECT;
  if (c->will_qos == 3) return UVMQTT_EBADQOS;
  if (c->protocol_level != UVMQTT_V5 && c->has_password && !c->has_username) {
    return UVMQTT_EBADCONNECT;
  }

  int v5 = c->protocol_level == UVMQTT_V5;
  if (v5 && (err = rd_props(r, UVMQTT_PROPS_CONNECT, &pkt->props))) return err;
  if ((err = rd_string(r, &c->client_id))) return err;
  /* A 3.1 server may accept longer ids, but never an empty one. */
  if (v31 && c->client_id.len == 0) return UVMQTT_ECLIENTID;
  if (c->will) {
    if (v5 && (err = rd_props(r, UVMQTT_PROPS_WILL, &c->will_props))) return err;
    if ((err = rd_bytes(r, &c->will_topic))) return err;
    if (c->will_topic.len == 0) return UVMQTT_EBADTOPIC;
    if ((err = check_topic_name(c->will_topic.data, c->will_topic.len))) return err;
    if ((err = rd_bytes(r, &c->will_payload))) return err;
  }
  if (c->has_username && (err = rd_string(r, &c->username))) return err;
  if (c->has_password && (err = rd_bytes(r, &c->password))) return err;
  return 0;
}

static int decode_connack(rd_t *r, uint8_t version, uvmqtt_packet_t *pkt) {
  uint8_t flags;
  int err = rd_u8(r, &flags);
  if (!err) err = rd_u8(r, &pkt->reason);
  if (err) return err;
  /* In MQTT 3.1 the first byte is reserved and carries no Session Present
   * flag: the client cannot learn whether a session was kept. */
  if (version == UVMQTT_V31) flags = 0;
  if (flags & 0xFE) return UVMQTT_EBADFLAGS;
  pkt->session_present = flags;
  if (!reason_ok(UVMQTT_CONNACK, version, pkt->reason)) return UVMQTT_EBADREASON;
  /* A refused connection never has a session ([MQTT-3.2.2-4], [MQTT-3.2.2-6]). */
  if (pkt->session_present && pkt->reason) return UVMQTT_EPROTOCOL;
  if (version == UVMQTT_V5) return rd_props(r, UVMQTT_PROPS_CONNACK, &pkt->props);
  return 0;
}

/* The hot path: every check is inline except the UTF-8 scan of the topic. */
static int decode_publish(rd_t *r, uint8_t header, uint8_t version, uvmqtt_packet_t *pkt) {
  uvmqtt_publish_t *pub = &pkt->u.publish;
  int err;
  pub->qos = (header >> 1) & 3;
  pub->retain = header & 1;
  pub->dup = (header >> 3) & 1;
  if ((err = rd_bytes(r, &pub->topic))) return err;
  if (pub->topic.len && (err = check_topic_name(pub->topic.data, pub->topic.len))) return err;
  if (pub->qos && (err = rd_packet_id(r, &pkt->packet_id))) return err;
  if (version == UVMQTT_V5) {
    if ((err = rd_props(r, UVMQTT_PROPS_PUBLISH, &pkt->props))) return err;
    /* An empty topic needs a Topic Alias to stand for it ([MQTT-3.3.2-1]). */
    if (pub->topic.len == 0 && !UVMQTT_HAS(&pkt->props, UVMQTT_PROP_TOPIC_ALIAS)) {
      return UVMQTT_EBADTOPIC;
    }
  } else if (pub->topic.len == 0) {
    return UVMQTT_EBADTOPIC;
  }
  pub->payload.data = r->p;
  pub->payload.len = (uint32_t)rd_left(r);
  r->p = r->end;
  return 0;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP. In MQTT 5.0 a remaining length of 2 means
 * reason 0 without properties and 3 means a reason without properties
 * (section 3.4.2.1). */
static int decode_ack(rd_t *r, uint8_t type, uint8_t version, uvmqtt_packet_t *pkt) {
  int err = rd_packet_id(r, &pkt->packet_id);
  if (err) return err;
  if (version != UVMQTT_V5 || rd_left(r) == 0) return 0;
  rd_u8(r, &pkt->reason);
  if (!reason_ok(type, version, pkt->reason)) return UVMQTT_EBADREASON;
  if (rd_left(r) == 0) return 0;
  return rd_props(r, UVMQTT_PROPS_PUBACK, &pkt->props);
}

/* SUBSCRIBE and UNSUBSCRIBE: checks every filter, counts them and keeps the
 * list as `raw` for uvmqtt_subs_next(). */
static int decode_subscribe(rd_t *r, uint8_t type, uint8_t version, uvmqtt_packet_t *pkt) {
  uvmqtt_subscribe_t *s = &pkt->u.subscribe;
  int err = rd_packet_id(r, &pkt->packet_id);
  if (err) return err;
  if (version == UVMQTT_V5) {
    uvmqtt_props_kind_t kind =
        type == UVMQTT_SUBSCRIBE ? UVMQTT_PROPS_SUBSCRIBE : UVMQTT_PROPS_UNSUBSCRIBE;
    if ((err = rd_props(r, kind, &pkt->props))) return err;
  }
  s->raw.data = r->p;
  s->raw.len = (uint32_t)rd_left(r);
  if (rd_left(r) == 0) return UVMQTT_ENOFILTERS;
  while (rd_left(r) > 0) {
    uvmqtt_bytes_t filter;
    if ((err = rd_bytes(r, &filter))) return err;
    if ((err = check_filter(filter))) return err;
    if (type == UVMQTT_SUBSCRIBE) {
      uint8_t opt;
      if ((err = rd_u8(r, &opt))) return err;
      if ((err = check_subopt(version, opt, filter))) return err;
    }
    s->count++;
  }
  return 0;
}

/* SUBACK and UNSUBACK (a v3.1.1 UNSUBACK carries only the packet id). */
static int decode_suback(rd_t *r, uint8_t type, uint8_t version, uvmqtt_packet_t *pkt) {
  int err = rd_packet_id(r, &pkt->packet_id);
  if (err) return err;
  if (type == UVMQTT_UNSUBACK && version != UVMQTT_V5) return 0;
  if (version == UVMQTT_V5 && (err = rd_props(r, UVMQTT_PROPS_SUBACK, &pkt->props))) return err;
  uvmqtt_suback_t *s = &pkt->u.suback;
  s->codes = r->p;
  s->count = (uint32_t)rd_left(r);
  /* One code answers each filter, and a request has at least one. */
  if (s->count == 0) return UVMQTT_EMALFORMED;
  for (uint32_t i = 0; i < s->count; i++) {
    if (!reason_ok(type, version, s->codes[i])) return UVMQTT_EBADREASON;
  }
  r->p = r->end;
  return 0;
}

/* DISCONNECT and AUTH in MQTT 5.0: an empty body means reason 0, one byte is
 * a reason without properties. */
static int decode_reason_props(rd_t *r, uint8_t type, uvmqtt_packet_t *pkt) {
  if (rd_left(r) == 0) return 0;
  rd_u8(r, &pkt->reason);
  if (!reason_ok_v5(type, pkt->reason)) return UVMQTT_EBADREASON;
  if (rd_left(r) == 0) return 0;
  return rd_props(r, type == UVMQTT_AUTH ? UVMQTT_PROPS_AUTH : UVMQTT_PROPS_DISCONNECT,
                  &pkt->props);
}

/* Decodes the body b[0..n) of a packet whose first byte `header` already
 * passed check_header(). Views in *pkt point into b. */
static int decode_body(uint8_t header, const uint8_t *b, size_t n, uint8_t version,
                       uvmqtt_packet_t *pkt) {
  rd_t r = {b, b + n};
  uint8_t type = header >> 4;
  int err;
  pkt->type = type;
  pkt->reason = 0;
  pkt->session_present = 0;
  pkt->packet_id = 0;
  pkt->props.has = 0;
  if (type == UVMQTT_PUBLISH) {
    /* Only the property fields need clearing: the publish view is set whole. */
    if (version != UVMQTT_V5) pkt->props = uvmqtt__no_props;
    err = decode_publish(&r, header, version, pkt);
    return err ? err : 0;
  }
  pkt->props = uvmqtt__no_props;
  memset(&pkt->u, 0, sizeof(pkt->u));
  switch (type) {
  case UVMQTT_CONNECT: err = decode_connect(&r, pkt); break;
  case UVMQTT_CONNACK: err = decode_connack(&r, version, pkt); break;
  case UVMQTT_PUBACK:
  case UVMQTT_PUBREC:
  case UVMQTT_PUBREL:
  case UVMQTT_PUBCOMP: err = decode_ack(&r, type, version, pkt); break;
  case UVMQTT_SUBSCRIBE:
  case UVMQTT_UNSUBSCRIBE: err = decode_subscribe(&r, type, version, pkt); break;
  case UVMQTT_SUBACK:
  case UVMQTT_UNSUBACK: err = decode_suback(&r, type, version, pkt); break;
  case UVMQTT_PINGREQ:
  case UVMQTT_PINGRESP: return n == 0 ? 0 : UVMQTT_EMALFORMED;
  case UVMQTT_DISCONNECT:
    if (version != UVMQTT_V5) return n == 0 ? 0 : UVMQTT_EMALFORMED;
    err = decode_reason_props(&r, type, pkt);
    break;
  default: err = decode_reason_props(&r, type, pkt); break;
  }
  if (err) return err;
  return rd_left(&r) == 0 ? 0 : UVMQTT_ETRAILING;
}

int uvmqtt_decode_packet(const uint8_t *data, size_t len, uint8_t version, uvmqtt_packet_t *pkt) {
  if (version != 0 && !version_ok(version)) return UVMQTT_EINVAL;
  if (len == 0) return UVMQTT_ESHORT;
  int err = check_header(data[0], version);
  if (err) return err;
  uint32_t remaining = 0;
  size_t i = 1;
  for (;;) {
    if (i >= len) return UVMQTT_ESHORT;
    uint8_t b = data[i++];
    remaining |= (uint32_t)(b & 0x7F) << (7 * (i - 2));
    if (!(b & 0x80)) {
      if (b == 0 && i > 2) return UVMQTT_EMALFORMED;
      break;
    }
    if (i == 5) return UVMQTT_EREMLEN;
  }
  if (remaining > len - i) return UVMQTT_ESHORT;
  if (remaining < len - i) return UVMQTT_ETRAILING;
  return decode_body(data[0], data + i, remaining, version, pkt);
}

static void release(uvmqtt_decoder_t *dec) {
  if (dec->buf_owned && dec->mem.free != NULL) dec->mem.free(dec->mem.user_data, dec->buf);
  dec->buf = NULL;
  dec->buf_owned = 0;
}

static ssize_t fail(uvmqtt_decoder_t *dec, int err) {
  release(dec);
  dec->state = ST_TYPE;
  dec->error = err;
  return err;
}

/* Finds room for a body that did not arrive whole: the scratch buffer when it
 * fits, else one allocation of exactly the body's size. */
static int obtain(uvmqtt_decoder_t *dec) {
  if (dec->scratch != NULL && dec->remaining <= dec->scratch_size) {
    dec->buf = dec->scratch;
    return 0;
  }
  if (dec->mem.alloc == NULL) return UVMQTT_ENOMEM;
  dec->buf = dec->mem.alloc(dec->mem.user_data, dec->remaining);
  if (dec->buf == NULL) return UVMQTT_ENOMEM;
  dec->buf_owned = 1;
  return 0;
}

static int finish(uvmqtt_decoder_t *dec, const uint8_t *body, uvmqtt_packet_t *pkt) {
  int err = decode_body(dec->header, body, dec->remaining, dec->version, pkt);
  if (err) return err;
  if (dec->version == 0) dec->version = pkt->u.connect.protocol_level;
  return 0;
}

void uvmqtt_decoder_init(uvmqtt_decoder_t *dec, uint8_t version, uint32_t max_packet_size,
                         const uvmqtt_codec_mem_t *mem) {
  memset(dec, 0, sizeof(*dec));
  dec->version = version;
  dec->max_packet_size = max_packet_size;
  if (mem != NULL) dec->mem = *mem;
  dec->state = ST_TYPE;
}

void uvmqtt_decoder_reset(uvmqtt_decoder_t *dec) {
  release(dec);
  dec->state = ST_TYPE;
  dec->error = 0;
  dec->filled = 0;
  dec->remaining = 0;
}

int uvmqtt_decoder_busy(const uvmqtt_decoder_t *dec) {
  return dec->state != ST_TYPE;
}

ssize_t uvmqtt_decode(uvmqtt_decoder_t *dec, const uint8_t *in, size_t len, uvmqtt_packet_t *pkt,
                      int *got) {
  *got = 0;
  if (dec->error) return dec->error;
  /* The views of the packet handed out last end here. */
  if (dec->state == ST_TYPE && dec->buf != NULL) release(dec);
  if (dec->version != 0 && !version_ok(dec->version)) return fail(dec, UVMQTT_EINVAL);

  int err;
  /* Fast path for the common small packet: a one-byte remaining length and
   * the whole packet in the input skip the byte-by-byte header states. */
  if (dec->state == ST_TYPE && len >= 2 && in[1] < 0x80 && (size_t)in[1] <= len - 2) {
    if ((err = check_header(in[0], dec->version))) return fail(dec, err);
    dec->header = in[0];
    dec->len_bytes = 1;
    dec->remaining = in[1];
    if (dec->max_packet_size != 0 && 2u + dec->remaining > dec->max_packet_size) {
      return fail(dec, UVMQTT_ETOOLARGE);
    }
    if ((err = finish(dec, in + 2, pkt))) return fail(dec, err);
    *got = 1;
    return (ssize_t)(2 + dec->remaining);
  }

  size_t pos = 0;
  while (pos < len) {
    switch (dec->state) {
    case ST_TYPE:
      if ((err = check_header(in[pos], dec->version))) return fail(dec, err);
      dec->header = in[pos++];
      dec->remaining = 0;
      dec->multiplier = 1;
      dec->len_bytes = 0;
      dec->state = ST_LENGTH;
      break;

    case ST_LENGTH: {
      uint8_t b = in[pos++];
      dec->remaining += (b & 0x7Fu) * dec->multiplier;
      dec->len_bytes++;
      if (b & 0x80) {
        if (dec->len_bytes == 4) return fail(dec, UVMQTT_EREMLEN);
        dec->multiplier <<= 7;
        break;
      }
      if (b == 0 && dec->len_bytes > 1) return fail(dec, UVMQTT_EMALFORMED);
      uint64_t max = dec->max_packet_size ? dec->max_packet_size : MAX_PACKET;
      if (1u + dec->len_bytes + (uint64_t)dec->remaining > max) {
        return fail(dec, UVMQTT_ETOOLARGE);
      }
      if (len - pos >= dec->remaining) {
        /* The whole body is in the input: decode it in place. */
        dec->state = ST_TYPE;
        if ((err = finish(dec, in + pos, pkt))) return fail(dec, err);
        *got = 1;
        return (ssize_t)(pos + dec->remaining);
      }
      if ((err = obtain(dec))) return fail(dec, err);
      dec->filled = 0;
      dec->state = ST_BODY;
      break;
    }

    default: {
      size_t n = dec->remaining - dec->filled;
      if (n > len - pos) n = len - pos;
      memcpy(dec->buf + dec->filled, in + pos, n);
      pos += n;
      dec->filled += (uint32_t)n;
      if (dec->filled == dec->remaining) {
        dec->state = ST_TYPE;
        if ((err = finish(dec, dec->buf, pkt))) return fail(dec, err);
        *got = 1;
        return (ssize_t)pos;
      }
      break;
    }
    }
  }
  return (ssize_t)pos;
}

/* ---- Encoding --------------------------------------------------------------- */

/* Sizes (p == NULL) or writes a packet body. Both passes run the same code, so
 * the write pass cannot disagree with the size the caller made room for.
 * With `checked` set, the string scans (UTF-8, wildcards) are skipped: the
 * write pass after a sizing pass that ran them, or a packet the caller had
 * uvmqtt_encode_size() accept already. */
typedef struct {
  uint8_t *p;
  size_t n;
  uint8_t checked;
} wr_t;

static inline void w_u8(wr_t *w, uint8_t v) {
  if (w->p != NULL) w->p[w->n] = v;
  w->n++;
}

static inline void w_u16(wr_t *w, uint16_t v) {
  if (w->p != NULL) uvmqtt__put16(w->p + w->n, v);
  w->n += 2;
}

static int bytes_ok(uvmqtt_bytes_t b) {
  return b.len <= UVMQTT__MAX_STRING && (b.len == 0 || b.data != NULL);
}

static void w_raw(wr_t *w, uvmqtt_bytes_t b) {
  if (w->p != NULL && b.len) memcpy(w->p + w->n, b.data, b.len);
  w->n += b.len;
}

static int w_bytes(wr_t *w, uvmqtt_bytes_t b) {
  if (!bytes_ok(b)) return UVMQTT_EINVAL;
  w_u16(w, (uint16_t)b.len);
  w_raw(w, b);
  return 0;
}

static int w_string(wr_t *w, uvmqtt_bytes_t s) {
  if (!bytes_ok(s)) return UVMQTT_EINVAL;
  int err = w->checked ? 0 : uvmqtt_utf8_check(s.data, s.len);
  if (err) return err;
  return w_bytes(w, s);
}

static int w_props(wr_t *w, const uvmqtt_props_t *props, uvmqtt_props_kind_t kind) {
  uint32_t block;
  int err = uvmqtt__props_measure(props, kind, &block);
  if (err) return err;
  if (w->p != NULL) {
    w->n += uvmqtt__props_write(props, kind, block, w->p + w->n);
  } else {
    w->n += (size_t)uvmqtt_varint_size(block) + block;
  }
  return 0;
}

static int w_packet_id(wr_t *w, uint16_t id) {
  if (id == 0) return UVMQTT_EPACKETID;
  w_u16(w, id);
  return 0;
}

static int put_connect(const uvmqtt_connect_t *c, const uvmqtt_props_t *props, uint8_t level,
                       wr_t *w) {
  static const uint8_t name[] = {0, 4, 'M', 'Q', 'T', 'T'};
  static const uint8_t name31[] = {0, 6, 'M', 'Q', 'I', 's', 'd', 'p'};
  int err;
  if (level == UVMQTT_V31 && (c->client_id.len == 0 || c->client_id.len > V31_MAX_CLIENT_ID))
    return UVMQTT_ECLIENTID;
  if (c->will) {
    if (c->will_qos > 2) return UVMQTT_EBADQOS;
  } else if (c->will_qos || c->will_retain) {
    return UVMQTT_EBADCONNECT;
  }
  if (level != UVMQTT_V5 && c->has_password && !c->has_username) return UVMQTT_EBADCONNECT;
  uint8_t flags = (uint8_t)((c->clean_start ? 0x02 : 0) | (c->will ? 0x04 : 0) |
                            (c->will ? c->will_qos << 3 : 0) | (c->will_retain ? 0x20 : 0) |
                            (c->has_password ? 0x40 : 0) | (c->has_username ? 0x80 : 0));
  if (level == UVMQTT_V31)
    w_raw(w, (uvmqtt_bytes_t){name31, sizeof(name31)});
  else
    w_raw(w, (uvmqtt_bytes_t){name, sizeof(name)});
  w_u8(w, level);
  w_u8(w, flags);
  w_u16(w, c->keep_alive);
  if (level == UVMQTT_V5 && (err = w_props(w, props, UVMQTT_PROPS_CONNECT))) return err;
  if ((err = w_string(w, c->client_id))) return err;
  if (c->will) {
    if (level == UVMQTT_V5 && (err = w_props(w, &c->will_props, UVMQTT_PROPS_WILL))) return err;
    if (c->will_topic.len == 0) return UVMQTT_EBADTOPIC;
    if (!bytes_ok(c->will_topic)) return UVMQTT_EINVAL;
    if ((err = check_topic_name(c->will_topic.data, c->will_topic.len))) return err;
    if ((err = w_bytes(w, c->will_topic))) return err;
    if ((err = w_bytes(w, c->will_payload))) return err;
  }
  if (c->has_username && (err = w_string(w, c->username))) return err;
  if (c->has_password && (err = w_bytes(w, c->password))) return err;
  return 0;
}

static int put_publish(const uvmqtt_packet_t *pkt, uint8_t version, wr_t *w) {
  const uvmqtt_publish_t *pub = &pkt->u.publish;
  int err;
  if (pub->qos > 2) return UVMQTT_EBADQOS;
  if (pub->qos == 0 && pub->dup) return UVMQTT_EBADFLAGS;
  if (!bytes_ok(pub->topic)) return UVMQTT_EINVAL;
  if (pub->topic.len == 0) {
    if (version != UVMQTT_V5 || !UVMQTT_HAS(&pkt->props, UVMQTT_PROP_TOPIC_ALIAS)) {
      return UVMQTT_EBADTOPIC;
    }
  } else if (!w->checked && (err = check_topic_name(pub->topic.data, pub->topic.len))) {
    return err;
  }
  if (pub->payload.len && pub->payload.data == NULL) return UVMQTT_EINVAL;
  if ((err = w_bytes(w, pub->topic))) return err;
  if (pub->qos && (err = w_packet_id(w, pkt->packet_id))) return err;
  if (version == UVMQTT_V5) return w_props(w, &pkt->props, UVMQTT_PROPS_PUBLISH);
  return 0;
}

/* Acks, DISCONNECT and AUTH in MQTT 5.0 take their shortest form: the reason
 * goes only when it is not 0 or properties follow, properties only when there
 * are some. */
static int put_reason_props(const uvmqtt_packet_t *pkt, uvmqtt_props_kind_t kind, wr_t *w) {
  if (!reason_ok_v5(pkt->type, pkt->reason)) return UVMQTT_EBADREASON;
  if (uvmqtt__props_empty(&pkt->props)) {
    if (pkt->reason) w_u8(w, pkt->reason);
    return 0;
  }
  w_u8(w, pkt->reason);
  return w_props(w, &pkt->props, kind);
}

/* Yields filter `*index` of a SUBSCRIBE or UNSUBSCRIBE: from `subs`, or, for
 * a decoded packet being encoded again, from `raw`. */
static int sub_at(const uvmqtt_packet_t *pkt, uint32_t *index, size_t *offset,
                  uvmqtt_topic_sub_t *out) {
  const uvmqtt_subscribe_t *s = &pkt->u.subscribe;
  if (*index >= s->count) return 0;
  (*index)++;
  if (s->subs != NULL) {
    *out = s->subs[*index - 1];
    return 1;
  }
  int r = uvmqtt_subs_next(pkt->type, s->raw, offset, out);
  return r == 0 ? UVMQTT_EINVAL : r;
}

static int put_subscribe(const uvmqtt_packet_t *pkt, uint8_t version, wr_t *w) {
  int err = w_packet_id(w, pkt->packet_id);
  if (err) return err;
  int sub = pkt->type == UVMQTT_SUBSCRIBE;
  if (version == UVMQTT_V5) {
    err = w_props(w, &pkt->props, sub ? UVMQTT_PROPS_SUBSCRIBE : UVMQTT_PROPS_UNSUBSCRIBE);
    if (err) return err;
  }
  if (pkt->u.subscribe.count == 0) return UVMQTT_ENOFILTERS;
  uint32_t index = 0;
  size_t offset = 0;
  uvmqtt_topic_sub_t ts;
  while ((err = sub_at(pkt, &index, &offset, &ts)) == 1) {
    if (!bytes_ok(ts.filter)) return UVMQTT_EINVAL;
    if ((err = check_filter(ts.filter))) return err;
    if ((err = w_bytes(w, ts.filter))) return err;
    if (sub) {
      if ((err = check_subopt(version, ts.options, ts.filter))) return err;
      w_u8(w, ts.options);
    }
  }
  return err;
}

static int put_suback(const uvmqtt_packet_t *pkt, uint8_t version, wr_t *w) {
  const uvmqtt_suback_t *s = &pkt->u.suback;
  int err = w_packet_id(w, pkt->packet_id);
  if (err) return err;
  if (pkt->type == UVMQTT_UNSUBACK && version != UVMQTT_V5) return 0;
  if (version == UVMQTT_V5 && (err = w_props(w, &pkt->props, UVMQTT_PROPS_SUBACK))) return err;
  if (s->count == 0) return UVMQTT_EMALFORMED;
  if (s->codes == NULL) return UVMQTT_EINVAL;
  for (uint32_t i = 0; i < s->count; i++) {
    if (!reason_ok_out(pkt->type, version, s->codes[i])) return UVMQTT_EBADREASON;
  }
  w_raw(w, (uvmqtt_bytes_t){s->codes, s->count});
  return 0;
}

/* Everything after the fixed header except a PUBLISH payload. */
static int put_body(const uvmqtt_packet_t *pkt, uint8_t version, wr_t *w) {
  int err;
  switch (pkt->type) {
  case UVMQTT_CONNECT: return put_connect(&pkt->u.connect, &pkt->props, version, w);
  case UVMQTT_CONNACK:
    if (pkt->session_present > 1) return UVMQTT_EBADFLAGS;
    if (!reason_ok(UVMQTT_CONNACK, version, pkt->reason)) return UVMQTT_EBADREASON;
    if (pkt->session_present && pkt->reason) return UVMQTT_EPROTOCOL;
    w_u8(w, pkt->session_present);
    w_u8(w, pkt->reason);
    return version == UVMQTT_V5 ? w_props(w, &pkt->props, UVMQTT_PROPS_CONNACK) : 0;
  case UVMQTT_PUBLISH: return put_publish(pkt, version, w);
  case UVMQTT_PUBACK:
  case UVMQTT_PUBREC:
  case UVMQTT_PUBREL:
  case UVMQTT_PUBCOMP:
    if ((err = w_packet_id(w, pkt->packet_id))) return err;
    if (version != UVMQTT_V5) return pkt->reason ? UVMQTT_EBADREASON : 0;
    return put_reason_props(pkt, UVMQTT_PROPS_PUBACK, w);
  case UVMQTT_SUBSCRIBE:
  case UVMQTT_UNSUBSCRIBE: return put_subscribe(pkt, version, w);
  case UVMQTT_SUBACK:
  case UVMQTT_UNSUBACK: return put_suback(pkt, version, w);
  case UVMQTT_PINGREQ:
  case UVMQTT_PINGRESP: return 0;
  case UVMQTT_DISCONNECT:
    if (version != UVMQTT_V5) return pkt->reason ? UVMQTT_EBADREASON : 0;
    return put_reason_props(pkt, UVMQTT_PROPS_DISCONNECT, w);
  case UVMQTT_AUTH:
    if (version != UVMQTT_V5) return UVMQTT_EBADTYPE;
    return put_reason_props(pkt, UVMQTT_PROPS_AUTH, w);
  default: return UVMQTT_EBADTYPE;
  }
}

static uint8_t header_byte(const uvmqtt_packet_t *pkt) {
  uint8_t flags = 0;
  switch (pkt->type) {
  case UVMQTT_PUBLISH:
    flags = (uint8_t)((pkt->u.publish.dup ? 0x08 : 0) | (pkt->u.publish.qos << 1) |
                      (pkt->u.publish.retain ? 0x01 : 0));
    break;
  case UVMQTT_PUBREL:
  case UVMQTT_SUBSCRIBE:
  case UVMQTT_UNSUBSCRIBE: flags = 0x02; break;
  default: break;
  }
  return (uint8_t)(pkt->type << 4 | flags);
}

enum { ENC_SIZE, ENC_ALL, ENC_HEADER, ENC_CHECKED };

/* Validates and sizes `pkt`, then (unless `mode` is ENC_SIZE) writes all of
 * it or everything but the PUBLISH payload. */
static ssize_t encode(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf, size_t cap,
                      int mode) {
  if (pkt->type == UVMQTT_CONNECT) {
    if (pkt->u.connect.protocol_level != 0) version = pkt->u.connect.protocol_level;
    if (!version_ok(version)) return UVMQTT_EBADPROTO;
  } else if (!version_ok(version)) {
    return UVMQTT_EINVAL;
  }
  wr_t w = {NULL, 0, mode == ENC_CHECKED};
  int err = put_body(pkt, version, &w);
  if (err) return err;
  size_t payload = pkt->type == UVMQTT_PUBLISH ? pkt->u.publish.payload.len : 0;
  uint64_t remaining = (uint64_t)w.n + payload;
  if (remaining > UVMQTT_MAX_REMAINING_LENGTH) return UVMQTT_ETOOLARGE;
  size_t head = 1 + (size_t)uvmqtt_varint_size((uint32_t)remaining);
  size_t need = head + w.n + (mode == ENC_HEADER ? 0 : payload);
  if (mode == ENC_SIZE) return (ssize_t)need;
  if (cap < need) return UVMQTT_ENOBUFS;

  buf[0] = header_byte(pkt);
  uvmqtt__varint_write(buf + 1, (uint32_t)remaining);
  w.p = buf + head;
  w.n = 0;
  w.checked = 1;
  put_body(pkt, version, &w);
  if (mode != ENC_HEADER && payload) memcpy(buf + head + w.n, pkt->u.publish.payload.data, payload);
  return (ssize_t)need;
}

ssize_t uvmqtt_encode_size(const uvmqtt_packet_t *pkt, uint8_t version) {
  return encode(pkt, version, NULL, 0, ENC_SIZE);
}

ssize_t uvmqtt_encode(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf, size_t cap) {
  return encode(pkt, version, buf, cap, ENC_ALL);
}

ssize_t uvmqtt__encode_checked(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf,
                               size_t cap) {
  return encode(pkt, version, buf, cap, ENC_CHECKED);
}

ssize_t uvmqtt_encode_publish_header(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf,
                                     size_t cap) {
  if (pkt->type != UVMQTT_PUBLISH) return UVMQTT_EINVAL;
  return encode(pkt, version, buf, cap, ENC_HEADER);
}

int uvmqtt_varint_size(uint32_t n) {
  return uvmqtt__varint_size(n);
}

int uvmqtt_subs_next(uint8_t type, uvmqtt_bytes_t raw, size_t *offset, uvmqtt_topic_sub_t *out) {
  if (*offset >= raw.len) return 0;
  rd_t r = {raw.data + *offset, raw.data + raw.len};
  int err = rd_bytes(&r, &out->filter);
  if (err) return err;
  out->options = 0;
  if (type == UVMQTT_SUBSCRIBE && (err = rd_u8(&r, &out->options))) return err;
  *offset = (size_t)(r.p - raw.data);
  return 1;
}
