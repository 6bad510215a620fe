/* The gateway demo's books; see ledger.h. */
#include "ledger.h"

#include <stdlib.h>
#include <string.h>

#define OUTCOME_MASK 0x07u
#define RECEIVED     0x08u

int gw_track_issue(gw_track_t *t, gw_live_t *live, uint32_t *seq) {
  if (t->count == t->cap) {
    uint32_t cap = t->cap ? t->cap * 2 : 64;
    uint8_t *marks = realloc(t->marks, cap);
    if (marks == NULL) return -1;
    memset(marks + t->cap, 0, cap - t->cap);
    t->marks = marks;
    t->cap = cap;
  }
  *seq = t->count++;
  live->sent++;
  live->pending++;
  return 0;
}

void gw_track_outcome(gw_track_t *t, gw_live_t *live, uint32_t seq, gw_outcome_t outcome) {
  if (seq >= t->count || (t->marks[seq] & OUTCOME_MASK) != GW_PENDING) return;
  t->marks[seq] |= (uint8_t)outcome;
  live->pending--;
  if (outcome == GW_ACKED && !(t->marks[seq] & RECEIVED)) live->acked_missing++;
}

int gw_track_received(gw_track_t *t, gw_live_t *live, uint32_t seq) {
  if (seq >= t->count) return -1;
  if (t->marks[seq] & RECEIVED) {
    live->duplicates++;
    return 0;
  }
  t->marks[seq] |= RECEIVED;
  live->received++;
  if ((t->marks[seq] & OUTCOME_MASK) == GW_ACKED) live->acked_missing--;
  return 0;
}

void gw_track_tally(const gw_track_t *t, gw_tally_t *out) {
  for (uint32_t i = 0; i < t->count; i++) {
    uint8_t m = t->marks[i];
    out->sent++;
    if (m & RECEIVED)
      out->delivered++;
    else if ((m & OUTCOME_MASK) == GW_DROPPED)
      out->dropped++;
    else if ((m & OUTCOME_MASK) == GW_EXPIRED)
      out->expired++;
    else
      out->lost++;
  }
}

void gw_track_free(gw_track_t *t) {
  free(t->marks);
  memset(t, 0, sizeof *t);
}
