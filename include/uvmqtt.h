/** \file
 * uvmqtt: an MQTT 3.1.1 / 5.0 client that lives inside a libuv event loop.
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

/** The major version of these headers; the library reports its own through uvmqtt_version(). */
#define UVMQTT_VERSION_MAJOR 0
/** The minor version of these headers. */
#define UVMQTT_VERSION_MINOR 1
/** The patch version of these headers. */
#define UVMQTT_VERSION_PATCH 0
/** The version of these headers as one number, 0xMMmmpp, to compare in the preprocessor. */
#define UVMQTT_VERSION_HEX                                                                         \
  ((UVMQTT_VERSION_MAJOR << 16) | (UVMQTT_VERSION_MINOR << 8) | UVMQTT_VERSION_PATCH)

/** "0.1.0". */
const char *uvmqtt_version_string(void);
/** The library's version as UVMQTT_VERSION_HEX computes it, which may differ from the headers'. */
unsigned uvmqtt_version(void);

/* ---- Types --------------------------------------------------------------- */

/** A client: one MQTT connection and its session, on one loop. */
typedef struct uvmqtt_client_s uvmqtt_client_t;

/** An incoming application message. */
typedef struct {
  uvmqtt_bytes_t topic;        /**< resolved when the broker used a topic alias */
  uvmqtt_bytes_t payload;      /**< the application message, a view */
  uint8_t qos;                 /**< 0, 1 or 2 */
  uint8_t retain;              /**< 1: a retained message */
  uint8_t dup;                 /**< 1: the broker may have sent it before */
  uint16_t packet_id;          /**< for QoS 1 and 2, else 0 */
  const uvmqtt_props_t *props; /**< v5 properties; NULL on 3.1.1 */
} uvmqtt_message_t;

/** Receives the messages of a subscription, or those no subscription's callback took. */
typedef void (*uvmqtt_message_cb)(uvmqtt_client_t *client, const uvmqtt_message_t *msg, void *arg);

/* ---- Reconnect policy ---------------------------------------------------- */

/** What a reconnect policy is told after a lost connection or failed attempt. */
typedef struct {
  uint32_t attempt;      /**< 1 for the first retry after a loss or the first failure */
  int status;            /**< why: a negative error */
  uint8_t reason;        /**< the broker's reason code (CONNACK or DISCONNECT), else 0 */
  uint64_t connected_ms; /**< how long the last connection lived; 0 if it never came up */
  uint64_t down_ms;      /**< time since the connection was lost (or the first attempt began) */
  const char *server;    /**< the URI that failed or dropped us (valid during the call) */
} uvmqtt_reconnect_info_t;

/** Returns the delay in ms before the next attempt, or a negative value to
 * give up (the client then reports UVMQTT_EGAVEUP and stays disconnected). */
typedef int64_t (*uvmqtt_reconnect_fn)(void *state, const uvmqtt_reconnect_info_t *info);

/** A reconnect policy: the function and the state it is given. */
typedef struct {
  uvmqtt_reconnect_fn fn; /**< NULL: never reconnect */
  void *state;            /**< handed to `fn` on every call */
} uvmqtt_reconnect_policy_t;

/** State of the built-in policies. One may be shared by many clients. */
typedef struct {
  uint32_t min_ms;       /**< fixed: the delay; backoff: the first ceiling */
  uint32_t max_ms;       /**< backoff: the largest ceiling */
  uint32_t max_attempts; /**< 0: no limit */
  uint64_t max_total_ms; /**< give up once down this long; 0: no limit */
  uint64_t rng;          /**< jitter state; any seed, 0 picks one */
} uvmqtt_backoff_t;

/** Never reconnect (the plain client). */
int64_t uvmqtt_reconnect_never(void *state, const uvmqtt_reconnect_info_t *info);
/** umqtt.robust's behaviour: wait min_ms, try again, forever (or up to the limits). */
int64_t uvmqtt_reconnect_fixed(void *state, const uvmqtt_reconnect_info_t *info);
/** Exponential backoff with full jitter: a uniform delay in
 * [0, min(max_ms, min_ms * 2^(attempt-1))], within the limits. Refusals that
 * retrying cannot fix (bad credentials, not authorized, banned) wait max_ms.
 * The default policy, with min 500 ms, max 30 s, no limits. */
int64_t uvmqtt_reconnect_backoff(void *state, const uvmqtt_reconnect_info_t *info);
/** Backoff as above, but give up once down for max_total_ms (required). */
int64_t uvmqtt_reconnect_deadline(void *state, const uvmqtt_reconnect_info_t *info);

