/* The MQTT session: protocol state with no sockets and no clock.
 *
 * It is built into uvmqtt_core with the codec, without libuv or OpenSSL on
 * its include path: nothing here may use them.
 *
 * Bytes and the time (ms, any monotonic origin) go in; bytes to write and
 * events come out. It owns packet id allocation, the outgoing message queue
 * and in-flight window (QoS 1 and 2 in both directions), keepalive deadlines,
 * the broker's limits (Receive Maximum, Maximum Packet Size, Maximum QoS,
 * Retain Available, Server Keep Alive), incoming topic aliases and message
 * deadlines. The client layer wires it to a transport and one timer.
 *
 * Output: packets are encoded into one growing buffer (`out`, in the
 * active block that exists only while the session has work). The owner
 * takes it with uvmqtt__session_take_output(), writes it, and hands the QoS 0
 * messages that travelled in it back through uvmqtt__session_written(). A
 * message counts as "handed to the socket" once it is in `out`.
 */
#ifndef UVMQTT_SESSION_H
#define UVMQTT_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "uvmqtt/codec.h"
#include "uvmqtt/delivery.h"
#include "uvmqtt/store.h"

/* The owner's completion callback for a publish or a request. The session
 * keeps it and hands it back in publish_done/request_done without calling
 * it; the owner converts it back to its own type. */
typedef void (*uvmqtt__cb_fn)(void);

typedef struct uvmqtt__msg_s uvmqtt__msg_t;

/* What publish_done tells of a finished message. */
typedef struct {
  uvmqtt__cb_fn cb;
  void *arg;
  uint16_t id;      /* its packet id, 0: none */
  uint8_t restored; /* published by an earlier process, found in the store */
} uvmqtt__done_t;
typedef struct uvmqtt__req_s uvmqtt__req_t;
typedef struct uvmqtt__store_wait_s uvmqtt__store_wait_t;

/* An outgoing PUBLISH, encoded once at publish time (packet id patched in
 * when it gets one). One allocation. */
struct uvmqtt__msg_s {
  uvmqtt__msg_t *next;
  uint64_t seq;      /* publish order, the store's key */
  uint64_t created;  /* ms */
  uint64_t deadline; /* ms; 0: none */
  uvmqtt__cb_fn cb;
  void *arg;
  uint32_t len;       /* encoded packet length */
  uint32_t topic_off; /* topic bytes within data */
  uint16_t topic_len;
  uint32_t id_off; /* where the packet id goes (0 for QoS 0) */
  uint32_t conn;   /* the connection it was last sent on (uvmqtt__session_t.conn) */
  uint16_t id;
  uint16_t alias; /* the application's Topic Alias, 0: none */
  uint8_t qos;
  uint8_t retain;
  uint8_t policy;   /* uvmqtt_delivery_kind_t, never DEFAULT */
  uint8_t state;    /* uvmqtt__msg_state_t */
  uint8_t sent;     /* handed to the socket at least once */
  uint8_t restored; /* published by an earlier process, found in the store */
  /* A phase change the store has not confirmed yet; the packet it allows
   * (PUBLISH, PUBREL) waits for it. */
  uvmqtt__store_wait_t *wait;
  uint8_t data[]; /* the encoded PUBLISH */
};

/* Where a message stands. Lists: QUEUED in `queue`; READY in `resend`;
 * STORING, WAIT_ACK and WAIT_COMP in `window` (each holds one unit of the
 * broker's Receive Maximum); WRITING in the output. */
typedef enum {
  UVMQTT__MSG_QUEUED = 0, /* no packet id yet: waiting for a connection, a slot or room */
  UVMQTT__MSG_STORING,    /* has an id; the PUBLISH waits until the store has the id,
                           * so that a restarted process resends it under the id the
                           * broker may know */
  UVMQTT__MSG_READY,      /* has an id the broker may know; not yet sent on this
                           * connection (resent with DUP once a slot is free) */
  UVMQTT__MSG_WAIT_ACK,   /* PUBLISH sent on this connection: QoS 1 waits for PUBACK,
                           * QoS 2 for PUBREC */
  UVMQTT__MSG_WAIT_COMP,  /* QoS 2 PUBREC received: PUBREL sent (or waiting for the
                           * store), waiting for PUBCOMP */
  UVMQTT__MSG_WRITING     /* QoS 0 in the output: waiting for the write */
} uvmqtt__msg_state_t;

