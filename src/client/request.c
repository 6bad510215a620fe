/* Request/response over MQTT 5 (uvmqtt_request): each request carries a
 * Response Topic the client subscribes to once, and Correlation Data that
 * is unique within the client; a message on that topic with the same
 * Correlation Data answers it. The client's timer enforces the timeouts. */
#include <string.h>

#include "base/alloc.h"
#include "client/client_impl.h"

#define CORR_LEN 16

typedef struct uvmqtt__rq_s {
  struct uvmqtt__rq_s *next;
  uvmqtt__client_t *c;
  uvmqtt_response_cb cb;
  void *arg;
  uint64_t deadline;
  uint8_t finished;  /* the application's callback ran */
  uint8_t published; /* the PUBLISH completed (its callback ran) */
  uint8_t corr[CORR_LEN];
} rq_t;

typedef struct rq_topic_s {
  struct rq_topic_s *next;
  char name[];
} rq_topic_t;

typedef struct uvmqtt__requests_s {
  rq_t *pending; /* waiting for a response, in issue order */
  rq_topic_t *topics;
  uint64_t counter;
  uint8_t prefix[8];
} uvmqtt__requests_t;

/* The request is freed once both its PUBLISH and its answer (a response,
 * the timeout or an error) are done: the PUBLISH's callback holds it. */
static void maybe_free(rq_t *rq) {
  if (rq->finished && rq->published) uvmqtt__free(rq);
}

static void unlink_rq(uvmqtt__requests_t *rs, rq_t *rq) {
  for (rq_t **pp = &rs->pending; *pp; pp = &(*pp)->next) {
    if (*pp == rq) {
      *pp = rq->next;
      rq->next = NULL;
      return;
    }
  }
}

static uvmqtt__requests_t *requests_of(const uvmqtt__client_t *c) {
  return c->extra ? c->extra->requests : NULL;
}

static void finish(rq_t *rq, int status, const uvmqtt_message_t *m) {
  if (rq->finished) return;
  rq->finished = 1;
  unlink_rq(rq->c->extra->requests, rq);
  rq->cb(rq->c->handle, status, m, rq->arg);
}

static void rq_published(uvmqtt_client_t *client, int status, uint8_t reason, void *arg) {
  (void)client;
  (void)reason;
  rq_t *rq = arg;
  rq->published = 1;
  if (status < 0) finish(rq, status, NULL);
  maybe_free(rq);
}

/* Messages on a response topic: the one whose Correlation Data matches a
 * pending request answers it; any other is not ours and is dropped. */
static void rq_message(uvmqtt_client_t *client, const uvmqtt_message_t *m, void *arg) {
  (void)arg;
  uvmqtt__client_t *c = client->impl;
  if (c == NULL || requests_of(c) == NULL || m->props == NULL ||
      !UVMQTT_HAS(m->props, UVMQTT_PROP_CORRELATION_DATA))
    return;
  uvmqtt_bytes_t cd = m->props->correlation_data;
  if (cd.len != CORR_LEN) return;
  for (rq_t *rq = requests_of(c)->pending; rq; rq = rq->next) {
    if (memcmp(rq->corr, cd.data, CORR_LEN) == 0) {
      finish(rq, 0, m);
      maybe_free(rq);
      return;
    }
  }
}

static int ensure_requests(uvmqtt__client_t *c) {
  uvmqtt__client_extra_t *x = uvmqtt__client_extra(c);
  if (x == NULL) return UVMQTT_ENOMEM;
  if (x->requests) return 0;
  x->requests = uvmqtt__calloc(1, sizeof *x->requests);
  if (x->requests == NULL) return UVMQTT_ENOMEM;
  /* Correlation Data must differ from that of the client's earlier runs
   * too: a late response to one of them must not answer a new request. */
  uint64_t seed = uv_hrtime() ^ (uint64_t)(uintptr_t)c;
  for (int i = 0; i < 8; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x->requests->prefix[i] = (uint8_t)(seed >> 56);
  }
  return 0;
}

/* Subscribes to the response topic the first time it is used. */
static int ensure_subscribed(uvmqtt__client_t *c, const char *topic) {
  for (rq_topic_t *t = requests_of(c)->topics; t; t = t->next)
    if (strcmp(t->name, topic) == 0) return 0;
  size_t n = strlen(topic);
  rq_topic_t *t = uvmqtt__malloc(sizeof *t + n + 1);
  if (t == NULL) return UVMQTT_ENOMEM;
  memcpy(t->name, topic, n + 1);
  uvmqtt_topic_sub_t sub;
  sub.filter.data = (const uint8_t *)t->name;
  sub.filter.len = (uint32_t)n;
  sub.options = UVMQTT_SUB_QOS(1);
  int err = uvmqtt_subscribe(c->handle, &sub, 1, NULL, rq_message, NULL, NULL);
  if (err) {
    uvmqtt__free(t);
    return err;
  }
  t->next = requests_of(c)->topics;
  requests_of(c)->topics = t;
  return 0;
}

