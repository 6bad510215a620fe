/* The example programs and the gateway demo, run as a user would run them,
 * against a real Mosquitto on 127.0.0.1; and the installed library, used
 * the way an application builds against it (pkg-config, and CMake's find_package).
 *
 * Each test runs the program as a child process on the test's loop,
 * collects its output, and checks what it did from the outside: a
 * subscriber in the test sees the messages it published, or a publisher in
 * the test feeds the messages it must print. Every wait is bounded; every
 * handle is closed and uv_loop_close() must succeed. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "uvmqtt.h"

#define WAIT_MS         15000
#define TCASE_TIMEOUT   40
#define GATEWAY_WAIT_MS 90000
#define GATEWAY_TIMEOUT 120
#define INSTALL_TIMEOUT 280
#define INSTALL_STEP_S  200

static uv_loop_t g_loop;
static test_broker_t g_broker;
static char g_uri[64];

/* ---- Waiting ----------------------------------------------------------------------------- */

static void wake_cb(uv_timer_t *t) {
  (void)t;
}

/* Runs the loop until `done(arg)` or `timeout_ms`; a ticking timer makes
 * sure the condition is looked at even when nothing else happens. */
static int run_until(int (*done)(void *arg), void *arg, uint64_t timeout_ms) {
  uv_timer_t tick;
  ck_assert_int_eq(uv_timer_init(&g_loop, &tick), 0);
  ck_assert_int_eq(uv_timer_start(&tick, wake_cb, 10, 10), 0);
  uint64_t deadline = uv_now(&g_loop) + timeout_ms;
  while (!done(arg) && uv_now(&g_loop) < deadline)
    uv_run(&g_loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&g_loop, UV_RUN_NOWAIT);
  return done(arg);
}

static void loop_start(void) {
  ck_assert_int_eq(uv_loop_init(&g_loop), 0);
}

static void loop_finish(void) {
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&g_loop), 0);
}

/* 1 when some line of the broker's log holds both `a` and `b`. */
static int broker_log_has(const char *a, const char *b) {
  char path[512], line[1024];
  snprintf(path, sizeof path, "%s/mosquitto.log", g_broker.dir);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  int found = 0;
  while (!found && fgets(line, sizeof line, f) != NULL)
    found = strstr(line, a) != NULL && strstr(line, b) != NULL;
  fclose(f);
  return found;
}

static void broker_start(void) {
  ck_assert_msg(test_broker_start(&g_broker, NULL) == 0, "mosquitto did not start");
  snprintf(g_uri, sizeof g_uri, "mqtt://127.0.0.1:%d", g_broker.port);
}

/* ---- A child process with its output collected ---------------------------------------------- */

#define OUT_CAP 32768

typedef struct {
  uv_process_t proc;
  uv_pipe_t pipe[2]; /* stdout, stderr */
  char text[2][OUT_CAP];
  size_t len[2];
  char scratch[4096]; /* where reads go once a buffer is full */
  int pipes_open;
  int exited;
  int closed;
  int64_t status;
  int term_signal;
} child_t;

static child_t *child_of_pipe(uv_handle_t *h, int *which) {
  child_t *c = h->data;
  *which = h == (uv_handle_t *)&c->pipe[0] ? 0 : 1;
  return c;
}

static void child_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  int which;
  child_t *c = child_of_pipe(h, &which);
  (void)suggested;
  size_t room = OUT_CAP - 1 - c->len[which];
  if (room == 0)
    *buf = uv_buf_init(c->scratch, sizeof c->scratch);
  else
    *buf = uv_buf_init(c->text[which] + c->len[which], (unsigned)room);
}

static void child_handle_closed(uv_handle_t *h) {
  child_t *c = h->data;
  c->closed++;
}

static void child_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  int which;
  child_t *c = child_of_pipe((uv_handle_t *)s, &which);
  if (nread > 0 && buf->base != c->scratch) {
    c->len[which] += (size_t)nread;
    c->text[which][c->len[which]] = '\0';
  } else if (nread < 0) {
    c->pipes_open--;
    uv_close((uv_handle_t *)s, child_handle_closed);
  }
}

static void child_exit(uv_process_t *p, int64_t status, int term_signal) {
  child_t *c = p->data;
  c->exited = 1;
  c->status = status;
  c->term_signal = term_signal;
  uv_close((uv_handle_t *)p, child_handle_closed);
}

