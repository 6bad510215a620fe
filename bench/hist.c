/* The log-linear histogram: see hist.h for the bucket layout. */
#include "hist.h"

#include <string.h>

#define LINEAR     (1u << HIST_SUB_BITS)
#define HALF       (1u << (HIST_SUB_BITS - 1))
#define TOP_BUCKET (HIST_BUCKETS - 1)

void hist_init(hist_t *h) {
  memset(h, 0, sizeof *h);
  h->min = UINT64_MAX;
}

size_t hist_index(uint64_t value) {
  if (value < LINEAR) return (size_t)value;
  unsigned msb = 63u - (unsigned)__builtin_clzll(value);
  if (msb >= HIST_MAX_BITS) return TOP_BUCKET;
  /* value lies in [2^msb, 2^(msb+1)), split into HALF buckets of width 2^e. */
  unsigned e = msb - HIST_SUB_BITS + 1;
  size_t sub = (size_t)(value >> e) - HALF;
  return LINEAR + (size_t)(e - 1) * HALF + sub;
}

uint64_t hist_bucket_low(size_t index) {
  if (index < LINEAR) return index;
  size_t rel = index - LINEAR;
  unsigned e = (unsigned)(rel / HALF) + 1;
  return (uint64_t)(rel % HALF + HALF) << e;
}

uint64_t hist_bucket_high(size_t index) {
  if (index < LINEAR) return index;
  if (index >= TOP_BUCKET) return UINT64_MAX;
  unsigned e = (unsigned)((index - LINEAR) / HALF) + 1;
  return hist_bucket_low(index) + ((uint64_t)1 << e) - 1;
}

void hist_record(hist_t *h, uint64_t value) {
  h->buckets[hist_index(value)]++;
  h->count++;
  h->sum += (double)value;
  if (value < h->min) h->min = value;
  if (value > h->max) h->max = value;
}

void hist_merge(hist_t *into, const hist_t *from) {
  for (size_t i = 0; i < HIST_BUCKETS; i++)
    into->buckets[i] += from->buckets[i];
  into->count += from->count;
  into->sum += from->sum;
  if (from->min < into->min) into->min = from->min;
  if (from->max > into->max) into->max = from->max;
}

uint64_t hist_percentile(const hist_t *h, double pct) {
  if (h->count == 0) return 0;
  if (pct <= 0) return h->min;
  if (pct >= 100) return h->max;
  /* The rank of the value wanted, 1-based, rounded up as HdrHistogram does. */
  double want = pct / 100.0 * (double)h->count;
  uint64_t rank = (uint64_t)want;
  if ((double)rank < want) rank++;
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < HIST_BUCKETS; i++) {
    seen += h->buckets[i];
    if (seen >= rank) {
      uint64_t v = hist_bucket_high(i);
      if (v > h->max) v = h->max;
      if (v < h->min) v = h->min;
      return v;
    }
  }
  return h->max;
}

double hist_mean(const hist_t *h) {
  return h->count ? h->sum / (double)h->count : 0.0;
}
