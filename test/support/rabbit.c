/* A RabbitMQ cluster on loopback: epmd plus rabbitmq-server nodes. */
#include "rabbit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"

/* Measured here (2 shared cores): node 1 boots in 6 to 7 s, nodes 2 and 3
 * together join it in 8 s more, a killed node restarts in 5 to 10 s. The
 * bounds leave room for a machine several times slower. */
#define START_MS 90000
#define EPMD_MS  10000
#define POLL_MS  50

static const char *const server_paths[] = {"/usr/lib/rabbitmq/bin/rabbitmq-server",
                                           "/usr/lib/rabbitmq/sbin/rabbitmq-server"};

/* The MQTT plugin's anonymous logins use this user; its password hash in
 * the definitions below is RabbitMQ's salted SHA-256 of the same word
 * (salt "uvmq"), so no CLI run is needed to create it. */
#define USER      "uvmqtt"
#define USER_HASH "dXZtcdPTlq+J0U9erx+fNufJAC6paRatGWgwHa5gRvUQRlP0"

const char *test_rabbit_server(void) {
  for (size_t i = 0; i < sizeof(server_paths) / sizeof(server_paths[0]); i++)
    if (access(server_paths[i], X_OK) == 0) return server_paths[i];
  fprintf(stderr, "rabbit: rabbitmq-server is not installed (%s); run tools/install-deps\n",
          server_paths[0]);
  return NULL;
}

static int write_file(const char *path, const char *text, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return -1;
  size_t len = strlen(text);
  int ok = write(fd, text, len) == (ssize_t)len;
  ok &= fchmod(fd, mode) == 0;
  ok &= close(fd) == 0;
  return ok ? 0 : -1;
}

/* Everything the nodes read besides their own config: a private HOME with
 * the shared Erlang cookie (mode 0400, or Erlang refuses it), the plugin
 * list, the definitions and an empty rabbitmq-env.conf (so a machine's
 * /etc/rabbitmq settings do not apply). */
static int write_common(test_rabbit_t *r) {
  char path[400], text[2048];
  snprintf(path, sizeof path, "%s/home", r->dir);
  if (mkdir(path, 0700) != 0) return -1;
  /* A cookie unique to this cluster: nothing else can talk to its nodes. */
  unsigned seed = (unsigned)test_now_ms() ^ (unsigned)getpid() << 8;
  char cookie[33];
  for (int i = 0; i < 32; i++)
    cookie[i] = (char)('A' + rand_r(&seed) % 26);
  cookie[32] = '\0';
  snprintf(path, sizeof path, "%s/home/.erlang.cookie", r->dir);
  if (write_file(path, cookie, 0400) != 0) return -1;
  snprintf(path, sizeof path, "%s/enabled_plugins", r->dir);
  if (write_file(path, "[rabbitmq_mqtt].\n", 0600) != 0) return -1;
  snprintf(path, sizeof path, "%s/rabbitmq-env.conf", r->dir);
  if (write_file(path, "", 0600) != 0) return -1;
  /* Mirrored on every node and synchronised automatically: a QoS 1
   * subscription queue and its messages survive the loss of any node but
   * one. When the leader dies, only a mirror that has every message may
   * take over (the default, "always", would promote one still syncing and
   * drop what it lacks); without one the queue waits for a node that has
   * them. The MQTT plugin of 3.10 declares classic queues only (no
   * mqtt.durable_queue_type), so quorum queues are not an option. */
  snprintf(text, sizeof text,
           "{\"vhosts\":[{\"name\":\"/\"}],"
           "\"users\":[{\"name\":\"" USER "\",\"password_hash\":\"" USER_HASH "\","
           "\"hashing_algorithm\":\"rabbit_password_hashing_sha256\",\"tags\":[]}],"
           "\"permissions\":[{\"user\":\"" USER "\",\"vhost\":\"/\",\"configure\":\".*\","
           "\"write\":\".*\",\"read\":\".*\"}],"
           "\"policies\":[{\"vhost\":\"/\",\"name\":\"mqtt-mirrored\","
           "\"pattern\":\"^mqtt-subscription-\",\"apply-to\":\"queues\",\"priority\":0,"
           "\"definition\":{\"ha-mode\":\"all\",\"ha-sync-mode\":\"automatic\","
           "\"ha-promote-on-failure\":\"when-synced\"}}]}\n");
  snprintf(path, sizeof path, "%s/definitions.json", r->dir);
  return write_file(path, text, 0600);
}

