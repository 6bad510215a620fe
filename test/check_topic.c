/* Topic names, topic filters, matching and UTF-8 validation. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "uvmqtt/codec.h"

static int utf8(const char *s, size_t len) {
  return uvmqtt_utf8_check((const uint8_t *)s, len);
}

static int utf8s(const char *s) {
  return utf8(s, strlen(s));
}

static int topic_ok(const char *s) {
  return uvmqtt_topic_check((const uint8_t *)s, strlen(s));
}

static int filter_ok(const char *s) {
  return uvmqtt_filter_check((const uint8_t *)s, strlen(s));
}

static int match(const char *filter, const char *topic) {
  return uvmqtt_topic_match((const uint8_t *)filter, strlen(filter), (const uint8_t *)topic,
                            strlen(topic));
}

/* ---- UTF-8 ------------------------------------------------------------- */

START_TEST(utf8_accepts_ascii_and_empty) {
  ck_assert_int_eq(utf8("", 0), 0);
  ck_assert_int_eq(utf8s("a"), 0);
  ck_assert_int_eq(utf8s("sport/tennis/player1"), 0);
  ck_assert_int_eq(utf8s("\x01\x1f\x7f"), 0);
  /* Every length around the eight-byte fast path, so the tail loop runs. */
  char buf[40];
  for (size_t n = 0; n < sizeof buf; n++) {
    memset(buf, 'x', n);
    ck_assert_int_eq(utf8(buf, n), 0);
  }
}
END_TEST

START_TEST(utf8_rejects_nul_anywhere) {
  char buf[40];
  for (size_t n = 1; n < sizeof buf; n++) {
    for (size_t at = 0; at < n; at++) {
      memset(buf, 'q', n);
      buf[at] = '\0';
      ck_assert_msg(utf8(buf, n) == UVMQTT_EBADUTF8, "NUL at %zu of %zu accepted", at, n);
    }
  }
}
END_TEST

START_TEST(utf8_accepts_multibyte_boundaries) {
  ck_assert_int_eq(utf8s("\xc2\x80"), 0);          /* U+0080, smallest 2-byte */
  ck_assert_int_eq(utf8s("\xdf\xbf"), 0);          /* U+07FF */
  ck_assert_int_eq(utf8s("\xe0\xa0\x80"), 0);      /* U+0800, smallest 3-byte */
  ck_assert_int_eq(utf8s("\xed\x9f\xbf"), 0);      /* U+D7FF, just below surrogates */
  ck_assert_int_eq(utf8s("\xee\x80\x80"), 0);      /* U+E000, just above surrogates */
  ck_assert_int_eq(utf8s("\xef\xbf\xbf"), 0);      /* U+FFFF is allowed */
  ck_assert_int_eq(utf8s("\xef\xbb\xbf"), 0);      /* U+FEFF BOM is allowed */
  ck_assert_int_eq(utf8s("\xf0\x90\x80\x80"), 0);  /* U+10000, smallest 4-byte */
  ck_assert_int_eq(utf8s("\xf4\x8f\xbf\xbf"), 0);  /* U+10FFFF, the maximum */
  ck_assert_int_eq(utf8s("A\xf0\xaa\x9b\x94"), 0); /* spec example U+2A6D4 */
  ck_assert_int_eq(utf8s("caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac/\xf0\x9f\x98\x80"), 0);
}
END_TEST

START_TEST(utf8_accepts_multibyte_after_ascii_block) {
  /* A multi-byte character straddling the end of an eight-byte block. */
  for (size_t lead = 0; lead < 12; lead++) {
    char buf[32];
    memset(buf, 'a', lead);
    memcpy(buf + lead, "\xf0\x9f\x98\x80", 4);
    memset(buf + lead + 4, 'b', 8);
    ck_assert_int_eq(utf8(buf, lead + 12), 0);
  }
}
END_TEST

