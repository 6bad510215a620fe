/* A client of a multi-node scenario: see peer.h. */
#include "peer.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static char (*node_uris)[64];
static int node_count;

void test_peer_nodes(char (*uris)[64], int count) {
  ck_assert_int_le(count, TEST_PEER_NODES);
  node_uris = uris;
  node_count = count;
}

int test_peer_node_of(const char *server) {
  for (int i = 0; server && i < node_count; i++)
    if (strcmp(server, node_uris[i]) == 0) return i;
  return -1;
}

void test_peer_options(uvmqtt_options_t *o, const char **list, int first, const char *id, int clean,
                       uvmqtt_backoff_t *policy) {
  uvmqtt_options_init(o);
  for (int k = 0; k < node_count; k++)
    list[k] = node_uris[(first + k) % node_count];
  o->uris = list;
  o->uri_count = (size_t)node_count;
  o->version = UVMQTT_V311;
  o->client_id = id;
  o->clean_start = (uint8_t)clean;
  o->keepalive = 10;
  o->connect_timeout_ms = 3000;
  o->reconnect.fn = uvmqtt_reconnect_backoff;
  o->reconnect.state = policy;
}

static void peer_closed(uvmqtt_client_t *c) {
  test_peer_t *p = c->data;
  p->closed++;
}

void test_peer_close_all(test_peer_t *peers, int n) {
  for (int i = 0; i < n; i++)
    if (peers[i].c.impl) uvmqtt_close(&peers[i].c, peer_closed);
}

void test_peer_subscribe(test_peer_t *p, const char *filter, uvmqtt_subscribe_cb cb) {
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)filter;
  sub.filter.len = (uint32_t)strlen(filter);
  sub.options = UVMQTT_SUB_QOS(1);
  int rc = uvmqtt_subscribe(&p->c, &sub, 1, NULL, NULL, cb, p);
  ck_assert_msg(rc == 0, "subscribe %s: %s", filter, uvmqtt_err_name(rc));
}

void test_peer_count(test_peer_t *p, long n, int total) {
  ck_assert_msg(n >= 0 && n < total, "%s: message %ld out of range", p->id, n);
  p->received++;
  if (p->seen[n]++ == 0)
    p->unique++;
  else
    p->dups++;
}

long test_peer_payload_number(const uvmqtt_message_t *m) {
  char text[16];
  size_t n = m->payload.len < sizeof text - 1 ? m->payload.len : sizeof text - 1;
  memcpy(text, m->payload.data, n);
  text[n] = '\0';
  return strtol(text, NULL, 10);
}

void test_peer_up(test_peer_t *p, int status, const uvmqtt_connack_t *ack) {
  if (status != 0) {
    p->refused++;
    return;
  }
  p->connects++;
  p->up = 1;
  p->node = test_peer_node_of(ack->server);
  if (p->connects > 1) {
    if (ack->session_present)
      p->sp1++;
    else
      p->sp0++;
  }
}

void test_peer_down(uvmqtt_client_t *c, const uvmqtt_disconnect_t *d) {
  test_peer_t *p = c->data;
  if (p->stopping && d->status == 0) {
    p->stopping = 0;
    p->up = 0;
    return;
  }
  if (p->up) p->losses++;
  p->up = 0;
  ck_assert_msg(d->will_retry, "%s gave up: %s", p->id, uvmqtt_err_name(d->status));
}

void test_peer_published(test_peer_t *p, int status) {
  p->done++;
  if (status != 0) {
    p->failed++;
    p->last_status = status;
  }
}
