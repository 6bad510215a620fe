/* The MQTT codec: hand-checked byte vectors for every packet type in 3.1.1 and
 * 5.0, decoded whole, split at every byte and one byte at a time, encoded into
 * guarded buffers; then one negative case per validation rule. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "uvmqtt.h"

#define S(lit)  ((uvmqtt_bytes_t){(const uint8_t *)(lit), sizeof(lit) - 1})
#define HAS(id) (1ull << (id))
/* A length-prefixed two-character string, the most common shape below. */
#define S2(a, b) 0x00, 0x02, a, b

/* ---- Test allocator --------------------------------------------------------- */

typedef struct {
  int allocs;
  int frees;
  int fail;         /* every allocation fails */
  size_t last_size; /* size of the last allocation */
} mem_stats_t;

static void *count_alloc(void *user_data, size_t size) {
  mem_stats_t *m = user_data;
  m->allocs++;
  m->last_size = size;
  if (m->fail) return NULL;
  return malloc(size);
}

static void count_free(void *user_data, void *ptr) {
  mem_stats_t *m = user_data;
  m->frees++;
  free(ptr);
}

static void init_decoder(uvmqtt_decoder_t *dec, uint8_t version, uint32_t max, mem_stats_t *m) {
  uvmqtt_codec_mem_t mem = {count_alloc, count_free, m};
  memset(m, 0, sizeof(*m));
  uvmqtt_decoder_init(dec, version, max, &mem);
}

/* A heap copy of exactly n bytes, so reading past a chunk trips ASan. */
static uint8_t *copy_of(const uint8_t *p, size_t n) {
  uint8_t *d = malloc(n ? n : 1);
  ck_assert_ptr_nonnull(d);
  if (n) memcpy(d, p, n);
  return d;
}

/* ---- Expected packets --------------------------------------------------------- */

static const uvmqtt_user_prop_t user_kv[] = {{S("k"), S("v")}};
static const uvmqtt_user_prop_t user_ab[] = {{S("a"), S("b")}};
static const uvmqtt_user_prop_t user_xy[] = {{S("x"), S("y")}};
static const uvmqtt_user_prop_t user_two[] = {{S("k"), S("v1")}, {S("k"), S("v2")}};
static const uint32_t pub_sub_ids[] = {200, 5};

static void build_connect_full(uvmqtt_packet_t *p) {
  p->type = UVMQTT_CONNECT;
  uvmqtt_connect_t *c = &p->u.connect;
  c->protocol_level = UVMQTT_V311;
  c->clean_start = 1;
  c->keep_alive = 60;
  c->client_id = S("cid");
  c->will = 1;
  c->will_qos = 1;
  c->will_retain = 1;
  c->will_topic = S("w/t");
  c->will_payload = S("by");
  c->has_username = 1;
  c->username = S("u");
  c->has_password = 1;
  c->password = S("pw");
}

static void build_connect_min(uvmqtt_packet_t *p) {
  p->type = UVMQTT_CONNECT;
  p->u.connect.protocol_level = UVMQTT_V311;
  p->u.connect.clean_start = 1;
  p->u.connect.keep_alive = 60;
}

/* MQTT 3.1: the 3.1.1 CONNECT under the old protocol name and level. */
static void build_connect_v31(uvmqtt_packet_t *p) {
  build_connect_full(p);
  p->u.connect.protocol_level = UVMQTT_V31;
}

/* A 3.1 CONNACK has no Session Present flag. */
static void build_connack_v31(uvmqtt_packet_t *p) {
  p->type = UVMQTT_CONNACK;
}

static void build_suback_v31(uvmqtt_packet_t *p) {
  static const uint8_t codes[] = {0x00, 0x01, 0x02};
  p->type = UVMQTT_SUBACK;
  p->packet_id = 7;
  p->u.suback.codes = codes;
  p->u.suback.count = 3;
}

static void build_connack(uvmqtt_packet_t *p) {
  p->type = UVMQTT_CONNACK;
  p->session_present = 1;
}

static void build_connack_refused(uvmqtt_packet_t *p) {
  p->type = UVMQTT_CONNACK;
  p->reason = 5;
}

static void build_publish_qos0(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBLISH;
  p->u.publish.topic = S("a/b");
  p->u.publish.payload = S("hi");
}

static void build_publish_qos1(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->packet_id = 10;
  p->u.publish.qos = 1;
  p->u.publish.dup = 1;
  p->u.publish.retain = 1;
}

static void build_publish_qos2(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBLISH;
  p->packet_id = 0x1234;
  p->u.publish.qos = 2;
  p->u.publish.topic = S("a/b");
}

static uint8_t big_payload[200];
static uint8_t big_publish[6 + sizeof(big_payload)];
static uint8_t big_publish_v5[7 + sizeof(big_payload)];

static void build_publish_big(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBLISH;
  p->u.publish.topic = S("t");
  p->u.publish.payload = (uvmqtt_bytes_t){big_payload, sizeof(big_payload)};
}

static void build_puback(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBACK;
  p->packet_id = 1;
}

static void build_pubrec(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBREC;
  p->packet_id = 2;
}

static void build_pubrel(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBREL;
  p->packet_id = 3;
}

static void build_pubcomp(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBCOMP;
  p->packet_id = 4;
}

static const uvmqtt_topic_sub_t subs_311[] = {{S("a/b"), 1}, {S("#"), 2}};

static void build_subscribe(uvmqtt_packet_t *p) {
  p->type = UVMQTT_SUBSCRIBE;
  p->packet_id = 5;
  p->u.subscribe.subs = subs_311;
  p->u.subscribe.count = 2;
}

static const uint8_t suback_codes_311[] = {0x00, 0x02, 0x80};

static void build_suback(uvmqtt_packet_t *p) {
  p->type = UVMQTT_SUBACK;
  p->packet_id = 5;
  p->u.suback.codes = suback_codes_311;
  p->u.suback.count = 3;
}

static const uvmqtt_topic_sub_t unsubs_311[] = {{S("a/b"), 0}, {S("c/+"), 0}};

static void build_unsubscribe(uvmqtt_packet_t *p) {
  p->type = UVMQTT_UNSUBSCRIBE;
  p->packet_id = 6;
  p->u.subscribe.subs = unsubs_311;
  p->u.subscribe.count = 2;
}

static void build_unsuback(uvmqtt_packet_t *p) {
  p->type = UVMQTT_UNSUBACK;
  p->packet_id = 6;
}

static void build_pingreq(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PINGREQ;
}

static void build_pingresp(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PINGRESP;
}

static void build_disconnect(uvmqtt_packet_t *p) {
  p->type = UVMQTT_DISCONNECT;
}

static const uint8_t auth_data_12[] = {1, 2};
static const uint8_t password_123[] = {1, 2, 3};
static const uint8_t corr_cafe[] = {0xCA, 0xFE};

static void build_connect_v5(uvmqtt_packet_t *p) {
  p->type = UVMQTT_CONNECT;
  uvmqtt_connect_t *c = &p->u.connect;
  c->protocol_level = UVMQTT_V5;
  c->clean_start = 1;
  c->keep_alive = 30;
  c->client_id = S("id");
  c->will = 1;
  c->will_qos = 2;
  c->will_topic = S("w/t");
  c->will_payload = S("bye");
  c->has_username = 1;
  c->username = S("user");
  c->has_password = 1;
  c->password = (uvmqtt_bytes_t){password_123, 3};

  uvmqtt_props_t *pr = &p->props;
  pr->has = HAS(UVMQTT_PROP_SESSION_EXPIRY_INTERVAL) | HAS(UVMQTT_PROP_AUTHENTICATION_METHOD) |
            HAS(UVMQTT_PROP_AUTHENTICATION_DATA) | HAS(UVMQTT_PROP_REQUEST_PROBLEM_INFORMATION) |
            HAS(UVMQTT_PROP_REQUEST_RESPONSE_INFORMATION) | HAS(UVMQTT_PROP_RECEIVE_MAXIMUM) |
            HAS(UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM) | HAS(UVMQTT_PROP_USER_PROPERTY) |
            HAS(UVMQTT_PROP_MAXIMUM_PACKET_SIZE);
  pr->session_expiry_interval = 10;
  pr->authentication_method = S("SCRA");
  pr->authentication_data = (uvmqtt_bytes_t){auth_data_12, 2};
  pr->request_problem_information = 0;
  pr->request_response_information = 1;
  pr->receive_maximum = 20;
  pr->topic_alias_maximum = 5;
  pr->user = user_kv;
  pr->user_count = 1;
  pr->maximum_packet_size = 4096;

  uvmqtt_props_t *w = &c->will_props;
  w->has = HAS(UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR) | HAS(UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL) |
           HAS(UVMQTT_PROP_CONTENT_TYPE) | HAS(UVMQTT_PROP_RESPONSE_TOPIC) |
           HAS(UVMQTT_PROP_CORRELATION_DATA) | HAS(UVMQTT_PROP_WILL_DELAY_INTERVAL) |
           HAS(UVMQTT_PROP_USER_PROPERTY);
  w->payload_format_indicator = 1;
  w->message_expiry_interval = 60;
  w->content_type = S("text");
  w->response_topic = S("r/t");
  w->correlation_data = (uvmqtt_bytes_t){corr_cafe, 2};
  w->will_delay_interval = 5;
  w->user = user_ab;
  w->user_count = 1;
}

static void build_connack_v5(uvmqtt_packet_t *p) {
  p->type = UVMQTT_CONNACK;
  uvmqtt_props_t *pr = &p->props;
  pr->has = HAS(UVMQTT_PROP_SESSION_EXPIRY_INTERVAL) | HAS(UVMQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER) |
            HAS(UVMQTT_PROP_SERVER_KEEP_ALIVE) | HAS(UVMQTT_PROP_RESPONSE_INFORMATION) |
            HAS(UVMQTT_PROP_SERVER_REFERENCE) | HAS(UVMQTT_PROP_REASON_STRING) |
            HAS(UVMQTT_PROP_RECEIVE_MAXIMUM) | HAS(UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM) |
            HAS(UVMQTT_PROP_MAXIMUM_QOS) | HAS(UVMQTT_PROP_RETAIN_AVAILABLE) |
            HAS(UVMQTT_PROP_USER_PROPERTY) | HAS(UVMQTT_PROP_MAXIMUM_PACKET_SIZE) |
            HAS(UVMQTT_PROP_WILDCARD_SUBSCRIPTION_AVAILABLE) |
            HAS(UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER_AVAILABLE) |
            HAS(UVMQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE);
  pr->session_expiry_interval = 256;
  pr->assigned_client_identifier = S("cl1");
  pr->server_keep_alive = 60;
  pr->response_information = S("ri");
  pr->server_reference = S("sr");
  pr->reason_string = S("ok");
  pr->receive_maximum = 10;
  pr->topic_alias_maximum = 8;
  pr->maximum_qos = 1;
  pr->retain_available = 0;
  pr->user = user_xy;
  pr->user_count = 1;
  pr->maximum_packet_size = 65536;
  pr->wildcard_subscription_available = 1;
  pr->subscription_identifier_available = 0;
  pr->shared_subscription_available = 1;
}

static void build_connack_v5_refused(uvmqtt_packet_t *p) {
  p->type = UVMQTT_CONNACK;
  p->reason = 0x87;
}

static const uint8_t corr_2a[] = {0x2A};

static void build_publish_v5(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBLISH;
  p->packet_id = 7;
  p->u.publish.qos = 1;
  p->u.publish.topic = S("a/b");
  p->u.publish.payload = S("hi");
  uvmqtt_props_t *pr = &p->props;
  pr->has = HAS(UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR) | HAS(UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL) |
            HAS(UVMQTT_PROP_CONTENT_TYPE) | HAS(UVMQTT_PROP_RESPONSE_TOPIC) |
            HAS(UVMQTT_PROP_CORRELATION_DATA) | HAS(UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER) |
            HAS(UVMQTT_PROP_TOPIC_ALIAS) | HAS(UVMQTT_PROP_USER_PROPERTY);
  pr->payload_format_indicator = 1;
  pr->message_expiry_interval = 3600;
  pr->content_type = S("json");
  pr->response_topic = S("r/1");
  pr->correlation_data = (uvmqtt_bytes_t){corr_2a, 1};
  pr->sub_ids = pub_sub_ids;
  pr->sub_id_count = 2;
  pr->subscription_id = 200;
  pr->topic_alias = 3;
  pr->user = user_two;
  pr->user_count = 2;
}

