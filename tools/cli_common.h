/* What uvmqtt-pub and uvmqtt-sub share: option parsing (mosquitto_pub and
 * mosquitto_sub flags), turning options into uvmqtt_options_t, reason code
 * names and error lines. */
#ifndef UVMQTT_CLI_COMMON_H
#define UVMQTT_CLI_COMMON_H

#include <stdint.h>
#include <uv.h>

#include "uvmqtt.h"

#define CLI_MAX_TOPICS     64
#define CLI_MAX_USER_PROPS 32
#define CLI_MAX_ALPN       8

/* Default ports, as mosquitto_pub's: plaintext, and TLS once any TLS
 * option (or an mqtts:// URL) is given. */
#define CLI_PORT_MQTT  1883
#define CLI_PORT_MQTTS 8883

/* Exit statuses. A timeout matches mosquitto_sub's (MOSQ_ERR_TIMEOUT). */
#define CLI_EXIT_OK      0
#define CLI_EXIT_ERROR   1
#define CLI_EXIT_TIMEOUT 27

typedef enum { CLI_PUB, CLI_SUB } cli_tool_t;

/* Where uvmqtt-pub takes its message(s) from. */
typedef enum {
  CLI_MSG_NONE = 0,
  CLI_MSG_ARG,   /* -m */
  CLI_MSG_NULL,  /* -n */
  CLI_MSG_FILE,  /* -f */
  CLI_MSG_STDIN, /* -s: all of stdin, one message */
  CLI_MSG_LINES  /* -l: one message per line of stdin */
} cli_msg_mode_t;

/* A v5 property set built from -D options; `props.user` points into `user`. */
typedef struct {
  uvmqtt_props_t props;
  uvmqtt_user_prop_t user[CLI_MAX_USER_PROPS];
} cli_props_t;

typedef struct {
  cli_tool_t tool;
  const char *prog;

  const char *host;
  int port; /* 0 until -p or -L gives one */
  const char *topics[CLI_MAX_TOPICS];
  size_t topic_count;
  const char *username;
  const char *password;

  cli_msg_mode_t mode;
  const char *message;
  const char *file;
  uint8_t qos;
  uint8_t retain;

  const char *id;
  const char *id_prefix;
  char id_buf[96];
  uint16_t keepalive;
  uint8_t clean;
  uint8_t version;
  uint8_t version_set; /* -V given: -D and -x may not switch it to v5 */
  uint8_t v5_needed;   /* -D or -x given */
  long count;          /* -C */
  long timeout_s;      /* -W */
  uint8_t verbose;
  uint8_t no_newline;
  const char *format; /* -F */
  uint8_t pretty;     /* --pretty: JSON of -F %j and %J over several lines */
  uint8_t debug;
  uint8_t json;
  uint8_t has_session_expiry;
  uint32_t session_expiry;

  cli_props_t connect_props;
  cli_props_t publish_props;
  cli_props_t will_props;
  cli_props_t subscribe_props;

  const char *will_topic;
  const char *will_payload;
  uint8_t will_qos;
  uint8_t will_retain;

  uvmqtt_backoff_t backoff;
  uvmqtt_reconnect_policy_t reconnect;
  uint8_t no_reconnect;
  uint8_t reconnect_set;
  uvmqtt_delivery_t delivery;
  uint8_t delivery_set;

  /* TLS (--cafile, --cert...): `tls` is set by any TLS option or an
   * mqtts:// URL; tls_opts is what the client gets, alpn its name list. */
  uint8_t tls;
  uint8_t insecure;
  uvmqtt_tls_options_t tls_opts;
  const char *alpn[CLI_MAX_ALPN];

  /* --store DIR and --drain (uvmqtt-pub). The tool opens the store and
   * sets `store` before the client is created. */
  const char *store_dir;
  uint8_t drain;
  const uvmqtt_store_t *store;

  /* WebSocket (a ws:// or wss:// URL) and the HTTP proxy. */
  uint8_t ws;
  const char *ws_path;
  const char *proxy;
  uint8_t proxy_from_env;
  const char *bind_address; /* -A: the local address to connect from */
  /* --auth-method: MQTT 5 enhanced authentication with -u/-P as the
   * mechanism's credentials (SCRAM-SHA-256 is the one built in); `auth` is
   * filled by cli_client_options() and freed by cli_opts_free(). */
  const char *auth_method;
  uvmqtt_auth_t auth;

  char url[1024]; /* -L, split in place into host, credentials and topic */
  char uri[320];
} cli_opts_t;

/* Parses argv into `o`. Returns 0 to run, 1 when --help was printed (exit
 * 0), or -1 after printing a one-line error to stderr (exit 1). */
int cli_parse(cli_opts_t *o, cli_tool_t tool, int argc, char **argv);

/* Fills `out` from parsed options. The client copies strings and property
 * sets, but the reconnect policy's state lives in `o`: keep `o` until the
 * client is closed. */
/* Releases what cli_client_options() allocated (the SCRAM state). */
void cli_opts_free(cli_opts_t *o);

void cli_client_options(cli_opts_t *o, uvmqtt_options_t *out);

/* 1 when the tool should keep trying while the first connection fails: the
 * user asked for a reconnect policy or for queued (deadline or until
 * delivered) publishing. Otherwise the first connection must succeed, as
 * with mosquitto_pub and mosquitto_sub. */
int cli_retry_initial(const cli_opts_t *o);

/* 1 for a failure of the first connection that retrying cannot fix: a
 * refusal by the broker, or a TLS certificate or configuration error. */
int cli_fatal_before_connect(int status);

/* The name of an MQTT reason code ("Not authorized"). `connack` selects
 * the MQTT 3.1.1 CONNACK return codes 1-5 when `version` is 3.1.1. */
const char *cli_reason_name(uint8_t version, uint8_t code, int connack);

/* "<strerror> (<ERRNAME>)" into buf, for error lines. */
const char *cli_errstr(int err, char *buf, size_t cap);

/* A line on stderr prefixed with the program name. */
void cli_error(const cli_opts_t *o, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Like cli_error(), only with -d. */
void cli_debug(const cli_opts_t *o, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
