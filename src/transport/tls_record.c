/* TLS 1.3 record protection (RFC 8446, sections 5.2, 5.3, 7.1 and 7.2) for
 * connections OpenSSL has handed over: see tls_record.h. */
#include "transport/tls_record.h"

#include <openssl/hmac.h>
#include <openssl/tls1.h>
#include <string.h>
#include <uv.h>

/* Fetched once: an explicitly fetched cipher spares every record the
 * implicit fetch that OpenSSL 3 does for EVP_aes_128_gcm() and friends. */
static uv_once_t fetch_once = UV_ONCE_INIT;
static EVP_CIPHER *fetched[3];

static void fetch_ciphers(void) {
  fetched[0] = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
  fetched[1] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  fetched[2] = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

static const EVP_MD *suite_md(const uvmqtt__tls_rec_t *r) {
  return r->hash_len == 48 ? EVP_sha384() : EVP_sha256();
}

/* HKDF-Expand-Label(secret, label, "", len) for len <= the hash's size,
 * which is one HMAC block: T(1) = HMAC(secret, HkdfLabel || 0x01). */
static int expand_label(const uvmqtt__tls_rec_t *r, const uint8_t *secret, const char *label,
                        uint8_t *out, size_t len) {
  uint8_t info[2 + 1 + 6 + 16 + 1 + 1];
  size_t label_len = strlen(label), at = 0;
  if (len > r->hash_len || label_len > 16) return -1;
  info[at++] = (uint8_t)(len >> 8);
  info[at++] = (uint8_t)len;
  info[at++] = (uint8_t)(6 + label_len);
  memcpy(info + at, "tls13 ", 6);
  at += 6;
  memcpy(info + at, label, label_len);
  at += label_len;
  info[at++] = 0; /* empty context */
  info[at++] = 1; /* the block counter */
  uint8_t t[EVP_MAX_MD_SIZE];
  unsigned t_len = 0;
  if (HMAC(suite_md(r), secret, r->hash_len, info, at, t, &t_len) == NULL || t_len < len) return -1;
  memcpy(out, t, len);
  OPENSSL_cleanse(t, sizeof t);
  return 0;
}

static int derive(const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d) {
  d->seq = 0;
  if (expand_label(r, d->secret, "key", d->key, r->key_len) != 0) return -1;
  return expand_label(r, d->secret, "iv", d->iv, sizeof d->iv);
}

int uvmqtt__tls_rec_init(uvmqtt__tls_rec_t *r, uint32_t suite_id, const uint8_t *rd_secret,
                         const uint8_t *wr_secret, size_t secret_len) {
  memset(r, 0, sizeof *r);
  uv_once(&fetch_once, fetch_ciphers);
  switch (suite_id) {
  case TLS1_3_CK_AES_128_GCM_SHA256: r->suite = 1, r->key_len = 16, r->hash_len = 32; break;
  case TLS1_3_CK_AES_256_GCM_SHA384: r->suite = 2, r->key_len = 32, r->hash_len = 48; break;
  case TLS1_3_CK_CHACHA20_POLY1305_SHA256: r->suite = 3, r->key_len = 32, r->hash_len = 32; break;
  default: return -1;
  }
  r->cipher = fetched[r->suite - 1];
  if (r->cipher == NULL || secret_len != r->hash_len) return -1;
  memcpy(r->rd.secret, rd_secret, secret_len);
  memcpy(r->wr.secret, wr_secret, secret_len);
  if (derive(r, &r->rd) != 0 || derive(r, &r->wr) != 0) return -1;
  return 0;
}

int uvmqtt__tls_rec_update(const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d) {
  uint8_t next[48];
  if (expand_label(r, d->secret, "traffic upd", next, r->hash_len) != 0) return -1;
  memcpy(d->secret, next, r->hash_len);
  OPENSSL_cleanse(next, sizeof next);
  return derive(r, d);
}

/* The per-record nonce: the IV with the sequence number XORed into its
 * last eight bytes. */
static int start(EVP_CIPHER_CTX *c, const uvmqtt__tls_rec_t *r, const uvmqtt__tls_dir_t *d,
                 int enc) {
  uint8_t nonce[12];
  memcpy(nonce, d->iv, sizeof nonce);
  for (int i = 0; i < 8; i++)
    nonce[4 + i] ^= (uint8_t)(d->seq >> (56 - 8 * i));
  /* Re-keying a context that already runs this cipher keeps its provider
   * state: only the key schedule is redone. */
  const EVP_CIPHER *cipher = EVP_CIPHER_CTX_get0_cipher(c) == r->cipher ? NULL : r->cipher;
  return EVP_CipherInit_ex2(c, cipher, d->key, nonce, enc, NULL) == 1 ? 0 : -1;
}

long uvmqtt__tls_rec_seal(EVP_CIPHER_CTX *c, const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d,
                          uint8_t type, const uint8_t *const *piece, const size_t *piece_len,
                          unsigned n, uint8_t *out) {
  size_t plain = 0;
  for (unsigned i = 0; i < n; i++)
    plain += piece_len[i];
  if (plain > UVMQTT__TLS_MAX_PLAIN) return -1;
  size_t body = plain + 1 + UVMQTT__TLS_TAG;
  out[0] = UVMQTT__TLS_APPDATA;
  out[1] = 3;
  out[2] = 3;
  out[3] = (uint8_t)(body >> 8);
  out[4] = (uint8_t)body;
  int len = 0;
  if (start(c, r, d, 1) != 0 || EVP_CipherUpdate(c, NULL, &len, out, UVMQTT__TLS_HDR) != 1)
    return -1;
  uint8_t *at = out + UVMQTT__TLS_HDR;
  for (unsigned i = 0; i < n; i++) {
    if (piece_len[i] == 0) continue;
    if (EVP_CipherUpdate(c, at, &len, piece[i], (int)piece_len[i]) != 1) return -1;
    at += len;
  }
  if (EVP_CipherUpdate(c, at, &len, &type, 1) != 1) return -1;
  at += len;
  if (EVP_CipherFinal_ex(c, at, &len) != 1) return -1;
  at += len;
  if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, UVMQTT__TLS_TAG, at) != 1) return -1;
  at += UVMQTT__TLS_TAG;
  d->seq++;
  return (long)(at - out);
}

