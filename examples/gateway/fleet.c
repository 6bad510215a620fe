/* The simulated devices; see fleet.h. */
#include "fleet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Short, so that a black-holed connection is noticed within about 3 s:
 * PINGREQ after 2 s of silence from the broker, then half that for PINGRESP. */
#define DEVICE_KEEPALIVE_S 2
#define DEVICE_CONNECT_MS  2000
/* A button press matters for 15 s in real life; the demo runs faster. */
#define BUTTON_DEADLINE_MS 3000

/* A publish in flight: which device and which message. */
typedef struct {
  gw_device_t *device;
  uint32_t seq;
} pub_ref_t;

static const char *const kind_names[GW_KINDS] = {"sensor", "button", "alarm"};

const char *gw_kind_name(int kind) {
  return kind >= 0 && kind < GW_KINDS ? kind_names[kind] : "?";
}

static uint64_t next_random(gw_fleet_t *f) {
  uint64_t x = f->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  f->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static uint32_t uniform(gw_fleet_t *f, uint32_t lo, uint32_t hi) {
  return hi > lo ? lo + (uint32_t)(next_random(f) % (hi - lo + 1)) : lo;
}

static void set_profiles(gw_fleet_t *f, uint8_t sensor_qos) {
  gw_profile_t *p = f->profile;
  p[GW_SENSOR] = (gw_profile_t){"sensor",
                                sensor_qos ? "delivery DROP, QoS 1, reconnect fixed 1 s"
                                           : "delivery DROP, QoS 0, reconnect fixed 1 s",
                                sensor_qos,
                                1,
                                {UVMQTT_DELIVERY_DROP, 0},
                                900,
                                1100};
  p[GW_BUTTON] = (gw_profile_t){"button",
                                "delivery DEADLINE 3 s, QoS 1, reconnect backoff 0.25-4 s",
                                1,
                                1,
                                {UVMQTT_DELIVERY_DEADLINE, BUTTON_DEADLINE_MS},
                                1000,
                                5000};
  p[GW_ALARM] = (gw_profile_t){"alarm",
                               "delivery UNTIL_DELIVERED, QoS 1, persistent session, "
                               "reconnect backoff 0.25-4 s",
                               1,
                               0,
                               {UVMQTT_DELIVERY_UNTIL_DELIVERED, 0},
                               2000,
                               6000};
  /* Sensors retry every second like umqtt.robust; the others back off
   * with full jitter so a restarted broker is not hit all at once. */
  f->backoff[GW_SENSOR] = (uvmqtt_backoff_t){1000, 1000, 0, 0, 0};
  f->backoff[GW_BUTTON] = (uvmqtt_backoff_t){250, 4000, 0, 0, 0};
  f->backoff[GW_ALARM] = (uvmqtt_backoff_t){250, 4000, 0, 0, 0};
}

/* ---- Messages ------------------------------------------------------------------------- */

static gw_outcome_t outcome_of(int status, uint8_t reason) {
  if (status == 0) return reason < 0x80 ? GW_ACKED : GW_FAILED;
  if (status == UVMQTT_EEXPIRED) return GW_EXPIRED;
  /* Given up by the policy: not connected (drop), the connection's error
   * (drop, or a deadline message sent before its deadline), or overflow. */
  if (status == UVMQTT_ECLOSED || status == UVMQTT_ENOMEM || status == UVMQTT_EQUEUEFULL)
    return GW_FAILED;
  return GW_DROPPED;
}

static void on_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  pub_ref_t *ref = arg;
  gw_device_t *d = ref->device;
  (void)client;
  gw_track_outcome(&d->track, &d->fleet->live[d->kind], ref->seq, outcome_of(status, reason));
  free(ref);
}

static void format_payload(gw_fleet_t *f, const gw_device_t *d, uint32_t seq, char *buf,
                           size_t cap) {
  switch (d->kind) {
  case GW_SENSOR:
    snprintf(buf, cap, "seq=%u temp=%.1f", seq, 18.0 + (double)uniform(f, 0, 80) / 10.0);
    break;
  case GW_BUTTON: snprintf(buf, cap, "seq=%u pressed", seq); break;
  default: snprintf(buf, cap, "seq=%u smoke", seq); break;
  }
}

