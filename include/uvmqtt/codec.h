/** \file
 * uvmqtt codec: MQTT 3.1.1 and 5.0 packets, both directions.
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

/** The protocol level byte of MQTT 3.1 (protocol name "MQIsdp"). */
#define UVMQTT_V31  3
#define UVMQTT_V311 4 /**< protocol level byte of MQTT 3.1.1 */
/** The protocol level byte of MQTT 5.0. */
#define UVMQTT_V5 5

/** The largest remaining length the protocol can express. */
#define UVMQTT_MAX_REMAINING_LENGTH 268435455u

/** MQTT control packet types, the high four bits of the fixed header. */
typedef enum {
  UVMQTT_CONNECT = 1,      /**< client to server: opens the connection */
  UVMQTT_CONNACK = 2,      /**< server to client: answers CONNECT */
  UVMQTT_PUBLISH = 3,      /**< both ways: an application message */
  UVMQTT_PUBACK = 4,       /**< acknowledges a QoS 1 PUBLISH */
  UVMQTT_PUBREC = 5,       /**< QoS 2, step 1: publish received */
  UVMQTT_PUBREL = 6,       /**< QoS 2, step 2: publish release */
  UVMQTT_PUBCOMP = 7,      /**< QoS 2, step 3: publish complete */
  UVMQTT_SUBSCRIBE = 8,    /**< client to server: subscribe to filters */
  UVMQTT_SUBACK = 9,       /**< server to client: answers SUBSCRIBE */
  UVMQTT_UNSUBSCRIBE = 10, /**< client to server: unsubscribe from filters */
  UVMQTT_UNSUBACK = 11,    /**< server to client: answers UNSUBSCRIBE */
  UVMQTT_PINGREQ = 12,     /**< client to server: keepalive request */
  UVMQTT_PINGRESP = 13,    /**< server to client: keepalive answer */
  UVMQTT_DISCONNECT = 14,  /**< ends the connection (from either side in v5) */
  UVMQTT_AUTH = 15         /**< v5 enhanced authentication exchange */
} uvmqtt_packet_type_t;

/** MQTT 5.0 property identifiers. */
typedef enum {
  UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR = 0x01, /**< byte; PUBLISH, will */
  UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL = 0x02,  /**< 4-byte integer; PUBLISH, will */
  UVMQTT_PROP_CONTENT_TYPE = 0x03,             /**< UTF-8 string; PUBLISH, will */
  UVMQTT_PROP_RESPONSE_TOPIC = 0x08,           /**< UTF-8 string; PUBLISH, will */
  UVMQTT_PROP_CORRELATION_DATA = 0x09,         /**< binary data; PUBLISH, will */
  UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER = 0x0B,  /**< variable byte integer; PUBLISH, SUBSCRIBE */
  UVMQTT_PROP_SESSION_EXPIRY_INTERVAL = 0x11,  /**< 4-byte integer; CONNECT, CONNACK, DISCONNECT */
  UVMQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER = 0x12,   /**< UTF-8 string; CONNACK */
  UVMQTT_PROP_SERVER_KEEP_ALIVE = 0x13,            /**< 2-byte integer; CONNACK */
  UVMQTT_PROP_AUTHENTICATION_METHOD = 0x15,        /**< UTF-8 string; CONNECT, CONNACK, AUTH */
  UVMQTT_PROP_AUTHENTICATION_DATA = 0x16,          /**< binary data; CONNECT, CONNACK, AUTH */
  UVMQTT_PROP_REQUEST_PROBLEM_INFORMATION = 0x17,  /**< byte; CONNECT */
  UVMQTT_PROP_WILL_DELAY_INTERVAL = 0x18,          /**< 4-byte integer; will */
  UVMQTT_PROP_REQUEST_RESPONSE_INFORMATION = 0x19, /**< byte; CONNECT */
  UVMQTT_PROP_RESPONSE_INFORMATION = 0x1A,         /**< UTF-8 string; CONNACK */
  UVMQTT_PROP_SERVER_REFERENCE = 0x1C,             /**< UTF-8 string; CONNACK, DISCONNECT */
  UVMQTT_PROP_REASON_STRING = 0x1F,       /**< UTF-8 string; CONNACK, the acks, DISCONNECT, AUTH */
  UVMQTT_PROP_RECEIVE_MAXIMUM = 0x21,     /**< 2-byte integer; CONNECT, CONNACK */
  UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM = 0x22, /**< 2-byte integer; CONNECT, CONNACK */
  UVMQTT_PROP_TOPIC_ALIAS = 0x23,         /**< 2-byte integer; PUBLISH */
  UVMQTT_PROP_MAXIMUM_QOS = 0x24,         /**< byte; CONNACK */
  UVMQTT_PROP_RETAIN_AVAILABLE = 0x25,    /**< byte; CONNACK */
  UVMQTT_PROP_USER_PROPERTY = 0x26,       /**< UTF-8 string pair; every packet with properties */
  UVMQTT_PROP_MAXIMUM_PACKET_SIZE = 0x27, /**< 4-byte integer; CONNECT, CONNACK */
  UVMQTT_PROP_WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28,   /**< byte; CONNACK */
  UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29, /**< byte; CONNACK */
  UVMQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE = 0x2A      /**< byte; CONNACK */
} uvmqtt_prop_id_t;

