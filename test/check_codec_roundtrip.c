/* Randomized encode/decode round trips over every packet type and every v5
 * property, in both protocol versions.
 *
 * Each case comes from a fixed seed, so a run is reproducible; a failure
 * prints the base seed and packet index. Set UVMQTT_ROUNDTRIP_SEED to run
 * with another base seed. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fuzz/packet_model.h"
#include "uvmqtt/codec.h"

#define PACKETS_PER_TYPE 300
#define STREAM_PACKETS   400
#define GUARD            32
#define GUARD_FILL       0xA5

static uint64_t base_seed(void) {
  const char *env = getenv("UVMQTT_ROUNDTRIP_SEED");
  return env != NULL ? strtoull(env, NULL, 0) : 0x5EEDC0DEC0FFEEull;
}

/* Decoder memory callbacks that count, so every test can assert the
 * decoder returns what it takes. */
typedef struct {
  size_t allocs;
  size_t frees;
} mem_count_t;

static void *count_alloc(void *user_data, size_t size) {
  ((mem_count_t *)user_data)->allocs++;
  return malloc(size);
}

static void count_free(void *user_data, void *ptr) {
  ((mem_count_t *)user_data)->frees++;
  free(ptr);
}

typedef struct {
  uint32_t index;
  uint8_t type;
  uint8_t version;
  char why[256];
} ctx_t;

#define FAIL(c, ...)                                                                               \
  do {                                                                                             \
    char detail_[512];                                                                             \
    snprintf(detail_, sizeof detail_, __VA_ARGS__);                                                \
    ck_abort_msg("UVMQTT_ROUNDTRIP_SEED=0x%" PRIx64 " packet %u type %u v%u: %s", base_seed(),     \
                 (c)->index, (c)->type, (c)->version, detail_);                                    \
  } while (0)

/* Compares a decoded packet with the generated one. */
static void expect_same(ctx_t *c, const uvmqtt_packet_t *want, const uvmqtt_packet_t *decoded,
                        const char *how) {
  pm_model_t m;
  if (pm_from_decoded(&m, decoded, c->why, sizeof c->why) != 0) {
    pm_model_free(&m);
    FAIL(c, "%s: inconsistent decode: %s", how, c->why);
  }
  int same = pm_packet_eq(want, &m.pkt, c->version, c->why, sizeof c->why);
  pm_model_free(&m);
  if (!same) FAIL(c, "%s: %s", how, c->why);
}

/* Feeds buf[0..len) to a fresh incremental decoder, whole (split == len),
 * in two pieces cut at `split`, or one byte at a time (split == 0), and
 * checks the one packet it yields. */
static void decode_in_chunks(ctx_t *c, const uvmqtt_packet_t *want, const uint8_t *buf, size_t len,
                             size_t split, const char *how) {
  mem_count_t counts = {0, 0};
  uvmqtt_codec_mem_t mem = {count_alloc, count_free, &counts};
  uvmqtt_decoder_t dec;
  uvmqtt_decoder_init(&dec, c->version, 0, &mem);
  size_t off = 0;
  int got = 0;
  while (off < len) {
    size_t chunk = split == 0 ? 1 : (off < split ? split - off : len - off);
    uvmqtt_packet_t pkt;
    memset(&pkt, 0, sizeof pkt);
    ssize_t n = uvmqtt_decode(&dec, buf + off, chunk, &pkt, &got);
    if (n < 0) FAIL(c, "%s: decode at offset %zu: %s", how, off, uvmqtt_err_name((int)n));
    if ((size_t)n != chunk) FAIL(c, "%s: consumed %zd of %zu at offset %zu", how, n, chunk, off);
    off += chunk;
    if (got && off != len) FAIL(c, "%s: packet completed early at %zu of %zu", how, off, len);
    if (!got && off == len) FAIL(c, "%s: no packet after all %zu bytes", how, len);
    if (got) expect_same(c, want, &pkt, how);
  }
  if (uvmqtt_decoder_busy(&dec)) FAIL(c, "%s: decoder busy after a whole packet", how);
  uvmqtt_decoder_reset(&dec);
  if (counts.allocs != counts.frees) {
    FAIL(c, "%s: %zu allocs but %zu frees", how, counts.allocs, counts.frees);
  }
}

static void check_guards(ctx_t *c, const uint8_t *area, size_t cap, const char *how) {
  for (size_t i = 0; i < GUARD; i++) {
    if (area[i] != GUARD_FILL || area[GUARD + cap + i] != GUARD_FILL) {
      FAIL(c, "%s: write outside the %zu-byte buffer", how, cap);
    }
  }
}

