/* The client's private state, shared by the files that make up the client
 * (connection lifecycle, public calls, subscriptions). */
#ifndef UVMQTT_CLIENT_IMPL_H
#define UVMQTT_CLIENT_IMPL_H

#include "session/session.h"
#include "transport/transport.h"
#include "uvmqtt.h"

typedef enum {
  UVMQTT__C_STOPPED = 0,  /* not started, gave up, or after uvmqtt_disconnect() */
  UVMQTT__C_CONNECTING,   /* transport resolving/connecting */
  UVMQTT__C_WAIT_CONNACK, /* CONNECT written */
  UVMQTT__C_CONNECTED,
  UVMQTT__C_DISCONNECTING, /* a graceful stop: draining, then DISCONNECT, half-close, wait
                            * for the broker's close (stop_deadline bounds each wait) */
  UVMQTT__C_DROPPING,      /* the transport is closing after a loss or failure */
  UVMQTT__C_WAIT_RETRY     /* the reconnect timer runs */
} uvmqtt__client_state_t;

/* A stored subscription, re-sent when a reconnect finds no session, with
 * the properties of the uvmqtt_subscribe() call that made it (`batch`
 * numbers that call: its filters go again in one SUBSCRIBE when they fit). */
typedef struct uvmqtt__sub_s {
  struct uvmqtt__sub_s *next;
  uvmqtt_message_cb on_message;
  void *arg;
  uvmqtt_props_t *props; /* owned copy (v5), or NULL */
  uint32_t batch;
  uint8_t options;
  uint8_t is_new;  /* prepared, not yet in the list */
  uint32_t sub_id; /* the Subscription Identifier the client gave its call, 0: none */
  uint16_t len;
  uint16_t req_id; /* the SUBSCRIBE carrying it while unacknowledged, else 0 */
  char filter[];
} uvmqtt__sub_t;

/* An output being written, kept until the transport's on_write. */
typedef struct uvmqtt__write_s {
  struct uvmqtt__write_s *next;
  uvmqtt__output_t out;
} uvmqtt__write_t;

/* Options as the client keeps them: copied once per distinct set of
 * options in a loop and shared by reference (config.c). */
typedef struct uvmqtt__config_s {
  struct uvmqtt__config_s *next; /* the loop's configurations */
  uint32_t refs;
  uint64_t hash;
  uint8_t *key; /* the options reduced to bytes, for finding an equal set */
  size_t key_len;
  char **uris;
  uint32_t uri_count;
  char *username;
  uint8_t *password;
  size_t password_len;
  char *will_topic;
  uint8_t *will_payload;
  size_t will_payload_len;
  uvmqtt_props_t *will_props;
  uvmqtt_props_t *connect_props;
  uint32_t connect_timeout_ms;
  uint32_t disconnect_timeout_ms;
  uint16_t keepalive;
  uint8_t version;
  uint8_t clean_start;
  uint8_t will_qos;
  uint8_t will_retain;
  uint8_t has_password;
  uint8_t no_reconnect;
  uint8_t no_max_packet_size;
  uvmqtt_reconnect_policy_t reconnect;
  uvmqtt_backoff_t default_backoff;
  uvmqtt_delivery_t delivery;
  uvmqtt_callbacks_t cbs;
  /* TLS: the SSL_CTX built from the options and the last session, for
   * resumption (transport/tls.h); NULL until a TLS server needs it. */
  struct uvmqtt_tls_context_s *tls;
  struct sockaddr_storage bind; /* with has_bind: the local address to connect from */
  uint8_t has_bind;
  /* WebSocket options (copies; NULL when not given). */
  char *ws_path;
  char *ws_origin;
  char **ws_headers;
  size_t ws_header_count;
  /* The `proxy` option, parsed; proxy_from_env: read it from the
   * environment at each attempt. */
  struct uvmqtt__proxy_config_s *proxy;
  uint8_t proxy_from_env;
} uvmqtt__config_t;

/* Where a client stands in its loop's connection pacing (loop.c). */
typedef enum {
  UVMQTT__PACE_NONE = 0,
  UVMQTT__PACE_WAITING, /* in the loop's queue for a connect slot */
  UVMQTT__PACE_GRANTED, /* holds a slot; the attempt starts from the timer */
  UVMQTT__PACE_RUNNING  /* holds a slot while its attempt runs (until CONNACK) */
} uvmqtt__pace_t;

