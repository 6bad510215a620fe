/* Codec throughput: decodes and encodes a long buffer of PUBLISH packets and
 * compares the decode rate with memcpy over the same bytes, the physical
 * limit of any parser that has to look at every byte.
 *
 * Usage: uvmqtt-codec-bench [--json] [--repeat N] [--mib M]
 * Prints a table; with --json the last line is one JSON object. Every
 * figure is the best of N passes, which filters out the noise of a shared
 * machine. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "uvmqtt.h"

#define PAYLOAD_LEN  64
#define CHUNK_LEN    (64u * 1024u)
#define SCRATCH_LEN  4096u
#define DEFAULT_MIB  16
#define DEFAULT_REPS 5

/* ---- Allocation counting ------------------------------------------------- */

/* Every allocation the library makes goes through these, so a decode or
 * encode pass that allocates shows up as a non-zero count. */
static uint64_t g_allocs;

static void *count_malloc(size_t size) {
  g_allocs++;
  return malloc(size);
}

static void *count_realloc(void *ptr, size_t size) {
  g_allocs++;
  return realloc(ptr, size);
}

static void *count_calloc(size_t count, size_t size) {
  g_allocs++;
  return calloc(count, size);
}

/* ---- Timing -------------------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Results the compiler must assume are used, so no pass is optimized away. */
static volatile uint64_t g_sink;

/* ---- Mixes --------------------------------------------------------------- */

typedef struct {
  const char *name;
  uint8_t version;
  uint8_t qos;
  int with_props; /* message expiry + content type */
} mix_t;

static const mix_t mixes[] = {
    {"v311_qos0", UVMQTT_V311, 0, 0},
    {"v311_qos1", UVMQTT_V311, 1, 0},
    {"v5_qos1_props", UVMQTT_V5, 1, 1},
};
#define NMIXES (sizeof mixes / sizeof mixes[0])

typedef struct {
  size_t packet_len;
  uint64_t packets;
  uint64_t bytes;
  double decode_s;
  double decode_chunked_s;
  double encode_s;
  double memcpy_s;
  uint64_t allocs;
  uint64_t ops; /* packets decoded or encoded while allocations were counted */
} result_t;

static const uint8_t topic[] = "sensors/device-0042/temperature";
static uint8_t payload[PAYLOAD_LEN];

static void make_packet(const mix_t *mix, uvmqtt_packet_t *pkt, uint16_t id) {
  memset(pkt, 0, sizeof *pkt);
  pkt->type = UVMQTT_PUBLISH;
  pkt->packet_id = mix->qos ? id : 0;
  pkt->u.publish.qos = mix->qos;
  pkt->u.publish.topic = (uvmqtt_bytes_t){topic, sizeof topic - 1};
  pkt->u.publish.payload = (uvmqtt_bytes_t){payload, PAYLOAD_LEN};
  if (mix->with_props) {
    static const uint8_t ctype[] = "application/json";
    pkt->props.has =
        (1ull << UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL) | (1ull << UVMQTT_PROP_CONTENT_TYPE);
    pkt->props.message_expiry_interval = 3600;
    pkt->props.content_type = (uvmqtt_bytes_t){ctype, sizeof ctype - 1};
  }
}

static uint16_t next_id(uint64_t i) {
  return (uint16_t)(1 + i % 65535);
}

/* Fills `buf` with as many whole packets as fit; returns the byte count. */
static size_t fill(const mix_t *mix, uint8_t *buf, size_t cap, result_t *res) {
  uvmqtt_packet_t pkt;
  size_t off = 0;
  uint64_t n = 0;
  for (;;) {
    make_packet(mix, &pkt, next_id(n));
    ssize_t w = uvmqtt_encode(&pkt, mix->version, buf + off, cap - off);
    if (w == UVMQTT_ENOBUFS) break;
    if (w < 0) {
      fprintf(stderr, "encode failed: %s\n", uvmqtt_strerror((int)w));
      exit(1);
    }
    if (n == 0) res->packet_len = (size_t)w;
    off += (size_t)w;
    n++;
  }
  res->packets = n;
  res->bytes = off;
  return off;
}

/* Decodes buf[0..len) handed over in `chunk`-byte reads, as from a socket;
 * `chunk` 0 hands over the whole buffer at once. Returns packets seen. */
