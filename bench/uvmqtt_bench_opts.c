/* Command-line options, in the spirit of emqtt-bench. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static const char *const cmd_names[] = {"conn", "pub", "sub", "pubsub", "raw"};

static void usage(FILE *f, const char *prog, unsigned allowed) {
  fprintf(f, "usage: %s COMMAND [options]\ncommands:", prog);
  for (unsigned i = 0; i < sizeof cmd_names / sizeof cmd_names[0]; i++)
    if (allowed & (1u << i)) fprintf(f, " %s", cmd_names[i]);
  fprintf(f,
          "\n"
          "  -h HOST            broker host (127.0.0.1)\n"
          "  -p PORT            broker port (1883)\n"
          "  -U URI[,URI...]    mqtt://host:port (or mqtts://) instead of -h/-p; with\n"
          "                     several (a cluster's nodes), clients start on them in\n"
          "                     turn and the report counts connections per server\n"
          "  --tls              connect over TLS (the system's CAs unless --cafile)\n"
          "  --cafile FILE      trust the CA in FILE (implies --tls)\n"
          "  --insecure         TLS without certificate or host-name verification\n"
          "  -c N               clients (publishers or subscribers; pubsub: N of each) (1)\n"
          "  -n N               index of the first client (0)\n"
          "  -R N               connections started per second, 0 = all at once (0)\n"
          "  -I MS              ms between publishes of one client, may be fractional;\n"
          "                     0 = as fast as flow control allows (0)\n"
          "  -L N               messages per publisher; subscribers stop after c*N (0 = none)\n"
          "  --duration S       stop after S seconds of the measured phase (conn: hold the\n"
          "                     connections that long; others: 10 without -L)\n"
          "  --drain S          how long subscribers may lag behind the publishers (10)\n"
          "  -s BYTES           payload size, >= %d (64)\n"
          "  -q QOS             0, 1 or 2, for publishes and subscriptions (0)\n"
          "  -t TOPIC           topic template, %%i = client index, %%c = client id\n"
          "                     (pub/pubsub: bench/%%i; sub: bench/#)\n"
          "  -F N               unfinished publishes per client: unacknowledged for QoS 1/2,\n"
          "                     not yet written for QoS 0 (QoS 1/2: 100, QoS 0: 1000)\n"
          "  -V 3|5             MQTT version (3 = 3.1.1)\n"
          "  -k S               keepalive seconds (60)\n"
          "  --ifaddr A,B       local source addresses, one per client in turn\n"
          "  --json FILE        write the report as one JSON object\n"
          "  --plot FILE        draw throughput and latency (.png or .svg) with gnuplot\n"
          "  --ready-file FILE  create FILE once every subscriber is subscribed\n"
          "                     (conn: once every client is connected)\n"
          "  -Q                 no progress lines\n",
          BENCH_HEADER_LEN);
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  if (s == NULL || *s == '\0' || *s == '-') return -1;
  unsigned long long v = strtoull(s, &end, 10);
  if (*end != '\0') return -1;
  *out = v;
  return 0;
}

static int parse_u32(const char *s, uint32_t max, uint32_t *out) {
  uint64_t v;
  if (parse_u64(s, &v) || v > max) return -1;
  *out = (uint32_t)v;
  return 0;
}

static int parse_double(const char *s, double *out) {
  char *end;
  if (s == NULL || *s == '\0') return -1;
  double v = strtod(s, &end);
  if (*end != '\0' || v < 0 || v != v) return -1;
  *out = v;
  return 0;
}

/* "mqtt://host:port", "tcp://host:port" or, for TLS, "mqtts://host:port"
 * (port optional). The host part is kept in a static buffer: there is one
 * set of options per process. */
