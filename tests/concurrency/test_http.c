/* test_http.c: the OIP v2 HTTP front (gateway/http.c) against fake gateway callbacks,
 * driven by a minimal raw-socket HTTP client on loopback: health, metadata, inference
 * (JSON and binary, completed asynchronously from other threads, synchronously, or on
 * another thread before infer returns), run under TSan with the concurrency tests,
 * errors with {"error", "code", "name"} bodies, limits (413 before the body is read, 431 for huge
 * headers, slowloris cut off while others are served), URL decoding edge cases,
 * authentication (401/403), 429 with Retry-After, the repository extension, /metrics,
 * and stopping with calls in flight. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
// clang-format on

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "gateway/http.h"

/* ---- Fake gateway ---- */

#define MAX_THREADS 64

typedef struct fake {
    pthread_mutex_t mu;
    pthread_t threads[MAX_THREADS];
    int n_threads;
    bool ready;
    const char *not_live; /* fk_live's reason (NULL: live) */
    gw_http_call *held;   /* a call of model "held": completed by the test or by fk_client_gone */
    uint64_t gone_token;  /* fk_client_gone's last token (0: none) */
    int gone_calls;
    int infers, loads, unloads;
    char last_tenant[64];
    size_t last_params_len;
    uint32_t last_version; /* the version infer was asked to run (0: the active one) */
} fake;

typedef struct job {
    gw_http_call *call;
    const gw_http_infer *inv_copy_req; /* unused */
    const oip_request *req;
    unsigned delay_ms;
    int kind; /* 0 infer, 1 load/unload */
} job;

static void sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* y = 2 * x for an FP32 input "x"; also returns "z", x's first element as INT32. */
static void run_infer(gw_http_call *call, const oip_request *req) {
    const wire_tensor *x = &req->inputs[0];
    if (x->dtype != AICFN_DTYPE_FP32) {
        aicfn_error e;
        aicfn_error_set(&e, AICFN_E_INVALID, "input '%s' must be FP32", x->name);
        gw_http_complete(call, e.code, &e, NULL, 0);
        return;
    }
    size_t n = x->nbytes / 4;
    float *y = malloc(n ? n * 4 : 4);
    for (size_t i = 0; i < n; i++) {
        float v;
        memcpy(&v, x->data + 4 * i, 4);
        y[i] = 2 * v;
    }
    int32_t z = 0;
    if (n) {
        float v;
        memcpy(&v, x->data, 4);
        z = (int32_t)v;
    }
    wire_tensor out[2] = {
        {.name = "y", .dtype = AICFN_DTYPE_FP32, .ndim = x->ndim, .data = (uint8_t *)y, .nbytes = n * 4},
        {.name = "z",
         .dtype = AICFN_DTYPE_INT32,
         .ndim = 1,
         .shape = {1},
         .data = (uint8_t *)&z,
         .nbytes = 4}};
    memcpy(out[0].shape, x->shape, sizeof x->shape);
    gw_http_result res = {.version = 1, .outputs = out, .n_outputs = 2, .cold = true};
    gw_http_complete(call, AICFN_OK, NULL, &res, 0);
    free(y);
}

static void *job_main(void *p) {
    job *j = p;
    sleep_ms(j->delay_ms);
    if (j->kind == 0)
        run_infer(j->call, j->req);
    else
        gw_http_complete(j->call, AICFN_OK, NULL, NULL, 0);
    free(j);
    return NULL;
}

static void spawn(fake *f, gw_http_call *call, const oip_request *req, unsigned delay_ms, int kind) {
    job *j = calloc(1, sizeof *j);
    j->call = call;
    j->req = req;
    j->delay_ms = delay_ms;
    j->kind = kind;
    pthread_mutex_lock(&f->mu);
    assert_true(f->n_threads < MAX_THREADS);
    pthread_create(&f->threads[f->n_threads++], NULL, job_main, j);
    pthread_mutex_unlock(&f->mu);
}

static int fk_auth(void *ctx, const char *key, gw_http_principal *out, aicfn_error *err) {
    (void)ctx;
    if (strcmp(key, "admin-key") == 0) {
        snprintf(out->tenant, sizeof out->tenant, "ops");
        out->admin = true;
        return AICFN_OK;
    }
    if (strcmp(key, "user-key") == 0 || strcmp(key, "poor-key") == 0) {
        snprintf(out->tenant, sizeof out->tenant, "%s", key[0] == 'u' ? "acme" : "poor");
        out->admin = false;
        return AICFN_OK;
    }
    return aicfn_error_set(err, AICFN_E_UNAUTHENTICATED, "unknown or revoked API key");
}

static int infers(fake *f) {
    pthread_mutex_lock(&f->mu);
    int n = f->infers;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static bool fk_ready(void *ctx) {
    return ((fake *)ctx)->ready;
}

/* As the gateway does for a call still queued: it ends with AICFN_E_CANCELED. */
static void fk_client_gone(void *ctx, uint64_t token) {
    fake *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->gone_token = token;
    f->gone_calls++;
    gw_http_call *held = f->held;
    f->held = NULL;
    pthread_mutex_unlock(&f->mu);
    if (held) {
        aicfn_error e;
        aicfn_error_set(&e, AICFN_E_CANCELED, "canceled before it started: its HTTP client closed the connection");
        gw_http_complete(held, e.code, &e, NULL, 0);
    }
}

static bool fk_live(void *ctx, char *why, size_t cap) {
    const char *not_live = ((fake *)ctx)->not_live;
    if (not_live) snprintf(why, cap, "%s", not_live);
    return not_live == NULL;
}

/* Model "stuck": its metadata lookup takes 400 ms (a callback blocked on SQLite). */
static atomic_int g_stuck_entered, g_stuck_left;

static int fk_model_info(void *ctx, const char *model, uint32_t version, gw_http_model_info *out,
                         aicfn_error *err) {
    (void)ctx;
    if (strcmp(model, "stuck") == 0) {
        atomic_store(&g_stuck_entered, 1);
        sleep_ms(400);
        atomic_store(&g_stuck_left, 1);
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "function '%s' not found", model);
    }
    if (strcmp(model, "mlp") != 0 && strcmp(model, "sync") != 0 && strcmp(model, "handoff") != 0 &&
        strcmp(model, "slow") != 0 && strcmp(model, "any") != 0 && strcmp(model, "held") != 0)
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "function '%s' not found", model);
    if (version > 2)
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "function '%s' has no version %u", model, version);
    out->version = version ? version : 2;
    out->versions[0] = 1;
    out->versions[1] = 2;
    out->n_versions = 2;
    out->ready = strcmp(model, "slow") != 0;
    if (strcmp(model, "any") == 0) return AICFN_OK; /* declares nothing */
    gw_tensor_spec in = {.name = "x", .dtype = AICFN_DTYPE_FP32, .ndim = 2, .shape = {-1, 4}};
    gw_tensor_spec o1 = {.name = "y", .dtype = AICFN_DTYPE_FP32, .ndim = 2, .shape = {-1, 4}};
    gw_tensor_spec o2 = {.name = "z", .dtype = AICFN_DTYPE_INT32, .ndim = 1, .shape = {1}};
    out->inputs[0] = in;
    out->n_inputs = 1;
    out->outputs[0] = o1;
    out->outputs[1] = o2;
    out->n_outputs = 2;
    return AICFN_OK;
}

/* Model "handoff": another thread completes the call while infer waits for it, with no
 * lock or join between the two threads (only a relaxed flag), as when a worker's reply
 * comes back before infer has returned. Under TSan any unlocked read of the call's
 * state or answer by the front after infer returns is reported. */
static _Atomic int g_handoff_done;

static void *handoff_main(void *p) {
    job *j = p;
    run_infer(j->call, j->req);
    free(j);
    atomic_store_explicit(&g_handoff_done, 1, memory_order_relaxed);
    return NULL;
}

