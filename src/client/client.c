/* The public client API: init, options, publish, subscribe, disconnect,
 * close. The connection lifecycle lives in client_conn.c. */
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "client/client_impl.h"
#include "client/props_clone.h"
#include "transport/proxy.h"
#include "transport/tls.h"
#include "client/uri.h"

void uvmqtt_options_init(uvmqtt_options_t *opts) {
  if (opts == NULL) return;
  memset(opts, 0, sizeof *opts);
  opts->version = UVMQTT_V311;
  opts->clean_start = 1;
  opts->keepalive = 60;
  opts->connect_timeout_ms = 10000;
  opts->delivery.kind = UVMQTT_DELIVERY_UNTIL_DELIVERED;
}

/* A client id for a client that gave none on 3.1.1: "uvmqtt-" and 16 hex
 * digits, 23 characters, the most a 3.1.1 broker must accept. Ids must
 * differ, or the broker disconnects the older holder: a process-wide
 * counter goes through splitmix64 (a bijection, so two counters never give
 * one id), offset by a start that differs per process. */
static void make_client_id(char out[32]) {
  static atomic_uint_fast64_t counter;
  static atomic_uint_fast64_t base;
  uint64_t b = atomic_load(&base);
  if (b == 0) {
    uint64_t fresh = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 1u;
    uint64_t expected = 0;
    b = atomic_compare_exchange_strong(&base, &expected, fresh) ? fresh : expected;
  }
  uint64_t x = b + atomic_fetch_add(&counter, 1) * 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  snprintf(out, 32, "uvmqtt-%016llx", (unsigned long long)x);
}

static void creds_free(uvmqtt__creds_t *cr) {
  if (cr == NULL) return;
  uvmqtt__free(cr->username);
  uvmqtt__free(cr->password);
  uvmqtt__free(cr);
}

static void own_uris_free(uvmqtt__client_t *c) {
  if (c->extra == NULL || c->extra->own_uris == NULL) return;
  for (uint32_t i = 0; i < c->cfg->uri_count; i++)
    uvmqtt__free(c->extra->own_uris[i]);
  uvmqtt__free(c->extra->own_uris);
  c->extra->own_uris = NULL;
}

uvmqtt__client_extra_t *uvmqtt__client_extra(uvmqtt__client_t *c) {
  if (c->extra == NULL) c->extra = uvmqtt__calloc(1, sizeof *c->extra);
  return c->extra;
}

void uvmqtt__client_free(uvmqtt__client_t *c) {
  uvmqtt__session_free(&c->sess, UVMQTT_ECLOSED);
  uvmqtt__requests_free(c);
  if (c->cfg) own_uris_free(c);
  if (c->client_id != uvmqtt__client_inline_id(c)) uvmqtt__free(c->client_id);
  uvmqtt__free(c->spare_write);
  uvmqtt__subs_free(c);
  uvmqtt__servers_free(c);
  uvmqtt__client_extra_t *x = c->extra;
  if (x != NULL) {
    creds_free(x->creds);
    uvmqtt__free(x->env_proxy);
    if (x->auth) uvmqtt__free(x->auth->initial);
    uvmqtt__free(x->auth);
    uvmqtt__free(x);
  }
  if (c->cfg) uvmqtt__config_put(c->lp, c->cfg);
  uvmqtt__free(c);
}

