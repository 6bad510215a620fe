/* The client's life for the command-line tools: connect, report failures,
 * handle signals, stop gracefully. */
#include "cli_app.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* How long a graceful stop waits for DISCONNECT to be written. */
#define STOP_WAIT_MS 2000

/* The client no longer touches the store: flush it and let it go. What was
 * not delivered stays in it, unfinished, for a later run. */
static void close_store(cli_app_t *app) {
  if (app->store == NULL) return;
  app->store->close(app->store->state, NULL, NULL);
  app->store = NULL;
}

static void on_client_closed(uvmqtt_client_t *client) {
  cli_app_t *app = client->data;
  uv_close((uv_handle_t *)&app->sigint, NULL);
  uv_close((uv_handle_t *)&app->sigterm, NULL);
  uv_close((uv_handle_t *)&app->stop_timer, NULL);
  if (app->hooks.closed) app->hooks.closed(app);
  close_store(app);
}

static void close_now(cli_app_t *app) {
  if (app->closing) return;
  app->closing = 1;
  uv_timer_stop(&app->stop_timer);
  uvmqtt_close(&app->client, on_client_closed);
}

/* The stop: DISCONNECT if connected, then close the client once on_disconnect
 * says the connection is closed, or when STOP_WAIT_MS pass first. */
static void on_stop_timer(uv_timer_t *t) {
  cli_app_t *app = t->data;
  if (app->stop_phase == 0) {
    app->stop_phase = 1;
    uvmqtt_stats_t st;
    uvmqtt_client_stats(&app->client, &st);
    if (st.connected && uvmqtt_disconnect(&app->client, 0) == 0) {
      cli_debug(app->opts, "sending DISCONNECT");
      uv_timer_start(&app->stop_timer, on_stop_timer, STOP_WAIT_MS, 0);
      return;
    }
  }
  close_now(app);
}

void cli_app_stop(cli_app_t *app, int exit_code) {
  if (exit_code > app->exit_code) app->exit_code = exit_code;
  if (app->stopping || app->closing) return;
  app->stopping = 1;
  /* Deferred: a QoS 1/2 message being handled right now is acknowledged
   * after its callback returns, so the DISCONNECT must come later. */
  uv_timer_start(&app->stop_timer, on_stop_timer, 0, 0);
}

void cli_app_fail(cli_app_t *app, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", app->opts->prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  cli_app_stop(app, CLI_EXIT_ERROR);
}

static void on_signal(uv_signal_t *s, int signum) {
  cli_app_t *app = s->data;
  if (app->stopping) {
    /* A second signal: do not wait for the broker any more. */
    close_now(app);
    return;
  }
  cli_debug(app->opts, "signal %d: stopping", signum);
  if (app->hooks.interrupted)
    app->hooks.interrupted(app, signum);
  else
    cli_app_stop(app, CLI_EXIT_OK);
}

/* ---- Client callbacks ---------------------------------------------------------------- */

/* "connection refused by the broker: Not authorized (reason 0x87)", or the
 * error with the broker's reason code when it sent one. */
static void describe_failure(const cli_app_t *app, int status, uint8_t reason, char *buf,
                             size_t cap) {
  char err[160];
  int connack = status == UVMQTT_EREFUSED;
  if (connack || reason != 0) {
    snprintf(buf, cap, "%s: %s (reason 0x%02x)",
             connack ? "connection refused by the broker" : cli_errstr(status, err, sizeof err),
             cli_reason_name(app->opts->version, reason, connack), reason);
  } else {
    cli_errstr(status, buf, cap);
  }
}

static void on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  cli_app_t *app = client->data;
  if (status == 0) {
    if (app->ever_connected)
      cli_debug(app->opts, "reconnected to %s", ack->server);
    else
      cli_debug(app->opts, "connected to %s", ack->server);
    cli_debug(app->opts, "session present: %u", ack->session_present);
    app->ever_connected = 1;
    if (app->hooks.connected && !app->stopping) app->hooks.connected(app, ack);
    return;
  }
  char why[256];
  describe_failure(app, status, ack ? ack->reason : 0, why, sizeof why);
  if (app->stopping) return;
  /* A refusal (bad credentials, not authorized...) or a certificate the
   * client does not trust before the first connection is a configuration
   * error: retrying would not fix it. */
  if (!app->ever_connected && (cli_fatal_before_connect(status) || !cli_retry_initial(app->opts))) {
    cli_app_fail(app, "cannot connect to %s: %s", app->opts->uri, why);
    return;
  }
  cli_debug(app->opts, "connection attempt to %s failed: %s", app->opts->uri, why);
}

