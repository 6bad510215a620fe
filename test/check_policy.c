/* The built-in reconnect policies as pure functions: the numbers they
 * return for each attempt, refusal and limit. Jitter is checked over many
 * samples from fixed seeds, so a failure reproduces. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "uvmqtt.h"

#define SAMPLES 4000

static uvmqtt_reconnect_info_t info_for(uint32_t attempt, uint64_t down_ms) {
  uvmqtt_reconnect_info_t info;
  memset(&info, 0, sizeof info);
  info.attempt = attempt;
  info.status = UV_ECONNREFUSED;
  info.down_ms = down_ms;
  return info;
}

static uvmqtt_reconnect_info_t refusal(uint32_t attempt, uint8_t reason) {
  uvmqtt_reconnect_info_t info = info_for(attempt, 0);
  info.status = UVMQTT_EREFUSED;
  info.reason = reason;
  return info;
}

static uvmqtt_backoff_t backoff_state(uint32_t min_ms, uint32_t max_ms, uint64_t seed) {
  uvmqtt_backoff_t b;
  memset(&b, 0, sizeof b);
  b.min_ms = min_ms;
  b.max_ms = max_ms;
  b.rng = seed;
  return b;
}

/* The documented ceiling for attempt k: min(max, min * 2^(k-1)). */
static uint64_t ceiling_of(uint32_t min_ms, uint32_t max_ms, uint32_t attempt) {
  uint64_t c = min_ms;
  for (uint32_t k = 1; k < attempt && c < max_ms; k++)
    c *= 2;
  return c < max_ms ? c : max_ms;
}

/* Summary of SAMPLES delays of one policy for one situation. */
typedef struct {
  int64_t lo;
  int64_t hi;
  double mean;
  int distinct; /* among the first 64 samples */
} sample_stats_t;

static sample_stats_t sample(uvmqtt_reconnect_fn fn, uvmqtt_backoff_t *b,
                             const uvmqtt_reconnect_info_t *info) {
  sample_stats_t st = {INT64_MAX, INT64_MIN, 0, 0};
  int64_t first[64];
  double sum = 0;
  for (int i = 0; i < SAMPLES; i++) {
    int64_t d = fn(b, info);
    if (d < st.lo) st.lo = d;
    if (d > st.hi) st.hi = d;
    sum += (double)d;
    if (i < 64) {
      int seen = 0;
      for (int j = 0; j < i && !seen; j++)
        seen = first[j] == d;
      if (!seen) st.distinct++;
      first[i] = d;
    }
  }
  st.mean = sum / SAMPLES;
  return st;
}

/* ---- never ------------------------------------------------------------------- */

START_TEST(policy_never_gives_up) {
  uvmqtt_backoff_t b = backoff_state(100, 1000, 1);
  for (uint32_t attempt = 0; attempt < 100; attempt++) {
    uvmqtt_reconnect_info_t info = info_for(attempt, attempt * 10u);
    ck_assert_int_eq(uvmqtt_reconnect_never(NULL, &info), -1);
    ck_assert_int_eq(uvmqtt_reconnect_never(&b, &info), -1);
  }
  uvmqtt_reconnect_info_t r = refusal(1, 0x86);
  ck_assert_int_eq(uvmqtt_reconnect_never(&b, &r), -1);
}
END_TEST

/* ---- fixed ------------------------------------------------------------------- */

START_TEST(policy_fixed_returns_min) {
  uvmqtt_backoff_t b = backoff_state(250, 5000, 7);
  for (uint32_t attempt = 1; attempt <= 1000; attempt++) {
    uvmqtt_reconnect_info_t info = info_for(attempt, (uint64_t)attempt * 1000u);
    ck_assert_int_eq(uvmqtt_reconnect_fixed(&b, &info), 250);
  }
  /* A refusal does not change a fixed delay. */
  uvmqtt_reconnect_info_t r = refusal(1, 0x05);
  ck_assert_int_eq(uvmqtt_reconnect_fixed(&b, &r), 250);
}
END_TEST

START_TEST(policy_fixed_max_attempts) {
  uvmqtt_backoff_t b = backoff_state(50, 0, 0);
  b.max_attempts = 3;
  for (uint32_t attempt = 1; attempt <= 3; attempt++) {
    uvmqtt_reconnect_info_t info = info_for(attempt, 0);
    ck_assert_int_eq(uvmqtt_reconnect_fixed(&b, &info), 50);
  }
  uvmqtt_reconnect_info_t info = info_for(4, 0);
  ck_assert_int_lt(uvmqtt_reconnect_fixed(&b, &info), 0);
  info = info_for(1000, 0);
  ck_assert_int_lt(uvmqtt_reconnect_fixed(&b, &info), 0);
}
END_TEST

