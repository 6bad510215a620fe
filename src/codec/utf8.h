/* UTF-8 scanning shared by the string and topic checks. */
#ifndef UVMQTT_UTF8_H
#define UVMQTT_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* uvmqtt_utf8_check() that, when `reject_wildcards` is set, also refuses
 * '+' and '#' in the same pass. Returns 0, UVMQTT_EBADUTF8 or
 * UVMQTT_ETOPICWILD for the first problem from the left. */
int uvmqtt__utf8_scan(const uint8_t *s, size_t len, int reject_wildcards);

#endif
