/* Writes a seed corpus for the fuzz targets: valid packets of every type,
 * both versions, with and without properties, made by the encoder itself so
 * no binary files need to live in the repository.
 *
 * Usage: uvmqtt-fuzz-corpus OUTDIR
 * Creates OUTDIR/fuzz_decode/ and OUTDIR/fuzz_roundtrip/ in the input
 * layouts those targets document, OUTDIR/fuzz_ws_handshake/ with a few
 * HTTP response heads and OUTDIR/fuzz_tls_record/ with an input of each
 * mode and cipher suite. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "packet_model.h"

#define SEEDS_PER_TYPE 4
#define STREAMS        24

static int make_dir(const char *path) {
  if (mkdir(path, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "mkdir %s: %s\n", path, strerror(errno));
    return -1;
  }
  return 0;
}

static int write_file(const char *dir, const char *name, const uint8_t *a, size_t alen,
                      const uint8_t *b, size_t blen) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL) {
    fprintf(stderr, "open %s: %s\n", path, strerror(errno));
    return -1;
  }
  int ok = fwrite(a, 1, alen, f) == alen && fwrite(b, 1, blen, f) == blen;
  if (fclose(f) != 0) ok = 0;
  if (!ok) fprintf(stderr, "write %s failed\n", path);
  return ok ? 0 : -1;
}

/* HTTP response heads for fuzz_ws_handshake: byte 0 picks the parser (bit
 * 0: proxy) and the read size (bits 1-7). */
static const struct {
  const char *name;
  const char *text;
} http_seeds[] = {
    {"upgrade", "\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                "Sec-WebSocket-Protocol: mqtt\r\n\r\n\x82\x02\x20\x02"},
    {"upgrade-lists", "\x0eHTTP/1.1 101 OK\r\nupgrade: WebSocket, h2c\r\nconnection: keep-alive, "
                      "upgrade\r\nsec-websocket-accept:s3pPLMBiTxaQ9kYGzzhZRbK+xOo=  \r\n"
                      "Sec-WebSocket-Protocol: mqtt\r\nSec-WebSocket-Extensions:\r\n\r\n"},
    {"refused", "\x00HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\r\n"},
    {"proxy-ok", "\x01HTTP/1.1 200 Connection established\r\nProxy-Agent: tinyproxy\r\n\r\n"},
    {"proxy-407", "\x03HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic "
                  "realm=\"p\"\r\n\r\n"},
};

static ssize_t encode_random(pm_gen_t *g, pm_rng_t *r, uint8_t type, uint8_t version, uint8_t *out,
                             size_t cap) {
  pm_random_packet(g, r, type, version);
  ssize_t n = uvmqtt_encode(&g->pkt, version, out, cap);
  if (n < 0) {
    fprintf(stderr, "encode type %u v%u: %s\n", type, version, uvmqtt_err_name((int)n));
  }
  return n;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 2;
  }
  char dec_dir[4096];
  char rt_dir[4096];
  snprintf(dec_dir, sizeof dec_dir, "%s/fuzz_decode", argv[1]);
  snprintf(rt_dir, sizeof rt_dir, "%s/fuzz_roundtrip", argv[1]);
  if (make_dir(argv[1]) || make_dir(dec_dir) || make_dir(rt_dir)) return 1;
  char http_dir[4096];
  snprintf(http_dir, sizeof http_dir, "%s/fuzz_ws_handshake", argv[1]);
  if (make_dir(http_dir)) return 1;
  for (size_t i = 0; i < sizeof http_seeds / sizeof http_seeds[0]; i++) {
    const char *t = http_seeds[i].text;
    /* Byte 0 may be NUL: it is written apart from the text after it. */
    if (write_file(http_dir, http_seeds[i].name, (const uint8_t *)t, 1, (const uint8_t *)t + 1,
                   strlen(t + 1)))
      return 1;
  }

  /* fuzz_tls_record: byte 0 picks suite (% 3) and mode (/ 3 % 3), byte 1
   * the content type, cut and tamper position, the rest is the data. */
  char tls_dir[4096];
  snprintf(tls_dir, sizeof tls_dir, "%s/fuzz_tls_record", argv[1]);
  if (make_dir(tls_dir)) return 1;
  static const uint8_t tls_body[] = "\x30\x0d\x00\x05"
                                    "a/b/c"
                                    "payload\0\0\0";
  for (uint8_t head0 = 0; head0 < 9; head0++) {
    uint8_t head[2] = {head0, (uint8_t)(head0 * 37u)};
    char tls_name[32];
    snprintf(tls_name, sizeof tls_name, "suite%u-mode%u", head0 % 3u, head0 / 3u);
    if (write_file(tls_dir, tls_name, head, 2, tls_body, sizeof tls_body - 1)) return 1;
  }

  pm_gen_t *g = calloc(1, sizeof *g);
  uint8_t *buf = malloc(1u << 16);
  if (g == NULL || buf == NULL) return 1;
  g->max_payload = 64;
  pm_rng_t r = {0xC0A9u};
  unsigned files = 0;
  char name[64];

  for (uint8_t version = UVMQTT_V311; version <= UVMQTT_V5; version++) {
    for (uint8_t type = UVMQTT_CONNECT; type <= UVMQTT_AUTH; type++) {
      if (type == UVMQTT_AUTH && version != UVMQTT_V5) continue;
      for (int k = 0; k < SEEDS_PER_TYPE; k++) {
        /* From no optional properties to all of them. */
        g->prop_percent = (uint32_t)(k * 100 / (SEEDS_PER_TYPE - 1));
        if (g->prop_percent == 0) g->prop_percent = 1;
        ssize_t n = encode_random(g, &r, type, version, buf, 1u << 16);
        if (n < 0) return 1;
        uint8_t rt_head[1] = {version == UVMQTT_V5};
        uint8_t dec_head[4] = {(uint8_t)(version == UVMQTT_V5 ? 2 : 1), 0, (uint8_t)(k * 3),
                               (uint8_t)k};
        snprintf(name, sizeof name, "v%u-type%02u-%d", version, type, k);
        if (write_file(rt_dir, name, rt_head, 1, buf, (size_t)n) ||
            write_file(dec_dir, name, dec_head, 4, buf, (size_t)n)) {
          return 1;
        }
        files += 2;
      }
    }
  }

  /* Streams a session would see: a CONNECT, then a run of other packets,
   * fed to a decoder that learns the version from the CONNECT. */
  g->prop_percent = 30;
  for (int s = 0; s < STREAMS; s++) {
    uint8_t version = (s & 1) ? UVMQTT_V5 : UVMQTT_V311;
    size_t len = 0;
    ssize_t n = encode_random(g, &r, UVMQTT_CONNECT, version, buf, 1u << 16);
    if (n < 0) return 1;
    len += (size_t)n;
    int count = 2 + (int)pm_below(&r, 6);
    for (int i = 0; i < count; i++) {
      uint8_t type = (uint8_t)(2 + pm_below(&r, version == UVMQTT_V5 ? 14 : 13));
      n = encode_random(g, &r, type, version, buf + len, (1u << 16) - len);
      if (n < 0) return 1;
      len += (size_t)n;
    }
    uint8_t dec_head[4] = {0, (uint8_t)(s % 16), (uint8_t)(s * 5), (uint8_t)s};
    snprintf(name, sizeof name, "stream-%02d", s);
    if (write_file(dec_dir, name, dec_head, 4, buf, len)) return 1;
    files++;
  }
  free(buf);
  free(g);
  printf("wrote %u seed files to %s\n", files, argv[1]);
  return 0;
}
