/* uvmqtt-pub and uvmqtt-sub against a real Mosquitto and its own
 * mosquitto_pub / mosquitto_sub: interop both ways, the single-message
 * modes, -C/-W, failures, delivery deadlines, broker restarts, TLS
 * (certificates made at test time with the openssl command), the
 * message store (--store, --drain) across a SIGKILL, and uvmqtt-sub's
 * output (-v, -N, -F, %j) against mosquitto_sub's for the same messages. */
#include <arpa/inet.h>
#include <check.h>
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
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "broker.h"
#include "certs.h"
#include "node_server.h"

#define LINES_INTEROP 1000
#define LINES_RESTART 2000
#define RESTARTS      3
#define LINES_DRAIN   5000

/* A broker whose queues never drop a message for a slow or offline
 * persistent subscriber (the default keeps 1000). */
#define BROKER_UNLIMITED  "max_queued_messages 0\n"
#define BROKER_PERSISTENT "persistence true\nmax_queued_messages 0\n"

/* ---- Helpers ------------------------------------------------------------------ */

static const char *tool(const char *name) {
  static char paths[2][512];
  static int next;
  char *p = paths[next++ % 2];
  snprintf(p, sizeof paths[0], "%s/tools/%s", test_build_root(), name);
  return p;
}

/* A fresh directory for one test's files. */
typedef struct {
  char dir[128];
  char path[8][192];
  int used;
} scratch_t;

static void scratch_init(scratch_t *s) {
  memset(s, 0, sizeof *s);
  snprintf(s->dir, sizeof s->dir, "/tmp/uvmqtt-cli-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(s->dir));
}

static const char *scratch_file(scratch_t *s, const char *name) {
  ck_assert_int_lt(s->used, 8);
  char *p = s->path[s->used++];
  /* Through a copy: gcc cannot tell that dir and path never overlap. */
  char dir[sizeof s->dir];
  memcpy(dir, s->dir, sizeof dir);
  snprintf(p, sizeof s->path[0], "%s/%s", dir, name);
  return p;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void scratch_cleanup(scratch_t *s) {
  nftw(s->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* The whole file, NUL-terminated (empty when missing). */
static char *slurp(const char *path, size_t *len_out) {
  FILE *f = fopen(path, "rb");
  size_t len = 0, cap = 4096;
  char *buf = malloc(cap);
  ck_assert_ptr_nonnull(buf);
  if (f != NULL) {
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
      len += n;
      if (cap - len < 2) {
        cap *= 2;
        buf = realloc(buf, cap);
        ck_assert_ptr_nonnull(buf);
      }
    }
    fclose(f);
  }
  buf[len] = '\0';
  if (len_out) *len_out = len;
  return buf;
}

static void write_file(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(data, 1, len, f), len);
  ck_assert_int_eq(fclose(f), 0);
}

/* "1\n2\n...n\n" with an optional prefix on each line. */
static char *numbered_lines(const char *prefix, int first, int last, size_t *len) {
  size_t cap = (size_t)(last - first + 1) * (strlen(prefix) + 16) + 1, n = 0;
  char *buf = malloc(cap);
  ck_assert_ptr_nonnull(buf);
  for (int i = first; i <= last; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%d\n", prefix, i);
  *len = n;
  return buf;
}

static void assert_file_eq(const char *path, const char *expected, size_t len) {
  size_t got_len;
  char *got = slurp(path, &got_len);
  if (got_len != len || memcmp(got, expected, len) != 0) {
    fprintf(stderr, "%s differs: %zu bytes, expected %zu; begins:\n%.300s\n", path, got_len, len,
            got);
    free(got);
    ck_abort_msg("output of %s differs from what was sent", path);
  }
  free(got);
}

/* Shows a file on stderr, to explain a failure that follows. */
static void show_file(const char *label, const char *path) {
  char *text = slurp(path, NULL);
  fprintf(stderr, "---- %s (%s):\n%s\n----\n", label, path, text);
  free(text);
}

static void assert_file_contains(const char *path, const char *needle) {
  char *text = slurp(path, NULL);
  int found = strstr(text, needle) != NULL;
  if (!found) fprintf(stderr, "%s lacks \"%s\"; it holds:\n%s\n", path, needle, text);
  free(text);
  ck_assert_msg(found, "%s lacks \"%s\"", path, needle);
}

static int count_lines(const char *path) {
  char *text = slurp(path, NULL);
  int n = 0;
  for (const char *p = text; *p; p++)
    n += *p == '\n';
  free(text);
  return n;
}

/* 1 once the file holds `needle`, 0 if it does not within timeout_ms. */
static int wait_file_contains(const char *path, const char *needle, long timeout_ms) {
  long long deadline = test_now_ms() + timeout_ms;
  for (;;) {
    char *text = slurp(path, NULL);
    int found = strstr(text, needle) != NULL;
    free(text);
    if (found) return 1;
    if (test_now_ms() >= deadline) return 0;
    test_sleep_ms(20);
  }
}

/* Starts `cmdline` under /bin/sh in the background ("exec" in front makes
 * the returned pid the program's own). `in_fd` >= 0 becomes its stdin and
 * `close_fd` >= 0 is closed in the child. It dies with the test. */
static pid_t spawn(const char *cmdline, int in_fd, int close_fd) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    if (close_fd >= 0) close(close_fd);
    if (in_fd >= 0) {
      dup2(in_fd, STDIN_FILENO);
      close(in_fd);
    }
    execl("/bin/sh", "sh", "-c", cmdline, (char *)NULL);
    _exit(127);
  }
  return pid;
}

/* The exit status, or -1 when it did not exit within timeout_ms (it is
 * killed then). */
static int wait_exit(pid_t pid, long timeout_ms) {
  long long deadline = test_now_ms() + timeout_ms;
  int status;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (r < 0) return -1;
    if (test_now_ms() >= deadline) {
      fprintf(stderr, "process %d did not exit within %ld ms\n", (int)pid, timeout_ms);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    test_sleep_ms(10);
  }
}

static int stop_process(pid_t pid, long timeout_ms) {
  kill(pid, SIGTERM);
  return wait_exit(pid, timeout_ms);
}

/* A persistent session for `id` subscribed to `topic`, made with
 * mosquitto_sub -E, so messages published from now on wait for the client
 * however late it connects. */
static void make_session(const test_broker_t *b, const char *version, const char *id,
                         const char *topic, int qos) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "mosquitto_sub -h 127.0.0.1 -p %d -V %s -c -i %s -q %d -t '%s' -E",
           b->port, version, id, qos, topic);
  ck_assert_int_eq(test_run(cmd, 10), 0);
}

static void start_broker(test_broker_t *b, const char *extra) {
  ck_assert_int_eq(test_broker_start(b, extra), 0);
}

/* ---- Interop: 1000 lines each way ------------------------------------------------------ */

/* mosquitto_pub -l sends 1000 QoS 1 lines; uvmqtt-sub must print them all,
 * in order. */
static void sub_receives_lines(const char *version) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *in = scratch_file(&s, "in.txt"), *out = scratch_file(&s, "out.txt");
  const char *err = scratch_file(&s, "err.txt");
  size_t len;
  char *lines = numbered_lines("line ", 1, LINES_INTEROP, &len);
  write_file(in, lines, len);
  make_session(&b, version, "cli-sub", "interop/lines", 1);

  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "exec %s -h 127.0.0.1 -p %d -V %s -c -i cli-sub -q 1 -t interop/lines -C %d -W 60 "
           "> %s 2> %s",
           tool("uvmqtt-sub"), b.port, version, LINES_INTEROP, out, err);
  pid_t sub = spawn(cmd, -1, -1);
  snprintf(cmd, sizeof cmd, "mosquitto_pub -h 127.0.0.1 -p %d -V %s -q 1 -t interop/lines -l < %s",
           b.port, version, in);
  ck_assert_int_eq(test_run(cmd, 60), 0);
  int status = wait_exit(sub, 60000);
  if (status != 0) show_file("uvmqtt-sub stderr", err);
  ck_assert_int_eq(status, 0);
  assert_file_eq(out, lines, len);
  free(lines);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}

