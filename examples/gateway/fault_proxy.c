/* The gateway demo's fault-injection proxy.
 *
 * Each accepted connection is a link of two streams, the device's and one to
 * the broker. A chunk read on one side is copied into a write request for the
 * other. A side stops reading while more than QUEUE_MAX bytes wait to be
 * written to its peer, so memory stays bounded whatever the peers do.
 */
#include "fault_proxy.h"

#include <stdlib.h>
#include <string.h>

#define READ_SIZE 65536
#define QUEUE_MAX (1u << 20)

enum { DEVICE = 0, BROKER = 1 };

struct fault_link_s {
  fault_proxy_t *p;
  fault_link_t *prev;
  fault_link_t *next;
  uv_tcp_t side[2];
  uv_connect_t connect_req;
  uv_shutdown_t shutdown_req;
  uint8_t open[2];   /* initialised and not closing */
  uint8_t up[2];     /* writable: the device accepted, the broker connected */
  uint8_t paused[2]; /* stopped reading because the peer's queue is full */
  uint8_t shut_side; /* the side being shut down after its peer ended */
  uint8_t listed;
  int handles; /* initialised handles not yet closed */
};

typedef struct {
  uv_write_t req;
  fault_link_t *link;
  int to;
  char bytes[];
} chunk_t;

/* Every read is copied into a chunk before the callback returns, so one
 * buffer serves every link of the loop. */
static char read_buf[READ_SIZE];

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static uv_stream_t *stream_of(fault_link_t *l, int side) {
  return (uv_stream_t *)&l->side[side];
}

static void unlist(fault_link_t *l) {
  if (!l->listed) return;
  l->listed = 0;
  if (l->prev)
    l->prev->next = l->next;
  else
    l->p->links = l->next;
  if (l->next) l->next->prev = l->prev;
  l->p->live--;
}

static void on_handle_closed(uv_handle_t *handle) {
  fault_link_t *l = handle->data;
  if (--l->handles == 0) free(l);
}

static void close_side(fault_link_t *l, int side) {
  if (!l->open[side]) return;
  l->open[side] = 0;
  l->up[side] = 0;
  uv_close((uv_handle_t *)&l->side[side], on_handle_closed);
  if (!l->open[DEVICE] && !l->open[BROKER]) unlist(l);
}

static void link_close(fault_link_t *l) {
  unlist(l);
  close_side(l, DEVICE);
  close_side(l, BROKER);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  *buf = uv_buf_init(read_buf, sizeof read_buf);
}

static void start_reading(fault_link_t *l, int side) {
  if (l->open[side] && uv_read_start(stream_of(l, side), alloc_cb, read_cb) != 0) link_close(l);
}

static void write_cb(uv_write_t *req, int status) {
  chunk_t *c = req->data;
  fault_link_t *l = c->link;
  int to = c->to, from = 1 - c->to;
  free(c);
  if (status < 0) {
    /* A cancelled write belongs to a link that is already closing. */
    if (status != UV_ECANCELED) link_close(l);
    return;
  }
  if (l->paused[from] && l->open[from] &&
      uv_stream_get_write_queue_size(stream_of(l, to)) <= QUEUE_MAX / 2) {
    l->paused[from] = 0;
    start_reading(l, from);
  }
}

static void forward(fault_link_t *l, int to, const char *bytes, size_t len) {
  chunk_t *c = malloc(sizeof *c + len);
  if (c == NULL) {
    link_close(l);
    return;
  }
  memcpy(c->bytes, bytes, len);
  c->link = l;
  c->to = to;
  c->req.data = c;
  uv_buf_t b = uv_buf_init(c->bytes, (unsigned)len);
  if (uv_write(&c->req, stream_of(l, to), &b, 1, write_cb) != 0) {
    free(c);
    link_close(l);
    return;
  }
  if (uv_stream_get_write_queue_size(stream_of(l, to)) > QUEUE_MAX) {
    l->paused[1 - to] = 1;
    uv_read_stop(stream_of(l, 1 - to));
  }
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  fault_link_t *l = req->data;
  (void)status;
  close_side(l, l->shut_side);
}

