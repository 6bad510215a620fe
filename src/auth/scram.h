/* The built-in SCRAM-SHA-256 mechanism (RFC 5802, RFC 7677) for MQTT 5
 * enhanced authentication. Built with OpenSSL, above the sans-I/O core. */
#ifndef UVMQTT_AUTH_SCRAM_H
#define UVMQTT_AUTH_SCRAM_H

#include "uvmqtt.h"

/* The mechanism's callback (uvmqtt_auth_t.auth) over its state. */
int uvmqtt__scram_step(void *state, const uvmqtt_bytes_t *in_data, uint8_t reason,
                       uvmqtt_auth_reply_t *out);

/* Fixes the client nonce of the next exchange (printable ASCII, no ','),
 * for checking against published test vectors. Returns 0 or
 * UVMQTT_EINVAL / UVMQTT_ENOMEM. */
int uvmqtt__scram_set_nonce(void *state, const char *nonce);

#endif
