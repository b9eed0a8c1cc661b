/* bench_http.c: `zig build bench-http`: the cost of the HTTP front (Open Inference
 * Protocol v2 over libmicrohttpd) against the NNG msgpack front, in one run, on one
 * gateway, for the same warm call: mlp (or echo, --fn echo) on a [1,16] FP32 input. mlp
 * batches with max_delay_us 2000, which dominates its latency; echo shows the fronts'
 * own cost. Three cases, each with one
 * client on one kept-alive connection, samples interleaved call by call so both paths
 * see the same machine state:
 *   nng_msgpack  - the REQ/REP msgpack invoke (the baseline)
 *   http_json    - POST /v2/models/mlp/infer with JSON tensors (data as numbers)
 *   http_binary  - the same with the binary tensor extension for the input and output
 * Output: JSON lines with p50/p99/mean µs per case; the last line
 * {"bench":"http","summary":{"http_json_p50_ratio":..,"http_binary_p50_ratio":..}} is
 * HTTP p50 over NNG p50 (1.0 = same cost).
 * Options: --aicfn PATH (default: the aicfn beside this binary), --calls N (default 2000),
 * --fn mlp|echo (default mlp).
 * Needs `aicfn gateway --http`; run from the repository root (it deploys examples/mlp). */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/free_port.h"
#include "common/clock.h"
#include "common/rpc.h"
#include "common/wire.h"

static char g_aicfn[PATH_MAX];
static int g_calls = 2000;
static const char *g_fn = "mlp";

static int http_dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Sends one request and reads its response (Content-Length framed) on a kept-alive
 * connection. Returns the HTTP status, or -1. */
static int http_roundtrip(int fd, const char *req, size_t len, char *buf, size_t cap) {
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n <= 0) return -1;
        got += (size_t)n;
        buf[got] = '\0';
        char *he = strstr(buf, "\r\n\r\n");
        if (he == NULL) continue;
        char *cl = strcasestr(buf, "\r\nContent-Length:");
        if (cl == NULL || cl > he) return -1;
        size_t body = strtoull(cl + 17, NULL, 10);
        if (got >= (size_t)(he + 4 - buf) + body) return atoi(buf + 9);
        if (got + 1 >= cap) return -1;
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *name, uint64_t *s, int n, double *p50_out) {
    qsort(s, (size_t)n, sizeof *s, cmp_u64);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)s[i];
    double p50 = (double)s[n / 2], p99 = (double)s[(n * 99) / 100];
    printf("{\"bench\":\"http\",\"function\":\"%s\",\"case\":\"%s\",\"calls\":%d,\"p50_us\":%.1f,\"p99_us\":%"
           ".1f,\"mean_us\":%."
           "1f}\n",
           g_fn, name, n, p50, p99, sum / n);
    *p50_out = p50;
}