/* A SUBSCRIBE or UNSUBSCRIBE waiting for its ack; re-sent after reconnects. */
struct uvmqtt__req_s {
  uvmqtt__req_t *next;
  uvmqtt__cb_fn cb;
  void *arg;
  uint32_t len;
  uint16_t id;
  uint8_t type; /* UVMQTT_SUBSCRIBE or UVMQTT_UNSUBSCRIBE */
  uint8_t data[];
};

typedef struct {
  /* Each returns non-zero to make the session stop processing input at once
   * (the owner is closing). */
  int (*connack)(void *owner, const uvmqtt_packet_t *pkt);
  /* `topic` is the resolved topic (alias applied). The ack is queued after
   * this returns 0. */
  int (*message)(void *owner, const uvmqtt_packet_t *pkt, uvmqtt_bytes_t topic);
  /* A message completed (`d` is valid during the call only). */
  int (*publish_done)(void *owner, const uvmqtt__done_t *d, int status, uint8_t reason);
  /* The request is freed right after this returns; `ack` is NULL on error. */
  int (*request_done)(void *owner, uvmqtt__req_t *req, int status, const uvmqtt_packet_t *ack);
  /* A v5 DISCONNECT from the broker; the owner closes the connection. */
  int (*disconnect)(void *owner, const uvmqtt_packet_t *pkt);
  /* The store has (status 0) or could not keep (status < 0) the message
   * published with `arg`. */
  void (*stored)(void *owner, void *arg, int status);
  /* Output appeared outside any call into the session (a store confirmed a
   * phase change, a drain finished): the owner should write it. */
  void (*wake)(void *owner);
  /* The current time (ms, the origin of the times given to the session),
   * for work that starts outside any call into the session (a store
   * confirmation): a held-back PUBLISH is judged against its deadline at
   * the present, not at the last time the session saw. May be NULL (then
   * that last time stands in). */
  uint64_t (*now)(void *owner);
  /* Enhanced authentication (v5): the broker sent AUTH (continue, or
   * success of a re-authentication) or a successful CONNACK, on a
   * connection whose CONNECT named an Authentication Method that this
   * packet matches. The owner runs its mechanism and answers a continue
   * with uvmqtt__session_auth(). Returns 0, 1 to stop (the owner is
   * closing) or a negative error that ends the connection. May be NULL
   * (then no exchange can go on: UVMQTT_EAUTH). */
  int (*auth)(void *owner, const uvmqtt_packet_t *pkt);
} uvmqtt__session_events_t;

/* A store operation the store has not confirmed yet: an append (msg NULL,
 * reported through `stored`) or a phase change of `msg`. */
struct uvmqtt__store_wait_s {
  struct uvmqtt__store_wait_s *next;
  struct uvmqtt__store_wait_s *prev;
  struct uvmqtt__session_s *s; /* NULL once the session is gone */
  uvmqtt__msg_t *msg;          /* phase changes: NULL once the message is gone */
  void *arg;
  int status; /* for appends the store refused at once */
};

/* An outgoing topic alias of the current connection (automatic aliases). */
typedef struct {
  uint8_t *topic; /* NULL: the alias is not set up on this connection */
  uint16_t len;
  uint64_t used; /* the alias clock when it last went out: least recently used goes first */
} uvmqtt__alias_out_t;

