/* Resource usage, the progress line and the final report (text and JSON). */
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "bench.h"

/* ---- Resources -------------------------------------------------------------------- */

double bench_cpu_seconds(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

long bench_rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  }
  fclose(f);
  return kb;
}

size_t bench_heap_bytes(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

/* ---- Derived figures ----------------------------------------------------------------- */

static double rate(uint64_t n, double s) {
  return s > 0 ? (double)n / s : 0;
}

/* Messages the CPU figure is per: what this process moved end to end. */
static uint64_t work_msgs(const bench_t *b) {
  if (b->o->cmd == BENCH_SUB) return b->r.recv;
  return b->r.pub_ok;
}

static double cpu_per_million(const bench_t *b) {
  uint64_t n = work_msgs(b);
  return n ? b->r.cpu_s / ((double)n / 1e6) : 0;
}

static double per_conn(double delta, uint32_t conns) {
  return conns ? delta / conns : 0;
}

static double rss_per_conn(const bench_result_t *r) {
  if (r->rss_base_kb < 0 || r->rss_connected_kb < 0) return 0;
  return per_conn((double)(r->rss_connected_kb - r->rss_base_kb) * 1024.0, r->connected);
}

static double heap_per_conn(const bench_result_t *r) {
  return per_conn((double)r->heap_connected - (double)r->heap_base, r->connected);
}

static double lib_heap_per_conn(const bench_result_t *r) {
  return per_conn((double)r->lib_heap_connected - (double)r->lib_heap_base, r->connected);
}

static double us(uint64_t ns) {
  return (double)ns / 1000.0;
}

/* ---- Progress -------------------------------------------------------------------------- */

void bench_progress_print(bench_t *b, int final) {
  if (b->o->quiet) return;
  if (final) {
    if (b->tty) fputc('\n', stderr);
    return;
  }
  uint64_t inflight = 0;
  for (uint32_t i = 0; i < b->nclients; i++)
    inflight += b->clients[i].sent - b->clients[i].done;
  double t = (double)(bench_now_ns() - b->t_start_ns) / 1e9;
  fprintf(stderr,
          "%s[%6.1fs] conn %u/%u  pub %llu/s  recv %llu/s  inflight %llu  err %llu  "
          "reconn %llu%s",
          b->tty ? "\r" : "", t, b->connected_now, b->nclients,
          (unsigned long long)(b->r.pub_ok - b->last_pub_ok),
          (unsigned long long)(b->r.recv - b->last_recv), (unsigned long long)inflight,
          (unsigned long long)b->r.errors, (unsigned long long)b->r.reconnects,
          b->tty ? "\033[K" : "\n");
  fflush(stderr);
}

/* ---- Text report ----------------------------------------------------------------------- */

static void print_hist(const char *name, const hist_t *h) {
  if (h->count == 0) {
    printf("%-18s none\n", name);
    return;
  }
  printf("%-18s min %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f us  (n=%llu)\n", name,
         us(h->min), us(hist_percentile(h, 50)), us(hist_percentile(h, 90)),
         us(hist_percentile(h, 99)), us(hist_percentile(h, 99.9)), us(h->max),
         (unsigned long long)h->count);
}

void bench_report_print(const bench_t *b) {
  const bench_opts_t *o = b->o;
  const bench_result_t *r = &b->r;
  printf("== %s %s: %u client(s), QoS %d, %u-byte payloads, MQTT %s\n", b->drv->name, o->cmd_name,
         o->clients, o->qos, o->size, o->version == 5 ? "5.0" : "3.1.1");
  printf("%-18s %s\n", "driven by", b->drv->loop_model);
  if (o->cmd != BENCH_RAW) {
    printf("%-18s %u connected, %u failed, %llu reconnects, %llu errors\n", "clients", r->connected,
           r->failed, (unsigned long long)r->reconnects, (unsigned long long)r->errors);
    printf("%-18s %.3f s, %.0f conn/s\n", "connect phase", r->connect_s,
           rate(r->connected, r->connect_s));
    print_hist("connect latency", &r->connect_lat);
    for (uint32_t i = 0; o->nuris > 1 && i < o->nuris; i++)
      printf("%-18s %s: %llu connections\n", i == 0 ? "per server" : "", o->uris[i],
             (unsigned long long)r->node_connects[i]);
  }
  if (o->cmd == BENCH_CONN) {
    printf("%-18s %.0f bytes/conn (C heap), %.0f bytes/conn (RSS)", "memory", heap_per_conn(r),
           rss_per_conn(r));
    if (r->have_lib_heap) printf(", %.0f bytes/conn (library allocator)", lib_heap_per_conn(r));
    printf("\n");
  }
  if (o->cmd == BENCH_PUB || o->cmd == BENCH_PUBSUB || o->cmd == BENCH_RAW) {
    printf("%-18s %llu ok, %llu failed in %.3f s: %.0f msg/s, %.2f MB/s payload\n", "published",
           (unsigned long long)r->pub_ok, (unsigned long long)r->pub_failed, r->pub_s,
           rate(r->pub_ok, r->pub_s), rate(r->pub_ok * o->size, r->pub_s) / 1e6);
  }
  if (o->cmd == BENCH_RAW)
    printf("%-18s %llu bytes: %.2f MB/s on the wire\n", "written",
           (unsigned long long)r->wire_bytes, rate(r->wire_bytes, r->pub_s) / 1e6);
  if (o->cmd == BENCH_SUB || o->cmd == BENCH_PUBSUB) {
    printf("%-18s %llu in %.3f s: %.0f msg/s, %.2f MB/s payload\n", "received",
           (unsigned long long)r->recv, r->recv_s, rate(r->recv, r->recv_s),
           rate(r->recv_bytes, r->recv_s) / 1e6);
    printf("%-18s lost %llu, duplicated %llu, reordered %llu, malformed %llu (expected %llu)\n",
           "delivery", (unsigned long long)r->lost, (unsigned long long)r->duplicated,
           (unsigned long long)r->reordered, (unsigned long long)r->malformed,
           (unsigned long long)r->expected);
    print_hist("latency", &r->latency);
  }
  if (o->cmd != BENCH_CONN)
    printf("%-18s %.3f s in %.3f s measured: %.3f CPU s per million messages\n", "cpu", r->cpu_s,
           r->measured_s, cpu_per_million(b));
  printf("%-18s base %ld kB, connected %ld kB, end %ld kB\n", "rss", r->rss_base_kb,
         r->rss_connected_kb, r->rss_end_kb);
  if (r->note[0]) printf("%-18s %s\n", "note", r->note);
  fflush(stdout);
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static void json_hist(FILE *f, const char *name, const hist_t *h) {
  fprintf(f,
          "\"%s\":{\"count\":%llu,\"min\":%.3f,\"mean\":%.3f,\"p50\":%.3f,\"p90\":%.3f,"
          "\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}",
          name, (unsigned long long)h->count, h->count ? us(h->min) : 0, hist_mean(h) / 1000.0,
          us(hist_percentile(h, 50)), us(hist_percentile(h, 90)), us(hist_percentile(h, 99)),
          us(hist_percentile(h, 99.9)), us(h->max));
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

int bench_report_json(const bench_t *b, const char *path) {
  FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
  if (f == NULL) {
    perror(path);
    return -1;
  }
  const bench_opts_t *o = b->o;
  const bench_result_t *r = &b->r;
  fprintf(f, "{\"driver\":\"%s\",\"loop_model\":", b->drv->name);
  json_string(f, b->drv->loop_model);
  fprintf(f,
          ",\"workload\":\"%s\",\"options\":{\"clients\":%u,\"qos\":%d,\"size\":%u,"
          "\"interval_ms\":%g,\"limit\":%llu,\"duration_s\":%g,\"inflight\":%u,\"version\":%d,"
          "\"keepalive\":%d,\"conn_rate\":%g},",
          o->cmd_name, o->clients, o->qos, o->size, o->interval_ms, (unsigned long long)o->limit,
          o->duration_s, o->inflight, o->version, o->keepalive, o->conn_rate);
  fprintf(f,
          "\"clients\":%u,\"connected\":%u,\"failed\":%u,\"reconnects\":%llu,\"errors\":%llu,"
          "\"connect_s\":%.6f,\"connect_rate\":%.1f,",
          r->clients, r->connected, r->failed, (unsigned long long)r->reconnects,
          (unsigned long long)r->errors, r->connect_s, rate(r->connected, r->connect_s));
  json_hist(f, "connect_latency_us", &r->connect_lat);
  fprintf(f, ",\"servers\":[");
  for (uint32_t i = 0; o->nuris > 1 && i < o->nuris; i++) {
    fprintf(f, "%s{\"uri\":", i ? "," : "");
    json_string(f, o->uris[i]);
    fprintf(f, ",\"connections\":%llu}", (unsigned long long)r->node_connects[i]);
  }
  fprintf(f, "]");
  fprintf(f,
          ",\"published\":%llu,\"publish_failed\":%llu,\"received\":%llu,\"unique\":%llu,"
          "\"expected\":%llu,\"lost\":%llu,\"duplicated\":%llu,\"reordered\":%llu,"
          "\"malformed\":%llu,",
          (unsigned long long)r->pub_ok, (unsigned long long)r->pub_failed,
          (unsigned long long)r->recv, (unsigned long long)r->unique,
          (unsigned long long)r->expected, (unsigned long long)r->lost,
          (unsigned long long)r->duplicated, (unsigned long long)r->reordered,
          (unsigned long long)r->malformed);
  fprintf(f,
          "\"measured_s\":%.6f,\"pub_s\":%.6f,\"recv_s\":%.6f,\"pub_msgs_per_s\":%.1f,"
          "\"pub_mb_per_s\":%.3f,\"recv_msgs_per_s\":%.1f,\"recv_mb_per_s\":%.3f,"
          "\"wire_bytes\":%llu,\"wire_mb_per_s\":%.3f,",
          r->measured_s, r->pub_s, r->recv_s, rate(r->pub_ok, r->pub_s),
          rate(r->pub_ok * o->size, r->pub_s) / 1e6, rate(r->recv, r->recv_s),
          rate(r->recv_bytes, r->recv_s) / 1e6, (unsigned long long)r->wire_bytes,
          rate(r->wire_bytes, r->pub_s) / 1e6);
  json_hist(f, "latency_us", &r->latency);
  fprintf(f,
          ",\"cpu_s\":%.6f,\"cpu_s_per_million\":%.6f,\"cpu_connect_s\":%.6f,"
          "\"rss_kb\":{\"base\":%ld,\"connected\":%ld,\"end\":%ld},"
          "\"rss_per_conn_bytes\":%.1f,\"heap_per_conn_bytes\":%.1f,\"lib_heap_per_conn_bytes\":",
          r->cpu_s, cpu_per_million(b), r->cpu_connect_s, r->rss_base_kb, r->rss_connected_kb,
          r->rss_end_kb, rss_per_conn(r), heap_per_conn(r));
  if (r->have_lib_heap)
    fprintf(f, "%.1f", lib_heap_per_conn(r));
  else
    fprintf(f, "null");
  fprintf(f, ",\"series\":[");
  for (size_t i = 0; i < r->nsamples; i++)
    fprintf(f, "%s[%.3f,%llu,%llu]", i ? "," : "", r->samples[i].t,
            (unsigned long long)r->samples[i].pub, (unsigned long long)r->samples[i].recv);
  fprintf(f, "],\"note\":");
  json_string(f, r->note);
  fprintf(f, "}\n");
  if (f != stdout && fclose(f) != 0) {
    perror(path);
    return -1;
  }
  return 0;
}
