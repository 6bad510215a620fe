/* The event loop of a multi-node scenario (the cluster and rabbit suites):
 * one loop, a watchdog that names the phase the scenario hung in, the
 * publishing and checking timers the scenarios share, and one-shot steps
 * on the loop's clock. One scenario runs per test process, so the state is
 * one global. */
#ifndef TEST_SCENE_H
#define TEST_SCENE_H

#include <stdint.h>
#include <uv.h>

typedef struct {
  uv_loop_t loop;
  uv_timer_t watchdog;
  uv_timer_t tick;   /* repeating; the scenario starts and stops it */
  uv_timer_t check;  /* repeating; the scenario starts and stops it */
  const char *phase; /* named by the watchdog's failure */
  /* Called before the watchdog fails the test (e.g. to print node logs);
   * may be NULL. */
  void (*on_timeout)(void);
} test_scene_t;

extern test_scene_t test_scene;

/* Monotonic milliseconds. */
uint64_t test_mono_ms(void);

/* Initialises the loop and its timers; the watchdog fails the test after
 * timeout_ms. SIGPIPE is ignored: a write to a node just killed must fail
 * with EPIPE, not end the test. */
void test_scene_start(uint64_t timeout_ms, void (*on_timeout)(void));

/* Closes the tick and check timers (once). */
void test_scene_stop_timers(void);

/* Runs the loop until the scenario closed its clients, then closes the
 * scene's timers and the loop (asserting that it closes). */
void test_scene_run(void);

/* Calls fn once, ms from now. */
void test_scene_after(uint64_t ms, void (*fn)(void));

#endif
