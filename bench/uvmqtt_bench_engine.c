/* The workload engine: connects clients at the requested rate, subscribes,
 * paces publishes, decides when the measured phase starts and ends, and
 * closes everything. Drivers only translate between it and a library. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

/* Generous bounds so a broken broker or driver cannot hang a run. */
#define CONNECT_PHASE_MS 30000
#define CLOSE_PHASE_MS   10000
#define TICK_MS          1

static void check(bench_t *b);
static void start_close(bench_t *b);

uint64_t bench_now_ns(void) {
  return uv_hrtime();
}

static void lock(bench_t *b) {
  if (b->drv->lock) b->drv->lock(b);
}

static void unlock(bench_t *b) {
  if (b->drv->unlock) b->drv->unlock(b);
}

/* Phase changes run on the loop thread, never inside a library callback:
 * drivers need not cope with being closed from their own callbacks. */
static void wake(bench_t *b) {
  uv_async_send(&b->wake);
}

/* ---- Clients ---------------------------------------------------------------------- */

/* Expands %i (index) and %c (client id) in a topic template. */
static void expand_topic(char *out, size_t cap, const char *tmpl, uint32_t index, const char *id) {
  size_t n = 0;
  for (const char *p = tmpl; *p && n + 1 < cap; p++) {
    if (p[0] == '%' && (p[1] == 'i' || p[1] == 'c')) {
      int w = p[1] == 'i' ? snprintf(out + n, cap - n, "%u", index)
                          : snprintf(out + n, cap - n, "%s", id);
      if (w > 0) n += (size_t)w;
      if (n >= cap) n = cap - 1;
      p++;
    } else {
      out[n++] = *p;
    }
  }
  out[n] = '\0';
}

/* The n-th entry of a comma-separated list, cycling; NULL for no list. */
static const char *pick_ifaddr(const char *list, uint32_t n, char *buf, size_t cap) {
  if (list == NULL || *list == '\0') return NULL;
  uint32_t count = 1;
  for (const char *p = list; *p; p++)
    count += *p == ',';
  n %= count;
  const char *start = list;
  while (n--)
    start = strchr(start, ',') + 1;
  size_t len = strcspn(start, ",");
  if (len >= cap) len = cap - 1;
  memcpy(buf, start, len);
  buf[len] = '\0';
  return buf;
}

static int make_clients(bench_t *b) {
  const bench_opts_t *o = b->o;
  switch (o->cmd) {
  case BENCH_PUB: b->npub = o->clients; break;
  case BENCH_SUB: b->nsub = o->clients; break;
  case BENCH_PUBSUB:
    b->npub = o->clients;
    b->nsub = o->clients;
    break;
  default: break;
  }
  b->nclients = o->cmd == BENCH_CONN ? o->clients : b->npub + b->nsub;
  b->clients = calloc(b->nclients, sizeof *b->clients);
  if (b->clients == NULL) return -1;
  pid_t pid = getpid();
  for (uint32_t i = 0; i < b->nclients; i++) {
    bench_client_t *cl = &b->clients[i];
    cl->bench = b;
    /* Subscribers come first so that, connecting at a limited rate, they
     * are up before anyone publishes. */
    int is_sub = i < b->nsub;
    uint32_t k = is_sub ? i : i - b->nsub;
    cl->index = o->start_index + k;
    cl->role = o->cmd == BENCH_CONN ? BENCH_ROLE_IDLE : is_sub ? BENCH_ROLE_SUB : BENCH_ROLE_PUB;
    const char *tag = cl->role == BENCH_ROLE_SUB   ? "sub"
                      : cl->role == BENCH_ROLE_PUB ? "pub"
                                                   : "conn";
    snprintf(cl->id, sizeof cl->id, "bench-%s-%ld-%u", tag, (long)pid, cl->index);
    if (cl->role == BENCH_ROLE_PUB) {
      expand_topic(cl->topic, sizeof cl->topic, o->topic, cl->index, cl->id);
    } else if (cl->role == BENCH_ROLE_SUB && o->cmd == BENCH_PUBSUB) {
      /* Subscriber k listens to publisher k: its filter is that
       * publisher's topic. */
      char pub_id[48];
      snprintf(pub_id, sizeof pub_id, "bench-pub-%ld-%u", (long)pid, cl->index);
      expand_topic(cl->topic, sizeof cl->topic, o->topic, cl->index, pub_id);
    } else if (cl->role == BENCH_ROLE_SUB) {
      expand_topic(cl->topic, sizeof cl->topic, o->topic, cl->index, cl->id);
    }
    if (cl->role == BENCH_ROLE_PUB && o->size <= BENCH_KEPT_PAYLOAD) {
      cl->payload = malloc(o->size ? o->size : 1);
      if (cl->payload == NULL) return -1;
      memset(cl->payload, 'x', o->size);
    }
    if (cl->role == BENCH_ROLE_SUB) {
      cl->track = calloc(1, sizeof *cl->track);
      if (cl->track == NULL) return -1;
      bench_track_init(cl->track);
    }
  }
  return 0;
}

