/* MQTT 5.0 properties: the table of identifiers, types and the packets that
 * may carry each (MQTT 5.0 section 2.2.2.2), decoding, validation and
 * encoding. */
#include <stddef.h>
#include <string.h>

#include "codec/codec_internal.h"

enum { T_NONE, T_BYTE, T_U16, T_U32, T_VARINT, T_STR, T_BIN, T_PAIR };

/* Value rules beyond the type. */
enum {
  V_BOOL = 1,    /* only 0 or 1 */
  V_NONZERO = 2, /* 0 is a protocol error */
  V_TOPIC = 4    /* a topic name: no wildcards */
};

#define K(kind) (1u << (kind))
#define K_ACKS  K(UVMQTT_PROPS_PUBACK)
#define K_ALL                                                                                      \
  (K(UVMQTT_PROPS_CONNECT) | K(UVMQTT_PROPS_CONNACK) | K(UVMQTT_PROPS_PUBLISH) | K_ACKS |          \
   K(UVMQTT_PROPS_SUBSCRIBE) | K(UVMQTT_PROPS_SUBACK) | K(UVMQTT_PROPS_UNSUBSCRIBE) |              \
   K(UVMQTT_PROPS_DISCONNECT) | K(UVMQTT_PROPS_AUTH) | K(UVMQTT_PROPS_WILL))
#define K_MSG (K(UVMQTT_PROPS_PUBLISH) | K(UVMQTT_PROPS_WILL))

#define NPROPS 0x2B

typedef struct {
  uint8_t type;
  uint8_t rules;
  uint16_t offset; /* of the field holding the value in uvmqtt_props_t */
  uint32_t kinds;  /* bit K(kind) for every packet that may carry it */
} prop_info_t;

#define P(id, type, rules, field, kinds)                                                           \
  [id] = {type, rules, (uint16_t)offsetof(uvmqtt_props_t, field), kinds}

