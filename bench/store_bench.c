/* Message store throughput: how many messages per second go through a store
 * the way the client uses it (append, then update to SENT, then DONE once
 * acknowledged), for each sync policy of the file store, next to the
 * in-memory case (no store: the packet is only copied into memory).
 *
 * Usage: uvmqtt-store-bench [--dir DIR] [--count N] [--window W] [--json]
 * A window of W appends waits for its `done` at a time, as W publishes in
 * flight would. Each case stops after N messages or 10 s, whichever comes
 * first. Prints a table; with --json the last line is one JSON object. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "uvmqtt.h"

#define DEFAULT_COUNT  50000u
#define DEFAULT_WINDOW 256u
#define CASE_LIMIT_NS  (10ull * 1000 * 1000 * 1000)
#define TOPIC          "bench/store"

/* ---- The in-memory case: a copy and a done from the next loop turn -------- */

typedef struct {
  uv_idle_t idle;
  uvmqtt_store_done_cb *done;
  void **args;
  uint8_t **copies;
  uvmqtt_store_done_cb *run_done; /* the batch being reported */
  void **run_args;
  size_t n, cap;
  uvmqtt_store_closed_cb closed_cb;
  void *closed_arg;
} mem_store_t;

/* Reports a batch from its own arrays: its callbacks append the next one. */
static void mem_flush(uv_idle_t *idle) {
  mem_store_t *m = idle->data;
  size_t n = m->n;
  uvmqtt_store_done_cb *d = m->done;
  void **a = m->args;
  m->done = m->run_done;
  m->args = m->run_args;
  m->run_done = d;
  m->run_args = a;
  m->n = 0;
  uv_idle_stop(idle);
  for (size_t i = 0; i < n; i++) {
    free(m->copies[i]);
    m->copies[i] = NULL;
  }
  for (size_t i = 0; i < n; i++)
    d[i](a[i], 0);
}

static int mem_append(void *state, const uvmqtt_store_record_t *rec, uvmqtt_store_done_cb done,
                      void *arg) {
  mem_store_t *m = state;
  if (m->n == m->cap) return UVMQTT_EQUEUEFULL;
  m->copies[m->n] = malloc(rec->len);
  if (m->copies[m->n] == NULL) return UVMQTT_ENOMEM;
  memcpy(m->copies[m->n], rec->packet, rec->len);
  m->done[m->n] = done;
  m->args[m->n] = arg;
  m->n++;
  uv_idle_start(&m->idle, mem_flush);
  return 0;
}

/* The workload asks for no confirmation of phase changes. */
static int mem_update(void *state, uint64_t seq, uint8_t phase, uint16_t packet_id,
                      uvmqtt_store_done_cb done, void *arg) {
  (void)state;
  (void)seq;
  (void)phase;
  (void)packet_id;
  (void)arg;
  return done == NULL ? 0 : UVMQTT_EINVAL;
}

static void mem_free(mem_store_t *m) {
  free(m->done);
  free(m->args);
  free(m->run_done);
  free(m->run_args);
  free(m->copies);
  free(m);
}

static void mem_closed(uv_handle_t *h) {
  mem_store_t *m = h->data;
  uvmqtt_store_closed_cb cb = m->closed_cb;
  void *arg = m->closed_arg;
  mem_free(m);
  if (cb) cb(arg);
}

static void mem_close(void *state, uvmqtt_store_closed_cb cb, void *arg) {
  mem_store_t *m = state;
  m->closed_cb = cb;
  m->closed_arg = arg;
  uv_close((uv_handle_t *)&m->idle, mem_closed);
}

static int mem_store_new(uv_loop_t *loop, size_t window, uvmqtt_store_t *out) {
  mem_store_t *m = calloc(1, sizeof *m);
  if (m == NULL) return UVMQTT_ENOMEM;
  m->cap = window;
  m->done = calloc(window, sizeof *m->done);
  m->args = calloc(window, sizeof *m->args);
  m->run_done = calloc(window, sizeof *m->run_done);
  m->run_args = calloc(window, sizeof *m->run_args);
  m->copies = calloc(window, sizeof *m->copies);
  if (m->done == NULL || m->args == NULL || m->run_done == NULL || m->run_args == NULL ||
      m->copies == NULL) {
    mem_free(m);
    return UVMQTT_ENOMEM;
  }
  uv_idle_init(loop, &m->idle);
  m->idle.data = m;
  memset(out, 0, sizeof *out);
  out->state = m;
  out->append = mem_append;
  out->update = mem_update;
  out->close = mem_close;
  return 0;
}

