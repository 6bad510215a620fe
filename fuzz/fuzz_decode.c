/* The incremental decoder over arbitrary bytes in arbitrary chunks.
 *
 * Input layout (FUZZ_DECODE_HEADER bytes, then the byte stream):
 *   byte 0  version: 0 learn from CONNECT, 1 MQTT 3.1.1, 2 MQTT 5.0 (mod 3)
 *   byte 1  bits 0-2: maximum packet size from a table; bit 3: buffer split
 *           packets in a fixed scratch buffer instead of memory callbacks
 *   byte 2  chunking: 0 feeds the stream whole, else chunks of 1..byte 2
 *   byte 3  seed of the chunk-size sequence
 * Every packet decoded must re-encode cleanly (see fuzz_reencode), errors
 * must be sticky, and every buffer the decoder takes must come back. */
#include <stdint.h>
#include <string.h>

#include "fuzz_check.h"

#define FUZZ_DECODE_HEADER 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
  size_t live;
} fuzz_mem_t;

/* Larger than any input the runs use, so refusing it loses no packet; a
 * header may still claim up to 256 MiB, and this exercises the decoder's
 * out-of-memory path instead of spending the run on huge allocations. */
#define FUZZ_ALLOC_LIMIT (1u << 20)

static void *fuzz_alloc(void *user_data, size_t size) {
  if (size > FUZZ_ALLOC_LIMIT) return NULL;
  ((fuzz_mem_t *)user_data)->live++;
  return malloc(size);
}

static void fuzz_free(void *user_data, void *ptr) {
  fuzz_mem_t *m = user_data;
  if (m->live == 0) fuzz_fail("decoder memory", "free without alloc");
  m->live--;
  free(ptr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const uint8_t versions[3] = {0, UVMQTT_V311, UVMQTT_V5};
  static const uint32_t limits[8] = {0, 2, 5, 16, 128, 1024, 65536, 1u << 20};
  if (size < FUZZ_DECODE_HEADER) return 0;
  uint8_t version = versions[data[0] % 3];
  uint32_t max_size = limits[data[1] & 7];
  int use_scratch = (data[1] >> 3) & 1;
  uint8_t max_chunk = data[2];
  pm_rng_t rng = {data[3]};
  const uint8_t *in = data + FUZZ_DECODE_HEADER;
  size_t len = size - FUZZ_DECODE_HEADER;

  fuzz_mem_t counts = {0};
  uvmqtt_codec_mem_t mem = {fuzz_alloc, fuzz_free, &counts};
  uint8_t scratch[512];
  uvmqtt_decoder_t dec;
  uvmqtt_decoder_init(&dec, version, max_size, use_scratch ? NULL : &mem);
  if (use_scratch) {
    dec.scratch = scratch;
    dec.scratch_size = sizeof scratch;
  }

  size_t off = 0;
  while (off < len) {
    size_t chunk = max_chunk == 0 ? len - off : 1 + pm_below(&rng, max_chunk);
    if (chunk > len - off) chunk = len - off;
    size_t end = off + chunk;
    int failed = 0;
    while (off < end) {
      uvmqtt_packet_t pkt;
      int got = 0;
      ssize_t n = uvmqtt_decode(&dec, in + off, end - off, &pkt, &got);
      if (n < 0) {
        if (!fuzz_is_codec_error(n)) fuzz_fail("decode", "not a codec error");
        if (uvmqtt_decode(&dec, in + off, end - off, &pkt, &got) != n) {
          fuzz_fail("decode", "error is not sticky");
        }
        failed = 1;
        break;
      }
      if ((size_t)n > end - off) fuzz_fail("decode", "consumed more than given");
      off += (size_t)n;
      if (!got) {
        if (off != end) fuzz_fail("decode", "stopped early without a packet");
        break;
      }
      if (max_size != 0 && (size_t)n > max_size) {
        /* The bytes one call consumes all belong to the packet it completed,
         * so that packet is at least this large. */
        fuzz_fail("decode", "packet above max_packet_size accepted");
      }
      /* Before a CONNECT taught it the version, the header leaves open how
       * the decoder reads other packets; only re-encode known versions. */
      uint8_t v = dec.version;
      if (pkt.type == UVMQTT_CONNECT) v = pkt.u.connect.protocol_level;
      if (v != UVMQTT_V311 && v != UVMQTT_V5) continue;
      fuzz_reencode(&pkt, v);
    }
    if (failed) break;
  }
  uvmqtt_decoder_reset(&dec);
  if (counts.live != 0) fuzz_fail("decoder memory", "buffer not released by reset");
  return 0;
}