static int write_config(test_rabbit_t *r, int i) {
  char path[400], text[2048];
  test_rabbit_node_t *n = &r->nodes[i];
  snprintf(text, sizeof text,
           "listeners.tcp.default = 127.0.0.1:%d\n"
           "mqtt.listeners.tcp.default = 127.0.0.1:%d\n"
           "mqtt.allow_anonymous = true\n"
           "mqtt.default_user = " USER "\n"
           "mqtt.default_pass = " USER "\n"
           /* A blank node joins r1; r1 itself, listing only itself,
            * starts a new cluster at once. */
           "cluster_formation.peer_discovery_backend = classic_config\n"
           "cluster_formation.classic_config.nodes.1 = r1@localhost\n"
           "load_definitions = %s/definitions.json\n"
           "log.console = false\n"
           "log.file.level = info\n"
           /* A full /tmp must not turn into a publisher-blocking alarm
            * in the middle of a test. */
           "disk_free_limit.absolute = 10MB\n",
           n->amqp_port, n->mqtt_port, r->dir);
  snprintf(path, sizeof path, "%s/r%d.conf", r->dir, i + 1);
  return write_file(path, text, 0600);
}

static pid_t spawn(char *const argv[], const char *dir, const char *out, char *const env[]) {
  pid_t pid = test_fork_server();
  if (pid != 0) return pid;
  test_child_stdio(out, 0, NULL);
  if (chdir(dir) != 0) _exit(126);
  for (int i = 0; env[i] != NULL; i += 2)
    setenv(env[i], env[i + 1], 1);
  execvp(argv[0], argv);
  _exit(127);
}

static void stop_pid(pid_t *pid) {
  if (*pid <= 0) return;
  kill(*pid, SIGKILL);
  waitpid(*pid, NULL, 0);
  test_untrack_pid(*pid);
  *pid = 0;
}

/* 1 once the process is gone (reaped here). */
static int exited(pid_t *pid) {
  int status;
  if (*pid > 0 && waitpid(*pid, &status, WNOHANG) == *pid) {
    test_untrack_pid(*pid);
    *pid = 0;
    return 1;
  }
  return *pid <= 0;
}

static int start_epmd(test_rabbit_t *r) {
  char port[16], out[300];
  snprintf(port, sizeof port, "%d", r->epmd_port);
  snprintf(out, sizeof out, "%s/epmd.log", r->dir);
  char *argv[] = {"epmd", "-port", port, NULL};
  char *env[] = {"ERL_EPMD_ADDRESS", "127.0.0.1", NULL};
  r->epmd_pid = spawn(argv, r->dir, out, env);
  if (r->epmd_pid < 0) {
    r->epmd_pid = 0;
    return -1;
  }
  long long deadline = test_now_ms() + EPMD_MS;
  while (test_now_ms() < deadline) {
    if (test_port_accepts(r->epmd_port)) return 0;
    if (exited(&r->epmd_pid)) break;
    test_sleep_ms(POLL_MS);
  }
  fprintf(stderr, "rabbit: epmd did not accept on port %d\n", r->epmd_port);
  return -1;
}