/* ---- TLS ---------------------------------------------------------------------- */

/** Protocol versions for uvmqtt_tls_options_t.min_version. */
#define UVMQTT_TLS_1_2 0x0303
/** TLS 1.3 only, for uvmqtt_tls_options_t.min_version. */
#define UVMQTT_TLS_1_3 0x0304

/** Supplies the password of an encrypted private key: writes it into `buf`
 * (at most `size` bytes, no terminator needed) and returns its length, or -1
 * when there is none. Called from uvmqtt_client_init() only. */
typedef int (*uvmqtt_tls_password_cb)(char *buf, int size, void *arg);

/** TLS for "mqtts://" and "ssl://" servers (port 8883 by default). Zeroed
 * options are safe: the system's trusted CAs, certificate and host-name
 * verification, TLS 1.2 or later, server name indication. The client copies
 * what it needs: the struct and its strings may be freed after init. */
typedef struct {
  /** Trusted CAs: a PEM file and/or a directory of hashed certificates
   * (c_rehash). With neither, the system's trust store. */
  const char *ca_file;
  const char *ca_path; /**< a directory of hashed CA certificates */
  /** The client certificate (a PEM chain, leaf first) and its private key
   * (PEM), for brokers that ask for one. An encrypted key takes its password
   * from `key_password` or, when that is NULL, from `key_password_cb`. */
  const char *cert_file;
  const char *key_file;                   /**< the client certificate's private key (PEM) */
  const char *key_password;               /**< the password of an encrypted `key_file` */
  uvmqtt_tls_password_cb key_password_cb; /**< asked for the password when `key_password` is NULL */
  void *key_password_arg;                 /**< handed to `key_password_cb` */
  uint16_t min_version;                   /**< UVMQTT_TLS_1_2 (0: the default) or UVMQTT_TLS_1_3 */
  /** OpenSSL cipher strings: `ciphers` for TLS 1.2, `ciphersuites` for TLS
   * 1.3. NULL: OpenSSL's defaults. */
  const char *ciphers;
  const char *ciphersuites; /**< TLS 1.3 cipher suites */
  /** ALPN protocol names offered in order, e.g. {"mqtt"} for brokers that
   * share port 443 with other protocols. */
  const char *const *alpn;
  size_t alpn_count; /**< entries in `alpn` */
  /** 1: send no server name (SNI). By default the URI's host name is sent,
   * never an IP address. */
  uint8_t no_sni;
  /** 1: a full handshake on every connection. By default the session of the
   * last connection is offered to the same server on the next, which saves
   * a round trip and the certificate exchange. */
  uint8_t no_resumption;
  /** 1: accept any certificate for any name. Encryption without
   * authentication: anyone on the path can read and change the traffic. For
   * tests against self-signed brokers only. */
  uint8_t insecure;
  /** 1: OpenSSL keeps every connection for its whole life (about 16 KB of
   * heap each). By default, once a TLS 1.3 connection is verified and sits
   * between records, its record protection (AES-GCM or ChaCha20-Poly1305,
   * computed by OpenSSL's EVP functions) moves to uvmqtt's own record layer
   * and the SSL object is freed: an idle TLS connection then holds about
   * 530 bytes. The handshake and certificate checks are OpenSSL's either
   * way; TLS 1.2 connections always stay with OpenSSL. */
  uint8_t no_handover;
} uvmqtt_tls_options_t;

/** A TLS context built once and handed to many clients (through
 * uvmqtt_options_t.tls_context): the `SSL_CTX` with the parsed CAs, the
 * client certificate and key, and a resumption session per server. Clients
 * on any loop, in any thread, may share one. It is reference counted: each
 * client holds a reference until it is closed, so the application may free
 * its own at any time after uvmqtt_client_init(). */
typedef struct uvmqtt_tls_context_s uvmqtt_tls_context_t;

/** Builds a TLS context from `opts` (NULL: the defaults of
 * uvmqtt_tls_options_t): loads the CAs, the certificate and key, and applies
 * the version, cipher and ALPN settings now, so a bad file fails here.
 * Nothing of `opts` is kept. On success *out holds the application's
 * reference, released with uvmqtt_tls_context_free(). Returns 0,
 * UVMQTT_EINVAL (`out` NULL, an empty or over-long ALPN name),
 * UVMQTT_ETLSCONFIG (a file that cannot be loaded, a key that does not match
 * its certificate, a bad cipher string or version) or UVMQTT_ENOMEM. */
