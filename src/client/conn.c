/* The client's connection lifecycle: attempts, CONNACK, output flushing,
 * loss, reconnect scheduling and the one timer that drives all of it. */
#include <string.h>

#include "base/alloc.h"
#include "client/client_impl.h"
#include "transport/proxy.h"
#include "transport/tls.h"
#include "transport/ws.h"
#include "client/uri.h"

/* Stop taking output while this much is already queued in the socket. */
#define WRITE_HIGH_WATER (1024u * 1024u)

static uvmqtt__client_t *from_transport(uvmqtt__transport_t *t) {
  return t->data;
}

/* ---- Timer ------------------------------------------------------------------------ */

void uvmqtt__client_arm(uvmqtt__client_t *c) {
  uint64_t now = uvmqtt__now(c);
  uint64_t next = 0;
  if (c->closing) {
    /* Closed with no transport to wait for: finish from the timer, never
     * inside uvmqtt_close(). */
    if (!c->transport_active) next = now;
  } else {
    next = uvmqtt__session_next_deadline(&c->sess);
    if ((c->state == UVMQTT__C_CONNECTING || c->state == UVMQTT__C_WAIT_CONNACK) &&
        c->pace != UVMQTT__PACE_WAITING && (next == 0 || c->state_deadline < next))
      next = c->state_deadline;
    if (c->state == UVMQTT__C_WAIT_RETRY && (next == 0 || c->state_deadline < next))
      next = c->state_deadline;
    if (c->state == UVMQTT__C_DISCONNECTING && c->transport_active &&
        (next == 0 || c->state_deadline < next))
      next = c->state_deadline;
    uint64_t rq = uvmqtt__requests_next(c);
    if (rq && (next == 0 || rq < next)) next = rq;
    if (c->flush_scheduled || c->pace == UVMQTT__PACE_GRANTED) next = now;
  }
  /* A deadline that fires early only re-arms the client, so it is moved
   * only earlier: keepalive deadlines move on every packet. */
  uint64_t due = uvmqtt__loop_due(c->lp, c);
  if (next != 0 && due && due <= next) return;
  if (next == 0 && due == 0) return;
  uvmqtt__loop_schedule(c->lp, c, next);
}

/* ---- Output ------------------------------------------------------------------------- */

static int can_write(const uvmqtt__client_t *c) {
  return c->transport_active && !c->closing &&
         (c->state == UVMQTT__C_WAIT_CONNACK || c->state == UVMQTT__C_CONNECTED ||
          c->state == UVMQTT__C_DISCONNECTING);
}

static void close_transport(uvmqtt__client_t *c) {
  if (c->transport_active && c->tr.state != UVMQTT__T_CLOSING) uvmqtt__transport_close(&c->tr);
}

/* DISCONNECT is out: shut our side down and wait (bounded) for the broker
 * to close its own, reading and discarding, so that it reads every byte we
 * sent instead of receiving a reset. */
static void half_close(uvmqtt__client_t *c) {
  c->shut = 1;
  c->state_deadline = uvmqtt__now(c) + c->cfg->disconnect_timeout_ms;
  if (uvmqtt__transport_shutdown(&c->tr) != 0) close_transport(c);
}

/* Writes the session's output until it is empty or the socket is full. */
static void flush(uvmqtt__client_t *c) {
  uint64_t now = uvmqtt__now(c);
  while (can_write(c) && c->tr.pending_bytes < WRITE_HIGH_WATER) {
    if (c->spare_write == NULL) {
      c->spare_write = uvmqtt__malloc(sizeof *c->spare_write);
      if (c->spare_write == NULL) {
        uvmqtt__client_lost(c, UVMQTT_ENOMEM);
        return;
      }
    }
    uvmqtt__write_t *w = c->spare_write;
    if (!uvmqtt__session_take_output(&c->sess, &w->out)) break;
    uv_buf_t buf = uv_buf_init((char *)w->out.buf, (unsigned)w->out.len);
    int rc = uvmqtt__transport_write(&c->tr, &buf, 1, w);
    if (rc >= 0 && w->out.has_ping) c->ping_mark = c->tr.sent_total;
    if (rc == 1) {
      uvmqtt__session_written(&c->sess, &w->out, 0, now);
      uvmqtt__session_pump(&c->sess, now);
      continue;
    }
    if (rc < 0) {
      uvmqtt__session_written(&c->sess, &w->out, rc, now);
      uvmqtt__client_lost(c, rc);
      return;
    }
    /* Pending: completions come in order, so a FIFO finds it again. */
    c->spare_write = NULL;
    w->next = NULL;
    uvmqtt__write_t **tail = &c->writes;
    while (*tail)
      tail = &(*tail)->next;
    *tail = w;
    break;
  }
  /* An idle connection holds no write bookkeeping. */
  if (c->writes == NULL && c->spare_write) {
    uvmqtt__free(c->spare_write);
    c->spare_write = NULL;
  }
  if (c->state == UVMQTT__C_DISCONNECTING && !c->shut && c->writes == NULL &&
      uvmqtt__session_terminating(&c->sess) && uvmqtt__session_pending(&c->sess) == 0)
    half_close(c);
}

