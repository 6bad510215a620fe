/* uvmqtt-sub's output: the default and -v layouts, and -F format strings
 * with mosquitto_sub's specifiers, including its JSON (%j, %J). */
#ifndef UVMQTT_CLI_FORMAT_H
#define UVMQTT_CLI_FORMAT_H

#include <stdio.h>

#include "cli_common.h"

/* Checks a -F format string the way mosquitto_sub does before it connects.
 * Returns 0, or -1 after writing the reason into err. */
int cli_format_check(const char *fmt, char *err, size_t cap);

/* Writes one message to `out` as the options ask (-F, -v, -N, --pretty).
 * A %J payload that is not JSON is reported on stderr and leaves its part
 * of the output empty, as with mosquitto_sub. */
void cli_format_message(FILE *out, const cli_opts_t *o, const uvmqtt_message_t *m);

#endif
