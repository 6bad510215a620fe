/* uvmqtt-gateway: hundreds of simulated devices, each on its own MQTT
 * connection, one subscriber counting what arrives, and a broker, all run by
 * one process on one libuv loop, while the network and the broker fail on
 * schedule:
 *
 *   20% of the run   every device connection is cut;
 *   35%              the path turns into a black hole for a few seconds:
 *                    connections stay open but carry nothing, so only
 *                    keepalive notices;
 *   70%              the broker is stopped (SIGTERM) and started again on
 *                    the same port, its persistence keeping the sessions;
 *   100%             the devices stop producing; the run waits (bounded)
 *                    for messages still on their way, then reports.
 *
 * The exit status is 0 only when no alarm was lost.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <uvmqtt.h>

#include "broker_proc.h"
#include "fault_proxy.h"
#include "fleet.h"
#include "report.h"
#include "sink.h"

#define TICK_MS          100
#define PLAIN_EVERY_MS   5000
#define BOOT_MS          15000
#define DRAIN_MIN_MS     500
#define DRAIN_MAX_MS     15000
#define CLOSE_GRACE_MS   500
#define BROKER_DOWN_MS   1000
#define SPREAD_MS        1000
#define MIN_DURATION_S   15
#define MAX_DEVICES      5000
#define MIN_BLACKHOLE_MS 5000

enum { PH_BOOT = 0, PH_RUN, PH_DRAIN, PH_CLOSING, PH_DONE };

typedef struct {
  uint32_t counts[GW_KINDS];
  uint32_t duration_s;
  uint8_t sensor_qos;
  int json;
} args_t;

/* When each fault happens, in ms from the start of the traffic. */
typedef struct {
  uint64_t cut_at;
  uint64_t blackhole_at;
  uint64_t blackhole_end;
  uint64_t restart_at;
  uint64_t end_at;
} plan_t;

typedef struct {
  uv_loop_t loop;
  args_t args;
  plan_t plan;
  broker_proc_t broker;
  fault_proxy_t proxy;
  gw_fleet_t fleet;
  gw_sink_t sink;
  uv_timer_t tick;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  FILE *out;
  int tty;
  int line_shown;
  int phase;
  int step; /* faults done */
  int blackhole;
  int broker_down;
  int proxy_up, fleet_up, sink_up, broker_up;
  int closing_parts;
  int closing_started;
  int setup_failed;
  uint64_t boot_at, t0, drain_at, close_at, restart_due, last_plain;
  gw_report_t report;
  int report_ready;
} app_t;

static app_t app;

/* ---- Output ------------------------------------------------------------------------------ */

static double seconds_since_start(const app_t *a) {
  uint64_t now = uv_now((uv_loop_t *)&a->loop);
  return a->t0 && now > a->t0 ? (double)(now - a->t0) / 1000.0 : 0.0;
}

static void clear_line(app_t *a) {
  if (a->tty && a->line_shown) fputs("\r\033[K", a->out);
  a->line_shown = 0;
}

