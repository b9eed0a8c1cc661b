/* bench_invoke.c: `zig build bench-invoke`: the cost of the gateway on the invocation
 * path. In one run, on the same transport (tcp loopback) and the same client code, it
 * measures a warm `echo` through `aicfn gateway` (gateway -> local worker over ipc ->
 * handler -> back) and a bare NNG REQ/REP echo server (common/rpc.h, replying with the
 * request bytes): p50/p99 latency with one client (gateway and bare alternate in blocks
 * of 100 calls, so both see the same machine), and throughput with 1, 4 and 16
 * concurrent clients. It then measures mlp cold starts (the worker idles out between
 * calls, so each call spawns a worker and loads the model) and reports their p50 per
 * phase from the gateway's cold_starts records.
 *
 * It also compares the gateway with a second one started with --bundles always (bundles,
 * docs/protocol.md §9: by default only remote workers get them, and this gateway's
 * worker is local), 16 clients, alternating rounds.
 * Two more targets join the 16-client rounds ("case":"floor"): the bare echo in a process
 * of its own (`bench-invoke --serve-bare ADDR`; the summary's floor stays the bare echo
 * inside this process, whose server threads share NNG's pool and the address space with
 * the clients, which makes it the faster of the two) and the gateway answering
 * `echo_cached` (echo with the response cache on) from its cache: the gateway's front
 * alone, no worker link, an upper bound for any faster link to the worker.
 * Output: JSON lines, the last {"bench":"invoke","summary":{...}} with the ratios
 * gateway/bare (targets: p50 ratio <= 2.2, 16-client throughput ratio >= 0.5).
 * Options: --aicfn PATH (default: the aicfn beside this binary), --seconds S per
 * throughput case (default 2), --calls N latency samples (default 2000), --cold N cold
 * starts (default 5), --hold gateway:S or --hold bare:S (only 16 clients on that
 * target for S seconds, nothing else: a steady load to profile, e.g. with `perf record -a`
 * and `perf script -F pid` to split the CPU time between clients, gateway and worker). Runs a gateway with
 * its own temporary data directory. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/free_port.h"
#include "common/clock.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/wire.h"

static char g_aicfn[PATH_MAX];
static double g_seconds = 2.0;
static int g_calls = 2000;
static int g_cold = 5;
static double g_hold = 0; /* --hold TARGET:S: only 16 clients on TARGET for S seconds (to profile) */
static char g_hold_target[16] = ""; /* gateway or bare */

/* ---- the bare echo server ---- */

static void bare_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    (void)user;
    rpc_reply(call, msg, len);
}

/* `bench-invoke --serve-bare ADDR`: the bare echo server alone in this process until
 * SIGTERM (the floor in a process of its own, as a gateway is). */
static int serve_bare(const char *addr) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before NNG starts its threads */
    rpc_server *s = NULL;
    aicfn_error e;
    if (rpc_server_start(&s, addr, NULL, bare_handler, NULL, &e) != AICFN_OK) {
        fprintf(stderr, "bench-invoke: bare server: %s\n", e.msg);
        return 1;
    }
    int sig;
    sigwait(&set, &sig);
    rpc_server_destroy(s);
    return 0;
}

/* ---- requests ---- */

/* An invoke of `fn` with x = (i / 4 - 1) * scale, i < 16. */
static uint8_t *encode_invoke(const char *fn, float scale, size_t *len) {
    float x[16];
    for (int i = 0; i < 16; i++)
        x[i] = ((float)i * 0.25f - 1.0f) * scale;
    wire_tensor t = {
        .name = "x", .dtype = AICFN_DTYPE_FP32, .ndim = 2, .data = (const uint8_t *)x, .nbytes = sizeof x};
    t.shape[0] = 1;
    t.shape[1] = 16;
    wire_invoke_req req = {.id = 1, .fn = fn, .n_inputs = 1, .inputs = &t};
    wire_writer w;
    wire_writer_init(&w);
    if (wire_encode_invoke_req(&w, &req, NULL) != AICFN_OK) {
        fprintf(stderr, "bench-invoke: encoding a request failed\n");
        exit(1);
    }
    uint8_t *out = wire_writer_take(&w, len);
    wire_writer_fini(&w);
    return out;
}

