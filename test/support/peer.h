/* A client of a multi-node scenario and what the scenario counts about
 * it: connections, losses, sessions found, deliveries per message. The
 * nodes' URIs are set once per scenario (test_peer_nodes); a client knows
 * every node and tries them in turn. */
#ifndef TEST_PEER_H
#define TEST_PEER_H

#include <stdint.h>

#include "uvmqtt.h"

#define TEST_PEER_NODES 3

typedef struct {
  uvmqtt_client_t c;
  int index;
  char id[40];
  int connects;    /* CONNACKs */
  int up;          /* connected now */
  int node;        /* the node of the current (or last) connection */
  int sp1, sp0;    /* reconnects that found the session, and that did not */
  int subscribed;  /* SUBACKs of the scenario's own subscribe */
  uint8_t granted; /* the first SUBACK's code */
  int losses;
  int refused; /* attempts that ended without CONNACK or with a refusal */
  /* Subscriber: deliveries per message. */
  uint8_t *seen;
  int unique;
  int dups;
  int received;
  /* Publisher. */
  int sent;
  int done;
  int failed;
  int last_status;
  int closed;
  int stopping; /* a graceful stop of the scenario's is under way */
} test_peer_t;

/* The nodes' URIs ("mqtt://127.0.0.1:<port>"), count <= TEST_PEER_NODES;
 * the array must outlive the scenario. */
void test_peer_nodes(char (*uris)[64], int count);

/* The node a CONNACK came from, or -1. */
int test_peer_node_of(const char *server);

/* Options for a client that knows every node, starting with node `first`.
 * `list` must hold TEST_PEER_NODES entries; the client copies it. */
void test_peer_options(uvmqtt_options_t *o, const char **list, int first, const char *id, int clean,
                       uvmqtt_backoff_t *policy);

/* uvmqtt_close() of each peer initialised, counting in `closed`. */
void test_peer_close_all(test_peer_t *peers, int n);

/* A QoS 1 subscription to `filter`; cb gets the peer as its argument. */
void test_peer_subscribe(test_peer_t *p, const char *filter, uvmqtt_subscribe_cb cb);

/* Counts a delivery of message `n` of `total`. */
void test_peer_count(test_peer_t *p, long n, int total);

/* The number a message's payload carries (its decimal text). */
long test_peer_payload_number(const uvmqtt_message_t *m);

/* Counts a CONNACK (or a failed attempt) in on_connect. */
void test_peer_up(test_peer_t *p, int status, const uvmqtt_connack_t *ack);

/* on_disconnect: a lost connection, which the client must retry; the end
 * of a stop the scenario asked for (`stopping`) is not a loss. */
void test_peer_down(uvmqtt_client_t *c, const uvmqtt_disconnect_t *d);

/* Counts the completion of a publish of the peer's. */
void test_peer_published(test_peer_t *p, int status);

#endif
