/* uvmqtt: an MQTT 3.1.1 / 5.0 client that lives inside a libuv event loop.
 *
 * The caller owns the loop and the uvmqtt_client_t. Nothing here blocks.
 * Conventions (libuv's):
 *  - calls that can fail return a negative error (UVMQTT_E* or a libuv UV_E*
 *    passed through); uvmqtt_strerror() names it;
 *  - when a call that takes a callback fails, that callback never runs;
 *  - callbacks carry a status (0 or a negative error); MQTT reason codes from
 *    the broker are data beside it, never errors;
 *  - views (uvmqtt_bytes_t, uvmqtt_props_t) handed to a callback are valid only
 *    until it returns: copy what you keep;
 *  - closing the client from inside any of its callbacks is legal.
 */
#ifndef UVMQTT_H
#define UVMQTT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "uvmqtt/alloc.h"
#include "uvmqtt/codec.h"
#include "uvmqtt/delivery.h"
#include "uvmqtt/errors.h"
#include "uvmqtt/store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define UVMQTT_VERSION_MAJOR 0
#define UVMQTT_VERSION_MINOR 1
#define UVMQTT_VERSION_PATCH 0
#define UVMQTT_VERSION_HEX                                                                         \
  ((UVMQTT_VERSION_MAJOR << 16) | (UVMQTT_VERSION_MINOR << 8) | UVMQTT_VERSION_PATCH)

/* "0.1.0". */
const char *uvmqtt_version_string(void);
unsigned uvmqtt_version(void);

/* ---- Types --------------------------------------------------------------- */

typedef struct uvmqtt_client_s uvmqtt_client_t;

/* An incoming application message. */
typedef struct {
  uvmqtt_bytes_t topic; /* resolved when the broker used a topic alias */
  uvmqtt_bytes_t payload;
  uint8_t qos;
  uint8_t retain;
  uint8_t dup;
  uint16_t packet_id;
  const uvmqtt_props_t *props; /* v5 properties; NULL on 3.1.1 */
} uvmqtt_message_t;

typedef void (*uvmqtt_message_cb)(uvmqtt_client_t *client, const uvmqtt_message_t *msg, void *arg);

/* ---- Reconnect policy ---------------------------------------------------- */

/* What a reconnect policy is told after a lost connection or failed attempt. */
typedef struct {
  uint32_t attempt;      /* 1 for the first retry after a loss or the first failure */
  int status;            /* why: a negative error */
  uint8_t reason;        /* the broker's reason code (CONNACK or DISCONNECT), else 0 */
  uint64_t connected_ms; /* how long the last connection lived; 0 if it never came up */
  uint64_t down_ms;      /* time since the connection was lost (or the first attempt began) */
  const char *server;    /* the URI that failed or dropped us (valid during the call) */
} uvmqtt_reconnect_info_t;

/* Returns the delay in ms before the next attempt, or a negative value to
 * give up (the client then reports UVMQTT_EGAVEUP and stays disconnected). */
typedef int64_t (*uvmqtt_reconnect_fn)(void *state, const uvmqtt_reconnect_info_t *info);

typedef struct {
  uvmqtt_reconnect_fn fn; /* NULL: never reconnect */
  void *state;
} uvmqtt_reconnect_policy_t;

/* State of the built-in policies. One may be shared by many clients. */
typedef struct {
  uint32_t min_ms;       /* fixed: the delay; backoff: the first ceiling */
  uint32_t max_ms;       /* backoff: the largest ceiling */
  uint32_t max_attempts; /* 0: no limit */
  uint64_t max_total_ms; /* give up once down this long; 0: no limit */
  uint64_t rng;          /* jitter state; any seed, 0 picks one */
} uvmqtt_backoff_t;

/* Never reconnect (the plain client). */
int64_t uvmqtt_reconnect_never(void *state, const uvmqtt_reconnect_info_t *info);
/* umqtt.robust's behaviour: wait min_ms, try again, forever (or up to the limits). */
int64_t uvmqtt_reconnect_fixed(void *state, const uvmqtt_reconnect_info_t *info);
/* Exponential backoff with full jitter: a uniform delay in
 * [0, min(max_ms, min_ms * 2^(attempt-1))], within the limits. Refusals that
 * retrying cannot fix (bad credentials, not authorized, banned) wait max_ms.
 * The default policy, with min 500 ms, max 30 s, no limits. */
