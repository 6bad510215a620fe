/* Built-in reconnect policies. */
#include "uvmqtt.h"

/* xorshift64*: small, fast, good enough for jitter; never cryptographic. */
static uint64_t next_random(uvmqtt_backoff_t *b) {
  if (b->rng == 0) b->rng = (uv_hrtime() | 1) * 0x9E3779B97F4A7C15ULL;
  uint64_t x = b->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  b->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static int over_limits(const uvmqtt_backoff_t *b, const uvmqtt_reconnect_info_t *info) {
  if (b->max_attempts && info->attempt > b->max_attempts) return 1;
  if (b->max_total_ms && info->down_ms >= b->max_total_ms) return 1;
  return 0;
}

/* Refusals that a retry cannot fix: credentials, authorisation, bans. */
static int refused_for_good(const uvmqtt_reconnect_info_t *info) {
  if (info->status != UVMQTT_EREFUSED && info->status != UVMQTT_EAUTH) return 0;
  switch (info->reason) {
  case 0x04: /* 3.1.1 bad user name or password */
  case 0x05: /* 3.1.1 not authorized */
  case 0x86: /* bad user name or password */
  case 0x87: /* not authorized */
  case 0x8A: /* banned */
  case 0x8C: /* bad authentication method */ return 1;
  default: return 0;
  }
}

int64_t uvmqtt_reconnect_never(void *state, const uvmqtt_reconnect_info_t *info) {
  (void)state;
  (void)info;
  return -1;
}

int64_t uvmqtt_reconnect_fixed(void *state, const uvmqtt_reconnect_info_t *info) {
  uvmqtt_backoff_t *b = state;
  if (b == NULL || info == NULL || over_limits(b, info)) return -1;
  return b->min_ms;
}

int64_t uvmqtt_reconnect_backoff(void *state, const uvmqtt_reconnect_info_t *info) {
  uvmqtt_backoff_t *b = state;
  if (b == NULL || info == NULL || over_limits(b, info)) return -1;
  uint64_t max = b->max_ms ? b->max_ms : 30000;
  uint64_t min = b->min_ms ? b->min_ms : 1;
  if (min > max) min = max;
  uint64_t delay;
  if (refused_for_good(info)) {
    /* Retrying soon cannot fix credentials: wait the longest. */
    delay = max;
  } else {
    uint32_t shift = info->attempt > 0 ? info->attempt - 1 : 0;
    uint64_t ceiling = shift >= 32 ? max : min << shift;
    if (ceiling > max || ceiling < min) ceiling = max;
    /* Full jitter: uniform in [0, ceiling], so a storm of clients spreads. */
    delay = next_random(b) % (ceiling + 1);
  }
  if (b->max_total_ms && info->down_ms + delay > b->max_total_ms)
    delay = b->max_total_ms - info->down_ms;
  return (int64_t)delay;
}

int64_t uvmqtt_reconnect_deadline(void *state, const uvmqtt_reconnect_info_t *info) {
  uvmqtt_backoff_t *b = state;
  if (b == NULL || b->max_total_ms == 0) return -1;
  return uvmqtt_reconnect_backoff(state, info);
}