static const prop_info_t props_table[NPROPS] = {
    P(UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR, T_BYTE, V_BOOL, payload_format_indicator, K_MSG),
    P(UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL, T_U32, 0, message_expiry_interval, K_MSG),
    P(UVMQTT_PROP_CONTENT_TYPE, T_STR, 0, content_type, K_MSG),
    P(UVMQTT_PROP_RESPONSE_TOPIC, T_STR, V_TOPIC, response_topic, K_MSG),
    P(UVMQTT_PROP_CORRELATION_DATA, T_BIN, 0, correlation_data, K_MSG),
    P(UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER, T_VARINT, V_NONZERO, subscription_id,
      K(UVMQTT_PROPS_PUBLISH) | K(UVMQTT_PROPS_SUBSCRIBE)),
    P(UVMQTT_PROP_SESSION_EXPIRY_INTERVAL, T_U32, 0, session_expiry_interval,
      K(UVMQTT_PROPS_CONNECT) | K(UVMQTT_PROPS_CONNACK) | K(UVMQTT_PROPS_DISCONNECT)),
    P(UVMQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER, T_STR, 0, assigned_client_identifier,
      K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_SERVER_KEEP_ALIVE, T_U16, 0, server_keep_alive, K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_AUTHENTICATION_METHOD, T_STR, 0, authentication_method,
      K(UVMQTT_PROPS_CONNECT) | K(UVMQTT_PROPS_CONNACK) | K(UVMQTT_PROPS_AUTH)),
    P(UVMQTT_PROP_AUTHENTICATION_DATA, T_BIN, 0, authentication_data,
      K(UVMQTT_PROPS_CONNECT) | K(UVMQTT_PROPS_CONNACK) | K(UVMQTT_PROPS_AUTH)),
    P(UVMQTT_PROP_REQUEST_PROBLEM_INFORMATION, T_BYTE, V_BOOL, request_problem_information,
      K(UVMQTT_PROPS_CONNECT)),
    P(UVMQTT_PROP_WILL_DELAY_INTERVAL, T_U32, 0, will_delay_interval, K(UVMQTT_PROPS_WILL)),
    P(UVMQTT_PROP_REQUEST_RESPONSE_INFORMATION, T_BYTE, V_BOOL, request_response_information,
      K(UVMQTT_PROPS_CONNECT)),
    P(UVMQTT_PROP_RESPONSE_INFORMATION, T_STR, 0, response_information, K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_SERVER_REFERENCE, T_STR, 0, server_reference,
      K(UVMQTT_PROPS_CONNACK) | K(UVMQTT_PROPS_DISCONNECT)),
    P(UVMQTT_PROP_REASON_STRING, T_STR, 0, reason_string,
      K(UVMQTT_PROPS_CONNACK) | K_ACKS | K(UVMQTT_PROPS_SUBACK) | K(UVMQTT_PROPS_DISCONNECT) |
          K(UVMQTT_PROPS_AUTH)),
    P(UVMQTT_PROP_RECEIVE_MAXIMUM, T_U16, V_NONZERO, receive_maximum,
      K(UVMQTT_PROPS_CONNECT) | K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM, T_U16, 0, topic_alias_maximum,
      K(UVMQTT_PROPS_CONNECT) | K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_TOPIC_ALIAS, T_U16, V_NONZERO, topic_alias, K(UVMQTT_PROPS_PUBLISH)),
    P(UVMQTT_PROP_MAXIMUM_QOS, T_BYTE, V_BOOL, maximum_qos, K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_RETAIN_AVAILABLE, T_BYTE, V_BOOL, retain_available, K(UVMQTT_PROPS_CONNACK)),
    /* User Property has no single field: the offset is unused. */
    P(UVMQTT_PROP_USER_PROPERTY, T_PAIR, 0, raw, K_ALL),
    P(UVMQTT_PROP_MAXIMUM_PACKET_SIZE, T_U32, V_NONZERO, maximum_packet_size,
      K(UVMQTT_PROPS_CONNECT) | K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_WILDCARD_SUBSCRIPTION_AVAILABLE, T_BYTE, V_BOOL, wildcard_subscription_available,
      K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER_AVAILABLE, T_BYTE, V_BOOL,
      subscription_identifier_available, K(UVMQTT_PROPS_CONNACK)),
    P(UVMQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE, T_BYTE, V_BOOL, shared_subscription_available,
      K(UVMQTT_PROPS_CONNACK)),
};

const uvmqtt_props_t uvmqtt__no_props;

static inline const prop_info_t *lookup(uint8_t id) {
  if (id >= NPROPS || props_table[id].type == T_NONE) return NULL;
  return &props_table[id];
}

/* 1 if `id` may appear more than once in a property set of `kind`. */
static inline int repeatable(uint8_t id, uvmqtt_props_kind_t kind) {
  return id == UVMQTT_PROP_USER_PROPERTY ||
         (id == UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER && kind == UVMQTT_PROPS_PUBLISH);
}

static inline int check_number(const prop_info_t *info, uint32_t v) {
  if ((info->rules & V_BOOL) && v > 1) return UVMQTT_EPROPVALUE;
  if ((info->rules & V_NONZERO) && v == 0) return UVMQTT_EPROPVALUE;
  return 0;
}

static int check_string(const prop_info_t *info, uvmqtt_bytes_t s) {
  int err = uvmqtt_utf8_check(s.data, s.len);
  if (err) return err;
  if (info->rules & V_TOPIC) {
    /* A Response Topic is a topic name ([MQTT-3.3.2-14]). */
    if (s.len == 0) return UVMQTT_EBADTOPIC;
    for (uint32_t i = 0; i < s.len; i++) {
      if (s.data[i] == '+' || s.data[i] == '#') return UVMQTT_ETOPICWILD;
    }
  }
  return 0;
}