static void build_publish_v5_alias(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBLISH;
  p->u.publish.payload = S("x");
  p->props.has = HAS(UVMQTT_PROP_TOPIC_ALIAS);
  p->props.topic_alias = 3;
}

static void build_publish_v5_plain(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBLISH;
  p->u.publish.topic = S("t");
  p->u.publish.payload = S("hi");
}

static void build_puback_v5_reason(uvmqtt_packet_t *p) {
  build_puback(p);
  p->reason = 0x10;
}

static void build_puback_v5_props(uvmqtt_packet_t *p) {
  p->type = UVMQTT_PUBACK;
  p->packet_id = 9;
  p->props.has = HAS(UVMQTT_PROP_REASON_STRING);
  p->props.reason_string = S("r");
}

static void build_pubrec_v5(uvmqtt_packet_t *p) {
  build_pubrec(p);
  p->reason = 0x80;
  p->props.has = HAS(UVMQTT_PROP_REASON_STRING) | HAS(UVMQTT_PROP_USER_PROPERTY);
  p->props.reason_string = S("full");
  p->props.user = user_kv;
  p->props.user_count = 1;
}

static void build_pubrel_v5(uvmqtt_packet_t *p) {
  build_pubrel(p);
  p->reason = 0x92;
}

static const uvmqtt_topic_sub_t subs_v5[] = {{S("a/+"), UVMQTT_SUB_QOS(1) | UVMQTT_SUB_NO_LOCAL |
                                                            UVMQTT_SUB_RETAIN_AS_PUBLISHED |
                                                            UVMQTT_SUB_RETAIN_HANDLING(2)},
                                             {S("$share/g/x/#"), UVMQTT_SUB_QOS(2)}};

static void build_subscribe_v5(uvmqtt_packet_t *p) {
  p->type = UVMQTT_SUBSCRIBE;
  p->packet_id = 10;
  p->u.subscribe.subs = subs_v5;
  p->u.subscribe.count = 2;
  p->props.has = HAS(UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER) | HAS(UVMQTT_PROP_USER_PROPERTY);
  p->props.subscription_id = 128;
  p->props.user = user_kv;
  p->props.user_count = 1;
}

static const uint8_t suback_codes_v5[] = {0x01, 0xA2};

static void build_suback_v5(uvmqtt_packet_t *p) {
  p->type = UVMQTT_SUBACK;
  p->packet_id = 10;
  p->u.suback.codes = suback_codes_v5;
  p->u.suback.count = 2;
  p->props.has = HAS(UVMQTT_PROP_REASON_STRING);
  p->props.reason_string = S("ok");
}

static const uvmqtt_topic_sub_t unsubs_v5[] = {{S("a/b"), 0}};

static void build_unsubscribe_v5(uvmqtt_packet_t *p) {
  p->type = UVMQTT_UNSUBSCRIBE;
  p->packet_id = 11;
  p->u.subscribe.subs = unsubs_v5;
  p->u.subscribe.count = 1;
  p->props.has = HAS(UVMQTT_PROP_USER_PROPERTY);
  p->props.user = user_kv;
  p->props.user_count = 1;
}

static const uint8_t unsuback_codes_v5[] = {0x00, 0x11};

static void build_unsuback_v5(uvmqtt_packet_t *p) {
  p->type = UVMQTT_UNSUBACK;
  p->packet_id = 11;
  p->u.suback.codes = unsuback_codes_v5;
  p->u.suback.count = 2;
}

static void build_disconnect_v5_reason(uvmqtt_packet_t *p) {
  p->type = UVMQTT_DISCONNECT;
  p->reason = 0x04;
}

static void build_disconnect_v5_props(uvmqtt_packet_t *p) {
  p->type = UVMQTT_DISCONNECT;
  p->reason = 0x8E;
  p->props.has = HAS(UVMQTT_PROP_SESSION_EXPIRY_INTERVAL) | HAS(UVMQTT_PROP_SERVER_REFERENCE) |
                 HAS(UVMQTT_PROP_REASON_STRING);
  p->props.server_reference = S("s2");
  p->props.reason_string = S("r");
}

static void build_auth_min(uvmqtt_packet_t *p) {
  p->type = UVMQTT_AUTH;
}

static void build_auth_v5(uvmqtt_packet_t *p) {
  p->type = UVMQTT_AUTH;
  p->reason = 0x18;
  p->props.has = HAS(UVMQTT_PROP_AUTHENTICATION_METHOD) | HAS(UVMQTT_PROP_AUTHENTICATION_DATA) |
                 HAS(UVMQTT_PROP_REASON_STRING);
  p->props.authentication_method = S("SCRA");
  p->props.authentication_data = (uvmqtt_bytes_t){password_123, 3};
  p->props.reason_string = S("c");
}

/* ---- Byte vectors ----------------------------------------------------------- */

#define MQTT_NAME 0x00, 0x04, 'M', 'Q', 'T', 'T'

static const uint8_t v311_connect_full[] = {
    0x10,         0x1F, MQTT_NAME, 0x04, 0xEE, 0x00, 0x3C, /* level 4, all flags but reserved */
    0x00,         0x03, 'c',       'i',  'd',              /* client id */
    0x00,         0x03, 'w',       '/',  't',              /* will topic */
    S2('b', 'y'),                                          /* will payload */
    0x00,         0x01, 'u',                               /* username */
    S2('p', 'w')};                                         /* password */
static const uint8_t v311_connect_min[] = {0x10, 0x0C, MQTT_NAME, 0x04, 0x02,
                                           0x00, 0x3C, 0x00,      0x00};
static const uint8_t v311_connack[] = {0x20, 0x02, 0x01, 0x00};
static const uint8_t v311_connack_refused[] = {0x20, 0x02, 0x00, 0x05};
static const uint8_t v311_publish_qos0[] = {0x30, 0x07, 0x00, 0x03, 'a', '/', 'b', 'h', 'i'};
static const uint8_t v311_publish_qos1[] = {0x3B, 0x09, 0x00, 0x03, 'a', '/',
                                            'b',  0x00, 0x0A, 'h',  'i'};
static const uint8_t v311_publish_qos2[] = {0x34, 0x07, 0x00, 0x03, 'a', '/', 'b', 0x12, 0x34};
static const uint8_t v311_puback[] = {0x40, 0x02, 0x00, 0x01};
static const uint8_t v311_pubrec[] = {0x50, 0x02, 0x00, 0x02};
static const uint8_t v311_pubrel[] = {0x62, 0x02, 0x00, 0x03};
static const uint8_t v311_pubcomp[] = {0x70, 0x02, 0x00, 0x04};
static const uint8_t v311_subscribe[] = {0x82, 0x0C, 0x00, 0x05, 0x00, 0x03, 'a',
                                         '/',  'b',  0x01, 0x00, 0x01, '#',  0x02};
static const uint8_t v311_suback[] = {0x90, 0x05, 0x00, 0x05, 0x00, 0x02, 0x80};
static const uint8_t v311_unsubscribe[] = {0xA2, 0x0C, 0x00, 0x06, 0x00, 0x03, 'a',
                                           '/',  'b',  0x00, 0x03, 'c',  '/',  '+'};
static const uint8_t v311_unsuback[] = {0xB0, 0x02, 0x00, 0x06};
#define MQISDP_NAME 0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p'
static const uint8_t v31_connect[] = {0x10,         0x21, MQISDP_NAME, 0x03, 0xEE,
                                      0x00,         0x3C,                         /* level 3 */
                                      0x00,         0x03, 'c',         'i',  'd', /* client id */
                                      0x00,         0x03, 'w',         '/',  't', /* will topic */
                                      S2('b', 'y'),                               /* will payload */
                                      0x00,         0x01, 'u',                    /* username */
                                      S2('p', 'w')};                              /* password */
static const uint8_t v31_connack[] = {0x20, 0x02, 0x00, 0x00};
static const uint8_t v31_suback[] = {0x90, 0x05, 0x00, 0x07, 0x00, 0x01, 0x02};
static const uint8_t pingreq[] = {0xC0, 0x00};
static const uint8_t pingresp[] = {0xD0, 0x00};
static const uint8_t disconnect_min[] = {0xE0, 0x00};

static const uint8_t v5_connect[] = {
    0x10,         0x71, MQTT_NAME, 0x05, 0xD6, 0x00,
    0x1E,                                      /* level 5, user, pass, will QoS 2, clean */
    0x27,                                      /* properties: 39 bytes */
    0x11,         0x00, 0x00,      0x00, 0x0A, /* session expiry 10 */
    0x15,         0x00, 0x04,      'S',  'C',  'R',
    'A',                                       /* authentication method */
    0x16,         0x00, 0x02,      0x01, 0x02, /* authentication data */
    0x17,         0x00,                        /* request problem information 0 */
    0x19,         0x01,                        /* request response information 1 */
    0x21,         0x00, 0x14,                  /* receive maximum 20 */
    0x22,         0x00, 0x05,                  /* topic alias maximum 5 */
    0x26,         0x00, 0x01,      'k',  0x00, 0x01,
    'v',                                       /* user property */
    0x27,         0x00, 0x00,      0x10, 0x00, /* maximum packet size 4096 */
    S2('i', 'd'),                              /* client id */
    0x25,                                      /* will properties: 37 bytes */
    0x01,         0x01,                        /* payload format indicator 1 */
    0x02,         0x00, 0x00,      0x00, 0x3C, /* message expiry 60 */
    0x03,         0x00, 0x04,      't',  'e',  'x',
    't',                                            /* content type */
    0x08,         0x00, 0x03,      'r',  '/',  't', /* response topic */
    0x09,         0x00, 0x02,      0xCA, 0xFE,      /* correlation data */
    0x18,         0x00, 0x00,      0x00, 0x05,      /* will delay 5 */
    0x26,         0x00, 0x01,      'a',  0x00, 0x01,
    'b',                                            /* user property */
    0x00,         0x03, 'w',       '/',  't',       /* will topic */
    0x00,         0x03, 'b',       'y',  'e',       /* will payload */
    0x00,         0x04, 'u',       's',  'e',  'r', /* username */
    0x00,         0x03, 0x01,      0x02, 0x03};     /* password */
static const uint8_t v5_connack[] = {
    0x20, 0x3C,         0x00, 0x00, 0x39,            /* flags, reason, 57 bytes */
    0x11, 0x00,         0x00, 0x01, 0x00,            /* session expiry 256 */
    0x12, 0x00,         0x03, 'c',  'l',  '1',       /* assigned client id */
    0x13, 0x00,         0x3C,                        /* server keep alive 60 */
    0x1A, S2('r', 'i'),                              /* response information */
    0x1C, S2('s', 'r'),                              /* server reference */
    0x1F, S2('o', 'k'),                              /* reason string */
    0x21, 0x00,         0x0A,                        /* receive maximum 10 */
    0x22, 0x00,         0x08,                        /* topic alias maximum 8 */
    0x24, 0x01,         0x25, 0x00,                  /* maximum QoS 1, no retain */
    0x26, 0x00,         0x01, 'x',  0x00, 0x01, 'y', /* user property */
    0x27, 0x00,         0x01, 0x00, 0x00,            /* maximum packet size 65536 */
    0x28, 0x01,         0x29, 0x00, 0x2A, 0x01};     /* wildcard, sub id, shared */