int uvmqtt_tls_context_new(uvmqtt_tls_context_t **out, const uvmqtt_tls_options_t *opts);

/** Releases the application's reference to `ctx`. Clients initialised with
 * it keep it alive until they are closed; the last reference frees it.
 * NULL is ignored. Safe from any thread. */
void uvmqtt_tls_context_free(uvmqtt_tls_context_t *ctx);

/* ---- Enhanced authentication (MQTT 5) ------------------------------------------ */

/** The next Authentication Data a mechanism sends: a view that must stay
 * valid until the mechanism is called again or the client is closed (the
 * client encodes it at once). len 0: none. */
typedef struct {
  const void *data; /**< the bytes */
  size_t len;       /**< their length */
} uvmqtt_auth_reply_t;

/** A mechanism step. Called:
 *  - to start an exchange, with in_data NULL: reason 0x00 for the CONNECT of
 *    every connection attempt, 0x19 for uvmqtt_reauthenticate(); fill `out`
 *    with the first Authentication Data;
 *  - with reason 0x18 (continue) and the broker's Authentication Data
 *    (empty when it sent none): fill `out` with the answer;
 *  - with reason 0x00 and the broker's last Authentication Data (empty when
 *    none) when the broker accepted: in CONNACK, or AUTH 0x00 after a
 *    re-authentication. Return 0 to accept it, or refuse the broker (a
 *    mechanism that authenticates the server checks it here).
 * Returns 0, or a negative error: the connection then ends with
 * UVMQTT_EAUTH. */
typedef int (*uvmqtt_auth_fn)(void *state, const uvmqtt_bytes_t *in_data, uint8_t reason,
                              uvmqtt_auth_reply_t *out);

/** MQTT 5 enhanced authentication: a method and the mechanism that runs it
 * (uvmqtt_options_t.auth). */
typedef struct {
  const char *method; /**< the Authentication Method, e.g. "SCRAM-SHA-256" */
  /** Authentication Data for CONNECT and AUTH 0x19 when `auth` is NULL (a
   * one-step mechanism); with `auth`, the callback supplies it. */
  const void *initial_data;
  size_t initial_len;  /**< bytes of `initial_data` */
  uvmqtt_auth_fn auth; /**< the mechanism's steps; NULL: `initial_data` only */
  void *state;         /**< the mechanism's, passed to `auth` */
} uvmqtt_auth_t;

/** Fills `auth` with the built-in SCRAM-SHA-256 mechanism (RFC 5802, RFC
 * 7677; no channel binding), which also checks the broker's server
 * signature. Copies user and password. The state it allocates is the
 * caller's: free it with uvmqtt_auth_scram_free() once the clients using
 * it are closed. Errors: UVMQTT_EINVAL, UVMQTT_ENOMEM. */
int uvmqtt_auth_scram_sha256(uvmqtt_auth_t *auth, const char *user, const char *password);
/** Frees the state uvmqtt_auth_scram_sha256() allocated; `auth` may be
 * filled again afterwards. */
void uvmqtt_auth_scram_free(uvmqtt_auth_t *auth);

/* ---- Options ----------------------------------------------------------------- */

/** How attempts go through the server list (uvmqtt_options_t.server_order).
 * With every order, a server that refused us, could not be reached or
 * dropped the connection is tried last for a while (1 s after its first
 * failure, doubling with each failure in a row up to 30 s, cleared by its
 * next CONNACK): the others are tried first, and when every server is
 * serving such a penalty the one whose penalty ends first is tried. */
typedef enum {
  /** Start with the first server; after each loss or failed attempt go to
   * the next one. */
  UVMQTT_SERVERS_ROUND_ROBIN = 0,
  /** Start with a server chosen at random, then as round robin: a fleet
   * started with the same list spreads over the servers instead of all
   * connecting to the first. */
  UVMQTT_SERVERS_RANDOM_START,
  /** Stay with the last server that accepted us: after the loss of an
   * established connection try it again first; move to the next server
   * only when an attempt fails. */
  UVMQTT_SERVERS_STICKY
} uvmqtt_server_order_t;

/** How a client connects and behaves: uvmqtt_options_init() fills the defaults, then set what
 * differs. */
