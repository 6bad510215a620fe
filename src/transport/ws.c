/* The WebSocket transport: RFC 6455 framing (wslay) on top of the TCP or
 * the TLS transport.
 *
 * Composition, like TLS over TCP: the owner's transport struct is set up as
 * a TCP or TLS transport whose callbacks are this file's, and its vtable is
 * swapped for the WebSocket one. The layer below keeps connecting, reading,
 * writing and closing; this layer sends the HTTP upgrade, checks the answer
 * (src/transport/http.c), then wraps every write in one masked binary frame
 * and hands the payload of every binary frame it reads to the owner as it
 * arrives, so MQTT packets may span frames and frames may hold several
 * packets. wslay answers pings and close frames itself. Its state lives in
 * t->outer: over TLS, t->cb already belongs to TLS. */
#include "transport/ws.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <wslay/wslay.h>

#include "base/alloc.h"
#include "transport/http.h"
#include "uvmqtt/errors.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* Frame bytes handed to the layer below, which keeps them until its write
 * completes when it cannot send them at once. */
typedef struct {
  void *arg;       /* the owner's, when this record ends one of its writes */
  uint8_t has_arg; /* the owner's on_write follows this record's */
  uint8_t data[];
} write_rec_t;

typedef struct {
  /* Called by the layer below (TCP calls them through t->cb, TLS through
   * its owner pointer). */
  uvmqtt__transport_cbs_t cbs;
  const uvmqtt__transport_cbs_t *owner;
  const uvmqtt__transport_vtbl_t *lower;
  uvmqtt__transport_t *t;
  uvmqtt__ws_options_t opts;
  wslay_event_context_ptr ws;
  write_rec_t *request; /* the upgrade request, from connect() until it is sent */
  size_t request_len;
  char *head; /* the response head while it arrives */
  size_t head_len;
  char accept[UVMQTT__WS_ACCEPT_LEN + 1];
  const uint8_t *in; /* frame bytes of the current read that wslay has not taken */
  size_t in_len;
  write_rec_t *last_rec; /* the newest record queued during the current write() */
  write_rec_t *out;      /* frame bytes gathered during one wslay_event_send() */
  size_t out_len;
  size_t out_cap;
  int io_error; /* why the layer below refused a write */
  uint8_t over_tls;
  uint8_t established; /* the upgrade succeeded and the owner was told */
  uint8_t done;        /* the owner heard of a failure or the end: nothing more */
  uint8_t data_frame;  /* the frame being read carries MQTT bytes */
  uint8_t msg_binary;  /* the message being read is binary (for continuations) */
  uint8_t bad_frame;   /* a text frame arrived */
} conn_t;

static conn_t *conn_of(const uvmqtt__transport_t *t) {
  return t->outer;
}

static int stopped(const conn_t *s) {
  return s->done || s->t->state != UVMQTT__T_OPEN;
}

/* ---- wslay's callbacks ------------------------------------------------------------------------
 */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user) {
  (void)flags;
  conn_t *s = user;
  if (s->in_len == 0 || stopped(s)) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = s->in_len < len ? s->in_len : len;
  memcpy(buf, s->in, n);
  s->in += n;
  s->in_len -= n;
  return (ssize_t)n;
}

/* Gathers the frame bytes wslay produces during one wslay_event_send()
 * (a header and a payload arrive apart) so that they go down as one write:
 * two small segments in a row would meet Nagle's algorithm on a proxy or
 * relay in between and wait for a delayed ACK. Always takes everything, so
 * wslay_event_send() empties its queue in one call and the owner's buffers
 * are free when write() returns. */
