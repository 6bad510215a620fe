/* A fault-injection TCP proxy on the test's loop.
 *
 * Each accepted connection is a link of two streams: the client's and one to
 * the target. Bytes read on one side wait in a queue for their due time
 * (arrival plus delay_ms) and are written to the other side in order. A side
 * stops reading while more than PROXY_QUEUE_MAX bytes wait for the other,
 * which bounds memory whatever the peers do.
 */
#include "proxy.h"

#include <stdlib.h>
#include <string.h>

#define PROXY_READ_SIZE 65536
#define PROXY_QUEUE_MAX (4u << 20)

enum { TO_BROKER = 0, TO_CLIENT = 1 };

typedef struct link_s link_t;

typedef struct chunk_s {
  uv_write_t req;
  link_t *link;
  int dir;
  uint64_t due;
  struct chunk_s *next;
  size_t len;
  char bytes[];
} chunk_t;

/* One direction: chunks not yet handed to libuv, and the bytes queued in
 * total (waiting plus being written). */
typedef struct {
  chunk_t *head;
  chunk_t *tail;
  size_t queued;
  uv_timer_t timer;
  int paused; /* the source side stopped reading: too much queued */
} direction_t;

struct link_s {
  fault_proxy_t *p;
  link_t *next;
  uv_tcp_t client;
  uv_tcp_t broker;
  uv_connect_t connect_req;
  direction_t dir[2];
  int has_broker; /* a broker stream exists (not for black-holed links) */
  int handles;    /* handles not yet closed */
  int closing;
  int draining; /* close once every queued byte went out */
  uint64_t to_broker_total;
};

/* Reads are copied into chunks at once, so one buffer serves every link. */
static _Thread_local char read_buf[PROXY_READ_SIZE];

static link_t **links_of(fault_proxy_t *p) {
  return (link_t **)&p->links;
}

static uv_stream_t *side(link_t *l, int which) {
  return which == TO_BROKER ? (uv_stream_t *)&l->broker : (uv_stream_t *)&l->client;
}

/* The stream bytes of direction d are read from. */
static uv_stream_t *source_of(link_t *l, int d) {
  return side(l, d == TO_BROKER ? TO_CLIENT : TO_BROKER);
}

static void handle_closed_cb(uv_handle_t *handle) {
  link_t *l = handle->data;
  if (--l->handles > 0) return;
  for (int d = 0; d < 2; d++) {
    chunk_t *c = l->dir[d].head;
    while (c != NULL) {
      chunk_t *next = c->next;
      free(c);
      c = next;
    }
  }
  free(l);
}

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, handle_closed_cb);
}

static void link_close(link_t *l) {
  if (l->closing) return;
  l->closing = 1;
  for (link_t **pp = links_of(l->p); *pp != NULL; pp = &(*pp)->next) {
    if (*pp == l) {
      *pp = l->next;
      break;
    }
  }
  /* Closing the streams cancels their writes; the chunks free themselves in
   * the write callbacks and the waiting ones go with the link. */
  close_handle((uv_handle_t *)&l->client);
  if (l->has_broker) close_handle((uv_handle_t *)&l->broker);
  close_handle((uv_handle_t *)&l->dir[0].timer);
  close_handle((uv_handle_t *)&l->dir[1].timer);
}

static void maybe_finish_drain(link_t *l) {
  if (l->draining && l->dir[0].queued == 0 && l->dir[1].queued == 0) link_close(l);
}

/* Stops both sides reading and closes the link once every byte already read
 * went out. */