/* Reads a two-byte length and that many bytes from [*p, end). */
static inline int read_bytes(const uint8_t **p, const uint8_t *end, uvmqtt_bytes_t *out) {
  if (end - *p < 2) return UVMQTT_EPROPLEN;
  uint32_t n = uvmqtt__get16(*p);
  if ((size_t)(end - *p) - 2 < n) return UVMQTT_EPROPLEN;
  out->data = *p + 2;
  out->len = n;
  *p += 2 + n;
  return 0;
}

/* Reads the value of a property of type `type` at [*p, end). */
static int read_value(uint8_t type, const uint8_t **p, const uint8_t *end, uvmqtt_prop_t *out) {
  size_t left = (size_t)(end - *p);
  int n;
  switch (type) {
  case T_BYTE:
    if (left < 1) return UVMQTT_EPROPLEN;
    out->u32 = **p;
    *p += 1;
    return 0;
  case T_U16:
    if (left < 2) return UVMQTT_EPROPLEN;
    out->u32 = uvmqtt__get16(*p);
    *p += 2;
    return 0;
  case T_U32:
    if (left < 4) return UVMQTT_EPROPLEN;
    out->u32 = uvmqtt__get32(*p);
    *p += 4;
    return 0;
  case T_VARINT:
    n = uvmqtt__varint_read(*p, left, &out->u32);
    if (n == 0) return UVMQTT_EPROPLEN;
    if (n < 0) return n;
    *p += n;
    return 0;
  case T_STR:
  case T_BIN: return read_bytes(p, end, &out->str);
  default: n = read_bytes(p, end, &out->str); return n ? n : read_bytes(p, end, &out->value);
  }
}

int uvmqtt_props_next(uvmqtt_bytes_t raw, size_t *offset, uvmqtt_prop_t *out) {
  if (*offset >= raw.len) return 0;
  const uint8_t *p = raw.data + *offset;
  const uint8_t *end = raw.data + raw.len;
  const prop_info_t *info = lookup(*p);
  if (info == NULL) return UVMQTT_EBADPROP;
  memset(out, 0, sizeof(*out));
  out->id = *p++;
  int err = read_value(info->type, &p, end, out);
  if (err) return err;
  *offset = (size_t)(p - raw.data);
  return 1;
}

int uvmqtt__props_decode(const uint8_t *p, size_t avail, uvmqtt_props_kind_t kind,
                         uvmqtt_props_t *out, size_t *used) {
  *out = uvmqtt__no_props;
  uint32_t block;
  int n = uvmqtt__varint_read(p, avail, &block);
  if (n == 0) return UVMQTT_ESHORT;
  if (n < 0) return n;
  if (block > avail - (size_t)n) return UVMQTT_EPROPLEN;
  *used = (size_t)n + block;
  if (block == 0) return 0;

  const uint8_t *q = p + n;
  const uint8_t *end = q + block;
  out->raw.data = q;
  out->raw.len = block;
  uint32_t allowed = K(kind);
  /* One pass per property: bounds, value rules and the store together, as
   * this runs for every PUBLISH that carries properties. */
  while (q < end) {
    uint8_t id = *q++;
    const prop_info_t *info = lookup(id);
    if (info == NULL || !(info->kinds & allowed)) return UVMQTT_EBADPROP;
    uint64_t bit = 1ull << id;
    if ((out->has & bit) && !repeatable(id, kind)) return UVMQTT_EDUPPROP;
    out->has |= bit;

    size_t left = (size_t)(end - q);
    char *field = (char *)out + info->offset;
    uint32_t v;
    uvmqtt_bytes_t str, value;
    int err;
    switch (info->type) {
    case T_BYTE:
      if (left < 1) return UVMQTT_EPROPLEN;
      v = *q++;
      if ((err = check_number(info, v))) return err;
      *(uint8_t *)field = (uint8_t)v;
      break;
    case T_U16:
      if (left < 2) return UVMQTT_EPROPLEN;
      v = uvmqtt__get16(q);
      q += 2;
      if ((err = check_number(info, v))) return err;
      *(uint16_t *)field = (uint16_t)v;
      break;
    case T_U32:
      if (left < 4) return UVMQTT_EPROPLEN;
      v = uvmqtt__get32(q);
      q += 4;
      if ((err = check_number(info, v))) return err;
      *(uint32_t *)field = v;
      break;
    case T_VARINT:
      n = uvmqtt__varint_read(q, left, &v);
      if (n == 0) return UVMQTT_EPROPLEN;
      if (n < 0) return n;
      q += n;
      if ((err = check_number(info, v))) return err;
      /* Only the Subscription Identifier is a varint; the field keeps the
       * first one and the count reaches the rest. */
      if (out->sub_id_count++ == 0) out->subscription_id = v;
      break;
    case T_STR:
      if ((err = read_bytes(&q, end, &str))) return err;
      if ((err = check_string(info, str))) return err;
      *(uvmqtt_bytes_t *)field = str;
      break;
    case T_BIN:
      if ((err = read_bytes(&q, end, &str))) return err;
      *(uvmqtt_bytes_t *)field = str;
      break;
    default:
      if ((err = read_bytes(&q, end, &str)) || (err = read_bytes(&q, end, &value))) return err;
      if ((err = uvmqtt_utf8_check(str.data, str.len))) return err;
      if ((err = uvmqtt_utf8_check(value.data, value.len))) return err;
      out->user_count++;
      break;
    }
  }
  return 0;
}

