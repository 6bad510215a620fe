/* The benchmark harness shared by every driver (uvmqtt, libmosquitto, Paho):
 * options, the workload engine, payload stamping and the report.
 *
 * A driver fills a bench_driver_t with the few calls that differ between
 * client libraries (connect, subscribe, publish, close) and reports what
 * happens through the bench_on_*() functions. Everything that decides what to
 * send and when, and everything that is measured, lives here, so the three
 * drivers are measured the same way. */
#ifndef BENCH_H
#define BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

#include "hist.h"

/* ---- Options ---------------------------------------------------------------------- */

#define BENCH_MAX_URIS 16

typedef enum { BENCH_CONN, BENCH_PUB, BENCH_SUB, BENCH_PUBSUB, BENCH_RAW } bench_cmd_t;

typedef struct {
  bench_cmd_t cmd;
  const char *cmd_name;
  const char *host;
  int port;
  uint32_t clients;       /* -c */
  uint32_t start_index;   /* -n: index of the first client, for %i and payloads */
  double conn_rate;       /* -R: connections started per second; 0: all at once */
  double interval_ms;     /* -I: between publishes of one client; 0: flow control only */
  uint64_t limit;         /* -L: messages per publisher; 0: until --duration */
  double duration_s;      /* --duration: 0 means none */
  double drain_s;         /* --drain: how long subscribers may lag the publishers */
  uint32_t size;          /* -s: payload bytes, >= BENCH_HEADER_LEN */
  int qos;                /* -q */
  const char *topic;      /* -t: template with %i and %c */
  uint32_t inflight;      /* -F: unfinished publishes per client */
  int version;            /* -V: 3 (MQTT 3.1.1) or 5 */
  int keepalive;          /* -k, seconds */
  const char *ifaddr;     /* --ifaddr: comma-separated local addresses */
  const char *json_path;  /* --json */
  const char *plot_path;  /* --plot */
  const char *ready_path; /* --ready-file: created once subscribers are subscribed */
  int quiet;              /* -Q: no progress lines */
  int tls;                /* --tls, --cafile or an mqtts:// URI: connect over TLS */
  int ws;                 /* a ws:// or wss:// URI: MQTT over WebSocket */
  const char *ws_path;    /* its path, "/mqtt" by default */
  const char *cafile;     /* --cafile: the CA that signed the broker's certificate */
  int insecure;           /* --insecure: no certificate or host-name check */
  /* -U: the servers, in the order given. With several (the nodes of a
   * cluster) client k starts on uris[k % nuris]; host and port name the
   * first, for the drivers that take one server. */
  const char *uris[BENCH_MAX_URIS];
  uint32_t nuris;
} bench_opts_t;

/* Parses argv (argv[1] is the subcommand). `allowed` is a bitmask of
 * (1 << bench_cmd_t) the driver supports. Prints usage and returns -1 on
 * bad input, 1 after --help, 0 when opts is ready. */
int bench_parse_options(int argc, char **argv, const char *prog, unsigned allowed,
                        bench_opts_t *opts);

/* ---- Payload stamp ------------------------------------------------------------------ */

/* Every payload starts with the send time (uv_hrtime, ns), the publisher's
 * sequence number and its index; the rest is filler. */
#define BENCH_HEADER_LEN 16

typedef struct {
  uint64_t sent_ns;
  uint32_t seq;
  uint32_t publisher;
} bench_stamp_t;

/* Inline: it runs once per message published. */
static inline void bench_stamp_write(uint8_t *payload, const bench_stamp_t *stamp) {
  memcpy(payload, &stamp->sent_ns, 8);
  memcpy(payload + 8, &stamp->seq, 4);
  memcpy(payload + 12, &stamp->publisher, 4);
}
/* 0, or -1 when the payload is too short to carry a stamp. */
int bench_stamp_read(const uint8_t *payload, size_t len, bench_stamp_t *stamp);

/* Per-publisher bookkeeping of what a subscriber side received: counts
 * duplicates (a sequence number seen before) and reorders (a new number
 * below the highest seen). Memory grows with the sequence numbers seen, one
 * bit each. */
typedef struct bench_track_pub_s bench_track_pub_t;

typedef struct {
  bench_track_pub_t **pubs;
  uint32_t npubs;
  uint64_t unique;
  uint64_t duplicated;
  uint64_t reordered;
  uint64_t malformed;
} bench_track_t;

void bench_track_init(bench_track_t *t);
void bench_track_free(bench_track_t *t);
/* Records one message. Returns 1 when it is new, 0 for a duplicate, -1 when
 * memory ran out or the publisher index is absurd (counted as malformed). */
int bench_track_add(bench_track_t *t, const bench_stamp_t *stamp);
/* Messages missing: for each publisher seen, `expected_per_pub` (or, when 0,
 * its highest sequence number + 1) minus what arrived. */
