/* The WebSocket transport (RFC 6455, subprotocol "mqtt"): MQTT in binary
 * frames, over the TCP transport for ws:// or over TLS for wss://. */
#ifndef UVMQTT_TRANSPORT_WS_H
#define UVMQTT_TRANSPORT_WS_H

#include "transport/tls.h"
#include "transport/transport.h"

typedef struct {
  const char *path;   /* the request target; NULL or "": "/mqtt" */
  const char *origin; /* NULL: no Origin header */
  /* Extra header lines sent verbatim ("Authorization: Bearer ..."), without
   * line ends. */
  const char *const *headers;
  size_t header_count;
} uvmqtt__ws_options_t;

/* Prepares a WebSocket transport on the poller's loop, like uvmqtt__transport_tcp_init.
 * With `tls` (wss://) it runs over the TLS transport and *tls is created on
 * first use as uvmqtt__transport_tls_init does; NULL: over TCP. The strings
 * in `opts` are referenced, not copied: they must outlive the transport.
 * connect() then resolves, connects, upgrades, and reports on_connect once
 * the server accepted the upgrade, or with a UVMQTT_EWS* error. Returns 0,
 * UVMQTT_ENOMEM or UVMQTT_EINVAL (a header line holding CR or LF). */
int uvmqtt__transport_ws_init(uvmqtt__transport_t *t, uvmqtt__poller_t *poller,
                              const uvmqtt__transport_cbs_t *cb, uvmqtt__tls_ctx_t **tls,
                              const uvmqtt__ws_options_t *opts);

#endif