/** Where a property set sits; decides which properties are allowed. */
typedef enum {
  UVMQTT_PROPS_CONNECT = UVMQTT_CONNECT,         /**< CONNECT */
  UVMQTT_PROPS_CONNACK = UVMQTT_CONNACK,         /**< CONNACK */
  UVMQTT_PROPS_PUBLISH = UVMQTT_PUBLISH,         /**< PUBLISH */
  UVMQTT_PROPS_PUBACK = UVMQTT_PUBACK,           /**< also PUBREC, PUBREL, PUBCOMP */
  UVMQTT_PROPS_SUBSCRIBE = UVMQTT_SUBSCRIBE,     /**< SUBSCRIBE */
  UVMQTT_PROPS_SUBACK = UVMQTT_SUBACK,           /**< also UNSUBACK */
  UVMQTT_PROPS_UNSUBSCRIBE = UVMQTT_UNSUBSCRIBE, /**< UNSUBSCRIBE */
  UVMQTT_PROPS_DISCONNECT = UVMQTT_DISCONNECT,   /**< DISCONNECT */
  UVMQTT_PROPS_AUTH = UVMQTT_AUTH,               /**< AUTH */
  UVMQTT_PROPS_WILL = 16                         /**< the will properties inside CONNECT */
} uvmqtt_props_kind_t;

/** A byte string: a UTF-8 string or binary data. Not NUL-terminated. */
typedef struct {
  const uint8_t *data; /**< the bytes; may be NULL when len is 0 */
  uint32_t len;        /**< the number of bytes */
} uvmqtt_bytes_t;

/** A User Property: a string pair. */
typedef struct {
  uvmqtt_bytes_t key;   /**< the name */
  uvmqtt_bytes_t value; /**< the value */
} uvmqtt_user_prop_t;

