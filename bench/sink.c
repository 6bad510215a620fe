/* uvmqtt-bench-sink: a discard MQTT server for measuring clients alone.
 *
 * It accepts connections, answers CONNACK, PUBACK (QoS 1), PUBREC/PUBCOMP
 * (QoS 2), SUBACK, UNSUBACK and PINGRESP, and throws every message away.
 * The uvmqtt codec finds the packet boundaries. One read buffer is shared by
 * all connections; a packet split across reads is held by the decoder.
 *
 * Usage: uvmqtt-bench-sink [-h ADDR] [-p PORT] [-q]
 * Prints "listening on ADDR:PORT" once ready (PORT 0 picks a free port) and
 * a summary on SIGINT/SIGTERM, then exits 0. */
#include <arpa/inet.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uvmqtt.h"

#define READ_BUF_BYTES (256u * 1024u)
/* Stop reading from a peer that does not read its acks past this. */
#define WRITE_HIGH  (8u * 1024u * 1024u)
#define WRITE_LOW   (1u * 1024u * 1024u)
#define MAX_FILTERS 256

typedef struct conn_s {
  uv_tcp_t tcp;
  struct conn_s *prev;
  struct conn_s *next;
  uvmqtt_decoder_t dec;
  uint8_t version;
  uint8_t reading;
  uint8_t closing;
  uint8_t *out;
  size_t out_len;
  size_t out_cap;
  size_t write_pending;
} conn_t;

typedef struct {
  uv_write_t req;
  conn_t *c;
  size_t len;
  uint8_t data[];
} write_t;

static struct {
  uv_loop_t *loop;
  uv_tcp_t server;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  conn_t *conns;
  int quiet;
  uint64_t accepted;
  uint64_t packets;
  uint64_t publishes;
  uint64_t bytes;
  uint64_t errors;
} g;

static char g_rbuf[READ_BUF_BYTES];

static void *dec_alloc(void *ud, size_t n) {
  (void)ud;
  return malloc(n);
}

static void dec_free(void *ud, void *p) {
  (void)ud;
  free(p);
}

static const uvmqtt_codec_mem_t dec_mem = {dec_alloc, dec_free, NULL};

static void on_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  if (c->prev)
    c->prev->next = c->next;
  else
    g.conns = c->next;
  if (c->next) c->next->prev = c->prev;
  uvmqtt_decoder_reset(&c->dec);
  free(c->out);
  free(c);
}

static void conn_close(conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(g_rbuf, sizeof g_rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
  write_t *w = (write_t *)req;
  conn_t *c = w->c;
  c->write_pending -= w->len;
  free(w);
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (!c->reading && !c->closing && c->write_pending < WRITE_LOW) {
    c->reading = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
}

/* Sends the acks gathered from one read: try_write first, a copy queued
 * for what the socket did not take. */
static void flush(conn_t *c) {
  if (c->out_len == 0 || c->closing) return;
  size_t off = 0;
  if (c->write_pending == 0) {
    uv_buf_t b = uv_buf_init((char *)c->out, (unsigned)c->out_len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n > 0) off = (size_t)n;
  }
  size_t rest = c->out_len - off;
  c->out_len = 0;
  if (rest == 0) return;
  write_t *w = malloc(sizeof *w + rest);
  if (w == NULL) {
    conn_close(c);
    return;
  }
  memcpy(w->data, c->out + off, rest);
  w->c = c;
  w->len = rest;
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)rest);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
    free(w);
    conn_close(c);
    return;
  }
  c->write_pending += rest;
  if (c->write_pending > WRITE_HIGH && c->reading) {
    c->reading = 0;
    uv_read_stop((uv_stream_t *)&c->tcp);
  }
}

static int emit(conn_t *c, const uvmqtt_packet_t *p) {
  ssize_t n = uvmqtt_encode_size(p, c->version);
  if (n < 0) return (int)n;
  if (c->out_len + (size_t)n > c->out_cap) {
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + (size_t)n)
      cap *= 2;
    uint8_t *out = realloc(c->out, cap);
    if (out == NULL) return UVMQTT_ENOMEM;
    c->out = out;
    c->out_cap = cap;
  }
  n = uvmqtt_encode(p, c->version, c->out + c->out_len, c->out_cap - c->out_len);
  if (n < 0) return (int)n;
  c->out_len += (size_t)n;
  return 0;
}

static int ack(conn_t *c, uint8_t type, uint16_t id) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = type;
  p.packet_id = id;
  return emit(c, &p);
}

static int answer_subscribe(conn_t *c, const uvmqtt_packet_t *in) {
  uint8_t codes[MAX_FILTERS];
  uint32_t count = 0;
  size_t off = 0;
  uvmqtt_topic_sub_t sub;
  while (count < MAX_FILTERS && uvmqtt_subs_next(in->type, in->u.subscribe.raw, &off, &sub) == 1)
    codes[count++] = in->type == UVMQTT_SUBSCRIBE ? (uint8_t)(sub.options & 3) : 0;
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = in->type == UVMQTT_SUBSCRIBE ? UVMQTT_SUBACK : UVMQTT_UNSUBACK;
  p.packet_id = in->packet_id;
  p.u.suback.codes = codes;
  /* MQTT 3.1.1 UNSUBACK carries no codes. */
  p.u.suback.count = (p.type == UVMQTT_UNSUBACK && c->version != UVMQTT_V5) ? 0 : count;
  return emit(c, &p);
}