START_TEST(policy_fixed_max_total) {
  uvmqtt_backoff_t b = backoff_state(100, 0, 0);
  b.max_total_ms = 2000;
  uvmqtt_reconnect_info_t info = info_for(1, 0);
  ck_assert_int_eq(uvmqtt_reconnect_fixed(&b, &info), 100);
  info = info_for(19, 1999);
  ck_assert_int_eq(uvmqtt_reconnect_fixed(&b, &info), 100);
  info = info_for(20, 2000);
  ck_assert_int_lt(uvmqtt_reconnect_fixed(&b, &info), 0);
  info = info_for(21, 50000);
  ck_assert_int_lt(uvmqtt_reconnect_fixed(&b, &info), 0);
}
END_TEST

START_TEST(policy_null_state) {
  uvmqtt_reconnect_info_t info = info_for(1, 0);
  ck_assert_int_lt(uvmqtt_reconnect_fixed(NULL, &info), 0);
  ck_assert_int_lt(uvmqtt_reconnect_backoff(NULL, &info), 0);
  ck_assert_int_lt(uvmqtt_reconnect_deadline(NULL, &info), 0);
}
END_TEST

/* ---- backoff ------------------------------------------------------------------ */

/* For attempt k every delay lies in [0, min(max, min * 2^(k-1))], the whole
 * range is used (full jitter), the samples differ, and the mean follows the
 * ceiling: it doubles with k until the cap, then stays. */
START_TEST(policy_backoff_full_jitter) {
  const uint32_t min_ms = 100, max_ms = 3200;
  uvmqtt_backoff_t b = backoff_state(min_ms, max_ms, 0x1234567u);
  double prev_mean = -1;
  for (uint32_t k = 1; k <= 10; k++) {
    uvmqtt_reconnect_info_t info = info_for(k, 0);
    sample_stats_t st = sample(uvmqtt_reconnect_backoff, &b, &info);
    double ceiling = (double)ceiling_of(min_ms, max_ms, k);
    ck_assert_msg(st.lo >= 0, "attempt %u: delay %lld below 0", k, (long long)st.lo);
    ck_assert_msg((double)st.hi <= ceiling, "attempt %u: delay %lld above %.0f", k,
                  (long long)st.hi, ceiling);
    /* Uniform over [0, c]: both ends are approached. */
    ck_assert_msg((double)st.lo <= ceiling * 0.02, "attempt %u: smallest delay %lld", k,
                  (long long)st.lo);
    ck_assert_msg((double)st.hi >= ceiling * 0.98, "attempt %u: largest delay %lld", k,
                  (long long)st.hi);
    ck_assert_msg(st.distinct >= 32, "attempt %u: only %d distinct delays in 64", k, st.distinct);
    /* The mean of uniform [0, c] is c/2; its standard error here is below
     * 0.5% of c, so 5% never fails by chance. */
    ck_assert_msg(st.mean > ceiling * 0.45 && st.mean < ceiling * 0.55,
                  "attempt %u: mean %.1f for ceiling %.0f", k, st.mean, ceiling);
    if (ceiling < max_ms)
      ck_assert_msg(st.mean > prev_mean * 1.5, "attempt %u: mean %.1f after %.1f", k, st.mean,
                    prev_mean);
    prev_mean = st.mean;
  }
}
END_TEST

/* Huge attempt numbers (shift overflow territory) stay under the cap. */
START_TEST(policy_backoff_large_attempts) {
  uvmqtt_backoff_t b = backoff_state(1000, 30000, 99);
  const uint32_t attempts[] = {31, 32, 33, 63, 64, 65, 1000, UINT32_MAX};
  for (size_t i = 0; i < sizeof attempts / sizeof attempts[0]; i++) {
    uvmqtt_reconnect_info_t info = info_for(attempts[i], 0);
    sample_stats_t st = sample(uvmqtt_reconnect_backoff, &b, &info);
    ck_assert_msg(st.lo >= 0 && st.hi <= 30000, "attempt %u: delays %lld..%lld", attempts[i],
                  (long long)st.lo, (long long)st.hi);
    ck_assert_msg(st.hi >= 29000, "attempt %u: largest delay %lld, expected near the cap",
                  attempts[i], (long long)st.hi);
  }
  /* A small first ceiling doubles many times before it reaches the cap. */
  b = backoff_state(1, 30000, 5);
  uvmqtt_reconnect_info_t info = info_for(40, 0);
  sample_stats_t st = sample(uvmqtt_reconnect_backoff, &b, &info);
  ck_assert(st.lo >= 0 && st.hi <= 30000 && st.hi >= 29000);
}
END_TEST