/* The whole battery for one generated packet. */
static void roundtrip_one(ctx_t *c, const uvmqtt_packet_t *pkt, pm_rng_t *r) {
  ssize_t size = uvmqtt_encode_size(pkt, c->version);
  if (size <= 0) FAIL(c, "encode_size: %s", uvmqtt_err_name((int)size));

  uint8_t *area = malloc((size_t)size + 2 * GUARD);
  ck_assert_ptr_nonnull(area);
  uint8_t *buf = area + GUARD;

  /* One byte short: ENOBUFS and nothing written past the given capacity. */
  memset(area, GUARD_FILL, (size_t)size + 2 * GUARD);
  ssize_t n = uvmqtt_encode(pkt, c->version, buf, (size_t)size - 1);
  if (n != UVMQTT_ENOBUFS) FAIL(c, "encode into size-1 returned %zd", n);
  if (buf[size - 1] != GUARD_FILL) FAIL(c, "encode into size-1 wrote the last byte");
  check_guards(c, area, (size_t)size, "short encode");

  memset(area, GUARD_FILL, (size_t)size + 2 * GUARD);
  n = uvmqtt_encode(pkt, c->version, buf, (size_t)size);
  if (n != size) FAIL(c, "encode returned %zd, encode_size %zd", n, size);
  check_guards(c, area, (size_t)size, "encode");
  if ((buf[0] >> 4) != c->type) FAIL(c, "fixed header type %u", buf[0] >> 4);

  if (c->type == UVMQTT_PUBLISH) {
    /* Header plus payload must be the very same bytes. */
    uint8_t *hdr = malloc((size_t)size);
    ck_assert_ptr_nonnull(hdr);
    ssize_t h = uvmqtt_encode_publish_header(pkt, c->version, hdr, (size_t)size);
    if (h < 0 || (size_t)h + pkt->u.publish.payload.len != (size_t)size ||
        memcmp(hdr, buf, (size_t)h) != 0) {
      free(hdr);
      FAIL(c, "publish header (%zd bytes) is not the prefix of the packet", h);
    }
    free(hdr);
  }

  uvmqtt_packet_t d;
  memset(&d, 0, sizeof d);
  int rc = uvmqtt_decode_packet(buf, (size_t)size, c->version, &d);
  if (rc != 0) FAIL(c, "decode_packet: %s", uvmqtt_err_name(rc));
  expect_same(c, pkt, &d, "decode_packet");

  decode_in_chunks(c, pkt, buf, (size_t)size, (size_t)size, "whole");
  if (size > 1) {
    size_t split = 1 + pm_below(r, (uint32_t)size - 1);
    decode_in_chunks(c, pkt, buf, (size_t)size, split, "split");
  }
  decode_in_chunks(c, pkt, buf, (size_t)size, 0, "byte by byte");

  /* Decode, encode again, decode again: the encoder is deterministic, so the
   * second encoding must be byte-identical and decode to the same fields. */
  pm_model_t m;
  if (pm_from_decoded(&m, &d, c->why, sizeof c->why) != 0) FAIL(c, "model: %s", c->why);
  ssize_t size2 = uvmqtt_encode_size(&m.pkt, c->version);
  uint8_t *buf2 = malloc(size2 > 0 ? (size_t)size2 : 1);
  ck_assert_ptr_nonnull(buf2);
  ssize_t n2 = uvmqtt_encode(&m.pkt, c->version, buf2, size2 > 0 ? (size_t)size2 : 0);
  int same_bytes = n2 == size && memcmp(buf2, buf, (size_t)size) == 0;
  uvmqtt_packet_t d2;
  memset(&d2, 0, sizeof d2);
  int rc2 = same_bytes ? uvmqtt_decode_packet(buf2, (size_t)n2, c->version, &d2) : -1;
  if (same_bytes && rc2 == 0) expect_same(c, &m.pkt, &d2, "re-decode");
  pm_model_free(&m);
  free(buf2);
  if (!same_bytes)
    FAIL(c, "re-encoding the decoded packet gave %zd bytes, not the same %zd", n2, size);
  if (rc2 != 0) FAIL(c, "re-decode: %s", uvmqtt_err_name(rc2));

  /* The size limit counts the whole packet: exactly its size passes. */
  if (pm_chance(r, 10)) {
    uvmqtt_decoder_t dec;
    uvmqtt_packet_t p;
    int got = 0;
    uvmqtt_decoder_init(&dec, c->version, (uint32_t)size, NULL);
    ssize_t k = uvmqtt_decode(&dec, buf, (size_t)size, &p, &got);
    if (k != size || !got) FAIL(c, "max_packet_size == size: %zd", k);
    if (size > 2) {
      uvmqtt_decoder_init(&dec, c->version, (uint32_t)size - 1, NULL);
      k = uvmqtt_decode(&dec, buf, (size_t)size, &p, &got);
      if (k != UVMQTT_ETOOLARGE) FAIL(c, "max_packet_size == size-1: %zd", k);
      uvmqtt_decoder_reset(&dec);
    }
  }
  free(area);
}

