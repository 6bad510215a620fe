/* pub_once: connects, publishes one message at QoS 1, waits for the
 * broker's PUBACK, disconnects cleanly and exits 0.
 *
 *   pub_once [mqtt://HOST:PORT | HOST PORT] [TOPIC [MESSAGE]]
 *
 * Defaults: mqtt://127.0.0.1:1883, topic "uvmqtt/example", message "hello".
 * Exits 1 when the broker cannot be reached or refuses the message.
 *
 * The shape of a one-shot program on libuv: uv_run() returns once nothing
 * is left to do, which after uvmqtt_disconnect() means the DISCONNECT went
 * out and the connection is closed; then the client is closed and the loop
 * runs once more to finish. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uvmqtt.h>

typedef struct {
  int exit_code;
} run_t;

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  run_t *run = client->data;
  (void)arg;
  if (status == 0 && reason < 0x80) {
    printf("published, acknowledged by the broker\n");
    run->exit_code = 0;
    /* Sends DISCONNECT after what is queued, then closes the connection. */
    uvmqtt_disconnect(client, 0);
  } else {
    fprintf(stderr, "pub_once: publish failed: %s (reason 0x%02x)\n", uvmqtt_strerror(status),
            reason);
    uvmqtt_close(client, NULL);
  }
}

static void on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  if (status != 0) {
    fprintf(stderr, "pub_once: cannot connect to %s: %s (reason 0x%02x)\n", ack->server,
            uvmqtt_strerror(status), ack->reason);
    uvmqtt_close(client, NULL);
  }
}

int main(int argc, char **argv) {
  char uri[300] = "mqtt://127.0.0.1:1883";
  int i = 1;
  if (argc > 1 && strstr(argv[1], "://") != NULL) {
    snprintf(uri, sizeof uri, "%s", argv[1]);
    i = 2;
  } else if (argc > 2) {
    snprintf(uri, sizeof uri, "mqtt://%s:%s", argv[1], argv[2]);
    i = 3;
  } else if (argc == 2) {
    fprintf(stderr, "usage: pub_once [mqtt://HOST:PORT | HOST PORT] [TOPIC [MESSAGE]]\n");
    return 2;
  }
  const char *topic = argc > i ? argv[i] : "uvmqtt/example";
  const char *message = argc > i + 1 ? argv[i + 1] : "hello";

  uv_loop_t loop;
  uv_loop_init(&loop);
  run_t run = {1};
  uvmqtt_options_t opts;
  uvmqtt_options_init(&opts);
  opts.uri = uri;
  opts.no_reconnect = 1; /* one attempt: a failure ends the program */
  opts.connect_timeout_ms = 5000;
  uvmqtt_callbacks_t cbs = {0};
  cbs.on_connect = on_connect;
  uvmqtt_client_t client;
  int err = uvmqtt_client_init(&loop, &client, &opts, &cbs);
  if (err) {
    fprintf(stderr, "pub_once: %s\n", uvmqtt_strerror(err));
    return 1;
  }
  client.data = &run;
  /* Queued until the connection is up, then sent at QoS 1. */
  uvmqtt_publish_opts_t po = {0};
  po.qos = 1;
  err = uvmqtt_connect(&client);
  if (err == 0)
    err = uvmqtt_publish(&client, topic, message, strlen(message), &po, on_published, NULL);
  if (err) {
    fprintf(stderr, "pub_once: %s\n", uvmqtt_strerror(err));
    uvmqtt_close(&client, NULL);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  /* Closing an already closed client is ignored, so this is always safe. */
  uvmqtt_close(&client, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) return 1;
  return run.exit_code;
}