static int parse_uri(const char *uri, bench_opts_t *o) {
  static char host[256], path[256];
  const char *p = strstr(uri, "://");
  if (p == NULL) return -1;
  if (strncmp(uri, "mqtts://", 8) == 0) {
    o->tls = 1;
  } else if (strncmp(uri, "wss://", 6) == 0) {
    o->tls = 1;
    o->ws = 1;
    o->port = 443;
  } else if (strncmp(uri, "ws://", 5) == 0) {
    o->ws = 1;
    o->port = 80;
  } else if (strncmp(uri, "mqtt://", 7) != 0 && strncmp(uri, "tcp://", 6) != 0) {
    return -1;
  }
  p += 3;
  /* WebSocket URIs carry the request path after the authority. */
  size_t authority = strcspn(p, "/");
  if (o->ws) {
    const char *slash = p + authority;
    if (strlen(slash) >= sizeof path) return -1;
    snprintf(path, sizeof path, "%s", *slash ? slash : "/mqtt");
    o->ws_path = path;
  } else if (p[authority] != '\0') {
    return -1;
  }
  char auth[256];
  if (authority >= sizeof auth) return -1;
  memcpy(auth, p, authority);
  auth[authority] = '\0';
  p = auth;
  const char *colon = strrchr(p, ':');
  const char *close = strrchr(p, ']');
  size_t hostlen = (colon && (!close || colon > close)) ? (size_t)(colon - p) : strlen(p);
  if (hostlen == 0 || hostlen >= sizeof host) return -1;
  memcpy(host, p, hostlen);
  host[hostlen] = '\0';
  if (host[0] == '[' && host[hostlen - 1] == ']') {
    memmove(host, host + 1, hostlen - 2);
    host[hostlen - 2] = '\0';
  }
  o->host = host;
  if (colon && (!close || colon > close)) {
    uint32_t port;
    if (parse_u32(colon + 1, 65535, &port) || port == 0) return -1;
    o->port = (int)port;
  }
  return 0;
}

/* "uri1,uri2,...": each URI is checked, all plain or all TLS; the first
 * sets host and port (parsed last, since parse_uri() keeps one host); all
 * WebSocket or none. The
 * list is kept in a static buffer, like the host. */
