#include "uvmqtt.h"

#define UVMQTT_STR2(x) #x
#define UVMQTT_STR(x)  UVMQTT_STR2(x)

const char *uvmqtt_version_string(void) {
  return UVMQTT_STR(UVMQTT_VERSION_MAJOR) "." UVMQTT_STR(UVMQTT_VERSION_MINOR) "." UVMQTT_STR(
      UVMQTT_VERSION_PATCH);
}

unsigned uvmqtt_version(void) {
  return UVMQTT_VERSION_HEX;
}
