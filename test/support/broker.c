/* Starts and stops a real Mosquitto for integration tests. */
#include "broker.h"

#include <check.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define BROKER_READY_MS 5000
#define BROKER_POLL_MS  20
#define BROKER_STOP_MS  5000

/* Brokers started by this process and not cleaned up yet. A failed
 * assertion ends the test process through exit(), which skips the test's
 * own cleanup: an exit handler stops these brokers and removes their
 * directories instead. A forked child inherits the table and the handler,
 * so each entry names the process that owns it. */
#define BROKER_TRACKED 16
static struct {
  pid_t owner;
  pid_t pid;
  char dir[sizeof(((test_broker_t *)0)->dir)];
} tracked[BROKER_TRACKED];
static int exit_handler_set;

static void cleanup_at_exit(void);

static void track(const test_broker_t *b) {
  int free_slot = -1;
  for (int i = 0; i < BROKER_TRACKED; i++) {
    if (tracked[i].dir[0] != '\0' && strcmp(tracked[i].dir, b->dir) == 0) {
      tracked[i].pid = b->pid;
      return;
    }
    if (tracked[i].dir[0] == '\0' && free_slot < 0) free_slot = i;
  }
  if (free_slot < 0) return;
  if (!exit_handler_set) exit_handler_set = atexit(cleanup_at_exit) == 0;
  tracked[free_slot].owner = getpid();
  tracked[free_slot].pid = b->pid;
  memcpy(tracked[free_slot].dir, b->dir, sizeof(tracked[free_slot].dir));
}

static void untrack(const test_broker_t *b) {
  for (int i = 0; i < BROKER_TRACKED; i++)
    if (tracked[i].dir[0] != '\0' && strcmp(tracked[i].dir, b->dir) == 0) tracked[i].dir[0] = '\0';
}

static void cleanup_at_exit(void) {
  for (int i = 0; i < BROKER_TRACKED; i++) {
    if (tracked[i].dir[0] == '\0' || tracked[i].owner != getpid()) continue;
    test_broker_t b;
    memset(&b, 0, sizeof(b));
    b.pid = tracked[i].pid;
    memcpy(b.dir, tracked[i].dir, sizeof(b.dir));
    test_broker_cleanup(&b);
  }
}

/* Other servers started by this process (test_track_pid) and not reaped
 * yet, for the same reason; killed by their own exit handler. */
#define PIDS_TRACKED 16
static struct {
  pid_t owner;
  pid_t pid;
} tracked_pids[PIDS_TRACKED];
static int pid_handler_set;

static void kill_tracked_pids(void) {
  for (int i = 0; i < PIDS_TRACKED; i++) {
    if (tracked_pids[i].pid <= 0 || tracked_pids[i].owner != getpid()) continue;
    kill(tracked_pids[i].pid, SIGKILL);
    waitpid(tracked_pids[i].pid, NULL, 0);
    tracked_pids[i].pid = 0;
  }
}

void test_track_pid(pid_t pid) {
  if (!pid_handler_set) pid_handler_set = atexit(kill_tracked_pids) == 0;
  for (int i = 0; i < PIDS_TRACKED; i++) {
    if (tracked_pids[i].pid <= 0 || tracked_pids[i].owner != getpid()) {
      tracked_pids[i].owner = getpid();
      tracked_pids[i].pid = pid;
      return;
    }
  }
}

void test_untrack_pid(pid_t pid) {
  for (int i = 0; i < PIDS_TRACKED; i++)
    if (tracked_pids[i].pid == pid && tracked_pids[i].owner == getpid()) tracked_pids[i].pid = 0;
}

pid_t test_fork_server(void) {
  /* Buffered output would be written again by the child. */
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid > 0) test_track_pid(pid);
#ifdef __linux__
  /* A test that crashes must not leave its servers running. */
  if (pid == 0) prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  return pid;
}

void test_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

long long test_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int test_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  int port = -1;
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
      getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
    port = ntohs(sa.sin_port);
  close(fd);
  return port;
}

int test_port_accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons((uint16_t)port);
  int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
  close(fd);
  return ok;
}