static int run_cmd(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--aicfn") && i + 1 < argc)
            snprintf(g_aicfn, sizeof g_aicfn, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--calls") && i + 1 < argc)
            g_calls = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--fn") && i + 1 < argc &&
                 (!strcmp(argv[i + 1], "mlp") || !strcmp(argv[i + 1], "echo")))
            g_fn = argv[++i];
        else {
            fprintf(stderr, "usage: bench-http [--aicfn PATH] [--calls N] [--fn mlp|echo]\n");
            return 2;
        }
    }
    if (g_calls < 10) g_calls = 10;
    if (!g_aicfn[0]) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) return 1;
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) *slash = '\0';
        snprintf(g_aicfn, sizeof g_aicfn, "%s/aicfn", self);
    }
    char data[] = "/tmp/aicfn-bench-http-XXXXXX";
    if (mkdtemp(data) == NULL) return 1;
    int nport = bench_free_port(), hport = bench_free_port();
    char addr[64], haddr[64];
    snprintf(addr, sizeof addr, "tcp://127.0.0.1:%d", nport);
    snprintf(haddr, sizeof haddr, "127.0.0.1:%d", hport);
    pid_t pid = fork();
    if (pid == 0) {
        execl(g_aicfn, g_aicfn, "gateway", "--listen", addr, "--data", data, "--workers", "0..1", "--device",
              "auto", "--http", haddr, "--insecure-local", (char *)NULL);
        _exit(127);
    }
    int fd = -1;
    for (int i = 0; i < 200 && fd < 0; i++) {
        fd = http_dial(hport);
        if (fd < 0) usleep(50000);
    }
    int rc = 1;
    rpc_client *cl = NULL;
    uint64_t *ns = calloc((size_t)g_calls, sizeof *ns), *hj = calloc((size_t)g_calls, sizeof *hj),
             *hb = calloc((size_t)g_calls, sizeof *hb);
    char cmd[PATH_MAX + 256];
    snprintf(cmd, sizeof cmd, "%s deploy examples/%s --gateway %s >/dev/null 2>&1", g_aicfn, g_fn, addr);
    if (fd < 0 || run_cmd(cmd) != 0) {
        fprintf(stderr,
                "bench-http: the gateway (needs --http) or deploying mlp failed; run from the repo root\n");
        goto out;
    }
    aicfn_error err;
    if (rpc_client_open(&cl, addr, NULL, &err) != AICFN_OK) {
        fprintf(stderr, "bench-http: %s\n", err.msg);
        goto out;
    }
    /* The same input three ways. */
    float x[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)i * 0.125f - 1.0f;
    wire_tensor t = {.name = "x",
                     .dtype = AICFN_DTYPE_FP32,
                     .ndim = 2,
                     .shape = {1, 16},
                     .data = (uint8_t *)x,
                     .nbytes = sizeof x};
    wire_invoke_req req = {.id = 1, .fn = g_fn, .n_inputs = 1, .inputs = &t};
    wire_writer w;
    wire_writer_init(&w);
    if (wire_encode_invoke_req(&w, &req, &err) != AICFN_OK) goto out;
    size_t nlen;
    uint8_t *nmsg = wire_writer_take(&w, &nlen);
    wire_writer_fini(&w);
    char json[1024], jreq[2048], breq[2048];
    int jl = snprintf(json, sizeof json,
                      "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,16],\"datatype\":\"FP32\",\"data\":[");
    for (int i = 0; i < 16; i++)
        jl += snprintf(json + jl, sizeof json - (size_t)jl, "%s%.9g", i ? "," : "", x[i]);
    jl += snprintf(json + jl, sizeof json - (size_t)jl, "]}]}");
    int jrl = snprintf(jreq, sizeof jreq,
                       "POST /v2/models/%s/infer HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                       "Content-Length: %d\r\n\r\n%s",
                       g_fn, jl, json);
    const char *bj = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,16],\"datatype\":\"FP32\",\"parameters\":"
                     "{\"binary_data_size\":64}}],\"parameters\":{\"binary_data_output\":true}}";
    int brl =
        snprintf(breq, sizeof breq,
                 "POST /v2/models/%s/infer HTTP/1.1\r\nHost: b\r\nContent-Type: application/octet-stream\r\n"
                 "Inference-Header-Content-Length: %zu\r\nContent-Length: %zu\r\n\r\n%s",
                 g_fn, strlen(bj), strlen(bj) + sizeof x, bj);
    memcpy(breq + brl, x, sizeof x);
    brl += (int)sizeof x;
    static char buf[1 << 16];
    /* Warm up (the first call is the cold start). */
    for (int i = 0; i < 20; i++) {
        rpc_msg *rep = NULL;
        if (rpc_call_sync(cl, nmsg, nlen, 60000, &rep, &err) != AICFN_OK) {
            fprintf(stderr, "bench-http: nng call: %s\n", err.msg);
            goto out_msg;
        }
        rpc_msg_free(rep);
        if (http_roundtrip(fd, jreq, (size_t)jrl, buf, sizeof buf) != 200 ||
            http_roundtrip(fd, breq, (size_t)brl, buf, sizeof buf) != 200) {
            fprintf(stderr, "bench-http: HTTP warm-up failed: %.600s\n", buf);
            goto out_msg;
        }
    }
    for (int i = 0; i < g_calls; i++) {
        uint64_t t0 = clock_now_us();
        rpc_msg *rep = NULL;
        if (rpc_call_sync(cl, nmsg, nlen, 60000, &rep, &err) != AICFN_OK) goto out_msg;
        wire_doc doc;
        wire_reply_head h = {0};
        int ok = wire_doc_parse(&doc, rpc_msg_data(rep), rpc_msg_len(rep), NULL, &err) == AICFN_OK &&
                 wire_decode_reply_head(&doc, &h, &err) == AICFN_OK && h.ok;
        wire_doc_fini(&doc);
        rpc_msg_free(rep);
        uint64_t t1 = clock_now_us();
        if (!ok) goto out_msg;
        int s1 = http_roundtrip(fd, jreq, (size_t)jrl, buf, sizeof buf);
        uint64_t t2 = clock_now_us();
        int s2 = http_roundtrip(fd, breq, (size_t)brl, buf, sizeof buf);
        uint64_t t3 = clock_now_us();
        if (s1 != 200 || s2 != 200) goto out_msg;
        ns[i] = t1 - t0;
        hj[i] = t2 - t1;
        hb[i] = t3 - t2;
    }
    double pn, pj, pb;
    report("nng_msgpack", ns, g_calls, &pn);
    report("http_json", hj, g_calls, &pj);
    report("http_binary", hb, g_calls, &pb);
    printf("{\"bench\":\"http\",\"summary\":{\"function\":\"%s\",\"nng_p50_us\":%.1f,\"http_json_p50_us\":%."
           "1f,\"http_binary_p50_"
           "us\":%.1f,"
           "\"http_json_p50_ratio\":%.3f,\"http_binary_p50_ratio\":%.3f}}\n",
           g_fn, pn, pj, pb, pj / pn, pb / pn);
    rc = 0;
out_msg:
    free(nmsg);
out:
    if (rc) fprintf(stderr, "bench-http: failed\n");
    rpc_client_close(cl);
    if (fd >= 0) close(fd);
    kill(pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) break;
        usleep(100000);
        if (i == 99) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", data);
    run_cmd(cmd);
    free(ns);
    free(hj);
    free(hb);
    return rc;
}
