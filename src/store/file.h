/* Internals of the file store (src/store_file.c) that tests and the
 * benchmark look at: the checksum and the store's counters. */
#ifndef UVMQTT_STORE_FILE_H
#define UVMQTT_STORE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "uvmqtt/store.h"

/* CRC-32C (Castagnoli), as every log record carries it. */
uint32_t uvmqtt__crc32c(const void *data, size_t len);

typedef struct {
  uint64_t file_size;     /* bytes in the log file, written and not cut off */
  uint64_t live_bytes;    /* what a compaction would keep */
  uint64_t records;       /* messages not DONE */
  uint32_t compactions;   /* finished since open */
  uint32_t syncs;         /* fdatasync calls finished since open */
  uint64_t written_bytes; /* written since open */
  uint64_t synced_bytes;  /* of those, covered by a finished sync */
  uint8_t compacting;     /* a compaction runs now */
  uint8_t torn_dropped;   /* open cut a torn last record off */
  int error;              /* the sticky error, 0 if none */
} uvmqtt__file_store_stats_t;

/* Fills `out` for a store made by uvmqtt_file_store_open(). */
void uvmqtt__file_store_stats(const uvmqtt_store_t *store, uvmqtt__file_store_stats_t *out);

#endif