static const uint8_t v5_connack_refused[] = {0x20, 0x03, 0x00, 0x87, 0x00};
static const uint8_t v5_publish[] = {
    0x32, 0x3A, 0x00, 0x03, 'a',          '/', 'b', 0x00, 0x07, /* QoS 1, topic, packet id 7 */
    0x30,                                                       /* properties: 48 bytes */
    0x01, 0x01,                                                 /* payload format indicator */
    0x02, 0x00, 0x00, 0x0E, 0x10,                               /* message expiry 3600 */
    0x03, 0x00, 0x04, 'j',  's',          'o', 'n',             /* content type */
    0x08, 0x00, 0x03, 'r',  '/',          '1',                  /* response topic */
    0x09, 0x00, 0x01, 0x2A,                                     /* correlation data */
    0x0B, 0xC8, 0x01,                     /* subscription id 200 (two bytes) */
    0x0B, 0x05,                           /* subscription id 5 */
    0x23, 0x00, 0x03,                     /* topic alias 3 */
    0x26, 0x00, 0x01, 'k',  S2('v', '1'), /* user property k=v1 */
    0x26, 0x00, 0x01, 'k',  S2('v', '2'), /* user property k=v2 */
    'h',  'i'};
static const uint8_t v5_publish_alias[] = {0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x03, 'x'};
static const uint8_t v5_publish_plain[] = {0x30, 0x06, 0x00, 0x01, 't', 0x00, 'h', 'i'};
static const uint8_t v5_puback_reason[] = {0x40, 0x03, 0x00, 0x01, 0x10};
static const uint8_t v5_puback_props[] = {0x40, 0x08, 0x00, 0x09, 0x00,
                                          0x04, 0x1F, 0x00, 0x01, 'r'};
static const uint8_t v5_pubrec[] = {0x50, 0x12, 0x00, 0x02, 0x80, 0x0E, 0x1F, 0x00, 0x04, 'f',
                                    'u',  'l',  'l',  0x26, 0x00, 0x01, 'k',  0x00, 0x01, 'v'};
static const uint8_t v5_pubrel[] = {0x62, 0x03, 0x00, 0x03, 0x92};
static const uint8_t v5_subscribe[] = {
    0x82, 0x22, 0x00, 0x0A,                                 /* packet id 10 */
    0x0A, 0x0B, 0x80, 0x01,                                 /* subscription id 128 */
    0x26, 0x00, 0x01, 'k',  0x00, 0x01, 'v',                /* user property */
    0x00, 0x03, 'a',  '/',  '+',  0x2D,                     /* QoS 1, NL, RAP, RH 2 */
    0x00, 0x0C, '$',  's',  'h',  'a',  'r', 'e', '/', 'g', /* shared filter */
    '/',  'x',  '/',  '#',  0x02};
static const uint8_t v5_suback[] = {0x90, 0x0A, 0x00, 0x0A, 0x05, 0x1F,
                                    0x00, 0x02, 'o',  'k',  0x01, 0xA2};
static const uint8_t v5_unsubscribe[] = {0xA2, 0x0F, 0x00, 0x0B, 0x07, 0x26, 0x00, 0x01, 'k',
                                         0x00, 0x01, 'v',  0x00, 0x03, 'a',  '/',  'b'};
static const uint8_t v5_unsuback[] = {0xB0, 0x05, 0x00, 0x0B, 0x00, 0x00, 0x11};
static const uint8_t v5_disconnect_reason[] = {0xE0, 0x01, 0x04};
static const uint8_t v5_disconnect_props[] = {0xE0,         0x10, 0x8E, 0x0E, 0x11,
                                              0x00,         0x00, 0x00, 0x00, 0x1C,
                                              S2('s', '2'), 0x1F, 0x00, 0x01, 'r'};
static const uint8_t v5_auth_min[] = {0xF0, 0x00};
static const uint8_t v5_auth[] = {0xF0, 0x13, 0x18, 0x11, 0x15, 0x00, 0x04, 'S',  'C',  'R', 'A',
                                  0x16, 0x00, 0x03, 0x01, 0x02, 0x03, 0x1F, 0x00, 0x01, 'c'};

typedef struct {
  const char *name;
  uint8_t version;
  const uint8_t *bytes;
  size_t len;
  void (*build)(uvmqtt_packet_t *pkt);
} vector_t;

