/* The gateway demo's books: what happened to every message.
 *
 * Each device numbers its messages from 0. Its track holds, per number, the
 * outcome its publish callback reported and whether the subscriber received
 * it. At the end each message lands in exactly one column: delivered if the
 * subscriber saw it (whatever the device was told), else dropped or expired
 * if the delivery policy gave it up, else lost. */
#ifndef GATEWAY_LEDGER_H
#define GATEWAY_LEDGER_H

#include <stdint.h>

typedef enum { GW_SENSOR = 0, GW_BUTTON, GW_ALARM, GW_KINDS } gw_kind_t;

typedef enum {
  GW_PENDING = 0, /* no callback yet */
  GW_ACKED,       /* status 0: acknowledged (QoS 1) or written (QoS 0) */
  GW_DROPPED,     /* the delivery policy gave it up at a connection loss */
  GW_EXPIRED,     /* its deadline passed before it was sent */
  GW_FAILED       /* anything else, e.g. the client closed with it pending */
} gw_outcome_t;

typedef struct {
  uint8_t *marks; /* per message: outcome in bits 0-2, bit 3 received */
  uint32_t count; /* messages issued */
  uint32_t cap;
} gw_track_t;

/* Live counters of one device kind, kept as events arrive. */
typedef struct {
  uint64_t sent;
  uint64_t received; /* distinct messages */
  uint64_t duplicates;
  uint64_t pending;       /* no outcome yet */
  uint64_t acked_missing; /* acknowledged but not received (yet) */
} gw_live_t;

/* The final columns of one kind. */
typedef struct {
  uint64_t sent;
  uint64_t delivered;
  uint64_t dropped;
  uint64_t expired;
  uint64_t lost;
} gw_tally_t;

/* Numbers a new message. Returns 0 or -1 (out of memory). */
int gw_track_issue(gw_track_t *t, gw_live_t *live, uint32_t *seq);
void gw_track_outcome(gw_track_t *t, gw_live_t *live, uint32_t seq, gw_outcome_t outcome);
/* The subscriber received message `seq`. Returns 0, or -1 for a number
 * never issued. */
int gw_track_received(gw_track_t *t, gw_live_t *live, uint32_t seq);
/* Adds this track's messages to `out`. */
void gw_track_tally(const gw_track_t *t, gw_tally_t *out);
void gw_track_free(gw_track_t *t);

#endif