/* ---- Attempts and loss ------------------------------------------------------------------ */

static int build_connect(uvmqtt__client_t *c, uvmqtt_packet_t *p) {
  memset(p, 0, sizeof *p);
  p->type = UVMQTT_CONNECT;
  uvmqtt_connect_t *cn = &p->u.connect;
  cn->protocol_level = c->cfg->version;
  cn->clean_start = c->cfg->clean_start;
  cn->keep_alive = c->cfg->keepalive;
  cn->client_id.data = (const uint8_t *)c->client_id;
  cn->client_id.len = (uint32_t)strlen(c->client_id);
  if (c->cfg->will_topic) {
    cn->will = 1;
    cn->will_qos = c->cfg->will_qos;
    cn->will_retain = c->cfg->will_retain;
    cn->will_topic.data = (const uint8_t *)c->cfg->will_topic;
    cn->will_topic.len = (uint32_t)strlen(c->cfg->will_topic);
    cn->will_payload.data = c->cfg->will_payload;
    cn->will_payload.len = (uint32_t)c->cfg->will_payload_len;
    if (c->cfg->will_props && c->cfg->version == UVMQTT_V5) cn->will_props = *c->cfg->will_props;
  }
  /* Credentials a pre_connect hook set win over the options. */
  const uvmqtt__creds_t *cr = c->extra ? c->extra->creds : NULL;
  const uvmqtt__auth_t *auth = c->extra ? c->extra->auth : NULL;
  const char *username = cr ? cr->username : c->cfg->username;
  if (username) {
    cn->has_username = 1;
    cn->username.data = (const uint8_t *)username;
    cn->username.len = (uint32_t)strlen(username);
  }
  if (cr ? cr->has_password : c->cfg->has_password) {
    cn->has_password = 1;
    cn->password.data = cr ? cr->password : c->cfg->password;
    cn->password.len = (uint32_t)(cr ? cr->password_len : c->cfg->password_len);
  }
  if (c->cfg->version == UVMQTT_V5) {
    if (c->cfg->connect_props) p->props = *c->cfg->connect_props;
    if (!c->cfg->no_max_packet_size && !UVMQTT_HAS(&p->props, UVMQTT_PROP_MAXIMUM_PACKET_SIZE)) {
      p->props.has |= 1ull << UVMQTT_PROP_MAXIMUM_PACKET_SIZE;
      p->props.maximum_packet_size = c->sess.our_max_packet;
    }
    if (auth) {
      /* Every attempt starts the mechanism afresh. */
      uvmqtt_bytes_t data;
      int err = uvmqtt__auth_start(c, 0x00, &data);
      if (err) return err;
      p->props.has |= 1ull << UVMQTT_PROP_AUTHENTICATION_METHOD;
      p->props.authentication_method.data = (const uint8_t *)auth->method;
      p->props.authentication_method.len = (uint32_t)auth->method_len;
      if (data.len) {
        p->props.has |= 1ull << UVMQTT_PROP_AUTHENTICATION_DATA;
        p->props.authentication_data = data;
      }
    }
  }
  return 0;
}

/* The proxy for this attempt: the option, else (proxy_from_env) what the
 * environment says for this server, else none. */