START_TEST(cli_sub_receives_mosquitto_pub_lines_v311) {
  sub_receives_lines("mqttv311");
}
END_TEST

START_TEST(cli_sub_receives_mosquitto_pub_lines_v5) {
  sub_receives_lines("mqttv5");
}
END_TEST

/* uvmqtt-pub -l sends 1000 QoS 2 lines in `version`; mosquitto_sub must
 * get them all, in order. The observer always speaks 3.1.1: mosquitto_sub
 * 2.0.11 as a v5 client drops QoS 2 streams with "protocol error" at
 * random, whoever publishes (mosquitto_pub included). */
static void pub_sends_lines(const char *version) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *in = scratch_file(&s, "in.txt"), *out = scratch_file(&s, "out.txt");
  const char *json = scratch_file(&s, "json.txt");
  size_t len;
  char *lines = numbered_lines("qos2 line ", 1, LINES_INTEROP, &len);
  write_file(in, lines, len);
  make_session(&b, "mqttv311", "cli-observer", "interop/q2", 2);

  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "exec mosquitto_sub -h 127.0.0.1 -p %d -c -i cli-observer -q 2 -t interop/q2 "
           "-C %d -W 60 > %s",
           b.port, LINES_INTEROP, out);
  pid_t sub = spawn(cmd, -1, -1);
  /* stdin is a regular file here (read with uv_fs_read); the pipe case
   * has its own test. */
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -V %s -q 2 -t interop/q2 -l --json < %s > %s",
           tool("uvmqtt-pub"), b.port, version, in, json);
  ck_assert_int_eq(test_run(cmd, 60), 0);
  char expect[128];
  snprintf(expect, sizeof expect, "{\"sent\":%d,\"acked\":%d,\"failed\":0}\n", LINES_INTEROP,
           LINES_INTEROP);
  assert_file_eq(json, expect, strlen(expect));
  ck_assert_int_eq(wait_exit(sub, 60000), 0);
  assert_file_eq(out, lines, len);
  free(lines);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}

START_TEST(cli_pub_lines_reach_mosquitto_sub_v311) {
  pub_sends_lines("mqttv311");
}
END_TEST

START_TEST(cli_pub_lines_reach_mosquitto_sub_v5) {
  pub_sends_lines("mqttv5");
}
END_TEST

/* A pipe instead of a regular file on stdin. */
START_TEST(cli_pub_lines_from_pipe) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *in = scratch_file(&s, "in.txt"), *out = scratch_file(&s, "out.txt");
  size_t len;
  char *lines = numbered_lines("", 1, LINES_INTEROP, &len);
  write_file(in, lines, len);
  make_session(&b, "mqttv311", "cli-pipe", "interop/pipe", 1);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "cat %s | %s -h 127.0.0.1 -p %d -q 1 -t interop/pipe -l", in,
           tool("uvmqtt-pub"), b.port);
  ck_assert_int_eq(test_run(cmd, 60), 0);
  snprintf(cmd, sizeof cmd,
           "%s -h 127.0.0.1 -p %d -c -i cli-pipe -q 1 -t interop/pipe -C %d -W 30 > %s",
           tool("uvmqtt-sub"), b.port, LINES_INTEROP, out);
  ck_assert_int_eq(test_run(cmd, 60), 0);
  assert_file_eq(out, lines, len);
  free(lines);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* ---- Single messages ------------------------------------------------------------------- */

/* Publishes with uvmqtt-pub `args` (after host, port and topic) into a
 * waiting session, then reads one message back with uvmqtt-sub `sub_args`. */
static void roundtrip(const char *version, const char *pub_args, const char *sub_args,
                      const char *expected, size_t expected_len) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *out = scratch_file(&s, "out.txt");
  make_session(&b, version, "cli-single", "single/t", 1);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -V %s -t single/t -q 1 %s", tool("uvmqtt-pub"),
           b.port, version, pub_args);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -V %s -c -i cli-single -q 1 -t single/t %s > %s",
           tool("uvmqtt-sub"), b.port, version, sub_args, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out, expected, expected_len);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}

START_TEST(cli_pub_single_message) {
  roundtrip("mqttv311", "-m 'hello world'", "-C 1 -W 10", "hello world\n", 12);
  roundtrip("mqttv5", "-m 'hello v5'", "-v -C 1 -W 10", "single/t hello v5\n", 18);
}
END_TEST

/* -A, as mosquitto_pub's: the connection comes from the local address
 * given (the broker logs it), and one of the other family reaches no
 * server. */
START_TEST(cli_bind_address) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  char cmd[1024], log[600];
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -A 127.0.0.9 -i cli-bound -t bind/t -m x",
           tool("uvmqtt-pub"), b.port);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(log, sizeof log, "%s/mosquitto.log", b.dir);
  ck_assert_msg(wait_file_contains(log, "from 127.0.0.9:", 5000),
                "the broker did not see a connection from 127.0.0.9");
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -A ::1 -t bind/t -m x -W 5 2>/dev/null",
           tool("uvmqtt-pub"), b.port);
  ck_assert_int_ne(test_run(cmd, 20), 0);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

START_TEST(cli_pub_null_message) {
  roundtrip("mqttv311", "-n", "-v -C 1 -W 10", "single/t (null)\n", 16);
  /* Without -v an empty payload prints nothing, as with mosquitto_sub. */
  roundtrip("mqttv5", "-n", "-C 1 -W 10", "", 0);
}
END_TEST

/* -f sends a file, -s all of stdin, each as one message (newlines kept;
 * -N prints the payload as it is). */
START_TEST(cli_pub_file_and_stdin) {
  scratch_t s;
  scratch_init(&s);
  const char *file = scratch_file(&s, "payload.bin");
  static const char payload[] = "first line\nsecond line\n\tno newline at the end";
  write_file(file, payload, sizeof payload - 1);
  char args[512];
  snprintf(args, sizeof args, "-f %s", file);
  roundtrip("mqttv311", args, "-N -C 1 -W 10", payload, sizeof payload - 1);
  snprintf(args, sizeof args, "-s < %s", file);
  roundtrip("mqttv5", args, "-N -C 1 -W 10", payload, sizeof payload - 1);
  scratch_cleanup(&s);
}
END_TEST

/* -r: a subscriber that comes later still gets the message. */
START_TEST(cli_pub_retained) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, NULL);
  const char *out = scratch_file(&s, "out.txt"), *out2 = scratch_file(&s, "out2.txt");
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -t retained/t -q 1 -r -m kept",
           tool("uvmqtt-pub"), b.port);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -t retained/t -C 1 -W 10 > %s",
           tool("uvmqtt-sub"), b.port, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out, "kept\n", 5);
  snprintf(cmd, sizeof cmd, "mosquitto_sub -h 127.0.0.1 -p %d -t retained/t -C 1 -W 10 > %s",
           b.port, out2);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out2, "kept\n", 5);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* v5 PUBLISH properties from -D, as mosquitto_sub sees them, with the -L
 * URL form. */
