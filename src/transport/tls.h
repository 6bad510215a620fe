/* The TLS transport: OpenSSL over the TCP transport, driven entirely by
 * libuv callbacks (no blocking call, no thread).
 *
 * A client holds one context (an SSL_CTX built from its options, plus the
 * session of its last connection for resumption); each connection holds one
 * SSL object for as long as it is open. The transport fills the same vtable
 * as TCP, so the client sees a byte stream: on_connect comes once the
 * handshake finished and the certificate and host name were verified, or
 * with a UVMQTT_ETLS* error naming why not.
 */
#ifndef UVMQTT_TRANSPORT_TLS_H
#define UVMQTT_TRANSPORT_TLS_H

#include "transport/transport.h"
#include "uvmqtt.h"

/* The public uvmqtt_tls_context_t: reference counted, shared by the
 * configurations of any number of loops and threads. */
typedef struct uvmqtt_tls_context_s uvmqtt__tls_ctx_t;

/* Builds a context from `opts` (NULL: the defaults): loads the CAs (or the
 * system's trust store), the client certificate and key, and applies the
 * version, cipher and ALPN settings. Nothing of `opts` is kept. Returns 0 or
 * UVMQTT_ETLSCONFIG (a file that cannot be loaded, a key that does not match
 * the certificate, a bad cipher string or version), UVMQTT_EINVAL (an empty
 * or over-long ALPN name), UVMQTT_ENOMEM. */
int uvmqtt__tls_ctx_new(const uvmqtt_tls_options_t *opts, uvmqtt__tls_ctx_t **out);

/* Takes one more reference to `ctx` and returns it. */
uvmqtt__tls_ctx_t *uvmqtt__tls_ctx_ref(uvmqtt__tls_ctx_t *ctx);

/* Releases one reference; the last frees the context and its sessions.
 * Every connection made with it holds a reference through its owner's
 * configuration. NULL is ignored. */
void uvmqtt__tls_ctx_free(uvmqtt__tls_ctx_t *ctx);

/* 1 when the last completed handshake resumed the session of an earlier
 * connection, for tests. */
int uvmqtt__tls_ctx_reused(const uvmqtt__tls_ctx_t *ctx);

/* Completed handshakes with `ctx`, and how many of them resumed a session,
 * for tests. */
void uvmqtt__tls_ctx_counts(const uvmqtt__tls_ctx_t *ctx, unsigned long *handshakes,
                            unsigned long *resumed);

/* 1 when `t` is a TLS connection that OpenSSL handed over to
 * tls_record.c (its SSL object freed), for tests. */
int uvmqtt__transport_tls_handed_over(const uvmqtt__transport_t *t);

/* Prepares `t` as a TLS transport over TCP (clearing every field except
 * `data`), with the connection state on the heap; the context in *ctx is
 * used, or, when *ctx is NULL, a default one is built there first. The state
 * is released by close() (before on_close) or by a connect() that fails.
 * Returns 0, UVMQTT_ENOMEM or an error of uvmqtt__tls_ctx_new(). */
int uvmqtt__transport_tls_init(uvmqtt__transport_t *t, uvmqtt__poller_t *poller,
                               const uvmqtt__transport_cbs_t *cb, uvmqtt__tls_ctx_t **ctx);

#endif
