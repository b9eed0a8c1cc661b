/* http.c: the Open Inference Protocol v2 HTTP front on libmicrohttpd (never NNG's HTTP
 * server): routing, limits, authentication, suspension of connections while a call is
 * in flight, and the reaper that cuts off slow senders.
 *
 * Not for: JSON <-> tensor translation (gateway/oip.c), metric storage
 * (gateway/metrics.c), or anything about workers (behind gw_http_callbacks).
 *
 * libmicrohttpd is called through gateway/mhd.h's table (loaded, not linked).
 *
 * Threads: MHD runs `threads` internal epoll threads; every callback below runs on one
 * of them. gw_http_complete runs on the gateway's threads. The reaper thread wakes every
 * 200 ms: it cuts off slow senders and tells the front (client_gone) of clients that
 * went away while their call waited. One mutex (h->mu) guards the connection list, call
 * states and counters. */
#include "gateway/http.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/tunables.h"
#include "gateway/mhd.h"

/* ---- Types ---- */

/* One TCP connection, for the reaper (receive deadlines, clients gone). */
typedef struct ht_conn {
    struct ht_conn *prev, *next;
    int fd;            /* our dup of the socket: shutdown() on it never hits a reused fd */
    uint64_t since_us; /* start of the request being received: its request line, or for the
                          first one the connection (ht_uri_arrived, ht_notify_connection) */
    bool receiving;    /* a request is arriving (headers or body): the deadline applies */
    struct gw_http_call *waiting; /* its call, while suspended and not completed */
} ht_conn;

typedef enum ht_route {
    RT_NONE,
    RT_LIVE,
    RT_READY,
    RT_SERVER,
    RT_METRICS,
    RT_MODEL_META,
    RT_MODEL_READY,
    RT_INFER,
    RT_REPO_INDEX,
    RT_LOAD,
    RT_UNLOAD,
} ht_route;

static const char *const ht_route_names[] = {
    [RT_NONE] = "unknown",
    [RT_LIVE] = "live",
    [RT_READY] = "ready",
    [RT_SERVER] = "server",
    [RT_METRICS] = "metrics",
    [RT_MODEL_META] = "model",
    [RT_MODEL_READY] = "model_ready",
    [RT_INFER] = "infer",
    [RT_REPO_INDEX] = "index",
    [RT_LOAD] = "load",
    [RT_UNLOAD] = "unload",
};

typedef enum ht_state { ST_RECEIVING, ST_DISCARD, ST_WAITING, ST_DONE } ht_state;

/* One request. Created on the first access-handler call, freed when MHD reports the
 * request completed. While WAITING it is the gw_http_call handed to the gateway. */
struct gw_http_call {
    gw_http *h;
    struct MHD_Connection *conn;
    ht_route route;
    ht_state state;
    char model[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t version;
    char *key;
    gw_http_principal who;
    bool have_who;
    bool admitted;         /* infer: admitted against the caller's limits at its head (precheck) */
    bool submitted;        /* infer: handed to cb.infer, which records it from then on */
    bool outputs_declared; /* infer: the function declares its outputs (checked before it ran) */
    uint8_t *body;
    size_t len, cap, reserved; /* reserved: bytes counted in h->buffered */
    size_t input_copy;         /* of those, the gateway's copy of the inputs (freed once the call ran) */
    size_t announced;          /* Content-Length (0: none): the buffer grows up to it */
    size_t discarded;          /* body bytes dropped after the limit was passed */
    uint64_t received_us;
    oip_request req;
    bool suspended, completed;
    ht_conn *k;            /* its connection's, while suspended (k->waiting is this call) */
    uint64_t cancel_token; /* gw_http_set_cancel_token's (0: none) */
    bool gone;             /* client_gone was called for it */
    /* the answer, once known */
    unsigned status;
    int code; /* AICFN_E_* of an error answer (0: none) */
    uint8_t *resp;
    size_t resp_len;
    size_t json_len; /* < resp_len: binary tensor data follows */
    const char *content_type;
    uint32_t retry_after_s;
    bool cold;
    bool keep_alive; /* refused before its body: none follows, so the connection may stay */
    bool drain_ok;   /* refused before its body for a reason a client retries (its rate): a
                        small announced body is read and dropped so that the connection
                        stays and the client gets its answer (ht_access) */
};

struct gw_http {
    struct MHD_Daemon *d;
    gw_http_config cfg;
    gw_http_callbacks cb;
    char version[64];
    uint16_t port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t scrape_mu; /* one /metrics refresh + render at a time */
    ht_conn *conns;
    unsigned in_flight;
    unsigned in_sync;     /* under mu: ht_access calls inside ht_begin or ht_dispatch, which may
                             call the gateway's callbacks: gw_http_stop waits for them */
    atomic_bool stopping; /* written under mu; read anywhere */
    bool detached;        /* under mu: gw_http_stop returned with calls in flight; cfg's
                             metrics and std may be gone */
    MHD_socket quiesced;  /* the listen socket MHD_quiesce_daemon gave back (closed after
                             MHD_stop_daemon), or MHD_INVALID_SOCKET */
    atomic_size_t buffered;
    pthread_t reaper;
    bool reaper_started;
};

/* ---- Names ---- */

bool gw_http_model_name_ok(const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > AICFN_FN_NAME_MAX_BYTES) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '-'))) return false;
    }
    return true;
}

/* ---- Routing ---- */

/* Splits the (already percent-decoded) path into at most 8 segments of at most 255
 * bytes. Returns the count, or -1 when the path has more, longer or empty segments. */
static int ht_split(const char *url, char seg[8][256]) {
    if (url[0] != '/') return -1;
    const char *p = url + 1;
    int n = 0;
    if (*p == '\0') return 0;
    for (;;) {
        const char *e = strchr(p, '/');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == 0 || l > 255 || n == 8) return -1;
        memcpy(seg[n], p, l);
        seg[n][l] = '\0';
        n++;
        if (e == NULL) return n;
        p = e + 1;
    }
}

