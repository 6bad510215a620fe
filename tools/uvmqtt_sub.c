/* uvmqtt-sub: subscribes to one or more topic filters and prints each
 * message that arrives, with mosquitto_sub's flags and output format. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli_app.h"
#include "cli_format.h"

typedef struct {
  cli_app_t app;
  cli_opts_t opts;
  uv_timer_t timeout;
  uvmqtt_topic_sub_t subs[CLI_MAX_TOPICS];
  uint64_t received;
  uint8_t subscribe_sent;
  uint8_t output_failed;
} sub_t;

static sub_t *sub_of(cli_app_t *app) {
  return app->data;
}

static int print_message(const cli_opts_t *o, const uvmqtt_message_t *m) {
  cli_format_message(stdout, o, m);
  /* Flushed before the acknowledgement goes out, so a message the broker
   * considers delivered is already in the output. */
  if (fflush(stdout) != 0 || ferror(stdout)) return errno ? -errno : UV_EIO;
  return 0;
}

static void on_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  cli_app_t *app = client->data;
  sub_t *s = sub_of(app);
  (void)arg;
  if (s->output_failed || (s->opts.count > 0 && s->received >= (uint64_t)s->opts.count)) return;
  cli_debug(&s->opts, "received PUBLISH (q%u, r%u, d%u, %u bytes) on %.*s", m->qos, m->retain,
            m->dup, (unsigned)m->payload.len, (int)m->topic.len, (const char *)m->topic.data);
  int err = print_message(&s->opts, m);
  if (err) {
    char buf[160];
    s->output_failed = 1;
    cli_app_fail(app, "cannot write the output: %s", cli_errstr(err, buf, sizeof buf));
    return;
  }
  s->received++;
  if (s->opts.count > 0 && s->received == (uint64_t)s->opts.count) cli_app_stop(app, CLI_EXIT_OK);
}

static void on_subscribed(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                          void *arg) {
  sub_t *s = arg;
  char buf[160];
  (void)client;
  /* A stop (signal, -C, -W) may end the connection before the SUBACK. */
  if (s->app.stopping || s->app.closing) return;
  if (status < 0) {
    cli_app_fail(&s->app, "subscribe failed: %s", cli_errstr(status, buf, sizeof buf));
    return;
  }
  size_t refused = 0;
  for (size_t i = 0; i < count && i < s->opts.topic_count; i++) {
    if (reasons[i] >= 0x80) {
      refused++;
      cli_error(&s->opts, "subscription to '%s' refused: %s (reason 0x%02x)", s->opts.topics[i],
                cli_reason_name(s->opts.version, reasons[i], 0), reasons[i]);
    } else {
      cli_debug(&s->opts, "subscribed to '%s' (granted QoS %u)", s->opts.topics[i], reasons[i]);
    }
  }
  if (count > 0 && refused == count) cli_app_fail(&s->app, "every subscription was refused");
}

static void on_connected(cli_app_t *app, const uvmqtt_connack_t *ack) {
  sub_t *s = sub_of(app);
  (void)ack;
  /* Once: the client re-subscribes by itself after a reconnect that found
   * no session, and a session the broker kept has the subscriptions. */
  if (s->subscribe_sent) return;
  s->subscribe_sent = 1;
  const uvmqtt_props_t *props =
      s->opts.version == UVMQTT_V5 && s->opts.subscribe_props.props.has != 0
          ? &s->opts.subscribe_props.props
          : NULL;
  int err =
      uvmqtt_subscribe(&app->client, s->subs, s->opts.topic_count, props, NULL, on_subscribed, s);
  if (err) {
    char buf[160];
    cli_app_fail(app, "subscribe failed: %s", cli_errstr(err, buf, sizeof buf));
  }
}

static void on_timeout(uv_timer_t *t) {
  sub_t *s = t->data;
  cli_error(&s->opts, "timed out after %ld s (%llu messages received)", s->opts.timeout_s,
            (unsigned long long)s->received);
  cli_app_stop(&s->app, CLI_EXIT_TIMEOUT);
}

static void on_closed(cli_app_t *app) {
  uv_close((uv_handle_t *)&sub_of(app)->timeout, NULL);
}

int main(int argc, char **argv) {
  static sub_t s;
  /* A broker that goes away must show up as a write error, not kill us. */
  signal(SIGPIPE, SIG_IGN);
  int rc = cli_parse(&s.opts, CLI_SUB, argc, argv);
  if (rc != 0) return rc > 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
  for (size_t i = 0; i < s.opts.topic_count; i++) {
    const char *f = s.opts.topics[i];
    if (uvmqtt_filter_check((const uint8_t *)f, strlen(f)) != 0) {
      cli_error(&s.opts, "invalid topic filter '%s'", f);
      return CLI_EXIT_ERROR;
    }
    s.subs[i].filter.data = (const uint8_t *)f;
    s.subs[i].filter.len = (uint32_t)strlen(f);
    s.subs[i].options = UVMQTT_SUB_QOS(s.opts.qos);
  }

  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) return CLI_EXIT_ERROR;
  cli_hooks_t hooks = {.connected = on_connected, .closed = on_closed};
  s.app.data = &s;
  if (cli_app_start(&s.app, &loop, &s.opts, &hooks, on_message) != 0) {
    uv_loop_close(&loop);
    cli_opts_free(&s.opts);
    return CLI_EXIT_ERROR;
  }
  uv_timer_init(&loop, &s.timeout);
  s.timeout.data = &s;
  /* From the start, not from the first connection: with reconnects the
   * first connection may never come, and -W is the bound scripts rely on. */
  if (s.opts.timeout_s > 0)
    uv_timer_start(&s.timeout, on_timeout, (uint64_t)s.opts.timeout_s * 1000, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  int exit_code = s.app.exit_code;
  cli_opts_free(&s.opts);
  if (uv_loop_close(&loop) != 0) {
    cli_error(&s.opts, "handles still open at exit");
    exit_code = CLI_EXIT_ERROR;
  }
  if (s.opts.json) {
    printf("{\"received\":%llu}\n", (unsigned long long)s.received);
    fflush(stdout);
  }
  return exit_code;
}
