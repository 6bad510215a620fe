/* A real multi-node broker cluster on loopback for the cluster tests: one
 * Redis (its own config in a fresh temporary directory, no persistence to
 * disk) and up to TEST_CLUSTER_MAX aedes nodes (test/support/cluster_node.js)
 * that keep sessions, subscriptions, retained messages and offline queues
 * in that Redis and route messages between themselves through it. Each
 * process has its own free port and is stopped by its pid.
 *
 * The node scripts need the npm packages that tools/install-deps puts in
 * $UVMQTT_NPM_CACHE (default $HOME/.cache/uvmqtt-npm); they are found
 * through NODE_PATH. */
#ifndef TEST_CLUSTER_H
#define TEST_CLUSTER_H

#include <sys/types.h>

#define TEST_CLUSTER_MAX 3

typedef struct {
  pid_t pid; /* 0: not running */
  int port;
} test_cluster_proc_t;

typedef struct {
  char dir[256]; /* Redis config, logs */
  char node_path[512];
  test_cluster_proc_t redis;
  test_cluster_proc_t nodes[TEST_CLUSTER_MAX];
  int count;
  char uris[TEST_CLUSTER_MAX][64]; /* "mqtt://127.0.0.1:<port>" */
} test_cluster_t;

/* The node_modules folder the node scripts use, or NULL (with a message on
 * stderr) when aedes, aedes-persistence-redis or mqemitter-redis is missing
 * there. */
const char *test_cluster_modules(void);

/* Starts Redis and `count` nodes and waits (bounded) until each node printed
 * "listening <port>" and accepts. Returns 0 or -1 (message and logs on
 * stderr; whatever started is stopped). */
int test_cluster_start(test_cluster_t *cl, int count);

/* Kills node i with SIGKILL (no goodbye to its clients or to Redis) and
 * reaps it. */
void test_cluster_kill(test_cluster_t *cl, int i);

/* Starts node i again on its port without waiting; test_cluster_ready()
 * then says whether it accepts. Returns 0 or -1. */
int test_cluster_spawn(test_cluster_t *cl, int i);
int test_cluster_ready(test_cluster_t *cl, int i);

/* Starts node i again and waits (bounded) until it accepts. */
int test_cluster_restart(test_cluster_t *cl, int i);

/* Stops every process and removes the directory. */
void test_cluster_cleanup(test_cluster_t *cl);

#endif