/* The session's phase: what the gate lets out. */
typedef enum {
  UVMQTT__S_OFFLINE = 0, /* nothing goes out */
  UVMQTT__S_CONNECTING,  /* CONNECT written, waiting for CONNACK: nothing else goes out */
  UVMQTT__S_ONLINE,      /* everything, within the CONNACK's limits */
  UVMQTT__S_DRAINING,    /* a graceful stop waits for the handshakes in flight: acks,
                          * PUBREL and PINGREQ go out, no new PUBLISH or request;
                          * incoming PUBLISH is left for the broker to resend */
  UVMQTT__S_TERMINATING  /* DISCONNECT (or nothing, after an error) was the last
                          * packet: nothing more goes out, input is ignored */
} uvmqtt__session_state_t;

/* A FIFO of messages. */
typedef struct {
  uvmqtt__msg_t *head;
  uvmqtt__msg_t *tail;
} uvmqtt__msg_list_t;

/* A QoS 0 PUBLISH in the output, in publish order: a message that waited in
 * the queue (`msg`), or one published straight into the buffer while
 * nothing waited (msg NULL). Such a message is never allocated: its bytes
 * are buf[off, off + len) and the rest of it is what its completion, and a
 * loss before the write, need. */
typedef struct {
  uvmqtt__msg_t *msg;
  uvmqtt__cb_fn cb;
  void *arg;
  uint64_t seq;
  uint64_t deadline; /* ms; 0: none */
  uint32_t off;
  uint32_t len;
  uint8_t policy;
} uvmqtt__out_pub_t;

typedef struct {
  uint8_t *buf;
  size_t len;
  size_t cap;
  uvmqtt__out_pub_t *pubs; /* the QoS 0 PUBLISHes in buf */
  uint32_t npubs;
  uint32_t pubs_cap;
  uint8_t has_ping; /* a PINGREQ is in buf: timed from when buf is written */
} uvmqtt__output_t;

/* What a session holds only while it has work: anything queued, in flight,
 * requested, waiting for the store or in the output, incoming QoS 2 ids
 * waiting for PUBREL, topic alias tables of this connection. One
 * allocation, made on first need and freed once all of it is empty again
 * (at the end of the outermost call into the session), so that an idle
 * connection holds only the core below. */
typedef struct {
  uvmqtt__output_t out;
  uvmqtt__msg_list_t queue;  /* QUEUED, in publish order */
  uvmqtt__msg_list_t resend; /* READY, in first-send order */
  uvmqtt__msg_list_t window; /* STORING, WAIT_ACK, WAIT_COMP */
  uvmqtt__req_t *reqs;       /* subscribe/unsubscribe, in issue order */
  uint16_t *rx_qos2;         /* incoming QoS 2 ids waiting for PUBREL */
  uvmqtt_bytes_t *aliases;   /* incoming topic aliases of this connection, index alias-1 */
  /* Automatic outgoing topic aliases (v5), index alias-1, allocated on first
   * use and dropped with the connection. They are applied as a PUBLISH is
   * written, never in the stored message. */
  uvmqtt__alias_out_t *alias_out;
  uint64_t *ids;                      /* 65536 bits, allocated while any id is in use */
  uvmqtt__store_wait_t *store_waits;  /* appends in progress */
  uvmqtt__store_wait_t *store_failed; /* refused appends to report */
  uint64_t alias_out_clock;
  uint64_t next_expiry; /* earliest deadline among unsent messages; 0: none */
  size_t queued_bytes;
  uint32_t inflight; /* messages in the window */
  uint32_t queued;   /* messages held, sent or not */
  uint32_t ids_used; /* packet ids in use: the bits set in `ids` */
  uint32_t rx_qos2_count;
  uint32_t rx_qos2_cap;
} uvmqtt__session_active_t;

/* The session's core: what an idle connected session needs, packed by
 * size (every client embeds one). */