START_TEST(cli_pub_v5_properties_and_url) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *out = scratch_file(&s, "out.txt");
  make_session(&b, "mqttv5", "cli-props", "props/t", 1);
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "%s -L mqtt://127.0.0.1:%d/props/t -q 1 -D publish user-property colour blue "
           "-D publish content-type text/plain -D publish response-topic props/reply "
           "-D publish correlation-data req-7 -D publish message-expiry-interval 600 "
           "-D connect user-property who cli -D connect receive-maximum 10 -m body",
           tool("uvmqtt-pub"), b.port);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(cmd, sizeof cmd,
           "mosquitto_sub -h 127.0.0.1 -p %d -V mqttv5 -c -i cli-props -q 1 -t props/t -C 1 "
           "-W 10 -F '%%C|%%R|%%D|%%P|%%p' > %s",
           b.port, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  static const char expected[] = "text/plain|props/reply|req-7|colour:blue|body\n";
  assert_file_eq(out, expected, sizeof expected - 1);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* -V mqttv31: both tools speak MQTT 3.1 ("MQIsdp") with a 3.1 peer of
 * Mosquitto's. */
START_TEST(cli_mqtt31_both_ways) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *out = scratch_file(&s, "out.txt");
  make_session(&b, "mqttv31", "cli-v31", "v31/t", 1);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -V mqttv31 -t v31/t -q 1 -m 'from uvmqtt'",
           tool("uvmqtt-pub"), b.port);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(cmd, sizeof cmd,
           "mosquitto_sub -h 127.0.0.1 -p %d -V mqttv31 -c -i cli-v31 -q 1 -t v31/t -C 1 -W 10 "
           "> %s",
           b.port, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out, "from uvmqtt\n", 12);
  make_session(&b, "mqttv31", "cli-v31b", "v31/u", 1);
  snprintf(cmd, sizeof cmd, "mosquitto_pub -h 127.0.0.1 -p %d -V mqttv31 -t v31/u -q 1 -m back",
           b.port);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(cmd, sizeof cmd,
           "%s -h 127.0.0.1 -p %d -V 31 -c -i cli-v31b -q 1 -t v31/u -C 1 -W 10 > %s",
           tool("uvmqtt-sub"), b.port, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out, "back\n", 5);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* ---- Output like mosquitto_sub's --------------------------------------------------------- */

/* The same options given to uvmqtt-sub and to mosquitto_sub, run side by
 * side against one broker, must print the same bytes. What depends on the
 * clock is masked first: MASK_TST blanks the digits of JSON "tst" values,
 * MASK_DIGITS every digit. */
#define MASK_NONE   0
#define MASK_TST    1
#define MASK_DIGITS 2

typedef struct {
  const char *args;
  int mask;
} format_case_t;

static const format_case_t format_cases[] = {
    {"", MASK_NONE},
    {"-v", MASK_NONE},
    {"-N", MASK_NONE},
    {"-v -N", MASK_NONE},
    {"-F '%t|%p|%q|%r|%m|%l|%x|%X|%%'", MASK_NONE},
    {"-F '%P|%C|%D|%E|%F|%R|%S|%A'", MASK_NONE},
    {"-F '%10t|%-10t|%5.2t|%010l|%-5l|%8x|%08X|%3p|%-p|%0.5C|%5C|%-5A|%05S|%5E|%-8R|%-3m'",
     MASK_NONE},
    {"-N -F '<\\t\\\\\\a\\e\\r\\v\\0\\n@@%%>'", MASK_NONE},
    {"-v -F '%t=%p'", MASK_NONE},
    {"-F %j", MASK_TST},
    {"-F %j --pretty", MASK_TST},
    {"-F %J", MASK_TST},
    {"-F %J --pretty", MASK_TST},
    {"-F '%I|%U|@Y-@m-@dT@H:@M:@S.@N|%20I|'", MASK_DIGITS},
};

static void mask_output(char *text, size_t len, int mask) {
  if (mask == MASK_DIGITS) {
    for (size_t i = 0; i < len; i++)
      if (text[i] >= '0' && text[i] <= '9') text[i] = '0';
    return;
  }
  if (mask != MASK_TST) return;
  for (char *p = text; (p = strstr(p, "\"tst\":")) != NULL;) {
    p += 6;
    if (*p == '\t') p++;
    if (*p++ != '"') continue;
    for (; *p && *p != '"'; p++)
      if (*p >= '0' && *p <= '9') *p = '0';
  }
}

/* Runs both subscribers at once with `common` and the case's options, and
 * compares what they print. Returns 1 when it is the same. */
static int outputs_match(const test_broker_t *b, scratch_t *s, const char *common,
                         const format_case_t *c, const char *before_each) {
  const char *outs[2] = {scratch_file(s, "uvmqtt.out"), scratch_file(s, "mosquitto.out")};
  const char *progs[2] = {tool("uvmqtt-sub"), "mosquitto_sub"};
  const char *ids[2] = {"fmt-uvmqtt", "fmt-mosquitto"};
  pid_t pids[2];
  char cmd[1024];
  if (before_each != NULL) {
    /* As make_session(), with the output dropped: a message whose
     * acknowledgement the last run did not finish comes again here. */
    for (int i = 0; i < 2; i++) {
      snprintf(cmd, sizeof cmd,
               "mosquitto_sub -h 127.0.0.1 -p %d -V mqttv5 -c -i %s -q 1 -t 'fmt/live/#' -E "
               "> /dev/null",
               b->port, ids[i]);
      ck_assert_int_eq(test_run(cmd, 10), 0);
    }
    ck_assert_int_eq(test_run(before_each, 20), 0);
  }
  for (int i = 0; i < 2; i++) {
    /* The case's options come last, so that they win over `common`. */
    snprintf(cmd, sizeof cmd, "exec %s -h 127.0.0.1 -p %d -V mqttv5 %s%s %s %s > %s 2> /dev/null",
             progs[i], b->port, before_each ? "-c -i " : "", before_each ? ids[i] : "", common,
             c->args, outs[i]);
    pids[i] = spawn(cmd, -1, -1);
  }
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(wait_exit(pids[i], 20000), 0);
  size_t len[2];
  char *text[2];
  for (int i = 0; i < 2; i++) {
    text[i] = slurp(outs[i], &len[i]);
    mask_output(text[i], len[i], c->mask);
  }
  int same = len[0] == len[1] && memcmp(text[0], text[1], len[0]) == 0 && len[0] > 0;
  if (!same)
    fprintf(stderr, "'%s' (%s):\n-- uvmqtt-sub, %zu bytes:\n%s\n-- mosquitto_sub, %zu bytes:\n%s\n",
            c->args, common, len[0], text[0], len[1], text[1]);
  free(text[0]);
  free(text[1]);
  s->used -= 2;
  return same;
}

/* Both subscribers ask for subscription identifier 9, so that %S and the
 * JSON show one; over MQTT 3.1.1 (the -V after the -V mqttv5 wins) there
 * are no properties at all. */
#define RETAINED_SUB      "-q 1 -D subscribe subscription-identifier 9 -t 'fmt/ret/#' -C 6 -W 10"
#define RETAINED_SUB_V311 "-V mqttv311 -q 1 -t 'fmt/ret/#' -C 6 -W 10"
#define LIVE_SUB          "-q 1 -D subscribe subscription-identifier 9 -t 'fmt/live/#' -C 3 -W 10"

/* Every case, first on retained messages (QoS 0 and 1, v5 properties,
 * binary and JSON payloads), then on live ones queued in a session (QoS 1
 * and 2, an empty payload). A case gets a second try only because the
 * broker counts message expiry down in whole seconds, and the two
 * subscribers may straddle a second. */