/* Starts argv[0] with stdout and stderr collected. */
static void child_spawn(child_t *c, char **argv) {
  memset(c, 0, sizeof *c);
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(uv_pipe_init(&g_loop, &c->pipe[i], 0), 0);
    c->pipe[i].data = c;
    stdio[i + 1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[i + 1].data.stream = (uv_stream_t *)&c->pipe[i];
  }
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.file = argv[0];
  o.args = argv;
  o.exit_cb = child_exit;
  o.stdio = stdio;
  o.stdio_count = 3;
  c->proc.data = c;
  int rc = uv_spawn(&g_loop, &c->proc, &o);
  ck_assert_msg(rc == 0, "cannot run %s: %s", argv[0], uv_strerror(rc));
  c->pipes_open = 2;
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(uv_read_start((uv_stream_t *)&c->pipe[i], child_alloc, child_read), 0);
}

/* Exited and every byte of its output read. */
static int child_done(void *arg) {
  child_t *c = arg;
  return c->exited && c->pipes_open == 0;
}

static void child_wait(child_t *c, uint64_t timeout_ms) {
  if (!run_until(child_done, c, timeout_ms)) {
    uv_process_kill(&c->proc, SIGKILL);
    run_until(child_done, c, 5000);
    ck_abort_msg("%s did not finish in time; stdout:\n%s\nstderr:\n%s", "the program", c->text[0],
                 c->text[1]);
  }
}

static void child_expect_exit(const child_t *c, int64_t status) {
  ck_assert_msg(c->term_signal == 0 && c->status == status,
                "exit status %lld (signal %d), expected %lld; stdout:\n%s\nstderr:\n%s",
                (long long)c->status, c->term_signal, (long long)status, c->text[0], c->text[1]);
}

typedef struct {
  child_t *child;
  int which;
  const char *needle;
} output_wait_t;

static int output_has(void *arg) {
  output_wait_t *w = arg;
  return strstr(w->child->text[w->which], w->needle) != NULL || w->child->exited;
}

/* Waits until the child printed `needle` on stdout (0) or stderr (1). */
static void child_wait_output(child_t *c, int which, const char *needle) {
  output_wait_t w = {c, which, needle};
  run_until(output_has, &w, WAIT_MS);
  ck_assert_msg(strstr(c->text[which], needle) != NULL,
                "no \"%s\" in the output; stdout:\n%s\nstderr:\n%s", needle, c->text[0],
                c->text[1]);
}

static void example_path(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/examples/%s", test_build_root(), name);
}

/* ---- A client on the test's side ------------------------------------------------------------- */

typedef struct {
  uvmqtt_client_t client;
  const char *filter; /* NULL: no subscription */
  int subscribed;
  int messages;
  int published;
  int acked;
  int closed;
  char lines[4096]; /* "topic payload\n" per message */
} watcher_t;

static void w_on_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  watcher_t *w = client->data;
  (void)arg;
  w->messages++;
  size_t len = strlen(w->lines);
  snprintf(w->lines + len, sizeof w->lines - len, "%.*s %.*s\n", (int)m->topic.len,
           (const char *)m->topic.data, (int)m->payload.len, (const char *)m->payload.data);
}

static void w_on_suback(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                        void *arg) {
  watcher_t *w = client->data;
  (void)arg;
  ck_assert_int_eq(status, 0);
  ck_assert_uint_eq(count, 1);
  ck_assert_uint_lt(reasons[0], 0x80);
  w->subscribed = 1;
}

static void w_on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  watcher_t *w = client->data;
  (void)ack;
  ck_assert_msg(status == 0, "test client: %s", uvmqtt_strerror(status));
  if (w->filter == NULL) return;
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)w->filter;
  sub.filter.len = (uint32_t)strlen(w->filter);
  sub.options = UVMQTT_SUB_QOS(1);
  ck_assert_int_eq(uvmqtt_subscribe(client, &sub, 1, NULL, NULL, w_on_suback, NULL), 0);
}

static int watcher_subscribed(void *arg) {
  return ((watcher_t *)arg)->subscribed;
}