/* ---- The workload ----------------------------------------------------------------- */

typedef struct {
  uv_loop_t *loop;
  uvmqtt_store_t *store;
  const uint8_t *packet;
  uint32_t len;
  uint64_t count;
  uint64_t issued;
  uint64_t finished;
  uint64_t start_ns;
  uint64_t limit_ns;
  uint32_t window;
  uint32_t in_flight;
  int error;
  int closed;
} run_t;

static void issue(run_t *r);

static void on_done(void *arg, int status) {
  run_t *r = arg;
  r->in_flight--;
  if (status != 0 && r->error == 0) r->error = status;
  /* Sent, then acknowledged: the two updates a QoS 1 message brings. */
  uint64_t seq = r->finished++;
  if (r->error == 0) {
    r->store->update(r->store->state, seq, UVMQTT_STORE_SENT, (uint16_t)(seq % 65535 + 1), NULL,
                     NULL);
    r->store->update(r->store->state, seq, UVMQTT_STORE_DONE, 0, NULL, NULL);
  }
  issue(r);
}

static void issue(run_t *r) {
  if (r->error != 0 || uv_hrtime() - r->start_ns > r->limit_ns) return;
  while (r->in_flight < r->window && r->issued < r->count) {
    uvmqtt_store_record_t rec;
    memset(&rec, 0, sizeof rec);
    rec.seq = r->issued;
    rec.packet = r->packet;
    rec.len = r->len;
    rec.policy = UVMQTT_DELIVERY_UNTIL_DELIVERED;
    int rc = r->store->append(r->store->state, &rec, on_done, r);
    if (rc != 0) {
      r->error = rc;
      return;
    }
    r->issued++;
    r->in_flight++;
  }
}

static void on_closed(void *arg) {
  ((run_t *)arg)->closed = 1;
}

/* An encoded QoS 1 PUBLISH with `payload` bytes, as the client stores it. */
static uint8_t *make_packet(uint32_t payload, uint32_t *len) {
  uint32_t topic = (uint32_t)strlen(TOPIC);
  uint32_t rem = 2 + topic + 2 + payload;
  uint8_t *p = malloc(rem + 5);
  if (p == NULL) return NULL;
  uint32_t n = 0;
  p[n++] = 0x32;
  for (uint32_t v = rem;;) {
    uint8_t b = v & 0x7f;
    v >>= 7;
    p[n++] = (uint8_t)(b | (v ? 0x80 : 0));
    if (!v) break;
  }
  p[n++] = 0;
  p[n++] = (uint8_t)topic;
  memcpy(p + n, TOPIC, topic);
  n += topic;
  p[n++] = 0;
  p[n++] = 1;
  memset(p + n, 'x', payload);
  *len = n + payload;
  return p;
}

typedef struct {
  const char *name;
  int file; /* 0: in memory */
  uint8_t sync;
} case_t;

typedef struct {
  const char *name;
  uint32_t payload;
  uint64_t messages;
  double seconds;
  double msgs_per_s;
  double bytes_per_s;
  uint64_t file_bytes;
  int error;
} result_t;