static void free_clients(bench_t *b) {
  for (uint32_t i = 0; i < b->nclients; i++) {
    bench_client_t *cl = &b->clients[i];
    free((void *)cl->bind_addr);
    if (cl->track) bench_track_free(cl->track);
    free(cl->track);
    free(cl->payload);
  }
  free(b->clients);
  b->clients = NULL;
}

static void client_failed(bench_t *b, bench_client_t *cl) {
  if (cl->state != BENCH_CL_CONNECTING && cl->state != BENCH_CL_SUBSCRIBING &&
      cl->state != BENCH_CL_READY)
    return;
  int was_ready = cl->state == BENCH_CL_READY;
  cl->state = BENCH_CL_FAILED;
  if (!was_ready) b->r.failed++;
  if (cl->role == BENCH_ROLE_PUB && !cl->finished && b->phase >= BENCH_PH_RUN) {
    cl->finished = 1;
    b->pubs_done++;
  }
  wake(b);
}

static void connect_one(bench_t *b, bench_client_t *cl) {
  uint64_t now = bench_now_ns();
  if (b->started == 0) b->t_conn_first_ns = now;
  b->started++;
  cl->state = BENCH_CL_CONNECTING;
  cl->connect_start_ns = now;
  char buf[64];
  const char *addr = pick_ifaddr(b->o->ifaddr, (uint32_t)(cl - b->clients), buf, sizeof buf);
  if (addr) cl->bind_addr = strdup(addr);
  unlock(b);
  int rc = b->drv->connect(b, cl);
  lock(b);
  if (rc < 0) {
    b->r.errors++;
    client_failed(b, cl);
  }
}

/* ---- Publishing --------------------------------------------------------------------- */

/* Payloads up to this size are built on the stack; larger ones on the heap.
 * Each publish builds its own, so publishers on different threads (Paho)
 * never share a buffer. */
/* Driver calls run with the engine unlocked: a threaded library may hold its
 * own lock while it calls back into the engine, and the two locks must never
 * be taken in opposite orders. Callers leave the engine consistent first. */
static int call_publish(bench_t *b, bench_client_t *cl, const uint8_t *payload) {
  unlock(b);
  int rc = b->drv->publish(b, cl, payload, b->o->size, b->o->qos);
  lock(b);
  return rc;
}

/* `now` is the send time stamped into the payload: read once per batch of
 * publishes, as a clock read per message would cost more than a publish
 * (each driver pays the same). */
static int publish_one(bench_t *b, bench_client_t *cl, uint64_t now) {
  uint8_t *payload = cl->payload;
  if (payload == NULL) {
    payload = malloc(b->o->size);
    if (payload == NULL) return -1;
    memset(payload, 'x', b->o->size);
  }
  bench_stamp_t st = {now, cl->seq, cl->index};
  bench_stamp_write(payload, &st);
  /* Counted before the call: a threaded library may complete it before the
   * call returns. */
  cl->sent++;
  cl->seq++;
  b->r.pub_sent++;
  int rc = call_publish(b, cl, payload);
  if (payload != cl->payload) free(payload);
  if (rc < 0) {
    cl->sent--;
    cl->seq--;
    b->r.pub_sent--;
    b->r.errors++;
    b->r.pub_failed++;
  }
  return rc;
}

