/** \file
 * uvmqtt: delivery policies, what happens to a message while the client is offline.
 *
 * Free of libuv, so the codec and session layers can use it; <uvmqtt.h>
 * includes it.
 */
#ifndef UVMQTT_DELIVERY_H
#define UVMQTT_DELIVERY_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Delivery policy ------------------------------------------------------ */

/** Delivery policies: what happens to a message that cannot go out now. */
typedef enum {
  UVMQTT_DELIVERY_DEFAULT = 0, /**< use the client's default */
  /** Not connected: uvmqtt_publish() returns UVMQTT_ENOTCONN at once (no
   * callback). Connected: sent once; if the connection drops before the ack, it
   * completes with the connection's error. Never queued, never retried. */
  UVMQTT_DELIVERY_DROP,
  /** Queued while offline, resent after reconnects, until acknowledged or
   * until `deadline_ms` after the publish call. At the deadline a message
   * that was never handed to the socket completes with UVMQTT_EEXPIRED and is
   * never sent afterwards. One that was handed to the socket (it may have
   * reached the broker) is not expired: it completes when acknowledged, or
   * with the connection's error if the connection drops after the deadline. */
  UVMQTT_DELIVERY_DEADLINE,
  /** Kept until acknowledged across any number of reconnects. */
  UVMQTT_DELIVERY_UNTIL_DELIVERED,
  /** The client's `decide` callback says, at each connection loss, whether the
   * message is kept (return 1) or dropped (return 0: it completes with the
   * connection's error). */
  UVMQTT_DELIVERY_CUSTOM
} uvmqtt_delivery_kind_t;

/** A delivery policy with its parameter. */
typedef struct {
  uint8_t kind;         /**< uvmqtt_delivery_kind_t */
  uint32_t deadline_ms; /**< for UVMQTT_DELIVERY_DEADLINE */
} uvmqtt_delivery_t;

/** What a custom delivery policy sees about one message. */
typedef struct {
  uvmqtt_bytes_t topic; /**< the topic name, a view */
  uint32_t payload_len; /**< payload bytes */
  uint8_t qos;          /**< 0, 1 or 2 */
  uint8_t sent;         /**< handed to the socket at least once */
  uint64_t age_ms;      /**< since the publish call */
  void *arg;            /**< the publish's arg */
} uvmqtt_pending_info_t;

/** A custom delivery policy: returns 1 to keep the message after a connection loss with `status`, 0
 * to drop it. */
typedef int (*uvmqtt_delivery_decide_fn)(void *state, const uvmqtt_pending_info_t *msg, int status);

/** What happens when the offline queue is full. */
typedef enum {
  UVMQTT_OVERFLOW_REJECT_NEW = 0, /**< the new publish fails with UVMQTT_EQUEUEFULL */
  UVMQTT_OVERFLOW_DROP_OLDEST     /**< the oldest unsent message completes with UVMQTT_EDROPPED */
} uvmqtt_overflow_t;

#ifdef __cplusplus
}
#endif
#endif
