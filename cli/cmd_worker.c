/* cmd_worker.c: `aicfn worker`: parses the flags into a worker_config and function
 * configs, runs the worker (worker/worker.h) and drains it on SIGTERM or SIGINT.
 *
 * Signals are blocked in every thread (the mask is set before any thread starts) and
 * taken by sigtimedwait on the main thread, so no work ever runs in a signal handler.
 * Between signals, a --gateway worker renews its registration every
 * AICFN_REGISTER_RENEW_MS: a gateway that restarted, or dropped the worker after its
 * connection broke, routes to it again within that time (a gateway that still has it
 * answers AICFN_E_EXISTS, which is the normal case). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "cli/stopsignal.h"
#include "common/log.h"
#include "common/tunables.h"
#include "common/units.h"
#include "worker/faultnote.h"
#include "worker/fetch.h"
#include "worker/worker.h"

#define CW_MAX_FUNCTIONS 64

static void cw_help(FILE *out) {
    fprintf(out,
            "usage: aicfn worker --listen ADDR [--device auto|host|cuda[:N]] [--memory BYTES]\n"
            "                    [--load-threads N] [--id NAME] [--fault-note FILE] [--function SPEC ...]\n"
            "                    [--gateway ADDR [--key KEY] [--cache-dir DIR [--cache-max BYTES] |\n"
            "                                     --shared-artifacts]]\n"
            "\n"
            "Runs a worker: one device, its model cache, and the functions given. It answers\n"
            "invoke and status messages on ADDR (ipc:///path or tcp://host:port) and drains on\n"
            "SIGTERM/SIGINT: new calls are refused (AICFN_E_UNAVAILABLE), calls in flight finish,\n"
            "handlers' fini runs, device memory is freed, exit status 0. A second signal while calls\n"
            "are in flight stops it at once (exit status 1); after a clean drain it is ignored.\n"
            "A --gateway worker also exits (status 3, at once) when that gateway orders it to: a call\n"
            "ran past its timeout + 5 s there, or it stopped answering; restart it (e.g. systemd\n"
            "Restart=on-failure) and it registers again.\n"
            "\n"
            "  --listen ADDR        NNG address to listen on (required)\n"
            "  --device SPEC        auto (CUDA when a GPU is visible, else host), host, cuda, cuda:N\n"
            "  --memory BYTES       model cache budget, e.g. 2GiB (default: the device's free memory;\n"
            "                       host: %llu MiB)\n"
            "  --load-threads N     snapshot pipeline threads per load (default: cores)\n"
            "  --id NAME            worker id shown in status (default: w<pid>)\n"
            "  --fault-note FILE    when a handler crashes the worker (SIGSEGV, SIGBUS, SIGFPE, SIGILL,\n"
            "                       SIGABRT), append the ids of the calls it was running to FILE, so\n"
            "                       that the gateway charges the crash to them alone (a local worker\n"
            "                       gets one from its gateway)\n"
            "  --ready-fd N         once listening, write one byte to the open descriptor N (3 or more,\n"
            "                       a pipe, say) and close it: a local worker's gateway knows then that\n"
            "                       it started\n"
            "  --link-fd N          also serve requests on the connected stream socket N (3 or more): the\n"
            "                       socketpair a local worker's gateway made when it spawned it, which\n"
            "                       carries its calls (fewer thread hops than NNG; docs/protocol.md)\n"
            "  --gateway ADDR       register with this gateway once listening (it dials --listen, so use a\n"
            "                       tcp:// address it can reach), then again every %d s, so a restarted\n"
            "                       gateway finds it; --key KEY or $AICFN_KEY authenticates: a worker key\n"
            "                       (`aicfn keys create --tenant T --worker`: registers and downloads only)\n"
            "                       or an admin key. The worker then fetches every handler and snapshot the\n"
            "                       gateway names from the gateway itself, by SHA-256 (artifact_get), into\n"
            "                       --cache-dir, and never opens the gateway's paths\n"
            "  --cache-dir DIR      where a --gateway worker keeps fetched artifacts, as DIR/<sha256>\n"
            "                       (default %s, created 0700; it must be this user's and\n"
            "                       writable by nobody else: handlers are loaded from it); a file found\n"
            "                       there is re-hashed once per process before it is used (one others\n"
            "                       may write is fetched again); a chunk whose ask times out or loses its\n"
            "                       link is asked again, 3 times in all\n"
            "  --cache-max BYTES    budget of --cache-dir (default %llu GiB): before each download (room\n"
            "                       for it and the others in flight, which the disk must also hold) and\n"
            "                       after it, the least recently used artifacts are deleted until the rest\n"
            "                       fits, except ones used in the last %d s (an opened handler or snapshot\n"
            "                       is not affected by the deletion)\n"
            "  --shared-artifacts   with --gateway: the gateway's data directory is mounted at the same\n"
            "                       path on this host, so open its artifact paths directly (no fetch)\n"
            "  --no-specs           refuse invocations whose `spec` asks to load a new function (by\n"
            "                       default the gateway registers functions that way; keep ADDR private)\n"
            "  --function SPEC      NAME=HANDLER.so[,SNAPSHOT.aicsnap][,OPTION=VALUE...]\n"
            "                       options: max_batch=N (default %d), max_delay_us=N (default %d),\n"
            "                       timeout=DUR (default %d ms; e.g. 30s), max_queue=N (default %d),\n"
            "                       version=N, param.KEY=VALUE (passed to the handler's init).\n"
            "                       Paths may not contain commas.\n"
            "\n"
            "environment: AICFN_LOG=error|warn|info|debug\n",
            (unsigned long long)(AICFN_DEFAULT_HOST_BUDGET >> 20), AICFN_REGISTER_RENEW_MS / 1000,
            AICFN_WORKER_CACHE_DIR, (unsigned long long)(AICFN_WORKER_CACHE_MAX_BYTES >> 30),
            AICFN_FETCH_PRUNE_GRACE_MS / 1000, AICFN_DEFAULT_MAX_BATCH, AICFN_DEFAULT_MAX_DELAY_US,
            AICFN_DEFAULT_TIMEOUT_MS, AICFN_DEFAULT_QUEUE_PER_FUNCTION);
}

/* A parsed --function: the config plus the storage its strings point into. */
typedef struct cw_fn {
    worker_fn_config cfg;
    char *text; /* a copy of the spec, cut in place */
    aicfn_param params[AICFN_MAX_PARAMS];
} cw_fn;

