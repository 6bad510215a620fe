/* uvmqtt codec: MQTT 3.1.1 and 5.0 packets, both directions.
 *
 * No I/O and no allocation. Encoding is size-then-write into a caller buffer.
 * Decoding is an incremental state machine: feed it any chunking of the byte
 * stream; it returns how many bytes it consumed and emits each complete packet
 * once. Strings and payloads in a decoded packet are views into the input (or,
 * for a packet that arrived in pieces, into the one buffer the decoder obtained
 * through the caller's memory callbacks); they stay valid until the next call
 * on the decoder.
 */
#ifndef UVMQTT_CODEC_H
#define UVMQTT_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define UVMQTT_V31  3 /* protocol level byte of MQTT 3.1 (protocol name "MQIsdp") */
#define UVMQTT_V311 4 /* protocol level byte of MQTT 3.1.1 */
#define UVMQTT_V5   5

/* The largest remaining length the protocol can express. */
#define UVMQTT_MAX_REMAINING_LENGTH 268435455u

typedef enum {
  UVMQTT_CONNECT = 1,
  UVMQTT_CONNACK = 2,
  UVMQTT_PUBLISH = 3,
  UVMQTT_PUBACK = 4,
  UVMQTT_PUBREC = 5,
  UVMQTT_PUBREL = 6,
  UVMQTT_PUBCOMP = 7,
  UVMQTT_SUBSCRIBE = 8,
  UVMQTT_SUBACK = 9,
  UVMQTT_UNSUBSCRIBE = 10,
  UVMQTT_UNSUBACK = 11,
  UVMQTT_PINGREQ = 12,
  UVMQTT_PINGRESP = 13,
  UVMQTT_DISCONNECT = 14,
  UVMQTT_AUTH = 15
} uvmqtt_packet_type_t;

/* MQTT 5.0 property identifiers. */
typedef enum {
  UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR = 0x01,
  UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL = 0x02,
  UVMQTT_PROP_CONTENT_TYPE = 0x03,
  UVMQTT_PROP_RESPONSE_TOPIC = 0x08,
  UVMQTT_PROP_CORRELATION_DATA = 0x09,
  UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER = 0x0B,
  UVMQTT_PROP_SESSION_EXPIRY_INTERVAL = 0x11,
  UVMQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER = 0x12,
  UVMQTT_PROP_SERVER_KEEP_ALIVE = 0x13,
  UVMQTT_PROP_AUTHENTICATION_METHOD = 0x15,
  UVMQTT_PROP_AUTHENTICATION_DATA = 0x16,
  UVMQTT_PROP_REQUEST_PROBLEM_INFORMATION = 0x17,
  UVMQTT_PROP_WILL_DELAY_INTERVAL = 0x18,
  UVMQTT_PROP_REQUEST_RESPONSE_INFORMATION = 0x19,
  UVMQTT_PROP_RESPONSE_INFORMATION = 0x1A,
  UVMQTT_PROP_SERVER_REFERENCE = 0x1C,
  UVMQTT_PROP_REASON_STRING = 0x1F,
  UVMQTT_PROP_RECEIVE_MAXIMUM = 0x21,
  UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM = 0x22,
  UVMQTT_PROP_TOPIC_ALIAS = 0x23,
  UVMQTT_PROP_MAXIMUM_QOS = 0x24,
  UVMQTT_PROP_RETAIN_AVAILABLE = 0x25,
  UVMQTT_PROP_USER_PROPERTY = 0x26,
  UVMQTT_PROP_MAXIMUM_PACKET_SIZE = 0x27,
  UVMQTT_PROP_WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28,
  UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29,
  UVMQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE = 0x2A
} uvmqtt_prop_id_t;

/* Where a property set sits; decides which properties are allowed. */
typedef enum {
  UVMQTT_PROPS_CONNECT = UVMQTT_CONNECT,
  UVMQTT_PROPS_CONNACK = UVMQTT_CONNACK,
  UVMQTT_PROPS_PUBLISH = UVMQTT_PUBLISH,
  UVMQTT_PROPS_PUBACK = UVMQTT_PUBACK, /* also PUBREC, PUBREL, PUBCOMP */
  UVMQTT_PROPS_SUBSCRIBE = UVMQTT_SUBSCRIBE,
  UVMQTT_PROPS_SUBACK = UVMQTT_SUBACK, /* also UNSUBACK */
  UVMQTT_PROPS_UNSUBSCRIBE = UVMQTT_UNSUBSCRIBE,
  UVMQTT_PROPS_DISCONNECT = UVMQTT_DISCONNECT,
  UVMQTT_PROPS_AUTH = UVMQTT_AUTH,
  UVMQTT_PROPS_WILL = 16
} uvmqtt_props_kind_t;