/* Yields entry `*index` of a repeatable property: from the caller's array
 * when there is one, else (a decoded set being encoded again) by walking
 * `raw` from *offset. Returns 1, or 0 when the list ends. */
static int list_next(const uvmqtt_props_t *props, uint8_t id, uint32_t *index, size_t *offset,
                     uvmqtt_prop_t *out) {
  int user = id == UVMQTT_PROP_USER_PROPERTY;
  uint32_t count = user ? props->user_count : props->sub_id_count;
  if (*index >= count) return 0;
  if (user && props->user != NULL) {
    out->str = props->user[*index].key;
    out->value = props->user[*index].value;
  } else if (!user && props->sub_ids != NULL) {
    out->u32 = props->sub_ids[*index];
  } else {
    int r;
    while ((r = uvmqtt_props_next(props->raw, offset, out)) == 1 && out->id != id) {
    }
    if (r != 1) return r == 0 ? UVMQTT_EINVAL : r;
  }
  (*index)++;
  return 1;
}

static size_t put_bytes(uint8_t *out, uvmqtt_bytes_t b) {
  if (out != NULL) {
    uvmqtt__put16(out, (uint16_t)b.len);
    if (b.len) memcpy(out + 2, b.data, b.len);
  }
  return 2 + (size_t)b.len;
}

/* Validates and sizes (out == NULL) or writes one property value. */
static int put_value(const prop_info_t *info, uint8_t id, const uvmqtt_prop_t *v, uint8_t *out,
                     uint32_t *size) {
  uint8_t tmp[4];
  int err;
  size_t n = 1;
  if (out != NULL) *out++ = id;
  switch (info->type) {
  case T_BYTE:
  case T_U16:
  case T_U32:
  case T_VARINT:
    err = check_number(info, v->u32);
    if (err) return err;
    if (info->type == T_BYTE) {
      if (out != NULL) *out = (uint8_t)v->u32;
      n += 1;
    } else if (info->type == T_U16) {
      if (out != NULL) uvmqtt__put16(out, (uint16_t)v->u32);
      n += 2;
    } else if (info->type == T_U32) {
      if (out != NULL) uvmqtt__put32(out, v->u32);
      n += 4;
    } else {
      if (v->u32 > UVMQTT_MAX_REMAINING_LENGTH) return UVMQTT_EPROPVALUE;
      n += uvmqtt__varint_write(out != NULL ? out : tmp, v->u32);
    }
    break;
  case T_STR:
  case T_BIN:
    if (v->str.len > UVMQTT__MAX_STRING || (v->str.len && v->str.data == NULL)) {
      return UVMQTT_EINVAL;
    }
    if (info->type == T_STR) {
      err = check_string(info, v->str);
      if (err) return err;
    }
    n += put_bytes(out, v->str);
    break;
  default:
    if (v->str.len > UVMQTT__MAX_STRING || v->value.len > UVMQTT__MAX_STRING ||
        (v->str.len && v->str.data == NULL) || (v->value.len && v->value.data == NULL)) {
      return UVMQTT_EINVAL;
    }
    err = uvmqtt_utf8_check(v->str.data, v->str.len);
    if (!err) err = uvmqtt_utf8_check(v->value.data, v->value.len);
    if (err) return err;
    n += put_bytes(out, v->str);
    n += put_bytes(out != NULL ? out + 2 + v->str.len : NULL, v->value);
    break;
  }
  *size += (uint32_t)n;
  return 0;
}