START_TEST(utf8_rejects_overlong) {
  ck_assert_int_eq(utf8s("\xc0\x80"), UVMQTT_EBADUTF8);         /* NUL, 2-byte */
  ck_assert_int_eq(utf8s("\xc0\xaf"), UVMQTT_EBADUTF8);         /* '/' 2-byte */
  ck_assert_int_eq(utf8s("\xc1\xbf"), UVMQTT_EBADUTF8);         /* U+007F 2-byte */
  ck_assert_int_eq(utf8s("\xe0\x80\xaf"), UVMQTT_EBADUTF8);     /* '/' 3-byte */
  ck_assert_int_eq(utf8s("\xe0\x9f\xbf"), UVMQTT_EBADUTF8);     /* U+07FF 3-byte */
  ck_assert_int_eq(utf8s("\xf0\x80\x80\xaf"), UVMQTT_EBADUTF8); /* '/' 4-byte */
  ck_assert_int_eq(utf8s("\xf0\x8f\xbf\xbf"), UVMQTT_EBADUTF8); /* U+FFFF 4-byte */
}
END_TEST

START_TEST(utf8_rejects_surrogates) {
  ck_assert_int_eq(utf8s("\xed\xa0\x80"), UVMQTT_EBADUTF8); /* U+D800 */
  ck_assert_int_eq(utf8s("\xed\xad\xbf"), UVMQTT_EBADUTF8); /* U+DB7F */
  ck_assert_int_eq(utf8s("\xed\xb0\x80"), UVMQTT_EBADUTF8); /* U+DC00 */
  ck_assert_int_eq(utf8s("\xed\xbf\xbf"), UVMQTT_EBADUTF8); /* U+DFFF */
  /* A CESU-8 style surrogate pair for U+10000. */
  ck_assert_int_eq(utf8s("\xed\xa0\x80\xed\xb0\x80"), UVMQTT_EBADUTF8);
}
END_TEST

START_TEST(utf8_rejects_above_max) {
  ck_assert_int_eq(utf8s("\xf4\x90\x80\x80"), UVMQTT_EBADUTF8); /* U+110000 */
  ck_assert_int_eq(utf8s("\xf5\x80\x80\x80"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xf7\xbf\xbf\xbf"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xf8\x88\x80\x80\x80"), UVMQTT_EBADUTF8); /* old 5-byte form */
  ck_assert_int_eq(utf8s("\xfc\x84\x80\x80\x80\x80"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xfe"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xff"), UVMQTT_EBADUTF8);
}
END_TEST

START_TEST(utf8_rejects_stray_continuation) {
  ck_assert_int_eq(utf8s("\x80"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xbf"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("abc\x80"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xc3\xa9\xa9"), UVMQTT_EBADUTF8); /* one too many */
}
END_TEST