uint64_t bench_track_lost(const bench_track_t *t, uint64_t expected_per_pub);
uint32_t bench_track_publishers(const bench_track_t *t);

/* ---- Resource usage ----------------------------------------------------------------- */

double bench_cpu_seconds(void); /* user + system, getrusage */
long bench_rss_kb(void);        /* VmRSS from /proc/self/status, -1 if unknown */
size_t bench_heap_bytes(void);  /* bytes in use in the C heap (mallinfo2) */

/* ---- Engine ----------------------------------------------------------------------------- */

typedef struct bench_s bench_t;
typedef struct bench_client_s bench_client_t;

typedef enum { BENCH_ROLE_IDLE, BENCH_ROLE_PUB, BENCH_ROLE_SUB } bench_role_t;

typedef enum {
  BENCH_CL_NEW = 0,
  BENCH_CL_CONNECTING,
  BENCH_CL_SUBSCRIBING,
  BENCH_CL_READY,
  BENCH_CL_FAILED,
  BENCH_CL_CLOSING,
  BENCH_CL_CLOSED
} bench_client_state_t;

struct bench_client_s {
  bench_t *bench;
  void *drv; /* the driver's per-client state */
  uint32_t index;
  uint8_t role;
  uint8_t state;
  uint8_t connected;
  uint8_t ever_connected;
  uint8_t filling;  /* inside fill(): completions only count */
  uint8_t finished; /* publisher: sent all it will and saw every completion */
  char id[48];
  char topic[160];       /* publish topic, or subscription filter */
  const char *bind_addr; /* from --ifaddr, NULL for the default */
  uint64_t connect_start_ns;
  uint64_t sent; /* publishes handed to the driver */
  uint64_t done; /* publishes completed, successfully or not */
  uint32_t seq;
  bench_track_t *track; /* subscriber: what arrived, per publisher */
  /* Publisher: the payload, filled once; each message rewrites only its
   * stamp (every driver copies the payload before its publish returns).
   * NULL for payloads above BENCH_KEPT_PAYLOAD, built per message. */
  uint8_t *payload;
};

#define BENCH_KEPT_PAYLOAD 4096u

typedef struct {
  const char *name; /* "uvmqtt", "mosquitto", "paho" */
  /* How the library is driven, for the report. */
  const char *loop_model;
  /* Non-zero: the bench_on_*() calls come from the library's own threads;
   * the engine then serialises through lock/unlock. */
  int threaded;
  /* Optional, before the first connect. 0 or a negative error. */
  int (*setup)(bench_t *b);
  /* Starts connecting. Later: bench_on_connected() or bench_on_down(). */
  int (*connect)(bench_t *b, bench_client_t *cl);
  /* Later: bench_on_subscribed(). */
  int (*subscribe)(bench_t *b, bench_client_t *cl, const char *filter, int qos);
  /* Later: bench_on_published(), exactly once when this returned 0. */
  int (*publish)(bench_t *b, bench_client_t *cl, const void *payload, size_t len, int qos);
  /* Graceful disconnect and release. Later: bench_on_closed(), exactly once. */
  void (*close)(bench_t *b, bench_client_t *cl);
  /* Optional, once every client is closed and the loop has stopped. */
  void (*teardown)(bench_t *b);
  void (*lock)(bench_t *b);
  void (*unlock)(bench_t *b);
  /* Optional: bytes the library holds in its own allocator's count. */
  size_t (*lib_heap)(void);
  /* Optional: why --ifaddr cannot be honoured (NULL: it can). */
  const char *ifaddr_unsupported;
  /* Optional: why ws:// and wss:// URIs cannot be honoured (NULL: they can). */
  const char *ws_unsupported;
} bench_driver_t;

/* One per-second sample of the measured phase. */
typedef struct {
  double t;
  uint64_t pub;
  uint64_t recv;
} bench_sample_t;

typedef enum {
  BENCH_PH_CONNECT = 0,
  BENCH_PH_HOLD,  /* conn: everyone connected, holding for --duration */
  BENCH_PH_RUN,   /* publishing and/or receiving */
  BENCH_PH_DRAIN, /* publishers done, subscribers catching up */
  BENCH_PH_CLOSE, /* closing clients */
  BENCH_PH_DONE
} bench_phase_t;

