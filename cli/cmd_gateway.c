/* cmd_gateway.c: `aicfn gateway`: runs the gateway until SIGTERM or SIGINT, then stops
 * it cleanly (front closed, calls in flight answered, workers drained, ledger flushed). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "cli/stopsignal.h"
#include "common/log.h"
#include "common/tunables.h"
#include "common/units.h"
#include "gateway/front_http.h"
#include "gateway/gateway.h"
#include "gateway/http.h"

/* --idle-timeout and --upload-timeout at most (a week: timers add them to clock times). */
#define CG_MAX_TIMEOUT_US (7ull * 24 * 3600 * 1000000)

static void cg_help(FILE *out) {
    fprintf(out,
            "usage: aicfn gateway [--listen ADDR] [--data DIR] [--workers MIN..MAX] [--idle-timeout DUR]\n"
            "                     [--worker-memory BYTES] [--device auto|host|cuda] [--insecure-local]\n"
            "                     [--http HOST:PORT] [--response-cache BYTES] [--bundles MODE]\n"
            "                     [--upload-timeout DUR] [--max-requests N] [--max-remote-workers N]\n"
            "                     [--http-connections N] [--http-per-ip N] [--function-cache-idle DUR]\n"
            "                     [--metrics-public]\n"
            "\n"
            "Runs the gateway: the registry of functions, the router, the local worker pool and the\n"
            "records (aicfn.db). Stops cleanly on SIGTERM or SIGINT.\n"
            "\n"
            "  --listen ADDR          client address (default %s; clients find it with\n"
            "                         --gateway ADDR, else $AICFN_GATEWAY, else this default)\n"
            "  --data DIR             aicfn.db, artifacts/ and run/ (default $AICFN_DATA_DIR, else %s;\n"
            "                         also --data-dir, as the other commands spell it); one gateway\n"
            "                         per DIR (a second one is refused: DIR/gateway.lock)\n"
            "  --workers MIN..MAX     local workers, started on demand up to MAX and kept down to MIN\n"
            "                         (default 0..%d; 0..0: remote workers only, see `aicfn worker\n"
            "                         --gateway`); N alone means N..N\n"
            "  --idle-timeout DUR     a local worker without calls this long is drained and exits\n"
            "                         (scale to zero; default %ds; ms, s, m, h), unless that would\n"
            "                         leave MIN workers, or a function below its scaling.min_workers\n"
            "  --worker-memory BYTES  the model cache budget of EACH local worker (e.g. 512MiB, 8GiB).\n"
            "                         The budget is per worker, not split: MAX workers may hold up to\n"
            "                         MAX x BYTES. Default: each worker takes its device's free memory\n"
            "                         (host: %llu MiB)\n"
            "  --device DEV           local workers' device: auto (CUDA when a GPU is visible, else\n"
            "                         host memory), host, cuda (default auto)\n"
            "  --http HOST:PORT       also serve HTTP: Open Inference Protocol v2 (KServe/Triton REST) and\n"
            "                         GET /metrics (Prometheus), e.g. 127.0.0.1:8080 (default: off).\n"
            "                         /metrics needs an admin key (Authorization: Bearer KEY; its series\n"
            "                         name every tenant's functions) unless --metrics-public\n"
            "  --metrics-public       serve GET /metrics without a key (for a scraper on a private\n"
            "                         network: bind --http there)\n"
            "  --http-connections N   open HTTP connections at most, calls waiting on a worker\n"
            "                         included (default %d, at most 65536); one more is closed at once.\n"
            "                         Each takes two open files: the soft limit (ulimit -n) is raised\n"
            "                         to fit, and the gateway refuses to start past the hard one\n"
            "  --http-per-ip N        open HTTP connections from one client address at most (default\n"
            "                         %d); 0: no per-address limit, for a gateway behind a load\n"
            "                         balancer or proxy, where every client has the proxy's address\n"
            "  --response-cache BYTES replies kept for functions with cache.responses (aicfn.yaml): an\n"
            "                         identical request (same version, inputs and params) within\n"
            "                         cache.ttl (0: until evicted) is answered by the gateway alone;\n"
            "                         least recently used replies go first (default %llu MiB)\n"
            "  --bundles MODE         when a busy worker gets the calls of short functions several per\n"
            "                         message (bundles, docs/protocol.md section 9): auto (default: a\n"
            "                         remote worker, over NNG; the local ones' socketpair makes a\n"
            "                         message cheap enough), always, or never (= --no-bundles)\n"
            "  --upload-timeout DUR   an upload (aicfn deploy) without a chunk this long is aborted and\n"
            "                         its temporary file removed (default %ds)\n"
            "  --max-requests N       client requests (NNG) the gateway holds at once (default %d, at\n"
            "                         least 16). Invocations past N less min(32, N/4), or past %llu MiB\n"
            "                         of requests held, are refused at once with AICFN_E_OVERLOADED;\n"
            "                         the rest is kept for administrative requests and status\n"
            "  --max-remote-workers N workers registered from other hosts (`aicfn worker --gateway`) the\n"
            "                         gateway keeps at once (default and most: %d less MAX of --workers;\n"
            "                         the router sees %d workers at once); one more is refused with\n"
            "                         AICFN_E_CAPACITY until one is gone\n"
            "  --function-cache-idle DUR  a function version not called for DUR leaves the gateway's\n"
            "                         memory (it is read from aicfn.db again when called; default %ds)\n"
            "  --insecure-local       accept calls without API keys (tenant \"local\"); for a gateway\n"
            "                         used by one person: refused unless --listen is ipc:// or a\n"
            "                         loopback address, and --http too\n"
            "\n"
            "Precedence: flags, then environment (AICFN_GATEWAY for the address), then defaults.\n"
            "Per-function settings (timeout, batching, scaling, idempotent) come from each aicfn.yaml.\n"
            "\n"
            "Per-function scaling (aicfn.yaml `scaling:`), inside the pool above (workers are shared;\n"
            "a worker holds many models):\n"
            "  max_workers N   at most N workers hold the function's model at once (default 1). A\n"
            "                  call goes to a worker holding it; only when all of those are busy\n"
            "                  (calls in flight >= batching.max_batch) and fewer than N hold it does\n"
            "                  another worker load a replica (free memory, eviction, or a new worker\n"
            "                  up to MAX)\n"
            "  min_workers N   N workers keep the model loaded without calls (default 0): loaded at\n"
            "                  deploy and at start, replaced when a holder leaves; such a worker is not\n"
            "                  stopped by --idle-timeout. Bounded by MAX (the log says when not met)\n"
            "  idle_timeout D  a model without calls for D is unloaded from its workers, except the\n"
            "                  min_workers ones (default 5m; 0: never). The worker stays; it exits\n"
            "                  after --idle-timeout without calls. So the shorter of the two acts\n"
            "                  first: a short idle_timeout frees memory in a worker that lives on, a\n"
            "                  short --idle-timeout stops the worker with its models\n",
            AICFN_DEFAULT_GATEWAY, AICFN_DEFAULT_DATA_DIR, AICFN_DEFAULT_MAX_WORKERS,
            AICFN_DEFAULT_IDLE_TIMEOUT_MS / 1000, (unsigned long long)(AICFN_DEFAULT_HOST_BUDGET >> 20),
            AICFN_HTTP_MAX_CONNECTIONS, AICFN_HTTP_MAX_CONNECTIONS_PER_IP,
            (unsigned long long)(AICFN_DEFAULT_RESPONSE_CACHE_BYTES >> 20),
            AICFN_UPLOAD_IDLE_TIMEOUT_MS / 1000, AICFN_GW_FRONT_MAX_REQUESTS,
            (unsigned long long)(AICFN_GW_FRONT_MAX_HELD_BYTES >> 20), AICFN_GW_MAX_LIVE_WORKERS,
            AICFN_GW_MAX_LIVE_WORKERS, AICFN_GW_FN_CACHE_IDLE_MS / 1000);
}