/* Returns 0, 1 to close quietly (DISCONNECT), or a negative error. */
static int handle(conn_t *c, const uvmqtt_packet_t *p) {
  g.packets++;
  switch (p->type) {
  case UVMQTT_CONNECT: {
    c->version = p->u.connect.protocol_level;
    uvmqtt_packet_t ack_pkt;
    memset(&ack_pkt, 0, sizeof ack_pkt);
    ack_pkt.type = UVMQTT_CONNACK;
    return emit(c, &ack_pkt);
  }
  case UVMQTT_PUBLISH:
    g.publishes++;
    if (p->u.publish.qos == 1) return ack(c, UVMQTT_PUBACK, p->packet_id);
    if (p->u.publish.qos == 2) return ack(c, UVMQTT_PUBREC, p->packet_id);
    return 0;
  case UVMQTT_PUBREL: return ack(c, UVMQTT_PUBCOMP, p->packet_id);
  case UVMQTT_SUBSCRIBE:
  case UVMQTT_UNSUBSCRIBE: return answer_subscribe(c, p);
  case UVMQTT_PINGREQ: return ack(c, UVMQTT_PINGRESP, 0);
  case UVMQTT_DISCONNECT: return 1;
  default: return 0; /* acks of messages we never send, AUTH: ignored */
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = s->data;
  if (nread < 0) {
    if (nread != UV_EOF) g.errors++;
    conn_close(c);
    return;
  }
  g.bytes += (uint64_t)nread;
  size_t off = 0;
  while (off < (size_t)nread) {
    uvmqtt_packet_t pkt;
    int got = 0;
    ssize_t used =
        uvmqtt_decode(&c->dec, (const uint8_t *)buf->base + off, (size_t)nread - off, &pkt, &got);
    if (used < 0) {
      if (!g.quiet) fprintf(stderr, "sink: closing a client: %s\n", uvmqtt_strerror((int)used));
      g.errors++;
      conn_close(c);
      return;
    }
    off += (size_t)used;
    if (!got) continue;
    int rc = handle(c, &pkt);
    if (rc != 0) {
      if (rc < 0) g.errors++;
      flush(c);
      conn_close(c);
      return;
    }
  }
  flush(c);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) return;
  conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  uv_tcp_init(g.loop, &c->tcp);
  c->tcp.data = c;
  c->version = UVMQTT_V311;
  uvmqtt_decoder_init(&c->dec, 0, 0, &dec_mem);
  c->next = g.conns;
  if (g.conns) g.conns->prev = c;
  g.conns = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  g.accepted++;
  uv_tcp_nodelay(&c->tcp, 1);
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_signal(uv_signal_t *sig, int signum) {
  (void)sig;
  (void)signum;
  uv_close((uv_handle_t *)&g.server, NULL);
  uv_close((uv_handle_t *)&g.sigint, NULL);
  uv_close((uv_handle_t *)&g.sigterm, NULL);
  for (conn_t *c = g.conns; c; c = c->next)
    conn_close(c);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = 0;
  int opt;
  while ((opt = getopt(argc, argv, "h:p:q")) != -1) {
    switch (opt) {
    case 'h': host = optarg; break;
    case 'p': port = atoi(optarg); break;
    case 'q': g.quiet = 1; break;
    default: fprintf(stderr, "usage: uvmqtt-bench-sink [-h ADDR] [-p PORT] [-q]\n"); return 2;
    }
  }
  if (port < 0 || port > 65535) {
    fprintf(stderr, "uvmqtt-bench-sink: bad port\n");
    return 2;
  }
  g.loop = uv_default_loop();
  struct sockaddr_storage sa;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&sa) != 0 &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&sa) != 0) {
    fprintf(stderr, "uvmqtt-bench-sink: -h must be a numeric address\n");
    return 2;
  }
  uv_tcp_init(g.loop, &g.server);
  int rc = uv_tcp_bind(&g.server, (const struct sockaddr *)&sa, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&g.server, 1024, on_connection);
  if (rc < 0) {
    fprintf(stderr, "uvmqtt-bench-sink: %s:%d: %s\n", host, port, uv_strerror(rc));
    return 1;
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&g.server, (struct sockaddr *)&bound, &len);
  int actual = ntohs(((struct sockaddr_in *)&bound)->sin_port);
  printf("listening on %s:%d\n", host, actual);
  fflush(stdout);
  uv_signal_init(g.loop, &g.sigint);
  uv_signal_init(g.loop, &g.sigterm);
  uv_signal_start(&g.sigint, on_signal, SIGINT);
  uv_signal_start(&g.sigterm, on_signal, SIGTERM);
  uv_run(g.loop, UV_RUN_DEFAULT);
  if (!g.quiet)
    fprintf(
        stderr, "sink: %llu connections, %llu packets (%llu PUBLISH), %llu bytes, %llu errors\n",
        (unsigned long long)g.accepted, (unsigned long long)g.packets,
        (unsigned long long)g.publishes, (unsigned long long)g.bytes, (unsigned long long)g.errors);
  uv_loop_close(g.loop);
  return 0;
}