static int ht_parse_version(const char *s, uint32_t *out) {
    size_t n = strlen(s);
    if (n == 0 || n > 10) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v == 0 || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Resolves method + path to a route. AICFN_OK, or an error code with a message:
 * AICFN_E_NOT_FOUND (no such endpoint), AICFN_E_INVALID (bad model name or version). A
 * known path with the wrong method gives *bad_method. */
static int ht_route_of(const char *method, const char *url, gw_http_call *r, bool *bad_method,
                       aicfn_error *err) {
    char seg[8][256];
    int n = ht_split(url, seg);
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    *bad_method = false;
    r->route = RT_NONE;
    if (n < 0) return aicfn_error_set(err, AICFN_E_NOT_FOUND, "no such endpoint");
    if (n == 1 && strcmp(seg[0], "metrics") == 0) {
        r->route = RT_METRICS;
        *bad_method = !get;
        return AICFN_OK;
    }
    if (n == 0 || strcmp(seg[0], "v2") != 0)
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "no such endpoint");
    if (n == 1) {
        r->route = RT_SERVER;
        *bad_method = !get;
        return AICFN_OK;
    }
    if (n == 3 && strcmp(seg[1], "health") == 0 &&
        (strcmp(seg[2], "live") == 0 || strcmp(seg[2], "ready") == 0)) {
        r->route = seg[2][0] == 'l' ? RT_LIVE : RT_READY;
        *bad_method = !get;
        return AICFN_OK;
    }
    if (strcmp(seg[1], "models") == 0 && n >= 3) {
        int i = 3;
        if (!gw_http_model_name_ok(seg[2]))
            return aicfn_error_set(err, AICFN_E_INVALID,
                                   "invalid model name (1..%d of [A-Za-z0-9_.-], starting "
                                   "with a letter or digit)",
                                   AICFN_FN_NAME_MAX_BYTES);
        snprintf(r->model, sizeof r->model, "%s", seg[2]);
        r->version = 0;
        if (n >= 5 && strcmp(seg[3], "versions") == 0) {
            if (ht_parse_version(seg[4], &r->version) != 0)
                return aicfn_error_set(err, AICFN_E_INVALID, "invalid model version (a decimal >= 1)");
            i = 5;
        }
        if (n == i) {
            r->route = RT_MODEL_META;
            *bad_method = !get;
            return AICFN_OK;
        }
        if (n == i + 1 && strcmp(seg[i], "ready") == 0) {
            r->route = RT_MODEL_READY;
            *bad_method = !get;
            return AICFN_OK;
        }
        if (n == i + 1 && strcmp(seg[i], "infer") == 0) {
            r->route = RT_INFER;
            *bad_method = !post;
            return AICFN_OK;
        }
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "no such endpoint");
    }
    if (strcmp(seg[1], "repository") == 0) {
        if (n == 3 && strcmp(seg[2], "index") == 0) {
            r->route = RT_REPO_INDEX;
            *bad_method = !post;
            return AICFN_OK;
        }
        if (n == 5 && strcmp(seg[2], "models") == 0 &&
            (strcmp(seg[4], "load") == 0 || strcmp(seg[4], "unload") == 0)) {
            if (!gw_http_model_name_ok(seg[3]))
                return aicfn_error_set(err, AICFN_E_INVALID,
                                       "invalid model name (1..%d of [A-Za-z0-9_.-], "
                                       "starting with a letter or digit)",
                                       AICFN_FN_NAME_MAX_BYTES);
            snprintf(r->model, sizeof r->model, "%s", seg[3]);
            r->route = seg[4][0] == 'l' ? RT_LOAD : RT_UNLOAD;
            *bad_method = !post;
            return AICFN_OK;
        }
    }
    return aicfn_error_set(err, AICFN_E_NOT_FOUND, "no such endpoint");
}

static bool ht_route_has_body(ht_route r) {
    return r == RT_INFER || r == RT_REPO_INDEX || r == RT_LOAD || r == RT_UNLOAD;
}

static bool ht_route_needs_auth(const gw_http *h, ht_route r) {
    if (r == RT_METRICS) return !h->cfg.metrics_public;
    return !(r == RT_LIVE || r == RT_READY || r == RT_SERVER || r == RT_NONE);
}

/* ---- Answers ---- */

static void ht_set_answer(gw_http_call *r, unsigned status, uint8_t *body, size_t len, size_t json_len,
                          const char *ctype) {
    free(r->resp);
    r->status = status;
    r->resp = body;
    r->resp_len = len;
    r->json_len = json_len;
    r->content_type = ctype;
}

static void ht_set_error(gw_http_call *r, int code, const char *msg) {
    char *j = oip_error_json(code, msg && msg[0] ? msg : aicfn_strerror(code));
    unsigned status = (unsigned)aicfn_http_status(code);
    ht_set_answer(r, status, (uint8_t *)j, j ? strlen(j) : 0, j ? strlen(j) : 0, "application/json");
    r->code = code;
    if ((code == AICFN_E_QUOTA || code == AICFN_E_OVERLOADED) && r->retry_after_s == 0) r->retry_after_s = 1;
}

static void ht_set_error_status(gw_http_call *r, unsigned status, int code, const char *msg) {
    char *j = oip_error_json(code, msg);
    ht_set_answer(r, status, (uint8_t *)j, j ? strlen(j) : 0, j ? strlen(j) : 0, "application/json");
    r->code = code;
}

static void ht_set_json(gw_http_call *r, unsigned status, char *json) {
    if (json == NULL) {
        ht_set_error(r, AICFN_E_NOMEM, "out of memory");
        return;
    }
    ht_set_answer(r, status, (uint8_t *)json, strlen(json), strlen(json), "application/json");
}

static void ht_count(gw_http *h, ht_route route, unsigned status) {
    if (h->cfg.std == NULL) return;
    char code[8];
    snprintf(code, sizeof code, "%u", status);
    const char *l[] = {ht_route_names[route], code};
    pthread_mutex_lock(&h->mu); /* a detached server's std may already be freed */
    if (!h->detached) gw_metric_add(h->cfg.std->http_requests, l, 1);
    pthread_mutex_unlock(&h->mu);
}

/* Sends the answer held in r. Runs in the access handler. */
static enum MHD_Result ht_send(gw_http_call *r) {
    if (r->resp == NULL && r->status == 0) ht_set_error(r, AICFN_E_INTERNAL, "no answer");
    struct MHD_Response *resp;
    if (r->resp) {
        resp = gw_mhd()->create_response_from_buffer_with_free_callback(r->resp_len, r->resp, free);
        if (resp) r->resp = NULL; /* now owned by MHD */
    } else {
        resp = gw_mhd()->create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (resp == NULL) return MHD_NO;
    if (r->content_type) gw_mhd()->add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    if (r->json_len < r->resp_len) {
        char v[32];
        snprintf(v, sizeof v, "%zu", r->json_len);
        gw_mhd()->add_response_header(resp, OIP_HEADER_LENGTH, v);
    }
    if (r->retry_after_s && (r->status == 429 || r->status == 503)) {
        char v[16];
        snprintf(v, sizeof v, "%u", (unsigned)r->retry_after_s);
        gw_mhd()->add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    if (r->status == MHD_HTTP_UNAUTHORIZED) /* RFC 9110 15.5.2: how to authenticate */
        gw_mhd()->add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"aicfn\"");
    if (r->status == MHD_HTTP_METHOD_NOT_ALLOWED) /* RFC 9110 15.5.6: what the endpoint takes */
        gw_mhd()->add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
                                ht_route_has_body(r->route) ? "POST" : "GET, HEAD");
    if (r->cold) gw_mhd()->add_response_header(resp, "Aicfn-Cold", "1");
    if (r->state == ST_DISCARD && !r->keep_alive)
        gw_mhd()->add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    ht_count(r->h, r->route, r->status);
    enum MHD_Result ok = gw_mhd()->queue_response(r->conn, r->status, resp);
    gw_mhd()->destroy_response(resp);
    return ok;
}

/* ---- Receive deadline bookkeeping ---- */

static ht_conn *ht_conn_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = gw_mhd()->get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? (ht_conn *)ci->socket_context : NULL;
}

static void ht_mark(gw_http *h, struct MHD_Connection *c, bool receiving) {
    ht_conn *k = ht_conn_of(c);
    if (k == NULL) return;
    pthread_mutex_lock(&h->mu);
    k->receiving = receiving;
    k->since_us = clock_now_us();
    pthread_mutex_unlock(&h->mu);
}

