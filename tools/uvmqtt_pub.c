/* uvmqtt-pub: publishes one message (-m, -n, -f, -s) or one per line of
 * stdin (-l), with mosquitto_pub's flags, and exits non-zero naming every
 * message it could not deliver. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cli_app.h"
#include "cli_input.h"

/* Backpressure for -l: stop reading stdin while this many publishes are
 * unfinished (queued, in flight or being written), go on once they drain
 * to the low mark. This keeps memory flat for any input length.
 * QoS 0 messages finish when written, so a large batch keeps the socket
 * busy. QoS 1/2 messages finish when acknowledged: at most 20 are left
 * unacknowledged, as mosquitto_pub does. Mosquitto 2.0.11 (and earlier
 * 2.0 releases) stops delivering to subscribers when a 3.1.1 publisher
 * has many more QoS 2 messages in flight than its max_inflight_messages
 * (20 by default), and MQTT 3.1.1 has no Receive Maximum to tell us. */
#define QOS0_HIGH  1000u
#define QOS0_LOW   250u
#define ACKED_HIGH 20u
#define ACKED_LOW  19u

/* Undelivered messages named one by one; past this they are only counted. */
#define REPORT_MAX 100u

typedef struct {
  cli_app_t app;
  cli_opts_t opts;
  cli_input_t input;
  uvmqtt_publish_opts_t popts;
  uint64_t sent; /* publishes attempted; also the number of the last one */
  uint64_t acked;
  uint64_t failed;
  uint64_t expired;
  uint64_t rejected;
  uint64_t dropped;
  uint64_t closed; /* pending when the client closed */
  uint64_t other;
  uint32_t outstanding;
  uint32_t high; /* the backpressure marks for this QoS */
  uint32_t low;
  uint8_t started;
  uint8_t input_open;
  uint8_t input_done;
} pub_t;

static pub_t *pub_of(cli_app_t *app) {
  return app->data;
}

static const char *unit(const pub_t *p) {
  return p->opts.mode == CLI_MSG_LINES ? "line" : "message";
}

/* Counts a failed message by kind and names it on stderr. A message still
 * pending when the client closes is only counted: the reason for closing
 * has its own line. */
static void record_failure(pub_t *p, uint64_t seq, int status, uint8_t reason) {
  char why[256], err[160];
  p->failed++;
  if (status == 0) {
    p->rejected++;
    snprintf(why, sizeof why, "rejected by the broker: %s (reason 0x%02x)",
             cli_reason_name(p->opts.version, reason, 0), reason);
  } else {
    switch (status) {
    case UVMQTT_EEXPIRED: p->expired++; break;
    case UVMQTT_EDROPPED:
    case UVMQTT_ENOTCONN: p->dropped++; break;
    case UVMQTT_EQOSNOTSUP:
    case UVMQTT_ERETAINNOTSUP:
    case UVMQTT_EPKTTOOBIG: p->rejected++; break;
    case UVMQTT_ECLOSED: p->closed++; return;
    default: p->other++; break;
    }
    snprintf(why, sizeof why, "%s", cli_errstr(status, err, sizeof err));
    if (reason != 0)
      snprintf(why + strlen(why), sizeof why - strlen(why), ", reason 0x%02x (%s)", reason,
               cli_reason_name(p->opts.version, reason, 0));
  }
  uint64_t named = p->failed - p->closed;
  if (named <= REPORT_MAX)
    cli_error(&p->opts, "%s %llu not delivered: %s", unit(p), (unsigned long long)seq, why);
  if (named == REPORT_MAX) cli_error(&p->opts, "further undelivered messages are only counted");
}

static void maybe_finish(pub_t *p) {
  if (p->started && p->input_done && p->outstanding == 0) cli_app_stop(&p->app, CLI_EXIT_OK);
}

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg);

