/* A log-linear histogram of unsigned 64-bit values (nanoseconds here), in
 * the spirit of HdrHistogram: fixed memory, no allocation, a relative
 * precision of 2^(1-HIST_SUB_BITS) (under 0.8%) over the whole range. */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

/* Values below 2^HIST_SUB_BITS are counted exactly; above, every power of
 * two is split into 2^(HIST_SUB_BITS-1) equal buckets. */
#define HIST_SUB_BITS 8
/* Values at or above 2^HIST_MAX_BITS (about 4.9 hours in ns) share the top
 * bucket. */
#define HIST_MAX_BITS 44
#define HIST_BUCKETS                                                                               \
  ((1u << HIST_SUB_BITS) + (HIST_MAX_BITS - HIST_SUB_BITS) * (1u << (HIST_SUB_BITS - 1)))

typedef struct {
  uint64_t count;
  uint64_t min;
  uint64_t max;
  double sum;
  uint64_t buckets[HIST_BUCKETS];
} hist_t;

void hist_init(hist_t *h);
void hist_record(hist_t *h, uint64_t value);
/* Adds every value of `from` to `into`. */
void hist_merge(hist_t *into, const hist_t *from);
/* The value below which `pct` percent (0..100) of the recorded values lie,
 * reported as the highest value of its bucket (never above the maximum).
 * 0 for an empty histogram. */
uint64_t hist_percentile(const hist_t *h, double pct);
double hist_mean(const hist_t *h);

/* Bucket bounds, for walking the distribution. */
size_t hist_index(uint64_t value);
uint64_t hist_bucket_low(size_t index);
uint64_t hist_bucket_high(size_t index);

#endif
