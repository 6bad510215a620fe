/* A scripted fake broker on the test's loop. */
#include "fake_broker.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <stdlib.h>
#include <string.h>

#define FAKE_READ_SIZE 65536

struct fake_conn_s {
  uv_tcp_t tcp;
  fake_broker_t *fb;
  fake_conn_t *next;
  uv_timer_t pause; /* resumes reading after a throttling pause */
  uvmqtt_decoder_t dec;
  uint8_t version;
  int closing;
  int open_handles; /* tcp and pause: the connection is freed when both closed */
  int read_any;     /* the first read was recorded in fb->first_read */
};

typedef struct {
  uv_write_t req;
  size_t len;
  uint8_t bytes[];
} fake_write_t;

/* Every connection reads into this buffer: reads are consumed before the
 * next one starts, and tests run one loop per thread. */
static _Thread_local uint8_t read_buf[FAKE_READ_SIZE];

static void *mem_alloc(void *user_data, size_t size) {
  (void)user_data;
  return malloc(size);
}

static void mem_free(void *user_data, void *ptr) {
  (void)user_data;
  free(ptr);
}

static const uvmqtt_codec_mem_t fake_mem = {mem_alloc, mem_free, NULL};

fake_broker_t *fake_conn_broker(fake_conn_t *conn) {
  return conn->fb;
}

uint8_t fake_conn_version(const fake_conn_t *conn) {
  if (conn->version != 0) return conn->version;
  return conn->fb->version != 0 ? conn->fb->version : UVMQTT_V311;
}

static void conn_closed_cb(uv_handle_t *handle) {
  fake_conn_t *conn = handle->data;
  fake_broker_t *fb = conn->fb;
  if (--conn->open_handles > 0) return;
  for (fake_conn_t **p = &fb->conns; *p != NULL; p = &(*p)->next) {
    if (*p == conn) {
      *p = conn->next;
      break;
    }
  }
  uvmqtt_decoder_reset(&conn->dec);
  free(conn);
}

void fake_conn_close(fake_conn_t *conn) {
  if (conn->closing) return;
  conn->closing = 1;
  uv_close((uv_handle_t *)&conn->pause, conn_closed_cb);
  uv_close((uv_handle_t *)&conn->tcp, conn_closed_cb);
}

void fake_conn_reset(fake_conn_t *conn) {
  if (conn->closing) return;
  conn->closing = 1;
  uv_close((uv_handle_t *)&conn->pause, conn_closed_cb);
  /* uv_tcp_close_reset() closes the handle itself. */
  if (uv_tcp_close_reset(&conn->tcp, conn_closed_cb) != 0)
    uv_close((uv_handle_t *)&conn->tcp, conn_closed_cb);
}

static void write_cb(uv_write_t *req, int status) {
  (void)status;
  free(req->data);
}

int fake_send(fake_conn_t *conn, const void *bytes, size_t len) {
  if (conn->closing) return UV_ENOTCONN;
  fake_write_t *w = malloc(sizeof(*w) + len);
  if (w == NULL) return UV_ENOMEM;
  memcpy(w->bytes, bytes, len);
  w->len = len;
  w->req.data = w;
  uv_buf_t buf = uv_buf_init((char *)w->bytes, (unsigned)len);
  int r = uv_write(&w->req, (uv_stream_t *)&conn->tcp, &buf, 1, write_cb);
  if (r < 0) free(w);
  return r;
}

int fake_send_packet(fake_conn_t *conn, const uvmqtt_packet_t *pkt) {
  uint8_t version = fake_conn_version(conn);
  ssize_t size = uvmqtt_encode_size(pkt, version);
  if (size < 0) return (int)size;
  uint8_t *buf = malloc((size_t)size);
  if (buf == NULL) return UV_ENOMEM;
  ssize_t n = uvmqtt_encode(pkt, version, buf, (size_t)size);
  int r = n < 0 ? (int)n : fake_send(conn, buf, (size_t)n);
  free(buf);
  return r;
}