static int run_case(const case_t *c, uint32_t payload, const char *dir, uint64_t count,
                    uint32_t window, result_t *res) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  uvmqtt_store_t mem;
  uvmqtt_store_t *store = &mem;
  char id[64];
  snprintf(id, sizeof id, "bench-%s-%u-%ld", c->name, (unsigned)payload, (long)getpid());
  int rc = 0;
  if (c->file) {
    uvmqtt_file_store_opts_t o;
    memset(&o, 0, sizeof o);
    o.sync = c->sync;
    rc = uvmqtt_file_store_open(&loop, dir, id, &o, &store);
  } else {
    rc = mem_store_new(&loop, window, &mem);
  }
  if (rc != 0) {
    fprintf(stderr, "uvmqtt-store-bench: %s: %s\n", c->name, uvmqtt_strerror(rc));
    uv_loop_close(&loop);
    return rc;
  }
  run_t r;
  memset(&r, 0, sizeof r);
  r.loop = &loop;
  r.store = store;
  r.packet = make_packet(payload, &r.len);
  r.count = count;
  r.window = window;
  r.limit_ns = CASE_LIMIT_NS;
  r.start_ns = uv_hrtime();
  issue(&r);
  uv_run(&loop, UV_RUN_DEFAULT);
  uint64_t elapsed = uv_hrtime() - r.start_ns;
  store->close(store->state, on_closed, &r);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  if (c->file) {
    char path[512];
    if (uvmqtt_file_store_path(dir, id, path, sizeof path) > 0) {
      FILE *f = fopen(path, "rb");
      if (f != NULL) {
        fseek(f, 0, SEEK_END);
        res->file_bytes = (uint64_t)ftell(f);
        fclose(f);
      }
      unlink(path);
      snprintf(path + strlen(path) - 4, 6, ".lock");
      unlink(path);
    }
  }
  free((void *)r.packet);
  res->name = c->name;
  res->payload = payload;
  res->messages = r.finished;
  res->seconds = (double)elapsed / 1e9;
  res->msgs_per_s = (double)r.finished / res->seconds;
  res->bytes_per_s = res->msgs_per_s * payload;
  res->error = r.error;
  return r.error;
}

int main(int argc, char **argv) {
  const char *dir = NULL;
  uint64_t count = DEFAULT_COUNT;
  uint32_t window = DEFAULT_WINDOW;
  int json = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
      dir = argv[++i];
    else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
      count = strtoull(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc)
      window = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--json") == 0)
      json = 1;
    else {
      fprintf(stderr, "usage: uvmqtt-store-bench [--dir DIR] [--count N] [--window W] [--json]\n");
      return 2;
    }
  }
  if (count == 0 || window == 0) {
    fprintf(stderr, "uvmqtt-store-bench: --count and --window must be positive\n");
    return 2;
  }
  char tmp[] = "/tmp/uvmqtt-store-bench-XXXXXX";
  int own_dir = dir == NULL;
  if (own_dir && (dir = mkdtemp(tmp)) == NULL) {
    perror("uvmqtt-store-bench: mkdtemp");
    return 1;
  }
  static const case_t cases[] = {
      {"memory", 0, 0},
      {"never", 1, UVMQTT_FILE_SYNC_NEVER},
      {"interval", 1, UVMQTT_FILE_SYNC_INTERVAL},
      {"always", 1, UVMQTT_FILE_SYNC_ALWAYS},
  };
  static const uint32_t payloads[] = {64, 1024};
  result_t results[8];
  size_t n = 0;
  int failed = 0;
  printf("%-9s %8s %10s %8s %14s %14s %12s\n", "store", "payload", "messages", "seconds", "msgs/s",
         "payload B/s", "log bytes");
  for (size_t p = 0; p < 2; p++) {
    for (size_t c = 0; c < 4; c++) {
      result_t *res = &results[n];
      memset(res, 0, sizeof *res);
      if (run_case(&cases[c], payloads[p], dir, count, window, res) != 0) failed = 1;
      printf("%-9s %8u %10" PRIu64 " %8.2f %14.0f %14.0f %12" PRIu64 "%s\n", res->name,
             res->payload, res->messages, res->seconds, res->msgs_per_s, res->bytes_per_s,
             res->file_bytes, res->error ? "  error" : "");
      n++;
    }
  }
  if (own_dir) rmdir(dir);
  if (json) {
    printf("{\"bench\":\"store\",\"window\":%u,\"results\":[", window);
    for (size_t i = 0; i < n; i++)
      printf("%s{\"store\":\"%s\",\"payload\":%u,\"messages\":%" PRIu64
             ",\"seconds\":%.3f,\"msgs_per_s\":%.0f,\"bytes_per_s\":%.0f,\"error\":%d}",
             i ? "," : "", results[i].name, results[i].payload, results[i].messages,
             results[i].seconds, results[i].msgs_per_s, results[i].bytes_per_s, results[i].error);
    printf("]}\n");
  }
  return failed;
}
