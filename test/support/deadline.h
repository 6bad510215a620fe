/* The deadline scenario both multi-node suites run: a subscriber and a
 * publisher connect, the suite kills every node, and once the publisher
 * knows it is offline it publishes a message with a short deadline and
 * then an until-delivered marker. The first must expire and never
 * arrive; once it expired the suite brings its nodes back and the marker
 * must arrive.
 *
 * What differs between the suites stays with them: how the nodes go down
 * and come back, and the figures they print. One scenario runs per test
 * process. */
#ifndef TEST_DEADLINE_H
#define TEST_DEADLINE_H

#include <stdint.h>

#include "peer.h"

enum {
  TEST_DEADLINE_SETUP,     /* clients connecting */
  TEST_DEADLINE_KILLING,   /* kill_all called, the last node not down yet */
  TEST_DEADLINE_DOWN,      /* every node down, nothing published */
  TEST_DEADLINE_PUBLISHED, /* published (or about to) while down */
  TEST_DEADLINE_BACK       /* bring_back called */
};

typedef struct {
  /* Set by the suite before test_deadline_start(). */
  const char *topic; /* "cluster/dl" */
  uint64_t deadline_ms;
  uvmqtt_backoff_t policy;
  void (*kill_all)(void);   /* both clients ready: kill every node, then test_deadline_down() */
  void (*bring_back)(void); /* the message expired: restart the nodes */
  /* Kept by the scenario. */
  test_peer_t sub, pub;
  int phase;
  int expire_calls;
  int expire_status;
  int marker_status;
  int marker_calls;
  int got_expire;
  int got_marker;
  int finishing;
  uint64_t t_publish;
  uint64_t t_expired;
  uint64_t t_back;
  uint64_t t_marker;
} test_deadline_t;

/* Connects the two clients (test_scene_start() first). */
void test_deadline_start(test_deadline_t *dl);

/* For kill_all: every node is down now. */
void test_deadline_down(void);

/* After the run: the deadline message expired once (UVMQTT_EEXPIRED) and
 * never arrived; the marker was delivered, reported once. */
void test_deadline_assert(const test_deadline_t *dl);

#endif