int test_rabbit_spawn(test_rabbit_t *r, int i) {
  test_rabbit_node_t *n = &r->nodes[i];
  if (n->pid > 0) return 0;
  const char *server = test_rabbit_server();
  if (server == NULL) return -1;
  char name[32], home[300], conf[300], plugins[300], mnesia[300], logs[300], expand[300],
      envconf[300], advanced[300], out[300], epmd[16], amqp[16], dist[16];
  snprintf(name, sizeof name, "r%d@localhost", i + 1);
  snprintf(home, sizeof home, "%s/home", r->dir);
  snprintf(conf, sizeof conf, "%s/r%d.conf", r->dir, i + 1);
  snprintf(plugins, sizeof plugins, "%s/enabled_plugins", r->dir);
  snprintf(mnesia, sizeof mnesia, "%s/mnesia", r->dir);
  snprintf(logs, sizeof logs, "%s/log", r->dir);
  snprintf(expand, sizeof expand, "%s/plugins-r%d", r->dir, i + 1);
  snprintf(envconf, sizeof envconf, "%s/rabbitmq-env.conf", r->dir);
  /* Never written: a machine's /etc/rabbitmq/advanced.config must not
   * apply either. */
  snprintf(advanced, sizeof advanced, "%s/advanced.config", r->dir);
  snprintf(out, sizeof out, "%s/r%d.out", r->dir, i + 1);
  snprintf(epmd, sizeof epmd, "%d", r->epmd_port);
  snprintf(amqp, sizeof amqp, "%d", n->amqp_port);
  snprintf(dist, sizeof dist, "%d", n->dist_port);
  char *env[] = {"HOME", home, "ERL_EPMD_PORT", epmd, "RABBITMQ_NODENAME", name,
                 "RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1", "RABBITMQ_NODE_PORT", amqp,
                 "RABBITMQ_DIST_PORT", dist, "RABBITMQ_CONFIG_FILE", conf,
                 "RABBITMQ_ENABLED_PLUGINS_FILE", plugins, "RABBITMQ_MNESIA_BASE", mnesia,
                 "RABBITMQ_LOG_BASE", logs, "RABBITMQ_PLUGINS_EXPAND_DIR", expand,
                 "RABBITMQ_CONF_ENV_FILE", envconf, "RABBITMQ_ADVANCED_CONFIG_FILE", advanced,
                 /* The start script then execs erl (instead of running it in
                  * the background behind a shell), so this child becomes
                  * beam.smp; -noinput keeps the VM off its stdin. */
                 "RABBITMQ_ALLOW_INPUT", "1", "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                 "-noinput -start_epmd false -kernel inet_dist_use_interface {127,0,0,1}",
                 "ERL_CRASH_DUMP", "/dev/null", NULL};
  char *argv[] = {(char *)server, NULL};
  n->pid = spawn(argv, r->dir, out, env);
  if (n->pid < 0) {
    n->pid = 0;
    return -1;
  }
  n->spawned_ms = test_now_ms();
  return 0;
}

int test_rabbit_ready(test_rabbit_t *r, int i) {
  test_rabbit_node_t *n = &r->nodes[i];
  if (n->pid <= 0 || exited(&n->pid)) return 0;
  /* The MQTT listener opens last, once the node has joined the cluster
   * and its plugins have started. */
  if (!test_port_accepts(n->mqtt_port)) return 0;
  r->boot_ms[i] = test_now_ms() - n->spawned_ms;
  return 1;
}

void test_rabbit_print_log(test_rabbit_t *r, int i, int lines) {
  char path[400];
  snprintf(path, sizeof path, "%s/log/r%d@localhost.log", r->dir, i + 1);
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    snprintf(path, sizeof path, "%s/r%d.out", r->dir, i + 1);
    f = fopen(path, "r");
  }
  if (f == NULL) return;
  /* The last `lines` lines: remember where each line started. */
  long *starts = calloc((size_t)lines, sizeof *starts);
  if (starts == NULL) {
    fclose(f);
    return;
  }
  char line[600];
  long count = 0;
  for (long pos = ftell(f); fgets(line, sizeof line, f) != NULL; pos = ftell(f))
    starts[count++ % lines] = pos;
  long first = count > lines ? count - lines : 0;
  fseek(f, starts[first % lines], SEEK_SET);
  fprintf(stderr, "rabbit: %s, last %ld lines:\n", path, count - first);
  for (long k = first; k < count && fgets(line, sizeof line, f) != NULL; k++)
    fprintf(stderr, "  %s", line);
  free(starts);
  fclose(f);
}

int test_rabbit_wait(test_rabbit_t *r, int i, long long timeout_ms) {
  long long deadline = test_now_ms() + timeout_ms;
  while (test_now_ms() < deadline) {
    if (test_rabbit_ready(r, i)) return 0;
    if (r->nodes[i].pid <= 0) break;
    test_sleep_ms(POLL_MS);
  }
  fprintf(stderr, "rabbit: node %d (MQTT port %d) %s within %lld ms\n", i + 1,
          r->nodes[i].mqtt_port, r->nodes[i].pid > 0 ? "did not accept" : "exited", timeout_ms);
  test_rabbit_print_log(r, i, 30);
  return -1;
}

/* 1 when nothing holds `port` on any address: a listening socket bound
 * to 0.0.0.0 (what RabbitMQ's check of its distribution port does) gets
 * it, without SO_REUSEADDR so that any user of the port, a connection's
 * local end included, is seen. */
static int port_free_everywhere(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  sa.sin_port = htons((uint16_t)port);
  int ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(fd, 1) == 0;
  close(fd);
  return ok;
}

/* A free port that differs from the `n` already taken, below the kernel's
 * ephemeral range. The nodes bind their ports seconds after they were
 * chosen, and again at every restart; a port from the ephemeral range may
 * by then be the local end of an outgoing connection (this test's
 * clients, or anything else on the machine), and RabbitMQ refuses to boot
 * on a distribution port in use ("dist_port_already_used ... not_erlang":
 * twice in a row here, on a busy machine, with ports from that range). No
 * connection takes a port below the range unless it asks for it. */
