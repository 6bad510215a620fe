/* The event loop of a multi-node scenario: see scene.h. */
#include "scene.h"

#include <check.h>
#include <signal.h>
#include <stdlib.h>

test_scene_t test_scene = {.phase = "start"};

typedef struct {
  uv_timer_t timer;
  void (*fn)(void);
} step_t;

uint64_t test_mono_ms(void) {
  return uv_hrtime() / 1000000;
}

static void on_watchdog(uv_timer_t *t) {
  (void)t;
  if (test_scene.on_timeout != NULL) test_scene.on_timeout();
  ck_abort_msg("the scenario did not finish in time (phase: %s)", test_scene.phase);
}

void test_scene_start(uint64_t timeout_ms, void (*on_timeout)(void)) {
  signal(SIGPIPE, SIG_IGN);
  test_scene.on_timeout = on_timeout;
  ck_assert_int_eq(uv_loop_init(&test_scene.loop), 0);
  uv_timer_init(&test_scene.loop, &test_scene.watchdog);
  uv_timer_start(&test_scene.watchdog, on_watchdog, timeout_ms, 0);
  /* uv_run() returns once the scenario closed its clients. */
  uv_unref((uv_handle_t *)&test_scene.watchdog);
  uv_timer_init(&test_scene.loop, &test_scene.tick);
  uv_timer_init(&test_scene.loop, &test_scene.check);
}

void test_scene_stop_timers(void) {
  if (!uv_is_closing((uv_handle_t *)&test_scene.tick))
    uv_close((uv_handle_t *)&test_scene.tick, NULL);
  if (!uv_is_closing((uv_handle_t *)&test_scene.check))
    uv_close((uv_handle_t *)&test_scene.check, NULL);
}

void test_scene_run(void) {
  uv_run(&test_scene.loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&test_scene.watchdog, NULL);
  test_scene_stop_timers();
  uv_run(&test_scene.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&test_scene.loop), 0);
}

static void step_closed(uv_handle_t *h) {
  free(h->data);
}

static void step_fire(uv_timer_t *t) {
  step_t *s = t->data;
  s->fn();
  uv_close((uv_handle_t *)&s->timer, step_closed);
}

void test_scene_after(uint64_t ms, void (*fn)(void)) {
  step_t *s = calloc(1, sizeof *s);
  ck_assert_ptr_nonnull(s);
  s->fn = fn;
  uv_timer_init(&test_scene.loop, &s->timer);
  s->timer.data = s;
  uv_timer_start(&s->timer, step_fire, ms, 0);
}