static void ht_notify_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                                 enum MHD_ConnectionNotificationCode toe) {
    gw_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        ht_conn *k = calloc(1, sizeof *k);
        if (k == NULL) return;
        const union MHD_ConnectionInfo *ci = gw_mhd()->get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        k->fd = ci ? fcntl(ci->connect_fd, F_DUPFD_CLOEXEC, 0) : -1;
        k->receiving = true;
        k->since_us = clock_now_us();
        pthread_mutex_lock(&h->mu);
        k->next = h->conns;
        if (h->conns) h->conns->prev = k;
        h->conns = k;
        pthread_mutex_unlock(&h->mu);
        *socket_context = k;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        ht_conn *k = *socket_context;
        if (k == NULL) return;
        pthread_mutex_lock(&h->mu);
        if (k->prev)
            k->prev->next = k->next;
        else
            h->conns = k->next;
        if (k->next) k->next->prev = k->prev;
        pthread_mutex_unlock(&h->mu);
        if (k->fd >= 0) close(k->fd);
        free(k);
        *socket_context = NULL;
    }
}

/* Whether the client on our dup `fd` of a suspended connection went away: it sent its
 * FIN, or the kernel knows the connection failed (a reset). MHD does not watch a
 * suspended connection's socket; a client waiting for its answer sends nothing
 * meanwhile, so anything readable is data (a pipelined request) and the client is still
 * there. Like nginx by default (proxy_ignore_client_abort off), a client that shuts down
 * its sending side after its request (half-close) counts as gone. */
static bool ht_client_gone(int fd) {
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && (errno == ECONNRESET || errno == ETIMEDOUT || errno == EPIPE));
}

/* Reaper, h->mu held: tells the front (client_gone) about the suspended calls whose
 * clients went away, a batch per pass, outside the lock (as in_sync, so gw_http_stop
 * waits for it); a call's completion meanwhile is the front's to sort out (the token). */
static void ht_reap_gone_clients(gw_http *h) {
    enum { BATCH = 64 };
    uint64_t tokens[BATCH];
    size_t n = 0;
    for (ht_conn *k = h->conns; k && n < BATCH; k = k->next) {
        gw_http_call *r = k->waiting;
        if (r == NULL || r->gone || r->completed || r->cancel_token == 0 || k->fd < 0) continue;
        if (!ht_client_gone(k->fd)) continue;
        r->gone = true;
        tokens[n++] = r->cancel_token;
    }
    if (n == 0) return;
    h->in_sync++;
    pthread_mutex_unlock(&h->mu);
    for (size_t i = 0; i < n; i++)
        h->cb.client_gone(h->cb.ctx, tokens[i]);
    pthread_mutex_lock(&h->mu);
    h->in_sync--;
    pthread_cond_broadcast(&h->cv);
    log_debug("http: %zu clients went away with their calls unanswered", n);
}

static void *ht_reaper_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:http-reap");
    gw_http *h = arg;
    uint64_t limit_us = (uint64_t)h->cfg.receive_timeout_s * 1000000u;
    uint64_t next_pass_us = clock_now_us() + 200000;
    pthread_mutex_lock(&h->mu);
    while (!h->stopping) {
        /* h->cv is broadcast on every completion and more: a pass (a peek per waiting
         * call) runs every 200 ms, not on each wake. */
        struct timespec ts;
        clock_deadline_to_timespec(next_pass_us, &ts);
        pthread_cond_timedwait(&h->cv, &h->mu, &ts);
        uint64_t now = clock_now_us();
        if (now < next_pass_us || h->stopping) continue;
        next_pass_us = now + 200000;
        for (ht_conn *k = h->conns; k; k = k->next)
            if (k->receiving && k->fd >= 0 && now - k->since_us > limit_us) {
                shutdown(k->fd, SHUT_RDWR); /* MHD sees the connection end and closes it */
                k->receiving = false;
                log_debug("http: cut off a client that took over %u s to send its request",
                          h->cfg.receive_timeout_s);
            }
        if (h->cb.client_gone && !h->stopping) ht_reap_gone_clients(h);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* Makes room in the process's open-file limit for `connections` connections (two
 * descriptors each) and AICFN_HTTP_FD_HEADROOM more: raises the soft limit up to the
 * hard one if needed, else refuses (AICFN_E_INVALID naming both numbers). Past the limit
 * a connection's descriptors fail, the reaper cannot cut it off, and the gateway's other
 * files (worker links, SQLite, uploads) fail with it. */
static int ht_fit_open_files(unsigned connections, aicfn_error *err) {
    struct rlimit rl;
    rlim_t need = (rlim_t)connections * 2 + AICFN_HTTP_FD_HEADROOM;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
        return AICFN_OK;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "http: %u connections need about %llu open files (2 each and %d for the rest "
                               "of the gateway), but the limit is %llu (ulimit -n): lower --http-connections "
                               "or raise the limit",
                               connections, (unsigned long long)need, AICFN_HTTP_FD_HEADROOM,
                               (unsigned long long)rl.rlim_max);
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return aicfn_error_errno(err, AICFN_E_INVALID, errno, "http: raising the open-file limit to %llu",
                                 (unsigned long long)need);
    log_info("http: open-file limit raised from %llu to %llu for %u connections", (unsigned long long)was,
             (unsigned long long)need, connections);
    return AICFN_OK;
}

/* ---- Body buffering ---- */

/* ht_reserve up to `limit` bytes in all. */
static int ht_reserve_within(gw_http_call *r, size_t want, size_t limit) {
    gw_http *h = r->h;
    if (want <= r->reserved) return AICFN_OK;
    size_t more = want - r->reserved;
    size_t prev = atomic_fetch_add(&h->buffered, more);
    if (prev + more > limit) {
        atomic_fetch_sub(&h->buffered, more);
        return AICFN_E_OVERLOADED;
    }
    r->reserved = want;
    return AICFN_OK;
}

static int ht_reserve(gw_http_call *r, size_t want) {
    return ht_reserve_within(r, want, r->h->cfg.max_buffered);
}

/* ht_reserve for the answer of a call that ran: it may overdraw the budget up to twice
 * it. A call that ran (and was billed) must not be answered "retry": a client retrying
 * would run it again. While the budget is overdrawn new requests are refused, before
 * they run, so the overdraft is bounded by the answers of calls already running. */
static int ht_reserve_answer(gw_http_call *r, size_t want) {
    size_t max = r->h->cfg.max_buffered;
    return ht_reserve_within(r, want, max > SIZE_MAX / 2 ? SIZE_MAX : 2 * max);
}

/* Gives back what r holds past `want` (nothing when it holds less). */
static void ht_reserve_trim(gw_http_call *r, size_t want) {
    if (want >= r->reserved) return;
    atomic_fetch_sub(&r->h->buffered, r->reserved - want);
    r->reserved = want;
}

/* The most body bytes r's endpoint takes: the index's holds one flag. */
static size_t ht_body_limit(const gw_http_call *r) {
    return r->route == RT_REPO_INDEX ? AICFN_HTTP_MAX_INDEX_BODY : r->h->cfg.max_body;
}

