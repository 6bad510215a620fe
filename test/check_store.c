/* The file message store: round trips through a closed and reopened log,
 * every sync policy, torn last records cut at every byte, corruption in the
 * middle, a full disk (RLIMIT_FSIZE in a child process), the lock against a
 * second process, and compaction while records keep arriving. Then the
 * crash loop: a publisher process using the store is killed with SIGKILL
 * again and again while a persistent subscriber counts what arrives.
 *
 * Each test works in a fresh temporary directory, counts callbacks, asserts
 * after uv_run, and checks uv_loop_close() == 0. A watchdog bounds each loop. */
#include <check.h>

/* Every passing ck_assert records its place through _mark_point(). Check
 * 0.15 mis-reads that trail once the thousands of asserts in this suite's
 * loops meet a long source path (a build directory outside the tree) and
 * fails the whole suite with "Bad message type". A failed assert still
 * reports its own place; only the trail of passed places is dropped. */
#define _mark_point(file, line) ((void)0)
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker.h"
#include "store/file.h"
#include "uvmqtt.h"
#include "uvmqtt/store.h"

#define WATCHDOG_MS 20000
#define MAX_RECS    4096

/* ---- Loop, watchdog, directory ------------------------------------------------------- */

static uv_loop_t g_loop;
static uv_timer_t g_watchdog;
static char g_dir[64];
static int g_closed;
/* Done callbacks record their status and order. */
static int g_done_status[MAX_RECS];
static int g_done_order[MAX_RECS];
static int g_done_count;

static void watchdog_cb(uv_timer_t *timer) {
  (void)timer;
  ck_abort_msg("the scenario did not finish in time");
}

static void loop_start(void) {
  ck_assert_int_eq(uv_loop_init(&g_loop), 0);
  ck_assert_int_eq(uv_timer_init(&g_loop, &g_watchdog), 0);
  ck_assert_int_eq(uv_timer_start(&g_watchdog, watchdog_cb, WATCHDOG_MS, 0), 0);
  uv_unref((uv_handle_t *)&g_watchdog);
}

static void loop_finish(void) {
  uv_close((uv_handle_t *)&g_watchdog, NULL);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&g_loop), 0);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void dir_setup(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/uvmqtt-store-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(g_dir));
  g_done_count = 0;
  g_closed = 0;
  memset(g_done_status, 0x7f, sizeof g_done_status);
  loop_start();
}

static void dir_teardown(void) {
  nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- Store helpers -------------------------------------------------------------------- */

static void on_closed(void *arg) {
  (void)arg;
  g_closed++;
}

static uvmqtt_store_t *store_open(const char *id, const uvmqtt_file_store_opts_t *opts) {
  uvmqtt_store_t *st = NULL;
  int rc = uvmqtt_file_store_open(&g_loop, g_dir, id, opts, &st);
  ck_assert_msg(rc == 0, "open: %s", uvmqtt_strerror(rc));
  ck_assert_ptr_nonnull(st);
  return st;
}

static void store_close(uvmqtt_store_t *st) {
  int before = g_closed;
  st->close(st->state, on_closed, NULL);
  ck_assert_int_eq(g_closed, before); /* never from inside close() */
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(g_closed, before + 1);
}

static void on_done(void *arg, int status) {
  int i = (int)(intptr_t)arg;
  ck_assert_int_lt(g_done_count, MAX_RECS);
  g_done_status[i] = status;
  g_done_order[g_done_count++] = i;
}

/* A recognisable packet for message `seq`: its length depends on seq. */
static uint32_t packet_for(uint64_t seq, uint8_t *buf, uint32_t cap) {
  uint32_t len = 16 + (uint32_t)(seq * 7 % 97);
  ck_assert_uint_le(len, cap);
  for (uint32_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(seq * 31 + i);
  return len;
}

/* Appends message `seq`; its done callback gets `seq` as its index. */
static void append_seq(uvmqtt_store_t *st, uint64_t seq, uint8_t policy, uint64_t deadline) {
  uint8_t pkt[128];
  uvmqtt_store_record_t rec = {0};
  rec.seq = seq;
  rec.packet = pkt;
  rec.len = packet_for(seq, pkt, sizeof pkt);
  rec.phase = UVMQTT_STORE_QUEUED;
  rec.policy = policy;
  rec.deadline_unix_ms = deadline;
  int before = g_done_count;
  int rc = st->append(st->state, &rec, on_done, (void *)(intptr_t)seq);
  ck_assert_msg(rc == 0, "append %llu: %s", (unsigned long long)seq, uvmqtt_strerror(rc));
  ck_assert_int_eq(g_done_count, before); /* done runs later, never inside append */
}

/* What load() yielded. */
typedef struct {
  uint64_t seq;
  uint8_t phase;
  uint8_t policy;
  uint16_t packet_id;
  uint64_t deadline;
  uint8_t packet_ok;
} loaded_t;

static loaded_t g_loaded[MAX_RECS];
static size_t g_nloaded;

static void on_each(void *arg, const uvmqtt_store_record_t *rec) {
  (void)arg;
  ck_assert_uint_lt(g_nloaded, MAX_RECS);
  uint8_t pkt[128];
  uint32_t len = packet_for(rec->seq, pkt, sizeof pkt);
  loaded_t *l = &g_loaded[g_nloaded++];
  l->seq = rec->seq;
  l->phase = rec->phase;
  l->policy = rec->policy;
  l->packet_id = rec->packet_id;
  l->deadline = rec->deadline_unix_ms;
  l->packet_ok = rec->len == len && memcmp(rec->packet, pkt, len) == 0;
}

/* Collects what load_incoming() reports. */
static uint16_t g_in[16];
static int g_nin;
static void collect_incoming(void *arg, uint16_t id) {
  (void)arg;
  if (g_nin < 16) g_in[g_nin] = id;
  g_nin++;
}

static void store_load(uvmqtt_store_t *st) {
  g_nloaded = 0;
  ck_assert_int_eq(st->load(st->state, on_each, NULL), 0);
}

static void log_path(const char *id, char *buf, size_t cap) {
  ck_assert_int_gt(uvmqtt_file_store_path(g_dir, id, buf, cap), 0);
}

static uint64_t file_size(const char *path) {
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  return (uint64_t)st.st_size;
}

static void copy_file(const char *from, const char *to, uint64_t len) {
  FILE *in = fopen(from, "rb");
  FILE *out = fopen(to, "wb");
  ck_assert_ptr_nonnull(in);
  ck_assert_ptr_nonnull(out);
  char buf[4096];
  while (len > 0) {
    size_t n = fread(buf, 1, len < sizeof buf ? (size_t)len : sizeof buf, in);
    ck_assert_uint_gt(n, 0);
    ck_assert_uint_eq(fwrite(buf, 1, n, out), n);
    len -= n;
  }
  fclose(in);
  ck_assert_int_eq(fclose(out), 0);
}

static uint8_t *read_whole(const char *path, uint64_t *len) {
  *len = file_size(path);
  uint8_t *buf = malloc(*len + 1);
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fread(buf, 1, *len, f), *len);
  fclose(f);
  return buf;
}

static void write_whole(const char *path, const uint8_t *buf, uint64_t len) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
  ck_assert_int_eq(fclose(f), 0);
}

