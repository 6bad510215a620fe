#include "uvmqtt/errors.h"

#include <uv.h>

const char *uvmqtt_strerror(int err) {
  switch (err) {
#define UVMQTT_STRERROR_CASE(name, val, reason, msg)                                               \
  case UVMQTT_##name: return msg;
    UVMQTT_ERRNO_MAP(UVMQTT_STRERROR_CASE)
#undef UVMQTT_STRERROR_CASE
  default: break;
  }
  /* libuv answers for its own range and says "Unknown system error" else. */
  if (err < 0 && err > -30000) return uv_strerror(err);
  return "unknown error";
}

const char *uvmqtt_err_name(int err) {
  switch (err) {
#define UVMQTT_ERR_NAME_CASE(name, val, reason, msg)                                               \
  case UVMQTT_##name: return "UVMQTT_" #name;
    UVMQTT_ERRNO_MAP(UVMQTT_ERR_NAME_CASE)
#undef UVMQTT_ERR_NAME_CASE
  default: break;
  }
  if (err < 0 && err > -30000) return uv_err_name(err);
  return "UNKNOWN";
}

int uvmqtt_err_reason(int err) {
  switch (err) {
#define UVMQTT_ERR_REASON_CASE(name, val, reason, msg)                                             \
  case UVMQTT_##name: return (reason) ? (reason) : 0x80;
    UVMQTT_ERRNO_MAP(UVMQTT_ERR_REASON_CASE)
#undef UVMQTT_ERR_REASON_CASE
  default: return 0x80;
  }
}