static int validate_options(const uvmqtt_options_t *o) {
  if (o->version != UVMQTT_V31 && o->version != UVMQTT_V311 && o->version != UVMQTT_V5)
    return UVMQTT_EINVAL;
  /* MQTT 3.1 brokers may refuse longer ids; an empty one is made up. */
  if (o->version == UVMQTT_V31 && o->client_id && strlen(o->client_id) > 23)
    return UVMQTT_ECLIENTID;
  if (o->will_qos > 2) return UVMQTT_EBADQOS;
  if (o->will_topic && uvmqtt_topic_check((const uint8_t *)o->will_topic, strlen(o->will_topic)))
    return UVMQTT_EBADTOPIC;
  if (o->will_payload_len && o->will_payload == NULL) return UVMQTT_EINVAL;
  if (o->password_len && o->password == NULL) return UVMQTT_EINVAL;
  if (o->delivery.kind > UVMQTT_DELIVERY_CUSTOM) return UVMQTT_EINVAL;
  if (o->delivery.kind == UVMQTT_DELIVERY_CUSTOM && o->decide == NULL) return UVMQTT_EINVAL;
  if (o->overflow > UVMQTT_OVERFLOW_DROP_OLDEST) return UVMQTT_EINVAL;
  /* Enhanced authentication is configured through `auth`, which runs the
   * exchange; a method alone in the properties would leave it hanging. */
  if (o->auth &&
      (o->version != UVMQTT_V5 || o->auth->method == NULL || o->auth->method[0] == '\0' ||
       strlen(o->auth->method) > 65535 ||
       uvmqtt_utf8_check((const uint8_t *)o->auth->method, strlen(o->auth->method)) ||
       (o->auth->initial_len && o->auth->initial_data == NULL) || o->auth->initial_len > 65535))
    return UVMQTT_EINVAL;
  if (o->connect_props && (UVMQTT_HAS(o->connect_props, UVMQTT_PROP_AUTHENTICATION_METHOD) ||
                           UVMQTT_HAS(o->connect_props, UVMQTT_PROP_AUTHENTICATION_DATA)))
    return UVMQTT_EINVAL;
  return 0;
}

int uvmqtt_client_init(uv_loop_t *loop, uvmqtt_client_t *client, const uvmqtt_options_t *opts,
                       const uvmqtt_callbacks_t *cbs) {
  if (loop == NULL || client == NULL || opts == NULL) return UVMQTT_EINVAL;
  int err = validate_options(opts);
  if (err) return err;
  /* The id lives behind the struct, in the same allocation. */
  char made[32];
  const char *id = opts->client_id;
  if (id == NULL || id[0] == '\0') {
    id = "";
    if (opts->version != UVMQTT_V5) {
      make_client_id(made);
      id = made;
    }
  }
  size_t id_len = strlen(id);
  uvmqtt__client_t *c = uvmqtt__calloc(1, sizeof *c + id_len + 1);
  if (c == NULL) return UVMQTT_ENOMEM;
  c->client_id = uvmqtt__client_inline_id(c);
  memcpy(c->client_id, id, id_len + 1);
  client->loop = loop;
  client->impl = c;
  c->handle = client;
  c->heap_idx = UINT32_MAX;
  c->lp = uvmqtt__loop_ref(loop, opts->max_connecting);
  if (c->lp == NULL) {
    uvmqtt__free(c);
    client->impl = NULL;
    return UVMQTT_ENOMEM;
  }
  err = uvmqtt__config_get(c->lp, opts, cbs, &c->cfg);
  if (err == 0) err = uvmqtt__servers_init(c, opts->server_order);
  c->sub_id_dispatch = opts->sub_id_dispatch;
  if (err) {
    uvmqtt__loop_t *lp = c->lp;
    uvmqtt__client_free(c);
    uvmqtt__loop_unref(lp);
    client->impl = NULL;
    return err;
  }
  if (err == 0 && opts->auth) {
    size_t n = strlen(opts->auth->method);
    uvmqtt__client_extra_t *x = uvmqtt__client_extra(c);
    uvmqtt__auth_t *a = x ? uvmqtt__calloc(1, sizeof *a + n + 1) : NULL;
    if (a) {
      x->auth = a;
      memcpy(a->method, opts->auth->method, n + 1);
      a->method_len = n;
      a->fn = opts->auth->auth;
      a->state = opts->auth->state;
      a->initial_len = opts->auth->initial_len;
      if (opts->auth->initial_len)
        a->initial = uvmqtt__memdup(opts->auth->initial_data, opts->auth->initial_len, &err);
    } else {
      err = UVMQTT_ENOMEM;
    }
    if (err) {
      uvmqtt__loop_t *lp = c->lp;
      uvmqtt__client_free(c);
      uvmqtt__loop_unref(lp);
      client->impl = NULL;
      return err;
    }
  }
  uvmqtt__session_init(&c->sess, c, &uvmqtt__client_session_events, c->cfg->version);
  if (opts->max_queued) c->sess.max_queued = opts->max_queued;
  if (opts->max_queued_bytes) c->sess.max_queued_bytes = opts->max_queued_bytes;
  c->sess.overflow = opts->overflow;
  if (opts->max_packet_size) c->sess.our_max_packet = opts->max_packet_size;
  c->sess.max_inflight = opts->max_inflight ? opts->max_inflight : 20;
  c->sess.decide = opts->decide;
  c->sess.decide_state = opts->decide_state;
  c->sess.store = opts->store;
  if (opts->version == UVMQTT_V5) c->sess.alias_out_want = opts->topic_alias_out;
  if (opts->store) {
    uv_timeval64_t tv;
    int64_t unix_ms = uv_gettimeofday(&tv) == 0 ? tv.tv_sec * 1000 + tv.tv_usec / 1000 : 0;
    c->sess.wall_offset_ms = unix_ms - (int64_t)uv_now(loop);
    err = uvmqtt__session_restore(&c->sess, uv_now(loop));
    if (err) {
      uvmqtt__loop_t *lp = c->lp;
      uvmqtt__client_free(c);
      uvmqtt__loop_unref(lp);
      client->impl = NULL;
      return err;
    }
  }
  return 0;
}