/* Refusals a retry cannot fix wait the cap, from the first attempt. */
static const uint8_t hopeless[] = {0x04, 0x05, 0x86, 0x87};

START_TEST(policy_backoff_refusal_waits_cap) {
  const uint32_t max_ms = 8000;
  uvmqtt_backoff_t b = backoff_state(100, max_ms, 42);
  uint8_t reason = hopeless[_i];
  for (uint32_t attempt = 1; attempt <= 3; attempt++) {
    uvmqtt_reconnect_info_t info = refusal(attempt, reason);
    for (int i = 0; i < 200; i++) {
      int64_t d = uvmqtt_reconnect_backoff(&b, &info);
      ck_assert_msg(d == (int64_t)max_ms,
                    "refusal 0x%02x, attempt %u: waits %lld ms, expected the cap %u ms", reason,
                    attempt, (long long)d, max_ms);
    }
  }
}
END_TEST

/* Refusals that may pass (server unavailable, busy) back off normally. */
START_TEST(policy_backoff_transient_refusal) {
  const uint8_t transient[] = {0x03, 0x88, 0x89};
  uvmqtt_backoff_t b = backoff_state(100, 8000, 43);
  for (size_t i = 0; i < sizeof transient; i++) {
    uvmqtt_reconnect_info_t info = refusal(1, transient[i]);
    sample_stats_t st = sample(uvmqtt_reconnect_backoff, &b, &info);
    ck_assert_msg(st.lo >= 0 && st.hi <= 100, "refusal 0x%02x: delays %lld..%lld", transient[i],
                  (long long)st.lo, (long long)st.hi);
  }
  /* A reason code beside a transport error is not a refusal. */
  uvmqtt_reconnect_info_t info = info_for(1, 0);
  info.reason = 0x86;
  sample_stats_t st = sample(uvmqtt_reconnect_backoff, &b, &info);
  ck_assert(st.lo >= 0 && st.hi <= 100);
}
END_TEST

START_TEST(policy_backoff_limits) {
  uvmqtt_backoff_t b = backoff_state(100, 1000, 11);
  b.max_attempts = 5;
  uvmqtt_reconnect_info_t info = info_for(5, 0);
  ck_assert_int_ge(uvmqtt_reconnect_backoff(&b, &info), 0);
  info = info_for(6, 0);
  ck_assert_int_lt(uvmqtt_reconnect_backoff(&b, &info), 0);

  b = backoff_state(100, 1000, 12);
  b.max_total_ms = 3000;
  info = info_for(3, 2999);
  ck_assert_int_ge(uvmqtt_reconnect_backoff(&b, &info), 0);
  info = info_for(4, 3000);
  ck_assert_int_lt(uvmqtt_reconnect_backoff(&b, &info), 0);
}
END_TEST

/* The same seed gives the same delays: a test or a replay can rely on it. A
 * zero seed picks one, so two such states differ. */
START_TEST(policy_backoff_seed) {
  uvmqtt_backoff_t a = backoff_state(100, 10000, 777);
  uvmqtt_backoff_t c = backoff_state(100, 10000, 777);
  uvmqtt_reconnect_info_t info = info_for(8, 0);
  for (int i = 0; i < 100; i++)
    ck_assert_int_eq(uvmqtt_reconnect_backoff(&a, &info), uvmqtt_reconnect_backoff(&c, &info));

  uvmqtt_backoff_t z1 = backoff_state(100, 10000, 0);
  uvmqtt_backoff_t z2 = backoff_state(100, 10000, 0);
  int differ = 0;
  for (int i = 0; i < 100; i++)
    differ += uvmqtt_reconnect_backoff(&z1, &info) != uvmqtt_reconnect_backoff(&z2, &info);
  ck_assert_uint_ne(z1.rng, 0);
  ck_assert_int_gt(differ, 50);
}
END_TEST

/* One state shared by many clients still yields varied delays. */
START_TEST(policy_backoff_shared_state) {
  uvmqtt_backoff_t b = backoff_state(2000, 2000, 3);
  uvmqtt_reconnect_info_t info = info_for(1, 0);
  sample_stats_t st = sample(uvmqtt_reconnect_backoff, &b, &info);
  ck_assert(st.lo >= 0 && st.hi <= 2000);
  ck_assert_int_ge(st.distinct, 60);
}
END_TEST

