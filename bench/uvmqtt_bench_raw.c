/* uvmqtt-bench raw: the ceiling for publishing into the discard sink. One
 * plain libuv TCP stream sends CONNECT, waits for CONNACK, then writes the
 * same QoS 0 PUBLISH packets uvmqtt would send, pre-encoded in 64 KiB
 * chunks, with a few writes in flight. No client library is involved, so
 * uvmqtt's pub rate into the sink over this rate is the client's overhead. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "uvmqtt.h"

#define CHUNK_BYTES    (64u * 1024u)
#define WRITES_IN_AIR  4
#define RAW_TIMEOUT_MS 10000

typedef struct {
  bench_t b;
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_timer_t progress;
  uv_timer_t deadline;
  uvmqtt_decoder_t dec;
  uint8_t connect_pkt[256];
  size_t connect_len;
  uint8_t *chunk;
  size_t pkt_len;
  uint32_t chunk_msgs;
  uint64_t total;
  uint64_t queued;
  int writes_pending;
  int measuring;
  int stopping;
  int closing;
  int failed;
} raw_t;

typedef struct {
  uv_write_t req;
  uint32_t msgs;
} raw_write_t;

static const bench_driver_t raw_driver = {
    .name = "raw",
    .loop_model = "libuv loop, one plain TCP stream, pre-encoded packets",
};

static void close_all(raw_t *w) {
  if (w->closing) return;
  w->closing = 1;
  uv_close((uv_handle_t *)&w->progress, NULL);
  uv_close((uv_handle_t *)&w->deadline, NULL);
  uv_close((uv_handle_t *)&w->tcp, NULL);
}

static void fail(raw_t *w, const char *what, int err) {
  fprintf(stderr, "raw: %s: %s\n", what, err ? uvmqtt_strerror(err) : "failed");
  w->failed = 1;
  w->b.r.errors++;
  close_all(w);
}

static void finish(raw_t *w) {
  bench_t *b = &w->b;
  uint64_t now = bench_now_ns();
  b->r.measured_s = (double)(now - b->t_meas_ns) / 1e9;
  b->r.pub_s = b->r.measured_s;
  b->r.cpu_s = bench_cpu_seconds() - b->cpu_mark;
  b->r.rss_end_kb = bench_rss_kb();
  /* DISCONNECT, so the sink sees a clean end; best effort. */
  static const char disconnect[2] = {(char)0xE0, 0};
  uv_buf_t buf = uv_buf_init((char *)disconnect, 2);
  (void)uv_try_write((uv_stream_t *)&w->tcp, &buf, 1);
  close_all(w);
}

static void pump(raw_t *w);

static void on_write(uv_write_t *req, int status) {
  raw_write_t *wr = (raw_write_t *)req;
  raw_t *w = req->data;
  w->writes_pending--;
  if (status < 0) {
    free(wr);
    if (!w->closing) fail(w, "write", status);
    return;
  }
  w->b.r.pub_ok += wr->msgs;
  w->b.r.wire_bytes += (uint64_t)wr->msgs * w->pkt_len;
  free(wr);
  if (w->closing) return;
  if (w->b.r.pub_ok == w->total || (w->stopping && w->writes_pending == 0))
    finish(w);
  else
    pump(w);
}

static void pump(raw_t *w) {
  while (!w->stopping && w->writes_pending < WRITES_IN_AIR && w->queued < w->total) {
    uint64_t left = w->total - w->queued;
    uint32_t n = left < w->chunk_msgs ? (uint32_t)left : w->chunk_msgs;
    raw_write_t *wr = malloc(sizeof *wr);
    if (wr == NULL) {
      fail(w, "out of memory", 0);
      return;
    }
    wr->req.data = w;
    wr->msgs = n;
    uv_buf_t buf = uv_buf_init((char *)w->chunk, (unsigned)(n * w->pkt_len));
    int rc = uv_write(&wr->req, (uv_stream_t *)&w->tcp, &buf, 1, on_write);
    if (rc < 0) {
      free(wr);
      fail(w, "write", rc);
      return;
    }
    w->writes_pending++;
    w->queued += n;
    w->b.r.pub_sent += n;
  }
}

