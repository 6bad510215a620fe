/* uvmqtt-sub's output, byte for byte as mosquitto_sub 2.0 prints it.
 *
 * mosquitto_sub builds its JSON with cJSON, so what %j and %J print is
 * cJSON's: its string escapes, its number format ("%1.15g"), its pretty
 * layout with tabs, and for %J a payload parsed and printed again. The
 * code below follows those rules rather than any JSON printer's, so that
 * scripts written against mosquitto_sub's output keep working. */
#include "cli_format.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- Checking a format string --------------------------------------------------------- */

static int spec_known(char c) {
  return c != '\0' && strchr("%ACDEFIjJlmPpqRrStUxX", c) != NULL;
}

int cli_format_check(const char *fmt, char *err, size_t cap) {
  size_t len = strlen(fmt);
  for (size_t i = 0; i < len; i++) {
    if (fmt[i] == '%') {
      /* Flags, width and precision are skipped as mosquitto_sub skips
       * them; the format must not end inside them. */
      if (i == len - 1) goto incomplete;
      if (fmt[i + 1] == '-' && ++i == len - 1) goto incomplete;
      if (fmt[i + 1] == '0' && ++i == len - 1) goto incomplete;
      while (fmt[i + 1] >= '0' && fmt[i + 1] <= '9')
        if (++i == len - 1) goto incomplete;
      if (fmt[i + 1] == '.') {
        if (++i == len - 1) goto incomplete;
        while (fmt[i + 1] >= '0' && fmt[i + 1] <= '9')
          if (++i == len - 1) goto incomplete;
      }
      if (!spec_known(fmt[i + 1])) {
        snprintf(err, cap, "invalid format specifier '%c'", fmt[i + 1]);
        return -1;
      }
      i++;
    } else if (fmt[i] == '@') {
      if (i == len - 1) goto incomplete;
      i++;
    } else if (fmt[i] == '\\') {
      if (i == len - 1) {
        snprintf(err, cap, "incomplete escape specifier");
        return -1;
      }
      if (strchr("\\0aenrtv", fmt[i + 1]) == NULL) {
        snprintf(err, cap, "invalid escape specifier '%c'", fmt[i + 1]);
        return -1;
      }
      i++;
    }
  }
  return 0;
incomplete:
  snprintf(err, cap, "incomplete format specifier");
  return -1;
}

/* ---- A growable buffer ------------------------------------------------------------------ */

/* %J can only be printed once the whole payload has parsed, so JSON is
 * built here first and written out in one piece. */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
  int oom;
  int pretty;
  int depth;
} jbuf_t;

static void jput(jbuf_t *b, const void *p, size_t n) {
  if (b->oom) return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
      cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL) {
      b->oom = 1;
      return;
    }
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void jputs(jbuf_t *b, const char *s) {
  jput(b, s, strlen(s));
}

static void jputc(jbuf_t *b, char c) {
  jput(b, &c, 1);
}

/* cJSON's escapes: the two-character ones it knows, \u00XX for other
 * control characters, and every other byte as it is (UTF-8 included). */
static void jstring(jbuf_t *b, const uint8_t *s, size_t n) {
  jputc(b, '"');
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    char esc[8];
    switch (c) {
    case '"': jputs(b, "\\\""); break;
    case '\\': jputs(b, "\\\\"); break;
    case '\b': jputs(b, "\\b"); break;
    case '\f': jputs(b, "\\f"); break;
    case '\n': jputs(b, "\\n"); break;
    case '\r': jputs(b, "\\r"); break;
    case '\t': jputs(b, "\\t"); break;
    default:
      if (c < 32) {
        snprintf(esc, sizeof esc, "\\u%04x", c);
        jputs(b, esc);
      } else {
        jputc(b, (char)c);
      }
    }
  }
  jputc(b, '"');
}