typedef struct {
  /** Server(s): "mqtt://host:port" (port 1883 by default), "mqtts://" (TLS,
   * 8883), "ws://host:port/path" and "wss://" (WebSocket, see ws_path);
   * host may be a name, an IPv4 address or "[v6]". With several, attempts
   * go round the list. */
  const char *uri;
  const char *const *uris; /**< several servers, tried in turn */
  size_t uri_count;        /**< entries in `uris` */

  /** UVMQTT_V311 (default), UVMQTT_V5, or UVMQTT_V31 for legacy brokers (MQTT
   * 3.1, "MQIsdp"). On 3.1 the client id must be at most 23 bytes
   * (UVMQTT_ECLIENTID), and CONNACK has no Session Present flag: with
   * clean_start 0 the session is taken as kept, and subscriptions are sent
   * again after every connection. */
  uint8_t version;
  const char *client_id; /**< NULL or "": the broker assigns one (v5), or one is made up */
  uint8_t clean_start;   /**< default 1 */
  uint16_t keepalive;    /**< seconds; default 60; 0 disables */
  const char *username;  /**< NULL: no user name */
  const void *password;  /**< binary; NULL: no password */
  size_t password_len;   /**< bytes of `password` */

  /* Will. */
  const char *will_topic;           /**< NULL: no will */
  const void *will_payload;         /**< the will's payload */
  size_t will_payload_len;          /**< bytes of `will_payload` */
  uint8_t will_qos;                 /**< the will's QoS */
  uint8_t will_retain;              /**< 1: the broker retains the will */
  const uvmqtt_props_t *will_props; /**< v5 */

  /** v5 CONNECT properties: session expiry, receive maximum, maximum packet
   * size, topic alias maximum (incoming aliases we accept), request
   * response/problem information, user properties. Authentication Method
   * and Data come from `auth` below (here they fail with UVMQTT_EINVAL). */
  const uvmqtt_props_t *connect_props;

  uint32_t connect_timeout_ms; /**< resolve + TCP + CONNACK; default 10000 */
  /** QoS 1/2 messages handed to the socket and not yet acknowledged, at
   * most; a v5 broker's Receive Maximum lowers it. 0: 20 (libmosquitto's
   * default; Mosquitto stalls 3.1.1 publishers with far more in flight). */
  uint16_t max_inflight;
  /** The largest packet accepted from the broker (whole packet, bytes); a
   * larger one closes the connection with UVMQTT_ETOOLARGE. v5 announces it
   * as Maximum Packet Size unless connect_props sets one. 0: 16 MiB. */
  uint32_t max_packet_size;

  /** 1: leave Maximum Packet Size out of the v5 CONNECT, for a minimal
   * CONNECT; max_packet_size still bounds what the client accepts. */
  uint8_t no_max_packet_size;

  /** How long uvmqtt_disconnect() waits, first for the handshakes in flight
   * to end, then for the broker to close the connection after DISCONNECT.
   * 0: 2000 ms. */
  uint32_t disconnect_timeout_ms;

  /** Offline queue and outgoing buffer bounds (the backpressure limit):
   * messages not yet acknowledged and bytes not yet written. 0: defaults
   * (65536 messages, 16 MiB). */
  uint32_t max_queued;
  size_t max_queued_bytes; /**< bound on the bytes queued; see `max_queued` */
  uint8_t overflow;        /**< uvmqtt_overflow_t */

  uvmqtt_reconnect_policy_t reconnect; /**< zero: backoff 500 ms..30 s */
  uint8_t no_reconnect;                /**< 1: never reconnect (overrides `reconnect`) */
  uvmqtt_delivery_t delivery;          /**< default: UNTIL_DELIVERED */
  uvmqtt_delivery_decide_fn decide;    /**< for UVMQTT_DELIVERY_CUSTOM */
  void *decide_state;                  /**< handed to `decide` */

  /** Where outgoing messages and their in-flight state are kept (see
   * uvmqtt/store.h). NULL: in memory only. The store must outlive the
   * client; messages it holds from an earlier process are restored by
   * uvmqtt_client_init() and sent after the first CONNACK (use the same
   * client id and clean_start 0 for QoS 2 exactly once across restarts). */
  const uvmqtt_store_t *store;

  /** TLS settings for "mqtts://" servers; NULL: the defaults (see
   * uvmqtt_tls_options_t). Certificate and host-name verification stay on
   * unless `insecure` is set; a TLS server is never reached in plaintext.
   * Given options, or a TLS server in the list, make uvmqtt_client_init()
   * load the CAs and keys at once, so it fails with UVMQTT_ETLSCONFIG when a
   * file cannot be read. Handshake failures reach on_connect as
   * UVMQTT_ETLS* errors. */
  const uvmqtt_tls_options_t *tls;

  /** WebSocket ("ws://host[:port][/path]", port 80, and "wss://", port 443,
   * which uses `tls` like "mqtts://"): MQTT in binary frames with the
   * "mqtt" subprotocol (RFC 6455). The upgrade must answer 101 with the
   * right Sec-WebSocket-Accept and subprotocol, else the attempt fails with
   * a UVMQTT_EWS* error. ws_path: the request target; NULL: the URI's path,
   * else "/mqtt". ws_headers: extra header lines for the upgrade request,
   * without line ends ("Authorization: Bearer ..."). ws_origin: an Origin
   * header, NULL for none. All are copied. */
  const char *ws_path;
  const char *const *ws_headers; /**< extra upgrade request header lines */
  size_t ws_header_count;        /**< entries in `ws_headers` */
  const char *ws_origin;         /**< the Origin header; NULL: none */

  /** An HTTP proxy for every server: "http://[user:password@]host[:port]"
   * (port 1080 by default; user and password percent-encoded when needed,
   * sent with Basic authentication). The client asks it with CONNECT for a
   * tunnel to the server, then speaks TLS or WebSocket through it as
   * usual. A refusal fails the attempt with UVMQTT_EPROXY (UVMQTT_EPROXYAUTH
   * for 407). Copied; init fails with UVMQTT_EBADURI when it does not
   * parse. */
  const char *proxy;
  /** 1: without `proxy`, take it from the environment at each attempt, as
   * curl does: https_proxy (or HTTPS_PROXY) for mqtts:// and wss://,
   * http_proxy for mqtt:// and ws://, except for hosts no_proxy (or
   * NO_PROXY) names ("*", hosts, or domains such as ".example.com"). */
  uint8_t proxy_from_env;

  /** Connection attempts in progress at once among all the clients of this
   * loop (until CONNACK); more wait their turn, and their connect timeout
   * starts when they really start. Thousands of clients started together,
   * or reconnecting after a broker restart, then queue briefly instead of
   * timing out while the kernel works through their connect() calls. The
   * latest client created with a non-zero value sets it. 0: 128. */
  uint32_t max_connecting;
  /** The local address to connect from: "192.0.2.7", "2001:db8::7", or
   * with a port, "192.0.2.7:40000" / "[2001:db8::7]:40000". NULL: the
   * system's choice. Without a port the kernel picks one per destination
   * at connect time (IP_BIND_ADDRESS_NO_PORT), so a gateway that spreads
   * thousands of clients over a few local addresses does not exhaust or
   * search the ephemeral ports. Servers of the other address family are
   * skipped. A malformed address fails init with UVMQTT_EINVAL. */
  const char *bind_address;

  /** v5: outgoing topic aliases, chosen by the client. At most this many
   * aliases are used on a connection, and never more than the broker's
   * Topic Alias Maximum of that connection (none when it announces none).
   * The first PUBLISH of a topic on a connection carries the topic and its
   * alias; later ones carry only the alias, which saves the topic's bytes on
   * every message; when all aliases are taken, the least recently used one
   * passes to the new topic. Aliases belong to one network connection: after
   * a reconnect every topic, resends included, is named in full once more.
   * Messages are kept (and stored) with their full topic. While this is on,
   * a publish that sets its own Topic Alias fails with UVMQTT_EINVAL.
   * 0: off (the default). */
  uint16_t topic_alias_out;

  /** v5 enhanced authentication: the method, its data and the mechanism
   * (see uvmqtt_auth_t), run on every connection attempt and by
   * uvmqtt_reauthenticate(). The client copies the method and the initial
   * data; the mechanism's state must outlive the client. A broker that
   * refuses (CONNACK 0x86, 0x87, 0x8C) or a mechanism that fails ends the
   * attempt with UVMQTT_EAUTH; a broker answering with another method, with
   * UVMQTT_EAUTHMETHOD. NULL: none. */
  const uvmqtt_auth_t *auth;

  /** The order in which attempts go through `uris` (uvmqtt_server_order_t);
   * 0: UVMQTT_SERVERS_ROUND_ROBIN. */
  uint8_t server_order;

  /** 1 (v5): each uvmqtt_subscribe() call with a per-subscription callback
   * and no Subscription Identifier of its own gets one from the client, and
   * a message carrying it goes straight to that callback instead of being
   * matched against every stored filter (a hash lookup instead of a walk
   * through the filters: `bench/dispatch_bench.c` measures both). The
   * identifier is visible in the message's properties. 0: off. */
  uint8_t sub_id_dispatch;

  /** A TLS context from uvmqtt_tls_context_new() for "mqtts://" and
   * "wss://" servers, instead of `tls` (giving both is UVMQTT_EINVAL). The
   * client takes a reference: the application may free its own right after
   * uvmqtt_client_init(). Clients with equal options share a context
   * without this; it lets clients with different options, or on different
   * loops, share one SSL_CTX, its parsed CAs and its resumption sessions.
   * NULL: none. */
  uvmqtt_tls_context_t *tls_context;
} uvmqtt_options_t;

