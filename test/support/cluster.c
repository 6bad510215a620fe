/* A real multi-node broker cluster on loopback: Redis plus aedes nodes. */
#include "cluster.h"

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

#define READY_MS 15000
#define POLL_MS  20

const char *test_cluster_modules(void) {
  static char path[512];
  const char *cache = getenv("UVMQTT_NPM_CACHE");
  const char *home = getenv("HOME");
  if (cache != NULL && cache[0] != '\0')
    snprintf(path, sizeof(path), "%s/node_modules", cache);
  else
    snprintf(path, sizeof(path), "%s/.cache/uvmqtt-npm/node_modules", home ? home : "");
  static const char *const needed[] = {"aedes", "aedes-persistence-redis", "mqemitter-redis"};
  for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
    char pkg[700];
    struct stat st;
    snprintf(pkg, sizeof(pkg), "%s/%s/package.json", path, needed[i]);
    if (stat(pkg, &st) != 0) {
      fprintf(stderr, "cluster: %s is missing (%s); run tools/install-deps\n", needed[i], pkg);
      return NULL;
    }
  }
  return path;
}

/* Starts argv[0] with stdout to `out` (truncated: the readiness line of
 * this run only) and stderr appended to `err`. */
static pid_t spawn(char *const argv[], const char *fallback, const char *out, const char *err,
                   const char *node_path) {
  pid_t pid = test_fork_server();
  if (pid != 0) return pid;
  test_child_stdio(out, 1, err);
  if (node_path) setenv("NODE_PATH", node_path, 1);
  execvp(argv[0], argv);
  if (fallback) execv(fallback, argv);
  _exit(127);
}

static void print_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  char line[512];
  for (int i = 0; i < 40 && fgets(line, sizeof(line), f) != NULL; i++)
    fprintf(stderr, "  %s", line);
  fclose(f);
}

static void stop_proc(test_cluster_proc_t *p) {
  if (p->pid <= 0) return;
  kill(p->pid, SIGKILL);
  waitpid(p->pid, NULL, 0);
  test_untrack_pid(p->pid);
  p->pid = 0;
}

/* 1 once the process is gone (reaped here). */
static int exited(test_cluster_proc_t *p) {
  int status;
  if (p->pid > 0 && waitpid(p->pid, &status, WNOHANG) == p->pid) {
    test_untrack_pid(p->pid);
    p->pid = 0;
    return 1;
  }
  return p->pid <= 0;
}

int test_cluster_spawn(test_cluster_t *cl, int i) {
  test_cluster_proc_t *n = &cl->nodes[i];
  if (n->pid > 0) return 0;
  char script[600], port[16], redis_port[16], id[32], out[300], err[300];
  snprintf(script, sizeof(script), "%s/test/support/cluster_node.js", test_source_root());
  snprintf(port, sizeof(port), "%d", n->port);
  snprintf(redis_port, sizeof(redis_port), "%d", cl->redis.port);
  snprintf(id, sizeof(id), "node%d", i + 1);
  snprintf(out, sizeof(out), "%s/node%d.out", cl->dir, i + 1);
  snprintf(err, sizeof(err), "%s/node%d.log", cl->dir, i + 1);
  char *argv[] = {"node", script, port, redis_port, id, NULL};
  n->pid = spawn(argv, "/usr/bin/node", out, err, cl->node_path);
  if (n->pid < 0) {
    n->pid = 0;
    return -1;
  }
  return 0;
}

int test_cluster_ready(test_cluster_t *cl, int i) {
  test_cluster_proc_t *n = &cl->nodes[i];
  if (n->pid <= 0) return 0;
  char out[300], want[32], line[128];
  snprintf(out, sizeof(out), "%s/node%d.out", cl->dir, i + 1);
  snprintf(want, sizeof(want), "listening %d", n->port);
  FILE *f = fopen(out, "r");
  int seen = 0;
  if (f != NULL) {
    while (!seen && fgets(line, sizeof(line), f) != NULL)
      seen = strncmp(line, want, strlen(want)) == 0;
    fclose(f);
  }
  return seen && test_port_accepts(n->port);
}

/* Waits until node i is ready; -1 (with its log) if it exits or time runs
 * out. */
static int wait_node(test_cluster_t *cl, int i, long long deadline) {
  while (test_now_ms() < deadline) {
    if (test_cluster_ready(cl, i)) return 0;
    if (exited(&cl->nodes[i])) break;
    test_sleep_ms(POLL_MS);
  }
  char err[300];
  snprintf(err, sizeof(err), "%s/node%d.log", cl->dir, i + 1);
  fprintf(stderr, "cluster: node %d (port %d) did not come up; log:\n", i + 1, cl->nodes[i].port);
  print_file(err);
  return -1;
}