START_TEST(cli_sub_output_matches_mosquitto_sub) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *bin = scratch_file(&s, "binary.bin");
  /* A NUL too: cJSON, and so %j, stops the payload there; %p does not. */
  static const char binary[] = "\x01\x02\xff\x7f bytes \"\\ \xc3\xa9\0after";
  write_file(bin, binary, sizeof binary - 1);
  char cmd[2048], live[2048];
  const char *ret[] = {
      "-t fmt/ret/1 -q 0 -m 'plain text'",
      "-t fmt/ret/2 -q 1 -m 'quote \" back\\ slash\ttab'",
      "-t fmt/ret/3 -q 1 -D publish user-property k1 v1 -D publish user-property k1 v2 "
      "-D publish user-property other 'with space' -D publish content-type application/json "
      "-D publish response-topic fmt/reply -D publish correlation-data corr-1 "
      "-D publish payload-format-indicator 1 -D publish message-expiry-interval 3600 "
      "-m '{\"n\": [1, 2.50, -0, 1e3, 3000000000, 0.1], \"s\": \"\\u00e9\\/\", "
      "\"t\": true, \"z\": null, \"o\": {}, \"a\": [{\"d\": 1}, []]}'",
      /* JSON that cJSON reads its own way: bad hex digits in \u, and
       * a number between blanks. */
      "-t fmt/ret/5 -q 0 -m '[\"\\u00zz\", 1e400, 0.30000000000000004]'",
      "-t fmt/ret/6 -q 1 -m ' 12.5e-3 '",
      NULL,
  };
  for (int i = 0; ret[i] != NULL; i++) {
    snprintf(cmd, sizeof cmd, "mosquitto_pub -h 127.0.0.1 -p %d -V mqttv5 -r %s", b.port, ret[i]);
    ck_assert_int_eq(test_run(cmd, 10), 0);
  }
  snprintf(cmd, sizeof cmd, "mosquitto_pub -h 127.0.0.1 -p %d -r -t fmt/ret/4 -f %s", b.port, bin);
  ck_assert_int_eq(test_run(cmd, 10), 0);
  snprintf(live, sizeof live,
           "mosquitto_pub -h 127.0.0.1 -p %d -V mqttv5 -q 1 -t fmt/live/1 -m 'live one' "
           "-D publish user-property who live -D publish content-type text/plain "
           "-D publish response-topic fmt/back -D publish correlation-data 'c\"2' "
           "-D publish message-expiry-interval 600 && "
           "mosquitto_pub -h 127.0.0.1 -p %d -V mqttv5 -q 1 -t fmt/live/2 -n && "
           "mosquitto_pub -h 127.0.0.1 -p %d -V mqttv5 -q 2 -t fmt/live/3 -m '[1,{\"a\":\"b\"}]'",
           b.port, b.port, b.port);

  for (size_t i = 0; i < sizeof format_cases / sizeof format_cases[0]; i++) {
    const format_case_t *c = &format_cases[i];
    int ok = outputs_match(&b, &s, RETAINED_SUB, c, NULL) ||
             outputs_match(&b, &s, RETAINED_SUB, c, NULL);
    ck_assert_msg(ok, "retained messages: '%s' prints differently", c->args);
    ok = outputs_match(&b, &s, RETAINED_SUB_V311, c, NULL) ||
         outputs_match(&b, &s, RETAINED_SUB_V311, c, NULL);
    ck_assert_msg(ok, "retained messages over MQTT 3.1.1: '%s' prints differently", c->args);
    ok = outputs_match(&b, &s, LIVE_SUB, c, live) || outputs_match(&b, &s, LIVE_SUB, c, live);
    ck_assert_msg(ok, "live messages: '%s' prints differently", c->args);
  }
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* A format mosquitto_sub refuses is refused before connecting. */
START_TEST(cli_sub_bad_format_fails) {
  static const char *const formats[] = {"%z", "a%", "%5", "%-", "@", "a\\", "\\q"};
  int port = test_free_port();
  ck_assert_int_gt(port, 0);
  for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -t x -F '%s' 2> /dev/null", tool("uvmqtt-sub"),
             port, formats[i]);
    ck_assert_msg(test_run(cmd, 10) == 1, "-F '%s' should fail with status 1", formats[i]);
    snprintf(cmd, sizeof cmd, "mosquitto_sub -h 127.0.0.1 -p %d -t x -F '%s' 2> /dev/null", port,
             formats[i]);
    ck_assert_msg(test_run(cmd, 10) != 0, "mosquitto_sub accepts -F '%s'", formats[i]);
  }
}
END_TEST

/* -L ws://: uvmqtt-pub and uvmqtt-sub through a WebSocket relay in front of
 * Mosquitto (test/support/ws_relay.js), with a persistent session. */
START_TEST(cli_websocket_url) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *out = scratch_file(&s, "out.txt");
  make_session(&b, "mqttv311", "cli-ws", "ws/t", 1);
  test_node_t relay;
  char target[16];
  snprintf(target, sizeof target, "%d", b.port);
  const char *args[] = {target, NULL};
  ck_assert_msg(test_node_start(&relay, "ws_relay.js", args, 1) == 0, "relay did not start");
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s -L ws://127.0.0.1:%d/ws/t -q 1 -m 'over websocket'",
           tool("uvmqtt-pub"), relay.port);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(cmd, sizeof cmd,
           "%s -L ws://127.0.0.1:%d/ws/t --ws-path /mqtt -c -i cli-ws -q 1 -C 1 -W 10 > %s",
           tool("uvmqtt-sub"), relay.port, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out, "over websocket\n", 15);
  test_node_stop(&relay);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* ---- -C and -W -------------------------------------------------------------------------- */

START_TEST(cli_sub_count_and_timeout) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_UNLIMITED);
  const char *out = scratch_file(&s, "out.txt"), *err = scratch_file(&s, "err.txt");
  make_session(&b, "mqttv311", "cli-count", "count/+", 1);
  char cmd[1024];
  for (int i = 1; i <= 3; i++) {
    snprintf(cmd, sizeof cmd, "mosquitto_pub -h 127.0.0.1 -p %d -q 1 -t count/%d -m m%d", b.port, i,
             i);
    ck_assert_int_eq(test_run(cmd, 10), 0);
  }
  /* -C 2: the first two, then exit 0. Several -t, -v. */
  snprintf(cmd, sizeof cmd,
           "%s -h 127.0.0.1 -p %d -c -i cli-count -q 1 -t count/+ -t other/# -v -C 2 -W 10 > %s",
           tool("uvmqtt-sub"), b.port, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out, "count/1 m1\ncount/2 m2\n", 22);

  /* -W 1 with nothing arriving: exit 27 (as mosquitto_sub) after about a
   * second, saying so; --json counts what arrived. */
  long long t0 = test_now_ms();
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -t silent/t -W 1 --json > %s 2> %s",
           tool("uvmqtt-sub"), b.port, out, err);
  ck_assert_int_eq(test_run(cmd, 20), 27);
  long long took = test_now_ms() - t0;
  ck_assert_int_ge(took, 900);
  ck_assert_int_lt(took, 5000);
  assert_file_contains(err, "timed out");
  assert_file_eq(out, "{\"received\":0}\n", 15);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* ---- Failures ---------------------------------------------------------------------------- */