int64_t uvmqtt_reconnect_backoff(void *state, const uvmqtt_reconnect_info_t *info);
/* Backoff as above, but give up once down for max_total_ms (required). */
int64_t uvmqtt_reconnect_deadline(void *state, const uvmqtt_reconnect_info_t *info);

/* ---- TLS ---------------------------------------------------------------------- */

/* Protocol versions for uvmqtt_tls_options_t.min_version. */
#define UVMQTT_TLS_1_2 0x0303
#define UVMQTT_TLS_1_3 0x0304

/* Supplies the password of an encrypted private key: writes it into `buf`
 * (at most `size` bytes, no terminator needed) and returns its length, or -1
 * when there is none. Called from uvmqtt_client_init() only. */
typedef int (*uvmqtt_tls_password_cb)(char *buf, int size, void *arg);

/* TLS for "mqtts://" and "ssl://" servers (port 8883 by default). Zeroed
 * options are safe: the system's trusted CAs, certificate and host-name
 * verification, TLS 1.2 or later, server name indication. The client copies
 * what it needs: the struct and its strings may be freed after init. */
typedef struct {
  /* Trusted CAs: a PEM file and/or a directory of hashed certificates
   * (c_rehash). With neither, the system's trust store. */
  const char *ca_file;
  const char *ca_path;
  /* The client certificate (a PEM chain, leaf first) and its private key
   * (PEM), for brokers that ask for one. An encrypted key takes its password
   * from `key_password` or, when that is NULL, from `key_password_cb`. */
  const char *cert_file;
  const char *key_file;
  const char *key_password;
  uvmqtt_tls_password_cb key_password_cb;
  void *key_password_arg;
  uint16_t min_version; /* UVMQTT_TLS_1_2 (0: the default) or UVMQTT_TLS_1_3 */
  /* OpenSSL cipher strings: `ciphers` for TLS 1.2, `ciphersuites` for TLS
   * 1.3. NULL: OpenSSL's defaults. */
  const char *ciphers;
  const char *ciphersuites;
  /* ALPN protocol names offered in order, e.g. {"mqtt"} for brokers that
   * share port 443 with other protocols. */
  const char *const *alpn;
  size_t alpn_count;
  /* 1: send no server name (SNI). By default the URI's host name is sent,
   * never an IP address. */
  uint8_t no_sni;
  /* 1: a full handshake on every connection. By default the session of the
   * last connection is offered to the same server on the next, which saves
   * a round trip and the certificate exchange. */
  uint8_t no_resumption;
  /* 1: accept any certificate for any name. Encryption without
   * authentication: anyone on the path can read and change the traffic. For
   * tests against self-signed brokers only. */
  uint8_t insecure;
} uvmqtt_tls_options_t;

/* ---- Options ----------------------------------------------------------------- */

/* How attempts go through the server list (uvmqtt_options_t.server_order).
 * With every order, a server that refused us, could not be reached or
 * dropped the connection is tried last for a while (1 s after its first
 * failure, doubling with each failure in a row up to 30 s, cleared by its
 * next CONNACK): the others are tried first, and when every server is
 * serving such a penalty the one whose penalty ends first is tried. */
typedef enum {
  /* Start with the first server; after each loss or failed attempt go to
   * the next one. */
  UVMQTT_SERVERS_ROUND_ROBIN = 0,
  /* Start with a server chosen at random, then as round robin: a fleet
   * started with the same list spreads over the servers instead of all
   * connecting to the first. */
  UVMQTT_SERVERS_RANDOM_START,
  /* Stay with the last server that accepted us: after the loss of an
   * established connection try it again first; move to the next server
   * only when an attempt fails. */
  UVMQTT_SERVERS_STICKY
} uvmqtt_server_order_t;

