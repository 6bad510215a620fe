/* The TLS transport after the hand-over to tls_record.c, against an
 * OpenSSL server in a thread of the test that can do what a broker will not
 * on demand: KeyUpdate (asking for ours or not) with each TLS 1.3 cipher
 * suite, records trickled one byte at a time so that headers and bodies
 * span reads, a record with a flipped bit, a close_notify, a KeyUpdate
 * before the hand-over (which must then be refused) and TLS 1.2, which
 * stays with OpenSSL.
 *
 * The exchange: the client writes "hello" once the handshake is done; the
 * server answers "one" (after which the client hands over), then "two",
 * the client "three", the server "four", the client "five" and its
 * close_notify, which the server must read as a clean end. Key updates come
 * before "two" (requested) and before "four" (not requested). */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "certs.h"
#include "transport/tls.h"
#include "uvmqtt.h"

enum {
  V_AES128, /* key updates, AES-128-GCM */
  V_AES256, /* key updates, AES-256-GCM */
  V_CHACHA, /* key updates, ChaCha20-Poly1305 */
  V_TAMPER, /* "two" arrives with a flipped bit */
  V_CLOSE,  /* the server sends close_notify after "one" */
  V_TLS12,  /* TLS 1.2: no hand-over, the same exchange */
  V_EARLY,  /* a KeyUpdate before "one": the proof fails, no hand-over */
  V_COUNT
};

static struct {
  int variant;
  int listen_fd;
  uint16_t port;
  int server_result; /* 0 when the server's script ran to its end */
  const char *server_failed;
  char server_crt[512], server_key[512]; /* test_cert()'s buffers are not the thread's */
  /* the client */
  uv_loop_t loop;
  uvmqtt__transport_t t;
  uvmqtt__tls_ctx_t *ctx;
  char rx[64];
  size_t rx_len;
  int connect_status;
  int end_status; /* the on_read error that ended the stream */
  int handed_over_at_two;
  int closes;
} g;

/* ---- The server, blocking, in its own thread --------------------------------------------- */

static int srv_fail(const char *what) {
  g.server_failed = what;
  return -1;
}

/* Sends what SSL wrote into the memory BIO: at once, or one byte at a
 * time with a pause so that each byte comes in its own read. */
static int srv_flush(int fd, BIO *out, int trickle, int tamper) {
  char *data;
  long n = BIO_get_mem_data(out, &data);
  if (n > 0 && tamper) data[n - 1] ^= 1; /* the last byte of the tag */
  for (long at = 0; at < n;) {
    long chunk = trickle ? 1 : n - at;
    ssize_t w = send(fd, data + at, (size_t)chunk, MSG_NOSIGNAL);
    if (w <= 0) return srv_fail("send");
    at += w;
    if (trickle) usleep(500);
  }
  (void)BIO_reset(out);
  return 0;
}

/* `text` as one record, or as one record per '|'-separated piece, sent
 * together. */
static int srv_write(SSL *ssl, int fd, BIO *out, const char *text, int trickle, int tamper) {
  while (*text != '\0') {
    int n = (int)strcspn(text, "|");
    if (SSL_write(ssl, text, n) != n) return srv_fail("SSL_write");
    text += n + (text[n] == '|');
  }
  return srv_flush(fd, out, trickle, tamper);
}

static int srv_expect(SSL *ssl, int fd, BIO *out, const char *text) {
  char buf[64];
  size_t have = 0, want = strlen(text);
  while (have < want) {
    int r = SSL_read(ssl, buf + have, (int)(want - have));
    if (srv_flush(fd, out, 0, 0) != 0) return -1;
    if (r <= 0) return srv_fail(text);
    have += (size_t)r;
  }
  return memcmp(buf, text, want) == 0 ? 0 : srv_fail(text);
}

/* Reads until the client's close_notify: SSL_read must report a clean end. */
static int srv_expect_close_notify(SSL *ssl) {
  char buf[16];
  int r = SSL_read(ssl, buf, sizeof buf);
  if (r > 0 || SSL_get_error(ssl, r) != SSL_ERROR_ZERO_RETURN) return srv_fail("close_notify");
  return 0;
}