static int reply_ok(rpc_msg *m) {
    wire_doc doc;
    wire_reply_head h;
    int ok = wire_doc_parse(&doc, rpc_msg_data(m), rpc_msg_len(m), NULL, NULL) == AICFN_OK &&
             wire_decode_reply_head(&doc, &h, NULL) == AICFN_OK && h.ok;
    wire_doc_fini(&doc);
    return ok;
}

/* ---- measurement ---- */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct lat_result {
    uint64_t p50, p99, errors;
} lat_result;

static void lat_summarize(uint64_t *s, int n, lat_result *r) {
    qsort(s, (size_t)n, sizeof *s, cmp_u64);
    r->p50 = s[(n - 1) / 2];
    r->p99 = s[(size_t)((n - 1) * 0.99)];
}

static rpc_client *lat_open(const char *addr) {
    rpc_client *c = NULL;
    aicfn_error e;
    if (rpc_client_open(&c, addr, NULL, &e) != AICFN_OK) {
        fprintf(stderr, "bench-invoke: %s\n", e.msg);
        exit(1);
    }
    return c;
}

/* One call on `c`, timed; counts an error in *errors. */
static uint64_t lat_call(rpc_client *c, const uint8_t *req, size_t len, int check, uint64_t *errors) {
    aicfn_error e;
    uint64_t t0 = clock_now_us();
    rpc_msg *m = NULL;
    int rc = rpc_call_sync(c, req, len, 30000, &m, &e);
    uint64_t dt = clock_now_us() - t0;
    if (rc != AICFN_OK || (check && !reply_ok(m))) (*errors)++;
    rpc_msg_free(m);
    return dt;
}

static lat_result latency(const char *addr, const uint8_t *req, size_t len, int n, int check) {
    lat_result r = {0, 0, 0};
    rpc_client *c = lat_open(addr);
    uint64_t *s = calloc((size_t)n, sizeof *s);
    for (int i = 0; i < n + 200; i++) {
        uint64_t dt = lat_call(c, req, len, check, &r.errors);
        if (i >= 200) s[i - 200] = dt; /* the first 200 warm up */
    }
    lat_summarize(s, n, &r);
    free(s);
    rpc_client_close(c);
    return r;
}

/* The gateway and the bare server measured side by side, one client each: blocks of
 * LAT_BLOCK calls alternate between them (the first LAT_BLOCK_WARM of each block are not
 * counted), so that a drift in this shared VM's speed over minutes hits both series
 * alike, while within a block each target runs in its steady state as it would alone. */
#define LAT_BLOCK 100
#define LAT_BLOCK_WARM 5
static void latency_pair(const char *gw, const char *bare, const uint8_t *req, size_t len, int n,
                         lat_result *rg, lat_result *rb) {
    memset(rg, 0, sizeof *rg);
    memset(rb, 0, sizeof *rb);
    rpc_client *cg = lat_open(gw), *cb = lat_open(bare);
    uint64_t *sg = calloc((size_t)n, sizeof *sg), *sb = calloc((size_t)n, sizeof *sb);
    for (int i = 0; i < 200; i++) { /* warm up both */
        (void)lat_call(cg, req, len, 1, &rg->errors);
        (void)lat_call(cb, req, len, 0, &rb->errors);
    }
    int ng = 0, nb = 0;
    while (ng < n || nb < n) {
        for (int k = 0; k < LAT_BLOCK + LAT_BLOCK_WARM && ng < n; k++) {
            uint64_t dt = lat_call(cg, req, len, 1, &rg->errors);
            if (k >= LAT_BLOCK_WARM) sg[ng++] = dt;
        }
        for (int k = 0; k < LAT_BLOCK + LAT_BLOCK_WARM && nb < n; k++) {
            uint64_t dt = lat_call(cb, req, len, 0, &rb->errors);
            if (k >= LAT_BLOCK_WARM) sb[nb++] = dt;
        }
    }
    lat_summarize(sg, n, rg);
    lat_summarize(sb, n, rb);
    free(sg);
    free(sb);
    rpc_client_close(cg);
    rpc_client_close(cb);
}

typedef struct tput_arg {
    const char *addr;
    const uint8_t *req;
    size_t len;
    uint64_t end_us;
    uint64_t calls, errors;
    int check;
} tput_arg;

