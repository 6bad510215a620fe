/* The file-backed message store: an append-only log of length- and
 * CRC-framed records, written on libuv's thread pool (see uvmqtt/store.h).
 *
 * File layout: the 8-byte magic, then records. Each record is
 *   u32 body length | u32 CRC-32C of (length field, body) | body
 * little-endian, where the body starts with its type:
 *   APPEND: type, u64 seq, u8 phase, u8 policy, u16 packet id, u64 deadline,
 *           the encoded PUBLISH;
 *   UPDATE: type, u64 seq, u8 phase, u16 packet id;
 *   INCOMING: type, u16 packet id, u8 waiting (an incoming QoS 2 message
 *           delivered and waiting for its PUBREL, or no longer).
 * The CRC covers the length so a damaged length cannot pass as a record.
 *
 * In memory every known message has an entry (sorted by seq) with the file
 * offset of its APPEND record, so a compaction can copy live records from the
 * old file without keeping packets in memory. Records are encoded into
 * `pend`; one file operation at a time (write, sync, truncate or compaction)
 * runs on the thread pool, and `kick` picks the next one when it ends. Byte
 * counters that only grow (queued, written, synced) tell which `done`
 * callbacks a write or sync covers, whatever compaction does to offsets. */
#include "store/file.h"

#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "uvmqtt/errors.h"

#define MAGIC         "UVMQSTO1"
#define MAGIC_LEN     8u
#define REC_HDR       8u  /* length, CRC */
#define APPEND_FIXED  21u /* type, seq, phase, policy, packet id, deadline */
#define UPDATE_BODY   12u /* type, seq, phase, packet id */
#define UPDATE_REC    (REC_HDR + UPDATE_BODY)
#define REC_APPEND    1u
#define REC_UPDATE    2u
#define REC_INCOMING  3u
#define INCOMING_BODY 4u /* type, packet id, waiting */
#define INCOMING_REC  (REC_HDR + INCOMING_BODY)
/* The largest MQTT packet: 268435455 bytes of remaining length plus the
 * fixed header. */
#define MAX_PACKET          268435460u
#define MAX_BODY            (APPEND_FIXED + MAX_PACKET)
#define NO_OFFSET           UINT64_MAX
#define DEFAULT_INTERVAL_MS 100u
#define DEFAULT_COMPACT_MIN (1024u * 1024u)
#define COMPACT_CHUNK       (256u * 1024u)
/* File names longer than this are shortened and made unique by a hash. */
#define NAME_MAX_ENC 160u

typedef enum { OP_NONE = 0, OP_WRITE, OP_SYNC, OP_TRUNCATE, OP_COMPACT } op_t;

typedef struct {
  uint64_t seq;
  uint64_t deadline;
  uint64_t offset; /* of the APPEND record in the file; NO_OFFSET until written */
  uint32_t len;    /* packet length */
  uint8_t phase;
  uint8_t policy;
  uint16_t packet_id;
} entry_t;

/* An APPEND record in `pend`, whose file offset is known once it is written. */
typedef struct {
  uint64_t seq;
  size_t pos;
} pend_rec_t;

typedef struct {
  uint64_t mark; /* durable once this many bytes (queued total) are */
  uvmqtt_store_done_cb done;
  void *arg;
} waiter_t;

/* A live record copied by a compaction. */
typedef struct {
  uint64_t seq;
  uint64_t old_off;
  uint64_t new_off;
  uint32_t rec_len;
  uint8_t phase;
  uint16_t packet_id;
} copy_t;

typedef struct fstore_s fstore_t;

typedef struct {
  uv_work_t work;
  fstore_t *s;
  copy_t *copies;
  size_t n;
  uint16_t *incoming; /* ids waiting for PUBREL when the compaction began */
  size_t nincoming;
  int old_fd;
  int dir_fd;
  const char *log_path;
  const char *tmp_path;
  uint8_t *buf;
  size_t cap;
  int new_fd;
  uint64_t new_size;
  int err;
  int renamed;
} compact_t;

struct fstore_s {
  uvmqtt_store_t pub;
  uv_loop_t *loop;
  int fd;
  int lock_fd;
  int dir_fd;
  char *log_path;
  char *tmp_path;
  uint8_t sync;
  uint32_t interval_ms;
  uint64_t compact_min;

  entry_t *entries;
  size_t n, cap, ndone;

  /* Incoming QoS 2 ids waiting for PUBREL: one bit per id, allocated once
   * any is recorded. */
  uint64_t *incoming;
  uint32_t nincoming;

  /* The log as read at open, for load(); freed by load or the first append. */
  uint8_t *image;
  uint8_t loaded;
  uint8_t loading;
  uint8_t torn_dropped;

  uint8_t *pend;
  size_t pend_len, pend_cap;
  pend_rec_t *pend_recs;
  size_t npend_recs, pend_recs_cap;

  uint8_t *wbuf;
  size_t wlen, wcap, woff;
  uint64_t batch_off;

  uint64_t file_size;
  uint64_t live_bytes;
  uint64_t next_compact_size;
  uint64_t queued_total, written_total, synced_total, sync_target;

  waiter_t *waiters;
  size_t wq_head, wq_len, wq_cap;

  uv_fs_t req;
  uv_timer_t timer;
  compact_t *compact;
  uint32_t compactions;
  op_t busy;
  int error;
  uint32_t syncs; /* fdatasync calls finished */
  uint8_t timer_armed;
  uint8_t sync_due;
  uint8_t closing;
  uint8_t finishing;
  uvmqtt_store_closed_cb close_cb;
  void *close_arg;
};