static int cw_parse_u64(const char *s, uint64_t *out) {
    if (s == NULL || *s == '\0') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end != '\0' || s[0] == '-') return -1;
    *out = v;
    return 0;
}

/* Parses NAME=HANDLER[,SNAPSHOT][,K=V...] into f. Returns 0 or prints a usage error. */
static int cw_parse_function(const char *spec, cw_fn *f) {
    memset(f, 0, sizeof *f);
    f->text = strdup(spec);
    if (f->text == NULL) return cli_usage_error("worker", "out of memory");
    char *save = NULL;
    char *tok = strtok_r(f->text, ",", &save);
    char *eq = tok ? strchr(tok, '=') : NULL;
    if (eq == NULL || eq == tok || eq[1] == '\0')
        return cli_usage_error(
            "worker", "--function '%s': expected NAME=HANDLER.so[,SNAPSHOT][,OPTION=VALUE...]", spec);
    *eq = '\0';
    f->cfg.name = tok;
    f->cfg.handler = eq + 1;
    while ((tok = strtok_r(NULL, ",", &save)) != NULL) {
        char *e = strchr(tok, '=');
        if (e == NULL) {
            if (f->cfg.snapshot)
                return cli_usage_error("worker", "--function %s: two snapshots ('%s' and '%s')", f->cfg.name,
                                       f->cfg.snapshot, tok);
            f->cfg.snapshot = tok;
            continue;
        }
        *e = '\0';
        const char *k = tok, *v = e + 1;
        uint64_t n;
        aicfn_error err;
        if (strncmp(k, "param.", 6) == 0 && k[6] != '\0') {
            if (f->cfg.n_params >= AICFN_MAX_PARAMS)
                return cli_usage_error("worker", "--function %s: too many params", f->cfg.name);
            f->params[f->cfg.n_params++] = (aicfn_param){.key = k + 6, .value = v};
        } else if (strcmp(k, "max_batch") == 0) {
            if (cw_parse_u64(v, &n) || n < 1 || n > AICFN_WORKER_MAX_BATCH)
                return cli_usage_error("worker", "--function %s: max_batch must be 1..%d", f->cfg.name,
                                       AICFN_WORKER_MAX_BATCH);
            f->cfg.max_batch = (uint32_t)n;
        } else if (strcmp(k, "max_delay_us") == 0) {
            if (cw_parse_u64(v, &n) || n > 60000000ull)
                return cli_usage_error("worker", "--function %s: max_delay_us must be 0..60000000",
                                       f->cfg.name);
            f->cfg.max_delay_us = n;
        } else if (strcmp(k, "timeout") == 0) {
            if (units_parse_duration_us(v, &n, &err) != AICFN_OK || n == 0)
                return cli_usage_error("worker", "--function %s: timeout '%s' is not a duration (e.g. 30s)",
                                       f->cfg.name, v);
            f->cfg.timeout_us = n;
        } else if (strcmp(k, "max_queue") == 0) {
            if (cw_parse_u64(v, &n) || n < 1 || n > 1000000)
                return cli_usage_error("worker", "--function %s: max_queue must be 1..1000000", f->cfg.name);
            f->cfg.max_queue = (uint32_t)n;
        } else if (strcmp(k, "version") == 0) {
            if (cw_parse_u64(v, &n) || n > UINT32_MAX)
                return cli_usage_error("worker", "--function %s: bad version '%s'", f->cfg.name, v);
            f->cfg.version = (uint32_t)n;
        } else {
            return cli_usage_error("worker",
                                   "--function %s: unknown option '%s' (handler params are param.KEY=VALUE)",
                                   f->cfg.name, k);
        }
    }
    f->cfg.params = f->params;
    return 0;
}

