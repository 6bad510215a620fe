/* Option parsing for uvmqtt-pub and uvmqtt-sub, with mosquitto_pub's and
 * mosquitto_sub's flags and meanings, plus the shared printing helpers. */
#include "cli_common.h"
#include "cli_format.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define TOOL_PUB  1u
#define TOOL_SUB  2u
#define TOOL_BOTH (TOOL_PUB | TOOL_SUB)

/* Largest session expiry: "never expires". */
#define EXPIRY_NEVER 0xFFFFFFFFu

enum {
  OPT_HOST,
  OPT_PORT,
  OPT_TOPIC,
  OPT_MESSAGE,
  OPT_FILE,
  OPT_LINES,
  OPT_STDIN,
  OPT_NULL,
  OPT_QOS,
  OPT_RETAIN,
  OPT_ID,
  OPT_ID_PREFIX,
  OPT_KEEPALIVE,
  OPT_USER,
  OPT_PASS,
  OPT_NO_CLEAN,
  OPT_VERSION,
  OPT_COUNT,
  OPT_TIMEOUT,
  OPT_VERBOSE,
  OPT_NO_EOL,
  OPT_FORMAT,
  OPT_PRETTY,
  OPT_DEBUG,
  OPT_EXPIRY,
  OPT_PROPERTY,
  OPT_URL,
  OPT_WILL_TOPIC,
  OPT_WILL_PAYLOAD,
  OPT_WILL_QOS,
  OPT_WILL_RETAIN,
  OPT_JSON,
  OPT_RECONNECT,
  OPT_DELIVERY,
  OPT_CAFILE,
  OPT_CAPATH,
  OPT_CERT,
  OPT_KEY,
  OPT_KEYFORM,
  OPT_TLS_VERSION,
  OPT_INSECURE,
  OPT_CIPHERS,
  OPT_ALPN,
  OPT_OS_CERTS,
  OPT_STORE,
  OPT_DRAIN,
  OPT_WS_PATH,
  OPT_PROXY,
  OPT_PROXY_ENV,
  OPT_BIND,
  OPT_AUTH_METHOD,
  OPT_HELP
};

typedef struct {
  int id;
  char short_name; /* 0: long form only */
  const char *long_name;
  uint8_t has_arg;
  uint8_t tools;
} option_t;

static const option_t options[] = {
    {OPT_HOST, 'h', "host", 1, TOOL_BOTH},
    {OPT_PORT, 'p', "port", 1, TOOL_BOTH},
    {OPT_TOPIC, 't', "topic", 1, TOOL_BOTH},
    {OPT_MESSAGE, 'm', "message", 1, TOOL_PUB},
    {OPT_FILE, 'f', "file", 1, TOOL_PUB},
    {OPT_LINES, 'l', "stdin-line", 0, TOOL_PUB},
    {OPT_STDIN, 's', "stdin-file", 0, TOOL_PUB},
    {OPT_NULL, 'n', "null-message", 0, TOOL_PUB},
    {OPT_QOS, 'q', "qos", 1, TOOL_BOTH},
    {OPT_RETAIN, 'r', "retain", 0, TOOL_PUB},
    {OPT_ID, 'i', "id", 1, TOOL_BOTH},
    {OPT_ID_PREFIX, 'I', "id-prefix", 1, TOOL_BOTH},
    {OPT_KEEPALIVE, 'k', "keepalive", 1, TOOL_BOTH},
    {OPT_USER, 'u', "username", 1, TOOL_BOTH},
    {OPT_PASS, 'P', "pw", 1, TOOL_BOTH},
    {OPT_NO_CLEAN, 'c', "disable-clean-session", 0, TOOL_BOTH},
    {OPT_VERSION, 'V', "protocol-version", 1, TOOL_BOTH},
    {OPT_COUNT, 'C', "count", 1, TOOL_SUB},
    {OPT_TIMEOUT, 'W', "timeout", 1, TOOL_BOTH},
    {OPT_VERBOSE, 'v', "verbose", 0, TOOL_SUB},
    {OPT_NO_EOL, 'N', "no-eol", 0, TOOL_SUB},
    {OPT_FORMAT, 'F', "format", 1, TOOL_SUB},
    {OPT_PRETTY, 0, "pretty", 0, TOOL_SUB},
    {OPT_DEBUG, 'd', "debug", 0, TOOL_BOTH},
    {OPT_EXPIRY, 'x', "session-expiry-interval", 1, TOOL_BOTH},
    {OPT_PROPERTY, 'D', "property", 1, TOOL_BOTH},
    {OPT_URL, 'L', "url", 1, TOOL_BOTH},
    {OPT_WILL_TOPIC, 0, "will-topic", 1, TOOL_BOTH},
    {OPT_WILL_PAYLOAD, 0, "will-payload", 1, TOOL_BOTH},
    {OPT_WILL_QOS, 0, "will-qos", 1, TOOL_BOTH},
    {OPT_WILL_RETAIN, 0, "will-retain", 0, TOOL_BOTH},
    {OPT_JSON, 0, "json", 0, TOOL_BOTH},
    {OPT_RECONNECT, 0, "reconnect", 1, TOOL_BOTH},
    {OPT_DELIVERY, 0, "delivery", 1, TOOL_PUB},
    {OPT_CAFILE, 0, "cafile", 1, TOOL_BOTH},
    {OPT_CAPATH, 0, "capath", 1, TOOL_BOTH},
    {OPT_CERT, 0, "cert", 1, TOOL_BOTH},
    {OPT_KEY, 0, "key", 1, TOOL_BOTH},
    {OPT_KEYFORM, 0, "keyform", 1, TOOL_BOTH},
    {OPT_TLS_VERSION, 0, "tls-version", 1, TOOL_BOTH},
    {OPT_INSECURE, 0, "insecure", 0, TOOL_BOTH},
    {OPT_CIPHERS, 0, "ciphers", 1, TOOL_BOTH},
    {OPT_ALPN, 0, "tls-alpn", 1, TOOL_BOTH},
    {OPT_OS_CERTS, 0, "tls-use-os-certs", 0, TOOL_BOTH},
    {OPT_STORE, 0, "store", 1, TOOL_PUB},
    {OPT_DRAIN, 0, "drain", 0, TOOL_PUB},
    {OPT_WS_PATH, 0, "ws-path", 1, TOOL_BOTH},
    {OPT_PROXY, 0, "proxy", 1, TOOL_BOTH},
    {OPT_PROXY_ENV, 0, "proxy-from-env", 0, TOOL_BOTH},
    {OPT_BIND, 'A', "bind-address", 1, TOOL_BOTH},
    {OPT_AUTH_METHOD, 0, "auth-method", 1, TOOL_BOTH},
    {OPT_HELP, 0, "help", 0, TOOL_BOTH},
};