static uint64_t type_seed(uint8_t type, uint8_t version) {
  return base_seed() ^ ((uint64_t)type << 40) ^ ((uint64_t)version << 48);
}

static void run_type(uint8_t type, uint8_t version) {
  pm_gen_t *g = calloc(1, sizeof *g);
  ck_assert_ptr_nonnull(g);
  ctx_t c = {.type = type, .version = version};
  pm_rng_t r = {type_seed(type, version)};
  /* Which properties the packets carried, so the test proves it exercised
   * every one the packet type allows. */
  uint64_t seen = 0;
  uint64_t will_seen = 0;
  for (uint32_t i = 0; i < PACKETS_PER_TYPE; i++) {
    c.index = i;
    pm_random_packet(g, &r, type, version);
    seen |= g->pkt.props.has;
    if (type == UVMQTT_CONNECT) will_seen |= g->pkt.u.connect.will_props.has;
    roundtrip_one(&c, &g->pkt, &r);
  }
  if (version == UVMQTT_V5) {
    uint64_t allowed = pm_allowed_props(pm_props_kind(type));
    ck_assert_msg(seen == allowed, "type %u: properties %#llx of %#llx exercised", type,
                  (unsigned long long)seen, (unsigned long long)allowed);
    if (type == UVMQTT_CONNECT) {
      ck_assert_uint_eq(will_seen, pm_allowed_props(UVMQTT_PROPS_WILL));
    }
  }
  free(g);
}

START_TEST(codec_roundtrip_v311_each_type) {
  /* _i runs over the packet types; AUTH does not exist in 3.1.1. */
  run_type((uint8_t)_i, UVMQTT_V311);
}
END_TEST

START_TEST(codec_roundtrip_v5_each_type) {
  run_type((uint8_t)_i, UVMQTT_V5);
}
END_TEST

START_TEST(codec_roundtrip_connect_learns_version) {
  /* A decoder set to version 0 takes the version from CONNECT. */
  pm_gen_t *g = calloc(1, sizeof *g);
  ck_assert_ptr_nonnull(g);
  pm_rng_t r = {base_seed() ^ 0xC0};
  g->max_payload = 1000;
  for (uint8_t version = UVMQTT_V311; version <= UVMQTT_V5; version++) {
    pm_random_packet(g, &r, UVMQTT_CONNECT, version);
    uint8_t buf[8192];
    ssize_t n = uvmqtt_encode(&g->pkt, version, buf, sizeof buf);
    ck_assert_int_gt(n, 0);
    uvmqtt_decoder_t dec;
    uvmqtt_decoder_init(&dec, 0, 0, NULL);
    uvmqtt_packet_t pkt;
    int got = 0;
    ck_assert_int_eq(uvmqtt_decode(&dec, buf, (size_t)n, &pkt, &got), n);
    ck_assert_int_eq(got, 1);
    ck_assert_uint_eq(pkt.u.connect.protocol_level, version);
    ctx_t c = {.type = UVMQTT_CONNECT, .version = version};
    expect_same(&c, &g->pkt, &pkt, "learned version");
    ck_assert_uint_eq(dec.version, version);
  }
  free(g);
}
END_TEST

/* A stream of back-to-back packets of mixed types, decoded through random
 * chunk boundaries, must come out in order and equal to the packets
 * decoded one by one. */
