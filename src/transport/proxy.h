/* HTTP CONNECT proxies: the settings parsed from a proxy URL or from the
 * usual environment variables. The TCP transport performs the CONNECT step
 * itself (uvmqtt__transport_tcp_set_proxy), so TLS and WebSocket run
 * through the tunnel unchanged. */
#ifndef UVMQTT_TRANSPORT_PROXY_H
#define UVMQTT_TRANSPORT_PROXY_H

#include <stdint.h>

typedef struct uvmqtt__proxy_config_s {
  char host[256]; /* without brackets */
  uint16_t port;
  /* "Basic <base64(user:password)>", or "" without credentials. */
  char auth[1024];
} uvmqtt__proxy_config_t;

/* Parses "http://[user[:password]@]host[:port][/]" (the scheme may be left
 * out; the port is 1080 by default, as for curl; user and password may be
 * percent-encoded). Returns 0 or UVMQTT_EBADURI. */
int uvmqtt__proxy_parse(const char *url, uvmqtt__proxy_config_t *out);

/* The proxy URL the environment gives for a connection to `host`:
 * https_proxy (or HTTPS_PROXY) when `tls`, else http_proxy (lowercase only,
 * as curl: HTTP_PROXY can be set by a CGI request); NULL when none is set
 * or no_proxy (or NO_PROXY) names the host: "*", the host itself, or a
 * domain it belongs to (".example.com" and "example.com" both cover
 * "a.example.com"), in a comma-separated list. */
const char *uvmqtt__proxy_from_env(int tls, const char *host);

#endif
