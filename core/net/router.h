/* The router: method + path to a handler. Patterns are exact paths
 * ("/healthz"), paths with parameters ("/v1/devices/{id}", one segment per
 * parameter) or prefixes ("/static/" + "*"). Routes are tried in the order
 * they were added; a path that matches but not for the method gives 405.
 *
 * Every route names who may call it (auth). The router enforces it before
 * the handler runs, so a handler never sees an unauthenticated admin
 * request; tests walk the table to prove that each /v1 route needs a key. */
#ifndef MDM_ROUTER_H
#define MDM_ROUTER_H

#include <stddef.h>

#include "net/http.h"

typedef void (*mdm_handler_fn)(mdm_req_t *req);

enum mdm_route_auth {
    MDM_AUTH_PUBLIC = 0,     /* anyone (health, SCEP, enrollment page) */
    MDM_AUTH_API_READ = 1,   /* an admin API key with at least the read-only role */
    MDM_AUTH_API_ADMIN = 2,  /* an admin API key with the admin role */
    MDM_AUTH_DEVICE = 3,     /* a verified device certificate (mTLS, header or signature) */
};

struct mdm_route {
    unsigned methods;        /* MDM_GET | ... */
    const char *pattern;
    mdm_handler_fn fn;
    int auth;                /* enum mdm_route_auth */
    const char *name;        /* label for metrics and logs */
    size_t index;            /* position in the table (set by the router) */
    /* The request counters of the statuses seen most, so that counting a
     * request needs no lookup by name (filled by the HTTP layer). */
    struct {
        int status;
        struct mdm_metric *metric;
    } status_cache[8];
};

typedef struct mdm_router {
    mdm_route_t *routes;
    size_t n;
    size_t cap;
} mdm_router_t;

void mdm_router_init(mdm_router_t *r);
void mdm_router_free(mdm_router_t *r);

/* Adds a route; the pattern and name strings must outlive the router. */
void mdm_router_add(mdm_router_t *r, unsigned methods, const char *pattern, mdm_handler_fn fn,
                    int auth, const char *name);

/* Finds the route for req->method and req->path and fills req->params.
 * Returns the route, or NULL with *status set to 404, 405, or 400 when a
 * parameter does not decode (a bad percent-escape or %00). */
const mdm_route_t *mdm_router_match(const mdm_router_t *r, mdm_req_t *req, int *status);

/* The MDM_* bit for a method name, or MDM_OTHER. */
unsigned mdm_method_bit(const char *name);

#endif