/* ---- Unit tests ----------------------------------------------------------------------- */

START_TEST(store_crc32c_check_value) {
  /* The standard check value of CRC-32C. */
  ck_assert_uint_eq(uvmqtt__crc32c("123456789", 9), 0xE3069283u);
  ck_assert_uint_eq(uvmqtt__crc32c("", 0), 0);
}
END_TEST

START_TEST(store_path_names) {
  char a[512], b[512];
  ck_assert_int_gt(uvmqtt_file_store_path("/d", "sensor-1", a, sizeof a), 0);
  ck_assert_str_eq(a, "/d/sensor-1.log");
  ck_assert_int_gt(uvmqtt_file_store_path("/d", "a/b", a, sizeof a), 0);
  ck_assert_str_eq(a, "/d/a_2fb.log");
  ck_assert_int_gt(uvmqtt_file_store_path("/d", "a_2fb", b, sizeof b), 0);
  ck_assert_str_eq(b, "/d/a_5f2fb.log");
  ck_assert_int_gt(uvmqtt_file_store_path("/d", "..", a, sizeof a), 0);
  ck_assert_str_eq(a, "/d/_2e_2e.log");
  /* Long ids differing only at the end get distinct, bounded names. */
  char id1[1001], id2[1001];
  memset(id1, 'x', 1000);
  id1[1000] = '\0';
  memcpy(id2, id1, sizeof id1);
  id2[999] = 'y';
  ck_assert_int_gt(uvmqtt_file_store_path("/d", id1, a, sizeof a), 0);
  ck_assert_int_gt(uvmqtt_file_store_path("/d", id2, b, sizeof b), 0);
  ck_assert_str_ne(a, b);
  ck_assert_uint_lt(strlen(a), 200);
  ck_assert_int_eq(uvmqtt_file_store_path("/d", "", a, sizeof a), UVMQTT_EINVAL);
  ck_assert_int_eq(uvmqtt_file_store_path("/d", "x", a, 4), UVMQTT_ENOBUFS);
}
END_TEST