static void *tput_thread(void *p) {
    tput_arg *a = p;
    rpc_client *c = NULL;
    aicfn_error e;
    if (rpc_client_open(&c, a->addr, NULL, &e) != AICFN_OK) {
        a->errors++;
        return NULL;
    }
    while (clock_now_us() < a->end_us) {
        rpc_msg *m = NULL;
        int rc = rpc_call_sync(c, a->req, a->len, 30000, &m, &e);
        if (rc != AICFN_OK || (a->check && !reply_ok(m)))
            a->errors++;
        else
            a->calls++;
        rpc_msg_free(m);
    }
    rpc_client_close(c);
    return NULL;
}

/* Calls per second of `clients` threads calling `addr` for `seconds`. */
static double throughput_for(const char *addr, const uint8_t *req, size_t len, int clients, int check,
                             double seconds, uint64_t *errors) {
    tput_arg args[16];
    pthread_t th[16];
    uint64_t t0 = clock_now_us();
    uint64_t end = t0 + (uint64_t)(seconds * 1e6);
    for (int i = 0; i < clients; i++) {
        args[i] = (tput_arg){addr, req, len, end, 0, 0, check};
        pthread_create(&th[i], NULL, tput_thread, &args[i]);
    }
    uint64_t calls = 0;
    *errors = 0;
    for (int i = 0; i < clients; i++) {
        pthread_join(th[i], NULL);
        calls += args[i].calls;
        *errors += args[i].errors;
    }
    double secs = (double)(clock_now_us() - t0) / 1e6;
    return (double)calls / secs;
}

#define TPUT_ROUNDS 4

/* One target of a throughput measurement: where the calls go and what they send. */
typedef struct tput_target {
    const char *addr;
    const uint8_t *req;
    size_t len;
    int check;       /* decode each reply and count it an error unless ok (gateways) */
    double rate;     /* out: the mean calls/s of its rounds */
    uint64_t errors; /* out */
} tput_target;

/* The `n` targets with the same number of clients, in TPUT_ROUNDS rounds; a round runs
 * each target in turn for g_seconds / TPUT_ROUNDS (so a drift in the machine's speed
 * hits all of them alike). */
static void throughput_rounds(tput_target *t, int n, int clients) {
    for (int i = 0; i < n; i++) {
        t[i].rate = 0;
        t[i].errors = 0;
    }
    for (int r = 0; r < TPUT_ROUNDS; r++)
        for (int i = 0; i < n; i++) {
            uint64_t e = 0;
            t[i].rate += throughput_for(t[i].addr, t[i].req, t[i].len, clients, t[i].check,
                                        g_seconds / TPUT_ROUNDS, &e) /
                         TPUT_ROUNDS;
            t[i].errors += e;
        }
}

/* ---- the gateway ---- */

