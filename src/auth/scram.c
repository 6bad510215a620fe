/* SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash) as an MQTT 5 enhanced
 * authentication mechanism: the client-first message goes in CONNECT (or in
 * AUTH 0x19 for a re-authentication), the client-final one answers the
 * broker's AUTH 0x18, and the server-final one, in CONNACK or AUTH 0x00,
 * must carry the server signature that proves the broker knows the
 * password too. No channel binding ("n,,"). */
#include "auth/scram.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"

#define HASH_LEN  32
#define NONCE_LEN 18 /* random bytes: 24 characters of base64 */
/* RFC 7677 asks for at least 4096 iterations; a broker asking for far more
 * than anyone uses would make each connection burn seconds of CPU. */
#define MIN_ITERATIONS 4096u
#define MAX_ITERATIONS 10000000u

enum { ST_IDLE, ST_SENT_FIRST, ST_SENT_FINAL };

typedef struct {
  char *user; /* saslname: '=' and ',' escaped */
  char *password;
  char *fixed_nonce; /* tests: the nonce to use instead of a random one */
  int stage;
  char nonce[64];
  char *first_bare; /* "n=user,r=nonce" */
  uint8_t server_signature[HASH_LEN];
  char *out; /* the message handed out last */
} scram_t;

static char *dup_n(const char *s, size_t n) {
  char *d = uvmqtt__malloc(n + 1);
  if (d == NULL) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

/* RFC 5802 section 5.1: '=' and ',' in a user name become "=3D" and "=2C". */
static char *saslname(const char *user) {
  size_t n = 0;
  for (const char *p = user; *p; p++)
    n += (*p == '=' || *p == ',') ? 3 : 1;
  char *d = uvmqtt__malloc(n + 1);
  if (d == NULL) return NULL;
  char *q = d;
  for (const char *p = user; *p; p++) {
    if (*p == '=' || *p == ',') {
      memcpy(q, *p == '=' ? "=3D" : "=2C", 3);
      q += 3;
    } else {
      *q++ = *p;
    }
  }
  *q = '\0';
  return d;
}

static void set_out(scram_t *sc, char *msg, uvmqtt_auth_reply_t *out) {
  uvmqtt__free(sc->out);
  sc->out = msg;
  out->data = msg;
  out->len = strlen(msg);
}

static int hmac(const uint8_t *key, size_t key_len, const void *msg, size_t len,
                uint8_t out[HASH_LEN]) {
  unsigned n = HASH_LEN;
  return HMAC(EVP_sha256(), key, (int)key_len, msg, len, out, &n) != NULL && n == HASH_LEN ? 0 : -1;
}

static int b64_encode(const uint8_t *in, size_t len, char *out, size_t cap) {
  if (cap < 4 * ((len + 2) / 3) + 1) return -1;
  EVP_EncodeBlock((unsigned char *)out, in, (int)len);
  return 0;
}

/* Decodes base64 into out (cap bytes); returns the length or -1. */
static int b64_decode(const char *in, size_t len, uint8_t *out, size_t cap) {
  if (len == 0 || len % 4 != 0 || cap < len / 4 * 3) return -1;
  int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
  if (n < 0) return -1;
  /* EVP_DecodeBlock counts the padding as zero bytes. */
  if (in[len - 1] == '=') n--;
  if (in[len - 2] == '=') n--;
  return n;
}

/* Finds "k=" at the start of an attribute of msg[0..len); sets v and vlen to
 * its value. */
static int attr(const char *msg, size_t len, char k, const char **v, size_t *vlen) {
  size_t i = 0;
  while (i < len) {
    size_t end = i;
    while (end < len && msg[end] != ',')
      end++;
    if (end - i >= 2 && msg[i] == k && msg[i + 1] == '=') {
      *v = msg + i + 2;
      *vlen = end - i - 2;
      return 0;
    }
    i = end + 1;
  }
  return -1;
}

static int start(scram_t *sc, uvmqtt_auth_reply_t *out) {
  if (sc->fixed_nonce) {
    snprintf(sc->nonce, sizeof sc->nonce, "%s", sc->fixed_nonce);
  } else {
    uint8_t raw[NONCE_LEN];
    if (RAND_bytes(raw, sizeof raw) != 1) return UVMQTT_EAUTH;
    if (b64_encode(raw, sizeof raw, sc->nonce, sizeof sc->nonce)) return UVMQTT_EAUTH;
    /* A nonce is any printable text but ','; base64 has none. */
  }
  size_t n = strlen(sc->user) + strlen(sc->nonce) + 6;
  char *bare = uvmqtt__malloc(n + 1);
  char *first = uvmqtt__malloc(n + 4);
  if (bare == NULL || first == NULL) {
    uvmqtt__free(bare);
    uvmqtt__free(first);
    return UVMQTT_ENOMEM;
  }
  snprintf(bare, n + 1, "n=%s,r=%s", sc->user, sc->nonce);
  snprintf(first, n + 4, "n,,%s", bare);
  uvmqtt__free(sc->first_bare);
  sc->first_bare = bare;
  set_out(sc, first, out);
  sc->stage = ST_SENT_FIRST;
  return 0;
}

/* The broker's server-first message: "r=<nonce>,s=<salt>,i=<count>". */
static int final(scram_t *sc, const uvmqtt_bytes_t *in, uvmqtt_auth_reply_t *out) {
  const char *msg = (const char *)in->data;
  size_t len = in->len;
  const char *r, *sv, *iv;
  size_t rl, sl, il;
  if (len == 0 || attr(msg, len, 'r', &r, &rl) || attr(msg, len, 's', &sv, &sl) ||
      attr(msg, len, 'i', &iv, &il))
    return UVMQTT_EAUTH;
  /* The combined nonce starts with ours and adds the broker's part. */
  size_t cn = strlen(sc->nonce);
  if (rl <= cn || memcmp(r, sc->nonce, cn) != 0) return UVMQTT_EAUTH;
  uint32_t iter = 0;
  if (il == 0 || il > 9) return UVMQTT_EAUTH;
  for (size_t k = 0; k < il; k++) {
    if (iv[k] < '0' || iv[k] > '9') return UVMQTT_EAUTH;
    iter = iter * 10 + (uint32_t)(iv[k] - '0');
  }
  if (iter < MIN_ITERATIONS || iter > MAX_ITERATIONS) return UVMQTT_EAUTH;
  uint8_t salt[256];
  int salt_len = b64_decode(sv, sl, salt, sizeof salt);
  if (salt_len <= 0) return UVMQTT_EAUTH;

  uint8_t salted[HASH_LEN], client_key[HASH_LEN], stored_key[HASH_LEN], sig[HASH_LEN];
  uint8_t server_key[HASH_LEN], proof[HASH_LEN];
  if (PKCS5_PBKDF2_HMAC(sc->password, (int)strlen(sc->password), salt, salt_len, (int)iter,
                        EVP_sha256(), HASH_LEN, salted) != 1)
    return UVMQTT_EAUTH;
  unsigned dl = HASH_LEN;
  if (hmac(salted, HASH_LEN, "Client Key", 10, client_key) ||
      EVP_Digest(client_key, HASH_LEN, stored_key, &dl, EVP_sha256(), NULL) != 1 ||
      hmac(salted, HASH_LEN, "Server Key", 10, server_key))
    return UVMQTT_EAUTH;

  /* client-final-without-proof: "c=biws,r=<nonce>" ("biws" is "n,,"). */
  size_t wp_len = 9 + rl;
  size_t am_len = strlen(sc->first_bare) + 1 + len + 1 + wp_len;
  char *am = uvmqtt__malloc(am_len + 1);
  char *fin = uvmqtt__malloc(wp_len + 3 + 4 * ((HASH_LEN + 2) / 3) + 1);
  if (am == NULL || fin == NULL) {
    uvmqtt__free(am);
    uvmqtt__free(fin);
    return UVMQTT_ENOMEM;
  }
  memcpy(fin, "c=biws,r=", 9);
  memcpy(fin + 9, r, rl);
  fin[wp_len] = '\0';
  snprintf(am, am_len + 1, "%s,%.*s,%s", sc->first_bare, (int)len, msg, fin);
  int err = hmac(stored_key, HASH_LEN, am, am_len, sig) ||
            hmac(server_key, HASH_LEN, am, am_len, sc->server_signature);
  uvmqtt__free(am);
  if (err) {
    uvmqtt__free(fin);
    return UVMQTT_EAUTH;
  }
  for (int k = 0; k < HASH_LEN; k++)
    proof[k] = client_key[k] ^ sig[k];
  memcpy(fin + wp_len, ",p=", 3);
  b64_encode(proof, HASH_LEN, fin + wp_len + 3, 4 * ((HASH_LEN + 2) / 3) + 1);
  OPENSSL_cleanse(salted, sizeof salted);
  OPENSSL_cleanse(client_key, sizeof client_key);
  set_out(sc, fin, out);
  sc->stage = ST_SENT_FINAL;
  return 0;
}

/* The server-final message: "v=<server signature>", or "e=<error>". */
static int verify(scram_t *sc, const uvmqtt_bytes_t *in) {
  const char *v;
  size_t vl;
  /* One verdict per exchange, whichever it is. */
  int stage = sc->stage;
  sc->stage = ST_IDLE;
  if (stage != ST_SENT_FINAL || in == NULL || attr((const char *)in->data, in->len, 'v', &v, &vl))
    return UVMQTT_EAUTH;
  char want[64];
  b64_encode(sc->server_signature, HASH_LEN, want, sizeof want);
  if (vl != strlen(want) || memcmp(v, want, vl) != 0) return UVMQTT_EAUTH;
  return 0;
}

int uvmqtt__scram_step(void *state, const uvmqtt_bytes_t *in_data, uint8_t reason,
                       uvmqtt_auth_reply_t *out) {
  scram_t *sc = state;
  out->data = NULL;
  out->len = 0;
  if (in_data == NULL) return start(sc, out); /* CONNECT, or AUTH 0x19 */
  if (reason == 0x18) {
    if (sc->stage != ST_SENT_FIRST) return UVMQTT_EAUTH;
    return final(sc, in_data, out);
  }
  if (reason == 0x00) return verify(sc, in_data);
  return UVMQTT_EAUTH;
}

int uvmqtt__scram_set_nonce(void *state, const char *nonce) {
  scram_t *sc = state;
  if (nonce == NULL || nonce[0] == '\0' || strchr(nonce, ',') || strlen(nonce) >= 64)
    return UVMQTT_EINVAL;
  char *copy = dup_n(nonce, strlen(nonce));
  if (copy == NULL) return UVMQTT_ENOMEM;
  uvmqtt__free(sc->fixed_nonce);
  sc->fixed_nonce = copy;
  return 0;
}

int uvmqtt_auth_scram_sha256(uvmqtt_auth_t *auth, const char *user, const char *password) {
  if (auth == NULL || user == NULL || password == NULL) return UVMQTT_EINVAL;
  memset(auth, 0, sizeof *auth);
  scram_t *sc = uvmqtt__calloc(1, sizeof *sc);
  if (sc == NULL) return UVMQTT_ENOMEM;
  sc->user = saslname(user);
  sc->password = dup_n(password, strlen(password));
  if (sc->user == NULL || sc->password == NULL) {
    uvmqtt__free(sc->user);
    uvmqtt__free(sc->password);
    uvmqtt__free(sc);
    return UVMQTT_ENOMEM;
  }
  auth->method = "SCRAM-SHA-256";
  auth->auth = uvmqtt__scram_step;
  auth->state = sc;
  return 0;
}

void uvmqtt_auth_scram_free(uvmqtt_auth_t *auth) {
  if (auth == NULL || auth->auth != uvmqtt__scram_step || auth->state == NULL) return;
  scram_t *sc = auth->state;
  if (sc->password) OPENSSL_cleanse(sc->password, strlen(sc->password));
  uvmqtt__free(sc->user);
  uvmqtt__free(sc->password);
  uvmqtt__free(sc->fixed_nonce);
  uvmqtt__free(sc->first_bare);
  uvmqtt__free(sc->out);
  uvmqtt__free(sc);
  auth->state = NULL;
}