/* An event line: what the demo does now. */
static void say(app_t *a, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void say(app_t *a, const char *fmt, ...) {
  clear_line(a);
  fprintf(a->out, "[%5.1fs] ", seconds_since_start(a));
  va_list ap;
  va_start(ap, fmt);
  vfprintf(a->out, fmt, ap);
  va_end(ap);
  fputc('\n', a->out);
  fflush(a->out);
}

static const char *condition_of(app_t *a) {
  if (a->phase == PH_DRAIN) return "draining";
  if (a->blackhole) return "black hole";
  if (a->broker_down) return "broker down";
  uvmqtt_stats_t st;
  uint32_t online = 0;
  for (int k = 0; k < GW_KINDS; k++) {
    gw_fleet_stats(&a->fleet, k, &st);
    online += st.connected;
  }
  return online < a->fleet.total ? "recovering" : "steady";
}

static void progress(app_t *a) {
  char line[256];
  gw_report_progress(line, sizeof line, &a->fleet, seconds_since_start(a), condition_of(a));
  uint64_t now = uv_now(&a->loop);
  if (a->tty) {
    /* One line redrawn in place: cut to the terminal's width so it never
     * wraps. */
    struct winsize ws;
    if (ioctl(fileno(a->out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 &&
        ws.ws_col - 1 < (int)sizeof line)
      line[ws.ws_col - 1] = '\0';
    fprintf(a->out, "\r\033[K%s", line);
    fflush(a->out);
    a->line_shown = 1;
  } else if (now - a->last_plain >= PLAIN_EVERY_MS) {
    a->last_plain = now;
    fprintf(a->out, "%s\n", line);
    fflush(a->out);
  }
}

/* ---- Shutdown ------------------------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h) {
  (void)h;
}

static void on_broker_final(broker_proc_t *b, int status) {
  app_t *a = b->data;
  (void)status;
  broker_proc_cleanup(b);
  uv_close((uv_handle_t *)&a->tick, on_handle_closed);
  uv_close((uv_handle_t *)&a->sigint, on_handle_closed);
  uv_close((uv_handle_t *)&a->sigterm, on_handle_closed);
  a->phase = PH_DONE;
}

static void part_closed(app_t *a) {
  if (--a->closing_parts > 0) return;
  if (a->broker_up) say(a, "stopping the broker and removing %s", a->broker.dir);
  broker_proc_stop(&a->broker, on_broker_final);
}

static void on_fleet_closed(gw_fleet_t *f) {
  part_closed(f->data);
}

static void on_sink_closed(gw_sink_t *s) {
  part_closed(s->fleet->data);
}

/* Closes the clients and the proxy, then stops the broker. */
static void close_parts(app_t *a) {
  a->closing_started = 1;
  a->closing_parts = 1; /* held until every part is asked to close */
  if (a->fleet_up) {
    a->closing_parts++;
    gw_fleet_close(&a->fleet, on_fleet_closed);
  }
  if (a->sink_up) {
    a->closing_parts++;
    gw_sink_close(&a->sink, on_sink_closed);
  }
  if (a->proxy_up) fault_proxy_stop(&a->proxy);
  part_closed(a);
}

/* Ends the run: takes the figures while the clients still hold their
 * counters, says goodbye to the broker, and closes everything shortly
 * after. */
static void finish(app_t *a) {
  if (a->phase >= PH_CLOSING) return;
  clear_line(a);
  if (a->tty && a->phase >= PH_RUN) {
    a->tty = 0;
    a->last_plain = 0;
    progress(a);
  }
  if (a->fleet_up && a->sink_up && a->phase >= PH_RUN) {
    gw_report_collect(&a->report, &a->fleet);
    a->report.duration_s = a->args.duration_s;
    a->report.elapsed_s = seconds_since_start(a);
    a->report.stray = a->sink.stray;
    a->report.drained = gw_fleet_settled(&a->fleet);
    a->report_ready = 1;
  }
  a->phase = PH_CLOSING;
  if (a->fleet_up) {
    gw_fleet_stop_producing(&a->fleet);
    gw_fleet_disconnect(&a->fleet);
  }
  if (a->sink_up) gw_sink_disconnect(&a->sink);
  a->close_at = uv_now(&a->loop) + CLOSE_GRACE_MS;
}

static void fail(app_t *a, const char *what) {
  clear_line(a);
  fprintf(stderr, "uvmqtt-gateway: %s\n", what);
  a->setup_failed = 1;
  finish(a);
}

/* ---- The broker restart -------------------------------------------------------------------- */

static void on_broker_restarted(broker_proc_t *b, int status) {
  app_t *a = b->data;
  if (status != 0) {
    broker_proc_print_log(b);
    fail(a, "the broker did not come back");
    return;
  }
  a->broker_down = 0;
  a->report.broker_restarts++;
  say(a, "broker back on port %d: its persistence kept the sessions and queued messages", b->port);
}

static void on_broker_stopped(broker_proc_t *b, int status) {
  app_t *a = b->data;
  (void)status;
  say(a, "broker stopped; starting it again in %.1f s on the same port", BROKER_DOWN_MS / 1000.0);
  a->restart_due = uv_now(&a->loop) + BROKER_DOWN_MS;
}

/* ---- The schedule ------------------------------------------------------------------------------
 */

static void run_plan(app_t *a, uint64_t t) {
  const plan_t *p = &a->plan;
  if (a->step == 0 && t >= p->cut_at) {
    a->step++;
    size_t n = fault_proxy_cut_all(&a->proxy);
    a->report.cut_events++;
    a->report.connections_cut += n;
    say(a, "cutting all %zu device connections", n);
  }
  if (a->step == 1 && t >= p->blackhole_at) {
    a->step++;
    a->blackhole = 1;
    fault_proxy_set_mode(&a->proxy, FAULT_BLACKHOLE);
    say(a, "black hole for %.1f s: connections stay open but carry nothing; keepalive must notice",
        (double)(p->blackhole_end - p->blackhole_at) / 1000.0);
  }
  if (a->step == 2 && t >= p->blackhole_end) {
    a->step++;
    a->blackhole = 0;
    fault_proxy_set_mode(&a->proxy, FAULT_PASS);
    /* Connections that lived through the black hole lost bytes in it:
     * like a path that comes back with its state gone, drop them. */
    size_t n = fault_proxy_cut_all(&a->proxy);
    a->report.blackhole_s = (double)(p->blackhole_end - p->blackhole_at) / 1000.0;
    say(a, "network back (%zu stale connections reset)", n);
  }
  if (a->step == 3 && t >= p->restart_at) {
    a->step++;
    a->broker_down = 1;
    say(a, "stopping the broker (SIGTERM)");
    broker_proc_stop(&a->broker, on_broker_stopped);
  }
  if (a->phase == PH_RUN && t >= p->end_at) {
    a->phase = PH_DRAIN;
    a->drain_at = uv_now(&a->loop);
    gw_fleet_stop_producing(&a->fleet);
    say(a, "devices stop producing; waiting for the messages still on their way");
  }
}

static void on_tick(uv_timer_t *timer) {
  app_t *a = timer->data;
  uint64_t now = uv_now(&a->loop);
  switch (a->phase) {
  case PH_BOOT:
    if (now - a->boot_at > BOOT_MS) fail(a, "the subscriber did not come up");
    break;
  case PH_RUN:
  case PH_DRAIN:
    if (a->restart_due && now >= a->restart_due) {
      a->restart_due = 0;
      say(a, "starting the broker again");
      int err = broker_proc_start(&a->broker, on_broker_restarted);
      if (err) {
        fail(a, "cannot start the broker again");
        break;
      }
    }
    run_plan(a, now - a->t0);
    if (a->phase == PH_DRAIN && !a->broker_down && now - a->drain_at >= DRAIN_MIN_MS &&
        gw_fleet_settled(&a->fleet)) {
      say(a, "every message has an outcome");
      finish(a);
    } else if (a->phase == PH_DRAIN && now - a->drain_at >= DRAIN_MAX_MS) {
      say(a, "giving up waiting after %d s", DRAIN_MAX_MS / 1000);
      finish(a);
    } else {
      progress(a);
    }
    break;
  case PH_CLOSING:
    if (!a->closing_started && now >= a->close_at) close_parts(a);
    break;
  default: break;
  }
}

/* ---- Start-up -------------------------------------------------------------------------------- */

static void on_subscribed(gw_sink_t *s, int status) {
  app_t *a = s->fleet->data;
  if (a->phase != PH_BOOT) return;
  if (status != 0) {
    fail(a, "the subscriber's SUBSCRIBE failed");
    return;
  }
  a->t0 = uv_now(&a->loop);
  a->phase = PH_RUN;
  say(a, "subscriber ready; %u devices connecting through the proxy", a->fleet.total);
  gw_fleet_start(&a->fleet, SPREAD_MS);
}

static void on_broker_ready(broker_proc_t *b, int status) {
  app_t *a = b->data;
  if (status != 0) {
    broker_proc_print_log(b);
    fail(a, "mosquitto did not start");
    return;
  }
  a->broker_up = 1;
  int err = fault_proxy_start(&a->proxy, &a->loop, b->port);
  if (err) {
    fail(a, "cannot start the fault proxy");
    return;
  }
  a->proxy_up = 1;
  say(a, "fault proxy on 127.0.0.1:%d in front of the broker", a->proxy.port);
  char uri[64];
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%d", a->proxy.port);
  a->fleet.data = a;
  a->fleet_up = 1;
  err = gw_fleet_init(&a->fleet, &a->loop, uri, a->args.counts, a->args.sensor_qos);
  if (err) {
    fail(a, uvmqtt_strerror(err));
    return;
  }
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%d", b->port);
  err = gw_sink_start(&a->sink, &a->loop, uri, &a->fleet, on_subscribed);
  if (err) {
    fail(a, uvmqtt_strerror(err));
    return;
  }
  a->sink_up = 1;
}

static void on_signal(uv_signal_t *s, int signum) {
  app_t *a = s->data;
  if (a->phase >= PH_CLOSING) return;
  say(a, "signal %d: stopping early", signum);
  a->report.interrupted = 1;
  finish(a);
}

/* Three sockets per device live in this process (the device's and the
 * proxy's two), so the default limit of 1024 descriptors is too small for a
 * few hundred devices. */
static void raise_fd_limit(uint32_t devices) {
  struct rlimit rl;
  rlim_t need = (rlim_t)devices * 3 + 64;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < need)
    fprintf(stderr, "warning: only %llu file descriptors allowed; %llu wanted\n",
            (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

/* ---- Arguments ---------------------------------------------------------------------------------
 */

static void usage(FILE *f) {
  fprintf(f,
          "usage: uvmqtt-gateway [--sensors N] [--buttons N] [--alarms N] [--duration S]\n"
          "                      [--sensor-qos 0|1] [--json]\n"
          "Runs simulated devices against a Mosquitto it starts itself, injects faults\n"
          "and reports what was delivered. Defaults: 200 sensors, 60 buttons, 40 alarms,\n"
          "30 s (at least %d). Exit status 0 only when no alarm was lost.\n",
          MIN_DURATION_S);
}

static int parse_number(const char *s, unsigned long max, uint32_t *out) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || end == s || *end != '\0' || v > max) return -1;
  *out = (uint32_t)v;
  return 0;
}

static int parse_args(int argc, char **argv, args_t *a) {
  a->counts[GW_SENSOR] = 200;
  a->counts[GW_BUTTON] = 60;
  a->counts[GW_ALARM] = 40;
  a->duration_s = 30;
  a->sensor_qos = 1;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--json") == 0) {
      a->json = 1;
      continue;
    }
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      exit(0);
    }
    static const char *const names[] = {"--sensors", "--buttons", "--alarms", "--duration",
                                        "--sensor-qos"};
    int which = -1;
    for (int n = 0; n < 5; n++)
      if (strcmp(arg, names[n]) == 0) which = n;
    uint32_t v;
    if (which < 0 || i + 1 >= argc ||
        parse_number(argv[++i],
                     which == 4   ? 1
                     : which == 3 ? 3600
                                  : MAX_DEVICES,
                     &v) != 0) {
      fprintf(stderr, "uvmqtt-gateway: bad argument near '%s'\n", arg);
      usage(stderr);
      return -1;
    }
    if (which < 3)
      a->counts[which] = v;
    else if (which == 3)
      a->duration_s = v < MIN_DURATION_S ? MIN_DURATION_S : v;
    else
      a->sensor_qos = (uint8_t)v;
  }
  uint32_t total = a->counts[0] + a->counts[1] + a->counts[2];
  if (total == 0 || total > MAX_DEVICES) {
    fprintf(stderr, "uvmqtt-gateway: between 1 and %d devices\n", MAX_DEVICES);
    return -1;
  }
  return 0;
}

