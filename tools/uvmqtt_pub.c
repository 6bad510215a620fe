/* uvmqtt-pub: publishes one message (-m, -n, -f, -s) or one per line of
 * stdin (-l), with mosquitto_pub's flags, and exits non-zero naming every
 * message it could not deliver. With --store the messages are kept in a
 * file store until acknowledged, across crashes; --drain delivers what an
 * earlier run left there. */
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

/* With --store a line counts as accepted once it is stored, not once it
 * is acknowledged: reading goes on while the broker is away, as long as
 * the store keeps up. STORED_* bound the lines waiting for the disk (a
 * batch per sync); QUEUE_* bound the messages held in memory until
 * acknowledged, below the client's own bound (65536), so that a long
 * input waits instead of failing with a full queue. */
#define STORED_HIGH 1000u
#define STORED_LOW  500u
#define QUEUE_HIGH  50000u
#define QUEUE_LOW   40000u

/* How often the end of a run checks whether the client still holds
 * messages restored from the store (the client's stats say it). */
#define IDLE_POLL_MS 20

/* Undelivered messages named one by one; past this they are only counted. */
#define REPORT_MAX 100u

typedef struct {
  cli_app_t app;
  cli_opts_t opts;
  cli_input_t input;
  uvmqtt_publish_opts_t popts;
  uint64_t sent; /* publishes attempted; also the number of the last one */
  uint64_t acked;
  uint64_t restored;       /* messages from an earlier run that finished */
  uint64_t restored_acked; /* of those, acknowledged */
  uint64_t failed;
  uint64_t expired;
  uint64_t rejected;
  uint64_t dropped;
  uint64_t closed; /* pending when the client closed */
  uint64_t other;
  uint32_t outstanding;
  uint32_t unstored; /* with --store: published, not yet durable */
  uint32_t full_at;  /* outstanding when the client's queue was full */
  uint32_t high;     /* the backpressure marks for this QoS */
  uint32_t low;
  uv_timer_t idle_poll;
  uv_timer_t timeout; /* -W */
  uint8_t started;
  uint8_t input_open;
  uint8_t input_done;
  uint8_t queue_full; /* a line waits for room in the client's queue */
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
  char why[256], err[160], what[64];
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
  /* Sequence number 0: a message an earlier run left in the store. */
  if (seq == 0)
    snprintf(what, sizeof what, "a message from an earlier run");
  else
    snprintf(what, sizeof what, "%s %llu", unit(p), (unsigned long long)seq);
  if (named <= REPORT_MAX) cli_error(&p->opts, "%s not delivered: %s", what, why);
  if (named == REPORT_MAX) cli_error(&p->opts, "further undelivered messages are only counted");
}

/* Messages the client still holds: queued, in flight, or being written
 * (queued_bytes covers every message until it is finished). */
static uint32_t client_pending(pub_t *p) {
  uvmqtt_stats_t st;
  uvmqtt_client_stats(&p->app.client, &st);
  if (st.queued_bytes == 0) return 0;
  return st.queued + st.inflight > 0 ? st.queued + st.inflight : 1;
}

static void on_idle_poll(uv_timer_t *t);

/* The run is over once the input is consumed and every message of ours
 * finished; with a store, also once the messages restored from an earlier
 * run are, which the client's stats show. */
static void maybe_finish(pub_t *p) {
  if (!p->started || !p->input_done || p->outstanding != 0) return;
  if (p->opts.store != NULL && client_pending(p) > 0) {
    if (!uv_is_active((uv_handle_t *)&p->idle_poll))
      uv_timer_start(&p->idle_poll, on_idle_poll, IDLE_POLL_MS, IDLE_POLL_MS);
    return;
  }
  uv_timer_stop(&p->idle_poll);
  if (p->opts.drain)
    cli_debug(&p->opts, "drained %llu message%s: the store holds nothing undelivered",
              (unsigned long long)p->restored_acked, p->restored_acked == 1 ? "" : "s");
  cli_app_stop(&p->app, CLI_EXIT_OK);
}