/* A byte string: a UTF-8 string or binary data. Not NUL-terminated. */
typedef struct {
  const uint8_t *data;
  uint32_t len;
} uvmqtt_bytes_t;

typedef struct {
  uvmqtt_bytes_t key;
  uvmqtt_bytes_t value;
} uvmqtt_user_prop_t;

/* An MQTT 5.0 property set.
 *
 * `has` holds bit (1ull << id) for every property present. Single-valued
 * properties have a field each. The two that may repeat (User Property, and
 * Subscription Identifier in PUBLISH) are lists:
 *  - when encoding, set `user`/`user_count` and `sub_ids`/`sub_id_count`
 *    (the counts decide, the `has` bits of these two may be left out); a
 *    single Subscription Identifier may also be given as its `has` bit and
 *    `subscription_id`. A list whose pointer is NULL is read from `raw`, so a
 *    decoded set encodes again as it is;
 *  - when decoding, the counts are set, the pointers are NULL, and
 *    uvmqtt_props_next() walks `raw` (the encoded property bytes) to reach
 *    every value. `subscription_id` holds the first subscription identifier.
 *    Every field whose property is absent is 0.
 * Properties are encoded in identifier order. An all-zero struct is "no
 * properties". */
typedef struct uvmqtt_props_s {
  uint64_t has;
  uint8_t payload_format_indicator;
  uint8_t request_problem_information;
  uint8_t request_response_information;
  uint8_t maximum_qos;
  uint8_t retain_available;
  uint8_t wildcard_subscription_available;
  uint8_t subscription_identifier_available;
  uint8_t shared_subscription_available;
  uint16_t server_keep_alive;
  uint16_t receive_maximum;
  uint16_t topic_alias_maximum;
  uint16_t topic_alias;
  uint32_t message_expiry_interval;
  uint32_t session_expiry_interval;
  uint32_t will_delay_interval;
  uint32_t maximum_packet_size;
  uint32_t subscription_id;
  uvmqtt_bytes_t content_type;
  uvmqtt_bytes_t response_topic;
  uvmqtt_bytes_t correlation_data;
  uvmqtt_bytes_t assigned_client_identifier;
  uvmqtt_bytes_t authentication_method;
  uvmqtt_bytes_t authentication_data;
  uvmqtt_bytes_t response_information;
  uvmqtt_bytes_t server_reference;
  uvmqtt_bytes_t reason_string;
  const uvmqtt_user_prop_t *user;
  uint32_t user_count;
  const uint32_t *sub_ids;
  uint32_t sub_id_count;
  uvmqtt_bytes_t raw; /* decode only: the property bytes after the length */
} uvmqtt_props_t;

#define UVMQTT_HAS(props, id) (((props)->has >> (id)) & 1u)

/* One property as uvmqtt_props_next() yields it. */
typedef struct {
  uint8_t id;
  uint32_t u32;         /* byte, two-byte, four-byte and varint values */
  uvmqtt_bytes_t str;   /* string and binary values; the key of a pair */
  uvmqtt_bytes_t value; /* the value of a string pair */
} uvmqtt_prop_t;

/* Walks an encoded property block (a decoded props' `raw`). *offset starts at
 * 0. Returns 1 and fills *out while there is a property, 0 at the end, or a
 * negative error for a malformed block (never for one the decoder accepted). */
int uvmqtt_props_next(uvmqtt_bytes_t raw, size_t *offset, uvmqtt_prop_t *out);

/* Subscription options byte: QoS in bits 0-1, then v5's No Local, Retain As
 * Published and Retain Handling (bits 4-5). */
#define UVMQTT_SUB_QOS(q)              ((uint8_t)((q)&3))
#define UVMQTT_SUB_NO_LOCAL            0x04
#define UVMQTT_SUB_RETAIN_AS_PUBLISHED 0x08
#define UVMQTT_SUB_RETAIN_HANDLING(h)  ((uint8_t)(((h)&3) << 4))

typedef struct {
  uvmqtt_bytes_t filter;
  uint8_t options; /* for SUBSCRIBE; ignored for UNSUBSCRIBE */
} uvmqtt_topic_sub_t;

/* Walks the topic filters of a decoded SUBSCRIBE or UNSUBSCRIBE (`raw`),
 * like uvmqtt_props_next(). For UNSUBSCRIBE, `options` is 0. */
int uvmqtt_subs_next(uint8_t type, uvmqtt_bytes_t raw, size_t *offset, uvmqtt_topic_sub_t *out);