#define V(ver, arr, fn)                                                                            \
  { #arr, ver, arr, sizeof(arr), fn }

static const vector_t vectors[] = {
    V(UVMQTT_V311, v311_connect_full, build_connect_full),
    V(UVMQTT_V311, v311_connect_min, build_connect_min),
    V(UVMQTT_V311, v311_connack, build_connack),
    V(UVMQTT_V311, v311_connack_refused, build_connack_refused),
    V(UVMQTT_V311, v311_publish_qos0, build_publish_qos0),
    V(UVMQTT_V311, v311_publish_qos1, build_publish_qos1),
    V(UVMQTT_V311, v311_publish_qos2, build_publish_qos2),
    V(UVMQTT_V311, big_publish, build_publish_big),
    V(UVMQTT_V311, v311_puback, build_puback),
    V(UVMQTT_V311, v311_pubrec, build_pubrec),
    V(UVMQTT_V311, v311_pubrel, build_pubrel),
    V(UVMQTT_V311, v311_pubcomp, build_pubcomp),
    V(UVMQTT_V311, v311_subscribe, build_subscribe),
    V(UVMQTT_V311, v311_suback, build_suback),
    V(UVMQTT_V311, v311_unsubscribe, build_unsubscribe),
    V(UVMQTT_V311, v311_unsuback, build_unsuback),
    V(UVMQTT_V311, pingreq, build_pingreq),
    V(UVMQTT_V311, pingresp, build_pingresp),
    V(UVMQTT_V311, disconnect_min, build_disconnect),
    V(UVMQTT_V31, v31_connect, build_connect_v31),
    V(UVMQTT_V31, v31_connack, build_connack_v31),
    V(UVMQTT_V31, v311_connack_refused, build_connack_refused),
    V(UVMQTT_V31, v311_publish_qos1, build_publish_qos1),
    V(UVMQTT_V31, v311_publish_qos2, build_publish_qos2),
    V(UVMQTT_V31, v311_puback, build_puback),
    V(UVMQTT_V31, v311_pubrec, build_pubrec),
    V(UVMQTT_V31, v311_pubrel, build_pubrel),
    V(UVMQTT_V31, v311_pubcomp, build_pubcomp),
    V(UVMQTT_V31, v311_subscribe, build_subscribe),
    V(UVMQTT_V31, v31_suback, build_suback_v31),
    V(UVMQTT_V31, v311_unsubscribe, build_unsubscribe),
    V(UVMQTT_V31, v311_unsuback, build_unsuback),
    V(UVMQTT_V31, pingreq, build_pingreq),
    V(UVMQTT_V31, disconnect_min, build_disconnect),
    V(UVMQTT_V5, v5_connect, build_connect_v5),
    V(UVMQTT_V5, v5_connack, build_connack_v5),
    V(UVMQTT_V5, v5_connack_refused, build_connack_v5_refused),
    V(UVMQTT_V5, v5_publish, build_publish_v5),
    V(UVMQTT_V5, v5_publish_alias, build_publish_v5_alias),
    V(UVMQTT_V5, v5_publish_plain, build_publish_v5_plain),
    V(UVMQTT_V5, big_publish_v5, build_publish_big),
    V(UVMQTT_V5, v311_puback, build_puback),
    V(UVMQTT_V5, v5_puback_reason, build_puback_v5_reason),
    V(UVMQTT_V5, v5_puback_props, build_puback_v5_props),
    V(UVMQTT_V5, v5_pubrec, build_pubrec_v5),
    V(UVMQTT_V5, v5_pubrel, build_pubrel_v5),
    V(UVMQTT_V5, v311_pubcomp, build_pubcomp),
    V(UVMQTT_V5, v5_subscribe, build_subscribe_v5),
    V(UVMQTT_V5, v5_suback, build_suback_v5),
    V(UVMQTT_V5, v5_unsubscribe, build_unsubscribe_v5),
    V(UVMQTT_V5, v5_unsuback, build_unsuback_v5),
    V(UVMQTT_V5, pingreq, build_pingreq),
    V(UVMQTT_V5, pingresp, build_pingresp),
    V(UVMQTT_V5, disconnect_min, build_disconnect),
    V(UVMQTT_V5, v5_disconnect_reason, build_disconnect_v5_reason),
    V(UVMQTT_V5, v5_disconnect_props, build_disconnect_v5_props),
    V(UVMQTT_V5, v5_auth_min, build_auth_min),
    V(UVMQTT_V5, v5_auth, build_auth_v5),
};
#define NVECTORS ((int)(sizeof(vectors) / sizeof(vectors[0])))

/* The vectors built at run time: a payload long enough for a two-byte
 * remaining length (3 + 200 = 203 = 0xCB 0x01; v5 adds an empty property
 * length). */
static void fill_big_publish(void) {
  memset(big_payload, 'x', sizeof(big_payload));
  const uint8_t head[] = {0x30, 0xCB, 0x01, 0x00, 0x01, 't'};
  memcpy(big_publish, head, sizeof(head));
  memcpy(big_publish + sizeof(head), big_payload, sizeof(big_payload));
  const uint8_t head_v5[] = {0x30, 0xCC, 0x01, 0x00, 0x01, 't', 0x00};
  memcpy(big_publish_v5, head_v5, sizeof(head_v5));
  memcpy(big_publish_v5 + sizeof(head_v5), big_payload, sizeof(big_payload));
}

/* ---- Comparing packets ---------------------------------------------------------- */

static void expect_bytes(uvmqtt_bytes_t want, uvmqtt_bytes_t got, const char *what) {
  ck_assert_msg(want.len == got.len, "%s: length %u, want %u", what, (unsigned)got.len,
                (unsigned)want.len);
  if (want.len) ck_assert_msg(memcmp(want.data, got.data, want.len) == 0, "%s differs", what);
}

/* `want` was built with arrays; `got` was decoded, so its lists are reached
 * through uvmqtt_props_next(). */
static void expect_props(const uvmqtt_props_t *want, const uvmqtt_props_t *got) {
  ck_assert_uint_eq(got->has, want->has);
  ck_assert_uint_eq(got->payload_format_indicator, want->payload_format_indicator);
  ck_assert_uint_eq(got->request_problem_information, want->request_problem_information);
  ck_assert_uint_eq(got->request_response_information, want->request_response_information);
  ck_assert_uint_eq(got->maximum_qos, want->maximum_qos);
  ck_assert_uint_eq(got->retain_available, want->retain_available);
  ck_assert_uint_eq(got->wildcard_subscription_available, want->wildcard_subscription_available);
  ck_assert_uint_eq(got->subscription_identifier_available,
                    want->subscription_identifier_available);
  ck_assert_uint_eq(got->shared_subscription_available, want->shared_subscription_available);
  ck_assert_uint_eq(got->server_keep_alive, want->server_keep_alive);
  ck_assert_uint_eq(got->receive_maximum, want->receive_maximum);
  ck_assert_uint_eq(got->topic_alias_maximum, want->topic_alias_maximum);
  ck_assert_uint_eq(got->topic_alias, want->topic_alias);
  ck_assert_uint_eq(got->message_expiry_interval, want->message_expiry_interval);
  ck_assert_uint_eq(got->session_expiry_interval, want->session_expiry_interval);
  ck_assert_uint_eq(got->will_delay_interval, want->will_delay_interval);
  ck_assert_uint_eq(got->maximum_packet_size, want->maximum_packet_size);
  ck_assert_uint_eq(got->subscription_id, want->subscription_id);
  expect_bytes(want->content_type, got->content_type, "content type");
  expect_bytes(want->response_topic, got->response_topic, "response topic");
  expect_bytes(want->correlation_data, got->correlation_data, "correlation data");
  expect_bytes(want->assigned_client_identifier, got->assigned_client_identifier,
               "assigned client id");
  expect_bytes(want->authentication_method, got->authentication_method, "auth method");
  expect_bytes(want->authentication_data, got->authentication_data, "auth data");
  expect_bytes(want->response_information, got->response_information, "response info");
  expect_bytes(want->server_reference, got->server_reference, "server reference");
  expect_bytes(want->reason_string, got->reason_string, "reason string");
  ck_assert_uint_eq(got->user_count, want->user_count);
  uint32_t want_sub_ids = want->sub_id_count
                              ? want->sub_id_count
                              : (uint32_t)UVMQTT_HAS(want, UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER);
  ck_assert_uint_eq(got->sub_id_count, want_sub_ids);
  ck_assert_ptr_null(got->user);
  ck_assert_ptr_null(got->sub_ids);

  size_t off = 0;
  uint32_t users = 0, subs = 0;
  uvmqtt_prop_t prop;
  int r;
  while ((r = uvmqtt_props_next(got->raw, &off, &prop)) == 1) {
    if (prop.id == UVMQTT_PROP_USER_PROPERTY) {
      ck_assert_uint_lt(users, want->user_count);
      expect_bytes(want->user[users].key, prop.str, "user key");
      expect_bytes(want->user[users].value, prop.value, "user value");
      users++;
    } else if (prop.id == UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER) {
      ck_assert_uint_lt(subs, want_sub_ids);
      ck_assert_uint_eq(prop.u32, want->sub_ids ? want->sub_ids[subs] : want->subscription_id);
      subs++;
    } else {
      ck_assert_msg(UVMQTT_HAS(want, prop.id), "unexpected property 0x%02x", prop.id);
    }
  }
  ck_assert_int_eq(r, 0);
  ck_assert_uint_eq(off, got->raw.len);
  ck_assert_uint_eq(users, want->user_count);
  ck_assert_uint_eq(subs, want_sub_ids);
}

static void expect_packet(const uvmqtt_packet_t *want, const uvmqtt_packet_t *got) {
  ck_assert_uint_eq(got->type, want->type);
  ck_assert_uint_eq(got->reason, want->reason);
  ck_assert_uint_eq(got->session_present, want->session_present);
  ck_assert_uint_eq(got->packet_id, want->packet_id);
  expect_props(&want->props, &got->props);
  switch (want->type) {
  case UVMQTT_CONNECT: {
    const uvmqtt_connect_t *w = &want->u.connect, *g = &got->u.connect;
    ck_assert_uint_eq(g->protocol_level, w->protocol_level);
    ck_assert_uint_eq(g->clean_start, w->clean_start);
    ck_assert_uint_eq(g->keep_alive, w->keep_alive);
    expect_bytes(w->client_id, g->client_id, "client id");
    ck_assert_uint_eq(g->will, w->will);
    ck_assert_uint_eq(g->will_qos, w->will_qos);
    ck_assert_uint_eq(g->will_retain, w->will_retain);
    expect_props(&w->will_props, &g->will_props);
    expect_bytes(w->will_topic, g->will_topic, "will topic");
    expect_bytes(w->will_payload, g->will_payload, "will payload");
    ck_assert_uint_eq(g->has_username, w->has_username);
    ck_assert_uint_eq(g->has_password, w->has_password);
    expect_bytes(w->username, g->username, "username");
    expect_bytes(w->password, g->password, "password");
    break;
  }
  case UVMQTT_PUBLISH:
    ck_assert_uint_eq(got->u.publish.qos, want->u.publish.qos);
    ck_assert_uint_eq(got->u.publish.retain, want->u.publish.retain);
    ck_assert_uint_eq(got->u.publish.dup, want->u.publish.dup);
    expect_bytes(want->u.publish.topic, got->u.publish.topic, "topic");
    expect_bytes(want->u.publish.payload, got->u.publish.payload, "payload");
    break;
  case UVMQTT_SUBSCRIBE:
  case UVMQTT_UNSUBSCRIBE: {
    ck_assert_uint_eq(got->u.subscribe.count, want->u.subscribe.count);
    ck_assert_ptr_null(got->u.subscribe.subs);
    size_t off = 0;
    uvmqtt_topic_sub_t ts;
    for (uint32_t i = 0; i < want->u.subscribe.count; i++) {
      ck_assert_int_eq(uvmqtt_subs_next(got->type, got->u.subscribe.raw, &off, &ts), 1);
      expect_bytes(want->u.subscribe.subs[i].filter, ts.filter, "filter");
      ck_assert_uint_eq(ts.options, want->u.subscribe.subs[i].options);
    }
    ck_assert_int_eq(uvmqtt_subs_next(got->type, got->u.subscribe.raw, &off, &ts), 0);
    break;
  }
  case UVMQTT_SUBACK:
  case UVMQTT_UNSUBACK:
    ck_assert_uint_eq(got->u.suback.count, want->u.suback.count);
    if (want->u.suback.count) {
      ck_assert_mem_eq(got->u.suback.codes, want->u.suback.codes, want->u.suback.count);
    }
    break;
  default: break;
  }
}

static void expected_packet(const vector_t *v, uvmqtt_packet_t *pkt) {
  memset(pkt, 0, sizeof(*pkt));
  v->build(pkt);
}

/* Bytes of the fixed header: type byte plus remaining length. */
static size_t header_len(const vector_t *v) {
  size_t n = 1;
  while (v->bytes[n] & 0x80)
    n++;
  return n + 1;
}

/* ---- Vector tests ------------------------------------------------------------- */

static void vector_decode_whole(const vector_t *v) {
  uvmqtt_packet_t want, got;
  expected_packet(v, &want);
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  init_decoder(&dec, v->version, 0, &m);
  uint8_t *in = copy_of(v->bytes, v->len);
  int have = -1;
  ck_assert_int_eq(uvmqtt_decode(&dec, in, v->len, &got, &have), (ssize_t)v->len);
  ck_assert_int_eq(have, 1);
  expect_packet(&want, &got);
  ck_assert_int_eq(m.allocs, 0);
  ck_assert_int_eq(uvmqtt_decoder_busy(&dec), 0);
  ck_assert_int_eq(uvmqtt_decode(&dec, NULL, 0, &got, &have), 0);
  ck_assert_int_eq(have, 0);
  free(in);

  /* The non-incremental entry point agrees. */
  memset(&got, 0, sizeof(got));
  ck_assert_int_eq(uvmqtt_decode_packet(v->bytes, v->len, v->version, &got), 0);
  expect_packet(&want, &got);
}

static void vector_decode_split(const vector_t *v) {
  uvmqtt_packet_t want, got;
  expected_packet(v, &want);
  size_t head = header_len(v);
  for (size_t k = 1; k < v->len; k++) {
    uvmqtt_decoder_t dec;
    mem_stats_t m;
    init_decoder(&dec, v->version, 0, &m);
    int have = -1;
    uint8_t *part = copy_of(v->bytes, k);
    ck_assert_int_eq(uvmqtt_decode(&dec, part, k, &got, &have), (ssize_t)k);
    ck_assert_int_eq(have, 0);
    ck_assert_int_eq(uvmqtt_decoder_busy(&dec), 1);
    /* The decoder must not keep pointers into a chunk it was done with. */
    free(part);
    part = copy_of(v->bytes + k, v->len - k);
    ck_assert_int_eq(uvmqtt_decode(&dec, part, v->len - k, &got, &have), (ssize_t)(v->len - k));
    ck_assert_int_eq(have, 1);
    expect_packet(&want, &got);
    /* Only a body that is itself split needs a buffer, of exactly its size. */
    int split_body = k >= head;
    ck_assert_msg(m.allocs == split_body, "split at %zu: %d allocations", k, m.allocs);
    if (split_body) ck_assert_uint_eq(m.last_size, v->len - head);
    ck_assert_int_eq(m.frees, 0);
    ck_assert_int_eq(uvmqtt_decode(&dec, NULL, 0, &got, &have), 0);
    ck_assert_int_eq(m.frees, m.allocs);
    free(part);
  }
}

static void vector_decode_bytewise(const vector_t *v) {
  uvmqtt_packet_t want, got;
  expected_packet(v, &want);
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  init_decoder(&dec, v->version, 0, &m);
  int have = 0;
  for (size_t k = 0; k < v->len; k++) {
    uint8_t *one = copy_of(v->bytes + k, 1);
    ck_assert_int_eq(uvmqtt_decode(&dec, one, 1, &got, &have), 1);
    ck_assert_int_eq(have, k + 1 == v->len);
    free(one);
  }
  expect_packet(&want, &got);
  ck_assert_int_eq(m.allocs, v->len > header_len(v) ? 1 : 0);
  uvmqtt_decoder_reset(&dec);
  ck_assert_int_eq(m.frees, m.allocs);
}

static void vector_encode(const vector_t *v) {
  uvmqtt_packet_t pkt;
  expected_packet(v, &pkt);
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, v->version), (ssize_t)v->len);
  uint8_t *buf = guard_alloc(v->len);
  ck_assert_int_eq(uvmqtt_encode(&pkt, v->version, buf, v->len), (ssize_t)v->len);
  ck_assert_mem_eq(buf, v->bytes, v->len);
  ck_assert(guard_intact(buf, v->len));
  guard_free(buf);

  for (size_t cap = 0; cap < v->len; cap++) {
    buf = guard_alloc(cap);
    memset(buf, 0xEE, cap);
    ck_assert_int_eq(uvmqtt_encode(&pkt, v->version, buf, cap), UVMQTT_ENOBUFS);
    ck_assert(guard_intact(buf, cap));
    for (size_t i = 0; i < cap; i++)
      ck_assert_uint_eq(buf[i], 0xEE);
    guard_free(buf);
  }
}

static void vector_encode_publish_header(const vector_t *v) {
  uvmqtt_packet_t pkt;
  expected_packet(v, &pkt);
  if (pkt.type != UVMQTT_PUBLISH) {
    ck_assert_int_eq(uvmqtt_encode_publish_header(&pkt, v->version, NULL, 0), UVMQTT_EINVAL);
    return;
  }
  size_t head = v->len - pkt.u.publish.payload.len;
  uint8_t *buf = guard_alloc(head);
  ck_assert_int_eq(uvmqtt_encode_publish_header(&pkt, v->version, buf, head), (ssize_t)head);
  ck_assert_mem_eq(buf, v->bytes, head);
  ck_assert(guard_intact(buf, head));
  guard_free(buf);
  for (size_t cap = 0; cap < head; cap++) {
    buf = guard_alloc(cap);
    ck_assert_int_eq(uvmqtt_encode_publish_header(&pkt, v->version, buf, cap), UVMQTT_ENOBUFS);
    ck_assert(guard_intact(buf, cap));
    guard_free(buf);
  }
}

/* A decoded packet (lists reached only through `raw`) encodes back to the
 * same bytes. */
static void vector_reencode_decoded(const vector_t *v) {
  uvmqtt_packet_t got;
  ck_assert_int_eq(uvmqtt_decode_packet(v->bytes, v->len, v->version, &got), 0);
  uint8_t *buf = guard_alloc(v->len);
  ck_assert_int_eq(uvmqtt_encode(&got, v->version, buf, v->len), (ssize_t)v->len);
  ck_assert_mem_eq(buf, v->bytes, v->len);
  ck_assert(guard_intact(buf, v->len));
  guard_free(buf);
}

/* Every vector: decoded whole, split in two at every byte, one byte at a
 * time, encoded into guarded buffers, and decoded then encoded again. One
 * test per vector keeps the fork count of the run low. */
START_TEST(codec_vector) {
  const vector_t *v = &vectors[_i];
  vector_decode_whole(v);
  vector_decode_split(v);
  vector_decode_bytewise(v);
  vector_encode(v);
  vector_encode_publish_header(v);
  vector_reencode_decoded(v);
}
END_TEST

/* Every vector of one version back to back, fed in chunks of `chunk` bytes. */
static void decode_stream(uint8_t version, size_t chunk) {
  size_t total = 0;
  for (int i = 0; i < NVECTORS; i++) {
    if (vectors[i].version == version) total += vectors[i].len;
  }
  uint8_t *stream = malloc(total);
  ck_assert_ptr_nonnull(stream);
  size_t off = 0;
  for (int i = 0; i < NVECTORS; i++) {
    if (vectors[i].version != version) continue;
    memcpy(stream + off, vectors[i].bytes, vectors[i].len);
    off += vectors[i].len;
  }

  uvmqtt_decoder_t dec;
  mem_stats_t m;
  init_decoder(&dec, version, 0, &m);
  int next = 0, matched = 0;
  for (size_t pos = 0; pos < total; pos += chunk) {
    size_t end = pos + chunk < total ? pos + chunk : total;
    const uint8_t *p = stream + pos;
    size_t left = end - pos;
    /* Each call stops after one packet; the caller feeds the rest again. */
    for (int guard = 0; guard < 1000; guard++) {
      uvmqtt_packet_t got;
      int have;
      ssize_t n = uvmqtt_decode(&dec, p, left, &got, &have);
      ck_assert_int_ge(n, 0);
      p += n;
      left -= (size_t)n;
      if (have) {
        while (vectors[next].version != version)
          next++;
        uvmqtt_packet_t want;
        expected_packet(&vectors[next], &want);
        expect_packet(&want, &got);
        next++;
        matched++;
      }
      if (left == 0) break;
      ck_assert_int_eq(have, 1);
    }
  }
  int expected = 0;
  for (int i = 0; i < NVECTORS; i++)
    expected += vectors[i].version == version;
  ck_assert_int_eq(matched, expected);
  if (chunk >= total) ck_assert_int_eq(m.allocs, 0);
  uvmqtt_decoder_reset(&dec);
  ck_assert_int_eq(m.frees, m.allocs);
  free(stream);
}

