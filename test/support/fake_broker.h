/* A scripted fake broker on the test's own libuv loop, for faults a real
 * broker will not produce. It accepts connections on 127.0.0.1:<free port>,
 * decodes what the client sends with the uvmqtt codec and hands each packet
 * to the test's callback, which answers with raw bytes or encoded packets. */
#ifndef TEST_FAKE_BROKER_H
#define TEST_FAKE_BROKER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "uvmqtt/codec.h"

typedef struct fake_broker_s fake_broker_t;
typedef struct fake_conn_s fake_conn_t;

/* A packet from the client; return nothing. Use fake_send* to answer. */
typedef void (*fake_packet_cb)(fake_broker_t *fb, fake_conn_t *conn, const uvmqtt_packet_t *pkt);

struct fake_broker_s {
  void *data;
  uv_loop_t *loop;
  int port;
  uint8_t version;          /* learned from the last CONNECT; set it after start
                               to encode for connections that sent none */
  fake_packet_cb on_packet; /* NULL: fake_default_answer() */
  int connections;          /* accepted so far */
  int packets;              /* received so far */
  int closed;               /* connections closed by the client side */
  int decode_errors;        /* connections dropped for bytes the codec rejected */
  int eofs;                 /* reads that ended with UV_EOF: the client sent a FIN */
  int read_errors;          /* reads that ended with another error (ECONNRESET...) */
  int last_read_error;      /* the error of the last read that ended a connection */
  uint64_t bytes_read;      /* bytes received on every connection */
  /* Slow reader: when read_pause_ms is not 0, every connection reads at most
   * read_chunk bytes (0: the whole buffer) and then stops reading for
   * read_pause_ms, so the client's output backs up. May change at any time. */
  size_t read_chunk;
  uint64_t read_pause_ms;
  /* The first bytes the last accepted connection sent (its first read, at
   * most sizeof first_read), for tests that decode the CONNECT themselves. */
  uint8_t first_read[2048];
  size_t first_read_len;
  /* The address the last accepted connection came from. */
  struct sockaddr_storage last_peer;
  /* private */
  uv_tcp_t server;
  fake_conn_t *conns;
};

/* Listens on a free loopback port (fb->port). Keeps `data`, resets every
 * other field. Returns 0 or a libuv error (the server handle is then closing:
 * run the loop before uv_loop_close). */
int fake_broker_start(fake_broker_t *fb, uv_loop_t *loop, fake_packet_cb on_packet);

/* Sends raw bytes / an encoded packet to one connection (copied; encoded in
 * the connection's version). Returns 0, a libuv error, or the encoder's. */
int fake_send(fake_conn_t *conn, const void *bytes, size_t len);
int fake_send_packet(fake_conn_t *conn, const uvmqtt_packet_t *pkt);

/* What the broker does without on_packet: CONNACK 0 for CONNECT, PINGRESP for
 * PINGREQ, nothing for the rest. An on_packet may call it for the packets it
 * does not script. */
void fake_default_answer(fake_conn_t *conn, const uvmqtt_packet_t *pkt);

/* The protocol version of a connection: from its CONNECT, else fb->version,
 * else 3.1.1. */
uint8_t fake_conn_version(const fake_conn_t *conn);

/* Closes one connection, or stops the broker and every connection (the loop
 * then has no handle of the broker left once closed). */
void fake_conn_close(fake_conn_t *conn);
/* Closes one connection with a reset (RST) instead of a FIN. */
void fake_conn_reset(fake_conn_t *conn);
void fake_broker_stop(fake_broker_t *fb);

/* The broker of a connection. */
fake_broker_t *fake_conn_broker(fake_conn_t *conn);

#endif
