#include "transport/proxy.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "uvmqtt/errors.h"

static int hex(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes [s, end) into out (cap bytes, NUL-terminated). Returns
 * the length or -1. */
static long decode(const char *s, const char *end, char *out, size_t cap) {
  size_t n = 0;
  while (s < end) {
    int c = (unsigned char)*s++;
    if (c == '%') {
      if (end - s < 2 || hex(s[0]) < 0 || hex(s[1]) < 0) return -1;
      c = hex(s[0]) * 16 + hex(s[1]);
      s += 2;
    }
    if (n + 1 >= cap) return -1;
    out[n++] = (char)c;
  }
  out[n] = '\0';
  return (long)n;
}

int uvmqtt__proxy_parse(const char *url, uvmqtt__proxy_config_t *out) {
  memset(out, 0, sizeof *out);
  out->port = 1080;
  if (url == NULL) return UVMQTT_EBADURI;
  const char *p = url;
  if (strncmp(p, "http://", 7) == 0) p += 7;
  /* An https:// proxy would need TLS to the proxy itself: not supported. */
  if (strstr(p, "://") != NULL) return UVMQTT_EBADURI;
  const char *end = p + strcspn(p, "/");
  if (*end != '\0' && strcmp(end, "/") != 0) return UVMQTT_EBADURI;
  const char *at = NULL;
  for (const char *q = p; q < end; q++)
    if (*q == '@') at = q;
  if (at != NULL) {
    /* user:password, each percent-decoded, then base64 as Basic wants. */
    char user[512], pass[512], joined[1024];
    const char *colon = memchr(p, ':', (size_t)(at - p));
    long ul = decode(p, colon ? colon : at, user, sizeof user);
    long pl = colon ? decode(colon + 1, at, pass, sizeof pass) : 0;
    if (ul <= 0 || pl < 0) return UVMQTT_EBADURI;
    if (!colon) pass[0] = '\0';
    size_t n = (size_t)ul + 1 + (size_t)pl;
    if (n > sizeof joined) return UVMQTT_EBADURI;
    memcpy(joined, user, (size_t)ul);
    joined[ul] = ':';
    memcpy(joined + ul + 1, pass, (size_t)pl);
    memcpy(out->auth, "Basic ", 6);
    if (4 * ((n + 2) / 3) + 7 > sizeof out->auth) return UVMQTT_EBADURI;
    EVP_EncodeBlock((unsigned char *)out->auth + 6, (const unsigned char *)joined, (int)n);
    p = at + 1;
  }
  const char *host = p, *host_end;
  if (*p == '[') {
    host = p + 1;
    host_end = memchr(host, ']', (size_t)(end - host));
    if (host_end == NULL) return UVMQTT_EBADURI;
    p = host_end + 1;
  } else {
    host_end = memchr(p, ':', (size_t)(end - p));
    if (host_end == NULL) host_end = end;
    p = host_end;
  }
  size_t host_len = (size_t)(host_end - host);
  if (host_len == 0 || host_len >= sizeof out->host) return UVMQTT_EBADURI;
  memcpy(out->host, host, host_len);
  if (p < end) {
    if (*p != ':') return UVMQTT_EBADURI;
    char *stop;
    long port = strtol(p + 1, &stop, 10);
    if (stop == p + 1 || stop != end || port <= 0 || port > 65535) return UVMQTT_EBADURI;
    out->port = (uint16_t)port;
  }
  return 0;
}

static const char *env(const char *a, const char *b) {
  const char *v = getenv(a);
  if ((v == NULL || v[0] == '\0') && b != NULL) v = getenv(b);
  return v != NULL && v[0] != '\0' ? v : NULL;
}

static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Whether the entry [e, e_len) of no_proxy covers `host`. */
static int covers(const char *e, size_t e_len, const char *host) {
  /* A port in the entry is ignored: it covers every port of the host. */
  const char *colon = memchr(e, ':', e_len);
  if (colon != NULL && memchr(colon + 1, ':', e_len - (size_t)(colon + 1 - e)) == NULL)
    e_len = (size_t)(colon - e);
  if (e_len == 1 && e[0] == '*') return 1;
  if (e_len > 0 && e[0] == '.') {
    e++;
    e_len--;
  }
  size_t h_len = strlen(host);
  if (e_len == 0 || e_len > h_len) return 0;
  const char *tail = host + h_len - e_len;
  for (size_t i = 0; i < e_len; i++)
    if (lower((unsigned char)tail[i]) != lower((unsigned char)e[i])) return 0;
  return tail == host || tail[-1] == '.';
}

const char *uvmqtt__proxy_from_env(int tls, const char *host) {
  const char *url = tls ? env("https_proxy", "HTTPS_PROXY") : env("http_proxy", NULL);
  if (url == NULL) return NULL;
  const char *list = env("no_proxy", "NO_PROXY");
  while (list != NULL && *list) {
    size_t n = strcspn(list, ",");
    const char *e = list;
    size_t e_len = n;
    while (e_len > 0 && (*e == ' ' || *e == '\t')) {
      e++;
      e_len--;
    }
    while (e_len > 0 && (e[e_len - 1] == ' ' || e[e_len - 1] == '\t'))
      e_len--;
    if (covers(e, e_len, host)) return NULL;
    list += n;
    if (*list == ',') list++;
  }
  return url;
}