static int distinct_port(const int *taken, int n, unsigned *seed) {
  int low = 32768, high = 60999;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (f != NULL) {
    if (fscanf(f, "%d %d", &low, &high) != 2) low = 32768;
    fclose(f);
  }
  for (int tries = 0; tries < 200; tries++) {
    int p = low > 11024 ? 10000 + (int)(rand_r(seed) % (unsigned)(low - 11024)) : test_free_port();
    int dup = 0;
    for (int k = 0; k < n; k++)
      dup |= taken[k] == p;
    if (p > 0 && !dup && port_free_everywhere(p)) return p;
  }
  return -1;
}

int test_rabbit_start(test_rabbit_t *r, int count) {
  memset(r, 0, sizeof(*r));
  if (count < 1 || count > TEST_RABBIT_MAX) return -1;
  if (test_rabbit_server() == NULL) return -1;
  snprintf(r->dir, sizeof(r->dir), "/tmp/uvmqtt-rabbit-XXXXXX");
  if (mkdtemp(r->dir) == NULL) {
    fprintf(stderr, "rabbit: mkdtemp: %s\n", strerror(errno));
    r->dir[0] = '\0';
    return -1;
  }
  r->count = count;
  int taken[1 + 3 * TEST_RABBIT_MAX], n = 0;
  unsigned seed = (unsigned)test_now_ms() * 2654435761u ^ (unsigned)getpid();
  for (int k = 0; k < 1 + 3 * count; k++, n++)
    taken[n] = distinct_port(taken, n, &seed);
  r->epmd_port = taken[0];
  for (int i = 0; i < count; i++) {
    r->nodes[i].mqtt_port = taken[1 + 3 * i];
    r->nodes[i].amqp_port = taken[2 + 3 * i];
    r->nodes[i].dist_port = taken[3 + 3 * i];
    snprintf(r->uris[i], sizeof(r->uris[i]), "mqtt://127.0.0.1:%d", r->nodes[i].mqtt_port);
  }
  for (int k = 0; k < n; k++)
    if (taken[k] <= 0) goto fail;
  if (write_common(r) != 0) {
    fprintf(stderr, "rabbit: cannot write the files in %s: %s\n", r->dir, strerror(errno));
    goto fail;
  }
  for (int i = 0; i < count; i++)
    if (write_config(r, i) != 0) goto fail;
  if (start_epmd(r) != 0) goto fail;
  long long deadline = test_now_ms() + START_MS;
  /* Node 1 first: a blank node joins the first node of its list that
   * runs, and node 1 must be that node. Then the others together. */
  if (test_rabbit_spawn(r, 0) != 0 || test_rabbit_wait(r, 0, deadline - test_now_ms()) != 0)
    goto fail;
  for (int i = 1; i < count; i++)
    if (test_rabbit_spawn(r, i) != 0) goto fail;
  for (int i = 1; i < count; i++)
    if (test_rabbit_wait(r, i, deadline - test_now_ms()) != 0) goto fail;
  return 0;
fail:
  fprintf(stderr, "rabbit: the cluster did not start (bound %d s)\n", START_MS / 1000);
  test_rabbit_cleanup(r);
  return -1;
}

int test_rabbit_kill(test_rabbit_t *r, int i) {
  pid_t pid = r->nodes[i].pid;
  if (pid <= 0) return -1;
  /* Say what is killed: the VM itself, not a start script around it. */
  char path[64], comm[32] = "";
  snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
  FILE *f = fopen(path, "r");
  if (f != NULL) {
    if (fgets(comm, sizeof comm, f) == NULL) comm[0] = '\0';
    fclose(f);
  }
  comm[strcspn(comm, "\n")] = '\0';
  stop_pid(&r->nodes[i].pid);
  return strcmp(comm, "beam.smp") == 0 ? 0 : -1;
}

void test_rabbit_cleanup(test_rabbit_t *r) {
  for (int i = 0; i < TEST_RABBIT_MAX; i++)
    stop_pid(&r->nodes[i].pid);
  stop_pid(&r->epmd_pid);
  if (r->dir[0] != '\0' && getenv("UVMQTT_KEEP_CLUSTER_LOGS") == NULL) test_remove_tree(r->dir);
  r->dir[0] = '\0';
}