/* ---- CRC-32C ------------------------------------------------------------ */

static uint32_t crc_table[256];
static uv_once_t crc_once = UV_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t len) {
  while (len--)
    crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

uint32_t uvmqtt__crc32c(const void *data, size_t len) {
  uv_once(&crc_once, crc_init);
  return ~crc_update(0xFFFFFFFFu, data, len);
}

/* ---- Encoding ------------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

/* The CRC of a record whose length field and body are in place at `rec`. */
static uint32_t record_crc(const uint8_t *rec, uint32_t body_len) {
  uint8_t len_le[4];
  put32(len_le, body_len);
  uv_once(&crc_once, crc_init);
  uint32_t c = crc_update(0xFFFFFFFFu, len_le, 4);
  return ~crc_update(c, rec + REC_HDR, body_len);
}

static void seal_record(uint8_t *rec, uint32_t body_len) {
  put32(rec, body_len);
  put32(rec + 4, record_crc(rec, body_len));
}

static void encode_update(uint8_t *rec, uint64_t seq, uint8_t phase, uint16_t packet_id) {
  uint8_t *b = rec + REC_HDR;
  b[0] = REC_UPDATE;
  put64(b + 1, seq);
  b[9] = phase;
  put16(b + 10, packet_id);
  seal_record(rec, UPDATE_BODY);
}

static void encode_incoming(uint8_t *rec, uint16_t packet_id, uint8_t waiting) {
  uint8_t *b = rec + REC_HDR;
  b[0] = REC_INCOMING;
  put16(b + 1, packet_id);
  b[3] = waiting;
  seal_record(rec, INCOMING_BODY);
}

static int incoming_has(const fstore_t *s, uint16_t id) {
  return s->incoming != NULL && (s->incoming[id >> 6] >> (id & 63) & 1u);
}

static int incoming_set(fstore_t *s, uint16_t id, int waiting) {
  if (incoming_has(s, id) == (waiting != 0)) return 0;
  if (s->incoming == NULL) {
    s->incoming = uvmqtt__calloc(65536u / 64u, sizeof *s->incoming);
    if (s->incoming == NULL) return UVMQTT_ENOMEM;
  }
  s->incoming[id >> 6] ^= (uint64_t)1 << (id & 63);
  if (waiting)
    s->nincoming++;
  else
    s->nincoming--;
  return 0;
}

static uint64_t append_rec_len(uint32_t packet_len) {
  return REC_HDR + APPEND_FIXED + (uint64_t)packet_len;
}

/* What an entry costs in a compacted log. */
static uint64_t entry_live_bytes(const entry_t *e) {
  return append_rec_len(e->len) + (e->phase != UVMQTT_STORE_QUEUED ? UPDATE_REC : 0);
}

/* ---- Entries -------------------------------------------------------------- */

/* The index of `seq`, or where it would go (then *found is 0). */
static size_t entry_find(const fstore_t *s, uint64_t seq, int *found) {
  size_t lo = 0, hi = s->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->entries[mid].seq < seq)
      lo = mid + 1;
    else
      hi = mid;
  }
  *found = lo < s->n && s->entries[lo].seq == seq;
  return lo;
}

static int entries_reserve(fstore_t *s) {
  if (s->n < s->cap) return 0;
  size_t cap = s->cap ? s->cap * 2 : 64;
  entry_t *e = uvmqtt__realloc(s->entries, cap * sizeof(*e));
  if (e == NULL) return UVMQTT_ENOMEM;
  s->entries = e;
  s->cap = cap;
  return 0;
}

/* Inserts or, for a seq whose message is DONE, replaces: a client may start
 * its numbering again once nothing is live. Returns the entry, or NULL when a
 * live message already has this seq. The caller reserved room. */
static entry_t *entry_put(fstore_t *s, uint64_t seq) {
  int found;
  size_t i = entry_find(s, seq, &found);
  if (found) {
    if (s->entries[i].phase != UVMQTT_STORE_DONE) return NULL;
    s->ndone--;
  } else {
    memmove(&s->entries[i + 1], &s->entries[i], (s->n - i) * sizeof(entry_t));
    s->n++;
  }
  entry_t *e = &s->entries[i];
  memset(e, 0, sizeof(*e));
  e->seq = seq;
  e->offset = NO_OFFSET;
  return e;
}

/* Drops DONE entries once they are most of the table. */
static void entries_sweep(fstore_t *s) {
  if (s->ndone < 64 || s->ndone * 2 < s->n) return;
  size_t j = 0;
  for (size_t i = 0; i < s->n; i++)
    if (s->entries[i].phase != UVMQTT_STORE_DONE) s->entries[j++] = s->entries[i];
  s->n = j;
  s->ndone = 0;
}

/* Applies a phase change to the entry and the live byte count. */
static void entry_set_phase(fstore_t *s, entry_t *e, uint8_t phase, uint16_t packet_id) {
  s->live_bytes -= entry_live_bytes(e);
  e->phase = phase;
  e->packet_id = packet_id;
  if (phase == UVMQTT_STORE_DONE)
    s->ndone++;
  else
    s->live_bytes += entry_live_bytes(e);
}

/* ---- Waiters (a ring of pending done callbacks) ------------------------------ */