typedef struct {
  /* Server(s): "mqtt://host:port" (port 1883 by default); host may be a name,
   * an IPv4 address or "[v6]". With several, attempts go round the list
   * (see server_order). */
  const char *uri;
  const char *const *uris;
  size_t uri_count;

  uint8_t version;       /* UVMQTT_V311 (default) or UVMQTT_V5 */
  const char *client_id; /* NULL or "": the broker assigns one (v5), or one is made up */
  uint8_t clean_start;   /* default 1 */
  uint16_t keepalive;    /* seconds; default 60; 0 disables */
  const char *username;
  const void *password;
  size_t password_len;

  /* Will. */
  const char *will_topic; /* NULL: no will */
  const void *will_payload;
  size_t will_payload_len;
  uint8_t will_qos;
  uint8_t will_retain;
  const uvmqtt_props_t *will_props; /* v5 */

  /* v5 CONNECT properties: session expiry, receive maximum, maximum packet
   * size, topic alias maximum (incoming aliases we accept), request
   * response/problem information, user properties. Enhanced authentication
   * (Authentication Method or Data) is not supported: init fails with
   * UVMQTT_EINVAL. */
  const uvmqtt_props_t *connect_props;

  uint32_t connect_timeout_ms; /* resolve + TCP + CONNACK; default 10000 */
  /* QoS 1/2 messages handed to the socket and not yet acknowledged, at
   * most; a v5 broker's Receive Maximum lowers it. 0: 20 (libmosquitto's
   * default; Mosquitto stalls 3.1.1 publishers with far more in flight). */
  uint16_t max_inflight;
  /* The largest packet accepted from the broker (whole packet, bytes); a
   * larger one closes the connection with UVMQTT_ETOOLARGE. v5 announces it
   * as Maximum Packet Size unless connect_props sets one. 0: 16 MiB. */
  uint32_t max_packet_size;

  /* 1: leave Maximum Packet Size out of the v5 CONNECT, for a minimal
   * CONNECT; max_packet_size still bounds what the client accepts. */
  uint8_t no_max_packet_size;

  /* How long uvmqtt_disconnect() waits, first for the handshakes in flight
   * to end, then for the broker to close the connection after DISCONNECT.
   * 0: 2000 ms. */
  uint32_t disconnect_timeout_ms;

  /* Offline queue and outgoing buffer bounds (the backpressure limit):
   * messages not yet acknowledged and bytes not yet written. 0: defaults
   * (65536 messages, 16 MiB). */
  uint32_t max_queued;
  size_t max_queued_bytes;
  uint8_t overflow; /* uvmqtt_overflow_t */

  uvmqtt_reconnect_policy_t reconnect; /* zero: backoff 500 ms..30 s */
  uint8_t no_reconnect;                /* 1: never reconnect (overrides `reconnect`) */
  uvmqtt_delivery_t delivery;          /* default: UNTIL_DELIVERED */
  uvmqtt_delivery_decide_fn decide;    /* for UVMQTT_DELIVERY_CUSTOM */
  void *decide_state;

  /* Where outgoing messages and their in-flight state are kept (see
   * uvmqtt/store.h). NULL: in memory only. The store must outlive the
   * client; messages it holds from an earlier process are restored by
   * uvmqtt_client_init() and sent after the first CONNACK (use the same
   * client id and clean_start 0 for QoS 2 exactly once across restarts). */
  const uvmqtt_store_t *store;

  /* TLS settings for "mqtts://" servers; NULL: the defaults (see
   * uvmqtt_tls_options_t). Certificate and host-name verification stay on
   * unless `insecure` is set; a TLS server is never reached in plaintext.
   * Given options, or a TLS server in the list, make uvmqtt_client_init()
   * load the CAs and keys at once, so it fails with UVMQTT_ETLSCONFIG when a
   * file cannot be read. Handshake failures reach on_connect as
   * UVMQTT_ETLS* errors. */
  const uvmqtt_tls_options_t *tls;

  /* The order in which attempts go through `uris` (uvmqtt_server_order_t);
   * 0: UVMQTT_SERVERS_ROUND_ROBIN. */
  uint8_t server_order;
} uvmqtt_options_t;

/* Fills `opts` with the defaults. */
void uvmqtt_options_init(uvmqtt_options_t *opts);

/* ---- Callbacks ------------------------------------------------------------------ */

/* The result of CONNACK. */
typedef struct {
  uint8_t reason; /* 0: accepted */
  uint8_t session_present;
  const uvmqtt_props_t *props; /* v5 CONNACK properties; NULL on 3.1.1 */
  const char *server;          /* the URI this connection went to */
} uvmqtt_connack_t;

/* Why a connection ended, and what happens next. */
typedef struct {
  int status;         /* the cause: UV_EOF, UVMQTT_EKEEPALIVE, UVMQTT_EREFUSED... */
  uint8_t reason;     /* the broker's reason code if it sent one (DISCONNECT/CONNACK) */
  uint8_t will_retry; /* 1: a reconnect is scheduled in retry_in_ms */
  uint64_t retry_in_ms;
  uint32_t attempt; /* the attempt number the policy was given */
} uvmqtt_disconnect_t;

/* Hook run before every connection attempt: it may change the options below
 * through uvmqtt_client_set_* calls (credentials, server). */