typedef struct uvmqtt__session_s {
  void *owner;
  const uvmqtt__session_events_t *ev;
  uvmqtt__session_active_t *act; /* NULL while the session is idle */
  /* The decoder's state lives here only while a packet is split across
   * reads: between packets an idle connection holds none. */
  uvmqtt_decoder_t *dec;
  uvmqtt_delivery_decide_fn decide;
  void *decide_state;
  const uvmqtt_store_t *store; /* NULL: messages live in memory only */
  /* Enhanced authentication: the Authentication Method of this
   * connection's CONNECT (a view into the owner's copy; length 0: none). */
  const uint8_t *auth_method;
  uint64_t next_seq;
  int64_t wall_offset_ms; /* unix ms minus session ms, for stored deadlines */
  /* The keepalive times (ms; see uvmqtt__session_time()): when output was
   * last queued, a byte last received, a write last completed, the PINGREQ
   * last queued or written. Each is kept as its age before the latest of
   * them, t_base: 4 bytes each instead of 8. */
  uint64_t t_base;
  uint32_t t_age[4];
  size_t max_queued_bytes;
  uint32_t max_queued;
  uint32_t conn;              /* connections made, for what is scoped to one */
  uint32_t broker_max_packet; /* 0: none */
  uint32_t our_max_packet;    /* incoming limit when CONNECT does not announce one */
  uint32_t dec_max;           /* the largest packet accepted on this connection */
  uint16_t keepalive_s;       /* in force: ours or the broker's Server Keep Alive */
  uint16_t broker_receive_max;
  uint16_t broker_alias_max; /* outgoing Topic Alias Maximum of this connection */
  uint16_t max_inflight;     /* our own cap on the window */
  uint16_t our_receive_max;  /* what we announced (v5), bounds incoming QoS 2 */
  uint16_t our_alias_max;    /* incoming topic aliases we accept (v5) */
  uint16_t next_id;
  uint16_t last_req_id; /* the id uvmqtt__session_request() gave last */
  /* Automatic outgoing topic aliases (v5): the most the owner wants used
   * (0: off) and this connection's share of them (the broker's Topic Alias
   * Maximum bounds it; 0 until CONNACK). */
  uint16_t alias_out_want;
  uint16_t alias_out_max;
  uint16_t auth_method_len;
  /* The last output written, where the next starts: its size in units of
   * UVMQTT__OUT_HINT_UNIT bytes, and its QoS 0 PUBLISHes. */
  uint16_t out_hint;
  uint16_t out_pubs_hint;
  /* Calls into the session in progress (the owner's callbacks may call in
   * again): the active block is freed only when the outermost returns, as
   * the inner ones may be walking it. */
  uint16_t depth;
  uint8_t version;
  uint8_t state;
  uint8_t ping; /* 0: none; 1: PINGREQ queued, not yet written; 2: written at T_PING */
  uint8_t broker_max_qos;
  uint8_t stop_reason; /* the DISCONNECT reason a drain ends with */
  uint8_t overflow;
  uint8_t clean_start : 1;
  uint8_t broker_retain : 1;
  uint8_t receiving : 1; /* inside uvmqtt__session_recv: the decoder is in use */
  uint8_t reauth : 1;    /* a re-authentication waits for the broker's answer */
} uvmqtt__session_t;

/* What uvmqtt__session_publish() takes besides topic and payload. */
typedef struct {
  uint8_t qos;
  uint8_t retain;
  uint8_t policy; /* uvmqtt_delivery_kind_t, never DEFAULT */
  uint32_t deadline_ms;
  const uvmqtt_props_t *props; /* v5 only; ignored on 3.1.1 */
  uvmqtt__cb_fn cb;
  void *arg;
} uvmqtt__publish_t;

/* Prepares an offline session. Never allocates. */
void uvmqtt__session_init(uvmqtt__session_t *s, void *owner, const uvmqtt__session_events_t *ev,
                          uint8_t version);

/* Rebuilds the queue and the resend list from the session's store (messages
 * a previous process left unfinished). Call before the first connect.
 * Returns 0 or the store's error. */
int uvmqtt__session_restore(uvmqtt__session_t *s, uint64_t now);

/* Reports appends the store refused at once (the messages stay queued in
 * memory). Returns 1 if there was any. */
int uvmqtt__session_report_store_failures(uvmqtt__session_t *s);

/* Frees everything; every message and request completes with `status`
 * (publish_done/request_done run). Messages the delivery policies keep at
 * the loss this implies stay unfinished in the store, for the next process. */