static int may_send(const bench_t *b, const bench_client_t *cl) {
  return b->phase == BENCH_PH_RUN && !b->stop_publishing && cl->state == BENCH_CL_READY &&
         (b->o->limit == 0 || cl->sent < b->o->limit) && cl->sent - cl->done < b->o->inflight;
}

static void pub_check_finished(bench_t *b, bench_client_t *cl) {
  if (cl->finished || cl->done != cl->sent) return;
  if (!b->stop_publishing && (b->o->limit == 0 || cl->sent < b->o->limit)) return;
  cl->finished = 1;
  b->t_last_pub_ns = bench_now_ns();
  b->pubs_done++;
  wake(b);
}

/* Publishes as far as the window allows. Completions that arrive while
 * inside (libraries that complete QoS 0 synchronously) only count, so this
 * never recurses. */
static void fill(bench_t *b, bench_client_t *cl) {
  if (cl->filling) return;
  cl->filling = 1;
  uint64_t now = bench_now_ns();
  while (may_send(b, cl)) {
    if (publish_one(b, cl, now) < 0) {
      /* Nothing left to complete means nothing would call us again. */
      if (cl->done == cl->sent) client_failed(b, cl);
      break;
    }
  }
  cl->filling = 0;
}

/* Paced publishing (-I > 0): each client owes one message per interval
 * since the start; a full window delays them, it never skips them. */
static void pace(bench_t *b, uint64_t now) {
  double per_ns = b->o->interval_ms * 1e6;
  uint64_t due = (uint64_t)((double)(now - b->t_meas_ns) / per_ns) + 1;
  if (b->o->limit && due > b->o->limit) due = b->o->limit;
  for (uint32_t i = 0; i < b->nclients; i++) {
    bench_client_t *cl = &b->clients[i];
    if (cl->role != BENCH_ROLE_PUB) continue;
    cl->filling = 1;
    while (cl->sent < due && may_send(b, cl))
      if (publish_one(b, cl, now) < 0) break;
    cl->filling = 0;
  }
}

/* ---- Timers --------------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t) {
  bench_t *b = t->data;
  lock(b);
  uint64_t now = bench_now_ns();
  if (b->phase == BENCH_PH_CONNECT && b->started < b->nclients) {
    double elapsed = (double)(now - b->t_start_ns) / 1e9;
    uint64_t due = (uint64_t)(elapsed * b->o->conn_rate) + 1;
    while (b->started < b->nclients && b->started < due)
      connect_one(b, &b->clients[b->started]);
  }
  if (b->phase == BENCH_PH_RUN && b->o->interval_ms > 0) pace(b, now);
  unlock(b);
}

void bench_sample_add(bench_t *b) {
  bench_result_t *r = &b->r;
  if (r->nsamples == r->cap_samples) {
    size_t cap = r->cap_samples ? r->cap_samples * 2 : 64;
    bench_sample_t *s = realloc(r->samples, cap * sizeof *s);
    if (s == NULL) return;
    r->samples = s;
    r->cap_samples = cap;
  }
  bench_sample_t *s = &r->samples[r->nsamples++];
  s->t = (double)(bench_now_ns() - b->t_meas_ns) / 1e9;
  s->pub = r->pub_ok - b->last_pub_ok;
  s->recv = r->recv - b->last_recv;
}

static void on_progress(uv_timer_t *t) {
  bench_t *b = t->data;
  lock(b);
  if (b->phase == BENCH_PH_RUN || b->phase == BENCH_PH_DRAIN) bench_sample_add(b);
  bench_progress_print(b, 0);
  b->last_pub_ok = b->r.pub_ok;
  b->last_recv = b->r.recv;
  unlock(b);
}

static void arm_phase_timer(bench_t *b, uv_timer_cb cb, double seconds) {
  uv_timer_start(&b->phase_timer, cb, (uint64_t)(seconds * 1000.0), 0);
}

static void on_wake(uv_async_t *a) {
  bench_t *b = a->data;
  lock(b);
  check(b);
  unlock(b);
}

/* ---- Phases ----------------------------------------------------------------------------- */