/* Appends body bytes. The buffer, and its share of the buffered budget, grows with what
 * has arrived (x4 per step), never further than the announced Content-Length: a client
 * that announces a large body and sends nothing holds AICFN_HTTP_BODY_FIRST_BYTES. */
static int ht_append(gw_http_call *r, const char *data, size_t n) {
    size_t max = r->announced ? r->announced : ht_body_limit(r);
    if (n > max - r->len) return AICFN_E_TOO_LARGE;
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n)
            cap = cap > max / 4 ? max : cap * 4;
        int rc = ht_reserve(r, cap);
        if (rc) return rc;
        uint8_t *nb = realloc(r->body, cap);
        if (nb == NULL) return AICFN_E_NOMEM;
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    return AICFN_OK;
}

static void ht_call_free(gw_http_call *r) {
    if (r == NULL) return;
    oip_request_free(&r->req);
    if (r->reserved) atomic_fetch_sub(&r->h->buffered, r->reserved);
    free(r->body);
    free(r->resp);
    free(r->key);
    free(r);
}

/* Settles an infer admitted against its caller's limits at its head (precheck) that never
 * reached cb.infer: refused for the caller's own fault (a 4xx answer other than 429: its
 * body too large or malformed, not the function's signature) it is recorded as refused,
 * counted as a call; refused for the gateway's own reason (its buffers full, stopping), or
 * left by its client before its body, its admission is undone. */
static void ht_settle_admission(gw_http_call *r) {
    if (!r->admitted || r->submitted) return;
    gw_http *h = r->h;
    if (r->code && r->status >= 400 && r->status < 500 && r->status != 429) {
        if (h->cb.refused) h->cb.refused(h->cb.ctx, r->model, r->version, &r->who, r->code);
    } else if (h->cb.unadmit) {
        h->cb.unadmit(h->cb.ctx, &r->who);
    }
}

static void ht_request_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                                 enum MHD_RequestTerminationCode toe) {
    (void)toe;
    gw_http *h = cls;
    gw_http_call *r = *con_cls;
    *con_cls = NULL;
    if (r) ht_settle_admission(r);
    ht_call_free(r);
    /* The deadline goes on covering the connection until the next request line, which
     * restarts it (ht_uri_arrived): a client idle on a kept-alive connection (MHD's idle
     * timeout) is not charged for that time, one trickling a request line is. */
    ht_mark(h, c, true);
}

/* A request line arrived (MHD_OPTION_URI_LOG_CALLBACK): the request's receive deadline
 * starts now. NULL: *con_cls stays NULL for ht_access's first call. */
static void *ht_uri_arrived(void *cls, const char *uri, struct MHD_Connection *c) {
    (void)uri;
    ht_mark(cls, c, true);
    return NULL;
}

/* ---- Synchronous endpoints ---- */

static void ht_emit_index(void *arg, const gw_http_repo_entry *e) {
    json_t *a = arg;
    json_t *o = json_object();
    char v[16];
    snprintf(v, sizeof v, "%u", (unsigned)e->version);
    if (o == NULL) return;
    json_object_set_new(o, "name", json_string(e->name ? e->name : ""));
    json_object_set_new(o, "version", json_string(v));
    json_object_set_new(o, "state", json_string(e->state ? e->state : "UNAVAILABLE"));
    json_object_set_new(o, "reason", json_string(e->reason ? e->reason : ""));
    json_array_append_new(a, o);
}

static void ht_do_index(gw_http_call *r) {
    gw_http *h = r->h;
    bool ready_only = false;
    if (r->len > AICFN_HTTP_MAX_INDEX_BODY) { /* it holds one flag: never parse megabytes of JSON */
        char m[128];
        snprintf(m, sizeof m, "the index request body is %zu bytes, at most %u", r->len,
                 (unsigned)AICFN_HTTP_MAX_INDEX_BODY);
        ht_set_error(r, AICFN_E_TOO_LARGE, m);
        return;
    }
    if (r->len) {
        json_error_t je;
        json_t *j = json_loadb((const char *)r->body, r->len, 0, &je);
        if (j == NULL || !json_is_object(j)) {
            json_decref(j);
            ht_set_error(r, AICFN_E_INVALID, "the index request body must be a JSON object");
            return;
        }
        json_t *rd = json_object_get(j, "ready");
        if (rd && !json_is_boolean(rd)) {
            json_decref(j);
            ht_set_error(r, AICFN_E_INVALID, "\"ready\" must be true or false");
            return;
        }
        ready_only = json_is_true(rd);
        json_decref(j);
    }
    json_t *a = json_array();
    aicfn_error err = {0};
    int rc = a ? AICFN_OK : AICFN_E_NOMEM;
    if (rc == AICFN_OK && h->cb.repository_index)
        rc = h->cb.repository_index(h->cb.ctx, ready_only, ht_emit_index, a, &err);
    if (rc)
        ht_set_error(r, rc, err.msg);
    else
        ht_set_json(r, 200, json_dumps(a, JSON_COMPACT));
    json_decref(a);
}

static void ht_do_model(gw_http_call *r) {
    gw_http *h = r->h;
    gw_http_model_info *mi = calloc(1, sizeof *mi);
    aicfn_error err = {0};
    if (mi == NULL) {
        ht_set_error(r, AICFN_E_NOMEM, "out of memory");
        return;
    }
    int rc = h->cb.model_info ? h->cb.model_info(h->cb.ctx, r->model, r->version, mi, &err)
                              : aicfn_error_set(&err, AICFN_E_NOT_FOUND, "model '%s' not found", r->model);
    if (rc)
        ht_set_error(r, rc, err.msg);
    else if (r->route == RT_MODEL_READY) {
        if (mi->ready)
            ht_set_answer(r, 200, NULL, 0, 0, NULL);
        else
            ht_set_error(r, AICFN_E_UNAVAILABLE, "model is not ready");
    } else {
        size_t nv = mi->n_versions < GW_HTTP_MAX_VERSIONS ? mi->n_versions : GW_HTTP_MAX_VERSIONS;
        size_t ni = mi->n_inputs < AICFN_MAX_TENSORS ? mi->n_inputs : AICFN_MAX_TENSORS;
        size_t no = mi->n_outputs < AICFN_MAX_TENSORS ? mi->n_outputs : AICFN_MAX_TENSORS;
        ht_set_json(r, 200,
                    oip_model_metadata_json(r->model, mi->versions, nv, mi->inputs, ni, mi->outputs, no));
    }
    free(mi);
}

/* ---- Asynchronous endpoints ---- */