static int waiters_reserve(fstore_t *s) {
  if (s->wq_len < s->wq_cap) return 0;
  size_t cap = s->wq_cap ? s->wq_cap * 2 : 64;
  waiter_t *w = uvmqtt__malloc(cap * sizeof(*w));
  if (w == NULL) return UVMQTT_ENOMEM;
  for (size_t i = 0; i < s->wq_len; i++)
    w[i] = s->waiters[(s->wq_head + i) % s->wq_cap];
  uvmqtt__free(s->waiters);
  s->waiters = w;
  s->wq_cap = cap;
  s->wq_head = 0;
  return 0;
}

/* Runs, in order, the callbacks whose records are durable (all of them with
 * `status` when it is an error). A callback may append, update or close. */
static void waiters_run(fstore_t *s, uint64_t durable, int status) {
  while (s->wq_len > 0) {
    waiter_t w = s->waiters[s->wq_head];
    if (status == 0 && w.mark > durable) break;
    s->wq_head = (s->wq_head + 1) % s->wq_cap;
    s->wq_len--;
    if (w.done != NULL) w.done(w.arg, status);
  }
}

/* What `done` waits for: the sync, or with INTERVAL and NEVER the write
 * (INTERVAL then syncs within interval_ms). */
static uint64_t durable_total(const fstore_t *s) {
  return s->sync == UVMQTT_FILE_SYNC_ALWAYS ? s->synced_total : s->written_total;
}

/* ---- The file operation pipeline --------------------------------------------- */

static void kick(fstore_t *s);

static int pend_reserve(fstore_t *s, size_t more) {
  if (s->pend_len + more <= s->pend_cap) return 0;
  size_t cap = s->pend_cap ? s->pend_cap : 4096;
  while (cap < s->pend_len + more)
    cap *= 2;
  uint8_t *p = uvmqtt__realloc(s->pend, cap);
  if (p == NULL) return UVMQTT_ENOMEM;
  s->pend = p;
  s->pend_cap = cap;
  return 0;
}

static void on_write(uv_fs_t *req);

static void issue_write(fstore_t *s) {
  uv_buf_t b = uv_buf_init((char *)s->wbuf + s->woff, (unsigned)(s->wlen - s->woff));
  int rc = uv_fs_write(s->loop, &s->req, s->fd, &b, 1, (int64_t)(s->batch_off + s->woff), on_write);
  if (rc < 0) {
    /* Not even queued: report it the same way a failed write is. */
    s->req.result = rc;
    s->req.data = s;
    on_write(&s->req);
  }
}

static void start_write(fstore_t *s) {
  /* Swap buffers: the pending records become the batch in flight. */
  uint8_t *tmp = s->wbuf;
  size_t tcap = s->wcap;
  s->wbuf = s->pend;
  s->wcap = s->pend_cap;
  s->wlen = s->pend_len;
  s->pend = tmp;
  s->pend_cap = tcap;
  s->pend_len = 0;
  s->woff = 0;
  s->batch_off = s->file_size;
  for (size_t i = 0; i < s->npend_recs; i++) {
    int found;
    size_t k = entry_find(s, s->pend_recs[i].seq, &found);
    if (found) s->entries[k].offset = s->batch_off + s->pend_recs[i].pos;
  }
  s->npend_recs = 0;
  s->busy = OP_WRITE;
  issue_write(s);
}

static void on_truncate(uv_fs_t *req) {
  fstore_t *s = req->data;
  uv_fs_req_cleanup(req);
  s->busy = OP_NONE;
  kick(s);
}

/* Makes `err` sticky and cuts a partly written batch off the file, so the
 * log ends at its last whole record even before the next open. */
static void fail(fstore_t *s, int err) {
  if (s->error == 0) s->error = err;
  s->busy = OP_TRUNCATE;
  s->req.data = s;
  if (uv_fs_ftruncate(s->loop, &s->req, s->fd, (int64_t)s->file_size, on_truncate) < 0) {
    s->busy = OP_NONE;
    kick(s);
  }
}

static void on_timer(uv_timer_t *t) {
  fstore_t *s = t->data;
  s->timer_armed = 0;
  s->sync_due = 1;
  kick(s);
}

static void on_write(uv_fs_t *req) {
  fstore_t *s = req->data;
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  if (r < 0 || (r == 0 && s->woff < s->wlen)) {
    fail(s, r < 0 ? (int)r : UV_EIO);
    return;
  }
  s->woff += (size_t)r;
  if (s->woff < s->wlen) {
    issue_write(s);
    return;
  }
  s->file_size += s->wlen;
  s->written_total += s->wlen;
  s->busy = OP_NONE;
  if (s->sync != UVMQTT_FILE_SYNC_ALWAYS) waiters_run(s, durable_total(s), 0);
  if (s->sync == UVMQTT_FILE_SYNC_INTERVAL && !s->timer_armed && !s->sync_due) {
    s->timer_armed = 1;
    uv_timer_start(&s->timer, on_timer, s->interval_ms, 0);
  }
  kick(s);
}

static void on_sync(uv_fs_t *req) {
  fstore_t *s = req->data;
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  if (r < 0) {
    fail(s, (int)r);
    return;
  }
  s->busy = OP_NONE;
  s->synced_total = s->sync_target;
  s->syncs++;
  waiters_run(s, durable_total(s), 0);
  if (s->sync == UVMQTT_FILE_SYNC_INTERVAL && s->synced_total < s->written_total &&
      !s->timer_armed && !s->sync_due) {
    s->timer_armed = 1;
    uv_timer_start(&s->timer, on_timer, s->interval_ms, 0);
  }
  kick(s);
}