static void handoff(fake *f, gw_http_call *call, const oip_request *req) {
    job *j = calloc(1, sizeof *j);
    j->call = call;
    j->req = req;
    atomic_store_explicit(&g_handoff_done, 0, memory_order_relaxed);
    pthread_mutex_lock(&f->mu);
    assert_true(f->n_threads < MAX_THREADS);
    pthread_create(&f->threads[f->n_threads++], NULL, handoff_main, j); /* joined at teardown */
    pthread_mutex_unlock(&f->mu);
    uint64_t until = clock_now_us() + 5000000;
    while (!atomic_load_explicit(&g_handoff_done, memory_order_relaxed) && clock_now_us() < until)
        sched_yield();
}

static int fk_infer(void *ctx, gw_http_call *call, const gw_http_infer *inv, aicfn_error *err) {
    fake *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->infers++;
    snprintf(f->last_tenant, sizeof f->last_tenant, "%s", inv->principal ? inv->principal->tenant : "");
    f->last_params_len = inv->req->params_len;
    f->last_version = inv->version;
    pthread_mutex_unlock(&f->mu);
    if (inv->principal && strcmp(inv->principal->tenant, "poor") == 0) {
        /* over quota: answered through completion, like the gateway's token bucket */
        aicfn_error e;
        aicfn_error_set(&e, AICFN_E_QUOTA, "tenant 'poor' is over its rate limit");
        gw_http_complete(call, e.code, &e, NULL, 3);
        return AICFN_OK;
    }
    if (strcmp(inv->model, "sync") == 0) {
        run_infer(call, inv->req); /* completes before infer returns */
        return AICFN_OK;
    }
    if (strcmp(inv->model, "handoff") == 0) {
        handoff(f, call, inv->req);
        return AICFN_OK;
    }
    if (strcmp(inv->model, "held") == 0) { /* waits until the test or its client's going ends it */
        gw_http_set_cancel_token(call, 4242);
        pthread_mutex_lock(&f->mu);
        f->held = call;
        pthread_mutex_unlock(&f->mu);
        return AICFN_OK;
    }
    if (inv->version == 1 && strcmp(inv->model, "any") == 0)
        return aicfn_error_set(err, AICFN_E_CAPACITY, "no device memory free before the deadline");
    spawn(f, call, inv->req, strcmp(inv->model, "slow") == 0 ? 800 : 20, 0);
    return AICFN_OK;
}

static int fk_load(void *ctx, gw_http_call *call, const char *model, uint32_t version,
                   const gw_http_principal *who, aicfn_error *err) {
    (void)version;
    (void)who;
    fake *f = ctx;
    if (strcmp(model, "mlp") != 0)
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "function '%s' not found", model);
    pthread_mutex_lock(&f->mu);
    f->loads++;
    pthread_mutex_unlock(&f->mu);
    spawn(f, call, NULL, 10, 1);
    return AICFN_OK;
}

static int fk_unload(void *ctx, gw_http_call *call, const char *model, uint32_t version,
                     const gw_http_principal *who, aicfn_error *err) {
    (void)version;
    (void)who;
    (void)err;
    (void)model;
    fake *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->unloads++;
    pthread_mutex_unlock(&f->mu);
    gw_http_complete(call, AICFN_OK, NULL, NULL, 0);
    return AICFN_OK;
}

static int fk_index(void *ctx, bool ready_only, gw_http_emit_fn emit, void *arg, aicfn_error *err) {
    (void)ctx;
    (void)err;
    gw_http_repo_entry a = {.name = "mlp", .version = 2, .state = "READY", .reason = ""};
    gw_http_repo_entry b = {.name = "slow", .version = 1, .state = "UNAVAILABLE", .reason = "not loaded"};
    emit(arg, &a);
    if (!ready_only) emit(arg, &b);
    return AICFN_OK;
}

/* ---- Fixture ---- */

typedef struct fixture {
    fake f;
    gw_http *h;
    gw_metrics *m;
    gw_stdmetrics std;
    uint16_t port;
} fixture;

static int setup_opts(void **state, bool auth, size_t max_body, unsigned recv_timeout, unsigned stop_wait_ms,
                      size_t max_buffered, bool metrics_public) {
    fixture *fx = calloc(1, sizeof *fx);
    pthread_mutex_init(&fx->f.mu, NULL);
    fx->f.ready = true;
    fx->m = gw_metrics_create();
    assert_int_equal(gw_stdmetrics_init(fx->m, &fx->std, NULL), AICFN_OK);
    gw_http_callbacks cb = {.ctx = &fx->f,
                            .authenticate = auth ? fk_auth : NULL,
                            .ready = fk_ready,
                            .live = fk_live,
                            .client_gone = fk_client_gone,
                            .model_info = fk_model_info,
                            .infer = fk_infer,
                            .load = fk_load,
                            .unload = fk_unload,
                            .repository_index = fk_index};
    gw_http_config cfg = {.listen = "127.0.0.1:0",
                          .max_body = max_body,
                          .receive_timeout_s = recv_timeout,
                          .idle_timeout_s = 5,
                          .metrics = fx->m,
                          .std = &fx->std,
                          .server_version = "test",
                          .stop_wait_ms = stop_wait_ms,
                          .max_buffered = max_buffered,
                          .metrics_public = metrics_public};
    aicfn_error err;
    int rc = gw_http_start(&cfg, &cb, &fx->h, &err);
    if (rc) fail_msg("gw_http_start: %s", err.msg);
    fx->port = gw_http_port(fx->h);
    assert_true(fx->port > 0);
    *state = fx;
    return 0;
}

static int setup(void **state) {
    return setup_opts(state, true, 1 << 20, 2, 0, 0, false);
}
static int setup_public_metrics(void **state) {
    return setup_opts(state, true, 1 << 20, 2, 0, 0, true);
}
static int setup_noauth(void **state) {
    return setup_opts(state, false, 4096, 2, 0, 0, false);
}
static int setup_short_stop(void **state) {
    return setup_opts(state, true, 1 << 20, 2, 100, 0, false);
}
static int setup_small_budget(void **state) {
    return setup_opts(state, true, 1 << 20, 2, 0, 2u << 20, false);
}

static int teardown(void **state) {
    fixture *fx = *state;
    assert_true(gw_http_stop(fx->h));
    for (int i = 0; i < fx->f.n_threads; i++)
        pthread_join(fx->f.threads[i], NULL);
    gw_metrics_destroy(fx->m);
    pthread_mutex_destroy(&fx->f.mu);
    free(fx);
    return 0;
}

/* ---- A minimal HTTP client ---- */

static int dial(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    /* A server that stops reading fails a send in 10 s instead of hanging the test. */
    struct timeval tv = {.tv_sec = 10};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
    return fd;
}

static int send_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

typedef struct resp {
    int status; /* 0: the connection closed without a response */
    char *raw;
    size_t len;
    const char *body;
    size_t body_len;
} resp;

/* Reads until the server closes or the response is complete (Content-Length), within
 * timeout_ms. */
