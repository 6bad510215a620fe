/* The client's stored subscriptions: per-subscription callbacks and the
 * re-subscription after a reconnect that found no session. */
#include <string.h>

#include "base/alloc.h"
#include "client/client_impl.h"

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

int uvmqtt__subs_add(uvmqtt__client_t *c, const uvmqtt_topic_sub_t *subs, size_t count,
                     uvmqtt_message_cb cb, void *arg, uint16_t req_id) {
  for (size_t i = 0; i < count; i++) {
    const uvmqtt_topic_sub_t *in = &subs[i];
    uvmqtt__sub_t *s = find(c, in->filter.data, in->filter.len, NULL);
    if (s == NULL) {
      s = uvmqtt__malloc(sizeof *s + in->filter.len + 1);
      if (s == NULL) return UVMQTT_ENOMEM;
      s->len = (uint16_t)in->filter.len;
      memcpy(s->filter, in->filter.data, in->filter.len);
      s->filter[in->filter.len] = '\0';
      /* Appended, so dispatch and re-subscription keep the caller's order. */
      s->next = NULL;
      uvmqtt__sub_t **tail = &c->subs;
      while (*tail)
        tail = &(*tail)->next;
      *tail = s;
    }
    s->options = in->options;
    s->on_message = cb;
    s->arg = arg;
    s->req_id = req_id;
  }
  return 0;
}

void uvmqtt__subs_remove(uvmqtt__client_t *c, const char *const *filters, size_t count) {
  for (size_t i = 0; i < count; i++) {
    uvmqtt__sub_t **link;
    uvmqtt__sub_t *s = find(c, (const uint8_t *)filters[i], strlen(filters[i]), &link);
    if (s) {
      *link = s->next;
      uvmqtt__free(s);
    }
  }
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

int uvmqtt__subs_resend(uvmqtt__client_t *c, uint64_t now) {
  /* Filters whose SUBSCRIBE is still unacknowledged go again with that
   * request (the session resends it): sending them here too would subscribe
   * twice and deliver retained messages twice. */
  size_t count = 0;
  for (uvmqtt__sub_t *s = c->subs; s; s = s->next)
    count += s->req_id == 0;
  if (count == 0) return 0;
  uvmqtt_topic_sub_t *list = uvmqtt__calloc(count, sizeof *list);
  if (list == NULL) return UVMQTT_ENOMEM;
  size_t i = 0;
  for (uvmqtt__sub_t *s = c->subs; s; s = s->next) {
    if (s->req_id != 0) continue;
    list[i].filter.data = (const uint8_t *)s->filter;
    list[i].filter.len = s->len;
    list[i].options = s->options;
    i++;
  }
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = UVMQTT_SUBSCRIBE;
  p.u.subscribe.subs = list;
  p.u.subscribe.count = (uint32_t)count;
  int err = uvmqtt__session_request(&c->sess, &p, NULL, NULL, now);
  uvmqtt__free(list);
  if (err) return err;
  for (uvmqtt__sub_t *s = c->subs; s; s = s->next)
    if (s->req_id == 0) s->req_id = c->sess.last_req_id;
  return 0;
}

void uvmqtt__subs_free(uvmqtt__client_t *c) {
  while (c->subs) {
    uvmqtt__sub_t *s = c->subs;
    c->subs = s->next;
    uvmqtt__free(s);
  }
}