/* cJSON takes strings as C strings: a value stops at its first NUL. */
static void jstring_c(jbuf_t *b, const uint8_t *s, size_t n) {
  const uint8_t *nul = n ? memchr(s, 0, n) : NULL;
  jstring(b, s, nul ? (size_t)(nul - s) : n);
}

static void jnumber(jbuf_t *b, double d) {
  char buf[64];
  if (isnan(d) || isinf(d)) {
    jputs(b, "null");
    return;
  }
  /* Fifteen digits unless they lose the value, as cJSON decides. */
  snprintf(buf, sizeof buf, "%1.15g", d);
  double back = strtod(buf, NULL);
  double larger = fabs(back) > fabs(d) ? fabs(back) : fabs(d);
  if (!(fabs(back - d) <= larger * DBL_EPSILON)) snprintf(buf, sizeof buf, "%1.17g", d);
  jputs(b, buf);
}

static void jtabs(jbuf_t *b, int n) {
  for (int i = 0; i < n; i++)
    jputc(b, '\t');
}

/* Objects: '{', then each member on its own tab-indented line when pretty;
 * `count` is the number of members already written. */
static void jobj_open(jbuf_t *b) {
  jputc(b, '{');
  b->depth++;
  if (b->pretty) jputc(b, '\n');
}

static void jkey(jbuf_t *b, int count, const uint8_t *key, size_t n) {
  if (count > 0) {
    jputc(b, ',');
    if (b->pretty) jputc(b, '\n');
  }
  if (b->pretty) jtabs(b, b->depth);
  jstring(b, key, n);
  jputc(b, ':');
  if (b->pretty) jputc(b, '\t');
}

static void jkey_s(jbuf_t *b, int count, const char *key) {
  jkey(b, count, (const uint8_t *)key, strlen(key));
}

static void jobj_close(jbuf_t *b, int count) {
  if (b->pretty) {
    if (count > 0) jputc(b, '\n');
    jtabs(b, b->depth - 1);
  }
  jputc(b, '}');
  b->depth--;
}

/* ---- Reprinting a JSON payload (%J) ------------------------------------------------------- */

/* cJSON's nesting limit: deeper payloads are "not valid JSON" to it. */
#define JSON_NESTING_LIMIT 1000

typedef struct {
  const uint8_t *p;
  size_t len;
  size_t pos;
  int depth;
  jbuf_t *out;
} jparse_t;

static void skip_ws(jparse_t *j) {
  /* cJSON skips every byte up to and including the space. */
  while (j->pos < j->len && j->p[j->pos] <= 32)
    j->pos++;
}

static int parse_value(jparse_t *j);

static int hex4(const uint8_t *s, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t c = s[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (unsigned)(c - 'A' + 10);
    else
      return -1;
  }
  *out = v;
  return 0;
}

