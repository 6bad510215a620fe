/* Test certificates: one shell script run with the openssl command. */
#include "certs.h"

#include <sys/stat.h>

#include <stdlib.h>

#include <ftw.h>

#include <check.h>

#include <stdio.h>

#include "broker.h"

static const char make_certs_sh[] =
    "set -e\n"
    "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out \"$1.key\"; }\n"
    "ca() {\n"
    "  key \"$1\"\n"
    "  openssl req -x509 -new -key \"$1.key\" -subj \"/CN=$2\" -days 30 -sha256 \\\n"
    "    -addext basicConstraints=critical,CA:TRUE \\\n"
    "    -addext keyUsage=critical,keyCertSign,cRLSign -out \"$1.crt\"\n"
    "}\n"
    "leaf() {\n"
    "  key \"$1\"\n"
    "  openssl req -new -key \"$1.key\" -subj \"/CN=$2\" -out \"$1.csr\"\n"
    "  printf 'subjectAltName=%s\\nextendedKeyUsage=%s\\nbasicConstraints=CA:FALSE\\n' \\\n"
    "    \"$3\" \"$4\" >\"$1.ext\"\n"
    "  openssl x509 -req -in \"$1.csr\" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \\\n"
    "    -sha256 -extfile \"$1.ext\" -out \"$1.crt\"\n"
    "}\n"
    "ca ca 'uvmqtt test CA'\n"
    "ca other 'uvmqtt unrelated CA'\n"
    "leaf server localhost DNS:localhost,IP:127.0.0.1 serverAuth\n"
    "leaf wronghost wrong.example DNS:wrong.example serverAuth\n"
    "leaf client uvmqtt-client DNS:uvmqtt-client clientAuth\n"
    "openssl pkey -in client.key -aes256 -passout pass:" TEST_KEY_PASSWORD " -out client-enc.key\n"
    /* Valid for January 2020 only: `openssl ca` takes explicit dates. */
    "key expired\n"
    "openssl req -new -key expired.key -subj /CN=localhost -out expired.csr\n"
    "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' "
    ">expired.ext\n"
    ": >index.txt\n"
    "echo 1000 >serial\n"
    "printf '[ca]\\ndefault_ca = t\\n[t]\\ndatabase = index.txt\\nnew_certs_dir = .\\n"
    "serial = serial\\ndefault_md = sha256\\npolicy = p\\nunique_subject = no\\n"
    "[p]\\ncommonName = supplied\\n' >ca.cnf\n"
    "openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in expired.csr \\\n"
    "  -out expired.crt -startdate 20200101000000Z -enddate 20200201000000Z \\\n"
    "  -extfile expired.ext -notext\n"
    "chmod 644 *.key\n";

int test_make_certs(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/make.sh", dir);
  FILE *f = fopen(path, "w");
  if (f == NULL) return -1;
  int ok = fputs(make_certs_sh, f) >= 0;
  if (fclose(f) != 0 || !ok) return -1;
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "cd '%s' && sh make.sh >make.log 2>&1", dir);
  return test_run(cmd, 60);
}

static char certs_dir[64];

const char *test_cert(const char *name) {
  static char bufs[16][128];
  static unsigned next;
  char *b = bufs[next++ % 16];
  snprintf(b, sizeof bufs[0], "%s/%s", certs_dir, name);
  return b;
}

void test_certs_dir_make(void) {
  snprintf(certs_dir, sizeof certs_dir, "/tmp/uvmqtt-certs-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(certs_dir));
  ck_assert_msg(test_make_certs(certs_dir) == 0, "making certificates failed: see %s/make.log",
                certs_dir);
}

void test_certs_dir_remove(void) {
  if (certs_dir[0] != '\0') test_remove_tree(certs_dir);
  certs_dir[0] = '\0';
}