/* Connects a client; with a filter, waits until it is subscribed. */
static void watcher_start(watcher_t *w, const char *filter) {
  memset(w, 0, sizeof *w);
  w->filter = filter;
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = g_uri;
  o.no_reconnect = 1;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = w_on_connect;
  cbs.on_message = w_on_message;
  ck_assert_int_eq(uvmqtt_client_init(&g_loop, &w->client, &o, &cbs), 0);
  w->client.data = w;
  ck_assert_int_eq(uvmqtt_connect(&w->client), 0);
  if (filter) ck_assert_msg(run_until(watcher_subscribed, w, WAIT_MS), "not subscribed");
}

static void w_on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  watcher_t *w = client->data;
  (void)arg;
  ck_assert_int_eq(status, 0);
  ck_assert_uint_lt(reason, 0x80);
  w->acked++;
}

static void watcher_publish(watcher_t *w, const char *topic, const char *payload) {
  uvmqtt_publish_opts_t po;
  memset(&po, 0, sizeof po);
  po.qos = 1;
  ck_assert_int_eq(
      uvmqtt_publish(&w->client, topic, payload, strlen(payload), &po, w_on_published, NULL), 0);
  w->published++;
}

static int watcher_all_acked(void *arg) {
  watcher_t *w = arg;
  return w->acked == w->published;
}

static void w_on_closed(uvmqtt_client_t *client) {
  ((watcher_t *)client->data)->closed = 1;
}

static void watcher_close(watcher_t *w) {
  uvmqtt_close(&w->client, w_on_closed);
}

typedef struct {
  watcher_t *w;
  int messages;
  child_t *child;
} got_t;

/* The watcher has `messages` messages and the child is done. */
static int got_all(void *arg) {
  got_t *g = arg;
  return g->w->messages >= g->messages && (g->child == NULL || child_done(g->child));
}

/* ---- pub_once ----------------------------------------------------------------------------------
 */

/* Index 0 gives a URI, index 1 a host and a port. */
START_TEST(examples_pub_once_publishes) {
  broker_start();
  loop_start();
  watcher_t w;
  watcher_start(&w, "ex/pub");
  char exe[512], port[16], payload[32];
  example_path(exe, sizeof exe, "pub_once");
  snprintf(port, sizeof port, "%d", g_broker.port);
  snprintf(payload, sizeof payload, "hello-%d", _i);
  char *with_uri[] = {exe, g_uri, "ex/pub", payload, NULL};
  char *with_host[] = {exe, "127.0.0.1", port, "ex/pub", payload, NULL};
  child_t c;
  child_spawn(&c, _i == 0 ? with_uri : with_host);
  got_t g = {&w, 1, &c};
  run_until(got_all, &g, WAIT_MS);
  child_wait(&c, WAIT_MS);
  child_expect_exit(&c, 0);
  ck_assert_ptr_nonnull(strstr(c.text[0], "acknowledged"));
  ck_assert_int_eq(w.messages, 1);
  char expect[64];
  snprintf(expect, sizeof expect, "ex/pub %s\n", payload);
  ck_assert_str_eq(w.lines, expect);
  /* A clean DISCONNECT, not a dropped connection (the test's own client,
   * also "uvmqtt-...", is still connected). */
  ck_assert_msg(broker_log_has("Client uvmqtt-", " disconnected."),
                "no clean disconnect in the broker's log");
  ck_assert(!broker_log_has("Client uvmqtt-", "closed its connection"));
  watcher_close(&w);
  loop_finish();
  ck_assert_int_eq(w.closed, 1);
  ck_assert_int_eq(c.closed, 3);
  test_broker_cleanup(&g_broker);
}
END_TEST

START_TEST(examples_pub_once_fails_without_broker) {
  loop_start();
  int port = test_free_port();
  ck_assert_int_gt(port, 0);
  char exe[512], uri[64];
  example_path(exe, sizeof exe, "pub_once");
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%d", port);
  char *argv[] = {exe, uri, "ex/none", "x", NULL};
  child_t c;
  child_spawn(&c, argv);
  child_wait(&c, WAIT_MS);
  child_expect_exit(&c, 1);
  ck_assert_ptr_nonnull(strstr(c.text[1], "cannot connect"));
  loop_finish();
}
END_TEST

/* ---- sub_print
 * ----------------------------------------------------------------------------------- */