/* The value of flag argv[*i] ("--flag VALUE" or "--flag=VALUE"), or NULL. */
static const char *cw_flag(int argc, char **argv, int *i, const char *name) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] != '\0' || *i + 1 >= argc) return NULL;
    return argv[++*i];
}

int cli_cmd_worker(int argc, char **argv) {
    worker_config cfg = {.device = "auto"};
    cw_fn *fns = calloc(CW_MAX_FUNCTIONS, sizeof *fns);
    int n_fns = 0, rc = CLI_EXIT_OK;
    const char *gateway = NULL, *gw_key = NULL, *cache_dir = NULL, *fault_note = NULL;
    uint64_t cache_max = 0;
    int ready_fd = -1;
    int shared_artifacts = 0;
    worker_fetcher *fetcher = NULL;
    if (fns == NULL) return cli_usage_error("worker", "out of memory");
    for (int i = 1; i < argc; i++) {
        const char *v;
        aicfn_error err;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cw_help(stdout);
            goto out;
        } else if (strcmp(argv[i], "--no-specs") == 0) {
            cfg.refuse_specs = 1;
        } else if (strcmp(argv[i], "--shared-artifacts") == 0) {
            shared_artifacts = 1;
        } else if ((v = cw_flag(argc, argv, &i, "--cache-dir"))) {
            cache_dir = v;
        } else if ((v = cw_flag(argc, argv, &i, "--cache-max"))) {
            if (units_parse_size(v, &cache_max, &err) != AICFN_OK || cache_max == 0) {
                rc = cli_usage_error("worker", "--cache-max '%s' is not a size (e.g. 64GiB)", v);
                goto out;
            }
        } else if ((v = cw_flag(argc, argv, &i, "--listen"))) {
            cfg.listen = v;
        } else if ((v = cw_flag(argc, argv, &i, "--device"))) {
            cfg.device = v;
        } else if ((v = cw_flag(argc, argv, &i, "--gateway"))) {
            gateway = v;
        } else if ((v = cw_flag(argc, argv, &i, "--key"))) {
            gw_key = v;
        } else if ((v = cw_flag(argc, argv, &i, "--id"))) {
            cfg.id = v;
        } else if ((v = cw_flag(argc, argv, &i, "--fault-note"))) {
            fault_note = v;
        } else if ((v = cw_flag(argc, argv, &i, "--ready-fd"))) {
            uint64_t n;
            if (cw_parse_u64(v, &n) || n < 3 || n > INT_MAX || fcntl((int)n, F_GETFD) < 0) {
                rc = cli_usage_error("worker", "--ready-fd '%s' is not an open descriptor of 3 or more", v);
                goto out;
            }
            ready_fd = (int)n;
            (void)fcntl(ready_fd, F_SETFD, FD_CLOEXEC); /* not for what a handler may start */
        } else if ((v = cw_flag(argc, argv, &i, "--link-fd"))) {
            uint64_t n;
            int type = 0;
            socklen_t tl = sizeof type;
            struct sockaddr_storage peer;
            socklen_t pl = sizeof peer;
            if (cfg.link_fd > 0) {
                rc = cli_usage_error("worker", "--link-fd given twice");
                goto out;
            }
            if (cw_parse_u64(v, &n) || n < 3 || n > INT_MAX ||
                getsockopt((int)n, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM ||
                getpeername((int)n, (struct sockaddr *)&peer, &pl) != 0) {
                rc = cli_usage_error("worker", "--link-fd '%s' is not a connected stream socket of 3 or more", v);
                goto out;
            }
            cfg.link_fd = (int)n;
            (void)fcntl(cfg.link_fd, F_SETFD, FD_CLOEXEC); /* not for what a handler may start */
        } else if ((v = cw_flag(argc, argv, &i, "--memory"))) {
            if (units_parse_size(v, &cfg.memory_bytes, &err) != AICFN_OK) {
                rc = cli_usage_error("worker", "--memory '%s': %s", v, err.msg);
                goto out;
            }
            if (cfg.memory_bytes == 0) {
                rc = cli_usage_error("worker", "--memory must be more than 0 bytes");
                goto out;
            }
        } else if ((v = cw_flag(argc, argv, &i, "--load-threads"))) {
            uint64_t n;
            if (cw_parse_u64(v, &n) || n > 1024) {
                rc = cli_usage_error("worker", "--load-threads must be 0..1024");
                goto out;
            }
            cfg.load_threads = (uint32_t)n;
        } else if ((v = cw_flag(argc, argv, &i, "--function"))) {
            if (n_fns >= CW_MAX_FUNCTIONS) {
                rc = cli_usage_error("worker", "at most %d --function flags", CW_MAX_FUNCTIONS);
                goto out;
            }
            if ((rc = cw_parse_function(v, &fns[n_fns])) != 0) {
                n_fns++;
                goto out;
            }
            n_fns++;
        } else {
            rc = cli_usage_error("worker", "unknown or incomplete argument '%s'", argv[i]);
            goto out;
        }
    }
    if (cfg.listen == NULL) {
        rc = cli_usage_error("worker", "--listen ADDR is required");
        goto out;
    }
    if (gateway == NULL && (cache_dir || cache_max || shared_artifacts)) {
        rc = cli_usage_error("worker", "--cache-dir and --shared-artifacts go with --gateway ADDR");
        goto out;
    }
    if (cache_dir && shared_artifacts) {
        rc = cli_usage_error("worker", "--cache-dir and --shared-artifacts exclude each other");
        goto out;
    }

    /* Block the signals we wait for before any thread exists: every thread inherits it. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char role[48];
    if (cfg.id)
        snprintf(role, sizeof role, "worker %s", cfg.id);
    else
        snprintf(role, sizeof role, "worker");
    log_set_role(role);
    aicfn_error err;
    aicfn_error_clear(&err);
    worker *w = NULL;
    /* The secret that lets the gateway this worker registers with end it (`exit`): a
     * call stuck in a handler can be stopped no other way from another host. */
    char exit_token[2 * 32 + 1];
    if (gateway) {
        unsigned char r[32];
        if (sodium_init() < 0) {
            aicfn_error_set(&err, AICFN_E_INTERNAL, "libsodium failed to initialize");
            rc = cli_fail(&err);
            goto out;
        }
        randombytes_buf(r, sizeof r);
        sodium_bin2hex(exit_token, sizeof exit_token, r, sizeof r);
        cfg.exit_token = exit_token;
    }
    if (gateway && !shared_artifacts) {
        worker_fetch_config fc = {
            .gateway = gateway, .key = cli_api_key(gw_key), .cache_dir = cache_dir, .max_bytes = cache_max};
        if (worker_fetcher_create(&fc, &fetcher, &err) != AICFN_OK) {
            rc = cli_fail(&err);
            goto out;
        }
        cfg.fetcher = fetcher;
        log_info("artifacts are fetched from %s into %s", gateway, worker_fetcher_dir(fetcher));
    }
    if (fault_note && worker_fault_note_open(fault_note, &err) != AICFN_OK) {
        rc = cli_fail(&err);
        goto out;
    }
    if (worker_create(&cfg, &w, &err) != AICFN_OK) {
        rc = cli_fail(&err);
        goto out;
    }
    for (int i = 0; i < n_fns; i++) {
        if (worker_add_function(w, &fns[i].cfg, &err) != AICFN_OK) {
            rc = cli_fail(&err);
            worker_destroy(w);
            goto out;
        }
    }
    if (worker_start(w, &err) != AICFN_OK) {
        rc = cli_fail(&err);
        worker_destroy(w);
        goto out;
    }
    if (ready_fd >= 0) {
        /* Whoever started us (a gateway's pool) dials us now. Its end may be gone (a
         * gateway that died): SIGPIPE is ignored, and we then answer nobody. */
        if (write(ready_fd, "R", 1) != 1) log_warn("--ready-fd %d: %s", ready_fd, strerror(errno));
        close(ready_fd);
        ready_fd = -1;
    }
    bool registered = true; /* false from a failed renewal until one succeeds */
    if (gateway) {
        int r = cli_gw_register(gateway, cli_api_key(gw_key), cfg.id, worker_url(w), cfg.exit_token, &err);
        /* A live worker with this --id at another address may be this worker's previous
         * run, restarted at a new address before the gateway noticed it was gone (it drops
         * a worker after 3 failed status polls): ask again for a while before giving up. */
        for (int tries = 0; r == AICFN_E_INVALID && tries < 4; tries++) {
            log_warn("registering with gateway %s: %s (asking again in %d ms)", gateway, err.msg,
                     AICFN_WORKER_POLL_MS);
            struct timespec pause = {.tv_sec = AICFN_WORKER_POLL_MS / 1000,
                                     .tv_nsec = (long)(AICFN_WORKER_POLL_MS % 1000) * 1000000L};
            nanosleep(&pause, NULL);
            r = cli_gw_register(gateway, cli_api_key(gw_key), cfg.id, worker_url(w), cfg.exit_token, &err);
        }
        if (r == AICFN_E_EXISTS) {
            /* A run of this worker before a quick restart is still registered at this
             * address: the gateway's link to it reconnects to this process, which it is
             * now (renewals keep the registration). */
            log_info("gateway %s: %s; it reaches this worker there", gateway, err.msg);
        } else if (r != AICFN_OK) {
            rc = cli_fail(&err);
            worker_drain(w, 1000);
            worker_destroy(w);
            goto out;
        }
    }
    int sig = 0;
    for (;;) {
        struct timespec period = {.tv_sec = AICFN_REGISTER_RENEW_MS / 1000,
                                  .tv_nsec = (long)(AICFN_REGISTER_RENEW_MS % 1000) * 1000000L};
        sig = sigtimedwait(&set, NULL, gateway ? &period : NULL);
        if (sig > 0) break;
        if (errno != EAGAIN || !gateway) continue; /* EINTR */
        int r = cli_gw_register(gateway, cli_api_key(gw_key), cfg.id, worker_url(w), cfg.exit_token, &err);
        if (r == AICFN_OK) {
            log_info("registered again with gateway %s (it did not know this worker)", gateway);
            registered = true;
        } else if (r == AICFN_E_EXISTS) {
            registered = true; /* it knows this worker: a renewal's usual answer */
        } else if (registered) {
            log_warn("renewing the registration with gateway %s: %s (trying again every %d s)", gateway,
                     err.msg, AICFN_REGISTER_RENEW_MS / 1000);
            registered = false;
        }
    }
    log_info("received %s: draining (a second one stops at once)", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    /* A drain waits for every call's deadline and the destroy for every handler to return:
     * an operator whose handler is stuck can still end the process with a second signal. */
    cli_stop_signal_watch(&set, "calls in flight");
    /* Every call in flight ends by its deadline: the worker waits for the longest
     * function timeout (run-time registered ones included) plus a grace period. */
    unsigned left = worker_drain(w, 0);
    if (left == 0) cli_stop_signal_disarm(); /* nothing left to cut short */
    if (left) log_warn("drain: %u calls still in flight past every deadline; stopping anyway", left);
    worker_destroy(w);
    log_info("stopped");
    rc = left ? CLI_EXIT_FAIL : CLI_EXIT_OK;
out:
    worker_fetcher_destroy(fetcher); /* after worker_destroy: the worker borrows it */
    for (int i = 0; i < n_fns; i++)
        free(fns[i].text);
    free(fns);
    return rc;
}