/* ---- Printing ------------------------------------------------------------------ */

static void vprint(const cli_opts_t *o, const char *fmt, va_list ap) {
  fprintf(stderr, "%s: ", o->prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void cli_error(const cli_opts_t *o, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprint(o, fmt, ap);
  va_end(ap);
}

void cli_debug(const cli_opts_t *o, const char *fmt, ...) {
  if (!o->debug) return;
  va_list ap;
  va_start(ap, fmt);
  vprint(o, fmt, ap);
  va_end(ap);
}

const char *cli_errstr(int err, char *buf, size_t cap) {
  snprintf(buf, cap, "%s (%s)", uvmqtt_strerror(err), uvmqtt_err_name(err));
  return buf;
}

const char *cli_reason_name(uint8_t version, uint8_t code, int connack) {
  if (version != UVMQTT_V5 && connack) {
    static const char *const v311[] = {"Connection accepted",       "Unacceptable protocol version",
                                       "Identifier rejected",       "Server unavailable",
                                       "Bad user name or password", "Not authorized"};
    return code < sizeof v311 / sizeof v311[0] ? v311[code] : "Unknown return code";
  }
  switch (code) {
  case 0x00: return "Success";
  case 0x01: return "Granted QoS 1";
  case 0x02: return "Granted QoS 2";
  case 0x04: return "Disconnect with Will Message";
  case 0x10: return "No matching subscribers";
  case 0x11: return "No subscription existed";
  case 0x18: return "Continue authentication";
  case 0x19: return "Re-authenticate";
  case 0x80: return version == UVMQTT_V5 ? "Unspecified error" : "Failure";
  case 0x81: return "Malformed Packet";
  case 0x82: return "Protocol Error";
  case 0x83: return "Implementation specific error";
  case 0x84: return "Unsupported Protocol Version";
  case 0x85: return "Client Identifier not valid";
  case 0x86: return "Bad User Name or Password";
  case 0x87: return "Not authorized";
  case 0x88: return "Server unavailable";
  case 0x89: return "Server busy";
  case 0x8A: return "Banned";
  case 0x8B: return "Server shutting down";
  case 0x8C: return "Bad authentication method";
  case 0x8D: return "Keep Alive timeout";
  case 0x8E: return "Session taken over";
  case 0x8F: return "Topic Filter invalid";
  case 0x90: return "Topic Name invalid";
  case 0x91: return "Packet Identifier in use";
  case 0x92: return "Packet Identifier not found";
  case 0x93: return "Receive Maximum exceeded";
  case 0x94: return "Topic Alias invalid";
  case 0x95: return "Packet too large";
  case 0x96: return "Message rate too high";
  case 0x97: return "Quota exceeded";
  case 0x98: return "Administrative action";
  case 0x99: return "Payload format invalid";
  case 0x9A: return "Retain not supported";
  case 0x9B: return "QoS not supported";
  case 0x9C: return "Use another server";
  case 0x9D: return "Server moved";
  case 0x9E: return "Shared Subscriptions not supported";
  case 0x9F: return "Connection rate exceeded";
  case 0xA0: return "Maximum connect time";
  case 0xA1: return "Subscription Identifiers not supported";
  case 0xA2: return "Wildcard Subscriptions not supported";
  default: return "Unknown reason code";
  }
}

static void usage_tls(void) {
  printf("TLS (any of these, or an mqtts:// URL, connects with TLS):\n"
         " --cafile FILE         trusted CA certificates (PEM)\n"
         " --capath DIR          directory of trusted CA certificates (c_rehash)\n"
         " --tls-use-os-certs    trust the system's CA certificates (the default\n"
         "                       without --cafile and --capath)\n"
         " --cert FILE           client certificate (PEM), with --key\n"
         " --key FILE            client private key (PEM), with --cert\n"
         " --keyform pem         the key's format: only pem\n"
         " --tls-version V       minimum version: tlsv1.2 (default) or tlsv1.3\n"
         " --ciphers LIST        OpenSSL cipher list for TLS 1.2\n"
         " --tls-alpn NAME       ALPN protocol to offer (repeatable)\n"
         " --insecure            verify neither the server certificate nor its host\n"
         "                       name: for tests only, anyone on the path can listen\n");
}

static void usage_pub(void) {
  printf(" -m, --message MSG     send MSG\n"
         " -f, --file FILE       send the contents of FILE\n"
         " -l, --stdin-line      send each line of stdin as a message\n"
         " -s, --stdin-file      send all of stdin as one message\n"
         " -n, --null-message    send an empty message\n"
         " -r, --retain          retain the message\n"
         " --delivery POLICY     drop | deadline:MS | forever (default forever):\n"
         "                       what happens to messages while disconnected\n"
         " --store DIR           keep each message in DIR until it is delivered,\n"
         "                       across crashes (needs -i, implies -c); with -l,\n"
         "                       reading goes on while the broker is away as long\n"
         "                       as the lines are stored\n"
         " --drain               with --store: publish nothing new, deliver what\n"
         "                       an earlier run left in the store, then exit\n");
}

static void usage_sub(void) {
  printf(" -C COUNT              exit after COUNT messages\n"
         " -v, --verbose         print \"topic payload\"\n"
         " -N, --no-eol          no newline after each message\n"
         " -F, --format FORMAT   print each message as FORMAT, as mosquitto_sub:\n"
         "                       %%t topic, %%p payload, %%x/%%X payload in hex, %%l its\n"
         "                       length, %%q QoS, %%r retain, %%m message id, %%I ISO 8601\n"
         "                       time, %%U Unix time, %%j JSON, %%J JSON with a JSON\n"
         "                       payload, v5 %%A alias, %%C content type, %%D correlation\n"
         "                       data, %%E expiry, %%F payload format, %%P user properties,\n"
         "                       %%R response topic, %%S subscription id, %%%% a %%;\n"
         "                       %%[-][0][WIDTH][.PRECISION]; @X strftime's %%X, @N\n"
         "                       nanoseconds, @@ a @; \\n \\t \\r \\v \\a \\e \\0 \\\\\n"
         " --pretty              JSON of %%j and %%J on several lines\n");
}

static void usage(const cli_opts_t *o) {
  int pub = o->tool == CLI_PUB;
  if (pub) {
    printf("Usage: %s {[-h host] [-p port] -t topic | -L {mqtt,ws}[s]://host[:port]/topic}\n"
           "          {-m message | -f file | -l | -s | -n} [options]\n"
           "       %s [-h host] [-p port] --store DIR -i ID --drain [options]\n"
           "Publishes MQTT messages from the command line, a file or stdin.\n\n",
           o->prog, o->prog);
  } else {
    printf("Usage: %s {[-h host] [-p port] -t topic... | -L {mqtt,ws}[s]://host[:port]/topic}\n"
           "          [-C count] [-W seconds] [-v] [-N] [-F format] [options]\n"
           "Subscribes to MQTT topics and prints the messages that arrive.\n\n",
           o->prog);
  }
  printf(" -h, --host HOST       broker host (default localhost)\n"
         " -p, --port PORT       broker port (default 1883, 8883 with TLS)\n"
         " -t, --topic TOPIC     topic to %s\n"
         " -L, --url URL         mqtt[s]://[user[:password]@]host[:port]/topic, or\n"
         "                       ws[s]://... for MQTT over WebSocket (ports 80, 443)\n"
         " --ws-path PATH        WebSocket request path (default /mqtt)\n"
         " --proxy URL           HTTP CONNECT proxy: http://[user:pass@]host[:port]\n"
         " --proxy-from-env      proxy from https_proxy/http_proxy, except no_proxy\n"
         " -A, --bind-address ADDR\n"
         "                       connect from this local IPv4 or IPv6 address\n"
         " --auth-method SCRAM-SHA-256\n"
         "                       MQTT 5 enhanced authentication with -u and -P\n"
         " -q, --qos QOS         quality of service, 0, 1 or 2 (default 0)\n"
         " -i, --id ID           client id (default: generated)\n"
         " -I, --id-prefix P     client id: P followed by the process id\n"
         " -k, --keepalive SECS  keepalive interval (default 60, 0 disables)\n"
         " -u, --username USER   user name\n"
         " -P, --pw PASSWORD     password\n"
         " -c                    persistent session (needs -i): no clean session/start\n"
         " -V, --protocol-version mqttv31|mqttv311|mqttv5|31|311|5 (default 311)\n"
         " -x SECS               v5 session expiry interval; -1 for never\n"
         " -D CMD PROP VALUE     v5 property; CMD is connect, %s or will;\n"
         "                       user-property takes NAME VALUE\n"
         " --will-topic T, --will-payload P, --will-qos Q, --will-retain\n"
         " --reconnect POLICY    never | fixed:MS | backoff:MIN_MS:MAX_MS\n"
         "                       (default backoff:500:30000 once connected; given\n"
         "                       explicitly it also retries the first connection)\n"
         " -W SECS               give up after SECS seconds (status 27)\n"
         " -d, --debug           debug messages on stderr\n"
         " --json                print a JSON summary line at exit\n"
         " --help                this help\n",
         pub ? "publish to" : "subscribe to (repeatable)", pub ? "publish" : "subscribe");
  if (pub)
    usage_pub();
  else
    usage_sub();
  usage_tls();
  if (pub)
    printf("Exit status: 0 when every message was delivered, 27 on -W timeout, 1\n"
           "otherwise (the undelivered messages are named on stderr).\n");
  else
    printf("Exit status: 0 on success, 27 on -W timeout, 1 on other errors.\n");
}

/* ---- Value parsers ------------------------------------------------------------------- */

static int parse_ulong(const char *s, unsigned long long max, unsigned long long *out) {
  if (s == NULL || *s == '\0' || *s == '-' || *s == '+') return -1;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > max) return -1;
  *out = v;
  return 0;
}

static int parse_version(const char *s, uint8_t *out) {
  if (strcmp(s, "mqttv31") == 0 || strcmp(s, "31") == 0) {
    *out = UVMQTT_V31;
    return 0;
  }
  if (strcmp(s, "mqttv311") == 0 || strcmp(s, "311") == 0) {
    *out = UVMQTT_V311;
    return 0;
  }
  if (strcmp(s, "mqttv5") == 0 || strcmp(s, "5") == 0) {
    *out = UVMQTT_V5;
    return 0;
  }
  return -1;
}

static int parse_expiry(const char *s, uint32_t *out) {
  unsigned long long v;
  if (strcmp(s, "-1") == 0 || strcmp(s, "\xe2\x88\x9e") == 0) { /* "∞", as mosquitto allows */
    *out = EXPIRY_NEVER;
    return 0;
  }
  if (parse_ulong(s, EXPIRY_NEVER, &v) != 0) return -1;
  *out = (uint32_t)v;
  return 0;
}

/* "never", "fixed:MS" or "backoff:MIN_MS:MAX_MS". */
static int parse_reconnect(cli_opts_t *o, const char *s) {
  unsigned long long a, b;
  memset(&o->backoff, 0, sizeof o->backoff);
  if (strcmp(s, "never") == 0) {
    o->no_reconnect = 1;
    o->reconnect.fn = uvmqtt_reconnect_never;
    return 0;
  }
  if (strncmp(s, "fixed:", 6) == 0) {
    if (parse_ulong(s + 6, UINT32_MAX, &a) != 0) return -1;
    o->backoff.min_ms = (uint32_t)a;
    o->reconnect.fn = uvmqtt_reconnect_fixed;
    o->reconnect.state = &o->backoff;
    return 0;
  }
  if (strncmp(s, "backoff:", 8) == 0) {
    const char *colon = strchr(s + 8, ':');
    char first[32];
    if (colon == NULL || (size_t)(colon - (s + 8)) >= sizeof first) return -1;
    memcpy(first, s + 8, (size_t)(colon - (s + 8)));
    first[colon - (s + 8)] = '\0';
    if (parse_ulong(first, UINT32_MAX, &a) != 0 || parse_ulong(colon + 1, UINT32_MAX, &b) != 0)
      return -1;
    if (a == 0 || b < a) return -1;
    o->backoff.min_ms = (uint32_t)a;
    o->backoff.max_ms = (uint32_t)b;
    o->reconnect.fn = uvmqtt_reconnect_backoff;
    o->reconnect.state = &o->backoff;
    return 0;
  }
  return -1;
}

/* "drop", "deadline:MS" or "forever". */
static int parse_delivery(cli_opts_t *o, const char *s) {
  unsigned long long ms;
  memset(&o->delivery, 0, sizeof o->delivery);
  if (strcmp(s, "drop") == 0) {
    o->delivery.kind = UVMQTT_DELIVERY_DROP;
  } else if (strcmp(s, "forever") == 0) {
    o->delivery.kind = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  } else if (strncmp(s, "deadline:", 9) == 0 && parse_ulong(s + 9, UINT32_MAX, &ms) == 0 &&
             ms > 0) {
    o->delivery.kind = UVMQTT_DELIVERY_DEADLINE;
    o->delivery.deadline_ms = (uint32_t)ms;
  } else {
    return -1;
  }
  return 0;
}

/* ---- -D properties ----------------------------------------------------------------------- */

enum { P_U8, P_U16, P_U32, P_VARINT, P_STR, P_PAIR };

#define CMD_CONNECT   1u
#define CMD_PUBLISH   2u
#define CMD_WILL      4u
#define CMD_SUBSCRIBE 8u

typedef struct {
  const char *name;
  uint8_t id;
  uint8_t type;
  uint8_t cmds;
  uint32_t min; /* for numbers */
  uint32_t max;
} prop_def_t;

static const prop_def_t prop_defs[] = {
    {"session-expiry-interval", UVMQTT_PROP_SESSION_EXPIRY_INTERVAL, P_U32, CMD_CONNECT, 0,
     UINT32_MAX},
    {"receive-maximum", UVMQTT_PROP_RECEIVE_MAXIMUM, P_U16, CMD_CONNECT, 1, 65535},
    {"topic-alias-maximum", UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM, P_U16, CMD_CONNECT, 0, 65535},
    {"maximum-packet-size", UVMQTT_PROP_MAXIMUM_PACKET_SIZE, P_U32, CMD_CONNECT, 1, UINT32_MAX},
    {"request-problem-information", UVMQTT_PROP_REQUEST_PROBLEM_INFORMATION, P_U8, CMD_CONNECT, 0,
     1},
    {"request-response-information", UVMQTT_PROP_REQUEST_RESPONSE_INFORMATION, P_U8, CMD_CONNECT, 0,
     1},
    {"message-expiry-interval", UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL, P_U32, CMD_PUBLISH | CMD_WILL,
     0, UINT32_MAX},
    {"content-type", UVMQTT_PROP_CONTENT_TYPE, P_STR, CMD_PUBLISH | CMD_WILL, 0, 0},
    {"response-topic", UVMQTT_PROP_RESPONSE_TOPIC, P_STR, CMD_PUBLISH | CMD_WILL, 0, 0},
    {"correlation-data", UVMQTT_PROP_CORRELATION_DATA, P_STR, CMD_PUBLISH | CMD_WILL, 0, 0},
    {"payload-format-indicator", UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR, P_U8, CMD_PUBLISH | CMD_WILL,
     0, 1},
    {"will-delay-interval", UVMQTT_PROP_WILL_DELAY_INTERVAL, P_U32, CMD_WILL, 0, UINT32_MAX},
    {"subscription-identifier", UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER, P_VARINT, CMD_SUBSCRIBE, 1,
     268435455},
    {"user-property", UVMQTT_PROP_USER_PROPERTY, P_PAIR,
     CMD_CONNECT | CMD_PUBLISH | CMD_WILL | CMD_SUBSCRIBE, 0, 0},
};

static uvmqtt_bytes_t bytes_of(const char *s) {
  uvmqtt_bytes_t b;
  b.data = (const uint8_t *)s;
  b.len = (uint32_t)strlen(s);
  return b;
}

static void set_number(uvmqtt_props_t *p, uint8_t id, uint32_t v) {
  switch (id) {
  case UVMQTT_PROP_SESSION_EXPIRY_INTERVAL: p->session_expiry_interval = v; break;
  case UVMQTT_PROP_RECEIVE_MAXIMUM: p->receive_maximum = (uint16_t)v; break;
  case UVMQTT_PROP_TOPIC_ALIAS_MAXIMUM: p->topic_alias_maximum = (uint16_t)v; break;
  case UVMQTT_PROP_MAXIMUM_PACKET_SIZE: p->maximum_packet_size = v; break;
  case UVMQTT_PROP_REQUEST_PROBLEM_INFORMATION: p->request_problem_information = (uint8_t)v; break;
  case UVMQTT_PROP_REQUEST_RESPONSE_INFORMATION:
    p->request_response_information = (uint8_t)v;
    break;
  case UVMQTT_PROP_MESSAGE_EXPIRY_INTERVAL: p->message_expiry_interval = v; break;
  case UVMQTT_PROP_PAYLOAD_FORMAT_INDICATOR: p->payload_format_indicator = (uint8_t)v; break;
  case UVMQTT_PROP_WILL_DELAY_INTERVAL: p->will_delay_interval = v; break;
  case UVMQTT_PROP_SUBSCRIPTION_IDENTIFIER: p->subscription_id = v; break;
  default: break;
  }
}

static void set_string(uvmqtt_props_t *p, uint8_t id, const char *s) {
  switch (id) {
  case UVMQTT_PROP_CONTENT_TYPE: p->content_type = bytes_of(s); break;
  case UVMQTT_PROP_RESPONSE_TOPIC: p->response_topic = bytes_of(s); break;
  case UVMQTT_PROP_CORRELATION_DATA: p->correlation_data = bytes_of(s); break;
  default: break;
  }
}

/* -D COMMAND IDENTIFIER VALUE, or -D COMMAND user-property NAME VALUE.
 * Consumes the arguments after argv[*i] and advances *i. */
static int parse_property(cli_opts_t *o, int argc, char **argv, int *i) {
  if (*i + 3 >= argc) {
    cli_error(o, "-D needs a command, a property and a value");
    return -1;
  }
  const char *cmd = argv[*i + 1], *name = argv[*i + 2], *value = argv[*i + 3];
  uint8_t cmd_bit;
  cli_props_t *target;
  if (strcasecmp(cmd, "connect") == 0) {
    cmd_bit = CMD_CONNECT;
    target = &o->connect_props;
  } else if (strcasecmp(cmd, "will") == 0) {
    cmd_bit = CMD_WILL;
    target = &o->will_props;
  } else if (strcasecmp(cmd, "publish") == 0 && o->tool == CLI_PUB) {
    cmd_bit = CMD_PUBLISH;
    target = &o->publish_props;
  } else if (strcasecmp(cmd, "subscribe") == 0 && o->tool == CLI_SUB) {
    cmd_bit = CMD_SUBSCRIBE;
    target = &o->subscribe_props;
  } else {
    cli_error(o, "-D: unsupported command '%s'", cmd);
    return -1;
  }
  const prop_def_t *def = NULL;
  for (size_t k = 0; k < sizeof prop_defs / sizeof prop_defs[0]; k++)
    if (strcmp(prop_defs[k].name, name) == 0) def = &prop_defs[k];
  if (def == NULL || !(def->cmds & cmd_bit)) {
    cli_error(o, "-D: property '%s' is not supported for %s", name, cmd);
    return -1;
  }
  uvmqtt_props_t *p = &target->props;
  if (def->type == P_PAIR) {
    if (*i + 4 >= argc) {
      cli_error(o, "-D %s user-property needs a name and a value", cmd);
      return -1;
    }
    if (p->user_count >= CLI_MAX_USER_PROPS) {
      cli_error(o, "-D: at most %d user properties per command", CLI_MAX_USER_PROPS);
      return -1;
    }
    target->user[p->user_count].key = bytes_of(value);
    target->user[p->user_count].value = bytes_of(argv[*i + 4]);
    p->user_count++;
    p->user = target->user;
    p->has |= 1ull << def->id;
    *i += 4;
    return 0;
  }
  if (UVMQTT_HAS(p, def->id)) {
    cli_error(o, "-D: property '%s' given twice for %s", name, cmd);
    return -1;
  }
  if (def->type == P_STR) {
    set_string(p, def->id, value);
  } else {
    unsigned long long v;
    if (parse_ulong(value, def->max, &v) != 0 || v < def->min) {
      cli_error(o, "-D: invalid value '%s' for %s (%lu..%lu)", value, name, (unsigned long)def->min,
                (unsigned long)def->max);
      return -1;
    }
    set_number(p, def->id, (uint32_t)v);
  }
  p->has |= 1ull << def->id;
  *i += 3;
  return 0;
}

/* ---- -L URL -------------------------------------------------------------------------------- */

static int add_topic(cli_opts_t *o, const char *t) {
  if (o->tool == CLI_PUB && o->topic_count > 0) {
    cli_error(o, "only one topic may be given to publish to");
    return -1;
  }
  if (o->topic_count >= CLI_MAX_TOPICS) {
    cli_error(o, "at most %d topics", CLI_MAX_TOPICS);
    return -1;
  }
  o->topics[o->topic_count++] = t;
  return 0;
}

/* mqtt[s]://[username[:password]@]host[:port]/topic, split in place.
 * mqtts:// turns TLS on (port 8883 by default). ws:// and wss:// (ports 80
 * and 443) connect over WebSocket; the path is the topic there too, and
 * --ws-path gives the WebSocket path (default /mqtt). */
static int parse_url(cli_opts_t *o, const char *url) {
  size_t skip;
  if (strncmp(url, "mqtts://", 8) == 0) {
    o->tls = 1;
    skip = 8;
  } else if (strncmp(url, "mqtt://", 7) == 0) {
    skip = 7;
  } else if (strncmp(url, "wss://", 6) == 0) {
    o->tls = 1;
    o->ws = 1;
    skip = 6;
  } else if (strncmp(url, "ws://", 5) == 0) {
    o->ws = 1;
    skip = 5;
  } else {
    cli_error(o, "-L: the URL must start with mqtt://, mqtts://, ws:// or wss://");
    return -1;
  }
  if (strlen(url) >= sizeof o->url) {
    cli_error(o, "-L: URL too long");
    return -1;
  }
  strcpy(o->url, url + skip);
  char *authority = o->url;
  char *slash = strchr(authority, '/');
  if (slash == NULL || slash[1] == '\0') {
    cli_error(o, "-L: the URL needs a topic: %s://host[:port]/topic",
              o->ws ? (o->tls ? "wss" : "ws") : (o->tls ? "mqtts" : "mqtt"));
    return -1;
  }
  *slash = '\0';
  char *at = strrchr(authority, '@');
  char *host = authority;
  if (at != NULL) {
    *at = '\0';
    char *colon = strchr(authority, ':');
    if (colon != NULL) {
      *colon = '\0';
      o->password = colon + 1;
    }
    o->username = authority;
    host = at + 1;
  }
  char *port = NULL;
  if (*host == '[') {
    char *close = strchr(host, ']');
    if (close == NULL) {
      cli_error(o, "-L: unterminated [IPv6] host");
      return -1;
    }
    *close = '\0';
    if (close[1] == ':')
      port = close + 2;
    else if (close[1] != '\0') {
      cli_error(o, "-L: invalid host");
      return -1;
    }
    host++;
  } else {
    char *colon = strchr(host, ':');
    if (colon != NULL) {
      *colon = '\0';
      port = colon + 1;
    }
  }
  if (*host == '\0') {
    cli_error(o, "-L: the URL needs a host");
    return -1;
  }
  o->host = host;
  if (port != NULL) {
    unsigned long long v;
    if (parse_ulong(port, 65535, &v) != 0 || v == 0) {
      cli_error(o, "-L: invalid port '%s'", port);
      return -1;
    }
    o->port = (int)v;
  }
  return add_topic(o, slash + 1);
}

/* ---- The argument loop ----------------------------------------------------------------------- */

static const option_t *find_option(const char *arg) {
  for (size_t k = 0; k < sizeof options / sizeof options[0]; k++) {
    const option_t *opt = &options[k];
    if (arg[1] == '-' ? strcmp(arg + 2, opt->long_name) == 0
                      : (opt->short_name != 0 && arg[1] == opt->short_name && arg[2] == '\0'))
      return opt;
  }
  return NULL;
}

static int set_mode(cli_opts_t *o, cli_msg_mode_t mode) {
  if (o->mode != CLI_MSG_NONE) {
    cli_error(o, "only one of -m, -f, -l, -s and -n may be given");
    return -1;
  }
  o->mode = mode;
  return 0;
}

static int number_arg(cli_opts_t *o, const char *flag, const char *v, unsigned long long min,
                      unsigned long long max, unsigned long long *out) {
  if (parse_ulong(v, max, out) != 0 || *out < min) {
    cli_error(o, "%s: invalid value '%s' (%llu..%llu)", flag, v, min, max);
    return -1;
  }
  return 0;
}

/* --tls-version: the lowest version accepted, as mosquitto_pub's. */
static int parse_tls_version(const char *s, uint16_t *out) {
  if (strcmp(s, "tlsv1.2") == 0) {
    *out = UVMQTT_TLS_1_2;
    return 0;
  }
  if (strcmp(s, "tlsv1.3") == 0) {
    *out = UVMQTT_TLS_1_3;
    return 0;
  }
  return -1;
}

/* The TLS options. Each one turns TLS on, as in mosquitto_pub, where a CA
 * is what asks for TLS: here any of them does, so that --insecure or
 * --tls-version alone never goes out in plaintext by surprise. */
static int apply_tls(cli_opts_t *o, int id, const char *flag, const char *v) {
  uvmqtt_tls_options_t *t = &o->tls_opts;
  o->tls = 1;
  switch (id) {
  case OPT_CAFILE: t->ca_file = v; return 0;
  case OPT_CAPATH: t->ca_path = v; return 0;
  case OPT_CERT: t->cert_file = v; return 0;
  case OPT_KEY: t->key_file = v; return 0;
  case OPT_KEYFORM:
    if (strcasecmp(v, "pem") != 0) {
      cli_error(o, "%s: only pem keys are supported, not '%s'", flag, v);
      return -1;
    }
    return 0;
  case OPT_TLS_VERSION:
    if (parse_tls_version(v, &t->min_version) != 0) {
      cli_error(o, "%s: expected tlsv1.2 or tlsv1.3, not '%s'", flag, v);
      return -1;
    }
    return 0;
  case OPT_INSECURE: o->insecure = 1; return 0;
  case OPT_CIPHERS: t->ciphers = v; return 0;
  case OPT_ALPN:
    if (t->alpn_count >= CLI_MAX_ALPN || *v == '\0' || strlen(v) > 255) {
      cli_error(o, "%s: at most %d names of 1 to 255 bytes", flag, CLI_MAX_ALPN);
      return -1;
    }
    o->alpn[t->alpn_count++] = v;
    return 0;
  case OPT_OS_CERTS: return 0; /* the system's CAs are the default */
  default: return -1;
  }
}

/* Applies one option; *i indexes the option and is advanced past its
 * arguments. */
static int apply(cli_opts_t *o, const option_t *opt, int argc, char **argv, int *i) {
  const char *flag = argv[*i];
  const char *v = opt->has_arg ? argv[*i + 1] : NULL;
  unsigned long long n;
  if (opt->id == OPT_PROPERTY) return parse_property(o, argc, argv, i);
  if (opt->has_arg) (*i)++;
  switch (opt->id) {
  case OPT_HOST: o->host = v; return 0;
  case OPT_PORT:
    if (number_arg(o, flag, v, 1, 65535, &n)) return -1;
    o->port = (int)n;
    return 0;
  case OPT_TOPIC: return add_topic(o, v);
  case OPT_MESSAGE: o->message = v; return set_mode(o, CLI_MSG_ARG);
  case OPT_FILE: o->file = v; return set_mode(o, CLI_MSG_FILE);
  case OPT_LINES: return set_mode(o, CLI_MSG_LINES);
  case OPT_STDIN: return set_mode(o, CLI_MSG_STDIN);
  case OPT_NULL: return set_mode(o, CLI_MSG_NULL);
  case OPT_QOS:
    if (number_arg(o, flag, v, 0, 2, &n)) return -1;
    o->qos = (uint8_t)n;
    return 0;
  case OPT_RETAIN: o->retain = 1; return 0;
  case OPT_ID: o->id = v; return 0;
  case OPT_ID_PREFIX: o->id_prefix = v; return 0;
  case OPT_KEEPALIVE:
    if (number_arg(o, flag, v, 0, 65535, &n)) return -1;
    o->keepalive = (uint16_t)n;
    return 0;
  case OPT_USER: o->username = v; return 0;
  case OPT_PASS: o->password = v; return 0;
  case OPT_NO_CLEAN: o->clean = 0; return 0;
  case OPT_VERSION:
    if (parse_version(v, &o->version) != 0) {
      cli_error(o, "%s: unsupported protocol version '%s' (mqttv311, mqttv5, 311 or 5)", flag, v);
      return -1;
    }
    o->version_set = 1;
    return 0;
  case OPT_COUNT:
    if (number_arg(o, flag, v, 1, LONG_MAX, &n)) return -1;
    o->count = (long)n;
    return 0;
  case OPT_TIMEOUT:
    if (number_arg(o, flag, v, 1, 86400L * 365, &n)) return -1;
    o->timeout_s = (long)n;
    return 0;
  case OPT_VERBOSE: o->verbose = 1; return 0;
  case OPT_NO_EOL: o->no_newline = 1; return 0;
  case OPT_FORMAT: {
    char why[80];
    /* Checked now, as mosquitto_sub does, so a typo fails before connecting. */
    if (cli_format_check(v, why, sizeof why) != 0) {
      cli_error(o, "%s: %s in '%s'", flag, why, v);
      return -1;
    }
    o->format = v;
    return 0;
  }
  case OPT_PRETTY: o->pretty = 1; return 0;
  case OPT_DEBUG: o->debug = 1; return 0;
  case OPT_EXPIRY:
    if (parse_expiry(v, &o->session_expiry) != 0) {
      cli_error(o, "%s: invalid session expiry '%s' (seconds, or -1 for never)", flag, v);
      return -1;
    }
    o->has_session_expiry = 1;
    o->v5_needed = 1;
    return 0;
  case OPT_URL: return parse_url(o, v);
  case OPT_WILL_TOPIC: o->will_topic = v; return 0;
  case OPT_WILL_PAYLOAD: o->will_payload = v; return 0;
  case OPT_WILL_QOS:
    if (number_arg(o, flag, v, 0, 2, &n)) return -1;
    o->will_qos = (uint8_t)n;
    return 0;
  case OPT_WILL_RETAIN: o->will_retain = 1; return 0;
  case OPT_JSON: o->json = 1; return 0;
  case OPT_RECONNECT:
    if (parse_reconnect(o, v) != 0) {
      cli_error(o, "%s: expected never, fixed:MS or backoff:MIN_MS:MAX_MS, not '%s'", flag, v);
      return -1;
    }
    o->reconnect_set = 1;
    return 0;
  case OPT_DELIVERY:
    if (parse_delivery(o, v) != 0) {
      cli_error(o, "%s: expected drop, deadline:MS or forever, not '%s'", flag, v);
      return -1;
    }
    o->delivery_set = 1;
    return 0;
  case OPT_STORE: o->store_dir = v; return 0;
  case OPT_DRAIN: o->drain = 1; return 0;
  case OPT_WS_PATH:
    if (v[0] != '/') {
      cli_error(o, "%s: the path must start with '/', not '%s'", flag, v);
      return -1;
    }
    o->ws_path = v;
    return 0;
  case OPT_PROXY: o->proxy = v; return 0;
  case OPT_PROXY_ENV: o->proxy_from_env = 1; return 0;
  case OPT_BIND: o->bind_address = v; return 0;
  case OPT_AUTH_METHOD:
    /* The one mechanism built in; the library takes any through its API. */
    if (strcmp(v, "SCRAM-SHA-256") != 0) {
      cli_error(o, "--auth-method: only SCRAM-SHA-256 is built in");
      return -1;
    }
    o->auth_method = v;
    o->v5_needed = 1;
    return 0;
  default: return apply_tls(o, opt->id, flag, v);
  }
}

static int has_props(const cli_props_t *p) {
  return p->props.has != 0;
}

/* --store keeps messages per client id, so the id must be the same in the
 * next run (not -I, which adds the process id), and the broker must keep
 * the session, as -c asks, for QoS 2 to stay exactly once across runs. */
static int finish_store(cli_opts_t *o) {
  if (o->drain && o->store_dir == NULL) {
    cli_error(o, "--drain needs --store DIR");
    return -1;
  }
  if (o->store_dir == NULL) return 0;
  if (o->id == NULL || o->id_prefix != NULL) {
    cli_error(o, "--store needs a fixed client id (-i ID): the store is kept per client id");
    return -1;
  }
  if (o->drain && o->mode != CLI_MSG_NONE) {
    cli_error(o, "--drain publishes nothing new: no -m, -f, -l, -s or -n");
    return -1;
  }
  o->clean = 0;
  return 0;
}

static int finish_tls(cli_opts_t *o) {
  uvmqtt_tls_options_t *t = &o->tls_opts;
  if ((t->cert_file == NULL) != (t->key_file == NULL)) {
    cli_error(o, "--cert and --key must be given together");
    return -1;
  }
  if (o->port == 0 && o->ws) o->port = o->tls ? 443 : 80;
  if (o->port == 0) o->port = o->tls ? CLI_PORT_MQTTS : CLI_PORT_MQTT;
  t->insecure = o->insecure;
  if (t->alpn_count > 0) t->alpn = o->alpn;
  return 0;
}

/* Cross-option rules, defaults that depend on other options, the URI. */
static int finish(cli_opts_t *o) {
  if (finish_store(o) != 0 || finish_tls(o) != 0) return -1;
  if (o->topic_count == 0 && !o->drain) {
    cli_error(o, "a topic is needed (-t or -L)");
    return -1;
  }
  if (o->tool == CLI_PUB && o->mode == CLI_MSG_NONE && !o->drain) {
    cli_error(o, "a message is needed (-m, -f, -l, -s or -n)");
    return -1;
  }
  if (o->id != NULL && o->id_prefix != NULL) {
    cli_error(o, "-i and -I cannot be used together");
    return -1;
  }
  if (o->id_prefix != NULL) {
    snprintf(o->id_buf, sizeof o->id_buf, "%.80s%ld", o->id_prefix, (long)getpid());
    o->id = o->id_buf;
  }
  if (!o->clean && o->id == NULL) {
    cli_error(o, "-c needs a client id (-i or -I)");
    return -1;
  }
  if (o->will_topic == NULL &&
      (o->will_payload || o->will_qos || o->will_retain || has_props(&o->will_props))) {
    cli_error(o, "will options need --will-topic");
    return -1;
  }
  if (has_props(&o->connect_props) || has_props(&o->publish_props) || has_props(&o->will_props) ||
      has_props(&o->subscribe_props))
    o->v5_needed = 1;
  if (o->auth_method != NULL && (o->username == NULL || o->password == NULL)) {
    cli_error(o, "--auth-method needs a user name (-u) and a password (-P)");
    return -1;
  }
  if (o->v5_needed) {
    if (o->version_set && o->version != UVMQTT_V5) {
      cli_error(o, "-D, -x and --auth-method need MQTT v5 (-V mqttv5)");
      return -1;
    }
    o->version = UVMQTT_V5;
  }
  if (o->password != NULL && o->username == NULL && o->version != UVMQTT_V5) {
    cli_error(o, "a password needs a user name (-u) with MQTT 3.1.1");
    return -1;
  }
  if (o->version == UVMQTT_V5) {
    uvmqtt_props_t *cp = &o->connect_props.props;
    /* As with mosquitto: -c alone means a session that never expires. */
    if (!o->has_session_expiry && !o->clean &&
        !UVMQTT_HAS(cp, UVMQTT_PROP_SESSION_EXPIRY_INTERVAL)) {
      o->has_session_expiry = 1;
      o->session_expiry = EXPIRY_NEVER;
    }
    if (o->has_session_expiry) {
      cp->session_expiry_interval = o->session_expiry;
      cp->has |= 1ull << UVMQTT_PROP_SESSION_EXPIRY_INTERVAL;
    }
  }
  const char *host = o->host != NULL ? o->host : "localhost";
  int v6 = strchr(host, ':') != NULL;
  const char *scheme = o->ws ? (o->tls ? "wss" : "ws") : (o->tls ? "mqtts" : "mqtt");
  if (o->ws_path != NULL && !o->ws) {
    cli_error(o, "--ws-path needs a ws:// or wss:// URL (-L)");
    return -1;
  }
  if (o->proxy != NULL && o->proxy_from_env) {
    cli_error(o, "--proxy and --proxy-from-env cannot be used together");
    return -1;
  }
  int n = snprintf(o->uri, sizeof o->uri, "%s://%s%s%s:%d", scheme, v6 ? "[" : "", host,
                   v6 ? "]" : "", o->port);
  if (n < 0 || (size_t)n >= sizeof o->uri) {
    cli_error(o, "host name too long");
    return -1;
  }
  return 0;
}

int cli_parse(cli_opts_t *o, cli_tool_t tool, int argc, char **argv) {
  memset(o, 0, sizeof *o);
  o->tool = tool;
  o->prog = tool == CLI_PUB ? "uvmqtt-pub" : "uvmqtt-sub";
  o->clean = 1;
  o->keepalive = 60;
  o->version = UVMQTT_V311;
  o->delivery.kind = UVMQTT_DELIVERY_UNTIL_DELIVERED;
  uint8_t mask = tool == CLI_PUB ? TOOL_PUB : TOOL_SUB;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const option_t *opt = arg[0] == '-' ? find_option(arg) : NULL;
    if (opt == NULL || !(opt->tools & mask)) {
      cli_error(o, "unknown option '%s' (see --help)", arg);
      return -1;
    }
    if (opt->id == OPT_HELP) {
      usage(o);
      return 1;
    }
    if (opt->has_arg && i + 1 >= argc) {
      cli_error(o, "%s needs a value", arg);
      return -1;
    }
    if (apply(o, opt, argc, argv, &i) != 0) return -1;
  }
  return finish(o);
}