START_TEST(examples_sub_print_count) {
  broker_start();
  loop_start();
  char exe[512];
  example_path(exe, sizeof exe, "sub_print");
  char *argv[] = {exe, g_uri, "ex/sub/#", "3", NULL};
  child_t c;
  child_spawn(&c, argv);
  child_wait_output(&c, 1, "subscribed to ex/sub/#");
  watcher_t w;
  watcher_start(&w, NULL);
  watcher_publish(&w, "ex/sub/a", "one");
  watcher_publish(&w, "ex/sub/b", "two");
  watcher_publish(&w, "ex/other", "not matched");
  watcher_publish(&w, "ex/sub/a/deep", "three");
  child_wait(&c, WAIT_MS);
  ck_assert(run_until(watcher_all_acked, &w, WAIT_MS));
  child_expect_exit(&c, 0);
  /* QoS 1 from one publisher arrives in order. */
  ck_assert_str_eq(c.text[0], "ex/sub/a one\nex/sub/b two\nex/sub/a/deep three\n");
  ck_assert_int_eq(w.acked, 4);
  watcher_close(&w);
  loop_finish();
  test_broker_cleanup(&g_broker);
}
END_TEST

START_TEST(examples_sub_print_sigint) {
  broker_start();
  loop_start();
  char exe[512], port[16];
  example_path(exe, sizeof exe, "sub_print");
  snprintf(port, sizeof port, "%d", g_broker.port);
  char *argv[] = {exe, "127.0.0.1", port, "ex/int", NULL};
  child_t c;
  child_spawn(&c, argv);
  child_wait_output(&c, 1, "subscribed to ex/int");
  watcher_t w;
  watcher_start(&w, NULL);
  watcher_publish(&w, "ex/int", "before ctrl-c");
  child_wait_output(&c, 0, "ex/int before ctrl-c\n");
  ck_assert_int_eq(uv_process_kill(&c.proc, SIGINT), 0);
  child_wait(&c, WAIT_MS);
  child_expect_exit(&c, 0);
  ck_assert_ptr_nonnull(strstr(c.text[1], "interrupted"));
  watcher_close(&w);
  loop_finish();
  test_broker_cleanup(&g_broker);
}
END_TEST

/* ---- embed_server
 * ----------------------------------------------------------------------------------- */

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  uv_write_t write_req;
  char echo[64];
  size_t len;
  int status;
  int closed;
} echo_client_t;

static void echo_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  echo_client_t *e = h->data;
  (void)suggested;
  *buf = uv_buf_init(e->echo + e->len, (unsigned)(sizeof e->echo - 1 - e->len));
}

static void echo_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  echo_client_t *e = s->data;
  (void)buf;
  if (nread > 0) {
    e->len += (size_t)nread;
    e->echo[e->len] = '\0';
  } else if (nread < 0) {
    uv_read_stop(s);
  }
}

static void echo_written(uv_write_t *req, int status) {
  (void)req;
  ck_assert_int_eq(status, 0);
}

static void echo_connected(uv_connect_t *req, int status) {
  echo_client_t *e = req->data;
  e->status = status;
  ck_assert_msg(status == 0, "connect to the echo server: %s", uv_strerror(status));
  static char ping[] = "ping through the echo server\n";
  uv_buf_t b = uv_buf_init(ping, sizeof ping - 1);
  ck_assert_int_eq(uv_write(&e->write_req, (uv_stream_t *)&e->tcp, &b, 1, echo_written), 0);
  ck_assert_int_eq(uv_read_start((uv_stream_t *)&e->tcp, echo_alloc, echo_read), 0);
}

static void echo_closed(uv_handle_t *h) {
  ((echo_client_t *)h->data)->closed = 1;
}

typedef struct {
  echo_client_t *e;
  watcher_t *w;
} echo_wait_t;

static int echo_and_message(void *arg) {
  echo_wait_t *x = arg;
  return strchr(x->e->echo, '\n') != NULL && x->w->messages >= 1;
}

