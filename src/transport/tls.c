/* The TLS transport: OpenSSL on top of the TCP transport.
 *
 * Composition, not a copy of TCP: the transport struct the owner holds is set
 * up as a TCP transport whose callbacks are this file's, and its vtable is
 * swapped for the TLS one. TCP keeps resolving, connecting, writing and
 * closing the socket; the TLS layer sits between its callbacks and the
 * owner's. The per-connection state begins with the callbacks struct that
 * t->cb points at, so every call and callback finds it from `t` alone and the
 * shared transport struct needs no extra field.
 *
 * OpenSSL talks to the socket through a small custom BIO rather than memory
 * BIOs: reads hand SSL the bytes libuv just read (from the shared read pool,
 * no copy), and writes go straight to the socket, with only what the socket
 * did not take copied to the heap and queued. With SSL_MODE_RELEASE_BUFFERS
 * an idle connection therefore holds no TLS buffer at all; decrypted bytes go
 * to one 16 KiB buffer shared by the thread's connections, like the read
 * pool.
 *
 * An SSL object is the larger part of an idle connection's heap (more than
 * 7 KiB in OpenSSL 3, with its session, the broker's parsed certificate and
 * two cipher contexts). Once a TLS 1.3 connection is verified, has read its
 * first application data (so the session tickets that precede it were
 * kept) and sits between records, it is handed over to tls_record.c: the
 * application traffic secrets (from OpenSSL's key log callback) and the
 * sequence numbers (records counted as they pass the BIO) are all it needs,
 * and the SSL object is freed. The hand-over first proves itself: the last
 * record read and the last written must open with the derived keys at the
 * counted sequence numbers, or the connection keeps OpenSSL. */
#include "transport/tls.h"

#include <limits.h>
#include <stdatomic.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <string.h>

#include "base/alloc.h"
#include "transport/tls_record.h"
#include "uvmqtt/errors.h"

/* The largest plaintext one TLS record carries. */
#define PLAIN_SIZE 16384u
/* Records up to this size are kept while the hand-over waits, to prove it. */
#define LAST_MAX 512u
/* SSL_write takes an int length: larger buffers go in pieces. */
#define WRITE_PIECE (1u << 30)

/* Servers whose last session a context keeps: a gateway talks to one
 * broker, or to the few nodes of a cluster. */
#define SESSION_SLOTS 8
/* Host names longer than DNS allows are refused, as before sessions had
 * slots. */
#define HOST_MAX 255u

/* The newest session of one server, offered on the next connection to it
 * by any client of the context. `gen` changes whenever the slot is given to
 * another server, so a connection's late ticket cannot land in it. */
typedef struct {
  char *host;
  uint16_t port;
  uint32_t gen;
  SSL_SESSION *session;
} slot_t;

struct uvmqtt_tls_context_s {
  SSL_CTX *ssl_ctx;
  BIO_METHOD *bio_method;
  atomic_uint refs;
  /* The slots and counters below: clients of several loops, in several
   * threads, may share the context. */
  uv_mutex_t lock;
  slot_t slots[SESSION_SLOTS];
  uint32_t gen;
  unsigned next_victim;
  unsigned long handshakes, resumed;
  uint8_t no_sni;
  uint8_t no_resumption;
  uint8_t insecure;
  uint8_t reused;
  uint8_t no_handover; /* OpenSSL keeps each connection: no key log, no hand-over */
};

/* Ciphertext the socket did not take at once, queued on the TCP transport. */
typedef struct {
  void *arg;       /* the owner's, when this record ends one of its writes */
  uint8_t has_arg; /* the owner's on_write follows this record's */
  uint8_t data[];
} write_rec_t;

/* One direction of the ciphertext passing the BIO before the hand-over:
 * where its records start, how many were protected with application keys,
 * and a copy of the last of those when it is small. */
typedef struct {
  uint64_t count;
  size_t body_left;
  uint8_t hdr[UVMQTT__TLS_HDR];
  uint8_t hdr_have; /* 0: between records */
  uint8_t counting; /* the current record came after the handshake */
  uint8_t fits;     /* ... and is copied into last[] */
  uint8_t last_ok;  /* last[] holds the last counted record */
  uint16_t last_len;
  uint8_t last[LAST_MAX];
} stream_t;

/* Kept while OpenSSL runs a TLS 1.3 connection, freed at the hand-over. */
typedef struct {
  uint8_t rd_secret[48], wr_secret[48];
  uint8_t rd_len, wr_len;
  stream_t in, out;
} track_t;

/* A connection after the hand-over: its keys, the record being gathered
 * when one spans reads, and the handshake message being skipped or read. */
typedef struct {
  uvmqtt__tls_rec_t rec;
  uint8_t *part; /* a record spanning reads, header included */
  size_t part_len;
  uint8_t hdr[UVMQTT__TLS_HDR];
  uint8_t hdr_have;
  uint8_t hs_hdr[4];
  uint8_t hs_have;
  uint32_t hs_left;
} detached_t;

typedef struct {
  /* First member: t->cb points here while the connection lives. */
  uvmqtt__transport_cbs_t cbs;
  const uvmqtt__transport_cbs_t *owner;
  const uvmqtt__transport_vtbl_t *tcp;
  uvmqtt__transport_t *t;
  uvmqtt__tls_ctx_t *ctx;
  SSL *ssl;                /* NULL after the hand-over */
  const SSL_SESSION *mine; /* offered, or kept from this connection's tickets */
  uint32_t slot_gen;       /* the generation of ctx->slots[slot] it uses */
  int8_t slot;             /* -1: no session slot */
  track_t *track;          /* TLS 1.3 under OpenSSL: what the hand-over needs */
  detached_t *rec;         /* after the hand-over */
  const uint8_t *in;       /* ciphertext of the current read that SSL has not taken */
  size_t in_len;
  write_rec_t *last_rec; /* the newest record queued during the current write() */
  int io_error;          /* why the BIO failed a write, for the error SSL reports */
  uint8_t established;   /* handshake and verification done, owner told */
  uint8_t cert_asked;    /* the server sent a CertificateRequest */
  uint8_t got_data;      /* application data arrived */
  uint8_t done;          /* the owner heard of a failure or the end: nothing more */
  uint8_t scratch_ref;
} conn_t;

static conn_t *conn_of(const uvmqtt__transport_t *t) {
  return (conn_t *)(void *)(uintptr_t)t->cb;
}