static void finish_measure(bench_t *b) {
  bench_result_t *r = &b->r;
  uint64_t now = bench_now_ns();
  r->measured_s = (double)(now - b->t_meas_ns) / 1e9;
  r->cpu_s = bench_cpu_seconds() - b->cpu_mark;
  if (b->t_last_pub_ns > b->t_meas_ns) r->pub_s = (double)(b->t_last_pub_ns - b->t_meas_ns) / 1e9;
  uint64_t recv_from = b->npub ? b->t_meas_ns : b->t_first_recv_ns;
  if (b->t_last_recv_ns > recv_from) r->recv_s = (double)(b->t_last_recv_ns - recv_from) / 1e9;
  r->rss_end_kb = bench_rss_kb();
  for (uint32_t i = 0; i < b->nclients; i++) {
    const bench_track_t *t = b->clients[i].track;
    if (t == NULL) continue;
    r->duplicated += t->duplicated;
    r->reordered += t->reordered;
    r->malformed += t->malformed;
    r->unique += t->unique;
    if (b->npub == 0) r->lost += bench_track_lost(t, b->o->limit);
  }
  r->errors += r->malformed;
  /* With the publishers in this process, what went out is known exactly;
   * a subscriber-only run can only judge from the sequence numbers. */
  if (b->npub && b->nsub) {
    r->expected = r->pub_ok;
    r->lost = r->pub_ok > r->unique ? r->pub_ok - r->unique : 0;
  }
  start_close(b);
}

static void on_drain_timeout(uv_timer_t *t) {
  bench_t *b = t->data;
  lock(b);
  if (b->phase == BENCH_PH_DRAIN) {
    snprintf(b->r.note, sizeof b->r.note, "subscribers still short after --drain %.0f s",
             b->o->drain_s);
    finish_measure(b);
  }
  unlock(b);
}

static void on_deadline(uv_timer_t *t) {
  bench_t *b = t->data;
  lock(b);
  if (b->phase == BENCH_PH_HOLD) {
    start_close(b);
  } else if (b->phase == BENCH_PH_RUN) {
    b->stop_publishing = 1;
    b->deadline_hit = 1;
    for (uint32_t i = 0; i < b->nclients; i++)
      if (b->clients[i].role == BENCH_ROLE_PUB) pub_check_finished(b, &b->clients[i]);
    check(b);
  }
  unlock(b);
}

static void begin_measure(bench_t *b) {
  b->phase = BENCH_PH_RUN;
  b->t_meas_ns = bench_now_ns();
  b->cpu_mark = bench_cpu_seconds();
  b->last_pub_ok = b->r.pub_ok;
  b->last_recv = b->r.recv;
  /* Samples line up with the start of the measured phase. */
  uv_timer_start(&b->progress, on_progress, 1000, 1000);
  if (b->o->duration_s > 0) arm_phase_timer(b, on_deadline, b->o->duration_s);
  if (b->o->cmd == BENCH_SUB && b->o->limit) b->r.expected = (uint64_t)b->nsub * b->o->limit;
  if (b->o->cmd == BENCH_PUBSUB && b->o->limit) b->r.expected = (uint64_t)b->npub * b->o->limit;
  if (b->npub == 0) return;
  if (b->o->interval_ms > 0) {
    if (!uv_is_active((uv_handle_t *)&b->tick)) uv_timer_start(&b->tick, on_tick, 0, TICK_MS);
    return;
  }
  for (uint32_t i = 0; i < b->nclients; i++) {
    bench_client_t *cl = &b->clients[i];
    if (cl->role != BENCH_ROLE_PUB) continue;
    if (cl->state == BENCH_CL_READY)
      fill(b, cl);
    else if (!cl->finished) {
      cl->finished = 1;
      b->pubs_done++;
    }
  }
}

