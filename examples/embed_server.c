/* embed_server: an existing libuv program, a TCP echo server, with an MQTT
 * client added to the same loop: every accepted connection is announced
 * with a QoS 1 message. Nothing of the server changes but the one publish
 * call; no thread, no second loop.
 *
 *   embed_server ECHO_PORT [mqtt://HOST:PORT] [TOPIC]
 *
 * Defaults: mqtt://127.0.0.1:1883, topic "uvmqtt/connections". Ctrl-C
 * stops: the server and its connections close, the client disconnects. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uvmqtt.h>

/* ---- The echo server, as it was ------------------------------------------------------------ */

typedef struct conn_s {
  uv_tcp_t tcp;
  struct conn_s *prev, *next;
} conn_t;

typedef struct {
  uv_write_t req;
  char bytes[];
} echo_t;

static uv_loop_t loop;
static uv_tcp_t server;
static uv_signal_t sigint;
static conn_t *conns;
static unsigned long accepted;

/* ---- The addition: one client on the same loop -------------------------------------------- */

static uvmqtt_client_t mqtt;
static const char *topic = "uvmqtt/connections";

static void on_conn_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  if (c->prev)
    c->prev->next = c->next;
  else
    conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

static void on_echoed(uv_write_t *req, int status) {
  (void)status;
  free(req->data);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  if (nread > 0) {
    echo_t *e = malloc(sizeof *e + (size_t)nread);
    if (e != NULL) {
      memcpy(e->bytes, buf->base, (size_t)nread);
      e->req.data = e;
      uv_buf_t out = uv_buf_init(e->bytes, (unsigned)nread);
      if (uv_write(&e->req, stream, &out, 1, on_echoed) != 0) free(e);
    }
  } else if (nread < 0 && !uv_is_closing((uv_handle_t *)stream)) {
    uv_close((uv_handle_t *)stream, on_conn_closed);
  }
  free(buf->base);
}

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  (void)client;
  (void)arg;
  if (status != 0 || reason >= 0x80)
    fprintf(stderr, "announcement not delivered: %s\n", uvmqtt_strerror(status));
}

static void on_connection(uv_stream_t *srv, int status) {
  if (status < 0) return;
  conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  uv_tcp_init(&loop, &c->tcp);
  c->tcp.data = c;
  c->next = conns;
  if (conns) conns->prev = c;
  conns = c;
  if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0 ||
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    return;
  }
  /* The one line the server gains: the message is copied, queued while the
   * broker is unreachable, and sent from this same loop. */
  char text[128];
  int n = snprintf(text, sizeof text, "connection %lu accepted", ++accepted);
  uvmqtt_publish_opts_t po = {0};
  po.qos = 1;
  uvmqtt_publish(&mqtt, topic, text, (size_t)n, &po, on_published, NULL);
}

static void on_mqtt_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  (void)client;
  if (status == 0)
    fprintf(stderr, "mqtt connected to %s\n", ack->server);
  else
    fprintf(stderr, "mqtt attempt failed: %s\n", uvmqtt_strerror(status));
}

static void on_sigint(uv_signal_t *handle, int signum) {
  (void)signum;
  fprintf(stderr, "stopping\n");
  uv_close((uv_handle_t *)handle, NULL);
  uv_close((uv_handle_t *)&server, NULL);
  for (conn_t *c = conns; c; c = c->next)
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  if (uvmqtt_disconnect(&mqtt, 0) != 0) uvmqtt_close(&mqtt, NULL);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: embed_server ECHO_PORT [mqtt://HOST:PORT] [TOPIC]\n");
    return 2;
  }
  int port = atoi(argv[1]);
  const char *uri = argc > 2 ? argv[2] : "mqtt://127.0.0.1:1883";
  if (argc > 3) topic = argv[3];
  uv_loop_init(&loop);

  /* The existing server. */
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", port, &addr);
  uv_tcp_init(&loop, &server);
  int err = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
  if (err == 0) err = uv_listen((uv_stream_t *)&server, 128, on_connection);
  if (err) {
    fprintf(stderr, "embed_server: cannot listen on port %d: %s\n", port, uv_strerror(err));
    uv_close((uv_handle_t *)&server, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return 1;
  }

  /* The MQTT client joins the same loop. */
  uvmqtt_options_t opts;
  uvmqtt_options_init(&opts);
  opts.uri = uri;
  uvmqtt_callbacks_t cbs = {0};
  cbs.on_connect = on_mqtt_connect;
  err = uvmqtt_client_init(&loop, &mqtt, &opts, &cbs);
  if (err == 0) err = uvmqtt_connect(&mqtt);
  if (err) {
    fprintf(stderr, "embed_server: %s\n", uvmqtt_strerror(err));
    return 1;
  }

  uv_signal_init(&loop, &sigint);
  uv_signal_start(&sigint, on_sigint, SIGINT);
  fprintf(stderr, "echo server listening on 127.0.0.1:%d\n", port);
  uv_run(&loop, UV_RUN_DEFAULT);
  uvmqtt_close(&mqtt, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  return uv_loop_close(&loop) == 0 ? 0 : 1;
}