static int pick_proxy(uvmqtt__client_t *c, const uvmqtt__uri_t *uri,
                      const uvmqtt__proxy_config_t **out) {
  *out = c->cfg->proxy;
  if (c->cfg->proxy != NULL || !c->cfg->proxy_from_env) return 0;
  int tls = uri->scheme == UVMQTT__SCHEME_TLS || uri->scheme == UVMQTT__SCHEME_WSS;
  const char *url = uvmqtt__proxy_from_env(tls, uri->host);
  if (url == NULL) return 0;
  uvmqtt__client_extra_t *x = uvmqtt__client_extra(c);
  if (x == NULL) return UVMQTT_ENOMEM;
  if (x->env_proxy == NULL) x->env_proxy = uvmqtt__malloc(sizeof *x->env_proxy);
  if (x->env_proxy == NULL) return UVMQTT_ENOMEM;
  int err = uvmqtt__proxy_parse(url, x->env_proxy);
  *out = x->env_proxy;
  return err;
}

/* The attempt proper, once the loop gave it a connect slot. */
static void run_attempt(uvmqtt__client_t *c) {
  c->attempt++;
  c->stat_attempts++;
  if (c->down_since == 0) c->down_since = uvmqtt__now(c);
  c->last_reason = 0;
  c->fail_status = 0;
  c->shut = 0;
  c->state = UVMQTT__C_CONNECTING;
  if (c->cfg->cbs.pre_connect) c->cfg->cbs.pre_connect(c->handle, c->attempt);
  if (c->closing || c->state != UVMQTT__C_CONNECTING) return; /* the hook closed or stopped us */
  uvmqtt__uri_t uri;
  int err = uvmqtt__uri_parse(uvmqtt__servers_pick(c, uvmqtt__now(c)), &uri);
  /* The timeout starts now, not when the attempt was queued. */
  c->state_deadline = uvmqtt__now(c) + c->cfg->connect_timeout_ms;
  const uvmqtt__proxy_config_t *proxy = NULL;
  if (err == 0) err = pick_proxy(c, &uri, &proxy);
  if (err == 0) {
    if (uri.scheme == UVMQTT__SCHEME_TLS) {
      err = uvmqtt__transport_tls_init(&c->tr, c->lp->poller, &uvmqtt__client_transport_cbs,
                                       &c->cfg->tls);
    } else if (uri.scheme == UVMQTT__SCHEME_WS || uri.scheme == UVMQTT__SCHEME_WSS) {
      /* The strings are read by connect() below, while the URI is alive. */
      uvmqtt__ws_options_t wo = {c->cfg->ws_path != NULL ? c->cfg->ws_path : uri.path,
                                 c->cfg->ws_origin, (const char *const *)c->cfg->ws_headers,
                                 c->cfg->ws_header_count};
      err = uvmqtt__transport_ws_init(&c->tr, c->lp->poller, &uvmqtt__client_transport_cbs,
                                      uri.scheme == UVMQTT__SCHEME_WSS ? &c->cfg->tls : NULL, &wo);
    } else {
      uvmqtt__transport_tcp_init(&c->tr, c->lp->poller, &uvmqtt__client_transport_cbs);
    }
    c->tr.data = c;
    c->tr.bind = c->cfg->has_bind ? (const struct sockaddr *)&c->cfg->bind : NULL;
    if (err == 0) uvmqtt__transport_tcp_set_proxy(&c->tr, proxy);
    if (err == 0) err = uvmqtt__transport_connect(&c->tr, uri.host, uri.port);
    if (err == 0) c->transport_active = 1;
  }
  if (err) {
    /* Nothing started: report it like any failed attempt, from the timer so
     * the caller of uvmqtt_connect() never sees a callback inside the call. */
    uvmqtt__loop_release(c->lp, c);
    c->last_status = err;
    c->state = UVMQTT__C_DROPPING;
    c->state_deadline = uvmqtt__now(c);
  }
  uvmqtt__client_arm(c);
}

void uvmqtt__client_start_attempt(uvmqtt__client_t *c) {
  if (c->closing) return;
  c->state = UVMQTT__C_CONNECTING;
  if (uvmqtt__loop_try_start(c->lp, c))
    run_attempt(c);
  else
    uvmqtt__client_arm(c); /* waits for a slot, without a timeout */
}

