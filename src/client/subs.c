/* The client's stored subscriptions: per-subscription callbacks and the
 * re-subscription after a reconnect that found no session. */
#include <string.h>

#include "base/alloc.h"
#include "client/client_impl.h"
#include "client/props_clone.h"

const char uvmqtt__resubscribe_tag = 0;

static uvmqtt__sub_t *find(uvmqtt__client_t *c, const uint8_t *filter, size_t len,
                           uvmqtt__sub_t ***link_out) {
  for (uvmqtt__sub_t **link = &c->subs; *link; link = &(*link)->next) {
    uvmqtt__sub_t *s = *link;
    if (s->len == len && memcmp(s->filter, filter, len) == 0) {
      if (link_out) *link_out = link;
      return s;
    }
  }
  return NULL;
}

/* ---- The identifier index (sub_id_dispatch) ---------------------------------- */

static uint32_t slot_of(uint32_t id, uint32_t cap) {
  return (id * 2654435761u) & (cap - 1); /* Knuth's multiplicative hash */
}

static void index_put(uvmqtt__sub_t **tab, uint32_t cap, uvmqtt__sub_t *s) {
  uint32_t i = slot_of(s->sub_id, cap);
  while (tab[i] != NULL && tab[i]->sub_id != s->sub_id)
    i = (i + 1) & (cap - 1);
  if (tab[i] == NULL) tab[i] = s;
}

/* Adds s under its identifier (one entry per identifier: the calls' filters
 * share it and their callback). Out of memory leaves it out: its messages
 * are then matched by filter. */
static void index_add(uvmqtt__client_t *c, uvmqtt__sub_t *s) {
  /* An identifier was given from the extra block, so it exists. */
  uvmqtt__client_extra_t *x = c->extra;
  if (s->sub_id == 0 || x == NULL) return;
  if ((x->sub_index_len + 1) * 2 > x->sub_index_cap) {
    uint32_t cap = x->sub_index_cap ? x->sub_index_cap * 2 : 64;
    uvmqtt__sub_t **tab = uvmqtt__calloc(cap, sizeof *tab);
    if (tab == NULL) return;
    for (uint32_t i = 0; i < x->sub_index_cap; i++)
      if (x->sub_index[i]) index_put(tab, cap, x->sub_index[i]);
    uvmqtt__free(x->sub_index);
    x->sub_index = tab;
    x->sub_index_cap = cap;
  }
  if (uvmqtt__subs_by_id(c, s->sub_id) == NULL) x->sub_index_len++;
  index_put(x->sub_index, x->sub_index_cap, s);
}

/* After removals: the index again from the list (rare: unsubscribes). */
static void index_rebuild(uvmqtt__client_t *c) {
  uvmqtt__client_extra_t *x = c->extra;
  if (x == NULL || x->sub_index == NULL) return;
  memset(x->sub_index, 0, x->sub_index_cap * sizeof *x->sub_index);
  x->sub_index_len = 0;
  for (uvmqtt__sub_t *s = c->subs; s; s = s->next)
    index_add(c, s);
}

uvmqtt__sub_t *uvmqtt__subs_by_id(uvmqtt__client_t *c, uint32_t id) {
  const uvmqtt__client_extra_t *x = c->extra;
  if (x == NULL || x->sub_index == NULL || id == 0) return NULL;
  for (uint32_t i = slot_of(id, x->sub_index_cap); x->sub_index[i] != NULL;
       i = (i + 1) & (x->sub_index_cap - 1))
    if (x->sub_index[i]->sub_id == id) return x->sub_index[i];
  return NULL;
}

static void sub_free(uvmqtt__sub_t *s) {
  uvmqtt__free(s->props);
  uvmqtt__free(s);
}

void uvmqtt__subs_discard(uvmqtt__subs_batch_t *b) {
  for (size_t i = 0; i < b->count; i++)
    if (b->entries[i]) sub_free(b->entries[i]);
  uvmqtt__free(b->entries);
  memset(b, 0, sizeof *b);
}

