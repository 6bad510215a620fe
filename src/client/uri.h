/* Server URIs: "mqtt://host:port", "tcp://host:port", "host:port", "host",
 * with "[v6]" hosts. Port 1883 by default. WebSocket: "ws://host[:port][/path]"
 * (port 80) and "wss://..." (port 443). */
#ifndef UVMQTT_URI_H
#define UVMQTT_URI_H

#include <stdint.h>

typedef enum {
  UVMQTT__SCHEME_TCP = 0,
  UVMQTT__SCHEME_TLS,
  UVMQTT__SCHEME_WS,
  UVMQTT__SCHEME_WSS
} uvmqtt__scheme_t;

typedef struct {
  char host[256]; /* without brackets */
  uint16_t port;
  uint8_t scheme;
  const char *path; /* points into the parsed string: "/..." or "" when none */
} uvmqtt__uri_t;

/* Returns 0 or UVMQTT_EBADURI. */
int uvmqtt__uri_parse(const char *uri, uvmqtt__uri_t *out);

#endif