/* The transport is closed (or never opened): tell the application and ask
 * the reconnect policy what next. */
static void after_loss(uvmqtt__client_t *c) {
  uint64_t now = uvmqtt__now(c);
  int was_connected = c->connected_at != 0;
  uvmqtt_reconnect_info_t info;
  memset(&info, 0, sizeof info);
  info.attempt = ++c->failures;
  info.status = c->last_status;
  info.reason = c->last_reason;
  info.connected_ms = was_connected ? now - c->connected_at : 0;
  info.down_ms = now - c->down_since;
  c->connected_at = 0;
  if (!was_connected && c->cfg->cbs.on_connect) {
    uvmqtt_connack_t ack;
    memset(&ack, 0, sizeof ack);
    ack.reason = c->last_reason;
    ack.server = uvmqtt__client_uri(c);
    c->cfg->cbs.on_connect(c->handle, c->last_status, &ack);
    if (c->closing) return;
    if (c->state == UVMQTT__C_STOPPED) {
      /* uvmqtt_disconnect() from on_connect: no retry. */
      uvmqtt_disconnect_t d;
      memset(&d, 0, sizeof d);
      d.status = c->last_status;
      d.reason = c->last_reason;
      d.attempt = c->failures;
      if (c->cfg->cbs.on_disconnect) c->cfg->cbs.on_disconnect(c->handle, &d);
      return;
    }
  }
  /* The next attempt goes to the next server of the list (servers.c). */
  info.server = uvmqtt__servers_failed(c, now, was_connected);
  int64_t delay = -1;
  if (!c->cfg->no_reconnect && c->cfg->reconnect.fn)
    delay = c->cfg->reconnect.fn(c->cfg->reconnect.state, &info);
  uvmqtt_disconnect_t d;
  memset(&d, 0, sizeof d);
  d.status = c->last_status;
  d.reason = c->last_reason;
  d.attempt = c->failures;
  if (delay >= 0) {
    c->state = UVMQTT__C_WAIT_RETRY;
    c->state_deadline = now + (uint64_t)delay;
    d.will_retry = 1;
    d.retry_in_ms = (uint64_t)delay;
  } else {
    c->state = UVMQTT__C_STOPPED;
    if (!c->cfg->no_reconnect && c->cfg->reconnect.fn) d.status = UVMQTT_EGAVEUP;
  }
  if (c->cfg->cbs.on_disconnect) c->cfg->cbs.on_disconnect(c->handle, &d);
}

void uvmqtt__client_lost(uvmqtt__client_t *c, int status) {
  uvmqtt__loop_release(c->lp, c);
  if (c->state == UVMQTT__C_DROPPING || c->state == UVMQTT__C_STOPPED ||
      c->state == UVMQTT__C_WAIT_RETRY)
    return;
  int graceful = c->state == UVMQTT__C_DISCONNECTING;
  /* A failed write of the DISCONNECT naming an error is not the cause. */
  if (c->fail_status) status = c->fail_status;
  c->last_status = status;
  c->stat_connected = 0;
  c->state = graceful ? UVMQTT__C_DISCONNECTING : UVMQTT__C_DROPPING;
  if (c->connected_at) c->down_since = uvmqtt__now(c);
  uvmqtt__session_lost(&c->sess, graceful ? UVMQTT_ENOTCONN : status, uvmqtt__now(c));
  close_transport(c);
  if (!c->transport_active && !graceful) after_loss(c);
}

/* ---- Transport callbacks --------------------------------------------------------------------- */

static void tr_on_connect(uvmqtt__transport_t *t, int status) {
  uvmqtt__client_t *c = from_transport(t);
  if (c->closing) return;
  if (status < 0) {
    uvmqtt__client_lost(c, status);
  } else {
    uvmqtt_packet_t p;
    int err = build_connect(c, &p);
    c->state = UVMQTT__C_WAIT_CONNACK;
    c->ping_mark = 0;
    if (err == 0) err = uvmqtt__session_connect(&c->sess, &p, uvmqtt__now(c));
    if (err)
      uvmqtt__client_lost(c, err);
    else
      flush(c);
  }
  uvmqtt__client_arm(c);
}