/* ---- Options for the client -------------------------------------------------------------------
 */

void cli_opts_free(cli_opts_t *o) {
  if (o->auth.state != NULL) uvmqtt_auth_scram_free(&o->auth);
}

void cli_client_options(cli_opts_t *o, uvmqtt_options_t *out) {
  uvmqtt_options_init(out);
  out->uri = o->uri;
  out->version = o->version;
  out->client_id = o->id;
  out->clean_start = o->clean;
  out->keepalive = o->keepalive;
  if (o->auth_method != NULL) {
    /* The credentials travel inside the SCRAM exchange, not in CONNECT. A
     * failure here (out of memory) leaves the CONNECT without them, and
     * the broker refuses it. */
    if (o->auth.state != NULL || uvmqtt_auth_scram_sha256(&o->auth, o->username, o->password) == 0)
      out->auth = &o->auth;
  } else {
    out->username = o->username;
    if (o->password != NULL) {
      out->password = o->password;
      out->password_len = strlen(o->password);
    }
  }
  if (o->will_topic != NULL) {
    out->will_topic = o->will_topic;
    out->will_payload = o->will_payload;
    out->will_payload_len = o->will_payload ? strlen(o->will_payload) : 0;
    out->will_qos = o->will_qos;
    out->will_retain = o->will_retain;
    if (o->version == UVMQTT_V5 && has_props(&o->will_props))
      out->will_props = &o->will_props.props;
  }
  if (o->version == UVMQTT_V5 && has_props(&o->connect_props))
    out->connect_props = &o->connect_props.props;
  if (o->no_reconnect)
    out->no_reconnect = 1;
  else if (o->reconnect_set)
    out->reconnect = o->reconnect;
  if (o->tool == CLI_PUB) out->delivery = o->delivery;
  if (o->tls) out->tls = &o->tls_opts;
  out->store = o->store;
  out->ws_path = o->ws_path;
  out->proxy = o->proxy;
  out->proxy_from_env = o->proxy_from_env;
  out->bind_address = o->bind_address;
}

int cli_fatal_before_connect(int status) {
  switch (status) {
  case UVMQTT_EREFUSED:
  case UVMQTT_ETLSUNKNOWNCA:
  case UVMQTT_ETLSHOSTNAME:
  case UVMQTT_ETLSEXPIRED:
  case UVMQTT_ETLSCERT:
  case UVMQTT_ETLSPEERCERT:
  case UVMQTT_ETLSCONFIG:
  /* A server that refuses the WebSocket upgrade, or a proxy that refuses
   * the tunnel, answers the same way next time. */
  case UVMQTT_EWSHANDSHAKE:
  case UVMQTT_EWSACCEPT:
  case UVMQTT_EWSPROTOCOL:
  case UVMQTT_EWSUPGRADE:
  case UVMQTT_EPROXY:
  case UVMQTT_EPROXYAUTH: return 1;
  default: return 0;
  }
}

int cli_retry_initial(const cli_opts_t *o) {
  if (o->no_reconnect) return 0;
  if (o->reconnect_set) return 1;
  return o->tool == CLI_PUB && o->delivery_set && o->delivery.kind != UVMQTT_DELIVERY_DROP;
}
