/* Starts and stops the Node.js servers of the WebSocket tests (ws_broker.js,
 * ws_relay.js, ws_fake.js in this folder): `node` by fork and exec, on a
 * port the system picks, stopped by its pid. The npm packages come from the
 * cache that tools/install-deps fills (UVMQTT_NPM_CACHE, by default
 * ~/.cache/uvmqtt-npm), through NODE_PATH. */
#ifndef TEST_NODE_SERVER_H
#define TEST_NODE_SERVER_H

#include <sys/types.h>

typedef struct {
  pid_t pid;
  int port; /* where it listens, on 127.0.0.1 */
  int out;  /* the read end of its stdout */
} test_node_t;

/* Runs `node test/support/<script> args...` (args NULL-terminated, may be
 * NULL) and waits, bounded (15 s), for its "listening <port>" line. When
 * `needs_npm`, the npm cache must hold the packages, else this fails with a
 * message that names tools/install-deps: a missing dependency is a failure,
 * not a reason to skip. Returns 0 or -1 (with a message on stderr). */
int test_node_start(test_node_t *n, const char *script, const char *const *args, int needs_npm);

/* SIGTERM, then SIGKILL after 5 s; waits for the exit. Safe to call twice.
 * Returns the exit status when it exited by itself or on SIGTERM, -1
 * otherwise. */
int test_node_stop(test_node_t *n);

/* The node_modules folder of the npm cache. */
const char *test_npm_modules(void);

#endif