START_TEST(store_roundtrip) {
  uvmqtt_store_t *st = store_open("round", NULL);
  store_load(st);
  ck_assert_uint_eq(g_nloaded, 0);
  for (uint64_t seq = 1; seq <= 5; seq++)
    append_seq(st, seq, UVMQTT_DELIVERY_UNTIL_DELIVERED, seq == 3 ? 1700000000123u : 0);
  ck_assert_int_eq(st->update(st->state, 2, UVMQTT_STORE_SENT, 7, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 3, UVMQTT_STORE_SENT, 8, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 3, UVMQTT_STORE_PUBREC, 8, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 4, UVMQTT_STORE_DONE, 0, NULL, NULL), 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(g_done_count, 5);
  for (int i = 0; i < 5; i++) {
    ck_assert_int_eq(g_done_order[i], i + 1);
    ck_assert_int_eq(g_done_status[i + 1], 0);
  }
  store_close(st);

  st = store_open("round", NULL);
  store_load(st);
  ck_assert_uint_eq(g_nloaded, 4);
  const uint64_t seqs[] = {1, 2, 3, 5};
  const uint8_t phases[] = {UVMQTT_STORE_QUEUED, UVMQTT_STORE_SENT, UVMQTT_STORE_PUBREC,
                            UVMQTT_STORE_QUEUED};
  const uint16_t ids[] = {0, 7, 8, 0};
  for (int i = 0; i < 4; i++) {
    ck_assert_uint_eq(g_loaded[i].seq, seqs[i]);
    ck_assert_uint_eq(g_loaded[i].phase, phases[i]);
    ck_assert_uint_eq(g_loaded[i].packet_id, ids[i]);
    ck_assert_uint_eq(g_loaded[i].policy, UVMQTT_DELIVERY_UNTIL_DELIVERED);
    ck_assert_uint_eq(g_loaded[i].deadline, seqs[i] == 3 ? 1700000000123u : 0);
    ck_assert(g_loaded[i].packet_ok);
  }
  /* Load hands out the records once, before appends. */
  ck_assert_int_eq(st->load(st->state, on_each, NULL), UVMQTT_EBUSY);
  store_close(st);
  loop_finish();
}
END_TEST

START_TEST(store_load_unfinished_in_order_latest_phase) {
  uvmqtt_store_t *st = store_open("order", NULL);
  store_load(st);
  /* Seqs arrive out of order; load yields them sorted. */
  const uint64_t order[] = {40, 10, 30, 20, 50, 60, 70};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
    append_seq(st, order[i], UVMQTT_DELIVERY_DEADLINE, 99);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(st->update(st->state, 10, UVMQTT_STORE_SENT, 1, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 10, UVMQTT_STORE_QUEUED, 0, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 10, UVMQTT_STORE_SENT, 11, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 20, UVMQTT_STORE_SENT, 2, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 20, UVMQTT_STORE_PUBREC, 2, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 30, UVMQTT_STORE_DONE, 0, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 60, UVMQTT_STORE_SENT, 6, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 60, UVMQTT_STORE_DONE, 0, NULL, NULL), 0);
  /* A seq whose message is DONE may be used again for a new message. */
  ck_assert_int_eq(st->update(st->state, 70, UVMQTT_STORE_DONE, 0, NULL, NULL), 0);
  append_seq(st, 70, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  store_close(st);

  st = store_open("order", NULL);
  store_load(st);
  ck_assert_uint_eq(g_nloaded, 5);
  const uint64_t seqs[] = {10, 20, 40, 50, 70};
  const uint8_t phases[] = {UVMQTT_STORE_SENT, UVMQTT_STORE_PUBREC, UVMQTT_STORE_QUEUED,
                            UVMQTT_STORE_QUEUED, UVMQTT_STORE_QUEUED};
  const uint16_t ids[] = {11, 2, 0, 0, 0};
  for (int i = 0; i < 5; i++) {
    ck_assert_uint_eq(g_loaded[i].seq, seqs[i]);
    ck_assert_uint_eq(g_loaded[i].phase, phases[i]);
    ck_assert_uint_eq(g_loaded[i].packet_id, ids[i]);
    ck_assert(g_loaded[i].packet_ok);
  }
  ck_assert_uint_eq(g_loaded[4].policy, UVMQTT_DELIVERY_UNTIL_DELIVERED);
  ck_assert_uint_eq(g_loaded[3].policy, UVMQTT_DELIVERY_DEADLINE);
  store_close(st);
  loop_finish();
}
END_TEST

START_TEST(store_argument_errors) {
  uvmqtt_store_t *st = store_open("args", NULL);
  store_load(st);
  append_seq(st, 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
  uint8_t pkt[4] = {0x30, 2, 0, 0};
  uvmqtt_store_record_t rec = {.seq = 1, .packet = pkt, .len = sizeof pkt};
  ck_assert_int_eq(st->append(st->state, &rec, on_done, NULL), UVMQTT_EINVAL); /* live seq */
  rec.seq = 2;
  rec.phase = UVMQTT_STORE_DONE;
  ck_assert_int_eq(st->append(st->state, &rec, on_done, NULL), UVMQTT_EINVAL);
  rec.phase = UVMQTT_STORE_QUEUED;
  rec.packet = NULL;
  ck_assert_int_eq(st->append(st->state, &rec, on_done, NULL), UVMQTT_EINVAL);
  ck_assert_int_eq(st->append(st->state, NULL, on_done, NULL), UVMQTT_EINVAL);
  ck_assert_int_eq(st->update(st->state, 9, UVMQTT_STORE_SENT, 1, NULL, NULL), UVMQTT_EINVAL);
  ck_assert_int_eq(st->update(st->state, 1, 4, 1, NULL, NULL), UVMQTT_EINVAL);
  ck_assert_int_eq(st->update(st->state, 1, UVMQTT_STORE_DONE, 0, NULL, NULL), 0);
  ck_assert_int_eq(st->update(st->state, 1, UVMQTT_STORE_SENT, 1, NULL, NULL), UVMQTT_EINVAL);
  ck_assert_int_eq(st->load(st->state, on_each, NULL), UVMQTT_EBUSY);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(g_done_count, 1);
  store_close(st);

  uvmqtt_file_store_opts_t bad = {.sync = 9};
  uvmqtt_store_t *out = (uvmqtt_store_t *)&bad;
  ck_assert_int_eq(uvmqtt_file_store_open(&g_loop, g_dir, "x", &bad, &out), UVMQTT_EINVAL);
  ck_assert_ptr_null(out);
  ck_assert_int_eq(uvmqtt_file_store_open(&g_loop, g_dir, "", NULL, &out), UVMQTT_EINVAL);
  ck_assert_int_eq(uvmqtt_file_store_open(NULL, g_dir, "x", NULL, &out), UVMQTT_EINVAL);
  /* A directory that is a regular file: the file system's error comes back. */
  char file[128];
  snprintf(file, sizeof file, "%s/plain", g_dir);
  write_whole(file, (const uint8_t *)"x", 1);
  ck_assert_int_eq(uvmqtt_file_store_open(&g_loop, file, "x", NULL, &out), UV_ENOTDIR);
  loop_finish();
}
END_TEST

/* Every policy: done callbacks run in append order with status 0, and a
 * close right after the appends flushes them all before its callback. */
START_TEST(store_sync_policies) {
  static const uint8_t policies[] = {UVMQTT_FILE_SYNC_ALWAYS, UVMQTT_FILE_SYNC_INTERVAL,
                                     UVMQTT_FILE_SYNC_NEVER};
  uvmqtt_file_store_opts_t opts = {.sync = policies[_i], .interval_ms = 20};
  uvmqtt_store_t *st = store_open("policy", &opts);
  store_load(st);
  for (uint64_t seq = 0; seq < 200; seq++)
    append_seq(st, seq, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(g_done_count, 200);
  for (int i = 0; i < 200; i++) {
    ck_assert_int_eq(g_done_order[i], i);
    ck_assert_int_eq(g_done_status[i], 0);
  }
  /* The loop ran until the store had nothing left to do: ALWAYS and
   * INTERVAL synced everything written, NEVER nothing. */
  uvmqtt__file_store_stats_t stats;
  uvmqtt__file_store_stats(st, &stats);
  ck_assert_uint_gt(stats.written_bytes, 0);
  if (policies[_i] == UVMQTT_FILE_SYNC_NEVER) {
    ck_assert_uint_eq(stats.syncs, 0);
  } else {
    ck_assert_uint_ge(stats.syncs, 1);
    ck_assert_uint_eq(stats.synced_bytes, stats.written_bytes);
  }
  for (uint64_t seq = 200; seq < 300; seq++)
    append_seq(st, seq, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
  ck_assert_int_eq(st->update(st->state, 5, UVMQTT_STORE_DONE, 0, NULL, NULL), 0);
  st->close(st->state, on_closed, NULL);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(g_closed, 1);
  ck_assert_int_eq(g_done_count, 300);
  for (int i = 200; i < 300; i++)
    ck_assert_int_eq(g_done_status[i], 0);

  st = store_open("policy", &opts);
  store_load(st);
  ck_assert_uint_eq(g_nloaded, 299);
  for (size_t i = 0; i < g_nloaded; i++) {
    ck_assert_uint_eq(g_loaded[i].seq, i < 5 ? i : i + 1);
    ck_assert(g_loaded[i].packet_ok);
  }
  store_close(st);
  loop_finish();
}
END_TEST

/* Writes `n` messages to the log of `id` (closed afterwards); returns the
 * log size after the first n - 1 of them. */
static uint64_t write_messages(const char *id, uint64_t n) {
  char path[256];
  log_path(id, path, sizeof path);
  uvmqtt_store_t *st = store_open(id, NULL);
  store_load(st);
  for (uint64_t seq = 1; seq < n; seq++)
    append_seq(st, seq, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
  ck_assert_int_eq(st->update(st->state, 2, UVMQTT_STORE_SENT, 22, NULL, NULL), 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uint64_t before_last = file_size(path);
  append_seq(st, n, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
  store_close(st);
  return before_last;
}

START_TEST(store_torn_last_record_every_byte) {
  char path[256], orig[256];
  log_path("torn", path, sizeof path);
  snprintf(orig, sizeof orig, "%s/orig", g_dir);
  uint64_t good = write_messages("torn", 6);
  uint64_t full = file_size(path);
  ck_assert_uint_gt(full, good + 29);
  copy_file(path, orig, full);
  for (uint64_t cut = good; cut < full; cut++) {
    copy_file(orig, path, cut);
    uvmqtt_store_t *st = store_open("torn", NULL);
    uvmqtt__file_store_stats_t stats;
    uvmqtt__file_store_stats(st, &stats);
    ck_assert_uint_eq(stats.file_size, good);
    ck_assert_int_eq(stats.torn_dropped, cut > good);
    ck_assert_uint_eq(file_size(path), good);
    store_load(st);
    ck_assert_uint_eq(g_nloaded, 5);
    for (size_t i = 0; i < 5; i++) {
      ck_assert_uint_eq(g_loaded[i].seq, i + 1);
      ck_assert(g_loaded[i].packet_ok);
    }
    ck_assert_uint_eq(g_loaded[1].phase, UVMQTT_STORE_SENT);
    ck_assert_uint_eq(g_loaded[1].packet_id, 22);
    /* Appending after the cut yields a whole, readable log again. */
    append_seq(st, 6, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
    store_close(st);
    st = store_open("torn", NULL);
    store_load(st);
    ck_assert_uint_eq(g_nloaded, 6);
    ck_assert(g_loaded[5].packet_ok);
    store_close(st);
  }
  loop_finish();
}
END_TEST

START_TEST(store_torn_zero_tail) {
  char path[256];
  log_path("zeros", path, sizeof path);
  write_messages("zeros", 4);
  uint64_t len;
  uint8_t *img = read_whole(path, &len);
  uint8_t *grown = calloc(1, len + 4096);
  memcpy(grown, img, len);
  /* What a crash can leave: the size grew, the data never arrived. */
  write_whole(path, grown, len + 4096);
  uvmqtt_store_t *st = store_open("zeros", NULL);
  ck_assert_uint_eq(file_size(path), len);
  store_load(st);
  ck_assert_uint_eq(g_nloaded, 4);
  store_close(st);
  free(img);
  free(grown);
  loop_finish();
}
END_TEST

/* A damaged record with whole records after it is corruption: the open
 * fails with UVMQTT_ESTORECORRUPT and leaves the file as it was. */
START_TEST(store_corrupt_middle_refused) {
  char path[256];
  log_path("bad", path, sizeof path);
  write_messages("bad", 5);
  uint64_t len;
  uint8_t *img = read_whole(path, &len);
  /* The magic, then the first record (seq 1: 16 + 7 bytes of packet); its
   * successor's CRC field, length field and packet are damaged in turn. */
  const uint64_t second = 8 + 8 + 21 + 23;
  const uint64_t spots[] = {second + 4, second, second + 8 + 21 + 3, 3};
  for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
    uint8_t *bad = malloc(len);
    memcpy(bad, img, len);
    bad[spots[i]] ^= 0x40;
    write_whole(path, bad, len);
    uvmqtt_store_t *st = (uvmqtt_store_t *)img;
    ck_assert_int_eq(uvmqtt_file_store_open(&g_loop, g_dir, "bad", NULL, &st),
                     UVMQTT_ESTORECORRUPT);
    ck_assert_ptr_null(st);
    uint64_t after_len;
    uint8_t *after = read_whole(path, &after_len);
    ck_assert_uint_eq(after_len, len);
    ck_assert_int_eq(memcmp(after, bad, len), 0);
    free(after);
    free(bad);
  }
  /* The undamaged log opens again: a failed open held nothing. */
  write_whole(path, img, len);
  uvmqtt_store_t *st = store_open("bad", NULL);
  store_load(st);
  ck_assert_uint_eq(g_nloaded, 5);
  store_close(st);
  free(img);
  loop_finish();
}
END_TEST

/* The child: three messages, then RLIMIT_FSIZE just above the log and
 * appends one at a time until one fails. Reports through `fd`: the number
 * stored and the error. */
static void full_disk_child(int fd) {
  uv_loop_t loop;
  uvmqtt_store_t *st = NULL;
  int result[3] = {0, 0, 0};
  if (uv_loop_init(&loop) != 0) _exit(2);
  if (uvmqtt_file_store_open(&loop, g_dir, "full", NULL, &st) != 0) _exit(3);
  st->load(st->state, on_each, NULL);
  for (uint64_t seq = 1; seq <= 3; seq++) {
    uint8_t pkt[128];
    uvmqtt_store_record_t rec = {.seq = seq, .packet = pkt};
    rec.len = packet_for(seq, pkt, sizeof pkt);
    if (st->append(st->state, &rec, on_done, (void *)(intptr_t)seq) != 0) _exit(4);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  char path[256];
  uvmqtt_file_store_path(g_dir, "full", path, sizeof path);
  struct stat sb;
  if (stat(path, &sb) != 0) _exit(5);
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit rl = {(rlim_t)sb.st_size + 1000, (rlim_t)sb.st_size + 1000};
  if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(6);
  int err = 0;
  for (uint64_t seq = 4; seq < 200 && err == 0; seq++) {
    uint8_t pkt[128];
    uvmqtt_store_record_t rec = {.seq = seq, .packet = pkt};
    rec.len = packet_for(seq, pkt, sizeof pkt);
    if (st->append(st->state, &rec, on_done, (void *)(intptr_t)seq) != 0) _exit(7);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (g_done_status[seq] != 0)
      err = g_done_status[seq];
    else
      result[0] = (int)seq;
  }
  result[1] = err;
  uvmqtt_store_record_t again = {.seq = 500, .packet = (const uint8_t *)"x", .len = 1};
  result[2] = st->append(st->state, &again, on_done, NULL);
  st->close(st->state, on_closed, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (g_closed != 1 || uv_loop_close(&loop) != 0) _exit(8);
  if (write(fd, result, sizeof result) != (ssize_t)sizeof result) _exit(9);
  _exit(0);
}

START_TEST(store_disk_full_efbig) {
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    full_disk_child(fds[1]);
  }
  close(fds[1]);
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
  int result[3];
  ck_assert_int_eq(read(fds[0], result, sizeof result), (ssize_t)sizeof result);
  close(fds[0]);
  int last_ok = result[0];
  ck_assert_msg(result[1] == UV_EFBIG, "append error %s", uvmqtt_err_name(result[1]));
  ck_assert_int_eq(result[2], UV_EFBIG); /* sticky */
  ck_assert_int_ge(last_ok, 4);
  ck_assert_int_lt(last_ok, 199);

  /* Everything stored before the error is there, intact; the failed batch
   * was cut off at once (no torn record left for the next open). */
  uvmqtt_store_t *st = store_open("full", NULL);
  uvmqtt__file_store_stats_t stats;
  uvmqtt__file_store_stats(st, &stats);
  ck_assert_int_eq(stats.torn_dropped, 0);
  store_load(st);
  ck_assert_uint_eq(g_nloaded, (size_t)last_ok);
  for (size_t i = 0; i < g_nloaded; i++) {
    ck_assert_uint_eq(g_loaded[i].seq, i + 1);
    ck_assert(g_loaded[i].packet_ok);
  }
  append_seq(st, 1000, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
  store_close(st);
  ck_assert_int_eq(g_done_status[1000], 0);
  loop_finish();
}
END_TEST

/* Opens the store of `id` in a child process; exits with 0 when the open
 * returned `expect`. */
static int open_in_child(const char *id, int expect) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    uv_loop_t loop;
    uvmqtt_store_t *st = NULL;
    if (uv_loop_init(&loop) != 0) _exit(2);
    int rc = uvmqtt_file_store_open(&loop, g_dir, id, NULL, &st);
    if (rc == 0) {
      st->close(st->state, NULL, NULL);
      uv_run(&loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(&loop) != 0) _exit(3);
    _exit(rc == expect ? 0 : 1);
  }
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status));
  return WEXITSTATUS(status);
}

START_TEST(store_lock_second_process) {
  uvmqtt_store_t *st = store_open("locked", NULL);
  ck_assert_int_eq(open_in_child("locked", UVMQTT_ESTORELOCKED), 0);
  /* A second store in the same process is refused too. */
  uvmqtt_store_t *again = NULL;
  ck_assert_int_eq(uvmqtt_file_store_open(&g_loop, g_dir, "locked", NULL, &again),
                   UVMQTT_ESTORELOCKED);
  ck_assert_str_eq(uvmqtt_err_name(UVMQTT_ESTORELOCKED), "UVMQTT_ESTORELOCKED");
  /* Another client id is another log and another lock. */
  ck_assert_int_eq(open_in_child("other", 0), 0);
  store_close(st);
  ck_assert_int_eq(open_in_child("locked", 0), 0);
  loop_finish();
}
END_TEST

/* ---- Compaction --------------------------------------------------------------------------- */

#define COMPACT_N     1500
#define COMPACT_EXTRA 100

typedef struct {
  uint8_t live;
  uint8_t phase;
  uint16_t packet_id;
} model_t;

static model_t g_model[COMPACT_N + COMPACT_EXTRA];
static uvmqtt_store_t *g_cstore;
static uv_idle_t g_idle;
static int g_seen_compacting;

static void model_update(uint64_t seq, uint8_t phase, uint16_t id) {
  ck_assert_int_eq(g_cstore->update(g_cstore->state, seq, phase, id, NULL, NULL), 0);
  g_model[seq].phase = phase;
  g_model[seq].packet_id = id;
  if (phase == UVMQTT_STORE_DONE) g_model[seq].live = 0;
}

/* While the copy runs, new records and updates of copied ones arrive. */
static void on_idle(uv_idle_t *idle) {
  uvmqtt__file_store_stats_t stats;
  uvmqtt__file_store_stats(g_cstore, &stats);
  if (!stats.compacting) return;
  g_seen_compacting = 1;
  uv_idle_stop(idle);
  for (uint64_t seq = COMPACT_N; seq < COMPACT_N + COMPACT_EXTRA; seq++) {
    append_seq(g_cstore, seq, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
    g_model[seq].live = 1;
    if (seq % 3 == 0) model_update(seq, UVMQTT_STORE_SENT, (uint16_t)seq);
  }
  model_update(0, UVMQTT_STORE_PUBREC, 5);
  model_update(10, UVMQTT_STORE_DONE, 0);
  model_update(20, UVMQTT_STORE_SENT, 9);
}

START_TEST(store_compaction_keeps_live_records) {
  char path[256];
  log_path("compact", path, sizeof path);
  uvmqtt_file_store_opts_t opts = {.sync = UVMQTT_FILE_SYNC_NEVER, .compact_min_bytes = 64 * 1024};
  g_cstore = store_open("compact", &opts);
  store_load(g_cstore);
  memset(g_model, 0, sizeof g_model);
  for (uint64_t seq = 0; seq < COMPACT_N; seq++) {
    append_seq(g_cstore, seq, UVMQTT_DELIVERY_UNTIL_DELIVERED, seq);
    g_model[seq].live = 1;
  }
  /* Incoming QoS 2 ids: one still waiting, one released, both before the
   * compaction: only the waiting one may come back. */
  ck_assert_int_eq(g_cstore->incoming(g_cstore->state, 4242, 1), 0);
  ck_assert_int_eq(g_cstore->incoming(g_cstore->state, 4243, 1), 0);
  ck_assert_int_eq(g_cstore->incoming(g_cstore->state, 4243, 0), 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  for (uint64_t seq = 0; seq < COMPACT_N; seq++) {
    if (seq % 10 == 0) continue;
    model_update(seq, UVMQTT_STORE_SENT, (uint16_t)(seq % 65535 + 1));
    if (seq % 10 == 5)
      model_update(seq, UVMQTT_STORE_PUBREC, (uint16_t)(seq % 65535 + 1));
    else
      model_update(seq, UVMQTT_STORE_DONE, 0);
  }
  uint64_t before = file_size(path);
  ck_assert_uint_gt(before, 100 * 1024);
  ck_assert_int_eq(uv_idle_init(&g_loop, &g_idle), 0);
  ck_assert_int_eq(uv_idle_start(&g_idle, on_idle), 0);
  /* The updates are being written; the compaction follows that write. */
  for (int i = 0; i < 100000 && !g_seen_compacting; i++)
    uv_run(&g_loop, UV_RUN_ONCE);
  ck_assert(g_seen_compacting);
  uv_close((uv_handle_t *)&g_idle, NULL);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uvmqtt__file_store_stats_t stats;
  uvmqtt__file_store_stats(g_cstore, &stats);
  ck_assert_uint_ge(stats.compactions, 1);
  ck_assert_int_eq(stats.error, 0);
  ck_assert_int_eq(g_done_count, COMPACT_N + COMPACT_EXTRA);
  for (int i = 0; i < COMPACT_N + COMPACT_EXTRA; i++)
    ck_assert_int_eq(g_done_status[i], 0);
  uint64_t after = file_size(path);
  ck_assert_uint_lt(after * 2, before);
  store_close(g_cstore);

  g_cstore = store_open("compact", &opts);
  store_load(g_cstore);
  size_t k = 0;
  for (uint64_t seq = 0; seq < COMPACT_N + COMPACT_EXTRA; seq++) {
    if (!g_model[seq].live) continue;
    ck_assert_uint_lt(k, g_nloaded);
    ck_assert_uint_eq(g_loaded[k].seq, seq);
    ck_assert_uint_eq(g_loaded[k].phase, g_model[seq].phase);
    ck_assert_uint_eq(g_loaded[k].packet_id, g_model[seq].packet_id);
    ck_assert_uint_eq(g_loaded[k].deadline, seq < COMPACT_N ? seq : 0);
    ck_assert(g_loaded[k].packet_ok);
    k++;
  }
  ck_assert_uint_eq(k, g_nloaded);
  g_nin = 0;
  ck_assert_int_eq(g_cstore->load_incoming(g_cstore->state, collect_incoming, NULL), 0);
  ck_assert_int_eq(g_nin, 1);
  ck_assert_uint_eq(g_in[0], 4242);
  store_close(g_cstore);
  loop_finish();
}
END_TEST

/* ---- Crash loop ------------------------------------------------------------------------------ */

#define CRASH_KILLS      20
#define CRASH_RUN_LIMIT  5000 /* the helper's LIMIT */
#define CRASH_WATCHDOG   150000
#define CRASH_SETTLE_MS  10000
#define CRASH_MIN_LOGGED 100

typedef struct {
  int qos;
  unsigned seed;
  int run;
  int bad_exits;
  int drain_status;
  uv_process_t proc;
  uv_timer_t kill_timer;
  uv_timer_t poll_timer;
  int polls;
  uvmqtt_client_t sub;
  int sub_closed;
  /* received[run][n]: how often r<run>:<n> arrived; first arrivals in order. */
  uint8_t received[CRASH_KILLS + 1][CRASH_RUN_LIMIT];
  uint32_t order[(CRASH_KILLS + 1) * CRASH_RUN_LIMIT];
  size_t norder;
  size_t unparsed;
  char helper[512];
  char store_dir[128];
  char log[128];
  char port[16];
} crash_t;

static crash_t *g_crash;
static test_broker_t g_crash_broker;

static void crash_spawn(void);

/* Every line of the log (messages the store reported durable) as
 * run * CRASH_RUN_LIMIT + n; returns how many. */
static size_t crash_read_log(uint32_t *out, size_t cap) {
  FILE *f = fopen(g_crash->log, "r");
  if (f == NULL) return 0;
  size_t n = 0;
  int run;
  unsigned k;
  while (n < cap && fscanf(f, "r%d:%u\n", &run, &k) == 2)
    if (run >= 0 && run <= CRASH_KILLS && k < CRASH_RUN_LIMIT)
      out[n++] = (uint32_t)run * CRASH_RUN_LIMIT + k;
  fclose(f);
  return n;
}

static void crash_on_message(uvmqtt_client_t *client, const uvmqtt_message_t *msg, void *arg) {
  (void)client;
  (void)arg;
  char buf[32];
  int run;
  unsigned k;
  size_t len = msg->payload.len < sizeof buf - 1 ? msg->payload.len : sizeof buf - 1;
  memcpy(buf, msg->payload.data, len);
  buf[len] = '\0';
  if (sscanf(buf, "r%d:%u", &run, &k) != 2 || run < 0 || run > CRASH_KILLS ||
      k >= CRASH_RUN_LIMIT) {
    g_crash->unparsed++;
    return;
  }
  if (g_crash->received[run][k]++ == 0)
    g_crash->order[g_crash->norder++] = (uint32_t)run * CRASH_RUN_LIMIT + k;
}

static void crash_sub_closed(uvmqtt_client_t *client) {
  (void)client;
  g_crash->sub_closed = 1;
}

/* Waits until every durable message arrived (bounded), then ends. */
static void crash_poll(uv_timer_t *t) {
  static uint32_t logged[(CRASH_KILLS + 1) * CRASH_RUN_LIMIT];
  size_t n = crash_read_log(logged, sizeof logged / sizeof logged[0]);
  size_t missing = 0;
  for (size_t i = 0; i < n; i++)
    if (g_crash->received[logged[i] / CRASH_RUN_LIMIT][logged[i] % CRASH_RUN_LIMIT] == 0) missing++;
  if (missing > 0 && ++g_crash->polls * 50 < CRASH_SETTLE_MS) return;
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, NULL);
  uv_close((uv_handle_t *)&g_crash->kill_timer, NULL);
  uvmqtt_close(&g_crash->sub, crash_sub_closed);
}

static void crash_proc_closed(uv_handle_t *h) {
  (void)h;
  g_crash->run++;
  if (g_crash->run <= CRASH_KILLS) {
    crash_spawn();
    return;
  }
  uv_timer_start(&g_crash->poll_timer, crash_poll, 0, 50);
}

static void crash_exit(uv_process_t *proc, int64_t status, int signal) {
  if (g_crash->run < CRASH_KILLS) {
    if (signal != SIGKILL) g_crash->bad_exits++;
  } else {
    g_crash->drain_status = signal ? 128 + signal : (int)status;
  }
  uv_close((uv_handle_t *)proc, crash_proc_closed);
}

static void crash_kill(uv_timer_t *t) {
  (void)t;
  uv_process_kill(&g_crash->proc, SIGKILL);
}

static void crash_spawn(void) {
  char qos[8], run[16], id[32];
  snprintf(qos, sizeof qos, "%d", g_crash->qos);
  snprintf(run, sizeof run, "%d", g_crash->run);
  snprintf(id, sizeof id, "crash-pub-q%d", g_crash->qos);
  const char *mode = g_crash->run < CRASH_KILLS ? "kill" : "drain";
  char *args[] = {g_crash->helper, g_crash->port, g_crash->store_dir, id, qos, run, (char *)mode,
                  g_crash->log,    NULL};
  uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                   {.flags = UV_INHERIT_FD, .data.fd = 1},
                                   {.flags = UV_INHERIT_FD, .data.fd = 2}};
  uv_process_options_t po;
  memset(&po, 0, sizeof po);
  po.file = g_crash->helper;
  po.args = args;
  po.exit_cb = crash_exit;
  po.stdio = stdio;
  po.stdio_count = 3;
  ck_assert_int_eq(uv_spawn(&g_loop, &g_crash->proc, &po), 0);
  if (g_crash->run < CRASH_KILLS) {
    /* Start-up (exec, store, CONNACK, restored messages) takes some of it. */
    uint64_t delay = 80 + (uint64_t)(rand_r(&g_crash->seed) % 600);
    ck_assert_int_eq(uv_timer_start(&g_crash->kill_timer, crash_kill, delay, 0), 0);
  }
}

static void crash_subscribed(uvmqtt_client_t *client, int status, const uint8_t *reasons,
                             size_t count, void *arg) {
  (void)client;
  (void)arg;
  ck_assert_int_eq(status, 0);
  ck_assert_uint_eq(count, 1);
  ck_assert_uint_le(reasons[0], 2);
  crash_spawn();
}

static void crash_connected(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)ack;
  ck_assert_int_eq(status, 0);
  if (g_crash->run > 0 || g_crash->proc.type == UV_PROCESS) return;
  char filter[32];
  snprintf(filter, sizeof filter, "store/crash/q%d", g_crash->qos);
  uvmqtt_topic_sub_t sub = {.filter = {(const uint8_t *)filter, strlen(filter)},
                            .options = UVMQTT_SUB_QOS(2)};
  ck_assert_int_eq(uvmqtt_subscribe(client, &sub, 1, NULL, NULL, crash_subscribed, NULL), 0);
}

/* Runs the loop at `qos`: nothing durable may be missing and first
 * arrivals come in publish order; at QoS 2 nothing may arrive twice. */
static void crash_loop(int qos) {
  g_crash = calloc(1, sizeof *g_crash);
  ck_assert_ptr_nonnull(g_crash);
  g_crash->qos = qos;
  g_crash->seed = 20240u + (unsigned)qos;
  g_crash->drain_status = -1;
  snprintf(g_crash->helper, sizeof g_crash->helper, "%s/test/store_crash_pub", test_build_root());
  snprintf(g_crash->store_dir, sizeof g_crash->store_dir, "%s/store", g_dir);
  snprintf(g_crash->log, sizeof g_crash->log, "%s/durable.log", g_dir);
  ck_assert_msg(access(g_crash->helper, X_OK) == 0, "%s missing", g_crash->helper);
  ck_assert_msg(test_broker_start(&g_crash_broker, "") == 0, "mosquitto did not start");
  snprintf(g_crash->port, sizeof g_crash->port, "%d", g_crash_broker.port);
  ck_assert_int_eq(uv_timer_start(&g_watchdog, watchdog_cb, CRASH_WATCHDOG, 0), 0);
  ck_assert_int_eq(uv_timer_init(&g_loop, &g_crash->kill_timer), 0);
  ck_assert_int_eq(uv_timer_init(&g_loop, &g_crash->poll_timer), 0);

  char uri[64];
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%d", g_crash_broker.port);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.client_id = "crash-sub";
  o.clean_start = 0;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = crash_connected;
  cbs.on_message = crash_on_message;
  ck_assert_int_eq(uvmqtt_client_init(&g_loop, &g_crash->sub, &o, &cbs), 0);
  ck_assert_int_eq(uvmqtt_connect(&g_crash->sub), 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  test_broker_cleanup(&g_crash_broker);

  ck_assert_int_eq(g_crash->sub_closed, 1);
  ck_assert_int_eq(g_crash->run, CRASH_KILLS + 1);
  ck_assert_int_eq(g_crash->bad_exits, 0);
  ck_assert_int_eq(g_crash->drain_status, 0);
  ck_assert_uint_eq(g_crash->unparsed, 0);
  static uint32_t logged[(CRASH_KILLS + 1) * CRASH_RUN_LIMIT];
  size_t n = crash_read_log(logged, sizeof logged / sizeof logged[0]);
  ck_assert_uint_ge(n, CRASH_MIN_LOGGED);
  size_t missing = 0, twice = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t seen = g_crash->received[logged[i] / CRASH_RUN_LIMIT][logged[i] % CRASH_RUN_LIMIT];
    if (seen == 0) missing++;
  }
  for (int r = 0; r <= CRASH_KILLS; r++)
    for (int k = 0; k < CRASH_RUN_LIMIT; k++)
      if (g_crash->received[r][k] > 1) twice++;
  size_t out_of_order = 0;
  for (size_t i = 1; i < g_crash->norder; i++)
    if (g_crash->order[i] <= g_crash->order[i - 1]) out_of_order++;
  printf("crash loop QoS %d: %zu durable, %zu received, %zu missing, %zu twice, %zu out of "
         "order\n",
         qos, n, g_crash->norder, missing, twice, out_of_order);
  fflush(stdout);
  ck_assert_uint_eq(missing, 0);
  if (qos == 2) ck_assert_uint_eq(twice, 0);
  ck_assert_uint_eq(out_of_order, 0);
  free(g_crash);
  loop_finish();
}

START_TEST(store_crash_loop_qos1_at_least_once) {
  crash_loop(1);
}
END_TEST

START_TEST(store_crash_loop_qos2_exactly_once) {
  crash_loop(2);
}
END_TEST

/* ---- Suite ----------------------------------------------------------------------------------- */

/* Incoming QoS 2 ids waiting for PUBREL survive a reopen, in order with the
 * message records. */

START_TEST(store_incoming_ids_survive_reopen) {
  uvmqtt_store_t *st = store_open("incoming", NULL);
  store_load(st);
  ck_assert_int_eq(st->incoming(st->state, 0, 1), UVMQTT_EINVAL);
  ck_assert_int_eq(st->incoming(st->state, 9, 1), 0);
  ck_assert_int_eq(st->incoming(st->state, 65535, 1), 0);
  ck_assert_int_eq(st->incoming(st->state, 12, 1), 0);
  ck_assert_int_eq(st->incoming(st->state, 12, 0), 0);
  append_seq(st, 1, UVMQTT_DELIVERY_UNTIL_DELIVERED, 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  store_close(st);

  st = store_open("incoming", NULL);
  store_load(st);
  ck_assert_uint_eq(g_nloaded, 1);
  g_nin = 0;
  ck_assert_int_eq(st->load_incoming(st->state, collect_incoming, NULL), 0);
  ck_assert_int_eq(g_nin, 2);
  ck_assert_uint_eq(g_in[0], 9);
  ck_assert_uint_eq(g_in[1], 65535);
  ck_assert_int_eq(st->incoming(st->state, 9, 0), 0);
  store_close(st);

  st = store_open("incoming", NULL);
  store_load(st);
  g_nin = 0;
  ck_assert_int_eq(st->load_incoming(st->state, collect_incoming, NULL), 0);
  ck_assert_int_eq(g_nin, 1);
  ck_assert_uint_eq(g_in[0], 65535);
  store_close(st);
  loop_finish();
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("store");
  TCase *tc = tcase_create("format");
  tcase_add_test(tc, store_crc32c_check_value);
  tcase_add_test(tc, store_path_names);
  suite_add_tcase(s, tc);

  tc = tcase_create("unit");
  tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, store_roundtrip);
  tcase_add_test(tc, store_incoming_ids_survive_reopen);
  tcase_add_test(tc, store_load_unfinished_in_order_latest_phase);
  tcase_add_test(tc, store_argument_errors);
  tcase_add_loop_test(tc, store_sync_policies, 0, 3);
  suite_add_tcase(s, tc);

  tc = tcase_create("recovery");
  tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, store_torn_last_record_every_byte);
  tcase_add_test(tc, store_torn_zero_tail);
  tcase_add_test(tc, store_corrupt_middle_refused);
  tcase_add_test(tc, store_disk_full_efbig);
  tcase_add_test(tc, store_lock_second_process);
  suite_add_tcase(s, tc);

  tc = tcase_create("compaction");
  tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, store_compaction_keeps_live_records);
  suite_add_tcase(s, tc);

  tc = tcase_create("crash");
  tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
  tcase_set_timeout(tc, 180);
  tcase_add_test(tc, store_crash_loop_qos1_at_least_once);
  tcase_add_test(tc, store_crash_loop_qos2_exactly_once);
  suite_add_tcase(s, tc);

  return s;
}
