/* A RabbitMQ cluster on loopback for the rabbit suite: up to
 * TEST_RABBIT_MAX nodes of Debian's rabbitmq-server (3.10) with the MQTT
 * plugin, run as the current user from a fresh temporary directory (data,
 * logs, config, Erlang cookie) with their own epmd on a free port, so they
 * share nothing with a system RabbitMQ or epmd on the default ports.
 *
 * Node 1 starts alone; nodes 2 and 3 join it when they first boot (peer
 * discovery from the config, which does what rabbitmqctl's stop_app,
 * join_cluster, start_app would, without three CLI runs per node). A
 * definitions file loaded at boot adds a user for the MQTT plugin's
 * anonymous logins and a policy that mirrors the plugin's QoS 1
 * subscription queues on every node (ha-mode all, automatic sync). Every
 * listener (MQTT, AMQP, Erlang distribution, epmd) is bound to 127.0.0.1.
 *
 * Each node is the beam.smp process this launcher forked (the start
 * scripts exec into it), so killing it by its pid is a kill -9 of the
 * broker itself; it restarts on the same ports and data directory. */
#ifndef TEST_RABBIT_H
#define TEST_RABBIT_H

#include <sys/types.h>

#define TEST_RABBIT_MAX 3

typedef struct {
  pid_t pid; /* beam.smp; 0: not running */
  int mqtt_port;
  int amqp_port;
  int dist_port;
  long long spawned_ms; /* monotonic time of the last spawn */
} test_rabbit_node_t;

typedef struct {
  char dir[256]; /* cookie, config, data, logs */
  pid_t epmd_pid;
  int epmd_port;
  test_rabbit_node_t nodes[TEST_RABBIT_MAX];
  int count;
  char uris[TEST_RABBIT_MAX][64];     /* "mqtt://127.0.0.1:<port>" */
  long long boot_ms[TEST_RABBIT_MAX]; /* the last boot of each node, spawn to MQTT accept */
} test_rabbit_t;

/* The rabbitmq-server start script, or NULL (with a message on stderr)
 * when the package is not installed. */
const char *test_rabbit_server(void);

/* Starts epmd and `count` nodes, node 1 first, and waits (bounded: 90 s in
 * all) until each accepts MQTT connections. Returns 0, or -1 with a message
 * and the logs of the node that failed on stderr (whatever started is
 * stopped). */
int test_rabbit_start(test_rabbit_t *r, int count);

/* Kills node i with SIGKILL and reaps it. Returns 0 when the process
 * killed was beam.smp (the broker, not a script around it), else -1. */
int test_rabbit_kill(test_rabbit_t *r, int i);

/* Starts node i again (same ports, same data) without waiting;
 * test_rabbit_ready() says whether its MQTT listener accepts. */
int test_rabbit_spawn(test_rabbit_t *r, int i);
int test_rabbit_ready(test_rabbit_t *r, int i);

/* Waits (bounded, `timeout_ms`) until node i accepts; 0, or -1 with its log
 * on stderr. */
int test_rabbit_wait(test_rabbit_t *r, int i, long long timeout_ms);

/* Prints the last lines of node i's log to stderr. */
void test_rabbit_print_log(test_rabbit_t *r, int i, int lines);

/* Stops every process and removes the directory (kept when
 * UVMQTT_KEEP_CLUSTER_LOGS is set). */
void test_rabbit_cleanup(test_rabbit_t *r);

#endif
