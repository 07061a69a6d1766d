#include "net/router.h"

#include <string.h>
#include <strings.h>

#include "util/alloc.h"
#include "util/encode.h"

void mdm_router_init(mdm_router_t *r)
{
    memset(r, 0, sizeof(*r));
}

void mdm_router_free(mdm_router_t *r)
{
    mdm_free(r->routes);
    memset(r, 0, sizeof(*r));
}

void mdm_router_add(mdm_router_t *r, unsigned methods, const char *pattern, mdm_handler_fn fn,
                    int auth, const char *name)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 32;
        r->routes = mdm_realloc(r->routes, r->cap * sizeof(*r->routes));
    }
    r->routes[r->n] = (mdm_route_t){
        .methods = methods, .pattern = pattern, .fn = fn, .auth = auth, .name = name, .index = r->n};
    r->n++;
}

unsigned mdm_method_bit(const char *name)
{
    static const struct {
        const char *name;
        unsigned bit;
    } map[] = {{"GET", MDM_GET},       {"HEAD", MDM_HEAD},     {"POST", MDM_POST},
               {"PUT", MDM_PUT},       {"DELETE", MDM_DELETE}, {"PATCH", MDM_PATCH},
               {"OPTIONS", MDM_OPTIONS}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].name, name) == 0)
            return map[i].bit;
    return MDM_OTHER;
}

/* Matches path against pattern; collects {param} segments into req. */
static bool match(const char *pattern, const char *path, mdm_req_t *req)
{
    const char *p = pattern, *s = path;
    int np = 0;
    while (*p) {
        if (p[0] == '*' && p[1] == '\0')
            return true;
        if (*p == '{') {
            const char *close = strchr(p, '}');
            if (close == NULL)
                return false;
            const char *end = strchr(s, '/');
            size_t len = end ? (size_t)(end - s) : strlen(s);
            if (len == 0 || np >= MDM_MAX_PATH_PARAMS)
                return false;
            if (req != NULL) {
                mdm_buf_t dec = MDM_BUF_INIT;
                if (mdm_url_decode(&dec, s, len, 0) != 0) {
                    mdm_buf_free(&dec);
                    return false;
                }
                req->params[np] = mdm_arena_memdup(&req->arena, dec.data, dec.len);
                req->raw_params[np] = mdm_arena_memdup(&req->arena, s, len);
                mdm_buf_free(&dec);
            }
            np++;
            s += len;
            p = close + 1;
            continue;
        }
        if (*p != *s)
            return false;
        p++;
        s++;
    }
    if (*s != '\0')
        return false;
    if (req != NULL)
        req->nparams = np;
    return true;
}

const mdm_route_t *mdm_router_match(const mdm_router_t *r, mdm_req_t *req, int *status)
{
    bool path_found = false;
    unsigned method = req->method;
    for (size_t i = 0; i < r->n; i++) {
        const mdm_route_t *rt = &r->routes[i];
        if (!match(rt->pattern, req->path, NULL))
            continue;
        path_found = true;
        unsigned m = method;
        /* HEAD is served by GET routes. */
        if (m == MDM_HEAD && !(rt->methods & MDM_HEAD))
            m = MDM_GET;
        if (!(rt->methods & m))
            continue;
        /* The parameters are decoded now; a bad escape (or %00) in one
         * makes the request bad, not a match without its parameters. */
        if (!match(rt->pattern, req->path, req)) {
            *status = 400;
            return NULL;
        }
        *status = 200;
        return rt;
    }
    *status = path_found ? 405 : 404;
    return NULL;
}
