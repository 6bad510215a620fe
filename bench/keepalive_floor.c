/* uvmqtt-keepalive-floor: the least CPU an MQTT client can spend keeping idle
 * connections alive, as the yardstick for the library's own keepalive cost.
 *
 * It opens N non-blocking TCP connections to the broker, sends a minimal
 * MQTT 3.1.1 CONNECT on each and reads the CONNACK, then every K seconds
 * writes PINGREQ on every socket and reads the PINGRESPs, driven by one
 * epoll loop and nothing else: no timers per connection, no buffers, no
 * parsing beyond counting bytes. The CPU time (user + system, getrusage)
 * from the moment every connection is up until the last round's PINGRESPs
 * are in, divided by the round trips completed, is the floor.
 *
 * usage: uvmqtt-keepalive-floor [-h HOST] [-p PORT] [-c N] [-k S]
 *          [--duration S] [--ifaddr A,B,...] [--json FILE] [-Q] */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* Connections in the TCP handshake at once: more would overflow the
 * broker's listen backlog and turn into SYN retransmissions, which measure
 * the kernel's timers rather than anything here. */
#define MAX_PENDING      512
#define CONNECT_PHASE_S  60.0
#define EVENTS           1024

enum { C_NEW, C_TCP, C_MQTT, C_UP, C_DEAD };

typedef struct {
  int fd;
  uint8_t state;
  uint8_t got; /* bytes of the packet being read: CONNACK 4, PINGRESP 2 */
} conn_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void usage(FILE *f) {
  fprintf(f, "usage: uvmqtt-keepalive-floor [-h HOST] [-p PORT] [-c N] [-k S] [--duration S]\n"
             "         [--ifaddr A,B,...] [--json FILE] [-Q]\n"
             "  -h HOST         broker IPv4 address (127.0.0.1)\n"
             "  -p PORT         broker port (1883)\n"
             "  -c N            connections (1000)\n"
             "  -k S            keepalive seconds: one PINGREQ round every S (60)\n"
             "  --duration S    measured seconds after all are connected; the rounds are\n"
             "                  at S/K multiples of K, at least one (60)\n"
             "  --ifaddr A,B    local source addresses, one per connection in turn\n"
             "  --json FILE     write the result as one JSON object\n"
             "  -Q              no progress lines\n");
}

/* A CONNECT with clean session, keepalive `ka` and client id `id`; no will,
 * no credentials. Returns its length. */
