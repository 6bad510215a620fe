/* Payload stamps and the subscriber side's bookkeeping of lost, duplicated
 * and reordered messages. */
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* Publisher indexes above this are taken as garbage rather than grown into. */
#define MAX_PUBLISHERS (1u << 24)
#define MAX_SEQ        (1u << 28)

struct bench_track_pub_s {
  uint64_t *seen; /* one bit per sequence number */
  uint32_t words;
  uint32_t next; /* highest sequence number seen + 1 */
  uint64_t unique;
};

/* The stamp is written in the host's byte order: sender and receiver run on
 * the same machine, and uv_hrtime values are only comparable there anyway. */
int bench_stamp_read(const uint8_t *payload, size_t len, bench_stamp_t *stamp) {
  if (len < BENCH_HEADER_LEN) return -1;
  memcpy(&stamp->sent_ns, payload, 8);
  memcpy(&stamp->seq, payload + 8, 4);
  memcpy(&stamp->publisher, payload + 12, 4);
  return 0;
}

void bench_track_init(bench_track_t *t) {
  memset(t, 0, sizeof *t);
}

void bench_track_free(bench_track_t *t) {
  for (uint32_t i = 0; i < t->npubs; i++) {
    if (t->pubs[i]) free(t->pubs[i]->seen);
    free(t->pubs[i]);
  }
  free(t->pubs);
  memset(t, 0, sizeof *t);
}

static bench_track_pub_t *pub_of(bench_track_t *t, uint32_t index) {
  if (index >= MAX_PUBLISHERS) return NULL;
  if (index >= t->npubs) {
    uint32_t n = t->npubs ? t->npubs : 16;
    while (n <= index)
      n *= 2;
    bench_track_pub_t **pubs = realloc(t->pubs, n * sizeof *pubs);
    if (pubs == NULL) return NULL;
    memset(pubs + t->npubs, 0, (n - t->npubs) * sizeof *pubs);
    t->pubs = pubs;
    t->npubs = n;
  }
  if (t->pubs[index] == NULL) t->pubs[index] = calloc(1, sizeof **t->pubs);
  return t->pubs[index];
}

static int grow_bits(bench_track_pub_t *p, uint32_t seq) {
  uint32_t need = seq / 64 + 1;
  if (need <= p->words) return 0;
  uint32_t n = p->words ? p->words : 64;
  while (n < need)
    n *= 2;
  uint64_t *seen = realloc(p->seen, (size_t)n * sizeof *seen);
  if (seen == NULL) return -1;
  memset(seen + p->words, 0, (size_t)(n - p->words) * sizeof *seen);
  p->seen = seen;
  p->words = n;
  return 0;
}

int bench_track_add(bench_track_t *t, const bench_stamp_t *stamp) {
  /* A sequence number this high is garbage, not a run of 256M messages. */
  if (stamp->seq >= MAX_SEQ) {
    t->malformed++;
    return -1;
  }
  bench_track_pub_t *p = pub_of(t, stamp->publisher);
  if (p == NULL || grow_bits(p, stamp->seq) < 0) {
    t->malformed++;
    return -1;
  }
  uint64_t bit = (uint64_t)1 << (stamp->seq % 64);
  uint64_t *word = &p->seen[stamp->seq / 64];
  if (*word & bit) {
    t->duplicated++;
    return 0;
  }
  *word |= bit;
  p->unique++;
  t->unique++;
  if (stamp->seq + 1 <= p->next)
    t->reordered++;
  else
    p->next = stamp->seq + 1;
  return 1;
}

uint64_t bench_track_lost(const bench_track_t *t, uint64_t expected_per_pub) {
  uint64_t lost = 0;
  for (uint32_t i = 0; i < t->npubs; i++) {
    const bench_track_pub_t *p = t->pubs[i];
    if (p == NULL) continue;
    uint64_t want = expected_per_pub ? expected_per_pub : p->next;
    if (want > p->unique) lost += want - p->unique;
  }
  return lost;
}

uint32_t bench_track_publishers(const bench_track_t *t) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < t->npubs; i++)
    n += t->pubs[i] != NULL;
  return n;
}
