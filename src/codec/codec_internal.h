/* Internal pieces shared by the packet codec (codec.c) and the MQTT 5.0
 * property code (props.c). */
#ifndef UVMQTT_CODEC_INTERNAL_H
#define UVMQTT_CODEC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "uvmqtt/codec.h"

/* The longest string or binary value a two-byte length prefix can announce. */
#define UVMQTT__MAX_STRING 65535u

/* Reads a variable byte integer from p[0..avail). Returns the bytes used (1..4),
 * 0 when the input ends inside it, or UVMQTT_EMALFORMED when it runs past four
 * bytes or is not in its shortest form ([MQTT-1.5.5-1]). */
static inline int uvmqtt__varint_read(const uint8_t *p, size_t avail, uint32_t *value) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    if ((size_t)i >= avail) return 0;
    uint8_t b = p[i];
    v |= (uint32_t)(b & 0x7F) << (7 * i);
    if ((b & 0x80) == 0) {
      /* A zero final byte after a continuation byte adds nothing: not shortest. */
      if (i > 0 && b == 0) return UVMQTT_EMALFORMED;
      *value = v;
      return i + 1;
    }
  }
  return UVMQTT_EMALFORMED;
}

/* Writes `v` (at most UVMQTT_MAX_REMAINING_LENGTH) as a variable byte integer;
 * returns the bytes written. */
static inline size_t uvmqtt__varint_write(uint8_t *out, uint32_t v) {
  size_t n = 0;
  do {
    uint8_t b = (uint8_t)(v & 0x7F);
    v >>= 7;
    if (v) b |= 0x80;
    out[n++] = b;
  } while (v);
  return n;
}

/* The bytes uvmqtt__varint_write() takes for `v`, or 0 past
 * UVMQTT_MAX_REMAINING_LENGTH (inline: the QoS 0 publish path needs it per
 * message). */
static inline int uvmqtt__varint_size(uint32_t v) {
  if (v < 128u) return 1;
  if (v < 16384u) return 2;
  if (v < 2097152u) return 3;
  return v <= UVMQTT_MAX_REMAINING_LENGTH ? 4 : 0;
}

static inline uint16_t uvmqtt__get16(const uint8_t *p) {
  return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t uvmqtt__get32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void uvmqtt__put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static inline void uvmqtt__put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* An empty property set. Assigning it clears a set with plain vector moves,
 * where memset() of this size may become a slow string instruction. */
extern const uvmqtt_props_t uvmqtt__no_props;

/* uvmqtt_encode() for a packet uvmqtt_encode_size() accepted: the same bytes,
 * without scanning its strings again. */
ssize_t uvmqtt__encode_checked(const uvmqtt_packet_t *pkt, uint8_t version, uint8_t *buf,
                               size_t cap);

/* 1 if no property would be encoded for `props`. */
int uvmqtt__props_empty(const uvmqtt_props_t *props);

/* Decodes the property block that starts with its length at p[0..avail) into
 * *out (cleared first), checking every property against `kind`. On success
 * returns 0 and sets *used to the bytes taken (length field included).
 * Errors: UVMQTT_ESHORT (the length field is cut off), UVMQTT_EMALFORMED,
 * UVMQTT_EPROPLEN, UVMQTT_EBADPROP, UVMQTT_EDUPPROP, UVMQTT_EPROPVALUE,
 * UVMQTT_EBADUTF8, UVMQTT_ETOPICWILD. */
int uvmqtt__props_decode(const uint8_t *p, size_t avail, uvmqtt_props_kind_t kind,
                         uvmqtt_props_t *out, size_t *used);

/* Validates `props` for `kind` and returns the size of the property block
 * without its length field (stored in *block_len), or a negative error: those
 * of uvmqtt__props_decode() for values the decoder would refuse, and
 * UVMQTT_EINVAL for a value that cannot be encoded at all. */
int uvmqtt__props_measure(const uvmqtt_props_t *props, uvmqtt_props_kind_t kind,
                          uint32_t *block_len);

/* Writes the length field and the block uvmqtt__props_measure() measured as
 * `block_len`; the caller guarantees the room. Returns the bytes written. */
size_t uvmqtt__props_write(const uvmqtt_props_t *props, uvmqtt_props_kind_t kind,
                           uint32_t block_len, uint8_t *out);

#endif