static size_t build_connect(uint8_t *out, const char *id, unsigned ka) {
  size_t idlen = strlen(id);
  size_t rem = 10 + 2 + idlen;
  size_t n = 0;
  out[n++] = 0x10;
  out[n++] = (uint8_t)rem; /* ids are short: one length byte */
  static const uint8_t var[] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0x02};
  memcpy(out + n, var, sizeof var);
  n += sizeof var;
  out[n++] = (uint8_t)(ka >> 8);
  out[n++] = (uint8_t)ka;
  out[n++] = (uint8_t)(idlen >> 8);
  out[n++] = (uint8_t)idlen;
  memcpy(out + n, id, idlen);
  return n + idlen;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1", *ifaddr = NULL, *json = NULL;
  int port = 1883, quiet = 0;
  long nconn = 1000, ka = 60;
  double duration = 60;
  static const struct option longs[] = {{"duration", required_argument, NULL, 'D'},
                                        {"ifaddr", required_argument, NULL, 'A'},
                                        {"json", required_argument, NULL, 'J'},
                                        {"help", no_argument, NULL, 'H'},
                                        {NULL, 0, NULL, 0}};
  for (int c; (c = getopt_long(argc, argv, "h:p:c:k:Q", longs, NULL)) != -1;) {
    switch (c) {
    case 'h': host = optarg; break;
    case 'p': port = atoi(optarg); break;
    case 'c': nconn = atol(optarg); break;
    case 'k': ka = atol(optarg); break;
    case 'Q': quiet = 1; break;
    case 'D': duration = atof(optarg); break;
    case 'A': ifaddr = optarg; break;
    case 'J': json = optarg; break;
    case 'H': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind < argc || nconn <= 0 || ka <= 0 || ka > 65535 || port <= 0 || port > 65535 ||
      duration <= 0) {
    usage(stderr);
    return 2;
  }

  /* Each connection is one descriptor; the soft limit is often far below. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  struct sockaddr_in broker = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &broker.sin_addr) != 1) {
    fprintf(stderr, "keepalive-floor: -h wants an IPv4 address, not '%s'\n", host);
    return 2;
  }
  /* The source addresses, parsed once. */
  struct in_addr *src = NULL;
  size_t nsrc = 0;
  if (ifaddr) {
    char *list = strdup(ifaddr), *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
      src = realloc(src, (nsrc + 1) * sizeof *src);
      if (src == NULL || inet_pton(AF_INET, t, &src[nsrc]) != 1) {
        fprintf(stderr, "keepalive-floor: bad --ifaddr entry '%s'\n", t);
        return 2;
      }
      nsrc++;
    }
    free(list);
  }

  conn_t *conns = calloc((size_t)nconn, sizeof *conns);
  int ep = epoll_create1(0);
  if (conns == NULL || ep < 0) {
    perror("keepalive-floor");
    return 1;
  }
  struct epoll_event evs[EVENTS];
  long next = 0, pending = 0, up = 0, failed = 0;
  const char *first_error = NULL;
  double t_start = now_s();

  /* ---- Connect phase: a bounded number of handshakes in flight. ---- */
  while (up + failed < nconn && now_s() - t_start < CONNECT_PHASE_S) {
    while (next < nconn && pending < MAX_PENDING) {
      conn_t *cn = &conns[next];
      cn->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (cn->fd < 0) {
        first_error = first_error ? first_error : strerror(errno);
        cn->state = C_DEAD;
        failed++;
        next++;
        continue;
      }
      if (nsrc) {
        /* The port is chosen at connect() time, per destination, so 80
         * source addresses really give 80 times the ephemeral ports. */
        int one = 1;
        setsockopt(cn->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr = src[next % nsrc]};
        if (bind(cn->fd, (struct sockaddr *)&a, sizeof a) != 0) {
          first_error = first_error ? first_error : strerror(errno);
          close(cn->fd);
          cn->state = C_DEAD;
          failed++;
          next++;
          continue;
        }
      }
      if (connect(cn->fd, (struct sockaddr *)&broker, sizeof broker) != 0 &&
          errno != EINPROGRESS) {
        first_error = first_error ? first_error : strerror(errno);
        close(cn->fd);
        cn->state = C_DEAD;
        failed++;
        next++;
        continue;
      }
      struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)next};
      epoll_ctl(ep, EPOLL_CTL_ADD, cn->fd, &ev);
      cn->state = C_TCP;
      pending++;
      next++;
    }
    int n = epoll_wait(ep, evs, EVENTS, 100);
    for (int i = 0; i < n; i++) {
      conn_t *cn = &conns[evs[i].data.u32];
      int bad = (evs[i].events & (EPOLLERR | EPOLLHUP)) != 0;
      if (!bad && cn->state == C_TCP && (evs[i].events & EPOLLOUT)) {
        uint8_t pkt[64];
        char id[32];
        snprintf(id, sizeof id, "floor-%u", evs[i].data.u32);
        size_t len = build_connect(pkt, id, (unsigned)ka);
        if (write(cn->fd, pkt, len) != (ssize_t)len) {
          bad = 1;
        } else {
          struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[i].data.u32};
          epoll_ctl(ep, EPOLL_CTL_MOD, cn->fd, &ev);
          cn->state = C_MQTT;
        }
      }
      if (!bad && cn->state == C_MQTT && (evs[i].events & EPOLLIN)) {
        uint8_t buf[8];
        ssize_t r = read(cn->fd, buf, sizeof buf - cn->got);
        if (r <= 0 && !(r < 0 && errno == EAGAIN)) bad = 1;
        if (r > 0) {
          /* CONNACK is 0x20 0x02 flags code; the code must be 0. */
          if (cn->got + r >= 4) {
            bad = buf[0] != 0x20 && cn->got == 0;
            if (!bad && buf[3 - cn->got] != 0) bad = 1;
            if (!bad) {
              cn->state = C_UP;
              cn->got = 0;
              up++;
              pending--;
            }
          } else {
            cn->got = (uint8_t)(cn->got + r);
          }
        }
      }
      if (bad && cn->state != C_DEAD) {
        if (cn->state != C_UP) pending--;
        first_error = first_error ? first_error : "connection refused or closed";
        epoll_ctl(ep, EPOLL_CTL_DEL, cn->fd, NULL);
        close(cn->fd);
        cn->state = C_DEAD;
        failed++;
      }
    }
  }
  double connect_s = now_s() - t_start;
  if (!quiet)
    fprintf(stderr, "keepalive-floor: %ld connected, %ld failed in %.2f s%s%s\n", up, failed,
            connect_s, first_error ? "; first error: " : "", first_error ? first_error : "");
  if (up == 0) return 1;
  if (connect_s > (double)ka / 2)
    fprintf(stderr, "keepalive-floor: the connect phase took over half the keepalive; the broker "
                    "may drop the first connections before their first PINGREQ\n");

  /* ---- Keepalive rounds: PINGREQ on every socket, all at once. ---- */
  long rounds = (long)(duration / (double)ka);
  if (rounds < 1) rounds = 1;
  uint64_t pings = 0, pongs = 0, lost = 0;
  double t0 = now_s(), c0 = cpu_s(), t_end = 0;
  static const uint8_t pingreq[2] = {0xC0, 0x00};
  for (long round = 1; round <= rounds; round++) {
    double at = t0 + (double)(round * ka);
    uint64_t want = 0;
    /* Idle until the round is due; anything that arrives meanwhile (only a
     * close can) is handled. */
    for (double left; (left = at - now_s()) > 0;) {
      int n = epoll_wait(ep, evs, EVENTS, (int)(left * 1000) + 1);
      for (int i = 0; i < n; i++) {
        conn_t *cn = &conns[evs[i].data.u32];
        if (cn->state != C_UP) continue;
        uint8_t buf[16];
        ssize_t r = read(cn->fd, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EAGAIN)) {
          epoll_ctl(ep, EPOLL_CTL_DEL, cn->fd, NULL);
          close(cn->fd);
          cn->state = C_DEAD;
          lost++;
        }
      }
    }
    for (long i = 0; i < nconn; i++) {
      conn_t *cn = &conns[i];
      if (cn->state != C_UP) continue;
      if (write(cn->fd, pingreq, sizeof pingreq) == (ssize_t)sizeof pingreq) {
        pings++;
        want++;
      }
    }
    /* Collect this round's PINGRESPs (0xD0 0x00), at most K seconds. */
    double deadline = now_s() + (double)ka;
    uint64_t got = 0;
    while (got < want && now_s() < deadline) {
      int n = epoll_wait(ep, evs, EVENTS, 1000);
      for (int i = 0; i < n; i++) {
        conn_t *cn = &conns[evs[i].data.u32];
        if (cn->state != C_UP) continue;
        uint8_t buf[16];
        ssize_t r = read(cn->fd, buf, sizeof buf);
        if (r > 0) {
          unsigned total = cn->got + (unsigned)r;
          got += total / 2;
          pongs += total / 2;
          cn->got = (uint8_t)(total % 2);
        } else if (r == 0 || errno != EAGAIN) {
          epoll_ctl(ep, EPOLL_CTL_DEL, cn->fd, NULL);
          close(cn->fd);
          cn->state = C_DEAD;
          lost++;
        }
      }
    }
    t_end = now_s();
  }
  double cpu = cpu_s() - c0, measured = t_end - t0;
  double per_rtt_us = pongs ? cpu / (double)pongs * 1e6 : 0;

  /* A polite end: DISCONNECT, then close. */
  static const uint8_t disconnect[2] = {0xE0, 0x00};
  for (long i = 0; i < nconn; i++) {
    if (conns[i].state == C_UP) {
      ssize_t w = write(conns[i].fd, disconnect, sizeof disconnect);
      (void)w;
    }
    if (conns[i].state != C_DEAD && conns[i].state != C_NEW) close(conns[i].fd);
  }

  printf("== keepalive floor: %ld connections (%ld failed), keepalive %ld s, %ld round(s)\n", up,
         failed, ka, rounds);
  printf("%-18s %.3f s\n", "connect phase", connect_s);
  printf("%-18s %llu PINGREQ, %llu PINGRESP, %llu connections lost\n", "round trips",
         (unsigned long long)pings, (unsigned long long)pongs, (unsigned long long)lost);
  printf("%-18s %.3f s in %.3f s measured: %.2f us per round trip\n", "cpu", cpu, measured,
         per_rtt_us);
  if (json) {
    FILE *f = fopen(json, "w");
    if (f == NULL) {
      perror(json);
      return 1;
    }
    fprintf(f,
            "{\"driver\":\"floor\",\"clients\":%ld,\"connected\":%ld,\"failed\":%ld,"
            "\"keepalive\":%ld,\"rounds\":%ld,\"connect_s\":%.6f,\"pings\":%llu,"
            "\"pongs\":%llu,\"lost\":%llu,\"measured_s\":%.6f,\"cpu_s\":%.6f,"
            "\"cpu_us_per_round_trip\":%.3f}\n",
            nconn, up, failed, ka, rounds, connect_s, (unsigned long long)pings,
            (unsigned long long)pongs, (unsigned long long)lost, measured, cpu, per_rtt_us);
    fclose(f);
  }
  return pongs == pings && lost == 0 ? 0 : 1;
}