static void tr_on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  uvmqtt__client_t *c = from_transport(t);
  if (c->closing) return;
  int err =
      nread < 0 ? (int)nread : uvmqtt__session_recv(&c->sess, data, (size_t)nread, uvmqtt__now(c));
  if (c->closing) return;
  if (err && c->state == UVMQTT__C_DISCONNECTING && c->shut) {
    /* The broker closed after our DISCONNECT: the graceful end. */
    close_transport(c);
  } else if (err) {
    /* A v5 DISCONNECT telling the broker why may be waiting: try it first,
     * without letting its failed write stand in for the cause. */
    c->fail_status = err;
    flush(c);
    uvmqtt__client_lost(c, err);
  } else if (uvmqtt__session_pending(&c->sess)) {
    uvmqtt__client_schedule_flush(c);
  }
  uvmqtt__client_arm(c);
}

static void tr_on_write(uvmqtt__transport_t *t, int status, void *arg) {
  uvmqtt__client_t *c = from_transport(t);
  uvmqtt__write_t *w = arg;
  if (c->writes == w) c->writes = w->next;
  uvmqtt__session_written(&c->sess, &w->out, status, uvmqtt__now(c));
  if (c->spare_write == NULL)
    c->spare_write = w;
  else
    uvmqtt__free(w);
  if (c->closing) return;
  if (status < 0) {
    uvmqtt__client_lost(c, status);
  } else {
    uvmqtt__session_pump(&c->sess, uvmqtt__now(c));
    flush(c);
  }
  uvmqtt__client_arm(c);
}

static void finish_close(uvmqtt__client_t *c);

static void tr_on_close(uvmqtt__transport_t *t) {
  uvmqtt__client_t *c = from_transport(t);
  c->transport_active = 0;
  if (c->closing) {
    finish_close(c);
    return;
  }
  if (c->state == UVMQTT__C_DISCONNECTING) {
    int was_connected = c->connected_at != 0;
    c->state = UVMQTT__C_STOPPED;
    c->connected_at = 0;
    c->stat_connected = 0;
    uvmqtt__session_lost(&c->sess, UVMQTT_ENOTCONN, uvmqtt__now(c));
    if (was_connected && c->cfg->cbs.on_disconnect && !c->closing) {
      /* The end of a uvmqtt_disconnect(): status 0, no retry. */
      uvmqtt_disconnect_t d;
      memset(&d, 0, sizeof d);
      c->cfg->cbs.on_disconnect(c->handle, &d);
      if (c->closing) return;
    }
  } else if (c->state == UVMQTT__C_DROPPING) {
    after_loss(c);
  }
  uvmqtt__client_arm(c);
}

const uvmqtt__transport_cbs_t uvmqtt__client_transport_cbs = {tr_on_connect, tr_on_read,
                                                              tr_on_write, tr_on_close};

/* ---- Timer callback
 * ------------------------------------------------------------------------------ */

void uvmqtt__client_on_timer(uvmqtt__client_t *c, uint64_t now) {
  if (c->closing) {
    if (!c->transport_active) finish_close(c);
    return;
  }
  c->flush_scheduled = 0;
  if (c->pace == UVMQTT__PACE_GRANTED) {
    c->pace = UVMQTT__PACE_RUNNING;
    run_attempt(c);
  } else if (c->state == UVMQTT__C_DROPPING && !c->transport_active && now >= c->state_deadline) {
    after_loss(c); /* an attempt that could not even start */
  } else if ((c->state == UVMQTT__C_CONNECTING || c->state == UVMQTT__C_WAIT_CONNACK) &&
             c->pace != UVMQTT__PACE_WAITING && now >= c->state_deadline) {
    uvmqtt__client_lost(c, UVMQTT_ECONNTIMEDOUT);
  } else if (c->state == UVMQTT__C_WAIT_RETRY && now >= c->state_deadline) {
    uvmqtt__client_start_attempt(c);
  } else if (c->state == UVMQTT__C_DISCONNECTING && c->transport_active &&
             now >= c->state_deadline) {
    if (c->shut || uvmqtt__session_terminating(&c->sess)) {
      close_transport(c); /* the broker did not close in time (or the socket is stuck) */
    } else {
      (void)uvmqtt__session_stop_now(&c->sess, now); /* the drain ran out of time */
      c->state_deadline = now + c->cfg->disconnect_timeout_ms;
    }
  }
  if (c->closing) return;
  uvmqtt__requests_expire(c, now);
  if (c->closing) return;
  (void)uvmqtt__session_report_store_failures(&c->sess);
  if (c->closing) return;
  int err = uvmqtt__session_tick(&c->sess, now);
  if (c->closing) return;
  /* Behind a slow uplink the PINGREQ may still sit in the kernel's send
   * buffer: while the broker keeps acknowledging our bytes it is alive. */
  if (err == UVMQTT_EKEEPALIVE && c->transport_active &&
      uvmqtt__transport_acked_progress(&c->tr, c->ping_mark ? c->ping_mark : UINT64_MAX)) {
    uvmqtt__session_alive(&c->sess, now);
    err = 0;
  }
  if (err) uvmqtt__client_lost(c, err);
  flush(c);
  uvmqtt__client_arm(c);
}