typedef struct {
  uint8_t protocol_level; /* UVMQTT_V31, UVMQTT_V311 or UVMQTT_V5 */
  uint8_t clean_start;
  uint16_t keep_alive;
  uvmqtt_bytes_t client_id;
  uint8_t will; /* will flag */
  uint8_t will_qos;
  uint8_t will_retain;
  uvmqtt_props_t will_props;
  uvmqtt_bytes_t will_topic;
  uvmqtt_bytes_t will_payload;
  uint8_t has_username;
  uint8_t has_password;
  uvmqtt_bytes_t username;
  uvmqtt_bytes_t password;
} uvmqtt_connect_t;

typedef struct {
  uint8_t qos;
  uint8_t retain;
  uint8_t dup;
  uvmqtt_bytes_t topic; /* may be empty in v5 when a topic alias is given */
  uvmqtt_bytes_t payload;
} uvmqtt_publish_t;

/* SUBSCRIBE and UNSUBSCRIBE: encode from `subs`/`count`; a decoded packet
 * has `count` and `raw`, walked with uvmqtt_subs_next(). */
typedef struct {
  const uvmqtt_topic_sub_t *subs;
  uint32_t count;
  uvmqtt_bytes_t raw;
} uvmqtt_subscribe_t;

/* SUBACK and UNSUBACK: one reason code (v3.1.1 SUBACK: return code) per
 * filter. Encode from `codes`/`count`; decoded, `codes` points into the
 * packet. v3.1.1 UNSUBACK has no codes (count 0). */
typedef struct {
  const uint8_t *codes;
  uint32_t count;
} uvmqtt_suback_t;

/* A packet, for both encode and decode. `packet_id` is used by PUBLISH
 * (QoS > 0), PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE
 * and UNSUBACK. `reason` is the CONNACK return/reason code, the reason code of
 * the acks, DISCONNECT and AUTH (v5), 0 when absent. `session_present` is for
 * CONNACK. `props` is the v5 property set of the packet (ignored in v3.1.1). */
typedef struct uvmqtt_packet_s {
  uint8_t type;
  uint8_t reason;
  uint8_t session_present;
  uint16_t packet_id;
  uvmqtt_props_t props;
  union {
    uvmqtt_connect_t connect;
    uvmqtt_publish_t publish;
    uvmqtt_subscribe_t subscribe; /* SUBSCRIBE, UNSUBSCRIBE */
    uvmqtt_suback_t suback;       /* SUBACK, UNSUBACK */
  } u;
} uvmqtt_packet_t;

/* ---- Encoding ---------------------------------------------------------- */

/* The encoded size of `pkt` in protocol `version` (UVMQTT_V31, UVMQTT_V311
 * or UVMQTT_V5; for CONNECT, connect.protocol_level wins when it is not 0). Validates the
 * packet as the decoder would: returns a negative error for a packet the peer
 * would reject (bad UTF-8, wildcard in a topic name, QoS 3, property not
 * allowed...), UVMQTT_ETOOLARGE beyond the largest remaining length,
 * UVMQTT_EINVAL for another version or a value no packet can hold (a string
 * over 65535 bytes, a NULL pointer with a length), UVMQTT_EBADPROTO for a
 * CONNECT level other than 3, 4 or 5, UVMQTT_ECLIENTID for a 3.1 CONNECT
 * whose client id is empty or longer than 23 bytes. v5 acks, DISCONNECT and AUTH take their
 * shortest form (no reason code when it is 0 and there are no properties). */
ssize_t uvmqtt_encode_size(const uvmqtt_packet_t *pkt, uint8_t version);

/* Writes `pkt` to buf[0..cap). Returns bytes written, UVMQTT_ENOBUFS when cap
 * is short (nothing beyond cap is touched), or the validation errors of
 * uvmqtt_encode_size(). */
ssize_t uvmqtt_encode(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf, size_t cap);

/* Like uvmqtt_encode() for a PUBLISH, but writes everything except the
 * payload: the fixed header (whose remaining length counts the payload),
 * topic, packet id and properties. The caller sends the payload after it,
 * which lets a client write a large payload without copying it.
 * Returns the header length. */
ssize_t uvmqtt_encode_publish_header(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf,
                                     size_t cap);

/* Bytes a remaining-length varint takes for `n` (1..4), 0 if too large. */
int uvmqtt_varint_size(uint32_t n);

/* ---- Decoding ---------------------------------------------------------- */