START_TEST(utf8_rejects_bad_continuation) {
  ck_assert_int_eq(utf8s("\xc3\x28"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xc3\xc3\xa9"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xe2\x28\xa1"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xe2\x82\x28"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xf0\x28\x8c\xbc"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xf0\x90\x28\xbc"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(utf8s("\xf0\x90\x8c\x28"), UVMQTT_EBADUTF8);
}
END_TEST

START_TEST(utf8_rejects_truncated) {
  static const char *const full[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
  for (size_t k = 0; k < sizeof full / sizeof full[0]; k++) {
    size_t n = strlen(full[k]);
    ck_assert_int_eq(utf8(full[k], n), 0);
    for (size_t cut = 1; cut < n; cut++) {
      ck_assert_msg(utf8(full[k], cut) == UVMQTT_EBADUTF8, "prefix %zu of seq %zu accepted", cut,
                    k);
      /* Truncated in the middle of a string, not just at its end. */
      char buf[16];
      memcpy(buf, full[k], cut);
      buf[cut] = 'z';
      ck_assert_int_eq(utf8(buf, cut + 1), UVMQTT_EBADUTF8);
    }
  }
}
END_TEST

/* Decodes one code point the slow, obvious way; -1 when invalid for MQTT.
 * The table-driven checker must agree with it on every short input. */
static long reference_decode(const uint8_t *s, size_t len, size_t *used) {
  uint8_t c = s[0];
  size_t n;
  long cp;
  if (c < 0x80) {
    n = 1;
    cp = c;
  } else if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return -1;
  }
  if (len < n) return -1;
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  static const long min_for_len[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_for_len[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0) {
    return -1;
  }
  *used = n;
  return cp;
}

static int reference_check(const uint8_t *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    size_t used = 0;
    if (reference_decode(s + i, len - i, &used) < 0) return UVMQTT_EBADUTF8;
    i += used;
  }
  return 0;
}

/* Check's assertions are slow in fork mode (each one records a mark), so
 * the exhaustive loops compare plainly and abort on the first difference. */
static void expect_same_verdict(const uint8_t *b, size_t n) {
  int got = uvmqtt_utf8_check(b, n);
  int want = reference_check(b, n);
  if (got != want) {
    ck_abort_msg("%zu bytes %02x %02x %02x: got %d, reference %d", n, b[0], n > 1 ? b[1] : 0,
                 n > 2 ? b[2] : 0, got, want);
  }
}

START_TEST(utf8_agrees_with_reference_on_all_short_inputs) {
  /* Every 1- and 2-byte input, and every 3-byte input whose first byte is a
   * lead byte, compared against the straightforward decoder. */
  uint8_t b[4];
  unsigned long compared = 0;
  for (unsigned x = 0; x < 256; x++) {
    b[0] = (uint8_t)x;
    expect_same_verdict(b, 1);
    for (unsigned y = 0; y < 256; y++) {
      b[1] = (uint8_t)y;
      expect_same_verdict(b, 2);
      compared += 2;
    }
  }
  for (unsigned x = 0xC0; x < 256; x++) {
    for (unsigned y = 0x70; y < 0xD0; y++) {
      for (unsigned z = 0x70; z < 0xD0; z++) {
        b[0] = (uint8_t)x;
        b[1] = (uint8_t)y;
        b[2] = (uint8_t)z;
        expect_same_verdict(b, 3);
        compared++;
      }
    }
  }
  ck_assert_uint_gt(compared, 700000);
}
END_TEST

START_TEST(utf8_agrees_with_reference_on_every_code_point) {
  uint8_t b[12];
  for (long cp = 1; cp <= 0x10FFFF; cp++) {
    size_t n;
    if (cp < 0x80) {
      b[0] = (uint8_t)cp;
      n = 1;
    } else if (cp < 0x800) {
      b[0] = (uint8_t)(0xC0 | (cp >> 6));
      b[1] = (uint8_t)(0x80 | (cp & 0x3F));
      n = 2;
    } else if (cp < 0x10000) {
      b[0] = (uint8_t)(0xE0 | (cp >> 12));
      b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
      b[2] = (uint8_t)(0x80 | (cp & 0x3F));
      n = 3;
    } else {
      b[0] = (uint8_t)(0xF0 | (cp >> 18));
      b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
      b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
      b[3] = (uint8_t)(0x80 | (cp & 0x3F));
      n = 4;
    }
    /* Behind seven ASCII bytes as well, so the character crosses the
     * eight-byte block boundary. */
    memmove(b + 7, b, n);
    memset(b, 'a', 7);
    int want = (cp >= 0xD800 && cp <= 0xDFFF) ? UVMQTT_EBADUTF8 : 0;
    if (uvmqtt_utf8_check(b + 7, n) != want || uvmqtt_utf8_check(b, n + 7) != want) {
      ck_abort_msg("code point U+%04lX: expected %d", cp, want);
    }
  }
}
END_TEST

/* ---- Topic names -------------------------------------------------------- */

START_TEST(topic_check_valid_names) {
  ck_assert_int_eq(topic_ok("sport/tennis/player1"), 0);
  ck_assert_int_eq(topic_ok("/"), 0);
  ck_assert_int_eq(topic_ok("//"), 0);
  ck_assert_int_eq(topic_ok("/finance"), 0);
  ck_assert_int_eq(topic_ok("$SYS/broker/load"), 0);
  ck_assert_int_eq(topic_ok(" "), 0);
  ck_assert_int_eq(topic_ok("caf\xc3\xa9"), 0);
}
END_TEST

START_TEST(topic_check_rejects_wildcards) {
  ck_assert_int_eq(topic_ok("sport/+"), UVMQTT_ETOPICWILD);
  ck_assert_int_eq(topic_ok("sport/#"), UVMQTT_ETOPICWILD);
  ck_assert_int_eq(topic_ok("#"), UVMQTT_ETOPICWILD);
  ck_assert_int_eq(topic_ok("+"), UVMQTT_ETOPICWILD);
  ck_assert_int_eq(topic_ok("a+b"), UVMQTT_ETOPICWILD);
  ck_assert_int_eq(topic_ok("a#b"), UVMQTT_ETOPICWILD);
}
END_TEST

START_TEST(topic_check_rejects_empty_and_bad_utf8) {
  ck_assert_int_eq(topic_ok(""), UVMQTT_EBADTOPIC);
  ck_assert_int_eq(topic_ok("a/\xc0\xaf"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(uvmqtt_topic_check((const uint8_t *)"a\0b", 3), UVMQTT_EBADUTF8);
  ck_assert_int_eq(topic_ok("\xed\xa0\x80"), UVMQTT_EBADUTF8);
}
END_TEST

START_TEST(topic_check_wildcard_at_every_position) {
  /* Lengths and positions around the eight-byte blocks and the short
   * tail, which the scan handles separately. */
  char buf[40];
  for (size_t n = 1; n < sizeof buf; n++) {
    memset(buf, 't', n);
    ck_assert_int_eq(uvmqtt_topic_check((const uint8_t *)buf, n), 0);
    for (size_t at = 0; at < n; at++) {
      static const char bad[] = {'+', '#', '\0'};
      for (size_t k = 0; k < sizeof bad; k++) {
        memset(buf, 't', n);
        buf[at] = bad[k];
        int want = bad[k] == '\0' ? UVMQTT_EBADUTF8 : UVMQTT_ETOPICWILD;
        ck_assert_msg(uvmqtt_topic_check((const uint8_t *)buf, n) == want,
                      "byte 0x%02x at %zu of %zu", (unsigned)(uint8_t)bad[k], at, n);
      }
    }
  }
}
END_TEST

START_TEST(topic_check_agrees_with_reference) {
  /* Random strings from pieces that hit every path: ASCII, separators,
   * wildcards, multi-byte characters and broken sequences. */
  static const char *const pieces[] = {"a",
                                       "b/",
                                       "/",
                                       "+",
                                       "#",
                                       "\xc3\xa9",
                                       "\xe6\x97\xa5",
                                       "\xf0\x9f\x98\x80",
                                       "\xc3",
                                       "\xed\xa0\x80",
                                       "\x80",
                                       "abcdefgh",
                                       "$"};
  uint64_t x = 0x70B1C5EEDull;
  int checked = 0;
  for (int round = 0; round < 20000; round++) {
    char buf[128];
    size_t n = 0;
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    unsigned count = (unsigned)(x >> 60);
    for (unsigned i = 0; i < count; i++) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      const char *p = pieces[(x >> 33) % (sizeof pieces / sizeof pieces[0])];
      memcpy(buf + n, p, strlen(p));
      n += strlen(p);
    }
    const uint8_t *t = (const uint8_t *)buf;
    int utf = uvmqtt_utf8_check(t, n);
    int wild = memchr(t, '+', n) != NULL || memchr(t, '#', n) != NULL;
    int got = uvmqtt_topic_check(t, n);
    int ok;
    if (n == 0) {
      ok = got == UVMQTT_EBADTOPIC;
    } else if (utf == 0) {
      ok = got == (wild ? UVMQTT_ETOPICWILD : 0);
    } else if (!wild) {
      ok = got == UVMQTT_EBADUTF8;
    } else {
      /* Both problems: whichever comes first from the left is reported. */
      ok = got == UVMQTT_EBADUTF8 || got == UVMQTT_ETOPICWILD;
    }
    if (!ok)
      ck_abort_msg("round %d: %zu bytes, utf8 %d, wildcard %d, got %d", round, n, utf, wild, got);
    checked++;
  }
  ck_assert_int_eq(checked, 20000);
}
END_TEST

START_TEST(topic_check_length_limit) {
  uint8_t *big = malloc(65536);
  ck_assert_ptr_nonnull(big);
  memset(big, 'a', 65536);
  ck_assert_int_eq(uvmqtt_topic_check(big, 65535), 0);
  ck_assert_int_eq(uvmqtt_topic_check(big, 65536), UVMQTT_EBADTOPIC);
  ck_assert_int_eq(uvmqtt_filter_check(big, 65535), 0);
  ck_assert_int_eq(uvmqtt_filter_check(big, 65536), UVMQTT_EBADTOPIC);
  free(big);
}
END_TEST

/* ---- Topic filters ------------------------------------------------------ */

START_TEST(filter_check_valid) {
  static const char *const ok[] = {
      "sport/tennis/player1/#",
      "sport/#",
      "#",
      "+",
      "+/tennis/#",
      "sport/+/player1",
      "+/+",
      "/+",
      "sport/+",
      "/",
      "//",
      "+//+",
      "$SYS/#",
      "$SYS/+/load",
      "a/b/c",
      "$share/group/sport/#",
      "$share/g/+",
      "$share/g/#",
      "$share/g//",
      "$share/g/a/+/b",
      "$sharex/+",
      "$share",
      "caf\xc3\xa9/+",
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    ck_assert_msg(filter_ok(ok[i]) == 0, "rejected \"%s\"", ok[i]);
  }
}
END_TEST

START_TEST(filter_check_invalid) {
  static const char *const bad[] = {
      "",
      "sport/tennis#",
      "sport/tennis/#/ranking",
      "sport+",
      "sport/+tennis",
      "+tennis",
      "#/",
      "##",
      "++",
      "a/#b",
      "a/b#",
      "a/++/b",
      "#/a",
      "+#",
      "#+",
      /* Shared subscriptions: empty name, wildcard in the name, no filter. */
      "$share//x",
      "$share/+/x",
      "$share/#/x",
      "$share/a+/x",
      "$share/g",
      "$share/g/",
      "$share/",
      "$share/g/a#",
      "$share/g/#/a",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_msg(filter_ok(bad[i]) == UVMQTT_EBADTOPIC, "accepted \"%s\" (%d)", bad[i],
                  filter_ok(bad[i]));
  }
}
END_TEST

START_TEST(filter_check_bad_utf8) {
  ck_assert_int_eq(filter_ok("a/\xff/#"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(filter_ok("$share/\xc0\x80/x"), UVMQTT_EBADUTF8);
  ck_assert_int_eq(uvmqtt_filter_check((const uint8_t *)"+/\0", 3), UVMQTT_EBADUTF8);
}
END_TEST

/* ---- Matching ------------------------------------------------------------ */

START_TEST(match_spec_multilevel_examples) {
  /* MQTT 3.1.1 / 5.0 section 4.7.1.2. */
  ck_assert_int_eq(match("sport/tennis/player1/#", "sport/tennis/player1"), 1);
  ck_assert_int_eq(match("sport/tennis/player1/#", "sport/tennis/player1/ranking"), 1);
  ck_assert_int_eq(match("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"), 1);
  ck_assert_int_eq(match("sport/#", "sport"), 1);
  ck_assert_int_eq(match("sport/#", "sport/"), 1);
  ck_assert_int_eq(match("sport/#", "sports"), 0);
  ck_assert_int_eq(match("sport/#", "spor"), 0);
  ck_assert_int_eq(match("#", "sport/tennis/player1"), 1);
  ck_assert_int_eq(match("#", "/"), 1);
  ck_assert_int_eq(match("sport/tennis/player1/#", "sport/tennis/player2"), 0);
  ck_assert_int_eq(match("sport/tennis/player1/#", "sport/tennis"), 0);
}
END_TEST

START_TEST(match_spec_single_level_examples) {
  /* Section 4.7.1.3. */
  ck_assert_int_eq(match("sport/tennis/+", "sport/tennis/player1"), 1);
  ck_assert_int_eq(match("sport/tennis/+", "sport/tennis/player2"), 1);
  ck_assert_int_eq(match("sport/tennis/+", "sport/tennis/player1/ranking"), 0);
  ck_assert_int_eq(match("sport/+", "sport"), 0);
  ck_assert_int_eq(match("sport/+", "sport/"), 1);
  ck_assert_int_eq(match("+", "sport"), 1);
  ck_assert_int_eq(match("+/tennis/#", "sport/tennis/player1"), 1);
  ck_assert_int_eq(match("+/tennis/#", "sport/tennis"), 1);
  ck_assert_int_eq(match("sport/+/player1", "sport/tennis/player1"), 1);
  ck_assert_int_eq(match("sport/+/player1", "sport//player1"), 1);
  ck_assert_int_eq(match("sport/+/player1", "sport/tennis/player2"), 0);
  ck_assert_int_eq(match("/finance", "/finance"), 1);
  ck_assert_int_eq(match("+/+", "/finance"), 1);
  ck_assert_int_eq(match("/+", "/finance"), 1);
  ck_assert_int_eq(match("+", "/finance"), 0);
  ck_assert_int_eq(match("+", "/x"), 0);
  ck_assert_int_eq(match("+/#", "sport"), 1);
}
END_TEST

START_TEST(match_dollar_topics) {
  /* Section 4.7.2. */
  ck_assert_int_eq(match("#", "$SYS/x"), 0);
  ck_assert_int_eq(match("#", "$SYS"), 0);
  ck_assert_int_eq(match("+/monitor/Clients", "$SYS/monitor/Clients"), 0);
  ck_assert_int_eq(match("$SYS/#", "$SYS/x"), 1);
  ck_assert_int_eq(match("$SYS/#", "$SYS"), 1);
  ck_assert_int_eq(match("$SYS/monitor/+", "$SYS/monitor/Clients"), 1);
  ck_assert_int_eq(match("$SYS/+", "$SYS/a/b"), 0);
  /* Only a leading '$' is special. */
  ck_assert_int_eq(match("+/x", "a$/x"), 1);
  ck_assert_int_eq(match("a/+", "a/$x"), 1);
  ck_assert_int_eq(match("a/#", "a/$x/y"), 1);
}
END_TEST

START_TEST(match_empty_levels) {
  ck_assert_int_eq(match("/", "/"), 1);
  ck_assert_int_eq(match("+/+", "/"), 1);
  ck_assert_int_eq(match("+", "/"), 0);
  ck_assert_int_eq(match("//", "//"), 1);
  ck_assert_int_eq(match("+/+/+", "//"), 1);
  ck_assert_int_eq(match("+/+", "//"), 0);
  ck_assert_int_eq(match("a//b", "a//b"), 1);
  ck_assert_int_eq(match("a/+/b", "a//b"), 1);
  ck_assert_int_eq(match("a/+/b", "a/b"), 0);
  ck_assert_int_eq(match("a/#", "a//"), 1);
  ck_assert_int_eq(match("/#", "/"), 1);
  ck_assert_int_eq(match("/#", "x"), 0);
}
END_TEST

START_TEST(match_literal) {
  ck_assert_int_eq(match("a/b/c", "a/b/c"), 1);
  ck_assert_int_eq(match("a/b/c", "a/b/c/"), 0);
  ck_assert_int_eq(match("a/b/c/", "a/b/c"), 0);
  ck_assert_int_eq(match("a/b/c", "a/b/cd"), 0);
  ck_assert_int_eq(match("a/b/cd", "a/b/c"), 0);
  ck_assert_int_eq(match("A/b", "a/b"), 0);
  ck_assert_int_eq(match("ab", "a/b"), 0);
  ck_assert_int_eq(match("a/b", "ab"), 0);
  ck_assert_int_eq(match("a/+/c", "a/bbb/cc"), 0);
  ck_assert_int_eq(match("a/+/+/d", "a/b/c/d"), 1);
  ck_assert_int_eq(match("a/+/+/d", "a/b/c/d/e"), 0);
  ck_assert_int_eq(match("a/+/#", "a/b"), 1);
  ck_assert_int_eq(match("a/+/#", "a"), 0);
}
END_TEST

START_TEST(match_shared_subscriptions) {
  ck_assert_int_eq(match("$share/consumer1/sport/tennis/+", "sport/tennis/player1"), 1);
  ck_assert_int_eq(match("$share/consumer1/sport/tennis/+", "sport/tennis"), 0);
  ck_assert_int_eq(match("$share/g/#", "a/b"), 1);
  ck_assert_int_eq(match("$share/g/#", "$SYS/a"), 0);
  ck_assert_int_eq(match("$share/g/$SYS/#", "$SYS/a"), 1);
  ck_assert_int_eq(match("$share/g/x", "$share/g/x"), 0);
  ck_assert_int_eq(match("$share/g/x", "x"), 1);
}
END_TEST

START_TEST(match_utf8_levels) {
  ck_assert_int_eq(match("caf\xc3\xa9/+", "caf\xc3\xa9/x"), 1);
  ck_assert_int_eq(match("+/\xe6\x97\xa5", "a/\xe6\x97\xa5"), 1);
  ck_assert_int_eq(match("+/\xe6\x97\xa5", "a/\xe6\x97\xa6"), 0);
}
END_TEST

START_TEST(match_does_not_read_past_lengths) {
  /* Lengths, not NUL terminators, bound the strings: a longer buffer with
   * a short length must match on the prefix only. */
  const char *f = "a/b/#xxxx";
  const char *t = "a/b/c/d";
  ck_assert_int_eq(uvmqtt_topic_match((const uint8_t *)f, 5, (const uint8_t *)t, 3), 1);
  ck_assert_int_eq(uvmqtt_topic_match((const uint8_t *)f, 3, (const uint8_t *)t, 5), 0);
  ck_assert_int_eq(uvmqtt_topic_match((const uint8_t *)f, 3, (const uint8_t *)t, 3), 1);
}
END_TEST

/* Splits a string into its levels: up to `max` (start, length) pairs. */
static size_t split_levels(const char *s, const char **start, size_t *len, size_t max) {
  size_t n = 0;
  for (;;) {
    const char *slash = strchr(s, '/');
    if (n == max) return n;
    start[n] = s;
    len[n] = slash ? (size_t)(slash - s) : strlen(s);
    n++;
    if (slash == NULL) return n;
    s = slash + 1;
  }
}

/* Matching the way section 4.7 describes it, level by level, to cross-check
 * the byte-stepping matcher. */
static int reference_match(const char *filter, const char *topic) {
  if ((filter[0] == '+' || filter[0] == '#') && topic[0] == '$') return 0;
  const char *fs[8], *ts[8];
  size_t fl[8], tl[8];
  size_t n = split_levels(filter, fs, fl, 8);
  size_t m = split_levels(topic, ts, tl, 8);
  for (size_t i = 0; i < n; i++) {
    if (fl[i] == 1 && fs[i][0] == '#') return 1;
    if (i >= m) return 0;
    if (fl[i] == 1 && fs[i][0] == '+') continue;
    if (fl[i] != tl[i] || memcmp(fs[i], ts[i], fl[i]) != 0) return 0;
  }
  return n == m;
}

START_TEST(match_agrees_with_reference) {
  /* All filters and topics over a small alphabet up to length 5. */
  static const char falpha[] = {'a', 'b', '/', '+', '#', '$'};
  static const char talpha[] = {'a', 'b', '/', '$'};
  char filter[8];
  char topic[8];
  unsigned long compared = 0;
  for (int flen = 1; flen <= 5; flen++) {
    unsigned long fcount = 1;
    for (int i = 0; i < flen; i++)
      fcount *= sizeof falpha;
    for (unsigned long fi = 0; fi < fcount; fi++) {
      unsigned long x = fi;
      for (int i = 0; i < flen; i++, x /= sizeof falpha)
        filter[i] = falpha[x % sizeof falpha];
      filter[flen] = '\0';
      if (filter_ok(filter) != 0) continue;
      for (int tlen = 1; tlen <= 5; tlen++) {
        unsigned long tcount = 1;
        for (int i = 0; i < tlen; i++)
          tcount *= sizeof talpha;
        for (unsigned long ti = 0; ti < tcount; ti++) {
          unsigned long y = ti;
          for (int i = 0; i < tlen; i++, y /= sizeof talpha)
            topic[i] = talpha[y % sizeof talpha];
          topic[tlen] = '\0';
          int want = reference_match(filter, topic);
          if (match(filter, topic) != want) {
            ck_abort_msg("filter \"%s\" topic \"%s\": expected %d", filter, topic, want);
          }
          compared++;
        }
      }
    }
  }
  ck_assert_uint_gt(compared, 100000);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("topic");

  /* The exhaustive cross-checks take a few seconds under sanitizers. */
  TCase *tc = tcase_create("utf8");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, utf8_accepts_ascii_and_empty);
  tcase_add_test(tc, utf8_rejects_nul_anywhere);
  tcase_add_test(tc, utf8_accepts_multibyte_boundaries);
  tcase_add_test(tc, utf8_accepts_multibyte_after_ascii_block);
  tcase_add_test(tc, utf8_rejects_overlong);
  tcase_add_test(tc, utf8_rejects_surrogates);
  tcase_add_test(tc, utf8_rejects_above_max);
  tcase_add_test(tc, utf8_rejects_stray_continuation);
  tcase_add_test(tc, utf8_rejects_bad_continuation);
  tcase_add_test(tc, utf8_rejects_truncated);
  tcase_add_test(tc, utf8_agrees_with_reference_on_all_short_inputs);
  tcase_add_test(tc, utf8_agrees_with_reference_on_every_code_point);
  suite_add_tcase(s, tc);

  tc = tcase_create("topic_name");
  tcase_add_test(tc, topic_check_valid_names);
  tcase_add_test(tc, topic_check_rejects_wildcards);
  tcase_add_test(tc, topic_check_rejects_empty_and_bad_utf8);
  tcase_add_test(tc, topic_check_wildcard_at_every_position);
  tcase_add_test(tc, topic_check_agrees_with_reference);
  tcase_add_test(tc, topic_check_length_limit);
  suite_add_tcase(s, tc);

  tc = tcase_create("filter");
  tcase_add_test(tc, filter_check_valid);
  tcase_add_test(tc, filter_check_invalid);
  tcase_add_test(tc, filter_check_bad_utf8);
  suite_add_tcase(s, tc);

  tc = tcase_create("match");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, match_spec_multilevel_examples);
  tcase_add_test(tc, match_spec_single_level_examples);
  tcase_add_test(tc, match_dollar_topics);
  tcase_add_test(tc, match_empty_levels);
  tcase_add_test(tc, match_literal);
  tcase_add_test(tc, match_shared_subscriptions);
  tcase_add_test(tc, match_utf8_levels);
  tcase_add_test(tc, match_does_not_read_past_lengths);
  tcase_add_test(tc, match_agrees_with_reference);
  suite_add_tcase(s, tc);
  return s;
}