/** Fills `opts` with the defaults. */
void uvmqtt_options_init(uvmqtt_options_t *opts);

/* ---- Callbacks ------------------------------------------------------------------ */

/** The result of CONNACK. */
typedef struct {
  uint8_t reason;              /**< 0: accepted */
  uint8_t session_present;     /**< 1: the broker kept the session */
  const uvmqtt_props_t *props; /**< v5 CONNACK properties; NULL on 3.1.1 */
  const char *server;          /**< the URI this connection went to */
} uvmqtt_connack_t;

/** Why a connection ended, and what happens next. */
typedef struct {
  int status;           /**< the cause: UV_EOF, UVMQTT_EKEEPALIVE, UVMQTT_EREFUSED... */
  uint8_t reason;       /**< the broker's reason code if it sent one (DISCONNECT/CONNACK) */
  uint8_t will_retry;   /**< 1: a reconnect is scheduled in retry_in_ms */
  uint64_t retry_in_ms; /**< the delay before the next attempt, when will_retry is 1 */
  uint32_t attempt;     /**< the attempt number the policy was given */
} uvmqtt_disconnect_t;

/** Hook run before every connection attempt: it may change the options below
 * through uvmqtt_client_set_* calls (credentials, server). */
typedef void (*uvmqtt_pre_connect_cb)(uvmqtt_client_t *client, uint32_t attempt);