static void write_ready_file(bench_t *b) {
  if (b->o->ready_path == NULL) return;
  FILE *f = fopen(b->o->ready_path, "w");
  if (f == NULL) {
    perror(b->o->ready_path);
    return;
  }
  fprintf(f, "%u\n", b->ready);
  fclose(f);
}

static void end_connect(bench_t *b) {
  bench_result_t *r = &b->r;
  r->connected = b->ready;
  if (b->t_conn_last_ns > b->t_conn_first_ns)
    r->connect_s = (double)(b->t_conn_last_ns - b->t_conn_first_ns) / 1e9;
  r->cpu_connect_s = bench_cpu_seconds() - b->cpu_mark;
  r->rss_connected_kb = bench_rss_kb();
  r->heap_connected = bench_heap_bytes();
  if (b->drv->lib_heap) r->lib_heap_connected = b->drv->lib_heap();
  uv_timer_stop(&b->phase_timer);
  if (b->o->interval_ms == 0) uv_timer_stop(&b->tick);
  if (b->ready == 0) {
    snprintf(r->note, sizeof r->note, "no client connected");
    start_close(b);
    return;
  }
  switch (b->o->cmd) {
  case BENCH_CONN:
    b->phase = BENCH_PH_HOLD;
    arm_phase_timer(b, on_deadline, b->o->duration_s);
    /* A script measuring the idle connections from outside (CPU, keepalive
     * traffic) starts its window here, once every connection is up. */
    write_ready_file(b);
    break;
  case BENCH_SUB:
    write_ready_file(b);
    begin_measure(b);
    break;
  default:
    write_ready_file(b);
    begin_measure(b);
    check(b);
    break;
  }
}

static void on_connect_timeout(uv_timer_t *t) {
  bench_t *b = t->data;
  lock(b);
  if (b->phase == BENCH_PH_CONNECT) {
    for (uint32_t i = 0; i < b->nclients; i++) {
      bench_client_t *cl = &b->clients[i];
      if (cl->state == BENCH_CL_CONNECTING || cl->state == BENCH_CL_SUBSCRIBING)
        client_failed(b, cl);
    }
    snprintf(b->r.note, sizeof b->r.note, "connect phase cut at %d s", CONNECT_PHASE_MS / 1000);
    end_connect(b);
  }
  unlock(b);
}

static int subs_complete(bench_t *b) {
  if (b->subs_complete) return 1;
  uint64_t want = b->r.expected;
  if (want == 0 && b->npub && b->pubs_done == b->npub) want = b->r.pub_ok;
  if (want == 0) return 0;
  b->subs_complete = b->unique >= want;
  return b->subs_complete;
}

static void on_close_timeout(uv_timer_t *t) {
  bench_t *b = t->data;
  lock(b);
  snprintf(b->r.note, sizeof b->r.note, "%u clients did not close within %d s",
           b->nclients - b->closed, CLOSE_PHASE_MS / 1000);
  b->forced = 1;
  uv_stop(b->loop);
  unlock(b);
}

static void start_close(bench_t *b) {
  b->phase = BENCH_PH_CLOSE;
  if (b->r.rss_end_kb == 0) b->r.rss_end_kb = bench_rss_kb();
  uv_timer_stop(&b->tick);
  arm_phase_timer(b, on_close_timeout, CLOSE_PHASE_MS / 1000.0);
  for (uint32_t i = 0; i < b->nclients; i++) {
    bench_client_t *cl = &b->clients[i];
    if (cl->state == BENCH_CL_NEW) {
      cl->state = BENCH_CL_CLOSED;
      b->closed++;
    } else if (cl->state != BENCH_CL_CLOSING && cl->state != BENCH_CL_CLOSED) {
      cl->state = BENCH_CL_CLOSING;
      unlock(b);
      b->drv->close(b, cl);
      lock(b);
    }
  }
  wake(b);
}