static void make_plan(plan_t *p, uint32_t duration_s) {
  uint64_t d = (uint64_t)duration_s * 1000;
  p->cut_at = d / 5;
  p->blackhole_at = d * 35 / 100;
  uint64_t len = d * 15 / 100 > MIN_BLACKHOLE_MS ? d * 15 / 100 : MIN_BLACKHOLE_MS;
  p->blackhole_end = p->blackhole_at + len;
  p->restart_at = d * 7 / 10 > p->blackhole_end + 1500 ? d * 7 / 10 : p->blackhole_end + 1500;
  p->end_at = d;
}

int main(int argc, char **argv) {
  app_t *a = &app;
  if (parse_args(argc, argv, &a->args) != 0) return 2;
  a->out = a->args.json ? stderr : stdout;
  a->tty = isatty(fileno(a->out));
  make_plan(&a->plan, a->args.duration_s);
  uint32_t total = a->args.counts[0] + a->args.counts[1] + a->args.counts[2];
  raise_fd_limit(total);
  /* A device whose connection broke mid-write must not kill the demo. */
  signal(SIGPIPE, SIG_IGN);

  uv_loop_init(&a->loop);
  a->broker.data = a;
  if (broker_proc_init(&a->broker, &a->loop) != 0) {
    uv_loop_close(&a->loop);
    return 2;
  }
  fprintf(a->out,
          "uvmqtt gateway demo: %u sensors, %u buttons, %u alarms, each on its own MQTT\n"
          "connection, one subscriber, one loop; %u s of traffic with a cut, a black hole and a\n"
          "broker restart.\n",
          a->args.counts[GW_SENSOR], a->args.counts[GW_BUTTON], a->args.counts[GW_ALARM],
          a->args.duration_s);
  uv_timer_init(&a->loop, &a->tick);
  a->tick.data = a;
  uv_signal_init(&a->loop, &a->sigint);
  uv_signal_init(&a->loop, &a->sigterm);
  a->sigint.data = a;
  a->sigterm.data = a;
  uv_signal_start(&a->sigint, on_signal, SIGINT);
  uv_signal_start(&a->sigterm, on_signal, SIGTERM);
  a->boot_at = uv_now(&a->loop);
  uv_timer_start(&a->tick, on_tick, TICK_MS, TICK_MS);
  say(a, "starting mosquitto on 127.0.0.1:%d (persistence on, files in %s)", a->broker.port,
      a->broker.dir);
  if (broker_proc_start(&a->broker, on_broker_ready) != 0) fail(a, "cannot run mosquitto");

  uv_run(&a->loop, UV_RUN_DEFAULT);
  int closed = uv_loop_close(&a->loop);
  if (a->fleet_up) gw_fleet_free(&a->fleet);

  if (!a->report_ready) return 2;
  if (a->args.json)
    gw_report_json(stdout, &a->report);
  else
    gw_report_table(stdout, &a->report);
  if (closed != 0) fprintf(stderr, "uvmqtt-gateway: the loop still had open handles\n");
  if (a->setup_failed) return 2;
  if (a->report.kind[GW_ALARM].tally.lost > 0) return 1;
  return a->report.interrupted ? 130 : 0;
}