START_TEST(codec_stream_v311_whole) {
  decode_stream(UVMQTT_V311, 1 << 20);
}
END_TEST

START_TEST(codec_stream_v311_chunks) {
  for (size_t chunk = 1; chunk <= 64; chunk++)
    decode_stream(UVMQTT_V311, chunk);
}
END_TEST

START_TEST(codec_stream_v31_whole) {
  decode_stream(UVMQTT_V31, 1 << 20);
}
END_TEST

START_TEST(codec_stream_v31_chunks) {
  for (size_t chunk = 1; chunk <= 64; chunk++)
    decode_stream(UVMQTT_V31, chunk);
}
END_TEST

/* What MQTT 3.1 does differently from 3.1.1, beyond the vectors. */
START_TEST(codec_v31_differences) {
  uvmqtt_packet_t pkt;
  /* The first CONNACK byte is reserved: no Session Present flag. */
  static const uint8_t connack_flag[] = {0x20, 0x02, 0x01, 0x00};
  ck_assert_int_eq(uvmqtt_decode_packet(connack_flag, sizeof connack_flag, UVMQTT_V31, &pkt), 0);
  ck_assert_uint_eq(pkt.session_present, 0);
  /* A 3.1 broker may send 3.1.1's failure code; the encoder keeps to 0-2. */
  static const uint8_t suback_fail[] = {0x90, 0x03, 0x00, 0x01, 0x80};
  ck_assert_int_eq(uvmqtt_decode_packet(suback_fail, sizeof suback_fail, UVMQTT_V31, &pkt), 0);
  ck_assert_uint_eq(pkt.u.suback.codes[0], 0x80);
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, UVMQTT_V31), UVMQTT_EBADREASON);
  /* A resent PUBREL may carry DUP in 3.1, not in 3.1.1. */
  static const uint8_t pubrel_dup[] = {0x6A, 0x02, 0x00, 0x03};
  ck_assert_int_eq(uvmqtt_decode_packet(pubrel_dup, sizeof pubrel_dup, UVMQTT_V31, &pkt), 0);
  ck_assert_uint_eq(pkt.packet_id, 3);
  ck_assert_int_eq(uvmqtt_decode_packet(pubrel_dup, sizeof pubrel_dup, UVMQTT_V311, &pkt),
                   UVMQTT_EBADFLAGS);
  /* No AUTH, no reason codes. */
  ck_assert_int_eq(uvmqtt_decode_packet(v5_auth_min, sizeof v5_auth_min, UVMQTT_V31, &pkt),
                   UVMQTT_EBADTYPE);
  /* Client ids: 1 to 23 bytes when encoding; a server refuses only an empty one. */
  memset(&pkt, 0, sizeof pkt);
  build_connect_v31(&pkt);
  pkt.u.connect.client_id = S("");
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, UVMQTT_V31), UVMQTT_ECLIENTID);
  pkt.u.connect.client_id = S("abcdefghijklmnopqrstuvwx"); /* 24 */
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, UVMQTT_V31), UVMQTT_ECLIENTID);
  pkt.u.connect.client_id = S("abcdefghijklmnopqrstuvw"); /* 23 */
  ck_assert_int_gt(uvmqtt_encode_size(&pkt, UVMQTT_V31), 0);
  static const uint8_t empty_id[] = {0x10, 0x0E, MQISDP_NAME, 0x03, 0x02, 0x00, 0x3C, 0x00, 0x00};
  ck_assert_int_eq(uvmqtt_decode_packet(empty_id, sizeof empty_id, 0, &pkt), UVMQTT_ECLIENTID);
  /* The name and the level go together. */
  static const uint8_t mqisdp_4[] = {0x10, 0x0F, MQISDP_NAME, 0x04, 0x02,
                                     0x00, 0x3C, 0x00,        0x01, 'c'};
  ck_assert_int_eq(uvmqtt_decode_packet(mqisdp_4, sizeof mqisdp_4, 0, &pkt), UVMQTT_EBADPROTO);
  static const uint8_t mqtt_3[] = {0x10, 0x0D, MQTT_NAME, 0x03, 0x02, 0x00, 0x3C, 0x00, 0x01, 'c'};
  ck_assert_int_eq(uvmqtt_decode_packet(mqtt_3, sizeof mqtt_3, 0, &pkt), UVMQTT_EBADPROTO);
  /* The unused CONNECT flag bit is ignored in 3.1 only. */
  static const uint8_t bit0[] = {0x10, 0x0F, MQISDP_NAME, 0x03, 0x03, 0x00, 0x3C, 0x00, 0x01, 'c'};
  ck_assert_int_eq(uvmqtt_decode_packet(bit0, sizeof bit0, 0, &pkt), 0);
  ck_assert_uint_eq(pkt.u.connect.protocol_level, UVMQTT_V31);
  ck_assert_uint_eq(pkt.u.connect.clean_start, 1);
  /* The decoder learns 3.1 from the CONNECT. */
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  int have;
  init_decoder(&dec, 0, 0, &m);
  ck_assert_int_eq(uvmqtt_decode(&dec, v31_connect, sizeof v31_connect, &pkt, &have),
                   (ssize_t)sizeof v31_connect);
  ck_assert_int_eq(dec.version, UVMQTT_V31);
  ck_assert_int_eq(uvmqtt_decode(&dec, pubrel_dup, sizeof pubrel_dup, &pkt, &have),
                   (ssize_t)sizeof pubrel_dup);
  ck_assert_int_eq(have, 1);
}
END_TEST

START_TEST(codec_stream_v5_whole) {
  decode_stream(UVMQTT_V5, 1 << 20);
}
END_TEST

START_TEST(codec_stream_v5_chunks) {
  for (size_t chunk = 1; chunk <= 64; chunk++)
    decode_stream(UVMQTT_V5, chunk);
}
END_TEST

/* ---- Negative decoding: one case per validation rule ------------------------- */

typedef struct {
  const char *name;
  uint8_t version;
  int err;
  const uint8_t *bytes;
  size_t len;
} bad_t;

#define BAD(name, ver, err, ...)                                                                   \
  { name, ver, err, (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}) }
#define V3                               UVMQTT_V311
#define V5                               UVMQTT_V5
#define CONNECT_WITH_FLAGS(level, flags) 0x10, 0x0C, MQTT_NAME, level, flags, 0x00, 0x3C, 0x00, 0x00

