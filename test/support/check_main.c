/* Runs the one suite a test executable defines and prints Check's summary
 * line. Fork mode is Check's default, so a crash fails one test, not the
 * run; CK_FORK=no (for valgrind and debuggers) runs the tests in-process. */
#include <check.h>
#include <stdlib.h>

Suite *uvmqtt_test_suite(void);

int main(void) {
  SRunner *runner = srunner_create(uvmqtt_test_suite());
  srunner_run_all(runner, CK_NORMAL);
  int failed = srunner_ntests_failed(runner);
  srunner_free(runner);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
