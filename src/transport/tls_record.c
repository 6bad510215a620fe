/* TLS 1.3 record protection (RFC 8446, sections 5.2, 5.3, 7.1 and 7.2) for
 * connections OpenSSL has handed over: see tls_record.h. */
#include "transport/tls_record.h"

#include <openssl/crypto.h>
#include <openssl/tls1.h>
#include <string.h>
#include <uv.h>

/* Fetched once: explicitly fetched algorithms spare every use the implicit
 * fetch (a locked lookup by name) that OpenSSL 3 does for EVP_sha256(),
 * EVP_aes_128_gcm() or HMAC(), which the hand-over of every connection and
 * every record would otherwise pay. */
static uv_once_t fetch_once = UV_ONCE_INIT;
static EVP_CIPHER *fetched[3];
static EVP_MD *sha256, *sha384;

static void fetch_algorithms(void) {
  fetched[0] = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
  fetched[1] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  fetched[2] = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
  sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
  sha384 = EVP_MD_fetch(NULL, "SHA2-384", NULL);
}

/* HMAC (RFC 2104) with a key shorter than the hash's block, as traffic
 * secrets are: H((K ^ opad) || H((K ^ ipad) || msg)). */
static int hmac(EVP_MD_CTX *mc, const uvmqtt__tls_rec_t *r, const uint8_t *key, const uint8_t *msg,
                size_t msg_len, uint8_t *out) {
  const EVP_MD *md = r->hash_len == 48 ? sha384 : sha256;
  size_t block = r->hash_len == 48 ? 128 : 64;
  uint8_t pad[128], inner[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  memset(pad, 0x36, block);
  for (size_t i = 0; i < r->hash_len; i++)
    pad[i] ^= key[i];
  int ok = EVP_DigestInit_ex2(mc, md, NULL) == 1 && EVP_DigestUpdate(mc, pad, block) == 1 &&
           EVP_DigestUpdate(mc, msg, msg_len) == 1 && EVP_DigestFinal_ex(mc, inner, &n) == 1;
  for (size_t i = 0; i < block; i++)
    pad[i] ^= 0x36 ^ 0x5c;
  ok = ok && EVP_DigestInit_ex2(mc, md, NULL) == 1 && EVP_DigestUpdate(mc, pad, block) == 1 &&
       EVP_DigestUpdate(mc, inner, n) == 1 && EVP_DigestFinal_ex(mc, out, &n) == 1;
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(inner, sizeof inner);
  return ok ? 0 : -1;
}

/* HKDF-Expand-Label(secret, label, "", len) for len <= the hash's size,
 * which is one HMAC block: T(1) = HMAC(secret, HkdfLabel || 0x01). */
static int expand_label(EVP_MD_CTX *mc, const uvmqtt__tls_rec_t *r, const uint8_t *secret,
                        const char *label, uint8_t *out, size_t len) {
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
  if (hmac(mc, r, secret, info, at, t) != 0) return -1;
  memcpy(out, t, len);
  OPENSSL_cleanse(t, sizeof t);
  return 0;
}

static int derive(EVP_MD_CTX *mc, const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d) {
  d->seq = 0;
  if (expand_label(mc, r, d->secret, "key", d->key, r->key_len) != 0) return -1;
  return expand_label(mc, r, d->secret, "iv", d->iv, sizeof d->iv);
}

int uvmqtt__tls_rec_init(uvmqtt__tls_rec_t *r, uint32_t suite_id, const uint8_t *rd_secret,
                         const uint8_t *wr_secret, size_t secret_len) {
  memset(r, 0, sizeof *r);
  uv_once(&fetch_once, fetch_algorithms);
  switch (suite_id) {
  case TLS1_3_CK_AES_128_GCM_SHA256: r->suite = 1, r->key_len = 16, r->hash_len = 32; break;
  case TLS1_3_CK_AES_256_GCM_SHA384: r->suite = 2, r->key_len = 32, r->hash_len = 48; break;
  case TLS1_3_CK_CHACHA20_POLY1305_SHA256: r->suite = 3, r->key_len = 32, r->hash_len = 32; break;
  default: return -1;
  }
  r->cipher = fetched[r->suite - 1];
  if (r->cipher == NULL || sha256 == NULL || sha384 == NULL || secret_len != r->hash_len) return -1;
  memcpy(r->rd.secret, rd_secret, secret_len);
  memcpy(r->wr.secret, wr_secret, secret_len);
  EVP_MD_CTX *mc = EVP_MD_CTX_new();
  int err = mc == NULL || derive(mc, r, &r->rd) != 0 || derive(mc, r, &r->wr) != 0 ? -1 : 0;
  EVP_MD_CTX_free(mc);
  return err;
}

int uvmqtt__tls_rec_update(const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d) {
  uint8_t next[48];
  EVP_MD_CTX *mc = EVP_MD_CTX_new();
  int err = mc == NULL || expand_label(mc, r, d->secret, "traffic upd", next, r->hash_len) != 0;
  if (!err) {
    memcpy(d->secret, next, r->hash_len);
    err = derive(mc, r, d) != 0;
  }
  OPENSSL_cleanse(next, sizeof next);
  EVP_MD_CTX_free(mc);
  return err ? -1 : 0;
}

/* What the calling thread's cipher context was last keyed with. */
static _Thread_local struct {
  const EVP_CIPHER_CTX *ctx;
  const EVP_CIPHER *cipher;
  int enc;
  uint8_t key[32];
} keyed;

/* Forgets the key when the context is freed (another may take its address). */
void uvmqtt__tls_rec_forget(const EVP_CIPHER_CTX *c) {
  if (keyed.ctx == c) {
    OPENSSL_cleanse(&keyed, sizeof keyed);
  }
}

/* The per-record nonce: the IV with the sequence number XORed into its
 * last eight bytes. */
static int start(EVP_CIPHER_CTX *c, const uvmqtt__tls_rec_t *r, const uvmqtt__tls_dir_t *d,
                 int enc) {
  uint8_t nonce[12];
  memcpy(nonce, d->iv, sizeof nonce);
  for (int i = 0; i < 8; i++)
    nonce[4 + i] ^= (uint8_t)(d->seq >> (56 - 8 * i));
  /* A busy connection's records come one after the other through the
   * thread's context: when it still holds this cipher, key and direction
   * (compared by value, so a freed connection's key cannot be mistaken for
   * another's), only the nonce changes. Otherwise re-keying a context that
   * already runs this cipher keeps its provider state. */
  if (keyed.ctx == c && keyed.cipher == r->cipher && keyed.enc == enc &&
      CRYPTO_memcmp(keyed.key, d->key, r->key_len) == 0)
    return EVP_CipherInit_ex2(c, NULL, NULL, nonce, enc, NULL) == 1 ? 0 : -1;
  const EVP_CIPHER *cipher = EVP_CIPHER_CTX_get0_cipher(c) == r->cipher ? NULL : r->cipher;
  keyed.ctx = NULL;
  if (EVP_CipherInit_ex2(c, cipher, d->key, nonce, enc, NULL) != 1) return -1;
  keyed.ctx = c;
  keyed.cipher = r->cipher;
  keyed.enc = enc;
  memcpy(keyed.key, d->key, r->key_len);
  return 0;
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