static uvmqtt__client_t *impl_of(uvmqtt_client_t *client, int *err) {
  if (client == NULL || client->impl == NULL) {
    *err = client == NULL ? UVMQTT_EINVAL : UVMQTT_ECLOSED;
    return NULL;
  }
  if (client->impl->closing) {
    *err = UVMQTT_ECLOSED;
    return NULL;
  }
  return client->impl;
}

int uvmqtt__auth_start(uvmqtt__client_t *c, uint8_t reason, uvmqtt_bytes_t *data) {
  const uvmqtt__auth_t *a = c->extra->auth;
  data->data = a->initial;
  data->len = (uint32_t)a->initial_len;
  if (a->fn == NULL) return 0;
  uvmqtt_auth_reply_t out = {NULL, 0};
  if (a->fn(a->state, NULL, reason, &out) < 0 || out.len > 65535 || (out.len && out.data == NULL))
    return UVMQTT_EAUTH;
  data->data = out.data;
  data->len = (uint32_t)out.len;
  return 0;
}

int uvmqtt_reauthenticate(uvmqtt_client_t *client) {
  int err = 0;
  uvmqtt__client_t *c = impl_of(client, &err);
  if (c == NULL) return err;
  if (c->extra == NULL || c->extra->auth == NULL) return UVMQTT_EINVAL;
  if (c->state != UVMQTT__C_CONNECTED || c->sess.state != UVMQTT__S_ONLINE) return UVMQTT_ENOTCONN;
  if (c->sess.reauth) return UVMQTT_EBUSY;
  uvmqtt_bytes_t data;
  err = uvmqtt__auth_start(c, 0x19, &data);
  if (err == 0) err = uvmqtt__session_auth(&c->sess, 0x19, &data, uvmqtt__now(c));
  if (err == 0) uvmqtt__client_schedule_flush(c);
  return err;
}

int uvmqtt_connect(uvmqtt_client_t *client) {
  int err = 0;
  uvmqtt__client_t *c = impl_of(client, &err);
  if (c == NULL) return err;
  if (c->state != UVMQTT__C_STOPPED) return UVMQTT_EBUSY;
  c->attempt = 0;
  c->failures = 0;
  c->down_since = 0;
  uvmqtt__client_start_attempt(c);
  return 0;
}