typedef void (*uvmqtt_pre_connect_cb)(uvmqtt_client_t *client, uint32_t attempt);

typedef struct {
  /* A connection came up (status 0, ack filled) or an attempt failed
   * (status < 0; for a refusal UVMQTT_EREFUSED with ack->reason). */
  void (*on_connect)(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack);
  /* An established connection or a failed attempt ended; says whether and
   * when the client retries. With will_retry 0 the client is now stopped
   * (status UVMQTT_EGAVEUP when the policy gave up). After
   * uvmqtt_disconnect() of an established connection it comes once the
   * DISCONNECT is written and the socket closed, with status 0. Not called
   * after uvmqtt_close(). */
  void (*on_disconnect)(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info);
  /* A message arrived that no per-subscription callback took. QoS 1/2 are
   * acknowledged after this returns. */
  uvmqtt_message_cb on_message;
  uvmqtt_pre_connect_cb pre_connect;
  /* With a store: the message published with `arg` is durable (status 0)
   * under the store's sync policy, so the application may forget it; or the
   * store failed (status < 0) and the message lives in memory only. */
  void (*on_stored)(uvmqtt_client_t *client, int status, void *arg);
  /* With a store: a message an earlier process published, restored by
   * uvmqtt_client_init(), finished (status and reason as for
   * uvmqtt_publish_cb; `arg` is NULL). Not called for messages still held
   * when the client is closed: they stay in the store. */
  void (*on_restored_done)(uvmqtt_client_t *client, int status, uint8_t reason, void *arg);
  /* After a reconnect that found no session the client subscribes again to
   * every filter it holds (with the properties of its uvmqtt_subscribe()
   * call); this reports each filter's outcome: status 0 with the broker's
   * reason code (granted QoS, or >= 0x80 refused), or an error (the
   * SUBSCRIBE could not be sent, e.g. UVMQTT_EPKTTOOBIG). The client keeps
   * the filter either way and tries again after the next session loss. */
  void (*on_resubscribe)(uvmqtt_client_t *client, int status, const char *filter, uint8_t reason);
} uvmqtt_callbacks_t;

/* A publish finished. status 0: QoS 0 written to the socket, QoS 1 PUBACK,
 * QoS 2 PUBCOMP received, with the broker's reason code (v5; >= 0x80 means
 * the broker refused it). Negative: UVMQTT_ENOTCONN (drop policy while
 * offline), UVMQTT_EEXPIRED, UVMQTT_EDROPPED, UVMQTT_ECLOSED (client closed),
 * or the connection's error. */
typedef void (*uvmqtt_publish_cb)(uvmqtt_client_t *client, int status, uint8_t reason, void *arg);

/* A SUBSCRIBE or UNSUBSCRIBE finished: status 0 with the broker's reason code
 * per filter (SUBACK: granted QoS 0-2 or >= 0x80 failure), or an error. */
typedef void (*uvmqtt_subscribe_cb)(uvmqtt_client_t *client, int status, const uint8_t *reasons,
                                    size_t count, void *arg);

typedef void (*uvmqtt_close_cb)(uvmqtt_client_t *client);

/* ---- Client --------------------------------------------------------------------------- */

struct uvmqtt_client_s {
  void *data;                    /* the application's */
  uv_loop_t *loop;               /* read-only */
  struct uvmqtt__client_s *impl; /* private */
};

/* Prepares a client on `loop`. Copies what it needs from `opts` (strings
 * included) and `cbs`, so both may be freed afterwards. Allocates the private
 * state; nothing touches the loop until uvmqtt_connect().
 * Errors: UVMQTT_EINVAL (NULL argument, bad option), UVMQTT_EBADURI,
 * UVMQTT_ENOMEM. */
int uvmqtt_client_init(uv_loop_t *loop, uvmqtt_client_t *client, const uvmqtt_options_t *opts,
                       const uvmqtt_callbacks_t *cbs);

/* Starts connecting (and reconnecting, per the policy). on_connect reports
 * each attempt. Errors: UVMQTT_EINVAL, UVMQTT_EBUSY (already started),
 * UVMQTT_ECLOSED. */
int uvmqtt_connect(uvmqtt_client_t *client);

/* Per-publish settings. NULL means QoS 0, no retain, the default delivery. */
typedef struct {
  uint8_t qos;
  uint8_t retain;
  const uvmqtt_props_t *props; /* v5 PUBLISH properties (topic alias is managed here) */
  uvmqtt_delivery_t delivery;
} uvmqtt_publish_opts_t;