static void publish_one(pub_t *p, const void *data, size_t len) {
  uint64_t seq = ++p->sent;
  int err = uvmqtt_publish(&p->app.client, p->opts.topics[0], data, len, &p->popts, on_published,
                           (void *)(uintptr_t)seq);
  if (err) {
    record_failure(p, seq, err, 0);
    return;
  }
  p->outstanding++;
}

/* ---- Input ------------------------------------------------------------------------- */

static void end_input(pub_t *p) {
  p->input_done = 1;
  if (p->input_open) cli_input_close(&p->input);
  p->input_open = 0;
}

static void input_failed(pub_t *p, int err) {
  char buf[160];
  end_input(p);
  cli_app_fail(&p->app, "cannot read %s: %s", p->opts.mode == CLI_MSG_FILE ? p->opts.file : "stdin",
               err == UV_E2BIG ? "message too large" : cli_errstr(err, buf, sizeof buf));
}

/* Publishes the lines at hand while the queue has room, then pauses or
 * resumes reading. */
static void pump_lines(pub_t *p) {
  const char *line;
  size_t len;
  while (p->input_open && p->outstanding < p->high) {
    int r = cli_input_line(&p->input, &line, &len);
    if (r == CLI_INPUT_LINE) {
      publish_one(p, line, len);
    } else if (r == CLI_INPUT_END) {
      end_input(p);
      maybe_finish(p);
      return;
    } else if (r < 0) {
      input_failed(p, r);
      return;
    } else {
      break;
    }
  }
  if (!p->input_open) return;
  if (p->outstanding >= p->high)
    cli_input_pause(&p->input);
  else if (cli_input_resume(&p->input) != 0)
    input_failed(p, p->input.error);
}

static void on_lines(cli_input_t *in) {
  pump_lines(in->data);
}

static void on_whole(cli_input_t *in) {
  pub_t *p = in->data;
  if (in->error) {
    input_failed(p, in->error);
    return;
  }
  if (!in->eof) return;
  size_t len;
  const char *bytes = cli_input_bytes(in, &len);
  if (len > in->max_size) {
    input_failed(p, UV_E2BIG);
    return;
  }
  publish_one(p, bytes, len);
  end_input(p);
  maybe_finish(p);
}

static void open_input(pub_t *p, uv_file fd, int own_fd, cli_input_cb cb) {
  char buf[160];
  p->input.data = p;
  int err = cli_input_open(p->app.loop, &p->input, fd, own_fd, UVMQTT_MAX_REMAINING_LENGTH, cb);
  if (err) {
    if (own_fd) {
      uv_fs_t req;
      uv_fs_close(p->app.loop, &req, fd, NULL);
      uv_fs_req_cleanup(&req);
    }
    p->input_done = 1;
    cli_app_fail(&p->app, "cannot read %s: %s", own_fd ? p->opts.file : "stdin",
                 cli_errstr(err, buf, sizeof buf));
    return;
  }
  p->input_open = 1;
  if (cli_input_resume(&p->input) != 0) input_failed(p, p->input.error);
}

static void start_publishing(pub_t *p) {
  if (p->started) return;
  p->started = 1;
  switch (p->opts.mode) {
  case CLI_MSG_ARG:
  case CLI_MSG_NULL: {
    const char *m = p->opts.mode == CLI_MSG_ARG ? p->opts.message : "";
    publish_one(p, m, strlen(m));
    p->input_done = 1;
    maybe_finish(p);
    break;
  }
  case CLI_MSG_FILE: {
    uv_fs_t req;
    int fd = uv_fs_open(p->app.loop, &req, p->opts.file, O_RDONLY, 0, NULL);
    uv_fs_req_cleanup(&req);
    if (fd < 0) {
      char buf[160];
      p->input_done = 1;
      cli_app_fail(&p->app, "cannot open %s: %s", p->opts.file, cli_errstr(fd, buf, sizeof buf));
      return;
    }
    open_input(p, fd, 1, on_whole);
    break;
  }
  case CLI_MSG_STDIN: open_input(p, 0, 0, on_whole); break;
  case CLI_MSG_LINES: open_input(p, 0, 0, on_lines); break;
  default: break;
  }
}

