/* The client's life around one loop, shared by uvmqtt-pub and uvmqtt-sub:
 * connect, report connection failures, SIGINT/SIGTERM, and a graceful stop
 * (DISCONNECT, then close) that ends with every handle closed. */
#ifndef UVMQTT_CLI_APP_H
#define UVMQTT_CLI_APP_H

#include "cli_common.h"

typedef struct cli_app_s cli_app_t;

typedef struct {
  /* A connection came up (every time, reconnects included). */
  void (*connected)(cli_app_t *app, const uvmqtt_connack_t *ack);
  /* SIGINT or SIGTERM. NULL: stop with status 0. */
  void (*interrupted)(cli_app_t *app, int signum);
  /* The client is closed and every pending callback has run: close the
   * tool's own handles and settle app->exit_code. */
  void (*closed)(cli_app_t *app);
  /* With --store: the message published with `arg` is durable (status 0),
   * or the store failed (status < 0). */
  void (*stored)(cli_app_t *app, int status, void *arg);
  /* With --store: a message an earlier run left in the store finished. */
  void (*restored_done)(cli_app_t *app, int status, uint8_t reason);
} cli_hooks_t;

struct cli_app_s {
  void *data; /* the tool's */
  uv_loop_t *loop;
  cli_opts_t *opts;
  cli_hooks_t hooks;
  uvmqtt_client_t client;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  uv_timer_t stop_timer;
  uvmqtt_store_t *store; /* with --store: the file store, closed after the client */
  int exit_code;
  uint8_t ever_connected;
  uint8_t stopping; /* a stop was asked for */
  uint8_t stop_phase;
  uint8_t closing; /* uvmqtt_close() was called */
};

/* Opens the store (with --store), creates the client (from `o`), the
 * signal handlers and the stop timer, and starts connecting. `on_message`
 * may be NULL. When the store or the client cannot be created, prints a
 * line and returns the error: nothing is left open on the loop then.
 * Otherwise returns 0, and the run ends with hooks.closed (a failure to
 * start connecting is reported and stops the run); the store is closed
 * after the client, before the loop ends. */
int cli_app_start(cli_app_t *app, uv_loop_t *loop, cli_opts_t *o, const cli_hooks_t *hooks,
                  uvmqtt_message_cb on_message);

/* Ends the run with `exit_code` (the highest asked for wins). Deferred to the
 * next loop iteration, so legal from any callback: then DISCONNECT if
 * connected (bounded wait for it to be written) and close. */
void cli_app_stop(cli_app_t *app, int exit_code);

/* cli_error() then cli_app_stop(app, CLI_EXIT_ERROR). */
void cli_app_fail(cli_app_t *app, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
