#include <check.h>
#include <string.h>

#include "uvmqtt.h"

START_TEST(errors_strerror_ours_and_libuv) {
  ck_assert_str_eq(uvmqtt_strerror(UVMQTT_EMALFORMED), "malformed packet");
  ck_assert_str_eq(uvmqtt_err_name(UVMQTT_EKEEPALIVE), "UVMQTT_EKEEPALIVE");
  /* libuv codes pass through to libuv's own table. */
  ck_assert_str_eq(uvmqtt_strerror(UV_ECONNREFUSED), uv_strerror(UV_ECONNREFUSED));
  ck_assert_str_eq(uvmqtt_err_name(UV_EOF), "EOF");
  ck_assert_str_eq(uvmqtt_strerror(-29999999), "unknown error");
}
END_TEST

START_TEST(errors_reason_codes) {
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_EMALFORMED), 0x81);
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_EPROTOCOL), 0x82);
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_ETOOLARGE), 0x95);
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_ENOMEM), 0x80);
}
END_TEST

START_TEST(errors_codes_distinct_from_libuv) {
#define CHECK_RANGE(name, val, reason, msg)                                                        \
  ck_assert_int_lt(UVMQTT_##name, -30000);                                                         \
  ck_assert_str_ne(uvmqtt_err_name(UVMQTT_##name), "UNKNOWN");
  UVMQTT_ERRNO_MAP(CHECK_RANGE)
#undef CHECK_RANGE
}
END_TEST

START_TEST(errors_version_string) {
  ck_assert_str_eq(uvmqtt_version_string(), "0.1.0");
  ck_assert_uint_eq(uvmqtt_version(), UVMQTT_VERSION_HEX);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("errors");
  TCase *tc = tcase_create("table");
  tcase_add_test(tc, errors_strerror_ours_and_libuv);
  tcase_add_test(tc, errors_reason_codes);
  tcase_add_test(tc, errors_codes_distinct_from_libuv);
  tcase_add_test(tc, errors_version_string);
  suite_add_tcase(s, tc);
  return s;
}