static size_t utf8_put(uint8_t *d, unsigned cp) {
  if (cp < 0x80) {
    d[0] = (uint8_t)cp;
    return 1;
  }
  if (cp < 0x800) {
    d[0] = (uint8_t)(0xC0 | (cp >> 6));
    d[1] = (uint8_t)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    d[0] = (uint8_t)(0xE0 | (cp >> 12));
    d[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    d[2] = (uint8_t)(0x80 | (cp & 0x3F));
    return 3;
  }
  d[0] = (uint8_t)(0xF0 | (cp >> 18));
  d[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
  d[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
  d[3] = (uint8_t)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string at j->pos and prints it again, as a key when `key`. */
static int parse_string(jparse_t *j, int key, int count) {
  if (j->pos >= j->len || j->p[j->pos] != '"') return -1;
  size_t start = j->pos + 1, end = start;
  while (end < j->len && j->p[end] != '"') {
    if (j->p[end] == '\\') end++;
    end++;
  }
  if (end >= j->len) return -1;
  /* Decoding never makes the text longer. */
  uint8_t *d = malloc(end - start + 1);
  if (d == NULL) return -1;
  size_t n = 0;
  for (size_t i = start; i < end;) {
    if (j->p[i] != '\\') {
      d[n++] = j->p[i++];
      continue;
    }
    uint8_t c = j->p[i + 1], plain;
    switch (c) {
    case 'b': plain = '\b'; break;
    case 'f': plain = '\f'; break;
    case 'n': plain = '\n'; break;
    case 'r': plain = '\r'; break;
    case 't': plain = '\t'; break;
    case '"':
    case '\\':
    case '/': plain = c; break;
    default: plain = 0; break;
    }
    if (plain) {
      d[n++] = plain;
      i += 2;
      continue;
    }
    unsigned cp, lo;
    if (c != 'u' || end - i < 6) goto fail;
    /* cJSON reads bad hex digits in the first unit as U+0000, which then
     * ends the string, rather than as an error. */
    if (hex4(j->p + i + 2, &cp) != 0) cp = 0;
    i += 6;
    if (cp >= 0xDC00 && cp <= 0xDFFF) goto fail;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (end - i < 6 || j->p[i] != '\\' || j->p[i + 1] != 'u' || hex4(j->p + i + 2, &lo) != 0 ||
          lo < 0xDC00 || lo > 0xDFFF)
        goto fail;
      i += 6;
      cp = 0x10000 + (((cp & 0x3FF) << 10) | (lo & 0x3FF));
    }
    n += utf8_put(d + n, cp);
  }
  j->pos = end + 1;
  /* A \u0000 ends the string for cJSON, which keeps C strings. */
  if (key)
    jkey(j->out, count, d, strnlen((const char *)d, n));
  else
    jstring_c(j->out, d, n);
  free(d);
  return 0;
fail:
  free(d);
  return -1;
}

static int parse_number(jparse_t *j) {
  char buf[64];
  size_t n = 0;
  while (n < sizeof buf - 1 && j->pos + n < j->len &&
         strchr("0123456789+-eE.", j->p[j->pos + n]) != NULL && j->p[j->pos + n] != '\0') {
    buf[n] = (char)j->p[j->pos + n];
    n++;
  }
  buf[n] = '\0';
  char *after;
  double d = strtod(buf, &after);
  if (after == buf) return -1;
  j->pos += (size_t)(after - buf);
  jnumber(j->out, d);
  return 0;
}

static int parse_array(jparse_t *j) {
  if (j->depth >= JSON_NESTING_LIMIT) return -1;
  j->depth++;
  j->pos++;
  jputc(j->out, '[');
  j->out->depth++;
  skip_ws(j);
  if (j->pos < j->len && j->p[j->pos] == ']') goto done;
  for (int first = 1;; first = 0) {
    if (!first) {
      jputc(j->out, ',');
      if (j->out->pretty) jputc(j->out, ' ');
    }
    skip_ws(j);
    if (parse_value(j) != 0) return -1;
    skip_ws(j);
    if (j->pos < j->len && j->p[j->pos] == ',') {
      j->pos++;
      continue;
    }
    if (j->pos < j->len && j->p[j->pos] == ']') break;
    return -1;
  }
done:
  j->pos++;
  jputc(j->out, ']');
  j->out->depth--;
  j->depth--;
  return 0;
}

static int parse_object(jparse_t *j) {
  if (j->depth >= JSON_NESTING_LIMIT) return -1;
  j->depth++;
  j->pos++;
  jobj_open(j->out);
  int count = 0;
  skip_ws(j);
  if (j->pos < j->len && j->p[j->pos] == '}') goto done;
  for (;;) {
    skip_ws(j);
    if (parse_string(j, 1, count) != 0) return -1;
    count++;
    skip_ws(j);
    if (j->pos >= j->len || j->p[j->pos] != ':') return -1;
    j->pos++;
    skip_ws(j);
    if (parse_value(j) != 0) return -1;
    skip_ws(j);
    if (j->pos < j->len && j->p[j->pos] == ',') {
      j->pos++;
      continue;
    }
    if (j->pos < j->len && j->p[j->pos] == '}') break;
    return -1;
  }
done:
  j->pos++;
  jobj_close(j->out, count);
  j->depth--;
  return 0;
}

static int literal(jparse_t *j, const char *word) {
  size_t n = strlen(word);
  if (j->len - j->pos < n || memcmp(j->p + j->pos, word, n) != 0) return 0;
  j->pos += n;
  jputs(j->out, word);
  return 1;
}

static int parse_value(jparse_t *j) {
  if (j->pos >= j->len) return -1;
  if (literal(j, "null") || literal(j, "false") || literal(j, "true")) return 0;
  uint8_t c = j->p[j->pos];
  if (c == '"') return parse_string(j, 0, 0);
  if (c == '-' || (c >= '0' && c <= '9')) return parse_number(j);
  if (c == '[') return parse_array(j);
  if (c == '{') return parse_object(j);
  return -1;
}

/* The whole payload must be one JSON value; a NUL ends cJSON's text early
 * and so makes it invalid. */
static int reprint_json(jbuf_t *out, const uint8_t *p, size_t len) {
  jparse_t j = {.p = p, .len = len, .out = out};
  if (memchr(p, 0, len) != NULL) return -1;
  if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) j.pos = 3;
  skip_ws(&j);
  if (parse_value(&j) != 0) return -1;
  skip_ws(&j);
  return j.pos == len ? 0 : -1;
}

/* ---- Time ----------------------------------------------------------------------------------- */

typedef struct {
  struct tm tm;
  long ns;
} stamp_t;

static void stamp_now(stamp_t *s) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  time_t t = ts.tv_sec;
  localtime_r(&t, &s->tm);
  s->ns = ts.tv_nsec;
}

/* ---- %j and %J ------------------------------------------------------------------------------- */

static const char *prop_json_name(uint8_t id) {
  switch (id) {
  case UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR: return "payload-format-indicator";
  case UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL: return "message-expiry-interval";
  case UVMQTT_PROP_CONTENT_TYPE: return "content-type";
  case UVMQTT_PROP_RESPONSE_TOPIC: return "response-topic";
  case UVMQTT_PROP_CORRELATION_DATA: return "correlation-data";
  case UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER: return "subscription-identifier";
  case UVMQTT_PROP_TOPIC_ALIAS: return "topic-alias";
  default: return NULL;
  }
}

static int has_props(const uvmqtt_message_t *m) {
  return m->props != NULL && m->props->raw.len > 0;
}

/* The "properties" member, in the order the broker sent them. cJSON puts
 * every user property into one "user-properties" object where the first
 * one stood, duplicate names included. */
static void json_props(jbuf_t *b, const uvmqtt_props_t *props) {
  size_t off = 0;
  uvmqtt_prop_t p;
  int count = 0, users_done = 0;
  jobj_open(b);
  while (uvmqtt_props_next(props->raw, &off, &p) == 1) {
    if (p.id == UVMQTT_PROP_USER_PROPERTY) {
      if (users_done) continue;
      users_done = 1;
      jkey_s(b, count++, "user-properties");
      jobj_open(b);
      size_t uoff = 0;
      int ucount = 0;
      uvmqtt_prop_t u;
      while (uvmqtt_props_next(props->raw, &uoff, &u) == 1) {
        if (u.id != UVMQTT_PROP_USER_PROPERTY) continue;
        const uint8_t *nul = u.str.len ? memchr(u.str.data, 0, u.str.len) : NULL;
        jkey(b, ucount++, u.str.data, nul ? (size_t)(nul - u.str.data) : u.str.len);
        jstring_c(b, u.value.data, u.value.len);
      }
      jobj_close(b, ucount);
      continue;
    }
    const char *name = prop_json_name(p.id);
    if (name == NULL) continue;
    jkey_s(b, count++, name);
    switch (p.id) {
    case UVMQTT_PROP_CONTENT_TYPE:
    case UVMQTT_PROP_RESPONSE_TOPIC:
    case UVMQTT_PROP_CORRELATION_DATA: jstring_c(b, p.str.data, p.str.len); break;
    default: jnumber(b, (double)p.u32); break;
    }
  }
  jobj_close(b, count);
}

/* mosquitto_sub's %j (escaped) and %J (parsed) object. Returns -1 when
 * the payload of %J is not JSON. */
static int json_message(jbuf_t *b, const uvmqtt_message_t *m, const stamp_t *t, int escaped) {
  char tst[64];
  int count = 0;
  /* The "Z" before the offset is mosquitto_sub's. */
  strftime(tst, sizeof tst, "%Y-%m-%dT%H:%M:%S", &t->tm);
  size_t n = strlen(tst);
  snprintf(tst + n, sizeof tst - n, ".%06ldZ", t->ns / 1000);
  n = strlen(tst);
  strftime(tst + n, sizeof tst - n, "%z", &t->tm);

  jobj_open(b);
  jkey_s(b, count++, "tst");
  jstring(b, (const uint8_t *)tst, strlen(tst));
  jkey_s(b, count++, "topic");
  jstring_c(b, m->topic.data, m->topic.len);
  jkey_s(b, count++, "qos");
  jnumber(b, m->qos);
  jkey_s(b, count++, "retain");
  jnumber(b, m->retain ? 1 : 0);
  jkey_s(b, count++, "payloadlen");
  jnumber(b, m->payload.len);
  if (m->qos > 0) {
    jkey_s(b, count++, "mid");
    jnumber(b, m->packet_id);
  }
  if (has_props(m)) {
    jkey_s(b, count++, "properties");
    json_props(b, m->props);
  }
  jkey_s(b, count++, "payload");
  if (m->payload.len == 0) {
    jputs(b, "null");
  } else if (escaped) {
    jstring_c(b, m->payload.data, m->payload.len);
  } else if (reprint_json(b, m->payload.data, m->payload.len) != 0) {
    return -1;
  }
  jobj_close(b, count);
  return 0;
}

/* ---- -F -------------------------------------------------------------------------------------- */

typedef struct {
  char align; /* '-' for left alignment */
  char pad;   /* ' ' or '0' */
  int width;
  int precision; /* -1: none */
} field_t;

/* mosquitto_sub's payload field, quirks included: a width also cuts the
 * payload, hex halves what is left, and a left-aligned field without a
 * width is followed by as many blanks as the payload is long. */
static void put_payload(FILE *out, const uvmqtt_bytes_t *p, int hex, const field_t *f) {
  int len = (int)p->len;
  int padlen;
  if (f->width > 0) {
    if (len > f->width) len = f->width;
    if (hex) {
      len /= 2;
      padlen = f->width - len * 2;
    } else {
      padlen = f->width - len;
    }
  } else {
    padlen = f->width - len;
  }
  if (f->align != '-')
    for (int i = 0; i < padlen; i++)
      fputc(f->pad, out);
  if (!hex) {
    if (len > 0) fwrite(p->data, 1, (size_t)len, out);
  } else {
    for (int i = 0; i < len; i++)
      fprintf(out, hex == 1 ? "%02x" : "%02X", p->data[i]);
  }
  if (f->align == '-') fprintf(out, "%*s", padlen, "");
}

static void put_blank(FILE *out, char pad, int width) {
  for (int i = 0; i < width; i++)
    fputc(pad, out);
}

static void put_int(FILE *out, long v, const field_t *f) {
  if (f->width == 0)
    fprintf(out, "%ld", v);
  else if (f->align == '-')
    fprintf(out, "%-*ld", f->width, v);
  else if (f->pad == '0')
    fprintf(out, "%0*ld", f->width, v);
  else
    fprintf(out, "%*ld", f->width, v);
}

/* A string field, printf's %*.*s on the bytes up to the first NUL. */
static void put_str(FILE *out, const uint8_t *s, size_t n, const field_t *f) {
  const uint8_t *nul = n ? memchr(s, 0, n) : NULL;
  int len = (int)(nul ? (size_t)(nul - s) : n);
  if (f->precision >= 0 && len > f->precision) len = f->precision;
  int padlen = f->width > len ? f->width - len : 0;
  if (f->align != '-') put_blank(out, ' ', padlen);
  if (len > 0) fwrite(s, 1, (size_t)len, out);
  if (f->align == '-') put_blank(out, ' ', padlen);
}

/* The first property `id` of the message, if it has one. */
static int find_prop(const uvmqtt_message_t *m, uint8_t id, uvmqtt_prop_t *out) {
  if (!has_props(m)) return 0;
  size_t off = 0;
  while (uvmqtt_props_next(m->props->raw, &off, out) == 1)
    if (out->id == id) return 1;
  return 0;
}

static void put_json(FILE *out, const cli_opts_t *o, const uvmqtt_message_t *m, int escaped) {
  jbuf_t b = {.pretty = o->pretty};
  stamp_t t;
  stamp_now(&t);
  if (json_message(&b, m, &t, escaped) != 0) {
    cli_error(o, "message payload is not valid JSON on topic %.*s", (int)m->topic.len,
              (const char *)m->topic.data);
  } else if (b.oom) {
    cli_error(o, "out of memory");
  } else {
    fwrite(b.data, 1, b.len, out);
  }
  free(b.data);
}

static void put_spec(FILE *out, const cli_opts_t *o, const uvmqtt_message_t *m, char spec,
                     const field_t *f) {
  uvmqtt_prop_t p;
  stamp_t t;
  char buf[128];
  switch (spec) {
  case '%': fputc('%', out); break;
  case 'A':
  case 'E':
  case 'F':
  case 'S': {
    uint8_t id = spec == 'A'   ? UVMQTT_PROP_TOPIC_ALIAS
                 : spec == 'E' ? UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL
                 : spec == 'F' ? UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR
                               : UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER;
    /* mosquitto_sub prints these through an int. */
    if (find_prop(m, id, &p))
      put_int(out, (long)(int)p.u32, f);
    else
      put_blank(out, f->pad, f->width);
    break;
  }
  case 'C':
    if (find_prop(m, UVMQTT_PROP_CONTENT_TYPE, &p))
      put_str(out, p.str.data, p.str.len, f);
    else
      put_blank(out, ' ', f->width);
    break;
  case 'D':
    if (find_prop(m, UVMQTT_PROP_CORRELATION_DATA, &p) && p.str.len)
      fwrite(p.str.data, 1, p.str.len, out);
    break;
  case 'R':
    if (find_prop(m, UVMQTT_PROP_RESPONSE_TOPIC, &p)) put_str(out, p.str.data, p.str.len, f);
    break;
  case 'P':
    if (has_props(m)) {
      size_t off = 0;
      int n = 0;
      while (uvmqtt_props_next(m->props->raw, &off, &p) == 1) {
        if (p.id != UVMQTT_PROP_USER_PROPERTY) continue;
        if (n++) fputc(' ', out);
        fprintf(out, "%.*s:%.*s", (int)p.str.len, (const char *)p.str.data, (int)p.value.len,
                (const char *)p.value.data);
      }
    }
    break;
  case 'I':
    stamp_now(&t);
    if (strftime(buf, sizeof buf, "%FT%T%z", &t.tm) != 0)
      put_str(out, (const uint8_t *)buf, strlen(buf), f);
    else
      put_blank(out, ' ', f->width);
    break;
  case 'U':
    stamp_now(&t);
    if (strftime(buf, sizeof buf, "%s", &t.tm) != 0) fprintf(out, "%s.%09ld", buf, t.ns);
    break;
  case 'j': put_json(out, o, m, 1); break;
  case 'J': put_json(out, o, m, 0); break;
  case 'l': put_int(out, (long)m->payload.len, f); break;
  case 'm': put_int(out, m->packet_id, f); break;
  case 'p': put_payload(out, &m->payload, 0, f); break;
  case 'x': put_payload(out, &m->payload, 1, f); break;
  case 'X': put_payload(out, &m->payload, 2, f); break;
  case 'q': fputc('0' + m->qos, out); break;
  case 'r': fputc(m->retain ? '1' : '0', out); break;
  case 't': put_str(out, m->topic.data, m->topic.len, f); break;
  default: break;
  }
}

static void put_formatted(FILE *out, const cli_opts_t *o, const uvmqtt_message_t *m) {
  const char *fmt = o->format;
  size_t len = strlen(fmt);
  stamp_t t;
  int have_time = 0;
  for (size_t i = 0; i < len; i++) {
    char c = fmt[i];
    if (c == '%') {
      field_t f = {.align = 0, .pad = ' ', .width = 0, .precision = -1};
      if (i >= len - 1) continue;
      i++;
      if (fmt[i] == '-') {
        f.align = '-';
        if (i < len - 1) i++;
      }
      if (fmt[i] == '0') {
        f.pad = '0';
        if (i < len - 1) i++;
      }
      while (i < len - 1 && fmt[i] >= '0' && fmt[i] <= '9')
        f.width = f.width * 10 + (fmt[i++] - '0');
      if (fmt[i] == '.' && i < len - 1) {
        i++;
        f.precision = 0;
        while (i < len - 1 && fmt[i] >= '0' && fmt[i] <= '9')
          f.precision = f.precision * 10 + (fmt[i++] - '0');
      }
      put_spec(out, o, m, fmt[i], &f);
    } else if (c == '@') {
      if (i >= len - 1) continue;
      i++;
      if (fmt[i] == '@') {
        fputc('@', out);
        continue;
      }
      /* One time for all of a message's @ sequences, as mosquitto_sub. */
      if (!have_time) {
        stamp_now(&t);
        have_time = 1;
      }
      if (fmt[i] == 'N') {
        fprintf(out, "%09ld", t.ns);
      } else {
        char spec[3] = {'%', fmt[i], '\0'}, buf[128];
        /* strftime's format comes from the user by design: -F '@Y'. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#endif
        if (strftime(buf, sizeof buf, spec, &t.tm) != 0) fputs(buf, out);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
      }
    } else if (c == '\\') {
      if (i >= len - 1) continue;
      i++;
      switch (fmt[i]) {
      case '\\': fputc('\\', out); break;
      case '0': fputc('\0', out); break;
      case 'a': fputc('\a', out); break;
      case 'e': fputc('\033', out); break;
      case 'n': fputc('\n', out); break;
      case 'r': fputc('\r', out); break;
      case 't': fputc('\t', out); break;
      case 'v': fputc('\v', out); break;
      default: break;
      }
    } else {
      fputc(c, out);
    }
  }
  if (!o->no_newline) fputc('\n', out);
}

void cli_format_message(FILE *out, const cli_opts_t *o, const uvmqtt_message_t *m) {
  if (o->format != NULL) {
    put_formatted(out, o, m);
    return;
  }
  if (o->verbose) {
    /* An empty message shows as "topic (null)", and not at all with -N. */
    if (m->payload.len) {
      fwrite(m->topic.data, 1, m->topic.len, out);
      fputc(' ', out);
      fwrite(m->payload.data, 1, m->payload.len, out);
      if (!o->no_newline) fputc('\n', out);
    } else if (!o->no_newline) {
      fwrite(m->topic.data, 1, m->topic.len, out);
      fputs(" (null)\n", out);
    }
    return;
  }
  /* mosquitto_sub prints nothing at all for an empty payload. */
  if (m->payload.len) {
    fwrite(m->payload.data, 1, m->payload.len, out);
    if (!o->no_newline) fputc('\n', out);
  }
}