/* ---- The shared buffers ------------------------------------------------------------- */

/* Thread-local for the read pool's reason: a thread's connections run their
 * callbacks one at a time, and the owner consumes the bytes before its
 * on_read returns. `plain` takes decrypted bytes (a whole record's worth,
 * padding included), `seal` the records the handed-over connections write,
 * and `cipher` is re-keyed for each of their records. */
static _Thread_local struct {
  uint8_t *plain;
  uint8_t *seal;
  EVP_CIPHER_CTX *cipher;
  unsigned refs;
} scratch;

#define SEAL_SIZE (UVMQTT__TLS_HDR + UVMQTT__TLS_MAX_PLAIN + 1 + UVMQTT__TLS_TAG)

static void scratch_unref(void) {
  if (--scratch.refs == 0) {
    uvmqtt__free(scratch.plain);
    uvmqtt__free(scratch.seal);
    uvmqtt__tls_rec_forget(scratch.cipher);
    EVP_CIPHER_CTX_free(scratch.cipher);
    memset(&scratch, 0, sizeof scratch);
  }
}

/* The seal buffer and cipher context, on the first hand-over of a thread. */
static int scratch_for_records(void) {
  if (scratch.seal == NULL) scratch.seal = uvmqtt__malloc(SEAL_SIZE);
  if (scratch.cipher == NULL) scratch.cipher = EVP_CIPHER_CTX_new();
  return scratch.seal != NULL && scratch.cipher != NULL ? 0 : UVMQTT_ENOMEM;
}

/* ---- Counting records on their way through the BIO --------------------------------------- */

static void stream_feed(stream_t *st, int after_handshake, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (st->hdr_have < UVMQTT__TLS_HDR) {
      size_t take = UVMQTT__TLS_HDR - st->hdr_have;
      if (take > n) take = n;
      memcpy(st->hdr + st->hdr_have, p, take);
      st->hdr_have = (uint8_t)(st->hdr_have + take);
      p += take;
      n -= take;
      if (st->hdr_have < UVMQTT__TLS_HDR) return;
      st->body_left = (size_t)st->hdr[3] << 8 | st->hdr[4];
      st->counting = after_handshake && st->hdr[0] == UVMQTT__TLS_APPDATA;
      st->fits = st->counting && UVMQTT__TLS_HDR + st->body_left <= LAST_MAX;
      if (st->counting) st->last_ok = 0;
      if (st->fits) {
        memcpy(st->last, st->hdr, UVMQTT__TLS_HDR);
        st->last_len = UVMQTT__TLS_HDR;
      }
    } else {
      size_t take = st->body_left < n ? st->body_left : n;
      if (st->fits) {
        memcpy(st->last + st->last_len, p, take);
        st->last_len = (uint16_t)(st->last_len + take);
      }
      st->body_left -= take;
      p += take;
      n -= take;
    }
    if (st->body_left == 0) {
      if (st->counting) {
        st->count++;
        st->last_ok = st->fits;
      }
      st->hdr_have = 0;
    }
  }
}

/* ---- The BIO between SSL and the socket ---------------------------------------------- */

static int bio_read(BIO *b, char *out, int len) {
  conn_t *s = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (s->in_len == 0) {
    BIO_set_retry_read(b);
    return -1;
  }
  size_t n = s->in_len < (size_t)len ? s->in_len : (size_t)len;
  memcpy(out, s->in, n);
  if (s->track != NULL) stream_feed(&s->track->in, s->established, s->in, n);
  s->in += n;
  s->in_len -= n;
  return (int)n;
}

/* Sends at once what the socket takes; the rest is copied and queued behind
 * the writes already pending, which keeps the byte order. Never "retry":
 * SSL_write then always finishes, so the owner's buffers are free when
 * write() returns. */
static int send_cipher(conn_t *s, const uint8_t *data, size_t len) {
  uvmqtt__transport_t *t = s->t;
  if (t->state != UVMQTT__T_OPEN) return UVMQTT_ENOTCONN;
  uv_buf_t buf = uv_buf_init((char *)(uintptr_t)data, (unsigned)len);
  int n = uvmqtt__transport_tcp_try_write(t, &buf, 1);
  if (n >= 0 && (size_t)n == len) return 0;
  if (n == UV_EAGAIN) {
    n = 0;
  } else if (n < 0) {
    return n;
  }
  size_t rest = len - (size_t)n;
  write_rec_t *w = uvmqtt__malloc(sizeof *w + rest);
  if (w == NULL) return UVMQTT_ENOMEM;
  memcpy(w->data, data + n, rest);
  w->arg = NULL;
  w->has_arg = 0;
  buf = uv_buf_init((char *)w->data, (unsigned)rest);
  int r = s->tcp->write(t, &buf, 1, w);
  if (r == 1) {
    uvmqtt__free(w);
  } else if (r < 0) {
    uvmqtt__free(w);
    return r;
  } else {
    s->last_rec = w;
  }
  return 0;
}

static int bio_write(BIO *b, const char *data, int len) {
  conn_t *s = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (len <= 0) return 0;
  int err = send_cipher(s, (const uint8_t *)data, (size_t)len);
  if (err) {
    s->io_error = err;
    return -1;
  }
  if (s->track != NULL)
    stream_feed(&s->track->out, s->established, (const uint8_t *)data, (size_t)len);
  return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b;
  (void)num;
  (void)ptr;
  /* SSL flushes after each handshake flight; bio_write already sent it. */
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static int bio_destroy(BIO *b) {
  (void)b;
  return 1;
}

/* BIO type indexes are a small process-wide pool: take one, once. */
static uv_once_t bio_index_once = UV_ONCE_INIT;
static int bio_index;

static void take_bio_index(void) {
  bio_index = BIO_get_new_index();
}

static BIO_METHOD *new_bio_method(void) {
  uv_once(&bio_index_once, take_bio_index);
  if (bio_index == -1) return NULL;
  BIO_METHOD *m = BIO_meth_new(bio_index | BIO_TYPE_SOURCE_SINK, "uvmqtt-uv");
  if (m == NULL) return NULL;
  if (!BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write) ||
      !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create) ||
      !BIO_meth_set_destroy(m, bio_destroy)) {
    BIO_meth_free(m);
    return NULL;
  }
  return m;
}

/* ---- Errors ------------------------------------------------------------------------------ */

