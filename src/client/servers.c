/* The server list: which server an attempt goes to, and what a success or a
 * failure changes about the next choice. Kept apart from the connection
 * lifecycle (conn.c), which only asks here at the start of an attempt and
 * reports CONNACKs and losses. */
#include <string.h>

#include "base/alloc.h"
#include "client/client_impl.h"

/* A server that failed is tried last for this long after its first
 * failure, doubling with each further failure in a row up to the maximum:
 * long enough for the other nodes of a cluster to take the load, short
 * enough that a restarted node is soon back in the rotation. */
#define SERVER_PENALTY_MIN_MS 1000u
#define SERVER_PENALTY_MAX_MS 30000u

/* splitmix64: a different first server per client without a shared
 * generator (clients of one process start within the same microsecond, so
 * the address of their state is mixed in too). */
static uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

int uvmqtt__servers_init(uvmqtt__client_t *c, uint8_t order) {
  if (order > UVMQTT_SERVERS_STICKY) return UVMQTT_EINVAL;
  c->server_order = order;
  c->server_bad_until = uvmqtt__calloc(c->uri_count, sizeof *c->server_bad_until);
  c->server_failures = uvmqtt__calloc(c->uri_count, sizeof *c->server_failures);
  if (c->server_bad_until == NULL || c->server_failures == NULL) return UVMQTT_ENOMEM;
  c->uri_index = 0;
  if (order == UVMQTT_SERVERS_RANDOM_START && c->uri_count > 1)
    c->uri_index = (uint32_t)(mix(uv_hrtime() ^ (uint64_t)(uintptr_t)c) % c->uri_count);
  return 0;
}

void uvmqtt__servers_free(uvmqtt__client_t *c) {
  uvmqtt__free(c->server_bad_until);
  uvmqtt__free(c->server_failures);
  c->server_bad_until = NULL;
  c->server_failures = NULL;
}

const char *uvmqtt__servers_pick(uvmqtt__client_t *c, uint64_t now) {
  uint32_t n = c->uri_count;
  uint32_t start = c->uri_index % n;
  uint32_t best = start;
  /* The first server from the current one on that is not serving a
   * penalty; when all are, the one whose penalty ends first, so that a
   * cluster that is entirely down is still tried in turn. */
  for (uint32_t k = 0; k < n; k++) {
    uint32_t i = (start + k) % n;
    if (c->server_bad_until[i] <= now) {
      best = i;
      break;
    }
    if (c->server_bad_until[i] < c->server_bad_until[best]) best = i;
  }
  c->uri_index = best;
  return c->uris[best];
}

void uvmqtt__servers_good(uvmqtt__client_t *c) {
  uint32_t i = c->uri_index % c->uri_count;
  c->server_bad_until[i] = 0;
  c->server_failures[i] = 0;
}

const char *uvmqtt__servers_failed(uvmqtt__client_t *c, uint64_t now, int was_connected) {
  uint32_t i = c->uri_index % c->uri_count;
  const char *failed = c->uris[i];
  /* Sticky: a connection that was up is tried again first, where the
   * session lives; only a failed attempt moves the client on. */
  if (c->server_order == UVMQTT_SERVERS_STICKY && was_connected) return failed;
  uint32_t f = c->server_failures[i] < 16 ? c->server_failures[i]++ : 16;
  uint64_t penalty = (uint64_t)SERVER_PENALTY_MIN_MS << f;
  if (penalty > SERVER_PENALTY_MAX_MS) penalty = SERVER_PENALTY_MAX_MS;
  c->server_bad_until[i] = now + penalty;
  c->uri_index = (i + 1) % c->uri_count;
  return failed;
}
