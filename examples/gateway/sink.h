/* The gateway's subscriber: one client on the same loop, connected straight
 * to the broker (the devices' faults are not its faults), with a persistent
 * session so that QoS 1 messages wait for it while the broker restarts. It
 * marks every message it receives in the sending device's track. */
#ifndef GATEWAY_SINK_H
#define GATEWAY_SINK_H

#include <uvmqtt.h>

#include "fleet.h"

typedef struct gw_sink_s gw_sink_t;

struct gw_sink_s {
  uvmqtt_client_t client;
  gw_fleet_t *fleet;
  uint64_t messages;
  uint64_t stray; /* messages that match no device or message number */
  uint32_t disconnects;
  uint8_t subscribed;
  uvmqtt_backoff_t backoff;
  void (*on_subscribed)(gw_sink_t *s, int status);
  void (*on_closed)(gw_sink_t *s);
};

/* Prepares the client, subscribes to gw/# at QoS 1 and starts connecting;
 * on_subscribed runs after the first SUBACK (or a failure). Returns 0 or a
 * negative error (nothing is open then). */
int gw_sink_start(gw_sink_t *s, uv_loop_t *loop, const char *uri, gw_fleet_t *fleet,
                  void (*on_subscribed)(gw_sink_t *s, int status));

void gw_sink_disconnect(gw_sink_t *s);
void gw_sink_close(gw_sink_t *s, void (*on_closed)(gw_sink_t *s));

#endif
