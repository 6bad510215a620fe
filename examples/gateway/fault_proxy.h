/* The gateway demo's fault injector: a TCP proxy on the demo's own loop
 * between the devices and the broker.
 *
 * In pass mode it forwards both ways, and a close on one side reaches the
 * other after the bytes already read. In black-hole mode it forwards nothing
 * and passes no close on: each side keeps a connection that looks open but
 * carries nothing, which is what a dead network path looks like, so only
 * keepalive can tell. New connections accepted in black-hole mode never reach
 * the broker. Cutting closes every connection at once.
 */
#ifndef GATEWAY_FAULT_PROXY_H
#define GATEWAY_FAULT_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef enum { FAULT_PASS = 0, FAULT_BLACKHOLE } fault_mode_t;

typedef struct fault_link_s fault_link_t;

typedef struct {
  uv_loop_t *loop;
  int port;        /* where devices connect, on 127.0.0.1 */
  int target_port; /* where the broker listens, on 127.0.0.1 */
  int mode;        /* fault_mode_t */
  uint64_t accepted;
  uint64_t cut; /* connections closed by fault_proxy_cut_all() */
  uint32_t live;
  /* private */
  uv_tcp_t server;
  fault_link_t *links;
} fault_proxy_t;

/* Listens on a free loopback port (p->port) and forwards to 127.0.0.1:
 * target_port. Returns 0 or a libuv error (nothing is left open then). */
int fault_proxy_start(fault_proxy_t *p, uv_loop_t *loop, int target_port);

/* Applies from the next chunk read and the next accepted connection. */
void fault_proxy_set_mode(fault_proxy_t *p, fault_mode_t mode);

/* Closes every live connection, both sides. Returns how many there were. */
size_t fault_proxy_cut_all(fault_proxy_t *p);

/* Stops listening and closes every connection; the handles finish closing
 * on the next loop iterations. */
void fault_proxy_stop(fault_proxy_t *p);

#endif