static int verify_error(long v) {
  switch (v) {
  case X509_V_ERR_HOSTNAME_MISMATCH:
  case X509_V_ERR_IP_ADDRESS_MISMATCH:
  case X509_V_ERR_EMAIL_MISMATCH: return UVMQTT_ETLSHOSTNAME;
  case X509_V_ERR_CERT_HAS_EXPIRED:
  case X509_V_ERR_CERT_NOT_YET_VALID: return UVMQTT_ETLSEXPIRED;
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
  case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
  case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
  case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
  case X509_V_ERR_CERT_UNTRUSTED: return UVMQTT_ETLSUNKNOWNCA;
  default: return UVMQTT_ETLSCERT;
  }
}

/* Alerts a server sends when it refuses our certificate or wants one. */
static int is_peer_cert_alert(int reason) {
  switch (reason) {
  case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
  case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
  case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
  case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
  case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED: return 1;
  default: return 0;
  }
}

/* Names the cause of a failed SSL call: a socket error seen by the BIO, a
 * failed verification, an alert about our certificate, or else `fallback`.
 * Empties the thread's OpenSSL error queue, which other connections share. */
static int ssl_error(conn_t *s, int fallback) {
  int err = fallback;
  if (s->io_error != 0) {
    err = s->io_error;
  } else if (!s->established && SSL_get_verify_result(s->ssl) != X509_V_OK) {
    err = verify_error(SSL_get_verify_result(s->ssl));
  } else {
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
      if (ERR_GET_LIB(e) != ERR_LIB_SSL) continue;
      if (is_peer_cert_alert(ERR_GET_REASON(e)))
        err = UVMQTT_ETLSPEERCERT;
      else if (ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
        err = UVMQTT_ETLSCERT;
    }
  }
  ERR_clear_error();
  return err;
}

/* ---- Driving SSL from the socket's callbacks ---------------------------------------------- */

static int stopped(const conn_t *s) {
  return s->done || s->t->state != UVMQTT__T_OPEN;
}

/* The connection's slot, if it still belongs to the same server; the
 * context's lock held. */
static slot_t *slot_of(const conn_t *s) {
  if (s->slot < 0) return NULL;
  slot_t *sl = &s->ctx->slots[s->slot];
  return sl->gen == s->slot_gen ? sl : NULL;
}

/* A session that failed (offered to a handshake that failed, or kept from
 * a connection that broke TLS) is not offered again; a newer one that
 * another client of the context kept stays. */
static void drop_session(conn_t *s) {
  uv_mutex_lock(&s->ctx->lock);
  slot_t *sl = slot_of(s);
  if (sl != NULL && sl->session != NULL && sl->session == s->mine) {
    SSL_SESSION_free(sl->session);
    sl->session = NULL;
  }
  uv_mutex_unlock(&s->ctx->lock);
}

static void fail_handshake(conn_t *s, int err) {
  s->done = 1;
  drop_session(s);
  s->owner->on_connect(s->t, err);
}

/* With TLS 1.3 the server judges our certificate only after our handshake
 * finished, then sends an alert and hangs up; the reset that our early
 * CONNECT provokes can destroy the alert, and the hang-up may show first as
 * a failed write. A broker that asked for a certificate and hung up before
 * sending anything refused the certificate (or its absence). */
static int refused_certificate(const conn_t *s, int err) {
  if (s->cert_asked && !s->got_data && (err == UV_EOF || err == UV_ECONNRESET || err == UV_EPIPE))
    return UVMQTT_ETLSPEERCERT;
  return err;
}

static void end_stream(conn_t *s, int err) {
  s->done = 1;
  s->owner->on_read(s->t, err, NULL);
}

/* 1 once the handshake finished (and the owner was told), 0 while it waits
 * for bytes, -1 after a failure was reported. */
static int handshake(conn_t *s) {
  for (;;) {
    size_t before = s->in_len;
    ERR_clear_error();
    int r = SSL_do_handshake(s->ssl);
    if (r == 1) break;
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ && s->io_error == 0) {
      if (s->in_len == 0) return 0;
      /* Asking for more while bytes remain would loop forever. */
      if (s->in_len < before) continue;
    }
    fail_handshake(s, ssl_error(s, UVMQTT_ETLSHANDSHAKE));
    return -1;
  }
  ERR_clear_error();
  scratch.refs++;
  s->scratch_ref = 1;
  if (scratch.plain == NULL) scratch.plain = uvmqtt__malloc(UVMQTT__TLS_MAX_CIPHER);
  if (scratch.plain == NULL) {
    fail_handshake(s, UVMQTT_ENOMEM);
    return -1;
  }
  s->established = 1;
  uv_mutex_lock(&s->ctx->lock);
  s->ctx->reused = (uint8_t)SSL_session_reused(s->ssl);
  s->ctx->handshakes++;
  s->ctx->resumed += s->ctx->reused;
  uv_mutex_unlock(&s->ctx->lock);
  s->owner->on_connect(s->t, 0);
  return 1;
}

/* Feeds what the socket delivered (s->in) through SSL: the handshake first,
 * then records, handing each decrypted chunk to the owner. Stops when SSL
 * has taken every byte, or when the owner closed from a callback. */
static void drive(conn_t *s) {
  if (!s->established && handshake(s) <= 0) return;
  while (!stopped(s)) {
    size_t before = s->in_len, n = 0;
    ERR_clear_error();
    if (SSL_read_ex(s->ssl, scratch.plain, PLAIN_SIZE, &n) == 1) {
      s->got_data = 1;
      s->owner->on_read(s->t, (ssize_t)n, scratch.plain);
      continue;
    }
    int e = SSL_get_error(s->ssl, 0);
    if (e == SSL_ERROR_WANT_READ && s->io_error == 0) {
      if (s->in_len == 0) return;
      if (s->in_len < before) continue;
      end_stream(s, UVMQTT_ETLSPROTO);
    } else if (e == SSL_ERROR_ZERO_RETURN) {
      /* close_notify: the broker ended the stream cleanly. */
      ERR_clear_error();
      end_stream(s, UV_EOF);
    } else {
      /* A broken record or a fatal alert: that session is not offered again. */
      drop_session(s);
      end_stream(s, ssl_error(s, UVMQTT_ETLSPROTO));
    }
    return;
  }
}

/* ---- The hand-over ------------------------------------------------------------------------------
 */

static void track_free(conn_t *s) {
  if (s->track == NULL) return;
  OPENSSL_cleanse(s->track, sizeof *s->track);
  uvmqtt__free(s->track);
  s->track = NULL;
}

