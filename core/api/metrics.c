#include "api/metrics.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "util/alloc.h"

struct mdm_metric {
    mdm_metric_t *next;
    int kind;
    char *name;
    char *labels;
    char *help;
    int64_t value;
};

#define NBUCKETS 14
static const double bucket_le[NBUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                           0.025,  0.05,    0.1,    0.25,  0.5,    1.0,  5.0};

struct mdm_histogram {
    mdm_histogram_t *next;
    char *name;
    char *labels;
    char *help;
    uint64_t buckets[NBUCKETS];
    uint64_t count;
    uint64_t sum_ns;
};

/* The registry is written at registration (loop thread) and read by the
 * renderer; values are updated atomically from any thread. */
static mdm_metric_t *metrics_head;
static mdm_histogram_t *histograms_head;

mdm_metric_t *mdm_metric(int kind, const char *name, const char *labels, const char *help)
{
    if (labels == NULL)
        labels = "";
    mdm_metric_t **pp = &metrics_head;
    for (; *pp != NULL; pp = &(*pp)->next) {
        mdm_metric_t *m = *pp;
        if (strcmp(m->name, name) == 0 && strcmp(m->labels, labels) == 0)
            return m;
    }
    mdm_metric_t *m = mdm_calloc(1, sizeof(*m));
    m->kind = kind;
    m->name = mdm_strdup(name);
    m->labels = mdm_strdup(labels);
    m->help = mdm_strdup(help ? help : "");
    *pp = m;
    return m;
}

void mdm_metric_add(mdm_metric_t *m, int64_t v)
{
    if (m)
        __atomic_add_fetch(&m->value, v, __ATOMIC_RELAXED);
}

void mdm_metric_set(mdm_metric_t *m, int64_t v)
{
    if (m)
        __atomic_store_n(&m->value, v, __ATOMIC_RELAXED);
}

int64_t mdm_metric_value(const mdm_metric_t *m)
{
    return m ? __atomic_load_n(&m->value, __ATOMIC_RELAXED) : 0;
}

mdm_histogram_t *mdm_histogram(const char *name, const char *labels, const char *help)
{
    if (labels == NULL)
        labels = "";
    for (mdm_histogram_t *h = histograms_head; h != NULL; h = h->next)
        if (strcmp(h->name, name) == 0 && strcmp(h->labels, labels) == 0)
            return h;
    mdm_histogram_t *h = mdm_calloc(1, sizeof(*h));
    h->name = mdm_strdup(name);
    h->labels = mdm_strdup(labels);
    h->help = mdm_strdup(help ? help : "");
    h->next = histograms_head;
    histograms_head = h;
    return h;
}

void mdm_histogram_observe_ns(mdm_histogram_t *h, uint64_t ns)
{
    if (h == NULL)
        return;
    double sec = (double)ns / 1e9;
    for (int i = 0; i < NBUCKETS; i++) {
        if (sec <= bucket_le[i]) {
            __atomic_add_fetch(&h->buckets[i], 1, __ATOMIC_RELAXED);
            break;
        }
    }
    __atomic_add_fetch(&h->count, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->sum_ns, ns, __ATOMIC_RELAXED);
}

const char *mdm_metric_label(char *buf, size_t n, const char *name, const char *value)
{
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_buf_printf(&b, "%s=\"", name);
    for (const char *c = value; *c; c++) {
        if (*c == '\\' || *c == '"')
            mdm_buf_printf(&b, "\\%c", *c);
        else if (*c == '\n')
            mdm_buf_puts(&b, "\\n");
        else
            mdm_buf_putc(&b, *c);
    }
    mdm_buf_putc(&b, '"');
    snprintf(buf, n, "%.*s", (int)b.len, b.data);
    mdm_buf_free(&b);
    return buf;
}

static void render_labels(mdm_buf_t *out, const char *labels, const char *extra)
{
    if (!labels[0] && !extra)
        return;
    mdm_buf_putc(out, '{');
    mdm_buf_puts(out, labels);
    if (extra) {
        if (labels[0])
            mdm_buf_putc(out, ',');
        mdm_buf_puts(out, extra);
    }
    mdm_buf_putc(out, '}');
}

void mdm_metrics_render(mdm_buf_t *out)
{
    /* Group series by name: emit HELP/TYPE once per name. */
    for (mdm_metric_t *m = metrics_head; m != NULL; m = m->next) {
        bool first = true;
        for (mdm_metric_t *p = metrics_head; p != m; p = p->next)
            if (strcmp(p->name, m->name) == 0) {
                first = false;
                break;
            }
        if (!first)
            continue;
        mdm_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
                       m->kind == MDM_METRIC_COUNTER ? "counter" : "gauge");
        for (mdm_metric_t *p = m; p != NULL; p = p->next) {
            if (strcmp(p->name, m->name) != 0)
                continue;
            mdm_buf_puts(out, p->name);
            render_labels(out, p->labels, NULL);
            mdm_buf_printf(out, " %lld\n", (long long)mdm_metric_value(p));
        }
    }
    for (mdm_histogram_t *h = histograms_head; h != NULL; h = h->next) {
        mdm_buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
        uint64_t cum = 0;
        for (int i = 0; i < NBUCKETS; i++) {
            cum += __atomic_load_n(&h->buckets[i], __ATOMIC_RELAXED);
            char le[48];
            snprintf(le, sizeof(le), "le=\"%g\"", bucket_le[i]);
            mdm_buf_printf(out, "%s_bucket", h->name);
            render_labels(out, h->labels, le);
            mdm_buf_printf(out, " %llu\n", (unsigned long long)cum);
        }
        uint64_t count = __atomic_load_n(&h->count, __ATOMIC_RELAXED);
        mdm_buf_printf(out, "%s_bucket", h->name);
        render_labels(out, h->labels, "le=\"+Inf\"");
        mdm_buf_printf(out, " %llu\n", (unsigned long long)count);
        mdm_buf_printf(out, "%s_sum", h->name);
        render_labels(out, h->labels, NULL);
        mdm_buf_printf(out, " %.9f\n",
                       (double)__atomic_load_n(&h->sum_ns, __ATOMIC_RELAXED) / 1e9);
        mdm_buf_printf(out, "%s_count", h->name);
        render_labels(out, h->labels, NULL);
        mdm_buf_printf(out, " %llu\n", (unsigned long long)count);
    }
}

void mdm_metrics_reset(void)
{
    while (metrics_head) {
        mdm_metric_t *m = metrics_head;
        metrics_head = m->next;
        mdm_free(m->name);
        mdm_free(m->labels);
        mdm_free(m->help);
        mdm_free(m);
    }
    while (histograms_head) {
        mdm_histogram_t *h = histograms_head;
        histograms_head = h->next;
        mdm_free(h->name);
        mdm_free(h->labels);
        mdm_free(h->help);
        mdm_free(h);
    }
}