int uvmqtt__subs_prepare(uvmqtt__client_t *c, const uvmqtt_topic_sub_t *subs, size_t count,
                         const uvmqtt_props_t *props, uvmqtt_message_cb cb, void *arg,
                         uvmqtt__subs_batch_t *b) {
  memset(b, 0, sizeof *b);
  b->entries = uvmqtt__calloc(count, sizeof *b->entries);
  if (b->entries == NULL) return UVMQTT_ENOMEM;
  b->count = count;
  uint32_t batch = ++c->sub_batches;
  int err = 0;
  for (size_t i = 0; i < count && err == 0; i++) {
    const uvmqtt_topic_sub_t *in = &subs[i];
    uvmqtt__sub_t *s = uvmqtt__malloc(sizeof *s + in->filter.len + 1);
    if (s == NULL) {
      err = UVMQTT_ENOMEM;
      break;
    }
    memset(s, 0, sizeof *s);
    b->entries[i] = s;
    s->len = (uint16_t)in->filter.len;
    memcpy(s->filter, in->filter.data, in->filter.len);
    s->filter[in->filter.len] = '\0';
    s->options = in->options;
    s->on_message = cb;
    s->arg = arg;
    s->batch = batch;
    /* The identifier the client gave this call, or 0. */
    s->sub_id = c->extra ? c->extra->giving_sub_id : 0;
    s->is_new = find(c, in->filter.data, in->filter.len, NULL) == NULL;
    if (props && c->cfg->version == UVMQTT_V5) s->props = uvmqtt__props_clone(props, &err);
  }
  if (err) uvmqtt__subs_discard(b);
  return err;
}

void uvmqtt__subs_commit(uvmqtt__client_t *c, uvmqtt__subs_batch_t *b, uint16_t req_id) {
  for (size_t i = 0; i < b->count; i++) {
    uvmqtt__sub_t *s = b->entries[i];
    b->entries[i] = NULL;
    s->req_id = req_id;
    uvmqtt__sub_t **link;
    uvmqtt__sub_t *old = find(c, (const uint8_t *)s->filter, s->len, &link);
    if (old) {
      /* The same filter again: the new entry takes its place in the order. */
      s->next = old->next;
      *link = s;
      int indexed = old->sub_id != 0;
      sub_free(old);
      if (indexed) index_rebuild(c);
      index_add(c, s);
      continue;
    }
    /* Appended, so dispatch and re-subscription keep the caller's order. */
    s->next = NULL;
    uvmqtt__sub_t **tail = &c->subs;
    while (*tail)
      tail = &(*tail)->next;
    *tail = s;
    index_add(c, s);
  }
  uvmqtt__subs_discard(b);
}

void uvmqtt__subs_remove(uvmqtt__client_t *c, const char *const *filters, size_t count) {
  int indexed = 0;
  for (size_t i = 0; i < count; i++) {
    uvmqtt__sub_t **link;
    uvmqtt__sub_t *s = find(c, (const uint8_t *)filters[i], strlen(filters[i]), &link);
    if (s) {
      *link = s->next;
      indexed |= s->sub_id != 0;
      sub_free(s);
    }
  }
  if (indexed) index_rebuild(c);
}

uvmqtt__sub_t *uvmqtt__subs_match(uvmqtt__client_t *c, uvmqtt_bytes_t topic) {
  for (uvmqtt__sub_t *s = c->subs; s; s = s->next) {
    if (s->on_message &&
        uvmqtt_topic_match((const uint8_t *)s->filter, s->len, topic.data, topic.len))
      return s;
  }
  return NULL;
}

void uvmqtt__subs_acked(uvmqtt__client_t *c, uint16_t req_id) {
  for (uvmqtt__sub_t *s = c->subs; s; s = s->next)
    if (s->req_id == req_id) s->req_id = 0;
}

static void report(uvmqtt__client_t *c, const uvmqtt__sub_t *s, int status, uint8_t reason) {
  if (c->cfg->cbs.on_resubscribe && !c->closing)
    c->cfg->cbs.on_resubscribe(c->handle, status, s->filter, reason);
}

void uvmqtt__subs_resubscribed(uvmqtt__client_t *c, uint16_t req_id, int status,
                               const uvmqtt_packet_t *ack) {
  size_t i = 0;
  for (uvmqtt__sub_t *s = c->subs; s && !c->closing; s = s->next) {
    if (s->req_id != req_id) continue;
    uint8_t reason = 0;
    if (ack && status == 0) reason = i < ack->u.suback.count ? ack->u.suback.codes[i] : 0x80;
    i++;
    report(c, s, status, reason);
  }
}

