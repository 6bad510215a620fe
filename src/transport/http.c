/* Strict, bounded parsing of HTTP/1.1 response heads (see http.h). Only
 * CRLF line ends, no folded lines, header names made of token characters:
 * anything else is malformed, since a server that speaks sloppy HTTP here
 * is more likely confused or hostile than merely old. */
#include "transport/http.h"

#include <string.h>

#include "uvmqtt/errors.h"

typedef struct {
  const char *name;
  size_t name_len;
  const char *val;
  size_t val_len;
} header_t;

/* The length of the head (through its blank line), 0 when it is not
 * complete yet, or -1 when it cannot fit in UVMQTT__HTTP_HEAD_MAX. */
static long head_length(const char *b, size_t len) {
  size_t lim = len < UVMQTT__HTTP_HEAD_MAX ? len : UVMQTT__HTTP_HEAD_MAX;
  for (size_t i = 3; i < lim; i++)
    if (b[i] == '\n' && b[i - 1] == '\r' && b[i - 2] == '\n' && b[i - 3] == '\r')
      return (long)(i + 1);
  return len >= UVMQTT__HTTP_HEAD_MAX ? -1 : 0;
}

static int is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Field values and reason phrases: visible characters, spaces, tabs and
 * obs-text; no other control character. */
static int is_field_char(unsigned char c) {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static int equals_nocase(const char *a, size_t a_len, const char *b) {
  size_t b_len = strlen(b);
  if (a_len != b_len) return 0;
  for (size_t i = 0; i < a_len; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return 0;
  return 1;
}

/* Parses "HTTP/1.x SP 3DIGIT [SP reason] CRLF" at *p; returns the status
 * code and moves *p past the line, or -1 when malformed. */
static int status_line(const char **p, const char *end) {
  const char *s = *p;
  if (end - s < 14 || memcmp(s, "HTTP/1.", 7) != 0) return -1;
  if (s[7] < '0' || s[7] > '9' || s[8] != ' ') return -1;
  int code = 0;
  for (int i = 9; i < 12; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    code = code * 10 + (s[i] - '0');
  }
  s += 12;
  if (*s == ' ') {
    s++;
    while (s < end && *s != '\r') {
      if (!is_field_char((unsigned char)*s)) return -1;
      s++;
    }
  }
  if (end - s < 2 || s[0] != '\r' || s[1] != '\n') return -1;
  *p = s + 2;
  return code;
}

/* The next header line at *p (which stops at `end`, the blank line's CR).
 * Returns 1 with *h filled and *p past the line, 0 at the end of the head,
 * or -1 when the line is malformed. */
static int next_header(const char **p, const char *end, header_t *h) {
  const char *s = *p;
  if (s == end) return 0;
  h->name = s;
  while (s < end && is_tchar((unsigned char)*s))
    s++;
  h->name_len = (size_t)(s - h->name);
  if (h->name_len == 0 || s == end || *s != ':') return -1;
  s++;
  while (s < end && (*s == ' ' || *s == '\t'))
    s++;
  h->val = s;
  while (s < end && *s != '\r') {
    if (!is_field_char((unsigned char)*s)) return -1;
    s++;
  }
  const char *v_end = s;
  while (v_end > h->val && (v_end[-1] == ' ' || v_end[-1] == '\t'))
    v_end--;
  h->val_len = (size_t)(v_end - h->val);
  /* `end` is the CR of the final CRLFCRLF, so a line's CR before it always
   * has its LF within the head. */
  if (s == end || s[1] != '\n') return -1;
  *p = s + 2;
  return 1;
}

/* 1 when the comma-separated list `v` holds `token` (case-insensitive). */
static int list_has(const char *v, size_t len, const char *token) {
  size_t i = 0;
  while (i < len) {
    size_t start = i;
    while (i < len && v[i] != ',')
      i++;
    size_t a = start, b = i;
    while (a < b && (v[a] == ' ' || v[a] == '\t'))
      a++;
    while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
      b--;
    if (equals_nocase(v + a, b - a, token)) return 1;
    i++;
  }
  return 0;
}

/* Finds the head and parses its status line. Returns the status code with
 * *p at the first header line and *end at the blank line, 0 when the head
 * is incomplete, or `malformed`. */
static int start(const char *buf, size_t len, const char **p, const char **end, size_t *head_len,
                 int malformed) {
  long n = head_length(buf, len);
  if (n == 0) return 0;
  if (n < 0) return malformed;
  *head_len = (size_t)n;
  *p = buf;
  *end = buf + n - 2;
  int code = status_line(p, *end + 2);
  /* The status line's CRLF must not be the blank line's first half. */
  if (code < 0 || *p > *end) return malformed;
  return code;
}

int uvmqtt__ws_parse_response(const char *buf, size_t len, const char *accept, size_t *head_len) {
  const char *p, *end;
  int code = start(buf, len, &p, &end, head_len, UVMQTT_EWSHEADER);
  if (code <= 0) return code;
  int upgrade = 0, connection = 0, accepts = 0, accept_ok = 0, protocols = 0, protocol_ok = 0;
  int extensions = 0;
  header_t h;
  int r;
  while ((r = next_header(&p, end, &h)) == 1) {
    if (equals_nocase(h.name, h.name_len, "Upgrade")) {
      upgrade |= list_has(h.val, h.val_len, "websocket");
    } else if (equals_nocase(h.name, h.name_len, "Connection")) {
      connection |= list_has(h.val, h.val_len, "upgrade");
    } else if (equals_nocase(h.name, h.name_len, "Sec-WebSocket-Accept")) {
      accepts++;
      accept_ok = h.val_len == strlen(accept) && memcmp(h.val, accept, h.val_len) == 0;
    } else if (equals_nocase(h.name, h.name_len, "Sec-WebSocket-Protocol")) {
      /* The server selects exactly one of the offered subprotocols, and
       * their names are case-sensitive. */
      protocols++;
      protocol_ok = h.val_len == 4 && memcmp(h.val, "mqtt", 4) == 0;
    } else if (equals_nocase(h.name, h.name_len, "Sec-WebSocket-Extensions")) {
      extensions |= h.val_len > 0;
    }
  }
  /* A refusal says so even when its head is sloppy: the status is what the
   * application needs to hear. */
  if (code != 101) return UVMQTT_EWSHANDSHAKE;
  if (r < 0) return UVMQTT_EWSHEADER;
  if (!upgrade || !connection) return UVMQTT_EWSUPGRADE;
  if (accepts != 1 || !accept_ok) return UVMQTT_EWSACCEPT;
  if (protocols != 1 || !protocol_ok) return UVMQTT_EWSPROTOCOL;
  /* We offer no extension, so the server may not use one (RFC 6455 4.1). */
  if (extensions) return UVMQTT_EWSHEADER;
  return 1;
}

int uvmqtt__proxy_parse_response(const char *buf, size_t len, size_t *head_len) {
  const char *p, *end;
  int code = start(buf, len, &p, &end, head_len, UVMQTT_EPROXYHEADER);
  if (code <= 0) return code;
  header_t h;
  int r;
  while ((r = next_header(&p, end, &h)) == 1) {
  }
  /* 407 asks for credentials; some proxies (tinyproxy among them) answer
   * wrong ones with 401 instead. */
  if (code == 407 || code == 401) return UVMQTT_EPROXYAUTH;
  if (code < 200 || code > 299) return UVMQTT_EPROXY;
  if (r < 0) return UVMQTT_EPROXYHEADER;
  return 1;
}