START_TEST(examples_embed_server_echoes_and_publishes) {
  broker_start();
  loop_start();
  watcher_t w;
  watcher_start(&w, "ex/conn");
  int port = test_free_port();
  ck_assert_int_gt(port, 0);
  char exe[512], port_s[16];
  example_path(exe, sizeof exe, "embed_server");
  snprintf(port_s, sizeof port_s, "%d", port);
  char *argv[] = {exe, port_s, g_uri, "ex/conn", NULL};
  child_t c;
  child_spawn(&c, argv);
  child_wait_output(&c, 1, "echo server listening");

  echo_client_t e;
  memset(&e, 0, sizeof e);
  ck_assert_int_eq(uv_tcp_init(&g_loop, &e.tcp), 0);
  e.tcp.data = &e;
  e.connect_req.data = &e;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", port, &sa);
  ck_assert_int_eq(
      uv_tcp_connect(&e.connect_req, &e.tcp, (const struct sockaddr *)&sa, echo_connected), 0);
  echo_wait_t x = {&e, &w};
  run_until(echo_and_message, &x, WAIT_MS);
  ck_assert_str_eq(e.echo, "ping through the echo server\n");
  ck_assert_str_eq(w.lines, "ex/conn connection 1 accepted\n");
  uv_close((uv_handle_t *)&e.tcp, echo_closed);

  ck_assert_int_eq(uv_process_kill(&c.proc, SIGINT), 0);
  child_wait(&c, WAIT_MS);
  child_expect_exit(&c, 0);
  ck_assert_ptr_nonnull(strstr(c.text[1], "mqtt connected"));
  watcher_close(&w);
  loop_finish();
  ck_assert_int_eq(e.closed, 1);
  test_broker_cleanup(&g_broker);
}
END_TEST

/* ---- The gateway demo
 * -------------------------------------------------------------------------------- */

/* The number after "key": inside the object that starts at `from`. */
static long long json_number(const char *from, const char *key) {
  char pattern[64];
  snprintf(pattern, sizeof pattern, "\"%s\":", key);
  const char *p = strstr(from, pattern);
  ck_assert_msg(p != NULL, "no %s in %s", key, from);
  return strtoll(p + strlen(pattern), NULL, 10);
}

static const char *json_object(const char *json, const char *key) {
  char pattern[64];
  snprintf(pattern, sizeof pattern, "\"%s\":{", key);
  const char *p = strstr(json, pattern);
  ck_assert_msg(p != NULL, "no %s in %s", key, json);
  return p;
}

START_TEST(examples_gateway_short_run) {
  loop_start();
  char exe[512];
  example_path(exe, sizeof exe, "uvmqtt-gateway");
  char *argv[] = {exe,  "--sensors",  "20", "--buttons", "10", "--alarms",
                  "10", "--duration", "15", "--json",    NULL};
  child_t c;
  child_spawn(&c, argv);
  child_wait(&c, GATEWAY_WAIT_MS);
  child_expect_exit(&c, 0);
  const char *json = c.text[0];
  ck_assert_ptr_nonnull(strstr(json, "\"ok\":true"));
  ck_assert_int_eq(json_number(json, "alarms_lost"), 0);
  /* Every fault happened. */
  const char *faults = json_object(json, "faults");
  ck_assert_int_eq(json_number(faults, "cuts"), 1);
  ck_assert_int_ge(json_number(faults, "connections_cut"), 40);
  ck_assert_int_eq(json_number(faults, "broker_restarts"), 1);
  /* Alarms: everything sent arrived, through three reconnects each. */
  const char *alarm = json_object(json, "alarm");
  long long sent = json_number(alarm, "sent");
  ck_assert_int_gt(sent, 0);
  ck_assert_int_eq(json_number(alarm, "delivered"), sent);
  ck_assert_int_eq(json_number(alarm, "lost"), 0);
  ck_assert_int_ge(json_number(alarm, "reconnects"), 10);
  /* Sensors drop while offline rather than queue. */
  const char *sensor = json_object(json, "sensor");
  ck_assert_int_gt(json_number(sensor, "dropped"), 0);
  ck_assert_int_eq(json_number(sensor, "expired"), 0);
  ck_assert_int_eq(json_number(sensor, "sent"), json_number(sensor, "delivered") +
                                                    json_number(sensor, "dropped") +
                                                    json_number(sensor, "lost"));
  /* The broker's files are gone. */
  const char *dir = strstr(c.text[1], "files in ");
  ck_assert_ptr_nonnull(dir);
  char path[256];
  ck_assert_int_eq(sscanf(dir + strlen("files in "), "%255[^)]", path), 1);
  ck_assert_int_ne(access(path, F_OK), 0);
  loop_finish();
}
END_TEST

/* ---- Installed library
 * ------------------------------------------------------------------------------ */

/* Only what gets installed is built: the library and the installed tools,
 * not benchmarks or examples, which keeps the build short. */