static void produce(gw_device_t *d) {
  gw_fleet_t *f = d->fleet;
  gw_live_t *live = &f->live[d->kind];
  const gw_profile_t *p = &f->profile[d->kind];
  uint32_t seq;
  pub_ref_t *ref = malloc(sizeof *ref);
  if (ref == NULL || gw_track_issue(&d->track, live, &seq) != 0) {
    free(ref);
    return;
  }
  ref->device = d;
  ref->seq = seq;
  char topic[48], payload[64];
  snprintf(topic, sizeof topic, "gw/%s/%u", p->name, d->index);
  format_payload(f, d, seq, payload, sizeof payload);
  uvmqtt_publish_opts_t po;
  memset(&po, 0, sizeof po);
  po.qos = p->qos;
  int err = uvmqtt_publish(&d->client, topic, payload, strlen(payload), &po, on_published, ref);
  if (err) {
    /* No callback comes: the outcome is known now. UVMQTT_ENOTCONN is the
     * drop policy refusing to queue while offline. */
    gw_track_outcome(&d->track, live, seq, err == UVMQTT_ENOTCONN ? GW_DROPPED : GW_FAILED);
    free(ref);
  }
}

static void on_timer(uv_timer_t *t) {
  gw_device_t *d = t->data;
  gw_fleet_t *f = d->fleet;
  if (!d->started) {
    d->started = 1;
    int err = uvmqtt_connect(&d->client);
    if (err)
      fprintf(stderr, "%s %u: cannot connect: %s\n", gw_kind_name(d->kind), d->index,
              uvmqtt_strerror(err));
  } else if (f->producing) {
    produce(d);
  }
  if (f->producing) {
    const gw_profile_t *p = &f->profile[d->kind];
    uv_timer_start(t, on_timer, uniform(f, p->period_min_ms, p->period_max_ms), 0);
  }
}

/* ---- Fleet ------------------------------------------------------------------------------ */

int gw_fleet_init(gw_fleet_t *f, uv_loop_t *loop, const char *uri, const uint32_t *counts,
                  uint8_t sensor_qos) {
  void *data = f->data;
  memset(f, 0, sizeof *f);
  f->data = data;
  f->loop = loop;
  f->rng = (uv_hrtime() | 1) * 0x9E3779B97F4A7C15ULL;
  set_profiles(f, sensor_qos);
  for (int k = 0; k < GW_KINDS; k++) {
    f->count[k] = counts[k];
    f->total += counts[k];
  }
  f->devices = calloc(f->total ? f->total : 1, sizeof *f->devices);
  if (f->devices == NULL) return UVMQTT_ENOMEM;
  uint32_t i = 0;
  for (int k = 0; k < GW_KINDS; k++) {
    for (uint32_t n = 0; n < counts[k]; n++, i++) {
      gw_device_t *d = &f->devices[i];
      d->fleet = f;
      d->kind = (uint8_t)k;
      d->index = n;
      char id[48];
      snprintf(id, sizeof id, "gw-%s-%u", gw_kind_name(k), n);
      uvmqtt_options_t o;
      uvmqtt_options_init(&o);
      o.uri = uri;
      o.client_id = id;
      o.clean_start = f->profile[k].clean_start;
      o.keepalive = DEVICE_KEEPALIVE_S;
      o.connect_timeout_ms = DEVICE_CONNECT_MS;
      o.reconnect.fn = k == GW_SENSOR ? uvmqtt_reconnect_fixed : uvmqtt_reconnect_backoff;
      o.reconnect.state = &f->backoff[k];
      o.delivery = f->profile[k].delivery;
      int err = uvmqtt_client_init(loop, &d->client, &o, NULL);
      if (err) return err;
      d->client.data = d;
      uv_timer_init(loop, &d->timer);
      d->timer.data = d;
      f->open += 2;
    }
  }
  return 0;
}