static void on_idle_poll(uv_timer_t *t) {
  pub_t *p = t->data;
  if (p->app.stopping || p->app.closing)
    uv_timer_stop(t);
  else
    maybe_finish(p);
}

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg);

/* Hands one message to the client; returns 0 or its error, without
 * counting a failure. */
static int try_publish(pub_t *p, const void *data, size_t len) {
  uint64_t seq = p->sent + 1;
  int err = uvmqtt_publish(&p->app.client, p->opts.topics[0], data, len, &p->popts, on_published,
                           (void *)(uintptr_t)seq);
  if (err) return err;
  p->sent = seq;
  p->outstanding++;
  if (p->opts.store != NULL) p->unstored++;
  return 0;
}

static void publish_one(pub_t *p, const void *data, size_t len) {
  int err = try_publish(p, data, len);
  if (err) record_failure(p, ++p->sent, err, 0);
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

/* Whether another line may be read now, and whether reading may resume
 * after a pause (lower marks, so reading does not flap). */
static int has_room(const pub_t *p) {
  if (p->opts.store == NULL) return !p->queue_full && p->outstanding < p->high;
  return !p->queue_full && p->unstored < STORED_HIGH && p->outstanding < QUEUE_HIGH;
}

static int may_resume(const pub_t *p) {
  if (p->opts.store == NULL) return !p->queue_full && p->outstanding <= p->low;
  return !p->queue_full && p->unstored <= STORED_LOW && p->outstanding <= QUEUE_LOW;
}

/* Publishes one line. A full client queue (its byte bound) is
 * backpressure, not a failure, while earlier messages can still drain:
 * the line goes back to the input until a quarter of them finished. */
static void publish_line(pub_t *p, const char *line, size_t len) {
  int err = try_publish(p, line, len);
  if (err == UVMQTT_EQUEUEFULL && p->outstanding > 0) {
    cli_input_unread(&p->input);
    p->queue_full = 1;
    p->full_at = p->outstanding;
    cli_debug(&p->opts, "queue full with %u messages: waiting", p->outstanding);
    return;
  }
  if (err) record_failure(p, ++p->sent, err, 0);
}

/* Publishes the lines at hand while there is room, then pauses or resumes
 * reading. */
static void pump_lines(pub_t *p) {
  const char *line;
  size_t len;
  while (p->input_open && has_room(p)) {
    int r = cli_input_line(&p->input, &line, &len);
    if (r == CLI_INPUT_LINE) {
      publish_line(p, line, len);
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
  if (!has_room(p))
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
  case CLI_MSG_NONE: /* --drain: nothing new, only what the store holds */
    p->input_done = 1;
    maybe_finish(p);
    break;
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
  if (p->queue_full && p->outstanding <= p->full_at - p->full_at / 4) p->queue_full = 0;
  if (app->closing) return;
  if (p->input_open && p->opts.mode == CLI_MSG_LINES && may_resume(p)) pump_lines(p);
  maybe_finish(p);
}

/* --store: the message is on disk (status 0), which is when a line counts
 * as accepted and the next ones may be read. A store that fails leaves the
 * message in memory only: the run fails rather than pretend otherwise. */
static void on_stored(cli_app_t *app, int status, void *arg) {
  pub_t *p = pub_of(app);
  uint64_t seq = (uint64_t)(uintptr_t)arg;
  p->unstored--;
  if (status < 0) {
    char buf[160];
    end_input(p);
    cli_app_fail(app, "%s %llu could not be stored: %s", unit(p), (unsigned long long)seq,
                 cli_errstr(status, buf, sizeof buf));
    return;
  }
  cli_debug(&p->opts, "%s %llu stored", unit(p), (unsigned long long)seq);
  if (app->stopping || app->closing) return;
  if (p->input_open && p->opts.mode == CLI_MSG_LINES && may_resume(p)) pump_lines(p);
}

/* --store: a message from an earlier run finished; a failure counts like
 * one of this run's. */
static void on_restored_done(cli_app_t *app, int status, uint8_t reason) {
  pub_t *p = pub_of(app);
  p->restored++;
  if (status == 0 && reason < 0x80) {
    p->restored_acked++;
    return;
  }
  record_failure(p, 0, status, reason);
}

/* -W: the whole run, connecting included, ends after that long; what is
 * not delivered stays in the store, if there is one. */
static void on_timeout(uv_timer_t *t) {
  pub_t *p = t->data;
  uint32_t pending = client_pending(p);
  char kept[300] = "";
  if (p->opts.store != NULL && pending > 0)
    snprintf(kept, sizeof kept, " (kept in %s for --drain)", p->opts.store_dir);
  cli_error(&p->opts, "timed out after %ld s with %u message%s not delivered%s", p->opts.timeout_s,
            pending, pending == 1 ? "" : "s", kept);
  end_input(p);
  cli_app_stop(&p->app, CLI_EXIT_TIMEOUT);
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
  uv_close((uv_handle_t *)&p->idle_poll, NULL);
  uv_close((uv_handle_t *)&p->timeout, NULL);
  /* After a fatal error line or a timeout the count would only repeat it. */
  if (p->failed == 0 || app->exit_code != CLI_EXIT_OK) return;
  char kinds[256];
  snprintf(kinds, sizeof kinds,
           "%llu expired, %llu rejected, %llu dropped, %llu pending at exit, %llu other",
           (unsigned long long)p->expired, (unsigned long long)p->rejected,
           (unsigned long long)p->dropped, (unsigned long long)p->closed,
           (unsigned long long)p->other);
  cli_error(&p->opts, "%llu of %llu messages not delivered (%s)", (unsigned long long)p->failed,
            (unsigned long long)(p->sent + p->restored), kinds);
  if (p->opts.store != NULL && p->closed > 0)
    cli_error(&p->opts, "the %llu pending at exit stay in %s: deliver them with --drain",
              (unsigned long long)p->closed, p->opts.store_dir);
  app->exit_code = CLI_EXIT_ERROR;
}

/* The tool's own timers; closed by on_closed(). */
static void start_timers(pub_t *p, uv_loop_t *loop) {
  uv_timer_init(loop, &p->idle_poll);
  uv_timer_init(loop, &p->timeout);
  p->idle_poll.data = p;
  p->timeout.data = p;
  if (p->opts.timeout_s > 0)
    uv_timer_start(&p->timeout, on_timeout, (uint64_t)p->opts.timeout_s * 1000, 0);
  if (p->opts.store != NULL) {
    uint32_t n = client_pending(p);
    cli_debug(&p->opts, "the store holds %u message%s from an earlier run", n, n == 1 ? "" : "s");
  }
}

int main(int argc, char **argv) {
  static pub_t p;
  /* A broker that goes away must show up as a write error, not kill us. */
  signal(SIGPIPE, SIG_IGN);
  int rc = cli_parse(&p.opts, CLI_PUB, argc, argv);
  if (rc != 0) return rc > 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
  const char *topic = p.opts.topics[0];
  if (topic != NULL && uvmqtt_topic_check((const uint8_t *)topic, strlen(topic)) != 0) {
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
  cli_hooks_t hooks = {on_connected, on_interrupted, on_closed, on_stored, on_restored_done};
  p.app.data = &p;
  if (cli_app_start(&p.app, &loop, &p.opts, &hooks, NULL) != 0) {
    uv_loop_close(&loop);
    cli_opts_free(&p.opts);
    return CLI_EXIT_ERROR;
  }
  start_timers(&p, &loop);
  if (p.opts.delivery.kind != UVMQTT_DELIVERY_DROP) start_publishing(&p);
  uv_run(&loop, UV_RUN_DEFAULT);
  int exit_code = p.app.exit_code;
  cli_opts_free(&p.opts);
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
