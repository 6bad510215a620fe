/* MQTT 5 enhanced authentication: the built-in SCRAM-SHA-256 mechanism
 * against RFC 7677's test vector, then the client against a scripted
 * broker that implements the server side of SCRAM-SHA-256: success, a
 * wrong password, an unexpected method, a forged server signature, and a
 * re-authentication while messages flow. */
#include <check.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/scram.h"
#include "broker.h"
#include "fake_broker.h"
#include "uvmqtt.h"

#define B(s) ((uvmqtt_bytes_t){(const uint8_t *)(s), (uint32_t)strlen(s)})

/* ---- RFC 7677 section 3 ------------------------------------------------------ */

static int reply_is(const uvmqtt_auth_reply_t *r, const char *want) {
  return r->len == strlen(want) && memcmp(r->data, want, r->len) == 0;
}

START_TEST(auth_scram_rfc7677_vector) {
  uvmqtt_auth_t a;
  ck_assert_int_eq(uvmqtt_auth_scram_sha256(&a, "user", "pencil"), 0);
  ck_assert_str_eq(a.method, "SCRAM-SHA-256");
  ck_assert_int_eq(uvmqtt__scram_set_nonce(a.state, "rOprNGfwEbeRWgbNEkqO"), 0);
  uvmqtt_auth_reply_t out;
  ck_assert_int_eq(a.auth(a.state, NULL, 0x00, &out), 0);
  ck_assert(reply_is(&out, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
  uvmqtt_bytes_t server_first = B("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                  "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
  ck_assert_int_eq(a.auth(a.state, &server_first, 0x18, &out), 0);
  ck_assert(reply_is(&out, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                           "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
  uvmqtt_bytes_t server_final = B("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
  ck_assert_int_eq(a.auth(a.state, &server_final, 0x00, &out), 0);

  /* The same exchange with a forged server signature fails. */
  ck_assert_int_eq(a.auth(a.state, NULL, 0x19, &out), 0);
  ck_assert_int_eq(a.auth(a.state, &server_first, 0x18, &out), 0);
  uvmqtt_bytes_t forged = B("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=");
  ck_assert_int_eq(a.auth(a.state, &forged, 0x00, &out), UVMQTT_EAUTH);
  /* A success before the exchange, a nonce the broker did not extend, and
   * too few iterations all fail. */
  ck_assert_int_eq(a.auth(a.state, &server_final, 0x00, &out), UVMQTT_EAUTH);
  ck_assert_int_eq(a.auth(a.state, NULL, 0x00, &out), 0);
  uvmqtt_bytes_t other_nonce = B("r=XOprNGfwEbeRWgbNEkqO%hv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
  ck_assert_int_eq(a.auth(a.state, &other_nonce, 0x18, &out), UVMQTT_EAUTH);
  ck_assert_int_eq(a.auth(a.state, NULL, 0x00, &out), 0);
  uvmqtt_bytes_t weak = B("r=rOprNGfwEbeRWgbNEkqO%hv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1");
  ck_assert_int_eq(a.auth(a.state, &weak, 0x18, &out), UVMQTT_EAUTH);
  uvmqtt_auth_scram_free(&a);
  ck_assert_ptr_null(a.state);

  /* User names escape '=' and ','; nonces are random otherwise. */
  ck_assert_int_eq(uvmqtt_auth_scram_sha256(&a, "a=b,c", "p"), 0);
  ck_assert_int_eq(a.auth(a.state, NULL, 0x00, &out), 0);
  ck_assert_uint_gt(out.len, 20);
  ck_assert_int_eq(memcmp(out.data, "n,,n=a=3Db=2Cc,r=", 17), 0);
  uvmqtt_auth_scram_free(&a);
}
END_TEST

/* ---- A scripted SCRAM-SHA-256 server ------------------------------------------ */

#define HLEN 32

typedef struct {
  uv_loop_t loop;
  fake_broker_t fb;
  uvmqtt_client_t client;
  uv_timer_t watchdog;
  uvmqtt_auth_t auth;
  fake_conn_t *conn;
  const char *password; /* the server's record of the user's password */
  const char *method;   /* the method the server answers with */
  int forge_signature;  /* send a wrong server signature */
  /* The exchange in progress. */
  char first_bare[256];
  char server_first[256];
  char nonce[128];
  int reauth;
  /* Observations. */
  int connect_calls;
  int connect_status;
  uint8_t connect_reason;
  int disconnects;
  int disconnect_status;
  int closed;
  int auth_packets;     /* AUTH from the client */
  int reauth_started;   /* AUTH 0x19 */
  int reauth_succeeded; /* AUTH 0x00 sent */
  int published;
  int publish_ok;
  int acked;
  int want_publishes;
} sx_t;

static void b64(const uint8_t *in, size_t len, char *out) {
  EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

static const uint8_t server_salt[] = "NaCl-for-tests";

/* The server side of RFC 5802: keys from the password it knows. */
static void server_keys(const char *password, uint8_t stored[HLEN], uint8_t server_key[HLEN]) {
  uint8_t salted[HLEN], client_key[HLEN];
  unsigned n = HLEN;
  ck_assert_int_eq(PKCS5_PBKDF2_HMAC(password, (int)strlen(password), server_salt,
                                     sizeof server_salt - 1, 4096, EVP_sha256(), HLEN, salted),
                   1);
  HMAC(EVP_sha256(), salted, HLEN, (const uint8_t *)"Client Key", 10, client_key, &n);
  HMAC(EVP_sha256(), salted, HLEN, (const uint8_t *)"Server Key", 10, server_key, &n);
  EVP_Digest(client_key, HLEN, stored, &n, EVP_sha256(), NULL);
}

static void send_auth_step(sx_t *x, uint8_t type, uint8_t reason, const char *data) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = type;
  p.reason = reason;
  p.props.has = 1ull << UVMQTT_PROP_AUTHENTICATION_METHOD;
  p.props.authentication_method = B(x->method);
  if (data) {
    p.props.has |= 1ull << UVMQTT_PROP_AUTHENTICATION_DATA;
    p.props.authentication_data = B(data);
  }
  ck_assert_int_eq(fake_send_packet(x->conn, &p), 0);
}

static void refuse(sx_t *x, uint8_t reason) {
  uvmqtt_packet_t p;
  memset(&p, 0, sizeof p);
  p.type = x->reauth ? UVMQTT_DISCONNECT : UVMQTT_CONNACK;
  p.reason = reason;
  ck_assert_int_eq(fake_send_packet(x->conn, &p), 0);
}

/* client-first: "n,,n=<user>,r=<nonce>". */
static void server_first(sx_t *x, const uvmqtt_props_t *pr) {
  ck_assert(UVMQTT_HAS(pr, UVMQTT_PROP_AUTHENTICATION_DATA));
  uvmqtt_bytes_t d = pr->authentication_data;
  ck_assert_uint_gt(d.len, 3);
  ck_assert_int_eq(memcmp(d.data, "n,,", 3), 0);
  snprintf(x->first_bare, sizeof x->first_bare, "%.*s", (int)d.len - 3, d.data + 3);
  const char *r = strstr(x->first_bare, ",r=");
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(strncmp(x->first_bare, "n=user,", 7), 0);
  char salt[64];
  b64(server_salt, sizeof server_salt - 1, salt);
  snprintf(x->nonce, sizeof x->nonce, "%s%s", r + 3, x->reauth ? "srvB" : "srvA");
  snprintf(x->server_first, sizeof x->server_first, "r=%s,s=%s,i=4096", x->nonce, salt);
  send_auth_step(x, UVMQTT_AUTH, 0x18, x->server_first);
}

/* client-final: "c=biws,r=<nonce>,p=<proof>". */
static void server_final(sx_t *x, const uvmqtt_props_t *pr) {
  char fin[256], without[256], am[768];
  uvmqtt_bytes_t d = pr->authentication_data;
  snprintf(fin, sizeof fin, "%.*s", (int)d.len, d.data);
  char *p = strstr(fin, ",p=");
  ck_assert_ptr_nonnull(p);
  snprintf(without, sizeof without, "%.*s", (int)(p - fin), fin);
  char want[160];
  snprintf(want, sizeof want, "c=biws,r=%s", x->nonce);
  ck_assert_str_eq(without, want);
  snprintf(am, sizeof am, "%s,%s,%s", x->first_bare, x->server_first, without);
  uint8_t stored[HLEN], server_key[HLEN], sig[HLEN], proof[HLEN], client_key[HLEN], check[HLEN];
  server_keys(x->password, stored, server_key);
  unsigned n = HLEN;
  HMAC(EVP_sha256(), stored, HLEN, (const uint8_t *)am, strlen(am), sig, &n);
  int plen = EVP_DecodeBlock(proof, (const unsigned char *)p + 3, (int)strlen(p + 3));
  ck_assert_int_ge(plen, HLEN);
  for (int i = 0; i < HLEN; i++)
    client_key[i] = proof[i] ^ sig[i];
  EVP_Digest(client_key, HLEN, check, &n, EVP_sha256(), NULL);
  if (memcmp(check, stored, HLEN) != 0) {
    refuse(x, x->reauth ? 0x87 : 0x86);
    return;
  }
  uint8_t ssig[HLEN];
  HMAC(EVP_sha256(), server_key, HLEN, (const uint8_t *)am, strlen(am), ssig, &n);
  if (x->forge_signature) ssig[0] ^= 1;
  char v[80] = "v=";
  b64(ssig, HLEN, v + 2);
  if (x->reauth) {
    send_auth_step(x, UVMQTT_AUTH, 0x00, v);
    x->reauth = 0;
    x->reauth_succeeded++;
  } else {
    send_auth_step(x, UVMQTT_CONNACK, 0x00, v);
  }
}

static void sx_packet(fake_broker_t *fb, fake_conn_t *conn, const uvmqtt_packet_t *pkt) {
  sx_t *x = fb->data;
  x->conn = conn;
  switch (pkt->type) {
  case UVMQTT_CONNECT: {
    const uvmqtt_props_t *pr = &pkt->props;
    ck_assert(UVMQTT_HAS(pr, UVMQTT_PROP_AUTHENTICATION_METHOD));
    uvmqtt_bytes_t m = pr->authentication_method;
    x->reauth = 0;
    /* A method this server does not know: 0x8C [MQTT-4.12.0-1]. */
    if (m.len != 13 || memcmp(m.data, "SCRAM-SHA-256", 13) != 0) {
      refuse(x, 0x8C);
      return;
    }
    server_first(x, pr);
    break;
  }
  case UVMQTT_AUTH:
    x->auth_packets++;
    if (pkt->reason == 0x19) {
      x->reauth = 1;
      x->reauth_started++;
      server_first(x, &pkt->props);
    } else {
      ck_assert_uint_eq(pkt->reason, 0x18);
      server_final(x, &pkt->props);
    }
    break;
  case UVMQTT_PUBLISH: {
    uvmqtt_packet_t a;
    memset(&a, 0, sizeof a);
    a.type = UVMQTT_PUBACK;
    a.packet_id = pkt->packet_id;
    ck_assert_int_eq(fake_send_packet(conn, &a), 0);
    break;
  }
  default: fake_default_answer(conn, pkt); break;
  }
}

static void sx_on_closed(uvmqtt_client_t *c) {
  ((sx_t *)c->data)->closed++;
}

static void sx_finish(sx_t *x) {
  uvmqtt_close(&x->client, sx_on_closed);
  fake_broker_stop(&x->fb);
  uv_timer_stop(&x->watchdog);
  uv_close((uv_handle_t *)&x->watchdog, NULL);
}

static void sx_published(uvmqtt_client_t *c, int status, uint8_t reason, void *arg) {
  sx_t *x = c->data;
  (void)reason;
  (void)arg;
  x->acked++;
  if (status == 0) x->publish_ok++;
  if (x->acked == x->want_publishes && x->reauth_succeeded) sx_finish(x);
}

static void publish_some(sx_t *x, int n) {
  uvmqtt_publish_opts_t o;
  memset(&o, 0, sizeof o);
  o.qos = 1;
  for (int i = 0; i < n; i++) {
    ck_assert_int_eq(uvmqtt_publish(&x->client, "auth/t", "m", 1, &o, sx_published, NULL), 0);
    x->published++;
  }
}

static void sx_connect(uvmqtt_client_t *c, int status, const uvmqtt_connack_t *ack) {
  sx_t *x = c->data;
  x->connect_calls++;
  x->connect_status = status;
  x->connect_reason = ack->reason;
  if (status != 0 || x->want_publishes == 0) {
    sx_finish(x);
    return;
  }
  /* Re-authenticate in the middle of a burst of publishes. */
  publish_some(x, x->want_publishes / 2);
  ck_assert_int_eq(uvmqtt_reauthenticate(c), 0);
  ck_assert_int_eq(uvmqtt_reauthenticate(c), UVMQTT_EBUSY);
  publish_some(x, x->want_publishes - x->want_publishes / 2);
}

static void sx_disconnect(uvmqtt_client_t *c, const uvmqtt_disconnect_t *info) {
  sx_t *x = c->data;
  x->disconnects++;
  x->disconnect_status = info->status;
}

static void sx_watchdog(uv_timer_t *t) {
  (void)t;
  ck_abort_msg("scenario did not finish in time");
}

static void sx_run(sx_t *x, const char *client_password, const char *method) {
  ck_assert_int_eq(uv_loop_init(&x->loop), 0);
  x->fb.data = x;
  if (x->password == NULL) x->password = "pencil";
  if (x->method == NULL) x->method = "SCRAM-SHA-256";
  ck_assert_int_eq(fake_broker_start(&x->fb, &x->loop, sx_packet), 0);
  uv_timer_init(&x->loop, &x->watchdog);
  uv_timer_start(&x->watchdog, sx_watchdog, 8000, 0);
  ck_assert_int_eq(uvmqtt_auth_scram_sha256(&x->auth, "user", client_password), 0);
  if (method) x->auth.method = method;
  char uri[64];
  snprintf(uri, sizeof uri, "mqtt://127.0.0.1:%d", x->fb.port);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = uri;
  o.version = UVMQTT_V5;
  o.client_id = "auth-test";
  o.no_reconnect = 1;
  o.auth = &x->auth;
  uvmqtt_callbacks_t cb;
  memset(&cb, 0, sizeof cb);
  cb.on_connect = sx_connect;
  cb.on_disconnect = sx_disconnect;
  x->client.data = x;
  ck_assert_int_eq(uvmqtt_client_init(&x->loop, &x->client, &o, &cb), 0);
  ck_assert_int_eq(uvmqtt_connect(&x->client), 0);
  ck_assert_int_eq(uv_run(&x->loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(x->closed, 1);
  ck_assert_int_eq(uv_loop_close(&x->loop), 0);
  uvmqtt_auth_scram_free(&x->auth);
}

START_TEST(auth_scram_success) {
  sx_t *x = calloc(1, sizeof *x);
  sx_run(x, "pencil", NULL);
  ck_assert_int_eq(x->connect_calls, 1);
  ck_assert_int_eq(x->connect_status, 0);
  ck_assert_int_eq(x->auth_packets, 1); /* the client-final message */
  free(x);
}
END_TEST

START_TEST(auth_scram_wrong_password) {
  sx_t *x = calloc(1, sizeof *x);
  sx_run(x, "crayon", NULL);
  ck_assert_int_eq(x->connect_calls, 1);
  ck_assert_int_eq(x->connect_status, UVMQTT_EAUTH);
  ck_assert_uint_eq(x->connect_reason, 0x86);
  free(x);
}
END_TEST

START_TEST(auth_unexpected_method) {
  /* The broker continues under another method. */
  sx_t *x = calloc(1, sizeof *x);
  x->method = "SCRAM-SHA-1";
  sx_run(x, "pencil", NULL);
  ck_assert_int_eq(x->connect_status, UVMQTT_EAUTHMETHOD);
  ck_assert_int_eq(x->auth_packets, 0);
  free(x);
  /* The broker does not know ours. */
  x = calloc(1, sizeof *x);
  sx_run(x, "pencil", "KERBEROS-V9");
  ck_assert_int_eq(x->connect_status, UVMQTT_EAUTH);
  ck_assert_uint_eq(x->connect_reason, 0x8C);
  free(x);
}
END_TEST

START_TEST(auth_scram_forged_server_signature) {
  sx_t *x = calloc(1, sizeof *x);
  x->forge_signature = 1;
  sx_run(x, "pencil", NULL);
  ck_assert_int_eq(x->connect_status, UVMQTT_EAUTH);
  free(x);
}
END_TEST

START_TEST(auth_scram_reauthenticate_while_publishing) {
  sx_t *x = calloc(1, sizeof *x);
  x->want_publishes = 200;
  sx_run(x, "pencil", NULL);
  ck_assert_int_eq(x->connect_status, 0);
  ck_assert_int_eq(x->reauth_started, 1);
  ck_assert_int_eq(x->reauth_succeeded, 1);
  ck_assert_int_eq(x->auth_packets, 3); /* final, 0x19, final */
  ck_assert_int_eq(x->publish_ok, 200);
  ck_assert_int_eq(x->disconnects, 0);
  free(x);
}
END_TEST

START_TEST(auth_options_checked) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvmqtt_options_t o;
  uvmqtt_options_init(&o);
  o.uri = "mqtt://127.0.0.1:1";
  uvmqtt_auth_t a;
  memset(&a, 0, sizeof a);
  a.method = "X";
  o.auth = &a;
  uvmqtt_client_t c;
  /* Enhanced authentication is MQTT 5's. */
  ck_assert_int_eq(uvmqtt_client_init(&loop, &c, &o, NULL), UVMQTT_EINVAL);
  o.version = UVMQTT_V5;
  a.method = "";
  ck_assert_int_eq(uvmqtt_client_init(&loop, &c, &o, NULL), UVMQTT_EINVAL);
  a.method = "X";
  ck_assert_int_eq(uvmqtt_client_init(&loop, &c, &o, NULL), 0);
  /* Not connected: nothing to re-authenticate. */
  ck_assert_int_eq(uvmqtt_reauthenticate(&c), UVMQTT_ENOTCONN);
  uvmqtt_close(&c, NULL);
  o.auth = NULL;
  ck_assert_int_eq(uvmqtt_client_init(&loop, &c, &o, NULL), 0);
  ck_assert_int_eq(uvmqtt_reauthenticate(&c), UVMQTT_EINVAL);
  uvmqtt_close(&c, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* ---- The command-line tools ----------------------------------------------------------------- */

typedef struct {
  sx_t x;
  uv_process_t proc;
  int exited;
  int64_t exit_status;
} cli_auth_t;

static void cli_exited(uv_process_t *p, int64_t status, int signal) {
  cli_auth_t *t = p->data;
  (void)signal;
  t->exited = 1;
  t->exit_status = status;
  uv_close((uv_handle_t *)p, NULL);
  fake_broker_stop(&t->x.fb);
  uv_timer_stop(&t->x.watchdog);
  uv_close((uv_handle_t *)&t->x.watchdog, NULL);
}

/* uvmqtt-pub --auth-method SCRAM-SHA-256 -u user -P PASSWORD against the
 * scripted SCRAM broker; returns the tool's exit status. */
static int64_t cli_scram_publish(cli_auth_t *t, const char *password) {
  sx_t *x = &t->x;
  ck_assert_int_eq(uv_loop_init(&x->loop), 0);
  x->fb.data = x;
  x->password = "pencil";
  x->method = "SCRAM-SHA-256";
  ck_assert_int_eq(fake_broker_start(&x->fb, &x->loop, sx_packet), 0);
  uv_timer_init(&x->loop, &x->watchdog);
  uv_timer_start(&x->watchdog, sx_watchdog, 8000, 0);
  char tool[512], port[16];
  snprintf(tool, sizeof tool, "%s/tools/uvmqtt-pub", test_build_root());
  snprintf(port, sizeof port, "%d", x->fb.port);
  char *args[] = {tool,
                  "-h",
                  "127.0.0.1",
                  "-p",
                  port,
                  "--auth-method",
                  "SCRAM-SHA-256",
                  "-u",
                  "user",
                  "-P",
                  (char *)password,
                  "-t",
                  "auth/cli",
                  "-q",
                  "1",
                  "-m",
                  "scram",
                  NULL};
  uv_process_options_t po;
  memset(&po, 0, sizeof po);
  po.file = tool;
  po.args = args;
  po.exit_cb = cli_exited;
  t->proc.data = t;
  ck_assert_int_eq(uv_spawn(&x->loop, &t->proc, &po), 0);
  ck_assert_int_eq(uv_run(&x->loop, UV_RUN_DEFAULT), 0);
  ck_assert(t->exited);
  ck_assert_int_eq(uv_loop_close(&x->loop), 0);
  return t->exit_status;
}

/* The tools speak SCRAM-SHA-256 with -u and -P: a right password connects
 * and publishes, a wrong one fails the tool. */
START_TEST(auth_cli_scram) {
  cli_auth_t *t = calloc(1, sizeof *t);
  ck_assert_int_eq(cli_scram_publish(t, "pencil"), 0);
  ck_assert_int_eq(t->x.auth_packets, 1); /* the client-final message */
  free(t);
  t = calloc(1, sizeof *t);
  ck_assert_int_ne(cli_scram_publish(t, "crayon"), 0);
  ck_assert_int_eq(t->x.auth_packets, 1);
  free(t);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("auth");
  TCase *tc = tcase_create("scram");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, auth_scram_rfc7677_vector);
  tcase_add_test(tc, auth_scram_success);
  tcase_add_test(tc, auth_scram_wrong_password);
  tcase_add_test(tc, auth_unexpected_method);
  tcase_add_test(tc, auth_scram_forged_server_signature);
  tcase_add_test(tc, auth_scram_reauthenticate_while_publishing);
  tcase_add_test(tc, auth_options_checked);
  tcase_add_test(tc, auth_cli_scram);
  suite_add_tcase(s, tc);
  return s;
}
