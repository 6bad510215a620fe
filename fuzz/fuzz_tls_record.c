/* The TLS 1.3 record layer (src/transport/tls_record.c), which opens every
 * record a broker sends once a connection has left OpenSSL.
 *
 * Input layout: byte 0 picks the cipher suite (byte 0 % 3) and the mode
 * (byte 0 / 3 % 3); byte 1 is a content type, a cut and a tamper position;
 * the rest is the data. Both directions share one traffic secret, so that
 * what the target seals it can open again.
 *   mode 0: the data is a record as it came off the wire: it is refused or
 *           opened, never more content than a record may hold.
 *   mode 1: the data, cut in three pieces, is sealed as one record of the
 *           given content type and opened again: the same content and type
 *           come back (the inner plaintext is content, type, then zeros, so
 *           a type of 0 takes the last non-zero byte as the type); the same
 *           record with any one bit flipped is refused.
 *   mode 2: as mode 1, after a KeyUpdate of both directions. */
#include <openssl/evp.h>
#include <openssl/tls1.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/tls_record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Stops the run so libFuzzer records the input as a crash. */
static void fuzz_fail(const char *what) {
  fprintf(stderr, "fuzz check failed: %s\n", what);
  abort();
}

static const uint32_t suites[3] = {TLS1_3_CK_AES_128_GCM_SHA256, TLS1_3_CK_AES_256_GCM_SHA384,
                                   TLS1_3_CK_CHACHA20_POLY1305_SHA256};

static uint8_t rec[UVMQTT__TLS_HDR + UVMQTT__TLS_MAX_CIPHER];
static uint8_t out[UVMQTT__TLS_MAX_CIPHER];

/* What opening body || type must give: the content and type left once the
 * trailing zeros are gone, or -1 when nothing but zeros is left. */
static int expected(const uint8_t *body, size_t n, uint8_t type, size_t *len, uint8_t *got_type) {
  if (type != 0) {
    *len = n;
    *got_type = type;
    return 0;
  }
  while (n > 0 && body[n - 1] == 0)
    n--;
  if (n == 0) return -1;
  *len = n - 1;
  *got_type = body[n - 1];
  return 0;
}

static void seal_and_open(EVP_CIPHER_CTX *ctx, uvmqtt__tls_rec_t *r, uint8_t ctl,
                          const uint8_t *body, size_t n) {
  if (n > UVMQTT__TLS_MAX_PLAIN) n = UVMQTT__TLS_MAX_PLAIN;
  size_t cut1 = n ? (size_t)ctl % (n + 1) : 0;
  size_t cut2 = cut1 + (n - cut1) / 2;
  const uint8_t *piece[3] = {body, body + cut1, body + cut2};
  size_t piece_len[3] = {cut1, cut2 - cut1, n - cut2};
  uint8_t type = (uint8_t)(ctl & 0x80 ? 0 : ctl);
  long len = uvmqtt__tls_rec_seal(ctx, r, &r->wr, type, piece, piece_len, 3, rec);
  if (len != (long)(UVMQTT__TLS_HDR + n + 1 + UVMQTT__TLS_TAG)) fuzz_fail("sealed length");
  uint64_t seq = r->rd.seq;
  size_t want_len = 0, got_len = 0;
  uint8_t want_type = 0, got_type = 0;
  int want = expected(body, n, type, &want_len, &want_type);
  int rc = uvmqtt__tls_rec_open(ctx, r, &r->rd, rec, (size_t)len, out, &got_len, &got_type);
  if (rc != want) fuzz_fail("open of a sealed record");
  if (rc == 0) {
    if (got_len != want_len || got_type != want_type) fuzz_fail("content length or type");
    if (memcmp(out, body, got_len) != 0) fuzz_fail("content");
    if (r->rd.seq != seq + 1) fuzz_fail("sequence number");
  } else if (r->rd.seq != seq) {
    fuzz_fail("sequence number after a refusal");
  }
  /* Any one bit flipped, header included (it is the additional data). */
  size_t at = ((size_t)ctl * 131u + n) % (size_t)len;
  rec[at] ^= (uint8_t)(1u << (ctl % 8));
  r->rd.seq = seq;
  if (uvmqtt__tls_rec_open(ctx, r, &r->rd, rec, (size_t)len, out, &got_len, &got_type) != -1)
    fuzz_fail("a flipped bit went unnoticed");
  if (r->rd.seq != seq) fuzz_fail("sequence number after a refusal");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static EVP_CIPHER_CTX *ctx;
  if (size < 2) return 0;
  if (ctx == NULL && (ctx = EVP_CIPHER_CTX_new()) == NULL) fuzz_fail("no cipher context");
  uint32_t suite = suites[data[0] % 3];
  size_t secret_len = suite == TLS1_3_CK_AES_256_GCM_SHA384 ? 48 : 32;
  uint8_t secret[48];
  for (size_t i = 0; i < sizeof secret; i++)
    secret[i] = (uint8_t)(0x5a ^ i);
  uvmqtt__tls_rec_t r;
  if (uvmqtt__tls_rec_init(&r, suite, secret, secret, secret_len) != 0) fuzz_fail("init");
  const uint8_t *body = data + 2;
  size_t n = size - 2;
  switch (data[0] / 3 % 3) {
  case 0: {
    size_t len = 0;
    uint8_t type = 0;
    if (n > UVMQTT__TLS_HDR + UVMQTT__TLS_MAX_CIPHER) n = UVMQTT__TLS_HDR + UVMQTT__TLS_MAX_CIPHER;
    if (uvmqtt__tls_rec_open(ctx, &r, &r.rd, body, n, out, &len, &type) == 0 &&
        len > UVMQTT__TLS_MAX_PLAIN)
      fuzz_fail("more content than a record holds");
    break;
  }
  case 2:
    if (uvmqtt__tls_rec_update(&r, &r.rd) != 0 || uvmqtt__tls_rec_update(&r, &r.wr) != 0)
      fuzz_fail("KeyUpdate");
    seal_and_open(ctx, &r, data[1], body, n);
    break;
  default: seal_and_open(ctx, &r, data[1], body, n); break;
  }
  return 0;
}