static int start_redis(test_cluster_t *cl) {
  char conf[300], out[300], err[300];
  snprintf(conf, sizeof(conf), "%s/redis.conf", cl->dir);
  snprintf(out, sizeof(out), "%s/redis.out", cl->dir);
  snprintf(err, sizeof(err), "%s/redis.log", cl->dir);
  FILE *f = fopen(conf, "w");
  if (f == NULL) return -1;
  /* Loopback only, nothing written to disk: the cluster's state lives as
   * long as this Redis process. */
  fprintf(f, "port %d\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir %s\n", cl->redis.port,
          cl->dir);
  fprintf(f, "daemonize no\nlogfile \"\"\n");
  if (fclose(f) != 0) return -1;
  char *argv[] = {"redis-server", conf, NULL};
  cl->redis.pid = spawn(argv, "/usr/bin/redis-server", out, err, NULL);
  if (cl->redis.pid < 0) {
    cl->redis.pid = 0;
    return -1;
  }
  long long deadline = test_now_ms() + READY_MS;
  while (test_now_ms() < deadline) {
    if (test_port_accepts(cl->redis.port)) return 0;
    if (exited(&cl->redis)) break;
    test_sleep_ms(POLL_MS);
  }
  fprintf(stderr, "cluster: redis-server did not accept on port %d; log:\n", cl->redis.port);
  print_file(out);
  print_file(err);
  return -1;
}

int test_cluster_start(test_cluster_t *cl, int count) {
  memset(cl, 0, sizeof(*cl));
  if (count < 1 || count > TEST_CLUSTER_MAX) return -1;
  const char *modules = test_cluster_modules();
  if (modules == NULL) return -1;
  snprintf(cl->node_path, sizeof(cl->node_path), "%s", modules);
  snprintf(cl->dir, sizeof(cl->dir), "/tmp/uvmqtt-cluster-XXXXXX");
  if (mkdtemp(cl->dir) == NULL) {
    fprintf(stderr, "cluster: mkdtemp: %s\n", strerror(errno));
    cl->dir[0] = '\0';
    return -1;
  }
  cl->count = count;
  cl->redis.port = test_free_port();
  for (int i = 0; i < count; i++) {
    /* Free ports are found by binding and closing: ask until they differ. */
    do {
      cl->nodes[i].port = test_free_port();
    } while (cl->nodes[i].port == cl->redis.port ||
             (i > 0 && cl->nodes[i].port == cl->nodes[i - 1].port) ||
             (i > 1 && cl->nodes[i].port == cl->nodes[i - 2].port));
    snprintf(cl->uris[i], sizeof(cl->uris[i]), "mqtt://127.0.0.1:%d", cl->nodes[i].port);
  }
  if (start_redis(cl) != 0) goto fail;
  for (int i = 0; i < count; i++)
    if (test_cluster_spawn(cl, i) != 0) goto fail;
  long long deadline = test_now_ms() + READY_MS;
  for (int i = 0; i < count; i++) {
    if (wait_node(cl, i, deadline) == 0) continue;
    /* A node that died while starting (its Redis clients race each other
     * at start) gets one more chance; the cluster is what is under test,
     * not its start. */
    stop_proc(&cl->nodes[i]);
    if (test_cluster_spawn(cl, i) != 0 || wait_node(cl, i, test_now_ms() + READY_MS) != 0)
      goto fail;
  }
  return 0;
fail:
  test_cluster_cleanup(cl);
  return -1;
}

void test_cluster_kill(test_cluster_t *cl, int i) {
  stop_proc(&cl->nodes[i]);
}

int test_cluster_restart(test_cluster_t *cl, int i) {
  if (cl->nodes[i].pid > 0) return 0;
  for (int tries = 0; tries < 2; tries++) {
    if (test_cluster_spawn(cl, i) != 0) return -1;
    if (wait_node(cl, i, test_now_ms() + READY_MS) == 0) return 0;
    stop_proc(&cl->nodes[i]); /* died while starting: once more, as at start */
  }
  return -1;
}

void test_cluster_cleanup(test_cluster_t *cl) {
  for (int i = 0; i < TEST_CLUSTER_MAX; i++)
    stop_proc(&cl->nodes[i]);
  stop_proc(&cl->redis);
  if (cl->dir[0] != '\0' && getenv("UVMQTT_KEEP_CLUSTER_LOGS") == NULL) test_remove_tree(cl->dir);
  cl->dir[0] = '\0';
}