typedef struct uvmqtt__client_s uvmqtt__client_t;

/* A client in its loop's deadline heap (loop.c). */
typedef struct {
  uint64_t due;
  uvmqtt__client_t *c;
} uvmqtt__heap_entry_t;

/* What the clients of one libuv loop share (loop.c). */
typedef struct uvmqtt__loop_s {
  struct uvmqtt__loop_s *next; /* the process-wide registry */
  uv_loop_t *loop;
  uint32_t refs;
  uint8_t closing;
  uint8_t timer_open; /* the timer is initialised (from the first deadline on) */
  uv_timer_t timer;
  uint64_t timer_due;
  uvmqtt__heap_entry_t *heap; /* clients with a deadline, earliest first */
  uint32_t heap_len, heap_cap;
  uint32_t connecting; /* attempts holding a slot */
  uint32_t max_connecting;
  uvmqtt__client_t *wait_head, *wait_tail; /* attempts waiting for a slot */
  uvmqtt__config_t *configs;
  uvmqtt__poller_t *poller; /* every client's socket */
} uvmqtt__loop_t;

/* What few clients use: per-client overrides, v5 extras, the state of a
 * server list. Allocated on first use (uvmqtt__client_extra), so the
 * thousands of plain clients of a gateway carry one pointer for all of it.
 * Every field reads as zero while the block does not exist. */
typedef struct uvmqtt__client_extra_s {
  char **own_uris;                     /* a private copy of cfg->uris after uvmqtt_client_set_uri */
  struct uvmqtt__creds_s *creds;       /* after uvmqtt_client_set_credentials */
  struct uvmqtt__auth_s *auth;         /* enhanced authentication (v5), or NULL */
  struct uvmqtt__requests_s *requests; /* uvmqtt_request() state, or NULL */
  /* The proxy the environment names for the current attempt
   * (proxy_from_env), parsed. */
  struct uvmqtt__proxy_config_s *env_proxy;
  /* The server list (servers.c): with several servers, per URI when its
   * penalty ends (it is tried last until then) and its failures in a row. */
  struct uvmqtt__server_s {
    uint64_t bad_until;
    uint32_t failures;
  } * servers;
  /* sub_id_dispatch: an open-addressing index from identifier to a stored
   * subscription of that call. */
  struct uvmqtt__sub_s **sub_index;
  uint32_t sub_index_cap, sub_index_len;
  uint32_t next_sub_id;   /* sub_id_dispatch: the identifiers given so far */
  uint32_t giving_sub_id; /* during uvmqtt_subscribe(): the identifier its call gets */
} uvmqtt__client_extra_t;

/* Ordered by size so that thousands of idle clients carry no padding:
 * pointers and 64-bit values, then 32-bit values, then bytes. */
struct uvmqtt__client_s {
  uvmqtt_client_t *handle;
  uvmqtt__session_t sess;
  uvmqtt__transport_t tr;
  uvmqtt__loop_t *lp;
  uvmqtt__client_t *pace_next;
  uvmqtt__config_t *cfg; /* the options, shared with the loop's clients that have the same */
  /* Per client: the id given (or made up) at init, behind the struct
   * (uvmqtt__client_inline_id), or a copy of the one the broker assigned. */
  char *client_id;
  uvmqtt__client_extra_t *extra;
  /* The deadline of the state the client is in, each state reading only its
   * own: the attempt's timeout (CONNECTING, WAIT_CONNACK, DROPPING), the next
   * attempt (WAIT_RETRY), the end of the drain and then of the wait for EOF
   * (DISCONNECTING). */
  uint64_t state_deadline;
  uint64_t ping_mark; /* bytes written up to the PINGREQ in flight; 0: none written */
  uint64_t connected_at;
  uint64_t down_since;
  uvmqtt__write_t *writes; /* pending writes, in order */
  uvmqtt__write_t *spare_write;
  uvmqtt__sub_t *subs;
  uvmqtt_close_cb close_cb;

  uint32_t heap_idx;
  uint32_t uri_index; /* the place in the server list */
  int last_status;
  int fail_status;   /* the error ending this connection, before a write error can mask it */
  uint32_t attempt;  /* attempts made since the last good connection */
  uint32_t failures; /* losses and failed attempts since then: what the policy is told */
  uint32_t sub_batches;
  /* What uvmqtt_client_stats() cannot derive. */
  uint32_t stat_attempts;
  uint32_t stat_reconnects;

