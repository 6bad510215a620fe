/* The client against a real multi-node broker: three aedes nodes sharing
 * sessions, subscriptions and offline queues through one Redis
 * (test/support/cluster.c). Nodes are killed with SIGKILL and brought back
 * while publishers and subscribers run; the tests count every message.
 * aedes speaks MQTT 3.1.1 only, so every client here does too.
 *
 * The node scripts need the npm packages installed by tools/install-deps;
 * without them every test fails (it does not skip). */
#include <check.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "cluster.h"
#include "deadline.h"
#include "failover.h"
#include "peer.h"
#include "scene.h"
#include "uvmqtt.h"

static test_cluster_t g_cl;

static void cluster_up(void) {
  /* Line by line: a failed assertion ends the test process before a full
   * buffer would be written, and the figures matter most then. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  ck_assert_msg(test_cluster_start(&g_cl, 3) == 0,
                "the cluster did not start (redis-server, node and the npm packages of "
                "tools/install-deps are needed; see the messages above)");
  test_peer_nodes(g_cl.uris, g_cl.count);
}

/* ---- 1. Failover without loss ------------------------------------------------------------------
 */

#define FO_PUBS    20
#define FO_SUBS    5
#define FO_PER_PUB 500
/* Messages a subscriber may miss, all of them lost by the broker cluster
 * around its node kills (see the assertion). */
#define FO_BROKER_LOSS_BOUND 300
#define FO_MSGS              (FO_PUBS * FO_PER_PUB)
#define FO_TICK_MS           20 /* each publisher publishes one message per tick: 10 s in all */
#define FO_WATCHDOG          45000

/* The publishers, subscribers and their counts (test/support/failover.c). */
static test_failover_t fo;
static int fo_named; /* the misses were named once */

static void fo_check(uv_timer_t *t) {
  (void)t;
  test_failover_poll_t s = test_failover_poll(&fo);
  /* Every message acknowledged, yet a subscriber still misses some 5 s
   * later: name a few, once, for the log of a run that is going to fail. */
  if (fo.t_published && test_mono_ms() - fo.t_published > 5000 && !fo.finishing && !fo_named) {
    fo_named = 1;
    for (int j = 0; j < FO_SUBS; j++) {
      test_peer_t *p = &fo.subs[j];
      if (p->unique == FO_MSGS) continue;
      printf("cluster: failover: %s misses %d messages (node %d%s), e.g. publisher/seq", p->id,
             FO_MSGS - p->unique, p->node + 1, p->up ? "" : ", down");
      test_failover_print_missing(&fo, p, 5);
    }
  }
  /* Done when every subscriber has everything, or, every publish being
   * acknowledged, when 8 s passed with every subscriber connected: what is
   * still missing then, the broker lost (the assertions bound it). */
  int settled = fo.t_published && s.all_up && test_mono_ms() - fo.t_published > 8000;
  if (s.done == FO_MSGS && (s.complete == FO_SUBS || settled) && !fo.finishing) {
    fo.finishing = 1;
    /* A moment for duplicates still on their way, so they are counted. */
    test_scene_after(300, test_failover_finish);
  }
}

static void fo_kill_first(void) {
  test_scene.phase = "node 1 killed";
  printf("cluster: failover: kill -9 node 1 after %d of %d messages\n", fo.published, FO_MSGS);
  test_cluster_kill(&g_cl, 0);
}

static void fo_bring_back_first(void) {
  test_scene.phase = "node 1 restarting";
  printf("cluster: failover: node 1 back after %d messages\n", fo.published);
  ck_assert_int_eq(test_cluster_spawn(&g_cl, 0), 0);
}

static void fo_kill_second(void) {
  test_scene.phase = "node 2 killed";
  printf("cluster: failover: kill -9 node 2 after %d messages (node 1 ready: %d)\n", fo.published,
         test_cluster_ready(&g_cl, 0));
  fflush(stdout);
  test_cluster_kill(&g_cl, 1);
}

static void fo_schedule_kills(void) {
  test_scene_after(2500, fo_kill_first);
  test_scene_after(5000, fo_bring_back_first);
  test_scene_after(6500, fo_kill_second);
}

START_TEST(cluster_failover_no_loss) {
  memset(&fo, 0, sizeof fo);
  fo_named = 0;
  cluster_up();
  test_scene_start(FO_WATCHDOG, NULL);
  fo.pubs_n = FO_PUBS;
  fo.subs_n = FO_SUBS;
  fo.per_pub = FO_PER_PUB;
  fo.tick_ms = FO_TICK_MS;
  fo.topic = "cluster/fo";
  fo.label = "cluster: failover";
  fo.policy.min_ms = 100;
  fo.policy.max_ms = 1000;
  fo.check = fo_check;
  fo.on_publishing = fo_schedule_kills;
  test_failover_start(&fo);
  test_scene_run();

  uint64_t took = test_mono_ms() - fo.t_start;
  int total_dups = 0, failed = 0, pub_losses = 0;
  for (int i = 0; i < FO_PUBS; i++) {
    failed += fo.pubs[i].failed;
    pub_losses += fo.pubs[i].losses;
  }
  printf("cluster: failover: %d messages from %d publishers (%d connection losses, %d failed) "
         "to %d subscribers in %llu ms (last acknowledged after %llu ms)\n",
         FO_MSGS, FO_PUBS, pub_losses, failed, FO_SUBS, (unsigned long long)took,
         (unsigned long long)(fo.t_published ? fo.t_published - fo.t_start : 0));
  for (int j = 0; j < FO_SUBS; j++) {
    test_peer_t *p = &fo.subs[j];
    printf("  %s: %d unique of %d, %d duplicates, %d losses, reconnects with session %d, "
           "without %d\n",
           p->id, p->unique, FO_MSGS, p->dups, p->losses, p->sp1, p->sp0);
    total_dups += p->dups;
  }
  printf("cluster: failover: %d duplicates in all\n", total_dups);
  /* Every publish was acknowledged: the client's side of "nothing lost"
   * holds exactly. The aedes cluster (aedes-persistence-redis 11 over
   * Redis) loses some messages it acknowledged when a node is killed with
   * SIGKILL (observed: 0 to 98 per subscriber in 10,000, always around the
   * kills, often missing at every subscriber at once), so what reaches the
   * subscribers is held to a bound that those broker losses stay under
   * while a client that dropped messages after a failover would not. */
  ck_assert_int_eq(failed, 0);
  int missing = 0;
  for (int j = 0; j < FO_SUBS; j++) {
    missing += FO_MSGS - fo.subs[j].unique;
    ck_assert_msg(fo.subs[j].unique >= FO_MSGS - FO_BROKER_LOSS_BOUND,
                  "%s missed %d messages, more than the broker loses", fo.subs[j].id,
                  FO_MSGS - fo.subs[j].unique);
  }
  printf("cluster: failover: %d deliveries missing in all (acknowledged, lost by the broker)\n",
         missing);
  test_failover_free(&fo);
  test_cluster_cleanup(&g_cl);
}
END_TEST

/* ---- 2. Shared subscriptions --------------------------------------------------------------------
 */

#define SH_MSGS     200
#define SH_TICK_MS  10
#define SH_WATCHDOG 60000

/* peers: 0 and 1 share $share/g/cluster/sh (nodes 1 and 2), 2 is a plain
 * subscriber of the topic (node 3), 3 publishes (node 3). */
static struct {
  test_peer_t p[4];
  uvmqtt_backoff_t policy;
  int ready;
  int sent;
  int done;
  int finishing;
  int killed;
  uint8_t *any; /* deliveries to the group, per message */
} sh;

static void sh_finish(void) {
  test_scene.phase = "closing";
  test_scene_stop_timers();
  test_peer_close_all(sh.p, 4);
}

static void sh_published(uvmqtt_client_t *c, int status, uint8_t reason, void *arg) {
  (void)c;
  (void)reason;
  (void)arg;
  ck_assert_int_eq(status, 0);
  sh.done++;
}

static void sh_check(uv_timer_t *t) {
  (void)t;
  if (sh.done == SH_MSGS && sh.p[2].unique == SH_MSGS && !sh.finishing) {
    sh.finishing = 1;
    /* Time for the group's deliveries from the offline queues. */
    test_scene_after(1500, sh_finish);
  }
}

static void sh_tick(uv_timer_t *t) {
  (void)t;
  if (sh.sent == SH_MSGS / 2 && !sh.killed) {
    /* Consumer 0's node dies halfway through. */
    sh.killed = 1;
    test_scene.phase = "node 1 killed";
    test_cluster_kill(&g_cl, 0);
  }
  char payload[16];
  int len = snprintf(payload, sizeof payload, "%d", sh.sent);
  uvmqtt_publish_opts_t po;
  memset(&po, 0, sizeof po);
  po.qos = 1;
  ck_assert_int_eq(
      uvmqtt_publish(&sh.p[3].c, "cluster/sh", payload, (size_t)len, &po, sh_published, NULL), 0);
  if (++sh.sent == SH_MSGS) uv_timer_stop(&test_scene.tick);
}

static void sh_ready(void) {
  if (++sh.ready < 4) return;
  test_scene.phase = "publishing";
  uv_timer_start(&test_scene.tick, sh_tick, 0, SH_TICK_MS);
  uv_timer_start(&test_scene.check, sh_check, 100, 100);
}

static void sh_subscribed(uvmqtt_client_t *c, int status, const uint8_t *reasons, size_t count,
                          void *arg) {
  (void)c;
  test_peer_t *p = arg;
  ck_assert_int_eq(status, 0);
  ck_assert_uint_eq(count, 1);
  p->granted = reasons[0];
  p->subscribed++;
  sh_ready();
}

static void sh_connect(uvmqtt_client_t *c, int status, const uvmqtt_connack_t *ack) {
  test_peer_t *p = c->data;
  test_peer_up(p, status, ack);
  if (status != 0 || p->connects != 1) return;
  if (p->index < 2)
    test_peer_subscribe(p, "$share/g/cluster/sh", sh_subscribed);
  else if (p->index == 2)
    test_peer_subscribe(p, "cluster/sh", sh_subscribed);
  else
    sh_ready();
}

static void sh_message(uvmqtt_client_t *c, const uvmqtt_message_t *m, void *arg) {
  (void)arg;
  test_peer_t *p = c->data;
  char text[16];
  size_t n = m->payload.len < sizeof text - 1 ? m->payload.len : sizeof text - 1;
  memcpy(text, m->payload.data, n);
  text[n] = '\0';
  long k = strtol(text, NULL, 10);
  test_peer_count(p, k, SH_MSGS);
  if (p->index < 2) sh.any[k]++;
}

START_TEST(cluster_shared_subscription) {
  memset(&sh, 0, sizeof sh);
  cluster_up();
  test_scene_start(SH_WATCHDOG, NULL);
  sh.policy.min_ms = 100;
  sh.policy.max_ms = 1000;
  sh.any = calloc(SH_MSGS, 1);
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = sh_connect;
  cbs.on_disconnect = test_peer_down;
  cbs.on_message = sh_message;
  static const int first_node[4] = {0, 1, 2, 2};
  for (int i = 0; i < 4; i++) {
    test_peer_t *p = &sh.p[i];
    p->index = i;
    p->seen = calloc(SH_MSGS, 1);
    snprintf(p->id, sizeof p->id, "sh-%d", i);
    const char *list[TEST_PEER_NODES];
    uvmqtt_options_t o;
    test_peer_options(&o, list, first_node[i], p->id, 0, &sh.policy);
    ck_assert_int_eq(uvmqtt_client_init(&test_scene.loop, &p->c, &o, &cbs), 0);
    p->c.data = p;
    ck_assert_int_eq(uvmqtt_connect(&p->c), 0);
  }
  test_scene_run();

  int group = 0;
  for (int k = 0; k < SH_MSGS; k++)
    group += sh.any[k] != 0;
  printf("cluster: shared: SUBACK codes for $share/g/cluster/sh: 0x%02x, 0x%02x; consumers "
         "received %d and %d, %d of %d messages reached the group; the plain subscriber "
         "received %d unique (%d duplicates)\n",
         sh.p[0].granted, sh.p[1].granted, sh.p[0].received, sh.p[1].received, group, SH_MSGS,
         sh.p[2].unique, sh.p[2].dups);
  /* The plain subscription on a node that stayed up gets everything. */
  ck_assert_int_eq(sh.p[2].unique, SH_MSGS);
  if (sh.p[0].received + sh.p[1].received == 0) {
    /* aedes 1.2.0 has no shared subscriptions: it grants "$share/g/..." as
     * an ordinary filter, which no message published to "cluster/sh"
     * matches. Record that behaviour; a broker that shares must pass the
     * check below instead. */
    printf("cluster: shared: this broker does not implement shared subscriptions: "
           "the $share filter was granted as an ordinary filter and matched nothing\n");
    ck_assert_int_le(sh.p[0].granted, 1);
    ck_assert_int_le(sh.p[1].granted, 1);
  } else {
    ck_assert_msg(group == SH_MSGS, "the group missed %d messages", SH_MSGS - group);
  }
  for (int i = 0; i < 4; i++)
    free(sh.p[i].seen);
  free(sh.any);
  test_cluster_cleanup(&g_cl);
}
END_TEST

/* ---- 3. Reconnect storm ------------------------------------------------------------------------
 */

#define STORM_CLIENTS   1000
#define STORM_IN_FLIGHT 50
#define STORM_MIN_MS    2000 /* the jitter window of the first retry */
#define STORM_MAX_MS    4000
#define STORM_SLACK_MS  2000
#define STORM_BUCKET_MS 100
#define STORM_WATCHDOG  90000

static struct {
  test_peer_t *p;
  uint64_t *back_ms; /* CONNACK after the kill, since the kill */
  uint64_t *try_ms;  /* the first attempt after the kill, since the kill */
  uvmqtt_backoff_t policy;
  int started;
  int connected;
  int reconnected;
  int failures;
  int phase;
  int per_node[TEST_CLUSTER_MAX];
  uint64_t t_loss;
} st;

static void storm_close(void) {
  test_scene.phase = "closing";
  test_scene_stop_timers();
  test_peer_close_all(st.p, STORM_CLIENTS);
}

static void storm_kill(void) {
  test_scene.phase = "node 1 killed";
  st.phase = 1;
  st.t_loss = test_mono_ms();
  test_cluster_kill(&g_cl, 0);
}

static void storm_start_next(void) {
  if (st.started == STORM_CLIENTS) return;
  int rc = uvmqtt_connect(&st.p[st.started++].c);
  ck_assert_msg(rc == 0, "connect: %s", uvmqtt_err_name(rc));
}

static void storm_connect(uvmqtt_client_t *c, int status, const uvmqtt_connack_t *ack) {
  test_peer_t *p = c->data;
  if (st.phase == 0) {
    ck_assert_msg(status == 0, "%s: connect: %s", p->id, uvmqtt_err_name(status));
    ck_assert_int_eq(test_peer_node_of(ack->server), 0);
    st.connected++;
    storm_start_next();
    if (st.connected == STORM_CLIENTS) test_scene_after(300, storm_kill);
    return;
  }
  if (status != 0) {
    st.failures++;
    return;
  }
  ck_assert_msg(st.back_ms[p->index] == 0, "%s connected twice", p->id);
  st.back_ms[p->index] = test_mono_ms() - st.t_loss;
  int node = test_peer_node_of(ack->server);
  ck_assert_msg(node == 1 || node == 2, "%s reconnected to node %d", p->id, node + 1);
  st.per_node[node]++;
  if (++st.reconnected == STORM_CLIENTS) test_scene_after(100, storm_close);
}

/* The attempt starts are the policy's doing; the CONNACKs add the
 * surviving nodes' pace, which a thousand handshakes at once can bunch. */
static void storm_pre_connect(uvmqtt_client_t *c, uint32_t attempt) {
  test_peer_t *p = c->data;
  if (st.phase == 1 && attempt == 1 && st.try_ms[p->index] == 0)
    st.try_ms[p->index] = test_mono_ms() - st.t_loss + 1;
}

static void storm_down(uvmqtt_client_t *c, const uvmqtt_disconnect_t *d) {
  test_peer_t *p = c->data;
  ck_assert_msg(st.phase == 1, "%s lost its connection early: %s", p->id,
                uvmqtt_err_name(d->status));
  ck_assert_msg(d->will_retry, "%s gave up", p->id);
  p->losses++;
}

START_TEST(cluster_reconnect_storm) {
  memset(&st, 0, sizeof st);
  /* The nodes inherit the limit: each needs a descriptor per client. */
  ck_assert_msg(test_raise_fd_limit(STORM_CLIENTS * 2 + 512) == 0,
                "RLIMIT_NOFILE hard limit too low");
  cluster_up();
  test_scene_start(STORM_WATCHDOG, NULL);
  st.p = calloc(STORM_CLIENTS, sizeof *st.p);
  st.back_ms = calloc(STORM_CLIENTS, sizeof *st.back_ms);
  st.try_ms = calloc(STORM_CLIENTS, sizeof *st.try_ms);
  ck_assert(st.p != NULL && st.back_ms != NULL && st.try_ms != NULL);
  /* One policy state for all, as the header allows. */
  st.policy.min_ms = STORM_MIN_MS;
  st.policy.max_ms = STORM_MAX_MS;
  uvmqtt_callbacks_t cbs;
  memset(&cbs, 0, sizeof cbs);
  cbs.on_connect = storm_connect;
  cbs.on_disconnect = storm_down;
  cbs.pre_connect = storm_pre_connect;
  for (int i = 0; i < STORM_CLIENTS; i++) {
    test_peer_t *p = &st.p[i];
    p->index = i;
    snprintf(p->id, sizeof p->id, "storm-%d", i);
    /* Everyone starts on node 1; half list node 2 next, half node 3, so
     * the survivors share the crowd. */
    const char *order[TEST_CLUSTER_MAX] = {g_cl.uris[0], g_cl.uris[1 + i % 2],
                                           g_cl.uris[2 - i % 2]};
    const char *list[TEST_PEER_NODES];
    uvmqtt_options_t o;
    test_peer_options(&o, list, 0, p->id, 1, &st.policy);
    o.uris = order;
    o.keepalive = 30;
    ck_assert_int_eq(uvmqtt_client_init(&test_scene.loop, &p->c, &o, &cbs), 0);
    p->c.data = p;
  }
  test_scene.phase = "connecting";
  for (int i = 0; i < STORM_IN_FLIGHT; i++)
    storm_start_next();
  test_scene_run();

  uint64_t last = 0, last_try = 0;
  int buckets[128] = {0}, tries[128] = {0};
  for (int i = 0; i < STORM_CLIENTS; i++) {
    uint64_t t = st.back_ms[i];
    if (t > last) last = t;
    int b = (int)(t / STORM_BUCKET_MS);
    buckets[b < 127 ? b : 127]++;
    uint64_t a = st.try_ms[i] ? st.try_ms[i] - 1 : 0;
    if (a > last_try) last_try = a;
    b = (int)(a / STORM_BUCKET_MS);
    tries[b < 127 ? b : 127]++;
  }
  int nb = (int)(last / STORM_BUCKET_MS) + 1;
  if (nb > 128) nb = 128;
  int nt = (int)(last_try / STORM_BUCKET_MS) + 1;
  if (nt > 128) nt = 128;
  double mean = (double)STORM_CLIENTS / nt;
  int busiest = 0, busiest_back = 0;
  for (int b = 0; b < nt; b++)
    if (tries[b] > busiest) busiest = tries[b];
  for (int b = 0; b < nb; b++)
    if (buckets[b] > busiest_back) busiest_back = buckets[b];
  printf("cluster: storm: %d clients on node 1, killed; back on node 2: %d, node 3: %d; "
         "%d failed attempts; first attempts and CONNACKs since the kill, %d ms buckets "
         "(attempts: mean %.1f, busiest %d; CONNACKs: busiest %d, last after %llu ms):\n",
         STORM_CLIENTS, st.per_node[1], st.per_node[2], st.failures, STORM_BUCKET_MS, mean, busiest,
         busiest_back, (unsigned long long)last);
  printf("     bucket       tries back\n");
  for (int b = 0; b < (nb > nt ? nb : nt); b++) {
    printf("  %5d-%5d ms %4d %4d ", b * STORM_BUCKET_MS, (b + 1) * STORM_BUCKET_MS, tries[b],
           buckets[b]);
    for (int k = 0; k < tries[b]; k += 2)
      printf("#");
    printf("\n");
  }
  ck_assert_int_eq(st.reconnected, STORM_CLIENTS);
  ck_assert_msg(last <= STORM_MIN_MS + STORM_SLACK_MS,
                "the last client came back %llu ms after the kill", (unsigned long long)last);
  ck_assert_msg(busiest <= 2 * mean, "a %d ms bucket holds %d attempts, the mean is %.1f",
                STORM_BUCKET_MS, busiest, mean);
  for (int i = 0; i < STORM_CLIENTS; i++)
    ck_assert_msg(st.try_ms[i] != 0, "storm-%d never tried again", i);
  /* Each survivor took a fair share. */
  ck_assert_int_ge(st.per_node[1], STORM_CLIENTS / 3);
  ck_assert_int_ge(st.per_node[2], STORM_CLIENTS / 3);
  free(st.p);
  free(st.back_ms);
  free(st.try_ms);
  test_cluster_cleanup(&g_cl);
}
END_TEST

/* ---- 4. A deadline message while every node is down
 * ---------------------------------------------- */

#define DL_DEADLINE_MS 500
#define DL_WATCHDOG    60000

/* The two clients and their counts (test/support/deadline.c). */
static test_deadline_t dl;

static void dl_nodes_back(void) {
  test_scene.phase = "nodes back";
  for (int i = 0; i < g_cl.count; i++)
    ck_assert_int_eq(test_cluster_spawn(&g_cl, i), 0);
}

static void dl_all_down(void) {
  for (int i = 0; i < g_cl.count; i++)
    test_cluster_kill(&g_cl, i);
  test_deadline_down();
}

START_TEST(cluster_deadline_while_all_down) {
  memset(&dl, 0, sizeof dl);
  cluster_up();
  test_scene_start(DL_WATCHDOG, NULL);
  dl.topic = "cluster/dl";
  dl.deadline_ms = DL_DEADLINE_MS;
  dl.policy.min_ms = 100;
  dl.policy.max_ms = 400;
  dl.kill_all = dl_all_down;
  dl.bring_back = dl_nodes_back;
  test_deadline_start(&dl);
  test_scene_run();
  printf("cluster: deadline: expired after %llu ms with %s (%d call); marker %s; the expired "
         "message arrived %d times\n",
         (unsigned long long)(dl.t_expired - dl.t_publish), uvmqtt_err_name(dl.expire_status),
         dl.expire_calls, dl.marker_status == 0 ? "delivered" : uvmqtt_err_name(dl.marker_status),
         dl.got_expire);
  test_deadline_assert(&dl);
  test_cluster_cleanup(&g_cl);
}
END_TEST

/* ---- 5. uvmqtt-bench over the cluster -----------------------------------------------------------
 */

/* The number after "key": in a JSON text, or -1. */
static long long json_number(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(json, pat);
  return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

START_TEST(cluster_bench_spreads_over_nodes) {
  cluster_up();
  char json_path[300], cmd[2048];
  snprintf(json_path, sizeof json_path, "%s/bench.json", g_cl.dir);
  snprintf(cmd, sizeof cmd,
           "%s/bench/uvmqtt-bench pubsub -U %s,%s,%s -c 30 -q 1 -L 100 -I 10 -Q --json %s",
           test_build_root(), g_cl.uris[0], g_cl.uris[1], g_cl.uris[2], json_path);
  int rc = test_run(cmd, 90);
  FILE *f = fopen(json_path, "r");
  ck_assert_msg(f != NULL, "no JSON report (exit status %d)", rc);
  static char json[1 << 20];
  size_t n = fread(json, 1, sizeof json - 1, f);
  fclose(f);
  json[n] = '\0';
  ck_assert_int_eq(rc, 0);
  /* 30 publishers and 30 subscribers in turn over three nodes. */
  const char *p = strstr(json, "\"servers\":[");
  ck_assert_ptr_nonnull(p);
  for (int i = 0; i < 3; i++) {
    const char *u = strstr(p, g_cl.uris[i]);
    ck_assert_msg(u != NULL, "no count for %s", g_cl.uris[i]);
    long long conns = json_number(u, "connections");
    printf("cluster: bench: %s: %lld connections\n", g_cl.uris[i], conns);
    ck_assert_int_eq(conns, 20);
  }
  ck_assert_int_eq(json_number(json, "lost"), 0);
  /* Subscriber k follows publisher k: 30 x 100 messages. */
  ck_assert_int_eq(json_number(json, "expected"), 30 * 100);
  ck_assert_int_eq(json_number(json, "unique"), 30 * 100);
  test_cluster_cleanup(&g_cl);
}
END_TEST

Suite *uvmqtt_test_suite(void) {
  Suite *s = suite_create("cluster");
  /* One case per test, so CK_RUN_CASE picks one. The scenarios bound
   * themselves with watchdogs; the case timeout is the last resort. */
  TCase *tc = tcase_create("failover");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, cluster_failover_no_loss);
  suite_add_tcase(s, tc);
  tc = tcase_create("shared");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, cluster_shared_subscription);
  suite_add_tcase(s, tc);
  tc = tcase_create("storm");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, cluster_reconnect_storm);
  suite_add_tcase(s, tc);
  tc = tcase_create("deadline");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, cluster_deadline_while_all_down);
  suite_add_tcase(s, tc);
  tc = tcase_create("bench");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, cluster_bench_spreads_over_nodes);
  suite_add_tcase(s, tc);
  return s;
}