static const char installed_targets[] =
    "meson introspect build --targets | python3 -c 'import json, os, sys; print(\" \".join("
    "os.path.relpath(f, \"build\") for t in json.load(sys.stdin) if t[\"installed\"] "
    "for f in t[\"filename\"]))'";

/* The install directory is made and removed by the parent process (an
 * unchecked fixture), so it goes away even when the forked test fails. */
static char install_dir[64];

static void install_dir_make(void) {
  snprintf(install_dir, sizeof install_dir, "/tmp/uvmqtt-install-XXXXXX");
  if (mkdtemp(install_dir) == NULL) install_dir[0] = '\0';
}

static void install_dir_remove(void) {
  char cmd[128];
  if (install_dir[0] == '\0') return;
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", install_dir);
  test_run(cmd, 60);
  install_dir[0] = '\0';
}

/* Builds the installed targets and installs them into the temporary
 * prefix, once for the test case: the tests of the installed library run in
 * turn, each in its own process, and the later ones find the marker the
 * first one left instead of building again. */
static void install_prefix(const char *tmp) {
  const char *src = test_source_root();
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "cd '%s' && { test -f installed || { meson setup build '%s' --prefix='%s/prefix' "
           "-Dtests=false >setup.log 2>&1 "
           "&& ninja -C build -j2 $(%s) >build.log 2>&1 && "
           "meson install -C build --no-rebuild >install.log 2>&1 && touch installed; }; } "
           "|| { tail -n 40 *.log; exit 1; }",
           tmp, src, tmp, installed_targets);
  ck_assert_int_eq(test_run(cmd, INSTALL_STEP_S), 0);
}

/* Builds and installs into a temporary prefix, compiles pub_once.c with
 * the flags pkg-config gives, and runs it against the broker. */
START_TEST(examples_installed_pkg_config) {
  const char *tmp = install_dir;
  ck_assert_msg(tmp[0] != '\0', "no temporary directory");
  const char *src = test_source_root();
  char cmd[4096];
  install_prefix(tmp);

  char pcpath[1024], libpath[1024];
  snprintf(pcpath, sizeof pcpath,
           "%s/prefix/lib/x86_64-linux-gnu/pkgconfig:%s/prefix/lib/pkgconfig", tmp, tmp);
  snprintf(libpath, sizeof libpath, "%s/prefix/lib/x86_64-linux-gnu:%s/prefix/lib", tmp, tmp);
  snprintf(cmd, sizeof cmd,
           "PKG_CONFIG_PATH='%s' cc -Wall -Wextra -Werror -o '%s/pub_once' "
           "'%s/examples/pub_once.c' $(PKG_CONFIG_PATH='%s' pkg-config --cflags --libs uvmqtt)",
           pcpath, tmp, src, pcpath);
  ck_assert_int_eq(test_run(cmd, 60), 0);
  /* The program uses the library from the prefix, not from the build tree. */
  snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH='%s' ldd '%s/pub_once' | grep -q '%s/prefix/lib'",
           libpath, tmp, tmp);
  ck_assert_int_eq(test_run(cmd, 30), 0);

  broker_start();
  loop_start();
  watcher_t w;
  watcher_start(&w, "ex/installed");
  char exe[512];
  snprintf(exe, sizeof exe, "%s/pub_once", tmp);
  ck_assert_int_eq(setenv("LD_LIBRARY_PATH", libpath, 1), 0);
  char *argv[] = {exe, g_uri, "ex/installed", "from the installed library", NULL};
  child_t c;
  child_spawn(&c, argv);
  got_t g = {&w, 1, &c};
  run_until(got_all, &g, WAIT_MS);
  child_wait(&c, WAIT_MS);
  child_expect_exit(&c, 0);
  ck_assert_str_eq(w.lines, "ex/installed from the installed library\n");
  watcher_close(&w);
  loop_finish();
  test_broker_cleanup(&g_broker);
}
END_TEST

/* An application that builds with CMake finds the installed library with
 * find_package(uvmqtt) and links the imported target uvmqtt::uvmqtt, which
 * brings the include directory and libuv along; pub_once.c is built that
 * way from a CMakeLists.txt of three lines. A version the install does not
 * satisfy must not be found. */
