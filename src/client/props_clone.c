#include "client/props_clone.h"

#include <string.h>

#include "base/alloc.h"

/* Each string-valued field, so size and copy walk the same list. */
#define PROPS_STRINGS(XX)                                                                          \
  XX(content_type)                                                                                 \
  XX(response_topic)                                                                               \
  XX(correlation_data)                                                                             \
  XX(assigned_client_identifier)                                                                   \
  XX(authentication_method)                                                                        \
  XX(authentication_data)                                                                          \
  XX(response_information)                                                                         \
  XX(server_reference)                                                                             \
  XX(reason_string)

static void copy_bytes(uvmqtt_bytes_t *b, uint8_t **cursor) {
  if (b->len == 0) return;
  memcpy(*cursor, b->data, b->len);
  b->data = *cursor;
  *cursor += b->len;
}

uvmqtt_props_t *uvmqtt__props_clone(const uvmqtt_props_t *src, int *err) {
  *err = 0;
  if (src == NULL) return NULL;
  size_t size = sizeof *src;
#define SIZE_STR(f) size += src->f.len;
  PROPS_STRINGS(SIZE_STR)
#undef SIZE_STR
  size += (size_t)src->user_count * sizeof(uvmqtt_user_prop_t);
  for (uint32_t i = 0; i < src->user_count; i++)
    size += src->user[i].key.len + src->user[i].value.len;
  size += (size_t)src->sub_id_count * sizeof(uint32_t);
  size += sizeof(void *); /* slack for aligning the arrays */

  uvmqtt_props_t *dst = uvmqtt__malloc(size);
  if (dst == NULL) {
    *err = UVMQTT_ENOMEM;
    return NULL;
  }
  *dst = *src;
  dst->raw.data = NULL;
  dst->raw.len = 0;
  uint8_t *cursor = (uint8_t *)(dst + 1);
  /* The arrays go first, right after the struct, so they stay aligned. */
  uvmqtt_user_prop_t *user = (uvmqtt_user_prop_t *)cursor;
  cursor += (size_t)src->user_count * sizeof *user;
  uint32_t *sub_ids = (uint32_t *)cursor;
  cursor += (size_t)src->sub_id_count * sizeof *sub_ids;
  if (src->user_count) {
    memcpy(user, src->user, src->user_count * sizeof *user);
    for (uint32_t i = 0; i < src->user_count; i++) {
      copy_bytes(&user[i].key, &cursor);
      copy_bytes(&user[i].value, &cursor);
    }
    dst->user = user;
  } else {
    dst->user = NULL;
  }
  if (src->sub_id_count) {
    memcpy(sub_ids, src->sub_ids, src->sub_id_count * sizeof *sub_ids);
    dst->sub_ids = sub_ids;
  } else {
    dst->sub_ids = NULL;
  }
#define COPY_STR(f) copy_bytes(&dst->f, &cursor);
  PROPS_STRINGS(COPY_STR)
#undef COPY_STR
  return dst;
}