/* One side ended (EOF or error). */
static void side_ended(fault_link_t *l, int side) {
  int peer = 1 - side;
  close_side(l, side);
  /* A dead path carries no FIN either: the peer keeps its open-looking
   * connection until its own keepalive gives up. */
  if (l->p->mode == FAULT_BLACKHOLE) return;
  if (!l->up[peer]) {
    close_side(l, peer);
    return;
  }
  /* The peer gets the bytes already read from this side, then a FIN. */
  uv_read_stop(stream_of(l, peer));
  l->shut_side = (uint8_t)peer;
  l->shutdown_req.data = l;
  if (uv_shutdown(&l->shutdown_req, stream_of(l, peer), shutdown_cb) != 0) close_side(l, peer);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  fault_link_t *l = stream->data;
  int side = stream == stream_of(l, DEVICE) ? DEVICE : BROKER;
  if (nread == 0) return;
  if (nread < 0) {
    side_ended(l, side);
    return;
  }
  if (l->p->mode == FAULT_BLACKHOLE || !l->up[1 - side]) return;
  forward(l, 1 - side, buf->base, (size_t)nread);
}

static void connect_cb(uv_connect_t *req, int status) {
  fault_link_t *l = req->data;
  if (!l->open[BROKER]) return;
  if (status < 0) {
    link_close(l);
    return;
  }
  l->up[BROKER] = 1;
  start_reading(l, BROKER);
  start_reading(l, DEVICE);
}

static void connection_cb(uv_stream_t *server, int status) {
  fault_proxy_t *p = server->data;
  if (status < 0) return;
  fault_link_t *l = calloc(1, sizeof *l);
  if (l == NULL) return;
  l->p = p;
  uv_tcp_init(p->loop, &l->side[DEVICE]);
  l->side[DEVICE].data = l;
  l->handles = 1;
  l->open[DEVICE] = 1;
  l->next = p->links;
  if (p->links) p->links->prev = l;
  p->links = l;
  l->listed = 1;
  p->live++;
  p->accepted++;
  if (uv_accept(server, stream_of(l, DEVICE)) != 0) {
    link_close(l);
    return;
  }
  l->up[DEVICE] = 1;
  if (p->mode == FAULT_BLACKHOLE) {
    /* Like a dead path: the device's bytes vanish and nothing comes back. */
    start_reading(l, DEVICE);
    return;
  }
  uv_tcp_init(p->loop, &l->side[BROKER]);
  l->side[BROKER].data = l;
  l->handles++;
  l->open[BROKER] = 1;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", p->target_port, &sa);
  l->connect_req.data = l;
  /* The device side starts reading once the broker side is up, so nothing
   * needs to wait in between. */
  if (uv_tcp_connect(&l->connect_req, &l->side[BROKER], (const struct sockaddr *)&sa, connect_cb) !=
      0)
    link_close(l);
}

int fault_proxy_start(fault_proxy_t *p, uv_loop_t *loop, int target_port) {
  memset(p, 0, sizeof *p);
  p->loop = loop;
  p->target_port = target_port;
  p->mode = FAULT_PASS;
  int r = uv_tcp_init(loop, &p->server);
  if (r < 0) return r;
  p->server.data = p;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  r = uv_tcp_bind(&p->server, (const struct sockaddr *)&sa, 0);
  /* A large backlog: hundreds of devices reconnect at the same moment. */
  if (r == 0) r = uv_listen((uv_stream_t *)&p->server, 1024, connection_cb);
  int len = sizeof sa;
  if (r == 0) r = uv_tcp_getsockname(&p->server, (struct sockaddr *)&sa, &len);
  if (r < 0) {
    uv_close((uv_handle_t *)&p->server, NULL);
    return r;
  }
  p->port = ntohs(sa.sin_port);
  return 0;
}

void fault_proxy_set_mode(fault_proxy_t *p, fault_mode_t mode) {
  p->mode = (int)mode;
}

static size_t close_all(fault_proxy_t *p) {
  size_t n = 0;
  /* link_close unlists the head, so each live link is taken once. */
  while (p->links != NULL) {
    link_close(p->links);
    n++;
  }
  return n;
}

size_t fault_proxy_cut_all(fault_proxy_t *p) {
  size_t n = close_all(p);
  p->cut += n;
  return n;
}

void fault_proxy_stop(fault_proxy_t *p) {
  if (!uv_is_closing((uv_handle_t *)&p->server)) uv_close((uv_handle_t *)&p->server, NULL);
  close_all(p);
}
