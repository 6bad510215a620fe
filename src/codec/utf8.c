/* UTF-8 validation for MQTT strings (MQTT 3.1.1 section 1.5.3, 5.0 section
 * 1.5.4): well-formed, shortest form, no surrogates, at most U+10FFFF, and no
 * U+0000. Most topics and property strings are ASCII, so the scan checks
 * eight bytes at a time until it meets a byte that needs a closer look. */
#include "codec/utf8.h"

#include <string.h>

#include "uvmqtt/codec.h"

/* The scan is instantiated twice, with and without the wildcard test;
 * forcing it inline lets each copy drop the other's branch. */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* True when the eight bytes of v are all ASCII, none is NUL and, when
 * `wild` is set, none is '+' or '#' (uvmqtt__topic_word_bad() in utf8.h). */
static ALWAYS_INLINE int clean_word(uint64_t v, int wild) {
  if (wild) return uvmqtt__topic_word_bad(v) == 0;
  return ((v | ((v - 0x0101010101010101ull) & ~v)) & 0x8080808080808080ull) == 0;
}

static ALWAYS_INLINE int clean8(const uint8_t *s, int wild) {
  uint64_t v;
  memcpy(&v, s, sizeof v);
  return clean_word(v, wild);
}

static inline int cont(uint8_t c) {
  return (c & 0xC0) == 0x80;
}

/* Length of the valid multi-byte sequence at s (lead byte >= 0x80), or 0.
 * The ranges of the second byte come from RFC 3629's table: they rule out
 * overlong forms (E0, F0), surrogates (ED) and code points above U+10FFFF
 * (F4) without decoding the value. */
static inline size_t multibyte(const uint8_t *s, size_t left) {
  uint8_t c = s[0];
  if (c >= 0xC2 && c <= 0xDF) return left >= 2 && cont(s[1]) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    uint8_t lo = c == 0xE0 ? 0xA0 : 0x80;
    uint8_t hi = c == 0xED ? 0x9F : 0xBF;
    return left >= 3 && s[1] >= lo && s[1] <= hi && cont(s[2]) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    uint8_t lo = c == 0xF0 ? 0x90 : 0x80;
    uint8_t hi = c == 0xF4 ? 0x8F : 0xBF;
    return left >= 4 && s[1] >= lo && s[1] <= hi && cont(s[2]) && cont(s[3]) ? 4 : 0;
  }
  /* A stray continuation byte, C0/C1 (always overlong) or F5..FF. */
  return 0;
}

static ALWAYS_INLINE int scan(const uint8_t *s, size_t len, int wild) {
  size_t i = 0;
  if (len < 8) {
    /* A short string in one word; only one that is not clean goes
     * through the byte loop, which says why. (An empty string may come
     * without data.) */
    if (len == 0) return 0;
    if (clean_word(uvmqtt__utf8_short_word(s, len), wild)) return 0;
  }
  while (i < len) {
    if (len - i >= 8) {
      if (clean8(s + i, wild)) {
        i += 8;
        continue;
      }
    } else if (len >= 8 && clean8(s + len - 8, wild)) {
      /* The last eight bytes cover the short tail; re-reading a few bytes
       * already passed costs less than a byte loop. */
      return 0;
    }
    uint8_t c = s[i];
    if (c < 0x80) {
      if (c == 0) return UVMQTT_EBADUTF8;
      if (wild && (c == '+' || c == '#')) return UVMQTT_ETOPICWILD;
      i++;
      continue;
    }
    size_t n = multibyte(s + i, len - i);
    if (n == 0) return UVMQTT_EBADUTF8;
    i += n;
  }
  return 0;
}

int uvmqtt_utf8_check(const uint8_t *s, size_t len) {
  return scan(s, len, 0);
}

int uvmqtt__utf8_scan(const uint8_t *s, size_t len, int reject_wildcards) {
  return reject_wildcards ? scan(s, len, 1) : scan(s, len, 0);
}
