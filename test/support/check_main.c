/* Runs the one suite a test executable defines, in Check's fork mode, and
 * prints Check's summary line. */
#include <check.h>
#include <stdlib.h>

Suite *uvmqtt_test_suite(void);

int main(void) {
  SRunner *runner = srunner_create(uvmqtt_test_suite());
  srunner_set_fork_status(runner, CK_FORK);
  srunner_run_all(runner, CK_NORMAL);
  int failed = srunner_ntests_failed(runner);
  srunner_free(runner);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
