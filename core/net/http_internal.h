/* What the server object needs from the HTTP connection layer. */
#ifndef MDM_HTTP_INTERNAL_H
#define MDM_HTTP_INTERNAL_H

#include "server.h"

/* Accepts one pending connection on the listener. */
void mdm__conn_accept(mdm_server_t *s, mdm_listener_t *l);

/* Closes a connection now (in-flight requests are answered into the void). */
void mdm__conn_close(mdm_conn_t *c);

/* True when no request is in progress on the connection. */
bool mdm__conn_idle(const mdm_conn_t *c);

/* Asks the connection to close once its current requests are answered. */
void mdm__conn_close_when_done(mdm_conn_t *c);

/* Sends the responses that waited for the batch commit; failed = the
 * commit failed, so held responses become 503. */
void mdm__conn_release_held(mdm_conn_t *c, bool failed);

/* The next connection in the server's list. */
mdm_conn_t *mdm__conn_next(const mdm_conn_t *c);

/* The next connection in the server's awaiting-commit list (and unlinks
 * nothing: the server clears the list head itself). */
mdm_conn_t *mdm__conn_commit_next(mdm_conn_t *c);

/* The idle callback that runs handshake input held for a later iteration
 * of the loop (s->hs_idle). */
void mdm__conn_run_held_handshakes(uv_idle_t *h);

/* Frees the pool of finished requests (server shutdown). */
void mdm__http_free_pool(mdm_server_t *s);

#endif
