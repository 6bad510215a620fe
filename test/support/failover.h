/* The failover scenario both multi-node suites run: subscribers connect
 * and subscribe to "<topic>/#", then publishers connect, then every
 * publisher publishes one numbered QoS 1 message (until delivered) to
 * "<topic>/<i>" per tick while the suite kills and restarts nodes on its
 * own schedule; the subscribers count each message's deliveries.
 *
 * What differs between the suites stays with them: the cluster it starts,
 * its schedule of kills (on_publishing, its check timer), when it is done
 * and what it asserts. One scenario runs per test process. */
#ifndef TEST_FAILOVER_H
#define TEST_FAILOVER_H

#include <stdint.h>
#include <uv.h>

#include "peer.h"

typedef struct {
  /* Set by the suite before test_failover_start(). */
  int pubs_n;
  int subs_n;
  int per_pub; /* messages per publisher */
  uint64_t tick_ms;
  const char *topic; /* "cluster/fo" */
  const char *label; /* of the progress lines: "cluster: failover" */
  uvmqtt_backoff_t policy;
  uv_timer_cb check;           /* every 100 ms from the first publish */
  void (*on_publishing)(void); /* at the first publish: schedules the kills */
  /* Kept by the scenario. */
  test_peer_t *pubs;
  test_peer_t *subs;
  int subs_ready;
  int pubs_ready;
  int published;
  int finishing;
  int checks;
  uint64_t t_start;     /* the first publish */
  uint64_t t_published; /* the last acknowledgement (seen by a poll) */
} test_failover_t;

/* The counts a check looks at. */
typedef struct {
  int done;     /* publishes completed */
  int up;       /* publishers connected */
  int complete; /* subscribers that have every message */
  int all_up;   /* every subscriber connected */
} test_failover_poll_t;

/* Every message of the scenario. */
int test_failover_msgs(const test_failover_t *fo);

/* Allocates the peers and connects the subscribers; the rest follows on
 * the loop (test_scene_start() first). */
void test_failover_start(test_failover_t *fo);

/* For the suite's check timer: counts, a progress line every 5 s (50
 * polls), and the time of the last acknowledgement. */
test_failover_poll_t test_failover_poll(test_failover_t *fo);

/* Stops the timers and closes every client (the loop then ends). */
void test_failover_finish(void);

/* Prints up to `most` messages p misses, as " publisher/seq", and a
 * newline. */
void test_failover_print_missing(const test_failover_t *fo, const test_peer_t *p, int most);

/* Frees the peers. */
void test_failover_free(test_failover_t *fo);

#endif