static void read_resp(int fd, resp *r, int timeout_ms) {
    memset(r, 0, sizeof *r);
    size_t cap = 1 << 16;
    r->raw = malloc(cap + 1);
    uint64_t deadline = clock_now_us() + (uint64_t)timeout_ms * 1000;
    for (;;) {
        uint64_t now = clock_now_us();
        if (now >= deadline) break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)((deadline - now) / 1000) + 1) <= 0) break;
        if (r->len == cap) {
            cap *= 2;
            r->raw = realloc(r->raw, cap + 1);
        }
        ssize_t n = recv(fd, r->raw + r->len, cap - r->len, 0);
        if (n <= 0) break;
        r->len += (size_t)n;
        r->raw[r->len] = '\0';
        char *he = strstr(r->raw, "\r\n\r\n");
        if (he) {
            char *cl = strcasestr(r->raw, "\r\nContent-Length:");
            if (cl && cl < he && r->len >= (size_t)(he + 4 - r->raw) + strtoull(cl + 17, NULL, 10)) break;
        }
    }
    r->raw[r->len] = '\0';
    if (r->len >= 12 && strncmp(r->raw, "HTTP/1.", 7) == 0) r->status = atoi(r->raw + 9);
    char *he = strstr(r->raw, "\r\n\r\n");
    r->body = he ? he + 4 : r->raw + r->len;
    r->body_len = r->len - (size_t)(r->body - r->raw);
}

static const char *hdr(const resp *r, const char *name, char *buf, size_t n) {
    char pat[128];
    snprintf(pat, sizeof pat, "\r\n%s:", name);
    const char *p = strcasestr(r->raw, pat);
    if (p == NULL || p > r->body) return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    size_t l = strcspn(p, "\r\n");
    if (l >= n) l = n - 1;
    memcpy(buf, p, l);
    buf[l] = '\0';
    return buf;
}

/* One request: method, path, extra headers ("" or lines ending in \r\n), body. */
static void req(fixture *fx, const char *method, const char *path, const char *headers, const void *body,
                size_t body_len, resp *r) {
    int fd = dial(fx->port);
    char head[4096];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n",
                     method, path, headers, body_len);
    assert_int_equal(send_all(fd, head, (size_t)n), 0);
    if (body_len) assert_int_equal(send_all(fd, body, body_len), 0);
    read_resp(fd, r, 5000);
    close(fd);
}

static void resp_free(resp *r) {
    free(r->raw);
}

#define USER "Authorization: Bearer user-key\r\n"
#define ADMIN "Authorization: Bearer admin-key\r\n"

static json_t *body_json(const resp *r) {
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    if (j == NULL) fail_msg("not JSON: '%.*s'", (int)r->body_len, r->body);
    return j;
}

static void assert_error_body(const resp *r, int status, const char *needle) {
    if (r->status != status)
        fail_msg("status %d, want %d: %.*s", r->status, status, (int)r->body_len, r->body);
    json_t *j = body_json(r);
    const char *e = json_string_value(json_object_get(j, "error"));
    if (e == NULL || strstr(e, needle) == NULL) fail_msg("error '%s' lacks '%s'", e ? e : "(none)", needle);
    /* Every error names its aicfn code, which maps to this status (405: a method the path
     * does not take, AICFN_E_UNSUPPORTED). */
    json_t *code = json_object_get(j, "code");
    const char *name = json_string_value(json_object_get(j, "name"));
    if (!json_is_integer(code) || name == NULL)
        fail_msg("error body without code and name: %.*s", (int)r->body_len, r->body);
    int c = (int)json_integer_value(code);
    assert_string_equal(name, aicfn_status_name(c));
    if (status == 405)
        assert_int_equal(c, AICFN_E_UNSUPPORTED);
    else
        assert_int_equal(aicfn_http_status(c), status);
    json_decref(j);
}

/* ---- Tests ---- */

static void health_and_server_metadata(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "GET", "/v2/health/live", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    req(fx, "GET", "/v2/health/ready", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    fx->f.ready = false;
    req(fx, "GET", "/v2/health/ready", "", NULL, 0, &r);
    assert_int_equal(r.status, 503);
    resp_free(&r);
    fx->f.ready = true;
    fx->f.not_live = "NNG wedged"; /* the gateway's reason: a stuck NNG close (front_http.c) */
    req(fx, "GET", "/v2/health/live", "", NULL, 0, &r);
    assert_error_body(&r, 503, "not live: NNG wedged");
    resp_free(&r);
    fx->f.not_live = NULL;
    req(fx, "GET", "/v2/health/live", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    req(fx, "GET", "/v2", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "aicfn");
    assert_string_equal(json_string_value(json_object_get(j, "version")), "test");
    assert_int_equal(json_array_size(json_object_get(j, "extensions")), 2);
    json_decref(j);
    resp_free(&r);
    req(fx, "POST", "/v2/health/live", "", NULL, 0, &r);
    assert_error_body(&r, 405, "method");
    assert_non_null(strstr(r.raw, "Allow: GET, HEAD\r\n")); /* RFC 9110: what it takes */
    resp_free(&r);
    req(fx, "GET", "/nope", "", NULL, 0, &r);
    assert_error_body(&r, 404, "no such endpoint");
    resp_free(&r);
}

static void model_metadata_and_ready(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "GET", "/v2/models/mlp", USER, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "mlp");
    json_t *in0 = json_array_get(json_object_get(j, "inputs"), 0);
    assert_string_equal(json_string_value(json_object_get(in0, "datatype")), "FP32");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(in0, "shape"), 0)), -1);
    assert_int_equal(json_array_size(json_object_get(j, "versions")), 2);
    json_decref(j);
    resp_free(&r);
    req(fx, "GET", "/v2/models/mlp/versions/1", USER, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    req(fx, "GET", "/v2/models/mlp/versions/9", USER, NULL, 0, &r);
    assert_error_body(&r, 404, "no version 9");
    resp_free(&r);
    req(fx, "GET", "/v2/models/mlp/versions/x1", USER, NULL, 0, &r);
    assert_error_body(&r, 400, "version");
    resp_free(&r);
    req(fx, "GET", "/v2/models/nosuch", USER, NULL, 0, &r);
    assert_error_body(&r, 404, "function 'nosuch' not found");
    resp_free(&r);
    req(fx, "GET", "/v2/models/mlp/ready", USER, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    req(fx, "GET", "/v2/models/slow/versions/1/ready", USER, NULL, 0, &r);
    assert_int_equal(r.status, 503);
    resp_free(&r);
}

static const char *INFER_BODY =
    "{\"id\":\"q1\",\"inputs\":[{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"FP32\","
    "\"data\":[1,2,3,4.5]}],\"parameters\":{\"t\":1}}";

static void check_y(const resp *r, const char *id) {
    if (r->status != 200) fail_msg("status %d: %.*s", r->status, (int)r->body_len, r->body);
    json_t *j = body_json(r);
    if (id) assert_string_equal(json_string_value(json_object_get(j, "id")), id);
    json_t *outs = json_object_get(j, "outputs");
    json_t *y = json_array_get(outs, 0);
    assert_string_equal(json_string_value(json_object_get(y, "name")), "y");
    json_t *d = json_object_get(y, "data");
    assert_int_equal(json_array_size(d), 4);
    assert_true(json_number_value(json_array_get(d, 3)) == 9.0);
    json_decref(j);
}

static void infer_ok_async_and_sync(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "POST", "/v2/models/mlp/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
    check_y(&r, "q1");
    char b[32];
    assert_non_null(hdr(&r, "Content-Type", b, sizeof b));
    assert_string_equal(b, "application/json");
    assert_non_null(hdr(&r, "Aicfn-Cold", b, sizeof b));
    resp_free(&r);
    assert_string_equal(fx->f.last_tenant, "acme");
    assert_true(fx->f.last_params_len > 0);
    /* Pinned to the version the inputs were checked against (the active one, 2), not
     * left for the gateway to resolve again. */
    assert_int_equal(fx->f.last_version, 2);
    req(fx, "POST", "/v2/models/sync/versions/2/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
    check_y(&r, "q1");
    resp_free(&r);
    for (int i = 0; i < 3; i++) { /* completed on another thread before infer returns */
        req(fx, "POST", "/v2/models/handoff/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
        check_y(&r, "q1");
        resp_free(&r);
    }
    /* The versioned form, and keep-alive: two requests on one connection. */
    int fd = dial(fx->port);
    char head[512];
    for (int i = 0; i < 2; i++) {
        int n = snprintf(head, sizeof head,
                         "POST /v2/models/mlp/versions/1/infer HTTP/1.1\r\nHost: t\r\n" USER
                         "Content-Length: %zu\r\n\r\n",
                         strlen(INFER_BODY));
        assert_int_equal(send_all(fd, head, (size_t)n), 0);
        assert_int_equal(send_all(fd, INFER_BODY, strlen(INFER_BODY)), 0);
        read_resp(fd, &r, 5000);
        check_y(&r, "q1");
        resp_free(&r);
    }
    close(fd);
}

static void infer_binary_both_ways(void **state) {
    fixture *fx = *state;
    const char *js =
        "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,4],\"datatype\":\"FP32\",\"parameters\":"
        "{\"binary_data_size\":32}}],\"outputs\":[{\"name\":\"y\",\"parameters\":{\"binary_data\":true}},"
        "{\"name\":\"z\"}]}";
    size_t jl = strlen(js);
    uint8_t body[512];
    memcpy(body, js, jl);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    memcpy(body + jl, x, 32);
    char h[128];
    snprintf(h, sizeof h,
             USER "Inference-Header-Content-Length: %zu\r\nContent-Type: application/octet-stream\r\n", jl);
    resp r;
    req(fx, "POST", "/v2/models/mlp/infer", h, body, jl + 32, &r);
    if (r.status != 200) fail_msg("status %d: %.*s", r.status, (int)r.body_len, r.body);
    char v[64];
    assert_non_null(hdr(&r, "Inference-Header-Content-Length", v, sizeof v));
    size_t rjl = strtoull(v, NULL, 10);
    assert_int_equal(r.body_len, rjl + 32);
    assert_non_null(hdr(&r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "application/octet-stream");
    float y[8];
    memcpy(y, r.body + rjl, 32);
    assert_true(y[0] == 2 && y[7] == 16);
    json_error_t je;
    json_t *j = json_loadb(r.body, rjl, 0, &je);
    assert_non_null(j);
    json_t *o = json_object_get(j, "outputs");
    assert_int_equal(json_array_size(o), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_array_get(o, 0), "parameters"),
                                                        "binary_data_size")),
                     32);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(json_array_get(o, 1), "data"), 0)), 1);
    json_decref(j);
    resp_free(&r);
    /* A header length beyond the body. */
    snprintf(h, sizeof h, USER "Inference-Header-Content-Length: 99999\r\n");
    req(fx, "POST", "/v2/models/mlp/infer", h, body, jl + 32, &r);
    assert_error_body(&r, 400, "Inference-Header-Content-Length");
    resp_free(&r);
}