static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user) {
  (void)flags;
  conn_t *s = user;
  if (s->t->state != UVMQTT__T_OPEN) {
    s->io_error = UVMQTT_ENOTCONN;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  if (s->out_len + len > s->out_cap) {
    size_t cap = s->out_cap ? s->out_cap : 256;
    while (cap < s->out_len + len)
      cap *= 2;
    write_rec_t *w = uvmqtt__realloc(s->out, sizeof *w + cap);
    if (w == NULL) {
      s->io_error = UVMQTT_ENOMEM;
      wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
      return -1;
    }
    s->out = w;
    s->out_cap = cap;
  }
  memcpy(s->out->data + s->out_len, data, len);
  s->out_len += len;
  return (ssize_t)len;
}

/* Hands the gathered frame bytes to the layer below, which keeps the record
 * until its write completes when it cannot send it at once. */
static int send_out(conn_t *s) {
  write_rec_t *w = s->out;
  size_t len = s->out_len;
  s->out = NULL;
  s->out_len = 0;
  s->out_cap = 0;
  if (w == NULL) return 0;
  if (len == 0) {
    uvmqtt__free(w);
    return 0;
  }
  w->arg = NULL;
  w->has_arg = 0;
  uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)len);
  int r = s->lower->write(s->t, &buf, 1, w);
  if (r == 0) {
    s->last_rec = w;
    return 0;
  }
  uvmqtt__free(w);
  return r < 0 ? r : 0;
}

/* RFC 6455 wants masking keys an intermediary cannot predict. */
static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user) {
  (void)user;
  if (RAND_bytes(buf, (int)len) != 1) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return 0;
}

static void frame_start_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *arg, void *user) {
  (void)ctx;
  conn_t *s = user;
  switch (arg->opcode) {
  case WSLAY_BINARY_FRAME:
    s->msg_binary = 1;
    s->data_frame = 1;
    break;
  case WSLAY_CONTINUATION_FRAME: s->data_frame = s->msg_binary; break;
  case WSLAY_TEXT_FRAME:
    /* MQTT over WebSocket is binary only [MQTT-6.0.0-1]. */
    s->bad_frame = 1;
    s->msg_binary = 0;
    s->data_frame = 0;
    break;
  default: s->data_frame = 0; /* a control frame: wslay handles it */
  }
}

static void frame_chunk_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_chunk_arg *arg, void *user) {
  (void)ctx;
  conn_t *s = user;
  if (!s->data_frame || stopped(s) || arg->data_length == 0) return;
  s->owner->on_read(s->t, (ssize_t)arg->data_length, arg->data);
}

static const struct wslay_event_callbacks wslay_cbs = {
    .recv_callback = recv_cb,
    .send_callback = send_cb,
    .genmask_callback = genmask_cb,
    .on_frame_recv_start_callback = frame_start_cb,
    .on_frame_recv_chunk_callback = frame_chunk_cb,
};

/* ---- Driving wslay --------------------------------------------------------------------------- */

static void end_stream(conn_t *s, int err) {
  s->done = 1;
  s->owner->on_read(s->t, err, NULL);
}

static void fail_upgrade(conn_t *s, int err) {
  s->done = 1;
  s->owner->on_connect(s->t, err);
}

/* Sends what wslay queued (messages, pongs, the answer to a close). 0 or an
 * error. */
static int flush_frames(conn_t *s) {
  if (!wslay_event_want_write(s->ws)) return 0;
  s->io_error = 0;
  int r = wslay_event_send(s->ws);
  int err = send_out(s);
  if (r == 0) return err;
  return s->io_error != 0 ? s->io_error : UVMQTT_EWSFRAME;
}

/* Feeds bytes from the layer below through wslay. */
static void feed(conn_t *s, const uint8_t *data, size_t len) {
  if (len == 0 || stopped(s)) return;
  s->in = data;
  s->in_len = len;
  int r = wslay_event_recv(s->ws);
  s->in = NULL;
  s->in_len = 0;
  if (stopped(s)) return;
  if (r != 0) {
    end_stream(s, r == WSLAY_ERR_NOMEM ? UVMQTT_ENOMEM : UVMQTT_EWSFRAME);
    return;
  }
  /* The answers wslay queued: a pong, or a close frame after the server's
   * close frame or a protocol error. */
  int err = flush_frames(s);
  if (s->bad_frame) {
    end_stream(s, UVMQTT_EWSFRAME);
  } else if (wslay_event_get_close_received(s->ws)) {
    /* The server ended the stream on purpose: a clean end, like a FIN. */
    end_stream(s, UV_EOF);
  } else if (!wslay_event_get_read_enabled(s->ws)) {
    /* wslay stops reading after a protocol error (and sent a close). */
    end_stream(s, UVMQTT_EWSFRAME);
  } else if (err) {
    end_stream(s, err);
  }
}

