/* Certificates made at test time with the `openssl` command, for the TLS
 * tests of the library and of the command-line tools. */
#ifndef UVMQTT_TEST_CERTS_H
#define UVMQTT_TEST_CERTS_H

/* The password of client-enc.key. */
#define TEST_KEY_PASSWORD "hunter2"

/* Writes into the existing directory `dir` (P-256 keys, PEM):
 *   ca.crt/key         a test CA;
 *   other.crt/key      an unrelated CA that signed nothing here;
 *   server.crt/key     localhost and 127.0.0.1, signed by ca;
 *   wronghost.crt/key  wrong.example only, signed by ca;
 *   client.crt/key     a client certificate signed by ca;
 *   client-enc.key     client.key encrypted with TEST_KEY_PASSWORD;
 *   expired.crt/key    localhost, valid in January 2020 only.
 * The keys are world-readable: Mosquitto drops root's privileges before
 * reading them. The output of openssl goes to dir/make.log. Returns 0, or
 * the exit status of the script. */
int test_make_certs(const char *dir);

/* One certificate directory per test process, for suites that need the
 * certificates: test_certs_dir_make() (an unchecked fixture: it runs in
 * Check's parent process, before the forks) makes a temporary directory and
 * the certificates in it, test_certs_dir_remove() removes it. */
void test_certs_dir_make(void);
void test_certs_dir_remove(void);

/* The path of `name` in that directory. Options copy their strings, so a
 * few rotating buffers are enough. */
const char *test_cert(const char *name);

#endif