/* How the decoder obtains a buffer for a packet that does not lie whole in
 * one input chunk: one buffer of exactly the remaining length, taken from
 * `scratch` when it fits there, else from `alloc`, and released at the next
 * call on the decoder or at uvmqtt_decoder_reset(). `alloc` returns NULL on
 * failure (the decoder then fails with UVMQTT_ENOMEM). Without callbacks
 * (NULL), a packet that does not fit in `scratch` fails with UVMQTT_ENOMEM. */
typedef struct {
  void *(*alloc)(void *user_data, size_t size);
  void (*free)(void *user_data, void *ptr);
  void *user_data;
} uvmqtt_codec_mem_t;

typedef struct uvmqtt_decoder_s {
  /* Settings: set by init, may be changed between packets. */
  uint8_t version;          /* 0: learn it from the first CONNECT */
  uint32_t max_packet_size; /* whole packet incl. fixed header; 0: protocol max */
  uvmqtt_codec_mem_t mem;
  uint8_t *scratch;
  size_t scratch_size;
  /* Private state. */
  int state;
  int error; /* sticky: once set, every decode call returns it */
  uint8_t header;
  uint8_t len_bytes;
  uint32_t remaining;
  uint32_t multiplier;
  uint8_t *buf; /* the buffer being filled, or the one handed out last */
  uint32_t filled;
  uint8_t buf_owned; /* buf came from mem.alloc */
} uvmqtt_decoder_t;

/* Prepares a decoder. `mem` may be NULL. Never allocates. */
void uvmqtt_decoder_init(uvmqtt_decoder_t *dec, uint8_t version, uint32_t max_packet_size,
                         const uvmqtt_codec_mem_t *mem);

/* Consumes bytes from in[0..len) until one packet is complete or the input
 * ends. Returns the number of bytes consumed (0..len). If a packet completed,
 * *got is set to 1 and *pkt holds it; its views stay valid until the next call
 * on this decoder (and until `in` is released, for packets decoded in place).
 * Otherwise *got is 0 and all of the input was consumed.
 * Errors (negative, sticky until uvmqtt_decoder_reset()): every validation
 * error of the errors table (a remaining length not in its shortest form is
 * UVMQTT_EMALFORMED), UVMQTT_ETOOLARGE as soon as the fixed header announces
 * more than max_packet_size, UVMQTT_ENOMEM, UVMQTT_EPROTOCOL for a first
 * packet other than CONNECT when the version is still 0, UVMQTT_EINVAL for a
 * version other than 0, 3, 4 and 5. A 3.1 CONNACK decodes with
 * session_present 0: 3.1 has no such flag. */
ssize_t uvmqtt_decode(uvmqtt_decoder_t *dec, const uint8_t *in, size_t len, uvmqtt_packet_t *pkt,
                      int *got);

/* Drops any partial packet (releasing its buffer) and clears the error. The
 * settings stay, including a version learnt from a CONNECT. */
void uvmqtt_decoder_reset(uvmqtt_decoder_t *dec);

/* True while part of a packet is held (the caller's read pool may use this). */
int uvmqtt_decoder_busy(const uvmqtt_decoder_t *dec);

/* Decodes one whole packet from `data` (the fixed header's remaining length
 * must match len exactly: UVMQTT_ESHORT if it is longer, UVMQTT_ETRAILING if
 * shorter): the non-incremental core, also for tests/fuzzers. `version` 0
 * accepts only a CONNECT (UVMQTT_EPROTOCOL otherwise). Views point into
 * `data`. Returns 0 or the errors of uvmqtt_decode(). */
int uvmqtt_decode_packet(const uint8_t *data, size_t len, uint8_t version, uvmqtt_packet_t *pkt);

/* ---- Validation helpers --------------------------------------------------- */

/* 0 if s is well-formed UTF-8 allowed in MQTT strings (no U+0000, no
 * surrogates, shortest form, <= U+10FFFF), else UVMQTT_EBADUTF8. */
int uvmqtt_utf8_check(const uint8_t *s, size_t len);

/* 0 if `topic` is a valid topic name (non-empty, no wildcards, valid UTF-8). */
int uvmqtt_topic_check(const uint8_t *topic, size_t len);

/* 0 if `filter` is a valid topic filter ('#' only last and alone in its
 * level, '+' alone in its level, "$share/Name/filter" well-formed). */
int uvmqtt_filter_check(const uint8_t *filter, size_t len);

/* 1 if topic name `topic` matches `filter`, else 0. A leading wildcard does
 * not match a topic starting with '$'. A "$share/Name/" prefix on the filter
 * is skipped. Both are assumed valid. */
int uvmqtt_topic_match(const uint8_t *filter, size_t filter_len, const uint8_t *topic,
                       size_t topic_len);

#ifdef __cplusplus
}
#endif
#endif
