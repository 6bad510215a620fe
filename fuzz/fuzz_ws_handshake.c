/* The HTTP response-head parsers (src/transport/http.c) over arbitrary bytes:
 * the WebSocket upgrade response and a proxy's answer to CONNECT.
 *
 * Input layout: byte 0 picks the parser (bit 0: 0 WebSocket, 1 proxy) and
 * the read size (bits 1-7: 0 the whole input at once, else reads of that
 * many bytes); the rest is what the server sent. The transports call the
 * parser again after every read with everything received so far, so the
 * target does the same and checks that the verdict never changes once
 * given, that a complete head ends with its blank line within the buffer
 * and the size bound, and that only the documented results come back. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/http.h"
#include "uvmqtt/errors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Stops the run so libFuzzer records the input as a crash. */
static void fuzz_fail(const char *what, const char *detail) {
  fprintf(stderr, "fuzz check failed: %s: %s\n", what, detail);
  abort();
}

/* RFC 6455's example: the accept value for "dGhlIHNhbXBsZSBub25jZQ==". */
static const char accept_value[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

static int parse(int proxy, const char *buf, size_t len, size_t *head_len) {
  return proxy ? uvmqtt__proxy_parse_response(buf, len, head_len)
               : uvmqtt__ws_parse_response(buf, len, accept_value, head_len);
}

static int documented(int proxy, int r) {
  if (r == 0 || r == 1) return 1;
  if (proxy) return r == UVMQTT_EPROXYHEADER || r == UVMQTT_EPROXYAUTH || r == UVMQTT_EPROXY;
  return r == UVMQTT_EWSHEADER || r == UVMQTT_EWSHANDSHAKE || r == UVMQTT_EWSUPGRADE ||
         r == UVMQTT_EWSACCEPT || r == UVMQTT_EWSPROTOCOL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int proxy = data[0] & 1;
  size_t step = data[0] >> 1;
  /* A copy of exactly the input's size, so reading past it is caught. */
  size_t len = size - 1;
  char *buf = malloc(len ? len : 1);
  if (buf == NULL) return 0;
  memcpy(buf, data + 1, len);
  int verdict = 0;
  size_t verdict_head = 0;
  size_t n = step == 0 ? len : 0;
  for (;;) {
    size_t head_len = 0;
    int r = parse(proxy, buf, n, &head_len);
    if (!documented(proxy, r)) fuzz_fail("http head", "undocumented result");
    if (verdict != 0 && r != verdict) fuzz_fail("http head", "the verdict changed with more bytes");
    if (r == 1) {
      if (head_len < 4 || head_len > n || head_len > UVMQTT__HTTP_HEAD_MAX)
        fuzz_fail("http head", "head length out of bounds");
      if (memcmp(buf + head_len - 4, "\r\n\r\n", 4) != 0)
        fuzz_fail("http head", "head does not end with a blank line");
      if (verdict == 1 && head_len != verdict_head) fuzz_fail("http head", "head length changed");
      verdict_head = head_len;
    }
    if (r == 0 && n >= UVMQTT__HTTP_HEAD_MAX) fuzz_fail("http head", "unbounded head accepted");
    if (r != 0) verdict = r;
    if (n == len) break;
    n = n + step < len ? n + step : len;
  }
  free(buf);
  return 0;
}