/* Opens a copy of the last record of one direction with `d` at the
 * sequence number before `count`: right keys, right count. */
static int proves(detached_t *r, uvmqtt__tls_dir_t *d, const stream_t *st) {
  uint8_t type;
  size_t n;
  d->seq = st->count - 1;
  return uvmqtt__tls_rec_open(scratch.cipher, &r->rec, d, st->last, st->last_len, scratch.plain, &n,
                              &type) == 0 &&
         d->seq == st->count;
}

/* Called between reads. Waits while the moment is not right (mid-record, a
 * KeyUpdate pending, no application data yet, a last record too large to
 * have been kept); gives up for good, keeping OpenSSL, when the connection
 * is not TLS 1.3 with a suite tls_record.c implements or the proof fails. */
static void try_hand_over(conn_t *s) {
  track_t *k = s->track;
  if (k == NULL || s->ssl == NULL || !s->established || stopped(s) || !s->got_data) return;
  if (k->in.hdr_have || k->out.hdr_have || !k->in.last_ok || !k->out.last_ok) return;
  if (SSL_has_pending(s->ssl) || SSL_get_key_update_type(s->ssl) != SSL_KEY_UPDATE_NONE) return;
  const SSL_CIPHER *suite = SSL_get_current_cipher(s->ssl);
  detached_t *r = NULL;
  if (SSL_version(s->ssl) == TLS1_3_VERSION && suite != NULL && k->rd_len != 0 &&
      k->rd_len == k->wr_len && scratch_for_records() == 0)
    r = uvmqtt__calloc(1, sizeof *r);
  int ok = r != NULL &&
           uvmqtt__tls_rec_init(&r->rec, (uint32_t)SSL_CIPHER_get_id(suite), k->rd_secret,
                                k->wr_secret, k->rd_len) == 0 &&
           proves(r, &r->rec.rd, &k->in) && proves(r, &r->rec.wr, &k->out);
  ERR_clear_error();
  track_free(s);
  if (!ok) {
    if (r != NULL) OPENSSL_cleanse(r, sizeof *r);
    uvmqtt__free(r);
    return;
  }
  /* As in conn_free: the session kept for resumption stays resumable. */
  SSL_set_shutdown(s->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  SSL_free(s->ssl);
  s->ssl = NULL;
  s->rec = r;
}

/* Seals one record of `type` from `n` pieces and sends it. */
static int send_record(conn_t *s, uint8_t type, const uint8_t *const *piece, const size_t *len,
                       unsigned n) {
  detached_t *r = s->rec;
  long size =
      uvmqtt__tls_rec_seal(scratch.cipher, &r->rec, &r->rec.wr, type, piece, len, n, scratch.seal);
  ERR_clear_error();
  if (size < 0) return UVMQTT_ETLSPROTO;
  return send_cipher(s, scratch.seal, (size_t)size);
}

static int send_alert_close_notify(conn_t *s) {
  static const uint8_t alert[2] = {1, 0}; /* warning, close_notify */
  const uint8_t *piece = alert;
  size_t len = sizeof alert;
  return send_record(s, UVMQTT__TLS_ALERT, &piece, &len, 1);
}

/* The owner's bytes as records of at most 16 KiB, each gathered from as
 * many of the owner's buffers as fit. */
static int write_records(conn_t *s, const uv_buf_t *bufs, unsigned nbufs) {
  enum { PIECES = 16 };
  const uint8_t *piece[PIECES];
  size_t len[PIECES];
  unsigned n = 0, i = 0;
  size_t off = 0, total = 0;
  while (i < nbufs) {
    size_t take = bufs[i].len - off;
    if (take > UVMQTT__TLS_MAX_PLAIN - total) take = UVMQTT__TLS_MAX_PLAIN - total;
    if (take > 0) {
      piece[n] = (const uint8_t *)bufs[i].base + off;
      len[n++] = take;
      total += take;
      off += take;
    }
    if (off == bufs[i].len) {
      i++;
      off = 0;
    }
    if (total == UVMQTT__TLS_MAX_PLAIN || n == PIECES || (i == nbufs && total > 0)) {
      int err = send_record(s, UVMQTT__TLS_APPDATA, piece, len, n);
      if (err) return err;
      n = 0;
      total = 0;
    }
  }
  return 0;
}

/* Handshake messages after the hand-over (RFC 8446, 4.6): session tickets
 * are skipped (the ones that mattered came before the hand-over), a
 * KeyUpdate renews the read keys and, when asked, ours; anything else ends
 * the stream. Returns 0 or an error. */
static int handshake_bytes(conn_t *s, const uint8_t *p, size_t n) {
  detached_t *r = s->rec;
  if (n == 0) return UVMQTT_ETLSPROTO;
  while (n > 0) {
    if (r->hs_have < 4) {
      r->hs_hdr[r->hs_have++] = *p++;
      n--;
      if (r->hs_have < 4) continue;
      r->hs_left = (uint32_t)r->hs_hdr[1] << 16 | (uint32_t)r->hs_hdr[2] << 8 | r->hs_hdr[3];
      if (r->hs_hdr[0] == 24 ? r->hs_left != 1 : r->hs_hdr[0] != 4) return UVMQTT_ETLSPROTO;
      if (r->hs_left > 0) continue;
    } else {
      size_t take = r->hs_left < n ? r->hs_left : n;
      uint8_t update = *p;
      p += take;
      n -= take;
      r->hs_left -= (uint32_t)take;
      if (r->hs_left > 0) continue;
      if (r->hs_hdr[0] == 24) {
        /* The keys change after this message: nothing may follow it in
         * its record. */
        if (n != 0 || update > 1) return UVMQTT_ETLSPROTO;
        if (uvmqtt__tls_rec_update(&r->rec, &r->rec.rd) != 0) return UVMQTT_ETLSPROTO;
        if (update == 1) {
          static const uint8_t msg[5] = {24, 0, 0, 1, 0}; /* update_not_requested */
          const uint8_t *piece = msg;
          size_t len = sizeof msg;
          int err = send_record(s, UVMQTT__TLS_HANDSHAKE, &piece, &len, 1);
          if (err) return err;
          if (uvmqtt__tls_rec_update(&r->rec, &r->rec.wr) != 0) return UVMQTT_ETLSPROTO;
        }
      }
    }
    r->hs_have = 0;
  }
  ERR_clear_error();
  return 0;
}

/* One whole record: opened, then handed to the owner or handled here. */
static void open_record(conn_t *s, const uint8_t *rec, size_t rec_len) {
  detached_t *r = s->rec;
  uint8_t type;
  size_t n;
  int err = uvmqtt__tls_rec_open(scratch.cipher, &r->rec, &r->rec.rd, rec, rec_len, scratch.plain,
                                 &n, &type);
  ERR_clear_error();
  if (err) {
    end_stream(s, UVMQTT_ETLSPROTO);
  } else if (type == UVMQTT__TLS_APPDATA && r->hs_have == 0) {
    if (n > 0) s->owner->on_read(s->t, (ssize_t)n, scratch.plain);
  } else if (type == UVMQTT__TLS_HANDSHAKE) {
    err = handshake_bytes(s, scratch.plain, n);
    if (err) end_stream(s, err);
  } else if (type == UVMQTT__TLS_ALERT && n == 2 && r->hs_have == 0) {
    /* close_notify ends the stream cleanly; any other alert is fatal. */
    end_stream(s, scratch.plain[1] == 0 ? UV_EOF : UVMQTT_ETLSPROTO);
  } else {
    end_stream(s, UVMQTT_ETLSPROTO);
  }
}

/* The length of the record a header announces, or 0 for a header that no
 * TLS 1.3 record after the handshake carries. */
static size_t record_length(const uint8_t *h) {
  size_t len = (size_t)h[3] << 8 | h[4];
  if (h[0] != UVMQTT__TLS_APPDATA || h[1] != 3 || h[2] != 3 || len > UVMQTT__TLS_MAX_CIPHER ||
      len < UVMQTT__TLS_TAG + 1)
    return 0;
  return UVMQTT__TLS_HDR + len;
}

/* Ciphertext from the socket after the hand-over: whole records are opened
 * where they lie in the read pool's buffer; only a record spanning reads is
 * gathered on the heap, and freed once complete. */
static void read_records(conn_t *s, const uint8_t *p, size_t n) {
  detached_t *r = s->rec;
  while (n > 0 && !stopped(s)) {
    if (r->hdr_have == 0 && n >= UVMQTT__TLS_HDR) {
      size_t len = record_length(p);
      if (len == 0) {
        end_stream(s, UVMQTT_ETLSPROTO);
        return;
      }
      if (n >= len) {
        open_record(s, p, len);
        p += len;
        n -= len;
        continue;
      }
    }
    if (r->hdr_have < UVMQTT__TLS_HDR) {
      size_t take = UVMQTT__TLS_HDR - r->hdr_have;
      if (take > n) take = n;
      memcpy(r->hdr + r->hdr_have, p, take);
      r->hdr_have = (uint8_t)(r->hdr_have + take);
      p += take;
      n -= take;
      if (r->hdr_have < UVMQTT__TLS_HDR) return;
      size_t len = record_length(r->hdr);
      if (len == 0 || (r->part = uvmqtt__malloc(len)) == NULL) {
        end_stream(s, len == 0 ? UVMQTT_ETLSPROTO : UVMQTT_ENOMEM);
        return;
      }
      memcpy(r->part, r->hdr, UVMQTT__TLS_HDR);
      r->part_len = UVMQTT__TLS_HDR;
    }
    size_t len = record_length(r->hdr), take = len - r->part_len;
    if (take > n) take = n;
    memcpy(r->part + r->part_len, p, take);
    r->part_len += take;
    p += take;
    n -= take;
    if (r->part_len < len) return;
    uint8_t *whole = r->part;
    r->part = NULL;
    r->hdr_have = 0;
    open_record(s, whole, len);
    uvmqtt__free(whole);
  }
}

/* ---- The TCP transport's callbacks -------------------------------------------------------- */

static void tls_on_connect(uvmqtt__transport_t *t, int status) {
  conn_t *s = conn_of(t);
  if (status < 0) {
    s->done = 1;
    s->owner->on_connect(t, status);
    return;
  }
  /* Sends the ClientHello; the rest follows the server's answers. */
  drive(s);
}

static void tls_on_read(uvmqtt__transport_t *t, ssize_t nread, const uint8_t *data) {
  conn_t *s = conn_of(t);
  if (s->done) return;
  if (nread < 0) {
    if (s->established) {
      end_stream(s, refused_certificate(s, (int)nread));
    } else {
      /* Whoever hung up before the handshake finished (EOF or a reset) is
       * no TLS server or refused this client's TLS. */
      int err = nread == UV_EOF || nread == UV_ECONNRESET ? UVMQTT_ETLSCLOSED : (int)nread;
      fail_handshake(s, err);
    }
    return;
  }
  if (s->rec != NULL) {
    read_records(s, data, (size_t)nread);
    return;
  }
  s->in = data;
  s->in_len = (size_t)nread;
  drive(s);
  /* The bytes belong to the read pool and die with this callback. */
  s->in = NULL;
  s->in_len = 0;
  /* SSL_MODE_RELEASE_BUFFERS misses one case: reading a post-handshake
   * message (the TLS 1.3 session tickets) sets up a 16 KiB write buffer
   * that no write ever releases. Between reads nothing needs either buffer
   * unless a partial record waits in it, which SSL_has_pending() reports. */
  if (s->established && !stopped(s)) {
    try_hand_over(s);
    if (s->ssl != NULL && !SSL_has_pending(s->ssl)) (void)SSL_free_buffers(s->ssl);
  }
}

static void tls_on_write(uvmqtt__transport_t *t, int status, void *arg) {
  conn_t *s = conn_of(t);
  write_rec_t *w = arg;
  void *owner_arg = w->arg;
  int has_arg = w->has_arg;
  uvmqtt__free(w);
  if (has_arg) {
    s->owner->on_write(t, status < 0 ? refused_certificate(s, status) : status, owner_arg);
  } else if (status < 0 && !s->established && !stopped(s)) {
    /* A handshake flight did not go out: the handshake cannot finish. */
    fail_handshake(s, status);
  }
}

static void conn_free(conn_t *s) {
  /* OpenSSL marks the session of a connection that ended without
   * close_notify as not resumable. A dropped TCP connection is exactly when
   * resumption pays, and MQTT's own framing makes truncation harmless, so a
   * verified connection counts as shut down; one that failed its handshake
   * or broke TLS has already dropped its session. */
  if (s->ssl != NULL && s->established)
    SSL_set_shutdown(s->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  if (s->ssl != NULL) SSL_free(s->ssl);
  track_free(s);
  if (s->rec != NULL) {
    uvmqtt__free(s->rec->part);
    OPENSSL_cleanse(s->rec, sizeof *s->rec);
    uvmqtt__free(s->rec);
  }
  if (s->scratch_ref) scratch_unref();
  uvmqtt__free(s);
}

static void tls_on_close(uvmqtt__transport_t *t) {
  conn_t *s = conn_of(t);
  const uvmqtt__transport_cbs_t *owner = s->owner;
  /* Leave a closed TCP transport behind, as if TLS had never been there. */
  t->cb = owner;
  t->vt = s->tcp;
  conn_free(s);
  owner->on_close(t);
}

/* ---- The vtable ------------------------------------------------------------------------------ */

static int is_ip_literal(const char *host) {
  unsigned char addr[16];
  return uv_inet_pton(AF_INET, host, addr) == 0 || uv_inet_pton(AF_INET6, host, addr) == 0;
}

/* Finds the server's slot, or gives it the oldest one, and offers its
 * session. A connection without a slot (no memory for the name) simply
 * makes a full handshake. Returns 0 when SSL refused the session. */
static int offer_session(conn_t *s, const char *host, uint16_t port) {
  uvmqtt__tls_ctx_t *ctx = s->ctx;
  int ok = 1, i;
  uv_mutex_lock(&ctx->lock);
  for (i = 0; i < SESSION_SLOTS; i++)
    if (ctx->slots[i].host != NULL && ctx->slots[i].port == port &&
        !strcmp(ctx->slots[i].host, host))
      break;
  if (i == SESSION_SLOTS) {
    i = (int)(ctx->next_victim++ % SESSION_SLOTS);
    slot_t *sl = &ctx->slots[i];
    if (sl->session != NULL) SSL_SESSION_free(sl->session);
    uvmqtt__free(sl->host);
    int err = 0;
    sl->host = uvmqtt__strdup(host, &err);
    sl->port = port;
    sl->gen = ++ctx->gen;
    sl->session = NULL;
  }
  slot_t *sl = &ctx->slots[i];
  s->slot = sl->host != NULL ? (int8_t)i : -1;
  s->slot_gen = sl->gen;
  if (sl->session != NULL && SSL_SESSION_is_resumable(sl->session)) {
    ok = SSL_set_session(s->ssl, sl->session) == 1;
    s->mine = sl->session;
  }
  uv_mutex_unlock(&ctx->lock);
  return ok;
}

/* A new SSL for one connection: the BIO, SNI, the name or address the
 * certificate must carry, and the last session when it was the same
 * server's. */
static int new_ssl(conn_t *s, const char *host, uint16_t port) {
  uvmqtt__tls_ctx_t *ctx = s->ctx;
  size_t host_len = strlen(host);
  if (host_len > HOST_MAX) return UVMQTT_EINVAL;
  ERR_clear_error();
  s->ssl = SSL_new(ctx->ssl_ctx);
  BIO *bio = s->ssl != NULL ? BIO_new(ctx->bio_method) : NULL;
  if (bio == NULL) {
    ERR_clear_error();
    return UVMQTT_ENOMEM;
  }
  BIO_set_data(bio, s);
  SSL_set_bio(s->ssl, bio, bio);
  SSL_set_app_data(s->ssl, s);
  SSL_set_connect_state(s->ssl);
  int ip = is_ip_literal(host);
  int ok = 1;
  if (!ctx->no_sni && !ip) ok = SSL_set_tlsext_host_name(s->ssl, host) == 1;
  if (ok && !ctx->insecure) {
    X509_VERIFY_PARAM *vp = SSL_get0_param(s->ssl);
    X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host) == 1
            : X509_VERIFY_PARAM_set1_host(vp, host, host_len) == 1;
  }
  if (ok && !ctx->no_resumption) ok = offer_session(s, host, port);
  ERR_clear_error();
  return ok ? 0 : UVMQTT_EINVAL;
}

static int tls_connect(uvmqtt__transport_t *t, const char *host, uint16_t port) {
  conn_t *s = conn_of(t);
  if (host == NULL || host[0] == '\0') return UVMQTT_EINVAL;
  if (s->ssl != NULL) return UVMQTT_EBUSY;
  int err = new_ssl(s, host, port);
  if (err == 0) err = s->tcp->connect(t, host, port);
  if (err) {
    /* Nothing started: the owner will not close, so release everything. */
    t->cb = s->owner;
    t->vt = s->tcp;
    conn_free(s);
  }
  return err;
}

static int tls_write(uvmqtt__transport_t *t, const uv_buf_t *bufs, unsigned nbufs, void *arg) {
  conn_t *s = conn_of(t);
  if (!s->established || stopped(s)) return UVMQTT_ENOTCONN;
  s->last_rec = NULL;
  if (s->rec != NULL) {
    int err = write_records(s, bufs, nbufs);
    if (err) return refused_certificate(s, err);
  }
  for (unsigned i = 0; s->ssl != NULL && i < nbufs; i++) {
    size_t off = 0;
    while (off < bufs[i].len) {
      size_t piece = bufs[i].len - off < WRITE_PIECE ? bufs[i].len - off : WRITE_PIECE;
      size_t written = 0;
      ERR_clear_error();
      if (SSL_write_ex(s->ssl, bufs[i].base + off, piece, &written) != 1)
        return refused_certificate(s, ssl_error(s, UVMQTT_ETLSPROTO));
      off += written;
    }
  }
  /* Records complete in order, so the owner's write is done when its last
   * record is: attach the owner's arg to that one. None queued: all sent. */
  if (s->last_rec == NULL) return 1;
  s->last_rec->arg = arg;
  s->last_rec->has_arg = 1;
  s->last_rec = NULL;
  return 0;
}

static size_t tls_write_queue_size(const uvmqtt__transport_t *t) {
  return t->pending_bytes;
}

/* close_notify first, then the TCP half-close behind it. */
static int tls_shutdown(uvmqtt__transport_t *t) {
  conn_t *s = conn_of(t);
  if (t->state != UVMQTT__T_OPEN || !s->established || stopped(s)) return UVMQTT_ENOTCONN;
  ERR_clear_error();
  if (s->ssl != NULL)
    (void)SSL_shutdown(s->ssl);
  else
    (void)send_alert_close_notify(s);
  ERR_clear_error();
  return s->tcp->shutdown(t);
}

static void tls_close(uvmqtt__transport_t *t) {
  conn_t *s = conn_of(t);
  if (t->state == UVMQTT__T_CLOSING || t->state == UVMQTT__T_CLOSED) return;
  /* A close_notify, best effort: the socket closes right after it. */
  if (s->established && !stopped(s)) {
    ERR_clear_error();
    if (s->ssl != NULL)
      (void)SSL_shutdown(s->ssl);
    else
      (void)send_alert_close_notify(s);
    ERR_clear_error();
  }
  s->done = 1;
  s->tcp->close(t);
}

static const uvmqtt__transport_vtbl_t tls_vtbl = {
    .connect = tls_connect,
    .write = tls_write,
    .shutdown = tls_shutdown,
    .write_queue_size = tls_write_queue_size,
    .close = tls_close,
};

int uvmqtt__transport_tls_handed_over(const uvmqtt__transport_t *t) {
  return t->vt == &tls_vtbl && conn_of(t)->rec != NULL;
}

int uvmqtt__transport_tls_init(uvmqtt__transport_t *t, uvmqtt__poller_t *poller,
                               const uvmqtt__transport_cbs_t *cb, uvmqtt__tls_ctx_t **ctx) {
  if (*ctx == NULL) {
    int err = uvmqtt__tls_ctx_new(NULL, ctx);
    if (err) return err;
  }
  conn_t *s = uvmqtt__calloc(1, sizeof *s);
  if (s == NULL) return UVMQTT_ENOMEM;
  s->cbs.on_connect = tls_on_connect;
  s->cbs.on_read = tls_on_read;
  s->cbs.on_write = tls_on_write;
  s->cbs.on_close = tls_on_close;
  s->owner = cb;
  s->ctx = *ctx;
  s->slot = -1;
  s->t = t;
  uvmqtt__transport_tcp_init(t, poller, &s->cbs);
  s->tcp = t->vt;
  t->vt = &tls_vtbl;
  return 0;
}

/* ---- The context ------------------------------------------------------------------------------
 */

/* Keeps the last session OpenSSL hands over (TLS 1.3 sends tickets after the
 * handshake, sometimes two: the newest wins). */
static int on_new_session(SSL *ssl, SSL_SESSION *session) {
  conn_t *s = SSL_get_app_data(ssl);
  uv_mutex_lock(&s->ctx->lock);
  slot_t *sl = slot_of(s);
  if (sl != NULL) {
    if (sl->session != NULL) SSL_SESSION_free(sl->session);
    sl->session = session;
    s->mine = session;
  }
  uv_mutex_unlock(&s->ctx->lock);
  /* 1: the reference is ours now; 0: OpenSSL keeps (and frees) it. */
  return sl != NULL;
}

/* TLS 1.3's application traffic secrets, kept for the hand-over. OpenSSL
 * logs them as "LABEL <client random> <secret>", in hex. */
static void on_keylog(const SSL *ssl, const char *line) {
  conn_t *s = SSL_get_app_data(ssl);
  static const char rd[] = "SERVER_TRAFFIC_SECRET_0 ", wr[] = "CLIENT_TRAFFIC_SECRET_0 ";
  int is_rd = strncmp(line, rd, sizeof rd - 1) == 0;
  if (s == NULL || (!is_rd && strncmp(line, wr, sizeof wr - 1) != 0)) return;
  const char *hex = strchr(line + sizeof rd - 1, ' ');
  if (hex == NULL) return;
  hex++;
  size_t n = strlen(hex) / 2;
  if (n == 0 || n > 48) return;
  if (s->track == NULL && (s->track = uvmqtt__calloc(1, sizeof *s->track)) == NULL) return;
  uint8_t *out = is_rd ? s->track->rd_secret : s->track->wr_secret;
  for (size_t i = 0; i < n; i++) {
    int hi = OPENSSL_hexchar2int((unsigned char)hex[2 * i]);
    int lo = OPENSSL_hexchar2int((unsigned char)hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  if (is_rd)
    s->track->rd_len = (uint8_t)n;
  else
    s->track->wr_len = (uint8_t)n;
}

/* Called on a client only when the server asks for a certificate. */
static int on_cert_request(SSL *ssl, void *arg) {
  (void)arg;
  conn_t *s = SSL_get_app_data(ssl);
  s->cert_asked = 1;
  return 1;
}

/* OpenSSL's own fallback prompts on the terminal, which would block: a key
 * without a password source fails to load instead. */
static int password_cb(char *buf, int size, int rwflag, void *u) {
  (void)rwflag;
  const uvmqtt_tls_options_t *o = u;
  if (o->key_password != NULL) {
    size_t n = strlen(o->key_password);
    if (n > (size_t)size) return -1;
    memcpy(buf, o->key_password, n);
    return (int)n;
  }
  if (o->key_password_cb != NULL) return o->key_password_cb(buf, size, o->key_password_arg);
  return -1;
}

static int load_identity(SSL_CTX *sc, const uvmqtt_tls_options_t *o) {
  if (o->cert_file == NULL) return o->key_file == NULL;
  if (SSL_CTX_use_certificate_chain_file(sc, o->cert_file) != 1) return 0;
  SSL_CTX_set_default_passwd_cb(sc, password_cb);
  SSL_CTX_set_default_passwd_cb_userdata(sc, (void *)(uintptr_t)o);
  /* Without key_file the key sits in the certificate's file. */
  const char *key = o->key_file != NULL ? o->key_file : o->cert_file;
  int ok = SSL_CTX_use_PrivateKey_file(sc, key, SSL_FILETYPE_PEM) == 1 &&
           SSL_CTX_check_private_key(sc) == 1;
  /* The options are the caller's and go away after init. */
  SSL_CTX_set_default_passwd_cb(sc, NULL);
  SSL_CTX_set_default_passwd_cb_userdata(sc, NULL);
  return ok;
}

/* ALPN's wire form: each name preceded by its length. */
static int set_alpn(SSL_CTX *sc, const uvmqtt_tls_options_t *o) {
  if (o->alpn_count == 0) return 0;
  if (o->alpn == NULL || o->alpn_count > 1024) return UVMQTT_EINVAL;
  size_t total = 0;
  for (size_t i = 0; i < o->alpn_count; i++) {
    size_t n = o->alpn[i] != NULL ? strlen(o->alpn[i]) : 0;
    if (n == 0 || n > 255) return UVMQTT_EINVAL;
    total += 1 + n;
  }
  if (total > 65535) return UVMQTT_EINVAL;
  unsigned char *wire = uvmqtt__malloc(total);
  if (wire == NULL) return UVMQTT_ENOMEM;
  size_t at = 0;
  for (size_t i = 0; i < o->alpn_count; i++) {
    size_t n = strlen(o->alpn[i]);
    wire[at++] = (unsigned char)n;
    memcpy(wire + at, o->alpn[i], n);
    at += n;
  }
  /* Unlike most of OpenSSL, 0 means success here. */
  int err = SSL_CTX_set_alpn_protos(sc, wire, (unsigned)total) == 0 ? 0 : UVMQTT_ENOMEM;
  uvmqtt__free(wire);
  return err;
}

static int configure(uvmqtt__tls_ctx_t *ctx, const uvmqtt_tls_options_t *o) {
  SSL_CTX *sc = ctx->ssl_ctx;
  int min = o->min_version ? o->min_version : UVMQTT_TLS_1_2;
  if (min != UVMQTT_TLS_1_2 && min != UVMQTT_TLS_1_3) return UVMQTT_ETLSCONFIG;
  if (SSL_CTX_set_min_proto_version(sc, min) != 1) return UVMQTT_ETLSCONFIG;
  /* Idle connections give their 2 x 17 KiB record buffers back. A client
   * never renegotiates: every SSL_write then completes without reading. */
  SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(sc, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_verify(sc, o->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
  if (o->ca_file != NULL || o->ca_path != NULL) {
    if (SSL_CTX_load_verify_locations(sc, o->ca_file, o->ca_path) != 1) return UVMQTT_ETLSCONFIG;
  } else if (!o->insecure) {
    if (SSL_CTX_set_default_verify_paths(sc) != 1) return UVMQTT_ETLSCONFIG;
  }
  if (o->ciphers != NULL && SSL_CTX_set_cipher_list(sc, o->ciphers) != 1) return UVMQTT_ETLSCONFIG;
  if (o->ciphersuites != NULL && SSL_CTX_set_ciphersuites(sc, o->ciphersuites) != 1)
    return UVMQTT_ETLSCONFIG;
  if (!load_identity(sc, o)) return UVMQTT_ETLSCONFIG;
  SSL_CTX_set_cert_cb(sc, on_cert_request, NULL);
  /* The traffic secrets reach the hand-over only through the key log. */
  if (!o->no_handover) SSL_CTX_set_keylog_callback(sc, on_keylog);
  int err = set_alpn(sc, o);
  if (err) return err;
  if (o->no_resumption) {
    SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
  } else {
    /* OpenSSL hands each new session to on_new_session and keeps no cache
     * of its own. */
    SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(sc, on_new_session);
  }
  ctx->bio_method = new_bio_method();
  return ctx->bio_method != NULL ? 0 : UVMQTT_ENOMEM;
}

int uvmqtt__tls_ctx_new(const uvmqtt_tls_options_t *opts, uvmqtt__tls_ctx_t **out) {
  static const uvmqtt_tls_options_t defaults;
  const uvmqtt_tls_options_t *o = opts != NULL ? opts : &defaults;
  *out = NULL;
  uvmqtt__tls_ctx_t *ctx = uvmqtt__calloc(1, sizeof *ctx);
  if (ctx == NULL) return UVMQTT_ENOMEM;
  if (uv_mutex_init(&ctx->lock) != 0) {
    uvmqtt__free(ctx);
    return UVMQTT_ENOMEM;
  }
  atomic_init(&ctx->refs, 1);
  ctx->no_sni = o->no_sni;
  ctx->no_resumption = o->no_resumption;
  ctx->insecure = o->insecure;
  ctx->no_handover = o->no_handover;
  ERR_clear_error();
  ctx->ssl_ctx = SSL_CTX_new(TLS_client_method());
  int err = ctx->ssl_ctx != NULL ? configure(ctx, o) : UVMQTT_ENOMEM;
  ERR_clear_error();
  if (err) {
    uvmqtt__tls_ctx_free(ctx);
    return err;
  }
  *out = ctx;
  return 0;
}

uvmqtt__tls_ctx_t *uvmqtt__tls_ctx_ref(uvmqtt__tls_ctx_t *ctx) {
  atomic_fetch_add(&ctx->refs, 1);
  return ctx;
}

void uvmqtt__tls_ctx_free(uvmqtt__tls_ctx_t *ctx) {
  if (ctx == NULL || atomic_fetch_sub(&ctx->refs, 1) != 1) return;
  for (int i = 0; i < SESSION_SLOTS; i++) {
    if (ctx->slots[i].session != NULL) SSL_SESSION_free(ctx->slots[i].session);
    uvmqtt__free(ctx->slots[i].host);
  }
  if (ctx->ssl_ctx != NULL) SSL_CTX_free(ctx->ssl_ctx);
  if (ctx->bio_method != NULL) BIO_meth_free(ctx->bio_method);
  uv_mutex_destroy(&ctx->lock);
  uvmqtt__free(ctx);
}

/* The lock guards mutable state; reading through a const context still
 * takes it. */
static uv_mutex_t *lock_of(const uvmqtt__tls_ctx_t *ctx) {
  return (uv_mutex_t *)(uintptr_t)&ctx->lock;
}

int uvmqtt__tls_ctx_reused(const uvmqtt__tls_ctx_t *ctx) {
  if (ctx == NULL) return 0;
  uv_mutex_lock(lock_of(ctx));
  int reused = ctx->reused;
  uv_mutex_unlock(lock_of(ctx));
  return reused;
}

void uvmqtt__tls_ctx_counts(const uvmqtt__tls_ctx_t *ctx, unsigned long *handshakes,
                            unsigned long *resumed) {
  uv_mutex_lock(lock_of(ctx));
  *handshakes = ctx->handshakes;
  *resumed = ctx->resumed;
  uv_mutex_unlock(lock_of(ctx));
}

/* ---- The public context ------------------------------------------------------------------------
 */

int uvmqtt_tls_context_new(uvmqtt_tls_context_t **out, const uvmqtt_tls_options_t *opts) {
  if (out == NULL) return UVMQTT_EINVAL;
  return uvmqtt__tls_ctx_new(opts, out);
}

void uvmqtt_tls_context_free(uvmqtt_tls_context_t *ctx) {
  uvmqtt__tls_ctx_free(ctx);
}
