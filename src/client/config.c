/* Client options, held once for every client of a loop that has the same.
 *
 * A gateway creates thousands of clients with the same servers, TLS
 * settings, credentials template, policies and callbacks; only the client
 * id differs. Copying all of that into each client (a dozen allocations,
 * hundreds of bytes, an SSL_CTX of ~15 KB with its parsed CAs) is what made
 * an idle client cost more than libmosquitto's. Instead the options are
 * reduced to a key (their bytes, strings by content) and looked up among
 * the loop's configurations: a client with options seen before takes a
 * reference to that configuration, TLS context included. A context the
 * application built (uvmqtt_tls_context_new) is part of the key by its
 * address, and each configuration using it holds a reference. */
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "client/client_impl.h"
#include "client/props_clone.h"
#include "client/uri.h"
#include "transport/proxy.h"
#include "transport/tls.h"

/* ---- The key ---------------------------------------------------------------- */

typedef struct {
  uint8_t *buf;
  size_t len, cap;
  int err;
} key_t_;

static void key_put(key_t_ *k, const void *p, size_t n) {
  if (k->err) return;
  if (k->cap - k->len < n) {
    size_t cap = k->cap ? k->cap : 256;
    while (cap - k->len < n)
      cap *= 2;
    uint8_t *b = uvmqtt__realloc(k->buf, cap);
    if (b == NULL) {
      k->err = UVMQTT_ENOMEM;
      return;
    }
    k->buf = b;
    k->cap = cap;
  }
  if (n) memcpy(k->buf + k->len, p, n);
  k->len += n;
}

/* Bytes with their length, or a marker for NULL, so that no two different
 * sequences of strings give the same key. */
static void key_bytes(key_t_ *k, const void *p, size_t n) {
  uint64_t tag = p ? (uint64_t)n : UINT64_MAX;
  key_put(k, &tag, sizeof tag);
  if (p) key_put(k, p, n);
}

static void key_str(key_t_ *k, const char *s) {
  key_bytes(k, s, s ? strlen(s) : 0);
}

/* Every scalar option and every function or state pointer: clients that
 * share a configuration share these exactly. */
typedef struct {
  uint32_t connect_timeout_ms, disconnect_timeout_ms, max_packet_size, max_queued;
  uint64_t max_queued_bytes;
  uint16_t keepalive, max_inflight;
  uint8_t version, clean_start, will_qos, will_retain, overflow, no_reconnect, no_max_packet_size;
  uint8_t has_password, has_will, delivery_kind, has_tls, proxy_from_env;
  uint32_t deadline_ms;
  uvmqtt_reconnect_policy_t reconnect;
  uvmqtt_delivery_decide_fn decide;
  void *decide_state;
  const uvmqtt_store_t *store;
  uvmqtt_callbacks_t cbs;
  uvmqtt_tls_password_cb key_password_cb;
  void *key_password_arg;
  uint16_t tls_min_version;
  uint8_t tls_no_sni, tls_no_resumption, tls_insecure, tls_no_handover;
  const uvmqtt_tls_context_t *tls_context;
} key_scalars_t;

/* Property sets compare by their encoding: a CONNECT carrying both. */
static void key_props(key_t_ *k, const uvmqtt_options_t *o) {
  if (o->version != UVMQTT_V5 || (o->connect_props == NULL && o->will_props == NULL)) {
    key_bytes(k, NULL, 0);
    return;
  }
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_CONNECT;
  p.u.connect.protocol_level = UVMQTT_V5;
  if (o->connect_props) p.props = *o->connect_props;
  if (o->will_props) {
    p.u.connect.will = 1;
    p.u.connect.will_topic.data = (const uint8_t *)"w";
    p.u.connect.will_topic.len = 1;
    p.u.connect.will_props = *o->will_props;
  }
  ssize_t n = uvmqtt_encode_size(&p, UVMQTT_V5);
  if (n < 0) {
    k->err = (int)n;
    return;
  }
  uint8_t *tmp = uvmqtt__malloc((size_t)n);
  if (tmp == NULL) {
    k->err = UVMQTT_ENOMEM;
    return;
  }
  ssize_t w = uvmqtt_encode(&p, UVMQTT_V5, tmp, (size_t)n);
  if (w < 0)
    k->err = (int)w;
  else
    key_bytes(k, tmp, (size_t)w);
  uvmqtt__free(tmp);
}