void fake_default_answer(fake_conn_t *conn, const uvmqtt_packet_t *pkt) {
  uvmqtt_packet_t reply;
  memset(&reply, 0, sizeof(reply));
  if (pkt->type == UVMQTT_CONNECT)
    reply.type = UVMQTT_CONNACK;
  else if (pkt->type == UVMQTT_PINGREQ)
    reply.type = UVMQTT_PINGRESP;
  else
    return;
  fake_send_packet(conn, &reply);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  fake_conn_t *conn = handle->data;
  fake_broker_t *fb = conn->fb;
  (void)suggested;
  size_t size = sizeof(read_buf);
  if (fb->read_pause_ms != 0 && fb->read_chunk != 0 && fb->read_chunk < size) size = fb->read_chunk;
  *buf = uv_buf_init((char *)read_buf, (unsigned)size);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void pause_cb(uv_timer_t *timer) {
  fake_conn_t *conn = timer->data;
  if (!conn->closing) uv_read_start((uv_stream_t *)&conn->tcp, alloc_cb, read_cb);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  fake_conn_t *conn = stream->data;
  fake_broker_t *fb = conn->fb;
  if (nread < 0) {
    if (nread == UV_EOF)
      fb->eofs++;
    else
      fb->read_errors++;
    fb->last_read_error = (int)nread;
    fb->closed++;
    fake_conn_close(conn);
    return;
  }
  fb->bytes_read += (uint64_t)nread;
  if (!conn->read_any) {
    conn->read_any = 1;
    fb->first_read_len =
        (size_t)nread < sizeof fb->first_read ? (size_t)nread : sizeof fb->first_read;
    memcpy(fb->first_read, buf->base, fb->first_read_len);
  }
  const uint8_t *in = (const uint8_t *)buf->base;
  size_t off = 0;
  /* Each round consumes bytes or yields a packet, so the loop ends. */
  while (off < (size_t)nread && !conn->closing) {
    uvmqtt_packet_t pkt;
    int got = 0;
    ssize_t n = uvmqtt_decode(&conn->dec, in + off, (size_t)nread - off, &pkt, &got);
    if (n < 0) {
      fb->decode_errors++;
      fake_conn_close(conn);
      return;
    }
    off += (size_t)n;
    if (!got) continue;
    if (pkt.type == UVMQTT_CONNECT) {
      conn->version = pkt.u.connect.protocol_level;
      fb->version = conn->version;
    }
    fb->packets++;
    if (fb->on_packet != NULL)
      fb->on_packet(fb, conn, &pkt);
    else
      fake_default_answer(conn, &pkt);
  }
  /* A slow reader: leave the rest in the socket for a while. */
  if (!conn->closing && fb->read_pause_ms != 0 && nread > 0) {
    uv_read_stop(stream);
    uv_timer_start(&conn->pause, pause_cb, fb->read_pause_ms, 0);
  }
}

static void connection_cb(uv_stream_t *server, int status) {
  fake_broker_t *fb = server->data;
  if (status < 0) return;
  fake_conn_t *conn = calloc(1, sizeof(*conn));
  if (conn == NULL) return;
  conn->fb = fb;
  uv_tcp_init(fb->loop, &conn->tcp);
  conn->tcp.data = conn;
  uv_timer_init(fb->loop, &conn->pause);
  conn->pause.data = conn;
  conn->open_handles = 2;
  conn->next = fb->conns;
  fb->conns = conn;
  uvmqtt_decoder_init(&conn->dec, fb->version, 0, &fake_mem);
  if (uv_accept(server, (uv_stream_t *)&conn->tcp) != 0 ||
      uv_read_start((uv_stream_t *)&conn->tcp, alloc_cb, read_cb) != 0) {
    fake_conn_close(conn);
    return;
  }
  int plen = sizeof fb->last_peer;
  memset(&fb->last_peer, 0, sizeof fb->last_peer);
  (void)uv_tcp_getpeername(&conn->tcp, (struct sockaddr *)&fb->last_peer, &plen);
  fb->connections++;
}

int fake_broker_start(fake_broker_t *fb, uv_loop_t *loop, fake_packet_cb on_packet) {
  fb->loop = loop;
  fb->on_packet = on_packet;
  fb->port = 0;
  fb->version = 0;
  fb->connections = 0;
  fb->packets = 0;
  fb->closed = 0;
  fb->decode_errors = 0;
  fb->eofs = 0;
  fb->read_errors = 0;
  fb->last_read_error = 0;
  fb->bytes_read = 0;
  fb->read_chunk = 0;
  fb->read_pause_ms = 0;
  fb->first_read_len = 0;
  fb->conns = NULL;
  int r = uv_tcp_init(loop, &fb->server);
  if (r < 0) return r;
  fb->server.data = fb;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  r = uv_tcp_bind(&fb->server, (const struct sockaddr *)&sa, 0);
  /* A slow uplink, emulated by a broker that reads slowly, acknowledges
   * our bytes as it reads them, as the far end of a slow path does. Over
   * loopback's 64 KiB segments and a large receive buffer, the kernel
   * would instead hold its window shut until half the buffer is free
   * (silly-window avoidance) and acknowledge in bursts seconds apart:
   * Ethernet-sized segments and a small buffer keep it steady. */
  uv_os_fd_t fd;
  int mss = 1460, rcvbuf = 4096;
  if (r == 0 && uv_fileno((uv_handle_t *)&fb->server, &fd) == 0) {
    (void)setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof mss);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  }
  if (r == 0) r = uv_listen((uv_stream_t *)&fb->server, 16, connection_cb);
  int len = sizeof(sa);
  if (r == 0) r = uv_tcp_getsockname(&fb->server, (struct sockaddr *)&sa, &len);
  if (r < 0) {
    uv_close((uv_handle_t *)&fb->server, NULL);
    return r;
  }
  fb->port = ntohs(sa.sin_port);
  return 0;
}

void fake_broker_stop(fake_broker_t *fb) {
  if (!uv_is_closing((uv_handle_t *)&fb->server)) uv_close((uv_handle_t *)&fb->server, NULL);
  for (fake_conn_t *c = fb->conns; c != NULL; c = c->next)
    fake_conn_close(c);
}
