/* The gateway's subscriber; see sink.h. */
#include "sink.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads the message number from a payload that starts "seq=<n>". */
static int parse_seq(uvmqtt_bytes_t payload, uint32_t *seq) {
  if (payload.len < 5 || memcmp(payload.data, "seq=", 4) != 0) return -1;
  uint64_t n = 0;
  uint32_t i = 4;
  for (; i < payload.len && payload.data[i] >= '0' && payload.data[i] <= '9'; i++) {
    n = n * 10 + (uint64_t)(payload.data[i] - '0');
    if (n > UINT32_MAX) return -1;
  }
  if (i == 4) return -1;
  *seq = (uint32_t)n;
  return 0;
}

static void on_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  gw_sink_t *s = client->data;
  (void)arg;
  s->messages++;
  int kind;
  uint32_t index, seq;
  gw_device_t *d = NULL;
  if (gw_parse_topic(m->topic.data, m->topic.len, &kind, &index) == 0 &&
      parse_seq(m->payload, &seq) == 0)
    d = gw_fleet_find(s->fleet, kind, index);
  if (d == NULL || gw_track_received(&d->track, &s->fleet->live[kind], seq) != 0) s->stray++;
}

static void on_suback(uvmqtt_client_t *client, int status, const uint8_t *reasons, size_t count,
                      void *arg) {
  gw_sink_t *s = client->data;
  (void)arg;
  if (status == 0 && (count != 1 || reasons[0] >= 0x80)) status = UVMQTT_ENOSUBS;
  if (status == 0) s->subscribed = 1;
  if (s->on_subscribed) s->on_subscribed(s, status);
}

static void on_connect(uvmqtt_client_t *client, int status, const uvmqtt_connack_t *ack) {
  gw_sink_t *s = client->data;
  (void)ack;
  if (status != 0 || s->subscribed) return;
  /* Once: the broker keeps the subscription in the persistent session, and
   * the client re-subscribes by itself after a reconnect that lost it. */
  static const char filter[] = "gw/#";
  uvmqtt_topic_sub_t sub = {{(const uint8_t *)filter, sizeof filter - 1}, UVMQTT_SUB_QOS(1)};
  int err = uvmqtt_subscribe(client, &sub, 1, NULL, NULL, on_suback, NULL);
  if (err && s->on_subscribed) s->on_subscribed(s, err);
}

static void on_disconnect(uvmqtt_client_t *client, const uvmqtt_disconnect_t *info) {
  gw_sink_t *s = client->data;
  (void)info;
  s->disconnects++;
}

int gw_sink_start(gw_sink_t *s, uv_loop_t *loop, const char *uri, gw_fleet_t *fleet,
                  void (*on_subscribed)(gw_sink_t *s, int status)) {
  memset(s, 0, sizeof *s);
  s->fleet = fleet;
  s->on_subscribed = on_subscribed;
  s->backoff.min_ms = 100;
  s->backoff.max_ms = 1000;
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.client_id = "gw-sink";
  o.clean_start = 0;
  o.keepalive = 5;
  o.connect_timeout_ms = 2000;
  o.reconnect.fn = uvmqtt_reconnect_backoff;
  o.reconnect.state = &s->backoff;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = on_connect;
  cbs.on_disconnect = on_disconnect;
  cbs.on_message = on_message;
  int err = uvmqtt_client_init(loop, &s->client, &o, &cbs);
  if (err) return err;
  s->client.data = s;
  err = uvmqtt_connect(&s->client);
  if (err) uvmqtt_close(&s->client, NULL);
  return err;
}

void gw_sink_disconnect(gw_sink_t *s) {
  if (s->client.impl) (void)uvmqtt_disconnect(&s->client, 0);
}

static void on_closed(uvmqtt_client_t *client) {
  gw_sink_t *s = client->data;
  if (s->on_closed) s->on_closed(s);
}

void gw_sink_close(gw_sink_t *s, void (*cb)(gw_sink_t *s)) {
  s->on_closed = cb;
  if (s->client.impl == NULL) {
    if (cb) cb(s);
    return;
  }
  uvmqtt_close(&s->client, on_closed);
}
