#include "client/uri.h"

#include <stdlib.h>
#include <string.h>

#include "uvmqtt/errors.h"

static const struct {
  const char *prefix;
  uint8_t scheme;
  uint16_t port;
} schemes[] = {
    {"mqtt://", UVMQTT__SCHEME_TCP, 1883},  {"tcp://", UVMQTT__SCHEME_TCP, 1883},
    {"mqtts://", UVMQTT__SCHEME_TLS, 8883}, {"ssl://", UVMQTT__SCHEME_TLS, 8883},
    {"ws://", UVMQTT__SCHEME_WS, 80},       {"wss://", UVMQTT__SCHEME_WSS, 443},
};

int uvmqtt__uri_parse(const char *uri, uvmqtt__uri_t *out) {
  if (uri == NULL || out == NULL) return UVMQTT_EBADURI;
  memset(out, 0, sizeof *out);
  out->port = 1883;
  const char *p = uri;
  for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
    size_t n = strlen(schemes[i].prefix);
    if (strncmp(p, schemes[i].prefix, n) == 0) {
      out->scheme = schemes[i].scheme;
      out->port = schemes[i].port;
      p += n;
      break;
    }
  }
  if (strstr(p, "://") != NULL) return UVMQTT_EBADURI; /* an unknown scheme */
  const char *host = p, *host_end;
  if (*p == '[') {
    host = p + 1;
    host_end = strchr(host, ']');
    if (host_end == NULL) return UVMQTT_EBADURI;
    p = host_end + 1;
  } else {
    host_end = p + strcspn(p, ":/");
    p = host_end;
  }
  size_t host_len = (size_t)(host_end - host);
  if (host_len == 0 || host_len >= sizeof out->host) return UVMQTT_EBADURI;
  memcpy(out->host, host, host_len);
  out->host[host_len] = '\0';
  if (*p == ':') {
    char *end;
    long port = strtol(p + 1, &end, 10);
    if (end == p + 1 || port <= 0 || port > 65535) return UVMQTT_EBADURI;
    out->port = (uint16_t)port;
    p = end;
  }
  /* A trailing "/" (or path, for WebSocket) is allowed; anything else is not. */
  if (*p != '\0' && *p != '/') return UVMQTT_EBADURI;
  out->path = p;
  return 0;
}