/* Results, filled as the run goes; the report reads them. */
typedef struct {
  uint32_t clients;
  uint32_t connected; /* at the end of the connect phase */
  uint32_t failed;
  uint64_t reconnects;
  uint64_t errors; /* failed publishes, subscribes, lost connections, malformed */
  /* Connections established per server of -U (first ones and reconnects),
   * counted by the drivers that spread clients over several servers. */
  uint64_t node_connects[BENCH_MAX_URIS];
  uint64_t pub_sent;
  uint64_t pub_ok;
  uint64_t pub_failed;
  uint64_t recv;
  uint64_t recv_bytes;
  uint64_t unique;
  uint64_t lost;
  uint64_t duplicated;
  uint64_t reordered;
  uint64_t malformed;
  uint64_t expected; /* messages the subscribers wait for; 0: unknown */
  double connect_s;  /* first connect call to last CONNACK */
  double pub_s;      /* measured phase start to last publish completion */
  double recv_s;     /* start (or first receive, sub only) to last receive */
  double measured_s; /* the measured phase */
  double cpu_s;      /* during the measured phase */
  double cpu_connect_s;
  long rss_base_kb;
  long rss_connected_kb;
  long rss_end_kb;
  size_t heap_base;
  size_t heap_connected;
  size_t lib_heap_base;
  size_t lib_heap_connected;
  int have_lib_heap;
  uint64_t wire_bytes; /* raw: bytes written */
  hist_t latency;      /* ns, end to end */
  hist_t connect_lat;  /* ns, connect call to CONNACK */
  bench_sample_t *samples;
  size_t nsamples;
  size_t cap_samples;
  char note[256];
} bench_result_t;

struct bench_s {
  uv_loop_t *loop;
  const bench_opts_t *o;
  const bench_driver_t *drv;
  void *drv_state;
  bench_client_t *clients;
  uint32_t nclients;
  uint32_t npub;
  uint32_t nsub;
  uint8_t phase;
  uint8_t stop_publishing;
  uint8_t deadline_hit;
  uint8_t forced;
  uint8_t subs_complete;
  uint32_t started; /* connections started */
  uint32_t ready;   /* connected (and subscribed) */
  uint32_t closed;
  uint32_t connected_now;
  uint32_t pubs_done;
  uint64_t t_start_ns;
  uint64_t t_conn_first_ns;
  uint64_t t_conn_last_ns;
  uint64_t t_meas_ns;
  uint64_t t_last_pub_ns;
  uint64_t t_first_recv_ns;
  uint64_t t_last_recv_ns;
  uint64_t t_phase_ns;
  double cpu_mark;
  uint64_t last_pub_ok;
  uint64_t last_recv;
  uint64_t progress_ticks;
  int tty;
  uv_timer_t tick;
  uv_timer_t progress;
  uv_timer_t phase_timer;
  uv_async_t wake;
  uint64_t unique; /* new messages over all subscribers, for completion */
  /* Unpaced publishing refills a client's window once this many or fewer
   * are outstanding (half the window); paced publishing never does. Worked
   * out once: it is checked at every completion. */
  uint64_t refill_at;
  uint8_t paced;
  bench_result_t r;
};

/* Runs the workload of `o` with driver `drv` on a fresh loop, then prints
 * the report (and writes --json / --plot). Returns the exit status. */
int bench_main(const bench_opts_t *o, const bench_driver_t *drv, void *drv_state);

/* Driver events. Each may be called from inside a library callback; in
 * threaded drivers from the library's threads. */
void bench_on_connected(bench_t *b, bench_client_t *cl);
/* The connection went down or an attempt failed; will_retry 0: the client
 * gives up for good. */
void bench_on_down(bench_t *b, bench_client_t *cl, int will_retry);
void bench_on_subscribed(bench_t *b, bench_client_t *cl, int ok);
void bench_on_published(bench_t *b, bench_client_t *cl, int ok);
void bench_on_message(bench_t *b, bench_client_t *cl, const void *payload, size_t len);
void bench_on_closed(bench_t *b, bench_client_t *cl);

/* The raw TCP baseline (uvmqtt-bench raw): one plain libuv stream writes
 * pre-encoded QoS 0 PUBLISH packets into a sink, measured like pub. */
int bench_raw_run(const bench_opts_t *o);

/* ---- Report ------------------------------------------------------------------------------ */

/* Prints the human report to stdout. */
void bench_report_print(const bench_t *b);
/* Writes the report as one JSON object. 0 or -1 (with a message). */
int bench_report_json(const bench_t *b, const char *path);
/* Draws throughput over time and the latency distribution with gnuplot.
 * 0, or -1 with a message (gnuplot missing, bad extension, gnuplot failed). */
int bench_plot(const bench_t *b, const char *path);
/* 0 when gnuplot can be run, else -1 with a message; checked before a run
 * so a missing gnuplot does not waste one. */
int bench_plot_check(const char *path);

/* One progress line (stderr): a live line on a terminal, plain lines
 * otherwise. `final` ends a live line. */
void bench_progress_print(bench_t *b, int final);

/* Appends the per-second sample for the second that just ended. */
void bench_sample_add(bench_t *b);

uint64_t bench_now_ns(void);

#endif