/** What the client reports to the application. Any callback may be NULL. */
typedef struct {
  /** A connection came up (status 0, ack filled) or an attempt failed
   * (status < 0; for a refusal UVMQTT_EREFUSED with ack->reason). */
  void (*on_connect)(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack);
  /** An established connection or a failed attempt ended; says whether and
   * when the client retries. With will_retry 0 the client is now stopped
   * (status UVMQTT_EGAVEUP when the policy gave up). After
   * uvmqtt_disconnect() of an established connection it comes once the
   * DISCONNECT is written and the socket closed, with status 0. Not called
   * after uvmqtt_close(). */
  void (*on_disconnect)(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info);
  /** A message arrived that no per-subscription callback took. QoS 1/2 are
   * acknowledged after this returns. */
  uvmqtt_message_cb on_message;
  uvmqtt_pre_connect_cb pre_connect; /**< may change credentials or server before each attempt */
  /** With a store: the message published with `arg` is durable (status 0)
   * under the store's sync policy, so the application may forget it; or the
   * store failed (status < 0) and the message lives in memory only. */
  void (*on_stored)(uvmqtt_client_t *client, int status, void *arg);
  /** With a store: a message an earlier process published, restored by
   * uvmqtt_client_init(), finished (status and reason as for
   * uvmqtt_publish_cb; `arg` is NULL). Not called for messages still held
   * when the client is closed: they stay in the store. */
  void (*on_restored_done)(uvmqtt_client_t *client, int status, uint8_t reason, void *arg);
  /** After a reconnect that found no session the client subscribes again to
   * every filter it holds (with the properties of its uvmqtt_subscribe()
   * call); this reports each filter's outcome: status 0 with the broker's
   * reason code (granted QoS, or >= 0x80 refused), or an error (the
   * SUBSCRIBE could not be sent, e.g. UVMQTT_EPKTTOOBIG). The client keeps
   * the filter either way and tries again after the next session loss. */
  void (*on_resubscribe)(uvmqtt_client_t *client, int status, const char *filter, uint8_t reason);
} uvmqtt_callbacks_t;