static int need_sync(const fstore_t *s) {
  if (s->sync == UVMQTT_FILE_SYNC_NEVER || s->synced_total >= s->written_total) return 0;
  return s->sync == UVMQTT_FILE_SYNC_ALWAYS || s->sync_due || s->closing;
}

static void start_sync(fstore_t *s) {
  s->sync_due = 0;
  s->sync_target = s->written_total;
  s->busy = OP_SYNC;
  s->req.data = s;
  int rc = uv_fs_fdatasync(s->loop, &s->req, s->fd, on_sync);
  if (rc < 0) {
    s->req.result = rc;
    on_sync(&s->req);
  }
}

/* ---- Compaction ------------------------------------------------------------------ */

static int want_compact(const fstore_t *s) {
  return s->loaded && !s->closing && s->file_size >= s->compact_min &&
         s->file_size >= s->next_compact_size && (s->live_bytes + MAGIC_LEN) * 2 < s->file_size;
}

static int write_all(int fd, const uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (w == 0) return UV_EIO;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

static int pread_all(int fd, uint8_t *p, size_t len, uint64_t off) {
  while (len > 0) {
    ssize_t r = pread(fd, p, len, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) return UVMQTT_ESTORECORRUPT;
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* Copies the live records into the new file: on the thread pool, while the
 * loop thread leaves the old file alone (no other operation runs). */
static int compact_copy(compact_t *c, int fd) {
  size_t used = MAGIC_LEN;
  uint64_t off = MAGIC_LEN;
  memcpy(c->buf, MAGIC, MAGIC_LEN);
  for (size_t i = 0; i < c->n; i++) {
    copy_t *cp = &c->copies[i];
    if (used + cp->rec_len + UPDATE_REC > c->cap) {
      int rc = write_all(fd, c->buf, used);
      if (rc < 0) return rc;
      used = 0;
    }
    uint8_t *rec = c->buf + used;
    int rc = pread_all(c->old_fd, rec, cp->rec_len, cp->old_off);
    if (rc < 0) return rc;
    /* Never carry a damaged record into the log that replaces this one. */
    if (get32(rec) != cp->rec_len - REC_HDR || rec[REC_HDR] != REC_APPEND ||
        get32(rec + 4) != record_crc(rec, cp->rec_len - REC_HDR) ||
        get64(rec + REC_HDR + 1) != cp->seq)
      return UVMQTT_ESTORECORRUPT;
    cp->new_off = off;
    used += cp->rec_len;
    off += cp->rec_len;
    const uint8_t *b = rec + REC_HDR;
    if (b[9] != cp->phase || get16(b + 11) != cp->packet_id) {
      encode_update(c->buf + used, cp->seq, cp->phase, cp->packet_id);
      used += UPDATE_REC;
      off += UPDATE_REC;
    }
  }
  /* The incoming ids still waiting, so that they survive the old log. */
  for (size_t i = 0; i < c->nincoming; i++) {
    if (used + INCOMING_REC > c->cap) {
      int rc = write_all(fd, c->buf, used);
      if (rc < 0) return rc;
      used = 0;
    }
    encode_incoming(c->buf + used, c->incoming[i], 1);
    used += INCOMING_REC;
    off += INCOMING_REC;
  }
  int rc = write_all(fd, c->buf, used);
  if (rc < 0) return rc;
  c->new_size = off;
  return 0;
}

static void compact_work(uv_work_t *work) {
  compact_t *c = work->data;
  int fd = open(c->tmp_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    c->err = -errno;
    return;
  }
  int rc = compact_copy(c, fd);
  if (rc == 0 && fsync(fd) != 0) rc = -errno;
  if (rc == 0 && rename(c->tmp_path, c->log_path) != 0) rc = -errno;
  if (rc < 0) {
    close(fd);
    unlink(c->tmp_path);
    c->err = rc;
    return;
  }
  c->renamed = 1;
  c->new_fd = fd;
  /* The rename is durable only once the directory is. */
  if (fsync(c->dir_fd) != 0) c->err = -errno;
}

static void compact_after(uv_work_t *work, int status) {
  compact_t *c = work->data;
  fstore_t *s = c->s;
  (void)status; /* Work queued on the pool is never cancelled here. */
  s->busy = OP_NONE;
  s->compact = NULL;
  if (c->renamed) {
    close(s->fd);
    s->fd = c->new_fd;
    s->file_size = c->new_size;
    for (size_t i = 0; i < c->n; i++) {
      int found;
      size_t k = entry_find(s, c->copies[i].seq, &found);
      /* A seq reused meanwhile names another record: leave it be. */
      if (found && s->entries[k].offset == c->copies[i].old_off)
        s->entries[k].offset = c->copies[i].new_off;
    }
    s->compactions++;
    if (c->err < 0 && s->error == 0) s->error = c->err;
  } else {
    /* The old log is intact; try again only once it has grown much more. */
    s->next_compact_size = s->file_size * 2;
  }
  uvmqtt__free(c->copies);
  uvmqtt__free(c->incoming);
  uvmqtt__free(c->buf);
  uvmqtt__free(c);
  kick(s);
}

/* Snapshots the live records written so far and hands the copy to the pool.
 * Returns 0 when it started. */
static int start_compact(fstore_t *s) {
  compact_t *c = uvmqtt__calloc(1, sizeof(*c));
  size_t live = s->n - s->ndone;
  if (c == NULL) return UVMQTT_ENOMEM;
  c->copies = uvmqtt__malloc((live ? live : 1) * sizeof(copy_t));
  size_t biggest = 0;
  for (size_t i = 0; i < s->n; i++)
    if (s->entries[i].len > biggest) biggest = s->entries[i].len;
  c->cap = COMPACT_CHUNK;
  if (c->cap < append_rec_len((uint32_t)biggest) + UPDATE_REC + MAGIC_LEN)
    c->cap = (size_t)append_rec_len((uint32_t)biggest) + UPDATE_REC + MAGIC_LEN;
  c->buf = uvmqtt__malloc(c->cap);
  c->incoming = uvmqtt__malloc((s->nincoming ? s->nincoming : 1) * sizeof *c->incoming);
  if (c->copies == NULL || c->buf == NULL || c->incoming == NULL) {
    uvmqtt__free(c->copies);
    uvmqtt__free(c->incoming);
    uvmqtt__free(c->buf);
    uvmqtt__free(c);
    return UVMQTT_ENOMEM;
  }
  for (uint32_t id = 1; id < 65536u && c->nincoming < s->nincoming; id++)
    if (incoming_has(s, (uint16_t)id)) c->incoming[c->nincoming++] = (uint16_t)id;
  for (size_t i = 0; i < s->n; i++) {
    const entry_t *e = &s->entries[i];
    /* Records still in `pend` are written to the new file afterwards. */
    if (e->phase == UVMQTT_STORE_DONE || e->offset == NO_OFFSET) continue;
    copy_t *cp = &c->copies[c->n++];
    cp->seq = e->seq;
    cp->old_off = e->offset;
    cp->rec_len = (uint32_t)append_rec_len(e->len);
    cp->phase = e->phase;
    cp->packet_id = e->packet_id;
  }
  c->s = s;
  c->old_fd = s->fd;
  c->dir_fd = s->dir_fd;
  c->log_path = s->log_path;
  c->tmp_path = s->tmp_path;
  c->new_fd = -1;
  c->work.data = c;
  s->busy = OP_COMPACT;
  s->compact = c;
  int rc = uv_queue_work(s->loop, &c->work, compact_work, compact_after);
  if (rc < 0) {
    s->busy = OP_NONE;
    s->compact = NULL;
    uvmqtt__free(c->copies);
    uvmqtt__free(c->incoming);
    uvmqtt__free(c->buf);
    uvmqtt__free(c);
    return rc;
  }
  return 0;
}

/* ---- Closing ------------------------------------------------------------------------ */

static void free_store(fstore_t *s) {
  uvmqtt__free(s->entries);
  uvmqtt__free(s->incoming);
  uvmqtt__free(s->image);
  uvmqtt__free(s->pend);
  uvmqtt__free(s->pend_recs);
  uvmqtt__free(s->wbuf);
  uvmqtt__free(s->waiters);
  uvmqtt__free(s->log_path);
  uvmqtt__free(s->tmp_path);
  uvmqtt__free(s);
}

static void on_timer_closed(uv_handle_t *h) {
  fstore_t *s = h->data;
  uvmqtt_store_closed_cb cb = s->close_cb;
  void *arg = s->close_arg;
  close(s->fd);
  close(s->dir_fd);
  /* Closing the lock file releases the flock. */
  close(s->lock_fd);
  free_store(s);
  if (cb != NULL) cb(arg);
}

/* Picks the next file operation, or finishes a close once nothing is left.
 * Compaction goes before pending writes: under steady load there is always
 * something pending, and records wait for it only as long as one copy. */
static void kick(fstore_t *s) {
  if (s->busy != OP_NONE || s->finishing) return;
  if (s->error < 0) {
    s->pend_len = 0;
    s->npend_recs = 0;
    waiters_run(s, 0, s->error);
  } else if (want_compact(s) && start_compact(s) == 0) {
    return;
  } else if (s->pend_len > 0) {
    start_write(s);
    return;
  } else if (need_sync(s)) {
    start_sync(s);
    return;
  }
  if (s->closing && s->busy == OP_NONE && !s->finishing) {
    s->finishing = 1;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
  }
}

/* ---- The store interface ---------------------------------------------------------------- */

static void release_image(fstore_t *s) {
  uvmqtt__free(s->image);
  s->image = NULL;
  s->loaded = 1;
}

static int fs_append(void *state, const uvmqtt_store_record_t *rec, uvmqtt_store_done_cb done,
                     void *arg) {
  fstore_t *s = state;
  if (s == NULL || rec == NULL || (rec->packet == NULL && rec->len > 0) || rec->len > MAX_PACKET ||
      rec->phase >= UVMQTT_STORE_DONE)
    return UVMQTT_EINVAL;
  if (s->closing) return UVMQTT_ECLOSED;
  if (s->loading) return UVMQTT_EBUSY;
  if (s->error < 0) return s->error;
  int found;
  size_t i = entry_find(s, rec->seq, &found);
  if (found && s->entries[i].phase != UVMQTT_STORE_DONE) return UVMQTT_EINVAL;
  size_t rlen = (size_t)append_rec_len(rec->len);
  if (entries_reserve(s) < 0 || pend_reserve(s, rlen) < 0 || waiters_reserve(s) < 0)
    return UVMQTT_ENOMEM;
  if (s->npend_recs == s->pend_recs_cap) {
    size_t cap = s->pend_recs_cap ? s->pend_recs_cap * 2 : 64;
    pend_rec_t *p = uvmqtt__realloc(s->pend_recs, cap * sizeof(*p));
    if (p == NULL) return UVMQTT_ENOMEM;
    s->pend_recs = p;
    s->pend_recs_cap = cap;
  }
  if (!s->loaded) release_image(s);

  uint8_t *r = s->pend + s->pend_len;
  uint8_t *b = r + REC_HDR;
  b[0] = REC_APPEND;
  put64(b + 1, rec->seq);
  b[9] = rec->phase;
  b[10] = rec->policy;
  put16(b + 11, rec->packet_id);
  put64(b + 13, rec->deadline_unix_ms);
  if (rec->len > 0) memcpy(b + APPEND_FIXED, rec->packet, rec->len);
  seal_record(r, (uint32_t)(rlen - REC_HDR));
  s->pend_recs[s->npend_recs].seq = rec->seq;
  s->pend_recs[s->npend_recs].pos = s->pend_len;
  s->npend_recs++;
  s->pend_len += rlen;
  s->queued_total += rlen;

  entry_t *e = entry_put(s, rec->seq);
  e->deadline = rec->deadline_unix_ms;
  e->len = rec->len;
  e->phase = rec->phase;
  e->policy = rec->policy;
  e->packet_id = rec->packet_id;
  s->live_bytes += entry_live_bytes(e);

  waiter_t *w = &s->waiters[(s->wq_head + s->wq_len) % s->wq_cap];
  w->mark = s->queued_total;
  w->done = done;
  w->arg = arg;
  s->wq_len++;
  kick(s);
  return 0;
}

static int fs_update(void *state, uint64_t seq, uint8_t phase, uint16_t packet_id,
                     uvmqtt_store_done_cb done, void *arg) {
  fstore_t *s = state;
  if (s == NULL || phase > UVMQTT_STORE_DONE) return UVMQTT_EINVAL;
  if (s->closing) return UVMQTT_ECLOSED;
  if (s->loading) return UVMQTT_EBUSY;
  if (s->error < 0) return s->error;
  int found;
  size_t i = entry_find(s, seq, &found);
  if (!found || s->entries[i].phase == UVMQTT_STORE_DONE) return UVMQTT_EINVAL;
  if (pend_reserve(s, UPDATE_REC) < 0 || (done != NULL && waiters_reserve(s) < 0))
    return UVMQTT_ENOMEM;
  encode_update(s->pend + s->pend_len, seq, phase, packet_id);
  s->pend_len += UPDATE_REC;
  s->queued_total += UPDATE_REC;
  entry_set_phase(s, &s->entries[i], phase, packet_id);
  entries_sweep(s);
  if (done != NULL) {
    waiter_t *w = &s->waiters[(s->wq_head + s->wq_len) % s->wq_cap];
    w->mark = s->queued_total;
    w->done = done;
    w->arg = arg;
    s->wq_len++;
  }
  kick(s);
  return 0;
}

static int fs_incoming(void *state, uint16_t packet_id, int waiting) {
  fstore_t *s = state;
  if (s == NULL || packet_id == 0) return UVMQTT_EINVAL;
  if (s->closing) return UVMQTT_ECLOSED;
  if (s->error < 0) return s->error;
  if (incoming_has(s, packet_id) == (waiting != 0)) return 0;
  if (pend_reserve(s, INCOMING_REC) < 0) return UVMQTT_ENOMEM;
  if (incoming_set(s, packet_id, waiting) < 0) return UVMQTT_ENOMEM;
  encode_incoming(s->pend + s->pend_len, packet_id, waiting != 0);
  s->pend_len += INCOMING_REC;
  s->queued_total += INCOMING_REC;
  kick(s);
  return 0;
}

static int fs_load_incoming(void *state, void (*each)(void *arg, uint16_t packet_id), void *arg) {
  fstore_t *s = state;
  if (s == NULL || each == NULL) return UVMQTT_EINVAL;
  for (uint32_t id = 1; s->nincoming && id < 65536u; id++)
    if (incoming_has(s, (uint16_t)id)) each(arg, (uint16_t)id);
  return 0;
}

static int fs_load(void *state, uvmqtt_store_each_cb each, void *arg) {
  fstore_t *s = state;
  if (s == NULL || each == NULL) return UVMQTT_EINVAL;
  if (s->loaded || s->closing) return UVMQTT_EBUSY;
  s->loading = 1;
  for (size_t i = 0; i < s->n; i++) {
    const entry_t *e = &s->entries[i];
    if (e->phase == UVMQTT_STORE_DONE) continue;
    uvmqtt_store_record_t rec;
    rec.seq = e->seq;
    rec.packet = s->image + e->offset + REC_HDR + APPEND_FIXED;
    rec.len = e->len;
    rec.phase = e->phase;
    rec.policy = e->policy;
    rec.packet_id = e->packet_id;
    rec.deadline_unix_ms = e->deadline;
    each(arg, &rec);
  }
  s->loading = 0;
  release_image(s);
  kick(s);
  return 0;
}

static void fs_close(void *state, uvmqtt_store_closed_cb cb, void *arg) {
  fstore_t *s = state;
  if (s == NULL || s->closing) return;
  s->closing = 1;
  s->close_cb = cb;
  s->close_arg = arg;
  kick(s);
}

void uvmqtt__file_store_stats(const uvmqtt_store_t *store, uvmqtt__file_store_stats_t *out) {
  const fstore_t *s = store->state;
  memset(out, 0, sizeof(*out));
  out->file_size = s->file_size;
  out->live_bytes = s->live_bytes;
  out->records = s->n - s->ndone;
  out->compactions = s->compactions;
  out->syncs = s->syncs;
  out->synced_bytes = s->synced_total;
  out->written_bytes = s->written_total;
  out->compacting = s->busy == OP_COMPACT;
  out->torn_dropped = s->torn_dropped;
  out->error = s->error;
}

/* ---- Opening ------------------------------------------------------------------------------ */

static int name_char_ok(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '-';
}

/* Writes `<dir>/<encoded id><suffix>`. Long ids keep a readable prefix and a
 * 64-bit FNV-1a hash of the whole id, so distinct ids stay distinct files. */
static int make_path(const char *dir, const char *client_id, const char *suffix, char *buf,
                     size_t cap) {
  if (dir == NULL || client_id == NULL || dir[0] == '\0' || client_id[0] == '\0')
    return UVMQTT_EINVAL;
  static const char hex[] = "0123456789abcdef";
  char name[NAME_MAX_ENC + 24];
  size_t n = 0;
  const unsigned char *p = (const unsigned char *)client_id;
  for (; *p != '\0' && n + 3 <= NAME_MAX_ENC; p++) {
    if (name_char_ok(*p)) {
      name[n++] = (char)*p;
    } else {
      name[n++] = '_';
      name[n++] = hex[*p >> 4];
      name[n++] = hex[*p & 15];
    }
  }
  if (*p != '\0') {
    uint64_t h = 1469598103934665603u;
    for (p = (const unsigned char *)client_id; *p != '\0'; p++)
      h = (h ^ *p) * 1099511628211u;
    name[n++] = '~';
    for (int i = 15; i >= 0; i--)
      name[n++] = hex[(h >> (4 * i)) & 15];
  }
  name[n] = '\0';
  int len = snprintf(buf, cap, "%s/%s%s", dir, name, suffix);
  if (len < 0) return UVMQTT_EINVAL;
  if ((size_t)len >= cap) return UVMQTT_ENOBUFS;
  return len;
}

int uvmqtt_file_store_path(const char *dir, const char *client_id, char *buf, size_t cap) {
  if (buf == NULL) return UVMQTT_EINVAL;
  return make_path(dir, client_id, ".log", buf, cap);
}

static char *path_dup(const char *dir, const char *client_id, const char *suffix) {
  size_t cap = strlen(dir) + strlen(suffix) + NAME_MAX_ENC + 32;
  char *p = uvmqtt__malloc(cap);
  if (p != NULL && make_path(dir, client_id, suffix, p, cap) < 0) {
    uvmqtt__free(p);
    p = NULL;
  }
  return p;
}

/* Reads the whole file into s->image (start-up only). */
static int read_image(fstore_t *s, uint64_t *size) {
  struct stat st;
  if (fstat(s->fd, &st) != 0) return -errno;
  *size = (uint64_t)st.st_size;
  s->image = uvmqtt__malloc((size_t)*size);
  if (s->image == NULL) return UVMQTT_ENOMEM;
  return *size > 0 ? pread_all(s->fd, s->image, (size_t)*size, 0) : 0;
}

/* 1 when a framed record with a matching CRC starts at `pos`. */
static int record_ok(const uint8_t *img, uint64_t size, uint64_t pos) {
  if (size - pos < REC_HDR + 1) return 0;
  uint32_t body_len = get32(img + pos);
  if (body_len == 0 || body_len > MAX_BODY || body_len > size - pos - REC_HDR) return 0;
  return get32(img + pos + 4) == record_crc(img + pos, body_len);
}

/* 1 when a whole APPEND or UPDATE record starts somewhere after `pos`. The
 * type and length tests go first so most offsets cost no CRC. */
static int record_after(const uint8_t *img, uint64_t size, uint64_t pos) {
  for (uint64_t q = pos + 1; q + REC_HDR + UPDATE_BODY <= size; q++) {
    uint8_t type = img[q + REC_HDR];
    uint32_t body_len = get32(img + q);
    if ((type == REC_UPDATE && body_len == UPDATE_BODY) ||
        (type == REC_INCOMING && body_len == INCOMING_BODY) ||
        (type == REC_APPEND && body_len >= APPEND_FIXED))
      if (record_ok(img, size, q)) return 1;
  }
  return 0;
}

/* Replays one whole, checked record. */
static int replay(fstore_t *s, const uint8_t *rec, uint64_t off, uint32_t body_len) {
  const uint8_t *b = rec + REC_HDR;
  if (b[0] == REC_APPEND && body_len >= APPEND_FIXED && b[9] < UVMQTT_STORE_DONE) {
    if (entries_reserve(s) < 0) return UVMQTT_ENOMEM;
    int found;
    size_t i = entry_find(s, get64(b + 1), &found);
    if (found && s->entries[i].phase != UVMQTT_STORE_DONE) return UVMQTT_ESTORECORRUPT;
    entry_t *e = entry_put(s, get64(b + 1));
    e->offset = off;
    e->phase = b[9];
    e->policy = b[10];
    e->packet_id = get16(b + 11);
    e->deadline = get64(b + 13);
    e->len = body_len - APPEND_FIXED;
    s->live_bytes += entry_live_bytes(e);
    return 0;
  }
  if (b[0] == REC_UPDATE && body_len == UPDATE_BODY && b[9] <= UVMQTT_STORE_DONE) {
    int found;
    size_t i = entry_find(s, get64(b + 1), &found);
    /* An update may outlive its message: a compaction that ran while it
     * waited to be written dropped the message as DONE already. */
    if (found && s->entries[i].phase != UVMQTT_STORE_DONE)
      entry_set_phase(s, &s->entries[i], b[9], get16(b + 10));
    return 0;
  }
  if (b[0] == REC_INCOMING && body_len == INCOMING_BODY && b[3] <= 1 && get16(b + 1) != 0)
    return incoming_set(s, get16(b + 1), b[3]);
  return UVMQTT_ESTORECORRUPT;
}

/* Checks and replays the log; sets *good_end to the end of its last whole
 * record. A bad record is a torn tail (a crash mid-write) when no whole
 * record follows it; one with a whole record after it is corruption. */
static int scan(fstore_t *s, uint64_t size, uint64_t *good_end) {
  const uint8_t *img = s->image;
  if (size < MAGIC_LEN) {
    /* A crash while the file was being created. */
    if (memcmp(img, MAGIC, (size_t)size) != 0) return UVMQTT_ESTORECORRUPT;
    *good_end = 0;
    return 0;
  }
  if (memcmp(img, MAGIC, MAGIC_LEN) != 0) return UVMQTT_ESTORECORRUPT;
  uint64_t pos = MAGIC_LEN;
  while (pos < size) {
    if (!record_ok(img, size, pos)) {
      if (record_after(img, size, pos)) return UVMQTT_ESTORECORRUPT;
      break;
    }
    uint32_t body_len = get32(img + pos);
    int rc = replay(s, img + pos, pos, body_len);
    if (rc < 0) return rc;
    pos += REC_HDR + body_len;
  }
  *good_end = pos;
  return 0;
}

static int open_files(fstore_t *s, const char *dir, const char *client_id) {
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) return -errno;
  char *lock_path = path_dup(dir, client_id, ".lock");
  s->log_path = path_dup(dir, client_id, ".log");
  s->tmp_path = path_dup(dir, client_id, ".compact");
  if (lock_path == NULL || s->log_path == NULL || s->tmp_path == NULL) {
    uvmqtt__free(lock_path);
    return UVMQTT_ENOMEM;
  }
  s->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  int err = s->lock_fd < 0 ? -errno : 0;
  uvmqtt__free(lock_path);
  if (err < 0) return err;
  if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0)
    return errno == EWOULDBLOCK ? UVMQTT_ESTORELOCKED : -errno;
  s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (s->dir_fd < 0) return -errno;
  s->fd = open(s->log_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (s->fd < 0) return -errno;
  /* A copy left by a compaction that a crash interrupted is not the log. */
  unlink(s->tmp_path);
  return 0;
}

/* Reads the log, cuts a torn tail off, or writes the header of a new log. */
static int recover(fstore_t *s) {
  uint64_t size = 0, good_end = 0;
  int rc = read_image(s, &size);
  if (rc == 0) rc = scan(s, size, &good_end);
  if (rc < 0) return rc;
  s->file_size = good_end;
  if (good_end == size && size >= MAGIC_LEN) return 0;
  if (ftruncate(s->fd, (off_t)good_end) != 0) return -errno;
  if (good_end == 0) {
    rc = write_all(s->fd, (const uint8_t *)MAGIC, MAGIC_LEN);
    if (rc < 0) return rc;
    s->file_size = MAGIC_LEN;
  } else {
    s->torn_dropped = 1;
  }
  if (fdatasync(s->fd) != 0) return -errno;
  /* A new log's name must be durable too. */
  return good_end == 0 && fsync(s->dir_fd) != 0 ? -errno : 0;
}

int uvmqtt_file_store_open(uv_loop_t *loop, const char *dir, const char *client_id,
                           const uvmqtt_file_store_opts_t *opts, uvmqtt_store_t **out) {
  if (out != NULL) *out = NULL;
  if (loop == NULL || out == NULL || make_path(dir, client_id, "", NULL, 0) == UVMQTT_EINVAL)
    return UVMQTT_EINVAL;
  if (opts != NULL && opts->sync > UVMQTT_FILE_SYNC_NEVER) return UVMQTT_EINVAL;
  fstore_t *s = uvmqtt__calloc(1, sizeof(*s));
  if (s == NULL) return UVMQTT_ENOMEM;
  s->fd = s->lock_fd = s->dir_fd = -1;
  s->loop = loop;
  s->sync = opts != NULL ? opts->sync : UVMQTT_FILE_SYNC_ALWAYS;
  s->interval_ms = opts != NULL && opts->interval_ms ? opts->interval_ms : DEFAULT_INTERVAL_MS;
  s->compact_min =
      opts != NULL && opts->compact_min_bytes ? opts->compact_min_bytes : DEFAULT_COMPACT_MIN;
  int rc = open_files(s, dir, client_id);
  if (rc == 0) rc = recover(s);
  if (rc == 0) rc = uv_timer_init(loop, &s->timer);
  if (rc < 0) {
    if (s->fd >= 0) close(s->fd);
    if (s->dir_fd >= 0) close(s->dir_fd);
    if (s->lock_fd >= 0) close(s->lock_fd);
    free_store(s);
    return rc;
  }
  s->timer.data = s;
  s->req.data = s;
  s->pub.state = s;
  s->pub.append = fs_append;
  s->pub.update = fs_update;
  s->pub.load = fs_load;
  s->pub.incoming = fs_incoming;
  s->pub.load_incoming = fs_load_incoming;
  s->pub.close = fs_close;
  *out = &s->pub;
  return 0;
}
