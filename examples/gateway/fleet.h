/* The simulated devices: each one its own MQTT connection on the shared loop,
 * with the reconnect and delivery policies of its kind:
 *
 *   sensor  a reading about every second; stale readings are worthless, so
 *           delivery DROP and a fixed reconnect delay (umqtt.robust's way);
 *   button  a press every few seconds that matters for a while: delivery
 *           DEADLINE (3 s here, standing for 15 s), QoS 1, backoff;
 *   alarm   a rare event that must arrive: UNTIL_DELIVERED, QoS 1, a
 *           persistent session and exponential backoff with jitter.
 */
#ifndef GATEWAY_FLEET_H
#define GATEWAY_FLEET_H

#include <uvmqtt.h>

#include "ledger.h"

typedef struct gw_fleet_s gw_fleet_t;

typedef struct {
  uvmqtt_client_t client;
  uv_timer_t timer; /* the first connect, then every message */
  gw_fleet_t *fleet;
  gw_track_t track;
  uint32_t index;
  uint8_t kind;
  uint8_t started;
} gw_device_t;

/* How a kind behaves. */
typedef struct {
  const char *name;
  const char *summary; /* the policies in words, for the report */
  uint8_t qos;
  uint8_t clean_start;
  uvmqtt_delivery_t delivery;
  uint32_t period_min_ms; /* time between messages, uniform in [min, max] */
  uint32_t period_max_ms;
} gw_profile_t;

struct gw_fleet_s {
  void *data;
  uv_loop_t *loop;
  gw_device_t *devices;
  uint32_t count[GW_KINDS];
  uint32_t total;
  gw_profile_t profile[GW_KINDS];
  uvmqtt_backoff_t backoff[GW_KINDS]; /* one policy state shared by each kind */
  gw_live_t live[GW_KINDS];
  uint64_t rng;
  uint8_t producing;
  uint32_t open; /* devices whose client or timer is not yet closed */
  void (*on_closed)(gw_fleet_t *f);
};

/* Prepares `counts` devices of each kind that will connect to `uri`.
 * sensor_qos is 0 or 1. Returns 0 or a negative error (nothing is left
 * open then). */
int gw_fleet_init(gw_fleet_t *f, uv_loop_t *loop, const char *uri, const uint32_t *counts,
                  uint8_t sensor_qos);

/* Connects the devices, spread over `spread_ms`, and starts producing. */
void gw_fleet_start(gw_fleet_t *f, uint32_t spread_ms);

/* No new messages; the pending ones go on. */
void gw_fleet_stop_producing(gw_fleet_t *f);

/* 1 when no message waits for an outcome, and every acknowledged message
 * of a QoS 1 kind has reached the subscriber. */
int gw_fleet_settled(const gw_fleet_t *f);

/* Sends DISCONNECT on every live connection. */
void gw_fleet_disconnect(gw_fleet_t *f);

/* Closes every client and timer; `on_closed` runs when all are closed. */
void gw_fleet_close(gw_fleet_t *f, void (*on_closed)(gw_fleet_t *f));

/* The device `kind`/`index`, or NULL. */
gw_device_t *gw_fleet_find(gw_fleet_t *f, int kind, uint32_t index);

/* Sums the clients' stats of one kind (connected counts the live ones). */
void gw_fleet_stats(const gw_fleet_t *f, int kind, uvmqtt_stats_t *sum);

/* Frees the tracks and the device array, after gw_fleet_close finished. */
void gw_fleet_free(gw_fleet_t *f);

/* "sensor", "button", "alarm". */
const char *gw_kind_name(int kind);

/* Parses "gw/<kind>/<index>". Returns 0 or -1. */
int gw_parse_topic(const uint8_t *topic, uint32_t len, int *kind, uint32_t *index);

#endif