/* Reads the single value of property `id` from its field. */
static void field_value(const uvmqtt_props_t *props, const prop_info_t *info, uvmqtt_prop_t *v) {
  const char *field = (const char *)props + info->offset;
  memset(v, 0, sizeof(*v));
  switch (info->type) {
  case T_BYTE: v->u32 = *(const uint8_t *)field; break;
  case T_U16: v->u32 = *(const uint16_t *)field; break;
  case T_U32:
  case T_VARINT: v->u32 = *(const uint32_t *)field; break;
  default: v->str = *(const uvmqtt_bytes_t *)field; break;
  }
}

/* Sizes (out == NULL) or writes the property block without its length, in
 * identifier order. Validation runs the same way in both modes. */
static int put_props(const uvmqtt_props_t *props, uvmqtt_props_kind_t kind, uint8_t *out,
                     uint32_t *size) {
  const uint64_t user_bit = 1ull << UVMQTT_PROP_USER_PROPERTY;
  const uint64_t sub_bit = 1ull << UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER;
  /* The lists count, not their bits: a set built by hand may leave them out. */
  uint64_t todo = props->has & ~user_bit;
  if (props->user_count) todo |= user_bit;
  if (props->sub_id_count) todo |= sub_bit;

  *size = 0;
  while (todo) {
    uint8_t id = (uint8_t)__builtin_ctzll(todo);
    todo &= todo - 1;
    const prop_info_t *info = lookup(id);
    if (info == NULL || !(info->kinds & K(kind))) return UVMQTT_EBADPROP;

    uvmqtt_prop_t v;
    int err;
    if (id != UVMQTT_PROP_USER_PROPERTY &&
        (id != UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER || props->sub_id_count == 0)) {
      field_value(props, info, &v);
      err = put_value(info, id, &v, out ? out + *size : NULL, size);
      if (err) return err;
      continue;
    }
    if (!repeatable(id, kind) && props->sub_id_count > 1) return UVMQTT_EDUPPROP;
    uint32_t index = 0;
    size_t offset = 0;
    memset(&v, 0, sizeof(v));
    while ((err = list_next(props, id, &index, &offset, &v)) == 1) {
      err = put_value(info, id, &v, out ? out + *size : NULL, size);
      if (err) return err;
    }
    if (err) return err;
  }
  if (*size > UVMQTT_MAX_REMAINING_LENGTH) return UVMQTT_EINVAL;
  return 0;
}

int uvmqtt__props_empty(const uvmqtt_props_t *props) {
  return props->has == 0 && props->user_count == 0 && props->sub_id_count == 0;
}

int uvmqtt__props_measure(const uvmqtt_props_t *props, uvmqtt_props_kind_t kind,
                          uint32_t *block_len) {
  return put_props(props, kind, NULL, block_len);
}

size_t uvmqtt__props_write(const uvmqtt_props_t *props, uvmqtt_props_kind_t kind,
                           uint32_t block_len, uint8_t *out) {
  size_t n = uvmqtt__varint_write(out, block_len);
  uint32_t written;
  /* The measure pass accepted these properties, so this pass cannot fail. */
  (void)put_props(props, kind, out + n, &written);
  return n + written;
}