/* ---- deadline ------------------------------------------------------------------ */

START_TEST(policy_deadline_requires_total) {
  uvmqtt_backoff_t b = backoff_state(100, 1000, 1);
  for (uint32_t attempt = 1; attempt < 10; attempt++) {
    uvmqtt_reconnect_info_t info = info_for(attempt, 0);
    ck_assert_int_lt(uvmqtt_reconnect_deadline(&b, &info), 0);
  }
}
END_TEST

START_TEST(policy_deadline_gives_up) {
  uvmqtt_backoff_t b = backoff_state(100, 1000, 2);
  b.max_total_ms = 5000;
  uvmqtt_reconnect_info_t info = info_for(12, 5000);
  ck_assert_int_lt(uvmqtt_reconnect_deadline(&b, &info), 0);
  info = info_for(13, 5001);
  ck_assert_int_lt(uvmqtt_reconnect_deadline(&b, &info), 0);
  info = info_for(100, 1000000);
  ck_assert_int_lt(uvmqtt_reconnect_deadline(&b, &info), 0);
  /* Give up once down that long, whatever the cause. */
  info = refusal(3, 0x87);
  info.down_ms = 6000;
  ck_assert_int_lt(uvmqtt_reconnect_deadline(&b, &info), 0);
}
END_TEST

/* Below the deadline the delays follow backoff but the next attempt is never
 * scheduled past the deadline. */
START_TEST(policy_deadline_never_beyond) {
  const uint64_t total = 5000;
  uvmqtt_backoff_t b = backoff_state(200, 4000, 3);
  b.max_total_ms = total;
  for (uint64_t down = 0; down < total; down += 97) {
    for (uint32_t attempt = 1; attempt <= 8; attempt++) {
      uvmqtt_reconnect_info_t info = info_for(attempt, down);
      uint64_t ceiling = ceiling_of(200, 4000, attempt);
      for (int i = 0; i < 50; i++) {
        int64_t d = uvmqtt_reconnect_deadline(&b, &info);
        ck_assert_msg(d >= 0, "down %llu ms, attempt %u: gave up early", (unsigned long long)down,
                      attempt);
        ck_assert_msg((uint64_t)d <= ceiling, "down %llu, attempt %u: %lld above %llu",
                      (unsigned long long)down, attempt, (long long)d, (unsigned long long)ceiling);
        ck_assert_msg(down + (uint64_t)d <= total, "down %llu, attempt %u: retry at %llu > %llu",
                      (unsigned long long)down, attempt, (unsigned long long)(down + (uint64_t)d),
                      (unsigned long long)total);
      }
    }
  }
  /* A refusal's cap is clipped by the deadline too. */
  uvmqtt_reconnect_info_t info = refusal(1, 0x86);
  info.down_ms = total - 10;
  for (int i = 0; i < 50; i++) {
    int64_t d = uvmqtt_reconnect_deadline(&b, &info);
    ck_assert(d >= 0 && d <= 10);
  }
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("policy");
  TCase *tc = tcase_create("never");
  tcase_add_test(tc, policy_never_gives_up);
  suite_add_tcase(s, tc);

  tc = tcase_create("fixed");
  tcase_add_test(tc, policy_fixed_returns_min);
  tcase_add_test(tc, policy_fixed_max_attempts);
  tcase_add_test(tc, policy_fixed_max_total);
  tcase_add_test(tc, policy_null_state);
  suite_add_tcase(s, tc);

  tc = tcase_create("backoff");
  tcase_add_test(tc, policy_backoff_full_jitter);
  tcase_add_test(tc, policy_backoff_large_attempts);
  tcase_add_loop_test(tc, policy_backoff_refusal_waits_cap, 0, (int)sizeof hopeless);
  tcase_add_test(tc, policy_backoff_transient_refusal);
  tcase_add_test(tc, policy_backoff_limits);
  tcase_add_test(tc, policy_backoff_seed);
  tcase_add_test(tc, policy_backoff_shared_state);
  suite_add_tcase(s, tc);

  tc = tcase_create("deadline");
  tcase_add_test(tc, policy_deadline_requires_total);
  tcase_add_test(tc, policy_deadline_gives_up);
  tcase_add_test(tc, policy_deadline_never_beyond);
  suite_add_tcase(s, tc);
  return s;
}
