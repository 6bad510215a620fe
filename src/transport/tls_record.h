/* The TLS 1.3 record protection an idle connection keeps once OpenSSL has
 * finished with it.
 *
 * An SSL object costs more than 7 KiB in OpenSSL 3 (plus its session, the
 * broker's parsed certificate, the handshake digests and two cipher
 * contexts), while what an established TLS 1.3 connection needs is two
 * traffic secrets, the keys derived from them and two sequence numbers
 * (RFC 8446, section 5). The TLS transport hands a verified connection over
 * to this layer (tls.c decides when) and frees the SSL object.
 *
 * Only AEAD protection lives here: keys from secrets, KeyUpdate, sealing and
 * opening one record. No I/O; the cipher context is the caller's scratch,
 * shared by every connection of a thread, and the layer remembers (per
 * thread) which key it was last given. */
#ifndef UVMQTT_TRANSPORT_TLS_RECORD_H
#define UVMQTT_TRANSPORT_TLS_RECORD_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

/* Record sizes (RFC 8446, 5.2): header, tag, plaintext and ciphertext. */
#define UVMQTT__TLS_HDR        5u
#define UVMQTT__TLS_TAG        16u
#define UVMQTT__TLS_MAX_PLAIN  16384u
#define UVMQTT__TLS_MAX_CIPHER (UVMQTT__TLS_MAX_PLAIN + 256u)

/* Content types. */
#define UVMQTT__TLS_ALERT     21
#define UVMQTT__TLS_HANDSHAKE 22
#define UVMQTT__TLS_APPDATA   23

/* One direction: its traffic secret (kept for KeyUpdate), key, IV and the
 * sequence number of its next record. */
typedef struct {
  uint8_t secret[48];
  uint8_t key[32];
  uint8_t iv[12];
  uint64_t seq;
} uvmqtt__tls_dir_t;

typedef struct {
  const EVP_CIPHER *cipher; /* process-wide, never freed by this struct */
  uint8_t suite;            /* 1, 2 or 3: the low byte of the TLS 1.3 suite */
  uint8_t key_len, hash_len;
  uvmqtt__tls_dir_t rd, wr;
} uvmqtt__tls_rec_t;

/* Sets `r` up for the TLS 1.3 cipher suite `suite_id` (OpenSSL's id, e.g.
 * TLS1_3_CK_AES_128_GCM_SHA256) from the two application traffic secrets of
 * `secret_len` bytes. Returns 0, or -1 for a suite this layer does not
 * implement (the caller then keeps OpenSSL) or a secret of the wrong size. */
int uvmqtt__tls_rec_init(uvmqtt__tls_rec_t *r, uint32_t suite_id, const uint8_t *rd_secret,
                         const uint8_t *wr_secret, size_t secret_len);

/* KeyUpdate for one direction: the next secret, key and IV, sequence 0. */
int uvmqtt__tls_rec_update(const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d);

/* Seals the concatenation of `n` pieces (at most UVMQTT__TLS_MAX_PLAIN
 * bytes together) as one record of content `type` into `out` (room for
 * UVMQTT__TLS_HDR + len + 1 + UVMQTT__TLS_TAG bytes) with d->seq, which then
 * advances. Returns the record's size or -1. */
long uvmqtt__tls_rec_seal(EVP_CIPHER_CTX *c, const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d,
                          uint8_t type, const uint8_t *const *piece, const size_t *piece_len,
                          unsigned n, uint8_t *out);

/* Opens one whole record (header included, its length already checked
 * against UVMQTT__TLS_MAX_CIPHER) with d->seq into `out` (room for the
 * ciphertext's length), strips the padding and returns the inner content
 * type in *type and the content's length in *out_len. On success d->seq
 * advances. Returns 0, or -1 for a record that fails authentication or
 * carries no content type or too much content. */
int uvmqtt__tls_rec_open(EVP_CIPHER_CTX *c, const uvmqtt__tls_rec_t *r, uvmqtt__tls_dir_t *d,
                         const uint8_t *rec, size_t rec_len, uint8_t *out, size_t *out_len,
                         uint8_t *type);

/* To be called before the thread's cipher context `c` is freed: the layer
 * remembers which key it holds, to skip re-keying between the records of a
 * busy connection. */
void uvmqtt__tls_rec_forget(const EVP_CIPHER_CTX *c);

#endif
