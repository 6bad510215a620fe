/* The gateway demo's own Mosquitto: a config in a fresh temporary directory
 * (persistence on, a free loopback port), started and stopped as a child
 * process on the demo's loop, so the progress line and the devices keep
 * running while the broker restarts. */
#ifndef GATEWAY_BROKER_PROC_H
#define GATEWAY_BROKER_PROC_H

#include <uv.h>

typedef struct broker_proc_s broker_proc_t;

/* status 0: started (the port accepts) or stopped (the process exited);
 * negative: it did not start in time, or exited while starting. */
typedef void (*broker_proc_cb)(broker_proc_t *b, int status);

struct broker_proc_s {
  void *data;
  uv_loop_t *loop;
  int port;
  char dir[256]; /* config, log and persistence */
  char exe[256];
  int running; /* a process exists */
  int starts;
  /* private */
  uv_process_t proc;
  uv_timer_t timer;
  uv_tcp_t probe;
  uv_connect_t probe_req;
  uint64_t deadline;
  broker_proc_cb cb;
  int phase;
  int probe_open;
};

/* Finds mosquitto, makes the directory, picks the port and writes the
 * config. Returns 0, or -1 with a message on stderr (nothing left behind). */
int broker_proc_init(broker_proc_t *b, uv_loop_t *loop);

/* Starts the process; `cb` runs once the port accepts (within 5 s) or the
 * start failed. Returns 0 or a libuv error (no callback then). */
int broker_proc_start(broker_proc_t *b, broker_proc_cb cb);

/* SIGTERM (SIGKILL after 5 s); `cb` runs once the process is gone. */
void broker_proc_stop(broker_proc_t *b, broker_proc_cb cb);

/* Prints the last lines of the broker's log to stderr. */
void broker_proc_print_log(const broker_proc_t *b);

/* Closes the timer and removes the directory. The process must be stopped.
 * The loop must run once more to finish closing the timer. */
void broker_proc_cleanup(broker_proc_t *b);

#endif
