/* The HTTP/1.1 response heads the transports read before the MQTT stream
 * starts: the WebSocket upgrade (RFC 6455) and an HTTP proxy's answer to
 * CONNECT (RFC 9110). Pure functions without I/O, so a fuzzer can drive
 * them; no libuv, no OpenSSL. */
#ifndef UVMQTT_TRANSPORT_HTTP_H
#define UVMQTT_TRANSPORT_HTTP_H

#include <stddef.h>

/* The largest response head accepted, status line and blank line included.
 * A server that sends more is broken or hostile. */
#define UVMQTT__HTTP_HEAD_MAX 8192u

/* The base64 Sec-WebSocket-Accept for a 24-character key has 28. */
#define UVMQTT__WS_ACCEPT_LEN 28u

/* Checks the head of the response to a WebSocket upgrade request in the
 * first `len` bytes received. `accept` is the Sec-WebSocket-Accept value
 * the key requires (NUL-terminated). Returns 1 when the head is complete
 * and valid (*head_len: its length; WebSocket frames may follow it in the
 * buffer), 0 when more bytes are needed, or a negative error:
 * UVMQTT_EWSHEADER (too large, malformed, or an extension we did not
 * offer), UVMQTT_EWSHANDSHAKE (status not 101), UVMQTT_EWSUPGRADE,
 * UVMQTT_EWSACCEPT, UVMQTT_EWSPROTOCOL. */
int uvmqtt__ws_parse_response(const char *buf, size_t len, const char *accept, size_t *head_len);

/* Checks the head of a proxy's response to CONNECT. Returns 1 for a 2xx
 * status (*head_len as above; the tunnel's bytes may follow), 0 when more
 * bytes are needed, or UVMQTT_EPROXYHEADER, UVMQTT_EPROXYAUTH (407, or 401) or
 * UVMQTT_EPROXY (any other status). */
int uvmqtt__proxy_parse_response(const char *buf, size_t len, size_t *head_len);

#endif