static void infer_errors(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "POST", "/v2/models/nosuch/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
    assert_error_body(&r, 404, "function 'nosuch' not found");
    resp_free(&r);
    const char *bad = "{\"inputs\":[{\"name\":\"x\",";
    req(fx, "POST", "/v2/models/mlp/infer", USER, bad, strlen(bad), &r);
    assert_error_body(&r, 400, "malformed JSON");
    resp_free(&r);
    const char *dt =
        "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"INT32\",\"data\":[1,2,3,4]}]}";
    req(fx, "POST", "/v2/models/mlp/infer", USER, dt, strlen(dt), &r);
    assert_error_body(&r, 400, "input 'x': datatype INT32, but the model expects FP32");
    resp_free(&r);
    const char *sh = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,3],\"datatype\":\"FP32\",\"data\":[1,2,3]}]}";
    req(fx, "POST", "/v2/models/mlp/infer", USER, sh, strlen(sh), &r);
    assert_error_body(&r, 400, "input 'x': shape [1,3], but the model expects [-1,4]");
    resp_free(&r);
    const char *cnt =
        "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[1,2,3]}]}";
    req(fx, "POST", "/v2/models/mlp/infer", USER, cnt, strlen(cnt), &r);
    assert_error_body(&r, 400, "input 'x': shape holds 4 elements but data has 3");
    resp_free(&r);
    /* An error from the executor keeps its code: capacity -> 507. */
    const char *anyb = "{\"inputs\":[{\"name\":\"w\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}";
    req(fx, "POST", "/v2/models/any/versions/1/infer", USER, anyb, strlen(anyb), &r);
    assert_error_body(&r, 507, "no device memory");
    resp_free(&r);
    /* An error through completion: the handler refuses INT32 on an undeclared model. */
    const char *i32 = "{\"inputs\":[{\"name\":\"w\",\"shape\":[1],\"datatype\":\"INT32\",\"data\":[1]}]}";
    req(fx, "POST", "/v2/models/any/infer", USER, i32, strlen(i32), &r);
    assert_error_body(&r, 400, "input 'w' must be FP32");
    resp_free(&r);
    req(fx, "GET", "/v2/models/mlp/infer", USER, NULL, 0, &r);
    assert_error_body(&r, 405, "method");
    assert_non_null(strstr(r.raw, "Allow: POST\r\n"));
    resp_free(&r);
}

