/* --plot: throughput over time and the latency distribution, drawn by
 * gnuplot from data files in a temporary directory. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

static const char *terminal_for(const char *path) {
  const char *dot = strrchr(path, '.');
  if (dot && strcmp(dot, ".png") == 0) return "pngcairo size 1000,800";
  if (dot && strcmp(dot, ".svg") == 0) return "svg size 1000,800 dynamic";
  return NULL;
}

int bench_plot_check(const char *path) {
  if (terminal_for(path) == NULL) {
    fprintf(stderr, "--plot: '%s' must end in .png or .svg\n", path);
    return -1;
  }
  if (system("gnuplot --version >/dev/null 2>&1") != 0) {
    fprintf(stderr, "--plot needs gnuplot, which was not found on PATH "
                    "(Debian: apt-get install gnuplot-nox)\n");
    return -1;
  }
  return 0;
}

static int write_series(const bench_t *b, const char *file) {
  FILE *f = fopen(file, "w");
  if (f == NULL) return -1;
  fprintf(f, "# t_s published_per_s received_per_s\n");
  for (size_t i = 0; i < b->r.nsamples; i++)
    fprintf(f, "%.3f %llu %llu\n", b->r.samples[i].t, (unsigned long long)b->r.samples[i].pub,
            (unsigned long long)b->r.samples[i].recv);
  return fclose(f);
}

/* HdrHistogram's percentile plot: x is 1/(1-p), so each extra nine of the
 * percentile gets the same width on a log axis. */
static int write_distribution(const hist_t *h, const char *file) {
  FILE *f = fopen(file, "w");
  if (f == NULL) return -1;
  fprintf(f, "# one_over_1_minus_p latency_us percentile\n");
  for (int i = 0; i <= 600; i++) {
    double x = pow(10.0, i / 100.0);
    double p = 100.0 * (1.0 - 1.0 / x);
    /* Past the point where one sample covers the rest, the line is flat. */
    if ((1.0 - p / 100.0) * (double)h->count < 1.0) break;
    fprintf(f, "%.6f %.3f %.6f\n", x, (double)hist_percentile(h, p) / 1000.0, p);
  }
  fprintf(f, "%.6f %.3f 100\n", (double)h->count, (double)h->max / 1000.0);
  return fclose(f);
}

int bench_plot(const bench_t *b, const char *path) {
  const char *term = terminal_for(path);
  if (term == NULL) return -1;
  char dir[] = "/tmp/uvmqtt-bench-plot.XXXXXX";
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return -1;
  }
  char series[64], dist[64], script[64];
  snprintf(series, sizeof series, "%s/series.dat", dir);
  snprintf(dist, sizeof dist, "%s/latency.dat", dir);
  snprintf(script, sizeof script, "%s/plot.gp", dir);
  const hist_t *h = b->r.latency.count ? &b->r.latency : &b->r.connect_lat;
  const char *hname = b->r.latency.count ? "end-to-end latency" : "connect latency";
  int ok = write_series(b, series) == 0 && (h->count == 0 || write_distribution(h, dist) == 0);
  FILE *f = ok ? fopen(script, "w") : NULL;
  if (f) {
    fprintf(f, "set terminal %s\nset output '%s'\n", term, path);
    fprintf(f, "set multiplot layout 2,1 title '%s %s: %u client(s), QoS %d, %u bytes'\n",
            b->drv->name, b->o->cmd_name, b->o->clients, b->o->qos, b->o->size);
    fprintf(f, "set grid\nset key top right\nset title 'throughput'\n"
               "set xlabel 'seconds'\nset ylabel 'messages/s'\nset yrange [0:*]\n");
    if (b->r.nsamples)
      fprintf(f,
              "plot '%s' using 1:2 with linespoints title 'published', "
              "'' using 1:3 with linespoints title 'received'\n",
              series);
    else
      fprintf(f, "set label 1 'no samples (the measured phase was under a second)' at "
                 "graph 0.5,0.5 center\nplot NaN notitle\nunset label 1\n");
    fprintf(f,
            "set title '%s distribution'\nset logscale x\nset xlabel 'percentile'\n"
            "set ylabel 'microseconds'\nset yrange [0:*]\n"
            /* Tic labels are gnuplot formats too: a percent sign is doubled
             * once for printf and once for gnuplot. */
            "set xtics ('0%%%%' 1, '90%%%%' 10, '99%%%%' 100, '99.9%%%%' 1000, "
            "'99.99%%%%' 10000, '99.999%%%%' 100000, '99.9999%%%%' 1000000)\n",
            hname);
    if (h->count)
      fprintf(f, "plot '%s' using 1:2 with steps title '%s'\n", dist, hname);
    else
      fprintf(f, "set xrange [1:1000]\nset label 1 'no latency samples' at graph 0.5,0.5 "
                 "center\nplot NaN notitle\n");
    fprintf(f, "unset multiplot\n");
    ok = fclose(f) == 0;
  }
  int status = -1;
  if (ok) {
    char cmd[160];
    snprintf(cmd, sizeof cmd, "gnuplot '%s'", script);
    status = system(cmd) == 0 ? 0 : -1;
    if (status < 0) fprintf(stderr, "--plot: gnuplot failed on %s\n", script);
  } else {
    fprintf(stderr, "--plot: could not write the data files in %s\n", dir);
  }
  unlink(series);
  unlink(dist);
  unlink(script);
  rmdir(dir);
  return status;
}