static int build_key(const uvmqtt_options_t *o, const uvmqtt_callbacks_t *cbs, key_t_ *k) {
  key_scalars_t sc;
  memset(&sc, 0, sizeof sc); /* padding too: the key is compared byte by byte */
  sc.connect_timeout_ms = o->connect_timeout_ms;
  sc.disconnect_timeout_ms = o->disconnect_timeout_ms;
  sc.max_packet_size = o->max_packet_size;
  sc.max_queued = o->max_queued;
  sc.max_queued_bytes = o->max_queued_bytes;
  sc.keepalive = o->keepalive;
  sc.max_inflight = o->max_inflight;
  sc.version = o->version;
  sc.clean_start = o->clean_start;
  sc.will_qos = o->will_qos;
  sc.will_retain = o->will_retain;
  sc.overflow = o->overflow;
  sc.no_reconnect = o->no_reconnect;
  sc.no_max_packet_size = o->no_max_packet_size;
  sc.has_password = o->password != NULL;
  sc.has_will = o->will_topic != NULL;
  sc.delivery_kind = o->delivery.kind;
  sc.deadline_ms = o->delivery.deadline_ms;
  sc.reconnect = o->reconnect;
  sc.decide = o->decide;
  sc.decide_state = o->decide_state;
  sc.store = o->store;
  sc.proxy_from_env = o->proxy_from_env;
  if (cbs) sc.cbs = *cbs;
  /* One source of TLS settings: options to build a context from, or the
   * context itself. */
  if (o->tls && o->tls_context) return UVMQTT_EINVAL;
  sc.tls_context = o->tls_context;
  if (o->tls) {
    sc.has_tls = 1;
    sc.key_password_cb = o->tls->key_password_cb;
    sc.key_password_arg = o->tls->key_password_arg;
    sc.tls_min_version = o->tls->min_version;
    sc.tls_no_sni = o->tls->no_sni;
    sc.tls_no_resumption = o->tls->no_resumption;
    sc.tls_insecure = o->tls->insecure;
    sc.tls_no_handover = o->tls->no_handover;
  }
  key_put(k, &sc, sizeof sc);
  size_t n = o->uri_count ? o->uri_count : 1;
  key_put(k, &n, sizeof n);
  for (size_t i = 0; i < n; i++)
    key_str(k, o->uri_count ? o->uris[i] : o->uri);
  key_str(k, o->bind_address);
  key_str(k, o->ws_path);
  key_str(k, o->ws_origin);
  key_put(k, &o->ws_header_count, sizeof o->ws_header_count);
  for (size_t i = 0; o->ws_headers && i < o->ws_header_count; i++)
    key_str(k, o->ws_headers[i]);
  key_str(k, o->proxy);
  key_str(k, o->username);
  key_bytes(k, o->password, o->password ? o->password_len : 0);
  key_str(k, o->will_topic);
  key_bytes(k, o->will_topic ? o->will_payload : NULL, o->will_payload_len);
  key_props(k, o);
  if (o->tls) {
    const uvmqtt_tls_options_t *t = o->tls;
    if (t->alpn == NULL && t->alpn_count) return UVMQTT_EINVAL;
    key_str(k, t->ca_file);
    key_str(k, t->ca_path);
    key_str(k, t->cert_file);
    key_str(k, t->key_file);
    key_str(k, t->key_password);
    key_str(k, t->ciphers);
    key_str(k, t->ciphersuites);
    key_put(k, &t->alpn_count, sizeof t->alpn_count);
    for (size_t i = 0; i < t->alpn_count; i++)
      key_str(k, t->alpn[i]);
  }
  return k->err;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* ---- Copies ------------------------------------------------------------------- */

static void config_free(uvmqtt__config_t *g) {
  for (uint32_t i = 0; i < g->uri_count; i++)
    uvmqtt__free(g->uris[i]);
  uvmqtt__free(g->uris);
  uvmqtt__free(g->username);
  uvmqtt__free(g->password);
  uvmqtt__free(g->will_topic);
  uvmqtt__free(g->will_payload);
  uvmqtt__free(g->will_props);
  uvmqtt__free(g->connect_props);
  uvmqtt__tls_ctx_free(g->tls);
  uvmqtt__free(g->ws_path);
  uvmqtt__free(g->ws_origin);
  for (size_t i = 0; i < g->ws_header_count; i++)
    uvmqtt__free(g->ws_headers[i]);
  uvmqtt__free(g->ws_headers);
  uvmqtt__free(g->proxy);
  uvmqtt__free(g->key);
  uvmqtt__free(g);
}

static int copy_uris(uvmqtt__config_t *g, const uvmqtt_options_t *o) {
  size_t n = o->uri_count ? o->uri_count : 1;
  if (o->uri_count == 0 && o->uri == NULL) return UVMQTT_EINVAL;
  if (n > 1024) return UVMQTT_EINVAL;
  g->uris = uvmqtt__calloc(n, sizeof *g->uris);
  if (g->uris == NULL) return UVMQTT_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    const char *u = o->uri_count ? o->uris[i] : o->uri;
    uvmqtt__uri_t parsed;
    int err = uvmqtt__uri_parse(u, &parsed);
    if (err) return err;
    err = 0;
    g->uris[i] = uvmqtt__strdup(u, &err);
    if (err) return err;
    g->uri_count = (uint32_t)(i + 1);
  }
  return 0;
}