/** An MQTT 5.0 property set.
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
  uint64_t has;                              /**< bit (1ull << id) set for every property present */
  uint8_t payload_format_indicator;          /**< Payload Format Indicator */
  uint8_t request_problem_information;       /**< Request Problem Information */
  uint8_t request_response_information;      /**< Request Response Information */
  uint8_t maximum_qos;                       /**< Maximum QoS */
  uint8_t retain_available;                  /**< Retain Available */
  uint8_t wildcard_subscription_available;   /**< Wildcard Subscription Available */
  uint8_t subscription_identifier_available; /**< Subscription Identifier Available */
  uint8_t shared_subscription_available;     /**< Shared Subscription Available */
  uint16_t server_keep_alive;                /**< Server Keep Alive */
  uint16_t receive_maximum;                  /**< Receive Maximum */
  uint16_t topic_alias_maximum;              /**< Topic Alias Maximum */
  uint16_t topic_alias;                      /**< Topic Alias */
  uint32_t message_expiry_interval;          /**< Message Expiry Interval */
  uint32_t session_expiry_interval;          /**< Session Expiry Interval */
  uint32_t will_delay_interval;              /**< Will Delay Interval */
  uint32_t maximum_packet_size;              /**< Maximum Packet Size */
  uint32_t subscription_id;                  /**< Subscription Identifier (the first) */
  uvmqtt_bytes_t content_type;               /**< Content Type */
  uvmqtt_bytes_t response_topic;             /**< Response Topic */
  uvmqtt_bytes_t correlation_data;           /**< Correlation Data */
  uvmqtt_bytes_t assigned_client_identifier; /**< Assigned Client Identifier */
  uvmqtt_bytes_t authentication_method;      /**< Authentication Method */
  uvmqtt_bytes_t authentication_data;        /**< Authentication Data */
  uvmqtt_bytes_t response_information;       /**< Response Information */
  uvmqtt_bytes_t server_reference;           /**< Server Reference */
  uvmqtt_bytes_t reason_string;              /**< Reason String */
  const uvmqtt_user_prop_t *user;            /**< User Properties to encode */
  uint32_t user_count;                       /**< number of User Properties */
  const uint32_t *sub_ids;                   /**< Subscription Identifiers to encode */
  uint32_t sub_id_count;                     /**< number of Subscription Identifiers */
  uvmqtt_bytes_t raw; /**< decode only: the property bytes after the length */
} uvmqtt_props_t;

/** Nonzero when property `id` is present in `props`. */
#define UVMQTT_HAS(props, id) (((props)->has >> (id)) & 1u)

/** One property as uvmqtt_props_next() yields it. */
typedef struct {
  uint8_t id;           /**< the property identifier (uvmqtt_prop_id_t) */
  uint32_t u32;         /**< byte, two-byte, four-byte and varint values */
  uvmqtt_bytes_t str;   /**< string and binary values; the key of a pair */
  uvmqtt_bytes_t value; /**< the value of a string pair */
} uvmqtt_prop_t;

/** Walks an encoded property block (a decoded props' `raw`). *offset starts at
 * 0. Returns 1 and fills *out while there is a property, 0 at the end, or a
 * negative error for a malformed block (never for one the decoder accepted). */
int uvmqtt_props_next(uvmqtt_bytes_t raw, size_t *offset, uvmqtt_prop_t *out);

/** Subscription options byte: QoS in bits 0-1, then v5's No Local, Retain As
 * Published and Retain Handling (bits 4-5). */
#define UVMQTT_SUB_QOS(q) ((uint8_t)((q)&3))
/** Subscription option: do not send back our own messages (v5). */
#define UVMQTT_SUB_NO_LOCAL 0x04
/** Subscription option: keep the retain flag as published (v5). */
#define UVMQTT_SUB_RETAIN_AS_PUBLISHED 0x08
/** Subscription option: when retained messages are sent, 0 to 2 (v5). */
#define UVMQTT_SUB_RETAIN_HANDLING(h) ((uint8_t)(((h)&3) << 4))

/** A topic filter with its subscription options. */
typedef struct {
  uvmqtt_bytes_t filter; /**< the topic filter */
  uint8_t options;       /**< for SUBSCRIBE; ignored for UNSUBSCRIBE */
} uvmqtt_topic_sub_t;

/** Walks the topic filters of a decoded SUBSCRIBE or UNSUBSCRIBE (`raw`),
 * like uvmqtt_props_next(). For UNSUBSCRIBE, `options` is 0. */
int uvmqtt_subs_next(uint8_t type, uvmqtt_bytes_t raw, size_t *offset, uvmqtt_topic_sub_t *out);