static const bad_t bad[] = {
    BAD("type 0", V3, UVMQTT_EBADTYPE, 0x00, 0x00),
    BAD("AUTH in 3.1.1", V3, UVMQTT_EBADTYPE, 0xF0, 0x00),
    BAD("PUBREL flags 0000", V3, UVMQTT_EBADFLAGS, 0x60, 0x02, 0x00, 0x01),
    BAD("SUBSCRIBE flags 0000", V3, UVMQTT_EBADFLAGS, 0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0),
    BAD("UNSUBSCRIBE flags 0000", V3, UVMQTT_EBADFLAGS, 0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, 'a'),
    BAD("PUBACK flags 0001", V3, UVMQTT_EBADFLAGS, 0x41, 0x02, 0x00, 0x01),
    BAD("PINGREQ flags 1000", V5, UVMQTT_EBADFLAGS, 0xC8, 0x00),
    BAD("PUBLISH QoS 0 with DUP", V3, UVMQTT_EBADFLAGS, 0x38, 0x03, 0x00, 0x01, 'a'),
    BAD("CONNACK reserved ack flags", V3, UVMQTT_EBADFLAGS, 0x20, 0x02, 0x02, 0x00),
    BAD("PUBLISH QoS 3", V3, UVMQTT_EBADQOS, 0x36, 0x05, 0x00, 0x01, 'a', 0x00, 0x01),
    BAD("remaining length of 5 bytes", V3, UVMQTT_EREMLEN, 0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01),
    BAD("remaining length not shortest", V3, UVMQTT_EMALFORMED, 0xC0, 0x80, 0x00),
    BAD("PUBLISH QoS 1 packet id 0", V3, UVMQTT_EPACKETID, 0x32, 0x05, 0x00, 0x01, 'a', 0, 0),
    BAD("PUBACK packet id 0", V5, UVMQTT_EPACKETID, 0x40, 0x02, 0x00, 0x00),
    BAD("SUBSCRIBE packet id 0", V3, UVMQTT_EPACKETID, 0x82, 0x06, 0, 0, 0x00, 0x01, 'a', 0),
    BAD("UNSUBACK packet id 0", V3, UVMQTT_EPACKETID, 0xB0, 0x02, 0x00, 0x00),
    BAD("topic with U+0000", V3, UVMQTT_EBADUTF8, 0x30, 0x03, 0x00, 0x01, 0x00),
    BAD("topic with overlong NUL", V3, UVMQTT_EBADUTF8, 0x30, 0x04, 0x00, 0x02, 0xC0, 0x80),
    BAD("topic with a surrogate", V3, UVMQTT_EBADUTF8, 0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80),
    BAD("topic above U+10FFFF", V3, UVMQTT_EBADUTF8, 0x30, 0x06, 0x00, 0x04, 0xF4, 0x90, 0x80,
        0x80),
    BAD("topic with a cut sequence", V3, UVMQTT_EBADUTF8, 0x30, 0x04, 0x00, 0x02, 'a', 0xC3),
    BAD("client id not UTF-8", V3, UVMQTT_EBADUTF8, 0x10, 0x0D, MQTT_NAME, 0x04, 0x02, 0x00, 0x3C,
        0x00, 0x01, 0xFF),
    BAD("reason string not UTF-8", V5, UVMQTT_EBADUTF8, 0x40, 0x08, 0x00, 0x01, 0x80, 0x04, 0x1F,
        0x00, 0x01, 0xFE),
    BAD("user property not UTF-8", V5, UVMQTT_EBADUTF8, 0xE0, 0x09, 0x00, 0x07, 0x26, 0x00, 0x01,
        'k', 0x00, 0x01, 0xC0),
    BAD("PUBLISH topic with +", V3, UVMQTT_ETOPICWILD, 0x30, 0x05, 0x00, 0x03, 'a', '/', '+'),
    BAD("PUBLISH topic with #", V5, UVMQTT_ETOPICWILD, 0x30, 0x04, 0x00, 0x01, '#', 0x00),
    BAD("response topic with #", V5, UVMQTT_ETOPICWILD, 0x30, 0x09, 0x00, 0x01, 't', 0x04, 0x08,
        0x00, 0x01, '#', 'p'),
    BAD("will topic with +", V3, UVMQTT_ETOPICWILD, 0x10, 0x11, MQTT_NAME, 0x04, 0x06, 0x00, 0x3C,
        0x00, 0x00, 0x00, 0x01, '+', 0x00, 0x00),
    BAD("PUBLISH empty topic", V3, UVMQTT_EBADTOPIC, 0x30, 0x03, 0x00, 0x00, 'p'),
    BAD("v5 PUBLISH empty topic, no alias", V5, UVMQTT_EBADTOPIC, 0x30, 0x03, 0x00, 0x00, 0x00),
    BAD("filter a/#/b", V3, UVMQTT_EBADTOPIC, 0x82, 0x0A, 0x00, 0x01, 0x00, 0x05, 'a', '/', '#',
        '/', 'b', 0x00),
    BAD("filter a+", V3, UVMQTT_EBADTOPIC, 0xA2, 0x06, 0x00, 0x01, 0x00, 0x02, 'a', '+'),
    BAD("empty filter", V5, UVMQTT_EBADTOPIC, 0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00),
    BAD("property length beyond packet", V5, UVMQTT_EPROPLEN, 0x30, 0x05, 0x00, 0x01, 'a', 0x05,
        0x01),
    BAD("property value beyond block", V5, UVMQTT_EPROPLEN, 0x30, 0x07, 0x00, 0x01, 'a', 0x02, 0x02,
        0x00, 'p'),
    BAD("string property beyond block", V5, UVMQTT_EPROPLEN, 0x40, 0x08, 0x00, 0x01, 0x80, 0x04,
        0x1F, 0x00, 0x05, 'r'),
    BAD("unknown property", V5, UVMQTT_EBADPROP, 0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x7F, 0x00),
    BAD("session expiry in PUBLISH", V5, UVMQTT_EBADPROP, 0x30, 0x09, 0x00, 0x01, 'a', 0x05, 0x11,
        0x00, 0x00, 0x00, 0x00),
    BAD("will delay in CONNECT properties", V5, UVMQTT_EBADPROP, 0x10, 0x12, MQTT_NAME, 0x05, 0x02,
        0x00, 0x3C, 0x05, 0x18, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00),
    BAD("topic alias in UNSUBSCRIBE", V5, UVMQTT_EBADPROP, 0xA2, 0x09, 0x00, 0x01, 0x03, 0x23, 0x00,
        0x01, 0x00, 0x01, 'a'),
    BAD("payload format twice", V5, UVMQTT_EDUPPROP, 0x30, 0x08, 0x00, 0x01, 'a', 0x04, 0x01, 0x00,
        0x01, 0x00),
    BAD("two subscription ids in SUBSCRIBE", V5, UVMQTT_EDUPPROP, 0x82, 0x0B, 0x00, 0x01, 0x04,
        0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, 'a', 0x00),
    BAD("reason string twice", V5, UVMQTT_EDUPPROP, 0xB0, 0x0C, 0x00, 0x01, 0x08, 0x1F, 0x00, 0x01,
        'a', 0x1F, 0x00, 0x01, 'b', 0x00),
    BAD("payload format indicator 2", V5, UVMQTT_EPROPVALUE, 0x30, 0x06, 0x00, 0x01, 'a', 0x02,
        0x01, 0x02),
    BAD("maximum QoS 2", V5, UVMQTT_EPROPVALUE, 0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02),
    BAD("retain available 2", V5, UVMQTT_EPROPVALUE, 0x20, 0x05, 0x00, 0x00, 0x02, 0x25, 0x02),
    BAD("wildcard available 2", V5, UVMQTT_EPROPVALUE, 0x20, 0x05, 0x00, 0x00, 0x02, 0x28, 0x02),
    BAD("sub id available 2", V5, UVMQTT_EPROPVALUE, 0x20, 0x05, 0x00, 0x00, 0x02, 0x29, 0x02),
    BAD("shared available 2", V5, UVMQTT_EPROPVALUE, 0x20, 0x05, 0x00, 0x00, 0x02, 0x2A, 0x02),
    BAD("request problem information 2", V5, UVMQTT_EPROPVALUE, 0x10, 0x0F, MQTT_NAME, 0x05, 0x02,
        0x00, 0x3C, 0x02, 0x17, 0x02, 0x00, 0x00),
    BAD("request response information 2", V5, UVMQTT_EPROPVALUE, 0x10, 0x0F, MQTT_NAME, 0x05, 0x02,
        0x00, 0x3C, 0x02, 0x19, 0x02, 0x00, 0x00),
    BAD("receive maximum 0", V5, UVMQTT_EPROPVALUE, 0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00),
    BAD("maximum packet size 0", V5, UVMQTT_EPROPVALUE, 0x20, 0x08, 0x00, 0x00, 0x05, 0x27, 0x00,
        0x00, 0x00, 0x00),
    BAD("subscription id 0", V5, UVMQTT_EPROPVALUE, 0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x0B, 0x00),
    BAD("topic alias 0", V5, UVMQTT_EPROPVALUE, 0x30, 0x07, 0x00, 0x01, 'a', 0x03, 0x23, 0x00,
        0x00),
    BAD("subscription id of 5 bytes", V5, UVMQTT_EMALFORMED, 0x30, 0x0A, 0x00, 0x01, 'a', 0x06,
        0x0B, 0x80, 0x80, 0x80, 0x80, 0x01),
    BAD("SUBSCRIBE without filters", V3, UVMQTT_ENOFILTERS, 0x82, 0x02, 0x00, 0x01),
    BAD("UNSUBSCRIBE without filters", V5, UVMQTT_ENOFILTERS, 0xA2, 0x03, 0x00, 0x01, 0x00),
    BAD("CONNECT reserved flag", V3, UVMQTT_EBADCONNECT, CONNECT_WITH_FLAGS(0x04, 0x03)),
    BAD("will QoS without will", V3, UVMQTT_EBADCONNECT, CONNECT_WITH_FLAGS(0x04, 0x0A)),
    BAD("will retain without will", V5, UVMQTT_EBADCONNECT, CONNECT_WITH_FLAGS(0x05, 0x22)),
    BAD("password without username", V3, UVMQTT_EBADCONNECT, CONNECT_WITH_FLAGS(0x04, 0x42)),
    BAD("will QoS 3", V3, UVMQTT_EBADQOS, CONNECT_WITH_FLAGS(0x04, 0x1E)),
    BAD("MQIsdp 3 with an empty client id", V3, UVMQTT_ECLIENTID, 0x10, 0x0E, 0x00, 0x06, 'M', 'Q',
        'I', 's', 'd', 'p', 0x03, 0x02, 0x00, 0x3C, 0x00, 0x00),
    BAD("protocol MQIsdp 4", V3, UVMQTT_EBADPROTO, 0x10, 0x0F, 0x00, 0x06, 'M', 'Q', 'I', 's', 'd',
        'p', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, 'c'),
    BAD("protocol level 6", V3, UVMQTT_EBADPROTO, CONNECT_WITH_FLAGS(0x06, 0x02)),
    BAD("3.1.1 option bit 2", V3, UVMQTT_EBADSUBOPT, 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x04),
    BAD("v5 option bit 6", V5, UVMQTT_EBADSUBOPT, 0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a',
        0x40),
    BAD("retain handling 3", V5, UVMQTT_EBADSUBOPT, 0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a',
        0x30),
    BAD("no local on a shared subscription", V5, UVMQTT_EBADSUBOPT, 0x82, 0x10, 0x00, 0x01, 0x00,
        0x00, 0x0A, '$', 's', 'h', 'a', 'r', 'e', '/', 'g', '/', 'a', 0x04),
    BAD("subscription QoS 3", V5, UVMQTT_EBADQOS, 0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a',
        0x03),
    BAD("PUBACK with 3 bytes in 3.1.1", V3, UVMQTT_ETRAILING, 0x40, 0x03, 0x00, 0x01, 0x00),
    BAD("CONNACK with 3 bytes in 3.1.1", V3, UVMQTT_ETRAILING, 0x20, 0x03, 0x00, 0x00, 0x00),
    BAD("CONNECT with a byte after the password", V3, UVMQTT_ETRAILING, 0x10, 0x0D, MQTT_NAME, 0x04,
        0x02, 0x00, 0x3C, 0x00, 0x00, 0x00),
    BAD("byte after v5 PUBACK properties", V5, UVMQTT_ETRAILING, 0x40, 0x05, 0x00, 0x01, 0x00, 0x00,
        0x00),
    BAD("topic longer than the packet", V3, UVMQTT_ESHORT, 0x30, 0x03, 0x00, 0x05, 'a'),
    BAD("PUBACK of 1 byte", V5, UVMQTT_ESHORT, 0x40, 0x01, 0x00),
    BAD("CONNECT cut before client id", V3, UVMQTT_ESHORT, 0x10, 0x0A, MQTT_NAME, 0x04, 0x02, 0x00,
        0x3C),
    BAD("v5 CONNACK without property length", V5, UVMQTT_ESHORT, 0x20, 0x02, 0x00, 0x00),
    BAD("username missing", V3, UVMQTT_ESHORT, CONNECT_WITH_FLAGS(0x04, 0x82)),
    BAD("3.1.1 SUBACK code 3", V3, UVMQTT_EBADREASON, 0x90, 0x03, 0x00, 0x01, 0x03),
    BAD("3.1.1 CONNACK code 6", V3, UVMQTT_EBADREASON, 0x20, 0x02, 0x00, 0x06),
    BAD("v5 CONNACK reason 0x01", V5, UVMQTT_EBADREASON, 0x20, 0x03, 0x00, 0x01, 0x00),
    BAD("v5 PUBACK reason 0x05", V5, UVMQTT_EBADREASON, 0x40, 0x03, 0x00, 0x01, 0x05),
    BAD("v5 PUBREL reason 0x10", V5, UVMQTT_EBADREASON, 0x62, 0x03, 0x00, 0x01, 0x10),
    BAD("v5 SUBACK reason 0x11", V5, UVMQTT_EBADREASON, 0x90, 0x04, 0x00, 0x01, 0x00, 0x11),
    BAD("v5 UNSUBACK reason 0x02", V5, UVMQTT_EBADREASON, 0xB0, 0x04, 0x00, 0x01, 0x00, 0x02),
    BAD("v5 DISCONNECT reason 0x05", V5, UVMQTT_EBADREASON, 0xE0, 0x01, 0x05),
    BAD("v5 AUTH reason 0x01", V5, UVMQTT_EBADREASON, 0xF0, 0x01, 0x01),
    BAD("SUBACK without codes", V5, UVMQTT_EMALFORMED, 0x90, 0x03, 0x00, 0x01, 0x00),
    BAD("PINGREQ with a body", V3, UVMQTT_EMALFORMED, 0xC0, 0x01, 0x00),
    BAD("PINGRESP with a body", V5, UVMQTT_EMALFORMED, 0xD0, 0x01, 0x00),
    BAD("3.1.1 DISCONNECT with a body", V3, UVMQTT_EMALFORMED, 0xE0, 0x01, 0x00),
    BAD("session present on a refusal", V3, UVMQTT_EPROTOCOL, 0x20, 0x02, 0x01, 0x05),
    BAD("first packet not CONNECT", 0, UVMQTT_EPROTOCOL, 0xC0, 0x00),
};
#define NBAD ((int)(sizeof(bad) / sizeof(bad[0])))

/* A packet that decodes fine in `version`, to show the error went away. */
static void expect_decoder_recovers(uvmqtt_decoder_t *dec, uint8_t version) {
  static const uint8_t connect[] = {CONNECT_WITH_FLAGS(0x04, 0x02)};
  uvmqtt_packet_t pkt;
  int have;
  const uint8_t *ok = version == 0 ? connect : pingreq;
  size_t len = version == 0 ? sizeof(connect) : sizeof(pingreq);
  ck_assert_int_eq(uvmqtt_decode(dec, ok, len, &pkt, &have), (ssize_t)len);
  ck_assert_int_eq(have, 1);
}

START_TEST(codec_reject) {
  const bad_t *b = &bad[_i];
  uvmqtt_packet_t pkt;
  int have = -1;
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  init_decoder(&dec, b->version, 0, &m);
  ssize_t r = uvmqtt_decode(&dec, b->bytes, b->len, &pkt, &have);
  ck_assert_msg(r == b->err, "%s: got %s, want %s", b->name, uvmqtt_err_name((int)r),
                uvmqtt_err_name(b->err));
  ck_assert_int_eq(have, 0);
  /* Sticky: valid input and empty input both get the same error back. */
  ck_assert_int_eq(uvmqtt_decode(&dec, pingreq, sizeof(pingreq), &pkt, &have), b->err);
  ck_assert_int_eq(uvmqtt_decode(&dec, NULL, 0, &pkt, &have), b->err);
  ck_assert_int_eq(have, 0);
  ck_assert_int_eq(m.allocs, m.frees);
  uvmqtt_decoder_reset(&dec);
  expect_decoder_recovers(&dec, b->version);

  /* The same error one byte at a time, and from the whole-packet decoder. */
  init_decoder(&dec, b->version, 0, &m);
  r = 0;
  for (size_t k = 0; k < b->len && r >= 0; k++)
    r = uvmqtt_decode(&dec, b->bytes + k, 1, &pkt, &have);
  ck_assert_msg(r == b->err, "%s bytewise: got %s", b->name, uvmqtt_err_name((int)r));
  ck_assert_int_eq(m.allocs, m.frees);
  ck_assert_int_eq(uvmqtt_decode_packet(b->bytes, b->len, b->version, &pkt), b->err);
}
END_TEST