/* Nothing listens on the port: a non-zero exit and one line naming why. */
START_TEST(cli_wrong_port_fails) {
  scratch_t s;
  scratch_init(&s);
  const char *err = scratch_file(&s, "err.txt");
  int port = test_free_port();
  ck_assert_int_gt(port, 0);
  const char *tools[] = {"uvmqtt-pub", "uvmqtt-sub"};
  for (int i = 0; i < 2; i++) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -t nowhere/t %s 2> %s", tool(tools[i]), port,
             i == 0 ? "-m lost" : "", err);
    int status = test_run(cmd, 20);
    ck_assert_int_ne(status, 0);
    ck_assert_int_ne(status, -1);
    ck_assert_int_eq(count_lines(err), 1);
    assert_file_contains(err, "cannot connect");
    assert_file_contains(err, "ECONNREFUSED");
  }
  scratch_cleanup(&s);
}
END_TEST

/* A broker that refuses the connection: one line naming the reason code,
 * in each protocol version's numbering. */
START_TEST(cli_refused_names_reason) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  /* The later line wins over the launcher's "allow_anonymous true". */
  start_broker(&b, "allow_anonymous false\n");
  const char *err = scratch_file(&s, "err.txt");
  const char *expect[] = {"Not authorized (reason 0x05)", "Not authorized (reason 0x87)"};
  const char *versions[] = {"mqttv311", "mqttv5"};
  for (int i = 0; i < 2; i++) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -V %s -t refused/t -m x 2> %s",
             tool("uvmqtt-pub"), b.port, versions[i], err);
    ck_assert_int_eq(test_run(cmd, 20), 1);
    ck_assert_int_eq(count_lines(err), 1);
    assert_file_contains(err, "refused by the broker");
    assert_file_contains(err, expect[i]);
    snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -V %s -t refused/t 2> %s", tool("uvmqtt-sub"),
             b.port, versions[i], err);
    ck_assert_int_eq(test_run(cmd, 20), 1);
    assert_file_contains(err, expect[i]);
  }
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* Bad options: one line, status 1, no connection attempted. */
START_TEST(cli_bad_options_fail) {
  scratch_t s;
  scratch_init(&s);
  const char *err = scratch_file(&s, "err.txt");
  const char *cases[] = {
      "uvmqtt-pub -t a",                       /* no message */
      "uvmqtt-pub -t a -m x -q 3",             /* bad QoS */
      "uvmqtt-pub -t 'a/#' -m x",              /* wildcard in a topic name */
      "uvmqtt-pub -t a -m x -n",               /* two message sources */
      "uvmqtt-pub -t a -m x --delivery soon",  /* bad policy */
      "uvmqtt-sub -t a -c",                    /* persistent session without an id */
      "uvmqtt-sub -t a -V 311 -x 60",          /* v5 option with 3.1.1 */
      "uvmqtt-sub -t a --reconnect fixed",     /* bad policy */
      "uvmqtt-sub -L http://host/t",           /* bad URL */
      "uvmqtt-sub -t a --keyform der",         /* only PEM keys */
      "uvmqtt-sub -t a --tls-version tlsv1.1", /* too old */
      "uvmqtt-pub -t a -m x --cert c.crt",     /* a certificate without its key */
      "uvmqtt-sub -t a --ws-path /x",          /* a WebSocket path without ws:// */
      "uvmqtt-sub -L ws://h/t --ws-path x",    /* a path must start with '/' */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/tools/%s 2> %s", test_build_root(), cases[i], err);
    ck_assert_msg(test_run(cmd, 10) == 1, "'%s' should fail with status 1", cases[i]);
    ck_assert_msg(count_lines(err) == 1, "'%s' should print one line", cases[i]);
  }
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s --help > %s", tool("uvmqtt-sub"), err);
  ck_assert_int_eq(test_run(cmd, 10), 0);
  assert_file_contains(err, "-W SECS");
  assert_file_contains(err, "--cafile FILE");
  snprintf(cmd, sizeof cmd, "%s --help > %s", tool("uvmqtt-pub"), err);
  ck_assert_int_eq(test_run(cmd, 10), 0);
  assert_file_contains(err, "--insecure");
  assert_file_contains(err, "--drain");
  scratch_cleanup(&s);
}
END_TEST

/* --delivery drop with no broker: a quick non-zero exit. */
START_TEST(cli_delivery_drop_without_broker) {
  scratch_t s;
  scratch_init(&s);
  const char *err = scratch_file(&s, "err.txt");
  int port = test_free_port();
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -t drop/t -q 1 -m gone --delivery drop 2> %s",
           tool("uvmqtt-pub"), port, err);
  long long t0 = test_now_ms();
  int status = test_run(cmd, 20);
  ck_assert_int_ne(status, 0);
  ck_assert_int_ne(status, -1);
  ck_assert_int_lt(test_now_ms() - t0, 3000);
  assert_file_contains(err, "cannot connect");
  scratch_cleanup(&s);
}
END_TEST

/* --delivery deadline:2000 with the broker down for 5 s: the message
 * expires, uvmqtt-pub says so and fails, and after the broker returns the
 * message is not delivered (a marker published later arrives first). */
START_TEST(cli_delivery_deadline_expires) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_PERSISTENT);
  const char *out = scratch_file(&s, "out.txt"), *err = scratch_file(&s, "err.txt");
  make_session(&b, "mqttv311", "cli-deadline", "deadline/t", 1);
  ck_assert_int_eq(test_broker_stop(&b), 0);
  long long down_at = test_now_ms();

  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "%s -h 127.0.0.1 -p %d -t deadline/t -q 1 -m too-late --delivery deadline:2000 "
           "--reconnect fixed:100 2> %s",
           tool("uvmqtt-pub"), b.port, err);
  long long t0 = test_now_ms();
  int status = test_run(cmd, 20);
  long long took = test_now_ms() - t0;
  ck_assert_int_ne(status, 0);
  ck_assert_int_ne(status, -1);
  ck_assert_int_ge(took, 1900);
  ck_assert_int_lt(took, 4500);
  assert_file_contains(err, "message 1 not delivered");
  assert_file_contains(err, "UVMQTT_EEXPIRED");

  long long wait = down_at + 5000 - test_now_ms();
  if (wait > 0) test_sleep_ms((long)wait);
  ck_assert_int_eq(test_broker_restart(&b), 0);
  snprintf(cmd, sizeof cmd, "mosquitto_pub -h 127.0.0.1 -p %d -q 1 -t deadline/t -m marker",
           b.port);
  ck_assert_int_eq(test_run(cmd, 10), 0);
  snprintf(cmd, sizeof cmd,
           "%s -h 127.0.0.1 -p %d -c -i cli-deadline -q 1 -t deadline/t -C 1 -W 10 > %s",
           tool("uvmqtt-sub"), b.port, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out, "marker\n", 7);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* ---- Broker restarts ------------------------------------------------------------------------ */

/* How many distinct numbers 1..max the file holds, one per line; a line
 * that is not such a number fails the test. */
static int distinct_numbers(const char *path, int max) {
  unsigned char *seen = calloc((size_t)max + 1, 1);
  ck_assert_ptr_nonnull(seen);
  char *text = slurp(path, NULL);
  int distinct = 0;
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *end;
    long n = strtol(line, &end, 10);
    ck_assert_msg(*end == '\0' && n >= 1 && n <= max, "unexpected line '%s'", line);
    if (!seen[n]) distinct++;
    seen[n] = 1;
  }
  free(text);
  free(seen);
  return distinct;
}

static int wait_distinct(const char *path, int at_least, int max, long timeout_ms) {
  long long deadline = test_now_ms() + timeout_ms;
  int n;
  while ((n = distinct_numbers(path, max)) < at_least && test_now_ms() < deadline)
    test_sleep_ms(20);
  return n;
}