/* ---- Session events
 * ------------------------------------------------------------------------------- */

static int ev_connack(void *owner, const uvmqtt_packet_t *p) {
  uvmqtt__client_t *c = owner;
  uvmqtt__loop_release(c->lp, c); /* the attempt is over: the next may start */
  c->last_reason = p->reason;
  if (p->reason != 0) return 0; /* the session reports UVMQTT_EREFUSED next */
  uint64_t now = uvmqtt__now(c);
  c->state = UVMQTT__C_CONNECTED;
  c->connected_at = now;
  c->attempt = 0;
  c->failures = 0;
  c->down_since = 0;
  c->stat_connected = 1;
  uvmqtt__servers_good(c);
  if (c->ever_connected) c->stat_reconnects++;
  c->ever_connected = 1;
  if (c->cfg->version == UVMQTT_V5 &&
      UVMQTT_HAS(&p->props, UVMQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER)) {
    uvmqtt_bytes_t id = p->props.assigned_client_identifier;
    char *copy = uvmqtt__malloc(id.len + 1);
    if (copy) {
      memcpy(copy, id.data, id.len);
      copy[id.len] = '\0';
      if (c->client_id != uvmqtt__client_inline_id(c)) uvmqtt__free(c->client_id);
      c->client_id = copy;
    }
  }
  if (!p->session_present || c->cfg->clean_start) uvmqtt__subs_resend(c, now);
  if (c->cfg->cbs.on_connect) {
    uvmqtt_connack_t ack;
    ack.reason = 0;
    ack.session_present = p->session_present;
    ack.props = c->cfg->version == UVMQTT_V5 ? &p->props : NULL;
    ack.server = uvmqtt__client_uri(c);
    c->cfg->cbs.on_connect(c->handle, 0, &ack);
  }
  uvmqtt__client_schedule_flush(c);
  return c->closing;
}

static int ev_message(void *owner, const uvmqtt_packet_t *p, uvmqtt_bytes_t topic) {
  uvmqtt__client_t *c = owner;
  uvmqtt_message_t m;
  m.topic = topic;
  m.payload = p->u.publish.payload;
  m.qos = p->u.publish.qos;
  m.retain = p->u.publish.retain;
  m.dup = p->u.publish.dup;
  m.packet_id = p->packet_id;
  m.props = c->cfg->version == UVMQTT_V5 ? &p->props : NULL;
  /* A subscription the client gave an identifier to is found by it; the
   * others by matching their filters. */
  uvmqtt__sub_t *s = NULL;
  if (c->extra && c->extra->sub_index != NULL && m.props &&
      (m.props->sub_id_count || UVMQTT_HAS(m.props, UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER)))
    s = uvmqtt__subs_by_id(c, m.props->subscription_id);
  if (s == NULL && c->subs) s = uvmqtt__subs_match(c, topic);
  if (s)
    s->on_message(c->handle, &m, s->arg);
  else if (c->cfg->cbs.on_message)
    c->cfg->cbs.on_message(c->handle, &m, NULL);
  return c->closing;
}