static void drain_and_close(link_t *l) {
  uv_read_stop((uv_stream_t *)&l->client);
  if (l->has_broker) uv_read_stop((uv_stream_t *)&l->broker);
  l->draining = 1;
  maybe_finish_drain(l);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void write_cb(uv_write_t *req, int status) {
  chunk_t *c = req->data;
  link_t *l = c->link;
  direction_t *dir = &l->dir[c->dir];
  dir->queued -= c->len;
  int d = c->dir;
  free(c);
  if (l->closing) return;
  if (status < 0) {
    link_close(l);
    return;
  }
  if (dir->paused && dir->queued <= PROXY_QUEUE_MAX / 2 && !l->draining) {
    dir->paused = 0;
    uv_read_start(source_of(l, d), alloc_cb, read_cb);
  }
  maybe_finish_drain(l);
}

static void timer_cb(uv_timer_t *timer);

/* Hands every due chunk of direction d to libuv, in order, and sets the
 * timer for the first one that is not due yet. */
static void pump(link_t *l, int d) {
  direction_t *dir = &l->dir[d];
  uint64_t now = uv_now(l->p->loop);
  while (dir->head != NULL && dir->head->due <= now) {
    chunk_t *c = dir->head;
    dir->head = c->next;
    if (dir->head == NULL) dir->tail = NULL;
    uv_buf_t b = uv_buf_init(c->bytes, (unsigned)c->len);
    c->req.data = c;
    if (uv_write(&c->req, side(l, d), &b, 1, write_cb) != 0) {
      dir->queued -= c->len;
      free(c);
      link_close(l);
      return;
    }
  }
  if (dir->head != NULL) uv_timer_start(&dir->timer, timer_cb, dir->head->due - now, 0);
}

static void timer_cb(uv_timer_t *timer) {
  link_t *l = timer->data;
  pump(l, timer == &l->dir[TO_BROKER].timer ? TO_BROKER : TO_CLIENT);
}

static void forward(link_t *l, int d, const char *bytes, size_t len) {
  chunk_t *c = malloc(sizeof(*c) + len);
  if (c == NULL) {
    link_close(l);
    return;
  }
  memcpy(c->bytes, bytes, len);
  c->len = len;
  c->link = l;
  c->dir = d;
  c->next = NULL;
  c->due = uv_now(l->p->loop) + l->p->delay_ms;
  direction_t *dir = &l->dir[d];
  if (dir->tail != NULL)
    dir->tail->next = c;
  else
    dir->head = c;
  dir->tail = c;
  dir->queued += len;
  if (dir->queued > PROXY_QUEUE_MAX) {
    dir->paused = 1;
    uv_read_stop(source_of(l, d));
  }
  /* A chunk behind a waiting one waits for it: the timer will pump. */
  if (dir->head == c) pump(l, d);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  link_t *l = stream->data;
  fault_proxy_t *p = l->p;
  int d = stream == (uv_stream_t *)&l->client ? TO_BROKER : TO_CLIENT;
  if (nread == 0) return;
  if (nread < 0) {
    /* Deliver what the closing side sent before it went, then close both. */
    drain_and_close(l);
    return;
  }
  if (p->mode == PROXY_BLACKHOLE || !l->has_broker) return;
  size_t len = (size_t)nread;
  int cut = 0;
  if (d == TO_BROKER && p->cut_after > 0) {
    uint64_t room = p->cut_after > l->to_broker_total ? p->cut_after - l->to_broker_total : 0;
    if (len >= room) {
      len = (size_t)room;
      cut = 1;
    }
    l->to_broker_total += len;
  }
  if (len > 0) forward(l, d, buf->base, len);
  if (cut && !l->closing) drain_and_close(l);
}

static void connect_cb(uv_connect_t *req, int status) {
  link_t *l = req->data;
  if (l->closing) return;
  if (status < 0 || uv_read_start((uv_stream_t *)&l->broker, alloc_cb, read_cb) != 0) link_close(l);
}

static void refused_closed_cb(uv_handle_t *handle) {
  free(handle);
}

static void refuse(uv_stream_t *server) {
  uv_tcp_t *tcp = malloc(sizeof(*tcp));
  if (tcp == NULL) return;
  uv_tcp_init(server->loop, tcp);
  uv_accept(server, (uv_stream_t *)tcp);
  uv_close((uv_handle_t *)tcp, refused_closed_cb);
}

static void connection_cb(uv_stream_t *server, int status) {
  fault_proxy_t *p = server->data;
  if (status < 0) return;
  p->accepted++;
  if (p->mode == PROXY_REFUSE) {
    refuse(server);
    return;
  }
  link_t *l = calloc(1, sizeof(*l));
  if (l == NULL) {
    refuse(server);
    return;
  }
  l->p = p;
  uv_tcp_init(p->loop, &l->client);
  l->client.data = l;
  l->handles = 3;
  for (int d = 0; d < 2; d++) {
    uv_timer_init(p->loop, &l->dir[d].timer);
    l->dir[d].timer.data = l;
  }
  l->next = p->links;
  p->links = l;
  if (uv_accept(server, (uv_stream_t *)&l->client) != 0) {
    link_close(l);
    return;
  }
  /* A black-holed connection never reaches the broker: like a dead path,
   * the client's bytes vanish and nothing comes back. */
  if (p->mode == PROXY_PASS) {
    uv_tcp_init(p->loop, &l->broker);
    l->broker.data = l;
    l->has_broker = 1;
    l->handles++;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", p->target_port, &sa);
    l->connect_req.data = l;
    if (uv_tcp_connect(&l->connect_req, &l->broker, (const struct sockaddr *)&sa, connect_cb) !=
        0) {
      link_close(l);
      return;
    }
  }
  /* Bytes read before the broker connects queue behind the connect. */
  if (uv_read_start((uv_stream_t *)&l->client, alloc_cb, read_cb) != 0) link_close(l);
}

int proxy_start(fault_proxy_t *p, uv_loop_t *loop, int target_port) {
  p->loop = loop;
  p->port = 0;
  p->target_port = target_port;
  p->mode = PROXY_PASS;
  p->delay_ms = 0;
  p->cut_after = 0;
  p->accepted = 0;
  p->links = NULL;
  int r = uv_tcp_init(loop, &p->server);
  if (r < 0) return r;
  p->server.data = p;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  r = uv_tcp_bind(&p->server, (const struct sockaddr *)&sa, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&p->server, 16, connection_cb);
  int len = sizeof(sa);
  if (r == 0) r = uv_tcp_getsockname(&p->server, (struct sockaddr *)&sa, &len);
  if (r < 0) {
    uv_close((uv_handle_t *)&p->server, NULL);
    return r;
  }
  p->port = ntohs(sa.sin_port);
  return 0;
}

void proxy_cut_all(fault_proxy_t *p) {
  /* link_close unlinks the head, so this takes each live link once. */
  while (p->links != NULL)
    link_close(p->links);
}

void proxy_set_mode(fault_proxy_t *p, proxy_mode_t mode) {
  p->mode = (int)mode;
}

void proxy_stop(fault_proxy_t *p) {
  if (!uv_is_closing((uv_handle_t *)&p->server)) uv_close((uv_handle_t *)&p->server, NULL);
  proxy_cut_all(p);
}
