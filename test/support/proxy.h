/* A fault-injection TCP proxy on the test's libuv loop, between a client and
 * a broker: it can cut every connection, black-hole traffic without closing
 * (half-open), refuse new connections, delay, and cut mid-packet.
 *
 * Modes and settings apply from the next chunk read. When one side closes,
 * the bytes it sent before are still delivered, then both sides close. A side
 * stops reading while more than 4 MiB wait for the other, so memory stays
 * bounded. */
#ifndef TEST_PROXY_H
#define TEST_PROXY_H

#include <stdint.h>
#include <uv.h>

typedef struct fault_proxy_s fault_proxy_t;

typedef enum {
  PROXY_PASS = 0,  /* forward both ways */
  PROXY_BLACKHOLE, /* accept bytes, forward nothing, keep connections open;
                      new connections never reach the broker */
  PROXY_REFUSE     /* close new connections at once */
} proxy_mode_t;

struct fault_proxy_s {
  void *data;
  uv_loop_t *loop;
  int port;           /* where clients connect (127.0.0.1) */
  int target_port;    /* where the broker listens (127.0.0.1) */
  int mode;           /* proxy_mode_t */
  uint32_t delay_ms;  /* added to every forwarded chunk (order is kept) */
  uint32_t cut_after; /* > 0: forward this many bytes client->broker on each
                         connection, then close both sides */
  int accepted;       /* connections accepted so far */
  /* private */
  uv_tcp_t server;
  void *links;
};

/* Listens on a free loopback port (p->port), forwarding to 127.0.0.1:
 * target_port. Keeps `data`, resets every other field. Returns 0 or a libuv
 * error (the server handle is then closing). */
int proxy_start(fault_proxy_t *p, uv_loop_t *loop, int target_port);
/* Closes every live connection (both sides). */
void proxy_cut_all(fault_proxy_t *p);
void proxy_set_mode(fault_proxy_t *p, proxy_mode_t mode);
/* Stops listening and closes every connection. */
void proxy_stop(fault_proxy_t *p);

#endif
