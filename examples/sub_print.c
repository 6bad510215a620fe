/* sub_print: subscribes to a topic filter and prints "topic payload" for
 * each message, until Ctrl-C (or after COUNT messages).
 *
 *   sub_print [mqtt://HOST:PORT | HOST PORT] [FILTER [COUNT]]
 *
 * Defaults: mqtt://127.0.0.1:1883, filter "#", no count. Status lines go to
 * stderr, messages to stdout. The client reconnects by itself (backoff with
 * jitter) and re-subscribes when a reconnect finds no session.
 *
 * Stopping is the same path for Ctrl-C and for the count: DISCONNECT, close
 * the program's handles, let uv_run() return, then close the client. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uvmqtt.h>

typedef struct {
  uvmqtt_client_t client;
  uv_signal_t sigint;
  uv_timer_t stop_timer;
  const char *filter;
  unsigned long count; /* 0: no limit */
  unsigned long received;
  int subscribed;
  int stopping;
} app_t;

static void on_stop_timer(uv_timer_t *timer) {
  app_t *app = timer->data;
  uv_close((uv_handle_t *)&app->sigint, NULL);
  uv_close((uv_handle_t *)&app->stop_timer, NULL);
  /* Not connected (stopped for good): close at once instead. */
  if (uvmqtt_disconnect(&app->client, 0) != 0) uvmqtt_close(&app->client, NULL);
}

/* Deferred to the next loop iteration: a QoS 1 message being handled now is
 * acknowledged after its callback returns, and that PUBACK must go out
 * before the DISCONNECT. */
static void stop(app_t *app) {
  if (app->stopping) return;
  app->stopping = 1;
  uv_timer_start(&app->stop_timer, on_stop_timer, 0, 0);
}

static void on_sigint(uv_signal_t *handle, int signum) {
  app_t *app = handle->data;
  (void)signum;
  fprintf(stderr, "interrupted, disconnecting\n");
  stop(app);
}

static void on_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  app_t *app = client->data;
  (void)arg;
  if (app->stopping) return;
  /* The views are valid only during this call: print them now. */
  printf("%.*s %.*s\n", (int)m->topic.len, (const char *)m->topic.data, (int)m->payload.len,
         (const char *)m->payload.data);
  fflush(stdout);
  if (app->count && ++app->received >= app->count) stop(app);
}

static void on_subscribed(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                          void *arg) {
  app_t *app = client->data;
  (void)arg;
  if (status != 0 || count != 1 || reasons[0] >= 0x80) {
    fprintf(stderr, "sub_print: subscription refused\n");
    stop(app);
    return;
  }
  fprintf(stderr, "subscribed to %s (QoS %u)\n", app->filter, reasons[0]);
}

static void on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  app_t *app = client->data;
  if (status != 0) {
    fprintf(stderr, "connection attempt failed: %s\n", uvmqtt_strerror(status));
    return;
  }
  fprintf(stderr, "connected to %s\n", ack->server);
  if (app->subscribed) return; /* the client re-subscribes by itself */
  app->subscribed = 1;
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)app->filter;
  sub.filter.len = (uint32_t)strlen(app->filter);
  sub.options = UVMQTT_SUB_QOS(1);
  int err = uvmqtt_subscribe(client, &sub, 1, NULL, NULL, on_subscribed, NULL);
  if (err) {
    fprintf(stderr, "sub_print: %s\n", uvmqtt_strerror(err));
    stop(app);
  }
}

static void on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  (void)client;
  if (info->status == 0)
    fprintf(stderr, "disconnected\n"); /* after our own uvmqtt_disconnect() */
  else
    fprintf(stderr, "connection lost: %s; %s\n", uvmqtt_strerror(info->status),
            info->will_retry ? "retrying" : "giving up");
}

int main(int argc, char **argv) {
  static app_t app;
  char uri[300] = "mqtt://127.0.0.1:1883";
  int i = 1;
  if (argc > 1 && strstr(argv[1], "://") != NULL) {
    snprintf(uri, sizeof uri, "%s", argv[1]);
    i = 2;
  } else if (argc > 2) {
    snprintf(uri, sizeof uri, "mqtt://%s:%s", argv[1], argv[2]);
    i = 3;
  } else if (argc == 2) {
    fprintf(stderr, "usage: sub_print [mqtt://HOST:PORT | HOST PORT] [FILTER [COUNT]]\n");
    return 2;
  }
  app.filter = argc > i ? argv[i] : "#";
  app.count = argc > i + 1 ? strtoul(argv[i + 1], NULL, 10) : 0;

  uv_loop_t loop;
  uv_loop_init(&loop);
  uvmqtt_options_t opts;
  uvmqtt_options_init(&opts);
  opts.uri = uri;
  uvmqtt_callbacks_t cbs = {0};
  cbs.on_connect = on_connect;
  cbs.on_disconnect = on_disconnect;
  cbs.on_message = on_message;
  int err = uvmqtt_client_init(&loop, &app.client, &opts, &cbs);
  if (err) {
    fprintf(stderr, "sub_print: %s\n", uvmqtt_strerror(err));
    return 1;
  }
  app.client.data = &app;
  uv_signal_init(&loop, &app.sigint);
  app.sigint.data = &app;
  uv_signal_start(&app.sigint, on_sigint, SIGINT);
  uv_timer_init(&loop, &app.stop_timer);
  app.stop_timer.data = &app;
  err = uvmqtt_connect(&app.client);
  if (err) {
    fprintf(stderr, "sub_print: %s\n", uvmqtt_strerror(err));
    stop(&app);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uvmqtt_close(&app.client, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  return uv_loop_close(&loop) == 0 ? 0 : 1;
}
