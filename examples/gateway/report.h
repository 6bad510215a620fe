/* The gateway demo's output: the live progress line and the final table
 * (or the same figures as one JSON object). */
#ifndef GATEWAY_REPORT_H
#define GATEWAY_REPORT_H

#include <stdio.h>

#include "fleet.h"

typedef struct {
  uint32_t devices;
  gw_tally_t tally;
  uint64_t duplicates;
  uint64_t reconnects;
  uint64_t attempts;
} gw_kind_report_t;

typedef struct {
  gw_kind_report_t kind[GW_KINDS];
  const char *summary[GW_KINDS];
  uint32_t duration_s;
  double elapsed_s;
  uint32_t cut_events;
  uint64_t connections_cut;
  double blackhole_s;
  uint32_t broker_restarts;
  uint64_t stray;
  int drained;     /* every message had an outcome and arrived, before the end */
  int interrupted; /* stopped early by a signal */
} gw_report_t;

/* Fills the per-kind figures from the fleet. Call before the clients close:
 * their connection counters go with them. */
void gw_report_collect(gw_report_t *r, const gw_fleet_t *f);

/* One line: time, condition, devices online, sent/received per kind. */
void gw_report_progress(char *buf, size_t cap, const gw_fleet_t *f, double t,
                        const char *condition);

void gw_report_table(FILE *out, const gw_report_t *r);
void gw_report_json(FILE *out, const gw_report_t *r);

#endif
