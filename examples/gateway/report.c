/* The gateway demo's output; see report.h. */
#include "report.h"

#include <string.h>

void gw_report_collect(gw_report_t *r, const gw_fleet_t *f) {
  for (int k = 0; k < GW_KINDS; k++) {
    gw_kind_report_t *kr = &r->kind[k];
    memset(kr, 0, sizeof *kr);
    kr->devices = f->count[k];
    kr->duplicates = f->live[k].duplicates;
    r->summary[k] = f->profile[k].summary;
    uvmqtt_stats_t st;
    gw_fleet_stats(f, k, &st);
    kr->reconnects = st.reconnects;
    kr->attempts = st.attempts;
  }
  for (uint32_t i = 0; i < f->total; i++) {
    const gw_device_t *d = &f->devices[i];
    gw_track_tally(&d->track, &r->kind[d->kind].tally);
  }
}

void gw_report_progress(char *buf, size_t cap, const gw_fleet_t *f, double t,
                        const char *condition) {
  uint32_t online = 0, queued = 0;
  for (int k = 0; k < GW_KINDS; k++) {
    uvmqtt_stats_t st;
    gw_fleet_stats(f, k, &st);
    online += st.connected;
    queued += st.queued + st.inflight;
  }
  const gw_live_t *l = f->live;
  snprintf(buf, cap,
           "%5.1fs %-11s online %3u/%-3u  sent/received: sensor %llu/%llu  button %llu/%llu  "
           "alarm %llu/%llu  waiting %u",
           t, condition, online, f->total, (unsigned long long)l[GW_SENSOR].sent,
           (unsigned long long)l[GW_SENSOR].received, (unsigned long long)l[GW_BUTTON].sent,
           (unsigned long long)l[GW_BUTTON].received, (unsigned long long)l[GW_ALARM].sent,
           (unsigned long long)l[GW_ALARM].received, queued);
}

void gw_report_table(FILE *out, const gw_report_t *r) {
  fprintf(out, "\n%-7s %7s %7s %9s %7s %7s %5s %5s %10s %8s\n", "kind", "devices", "sent",
          "delivered", "dropped", "expired", "lost", "dup", "reconnects", "attempts");
  for (int k = 0; k < GW_KINDS; k++) {
    const gw_kind_report_t *kr = &r->kind[k];
    const gw_tally_t *t = &kr->tally;
    fprintf(out, "%-7s %7u %7llu %9llu %7llu %7llu %5llu %5llu %10llu %8llu\n", gw_kind_name(k),
            kr->devices, (unsigned long long)t->sent, (unsigned long long)t->delivered,
            (unsigned long long)t->dropped, (unsigned long long)t->expired,
            (unsigned long long)t->lost, (unsigned long long)kr->duplicates,
            (unsigned long long)kr->reconnects, (unsigned long long)kr->attempts);
  }
  fprintf(out, "\n");
  for (int k = 0; k < GW_KINDS; k++)
    fprintf(out, "  %-7s %s\n", gw_kind_name(k), r->summary[k] ? r->summary[k] : "");
  fprintf(out, "\n  delivered: reached the subscriber; dropped/expired: given up by the delivery\n"
               "  policy; lost: none of those (must be 0 for alarms); dup: extra copies\n"
               "  (at least once); attempts: connection attempts, the battery's cost.\n");
  fprintf(out,
          "\n  faults: %u cut%s (%llu connections), %.1f s black hole, %u broker restart%s; "
          "%.1f s in all%s\n",
          r->cut_events, r->cut_events == 1 ? "" : "s", (unsigned long long)r->connections_cut,
          r->blackhole_s, r->broker_restarts, r->broker_restarts == 1 ? "" : "s", r->elapsed_s,
          r->interrupted ? " (interrupted)" : "");
  if (r->stray) fprintf(out, "  %llu messages matched no device\n", (unsigned long long)r->stray);
  if (!r->drained) fprintf(out, "  some messages were still on their way at the end\n");
  uint64_t lost = r->kind[GW_ALARM].tally.lost;
  fprintf(out, "\nalarms lost: %llu -> %s\n", (unsigned long long)lost, lost == 0 ? "OK" : "FAIL");
}

void gw_report_json(FILE *out, const gw_report_t *r) {
  fprintf(out, "{\"duration_s\":%u,\"elapsed_s\":%.1f,", r->duration_s, r->elapsed_s);
  fprintf(out,
          "\"faults\":{\"cuts\":%u,\"connections_cut\":%llu,\"blackhole_s\":%.1f,"
          "\"broker_restarts\":%u},",
          r->cut_events, (unsigned long long)r->connections_cut, r->blackhole_s,
          r->broker_restarts);
  fprintf(out, "\"kinds\":{");
  for (int k = 0; k < GW_KINDS; k++) {
    const gw_kind_report_t *kr = &r->kind[k];
    const gw_tally_t *t = &kr->tally;
    fprintf(out,
            "%s\"%s\":{\"devices\":%u,\"policy\":\"%s\",\"sent\":%llu,\"delivered\":%llu,"
            "\"dropped\":%llu,\"expired\":%llu,\"lost\":%llu,\"duplicates\":%llu,"
            "\"reconnects\":%llu,\"attempts\":%llu}",
            k ? "," : "", gw_kind_name(k), kr->devices, r->summary[k] ? r->summary[k] : "",
            (unsigned long long)t->sent, (unsigned long long)t->delivered,
            (unsigned long long)t->dropped, (unsigned long long)t->expired,
            (unsigned long long)t->lost, (unsigned long long)kr->duplicates,
            (unsigned long long)kr->reconnects, (unsigned long long)kr->attempts);
  }
  uint64_t lost = r->kind[GW_ALARM].tally.lost;
  fprintf(out,
          "},\"stray\":%llu,\"drained\":%s,\"interrupted\":%s,\"alarms_lost\":%llu,"
          "\"ok\":%s}\n",
          (unsigned long long)r->stray, r->drained ? "true" : "false",
          r->interrupted ? "true" : "false", (unsigned long long)lost,
          lost == 0 && !r->interrupted ? "true" : "false");
}