int uvmqtt__tls_rec_open(EVP_CIPHER_CTX *c, const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d,
                         const uint8_t *rec, size_t rec_len, uint8_t *out, size_t *out_len,
                         uint8_t *type) {
  if (rec_len < UVMQTT__TLS_HDR + UVMQTT__TLS_TAG + 1 ||
      rec_len > UVMQTT__TLS_HDR + UVMQTT__TLS_MAX_CIPHER)
    return -1;
  int ct_len = (int)(rec_len - UVMQTT__TLS_HDR - UVMQTT__TLS_TAG), len = 0, fin = 0;
  if (start(c, r, d, 0) != 0 || EVP_CipherUpdate(c, NULL, &len, rec, UVMQTT__TLS_HDR) != 1 ||
      EVP_CipherUpdate(c, out, &len, rec + UVMQTT__TLS_HDR, ct_len) != 1 ||
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, UVMQTT__TLS_TAG,
                          (void *)(uintptr_t)(rec + rec_len - UVMQTT__TLS_TAG)) != 1 ||
      EVP_CipherFinal_ex(c, out + len, &fin) != 1)
    return -1;
  size_t n = (size_t)len + (size_t)fin;
  /* TLSInnerPlaintext: content, the content type, then zeros. */
  while (n > 0 && out[n - 1] == 0)
    n--;
  if (n == 0 || n - 1 > UVMQTT__TLS_MAX_PLAIN) return -1;
  *type = out[n - 1];
  *out_len = n - 1;
  d->seq++;
  return 0;
}