START_TEST(codec_error_reasons) {
  /* What a client puts in its DISCONNECT for each codec error (MQTT 5.0
   * section 2.2.2.2: a wrong property is a malformed packet; section 4.13). */
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_EBADPROP), 0x81);
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_EDUPPROP), 0x82);
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_EPROPVALUE), 0x82);
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_EBADUTF8), 0x81);
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_ETOOLARGE), 0x95);
  ck_assert_int_eq(uvmqtt_err_reason(UVMQTT_EREMLEN), 0x81);
  for (int i = 0; i < NBAD; i++) {
    int reason = uvmqtt_err_reason(bad[i].err);
    ck_assert_msg(reason == 0x81 || reason == 0x82 || reason == 0x84, "%s maps to 0x%02x",
                  bad[i].name, reason);
  }
}
END_TEST

/* ---- Limits, memory and zero copy ---------------------------------------------- */

START_TEST(codec_max_packet_size_before_buffering) {
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  uvmqtt_packet_t pkt;
  int have;
  /* 1 + 2 + 128 = 131 bytes would be needed; only the header arrives. */
  init_decoder(&dec, UVMQTT_V311, 130, &m);
  const uint8_t head[] = {0x30, 0x80, 0x01};
  ck_assert_int_eq(uvmqtt_decode(&dec, head, 2, &pkt, &have), 2);
  ck_assert_int_eq(uvmqtt_decode(&dec, head + 2, 1, &pkt, &have), UVMQTT_ETOOLARGE);
  ck_assert_int_eq(m.allocs, 0);
  ck_assert_int_eq(uvmqtt_decode(&dec, head, 0, &pkt, &have), UVMQTT_ETOOLARGE);

  /* A packet of exactly the maximum passes. */
  init_decoder(&dec, UVMQTT_V311, sizeof(v311_publish_qos0), &m);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0, sizeof(v311_publish_qos0), &pkt, &have),
                   (ssize_t)sizeof(v311_publish_qos0));
  ck_assert_int_eq(have, 1);
  init_decoder(&dec, UVMQTT_V311, sizeof(v311_publish_qos0) - 1, &m);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0, sizeof(v311_publish_qos0), &pkt, &have),
                   UVMQTT_ETOOLARGE);
}
END_TEST

START_TEST(codec_alloc_failure_enomem) {
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  uvmqtt_packet_t pkt;
  int have;
  init_decoder(&dec, UVMQTT_V311, 0, &m);
  m.fail = 1;
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0, 4, &pkt, &have), UVMQTT_ENOMEM);
  ck_assert_int_eq(m.allocs, 1);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0 + 4, 5, &pkt, &have), UVMQTT_ENOMEM);
  ck_assert_int_eq(m.frees, 0);

  /* Without callbacks or scratch, a split body cannot be held. */
  uvmqtt_decoder_init(&dec, UVMQTT_V311, 0, NULL);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0, 4, &pkt, &have), UVMQTT_ENOMEM);
  /* A whole packet needs no memory at all. */
  uvmqtt_decoder_reset(&dec);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0, sizeof(v311_publish_qos0), &pkt, &have),
                   (ssize_t)sizeof(v311_publish_qos0));
  ck_assert_int_eq(have, 1);
}
END_TEST

START_TEST(codec_scratch_buffer) {
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  uvmqtt_packet_t pkt;
  int have;
  uint8_t scratch[8];
  init_decoder(&dec, UVMQTT_V311, 0, &m);
  dec.scratch = scratch;
  dec.scratch_size = sizeof(scratch);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0, 3, &pkt, &have), 3);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0 + 3, 6, &pkt, &have), 6);
  ck_assert_int_eq(have, 1);
  ck_assert_int_eq(m.allocs, 0);
  ck_assert_ptr_eq(pkt.u.publish.topic.data, scratch + 2);
  ck_assert_mem_eq(pkt.u.publish.payload.data, "hi", 2);

  /* A body bigger than the scratch buffer goes to the allocator. */
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos1, 3, &pkt, &have), 3);
  ck_assert_int_eq(m.allocs, 1);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos1 + 3, 8, &pkt, &have), 8);
  ck_assert_int_eq(have, 1);
  uvmqtt_decoder_reset(&dec);
  ck_assert_int_eq(m.frees, 1);
}
END_TEST

START_TEST(codec_decode_publish_zero_copy) {
  uint8_t *in = copy_of(v5_publish, sizeof(v5_publish));
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  uvmqtt_packet_t pkt;
  int have;
  init_decoder(&dec, UVMQTT_V5, 0, &m);
  ck_assert_int_eq(uvmqtt_decode(&dec, in, sizeof(v5_publish), &pkt, &have),
                   (ssize_t)sizeof(v5_publish));
  ck_assert_int_eq(have, 1);
  ck_assert_ptr_eq(pkt.u.publish.topic.data, in + 4);
  ck_assert_ptr_eq(pkt.u.publish.payload.data, in + sizeof(v5_publish) - 2);
  ck_assert_ptr_eq(pkt.props.content_type.data, in + 20);
  ck_assert_ptr_eq(pkt.props.raw.data, in + 10);
  ck_assert_int_eq(m.allocs, 0);
  free(in);
}
END_TEST

START_TEST(codec_decode_publish_long_lengths) {
  /* Three- and four-byte remaining lengths, whole and in uneven chunks. */
  static const size_t sizes[] = {16384, 2097152 + 10};
  for (int s = 0; s < 2; s++) {
    size_t payload = sizes[s];
    size_t rem = 3 + payload;
    size_t vs = (size_t)uvmqtt_varint_size((uint32_t)rem);
    ck_assert_uint_eq(vs, s == 0 ? 3 : 4);
    uvmqtt_packet_t pkt;
    memset(&pkt, 0, sizeof(pkt));
    pkt.type = UVMQTT_PUBLISH;
    pkt.u.publish.topic = S("t");
    uint8_t *body = malloc(payload);
    memset(body, 'z', payload);
    pkt.u.publish.payload = (uvmqtt_bytes_t){body, (uint32_t)payload};
    size_t total = 1 + vs + rem;
    ck_assert_int_eq(uvmqtt_encode_size(&pkt, UVMQTT_V311), (ssize_t)total);
    uint8_t *wire = malloc(total);
    ck_assert_int_eq(uvmqtt_encode(&pkt, UVMQTT_V311, wire, total), (ssize_t)total);

    uvmqtt_decoder_t dec;
    mem_stats_t m;
    uvmqtt_packet_t got;
    int have = 0;
    init_decoder(&dec, UVMQTT_V311, 0, &m);
    size_t pos = 0, chunk = 1;
    for (int calls = 0; calls < 100000 && pos < total; calls++) {
      size_t n = total - pos < chunk ? total - pos : chunk;
      ssize_t r = uvmqtt_decode(&dec, wire + pos, n, &got, &have);
      ck_assert_int_eq(r, (ssize_t)n);
      pos += n;
      chunk = chunk * 3 + 1;
    }
    ck_assert_int_eq(have, 1);
    ck_assert_uint_eq(got.u.publish.payload.len, payload);
    ck_assert_mem_eq(got.u.publish.payload.data, body, payload);
    ck_assert_int_eq(m.allocs, 1);
    ck_assert_uint_eq(m.last_size, rem);
    uvmqtt_decoder_reset(&dec);
    ck_assert_int_eq(uvmqtt_decode_packet(wire, total, UVMQTT_V311, &got), 0);
    ck_assert_ptr_eq(got.u.publish.payload.data, wire + 1 + vs + 3);
    free(wire);
    free(body);
  }
}
END_TEST

START_TEST(codec_decoder_learns_version) {
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  uvmqtt_packet_t pkt;
  int have;
  init_decoder(&dec, 0, 0, &m);
  ck_assert_int_eq(uvmqtt_decode(&dec, v5_connect, sizeof(v5_connect), &pkt, &have),
                   (ssize_t)sizeof(v5_connect));
  ck_assert_int_eq(dec.version, UVMQTT_V5);
  ck_assert_int_eq(uvmqtt_decode(&dec, v5_publish, sizeof(v5_publish), &pkt, &have),
                   (ssize_t)sizeof(v5_publish));
  ck_assert_int_eq(have, 1);
  ck_assert_uint_eq(pkt.props.topic_alias, 3);

  /* A 3.1.1 CONNECT makes AUTH a reserved type. */
  init_decoder(&dec, 0, 0, &m);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_connect_min, sizeof(v311_connect_min), &pkt, &have),
                   (ssize_t)sizeof(v311_connect_min));
  ck_assert_int_eq(dec.version, UVMQTT_V311);
  ck_assert_int_eq(uvmqtt_decode(&dec, v5_auth_min, sizeof(v5_auth_min), &pkt, &have),
                   UVMQTT_EBADTYPE);
}
END_TEST

START_TEST(codec_decode_packet_framing) {
  uvmqtt_packet_t pkt;
  ck_assert_int_eq(uvmqtt_decode_packet(v311_puback, 0, UVMQTT_V311, &pkt), UVMQTT_ESHORT);
  ck_assert_int_eq(uvmqtt_decode_packet(v311_puback, 1, UVMQTT_V311, &pkt), UVMQTT_ESHORT);
  ck_assert_int_eq(uvmqtt_decode_packet(v311_puback, 3, UVMQTT_V311, &pkt), UVMQTT_ESHORT);
  const uint8_t longer[] = {0x40, 0x02, 0x00, 0x01, 0xC0};
  ck_assert_int_eq(uvmqtt_decode_packet(longer, sizeof(longer), UVMQTT_V311, &pkt),
                   UVMQTT_ETRAILING);
  ck_assert_int_eq(uvmqtt_decode_packet(v311_puback, 4, 6, &pkt), UVMQTT_EINVAL);
}
END_TEST

START_TEST(codec_decoder_busy_and_reset) {
  uvmqtt_decoder_t dec;
  mem_stats_t m;
  uvmqtt_packet_t pkt;
  int have;
  init_decoder(&dec, UVMQTT_V311, 0, &m);
  ck_assert_int_eq(uvmqtt_decoder_busy(&dec), 0);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0, 1, &pkt, &have), 1);
  ck_assert_int_eq(uvmqtt_decoder_busy(&dec), 1);
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_publish_qos0 + 1, 4, &pkt, &have), 4);
  ck_assert_int_eq(m.allocs, 1);
  uvmqtt_decoder_reset(&dec);
  ck_assert_int_eq(m.frees, 1);
  ck_assert_int_eq(uvmqtt_decoder_busy(&dec), 0);
  /* After a reset the stream starts over at a packet boundary. */
  ck_assert_int_eq(uvmqtt_decode(&dec, v311_puback, sizeof(v311_puback), &pkt, &have), 4);
  ck_assert_int_eq(have, 1);
  ck_assert_uint_eq(pkt.packet_id, 1);
}
END_TEST

/* ---- Properties and helpers ----------------------------------------------------- */