  uint8_t pace; /* uvmqtt__pace_t */
  uint8_t state;
  uint8_t closing;
  uint8_t transport_active;
  uint8_t flush_scheduled;
  uint8_t ever_connected;
  uint8_t last_reason;
  uint8_t shut; /* the transport is half-closed after DISCONNECT */
  uint8_t sub_id_dispatch;
  uint8_t stat_connected;
  uint8_t server_order; /* the server list's order option */
};

/* Credentials a pre_connect hook set for one client. */
typedef struct uvmqtt__creds_s {
  char *username;
  uint8_t *password;
  size_t password_len;
  uint8_t has_password;
} uvmqtt__creds_t;

/* Enhanced authentication as the client keeps it: its own copies of the
 * method and the initial data, the application's mechanism. */
typedef struct uvmqtt__auth_s {
  uvmqtt_auth_fn fn;
  void *state;
  size_t method_len;
  size_t initial_len;
  uint8_t *initial;
  char method[];
} uvmqtt__auth_t;

/* Authentication Data for the start of an exchange (0x00: CONNECT, 0x19:
 * re-authentication). Returns 0 or UVMQTT_EAUTH. */
int uvmqtt__auth_start(uvmqtt__client_t *c, uint8_t reason, uvmqtt_bytes_t *data);

/* Where the client's initial id lives: right behind the struct. */
static inline char *uvmqtt__client_inline_id(uvmqtt__client_t *c) {
  return (char *)(c + 1);
}

/* The client's extra block, made on first use; NULL when out of memory. */
uvmqtt__client_extra_t *uvmqtt__client_extra(uvmqtt__client_t *c);

/* The current server of the list. */
static inline const char *uvmqtt__client_uri(const uvmqtt__client_t *c) {
  uint32_t i = c->uri_index % c->cfg->uri_count;
  return c->extra && c->extra->own_uris ? c->extra->own_uris[i] : c->cfg->uris[i];
}

/* Subscriptions (subs.c). A subscribe first prepares its entries (every
 * allocation), then queues the SUBSCRIBE, then commits them, so that a call
 * that fails leaves nothing behind and one that succeeds cannot fail. */
typedef struct {
  uvmqtt__sub_t **entries; /* one per filter: new ones, or fresh copies to swap in */
  size_t count;
} uvmqtt__subs_batch_t;
int uvmqtt__subs_prepare(uvmqtt__client_t *c, const uvmqtt_topic_sub_t *subs, size_t count,
                         const uvmqtt_props_t *props, uvmqtt_message_cb cb, void *arg,
                         uvmqtt__subs_batch_t *b);
void uvmqtt__subs_commit(uvmqtt__client_t *c, uvmqtt__subs_batch_t *b, uint16_t req_id);
void uvmqtt__subs_discard(uvmqtt__subs_batch_t *b);
/* The marker a re-subscription's requests carry as their arg. */
extern const char uvmqtt__resubscribe_tag;
/* A re-subscription request ended: reports each of its filters. */
void uvmqtt__subs_resubscribed(uvmqtt__client_t *c, uint16_t req_id, int status,
                               const uvmqtt_packet_t *ack);
/* The SUBSCRIBE `req_id` was acknowledged (or failed for good). */
void uvmqtt__subs_acked(uvmqtt__client_t *c, uint16_t req_id);
void uvmqtt__subs_remove(uvmqtt__client_t *c, const char *const *filters, size_t count);
/* The subscription the client gave identifier `id` to, or NULL. */
uvmqtt__sub_t *uvmqtt__subs_by_id(uvmqtt__client_t *c, uint32_t id);
/* The per-subscription callback for `topic`, or NULL. */
uvmqtt__sub_t *uvmqtt__subs_match(uvmqtt__client_t *c, uvmqtt_bytes_t topic);
/* Subscribes again to every stored filter not already on its way: one
 * SUBSCRIBE per uvmqtt_subscribe() call, with its properties, split to fit
 * the broker's Maximum Packet Size; failures reach on_resubscribe. */