/** The content of a CONNECT packet. */
typedef struct {
  uint8_t protocol_level;      /**< UVMQTT_V31, UVMQTT_V311 or UVMQTT_V5 */
  uint8_t clean_start;         /**< Clean Session (3.1.1) or Clean Start (v5) */
  uint16_t keep_alive;         /**< seconds; 0: none */
  uvmqtt_bytes_t client_id;    /**< may be empty */
  uint8_t will;                /**< will flag */
  uint8_t will_qos;            /**< the will's QoS */
  uint8_t will_retain;         /**< the will's retain flag */
  uvmqtt_props_t will_props;   /**< v5 will properties */
  uvmqtt_bytes_t will_topic;   /**< the will's topic */
  uvmqtt_bytes_t will_payload; /**< the will's payload */
  uint8_t has_username;        /**< 1: `username` is present */
  uint8_t has_password;        /**< 1: `password` is present */
  uvmqtt_bytes_t username;     /**< the user name */
  uvmqtt_bytes_t password;     /**< the password (binary) */
} uvmqtt_connect_t;

/** The content of a PUBLISH packet. */
typedef struct {
  uint8_t qos;            /**< 0, 1 or 2 */
  uint8_t retain;         /**< the retain flag */
  uint8_t dup;            /**< the DUP flag */
  uvmqtt_bytes_t topic;   /**< may be empty in v5 when a topic alias is given */
  uvmqtt_bytes_t payload; /**< the application message */
} uvmqtt_publish_t;

/** SUBSCRIBE and UNSUBSCRIBE: encode from `subs`/`count`; a decoded packet
 * has `count` and `raw`, walked with uvmqtt_subs_next(). */
typedef struct {
  const uvmqtt_topic_sub_t *subs; /**< filters to encode */
  uint32_t count;                 /**< number of filters */
  uvmqtt_bytes_t raw;             /**< decode only: the filter bytes */
} uvmqtt_subscribe_t;

/** SUBACK and UNSUBACK: one reason code (v3.1.1 SUBACK: return code) per
 * filter. Encode from `codes`/`count`; decoded, `codes` points into the
 * packet. v3.1.1 UNSUBACK has no codes (count 0). */
typedef struct {
  const uint8_t *codes; /**< the reason codes */
  uint32_t count;       /**< number of reason codes */
} uvmqtt_suback_t;

/** A packet, for both encode and decode. `packet_id` is used by PUBLISH
 * (QoS > 0), PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE
 * and UNSUBACK. `reason` is the CONNACK return/reason code, the reason code of
 * the acks, DISCONNECT and AUTH (v5), 0 when absent. `session_present` is for
 * CONNACK. `props` is the v5 property set of the packet (ignored in v3.1.1). */
typedef struct uvmqtt_packet_s {
  uint8_t type;            /**< uvmqtt_packet_type_t */
  uint8_t reason;          /**< reason or return code; 0 when absent */
  uint8_t session_present; /**< CONNACK only */
  uint16_t packet_id;      /**< for the packets that carry one, else 0 */
  uvmqtt_props_t props;    /**< v5 properties */
  union {
    uvmqtt_connect_t connect;
    uvmqtt_publish_t publish;
    uvmqtt_subscribe_t subscribe; /**< SUBSCRIBE, UNSUBSCRIBE */
    uvmqtt_suback_t suback;       /**< SUBACK, UNSUBACK */
  } u;                            /**< the type-specific content */
} uvmqtt_packet_t;

/* ---- Encoding ---------------------------------------------------------- */

/** The encoded size of `pkt` in protocol `version` (UVMQTT_V31, UVMQTT_V311
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

/** Writes `pkt` to buf[0..cap). Returns bytes written, UVMQTT_ENOBUFS when cap
 * is short (nothing beyond cap is touched), or the validation errors of
 * uvmqtt_encode_size(). */
ssize_t uvmqtt_encode(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf, size_t cap);

/** Like uvmqtt_encode() for a PUBLISH, but writes everything except the
 * payload: the fixed header (whose remaining length counts the payload),
 * topic, packet id and properties. The caller sends the payload after it,
 * which lets a client write a large payload without copying it.
 * Returns the header length. */
ssize_t uvmqtt_encode_publish_header(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf,
                                     size_t cap);

/** Bytes a remaining-length varint takes for `n` (1..4), 0 if too large. */
int uvmqtt_varint_size(uint32_t n);

/* ---- Decoding ---------------------------------------------------------- */