static void on_deadline(uv_timer_t *t) {
  raw_t *w = t->data;
  if (!w->measuring) {
    fail(w, "no CONNACK from the sink in time", 0);
    return;
  }
  w->stopping = 1;
  if (w->writes_pending == 0) finish(w);
}

static void on_progress(uv_timer_t *t) {
  raw_t *w = t->data;
  if (w->measuring) bench_sample_add(&w->b);
  bench_progress_print(&w->b, 0);
  w->b.last_pub_ok = w->b.r.pub_ok;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char rbuf[4096];
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(rbuf, sizeof rbuf);
}

static void start_measuring(raw_t *w) {
  bench_t *b = &w->b;
  uint64_t now = bench_now_ns();
  hist_record(&b->r.connect_lat, now - b->t_conn_first_ns);
  b->r.connected = 1;
  b->r.connect_s = (double)(now - b->t_conn_first_ns) / 1e9;
  b->r.rss_connected_kb = bench_rss_kb();
  b->connected_now = 1;
  w->measuring = 1;
  b->phase = BENCH_PH_RUN;
  b->t_meas_ns = now;
  b->cpu_mark = bench_cpu_seconds();
  /* Samples line up with the start of the measured phase. */
  uv_timer_start(&w->progress, on_progress, 1000, 1000);
  uv_timer_stop(&w->deadline);
  if (b->o->duration_s > 0)
    uv_timer_start(&w->deadline, on_deadline, (uint64_t)(b->o->duration_s * 1000), 0);
  pump(w);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  raw_t *w = s->data;
  if (nread < 0) {
    if (!w->closing) fail(w, "the sink closed the connection", (int)nread);
    return;
  }
  size_t off = 0;
  while (off < (size_t)nread && !w->closing) {
    uvmqtt_packet_t pkt;
    int got = 0;
    ssize_t used =
        uvmqtt_decode(&w->dec, (const uint8_t *)buf->base + off, (size_t)nread - off, &pkt, &got);
    if (used < 0) {
      fail(w, "bad packet from the sink", (int)used);
      return;
    }
    off += (size_t)used;
    if (got && pkt.type == UVMQTT_CONNACK && !w->measuring) {
      if (pkt.reason != 0) {
        fail(w, "the sink refused CONNECT", 0);
        return;
      }
      start_measuring(w);
    }
  }
}

static void on_connect(uv_connect_t *req, int status) {
  raw_t *w = req->data;
  if (status < 0) {
    fail(w, "connect", status);
    return;
  }
  uv_tcp_nodelay(&w->tcp, 1);
  uv_read_start((uv_stream_t *)&w->tcp, on_alloc, on_read);
  uv_buf_t buf = uv_buf_init((char *)w->connect_pkt, (unsigned)w->connect_len);
  if (uv_try_write((uv_stream_t *)&w->tcp, &buf, 1) != (int)w->connect_len)
    fail(w, "writing CONNECT", 0);
}

/* Encodes CONNECT and one chunk of identical PUBLISH packets. */
static int encode_packets(raw_t *w) {
  const bench_opts_t *o = w->b.o;
  uint8_t version = o->version == 5 ? UVMQTT_V5 : UVMQTT_V311;
  char id[48];
  snprintf(id, sizeof id, "bench-raw-%ld", (long)getpid());
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_CONNECT;
  p.u.connect.protocol_level = version;
  p.u.connect.clean_start = 1;
  p.u.connect.keep_alive = (uint16_t)o->keepalive;
  p.u.connect.client_id.data = (const uint8_t *)id;
  p.u.connect.client_id.len = (uint32_t)strlen(id);
  ssize_t n = uvmqtt_encode(&p, version, w->connect_pkt, sizeof w->connect_pkt);
  if (n < 0) return (int)n;
  w->connect_len = (size_t)n;

  char topic[64];
  snprintf(topic, sizeof topic, "bench/%u", o->start_index);
  uint8_t *payload = calloc(1, o->size);
  if (payload == NULL) return UVMQTT_ENOMEM;
  memset(payload, 'x', o->size);
  bench_stamp_t st = {0, 0, o->start_index};
  bench_stamp_write(payload, &st);
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_PUBLISH;
  p.u.publish.topic.data = (const uint8_t *)topic;
  p.u.publish.topic.len = (uint32_t)strlen(topic);
  p.u.publish.payload.data = payload;
  p.u.publish.payload.len = o->size;
  n = uvmqtt_encode_size(&p, version);
  if (n > 0) {
    w->pkt_len = (size_t)n;
    w->chunk_msgs = w->pkt_len >= CHUNK_BYTES ? 1 : (uint32_t)(CHUNK_BYTES / w->pkt_len);
    w->chunk = malloc(w->pkt_len * w->chunk_msgs);
    if (w->chunk == NULL) n = UVMQTT_ENOMEM;
  }
  for (uint32_t i = 0; n > 0 && i < w->chunk_msgs; i++)
    n = uvmqtt_encode(&p, version, w->chunk + i * w->pkt_len, w->pkt_len);
  free(payload);
  return n < 0 ? (int)n : 0;
}