/* Starts infer/load/unload. Returns true when the call is now WAITING for completion. */
static bool ht_start_async(gw_http_call *r) {
    gw_http *h = r->h;
    aicfn_error err = {0};
    int rc;
    if (r->route == RT_INFER) {
        size_t json_len = r->len;
        const char *hl = gw_mhd()->lookup_connection_value(r->conn, MHD_HEADER_KIND, OIP_HEADER_LENGTH);
        if (hl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(hl, &end, 10);
            if (errno || *end || end == hl || hl[0] == '-' || v > r->len) {
                ht_set_error(r, AICFN_E_INVALID, OIP_HEADER_LENGTH " is not a length within the body");
                return false;
            }
            json_len = (size_t)v;
        }
        /* A request refused from here on for its own fault (a 4xx) is recorded as refused
         * when it ends, one refused for the gateway's reason has its admission undone
         * (ht_settle_admission). */
        rc = oip_request_parse(r->body, r->len, json_len, &r->req, &err);
        if (rc) {
            ht_set_error(r, rc, err.msg);
            return false;
        }
        /* The call holds more than its body until it is answered: the tensors decoded from
         * JSON (up to 8 bytes per value of a few characters), and the gateway's copy of
         * every input in the request it sends to a worker. Both count in the budget. */
        size_t held = r->reserved;
        for (uint32_t i = 0; i < r->req.n_inputs; i++) {
            const wire_tensor *t = &r->req.inputs[i];
            bool in_body = t->data >= r->body && t->data < r->body + r->len;
            held += (in_body ? 0 : (size_t)t->nbytes) + (size_t)t->nbytes;
            r->input_copy += (size_t)t->nbytes;
        }
        if (ht_reserve(r, held) != AICFN_OK) {
            ht_set_error(r, AICFN_E_OVERLOADED, "too many request bytes in flight; retry");
            return false;
        }
        if (h->cb.model_info) {
            gw_http_model_info *mi = calloc(1, sizeof *mi);
            if (mi == NULL) {
                ht_set_error(r, AICFN_E_NOMEM, "out of memory");
                return false;
            }
            mi->signature_only = true;
            rc = h->cb.model_info(h->cb.ctx, r->model, r->version, mi, &err);
            if (rc == AICFN_OK) {
                size_t ni = mi->n_inputs < AICFN_MAX_TENSORS ? mi->n_inputs : AICFN_MAX_TENSORS;
                size_t no = mi->n_outputs < AICFN_MAX_TENSORS ? mi->n_outputs : AICFN_MAX_TENSORS;
                rc = oip_request_check(&r->req, mi->inputs, ni, &err);
                /* An output the function does not declare is refused before it runs, not
                 * after (when its work would be done, billed and cached for nothing). */
                if (rc == AICFN_OK) rc = oip_request_check_outputs(&r->req, mi->outputs, no, &err);
                r->outputs_declared = no > 0;
                /* The call runs the version its inputs were checked against, even if a
                 * deploy or activate changes the active one in between. */
                if (rc == AICFN_OK && mi->version) r->version = mi->version;
            }
            free(mi);
            if (rc) {
                ht_set_error(r, rc, err.msg);
                return false;
            }
        }
    }
    pthread_mutex_lock(&h->mu);
    bool stopping = h->stopping;
    if (!stopping) h->in_flight++;
    r->state = ST_WAITING;
    pthread_mutex_unlock(&h->mu);
    if (stopping) {
        r->state = ST_DONE;
        ht_set_error(r, AICFN_E_UNAVAILABLE, "the gateway is stopping");
        return false;
    }
    const gw_http_principal *who = r->have_who ? &r->who : NULL;
    if (r->route == RT_INFER) {
        gw_http_infer inv = {.model = r->model,
                             .version = r->version,
                             .key = r->key,
                             .principal = who,
                             .req = &r->req,
                             .received_us = r->received_us};
        rc = h->cb.infer ? h->cb.infer(h->cb.ctx, r, &inv, &err)
                         : aicfn_error_set(&err, AICFN_E_UNAVAILABLE, "inference is not connected");
        r->submitted = rc == AICFN_OK;
    } else {
        int (*fn)(void *, gw_http_call *, const char *, uint32_t, const gw_http_principal *, aicfn_error *) =
            r->route == RT_LOAD ? h->cb.load : h->cb.unload;
        rc = fn ? fn(h->cb.ctx, r, r->model, r->version, who, &err)
                : aicfn_error_set(&err, AICFN_E_NOT_FOUND, "the repository extension is not available");
    }
    if (rc != AICFN_OK) {
        pthread_mutex_lock(&h->mu);
        r->state = ST_DONE;
        h->in_flight--;
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->mu);
        ht_set_error(r, rc, err.msg);
        return false;
    }
    return true;
}

void gw_http_set_cancel_token(gw_http_call *r, uint64_t token) {
    if (r == NULL) return;
    pthread_mutex_lock(&r->h->mu);
    r->cancel_token = token;
    pthread_mutex_unlock(&r->h->mu);
}

void gw_http_complete(gw_http_call *r, int status, const aicfn_error *err, const gw_http_result *res,
                      uint32_t retry_after_s) {
    if (r == NULL) return;
    gw_http *h = r->h;
    /* Encode outside the lock: the call is WAITING, so nothing else touches it. */
    r->retry_after_s = retry_after_s;
    if (status != AICFN_OK) {
        ht_set_error(r, status, err && err->msg[0] ? err->msg : NULL);
    } else if (r->route == RT_INFER) {
        if (res == NULL) {
            ht_set_error(r, AICFN_E_INTERNAL, "inference completed without a result");
        } else {
            oip_body b;
            aicfn_error e2 = {0};
            /* The response counts in the buffered budget as the request did, from before it
             * is encoded (its peak) until it is sent: a client reading slowly holds it. The
             * gateway's copy of the inputs is freed right after this completion: it counts
             * through the encoding, not after. */
            size_t held = r->reserved;
            size_t bound = oip_response_size_bound(&r->req, res->outputs, res->n_outputs);
            int rc = AICFN_OK;
            if (bound > h->cfg.max_buffered) /* would never fit: no retry helps, binary data does */
                rc = aicfn_error_set(&e2, AICFN_E_TOO_LARGE,
                                     "the call ran, but its response would take up to %zu bytes to build and "
                                     "send, over this gateway's %zu; request large outputs with "
                                     "\"parameters\": {\"binary_data\": true}",
                                     bound, h->cfg.max_buffered);
            else if (ht_reserve_answer(r, held + bound) != AICFN_OK)
                rc = aicfn_error_set(&e2, AICFN_E_UNAVAILABLE,
                                     "the call ran, but its response (up to %zu bytes) finds this gateway's "
                                     "response memory overdrawn: it is lost (retry only if the function may "
                                     "run twice)",
                                     bound);
            else
                rc = oip_response_encode(r->model, res->version ? res->version : r->version, &r->req,
                                         res->outputs, res->n_outputs, &b, &e2);
            if (rc == AICFN_OK) ht_reserve_trim(r, (held > r->input_copy ? held - r->input_copy : 0) + b.len);
            r->input_copy = 0;
            /* An output asked for was checked against the declared ones before the call ran:
             * missing now, it is the handler's fault (oip says so of a name not UTF-8). */
            if (rc == AICFN_E_INVALID && r->outputs_declared) {
                aicfn_error_wrap(&e2, "the handler did not return an output its function declares");
                rc = AICFN_E_HANDLER;
            }
            if (rc)
                ht_set_error(r, rc, e2.msg);
            else
                ht_set_answer(r, 200, b.body, b.len, b.json_len,
                              b.json_len < b.len ? "application/octet-stream" : "application/json");
            r->cold = res->cold;
        }
    } else {
        ht_set_answer(r, 200, NULL, 0, 0, NULL);
    }
    pthread_mutex_lock(&h->mu);
    r->state = ST_DONE;
    r->completed = true;
    if (r->k) { /* the reaper no longer watches its client */
        r->k->waiting = NULL;
        r->k = NULL;
    }
    bool resume = r->suspended;
    if (resume) gw_mhd()->resume_connection(r->conn);
    h->in_flight--;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- The access handler ---- */

static const char *ht_bearer(struct MHD_Connection *c) {
    const char *a = gw_mhd()->lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (a == NULL || strncasecmp(a, "Bearer ", 7) != 0) return NULL;
    a += 7;
    while (*a == ' ')
        a++;
    return *a ? a : NULL;
}

/* A body worth reading only to drop it: announced with a Content-Length of at most
 * AICFN_HTTP_BODY_FIRST_BYTES (and the server's body limit), and not awaiting a `100
 * Continue` (such a client gets its answer at once, without uploading). */
static bool ht_body_small(const gw_http *h, struct MHD_Connection *c) {
    if (gw_mhd()->lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) ||
        gw_mhd()->lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT))
        return false;
    const char *cl = gw_mhd()->lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl == NULL || cl[0] < '0' || cl[0] > '9') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(cl, &end, 10);
    return errno == 0 && *end == '\0' && v <= AICFN_HTTP_BODY_FIRST_BYTES && v <= h->cfg.max_body;
}

