/* Checks the fuzz targets share: re-encoding a decoded packet. */
#ifndef UVMQTT_FUZZ_CHECK_H
#define UVMQTT_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "packet_model.h"

/* Stops the run so libFuzzer records the input as a crash. */
static inline void fuzz_fail(const char *what, const char *detail) {
  fprintf(stderr, "fuzz check failed: %s: %s\n", what, detail);
  abort();
}

/* An error the codec may return for a packet it refuses: ours, never a
 * stray value. */
static inline int fuzz_is_codec_error(long long rc) {
  return rc <= -30000 && rc > -30100;
}

/* Takes a packet the decoder accepted, encodes it again and decodes the
 * result. Encoding may refuse the packet (the decoder is more lenient
 * about, say, direction), but only with a codec error; when it succeeds,
 * the bytes must decode to the same packet and encode to the same bytes.
 * Aborts on any violation. */
static inline void fuzz_reencode(const uvmqtt_packet_t *decoded, uint8_t version) {
  char why[256];
  pm_model_t m;
  if (pm_from_decoded(&m, decoded, why, sizeof why) != 0) fuzz_fail("decoded packet", why);

  ssize_t size = uvmqtt_encode_size(&m.pkt, version);
  if (size < 0) {
    if (!fuzz_is_codec_error(size)) fuzz_fail("encode_size", "not a codec error");
    pm_model_free(&m);
    return;
  }
  uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
  if (buf == NULL) abort();
  ssize_t n = uvmqtt_encode(&m.pkt, version, buf, (size_t)size);
  if (n != size) fuzz_fail("encode", "length differs from encode_size");
  if (size > 0 && uvmqtt_encode(&m.pkt, version, buf, (size_t)size - 1) != UVMQTT_ENOBUFS) {
    fuzz_fail("encode", "a short buffer did not give ENOBUFS");
  }

  uvmqtt_packet_t again;
  memset(&again, 0, sizeof again);
  int rc = uvmqtt_decode_packet(buf, (size_t)size, version, &again);
  if (rc != 0) fuzz_fail("decode of re-encoded packet", uvmqtt_err_name(rc));
  pm_model_t m2;
  if (pm_from_decoded(&m2, &again, why, sizeof why) != 0) fuzz_fail("re-decoded packet", why);
  if (!pm_packet_eq(&m.pkt, &m2.pkt, version, why, sizeof why)) fuzz_fail("round trip", why);

  /* Encoding is deterministic: the second round gives the same bytes. */
  ssize_t size2 = uvmqtt_encode_size(&m2.pkt, version);
  if (size2 != size) fuzz_fail("second encode", "size differs");
  uint8_t *buf2 = malloc((size_t)size);
  if (buf2 == NULL) abort();
  if (uvmqtt_encode(&m2.pkt, version, buf2, (size_t)size) != size ||
      memcmp(buf, buf2, (size_t)size) != 0) {
    fuzz_fail("second encode", "bytes differ");
  }
  free(buf2);
  pm_model_free(&m2);
  free(buf);
  pm_model_free(&m);
}

#endif