static void finish(bench_t *b) {
  b->phase = BENCH_PH_DONE;
  uv_close((uv_handle_t *)&b->tick, NULL);
  uv_close((uv_handle_t *)&b->progress, NULL);
  uv_close((uv_handle_t *)&b->phase_timer, NULL);
  uv_close((uv_handle_t *)&b->wake, NULL);
}

static void check(bench_t *b) {
  switch (b->phase) {
  case BENCH_PH_CONNECT:
    if (b->ready + b->r.failed == b->nclients) end_connect(b);
    break;
  case BENCH_PH_RUN:
    if (b->npub && b->pubs_done < b->npub) break;
    if (b->nsub == 0 || subs_complete(b)) {
      finish_measure(b);
    } else if (b->npub) {
      b->phase = BENCH_PH_DRAIN;
      arm_phase_timer(b, on_drain_timeout, b->o->drain_s);
    } else if (b->deadline_hit) {
      finish_measure(b);
    }
    break;
  case BENCH_PH_DRAIN:
    if (subs_complete(b)) finish_measure(b);
    break;
  case BENCH_PH_CLOSE:
    if (b->closed == b->nclients) finish(b);
    break;
  default: break;
  }
}

/* ---- Driver events ---------------------------------------------------------------------- */

void bench_on_connected(bench_t *b, bench_client_t *cl) {
  lock(b);
  if (!cl->connected) {
    cl->connected = 1;
    b->connected_now++;
  }
  if (cl->ever_connected) {
    b->r.reconnects++;
  } else if (cl->state == BENCH_CL_CONNECTING) {
    uint64_t now = bench_now_ns();
    cl->ever_connected = 1;
    hist_record(&b->r.connect_lat, now - cl->connect_start_ns);
    b->t_conn_last_ns = now;
    if (cl->role == BENCH_ROLE_SUB) {
      cl->state = BENCH_CL_SUBSCRIBING;
      unlock(b);
      int rc = b->drv->subscribe(b, cl, cl->topic, b->o->qos);
      lock(b);
      if (rc < 0 && cl->state == BENCH_CL_SUBSCRIBING) {
        b->r.errors++;
        client_failed(b, cl);
      }
    } else {
      cl->state = BENCH_CL_READY;
      b->ready++;
      wake(b);
    }
  }
  unlock(b);
}

void bench_on_down(bench_t *b, bench_client_t *cl, int will_retry) {
  lock(b);
  if (cl->connected) {
    cl->connected = 0;
    b->connected_now--;
  }
  if (cl->state != BENCH_CL_CLOSING && cl->state != BENCH_CL_CLOSED) {
    b->r.errors++;
    if (!will_retry) client_failed(b, cl);
  }
  unlock(b);
}

void bench_on_subscribed(bench_t *b, bench_client_t *cl, int ok) {
  lock(b);
  if (cl->state == BENCH_CL_SUBSCRIBING) {
    if (ok) {
      cl->state = BENCH_CL_READY;
      b->ready++;
      wake(b);
    } else {
      b->r.errors++;
      client_failed(b, cl);
    }
  }
  unlock(b);
}

void bench_on_published(bench_t *b, bench_client_t *cl, int ok) {
  lock(b);
  cl->done++;
  if (ok) {
    b->r.pub_ok++;
  } else {
    b->r.pub_failed++;
    b->r.errors++;
  }
  /* The window refills once half of it completed: in batches, so that the
   * send time read per batch is not one clock read per message. */
  if (!b->paced && cl->sent - cl->done <= b->refill_at) fill(b, cl);
  pub_check_finished(b, cl);
  unlock(b);
}

void bench_on_message(bench_t *b, bench_client_t *cl, const void *payload, size_t len) {
  lock(b);
  uint64_t now = bench_now_ns();
  bench_result_t *r = &b->r;
  r->recv++;
  r->recv_bytes += len;
  if (b->t_first_recv_ns == 0) b->t_first_recv_ns = now;
  b->t_last_recv_ns = now;
  bench_stamp_t st;
  if (cl->track == NULL || bench_stamp_read(payload, len, &st) < 0) {
    r->malformed++;
  } else {
    hist_record(&r->latency, now > st.sent_ns ? now - st.sent_ns : 0);
    if (bench_track_add(cl->track, &st) == 1) {
      b->unique++;
      if (!b->subs_complete && r->expected && b->unique >= r->expected) {
        b->subs_complete = 1;
        wake(b);
      } else if (b->phase == BENCH_PH_DRAIN && !b->subs_complete && b->unique >= r->pub_ok) {
        wake(b);
      }
    }
  }
  unlock(b);
}