int uvmqtt_publish(uvmqtt_client_t *client, const char *topic, const void *payload, size_t len,
                   const uvmqtt_publish_opts_t *opts, uvmqtt_publish_cb cb, void *arg) {
  int err = 0;
  uvmqtt__client_t *c = impl_of(client, &err);
  if (c == NULL) return err;
  uvmqtt_delivery_t d = c->cfg->delivery;
  if (opts && opts->delivery.kind != UVMQTT_DELIVERY_DEFAULT) d = opts->delivery;
  if (d.kind > UVMQTT_DELIVERY_CUSTOM) return UVMQTT_EINVAL;
  if (d.kind == UVMQTT_DELIVERY_CUSTOM && c->sess.decide == NULL) return UVMQTT_EINVAL;
  if (d.kind == UVMQTT_DELIVERY_DROP && c->state != UVMQTT__C_CONNECTED) return UVMQTT_ENOTCONN;
  /* Every field set once, no clearing first: this runs per message. */
  uvmqtt__publish_t p;
  if (opts) {
    /* One byte at a time: an application that zeroes its options and then
     * sets a field has stored them in pieces of different widths, and one
     * wider load across the pieces stalls the CPU (no store forwarding). */
    p.qos = *(const volatile uint8_t *)&opts->qos;
    p.retain = *(const volatile uint8_t *)&opts->retain;
    p.props = opts->props;
  } else {
    p.qos = 0;
    p.retain = 0;
    p.props = NULL;
  }
  p.policy = d.kind;
  p.deadline_ms = d.deadline_ms;
  p.cb = (uvmqtt__cb_fn)cb;
  p.arg = arg;
  err = uvmqtt__session_publish(&c->sess, topic, payload, len, &p, uvmqtt__now(c));
  if (err) return err;
  if (uvmqtt__session_pending(&c->sess))
    uvmqtt__client_schedule_flush(c);
  else if (d.kind == UVMQTT_DELIVERY_DEADLINE)
    uvmqtt__client_arm(c);
  return 0;
}

int uvmqtt_subscribe(uvmqtt_client_t *client, const uvmqtt_topic_sub_t *subs, size_t count,
                     const uvmqtt_props_t *props, uvmqtt_message_cb on_message,
                     uvmqtt_subscribe_cb cb, void *arg) {
  int err = 0;
  uvmqtt__client_t *c = impl_of(client, &err);
  if (c == NULL) return err;
  if (subs == NULL || count == 0 || count > 65535) return UVMQTT_EINVAL;
  for (size_t i = 0; i < count; i++) {
    if (subs[i].filter.data == NULL || subs[i].filter.len > 65535) return UVMQTT_EINVAL;
    err = uvmqtt_filter_check(subs[i].filter.data, subs[i].filter.len);
    if (err) return err;
    if ((subs[i].options & 3) > 2) return UVMQTT_EBADQOS;
  }
  /* sub_id_dispatch: a call with its own callback and no identifier of its
   * own gets one (1..268,435,455, the variable byte integer's range). */
  uvmqtt_props_t with_id;
  if (c->sub_id_dispatch && c->cfg->version == UVMQTT_V5 && on_message != NULL &&
      !(props && (UVMQTT_HAS(props, UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER) || props->sub_id_count))) {
    uvmqtt__client_extra_t *x = uvmqtt__client_extra(c);
    if (x == NULL) return UVMQTT_ENOMEM;
    if (props)
      with_id = *props;
    else
      memset(&with_id, 0, sizeof with_id);
    x->next_sub_id = x->next_sub_id % 268435455u + 1;
    with_id.has |= 1ull << UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER;
    with_id.subscription_id = x->next_sub_id;
    props = &with_id;
    x->giving_sub_id = with_id.subscription_id;
  }
  uvmqtt__subs_batch_t batch;
  err = uvmqtt__subs_prepare(c, subs, count, props, on_message, arg, &batch);
  if (c->extra) c->extra->giving_sub_id = 0;
  if (err) return err;
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_SUBSCRIBE;
  p.u.subscribe.subs = subs;
  p.u.subscribe.count = (uint32_t)count;
  if (props && c->cfg->version == UVMQTT_V5) p.props = *props;
  err = uvmqtt__session_request(&c->sess, &p, (uvmqtt__cb_fn)cb, arg, uvmqtt__now(c));
  if (err) {
    uvmqtt__subs_discard(&batch);
    return err;
  }
  uvmqtt__subs_commit(c, &batch, c->sess.last_req_id);
  if (uvmqtt__session_pending(&c->sess)) uvmqtt__client_schedule_flush(c);
  return 0;
}