static int parse_uri_list(const char *list, bench_opts_t *o) {
  static char copy[4096];
  if (strlen(list) >= sizeof copy) return -1;
  memcpy(copy, list, strlen(list) + 1);
  o->nuris = 0;
  int first_tls = 0, first_ws = 0;
  for (char *save = NULL, *u = strtok_r(copy, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
    bench_opts_t scratch = *o;
    scratch.tls = 0;
    scratch.ws = 0;
    if (o->nuris == BENCH_MAX_URIS || parse_uri(u, &scratch)) return -1;
    if (o->nuris == 0) {
      first_tls = scratch.tls;
      first_ws = scratch.ws;
    }
    if (scratch.tls != first_tls || scratch.ws != first_ws) return -1;
    o->uris[o->nuris++] = u;
  }
  return o->nuris ? parse_uri(o->uris[0], o) : -1;
}

enum {
  OPT_DURATION = 256,
  OPT_DRAIN,
  OPT_IFADDR,
  OPT_JSON,
  OPT_PLOT,
  OPT_READY,
  OPT_TLS,
  OPT_CAFILE,
  OPT_INSECURE,
  OPT_HELP
};

int bench_parse_options(int argc, char **argv, const char *prog, unsigned allowed,
                        bench_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->host = "127.0.0.1";
  o->port = 1883;
  o->clients = 1;
  o->size = 64;
  o->version = 3;
  o->keepalive = 60;
  o->drain_s = 10;
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    usage(argc < 2 ? stderr : stdout, prog, allowed);
    return argc < 2 ? -1 : 1;
  }
  int found = 0;
  for (unsigned i = 0; i < sizeof cmd_names / sizeof cmd_names[0]; i++) {
    if ((allowed & (1u << i)) && strcmp(argv[1], cmd_names[i]) == 0) {
      o->cmd = (bench_cmd_t)i;
      o->cmd_name = cmd_names[i];
      found = 1;
    }
  }
  if (!found) {
    fprintf(stderr, "%s: unknown command '%s'\n", prog, argv[1]);
    usage(stderr, prog, allowed);
    return -1;
  }
  static const struct option longs[] = {
      {"duration", required_argument, NULL, OPT_DURATION},
      {"drain", required_argument, NULL, OPT_DRAIN},
      {"ifaddr", required_argument, NULL, OPT_IFADDR},
      {"json", required_argument, NULL, OPT_JSON},
      {"plot", required_argument, NULL, OPT_PLOT},
      {"ready-file", required_argument, NULL, OPT_READY},
      {"tls", no_argument, NULL, OPT_TLS},
      {"cafile", required_argument, NULL, OPT_CAFILE},
      {"insecure", no_argument, NULL, OPT_INSECURE},
      {"help", no_argument, NULL, OPT_HELP},
      {NULL, 0, NULL, 0},
  };
  int inflight_set = 0;
  optind = 2;
  for (;;) {
    int c = getopt_long(argc, argv, "h:p:U:c:n:R:I:L:s:q:t:F:V:k:Q", longs, NULL);
    if (c == -1) break;
    int bad = 0;
    uint32_t u = 0;
    switch (c) {
    case 'h': o->host = optarg; break;
    case 'p':
      bad = parse_u32(optarg, 65535, &u) || u == 0;
      o->port = (int)u;
      break;
    case 'U': bad = parse_uri_list(optarg, o); break;
    case 'c': bad = parse_u32(optarg, 1000000, &o->clients) || o->clients == 0; break;
    case 'n': bad = parse_u32(optarg, 100000000, &o->start_index); break;
    case 'R': bad = parse_double(optarg, &o->conn_rate); break;
    case 'I': bad = parse_double(optarg, &o->interval_ms); break;
    case 'L': bad = parse_u64(optarg, &o->limit) || o->limit > UINT32_MAX; break;
    case 's': bad = parse_u32(optarg, 64u * 1024 * 1024, &o->size); break;
    case 'q':
      bad = parse_u32(optarg, 2, &u);
      o->qos = (int)u;
      break;
    case 't': o->topic = optarg; break;
    case 'F':
      bad = parse_u32(optarg, 65535, &o->inflight) || o->inflight == 0;
      inflight_set = 1;
      break;
    case 'V':
      bad = parse_u32(optarg, 5, &u) || (u != 3 && u != 5);
      o->version = (int)u;
      break;
    case 'k':
      bad = parse_u32(optarg, 65535, &u);
      o->keepalive = (int)u;
      break;
    case 'Q': o->quiet = 1; break;
    case OPT_DURATION: bad = parse_double(optarg, &o->duration_s); break;
    case OPT_DRAIN: bad = parse_double(optarg, &o->drain_s); break;
    case OPT_IFADDR: o->ifaddr = optarg; break;
    case OPT_JSON: o->json_path = optarg; break;
    case OPT_PLOT: o->plot_path = optarg; break;
    case OPT_READY: o->ready_path = optarg; break;
    case OPT_TLS: o->tls = 1; break;
    case OPT_CAFILE:
      o->cafile = optarg;
      o->tls = 1;
      break;
    case OPT_INSECURE:
      o->insecure = 1;
      o->tls = 1;
      break;
    case OPT_HELP: usage(stdout, prog, allowed); return 1;
    default: usage(stderr, prog, allowed); return -1;
    }
    if (bad) {
      fprintf(stderr, "%s: bad value '%s' for -%c\n", prog, optarg ? optarg : "",
              c < 256 ? c : '-');
      return -1;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
    return -1;
  }
  if (o->size < BENCH_HEADER_LEN) {
    fprintf(stderr, "%s: -s must be at least %d (the payload carries a stamp)\n", prog,
            BENCH_HEADER_LEN);
    return -1;
  }
  if (o->tls && o->cmd == BENCH_RAW) {
    fprintf(stderr, "%s: raw measures plain TCP only\n", prog);
    return -1;
  }
  if (!inflight_set) o->inflight = o->qos == 0 ? 1000 : 100;
  if (o->topic == NULL) o->topic = o->cmd == BENCH_SUB ? "bench/#" : "bench/%i";
  /* Every run is bounded in time: without a message count, a default
   * duration applies. For conn the duration is how long the idle
   * connections are held, none by default. */
  if (o->cmd != BENCH_CONN && o->limit == 0 && o->duration_s == 0) o->duration_s = 10;
  return 0;
}