/** A publish finished. status 0: QoS 0 written to the socket, QoS 1 PUBACK,
 * QoS 2 PUBCOMP received, with the broker's reason code (v5; >= 0x80 means
 * the broker refused it). Negative: UVMQTT_ENOTCONN (drop policy while
 * offline), UVMQTT_EEXPIRED, UVMQTT_EDROPPED, UVMQTT_ECLOSED (client closed),
 * or the connection's error. */
typedef void (*uvmqtt_publish_cb)(uvmqtt_client_t *client, int status, uint8_t reason, void *arg);

/** A SUBSCRIBE or UNSUBSCRIBE finished: status 0 with the broker's reason code
 * per filter (SUBACK: granted QoS 0-2 or >= 0x80 failure), or an error. */
typedef void (*uvmqtt_subscribe_cb)(uvmqtt_client_t *client, int status, const uint8_t *reasons,
                                    size_t count, void *arg);

/** Runs when uvmqtt_close() has finished: the client's memory may be reused. */
typedef void (*uvmqtt_close_cb)(uvmqtt_client_t *client);

/* ---- Client --------------------------------------------------------------------------- */

/** The client's public part; the application allocates it and owns `data`. */
struct uvmqtt_client_s {
  void *data;                    /**< the application's */
  uv_loop_t *loop;               /**< read-only */
  struct uvmqtt__client_s *impl; /**< private */
};

/** Prepares a client on `loop`. Copies what it needs from `opts` (strings
 * included) and `cbs`, so both may be freed afterwards. Allocates the private
 * state; nothing touches the loop until uvmqtt_connect().
 * Errors: UVMQTT_EINVAL (NULL argument, bad option), UVMQTT_EBADURI,
 * UVMQTT_ENOMEM. */
int uvmqtt_client_init(uv_loop_t *loop, uvmqtt_client_t *client, const uvmqtt_options_t *opts,
                       const uvmqtt_callbacks_t *cbs);

/** Starts connecting (and reconnecting, per the policy). on_connect reports
 * each attempt. Errors: UVMQTT_EINVAL, UVMQTT_EBUSY (already started),
 * UVMQTT_ECLOSED. */
int uvmqtt_connect(uvmqtt_client_t *client);

/** Per-publish settings. NULL means QoS 0, no retain, the default delivery. */
typedef struct {
  uint8_t qos;    /**< 0, 1 or 2 */
  uint8_t retain; /**< 1: the broker retains it */
  const uvmqtt_props_t
      *props; /**< v5 PUBLISH properties. A Topic Alias here is the application's to manage (an
                 empty topic then uses it), unless topic_alias_out is on. */
  uvmqtt_delivery_t delivery; /**< overrides the client's `delivery` */
} uvmqtt_publish_opts_t;

/** Publishes a copy of topic and payload. `cb` (may be NULL) reports the end.
 * Errors (then no callback): UVMQTT_EINVAL, UVMQTT_EBADTOPIC, UVMQTT_EBADUTF8,
 * UVMQTT_EBADQOS, UVMQTT_EQOSNOTSUP, UVMQTT_ERETAINNOTSUP, UVMQTT_EPKTTOOBIG,
 * UVMQTT_EQUEUEFULL, UVMQTT_ENOMEM, UVMQTT_ECLOSED. */
int uvmqtt_publish(uvmqtt_client_t *client, const char *topic, const void *payload, size_t len,
                   const uvmqtt_publish_opts_t *opts, uvmqtt_publish_cb cb, void *arg);

/** Subscribes to `count` filters (options: UVMQTT_SUB_QOS(q) | flags). The
 * client remembers them and re-subscribes after a reconnect that found no
 * session. Messages matching a filter go to `on_message` when it is not NULL,
 * else to the client's on_message. `props` (v5, may be NULL) may carry a
 * subscription identifier and user properties.
 * Errors: UVMQTT_EINVAL, UVMQTT_EBADTOPIC, UVMQTT_ENOMEM, UVMQTT_ECLOSED. */
int uvmqtt_subscribe(uvmqtt_client_t *client, const uvmqtt_topic_sub_t *subs, size_t count,
                     const uvmqtt_props_t *props, uvmqtt_message_cb on_message,
                     uvmqtt_subscribe_cb cb, void *arg);

/** Unsubscribes and forgets the filters. Same errors as uvmqtt_subscribe(). */
int uvmqtt_unsubscribe(uvmqtt_client_t *client, const char *const *filters, size_t count,
                       uvmqtt_subscribe_cb cb, void *arg);

