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
  uint8_t is_new; /* prepared, not yet in the list */
  uint16_t len;
  uint16_t req_id; /* the SUBSCRIBE carrying it while unacknowledged, else 0 */
  char filter[];
} uvmqtt__sub_t;

/* An output being written, kept until the transport's on_write. */
typedef struct uvmqtt__write_s {
  struct uvmqtt__write_s *next;
  uvmqtt__output_t out;
} uvmqtt__write_t;

struct uvmqtt__client_s {
  uvmqtt_client_t *handle;
  uvmqtt__session_t sess;
  uvmqtt__transport_t tr;
  uv_timer_t timer;
  uvmqtt_callbacks_t cbs;

  /* Options (owned copies). */
  char **uris;
  uint32_t uri_count;
  uint32_t uri_index;
  char *client_id;
  char *username;
  uint8_t *password;
  size_t password_len;
  char *will_topic;
  uint8_t *will_payload;
  size_t will_payload_len;
  uvmqtt_props_t *will_props;
  uvmqtt_props_t *connect_props;
  uint32_t connect_timeout_ms;
  uint16_t keepalive;
  uint8_t version;
  uint8_t clean_start;
  uint8_t will_qos;
  uint8_t will_retain;
  uint8_t has_password;
  uint8_t no_reconnect;
  uint8_t no_max_packet_size;
  uint32_t disconnect_timeout_ms;
  uvmqtt_reconnect_policy_t reconnect;
  uvmqtt_backoff_t default_backoff;
  uvmqtt_delivery_t delivery;

  /* State. */
  uint8_t state;
  uint8_t closing;
  uint8_t transport_active;
  uint8_t flush_scheduled;
  uint8_t ever_connected;
  uint8_t last_reason;
  uint8_t shut; /* the transport is half-closed after DISCONNECT */
  int last_status;
  int fail_status;   /* the error ending this connection, before a write error can mask it */
  uint32_t attempt;  /* attempts made since the last good connection */
  uint32_t failures; /* losses and failed attempts since then: what the policy is told */
  uint64_t timer_due;
  uint64_t connect_deadline;
  uint64_t retry_at;
  uint64_t stop_deadline; /* DISCONNECTING: end of the drain, then of the wait for EOF */
  uint64_t connected_at;
  uint64_t down_since;
  uvmqtt__write_t *writes; /* pending writes, in order */
  uvmqtt__write_t *spare_write;
  uvmqtt__sub_t *subs;
  uint32_t sub_batches;
  uvmqtt_close_cb close_cb;
  uvmqtt_stats_t stats;
  /* TLS: the SSL_CTX built from the options and the last session, for
   * resumption (transport_tls.h); NULL until a TLS server needs it. */
  struct uvmqtt__tls_ctx_s *tls;
  /* The server list (servers.c): the order option, and per URI when its
   * penalty ends (it is tried last until then) and its failures in a row. */
  uint8_t server_order;
  uint64_t *server_bad_until;
  uint32_t *server_failures;
};

typedef struct uvmqtt__client_s uvmqtt__client_t;

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
/* The per-subscription callback for `topic`, or NULL. */
uvmqtt__sub_t *uvmqtt__subs_match(uvmqtt__client_t *c, uvmqtt_bytes_t topic);
/* Subscribes again to every stored filter not already on its way: one
 * SUBSCRIBE per uvmqtt_subscribe() call, with its properties, split to fit
 * the broker's Maximum Packet Size; failures reach on_resubscribe. */
void uvmqtt__subs_resend(uvmqtt__client_t *c, uint64_t now);
void uvmqtt__subs_free(uvmqtt__client_t *c);

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
void uvmqtt__client_schedule_flush(uvmqtt__client_t *c);
void uvmqtt__client_arm(uvmqtt__client_t *c);
void uvmqtt__client_timer_init(uvmqtt__client_t *c);
/* Starts closing: the transport, then the timer; uvmqtt__client_free() and
 * the close callback run once both are closed. */
void uvmqtt__client_begin_close(uvmqtt__client_t *c);
void uvmqtt__client_free(uvmqtt__client_t *c);
extern const uvmqtt__session_events_t uvmqtt__client_session_events;
extern const uvmqtt__transport_cbs_t uvmqtt__client_transport_cbs;

static inline uint64_t uvmqtt__now(const uvmqtt__client_t *c) {
  return uv_now(c->handle->loop);
}

#endif