static int resolve(const bench_opts_t *o, struct sockaddr_storage *sa) {
  if (uv_ip4_addr(o->host, o->port, (struct sockaddr_in *)sa) == 0) return 0;
  if (uv_ip6_addr(o->host, o->port, (struct sockaddr_in6 *)sa) == 0) return 0;
  fprintf(stderr, "raw: -h must be a numeric address, not '%s'\n", o->host);
  return -1;
}

int bench_raw_run(const bench_opts_t *o) {
  if (o->qos != 0 || o->clients != 1 || o->interval_ms > 0) {
    fprintf(stderr, "raw: only -q 0, -c 1 and -I 0 (it measures the unpaced ceiling)\n");
    return 2;
  }
  if (o->plot_path && bench_plot_check(o->plot_path) < 0) return 2;
  raw_t *w = calloc(1, sizeof *w);
  uv_loop_t *loop = calloc(1, sizeof *loop);
  struct sockaddr_storage sa;
  if (w == NULL || loop == NULL || uv_loop_init(loop) != 0) return 1;
  if (resolve(o, &sa) < 0) return 2;
  bench_t *b = &w->b;
  b->loop = loop;
  b->o = o;
  b->drv = &raw_driver;
  b->nclients = 1;
  b->r.clients = 1;
  b->tty = isatty(2);
  hist_init(&b->r.latency);
  hist_init(&b->r.connect_lat);
  int rc = encode_packets(w);
  if (rc < 0) {
    fprintf(stderr, "raw: encoding: %s\n", uvmqtt_strerror(rc));
    return 1;
  }
  w->total = o->limit ? o->limit : UINT64_MAX;
  uvmqtt_decoder_init(&w->dec, o->version == 5 ? UVMQTT_V5 : UVMQTT_V311, 0, NULL);
  b->r.rss_base_kb = bench_rss_kb();
  b->t_start_ns = b->t_conn_first_ns = bench_now_ns();
  b->cpu_mark = bench_cpu_seconds();
  uv_tcp_init(loop, &w->tcp);
  uv_timer_init(loop, &w->progress);
  uv_timer_init(loop, &w->deadline);
  w->tcp.data = w->creq.data = w->progress.data = w->deadline.data = w;
  uv_timer_start(&w->progress, on_progress, 1000, 1000);
  uv_timer_start(&w->deadline, on_deadline, RAW_TIMEOUT_MS, 0);
  rc = uv_tcp_connect(&w->creq, &w->tcp, (const struct sockaddr *)&sa, on_connect);
  if (rc < 0) fail(w, "connect", rc);
  uv_run(loop, UV_RUN_DEFAULT);
  if (!o->quiet) bench_progress_print(b, 1);
  int status = w->failed || b->r.pub_ok == 0;
  bench_report_print(b);
  if (o->json_path && bench_report_json(b, o->json_path) < 0) status = 1;
  if (o->plot_path && bench_plot(b, o->plot_path) < 0) status = 1;
  uvmqtt_decoder_reset(&w->dec);
  if (uv_loop_close(loop) != 0) fprintf(stderr, "warning: handles left open on the loop\n");
  free(loop);
  free(w->chunk);
  free(w);
  return status;
}
