/* HTTP/1.1 requests and responses as handlers see them.
 *
 * A handler gets an mdm_req_t and must, sooner or later, call exactly one of
 * the mdm_resp_* send functions. It may return first and send from a later
 * callback (thread-pool work, a timer): the request stays valid until it is
 * answered, even if the client has gone away meanwhile (the response is
 * then dropped). Requests on one connection are answered in order
 * (pipelining). Memory for the request comes from req->arena, freed when the
 * response has been handed to the connection. */
#ifndef MDM_HTTP_H
#define MDM_HTTP_H

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/arena.h"
#include "util/buf.h"

typedef struct mdm_server mdm_server_t;
typedef struct mdm_conn mdm_conn_t;
typedef struct mdm_route mdm_route_t;

/* HTTP methods as a bit set, so that a route can accept several. */
enum {
    MDM_GET = 1 << 0,
    MDM_HEAD = 1 << 1,
    MDM_POST = 1 << 2,
    MDM_PUT = 1 << 3,
    MDM_DELETE = 1 << 4,
    MDM_PATCH = 1 << 5,
    MDM_OPTIONS = 1 << 6,
    MDM_OTHER = 1 << 7,
};

typedef struct mdm_header {
    char *name;   /* as received, NUL-terminated */
    char *value;  /* NUL-terminated, surrounding whitespace trimmed */
} mdm_header_t;

#define MDM_MAX_PATH_PARAMS 4

typedef struct mdm_req {
    mdm_server_t *server;
    mdm_conn_t *conn;
    char id[24];                /* request id, also sent as X-Request-Id */
    unsigned method;            /* one MDM_* bit */
    const char *method_name;
    char *target;               /* the request target as received */
    char *path;                 /* target up to '?', not decoded */
    char *query;                /* after '?', not decoded ("" if none) */
    mdm_header_t *headers;
    size_t nheaders;
    bool headers_done;        /* the header block ended (what follows are trailers) */
    unsigned char *body;        /* NUL-terminated for convenience */
    size_t body_len;
    size_t body_cap;            /* bytes allocated for body */
    X509 *peer_cert;            /* verified client certificate or NULL */
    const char *peer_cert_source; /* "tls", "header", or NULL */
    bool peer_cert_ref;         /* peer_cert holds a reference of its own (a TLS
                                   connection's certificate outlived by the request) */
    unsigned char peer_fp[32];  /* SHA-256 of peer_cert's DER when peer_fp_ok (TLS: hashed
                                   once per connection) */
    bool peer_fp_ok;
    int64_t peer_not_before;    /* TLS: peer_cert's validity (seconds since 1970), read once */
    int64_t peer_not_after;     /* per connection; both 0 when unknown */
    char remote_addr[64];       /* "ip:port" */
    bool tls;                   /* arrived over TLS */
    const mdm_route_t *route;   /* the matched route */
    char *params[MDM_MAX_PATH_PARAMS]; /* {name} segments of the route, decoded */
    char *raw_params[MDM_MAX_PATH_PARAMS]; /* the same, as received (not decoded) */
    int nparams;
    mdm_arena_t arena;          /* per-request memory */
    void *auth;                 /* set by the router's authentication (API key) */
    bool prechecked;            /* routed and authorized before its body was read */
    uint64_t start_ns;          /* monotonic time the request was complete */

    /* response state, managed by the http layer */
    int status;
    mdm_buf_t resp_head;
    mdm_buf_t resp_body;
    bool responded;
    bool dispatched;            /* handed to its route (once) */
    bool held;                  /* answered while a store batch was open */
    bool accounted;             /* counted and logged (once, with its final status) */
    bool no_hold;               /* the answer tells of no stored change: it is
                                   sent without waiting for the batch commit */
    bool close_after;
    struct mdm_req *next;       /* pipeline order on the connection */
} mdm_req_t;

/* The first header of that name (case-insensitive), or NULL. */
const char *mdm_req_header(const mdm_req_t *req, const char *name);

/* Finds a query parameter and appends its percent-decoded value to out.
 * plus_is_space selects form decoding. Returns 0, MDM_ENOTFOUND or
 * MDM_EPARSE. */
int mdm_req_query(const mdm_req_t *req, const char *name, mdm_buf_t *out, bool plus_is_space);

/* Finds a query parameter and points *value at its bytes as received (not
 * decoded, *len of them). Returns 0 or MDM_ENOTFOUND. */
int mdm_req_query_raw(const mdm_req_t *req, const char *name, const char **value, size_t *len);

/* True when a query parameter name appears more than once; *name and *len
 * then give that name (not decoded, pointing into req->query). */
bool mdm_req_query_repeated(mdm_req_t *req, const char **name, size_t *len);

/* Adds a response header (before sending). */
void mdm_resp_header(mdm_req_t *req, const char *name, const char *value);

/* Sends the response: status, Content-Type (NULL for none) and a body that
 * is copied. */
void mdm_resp_send(mdm_req_t *req, int status, const char *ctype, const void *body, size_t len);

/* Sends a text/plain response. */
void mdm_resp_text(mdm_req_t *req, int status, const char *text);

/* Sends {"error": error, "detail": detail} as application/json. */
void mdm_resp_json_error(mdm_req_t *req, int status, const char *error, const char *detail);

/* Sends the body accumulated in req->resp_body. */
void mdm_resp_send_buf(mdm_req_t *req, int status, const char *ctype);

/* The reason phrase of a status code. */
const char *mdm_http_reason(int status);

/* True while the client connection is still open. */
bool mdm_req_conn_open(const mdm_req_t *req);

/* Parses and reads no further request of req's connection until req is
 * answered: for a handler that answers from a later callback and whose
 * effects the connection's next request must see (pipelined requests are
 * otherwise handled while an earlier one waits). */
void mdm_req_pause_pipeline(mdm_req_t *req);

#endif
