/* Decode one packet, encode it, decode it again: both decodes must agree.
 *
 * Input: byte 0 picks the protocol version (low bit: 0 for 3.1.1, 1 for
 * 5.0; a CONNECT's own protocol level wins), the rest is one packet. */
#include <stdint.h>
#include <string.h>

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t version = (data[0] & 1) ? UVMQTT_V5 : UVMQTT_V311;
  uvmqtt_packet_t pkt;
  memset(&pkt, 0, sizeof pkt);
  int rc = uvmqtt_decode_packet(data + 1, size - 1, version, &pkt);
  if (rc != 0) {
    if (!fuzz_is_codec_error(rc)) fuzz_fail("decode_packet", "not a codec error");
    return 0;
  }
  if (pkt.type == UVMQTT_CONNECT) version = pkt.u.connect.protocol_level;
  fuzz_reencode(&pkt, version);
  return 0;
}