/* Whether the request's headers announce a body: Transfer-Encoding, or a Content-Length
 * that is not all zeros (an unreadable one counts as a body). */
static bool ht_body_announced(struct MHD_Connection *c) {
    if (gw_mhd()->lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING)) return true;
    const char *cl = gw_mhd()->lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return cl && (cl[0] == '\0' || strspn(cl, "0") != strlen(cl));
}

/* First call for a request: route, auth, size checks. Returns false when r now holds
 * the answer (sent at once, or at the request's next callback when it has no body; any
 * body is not read). */
static bool ht_begin(gw_http *h, gw_http_call *r, const char *method, const char *url) {
    aicfn_error err = {0};
    bool bad_method;
    if (ht_route_of(method, url, r, &bad_method, &err) != AICFN_OK) {
        ht_set_error(r, err.code, err.msg);
        return false;
    }
    if (bad_method) {
        ht_set_error_status(r, MHD_HTTP_METHOD_NOT_ALLOWED, AICFN_E_UNSUPPORTED,
                            "method not allowed on this endpoint");
        return false;
    }
    if (h->stopping && r->route != RT_LIVE) { /* no callback once stopping: ctx may be gone */
        ht_set_error(r, AICFN_E_UNAVAILABLE, "the gateway is stopping");
        return false;
    }
    /* Without API keys (--insecure-local) every local process is trusted, but not a web
     * page the user happens to visit: its script can aim a "simple" POST (no preflight)
     * at 127.0.0.1. Browsers send Origin with every POST and every cross-origin request;
     * command-line and library clients send none. */
    if (!h->cb.authenticate &&
        gw_mhd()->lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN)) {
        ht_set_error(r, AICFN_E_FORBIDDEN,
                     "a gateway serving without API keys (--insecure-local) takes no requests from web "
                     "pages (the request has an Origin header)");
        return false;
    }
    if (ht_route_needs_auth(h, r->route) && h->cb.authenticate) {
        const char *key = ht_bearer(r->conn);
        if (key == NULL) {
            ht_set_error(r, AICFN_E_UNAUTHENTICATED, "missing API key: send 'Authorization: Bearer <key>'");
            return false;
        }
        if (strlen(key) > 1024) {
            ht_set_error(r, AICFN_E_UNAUTHENTICATED, "invalid API key");
            return false;
        }
        int rc = h->cb.authenticate(h->cb.ctx, key, &r->who, &err);
        if (rc) {
            ht_set_error(r, rc, err.msg[0] ? err.msg : "invalid API key");
            return false;
        }
        r->have_who = true;
        r->who.tenant[sizeof r->who.tenant - 1] = '\0';
        if ((r->route == RT_LOAD || r->route == RT_UNLOAD) && !r->who.admin) {
            ht_set_error(r, AICFN_E_FORBIDDEN, "loading and unloading models needs an admin key");
            return false;
        }
        if (r->route == RT_METRICS && !r->who.admin) {
            ht_set_error(r, AICFN_E_FORBIDDEN,
                         "/metrics needs an admin key (its series name every tenant's functions); a "
                         "gateway started with --metrics-public serves it without one");
            return false;
        }
        r->key = strdup(key);
        if (r->key == NULL) {
            ht_set_error(r, AICFN_E_NOMEM, "out of memory");
            return false;
        }
        if (r->route == RT_INFER && h->cb.precheck) {
            uint32_t retry = 0;
            rc = h->cb.precheck(h->cb.ctx, r->model, r->version, &r->who, &retry, &err);
            if (rc) {
                r->retry_after_s = retry;
                r->drain_ok = true;
                ht_set_error(r, rc, err.msg[0] ? err.msg : "over the rate limit");
                return false;
            }
            r->admitted = true; /* settled when the request ends, if infer never takes it */
        }
    }
    /* Both framings at once is the shape of request smuggling (RFC 9112 §6.1: a server
     * may reject it, and a proxy in front may have framed it the other way): refused. */
    if (gw_mhd()->lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH) &&
        gw_mhd()->lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        ht_set_error(r, AICFN_E_INVALID, "a request may not have both Content-Length and Transfer-Encoding");
        return false;
    }
    if (ht_route_has_body(r->route)) {
        const char *cl =
            gw_mhd()->lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || *end || end == cl || cl[0] == '-') {
                ht_set_error(r, AICFN_E_INVALID, "bad Content-Length");
                return false;
            }
            if (v > ht_body_limit(r)) {
                char m[128];
                snprintf(m, sizeof m, "request body of %llu bytes exceeds the limit of %zu bytes", v,
                         ht_body_limit(r));
                ht_set_error(r, AICFN_E_TOO_LARGE, m);
                return false;
            }
            if (v > 0) {
                /* Only the first bytes are reserved now; the rest as it arrives. */
                size_t first = v < AICFN_HTTP_BODY_FIRST_BYTES ? (size_t)v : AICFN_HTTP_BODY_FIRST_BYTES;
                int rc = ht_reserve(r, first);
                if (rc == AICFN_OK && (r->body = malloc(first)) == NULL) rc = AICFN_E_NOMEM;
                if (rc) {
                    ht_set_error(r, rc,
                                 rc == AICFN_E_OVERLOADED ? "too many request bytes in flight; retry" : NULL);
                    return false;
                }
                r->cap = first;
                r->announced = (size_t)v;
            }
        }
    } else {
        /* The other endpoints take no body, and none is ever buffered for them (else one
         * unauthenticated client could hold the whole buffered budget through
         * /v2/health/live): a body announced is refused at once, a chunked one as it comes. */
        const char *cl =
            gw_mhd()->lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strspn(cl, "0") != strlen(cl)) {
            ht_set_error(r, AICFN_E_INVALID, "this endpoint takes no request body");
            return false;
        }
    }
    return true;
}