static void path_in(const test_broker_t *b, const char *name, char *out, size_t cap) {
  snprintf(out, cap, "%s/%s", b->dir, name);
}

static int write_config(const test_broker_t *b) {
  char conf[512], log[512];
  path_in(b, "mosquitto.conf", conf, sizeof(conf));
  path_in(b, "mosquitto.log", log, sizeof(log));
  FILE *f = fopen(conf, "w");
  if (f == NULL) {
    fprintf(stderr, "broker: cannot write %s: %s\n", conf, strerror(errno));
    return -1;
  }
  fprintf(f, "listener %d 127.0.0.1\n", b->port);
  fprintf(f, "allow_anonymous true\n");
  fprintf(f, "log_dest file %s\n", log);
  /* Started as root, Mosquitto 2 switches to the user "mosquitto", which may
   * not write this directory; as any other user the line has no effect. */
  fprintf(f, "user root\n");
  if (strstr(b->extra, "persistence true") != NULL)
    fprintf(f, "persistence_location %s/\n", b->dir);
  fprintf(f, "%s\n", b->extra);
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) {
    fprintf(stderr, "broker: cannot write %s\n", conf);
    return -1;
  }
  return 0;
}

static pid_t spawn(const test_broker_t *b) {
  char conf[512], log[512];
  path_in(b, "mosquitto.conf", conf, sizeof(conf));
  path_in(b, "mosquitto.log", log, sizeof(log));
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid != 0) return pid;
#ifdef __linux__
  /* A test that crashes must not leave its broker running. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
#endif
  test_child_stdio(log, 0, NULL);
  char *argv[] = {"mosquitto", "-c", conf, NULL};
  execvp(argv[0], argv);
  /* /usr/sbin is often missing from PATH for users other than root. */
  execv("/usr/sbin/mosquitto", argv);
  _exit(127);
}

static void print_log(const test_broker_t *b) {
  char log[512], line[512];
  path_in(b, "mosquitto.log", log, sizeof(log));
  FILE *f = fopen(log, "r");
  if (f == NULL) return;
  for (int i = 0; i < 50 && fgets(line, sizeof(line), f) != NULL; i++)
    fprintf(stderr, "  %s", line);
  fclose(f);
}

/* Starts mosquitto and waits until the port accepts. A broker that exits
 * early (the port still held by the previous one) is started again while
 * time remains. */
static int launch(test_broker_t *b) {
  long long deadline = test_now_ms() + BROKER_READY_MS;
  b->pid = spawn(b);
  if (b->pid < 0) {
    fprintf(stderr, "broker: fork: %s\n", strerror(errno));
    b->pid = 0;
    return -1;
  }
  track(b);
  while (test_now_ms() < deadline) {
    if (test_port_accepts(b->port)) return 0;
    int status;
    if (waitpid(b->pid, &status, WNOHANG) == b->pid) {
      b->pid = 0;
      if (WIFEXITED(status) && WEXITSTATUS(status) == 127) break;
      test_sleep_ms(BROKER_POLL_MS * 5);
      b->pid = spawn(b);
      if (b->pid < 0) {
        b->pid = 0;
        break;
      }
      track(b);
      continue;
    }
    test_sleep_ms(BROKER_POLL_MS);
  }
  fprintf(stderr, "broker: mosquitto did not accept on port %d; log:\n", b->port);
  print_log(b);
  test_broker_stop(b);
  return -1;
}

int test_broker_start(test_broker_t *b, const char *extra) {
  memset(b, 0, sizeof(*b));
  if (extra != NULL && strlen(extra) >= sizeof(b->extra)) {
    fprintf(stderr, "broker: extra config too long\n");
    return -1;
  }
  snprintf(b->extra, sizeof(b->extra), "%s", extra != NULL ? extra : "");
  snprintf(b->dir, sizeof(b->dir), "/tmp/uvmqtt-broker-XXXXXX");
  if (mkdtemp(b->dir) == NULL) {
    fprintf(stderr, "broker: mkdtemp: %s\n", strerror(errno));
    b->dir[0] = '\0';
    return -1;
  }
  track(b);
  b->port = test_free_port();
  if (b->port <= 0) {
    fprintf(stderr, "broker: no free port\n");
    return -1;
  }
  if (write_config(b) != 0) return -1;
  return launch(b);
}