START_TEST(codec_props_next_errors) {
  uvmqtt_prop_t prop;
  size_t off = 0;
  const uint8_t unknown[] = {0x7F, 0x00};
  ck_assert_int_eq(uvmqtt_props_next((uvmqtt_bytes_t){unknown, 2}, &off, &prop), UVMQTT_EBADPROP);
  const uint8_t cut[] = {0x02, 0x00, 0x00};
  off = 0;
  ck_assert_int_eq(uvmqtt_props_next((uvmqtt_bytes_t){cut, 3}, &off, &prop), UVMQTT_EPROPLEN);
  const uint8_t pair[] = {0x26, 0x00, 0x01, 'k', 0x00, 0x02, 'v'};
  off = 0;
  ck_assert_int_eq(uvmqtt_props_next((uvmqtt_bytes_t){pair, sizeof(pair)}, &off, &prop),
                   UVMQTT_EPROPLEN);
  off = 0;
  ck_assert_int_eq(uvmqtt_props_next((uvmqtt_bytes_t){NULL, 0}, &off, &prop), 0);
  const uint8_t two[] = {0x0B, 0xFF, 0x7F, 0x23, 0x01, 0x02};
  off = 0;
  ck_assert_int_eq(uvmqtt_props_next((uvmqtt_bytes_t){two, sizeof(two)}, &off, &prop), 1);
  ck_assert_uint_eq(prop.id, UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER);
  ck_assert_uint_eq(prop.u32, 16383);
  ck_assert_int_eq(uvmqtt_props_next((uvmqtt_bytes_t){two, sizeof(two)}, &off, &prop), 1);
  ck_assert_uint_eq(prop.u32, 0x0102);
  ck_assert_int_eq(uvmqtt_props_next((uvmqtt_bytes_t){two, sizeof(two)}, &off, &prop), 0);
}
END_TEST

START_TEST(codec_varint_size) {
  ck_assert_int_eq(uvmqtt_varint_size(0), 1);
  ck_assert_int_eq(uvmqtt_varint_size(127), 1);
  ck_assert_int_eq(uvmqtt_varint_size(128), 2);
  ck_assert_int_eq(uvmqtt_varint_size(16383), 2);
  ck_assert_int_eq(uvmqtt_varint_size(16384), 3);
  ck_assert_int_eq(uvmqtt_varint_size(2097151), 3);
  ck_assert_int_eq(uvmqtt_varint_size(2097152), 4);
  ck_assert_int_eq(uvmqtt_varint_size(UVMQTT_MAX_REMAINING_LENGTH), 4);
  ck_assert_int_eq(uvmqtt_varint_size(UVMQTT_MAX_REMAINING_LENGTH + 1), 0);
}
END_TEST

/* ---- Negative encoding --------------------------------------------------------- */

typedef struct {
  const char *name;
  uint8_t version;
  int err;
  void (*build)(uvmqtt_packet_t *pkt);
} bad_encode_t;

static void enc_qos3(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->u.publish.qos = 3;
  p->packet_id = 1;
}
static void enc_dup_qos0(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->u.publish.dup = 1;
}
static void enc_wild_topic(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->u.publish.topic = S("a/#");
}
static void enc_empty_topic(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->u.publish.topic = S("");
}
static void enc_utf8_topic(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->u.publish.topic = S("a\xED\xA0\x80");
}
static void enc_pid0(uvmqtt_packet_t *p) {
  build_publish_qos1(p);
  p->packet_id = 0;
}
static void enc_prop_not_allowed(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->props.has = HAS(UVMQTT_PROP_SESSION_EXPIRY_INTERVAL);
}
static void enc_prop_unknown(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->props.has = HAS(0x30);
}
static void enc_pfi2(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->props.has = HAS(UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR);
  p->props.payload_format_indicator = 2;
}
static void enc_subid0(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->props.has = HAS(UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER);
}
static void enc_subid_too_big(uvmqtt_packet_t *p) {
  build_publish_qos0(p);
  p->props.has = HAS(UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER);
  p->props.subscription_id = UVMQTT_MAX_REMAINING_LENGTH + 1;
}
static void enc_two_subids_subscribe(uvmqtt_packet_t *p) {
  build_subscribe_v5(p);
  p->props.sub_ids = pub_sub_ids;
  p->props.sub_id_count = 2;
}
static void enc_recv_max0(uvmqtt_packet_t *p) {
  build_connack(p);
  p->props.has = HAS(UVMQTT_PROP_RECEIVE_MAXIMUM);
}
static void enc_bad_user_prop(uvmqtt_packet_t *p) {
  static const uvmqtt_user_prop_t bad_user[] = {{S("k"), S("\xC0\x80")}};
  build_puback(p);
  p->props.user = bad_user;
  p->props.user_count = 1;
}
static void enc_no_filters(uvmqtt_packet_t *p) {
  build_subscribe(p);
  p->u.subscribe.count = 0;
}
static void enc_bad_filter(uvmqtt_packet_t *p) {
  static const uvmqtt_topic_sub_t subs[] = {{S("a/#/b"), 0}};
  build_subscribe(p);
  p->u.subscribe.subs = subs;
  p->u.subscribe.count = 1;
}
static void enc_bad_subopt(uvmqtt_packet_t *p) {
  static const uvmqtt_topic_sub_t subs[] = {{S("a"), 0x04}};
  build_subscribe(p);
  p->u.subscribe.subs = subs;
  p->u.subscribe.count = 1;
}
static void enc_will_qos_no_will(uvmqtt_packet_t *p) {
  build_connect_min(p);
  p->u.connect.will_qos = 1;
}
static void enc_password_only(uvmqtt_packet_t *p) {
  build_connect_min(p);
  p->u.connect.has_password = 1;
  p->u.connect.password = S("pw");
}
static void enc_bad_level(uvmqtt_packet_t *p) {
  build_connect_min(p);
  p->u.connect.protocol_level = 6;
}
static void enc_bad_suback_code(uvmqtt_packet_t *p) {
  static const uint8_t codes[] = {0x83};
  build_suback(p);
  p->u.suback.codes = codes;
  p->u.suback.count = 1;
}
static void enc_bad_puback_reason(uvmqtt_packet_t *p) {
  build_puback(p);
  p->reason = 0x92;
}
static void enc_type0(uvmqtt_packet_t *p) {
  p->type = 0;
}
static void enc_string_too_long(uvmqtt_packet_t *p) {
  static uint8_t long_topic[70000];
  memset(long_topic, 'a', sizeof(long_topic));
  build_publish_qos0(p);
  p->u.publish.topic = (uvmqtt_bytes_t){long_topic, sizeof(long_topic)};
}

static const bad_encode_t bad_encode[] = {
    {"QoS 3", V3, UVMQTT_EBADQOS, enc_qos3},
    {"DUP with QoS 0", V3, UVMQTT_EBADFLAGS, enc_dup_qos0},
    {"wildcard topic", V5, UVMQTT_ETOPICWILD, enc_wild_topic},
    {"empty topic, no alias", V5, UVMQTT_EBADTOPIC, enc_empty_topic},
    {"surrogate in topic", V3, UVMQTT_EBADUTF8, enc_utf8_topic},
    {"QoS 1 packet id 0", V3, UVMQTT_EPACKETID, enc_pid0},
    {"session expiry in PUBLISH", V5, UVMQTT_EBADPROP, enc_prop_not_allowed},
    {"unknown property bit", V5, UVMQTT_EBADPROP, enc_prop_unknown},
    {"payload format 2", V5, UVMQTT_EPROPVALUE, enc_pfi2},
    {"subscription id 0", V5, UVMQTT_EPROPVALUE, enc_subid0},
    {"subscription id too big", V5, UVMQTT_EPROPVALUE, enc_subid_too_big},
    {"two subscription ids in SUBSCRIBE", V5, UVMQTT_EDUPPROP, enc_two_subids_subscribe},
    {"receive maximum 0", V5, UVMQTT_EPROPVALUE, enc_recv_max0},
    {"user property not UTF-8", V5, UVMQTT_EBADUTF8, enc_bad_user_prop},
    {"SUBSCRIBE without filters", V3, UVMQTT_ENOFILTERS, enc_no_filters},
    {"bad filter", V3, UVMQTT_EBADTOPIC, enc_bad_filter},
    {"3.1.1 option bit 2", V3, UVMQTT_EBADSUBOPT, enc_bad_subopt},
    {"will QoS without will", V5, UVMQTT_EBADCONNECT, enc_will_qos_no_will},
    {"password without username", V3, UVMQTT_EBADCONNECT, enc_password_only},
    {"protocol level 6", V3, UVMQTT_EBADPROTO, enc_bad_level},
    {"3.1.1 SUBACK code 0x83", V3, UVMQTT_EBADREASON, enc_bad_suback_code},
    {"PUBACK reason 0x92", V5, UVMQTT_EBADREASON, enc_bad_puback_reason},
    {"AUTH in 3.1.1", V3, UVMQTT_EBADTYPE, build_auth_min},
    {"type 0", V5, UVMQTT_EBADTYPE, enc_type0},
    {"topic over 65535 bytes", V3, UVMQTT_EINVAL, enc_string_too_long},
};
#define NBADENC ((int)(sizeof(bad_encode) / sizeof(bad_encode[0])))

START_TEST(codec_encode_reject) {
  const bad_encode_t *b = &bad_encode[_i];
  uvmqtt_packet_t pkt;
  memset(&pkt, 0, sizeof(pkt));
  b->build(&pkt);
  ssize_t r = uvmqtt_encode_size(&pkt, b->version);
  ck_assert_msg(r == b->err, "%s: got %s, want %s", b->name, uvmqtt_err_name((int)r),
                uvmqtt_err_name(b->err));
  uint8_t *buf = guard_alloc(256);
  memset(buf, 0xEE, 256);
  ck_assert_int_eq(uvmqtt_encode(&pkt, b->version, buf, 256), b->err);
  for (size_t i = 0; i < 256; i++)
    ck_assert_uint_eq(buf[i], 0xEE);
  ck_assert(guard_intact(buf, 256));
  guard_free(buf);
}
END_TEST

START_TEST(codec_encode_version_checks) {
  uvmqtt_packet_t pkt;
  memset(&pkt, 0, sizeof(pkt));
  build_pingreq(&pkt);
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, 6), UVMQTT_EINVAL);
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, 0), UVMQTT_EINVAL);
  /* CONNECT takes its level from the packet when set. */
  memset(&pkt, 0, sizeof(pkt));
  build_connect_min(&pkt);
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, UVMQTT_V5), (ssize_t)sizeof(v311_connect_min));
  pkt.u.connect.protocol_level = 0;
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, UVMQTT_V5), (ssize_t)sizeof(v311_connect_min) + 1);
  /* v5 acks take their shortest form; 3.1.1 has no reason codes to send. */
  memset(&pkt, 0, sizeof(pkt));
  build_puback_v5_reason(&pkt);
  ck_assert_int_eq(uvmqtt_encode_size(&pkt, UVMQTT_V311), UVMQTT_EBADREASON);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  fill_big_publish();
  Suite *s = suite_create("codec");

  TCase *tc = tcase_create("vectors");
  tcase_add_loop_test(tc, codec_vector, 0, NVECTORS);
  suite_add_tcase(s, tc);

  tc = tcase_create("stream");
  tcase_add_test(tc, codec_stream_v311_whole);
  tcase_add_test(tc, codec_stream_v311_chunks);
  tcase_add_test(tc, codec_stream_v31_whole);
  tcase_add_test(tc, codec_stream_v31_chunks);
  tcase_add_test(tc, codec_v31_differences);
  tcase_add_test(tc, codec_stream_v5_whole);
  tcase_add_test(tc, codec_stream_v5_chunks);
  suite_add_tcase(s, tc);

  tc = tcase_create("reject");
  tcase_add_loop_test(tc, codec_reject, 0, NBAD);
  tcase_add_test(tc, codec_error_reasons);
  suite_add_tcase(s, tc);

  tc = tcase_create("encode_reject");
  tcase_add_loop_test(tc, codec_encode_reject, 0, NBADENC);
  tcase_add_test(tc, codec_encode_version_checks);
  suite_add_tcase(s, tc);

  tc = tcase_create("decoder");
  tcase_add_test(tc, codec_max_packet_size_before_buffering);
  tcase_add_test(tc, codec_alloc_failure_enomem);
  tcase_add_test(tc, codec_scratch_buffer);
  tcase_add_test(tc, codec_decode_publish_zero_copy);
  tcase_add_test(tc, codec_decode_publish_long_lengths);
  tcase_add_test(tc, codec_decoder_learns_version);
  tcase_add_test(tc, codec_decode_packet_framing);
  tcase_add_test(tc, codec_decoder_busy_and_reset);
  suite_add_tcase(s, tc);

  tc = tcase_create("props");
  tcase_add_test(tc, codec_props_next_errors);
  tcase_add_test(tc, codec_varint_size);
  suite_add_tcase(s, tc);
  return s;
}