static void ht_dispatch(gw_http *h, gw_http_call *r) {
    if (h->stopping && r->route != RT_LIVE) {
        ht_set_error(r, AICFN_E_UNAVAILABLE, "the gateway is stopping");
        return;
    }
    switch (r->route) {
    case RT_LIVE: {
        char why[256] = "";
        /* Stopping: no callback (ctx may be gone), and the process still runs. */
        if (h->stopping || h->cb.live == NULL || h->cb.live(h->cb.ctx, why, sizeof why))
            ht_set_answer(r, 200, NULL, 0, 0, NULL);
        else {
            char msg[300];
            snprintf(msg, sizeof msg, "not live: %s", why[0] ? why : "see the gateway's log");
            ht_set_error(r, AICFN_E_UNAVAILABLE, msg);
        }
        return;
    }
    case RT_READY:
        if (h->cb.ready == NULL || h->cb.ready(h->cb.ctx))
            ht_set_answer(r, 200, NULL, 0, 0, NULL);
        else
            ht_set_error(r, AICFN_E_UNAVAILABLE, "not ready");
        return;
    case RT_SERVER: {
        const char *ext[] = {"binary_tensor_data", "model_repository"};
        ht_set_json(r, 200, oip_server_metadata_json("aicfn", h->version, ext, 2));
        return;
    }
    case RT_METRICS: {
        if (h->cfg.metrics == NULL) {
            ht_set_error(r, AICFN_E_NOT_FOUND, "metrics are not enabled");
            return;
        }
        /* Serialized: a refresh resets gauges before it refills them, so another scrape's
         * refresh must not run between this one's refresh and its render. */
        pthread_mutex_lock(&h->scrape_mu);
        if (h->cb.before_metrics) h->cb.before_metrics(h->cb.ctx);
        char *text = NULL;
        size_t len = 0;
        aicfn_error err = {0};
        int rc = gw_metrics_render(h->cfg.metrics, &text, &len, &err);
        pthread_mutex_unlock(&h->scrape_mu);
        if (rc)
            ht_set_error(r, rc, err.msg);
        else
            ht_set_answer(r, 200, (uint8_t *)text, len, len, GW_METRICS_CONTENT_TYPE);
        return;
    }
    case RT_MODEL_META:
    case RT_MODEL_READY:
        ht_do_model(r);
        return;
    case RT_REPO_INDEX:
        ht_do_index(r);
        return;
    case RT_INFER:
    case RT_LOAD:
    case RT_UNLOAD:
        ht_start_async(r);
        return;
    default:
        ht_set_error(r, AICFN_E_NOT_FOUND, "no such endpoint");
        return;
    }
}

/* Brackets a part of ht_access that may call the gateway's callbacks. A part entered
 * before gw_http_stop set `stopping` may still call one (it checked the flag first):
 * the stop waits for every such part to leave, so no callback runs once it returns,
 * even when it leaves the server running detached. */
static void ht_sync_enter(gw_http *h) {
    pthread_mutex_lock(&h->mu);
    h->in_sync++;
    pthread_mutex_unlock(&h->mu);
}

static void ht_sync_leave(gw_http *h) {
    pthread_mutex_lock(&h->mu);
    if (--h->in_sync == 0) pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static enum MHD_Result ht_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
    (void)version;
    gw_http *h = cls;
    gw_http_call *r = *con_cls;
    if (r == NULL) {
        r = calloc(1, sizeof *r);
        if (r == NULL) return MHD_NO;
        r->h = h;
        r->conn = c;
        r->received_us = clock_now_us();
        *con_cls = r;
        ht_sync_enter(h);
        bool begun = ht_begin(h, r, method, url);
        ht_sync_leave(h);
        if (!begun) {
            /* Refused. A request without a body is answered at its next callback, once
             * libmicrohttpd has it whole, so the connection may carry the client's next
             * request (an answer queued now, in the headers' callback, makes it close the
             * connection). With a body announced (or chunked) the answer goes now and the
             * connection closes: the body is not read. Except a small body of a call
             * refused for its rate, which clients meet routinely and retry: it is read and
             * dropped (ST_DISCARD), and the answer goes when it ends, on a connection that
             * stays (a client still writing a body it was refused never sees an answer
             * sent on a closing connection, Python's http.client for one). */
            r->state = ST_DISCARD;
            r->keep_alive = !h->stopping && (!ht_body_announced(c) || (r->drain_ok && ht_body_small(h, c)));
            return r->keep_alive ? MHD_YES : ht_send(r);
        }
        return MHD_YES;
    }
    if (r->state == ST_RECEIVING && *upload_data_size > 0) {
        int rc = ht_route_has_body(r->route) ? ht_append(r, upload_data, *upload_data_size) : AICFN_E_INVALID;
        *upload_data_size = 0;
        if (rc) {
            char m[128];
            if (rc == AICFN_E_TOO_LARGE)
                snprintf(m, sizeof m, "request body exceeds the limit of %zu bytes", ht_body_limit(r));
            else if (rc == AICFN_E_INVALID)
                snprintf(m, sizeof m, "this endpoint takes no request body");
            else
                snprintf(m, sizeof m, "%s",
                         rc == AICFN_E_OVERLOADED ? "too many request bytes in flight; retry" : "");
            ht_set_error(r, rc, m);
            r->state = ST_DISCARD;
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
            if (r->reserved) atomic_fetch_sub(&h->buffered, r->reserved);
            r->reserved = 0;
            /* MHD cannot answer in the middle of a body: the rest is discarded unstored and
             * the error (413, or 400 for a body where none is taken) goes out when the body ends, unless the
             * client sends another max_body bytes, when the connection is dropped. */
        }
        return MHD_YES;
    }
    if (r->state == ST_DISCARD && *upload_data_size > 0) {
        r->discarded += *upload_data_size;
        *upload_data_size = 0;
        return r->discarded > h->cfg.max_body ? MHD_NO : MHD_YES;
    }
    if (r->state == ST_DISCARD) return ht_send(r); /* the oversized body ended */
    if (r->state == ST_RECEIVING) {
        /* The whole request has arrived. */
        ht_mark(h, c, false);
        ht_sync_enter(h);
        ht_dispatch(h, r);
        ht_sync_leave(h);
        /* The call may already have been completed on another thread (gw_http_complete
         * writes the answer, then the state under the lock): read the state under the
         * lock too, which also orders the answer's bytes before ht_send reads them. */
        pthread_mutex_lock(&h->mu);
        bool done = r->state != ST_WAITING || r->completed;
        if (!done) {
            gw_mhd()->suspend_connection(c);
            r->suspended = true;
            r->k = ht_conn_of(c);
            if (r->k) r->k->waiting = r;
        }
        pthread_mutex_unlock(&h->mu);
        return done ? ht_send(r) : MHD_YES;
    }
    if (r->state == ST_DONE) return ht_send(r); /* resumed after completion */
    return MHD_YES;                             /* WAITING: resumed spuriously */
}

/* ---- Start and stop ---- */

static void ht_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    log_debug("http: libmicrohttpd: %s", buf);
}