/* "a.b.c.d", "a.b.c.d:port", "v6" or "[v6]:port". */
static int parse_bind(const char *s, struct sockaddr_storage *out) {
  char host[64];
  long port = 0;
  const char *colon = strrchr(s, ':');
  size_t n;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || (close[1] != '\0' && close[1] != ':')) return UVMQTT_EINVAL;
    n = (size_t)(close - s - 1);
    if (n == 0 || n >= sizeof host) return UVMQTT_EINVAL;
    memcpy(host, s + 1, n);
    host[n] = '\0';
    colon = close[1] == ':' ? close + 1 : NULL;
  } else if (colon != NULL && strchr(s, ':') == colon) {
    n = (size_t)(colon - s); /* IPv4 with a port */
    if (n == 0 || n >= sizeof host) return UVMQTT_EINVAL;
    memcpy(host, s, n);
    host[n] = '\0';
  } else {
    n = strlen(s); /* IPv4, or a bare IPv6 address */
    if (n == 0 || n >= sizeof host) return UVMQTT_EINVAL;
    memcpy(host, s, n + 1);
    colon = NULL;
  }
  if (colon != NULL) {
    char *end;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535) return UVMQTT_EINVAL;
  }
  memset(out, 0, sizeof *out);
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0) return 0;
  if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) == 0) return 0;
  return UVMQTT_EINVAL;
}

static int copy_proxy(uvmqtt__config_t *g, const uvmqtt_options_t *o) {
  g->proxy_from_env = o->proxy_from_env;
  if (o->proxy == NULL) return 0;
  g->proxy = uvmqtt__malloc(sizeof *g->proxy);
  if (g->proxy == NULL) return UVMQTT_ENOMEM;
  return uvmqtt__proxy_parse(o->proxy, g->proxy);
}

/* The WebSocket options, checked as the upgrade request will use them, so
 * a header line holding a line break fails init rather than every attempt. */
static int copy_ws_options(uvmqtt__config_t *g, const uvmqtt_options_t *o) {
  if (o->ws_header_count > 0 && o->ws_headers == NULL) return UVMQTT_EINVAL;
  if (o->ws_header_count > 256) return UVMQTT_EINVAL;
  if (o->ws_path != NULL && (o->ws_path[0] != '/' || strpbrk(o->ws_path, " \t\r\n")))
    return UVMQTT_EINVAL;
  if (o->ws_origin != NULL && strpbrk(o->ws_origin, "\r\n")) return UVMQTT_EINVAL;
  int err = 0;
  g->ws_path = uvmqtt__strdup(o->ws_path, &err);
  g->ws_origin = uvmqtt__strdup(o->ws_origin, &err);
  if (err || o->ws_header_count == 0) return err;
  g->ws_headers = uvmqtt__calloc(o->ws_header_count, sizeof *g->ws_headers);
  if (g->ws_headers == NULL) return UVMQTT_ENOMEM;
  for (size_t i = 0; i < o->ws_header_count; i++) {
    const char *h = o->ws_headers[i];
    if (h == NULL || strpbrk(h, "\r\n") || strchr(h, ':') == NULL) return UVMQTT_EINVAL;
    g->ws_headers[i] = uvmqtt__strdup(h, &err);
    if (err) return err;
    g->ws_header_count = i + 1;
  }
  return 0;
}

