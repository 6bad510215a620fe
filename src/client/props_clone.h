/* Deep copies of property sets, so the client keeps options the caller may
 * free after init. */
#ifndef UVMQTT_PROPS_CLONE_H
#define UVMQTT_PROPS_CLONE_H

#include "uvmqtt/codec.h"

/* Returns a heap copy of `src` (one allocation holding every string and
 * list), or NULL when src is NULL or on out of memory (*err is then set to
 * UVMQTT_ENOMEM). Free with uvmqtt__free. */
uvmqtt_props_t *uvmqtt__props_clone(const uvmqtt_props_t *src, int *err);

#endif