static void url_edge_cases(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "GET", "/v2/health/live%41", "", NULL, 0, &r);
    assert_error_body(&r, 404, "no such endpoint");
    resp_free(&r);
    req(fx, "GET", "/v2/models/ml%70", USER, NULL, 0, &r); /* %70 = 'p' */
    assert_int_equal(r.status, 200);
    resp_free(&r);
    const char *odd[] = {"/v2/models/mlp%",        "/v2/models/mlp%4", "/v2/models/%", "/v2/%41%41%41", "/%",
                         "/v2/models/mlp/ready%41"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        req(fx, "GET", odd[i], USER, NULL, 0, &r);
        if (r.status != 400 && r.status != 404) fail_msg("%s: status %d", odd[i], r.status);
        resp_free(&r);
    }
    const char *trav[] = {"/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
                          "/v2/models/../infer",
                          "/v2/models/.hidden",
                          "/v2/models/a%2Fb/ready",
                          "/v2/models/..",
                          "/v2/repository/models/..%2Fx/load"};
    for (size_t i = 0; i < sizeof trav / sizeof trav[0]; i++) {
        req(fx, i == 0 || i == 1 || i == 5 ? "POST" : "GET", trav[i], ADMIN, "{}", 2, &r);
        if (r.status != 400 && r.status != 404) fail_msg("%s: status %d", trav[i], r.status);
        json_t *j = body_json(&r);
        assert_non_null(json_object_get(j, "error"));
        json_decref(j);
        resp_free(&r);
    }
    char longname[400];
    memset(longname, 'a', sizeof longname);
    memcpy(longname, "/v2/models/", 11);
    longname[11 + AICFN_FN_NAME_MAX_BYTES + 1] = '\0';
    req(fx, "GET", longname, USER, NULL, 0, &r);
    assert_error_body(&r, 400, "invalid model name");
    resp_free(&r);
    /* The server still serves. */
    req(fx, "GET", "/v2/health/live", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void auth_rules(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "GET", "/v2/models/mlp", "", NULL, 0, &r);
    assert_error_body(&r, 401, "missing API key");
    resp_free(&r);
    req(fx, "POST", "/v2/models/mlp/infer", "Authorization: Bearer revoked\r\n", INFER_BODY,
        strlen(INFER_BODY), &r);
    assert_error_body(&r, 401, "revoked");
    resp_free(&r);
    req(fx, "POST", "/v2/models/mlp/infer", "Authorization: Basic dXNlcjpwYXNz\r\n", INFER_BODY,
        strlen(INFER_BODY), &r);
    assert_error_body(&r, 401, "missing API key");
    resp_free(&r);
    req(fx, "POST", "/v2/repository/models/mlp/load", USER, NULL, 0, &r);
    assert_error_body(&r, 403, "admin");
    resp_free(&r);
    req(fx, "POST", "/v2/models/mlp/infer", "Authorization: Bearer poor-key\r\n", INFER_BODY,
        strlen(INFER_BODY), &r);
    assert_error_body(&r, 429, "rate limit");
    char v[16];
    assert_non_null(hdr(&r, "Retry-After", v, sizeof v));
    assert_string_equal(v, "3");
    resp_free(&r);
    /* A refusal of a request without a body keeps the connection: the next request on
     * it is served. One whose body goes unread closes it. */
    int fd = dial(fx->port);
    const char *two[] = {"GET /v2/models/mlp HTTP/1.1\r\nHost: t\r\n\r\n",
                         "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"};
    int want[] = {401, 404};
    char v2[16];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(send_all(fd, two[i], strlen(two[i])), 0);
        read_resp(fd, &r, 3000);
        assert_int_equal(r.status, want[i]);
        assert_null(hdr(&r, "Connection", v2, sizeof v2));
        resp_free(&r);
    }
    const char *live = "GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_int_equal(send_all(fd, live, strlen(live)), 0);
    read_resp(fd, &r, 3000);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n",
                     strlen(INFER_BODY));
    assert_int_equal(send_all(fd, head, (size_t)n), 0);
    read_resp(fd, &r, 3000);
    assert_int_equal(r.status, 401);
    assert_non_null(hdr(&r, "Connection", v2, sizeof v2));
    assert_string_equal(v2, "close");
    resp_free(&r);
    close(fd);
    /* Health probes need no key; /metrics an admin key (its series name every tenant's
     * functions), unless the server was started with metrics_public. */
    req(fx, "GET", "/v2/health/ready", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    req(fx, "GET", "/metrics", "", NULL, 0, &r);
    assert_error_body(&r, 401, "missing API key");
    resp_free(&r);
    req(fx, "GET", "/metrics", USER, NULL, 0, &r);
    assert_error_body(&r, 403, "/metrics needs an admin key");
    resp_free(&r);
    req(fx, "GET", "/metrics", ADMIN, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static gw_http_call *held_call(fixture *fx) {
    pthread_mutex_lock(&fx->f.mu);
    gw_http_call *c = fx->f.held;
    pthread_mutex_unlock(&fx->f.mu);
    return c;
}

static int gone_calls(fixture *fx, uint64_t *token) {
    pthread_mutex_lock(&fx->f.mu);
    int n = fx->f.gone_calls;
    if (token) *token = fx->f.gone_token;
    pthread_mutex_unlock(&fx->f.mu);
    return n;
}

/* A client that closes its connection while its call waits (suspended): client_gone gets
 * the call's token within about the reaper's 200 ms, once; a client that stays is never
 * reported, and gets its answer. */
static void client_gone_is_reported_for_a_waiting_call(void **state) {
    fixture *fx = *state;
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST /v2/models/held/infer HTTP/1.1\r\nHost: t\r\n" USER "Content-Length: %zu\r\n\r\n",
                     strlen(INFER_BODY));
    /* One that stays: no report in 600 ms, then answered. */
    int fd = dial(fx->port);
    assert_int_equal(send_all(fd, head, (size_t)n), 0);
    assert_int_equal(send_all(fd, INFER_BODY, strlen(INFER_BODY)), 0);
    for (int ms = 0; ms < 5000 && held_call(fx) == NULL; ms += 5)
        sleep_ms(5);
    gw_http_call *held = held_call(fx);
    assert_non_null(held);
    sleep_ms(600);
    assert_int_equal(gone_calls(fx, NULL), 0);
    pthread_mutex_lock(&fx->f.mu);
    fx->f.held = NULL;
    pthread_mutex_unlock(&fx->f.mu);
    aicfn_error e;
    aicfn_error_set(&e, AICFN_E_TIMEOUT, "held no longer");
    gw_http_complete(held, e.code, &e, NULL, 0);
    resp r;
    read_resp(fd, &r, 5000);
    assert_int_equal(r.status, aicfn_http_status(AICFN_E_TIMEOUT));
    resp_free(&r);
    close(fd);
    /* One that leaves. */
    fd = dial(fx->port);
    assert_int_equal(send_all(fd, head, (size_t)n), 0);
    assert_int_equal(send_all(fd, INFER_BODY, strlen(INFER_BODY)), 0);
    for (int ms = 0; ms < 5000 && held_call(fx) == NULL; ms += 5)
        sleep_ms(5);
    assert_non_null(held_call(fx));
    uint64_t t0 = clock_now_us();
    close(fd);
    uint64_t token = 0;
    for (int ms = 0; ms < 5000 && gone_calls(fx, &token) == 0; ms += 5)
        sleep_ms(5);
    assert_int_equal(gone_calls(fx, &token), 1);
    assert_int_equal(token, 4242);
    assert_true(clock_now_us() - t0 < 2000000);
    assert_null(held_call(fx)); /* fk_client_gone completed it */
    sleep_ms(500);
    assert_int_equal(gone_calls(fx, NULL), 1); /* once */
}

static void metrics_public_needs_no_key(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "GET", "/metrics", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "# TYPE aicfn_calls_total counter\n"));
    resp_free(&r);
    req(fx, "GET", "/v2/models/mlp", "", NULL, 0, &r); /* the rest still needs one */
    assert_error_body(&r, 401, "missing API key");
    resp_free(&r);
}