static void run_stream(uint8_t version) {
  pm_gen_t *g = calloc(1, sizeof *g);
  ck_assert_ptr_nonnull(g);
  g->max_payload = 2000;
  ctx_t c = {.version = version};
  pm_rng_t r = {base_seed() ^ 0x57AEull ^ version};
  size_t cap = 8u * 1024 * 1024;
  uint8_t *stream = malloc(cap);
  size_t *starts = calloc(STREAM_PACKETS + 1, sizeof *starts);
  ck_assert_ptr_nonnull(stream);
  ck_assert_ptr_nonnull(starts);
  size_t len = 0;
  for (uint32_t i = 0; i < STREAM_PACKETS; i++) {
    uint8_t type;
    do {
      type = (uint8_t)(1 + pm_below(&r, 15));
    } while (type == UVMQTT_CONNECT || (type == UVMQTT_AUTH && version != UVMQTT_V5));
    c.index = i;
    c.type = type;
    pm_random_packet(g, &r, type, version);
    ssize_t n = uvmqtt_encode(&g->pkt, version, stream + len, cap - len);
    if (n <= 0) FAIL(&c, "encode: %zd", n);
    starts[i] = len;
    len += (size_t)n;
  }
  starts[STREAM_PACKETS] = len;

  mem_count_t counts = {0, 0};
  uvmqtt_codec_mem_t mem = {count_alloc, count_free, &counts};
  uvmqtt_decoder_t dec;
  uvmqtt_decoder_init(&dec, version, 0, &mem);
  size_t off = 0;
  uint32_t next = 0;
  while (off < len) {
    size_t chunk = 1 + pm_below(&r, pm_chance(&r, 50) ? 8 : 3000);
    if (chunk > len - off) chunk = len - off;
    size_t end = off + chunk;
    while (off < end) {
      uvmqtt_packet_t pkt;
      int got = 0;
      ssize_t n = uvmqtt_decode(&dec, stream + off, end - off, &pkt, &got);
      c.index = next;
      if (n < 0) FAIL(&c, "stream decode at %zu: %s", off, uvmqtt_err_name((int)n));
      off += (size_t)n;
      if (!got) {
        if (off != end) FAIL(&c, "decoder stopped at %zu without a packet", off);
        continue;
      }
      if (next >= STREAM_PACKETS || off != starts[next + 1]) {
        FAIL(&c, "packet ended at %zu, expected %zu", off, starts[next + 1]);
      }
      uvmqtt_packet_t one;
      memset(&one, 0, sizeof one);
      size_t plen = starts[next + 1] - starts[next];
      int rc = uvmqtt_decode_packet(stream + starts[next], plen, version, &one);
      if (rc != 0) FAIL(&c, "decode_packet: %s", uvmqtt_err_name(rc));
      pm_model_t m;
      if (pm_from_decoded(&m, &one, c.why, sizeof c.why) != 0) FAIL(&c, "model: %s", c.why);
      c.type = one.type;
      expect_same(&c, &m.pkt, &pkt, "stream");
      pm_model_free(&m);
      next++;
    }
  }
  ck_assert_uint_eq(next, STREAM_PACKETS);
  uvmqtt_decoder_reset(&dec);
  ck_assert_uint_eq(counts.allocs, counts.frees);
  free(starts);
  free(stream);
  free(g);
}

START_TEST(codec_roundtrip_stream_v311) {
  run_stream(UVMQTT_V311);
}
END_TEST

START_TEST(codec_roundtrip_stream_v5) {
  run_stream(UVMQTT_V5);
}
END_TEST

START_TEST(codec_roundtrip_four_byte_remaining_length) {
  /* A payload past 2 MiB needs all four remaining-length bytes. */
  size_t plen = 2u * 1024 * 1024 + 77;
  uint8_t *payload = malloc(plen);
  ck_assert_ptr_nonnull(payload);
  for (size_t i = 0; i < plen; i++)
    payload[i] = (uint8_t)(i * 31 + 7);
  for (uint8_t version = UVMQTT_V311; version <= UVMQTT_V5; version++) {
    uvmqtt_packet_t pkt;
    memset(&pkt, 0, sizeof pkt);
    pkt.type = UVMQTT_PUBLISH;
    pkt.packet_id = 4242;
    pkt.u.publish.qos = 2;
    pkt.u.publish.topic = (uvmqtt_bytes_t){(const uint8_t *)"big/one", 7};
    pkt.u.publish.payload = (uvmqtt_bytes_t){payload, (uint32_t)plen};
    ssize_t size = uvmqtt_encode_size(&pkt, version);
    ck_assert_int_gt(size, (ssize_t)plen);
    uint8_t *buf = malloc((size_t)size);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(uvmqtt_encode(&pkt, version, buf, (size_t)size), size);
    ck_assert_uint_eq(buf[1] & 0x80, 0x80);
    ck_assert_uint_eq(buf[3] & 0x80, 0x80);
    ck_assert_uint_eq(buf[4] & 0x80, 0);
    ctx_t c = {.type = UVMQTT_PUBLISH, .version = version};
    pm_rng_t r = {version};
    decode_in_chunks(&c, &pkt, buf, (size_t)size, (size_t)size, "whole");
    decode_in_chunks(&c, &pkt, buf, (size_t)size, 1 + pm_below(&r, (uint32_t)size - 1), "split");
    free(buf);
  }
  free(payload);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("codec_roundtrip");

  TCase *tc = tcase_create("random_packets");
  tcase_set_timeout(tc, 60);
  tcase_add_loop_test(tc, codec_roundtrip_v311_each_type, UVMQTT_CONNECT, UVMQTT_AUTH);
  tcase_add_loop_test(tc, codec_roundtrip_v5_each_type, UVMQTT_CONNECT, UVMQTT_AUTH + 1);
  tcase_add_test(tc, codec_roundtrip_connect_learns_version);
  suite_add_tcase(s, tc);

  tc = tcase_create("streams");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, codec_roundtrip_stream_v311);
  tcase_add_test(tc, codec_roundtrip_stream_v5);
  tcase_add_test(tc, codec_roundtrip_four_byte_remaining_length);
  suite_add_tcase(s, tc);
  return s;
}