/* Publishes a copy of topic and payload. `cb` (may be NULL) reports the end.
 * Errors (then no callback): UVMQTT_EINVAL, UVMQTT_EBADTOPIC, UVMQTT_EBADUTF8,
 * UVMQTT_EBADQOS, UVMQTT_EQOSNOTSUP, UVMQTT_ERETAINNOTSUP, UVMQTT_EPKTTOOBIG,
 * UVMQTT_EQUEUEFULL, UVMQTT_ENOMEM, UVMQTT_ECLOSED. */
int uvmqtt_publish(uvmqtt_client_t *client, const char *topic, const void *payload, size_t len,
                   const uvmqtt_publish_opts_t *opts, uvmqtt_publish_cb cb, void *arg);

/* Subscribes to `count` filters (options: UVMQTT_SUB_QOS(q) | flags). The
 * client remembers them and re-subscribes after a reconnect that found no
 * session. Messages matching a filter go to `on_message` when it is not NULL,
 * else to the client's on_message. `props` (v5, may be NULL) may carry a
 * subscription identifier and user properties.
 * Errors: UVMQTT_EINVAL, UVMQTT_EBADTOPIC, UVMQTT_ENOMEM, UVMQTT_ECLOSED. */
int uvmqtt_subscribe(uvmqtt_client_t *client, const uvmqtt_topic_sub_t *subs, size_t count,
                     const uvmqtt_props_t *props, uvmqtt_message_cb on_message,
                     uvmqtt_subscribe_cb cb, void *arg);

/* Unsubscribes and forgets the filters. Same errors as uvmqtt_subscribe(). */
int uvmqtt_unsubscribe(uvmqtt_client_t *client, const char *const *filters, size_t count,
                       uvmqtt_subscribe_cb cb, void *arg);

/* Stops gracefully and stops reconnecting. No new PUBLISH or SUBSCRIBE goes
 * out; the handshakes in flight (QoS 1/2 in both directions) may end within
 * disconnect_timeout_ms; then DISCONNECT (with `reason`, v5) goes out after
 * what is already queued for the socket, and nothing after it. The client
 * then half-closes the connection and waits (bounded by the same timeout)
 * for the broker to close, so the broker reads everything we sent; then
 * on_disconnect reports status 0. Messages still unacknowledged stay
 * queued: uvmqtt_connect() again resumes them. During a connection attempt
 * or a retry wait it just stops (on_disconnect follows for an attempt).
 * Errors: UVMQTT_ENOTCONN, UVMQTT_ECLOSED. */
int uvmqtt_disconnect(uvmqtt_client_t *client, uint8_t reason);

/* Closes the client: the connection drops without DISCONNECT (so a will is
 * sent), every pending publish/subscribe completes with UVMQTT_ECLOSED, every
 * handle is closed, and then `cb` runs. Memory is released before `cb`. With
 * a store, the messages the delivery policies would have kept stay in it,
 * unfinished: the next process with the same store sends them. Close the
 * store after `cb`.
 * Legal from inside any callback; a second call is ignored. */
void uvmqtt_close(uvmqtt_client_t *client, uvmqtt_close_cb cb);

/* State, for progress displays and tests. */
typedef struct {
  uint8_t connected;
  uint32_t queued;   /* messages not yet handed to the socket */
  uint32_t inflight; /* QoS 1/2 handed to the socket, not yet acknowledged */
  size_t queued_bytes;
  size_t write_bytes;  /* bytes waiting in the socket's write queue */
  uint32_t reconnects; /* connections established after the first */
  uint32_t attempts;   /* connection attempts made */
} uvmqtt_stats_t;

void uvmqtt_client_stats(const uvmqtt_client_t *client, uvmqtt_stats_t *out);

/* The client id in use (the broker-assigned one after a v5 CONNACK). */
const char *uvmqtt_client_id(const uvmqtt_client_t *client);

/* For pre_connect hooks: replace credentials or the server list's current
 * entry. Copies the strings. Errors: UVMQTT_EINVAL, UVMQTT_EBADURI,
 * UVMQTT_ENOMEM. */
int uvmqtt_client_set_credentials(uvmqtt_client_t *client, const char *username,
                                  const void *password, size_t password_len);
int uvmqtt_client_set_uri(uvmqtt_client_t *client, const char *uri);

#ifdef __cplusplus
}
#endif
#endif