void uvmqtt__session_free(uvmqtt__session_t *s, int status);

/* A transport came up: resets the decoder, the output and everything scoped
 * to one connection (incoming topic aliases, the broker's limits), encodes
 * CONNECT from `connect` (whose protocol_level must be the session's
 * version; its keep_alive and v5 receive maximum / topic alias maximum /
 * maximum packet size are remembered). Returns 0 or a negative error. */
int uvmqtt__session_connect(uvmqtt__session_t *s, const uvmqtt_packet_t *connect, uint64_t now);

/* Feeds received bytes (any received byte counts as a sign of life).
 * Returns 0, or a negative error after which the owner must close the
 * connection: the session is TERMINATING then, with a v5 DISCONNECT naming
 * the reason in the output when one may be sent. Ignored while TERMINATING. */
int uvmqtt__session_recv(uvmqtt__session_t *s, const uint8_t *data, size_t len, uint64_t now);

/* The connection is gone: the output is dropped (its QoS 0 messages
 * complete with `status`), messages sent on it wait to be resent, and the
 * delivery policy of every message decides whether it is kept (drop: no;
 * custom: ask). */
void uvmqtt__session_lost(uvmqtt__session_t *s, int status, uint64_t now);

/* Checks a publish against the arguments, the current connection's limits
 * (when online) and the queue bounds, encodes it and queues it (sending it
 * when the gate allows). Returns 0 or a negative error (nothing queued,
 * callback not called). */
int uvmqtt__session_publish(uvmqtt__session_t *s, const char *topic, const void *payload,
                            size_t len, const uvmqtt__publish_t *p, uint64_t now);

/* Encodes and queues a SUBSCRIBE or UNSUBSCRIBE `pkt` (its packet id is
 * assigned here; the request is sent when the gate allows). Returns 0 or a
 * negative error (then nothing is queued and `cb` never runs). */
int uvmqtt__session_request(uvmqtt__session_t *s, const uvmqtt_packet_t *pkt, uvmqtt__cb_fn cb,
                            void *arg, uint64_t now);

/* Sends AUTH (v5) with `reason` (0x18 continue, 0x19 re-authenticate),
 * the connection's Authentication Method and `data` (may be NULL), through
 * the gate: while connecting (an exchange before CONNACK) or online (a
 * re-authentication, which 0x19 starts). Returns 0, UVMQTT_ENOTCONN when
 * the gate is closed, UVMQTT_EINVAL without an Authentication Method (or
 * on 3.1.1), UVMQTT_EBUSY for a 0x19 while one is in progress, or an
 * encoding error. */
int uvmqtt__session_auth(uvmqtt__session_t *s, uint8_t reason, const uvmqtt_bytes_t *data,
                         uint64_t now);

/* A graceful stop: while online, no new PUBLISH or request goes out; once
 * no handshake is in flight in either direction (at once, or as the acks
 * come), DISCONNECT with `reason` (v5) is queued and the session is
 * TERMINATING, and `wake` runs if that happened later. Returns 1 while it
 * waits (DRAINING: the owner bounds the wait with uvmqtt__session_stop_now),
 * 0 once TERMINATING, or a negative error (not online: nothing sent). */
int uvmqtt__session_stop(uvmqtt__session_t *s, uint8_t reason, uint64_t now);

/* Ends a drain now: queues DISCONNECT and turns TERMINATING. Returns 0 or a
 * negative error (out of memory: TERMINATING all the same, without it). */
int uvmqtt__session_stop_now(uvmqtt__session_t *s, uint64_t now);

/* Time passed: sends PINGREQ when due, expires unsent messages whose
 * deadline passed. Returns 0, or UVMQTT_EKEEPALIVE when the broker stayed
 * silent past the bounded wait (the owner closes the connection). */
int uvmqtt__session_tick(uvmqtt__session_t *s, uint64_t now);