/* ---- Client events ------------------------------------------------------------------- */

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  cli_app_t *app = client->data;
  pub_t *p = pub_of(app);
  uint64_t seq = (uint64_t)(uintptr_t)arg;
  p->outstanding--;
  if (status == 0 && reason < 0x80) {
    p->acked++;
    cli_debug(&p->opts, "%s %llu delivered", unit(p), (unsigned long long)seq);
  } else {
    record_failure(p, seq, status, reason);
  }
  if (app->closing) return;
  if (p->input_open && p->opts.mode == CLI_MSG_LINES && p->outstanding <= p->low) pump_lines(p);
  maybe_finish(p);
}

static void on_connected(cli_app_t *app, const uvmqtt_connack_t *ack) {
  (void)ack;
  /* With the drop policy nothing waits offline: publish once connected. */
  start_publishing(pub_of(app));
}

static void on_interrupted(cli_app_t *app, int signum) {
  (void)signum;
  end_input(pub_of(app));
  cli_app_stop(app, CLI_EXIT_OK);
}

static void on_closed(cli_app_t *app) {
  pub_t *p = pub_of(app);
  end_input(p);
  if (p->failed == 0) return;
  /* After a fatal error line the count would only repeat it. */
  if (app->exit_code == CLI_EXIT_OK) {
    char kinds[256];
    snprintf(kinds, sizeof kinds,
             "%llu expired, %llu rejected, %llu dropped, %llu pending at exit, %llu other",
             (unsigned long long)p->expired, (unsigned long long)p->rejected,
             (unsigned long long)p->dropped, (unsigned long long)p->closed,
             (unsigned long long)p->other);
    cli_error(&p->opts, "%llu of %llu messages not delivered (%s)", (unsigned long long)p->failed,
              (unsigned long long)p->sent, kinds);
  }
  app->exit_code = CLI_EXIT_ERROR;
}

int main(int argc, char **argv) {
  static pub_t p;
  /* A broker that goes away must show up as a write error, not kill us. */
  signal(SIGPIPE, SIG_IGN);
  int rc = cli_parse(&p.opts, CLI_PUB, argc, argv);
  if (rc != 0) return rc > 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
  const char *topic = p.opts.topics[0];
  if (uvmqtt_topic_check((const uint8_t *)topic, strlen(topic)) != 0) {
    cli_error(&p.opts, "invalid topic '%s'", topic);
    return CLI_EXIT_ERROR;
  }
  p.popts.qos = p.opts.qos;
  p.high = p.opts.qos ? ACKED_HIGH : QOS0_HIGH;
  p.low = p.opts.qos ? ACKED_LOW : QOS0_LOW;
  p.popts.retain = p.opts.retain;
  if (p.opts.version == UVMQTT_V5 && p.opts.publish_props.props.has != 0)
    p.popts.props = &p.opts.publish_props.props;

  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) return CLI_EXIT_ERROR;
  cli_hooks_t hooks = {on_connected, on_interrupted, on_closed};
  p.app.data = &p;
  if (cli_app_start(&p.app, &loop, &p.opts, &hooks, NULL) != 0) {
    uv_loop_close(&loop);
    return CLI_EXIT_ERROR;
  }
  if (p.opts.delivery.kind != UVMQTT_DELIVERY_DROP) start_publishing(&p);
  uv_run(&loop, UV_RUN_DEFAULT);
  int exit_code = p.app.exit_code;
  if (uv_loop_close(&loop) != 0) {
    cli_error(&p.opts, "handles still open at exit");
    exit_code = CLI_EXIT_ERROR;
  }
  if (p.opts.json) {
    printf("{\"sent\":%llu,\"acked\":%llu,\"failed\":%llu}\n", (unsigned long long)p.sent,
           (unsigned long long)p.acked, (unsigned long long)p.failed);
    fflush(stdout);
  }
  return exit_code;
}