static int config_new(const uvmqtt_options_t *o, const uvmqtt_callbacks_t *cbs,
                      uvmqtt__config_t **out) {
  uvmqtt__config_t *g = uvmqtt__calloc(1, sizeof *g);
  if (g == NULL) return UVMQTT_ENOMEM;
  if (cbs) g->cbs = *cbs;
  int err = copy_uris(g, o);
  if (err == 0 && o->bind_address) {
    err = parse_bind(o->bind_address, &g->bind);
    g->has_bind = err == 0;
  }
  if (err == 0) {
    g->username = uvmqtt__strdup(o->username, &err);
    if (o->password) {
      g->password = uvmqtt__memdup(o->password, o->password_len, &err);
      g->password_len = o->password_len;
      g->has_password = 1;
    }
    if (o->will_topic) {
      g->will_topic = uvmqtt__strdup(o->will_topic, &err);
      g->will_payload = uvmqtt__memdup(o->will_payload, o->will_payload_len, &err);
      g->will_payload_len = o->will_payload_len;
      g->will_props = uvmqtt__props_clone(o->will_props, &err);
    }
    if (err == 0) g->connect_props = uvmqtt__props_clone(o->connect_props, &err);
  }
  /* Loading CAs and keys now turns a bad file into an init error. */
  int want_tls = o->tls != NULL;
  for (uint32_t i = 0; err == 0 && !want_tls && i < g->uri_count; i++) {
    uvmqtt__uri_t parsed;
    want_tls = uvmqtt__uri_parse(g->uris[i], &parsed) == 0 &&
               (parsed.scheme == UVMQTT__SCHEME_TLS || parsed.scheme == UVMQTT__SCHEME_WSS);
  }
  if (err == 0) err = copy_ws_options(g, o);
  if (err == 0) err = copy_proxy(g, o);
  if (err == 0 && o->tls_context)
    g->tls = uvmqtt__tls_ctx_ref(o->tls_context);
  else if (err == 0 && want_tls)
    err = uvmqtt__tls_ctx_new(o->tls, &g->tls);
  if (err) {
    config_free(g);
    return err;
  }
  g->version = o->version;
  g->clean_start = o->clean_start;
  g->keepalive = o->keepalive;
  g->will_qos = o->will_qos;
  g->will_retain = o->will_retain;
  g->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 10000;
  g->no_reconnect = o->no_reconnect;
  g->no_max_packet_size = o->no_max_packet_size;
  g->disconnect_timeout_ms = o->disconnect_timeout_ms ? o->disconnect_timeout_ms : 2000;
  g->reconnect = o->reconnect;
  if (g->reconnect.fn == NULL && !g->no_reconnect) {
    g->default_backoff.min_ms = 500;
    g->default_backoff.max_ms = 30000;
    g->reconnect.fn = uvmqtt_reconnect_backoff;
    g->reconnect.state = &g->default_backoff;
  }
  g->delivery = o->delivery;
  if (g->delivery.kind == UVMQTT_DELIVERY_DEFAULT)
    g->delivery.kind = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  *out = g;
  return 0;
}

/* ---- Sharing ---------------------------------------------------------------------- */

int uvmqtt__config_get(uvmqtt__loop_t *lp, const uvmqtt_options_t *o, const uvmqtt_callbacks_t *cbs,
                       uvmqtt__config_t **out) {
  key_t_ k;
  memset(&k, 0, sizeof k);
  int err = build_key(o, cbs, &k);
  if (err) {
    uvmqtt__free(k.buf);
    return err;
  }
  uint64_t h = hash_bytes(k.buf, k.len);
  for (uvmqtt__config_t *g = lp->configs; g; g = g->next) {
    if (g->hash == h && g->key_len == k.len && memcmp(g->key, k.buf, k.len) == 0) {
      uvmqtt__free(k.buf);
      g->refs++;
      *out = g;
      return 0;
    }
  }
  uvmqtt__config_t *g;
  err = config_new(o, cbs, &g);
  if (err) {
    uvmqtt__free(k.buf);
    return err;
  }
  g->key = k.buf;
  g->key_len = k.len;
  g->hash = h;
  g->refs = 1;
  g->next = lp->configs;
  lp->configs = g;
  *out = g;
  return 0;
}

void uvmqtt__config_put(uvmqtt__loop_t *lp, uvmqtt__config_t *g) {
  if (g == NULL || --g->refs > 0) return;
  uvmqtt__config_t **pp = &lp->configs;
  while (*pp && *pp != g)
    pp = &(*pp)->next;
  if (*pp) *pp = g->next;
  config_free(g);
}