static uint64_t decode_pass(const mix_t *mix, const uint8_t *buf, size_t len, size_t chunk,
                            uint8_t *scratch) {
  uvmqtt_decoder_t dec;
  uvmqtt_decoder_init(&dec, mix->version, 0, NULL);
  dec.scratch = scratch;
  dec.scratch_size = SCRATCH_LEN;
  uint64_t packets = 0;
  uint64_t payload_bytes = 0;
  size_t off = 0;
  while (off < len) {
    size_t end = chunk == 0 || len - off < chunk ? len : off + chunk;
    while (off < end) {
      uvmqtt_packet_t pkt;
      int got;
      ssize_t n = uvmqtt_decode(&dec, buf + off, end - off, &pkt, &got);
      if (n < 0) {
        fprintf(stderr, "decode failed at %zu: %s\n", off, uvmqtt_strerror((int)n));
        exit(1);
      }
      off += (size_t)n;
      if (got) {
        packets++;
        payload_bytes += pkt.u.publish.payload.len + pkt.packet_id;
      }
    }
  }
  g_sink += payload_bytes;
  return packets;
}

static size_t encode_pass(const mix_t *mix, uint8_t *out, size_t cap, uint64_t packets) {
  uvmqtt_packet_t pkt;
  make_packet(mix, &pkt, 1);
  size_t off = 0;
  for (uint64_t i = 0; i < packets; i++) {
    pkt.packet_id = mix->qos ? next_id(i) : 0;
    ssize_t w = uvmqtt_encode(&pkt, mix->version, out + off, cap - off);
    if (w < 0) {
      fprintf(stderr, "encode failed: %s\n", uvmqtt_strerror((int)w));
      exit(1);
    }
    off += (size_t)w;
  }
  return off;
}

static double best(double a, double b) {
  return a < b ? a : b;
}

static void run_mix(const mix_t *mix, uint8_t *in, uint8_t *out, size_t cap, int reps,
                    result_t *res) {
  uint8_t scratch[SCRATCH_LEN];
  memset(res, 0, sizeof *res);
  size_t len = fill(mix, in, cap, res);
  res->decode_s = res->decode_chunked_s = res->encode_s = res->memcpy_s = 1e30;
  for (int r = 0; r < reps; r++) {
    uint64_t a0 = g_allocs;
    double t0 = now_s();
    uint64_t seen = decode_pass(mix, in, len, 0, scratch);
    double t1 = now_s();
    uint64_t seen_chunked = decode_pass(mix, in, len, CHUNK_LEN, scratch);
    double t2 = now_s();
    size_t written = encode_pass(mix, out, cap, res->packets);
    double t3 = now_s();
    res->allocs += g_allocs - a0;
    res->ops += seen + seen_chunked + res->packets;
    if (seen != res->packets || seen_chunked != res->packets || written != len) {
      fprintf(stderr, "%s: decoded %" PRIu64 "/%" PRIu64 ", encoded %zu of %zu bytes\n", mix->name,
              seen, seen_chunked, written, len);
      exit(1);
    }
    if (r == 0 && memcmp(in, out, len) != 0) {
      fprintf(stderr, "%s: encode pass differs from the input\n", mix->name);
      exit(1);
    }
    double t4 = now_s();
    memcpy(out, in, len);
    double t5 = now_s();
    g_sink += out[len / 2];
    res->decode_s = best(res->decode_s, t1 - t0);
    res->decode_chunked_s = best(res->decode_chunked_s, t2 - t1);
    res->encode_s = best(res->encode_s, t3 - t2);
    res->memcpy_s = best(res->memcpy_s, t5 - t4);
  }
}

static void print_mix_json(const mix_t *mix, const result_t *r, int last) {
  printf("\"%s\":{\"packet_bytes\":%zu,\"packets\":%" PRIu64 ",\"decode_pkts_per_s\":%.0f,"
         "\"decode_bytes_per_s\":%.0f,\"decode_chunked_bytes_per_s\":%.0f,"
         "\"encode_pkts_per_s\":%.0f,\"encode_bytes_per_s\":%.0f,\"memcpy_bytes_per_s\":%.0f,"
         "\"decode_vs_memcpy\":%.4f,\"allocs_per_pkt\":%.4f}%s",
         mix->name, r->packet_len, r->packets, (double)r->packets / r->decode_s,
         (double)r->bytes / r->decode_s, (double)r->bytes / r->decode_chunked_s,
         (double)r->packets / r->encode_s, (double)r->bytes / r->encode_s,
         (double)r->bytes / r->memcpy_s, r->memcpy_s / r->decode_s,
         (double)r->allocs / (double)r->ops, last ? "" : ",");
}

