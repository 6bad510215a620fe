/* The gateway demo's Mosquitto, run as a child process on the loop. */
#include "broker_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define START_MS 5000
#define STOP_MS  5000
#define POLL_MS  50

enum { PHASE_IDLE = 0, PHASE_STARTING, PHASE_STOPPING };

/* Mosquitto lives in /usr/sbin, which is often not in an ordinary user's
 * PATH. */
static int find_exe(char *out, size_t cap) {
  const char *path = getenv("PATH");
  char dirs[4096];
  snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/usr/local/sbin", path ? path : "");
  for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    snprintf(out, cap, "%s/mosquitto", d);
    if (access(out, X_OK) == 0) return 0;
  }
  return -1;
}

static int free_port(uv_loop_t *loop) {
  uv_tcp_t tcp;
  struct sockaddr_in sa;
  int port = -1, len = sizeof sa;
  uv_tcp_init(loop, &tcp);
  uv_ip4_addr("127.0.0.1", 0, &sa);
  if (uv_tcp_bind(&tcp, (const struct sockaddr *)&sa, 0) == 0 &&
      uv_tcp_getsockname(&tcp, (struct sockaddr *)&sa, &len) == 0)
    port = ntohs(sa.sin_port);
  uv_close((uv_handle_t *)&tcp, NULL);
  /* Run the close now so the port is free before mosquitto binds it. */
  uv_run(loop, UV_RUN_NOWAIT);
  return port;
}