/* ---- The layer below's callbacks ------------------------------------------------------------ */

static void ws_on_connect(uvmqtt__transport_t *t, int status) {
  conn_t *s = conn_of(t);
  if (status < 0) {
    s->done = 1;
    s->owner->on_connect(t, status);
    return;
  }
  write_rec_t *w = s->request;
  s->request = NULL;
  uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)s->request_len);
  int r = s->lower->write(t, &buf, 1, w);
  if (r != 0) uvmqtt__free(w);
  if (r < 0) fail_upgrade(s, r);
}

/* Collects the response head; once it is complete and valid, tells the
 * owner and feeds the bytes after it (frames the server sent at once)
 * through wslay. */
static void upgrade_read(conn_t *s, const uint8_t *data, size_t len) {
  if (s->head == NULL) s->head = uvmqtt__malloc(UVMQTT__HTTP_HEAD_MAX);
  if (s->head == NULL) {
    fail_upgrade(s, UVMQTT_ENOMEM);
    return;
  }
  size_t room = UVMQTT__HTTP_HEAD_MAX - s->head_len;
  size_t take = len < room ? len : room;
  memcpy(s->head + s->head_len, data, take);
  s->head_len += take;
  size_t head_len = 0;
  int r = uvmqtt__ws_parse_response(s->head, s->head_len, s->accept, &head_len);
  if (r == 0) return;
  if (r < 0) {
    fail_upgrade(s, r);
    return;
  }
  s->established = 1;
  s->owner->on_connect(s->t, 0);
  feed(s, (const uint8_t *)s->head + head_len, s->head_len - head_len);
  feed(s, data + take, len - take);
  uvmqtt__free(s->head);
  s->head = NULL;
}

static void ws_on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  conn_t *s = conn_of(t);
  if (s->done) return;
  if (nread < 0) {
    if (s->established)
      end_stream(s, (int)nread);
    else
      fail_upgrade(s, nread == UV_EOF || nread == UV_ECONNRESET ? UVMQTT_EWSCLOSED : (int)nread);
    return;
  }
  if (s->established)
    feed(s, data, (size_t)nread);
  else
    upgrade_read(s, data, (size_t)nread);
}

static void ws_on_write(uvmqtt__transport_t *t, int status, void *arg) {
  conn_t *s = conn_of(t);
  write_rec_t *w = arg;
  void *owner_arg = w->arg;
  int has_arg = w->has_arg;
  uvmqtt__free(w);
  if (has_arg) {
    s->owner->on_write(t, status, owner_arg);
  } else if (status < 0 && !s->established && !stopped(s)) {
    /* The upgrade request did not go out. */
    fail_upgrade(s, status);
  }
}

static void conn_free(conn_t *s) {
  if (s->ws != NULL) wslay_event_context_free(s->ws);
  uvmqtt__free(s->request);
  uvmqtt__free(s->head);
  uvmqtt__free(s->out);
  uvmqtt__free(s);
}

static const uvmqtt__transport_vtbl_t ws_vtbl;

/* Leaves the transport below behind, closed or idle, as if WebSocket had
 * never been there. Over TLS, TLS has already put the TCP vtable back. */
static void detach(uvmqtt__transport_t *t, conn_t *s) {
  t->cb = s->owner;
  if (t->vt == &ws_vtbl) t->vt = s->lower;
  t->outer = NULL;
}

static void ws_on_close(uvmqtt__transport_t *t) {
  conn_t *s = conn_of(t);
  const uvmqtt__transport_cbs_t *owner = s->owner;
  detach(t, s);
  conn_free(s);
  owner->on_close(t);
}

/* ---- The upgrade request ----------------------------------------------------------------------
 */