int uvmqtt_request(uvmqtt_client_t *client, const char *topic, const void *payload, size_t len,
                   const uvmqtt_publish_opts_t *opts, const char *response_topic,
                   uint32_t timeout_ms, uvmqtt_response_cb cb, void *arg) {
  if (client == NULL) return UVMQTT_EINVAL;
  uvmqtt__client_t *c = client->impl;
  if (c == NULL || c->closing) return UVMQTT_ECLOSED;
  if (c->cfg->version != UVMQTT_V5 || cb == NULL || topic == NULL || response_topic == NULL ||
      timeout_ms == 0)
    return UVMQTT_EINVAL;
  if (strlen(response_topic) > 65535 ||
      uvmqtt_topic_check((const uint8_t *)response_topic, strlen(response_topic)))
    return UVMQTT_EBADTOPIC;
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  if (opts) o = *opts;
  uvmqtt_props_t props;
  memset(&props, 0, sizeof props);
  if (o.props) {
    /* The helper owns the two properties that route the answer. */
    if (UVMQTT_HAS(o.props, UVMQTT_PROP_RESPONSE_TOPIC) ||
        UVMQTT_HAS(o.props, UVMQTT_PROP_CORRELATION_DATA))
      return UVMQTT_EINVAL;
    props = *o.props;
  }
  int err = ensure_requests(c);
  if (err == 0) err = ensure_subscribed(c, response_topic);
  if (err) return err;
  rq_t *rq = uvmqtt__calloc(1, sizeof *rq);
  if (rq == NULL) return UVMQTT_ENOMEM;
  rq->c = c;
  rq->cb = cb;
  rq->arg = arg;
  uvmqtt__requests_t *rs = requests_of(c);
  uint64_t n = ++rs->counter;
  memcpy(rq->corr, rs->prefix, 8);
  for (int i = 0; i < 8; i++)
    rq->corr[8 + i] = (uint8_t)(n >> (56 - 8 * i));
  props.has |= 1ull << UVMQTT_PROP_RESPONSE_TOPIC | 1ull << UVMQTT_PROP_CORRELATION_DATA;
  props.response_topic.data = (const uint8_t *)response_topic;
  props.response_topic.len = (uint32_t)strlen(response_topic);
  props.correlation_data.data = rq->corr;
  props.correlation_data.len = CORR_LEN;
  o.props = &props;
  err = uvmqtt_publish(client, topic, payload, len, &o, rq_published, rq);
  if (err) {
    uvmqtt__free(rq);
    return err;
  }
  rq->deadline = uvmqtt__now(c) + timeout_ms;
  rq_t **tail = &rs->pending;
  while (*tail)
    tail = &(*tail)->next;
  *tail = rq;
  uvmqtt__client_arm(c);
  return 0;
}

uint64_t uvmqtt__requests_next(const uvmqtt__client_t *c) {
  uint64_t next = 0;
  if (requests_of(c) == NULL) return 0;
  for (const rq_t *rq = requests_of(c)->pending; rq; rq = rq->next)
    if (next == 0 || rq->deadline < next) next = rq->deadline;
  return next;
}

void uvmqtt__requests_expire(uvmqtt__client_t *c, uint64_t now) {
  if (requests_of(c) == NULL) return;
  /* One at a time from the head: a callback may issue or end requests. */
  for (;;) {
    rq_t *rq = requests_of(c)->pending;
    while (rq && rq->deadline > now)
      rq = rq->next;
    if (rq == NULL || c->closing) return;
    finish(rq, UVMQTT_ETIMEDOUT, NULL);
    maybe_free(rq);
  }
}

void uvmqtt__requests_free(uvmqtt__client_t *c) {
  uvmqtt__requests_t *rs = requests_of(c);
  if (rs == NULL) return;
  /* The session is gone: every PUBLISH has completed, so each request
   * still pending is freed once answered. */
  while (rs->pending) {
    rq_t *rq = rs->pending;
    rq->published = 1;
    finish(rq, UVMQTT_ECLOSED, NULL);
    maybe_free(rq);
  }
  while (rs->topics) {
    rq_topic_t *t = rs->topics;
    rs->topics = t->next;
    uvmqtt__free(t);
  }
  uvmqtt__free(rs);
  c->extra->requests = NULL;
}