static int srv_script(SSL *ssl, int fd, BIO *out) {
  int v = g.variant, updates = v <= V_CHACHA;
  if (v == V_EARLY && SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
    return srv_fail("key update");
  if (srv_expect(ssl, fd, out, "hello") || srv_write(ssl, fd, out, "one", 0, 0)) return -1;
  if (v == V_CLOSE) {
    (void)SSL_shutdown(ssl);
    return srv_flush(fd, out, 0, 0);
  }
  /* Idle for a moment: the client hands over between "one" and "two". A
   * KeyUpdate that OpenSSL followed before the hand-over would make its
   * proof fail, and the connection would stay with OpenSSL. */
  usleep(100000);
  if (updates && SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) != 1) return srv_fail("key update");
  if (srv_write(ssl, fd, out, "two", 1, v == V_TAMPER)) return -1;
  if (v == V_TAMPER) return 0;
  if (srv_expect(ssl, fd, out, "three")) return -1;
  if (updates && SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
    return srv_fail("key update");
  /* Two records in a row under the same key. */
  if (srv_write(ssl, fd, out, "fo|ur", 1, 0) || srv_expect(ssl, fd, out, "five")) return -1;
  return srv_expect_close_notify(ssl);
}

static void server_thread(void *arg) {
  (void)arg;
  g.server_result = -1;
  int fd = accept(g.listen_fd, NULL, NULL);
  if (fd < 0) {
    srv_fail("accept");
    return;
  }
  SSL_CTX *sc = SSL_CTX_new(TLS_server_method());
  SSL *ssl = NULL;
  if (sc == NULL || SSL_CTX_use_certificate_chain_file(sc, g.server_crt) != 1 ||
      SSL_CTX_use_PrivateKey_file(sc, g.server_key, SSL_FILETYPE_PEM) != 1) {
    srv_fail("server context");
    goto out;
  }
  static const char *const suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                       "TLS_CHACHA20_POLY1305_SHA256"};
  if (g.variant <= V_CHACHA) (void)SSL_CTX_set_ciphersuites(sc, suites[g.variant]);
  if (g.variant == V_TLS12) (void)SSL_CTX_set_max_proto_version(sc, TLS1_2_VERSION);
  ssl = SSL_new(sc);
  if (ssl == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_accept(ssl) != 1) {
    srv_fail("handshake");
    goto out;
  }
  /* From here on SSL writes into memory and the script decides how the
   * bytes go out. */
  BIO *out = BIO_new(BIO_s_mem());
  SSL_set0_wbio(ssl, out);
  g.server_result = srv_script(ssl, fd, out);
out:
  SSL_free(ssl);
  SSL_CTX_free(sc);
  close(fd);
  ERR_clear_error();
}

/* ---- The client: the TLS transport on the test's loop ------------------------------------- */

static void client_write(const char *text) {
  uv_buf_t b = uv_buf_init((char *)(uintptr_t)text, (unsigned)strlen(text));
  int r = uvmqtt__transport_write(&g.t, &b, 1, NULL);
  ck_assert_msg(r >= 0, "write: %s", uvmqtt_err_name(r));
}

static void on_connect(uvmqtt__transport_t *t, int status) {
  g.connect_status = status;
  if (status != 0) {
    uvmqtt__transport_close(t);
    return;
  }
  client_write("hello");
}

static void on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  if (nread < 0) {
    g.end_status = (int)nread;
    uvmqtt__transport_close(t);
    return;
  }
  ck_assert_uint_le(g.rx_len + (size_t)nread, sizeof g.rx - 1);
  memcpy(g.rx + g.rx_len, data, (size_t)nread);
  g.rx_len += (size_t)nread;
  g.rx[g.rx_len] = '\0';
  if (strcmp(g.rx, "onetwo") == 0) {
    g.handed_over_at_two = uvmqtt__transport_tls_handed_over(t);
    client_write("three");
  } else if (strcmp(g.rx, "onetwofour") == 0) {
    client_write("five");
    ck_assert_int_eq(uvmqtt__transport_shutdown(t), 0);
  }
}