static void repository_extension(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "POST", "/v2/repository/index", USER, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_int_equal(json_array_size(j), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 1), "state")), "UNAVAILABLE");
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "version")), "2");
    json_decref(j);
    resp_free(&r);
    req(fx, "POST", "/v2/repository/index", USER, "{\"ready\":true}", 14, &r);
    j = body_json(&r);
    assert_int_equal(json_array_size(j), 1);
    json_decref(j);
    resp_free(&r);
    req(fx, "POST", "/v2/repository/index", USER, "{\"ready\":", 9, &r);
    assert_error_body(&r, 400, "JSON object");
    resp_free(&r);
    /* Valid JSON, but far more than the flag it may hold: refused on its Content-Length,
     * before a byte of it is buffered (it was read whole, up to max_body, before). */
    char big[8192];
    size_t n = (size_t)snprintf(big, sizeof big, "{\"ready\":true,\"x\":[0");
    while (n + 4 < sizeof big)
        n += (size_t)snprintf(big + n, sizeof big - n, ",0");
    n += (size_t)snprintf(big + n, sizeof big - n, "]}");
    req(fx, "POST", "/v2/repository/index", USER, big, n, &r);
    assert_error_body(&r, 413, "exceeds the limit of 4096 bytes");
    resp_free(&r);
    req(fx, "POST", "/v2/repository/models/mlp/load", ADMIN, "{}", 2, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    req(fx, "POST", "/v2/repository/models/other/load", ADMIN, NULL, 0, &r);
    assert_error_body(&r, 404, "not found");
    resp_free(&r);
    req(fx, "POST", "/v2/repository/models/mlp/unload", ADMIN, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    assert_int_equal(fx->f.loads, 1);
    assert_int_equal(fx->f.unloads, 1);
}

static void metrics_endpoint(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "POST", "/v2/models/mlp/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
    resp_free(&r);
    req(fx, "GET", "/v2/models/nosuch", USER, NULL, 0, &r);
    resp_free(&r);
    req(fx, "GET", "/metrics", ADMIN, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    char v[64];
    assert_non_null(hdr(&r, "Content-Type", v, sizeof v));
    assert_non_null(strstr(v, "version=0.0.4"));
    assert_non_null(strstr(r.body, "aicfn_http_requests_total{endpoint=\"infer\",code=\"200\"} 1\n"));
    assert_non_null(strstr(r.body, "aicfn_http_requests_total{endpoint=\"model\",code=\"404\"} 1\n"));
    assert_non_null(strstr(r.body, "# TYPE aicfn_calls_total counter\n"));
    resp_free(&r);
}

/* Clients that announce 1 MiB bodies and send one byte hold only the first bytes of the
 * buffered budget (2 MiB here), not what they announced, so others are still served. */
static void announced_bodies_reserve_as_they_arrive(void **state) {
    fixture *fx = *state; /* max_body 1 MiB, max_buffered 2 MiB */
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\n" USER "Content-Length: %d\r\n\r\n{",
                     1 << 20);
    int idle[4];
    for (int i = 0; i < 4; i++) {
        idle[i] = dial(fx->port);
        assert_int_equal(send_all(idle[i], head, (size_t)n), 0);
    }
    sleep_ms(200); /* the server has read their headers and first byte */
    resp r;
    req(fx, "POST", "/v2/models/mlp/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
    check_y(&r, "q1");
    resp_free(&r);
    for (int i = 0; i < 4; i++)
        close(idle[i]);
}

/* A response counts in the buffered budget (2 MiB here) from before it is encoded: one
 * whose JSON could never fit is refused (413, naming binary data: no retry would help)
 * rather than built; the same output asked for as binary data fits and is served. */
static void responses_count_in_the_buffered_budget(void **state) {
    fixture *fx = *state; /* max_body 1 MiB, max_buffered 2 MiB */
    enum { N = 32768 };   /* y: 32768 values, at most 80 bytes each as JSON: over 2 MiB */
    char js[512];
    for (int binary_out = 0; binary_out <= 1; binary_out++) {
        int jl =
            snprintf(js, sizeof js,
                     "{\"inputs\":[{\"name\":\"x\",\"shape\":[%d,4],\"datatype\":\"FP32\",\"parameters\":"
                     "{\"binary_data_size\":%d}}],\"outputs\":[{\"name\":\"y\"%s}]}",
                     N / 4, N * 4, binary_out ? ",\"parameters\":{\"binary_data\":true}" : "");
        uint8_t *body = calloc(1, (size_t)jl + N * 4);
        assert_non_null(body);
        memcpy(body, js, (size_t)jl);
        char h[160];
        snprintf(h, sizeof h,
                 USER "Inference-Header-Content-Length: %d\r\nContent-Type: application/octet-stream\r\n",
                 jl);
        resp r;
        req(fx, "POST", "/v2/models/mlp/infer", h, body, (size_t)jl + N * 4, &r);
        free(body);
        if (binary_out) {
            if (r.status != 200) fail_msg("status %d: %.*s", r.status, (int)r.body_len, r.body);
        } else {
            assert_error_body(&r, 413, "binary_data");
            char v[16];
            assert_null(hdr(&r, "Retry-After", v, sizeof v)); /* not worth retrying */
        }
        resp_free(&r);
    }
    /* Nothing stays counted: a small call is served after both. */
    resp r;
    req(fx, "POST", "/v2/models/mlp/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
    check_y(&r, "q1");
    resp_free(&r);
}

/* A call that ran is answered even when the buffered budget (2 MiB here) is full by then:
 * its response overdraws it (up to twice it) rather than be answered "retry" (a client
 * retrying would run the call again). 28 clients hold 64 KiB each of announced bodies (1.75 MiB); a
 * call with 32 KiB of input fits beside them, and its JSON answer of 8192 values (up to
 * 640 KiB) does not. */
static void a_call_that_ran_overdraws_the_budget_for_its_answer(void **state) {
    fixture *fx = *state; /* max_body 1 MiB, max_buffered 2 MiB */
    enum { N = 8192, IDLE = 28 };
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\n" USER "Content-Length: %d\r\n\r\n{",
                     1 << 20);
    int idle[IDLE];
    for (int i = 0; i < IDLE; i++) {
        idle[i] = dial(fx->port);
        assert_int_equal(send_all(idle[i], head, (size_t)n), 0);
    }
    sleep_ms(300); /* the server has read their headers and first byte */
    char js[512];
    int jl = snprintf(js, sizeof js,
                      "{\"inputs\":[{\"name\":\"x\",\"shape\":[%d,4],\"datatype\":\"FP32\",\"parameters\":"
                      "{\"binary_data_size\":%d}}],\"outputs\":[{\"name\":\"y\"}]}",
                      N / 4, N * 4);
    uint8_t *body = calloc(1, (size_t)jl + N * 4);
    assert_non_null(body);
    memcpy(body, js, (size_t)jl);
    char h[160];
    snprintf(h, sizeof h,
             USER "Inference-Header-Content-Length: %d\r\nContent-Type: application/octet-stream\r\n", jl);
    resp r;
    req(fx, "POST", "/v2/models/mlp/infer", h, body, (size_t)jl + N * 4, &r);
    free(body);
    if (r.status != 200) fail_msg("status %d: %.*s", r.status, (int)r.body_len, r.body);
    resp_free(&r);
    for (int i = 0; i < IDLE; i++)
        close(idle[i]);
    sleep_ms(300); /* their shares given back */
    req(fx, "POST", "/v2/models/mlp/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
    check_y(&r, "q1");
    resp_free(&r);
}

static void body_limit_413_before_read(void **state) {
    fixture *fx = *state; /* max_body 4096 */
    int fd = dial(fx->port);
    const char *head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 104857600\r\n\r\n";
    assert_int_equal(send_all(fd, head, strlen(head)), 0);
    send_all(fd, "{\"inputs\":", 10); /* a little of the body; the rest never comes */
    resp r;
    uint64_t t0 = clock_now_us();
    read_resp(fd, &r, 3000);
    assert_error_body(&r, 413, "exceeds the limit of 4096 bytes");
    assert_true(clock_now_us() - t0 < 2000000); /* answered without waiting for 100 MiB */
    resp_free(&r);
    close(fd);
    /* With Expect: 100-continue the client is refused before it sends a byte. */
    fd = dial(fx->port);
    head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: "
           "5000\r\n\r\n";
    assert_int_equal(send_all(fd, head, strlen(head)), 0);
    read_resp(fd, &r, 3000);
    assert_int_equal(r.status, 413);
    resp_free(&r);
    close(fd);
    /* Chunked: counted while streaming. A little over the limit: the excess is discarded
     * unstored and 413 is sent when the body ends. */
    char chunk[1100];
    memset(chunk, ' ', sizeof chunk);
    memcpy(chunk, "400\r\n", 5);
    memcpy(chunk + 5 + 1024, "\r\n", 2);
    head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    fd = dial(fx->port);
    assert_int_equal(send_all(fd, head, strlen(head)), 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(send_all(fd, chunk, 5 + 1024 + 2), 0); /* 6 KiB > 4 KiB */
    assert_int_equal(send_all(fd, "0\r\n\r\n", 5), 0);
    read_resp(fd, &r, 3000);
    assert_error_body(&r, 413, "exceeds the limit of 4096 bytes");
    resp_free(&r);
    close(fd);
    /* Far over the limit: the connection is dropped after another max_body bytes, long
     * before the 16 MiB offered is read. */
    fd = dial(fx->port);
    assert_int_equal(send_all(fd, head, strlen(head)), 0);
    int sent = 0;
    for (int i = 0; i < 16384; i++) {
        if (send_all(fd, chunk, 5 + 1024 + 2) != 0) break;
        sent++;
    }
    read_resp(fd, &r, 3000);
    assert_int_equal(r.status, 0);
    assert_true(sent < 16384); /* the server stopped reading: our sends failed */
    resp_free(&r);
    close(fd);
    /* Content-Length and chunked at once (a smuggling shape): 400, not a 413 naming a
     * limit the request did not pass. */
    fd = dial(fx->port);
    head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: "
           "chunked\r\n\r\n";
    assert_int_equal(send_all(fd, head, strlen(head)), 0); /* refused on its headers: */
    read_resp(fd, &r, 3000);                               /* no body is read */
    assert_error_body(&r, 400, "both Content-Length and Transfer-Encoding");
    resp_free(&r);
    close(fd);
    /* A body within the limit still works, and the server still serves. */
    req(fx, "POST", "/v2/models/mlp/infer", "", INFER_BODY, strlen(INFER_BODY), &r);
    check_y(&r, "q1");
    resp_free(&r);
}

/* An infer body of N FP32 values "0," (2 bytes each) into model "any". */
static char *zeros_body(size_t n, size_t *len) {
    const char *pre = "{\"inputs\":[{\"name\":\"x\",\"shape\":[";
    char *b = malloc(strlen(pre) + 64 + 2 * n);
    assert_non_null(b);
    size_t k = (size_t)sprintf(b, "%s%zu],\"datatype\":\"FP32\",\"data\":[", pre, n);
    for (size_t i = 0; i < n; i++) {
        b[k++] = '0';
        b[k++] = ',';
    }
    k--; /* no comma after the last */
    k += (size_t)sprintf(b + k, "]}]}");
    *len = k;
    return b;
}

/* A JSON infer holds more than its body while it runs: its decoded tensors and the
 * gateway's copy of them, which the budget counts (2 MiB here). Before, only the body
 * was: a body of 600 kB decoding to 2.4 MB more passed, so 256 connections could hold
 * several times the budget. */
static void decoded_inputs_count_in_the_budget(void **state) {
    fixture *fx = *state;
    size_t len;
    char *big = zeros_body(300000, &len); /* 600 kB: 1.2 MB decoded, 1.2 MB copied */
    resp r;
    req(fx, "POST", "/v2/models/any/infer", USER, big, len, &r);
    assert_error_body(&r, 429, "too many request bytes in flight");
    resp_free(&r);
    free(big);
    char *small = zeros_body(1000, &len);
    req(fx, "POST", "/v2/models/any/infer", USER, small, len, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    free(small);
}

/* Endpoints that take no body (the unauthenticated ones among them) buffer none: a body
 * announced is refused at once with 400, a chunked one when it ends, and while clients
 * hold such requests open an authenticated inference still gets its buffer. */
static void bodyless_endpoints_buffer_nothing(void **state) {
    fixture *fx = *state; /* max_body 1 MiB, max_buffered 2 MiB */
    resp r;
    int fd = dial(fx->port);
    const char *head = "GET /v2/health/live HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n";
    assert_int_equal(send_all(fd, head, strlen(head)), 0);
    read_resp(fd, &r, 3000);
    assert_error_body(&r, 400, "takes no request body");
    resp_free(&r);
    close(fd);
    /* Chunked, just under a MiB each from four clients that then go quiet: before, each
     * held up to max_body of the 2 MiB budget. */
    char chunk[5 + 1024 + 2];
    memset(chunk, 'x', sizeof chunk);
    memcpy(chunk, "400\r\n", 5);
    memcpy(chunk + 5 + 1024, "\r\n", 2);
    head = "GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    int idle[4];
    for (int i = 0; i < 4; i++) {
        idle[i] = dial(fx->port);
        assert_int_equal(send_all(idle[i], head, strlen(head)), 0);
        for (int k = 0; k < 1000; k++)
            assert_int_equal(send_all(idle[i], chunk, sizeof chunk), 0);
    }
    sleep_ms(200);
    req(fx, "POST", "/v2/models/mlp/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
    check_y(&r, "q1");
    resp_free(&r);
    /* The end of the last one (the youngest, far from the 2 s receive limit): the 400. */
    assert_int_equal(send_all(idle[3], "0\r\n\r\n", 5), 0);
    read_resp(idle[3], &r, 3000);
    assert_error_body(&r, 400, "takes no request body");
    resp_free(&r);
    for (int i = 0; i < 4; i++)
        close(idle[i]);
    /* Content-Length: 0 is no body. */
    req(fx, "GET", "/v2/health/live", "", NULL, 0, &r); /* req sends Content-Length: 0 */
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void oversized_header_refused(void **state) {
    fixture *fx = *state;
    size_t n = 300 * 1024;
    char *big = malloc(n + 256);
    int off = snprintf(big, 256, "GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(big + off, 'a', n);
    memcpy(big + off + n, "\r\n\r\n", 5);
    int fd = dial(fx->port);
    send_all(fd, big, off + n + 4); /* the server may stop reading half-way */
    resp r;
    read_resp(fd, &r, 3000);
    assert_true(r.status == 431 || r.status == 413 || r.status == 0);
    resp_free(&r);
    close(fd);
    free(big);
    req(fx, "GET", "/v2/health/live", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void slowloris_cut_off_while_others_served(void **state) {
    fixture *fx = *state; /* receive timeout 2 s, idle timeout 5 s */
    int slow = dial(fx->port);
    const char *head = "GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    assert_int_equal(send_all(slow, head, strlen(head)), 0);
    uint64_t t0 = clock_now_us();
    bool cut = false;
    int served = 0;
    for (int i = 0; i < 12 && !cut; i++) { /* one byte per 500 ms, bounded at 6 s */
        if (send(slow, "a", 1, MSG_NOSIGNAL) != 1) {
            cut = true;
            break;
        }
        resp r; /* meanwhile another client is served promptly */
        uint64_t s0 = clock_now_us();
        req(fx, "GET", "/v2/health/live", "", NULL, 0, &r);
        assert_int_equal(r.status, 200);
        assert_true(clock_now_us() - s0 < 1000000);
        served++;
        resp_free(&r);
        sleep_ms(500);
        struct pollfd p = {.fd = slow, .events = POLLIN};
        if (poll(&p, 1, 0) == 1) {
            char b[64];
            ssize_t k = recv(slow, b, sizeof b, MSG_DONTWAIT);
            if (k <= 0) cut = true;
        }
    }
    uint64_t took = clock_now_us() - t0;
    close(slow);
    assert_true(cut);
    assert_true(served >= 2);
    assert_true(took >= 1500000 && took < 5000000); /* cut near the 2 s deadline, before the idle timeout */
}

/* A request trickled over `ms` ms on fd (headers one byte every 100 ms): its status, 0
 * when the connection was cut. */
static int trickled_get(int fd, unsigned ms) {
    const char *head = "GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Pad: ";
    if (send_all(fd, head, strlen(head))) return 0;
    for (unsigned t = 0; t < ms; t += 100) {
        if (send(fd, "a", 1, MSG_NOSIGNAL) != 1) return 0;
        sleep_ms(100);
    }
    if (send_all(fd, "\r\n\r\n", 4)) return 0;
    resp r;
    read_resp(fd, &r, 3000);
    int st = r.status;
    resp_free(&r);
    return st;
}

/* The receive deadline (2 s) of a request on a kept-alive connection starts with its
 * request line, not when the previous response left: the idle time between them (MHD's
 * idle timeout covers it) used to be charged to the request, which was cut short. */
static void keepalive_request_gets_the_whole_receive_deadline(void **state) {
    fixture *fx = *state; /* receive timeout 2 s, idle timeout 5 s */
    int fresh = dial(fx->port);
    assert_int_equal(trickled_get(fresh, 1200), 200);
    close(fresh);
    int ka = dial(fx->port);
    const char *first = "GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_int_equal(send_all(ka, first, strlen(first)), 0);
    resp r;
    read_resp(ka, &r, 3000);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    sleep_ms(1500); /* idle, under the 5 s idle timeout */
    assert_int_equal(trickled_get(ka, 1200), 200);
    close(ka);
}

static void concurrent_calls_do_not_block_each_other(void **state) {
    fixture *fx = *state;
    /* A slow call (800 ms) in flight does not hold up a fast one. */
    int fd = dial(fx->port);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" USER
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(INFER_BODY), INFER_BODY);
    uint64_t t0 = clock_now_us();
    assert_int_equal(send_all(fd, head, (size_t)n), 0);
    resp r;
    for (int i = 0; i < 5; i++) {
        req(fx, "POST", "/v2/models/sync/infer", USER, INFER_BODY, strlen(INFER_BODY), &r);
        check_y(&r, "q1");
        resp_free(&r);
    }
    assert_true(clock_now_us() - t0 < 700000);
    read_resp(fd, &r, 5000);
    check_y(&r, "q1");
    assert_true(clock_now_us() - t0 >= 790000);
    resp_free(&r);
    close(fd);
}

static void stop_waits_for_calls_in_flight(void **state) {
    fixture *fx = *state;
    int fd = dial(fx->port);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" USER
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(INFER_BODY), INFER_BODY);
    assert_int_equal(send_all(fd, head, (size_t)n), 0);
    for (int i = 0; i < 100 && infers(&fx->f) == 0; i++)
        sleep_ms(10);
    assert_int_equal(infers(&fx->f), 1);
    uint64_t t0 = clock_now_us();
    assert_true(gw_http_stop(fx->h)); /* waits for the slow call's completion */
    fx->h = NULL;
    assert_true(clock_now_us() - t0 >= 600000);
    close(fd);
}

/* A call still in flight when the stop's wait ends: gw_http_stop returns false and the
 * server runs on detached. What cfg pointed to may be freed at once (the gateway frees
 * its front): the late answer still goes out, a new request on a kept-alive connection
 * gets 503 without reaching any callback, and a second stop frees the server. */
static void stop_timeout_detaches_the_server(void **state) {
    fixture *fx = *state; /* stop_wait_ms 100 */
    int keep = dial(fx->port);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\n" USER "Content-Length: %zu\r\n\r\n",
                     strlen(INFER_BODY));
    assert_int_equal(send_all(keep, head, (size_t)n), 0);
    assert_int_equal(send_all(keep, INFER_BODY, strlen(INFER_BODY)), 0);
    resp r;
    read_resp(keep, &r, 5000);
    check_y(&r, "q1");
    resp_free(&r);
    int slow = dial(fx->port);
    n = snprintf(head, sizeof head,
                 "POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" USER
                 "Content-Length: %zu\r\n\r\n%s",
                 strlen(INFER_BODY), INFER_BODY);
    assert_int_equal(send_all(slow, head, (size_t)n), 0);
    for (int i = 0; i < 100 && infers(&fx->f) < 2; i++)
        sleep_ms(10);
    assert_int_equal(infers(&fx->f), 2);
    uint64_t t0 = clock_now_us();
    assert_false(gw_http_stop(fx->h)); /* the slow call (800 ms) outlives the 100 ms wait */
    assert_true(clock_now_us() - t0 < 600000);
    gw_metrics_destroy(fx->m); /* what the front frees once the stop returned */
    fx->m = NULL;
    read_resp(slow, &r, 5000); /* the late completion still answers */
    check_y(&r, "q1");
    resp_free(&r);
    close(slow);
    assert_int_equal(send_all(keep, head, (size_t)n), 0);
    read_resp(keep, &r, 5000);
    assert_int_equal(r.status, 503);
    resp_free(&r);
    close(keep);
    assert_int_equal(infers(&fx->f), 2); /* no callback after the stop */
    assert_true(gw_http_stop(fx->h));
    fx->h = NULL;
}

/* A callback still running when the stop's wait for calls ends is waited for all the
 * same: the caller frees the callbacks' context once the stop returns. Before, the stop
 * gave up after stop_wait_ms and returned with the callback still inside. */
static void stop_waits_for_a_running_callback_past_its_wait(void **state) {
    fixture *fx = *state; /* stop_wait_ms 100 */
    atomic_store(&g_stuck_entered, 0);
    atomic_store(&g_stuck_left, 0);
    int s = dial(fx->port);
    const char *get = "GET /v2/models/stuck HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" USER "\r\n";
    assert_int_equal(send_all(s, get, strlen(get)), 0);
    for (int i = 0; i < 500 && !atomic_load(&g_stuck_entered); i++)
        sleep_ms(2);
    assert_true(atomic_load(&g_stuck_entered));
    gw_http_stop(fx->h);
    fx->h = NULL;
    assert_true(atomic_load(&g_stuck_left)); /* nothing of ours runs after the stop */
    close(s);
}

static void noauth_mode_and_bad_config(void **state) {
    fixture *fx = *state;
    resp r;
    req(fx, "POST", "/v2/repository/models/mlp/load", "", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    req(fx, "POST", "/v2/models/mlp/infer", "", INFER_BODY, strlen(INFER_BODY), &r);
    check_y(&r, "q1");
    resp_free(&r);
    assert_string_equal(fx->f.last_tenant, "");
    gw_http *h2 = NULL;
    gw_http_callbacks cb = {0};
    aicfn_error err;
    gw_http_config bad = {.listen = "nonsense"};
    assert_int_equal(gw_http_start(&bad, &cb, &h2, &err), AICFN_E_INVALID);
    char inuse[64];
    snprintf(inuse, sizeof inuse, "127.0.0.1:%u", (unsigned)fx->port);
    gw_http_config busy = {.listen = inuse};
    assert_int_equal(gw_http_start(&busy, &cb, &h2, &err), AICFN_E_IO);
    assert_non_null(strstr(err.msg, inuse));
    assert_true(gw_http_model_name_ok("mlp-v2_x.1"));
    assert_false(gw_http_model_name_ok(".."));
    assert_false(gw_http_model_name_ok("a/b"));
    assert_false(gw_http_model_name_ok(""));
    gw_http_stop(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(health_and_server_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(model_metadata_and_ready, setup, teardown),
        cmocka_unit_test_setup_teardown(infer_ok_async_and_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(infer_binary_both_ways, setup, teardown),
        cmocka_unit_test_setup_teardown(infer_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(url_edge_cases, setup, teardown),
        cmocka_unit_test_setup_teardown(auth_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(repository_extension, setup, teardown),
        cmocka_unit_test_setup_teardown(metrics_endpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(metrics_public_needs_no_key, setup_public_metrics, teardown),
        cmocka_unit_test_setup_teardown(client_gone_is_reported_for_a_waiting_call, setup, teardown),
        cmocka_unit_test_setup_teardown(responses_count_in_the_buffered_budget, setup_small_budget, teardown),
        cmocka_unit_test_setup_teardown(a_call_that_ran_overdraws_the_budget_for_its_answer,
                                        setup_small_budget, teardown),
        cmocka_unit_test_setup_teardown(announced_bodies_reserve_as_they_arrive, setup_small_budget,
                                        teardown),
        cmocka_unit_test_setup_teardown(bodyless_endpoints_buffer_nothing, setup_small_budget, teardown),
        cmocka_unit_test_setup_teardown(decoded_inputs_count_in_the_budget, setup_small_budget, teardown),
        cmocka_unit_test_setup_teardown(body_limit_413_before_read, setup_noauth, teardown),
        cmocka_unit_test_setup_teardown(oversized_header_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(slowloris_cut_off_while_others_served, setup, teardown),
        cmocka_unit_test_setup_teardown(keepalive_request_gets_the_whole_receive_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(concurrent_calls_do_not_block_each_other, setup, teardown),
        cmocka_unit_test_setup_teardown(stop_waits_for_calls_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(stop_timeout_detaches_the_server, setup_short_stop, teardown),
        cmocka_unit_test_setup_teardown(stop_waits_for_a_running_callback_past_its_wait, setup_short_stop,
                                        teardown),
        cmocka_unit_test_setup_teardown(noauth_mode_and_bad_config, setup_noauth, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