static int write_config(const broker_proc_t *b) {
  char conf[320];
  snprintf(conf, sizeof conf, "%s/mosquitto.conf", b->dir);
  FILE *f = fopen(conf, "w");
  if (f == NULL) return -1;
  fprintf(f, "listener %d 127.0.0.1\n", b->port);
  fprintf(f, "allow_anonymous true\n");
  /* Persistence keeps sessions and queued QoS 1 messages across the
   * restart the demo inflicts. */
  fprintf(f, "persistence true\n");
  fprintf(f, "persistence_location %s/\n", b->dir);
  fprintf(f, "log_dest file %s/mosquitto.log\n", b->dir);
  /* The subscriber may be offline while hundreds of devices publish. */
  fprintf(f, "max_queued_messages 100000\n");
  /* Started as root, Mosquitto 2 switches to the user "mosquitto", which
   * could not write this directory. */
  if (geteuid() == 0) fprintf(f, "user root\n");
  int bad = ferror(f);
  return fclose(f) != 0 || bad ? -1 : 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void remove_dir(broker_proc_t *b) {
  if (b->dir[0] != '\0') nftw(b->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
  b->dir[0] = '\0';
}

int broker_proc_init(broker_proc_t *b, uv_loop_t *loop) {
  void *data = b->data;
  memset(b, 0, sizeof *b);
  b->data = data;
  b->loop = loop;
  if (find_exe(b->exe, sizeof b->exe) != 0) {
    fprintf(stderr, "mosquitto not found (install the mosquitto package)\n");
    return -1;
  }
  const char *tmp = getenv("TMPDIR");
  snprintf(b->dir, sizeof b->dir, "%s/uvmqtt-gateway-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (mkdtemp(b->dir) == NULL) {
    fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
    b->dir[0] = '\0';
    return -1;
  }
  b->port = free_port(loop);
  if (b->port <= 0 || write_config(b) != 0) {
    fprintf(stderr, "cannot write the broker's config in %s\n", b->dir);
    remove_dir(b);
    return -1;
  }
  uv_timer_init(loop, &b->timer);
  b->timer.data = b;
  return 0;
}

static void finish(broker_proc_t *b, int status) {
  broker_proc_cb cb = b->cb;
  b->cb = NULL;
  b->phase = PHASE_IDLE;
  uv_timer_stop(&b->timer);
  if (cb) cb(b, status);
}

static void on_proc_closed(uv_handle_t *h) {
  broker_proc_t *b = h->data;
  b->running = 0;
  /* Stopping, or exiting while starting: either way this phase is over. */
  if (b->phase == PHASE_STOPPING)
    finish(b, 0);
  else if (b->phase == PHASE_STARTING)
    finish(b, UV_ESRCH);
}

static void on_exit_cb(uv_process_t *proc, int64_t status, int signum) {
  (void)status;
  (void)signum;
  uv_close((uv_handle_t *)proc, on_proc_closed);
}

static void on_probe_closed(uv_handle_t *h) {
  broker_proc_t *b = h->data;
  b->probe_open = 0;
}

static void on_probe(uv_connect_t *req, int status) {
  broker_proc_t *b = req->data;
  uv_close((uv_handle_t *)&b->probe, on_probe_closed);
  if (b->phase != PHASE_STARTING) return;
  if (status == 0 && b->running) finish(b, 0);
}

static void on_timer(uv_timer_t *t) {
  broker_proc_t *b = t->data;
  uint64_t now = uv_now(b->loop);
  if (b->phase == PHASE_STOPPING) {
    if (b->running) uv_process_kill(&b->proc, SIGKILL);
    return;
  }
  if (b->phase != PHASE_STARTING) return;
  if (now >= b->deadline) {
    fprintf(stderr, "mosquitto did not accept on port %d within %d ms\n", b->port, START_MS);
    finish(b, UV_ETIMEDOUT);
    return;
  }
  if (!b->probe_open) {
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", b->port, &sa);
    uv_tcp_init(b->loop, &b->probe);
    b->probe.data = b;
    b->probe_req.data = b;
    b->probe_open = 1;
    if (uv_tcp_connect(&b->probe_req, &b->probe, (const struct sockaddr *)&sa, on_probe) != 0)
      uv_close((uv_handle_t *)&b->probe, on_probe_closed);
  }
  uv_timer_start(&b->timer, on_timer, POLL_MS, 0);
}

int broker_proc_start(broker_proc_t *b, broker_proc_cb cb) {
  if (b->running || b->phase != PHASE_IDLE) return UV_EBUSY;
  char conf[320], log[320];
  snprintf(conf, sizeof conf, "%s/mosquitto.conf", b->dir);
  snprintf(log, sizeof log, "%s/mosquitto.log", b->dir);
  int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return uv_translate_sys_error(errno);
  char *args[] = {b->exe, "-c", conf, NULL};
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = fd;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = fd;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.file = b->exe;
  o.args = args;
  o.exit_cb = on_exit_cb;
  o.stdio = stdio;
  o.stdio_count = 3;
  b->proc.data = b;
  int r = uv_spawn(b->loop, &b->proc, &o);
  close(fd);
  if (r != 0) {
    /* libuv needs the handle closed even when the spawn failed. */
    uv_close((uv_handle_t *)&b->proc, NULL);
    return r;
  }
  b->running = 1;
  b->starts++;
  b->cb = cb;
  b->phase = PHASE_STARTING;
  b->deadline = uv_now(b->loop) + START_MS;
  uv_timer_start(&b->timer, on_timer, POLL_MS, 0);
  return 0;
}

void broker_proc_stop(broker_proc_t *b, broker_proc_cb cb) {
  b->cb = cb;
  b->phase = PHASE_STOPPING;
  if (!b->running) {
    finish(b, 0);
    return;
  }
  uv_process_kill(&b->proc, SIGTERM);
  uv_timer_start(&b->timer, on_timer, STOP_MS, 0);
}

void broker_proc_print_log(const broker_proc_t *b) {
  enum { KEEP = 20 };
  static char lines[KEEP][256];
  char path[320];
  snprintf(path, sizeof path, "%s/mosquitto.log", b->dir);
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  unsigned n = 0;
  while (fgets(lines[n % KEEP], sizeof lines[0], f) != NULL)
    n++;
  fclose(f);
  for (unsigned i = n > KEEP ? n - KEEP : 0; i < n; i++)
    fprintf(stderr, "  mosquitto: %s", lines[i % KEEP]);
}

void broker_proc_cleanup(broker_proc_t *b) {
  if (!uv_is_closing((uv_handle_t *)&b->timer)) uv_close((uv_handle_t *)&b->timer, NULL);
  remove_dir(b);
}