int uvmqtt_unsubscribe(uvmqtt_client_t *client, const char *const *filters, size_t count,
                       uvmqtt_subscribe_cb cb, void *arg) {
  return uvmqtt_unsubscribe_props(client, filters, count, NULL, cb, arg);
}

int uvmqtt_unsubscribe_props(uvmqtt_client_t *client, const char *const *filters, size_t count,
                             const uvmqtt_props_t *props, uvmqtt_subscribe_cb cb, void *arg) {
  int err = 0;
  uvmqtt__client_t *c = impl_of(client, &err);
  if (c == NULL) return err;
  if (filters == NULL || count == 0 || count > 65535) return UVMQTT_EINVAL;
  uvmqtt_topic_sub_t stack[16];
  uvmqtt_topic_sub_t *list = count <= 16 ? stack : uvmqtt__calloc(count, sizeof *list);
  if (list == NULL) return UVMQTT_ENOMEM;
  for (size_t i = 0; i < count; i++) {
    if (filters[i] == NULL)
      err = UVMQTT_EINVAL;
    else {
      list[i].filter.data = (const uint8_t *)filters[i];
      list[i].filter.len = (uint32_t)strlen(filters[i]);
      list[i].options = 0;
    }
  }
  if (err == 0) {
    uvmqtt_packet_t p;
    memset(&p, 0, sizeof p);
    p.type = UVMQTT_UNSUBSCRIBE;
    p.u.subscribe.subs = list;
    p.u.subscribe.count = (uint32_t)count;
    if (props && c->cfg->version == UVMQTT_V5) p.props = *props;
    err = uvmqtt__session_request(&c->sess, &p, (uvmqtt__cb_fn)cb, arg, uvmqtt__now(c));
  }
  if (list != stack) uvmqtt__free(list);
  if (err) return err;
  uvmqtt__subs_remove(c, filters, count);
  if (uvmqtt__session_pending(&c->sess)) uvmqtt__client_schedule_flush(c);
  return 0;
}

int uvmqtt_disconnect(uvmqtt_client_t *client, uint8_t reason) {
  int err = 0;
  uvmqtt__client_t *c = impl_of(client, &err);
  if (c == NULL) return err;
  switch (c->state) {
  case UVMQTT__C_CONNECTED:
    c->state = UVMQTT__C_DISCONNECTING;
    c->state_deadline = uvmqtt__now(c) + c->cfg->disconnect_timeout_ms;
    err = uvmqtt__session_stop(&c->sess, c->cfg->version == UVMQTT_V5 ? reason : 0, uvmqtt__now(c));
    if (err < 0)
      uvmqtt__client_lost(c, err);
    else
      uvmqtt__client_schedule_flush(c);
    return 0;
  case UVMQTT__C_CONNECTING:
  case UVMQTT__C_WAIT_CONNACK:
    /* No session yet: just drop the attempt. */
    if (!c->transport_active) {
      uvmqtt__loop_release(c->lp, c);
      c->state = UVMQTT__C_STOPPED;
      uvmqtt__client_arm(c);
      return 0;
    }
    c->state = UVMQTT__C_DISCONNECTING;
    uvmqtt__client_lost(c, UVMQTT_ENOTCONN);
    return 0;
  case UVMQTT__C_WAIT_RETRY:
  case UVMQTT__C_DROPPING:
    /* Stop retrying; a closing transport finishes on its own. */
    c->state = c->transport_active ? UVMQTT__C_DISCONNECTING : UVMQTT__C_STOPPED;
    uvmqtt__client_arm(c);
    return 0;
  default: return UVMQTT_ENOTCONN;
  }
}