static void base64(const uint8_t *in, size_t len, char *out) {
  EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

/* A fresh Sec-WebSocket-Key and the Sec-WebSocket-Accept it requires. */
static int make_key(conn_t *s, char key[25]) {
  uint8_t raw[16];
  if (RAND_bytes(raw, sizeof raw) != 1) return UVMQTT_ENOMEM;
  base64(raw, sizeof raw, key);
  char joined[24 + sizeof WS_GUID];
  memcpy(joined, key, 24);
  memcpy(joined + 24, WS_GUID, sizeof WS_GUID);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned md_len = 0;
  if (EVP_Digest(joined, 24 + sizeof WS_GUID - 1, md, &md_len, EVP_sha1(), NULL) != 1 ||
      md_len != 20)
    return UVMQTT_ENOMEM;
  base64(md, md_len, s->accept);
  return 0;
}

static int has_line_break(const char *v) {
  return strpbrk(v, "\r\n") != NULL;
}

/* Appends to the request being built; measures only when `out` is NULL. */
static void put(char *out, size_t *at, const char *v) {
  size_t n = strlen(v);
  if (out != NULL) memcpy(out + *at, v, n);
  *at += n;
}

static size_t build_request(const conn_t *s, char *out, const char *host, uint16_t port,
                            const char *key) {
  const uvmqtt__ws_options_t *o = &s->opts;
  size_t at = 0;
  char port_str[8];
  snprintf(port_str, sizeof port_str, ":%u", (unsigned)port);
  int v6 = strchr(host, ':') != NULL;
  put(out, &at, "GET ");
  put(out, &at, o->path);
  put(out, &at, " HTTP/1.1\r\nHost: ");
  put(out, &at, v6 ? "[" : "");
  put(out, &at, host);
  put(out, &at, v6 ? "]" : "");
  /* The port is left out only when it is the scheme's default. */
  if (port != (s->over_tls ? 443 : 80)) put(out, &at, port_str);
  put(out, &at, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
  put(out, &at, key);
  put(out, &at, "\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n");
  if (o->origin != NULL) {
    put(out, &at, "Origin: ");
    put(out, &at, o->origin);
    put(out, &at, "\r\n");
  }
  for (size_t i = 0; i < o->header_count; i++) {
    put(out, &at, o->headers[i]);
    put(out, &at, "\r\n");
  }
  put(out, &at, "\r\n");
  return at;
}

/* ---- The vtable -------------------------------------------------------------------------------
 */

static int ws_connect(uvmqtt__transport_t *t, const char *host, uint16_t port) {
  conn_t *s = conn_of(t);
  if (host == NULL || host[0] == '\0' || strlen(host) > 255 || has_line_break(host))
    return UVMQTT_EINVAL;
  if (s->request != NULL || s->established) return UVMQTT_EBUSY;
  char key[25];
  int err = make_key(s, key);
  if (err == 0) {
    size_t len = build_request(s, NULL, host, port, key);
    s->request = uvmqtt__malloc(sizeof *s->request + len);
    if (s->request == NULL) {
      err = UVMQTT_ENOMEM;
    } else {
      s->request->arg = NULL;
      s->request->has_arg = 0;
      s->request_len = build_request(s, (char *)s->request->data, host, port, key);
    }
  }
  if (err == 0) err = s->lower->connect(t, host, port);
  if (err) {
    /* Nothing started: the owner will not close, so release everything. */
    detach(t, s);
    conn_free(s);
  }
  return err;
}

static int ws_write(uvmqtt__transport_t *t, const uv_buf_t *bufs, unsigned nbufs, void *arg) {
  conn_t *s = conn_of(t);
  if (!s->established || stopped(s)) return UVMQTT_ENOTCONN;
  /* One binary frame per write: the owner's buffers become one message. */
  size_t total = 0;
  for (unsigned i = 0; i < nbufs; i++)
    total += bufs[i].len;
  uint8_t *joined = NULL;
  const uint8_t *msg = nbufs == 1 ? (const uint8_t *)bufs[0].base : NULL;
  if (nbufs != 1) {
    joined = uvmqtt__malloc(total ? total : 1);
    if (joined == NULL) return UVMQTT_ENOMEM;
    size_t at = 0;
    for (unsigned i = 0; i < nbufs; i++) {
      memcpy(joined + at, bufs[i].base, bufs[i].len);
      at += bufs[i].len;
    }
    msg = joined;
  }
  struct wslay_event_msg m = {WSLAY_BINARY_FRAME, msg, total};
  int r = wslay_event_queue_msg(s->ws, &m);
  uvmqtt__free(joined);
  if (r != 0) return r == WSLAY_ERR_NOMEM ? UVMQTT_ENOMEM : UVMQTT_ENOTCONN;
  s->last_rec = NULL;
  int err = flush_frames(s);
  if (err) return err;
  /* Records complete in order, so the owner's write is done when its last
   * record is: attach the owner's arg to that one. None queued: all sent. */
  if (s->last_rec == NULL) return 1;
  s->last_rec->arg = arg;
  s->last_rec->has_arg = 1;
  s->last_rec = NULL;
  return 0;
}

static size_t ws_write_queue_size(const uvmqtt__transport_t *t) {
  return t->pending_bytes;
}

/* A close frame (1000, normal closure), then the half-close below it. The
 * server answers with its own close frame and ends the connection; reads
 * go on until then. */
static int ws_shutdown(uvmqtt__transport_t *t) {
  conn_t *s = conn_of(t);
  if (!s->established || stopped(s)) return UVMQTT_ENOTCONN;
  if (!wslay_event_get_close_sent(s->ws)) {
    (void)wslay_event_queue_close(s->ws, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0);
    int err = flush_frames(s);
    if (err) return err;
  }
  return s->lower->shutdown(t);
}

static void ws_close(uvmqtt__transport_t *t) {
  conn_t *s = conn_of(t);
  if (t->state == UVMQTT__T_CLOSING || t->state == UVMQTT__T_CLOSED) return;
  s->done = 1;
  s->lower->close(t);
}

static const uvmqtt__transport_vtbl_t ws_vtbl = {
    .connect = ws_connect,
    .write = ws_write,
    .shutdown = ws_shutdown,
    .write_queue_size = ws_write_queue_size,
    .close = ws_close,
};

static int valid_options(const uvmqtt__ws_options_t *o) {
  /* The path goes into the request line: no spaces or controls. */
  for (const char *p = o->path; *p; p++)
    if ((unsigned char)*p <= 0x20 || *p == 0x7f) return 0;
  if (o->path[0] != '/') return 0;
  if (o->origin != NULL && has_line_break(o->origin)) return 0;
  if (o->header_count > 0 && o->headers == NULL) return 0;
  for (size_t i = 0; i < o->header_count; i++)
    if (o->headers[i] == NULL || has_line_break(o->headers[i]) ||
        strchr(o->headers[i], ':') == NULL)
      return 0;
  return 1;
}

int uvmqtt__transport_ws_init(uvmqtt__transport_t *t, uvmqtt__poller_t *poller,
                              const uvmqtt__transport_cbs_t *cb, uvmqtt__tls_ctx_t **tls,
                              const uvmqtt__ws_options_t *opts) {
  uvmqtt__ws_options_t o = {0};
  if (opts != NULL) o = *opts;
  if (o.path == NULL || o.path[0] == '\0') o.path = "/mqtt";
  if (!valid_options(&o)) return UVMQTT_EINVAL;
  conn_t *s = uvmqtt__calloc(1, sizeof *s);
  if (s == NULL) return UVMQTT_ENOMEM;
  /* wslay allocates with malloc: it has no allocator hook. */
  if (wslay_event_context_client_init(&s->ws, &wslay_cbs, s) != 0) {
    uvmqtt__free(s);
    return UVMQTT_ENOMEM;
  }
  /* Frames are passed on as they arrive, never gathered into messages: a
   * server may stream MQTT in one endless message. */
  wslay_event_config_set_no_buffering(s->ws, 1);
  wslay_event_config_set_max_recv_msg_length(s->ws, UINT64_MAX >> 1);
  s->cbs.on_connect = ws_on_connect;
  s->cbs.on_read = ws_on_read;
  s->cbs.on_write = ws_on_write;
  s->cbs.on_close = ws_on_close;
  s->owner = cb;
  s->opts = o;
  s->t = t;
  s->over_tls = tls != NULL;
  if (tls != NULL) {
    int err = uvmqtt__transport_tls_init(t, poller, &s->cbs, tls);
    if (err) {
      conn_free(s);
      return err;
    }
  } else {
    uvmqtt__transport_tcp_init(t, poller, &s->cbs);
  }
  s->lower = t->vt;
  t->vt = &ws_vtbl;
  t->outer = s;
  return 0;
}