static void usage(const char *argv0) {
  fprintf(stderr, "usage: %s [--json] [--repeat N] [--mib M]\n", argv0);
  exit(2);
}

int main(int argc, char **argv) {
  int json = 0;
  int reps = DEFAULT_REPS;
  long mib = DEFAULT_MIB;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
      reps = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc) {
      mib = atol(argv[++i]);
    } else {
      usage(argv[0]);
    }
  }
  if (reps < 1 || reps > 1000 || mib < 1 || mib > 1024) usage(argv[0]);

  if (uvmqtt_replace_allocator(count_malloc, count_realloc, count_calloc, free) != 0) return 1;
  for (size_t i = 0; i < PAYLOAD_LEN; i++)
    payload[i] = (uint8_t)(i * 7 + 1);
  size_t cap = (size_t)mib << 20;
  uint8_t *in = malloc(cap);
  uint8_t *out = malloc(cap);
  if (in == NULL || out == NULL) return 1;

  result_t res[NMIXES];
  printf("codec: %ld MiB of PUBLISH packets (%d-byte payload), best of %d\n", mib, PAYLOAD_LEN,
         reps);
  printf("%-14s %6s %12s %11s %11s %12s %11s %11s %8s %7s\n", "mix", "bytes", "dec pkt/s",
         "dec MB/s", "64K MB/s", "enc pkt/s", "enc MB/s", "memcpy MB/s", "dec/cpy", "alloc");
  for (size_t m = 0; m < NMIXES; m++) {
    result_t *r = &res[m];
    run_mix(&mixes[m], in, out, cap, reps, r);
    printf("%-14s %6zu %12.0f %11.1f %11.1f %12.0f %11.1f %11.1f %7.1f%% %7.3f\n", mixes[m].name,
           r->packet_len, (double)r->packets / r->decode_s, (double)r->bytes / r->decode_s / 1e6,
           (double)r->bytes / r->decode_chunked_s / 1e6, (double)r->packets / r->encode_s,
           (double)r->bytes / r->encode_s / 1e6, (double)r->bytes / r->memcpy_s / 1e6,
           100.0 * r->memcpy_s / r->decode_s, (double)r->allocs / (double)r->ops);
  }

  if (json) {
    /* Top-level figures are those of the first mix (v3.1.1, QoS 0). */
    const result_t *h = &res[0];
    printf("{\"bench\":\"codec\",\"buffer_bytes\":%zu,\"repeat\":%d,"
           "\"decode_pkts_per_s\":%.0f,\"decode_bytes_per_s\":%.0f,\"encode_pkts_per_s\":%.0f,"
           "\"encode_bytes_per_s\":%.0f,\"memcpy_bytes_per_s\":%.0f,\"decode_vs_memcpy\":%.4f,"
           "\"allocs_per_pkt\":%.4f,\"mixes\":{",
           cap, reps, (double)h->packets / h->decode_s, (double)h->bytes / h->decode_s,
           (double)h->packets / h->encode_s, (double)h->bytes / h->encode_s,
           (double)h->bytes / h->memcpy_s, h->memcpy_s / h->decode_s,
           (double)h->allocs / (double)h->ops);
    for (size_t m = 0; m < NMIXES; m++)
      print_mix_json(&mixes[m], &res[m], m + 1 == NMIXES);
    printf("}}\n");
  }
  free(in);
  free(out);
  /* The codec promises not to allocate; a count above zero is a bug. */
  for (size_t m = 0; m < NMIXES; m++) {
    if (res[m].allocs != 0) {
      fprintf(stderr, "%s: the codec allocated %" PRIu64 " times\n", mixes[m].name, res[m].allocs);
      return 3;
    }
  }
  return 0;
}