void uvmqtt_close(uvmqtt_client_t *client, uvmqtt_close_cb cb) {
  if (client == NULL || client->impl == NULL || client->impl->closing) return;
  uvmqtt__client_t *c = client->impl;
  c->close_cb = cb;
  uvmqtt__client_begin_close(c);
}

void uvmqtt_client_stats(const uvmqtt_client_t *client, uvmqtt_stats_t *out) {
  if (out == NULL) return;
  memset(out, 0, sizeof *out);
  if (client == NULL || client->impl == NULL) return;
  const uvmqtt__client_t *c = client->impl;
  out->connected = c->stat_connected;
  out->attempts = c->stat_attempts;
  out->reconnects = c->stat_reconnects;
  uvmqtt__session_stats(&c->sess, &out->inflight, &out->queued, &out->queued_bytes);
  out->write_bytes = c->transport_active ? c->tr.pending_bytes : 0;
}

const char *uvmqtt_client_id(const uvmqtt_client_t *client) {
  if (client == NULL || client->impl == NULL) return NULL;
  return client->impl->client_id;
}

int uvmqtt_client_set_credentials(uvmqtt_client_t *client, const char *username,
                                  const void *password, size_t password_len) {
  int err = 0;
  uvmqtt__client_t *c = impl_of(client, &err);
  if (c == NULL) return err;
  if (password_len && password == NULL) return UVMQTT_EINVAL;
  uvmqtt__client_extra_t *x = uvmqtt__client_extra(c);
  uvmqtt__creds_t *cr = x ? uvmqtt__calloc(1, sizeof *cr) : NULL;
  if (cr == NULL) return UVMQTT_ENOMEM;
  cr->username = uvmqtt__strdup(username, &err);
  cr->password = password ? uvmqtt__memdup(password, password_len, &err) : NULL;
  cr->password_len = password_len;
  cr->has_password = password != NULL;
  if (err) {
    creds_free(cr);
    return err;
  }
  /* This client's alone: the options it shares stay as they are. */
  creds_free(x->creds);
  x->creds = cr;
  return 0;
}

int uvmqtt_client_set_uri(uvmqtt_client_t *client, const char *uri) {
  int err = 0;
  uvmqtt__client_t *c = impl_of(client, &err);
  if (c == NULL) return err;
  uvmqtt__uri_t parsed;
  err = uvmqtt__uri_parse(uri, &parsed);
  if (err) return err;
  uvmqtt__client_extra_t *x = uvmqtt__client_extra(c);
  if (x == NULL) return UVMQTT_ENOMEM;
  char *copy = uvmqtt__strdup(uri, &err);
  if (err) return err;
  if (x->own_uris == NULL) {
    /* A private server list, so the clients sharing the options keep theirs. */
    x->own_uris = uvmqtt__calloc(c->cfg->uri_count, sizeof *x->own_uris);
    for (uint32_t i = 0; x->own_uris && err == 0 && i < c->cfg->uri_count; i++)
      x->own_uris[i] = uvmqtt__strdup(c->cfg->uris[i], &err);
    if (x->own_uris == NULL || err) {
      own_uris_free(c);
      uvmqtt__free(copy);
      return UVMQTT_ENOMEM;
    }
  }
  uint32_t i = c->uri_index % c->cfg->uri_count;
  uvmqtt__free(x->own_uris[i]);
  x->own_uris[i] = copy;
  return 0;
}