static void write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    ck_assert_int_gt(n, 0);
    data += n;
    len -= (size_t)n;
  }
}

/* 2000 numbered QoS 1 lines go through uvmqtt-pub --delivery forever -l
 * while Mosquitto (persistent) restarts three times; a persistent
 * uvmqtt-sub must end up with every one of them (duplicates allowed). The
 * lines are fed in four parts, the next part written while the broker is
 * down, so each restart lands in the middle of the run. */
START_TEST(cli_restarts_lose_nothing) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  signal(SIGPIPE, SIG_IGN);
  start_broker(&b, BROKER_PERSISTENT);
  const char *out = scratch_file(&s, "out.txt"), *sub_err = scratch_file(&s, "sub_err.txt");
  const char *pub_err = scratch_file(&s, "pub_err.txt");
  make_session(&b, "mqttv311", "cli-restart", "restart/t", 1);

  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "exec %s -h 127.0.0.1 -p %d -c -i cli-restart -q 1 -t restart/t "
           "--reconnect fixed:100 > %s 2> %s",
           tool("uvmqtt-sub"), b.port, out, sub_err);
  pid_t sub = spawn(cmd, -1, -1);

  /* Close-on-exec, so the brokers started later do not hold the write end
   * open and uvmqtt-pub sees the end of its input. */
  int pipefd[2];
  ck_assert_int_eq(pipe2(pipefd, O_CLOEXEC), 0);
  snprintf(cmd, sizeof cmd,
           "exec %s -h 127.0.0.1 -p %d -q 1 -t restart/t -l --delivery forever "
           "--reconnect backoff:50:500 2> %s",
           tool("uvmqtt-pub"), b.port, pub_err);
  pid_t pub = spawn(cmd, pipefd[0], pipefd[1]);
  close(pipefd[0]);

  const int part = LINES_RESTART / (RESTARTS + 1);
  for (int r = 0; r <= RESTARTS; r++) {
    size_t len;
    char *lines = numbered_lines("", r * part + 1, (r + 1) * part, &len);
    write_all(pipefd[1], lines, len);
    free(lines);
    if (r == RESTARTS) break;
    if (r > 0) ck_assert_int_eq(test_broker_restart(&b), 0);
    /* Let half of this part through, then pull the broker away. */
    int want = r * part + part / 2;
    ck_assert_int_ge(wait_distinct(out, want, LINES_RESTART, 30000), want);
    ck_assert_int_eq(test_broker_stop(&b), 0);
    test_sleep_ms(200);
  }
  ck_assert_int_eq(test_broker_restart(&b), 0);
  close(pipefd[1]);

  int pub_status = wait_exit(pub, 60000);
  if (pub_status != 0) show_file("uvmqtt-pub stderr", pub_err);
  ck_assert_int_eq(pub_status, 0);
  int got = wait_distinct(out, LINES_RESTART, LINES_RESTART, 30000);
  ck_assert_int_eq(stop_process(sub, 10000), 0);
  if (got != LINES_RESTART) show_file("uvmqtt-sub stderr", sub_err);
  ck_assert_int_eq(got, LINES_RESTART);
  ck_assert_int_eq(distinct_numbers(out, LINES_RESTART), LINES_RESTART);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* ---- TLS ------------------------------------------------------------------------------------ */

/* A file in the scratch directory, in one of a few rotating buffers (a
 * command line names several at once). */
static const char *in_scratch(const scratch_t *s, const char *name) {
  static char bufs[8][192];
  static unsigned next;
  char *b = bufs[next++ % 8];
  char dir[sizeof s->dir];
  memcpy(dir, s->dir, sizeof dir);
  snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
  return b;
}

static void make_certs(const scratch_t *s) {
  int status = test_make_certs(s->dir);
  if (status != 0) show_file("certificate script", in_scratch(s, "make.log"));
  ck_assert_msg(status == 0, "making the certificates failed");
}

static int port_accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons((uint16_t)port);
  int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  close(fd);
  return ok;
}

/* The TLS listeners of one broker, besides its plaintext port. */
typedef struct {
  int tls;   /* the server certificate */
  int mtls;  /* the same, and a client certificate is required */
  int wrong; /* a valid certificate for wrong.example */
} tls_ports_t;

static int fresh_port(const int *taken, int n) {
  for (int tries = 0; tries < 50; tries++) {
    int p = test_free_port();
    int clash = p <= 0;
    for (int i = 0; i < n && !clash; i++)
      clash = taken[i] == p;
    if (!clash) return p;
  }
  ck_abort_msg("no free port");
  return -1;
}

static size_t tls_listener(char *out, size_t cap, const scratch_t *s, int port,
                           const char *certname, const char *more) {
  char crt[64], key[64];
  snprintf(crt, sizeof crt, "%s.crt", certname);
  snprintf(key, sizeof key, "%s.key", certname);
  int n = snprintf(out, cap, "listener %d 127.0.0.1\ncafile %s\n", port, in_scratch(s, "ca.crt"));
  n += snprintf(out + n, cap - (size_t)n, "certfile %s\n", in_scratch(s, crt));
  n += snprintf(out + n, cap - (size_t)n, "keyfile %s\n%s", in_scratch(s, key), more);
  return (size_t)n;
}

/* Makes the certificates in s and starts a broker with the three TLS
 * listeners; waits (bounded) until they accept. */
static void start_tls_broker(test_broker_t *b, const scratch_t *s, tls_ports_t *p) {
  make_certs(s);
  int taken[3];
  for (int i = 0; i < 3; i++)
    taken[i] = fresh_port(taken, i);
  p->tls = taken[0];
  p->mtls = taken[1];
  p->wrong = taken[2];
  char extra[2048];
  size_t n = 0;
  n += tls_listener(extra + n, sizeof extra - n, s, p->tls, "server", "");
  n +=
      tls_listener(extra + n, sizeof extra - n, s, p->mtls, "server", "require_certificate true\n");
  n += tls_listener(extra + n, sizeof extra - n, s, p->wrong, "wronghost", "");
  ck_assert_uint_lt(n, sizeof extra);
  start_broker(b, extra);
  for (int i = 0; i < 3; i++) {
    long long deadline = test_now_ms() + 5000;
    while (!port_accepts(taken[i]) && test_now_ms() < deadline)
      test_sleep_ms(20);
    ck_assert_msg(port_accepts(taken[i]), "TLS listener on port %d did not open", taken[i]);
  }
}

/* Starts uvmqtt-sub with `args` (output to out, debug to err) and waits,
 * bounded, until it has subscribed to tls/t. */
static pid_t spawn_subscribed(const char *args, const char *out, const char *err) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "exec %s %s -t tls/t -C 1 -W 30 -d > %s 2> %s", tool("uvmqtt-sub"),
           args, out, err);
  pid_t pid = spawn(cmd, -1, -1);
  if (!wait_file_contains(err, "subscribed to 'tls/t'", 15000)) {
    show_file("uvmqtt-sub stderr", err);
    ck_abort_msg("uvmqtt-sub did not subscribe");
  }
  return pid;
}

static void mosquitto_pub_tls(const scratch_t *s, int port, const char *message) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "mosquitto_pub --cafile %s -h localhost -p %d -t tls/t -q 1 -m %s",
           in_scratch(s, "ca.crt"), port, message);
  ck_assert_int_eq(test_run(cmd, 20), 0);
}

/* uvmqtt-sub `args` must fail at once (status 1, not a -W timeout) with
 * one line on stderr that holds `cause` and `name`. */