/* The keepalive times, indices into t_age. */
enum {
  UVMQTT__T_SEND = 0, /* output last queued */
  UVMQTT__T_RECV,     /* a byte last received */
  UVMQTT__T_WRITTEN,  /* an output write last completed */
  UVMQTT__T_PING      /* the PINGREQ queued (ping 1) or written (ping 2) */
};

/* A keepalive time. An age saturates at 2^32 - 1 ms (49 days), far beyond
 * the longest keep_alive (18 hours): a time older than that reads as 49
 * days old, and every deadline computed from it has passed either way. */
static inline uint64_t uvmqtt__session_time(const uvmqtt__session_t *s, int which) {
  return s->t_base - s->t_age[which];
}

static inline uint32_t uvmqtt__session_age(uint64_t age) {
  return age > UINT32_MAX ? UINT32_MAX : (uint32_t)age;
}

static inline void uvmqtt__session_set_time(uvmqtt__session_t *s, int which, uint64_t now) {
  if (now > s->t_base) {
    uint64_t shift = now - s->t_base;
    for (int i = 0; i < 4; i++)
      s->t_age[i] = uvmqtt__session_age(s->t_age[i] + shift);
    s->t_base = now;
  }
  s->t_age[which] = uvmqtt__session_age(s->t_base - now);
}

/* The owner saw the broker make progress the session cannot see (the
 * kernel's count of bytes the peer acknowledged grew): keepalive counts it
 * like a completed write. */
static inline void uvmqtt__session_alive(uvmqtt__session_t *s, uint64_t now) {
  uvmqtt__session_set_time(s, UVMQTT__T_WRITTEN, now);
}

/* The next time uvmqtt__session_tick() has work, or 0 for none. */
uint64_t uvmqtt__session_next_deadline(const uvmqtt__session_t *s);

/* Output beyond this stays as queued messages (still expirable, not yet
 * handed to the socket) until the owner takes the output. Room for a burst
 * of a few thousand small messages: those that spill into the queue cost
 * an allocation and a second copy each (measured: with 64 KiB, a stream
 * published 1,000 at a time into a fast reader ran 20% slower). */
#define UVMQTT__OUT_HIGH_WATER (256u * 1024u)

/* The unit of the output size hint (out_hint): 1 MiB in 16 bits. */
#define UVMQTT__OUT_HINT_UNIT 16u

/* The coarsest step keepalive deadlines are rounded to (ms). */
#define UVMQTT__KEEPALIVE_GRID_MS 1000u

/* Moves resends and queued messages into the output while the gate allows
 * and the high-water mark is not reached. The entry points above call it;
 * the owner calls it after taking the output. */
void uvmqtt__session_pump(uvmqtt__session_t *s, uint64_t now);

/* Takes the pending output (buffer ownership passes to the caller; free it
 * with uvmqtt__free). Returns 0 when there is nothing to write. */
int uvmqtt__session_take_output(uvmqtt__session_t *s, uvmqtt__output_t *out);

/* The write of an output taken earlier finished at `now`: its QoS 0
 * messages complete with `status`, a PINGREQ in it starts its timeout.
 * Frees the buffer. */
void uvmqtt__session_written(uvmqtt__session_t *s, uvmqtt__output_t *out, int status, uint64_t now);

/* Bytes waiting in the output. */
static inline size_t uvmqtt__session_pending(const uvmqtt__session_t *s) {
  return s->act ? s->act->out.len : 0;
}

/* What uvmqtt_client_stats() reports of the session: messages in the
 * window, messages in the queue (no packet id yet) and the bytes of every
 * message held. */
void uvmqtt__session_stats(const uvmqtt__session_t *s, uint32_t *inflight, uint32_t *queued,
                           size_t *queued_bytes);

/* 1 once nothing more may go out on this connection (after DISCONNECT or an
 * error). */
static inline int uvmqtt__session_terminating(const uvmqtt__session_t *s) {
  return s->state == UVMQTT__S_TERMINATING;
}

/* Packet id bookkeeping, exposed for the tests' invariants: 1 when `id` is
 * in use by a message or a request. */
int uvmqtt__session_id_in_use(const uvmqtt__session_t *s, uint16_t id);

#endif
