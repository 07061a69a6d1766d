/* Metrics in the Prometheus text format. Counters and gauges are registered
 * once by name and labels and then updated through the returned pointer
 * (atomically, so thread-pool work may update them too). */
#ifndef MDM_METRICS_H
#define MDM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

typedef struct mdm_metric mdm_metric_t;

enum mdm_metric_kind { MDM_METRIC_COUNTER, MDM_METRIC_GAUGE };

/* Returns the metric for name + labels (e.g. `route="healthz",status="200"`),
 * creating it on first use. help is used for the first registration of the
 * name. The pointer stays valid until mdm_metrics_reset(). */
mdm_metric_t *mdm_metric(int kind, const char *name, const char *labels, const char *help);

/* Writes `name="value"` into buf (n bytes) with value escaped as the text
 * format wants (backslash, double quote, newline), for values that come
 * from outside such as a push topic; cut short if buf is too small.
 * Returns buf. */
const char *mdm_metric_label(char *buf, size_t n, const char *name, const char *value);

void mdm_metric_add(mdm_metric_t *m, int64_t v);
void mdm_metric_set(mdm_metric_t *m, int64_t v);
int64_t mdm_metric_value(const mdm_metric_t *m);

/* A latency histogram with fixed buckets in seconds. */
typedef struct mdm_histogram mdm_histogram_t;
mdm_histogram_t *mdm_histogram(const char *name, const char *labels, const char *help);
void mdm_histogram_observe_ns(mdm_histogram_t *h, uint64_t ns);

/* Appends every metric in the exposition format. */
void mdm_metrics_render(mdm_buf_t *out);

/* Frees everything (tests, shutdown). */
void mdm_metrics_reset(void);

#endif
