#include "node_server.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"

const char *test_npm_modules(void) {
  static char path[PATH_MAX];
  const char *cache = getenv("UVMQTT_NPM_CACHE");
  if (cache != NULL && cache[0] != '\0') {
    snprintf(path, sizeof path, "%s/node_modules", cache);
  } else {
    const char *home = getenv("HOME");
    snprintf(path, sizeof path, "%s/.cache/uvmqtt-npm/node_modules", home ? home : "/root");
  }
  return path;
}

static int has_package(const char *name) {
  char p[PATH_MAX + 64];
  struct stat st;
  snprintf(p, sizeof p, "%s/%s/package.json", test_npm_modules(), name);
  return stat(p, &st) == 0;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int test_node_start(test_node_t *n, const char *script, const char *const *args, int needs_npm) {
  memset(n, 0, sizeof *n);
  n->out = -1;
  if (needs_npm && (!has_package("ws") || !has_package("aedes"))) {
    fprintf(stderr,
            "node: the npm packages ws and aedes are missing in %s: run tools/install-deps "
            "(or set UVMQTT_NPM_CACHE)\n",
            test_npm_modules());
    return -1;
  }
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/test/support/%s", test_source_root(), script);
  const char *argv[16] = {"node", path};
  int argc = 2;
  for (int i = 0; args != NULL && args[i] != NULL && argc < 15; i++)
    argv[argc++] = args[i];
  argv[argc] = NULL;
  int fds[2];
  if (pipe(fds) != 0) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "node: fork: %s\n", strerror(errno));
    close(fds[0]);
    close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    /* A test process that dies on a failed assertion takes its server
     * along. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    setenv("NODE_PATH", test_npm_modules(), 1);
    execvp("node", (char *const *)argv);
    fprintf(stderr, "node: exec: %s\n", strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  n->pid = pid;
  n->out = fds[0];
  char line[128];
  size_t len = 0;
  uint64_t deadline = now_ms() + 15000;
  while (len < sizeof line - 1) {
    uint64_t now = now_ms();
    if (now >= deadline) break;
    struct pollfd pfd = {n->out, POLLIN, 0};
    if (poll(&pfd, 1, (int)(deadline - now)) <= 0) break;
    ssize_t r = read(n->out, line + len, 1);
    if (r <= 0) break;
    if (line[len] == '\n') {
      line[len] = '\0';
      if (sscanf(line, "listening %d", &n->port) == 1 && n->port > 0) return 0;
      len = 0;
      continue;
    }
    len++;
  }
  fprintf(stderr, "node: %s did not report its port\n", script);
  test_node_stop(n);
  return -1;
}

int test_node_stop(test_node_t *n) {
  int result = -1;
  if (n->pid > 0) {
    kill(n->pid, SIGTERM);
    int status = 0;
    uint64_t deadline = now_ms() + 5000;
    pid_t r;
    while ((r = waitpid(n->pid, &status, WNOHANG)) == 0 && now_ms() < deadline)
      usleep(10000);
    if (r == 0) {
      kill(n->pid, SIGKILL);
      r = waitpid(n->pid, &status, 0);
    }
    if (r == n->pid && WIFEXITED(status)) result = WEXITSTATUS(status);
    n->pid = 0;
  }
  if (n->out >= 0) close(n->out);
  n->out = -1;
  return result;
}
