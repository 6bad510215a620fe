/** \file
 * uvmqtt message stores: where a client keeps its outgoing messages and
 * their in-flight state so they outlive a crash of the process.
 *
 * A store is a struct of callbacks with a `state` pointer. The client calls
 * it from its loop thread only. Two come with the library: in memory (the
 * default when no store is given: nothing persists) and a file-backed
 * append-only log (uvmqtt_file_store_open()).
 */
#ifndef UVMQTT_STORE_H
#define UVMQTT_STORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The file store runs its I/O on a libuv loop; declared here so that this
 * header, which the session layer uses, does not pull in <uv.h>. */
struct uv_loop_s;

/** Where a stored message stands. */
typedef enum {
  UVMQTT_STORE_QUEUED = 0, /**< published, not yet handed to the socket */
  UVMQTT_STORE_SENT = 1,   /**< PUBLISH sent with packet_id; no ack yet */
  UVMQTT_STORE_PUBREC = 2, /**< QoS 2: PUBREC received; PUBREL (not PUBLISH) goes next */
  UVMQTT_STORE_DONE = 3    /**< acknowledged, expired or dropped: forget it */
} uvmqtt_store_phase_t;

/** One stored message as the client hands it to a store and gets it back. */
typedef struct {
  uint64_t seq;              /**< the client's publish order; unique per store */
  const uint8_t *packet;     /**< the encoded PUBLISH as first queued */
  uint32_t len;              /**< bytes of `packet` */
  uint8_t phase;             /**< uvmqtt_store_phase_t */
  uint8_t policy;            /**< uvmqtt_delivery_kind_t */
  uint16_t packet_id;        /**< the packet id of the last PUBLISH sent; 0 before */
  uint64_t deadline_unix_ms; /**< wall-clock deadline; 0: none */
} uvmqtt_store_record_t;

/** `status` 0: the record is durable under the store's sync policy. */
typedef void (*uvmqtt_store_done_cb)(void *arg, int status);
/** Receives each record that `load` yields. */
typedef void (*uvmqtt_store_each_cb)(void *arg, const uvmqtt_store_record_t *rec);
/** Runs when a store has closed. */
typedef void (*uvmqtt_store_closed_cb)(void *arg);

/** A message store: a client calls these members; each store implements them. */
typedef struct uvmqtt_store_s {
  void *state; /**< handed to every member function */
  /** Keeps a new message (phase QUEUED). `done` runs once, later (never from
   * inside the call). Returns 0 or a negative error (then no `done`). */
  int (*append)(void *state, const uvmqtt_store_record_t *rec, uvmqtt_store_done_cb done,
                void *arg);
  /** Records a phase change of message `seq`, made durable with the next
   * sync, in order with appends. `done` may be NULL; when given it runs once,
   * later (never from inside the call), when the change is durable: the
   * client holds back the packet a change allows (the PUBLISH under a new
   * packet id, the PUBREL after PUBREC) until then, so that a restarted
   * process never repeats a step the broker already took. Every `done`, of
   * appends and updates, runs in the order of the calls. Returns 0 or a
   * negative error (then no `done`). */
  int (*update)(void *state, uint64_t seq, uint8_t phase, uint16_t packet_id,
                uvmqtt_store_done_cb done, void *arg);
  /** Calls `each` for every message not DONE, in seq order, synchronously
   * (start-up only). Views are valid during the call. Returns 0 or an error. */
  int (*load)(void *state, uvmqtt_store_each_cb each, void *arg);
  /** Flushes what is pending, releases everything, then calls `cb`. */
  void (*close)(void *state, uvmqtt_store_closed_cb cb, void *arg);
  /** Optional (NULL: incoming QoS 2 state lives in memory only). Records
   * that the incoming QoS 2 message `packet_id` was delivered and its
   * PUBREL is awaited (`waiting` 1), or that the PUBREL came (0), in order
   * with the other records. A restarted process then answers the broker's
   * resend of that PUBLISH (DUP) with PUBREC without delivering it a second
   * time. Returns 0 or a negative error (the client goes on in memory). */
  int (*incoming)(void *state, uint16_t packet_id, int waiting);
  /** Optional: calls `each` for every incoming id still waiting for its
   * PUBREL, synchronously (start-up only). Returns 0 or an error. */
  int (*load_incoming)(void *state, void (*each)(void *arg, uint16_t packet_id), void *arg);
} uvmqtt_store_t;

