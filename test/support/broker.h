/* Starts and stops a real Mosquitto for integration tests: a config file in a
 * fresh temporary directory, a free loopback port, stopped by its pid. */
#ifndef TEST_BROKER_H
#define TEST_BROKER_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct {
  pid_t pid;
  int port;
  char dir[256];    /* temporary directory holding the config, log and persistence */
  char extra[2048]; /* extra config lines given to broker_start, reused by restart */
} test_broker_t;

/* Writes a config (listener on 127.0.0.1:<free port>, allow_anonymous true,
 * persistence in dir when `extra` asks for it, plus `extra` lines verbatim),
 * starts mosquitto and waits (bounded, 5 s) until the port accepts.
 * Returns 0 or -1 (with a message on stderr). */
int test_broker_start(test_broker_t *b, const char *extra);

/* SIGTERM, wait for exit (bounded; SIGKILL after 5 s). The directory stays. */
int test_broker_stop(test_broker_t *b);

/* Starts again on the same port, directory and config (persistence kept). */
int test_broker_restart(test_broker_t *b);

/* Stops if running and removes the directory. */
void test_broker_cleanup(test_broker_t *b);

/* A TCP port on 127.0.0.1 that nothing listens on right now. */
int test_free_port(void);

/* 1 when something accepts TCP connections on 127.0.0.1:port. */
int test_port_accepts(int port);

/* Monotonic milliseconds; a sleep that a signal does not cut short. */
long long test_now_ms(void);
void test_sleep_ms(long ms);

/* Removes a directory and everything in it (errors ignored). */
void test_remove_tree(const char *dir);

/* A server process forked by the caller: a failed assertion ends the test
 * through exit(), which skips the test's cleanup, so an exit handler kills
 * (SIGKILL) and reaps every pid tracked and not untracked by the process
 * that tracked it (a forked child inherits the table, not the ownership). */
void test_track_pid(pid_t pid);
void test_untrack_pid(pid_t pid);

/* fork() for a server the child then execs: the parent gets the child's
 * pid, tracked (test_track_pid), or -1; the child gets 0 and, on Linux,
 * dies with the test process. */
pid_t test_fork_server(void);

/* Runs a shell command line with a bound on its duration (seconds); returns
 * its exit status, or -1. Output goes to the test's stdout. */
int test_run(const char *cmdline, int timeout_s);

/* Prepares `loop` with `watchdog`, an unreferenced timer (uv_run() returns
 * once the scenario closed its handles) that fails the test, after cleaning
 * up `broker` when not NULL, if the scenario still runs after timeout_ms. */
void test_loop_start(uv_loop_t *loop, uv_timer_t *watchdog, uint64_t timeout_ms,
                     test_broker_t *broker);

/* Closes the watchdog, runs `loop` until every handle is closed and asserts
 * that uv_loop_close() succeeds. */
void test_loop_finish(uv_loop_t *loop, uv_timer_t *watchdog);

/* Raises the soft limit on open descriptors to at least `want` (tests with
 * a thousand connections; the broker started afterwards inherits it).
 * Returns 0, or -1 when the hard limit is lower. */
int test_raise_fd_limit(unsigned long want);

/* In a child just forked to exec a server: stdout to `out` (truncated when
 * `truncate_out`, else appended), stderr to `err` (appended; NULL: the
 * same file as stdout), stdin from /dev/null, and every other descriptor
 * closed, so the server holds none of the test's pipes and sockets open (a
 * reader waiting for EOF on a pipe would hang while the server lives). */
void test_child_stdio(const char *out, int truncate_out, const char *err);

/* The build and source roots (from UVMQTT_BUILD_ROOT / UVMQTT_SOURCE_ROOT,
 * which the meson test environment sets). */
const char *test_build_root(void);
const char *test_source_root(void);

#endif