void bench_on_closed(bench_t *b, bench_client_t *cl) {
  lock(b);
  if (cl->state != BENCH_CL_CLOSED) {
    cl->state = BENCH_CL_CLOSED;
    b->closed++;
    if (b->closed == b->nclients) wake(b);
  }
  unlock(b);
}

/* ---- Entry point ------------------------------------------------------------------------- */

int bench_main(const bench_opts_t *o, const bench_driver_t *drv, void *drv_state) {
  if (o->ifaddr && drv->ifaddr_unsupported) {
    fprintf(stderr, "--ifaddr is not supported by the %s driver: %s\n", drv->name,
            drv->ifaddr_unsupported);
    return 2;
  }
  if (o->ws && drv->ws_unsupported) {
    fprintf(stderr, "ws:// is not supported by the %s driver: %s\n", drv->name,
            drv->ws_unsupported);
    return 2;
  }
  if (o->plot_path && bench_plot_check(o->plot_path) < 0) return 2;
  bench_t *b = calloc(1, sizeof *b);
  uv_loop_t *loop = calloc(1, sizeof *loop);
  if (b == NULL || loop == NULL || uv_loop_init(loop) != 0) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  b->loop = loop;
  b->o = o;
  b->drv = drv;
  b->drv_state = drv_state;
  b->paced = o->interval_ms > 0;
  b->refill_at = o->inflight / 2;
  b->r.clients = o->clients;
  b->tty = isatty(2);
  hist_init(&b->r.latency);
  hist_init(&b->r.connect_lat);
  if (make_clients(b) < 0) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  b->r.rss_base_kb = bench_rss_kb();
  b->r.heap_base = bench_heap_bytes();
  if (drv->lib_heap) {
    b->r.have_lib_heap = 1;
    b->r.lib_heap_base = drv->lib_heap();
  }
  int rc = drv->setup ? drv->setup(b) : 0;
  if (rc < 0) {
    fprintf(stderr, "%s: setup failed (%d)\n", drv->name, rc);
    return 1;
  }
  uv_timer_init(loop, &b->tick);
  uv_timer_init(loop, &b->progress);
  uv_timer_init(loop, &b->phase_timer);
  uv_async_init(loop, &b->wake, on_wake);
  b->tick.data = b->progress.data = b->phase_timer.data = b->wake.data = b;

  lock(b);
  b->t_start_ns = bench_now_ns();
  b->cpu_mark = bench_cpu_seconds();
  uv_timer_start(&b->progress, on_progress, 1000, 1000);
  arm_phase_timer(b, on_connect_timeout, CONNECT_PHASE_MS / 1000.0);
  if (o->conn_rate > 0) {
    uv_timer_start(&b->tick, on_tick, 0, TICK_MS);
  } else {
    for (uint32_t i = 0; i < b->nclients; i++)
      connect_one(b, &b->clients[i]);
  }
  unlock(b);
  uv_run(loop, UV_RUN_DEFAULT);
  if (drv->teardown) drv->teardown(b);
  if (!o->quiet) bench_progress_print(b, 1);

  bench_report_print(b);
  int status = 0;
  if (o->json_path && bench_report_json(b, o->json_path) < 0) status = 1;
  if (o->plot_path && bench_plot(b, o->plot_path) < 0) status = 1;
  if (b->r.connected == 0) status = 1;
  if (!b->forced) {
    uv_run(loop, UV_RUN_DEFAULT);
    if (uv_loop_close(loop) != 0) fprintf(stderr, "warning: handles left open on the loop\n");
    free(loop);
  }
  free_clients(b);
  free(b->r.samples);
  free(b);
  return status;
}