/* ---- The file store -------------------------------------------------------
 *
 * An append-only log, one per client id, in a directory: `<name>.log` holds
 * the records, `<name>.lock` is held with flock() while the store is open so
 * a second process cannot use the same log. `<name>` is the client id with
 * every byte outside [A-Za-z0-9-] written as `_` and two hex digits.
 *
 * Every record carries its length and a CRC-32C. After a crash the last
 * record may be torn: at open it is detected (short, or a bad CRC, with no
 * whole record after it) and cut off before anything is appended. A bad
 * record with a whole record after it is corruption, not a crash: the open
 * fails with UVMQTT_ESTORECORRUPT and the file is left untouched for
 * inspection (nothing later in the log is thrown away silently).
 *
 * Writes run on libuv's thread pool, at most one at a time; records that
 * arrive meanwhile are batched into the next write. When acknowledged
 * records make up more than half of a log larger than `compact_min_bytes`,
 * the live records are copied to a new file on the thread pool, which is
 * synced and renamed over the log (then the directory is synced). Records
 * that arrive meanwhile wait and go to the new file.
 *
 * A write or sync error (UV_ENOSPC, UV_EFBIG, UV_EIO...) is sticky: the
 * batch that failed is cut off the file, its appends and every later one get
 * the error through `done`, and append/update return it from then on. Close
 * the store and open it again to retry; what was stored before is intact.
 */

/** When the file store makes its log durable. */
typedef enum {
  /** fsync after every write, before any `done` it covers runs. Each done
   * means "on disk". Records arriving during a write/sync share the next one
   * (group commit), so the cost is one sync per batch, not per message. */
  UVMQTT_FILE_SYNC_ALWAYS = 0,
  /** `done` runs once the write reached the kernel, and an fsync follows
   * within `interval_ms` of every write (batched: one per interval at most
   * under load). Survives a crash of the process at once, and a power cut
   * except for the records of the last interval_ms. Nearly the speed of
   * NEVER, with a bound on what a power cut can take. */
  UVMQTT_FILE_SYNC_INTERVAL,
  /** Never fsync; `done` runs once the write reached the kernel. Survives a
   * crash of the process, not of the machine (a power cut may lose the
   * last seconds of records). The fastest. */
  UVMQTT_FILE_SYNC_NEVER
} uvmqtt_file_sync_t;

/** File store settings; zeroed means the defaults. */
typedef struct {
  uint8_t sync;               /**< uvmqtt_file_sync_t; default UVMQTT_FILE_SYNC_ALWAYS */
  uint32_t interval_ms;       /**< for UVMQTT_FILE_SYNC_INTERVAL; 0: 100 ms */
  uint64_t compact_min_bytes; /**< no compaction below this log size; 0: 1 MiB */
} uvmqtt_file_store_opts_t;

/** Opens (creating `dir` and the log if needed) the file store of
 * `client_id` in `dir` and hands it out in `*out`. `opts` may be NULL (the
 * defaults). The store runs on `loop` and must be closed through its
 * `close` member, which releases it.
 *
 * Open reads and checks the whole log synchronously: it is meant for
 * start-up, before the client connects. So is `load`, which yields the
 * records read at open; it must come before the first append (then it
 * returns UVMQTT_EBUSY). The views it hands out are valid during the call;
 * `each` must not call the store.
 *
 * Errors: UVMQTT_EINVAL (NULL or empty argument, bad option),
 * UVMQTT_ESTORELOCKED (another process, or another open store, holds this
 * client id's log), UVMQTT_ESTORECORRUPT (bad header, or a damaged record in
 * the middle of the log), UVMQTT_ENOMEM, or a libuv error from the file
 * system (UV_EACCES, UV_ENOTDIR, UV_ENOSPC...). */
int uvmqtt_file_store_open(struct uv_loop_s *loop, const char *dir, const char *client_id,
                           const uvmqtt_file_store_opts_t *opts, uvmqtt_store_t **out);

/** Writes the path of the log `uvmqtt_file_store_open(dir, client_id)` uses
 * into `buf`. Returns its length, or UVMQTT_EINVAL / UVMQTT_ENOBUFS. */
int uvmqtt_file_store_path(const char *dir, const char *client_id, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