START_TEST(examples_installed_cmake) {
  const char *tmp = install_dir;
  ck_assert_msg(tmp[0] != '\0', "no temporary directory");
  ck_assert_msg(test_run("command -v cmake >/dev/null", 10) == 0,
                "cmake is not installed (tools/install-deps installs it)");
  const char *src = test_source_root();
  char cmd[4096];
  install_prefix(tmp);

  snprintf(cmd, sizeof cmd,
           "mkdir -p '%s/cmake' && printf '%%s\\n' "
           "'cmake_minimum_required(VERSION 3.13)' 'project(pub_once_cmake C)' "
           "'find_package(uvmqtt 0.1 REQUIRED)' "
           "'add_executable(pub_once \"%s/examples/pub_once.c\")' "
           "'target_compile_options(pub_once PRIVATE -Wall -Wextra -Werror)' "
           "'target_link_libraries(pub_once PRIVATE uvmqtt::uvmqtt)' "
           ">'%s/cmake/CMakeLists.txt' && "
           "cmake -S '%s/cmake' -B '%s/cmake/build' -DCMAKE_PREFIX_PATH='%s/prefix' "
           ">'%s/cmake.log' 2>&1 && cmake --build '%s/cmake/build' >>'%s/cmake.log' 2>&1 "
           "|| { tail -n 40 '%s/cmake.log'; exit 1; }",
           tmp, src, tmp, tmp, tmp, tmp, tmp, tmp, tmp, tmp);
  ck_assert_int_eq(test_run(cmd, 120), 0);

  char libpath[1024];
  snprintf(libpath, sizeof libpath, "%s/prefix/lib/x86_64-linux-gnu:%s/prefix/lib", tmp, tmp);
  /* The program uses the library from the prefix, not from the build tree,
   * and it loads and runs: with one argument pub_once prints its usage and
   * exits 2 before it connects anywhere. */
  snprintf(cmd, sizeof cmd,
           "LD_LIBRARY_PATH='%s' ldd '%s/cmake/build/pub_once' | grep -q '%s/prefix/lib' && "
           "{ LD_LIBRARY_PATH='%s' '%s/cmake/build/pub_once' only-host 2>&1; test $? -eq 2; }",
           libpath, tmp, tmp, libpath, tmp);
  ck_assert_int_eq(test_run(cmd, 30), 0);

  /* Before 1.0 a newer minor version is a different API: asking for it
   * must leave the package not found. */
  snprintf(cmd, sizeof cmd,
           "mkdir -p '%s/cmake_newer' && printf '%%s\\n' "
           "'cmake_minimum_required(VERSION 3.13)' 'project(newer C)' "
           "'find_package(uvmqtt 0.99 QUIET)' "
           "'if(uvmqtt_FOUND)' 'message(FATAL_ERROR \"0.99 found\")' 'endif()' "
           ">'%s/cmake_newer/CMakeLists.txt' && "
           "cmake -S '%s/cmake_newer' -B '%s/cmake_newer/build' -DCMAKE_PREFIX_PATH='%s/prefix' "
           ">'%s/cmake_newer.log' 2>&1 || { tail -n 20 '%s/cmake_newer.log'; exit 1; }",
           tmp, tmp, tmp, tmp, tmp, tmp, tmp);
  ck_assert_int_eq(test_run(cmd, 60), 0);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("examples");
  TCase *tc = tcase_create("programs");
  tcase_set_timeout(tc, TCASE_TIMEOUT);
  tcase_add_loop_test(tc, examples_pub_once_publishes, 0, 2);
  tcase_add_test(tc, examples_pub_once_fails_without_broker);
  tcase_add_test(tc, examples_sub_print_count);
  tcase_add_test(tc, examples_sub_print_sigint);
  tcase_add_test(tc, examples_embed_server_echoes_and_publishes);
  suite_add_tcase(s, tc);

  tc = tcase_create("gateway");
  tcase_set_timeout(tc, GATEWAY_TIMEOUT);
  tcase_add_test(tc, examples_gateway_short_run);
  suite_add_tcase(s, tc);

  tc = tcase_create("install");
  tcase_set_timeout(tc, INSTALL_TIMEOUT);
  tcase_add_unchecked_fixture(tc, install_dir_make, install_dir_remove);
  tcase_add_test(tc, examples_installed_pkg_config);
  tcase_add_test(tc, examples_installed_cmake);
  suite_add_tcase(s, tc);
  return s;
}