int test_broker_stop(test_broker_t *b) {
  if (b->pid <= 0) return 0;
  pid_t pid = b->pid;
  b->pid = 0;
  track(b);
  kill(pid, SIGTERM);
  long long deadline = test_now_ms() + BROKER_STOP_MS;
  int status;
  while (test_now_ms() < deadline) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return 0;
    if (r < 0) return -1;
    test_sleep_ms(10);
  }
  fprintf(stderr, "broker: mosquitto ignored SIGTERM for %d ms, killing it\n", BROKER_STOP_MS);
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

int test_broker_restart(test_broker_t *b) {
  if (b->dir[0] == '\0' || b->port <= 0) return -1;
  test_broker_stop(b);
  return launch(b);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

void test_remove_tree(const char *dir) {
  nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

void test_broker_cleanup(test_broker_t *b) {
  test_broker_stop(b);
  if (b->dir[0] != '\0') {
    test_remove_tree(b->dir);
    untrack(b);
  }
  b->dir[0] = '\0';
}

int test_run(const char *cmdline, int timeout_s) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    /* Its own process group, so a timeout ends the shell's children too. */
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", cmdline, (char *)NULL);
    _exit(127);
  }
  setpgid(pid, pid);
  long long deadline = test_now_ms() + (long long)timeout_s * 1000;
  int status;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) return -1;
    if (test_now_ms() >= deadline) {
      fprintf(stderr, "test_run: timed out after %d s: %s\n", timeout_s, cmdline);
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    test_sleep_ms(10);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

const char *test_build_root(void) {
  const char *s = getenv("UVMQTT_BUILD_ROOT");
  return s != NULL && s[0] != '\0' ? s : ".";
}

const char *test_source_root(void) {
  const char *s = getenv("UVMQTT_SOURCE_ROOT");
  return s != NULL && s[0] != '\0' ? s : "..";
}

int test_raise_fd_limit(unsigned long want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want) return 0;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) return -1;
  rl.rlim_cur = want;
  return setrlimit(RLIMIT_NOFILE, &rl);
}

static void watchdog_fired(uv_timer_t *timer) {
  test_broker_t *broker = timer->data;
  if (broker != NULL) test_broker_cleanup(broker);
  ck_abort_msg("the scenario did not finish in time");
}

void test_loop_start(uv_loop_t *loop, uv_timer_t *watchdog, uint64_t timeout_ms,
                     test_broker_t *broker) {
  ck_assert_int_eq(uv_loop_init(loop), 0);
  ck_assert_int_eq(uv_timer_init(loop, watchdog), 0);
  watchdog->data = broker;
  ck_assert_int_eq(uv_timer_start(watchdog, watchdog_fired, timeout_ms, 0), 0);
  uv_unref((uv_handle_t *)watchdog);
}

void test_loop_finish(uv_loop_t *loop, uv_timer_t *watchdog) {
  uv_close((uv_handle_t *)watchdog, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

void test_child_stdio(const char *out, int truncate_out, const char *err) {
  int fd = open(out, O_WRONLY | O_CREAT | (truncate_out ? O_TRUNC : O_APPEND), 0644);
  if (fd >= 0) {
    dup2(fd, STDOUT_FILENO);
    if (err == NULL) dup2(fd, STDERR_FILENO);
    close(fd);
  }
  if (err != NULL) {
    fd = open(err, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
  }
  int null_fd = open("/dev/null", O_RDONLY);
  if (null_fd >= 0) {
    dup2(null_fd, STDIN_FILENO);
    close(null_fd);
  }
  long max_fd = sysconf(_SC_OPEN_MAX);
  for (int i = STDERR_FILENO + 1; i < (max_fd > 0 && max_fd < 65536 ? max_fd : 1024); i++)
    close(i);
}