/** v5: authenticates again on the current connection with the options'
 * `auth` (AUTH 0x19), while messages keep flowing. The broker's refusal
 * ends the connection (DISCONNECT, reported by on_disconnect). Errors:
 * UVMQTT_EINVAL (no enhanced authentication), UVMQTT_ENOTCONN,
 * UVMQTT_EBUSY (one is in progress), UVMQTT_EAUTH (the mechanism failed),
 * UVMQTT_ECLOSED. */
int uvmqtt_reauthenticate(uvmqtt_client_t *client);

/** Unsubscribes like uvmqtt_unsubscribe(), with v5 UNSUBSCRIBE properties
 * (user properties; NULL: none; ignored on 3.1.1). The codec's errors for a
 * property UNSUBSCRIBE may not carry (UVMQTT_EBADPROP...). */
int uvmqtt_unsubscribe_props(uvmqtt_client_t *client, const char *const *filters, size_t count,
                             const uvmqtt_props_t *props, uvmqtt_subscribe_cb cb, void *arg);

/** The end of a request: status 0 with the response (a view valid during the
 * callback), or UVMQTT_ETIMEDOUT, UVMQTT_ECLOSED, or the error its PUBLISH
 * completed with (response NULL then). */
typedef void (*uvmqtt_response_cb)(uvmqtt_client_t *client, int status,
                                   const uvmqtt_message_t *response, void *arg);

/** v5 request/response: publishes like uvmqtt_publish() with a Response Topic
 * (`response_topic`, a topic name) and Correlation Data unique to this
 * request, and calls `cb` once: with the first message on that topic that
 * carries the same Correlation Data, or with UVMQTT_ETIMEDOUT after
 * timeout_ms. The client subscribes to response_topic (QoS 1) the first
 * time it is used and keeps the subscription; a responder publishes its
 * answer there with the request's Correlation Data. Messages on it that
 * answer no pending request are dropped. `opts->props` may carry other
 * properties, not these two. Errors (then no callback): UVMQTT_EINVAL (not
 * v5, no callback, timeout 0, Response Topic or Correlation Data in the
 * properties), UVMQTT_EBADTOPIC, and those of uvmqtt_publish() and
 * uvmqtt_subscribe(). */
int uvmqtt_request(uvmqtt_client_t *client, const char *topic, const void *payload, size_t len,
                   const uvmqtt_publish_opts_t *opts, const char *response_topic,
                   uint32_t timeout_ms, uvmqtt_response_cb cb, void *arg);

/** Stops gracefully and stops reconnecting. No new PUBLISH or SUBSCRIBE goes
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

/** Closes the client: the connection drops without DISCONNECT (so a will is
 * sent), every pending publish/subscribe completes with UVMQTT_ECLOSED, every
 * handle is closed, and then `cb` runs. Memory is released before `cb`. With
 * a store, the messages the delivery policies would have kept stay in it,
 * unfinished: the next process with the same store sends them. Close the
 * store after `cb`.
 * Legal from inside any callback; a second call is ignored. */
void uvmqtt_close(uvmqtt_client_t *client, uvmqtt_close_cb cb);

/** State, for progress displays and tests. */
typedef struct {
  uint8_t connected;   /**< 1 while a connection is up */
  uint32_t queued;     /**< messages not yet handed to the socket */
  uint32_t inflight;   /**< QoS 1/2 handed to the socket, not yet acknowledged */
  size_t queued_bytes; /**< bytes of the queued messages */
  size_t write_bytes;  /**< bytes waiting in the socket's write queue */
  uint32_t reconnects; /**< connections established after the first */
  uint32_t attempts;   /**< connection attempts made */
} uvmqtt_stats_t;

/** Fills `out` with the client's state at this moment. */
void uvmqtt_client_stats(const uvmqtt_client_t *client, uvmqtt_stats_t *out);

/** The client id in use (the broker-assigned one after a v5 CONNACK). */
const char *uvmqtt_client_id(const uvmqtt_client_t *client);

/** For pre_connect hooks: replace credentials or the server list's current
 * entry. Copies the strings. Errors: UVMQTT_EINVAL, UVMQTT_EBADURI,
 * UVMQTT_ENOMEM. */
int uvmqtt_client_set_credentials(uvmqtt_client_t *client, const char *username,
                                  const void *password, size_t password_len);
/** Replaces the server list's current entry, for pre_connect hooks. Copies the string. */
int uvmqtt_client_set_uri(uvmqtt_client_t *client, const char *uri);

#ifdef __cplusplus
}
#endif
#endif
