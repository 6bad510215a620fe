/* Topic names, topic filters and matching (MQTT 3.1.1 section 4.7, 5.0
 * sections 4.7 and 4.8.2). */
#include <stdint.h>
#include <string.h>

#include "codec/utf8.h"
#include "uvmqtt/codec.h"

/* Both kinds of string travel with a two-byte length prefix. */
#define MAX_TOPIC_LEN 65535u

#define SHARE_PREFIX     "$share/"
#define SHARE_PREFIX_LEN (sizeof(SHARE_PREFIX) - 1)

/* Every PUBLISH goes through here, so wildcards and UTF-8 are checked in
 * one pass over the name. */
int uvmqtt_topic_check(const uint8_t *topic, size_t len) {
  if (len == 0 || len > MAX_TOPIC_LEN) return UVMQTT_EBADTOPIC;
  return uvmqtt__utf8_scan(topic, len, 1);
}

/* Checks the wildcard placement of a plain filter (no share prefix). */
static int filter_levels_check(const uint8_t *f, size_t len) {
  if (len == 0) return UVMQTT_EBADTOPIC;
  for (size_t i = 0; i < len; i++) {
    if (f[i] != '+' && f[i] != '#') continue;
    int level_start = i == 0 || f[i - 1] == '/';
    int level_end = i + 1 == len || f[i + 1] == '/';
    if (!level_start || !level_end) return UVMQTT_EBADTOPIC;
    if (f[i] == '#' && i + 1 != len) return UVMQTT_EBADTOPIC;
  }
  return 0;
}

int uvmqtt_filter_check(const uint8_t *filter, size_t len) {
  if (len == 0 || len > MAX_TOPIC_LEN) return UVMQTT_EBADTOPIC;
  const uint8_t *f = filter;
  size_t flen = len;
  if (len >= SHARE_PREFIX_LEN && memcmp(filter, SHARE_PREFIX, SHARE_PREFIX_LEN) == 0) {
    /* "$share/ShareName/filter": the name is one non-empty level without
     * wildcards, and a filter must follow it (5.0 section 4.8.2). */
    const uint8_t *name = filter + SHARE_PREFIX_LEN;
    size_t rest = len - SHARE_PREFIX_LEN;
    const uint8_t *slash = memchr(name, '/', rest);
    if (slash == NULL || slash == name) return UVMQTT_EBADTOPIC;
    size_t name_len = (size_t)(slash - name);
    if (memchr(name, '+', name_len) != NULL || memchr(name, '#', name_len) != NULL) {
      return UVMQTT_EBADTOPIC;
    }
    f = slash + 1;
    flen = rest - name_len - 1;
  }
  int rc = filter_levels_check(f, flen);
  if (rc != 0) return rc;
  return uvmqtt_utf8_check(filter, len);
}

int uvmqtt_topic_match(const uint8_t *filter, size_t filter_len, const uint8_t *topic,
                       size_t topic_len) {
  if (filter_len >= SHARE_PREFIX_LEN && memcmp(filter, SHARE_PREFIX, SHARE_PREFIX_LEN) == 0) {
    const uint8_t *name = filter + SHARE_PREFIX_LEN;
    const uint8_t *slash = memchr(name, '/', filter_len - SHARE_PREFIX_LEN);
    if (slash == NULL) return 0;
    filter_len -= (size_t)(slash + 1 - filter);
    filter = slash + 1;
  }
  if (filter_len == 0) return 0;
  /* Topics starting with '$' are reserved for the server; a subscription
   * to everything must not pick them up (section 4.7.2). */
  if (topic_len > 0 && topic[0] == '$' && (filter[0] == '+' || filter[0] == '#')) return 0;

  /* Filter and topic advance byte by byte in step; '/' separators must
   * coincide, so levels line up without splitting them first. A '+' or '#'
   * can only stand at the start of a level in a valid filter. */
  size_t f = 0;
  size_t t = 0;
  while (f < filter_len) {
    uint8_t c = filter[f];
    if (c == '#') return 1;
    if (c == '+') {
      while (t < topic_len && topic[t] != '/')
        t++;
      f++;
      continue;
    }
    if (t == topic_len) {
      /* "a/#" also matches "a": the '#' includes the parent level. */
      return filter_len - f == 2 && c == '/' && filter[f + 1] == '#';
    }
    if (topic[t] != c) return 0;
    f++;
    t++;
  }
  return t == topic_len;
}