/* `bundles`: the --bundles mode, NULL for the default. */
static pid_t start_gateway(const char *addr, const char *data, const char *idle, const char *bundles) {
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", 1);
        if (devnull >= 0) dup2(devnull, 2);
        execl(g_aicfn, g_aicfn, "gateway", "--listen", addr, "--data", data, "--workers", "0..1", "--device",
              "auto", "--idle-timeout", idle, "--insecure-local", bundles ? "--bundles" : (char *)NULL, bundles,
              (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* The bare echo server in a process of its own (this binary with --serve-bare). */
static pid_t start_bare_process(const char *addr) {
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "bench-invoke", "--serve-bare", addr, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* 0 once a server listens on `addr`. */
static int wait_listening(const char *addr) {
    for (int i = 0; i < 200; i++) {
        rpc_client *c = NULL;
        if (rpc_client_open(&c, addr, NULL, NULL) == AICFN_OK) {
            rpc_client_close(c);
            return 0;
        }
        usleep(25000);
    }
    return -1;
}

static int run_cmd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run_cmd(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

/* SIGTERM, then SIGKILL after 6 s; pid <= 0: nothing. */
static void stop_process(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) return;
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--serve-bare")) return serve_bare(argv[2]);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--aicfn") && i + 1 < argc)
            snprintf(g_aicfn, sizeof g_aicfn, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            g_seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--calls") && i + 1 < argc)
            g_calls = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cold") && i + 1 < argc)
            g_cold = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hold") && i + 1 < argc &&
                 sscanf(argv[i + 1], "%15[a-z]:%lf", g_hold_target, &g_hold) == 2 && g_hold > 0 &&
                 (!strcmp(g_hold_target, "gateway") || !strcmp(g_hold_target, "bare")))
            i++;
        else {
            fprintf(stderr, "usage: bench-invoke [--aicfn PATH] [--seconds S] [--calls N] [--cold N] [--hold "
                            "gateway|bare:S]\n");
            return 2;
        }
    }
    if (g_calls < 10) g_calls = 10;
    if (!g_aicfn[0]) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) return 1;
        self[n] = 0;
        char *slash = strrchr(self, '/');
        *slash = 0;
        snprintf(g_aicfn, sizeof g_aicfn, "%s/aicfn", self);
    }
    signal(SIGPIPE, SIG_IGN);
    char data[] = "/tmp/aicfn-bench-invoke-XXXXXX";
    if (!mkdtemp(data)) return 1;
    char gw_addr[64], bare_addr[64];
    snprintf(gw_addr, sizeof gw_addr, "tcp://127.0.0.1:%d", bench_free_port());
    snprintf(bare_addr, sizeof bare_addr, "tcp://127.0.0.1:%d", bench_free_port());

    /* The bare NNG echo twice: in this process (its server threads share NNG's thread
     * pool and address space with the clients) and in a process of its own, as the
     * gateway is. The first is the floor of the summary's ratios. */
    char bare_own_addr[64];
    snprintf(bare_own_addr, sizeof bare_own_addr, "tcp://127.0.0.1:%d", bench_free_port());
    pid_t bare_own = g_hold > 0 ? -1 : start_bare_process(bare_own_addr);
    rpc_server *bare = NULL;
    aicfn_error e;
    if (rpc_server_start(&bare, bare_addr, NULL, bare_handler, NULL, &e) != AICFN_OK) {
        fprintf(stderr, "bench-invoke: bare server: %s\n", e.msg);
        stop_process(bare_own);
        return 1;
    }
    if (bare_own > 0 && wait_listening(bare_own_addr) != 0) {
        fprintf(stderr, "bench-invoke: the bare server process did not start\n");
        stop_process(bare_own);
        rpc_server_destroy(bare);
        return 1;
    }
    char gwdata[PATH_MAX];
    snprintf(gwdata, sizeof gwdata, "%s/data", data);
    pid_t gw = start_gateway(gw_addr, gwdata, "5m", NULL);
    if (wait_listening(gw_addr) != 0) {
        fprintf(stderr, "bench-invoke: the gateway did not start (%s)\n", g_aicfn);
        stop_process(bare_own);
        return 1;
    }
    /* echo, and echo_cached: the same handler with the response cache on, so that the
     * gateway answers every call but the first itself (its front alone, no worker). */
    if (run_cmd("%s deploy examples/echo --gateway %s >/dev/null 2>&1", g_aicfn, gw_addr) != 0 ||
        run_cmd("d='%s/echo_cached' && cp -r examples/echo \"$d\" && sed -i -e 's/^name: echo$/name: "
                "echo_cached/' "
                "-e 's/responses: false/responses: true/' \"$d/aicfn.yaml\" && grep -q '^name: echo_cached$' "
                "\"$d/aicfn.yaml\" && grep -q 'responses: true' \"$d/aicfn.yaml\" && "
                "%s deploy \"$d\" --gateway %s >/dev/null 2>&1",
                data, g_aicfn, gw_addr) != 0) {
        fprintf(stderr, "bench-invoke: deploying echo failed (run from the repository root)\n");
        stop_process(bare_own);
        stop_process(gw);
        return 1;
    }
    size_t len, cached_len;
    uint8_t *req = encode_invoke("echo", 1.0f, &len);
    uint8_t *cached_req = encode_invoke("echo_cached", 1.0f, &cached_len);

    if (g_hold > 0) {
        uint64_t eh;
        bool on_gw = !strcmp(g_hold_target, "gateway");
        double th = throughput_for(on_gw ? gw_addr : bare_addr, req, len, 16, on_gw, g_hold, &eh);
        printf("{\"bench\":\"invoke\",\"case\":\"hold\",\"target\":\"%s\",\"clients\":16,\"seconds\":%.1f,"
               "\"calls_per_s\":%.0f,\"errors\":%llu}\n",
               g_hold_target, g_hold, th, (unsigned long long)eh);
        free(req);
        free(cached_req);
        rpc_server_destroy(bare);
        stop_process(gw);
        return 0;
    }
    lat_result lg, lb;
    latency_pair(gw_addr, bare_addr, req, len, g_calls, &lg, &lb);
    printf("{\"bench\":\"invoke\",\"case\":\"latency\",\"target\":\"gateway\",\"function\":\"echo\","
           "\"calls\":%d,"
           "\"p50_us\":%llu,\"p99_us\":%llu,\"errors\":%llu}\n",
           g_calls, (unsigned long long)lg.p50, (unsigned long long)lg.p99, (unsigned long long)lg.errors);
    char waddr[300] = "";
    /* The worker alone (its ipc address from the gateway's `workers`), to show the
     * gateway's own share of the latency. */
    {
        wire_writer ww;
        wire_writer_init(&ww);
        wire_put_map(&ww, 3);
        wire_kv_u64(&ww, "v", AICFN_PROTOCOL_VERSION);
        wire_kv_str(&ww, "t", "workers");
        wire_kv_u64(&ww, "id", 8);
        rpc_client *wc = NULL;
        rpc_msg *wm = NULL;
        if (rpc_client_open(&wc, gw_addr, NULL, NULL) == AICFN_OK &&
            rpc_call_sync(wc, ww.data, ww.len, 10000, &wm, NULL) == AICFN_OK) {
            wire_doc doc;
            const char *text = NULL;
            if (wire_doc_parse(&doc, rpc_msg_data(wm), rpc_msg_len(wm), NULL, NULL) == AICFN_OK &&
                wire_get_cstr(&doc, &doc.root, NULL, "json", true, 0, &text, NULL) == AICFN_OK) {
                json_t *j = json_loads(text, 0, NULL);
                const char *a = json_string_value(json_object_get(json_array_get(j, 0), "address"));
                if (a) snprintf(waddr, sizeof waddr, "%s", a);
                json_decref(j);
            }
            wire_doc_fini(&doc);
        }
        rpc_msg_free(wm);
        rpc_client_close(wc);
        wire_writer_fini(&ww);
        if (waddr[0]) {
            lat_result lw = latency(waddr, req, len, g_calls, 1);
            printf("{\"bench\":\"invoke\",\"case\":\"latency\",\"target\":\"worker_direct_ipc\",\"calls\":%d,"
                   "\"p50_us\":%llu,\"p99_us\":%llu,\"errors\":%llu}\n",
                   g_calls, (unsigned long long)lw.p50, (unsigned long long)lw.p99,
                   (unsigned long long)lw.errors);
        }
    }
    printf("{\"bench\":\"invoke\",\"case\":\"latency\",\"target\":\"bare_nng\",\"calls\":%d,\"p50_us\":%llu,"
           "\"p99_us\":%llu,\"errors\":%llu}\n",
           g_calls, (unsigned long long)lb.p50, (unsigned long long)lb.p99, (unsigned long long)lb.errors);
    fflush(stdout);
    /* 1 and 4 clients: the gateway and the bare echo. 16 clients: also the bare echo in
     * its own process and the gateway answering from its response cache. */
    int conc[3] = {1, 4, 16};
    double tg[3], tb[3];
    tput_target t16[4];
    for (int k = 0; k < 3; k++) {
        tput_target t[4] = {{gw_addr, req, len, 1, 0, 0},
                            {bare_addr, req, len, 0, 0, 0},
                            {bare_own_addr, req, len, 0, 0, 0},
                            {gw_addr, cached_req, cached_len, 1, 0, 0}};
        throughput_rounds(t, conc[k] == 16 ? 4 : 2, conc[k]);
        tg[k] = t[0].rate;
        tb[k] = t[1].rate;
        printf("{\"bench\":\"invoke\",\"case\":\"throughput\",\"clients\":%d,\"gateway_calls_per_s\":%.0f,"
               "\"bare_calls_per_s\":%.0f,\"ratio\":%.3f,\"gateway_errors\":%llu,\"bare_errors\":%llu}\n",
               conc[k], tg[k], tb[k], tb[k] > 0 ? tg[k] / tb[k] : 0.0, (unsigned long long)t[0].errors,
               (unsigned long long)t[1].errors);
        if (conc[k] == 16) {
            memcpy(t16, t, sizeof t16);
            printf(
                "{\"bench\":\"invoke\",\"case\":\"floor\",\"clients\":16,\"bare_in_process_calls_per_s\":%."
                "0f,"
                "\"bare_own_process_calls_per_s\":%.0f,\"gateway_calls_per_s\":%.0f,"
                "\"gateway_ratio_vs_own_process\":%.3f,\"gateway_cached_calls_per_s\":%.0f,"
                "\"cached_ratio_vs_in_process\":%.3f,\"cached_ratio_vs_own_process\":%.3f,\"errors\":%llu}\n",
                t[1].rate, t[2].rate, t[0].rate, t[2].rate > 0 ? t[0].rate / t[2].rate : 0.0, t[3].rate,
                t[1].rate > 0 ? t[3].rate / t[1].rate : 0.0, t[2].rate > 0 ? t[3].rate / t[2].rate : 0.0,
                (unsigned long long)(t[2].errors + t[3].errors));
        }
        fflush(stdout);
    }
    if (waddr[0]) {
        uint64_t ew;
        double tw = throughput_for(waddr, req, len, 16, 1, g_seconds, &ew);
        printf(
            "{\"bench\":\"invoke\",\"case\":\"throughput\",\"clients\":16,\"target\":\"worker_direct_ipc\","
            "\"calls_per_s\":%.0f,\"errors\":%llu}\n",
            tw, (unsigned long long)ew);
    }
    /* Bundles (docs/protocol.md §9) to a local worker and not (the default), side by side:
     * a second gateway with --bundles always and its own worker, 16 clients, alternating
     * rounds. */
    double t_on = 0, t_off = 0;
    {
        char nb_addr[64], nb_data[PATH_MAX];
        snprintf(nb_addr, sizeof nb_addr, "tcp://127.0.0.1:%d", bench_free_port());
        snprintf(nb_data, sizeof nb_data, "%s/data_nb", data);
        pid_t nb = start_gateway(nb_addr, nb_data, "5m", "always");
        if (wait_listening(nb_addr) == 0 &&
            run_cmd("%s deploy examples/echo --gateway %s >/dev/null 2>&1", g_aicfn, nb_addr) == 0) {
            lat_result warm = latency(nb_addr, req, len, 50, 1); /* spawns its worker */
            (void)warm;
            tput_target t[2] = {{nb_addr, req, len, 1, 0, 0}, {gw_addr, req, len, 1, 0, 0}};
            throughput_rounds(t, 2, 16);
            t_on = t[0].rate;
            t_off = t[1].rate;
            printf("{\"bench\":\"invoke\",\"case\":\"bundles\",\"clients\":16,\"bundles_always_calls_per_s\":%.0f,"
                   "\"default_calls_per_s\":%.0f,\"gain\":%.3f,\"errors\":%llu}\n",
                   t_on, t_off, t_off > 0 ? t_on / t_off : 0.0,
                   (unsigned long long)(t[0].errors + t[1].errors));
            fflush(stdout);
        } else {
            fprintf(stderr, "bench-invoke: the --bundles always gateway did not start\n");
        }
        stop_process(nb);
    }
    free(req);
    free(cached_req);
    rpc_server_destroy(bare);
    stop_process(bare_own);
    stop_process(gw);

    /* A second gateway whose worker idles out after 1 s, for the cold starts. */
    snprintf(gwdata, sizeof gwdata, "%s/data2", data);
    gw = start_gateway(gw_addr, gwdata, "1s", NULL);
    if (wait_listening(gw_addr) != 0 ||
        run_cmd("%s deploy examples/mlp --gateway %s >/dev/null 2>&1", g_aicfn, gw_addr) != 0) {
        fprintf(stderr, "bench-invoke: the second gateway or deploying mlp failed\n");
        stop_process(gw);
        return 1;
    }

    /* Cold starts of mlp: the worker idles out (1 s) between calls, so each call spawns a
     * worker and loads the model. Each call has other inputs: examples/mlp keeps replies
     * in the gateway's response cache, which would answer a repeated request itself. */
    rpc_client *c = NULL;
    rpc_client_open(&c, gw_addr, NULL, NULL);
    int cold_ok = 0;
    for (int i = 0; i < g_cold && c; i++) {
        usleep(1800000); /* > idle timeout + the drain */
        uint8_t *mreq = encode_invoke("mlp", 1.0f + (float)i, &len);
        rpc_msg *m = NULL;
        if (rpc_call_sync(c, mreq, len, 30000, &m, &e) == AICFN_OK && reply_ok(m)) cold_ok++;
        rpc_msg_free(m);
        free(mreq);
    }
    /* Read the records back through the gateway. */
    wire_writer w;
    wire_writer_init(&w);
    wire_put_map(&w, 4);
    wire_kv_u64(&w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(&w, "t", "coldstarts");
    wire_kv_u64(&w, "id", 9);
    wire_kv_str(&w, "fn", "mlp");
    rpc_msg *m = NULL;
    json_t *cs = NULL;
    if (c && rpc_call_sync(c, w.data, w.len, 10000, &m, &e) == AICFN_OK) {
        wire_doc doc;
        const char *text = NULL;
        if (wire_doc_parse(&doc, rpc_msg_data(m), rpc_msg_len(m), NULL, NULL) == AICFN_OK &&
            wire_get_cstr(&doc, &doc.root, NULL, "json", true, 0, &text, NULL) == AICFN_OK)
            cs = json_loads(text, 0, NULL);
        wire_doc_fini(&doc);
    }
    rpc_msg_free(m);
    wire_writer_fini(&w);
    rpc_client_close(c);
    json_t *row = cs ? json_array_get(cs, 0) : NULL;
    json_t *phases = row ? json_object_get(row, "phases") : NULL;
    const char *names[] = {"spawn", "queue", "read", "decompress", "filter", "copy", "init", "total"};
    printf(
        "{\"bench\":\"invoke\",\"case\":\"cold_start\",\"function\":\"mlp\",\"count\":%lld,\"ok_calls\":%d",
        row ? (long long)json_integer_value(json_object_get(row, "count")) : 0LL, cold_ok);
    for (int i = 0; i < 8; i++)
        printf(",\"%s_p50_us\":%lld", names[i],
               phases ? (long long)json_integer_value(
                            json_object_get(json_object_get(phases, names[i]), "p50_us"))
                      : 0LL);
    printf("}\n");
    uint64_t cold_total =
        phases ? (uint64_t)json_integer_value(json_object_get(json_object_get(phases, "total"), "p50_us"))
               : 0;
    json_decref(cs);
    stop_process(gw);
    run_cmd("rm -rf '%s'", data);

    double p50_ratio = lb.p50 ? (double)lg.p50 / (double)lb.p50 : 0.0;
    double t16_ratio = tb[2] > 0 ? tg[2] / tb[2] : 0.0;
    printf(
        "{\"bench\":\"invoke\",\"summary\":{\"gateway_p50_us\":%llu,\"bare_p50_us\":%llu,\"p50_ratio\":%.3f,"
        "\"p50_target\":2.2,\"p50_ok\":%s,\"gateway_16c_calls_per_s\":%.0f,\"bare_16c_calls_per_s\":%.0f,"
        "\"throughput_16c_ratio\":%.3f,\"throughput_target\":0.5,\"throughput_ok\":%s,"
        "\"throughput_1c_ratio\":%.3f,\"throughput_4c_ratio\":%.3f,\"bundles_gain_16c\":%.3f,"
        "\"throughput_16c_ratio_vs_bare_own_process\":%.3f,\"cached_16c_ratio\":%.3f,"
        "\"mlp_cold_p50_total_us\":%llu}}\n",
        (unsigned long long)lg.p50, (unsigned long long)lb.p50, p50_ratio,
        p50_ratio <= 2.2 ? "true" : "false", tg[2], tb[2], t16_ratio, t16_ratio >= 0.5 ? "true" : "false",
        tb[0] > 0 ? tg[0] / tb[0] : 0.0, tb[1] > 0 ? tg[1] / tb[1] : 0.0, t_off > 0 ? t_on / t_off : 0.0,
        t16[2].rate > 0 ? t16[0].rate / t16[2].rate : 0.0, t16[1].rate > 0 ? t16[3].rate / t16[1].rate : 0.0,
        (unsigned long long)cold_total);
    return 0;
}