/** How the decoder obtains a buffer for a packet that does not lie whole in
 * one input chunk: one buffer of exactly the remaining length, taken from
 * `scratch` when it fits there, else from `alloc`, and released at the next
 * call on the decoder or at uvmqtt_decoder_reset(). `alloc` returns NULL on
 * failure (the decoder then fails with UVMQTT_ENOMEM). Without callbacks
 * (NULL), a packet that does not fit in `scratch` fails with UVMQTT_ENOMEM. */
typedef struct {
  void *(*alloc)(void *user_data, size_t size); /**< returns a buffer of `size` bytes, or NULL */
  void (*free)(void *user_data, void *ptr);     /**< releases a buffer from `alloc` */
  void *user_data;                              /**< handed to both */
} uvmqtt_codec_mem_t;

/** An incremental decoder. Set up by uvmqtt_decoder_init(); the caller owns the memory. */
typedef struct uvmqtt_decoder_s {
  /* Settings: set by init, may be changed between packets. */
  uint8_t version;          /**< 0: learn it from the first CONNECT */
  uint32_t max_packet_size; /**< whole packet incl. fixed header; 0: protocol max */
  uvmqtt_codec_mem_t mem;   /**< where buffers for split packets come from */
  uint8_t *scratch;         /**< a caller buffer tried before `mem`; may be NULL */
  size_t scratch_size;      /**< bytes of `scratch` */
  /* Private state. */      /** \cond */
  int state;
  int error; /**< sticky: once set, every decode call returns it */
  uint8_t header;
  uint8_t len_bytes;
  uint32_t remaining;
  uint32_t multiplier;
  uint8_t *buf; /**< the buffer being filled, or the one handed out last */
  uint32_t filled;
  uint8_t buf_owned; /**< buf came from mem.alloc */
  /** \endcond */
} uvmqtt_decoder_t;

/** Prepares a decoder. `mem` may be NULL. Never allocates. */
void uvmqtt_decoder_init(uvmqtt_decoder_t *dec, uint8_t version, uint32_t max_packet_size,
                         const uvmqtt_codec_mem_t *mem);

/** Consumes bytes from in[0..len) until one packet is complete or the input
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

/** Drops any partial packet (releasing its buffer) and clears the error. The
 * settings stay, including a version learnt from a CONNECT. */
void uvmqtt_decoder_reset(uvmqtt_decoder_t *dec);

/** True while part of a packet is held (the caller's read pool may use this). */
int uvmqtt_decoder_busy(const uvmqtt_decoder_t *dec);

/** Decodes one whole packet from `data` (the fixed header's remaining length
 * must match len exactly: UVMQTT_ESHORT if it is longer, UVMQTT_ETRAILING if
 * shorter): the non-incremental core, also for tests/fuzzers. `version` 0
 * accepts only a CONNECT (UVMQTT_EPROTOCOL otherwise). Views point into
 * `data`. Returns 0 or the errors of uvmqtt_decode(). */
int uvmqtt_decode_packet(const uint8_t *data, size_t len, uint8_t version, uvmqtt_packet_t *pkt);

/* ---- Validation helpers --------------------------------------------------- */

/** 0 if s is well-formed UTF-8 allowed in MQTT strings (no U+0000, no
 * surrogates, shortest form, <= U+10FFFF), else UVMQTT_EBADUTF8. */
int uvmqtt_utf8_check(const uint8_t *s, size_t len);

/** 0 if `topic` is a valid topic name (non-empty, no wildcards, valid UTF-8). */
int uvmqtt_topic_check(const uint8_t *topic, size_t len);

/** 0 if `filter` is a valid topic filter ('#' only last and alone in its
 * level, '+' alone in its level, "$share/Name/filter" well-formed). */
int uvmqtt_filter_check(const uint8_t *filter, size_t len);

/** 1 if topic name `topic` matches `filter`, else 0. A leading wildcard does
 * not match a topic starting with '$'. A "$share/Name/" prefix on the filter
 * is skipped. Both are assumed valid. */
int uvmqtt_topic_match(const uint8_t *filter, size_t filter_len, const uint8_t *topic,
                       size_t topic_len);

#ifdef __cplusplus
}
#endif
#endif