/* Queues one SUBSCRIBE for subs [first, end) that have req_id 0. */
static int send_chunk(uvmqtt__client_t *c, uvmqtt__sub_t *first, uvmqtt__sub_t *end,
                      uvmqtt_topic_sub_t *list, uint64_t now) {
  size_t n = 0;
  for (uvmqtt__sub_t *s = first; s != end; s = s->next) {
    if (s->req_id != 0) continue;
    list[n].filter.data = (const uint8_t *)s->filter;
    list[n].filter.len = s->len;
    list[n].options = s->options;
    n++;
  }
  if (n == 0) return 0;
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_SUBSCRIBE;
  p.u.subscribe.subs = list;
  p.u.subscribe.count = (uint32_t)n;
  if (first->props) p.props = *first->props;
  int err = uvmqtt__session_request(&c->sess, &p, NULL, (void *)&uvmqtt__resubscribe_tag, now);
  if (err) {
    for (uvmqtt__sub_t *s = first; s != end && !c->closing; s = s->next)
      if (s->req_id == 0) report(c, s, err, 0);
    return err;
  }
  for (uvmqtt__sub_t *s = first; s != end; s = s->next)
    if (s->req_id == 0) s->req_id = c->sess.last_req_id;
  return 0;
}

/* The size of a SUBSCRIBE holding `n` filters of `list` with `props`. */
static ssize_t chunk_size(uvmqtt__client_t *c, const uvmqtt_topic_sub_t *list, size_t n,
                          const uvmqtt_props_t *props) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_SUBSCRIBE;
  p.packet_id = 1;
  p.u.subscribe.subs = list;
  p.u.subscribe.count = (uint32_t)n;
  if (props) p.props = *props;
  return uvmqtt_encode_size(&p, c->cfg->version);
}

void uvmqtt__subs_resend(uvmqtt__client_t *c, uint64_t now) {
  /* Filters whose SUBSCRIBE is still unacknowledged go again with that
   * request (the session resends it): sending them here too would subscribe
   * twice and deliver retained messages twice. */
  size_t count = 0;
  for (uvmqtt__sub_t *s = c->subs; s; s = s->next)
    count += s->req_id == 0;
  if (count == 0) return;
  uvmqtt_topic_sub_t *list = uvmqtt__calloc(count, sizeof *list);
  if (list == NULL) {
    for (uvmqtt__sub_t *s = c->subs; s && !c->closing; s = s->next)
      if (s->req_id == 0) report(c, s, UVMQTT_ENOMEM, 0);
    return;
  }
  uint32_t max = c->sess.broker_max_packet;
  uvmqtt__sub_t *s = c->subs;
  while (s && !c->closing) {
    if (s->req_id != 0) {
      s = s->next;
      continue;
    }
    /* A chunk: the following entries of the same call while they fit. */
    uvmqtt__sub_t *first = s, *end = s;
    size_t n = 0;
    while (end && (end->batch == first->batch || end->req_id != 0)) {
      if (end->req_id == 0) {
        list[n].filter.data = (const uint8_t *)end->filter;
        list[n].filter.len = end->len;
        list[n].options = end->options;
        ssize_t size = chunk_size(c, list, n + 1, first->props);
        if (n > 0 && (size < 0 || (max && (size_t)size > max))) break;
        n++;
      }
      end = end->next;
    }
    /* One filter too large alone fails in the session with EPKTTOOBIG,
     * reported for that filter like any other failure. */
    (void)send_chunk(c, first, end, list, now);
    s = end;
  }
  uvmqtt__free(list);
}

void uvmqtt__subs_free(uvmqtt__client_t *c) {
  if (c->extra != NULL) {
    uvmqtt__free(c->extra->sub_index);
    c->extra->sub_index = NULL;
    c->extra->sub_index_cap = c->extra->sub_index_len = 0;
  }
  while (c->subs) {
    uvmqtt__sub_t *s = c->subs;
    c->subs = s->next;
    sub_free(s);
  }
}