void gw_fleet_start(gw_fleet_t *f, uint32_t spread_ms) {
  f->producing = 1;
  for (uint32_t i = 0; i < f->total; i++)
    uv_timer_start(&f->devices[i].timer, on_timer, uniform(f, 0, spread_ms), 0);
}

void gw_fleet_stop_producing(gw_fleet_t *f) {
  f->producing = 0;
  for (uint32_t i = 0; i < f->total; i++)
    if (f->devices[i].client.impl) uv_timer_stop(&f->devices[i].timer);
}

int gw_fleet_settled(const gw_fleet_t *f) {
  for (int k = 0; k < GW_KINDS; k++) {
    const gw_live_t *l = &f->live[k];
    if (l->pending > 0) return 0;
    if (f->profile[k].qos > 0 && l->acked_missing > 0) return 0;
  }
  return 1;
}

void gw_fleet_disconnect(gw_fleet_t *f) {
  for (uint32_t i = 0; i < f->total; i++)
    if (f->devices[i].client.impl) (void)uvmqtt_disconnect(&f->devices[i].client, 0);
}

static void one_closed(gw_fleet_t *f) {
  if (--f->open == 0 && f->on_closed) f->on_closed(f);
}

static void on_client_closed(uvmqtt_client_t *client) {
  gw_device_t *d = client->data;
  one_closed(d->fleet);
}

static void on_timer_closed(uv_handle_t *h) {
  gw_device_t *d = h->data;
  one_closed(d->fleet);
}

void gw_fleet_close(gw_fleet_t *f, void (*on_closed)(gw_fleet_t *f)) {
  f->producing = 0;
  f->on_closed = on_closed;
  if (f->open == 0) {
    if (on_closed) on_closed(f);
    return;
  }
  for (uint32_t i = 0; i < f->total; i++) {
    gw_device_t *d = &f->devices[i];
    if (d->client.impl == NULL) continue; /* init failed here: nothing was opened */
    uvmqtt_close(&d->client, on_client_closed);
    uv_close((uv_handle_t *)&d->timer, on_timer_closed);
  }
}

gw_device_t *gw_fleet_find(gw_fleet_t *f, int kind, uint32_t index) {
  if (kind < 0 || kind >= GW_KINDS || index >= f->count[kind]) return NULL;
  uint32_t base = 0;
  for (int k = 0; k < kind; k++)
    base += f->count[k];
  return &f->devices[base + index];
}

void gw_fleet_stats(const gw_fleet_t *f, int kind, uvmqtt_stats_t *sum) {
  memset(sum, 0, sizeof *sum);
  for (uint32_t i = 0; i < f->total; i++) {
    const gw_device_t *d = &f->devices[i];
    if (d->kind != kind || d->client.impl == NULL) continue;
    uvmqtt_stats_t st;
    uvmqtt_client_stats(&d->client, &st);
    sum->connected += st.connected;
    sum->queued += st.queued;
    sum->inflight += st.inflight;
    sum->queued_bytes += st.queued_bytes;
    sum->write_bytes += st.write_bytes;
    sum->reconnects += st.reconnects;
    sum->attempts += st.attempts;
  }
}

void gw_fleet_free(gw_fleet_t *f) {
  for (uint32_t i = 0; i < f->total && f->devices; i++)
    gw_track_free(&f->devices[i].track);
  free(f->devices);
  f->devices = NULL;
}

int gw_parse_topic(const uint8_t *topic, uint32_t len, int *kind, uint32_t *index) {
  char buf[64];
  if (len >= sizeof buf || len < 4 || memcmp(topic, "gw/", 3) != 0) return -1;
  memcpy(buf, topic, len);
  buf[len] = '\0';
  char *name = buf + 3, *slash = strchr(name, '/');
  if (slash == NULL || slash[1] == '\0') return -1;
  *slash = '\0';
  char *end;
  unsigned long n = strtoul(slash + 1, &end, 10);
  if (*end != '\0' || n > UINT32_MAX) return -1;
  for (int k = 0; k < GW_KINDS; k++) {
    if (strcmp(name, kind_names[k]) == 0) {
      *kind = k;
      *index = (uint32_t)n;
      return 0;
    }
  }
  return -1;
}