static int ev_publish_done(void *owner, const uvmqtt__done_t *m, int status, uint8_t reason) {
  uvmqtt__client_t *c = owner;
  if (m->cb)
    ((uvmqtt_publish_cb)m->cb)(c->handle, status, reason, m->arg);
  else if (m->restored && c->cfg->cbs.on_restored_done && !c->closing)
    c->cfg->cbs.on_restored_done(c->handle, status, reason, NULL);
  return c->closing;
}

static int ev_request_done(void *owner, uvmqtt__req_t *r, int status, const uvmqtt_packet_t *ack) {
  uvmqtt__client_t *c = owner;
  if (r->arg == &uvmqtt__resubscribe_tag) {
    uvmqtt__subs_resubscribed(c, r->id, status, ack);
    uvmqtt__subs_acked(c, r->id);
    return c->closing;
  }
  if (r->type == UVMQTT_SUBSCRIBE) uvmqtt__subs_acked(c, r->id);
  if (r->cb) {
    const uint8_t *codes = ack ? ack->u.suback.codes : NULL;
    size_t count = ack ? ack->u.suback.count : 0;
    ((uvmqtt_subscribe_cb)r->cb)(c->handle, status, codes, count, r->arg);
  }
  return c->closing;
}

static int ev_disconnect(void *owner, const uvmqtt_packet_t *p) {
  uvmqtt__client_t *c = owner;
  c->last_reason = p->reason;
  return c->closing;
}

static void ev_stored(void *owner, void *arg, int status) {
  uvmqtt__client_t *c = owner;
  if (c->cfg->cbs.on_stored && !c->closing) c->cfg->cbs.on_stored(c->handle, status, arg);
}

static void ev_wake(void *owner) {
  uvmqtt__client_schedule_flush(owner);
}

static uint64_t ev_now(void *owner) {
  return uvmqtt__now(owner);
}

/* A step of the enhanced authentication: the mechanism answers a continue,
 * and checks the broker's last word at success. */
static int ev_auth(void *owner, const uvmqtt_packet_t *p) {
  uvmqtt__client_t *c = owner;
  const uvmqtt__auth_t *a = c->extra ? c->extra->auth : NULL;
  if (a == NULL || a->fn == NULL) return UVMQTT_EAUTH;
  uvmqtt_bytes_t in = {(const uint8_t *)"", 0};
  if (UVMQTT_HAS(&p->props, UVMQTT_PROP_AUTHENTICATION_DATA)) in = p->props.authentication_data;
  uint8_t reason = p->type == UVMQTT_CONNACK ? 0x00 : p->reason;
  uvmqtt_auth_reply_t out = {NULL, 0};
  if (a->fn(a->state, &in, reason, &out) < 0) return UVMQTT_EAUTH;
  if (c->closing) return 1;
  if (reason != 0x18) return 0;
  if (out.len > 65535 || (out.len && out.data == NULL)) return UVMQTT_EAUTH;
  uvmqtt_bytes_t data = {out.data, (uint32_t)out.len};
  int err = uvmqtt__session_auth(&c->sess, 0x18, &data, uvmqtt__now(c));
  return err == UVMQTT_ENOTCONN ? 0 : err;
}

const uvmqtt__session_events_t uvmqtt__client_session_events = {
    ev_connack, ev_message, ev_publish_done, ev_request_done, ev_disconnect,
    ev_stored,  ev_wake,    ev_now,          ev_auth};

/* ---- Close
 * ---------------------------------------------------------------------------------------- */

/* Every handle of the client is closed: free it, then tell the caller. */
static void finish_close(uvmqtt__client_t *c) {
  uvmqtt_client_t *handle = c->handle;
  uvmqtt_close_cb cb = c->close_cb;
  uvmqtt__loop_t *lp = c->lp;
  uvmqtt__loop_schedule(lp, c, 0);
  uvmqtt__client_free(c);
  handle->impl = NULL;
  uvmqtt__loop_unref(lp);
  if (cb) cb(handle);
}

void uvmqtt__client_begin_close(uvmqtt__client_t *c) {
  c->closing = 1;
  c->stat_connected = 0;
  uvmqtt__loop_release(c->lp, c);
  if (c->transport_active)
    close_transport(c);
  else
    uvmqtt__client_arm(c);
}
