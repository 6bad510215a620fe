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

/* A single server needs no bookkeeping: it is tried whatever happened. */
static uint32_t count(const uvmqtt__client_t *c) {
  return c->cfg->uri_count;
}

static const char *uri_at(const uvmqtt__client_t *c, uint32_t i) {
  return c->extra && c->extra->own_uris ? c->extra->own_uris[i] : c->cfg->uris[i];
}

/* The per-server state, or NULL with a single server. */
static struct uvmqtt__server_s *servers_of(const uvmqtt__client_t *c) {
  return c->extra ? c->extra->servers : NULL;
}

int uvmqtt__servers_init(uvmqtt__client_t *c, uint8_t order) {
  if (order > UVMQTT_SERVERS_STICKY) return UVMQTT_EINVAL;
  c->server_order = order;
  c->uri_index = 0;
  if (count(c) < 2) return 0;
  uvmqtt__client_extra_t *x = uvmqtt__client_extra(c);
  if (x == NULL) return UVMQTT_ENOMEM;
  x->servers = uvmqtt__calloc(count(c), sizeof *x->servers);
  if (x->servers == NULL) return UVMQTT_ENOMEM;
  if (order == UVMQTT_SERVERS_RANDOM_START)
    c->uri_index = (uint32_t)(mix(uv_hrtime() ^ (uint64_t)(uintptr_t)c) % count(c));
  return 0;
}

void uvmqtt__servers_free(uvmqtt__client_t *c) {
  if (c->extra == NULL) return;
  uvmqtt__free(c->extra->servers);
  c->extra->servers = NULL;
}

const char *uvmqtt__servers_pick(uvmqtt__client_t *c, uint64_t now) {
  uint32_t n = count(c);
  uint32_t start = c->uri_index % n;
  struct uvmqtt__server_s *sv = servers_of(c);
  if (sv == NULL) return uri_at(c, start);
  uint32_t best = start;
  /* The first server from the current one on that is not serving a
   * penalty; when all are, the one whose penalty ends first, so that a
   * cluster that is entirely down is still tried in turn. */
  for (uint32_t k = 0; k < n; k++) {
    uint32_t i = (start + k) % n;
    if (sv[i].bad_until <= now) {
      best = i;
      break;
    }
    if (sv[i].bad_until < sv[best].bad_until) best = i;
  }
  c->uri_index = best;
  return uri_at(c, best);
}

void uvmqtt__servers_good(uvmqtt__client_t *c) {
  struct uvmqtt__server_s *sv = servers_of(c);
  if (sv == NULL) return;
  uint32_t i = c->uri_index % count(c);
  sv[i].bad_until = 0;
  sv[i].failures = 0;
}

const char *uvmqtt__servers_failed(uvmqtt__client_t *c, uint64_t now, int was_connected) {
  uint32_t i = c->uri_index % count(c);
  const char *failed = uri_at(c, i);
  struct uvmqtt__server_s *sv = servers_of(c);
  if (sv == NULL) return failed;
  /* Sticky: a connection that was up is tried again first, where the
   * session lives; only a failed attempt moves the client on. */
  if (c->server_order == UVMQTT_SERVERS_STICKY && was_connected) return failed;
  uint32_t f = sv[i].failures < 16 ? sv[i].failures++ : 16;
  uint64_t penalty = (uint64_t)SERVER_PENALTY_MIN_MS << f;
  if (penalty > SERVER_PENALTY_MAX_MS) penalty = SERVER_PENALTY_MAX_MS;
  sv[i].bad_until = now + penalty;
  c->uri_index = (i + 1) % count(c);
  return failed;
}