static void on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  cli_app_t *app = client->data;
  if (app->stopping) {
    /* The DISCONNECT went out and the socket is closed, or the connection
     * broke while stopping: either way there is nothing left to wait for. */
    if (app->stop_phase == 1) close_now(app);
    return;
  }
  char why[256];
  describe_failure(app, info->status, info->reason, why, sizeof why);
  if (info->will_retry) {
    cli_debug(app->opts, "disconnected (%s); retrying in %llu ms", why,
              (unsigned long long)info->retry_in_ms);
    return;
  }
  if (app->ever_connected)
    cli_app_fail(app, "connection lost: %s", why);
  else
    cli_app_fail(app, "cannot connect to %s: %s", app->opts->uri, why);
}

static void on_stored(uvmqtt_client_t *client, int status, void *arg) {
  cli_app_t *app = client->data;
  if (app->hooks.stored) app->hooks.stored(app, status, arg);
}

static void on_restored_done(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  (void)arg;
  cli_app_t *app = client->data;
  if (app->hooks.restored_done) app->hooks.restored_done(app, status, reason);
}

static int open_store(cli_app_t *app) {
  cli_opts_t *o = app->opts;
  if (o->store_dir == NULL) return 0;
  int err = uvmqtt_file_store_open(app->loop, o->store_dir, o->id, NULL, &app->store);
  if (err) {
    char buf[160];
    cli_error(o, "cannot open the store in %s: %s", o->store_dir, cli_errstr(err, buf, sizeof buf));
    return err;
  }
  o->store = app->store;
  cli_debug(o, "store %s opened for client id %s", o->store_dir, o->id);
  return 0;
}

/* The client could not be created: the store is the only thing open on
 * the loop, and it closes through the loop. */
static void close_store_now(cli_app_t *app) {
  close_store(app);
  uv_run(app->loop, UV_RUN_DEFAULT);
}

static int create_client(cli_app_t *app, uvmqtt_message_cb on_message) {
  cli_opts_t *o = app->opts;
  uvmqtt_options_t opts;
  cli_client_options(o, &opts);
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_connect;
  cbs.on_disconnect = on_disconnect;
  cbs.on_message = on_message;
  if (o->store) {
    cbs.on_stored = on_stored;
    cbs.on_restored_done = on_restored_done;
  }
  int err = uvmqtt_client_init(app->loop, &app->client, &opts, &cbs);
  if (err) {
    char buf[160];
    /* The store keeps encoded packets, which restore only in the protocol
     * version that wrote them. */
    const char *hint = o->store != NULL && err == UVMQTT_EMALFORMED
                           ? ": the store was written with another protocol version (-V)?"
                           : "";
    cli_error(o, "cannot create the client: %s%s", cli_errstr(err, buf, sizeof buf), hint);
  }
  return err;
}

int cli_app_start(cli_app_t *app, uv_loop_t *loop, cli_opts_t *o, const cli_hooks_t *hooks,
                  uvmqtt_message_cb on_message) {
  void *data = app->data;
  memset(app, 0, sizeof *app);
  app->data = data;
  app->loop = loop;
  app->opts = o;
  if (hooks) app->hooks = *hooks;

  int err = open_store(app);
  if (err) return err;
  err = create_client(app, on_message);
  if (err) {
    close_store_now(app);
    return err;
  }
  char buf[160];
  app->client.data = app;
  uv_signal_init(loop, &app->sigint);
  uv_signal_init(loop, &app->sigterm);
  uv_timer_init(loop, &app->stop_timer);
  app->sigint.data = app;
  app->sigterm.data = app;
  app->stop_timer.data = app;
  uv_signal_start(&app->sigint, on_signal, SIGINT);
  uv_signal_start(&app->sigterm, on_signal, SIGTERM);
  if (o->insecure)
    cli_error(o, "warning: --insecure: verification of the server certificate and host name is "
                 "off, anyone on the path can read and change the traffic");
  cli_debug(o, "connecting to %s as %s (MQTT %s)", o->uri, o->id ? o->id : "a generated client id",
            o->version == UVMQTT_V5 ? "5" : "3.1.1");
  err = uvmqtt_connect(&app->client);
  if (err) cli_app_fail(app, "cannot connect to %s: %s", o->uri, cli_errstr(err, buf, sizeof buf));
  return 0;
}