static int ht_parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *sl, bool *v6,
                           aicfn_error *err) {
    char host[256];
    const char *port;
    if (listen == NULL || listen[0] == '\0')
        return aicfn_error_set(err, AICFN_E_INVALID, "http: no listen address (HOST:PORT)");
    if (listen[0] == '[') {
        const char *e = strchr(listen, ']');
        if (e == NULL || e[1] != ':' || (size_t)(e - listen - 1) >= sizeof host)
            return aicfn_error_set(err, AICFN_E_INVALID, "http: bad listen address '%s' (want [IPV6]:PORT)",
                                   listen);
        memcpy(host, listen + 1, (size_t)(e - listen - 1));
        host[e - listen - 1] = '\0';
        port = e + 2;
    } else {
        const char *e = strrchr(listen, ':');
        if (e == NULL || (size_t)(e - listen) >= sizeof host)
            return aicfn_error_set(err, AICFN_E_INVALID, "http: bad listen address '%s' (want HOST:PORT)",
                                   listen);
        memcpy(host, listen, (size_t)(e - listen));
        host[e - listen] = '\0';
        port = e + 1;
    }
    char *end;
    long p = strtol(port, &end, 10);
    if (*port == '\0' || *end || p < 0 || p > 65535)
        return aicfn_error_set(err, AICFN_E_INVALID, "http: bad port in '%s'", listen);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (rc != 0 || ai == NULL)
        return aicfn_error_set(err, AICFN_E_INVALID, "http: cannot resolve '%s': %s", listen,
                               gai_strerror(rc));
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *sl = ai->ai_addrlen;
    *v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    return AICFN_OK;
}

int gw_http_start(const gw_http_config *cfg, const gw_http_callbacks *cb, gw_http **out, aicfn_error *err) {
    *out = NULL;
    if (cfg == NULL || cb == NULL) return aicfn_error_set(err, AICFN_E_INVALID, "http: no config");
    struct sockaddr_storage ss;
    socklen_t sl;
    bool v6;
    int rc = ht_parse_listen(cfg->listen, &ss, &sl, &v6, err);
    if (rc) return rc;
    if (gw_mhd_load(err) == NULL) return AICFN_E_UNSUPPORTED; /* gw_mhd() is the table from now on */
    gw_http *h = calloc(1, sizeof *h);
    if (h == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "http: out of memory");
    h->cfg = *cfg;
    h->cb = *cb;
    h->cfg.listen = NULL;
    if (!h->cfg.max_body) h->cfg.max_body = AICFN_HTTP_MAX_BODY;
    if (!h->cfg.max_connections) h->cfg.max_connections = AICFN_HTTP_MAX_CONNECTIONS;
    if (!h->cfg.per_ip_connections) h->cfg.per_ip_connections = AICFN_HTTP_MAX_CONNECTIONS_PER_IP;
    if (!h->cfg.idle_timeout_s) h->cfg.idle_timeout_s = AICFN_HTTP_CONNECTION_TIMEOUT_S;
    if (!h->cfg.receive_timeout_s) h->cfg.receive_timeout_s = AICFN_HTTP_RECEIVE_TIMEOUT_S;
    if (!h->cfg.connection_memory) h->cfg.connection_memory = AICFN_HTTP_CONNECTION_MEMORY;
    if (!h->cfg.threads) h->cfg.threads = 2;
    if (!h->cfg.stop_wait_ms) h->cfg.stop_wait_ms = AICFN_HTTP_STOP_WAIT_MS;
    if (!h->cfg.max_buffered) h->cfg.max_buffered = AICFN_HTTP_MAX_BUFFERED;
    if ((rc = ht_fit_open_files(h->cfg.max_connections, err)) != AICFN_OK) {
        free(h);
        return rc;
    }
    h->quiesced = MHD_INVALID_SOCKET;
    snprintf(h->version, sizeof h->version, "%s", cfg->server_version ? cfg->server_version : "unknown");
    h->cfg.server_version = h->version;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->scrape_mu, NULL);
    clock_cond_init(&h->cv);
    atomic_init(&h->buffered, 0);
    unsigned flags =
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (v6) flags |= MHD_USE_IPv6;
    h->d = gw_mhd()->start_daemon(
        flags, 0, NULL, NULL, ht_access, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_LIMIT, h->cfg.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        h->cfg.per_ip_connections == GW_HTTP_PER_IP_UNLIMITED ? 0u : h->cfg.per_ip_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, h->cfg.idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        h->cfg.connection_memory, MHD_OPTION_THREAD_POOL_SIZE, h->cfg.threads, MHD_OPTION_NOTIFY_COMPLETED,
        ht_request_completed, h, MHD_OPTION_NOTIFY_CONNECTION, ht_notify_connection, h,
        MHD_OPTION_URI_LOG_CALLBACK, ht_uri_arrived, h, MHD_OPTION_EXTERNAL_LOGGER, ht_mhd_log, h,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 128, MHD_OPTION_END);
    (void)sl;
    if (h->d == NULL) {
        rc = aicfn_error_set(err, AICFN_E_IO, "http: cannot listen on %s (address in use or not permitted)",
                             cfg->listen);
        pthread_cond_destroy(&h->cv);
        pthread_mutex_destroy(&h->mu);
        pthread_mutex_destroy(&h->scrape_mu);
        free(h);
        return rc;
    }
    const union MHD_DaemonInfo *di = gw_mhd()->get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : 0;
    if (pthread_create(&h->reaper, NULL, ht_reaper_main, h) == 0)
        h->reaper_started = true;
    else
        log_warn("http: cannot start the receive-deadline thread; only the idle timeout applies");
    log_info("http: serving the Open Inference Protocol on %s (port %u)", cfg->listen, (unsigned)h->port);
    *out = h;
    return AICFN_OK;
}

uint16_t gw_http_port(const gw_http *h) {
    return h ? h->port : 0;
}

bool gw_http_stop(gw_http *h) {
    if (h == NULL) return true;
    pthread_mutex_lock(&h->mu);
    h->stopping = true;
    pthread_cond_broadcast(&h->cv);
    uint64_t deadline = clock_now_us() + (uint64_t)h->cfg.stop_wait_ms * 1000u;
    /* Calls in flight are waited for until the deadline, then left to a detached server;
     * a callback running now (in_sync: it uses the caller's context, which the caller
     * frees once this returns) is always waited for: it blocks at most on SQLite's busy
     * timeout. */
    while ((h->in_flight > 0 && clock_now_us() < deadline) || h->in_sync > 0) {
        struct timespec ts;
        clock_deadline_to_timespec(clock_now_us() + 100000, &ts);
        pthread_cond_timedwait(&h->cv, &h->mu, &ts);
    }
    unsigned left = h->in_flight;
    if (left > 0) h->detached = true;
    pthread_mutex_unlock(&h->mu);
    if (h->reaper_started) pthread_join(h->reaper, NULL);
    h->reaper_started = false;
    if (left > 0) {
        /* Stopping MHD with suspended connections is undefined; leaking is the safe choice. */
        log_error("http: %u calls still in flight after %u ms; leaving the HTTP server running, detached",
                  left, h->cfg.stop_wait_ms);
        if (h->quiesced == MHD_INVALID_SOCKET) h->quiesced = gw_mhd()->quiesce_daemon(h->d);
        return false;
    }
    gw_mhd()->stop_daemon(h->d);
    if (h->quiesced != MHD_INVALID_SOCKET) close(h->quiesced);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->scrape_mu);
    free(h);
    return true;
}