static void sub_fails_with(const char *args, const char *err, const char *cause, const char *name) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s %s -t tls/t -C 1 -W 20 2> %s", tool("uvmqtt-sub"), args, err);
  long long t0 = test_now_ms();
  int status = test_run(cmd, 30);
  if (status != 1 || count_lines(err) != 1) show_file("uvmqtt-sub stderr", err);
  ck_assert_int_eq(status, 1);
  ck_assert_int_lt(test_now_ms() - t0, 10000);
  ck_assert_int_eq(count_lines(err), 1);
  assert_file_contains(err, cause);
  assert_file_contains(err, name);
}

/* uvmqtt-sub over TLS with --cafile gets what mosquitto_pub sends over
 * TLS; an unrelated CA and a certificate for another host name are
 * refused, each named on one line, even with --reconnect (retrying cannot
 * fix them); --insecure connects to the wrong host name and warns. */
START_TEST(cli_tls_sub_receives_with_cafile) {
  test_broker_t b;
  tls_ports_t port;
  scratch_t s;
  scratch_init(&s);
  start_tls_broker(&b, &s, &port);
  const char *out = scratch_file(&s, "out.txt"), *err = scratch_file(&s, "err.txt");
  char args[512];

  snprintf(args, sizeof args, "--cafile %s -h localhost -p %d", in_scratch(&s, "ca.crt"), port.tls);
  pid_t sub = spawn_subscribed(args, out, err);
  mosquitto_pub_tls(&s, port.tls, "hello");
  int status = wait_exit(sub, 30000);
  if (status != 0) show_file("uvmqtt-sub stderr", err);
  ck_assert_int_eq(status, 0);
  assert_file_eq(out, "hello\n", 6);
  assert_file_contains(err, "connected to mqtts://localhost:");

  snprintf(args, sizeof args, "--cafile %s -h localhost -p %d", in_scratch(&s, "other.crt"),
           port.tls);
  sub_fails_with(args, err, "not issued by a trusted CA", "UVMQTT_ETLSUNKNOWNCA");
  snprintf(args, sizeof args, "--cafile %s -h localhost -p %d --reconnect fixed:100",
           in_scratch(&s, "other.crt"), port.tls);
  sub_fails_with(args, err, "not issued by a trusted CA", "UVMQTT_ETLSUNKNOWNCA");
  snprintf(args, sizeof args, "--cafile %s -h localhost -p %d", in_scratch(&s, "ca.crt"),
           port.wrong);
  sub_fails_with(args, err, "does not match the host name", "UVMQTT_ETLSHOSTNAME");

  snprintf(args, sizeof args, "--cafile %s --insecure -h localhost -p %d",
           in_scratch(&s, "other.crt"), port.wrong);
  sub = spawn_subscribed(args, out, err);
  mosquitto_pub_tls(&s, port.tls, "insecure");
  status = wait_exit(sub, 30000);
  if (status != 0) show_file("uvmqtt-sub stderr", err);
  ck_assert_int_eq(status, 0);
  assert_file_eq(out, "insecure\n", 9);
  assert_file_contains(err, "verification of the server certificate and host name is off");
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* uvmqtt-pub over TLS: the mqtts:// URL form with TLS 1.3 and ALPN, a
 * client certificate where the broker requires one (and a refusal without
 * it), a TLS option that cannot be loaded, and 8883 as the default port.
 * A persistent session on the plaintext port collects what arrives. */
START_TEST(cli_tls_pub_url_and_client_cert) {
  test_broker_t b;
  tls_ports_t port;
  scratch_t s;
  scratch_init(&s);
  start_tls_broker(&b, &s, &port);
  const char *out = scratch_file(&s, "out.txt"), *err = scratch_file(&s, "err.txt");
  const char *ca = in_scratch(&s, "ca.crt");
  make_session(&b, "mqttv311", "cli-tls", "tls/t", 1);
  char cmd[1024];

  snprintf(cmd, sizeof cmd,
           "%s -L mqtts://localhost:%d/tls/t --cafile %s --tls-version tlsv1.3 --tls-alpn mqtt "
           "--tls-alpn x-mqtt -q 1 -m via-url 2> %s",
           tool("uvmqtt-pub"), port.tls, ca, err);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(cmd, sizeof cmd,
           "%s -h localhost -p %d --cafile %s --cert %s --key %s --keyform pem -t tls/t -q 1 "
           "-m with-cert 2> %s",
           tool("uvmqtt-pub"), port.mtls, ca, in_scratch(&s, "client.crt"),
           in_scratch(&s, "client.key"), err);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  snprintf(cmd, sizeof cmd, "%s -h localhost -p %d --cafile %s -t tls/t -q 1 -m refused 2> %s",
           tool("uvmqtt-pub"), port.mtls, ca, err);
  ck_assert_int_eq(test_run(cmd, 20), 1);
  assert_file_contains(err, "UVMQTT_ETLSPEERCERT");
  snprintf(cmd, sizeof cmd, "%s -h localhost -p %d --cafile %s -t tls/t -m x 2> %s",
           tool("uvmqtt-pub"), port.tls, in_scratch(&s, "missing.crt"), err);
  ck_assert_int_eq(test_run(cmd, 20), 1);
  ck_assert_int_eq(count_lines(err), 1);
  assert_file_contains(err, "UVMQTT_ETLSCONFIG");
  /* No -p: TLS goes to 8883 (whatever answers there, if anything). */
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 --cafile %s -t tls/t -m x -d 2> %s",
           tool("uvmqtt-pub"), ca, err);
  test_run(cmd, 20);
  assert_file_contains(err, "connecting to mqtts://127.0.0.1:8883 ");

  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d -c -i cli-tls -q 1 -t tls/t -C 2 -W 10 > %s",
           tool("uvmqtt-sub"), b.port, out);
  ck_assert_int_eq(test_run(cmd, 20), 0);
  assert_file_eq(out, "via-url\nwith-cert\n", 18);
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* ---- Store ------------------------------------------------------------------------------------
 */

/* 5000 QoS 1 lines go into uvmqtt-pub --store while the broker is down;
 * once they are all stored the publisher is killed with SIGKILL. The
 * broker comes back (persistent, so the subscriber's session survives),
 * and uvmqtt-pub --drain delivers every line from the store and exits 0;
 * a second --drain finds the store empty. */