static int cg_u32(const char *s, uint32_t *out) {
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end || v > 100000) return -1;
    *out = (uint32_t)v;
    return 0;
}

int cli_cmd_gateway(int argc, char **argv) {
    gw_config cfg = {.listen = NULL, .max_workers = AICFN_DEFAULT_MAX_WORKERS};
    const char *http = NULL;
    gw_front_http_opts http_opts = {0};
    cfg.listen = getenv("AICFN_GATEWAY");
    if (cfg.listen && !cfg.listen[0]) cfg.listen = NULL; /* empty means unset, as for clients */
    cfg.data_dir = getenv("AICFN_DATA_DIR"); /* as `aicfn keys`, `usage` and `workers --history` */
    if (cfg.data_dir && !cfg.data_dir[0]) cfg.data_dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v;
        aicfn_error err;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cg_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = cli_flag_value(argc, argv, &i, "--listen"))) {
            cfg.listen = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--data")) ||
                   (v = cli_flag_value(argc, argv, &i, "--data-dir"))) {
            cfg.data_dir = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--workers"))) {
            const char *dots = strstr(v, "..");
            char lo[32];
            if (dots) {
                size_t n = (size_t)(dots - v);
                if (n >= sizeof lo) return cli_usage_error("gateway", "--workers '%s': expected MIN..MAX", v);
                memcpy(lo, v, n);
                lo[n] = 0;
                if (cg_u32(lo, &cfg.min_workers) || cg_u32(dots + 2, &cfg.max_workers))
                    return cli_usage_error("gateway", "--workers '%s': expected MIN..MAX", v);
            } else {
                if (cg_u32(v, &cfg.max_workers))
                    return cli_usage_error("gateway", "--workers '%s': expected MIN..MAX", v);
                cfg.min_workers = cfg.max_workers;
            }
            if (cfg.min_workers > cfg.max_workers || cfg.max_workers > AICFN_MAX_WORKERS)
                return cli_usage_error("gateway", "--workers '%s': need MIN <= MAX <= %d", v,
                                       AICFN_MAX_WORKERS);
        } else if ((v = cli_flag_value(argc, argv, &i, "--idle-timeout"))) {
            if (units_parse_duration_us(v, &cfg.idle_timeout_us, &err) != AICFN_OK ||
                cfg.idle_timeout_us == 0 || cfg.idle_timeout_us > CG_MAX_TIMEOUT_US)
                return cli_usage_error("gateway",
                                       "--idle-timeout '%s' is not a duration from 1us to 7d (e.g. 5m)", v);
        } else if ((v = cli_flag_value(argc, argv, &i, "--upload-timeout"))) {
            if (units_parse_duration_us(v, &cfg.upload_idle_us, &err) != AICFN_OK ||
                cfg.upload_idle_us == 0 || cfg.upload_idle_us > CG_MAX_TIMEOUT_US)
                return cli_usage_error("gateway",
                                       "--upload-timeout '%s' is not a duration from 1us to 7d (e.g. 2m)", v);
        } else if ((v = cli_flag_value(argc, argv, &i, "--function-cache-idle"))) {
            if (units_parse_duration_us(v, &cfg.fn_cache_idle_us, &err) != AICFN_OK ||
                cfg.fn_cache_idle_us == 0 || cfg.fn_cache_idle_us > CG_MAX_TIMEOUT_US)
                return cli_usage_error(
                    "gateway", "--function-cache-idle '%s' is not a duration from 1us to 7d (e.g. 10m)", v);
        } else if ((v = cli_flag_value(argc, argv, &i, "--response-cache"))) {
            if (units_parse_size(v, &cfg.response_cache_bytes, &err) != AICFN_OK ||
                cfg.response_cache_bytes == 0)
                return cli_usage_error("gateway", "--response-cache '%s' is not a size (e.g. 256MiB)", v);
        } else if ((v = cli_flag_value(argc, argv, &i, "--worker-memory"))) {
            if (units_parse_size(v, &cfg.worker_memory, &err) != AICFN_OK || cfg.worker_memory == 0)
                return cli_usage_error("gateway", "--worker-memory '%s' is not a size (e.g. 512MiB)", v);
        } else if ((v = cli_flag_value(argc, argv, &i, "--device"))) {
            if (strcmp(v, "auto") && strcmp(v, "host") && strncmp(v, "cuda", 4))
                return cli_usage_error("gateway", "--device must be auto, host or cuda");
            cfg.device = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--http"))) {
            http = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--http-connections"))) {
            if (cg_u32(v, &http_opts.connections) || http_opts.connections < 1 ||
                http_opts.connections > 65536)
                return cli_usage_error("gateway", "--http-connections '%s': a number from 1 to 65536", v);
        } else if ((v = cli_flag_value(argc, argv, &i, "--http-per-ip"))) {
            if (cg_u32(v, &http_opts.per_ip) || http_opts.per_ip > 65536)
                return cli_usage_error(
                    "gateway", "--http-per-ip '%s': a number from 0 (no per-address limit) to 65536", v);
            if (http_opts.per_ip == 0) http_opts.per_ip = GW_HTTP_PER_IP_UNLIMITED;
        } else if ((v = cli_flag_value(argc, argv, &i, "--max-remote-workers"))) {
            if (cg_u32(v, &cfg.max_remote_workers) || cfg.max_remote_workers < 1 ||
                cfg.max_remote_workers > AICFN_GW_MAX_LIVE_WORKERS)
                return cli_usage_error("gateway", "--max-remote-workers '%s': a number from 1 to %d", v,
                                       AICFN_GW_MAX_LIVE_WORKERS);
        } else if ((v = cli_flag_value(argc, argv, &i, "--max-requests"))) {
            if (cg_u32(v, &cfg.max_requests) || cfg.max_requests < 16 || cfg.max_requests > 65536)
                return cli_usage_error("gateway", "--max-requests '%s': a number from 16 to 65536", v);
        } else if (strcmp(argv[i], "--no-bundles") == 0) {
            cfg.bundles = GW_BUNDLES_NEVER;
        } else if ((v = cli_flag_value(argc, argv, &i, "--bundles"))) {
            if (strcmp(v, "auto") == 0)
                cfg.bundles = GW_BUNDLES_AUTO;
            else if (strcmp(v, "always") == 0)
                cfg.bundles = GW_BUNDLES_ALWAYS;
            else if (strcmp(v, "never") == 0)
                cfg.bundles = GW_BUNDLES_NEVER;
            else
                return cli_usage_error("gateway", "--bundles '%s': auto, always or never", v);
        } else if (strcmp(argv[i], "--insecure-local") == 0) {
            cfg.insecure_local = true;
        } else if (strcmp(argv[i], "--metrics-public") == 0) {
            http_opts.metrics_public = true;
        } else {
            return cli_usage_error("gateway", "unknown or incomplete argument '%s'", argv[i]);
        }
    }

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    log_set_role("gateway");

    aicfn_error err;
    aicfn_error_clear(&err);
    gw_gateway *gw = NULL;
    if (gw_start(&cfg, &gw, &err) != AICFN_OK) return cli_fail(&err);
    gw_front_http *fh = NULL;
    if (http && gw_front_http_start(gw, http, "0.1.0", NULL, NULL, &http_opts, &fh, &err) != AICFN_OK) {
        gw_stop(gw);
        return cli_fail(&err);
    }
    /* One line on stdout for scripts: where clients connect. */
    printf("aicfn gateway listening on %s\n", gw_listen_url(gw));
    if (fh) printf("aicfn gateway serving HTTP (OIP v2) on port %u\n", (unsigned)gw_front_http_port(fh));
    fflush(stdout);
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    log_info("received %s: stopping (a second one exits at once)", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    /* The stop waits for calls in flight and for workers to drain (function timeouts run
     * to an hour): a second signal ends the gateway at once; its local workers die with
     * it (PR_SET_PDEATHSIG) and deploys already acknowledged are committed. */
    cli_stop_signal_watch(&set, "calls in flight and draining workers");
    gw_front_http_stop(fh);
    gw_stop(gw);
    log_info("stopped");
    return CLI_EXIT_OK;
}
