/* UTF-8 scanning shared by the string and topic checks. */
#ifndef UVMQTT_UTF8_H
#define UVMQTT_UTF8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* uvmqtt_utf8_check() that, when `reject_wildcards` is set, also refuses
 * '+' and '#' in the same pass. Returns 0, UVMQTT_EBADUTF8 or
 * UVMQTT_ETOPICWILD for the first problem from the left. */
int uvmqtt__utf8_scan(const uint8_t *s, size_t len, int reject_wildcards);

/* The 1 to 7 bytes at s in one word: every byte of the string (some twice,
 * from two overlapping loads) and a plain letter in what is left. Read
 * straight from the string: a padded copy, stored byte by byte and loaded
 * as one word, stalls the load until the stores retire (measured: most of
 * the scan's time for a short topic). The lanes are checked independently,
 * so their order does not matter. */
static inline uint64_t uvmqtt__utf8_short_word(const uint8_t *s, size_t len) {
  if (len >= 4) {
    uint32_t a, b;
    memcpy(&a, s, 4);
    memcpy(&b, s + len - 4, 4);
    return a | (uint64_t)b << 32;
  }
  if (len >= 2) {
    uint16_t a, b;
    memcpy(&a, s, 2);
    memcpy(&b, s + len - 2, 2);
    return 0x6161616100000000ull | (uint64_t)b << 16 | a;
  }
  return 0x6161616161616100ull | s[0];
}

/* A lane's high bit for each byte of v that is >= 0x80, NUL, '+' or '#'
 * (the zero-byte test, (x - 0x01..) & ~x, is exact while no byte of v has
 * its high bit set; one that has marks its lane anyway). */
static inline uint64_t uvmqtt__topic_word_bad(uint64_t v) {
  const uint64_t low = 0x0101010101010101ull;
  uint64_t p = v ^ 0x2B2B2B2B2B2B2B2Bull, h = v ^ 0x2323232323232323ull;
  return (v | ((v - low) & ~v) | ((p - low) & ~p) | ((h - low) & ~h)) & 0x8080808080808080ull;
}

/* uvmqtt__utf8_scan(s, len, 1) for a topic name of at least one byte,
 * inline for the usual one: ASCII without NUL, '+' or '#', checked a word
 * at a time (the last word overlapping). Anything else takes the full
 * scan, which also says what is wrong. */
static inline int uvmqtt__topic_check(const uint8_t *s, size_t len) {
  uint64_t bad = 0;
  if (len < 8) {
    bad = uvmqtt__topic_word_bad(uvmqtt__utf8_short_word(s, len));
  } else {
    for (size_t i = 0;; i += 8) {
      uint64_t v;
      if (i + 8 > len) i = len - 8;
      memcpy(&v, s + i, 8);
      bad |= uvmqtt__topic_word_bad(v);
      if (i + 8 == len) break;
    }
  }
  return bad == 0 ? 0 : uvmqtt__utf8_scan(s, len, 1);
}

#endif