START_TEST(cli_store_drain_after_kill) {
  test_broker_t b;
  scratch_t s;
  scratch_init(&s);
  start_broker(&b, BROKER_PERSISTENT);
  const char *in = scratch_file(&s, "in.txt"), *out = scratch_file(&s, "out.txt");
  const char *sub_err = scratch_file(&s, "sub_err.txt"), *pub_err = scratch_file(&s, "pub_err.txt");
  const char *drain_err = scratch_file(&s, "drain_err.txt"), *store = scratch_file(&s, "store");
  size_t len;
  char *lines = numbered_lines("", 1, LINES_DRAIN, &len);
  write_file(in, lines, len);
  free(lines);

  /* The subscriber makes its session, then stays through the restart. */
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "exec %s -h 127.0.0.1 -p %d -c -i cli-drain-sub -q 1 -t drain/t "
           "--reconnect fixed:100 -d > %s 2> %s",
           tool("uvmqtt-sub"), b.port, out, sub_err);
  pid_t sub = spawn(cmd, -1, -1);
  ck_assert_msg(wait_file_contains(sub_err, "subscribed to 'drain/t'", 15000),
                "uvmqtt-sub did not subscribe");
  ck_assert_int_eq(test_broker_stop(&b), 0);

  snprintf(cmd, sizeof cmd,
           "exec %s -h 127.0.0.1 -p %d --store %s -i cli-drain --delivery forever -q 1 -l "
           "-t drain/t -d < %s 2> %s",
           tool("uvmqtt-pub"), b.port, store, in, pub_err);
  pid_t pub = spawn(cmd, -1, -1);
  /* The store confirms in order: the last line stored means all are. */
  char last[64];
  snprintf(last, sizeof last, "line %d stored\n", LINES_DRAIN);
  int all_stored = wait_file_contains(pub_err, last, 60000);
  if (!all_stored) show_file("uvmqtt-pub stderr", pub_err);
  ck_assert_msg(all_stored, "the lines were not all stored");
  int status;
  ck_assert_int_eq(waitpid(pub, &status, WNOHANG), 0); /* still trying to deliver */
  ck_assert_int_eq(kill(pub, SIGKILL), 0);
  ck_assert_int_eq(waitpid(pub, &status, 0), pub);
  ck_assert(WIFSIGNALED(status));
  ck_assert_int_eq(count_lines(out), 0);

  ck_assert_int_eq(test_broker_restart(&b), 0);
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d --store %s -i cli-drain --drain -W 60 -d 2> %s",
           tool("uvmqtt-pub"), b.port, store, drain_err);
  status = test_run(cmd, 90);
  if (status != 0) show_file("uvmqtt-pub --drain stderr", drain_err);
  ck_assert_int_eq(status, 0);
  char holds[64];
  snprintf(holds, sizeof holds, "the store holds %d messages", LINES_DRAIN);
  assert_file_contains(drain_err, holds);
  /* Each restored message reported its own acknowledgement. */
  snprintf(holds, sizeof holds, "drained %d messages", LINES_DRAIN);
  assert_file_contains(drain_err, holds);

  int got = wait_distinct(out, LINES_DRAIN, LINES_DRAIN, 30000);
  ck_assert_int_eq(stop_process(sub, 10000), 0);
  if (got != LINES_DRAIN) show_file("uvmqtt-sub stderr", sub_err);
  ck_assert_int_eq(got, LINES_DRAIN);

  /* Delivered messages are forgotten: nothing is left to drain. */
  ck_assert_int_eq(test_run(cmd, 30), 0);
  assert_file_contains(drain_err, "the store holds 0 messages");
  test_broker_cleanup(&b);
  scratch_cleanup(&s);
}
END_TEST

/* --drain with an empty store exits 0 at once, broker or not; --store
 * needs a fixed client id, and --drain needs --store. */
START_TEST(cli_store_drain_empty_and_needs_id) {
  scratch_t s;
  scratch_init(&s);
  const char *err = scratch_file(&s, "err.txt"), *store = scratch_file(&s, "store");
  int port = test_free_port();
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d --store %s -i cli-empty --drain 2> %s",
           tool("uvmqtt-pub"), port, store, err);
  long long t0 = test_now_ms();
  ck_assert_int_eq(test_run(cmd, 20), 0);
  ck_assert_int_lt(test_now_ms() - t0, 2000);
  ck_assert_int_eq(count_lines(err), 0);

  /* A run that gives up (-W) keeps what it could not deliver in the store,
   * and a --drain that cannot reach the broker fails, keeping it too. */
  snprintf(
      cmd, sizeof cmd,
      "%s -h 127.0.0.1 -p %d --store %s -i cli-empty -t t -q 1 -m kept --delivery forever -W 1 "
      "2> %s",
      tool("uvmqtt-pub"), port, store, err);
  ck_assert_int_eq(test_run(cmd, 20), 27);
  assert_file_contains(err, "timed out after 1 s with 1 message not delivered");
  snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d --store %s -i cli-empty --drain -d 2> %s",
           tool("uvmqtt-pub"), port, store, err);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(test_run(cmd, 20), 1);
    assert_file_contains(err, "the store holds 1 message from an earlier run");
    assert_file_contains(err, "ECONNREFUSED");
  }

  const char *cases[][2] = {
      {"--store %s -t t -m x", "--store needs a fixed client id (-i ID)"},
      {"--store %s -I cli -t t -m x", "--store needs a fixed client id (-i ID)"},
      {"--drain -i cli -t t -m x", "--drain needs --store DIR"},
      {"--store %s -i cli --drain -m x", "--drain publishes nothing new"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char args[512];
    snprintf(args, sizeof args, cases[i][0], store);
    snprintf(cmd, sizeof cmd, "%s -h 127.0.0.1 -p %d %s 2> %s", tool("uvmqtt-pub"), port, args,
             err);
    ck_assert_msg(test_run(cmd, 10) == 1, "'%s' should fail with status 1", args);
    ck_assert_int_eq(count_lines(err), 1);
    assert_file_contains(err, cases[i][1]);
  }
  scratch_cleanup(&s);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("cli");
  TCase *interop = tcase_create("interop");
  tcase_set_timeout(interop, 120);
  tcase_add_test(interop, cli_sub_receives_mosquitto_pub_lines_v311);
  tcase_add_test(interop, cli_sub_receives_mosquitto_pub_lines_v5);
  tcase_add_test(interop, cli_pub_lines_reach_mosquitto_sub_v311);
  tcase_add_test(interop, cli_pub_lines_reach_mosquitto_sub_v5);
  tcase_add_test(interop, cli_pub_lines_from_pipe);
  tcase_add_test(interop, cli_websocket_url);
  tcase_add_test(interop, cli_mqtt31_both_ways);
  suite_add_tcase(s, interop);

  TCase *single = tcase_create("single");
  tcase_set_timeout(single, 60);
  tcase_add_test(single, cli_pub_single_message);
  tcase_add_test(single, cli_pub_null_message);
  tcase_add_test(single, cli_bind_address);
  tcase_add_test(single, cli_pub_file_and_stdin);
  tcase_add_test(single, cli_pub_retained);
  tcase_add_test(single, cli_pub_v5_properties_and_url);
  tcase_add_test(single, cli_sub_count_and_timeout);
  suite_add_tcase(s, single);

  TCase *output = tcase_create("output");
  tcase_set_timeout(output, 120);
  tcase_add_test(output, cli_sub_output_matches_mosquitto_sub);
  tcase_add_test(output, cli_sub_bad_format_fails);
  suite_add_tcase(s, output);

  TCase *failures = tcase_create("failures");
  tcase_set_timeout(failures, 60);
  tcase_add_test(failures, cli_wrong_port_fails);
  tcase_add_test(failures, cli_refused_names_reason);
  tcase_add_test(failures, cli_bad_options_fail);
  tcase_add_test(failures, cli_delivery_drop_without_broker);
  tcase_add_test(failures, cli_delivery_deadline_expires);
  suite_add_tcase(s, failures);

  TCase *tls = tcase_create("tls");
  tcase_set_timeout(tls, 120);
  tcase_add_test(tls, cli_tls_sub_receives_with_cafile);
  tcase_add_test(tls, cli_tls_pub_url_and_client_cert);
  suite_add_tcase(s, tls);

  TCase *store = tcase_create("store");
  tcase_set_timeout(store, 180);
  tcase_add_test(store, cli_store_drain_after_kill);
  tcase_add_test(store, cli_store_drain_empty_and_needs_id);
  suite_add_tcase(s, store);

  TCase *restarts = tcase_create("restarts");
  tcase_set_timeout(restarts, 180);
  tcase_add_test(restarts, cli_restarts_lose_nothing);
  suite_add_tcase(s, restarts);
  return s;
}