static void on_write(uvmqtt__transport_t *t, int status, void *arg) {
  (void)t;
  (void)status;
  (void)arg;
}

static void on_close(uvmqtt__transport_t *t) {
  (void)t;
  g.closes++;
}

static const uvmqtt__transport_cbs_t cbs = {on_connect, on_read, on_write, on_close};

static void listen_on_loopback(void) {
  g.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(g.listen_fd, 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(g.listen_fd, (struct sockaddr *)&sa, sizeof sa), 0);
  ck_assert_int_eq(listen(g.listen_fd, 1), 0);
  socklen_t len = sizeof sa;
  ck_assert_int_eq(getsockname(g.listen_fd, (struct sockaddr *)&sa, &len), 0);
  g.port = ntohs(sa.sin_port);
}

START_TEST(tls_record_exchange) {
  memset(&g, 0, sizeof g); /* CK_FORK=no runs every case in one process */
  g.variant = _i;
  listen_on_loopback();
  snprintf(g.server_crt, sizeof g.server_crt, "%s", test_cert("server.crt"));
  snprintf(g.server_key, sizeof g.server_key, "%s", test_cert("server.key"));
  uv_thread_t tid;
  ck_assert_int_eq(uv_thread_create(&tid, server_thread, NULL), 0);
  ck_assert_int_eq(uv_loop_init(&g.loop), 0);
  uvmqtt_tls_options_t o;
  memset(&o, 0, sizeof o);
  o.ca_file = test_cert("ca.crt");
  ck_assert_int_eq(uvmqtt__tls_ctx_new(&o, &g.ctx), 0);
  uvmqtt__poller_t *poller = uvmqtt__poller_new(&g.loop);
  ck_assert_ptr_nonnull(poller);
  ck_assert_int_eq(uvmqtt__transport_tls_init(&g.t, poller, &cbs, &g.ctx), 0);
  ck_assert_int_eq(uvmqtt__transport_connect(&g.t, "127.0.0.1", g.port), 0);
  ck_assert_int_eq(uv_run(&g.loop, UV_RUN_DEFAULT), 0);
  uvmqtt__poller_free(poller);
  ck_assert_int_eq(uv_run(&g.loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  close(g.listen_fd);
  ck_assert_int_eq(g.closes, 1);
  ck_assert_int_eq(g.connect_status, 0);
  ck_assert_msg(g.server_result == 0, "server: %s", g.server_failed ? g.server_failed : "?");
  switch (g.variant) {
  case V_TAMPER:
    /* Authentication fails: no byte of the record reaches the owner. */
    ck_assert_str_eq(g.rx, "one");
    ck_assert_int_eq(g.end_status, UVMQTT_ETLSPROTO);
    break;
  case V_CLOSE:
    ck_assert_str_eq(g.rx, "one");
    ck_assert_int_eq(g.end_status, UV_EOF);
    break;
  default:
    ck_assert_str_eq(g.rx, "onetwofour");
    ck_assert_int_eq(g.handed_over_at_two, g.variant != V_TLS12 && g.variant != V_EARLY);
    /* The server closed after our close_notify. */
    ck_assert_int_eq(g.end_status, UV_EOF);
  }
  uvmqtt__tls_ctx_free(g.ctx);
  ck_assert_int_eq(uv_loop_close(&g.loop), 0);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("tls_record");
  TCase *tc = tcase_create("exchange");
  tcase_set_timeout(tc, 30);
  tcase_add_unchecked_fixture(tc, test_certs_dir_make, test_certs_dir_remove);
  tcase_add_loop_test(tc, tls_record_exchange, 0, V_COUNT);
  suite_add_tcase(s, tc);
  return s;
}