void uvmqtt__subs_resend(uvmqtt__client_t *c, uint64_t now);
void uvmqtt__subs_free(uvmqtt__client_t *c);

/* Requests waiting for responses (request.c): the earliest timeout (0:
 * none), the timeouts due, and the end of every request at close. */
uint64_t uvmqtt__requests_next(const uvmqtt__client_t *c);
void uvmqtt__requests_expire(uvmqtt__client_t *c, uint64_t now);
void uvmqtt__requests_free(uvmqtt__client_t *c);
/* The server list (servers.c). init picks the first server (random for
 * UVMQTT_SERVERS_RANDOM_START); pick, at the start of an attempt, returns
 * the server to try and makes it current: the current one or the next that
 * is not serving a penalty. good records a CONNACK from the current server;
 * failed records its loss or failed attempt, chooses the next candidate and
 * returns the URI that failed. */
int uvmqtt__servers_init(uvmqtt__client_t *c, uint8_t order);
void uvmqtt__servers_free(uvmqtt__client_t *c);
const char *uvmqtt__servers_pick(uvmqtt__client_t *c, uint64_t now);
void uvmqtt__servers_good(uvmqtt__client_t *c);
const char *uvmqtt__servers_failed(uvmqtt__client_t *c, uint64_t now, int was_connected);

/* Connection lifecycle (client_conn.c). */
void uvmqtt__client_start_attempt(uvmqtt__client_t *c);
void uvmqtt__client_lost(uvmqtt__client_t *c, int status);
void uvmqtt__client_arm(uvmqtt__client_t *c);
/* Output waits: written from the loop once the current callbacks return.
 * Inline: a publish calls it for every message, and all but the first of a
 * batch find it scheduled already. */
static inline void uvmqtt__client_schedule_flush(uvmqtt__client_t *c) {
  if (c->flush_scheduled || c->closing) return;
  c->flush_scheduled = 1;
  uvmqtt__client_arm(c);
}
/* The loop's timer reached the client's deadline. */
void uvmqtt__client_on_timer(uvmqtt__client_t *c, uint64_t now);

/* Finds the loop's configuration equal to these options, or makes one
 * (loading TLS files then). Returns 0 or UVMQTT_EINVAL, UVMQTT_EBADURI,
 * UVMQTT_ENOMEM, UVMQTT_ETLSCONFIG. */
int uvmqtt__config_get(uvmqtt__loop_t *lp, const uvmqtt_options_t *o, const uvmqtt_callbacks_t *cbs,
                       uvmqtt__config_t **out);
void uvmqtt__config_put(uvmqtt__loop_t *lp, uvmqtt__config_t *cfg);

/* The loop context (loop.c). ref returns NULL when out of memory. */
uvmqtt__loop_t *uvmqtt__loop_ref(uv_loop_t *loop, uint32_t max_connecting);
void uvmqtt__loop_unref(uvmqtt__loop_t *lp);
/* Sets the client's deadline (0: none). */
void uvmqtt__loop_schedule(uvmqtt__loop_t *lp, uvmqtt__client_t *c, uint64_t due);
/* When the client's timer is due (ms, uv_now's clock), 0: not armed. */
uint64_t uvmqtt__loop_due(const uvmqtt__loop_t *lp, const uvmqtt__client_t *c);
/* 1: the client may start its attempt now (it holds a slot); 0: it waits
 * in the queue and is scheduled when a slot frees. */
int uvmqtt__loop_try_start(uvmqtt__loop_t *lp, uvmqtt__client_t *c);
/* The client's attempt ended (or will not start): frees its slot or its
 * place in the queue. */
void uvmqtt__loop_release(uvmqtt__loop_t *lp, uvmqtt__client_t *c);
/* Starts closing: the transport first; uvmqtt__client_free() and the close
 * callback run once it is closed (from the loop's timer when there was no
 * transport to close, so never inside uvmqtt_close()). */
void uvmqtt__client_begin_close(uvmqtt__client_t *c);
void uvmqtt__client_free(uvmqtt__client_t *c);
extern const uvmqtt__session_events_t uvmqtt__client_session_events;
extern const uvmqtt__transport_cbs_t uvmqtt__client_transport_cbs;

static inline uint64_t uvmqtt__now(const uvmqtt__client_t *c) {
  return uv_now(c->handle->loop);
}

#endif
