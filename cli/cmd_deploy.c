/* cmd_deploy.c: `aicfn deploy DIR|aicfn.yaml`: reads the manifest, builds the handler
 * when it is C source, packs the model into a snapshot, uploads both to the gateway in
 * chunks with their SHA-256 hashes (skipping what the gateway already stores), and
 * registers a new version, which becomes the active one. Prints NAME:VERSION.
 *
 * Building: a .c handler is compiled with `cc -shared -fPIC -O2 -I<include dir>`, where
 * the include dir holds aicfn.h: $AICFN_INCLUDE, else the `include/` folder of the tree
 * the aicfn binary was built in (found by walking up from the binary). When nvcc exists
 * and *.cu files sit beside the handler, they are compiled too and the handler is built
 * with -DAICFN_HANDLER_CUDA, linked against the static CUDA runtime; if that build
 * fails, the C-only build is used (with a warning). A .so handler is uploaded as is. Either
 * is loaded here once first, to refuse one built for another function ABI before any
 * upload (cd_check_handler).
 * Not for: running handlers (workers run them). */
#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <sodium.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/gwclient.h"
#include "cli/manifest.h"
#include "common/tunables.h"
#include "common/units.h"
#include "gateway/artifacts.h"
#include "gateway/registry.h"
#include "snapshots/writer.h"
#include "worker/host.h"

extern char **environ;

#define CD_NVCC "/usr/local/cuda/bin/nvcc"
#define CD_CUDART "/usr/local/cuda/lib64/libcudart_static.a"
#define CD_MAX_CU 16
#define CD_DEPLOY_TIMEOUT_MS 30000
#define CD_DEPLOY_ASKS 3 /* a deploy message that got no answer is sent again, same deploy id */
#define CD_SEND_TRIES 6  /* sends of one upload message at most (the first and 5 retries) */
#define CD_RETRY_MS 500  /* pause before the first retry, doubling: 15.5 s for 5 */

static void cd_help(FILE *out) {
    fprintf(
        out,
        "usage: aicfn deploy DIR|aicfn.yaml [--gateway ADDR] [--key KEY] [--deploy-id ID] [--no-activate]\n"
        "                    [--json]\n"
        "\n"
        "Deploys the function described by an aicfn.yaml (or the aicfn.yaml in DIR) as a new\n"
        "version, which becomes active (older versions stay invokable as NAME:VER).\n"
        "  - handler: a .c file is built with `cc -shared -fPIC -O2 -I<include dir>` (the include\n"
        "    dir holding aicfn.h: $AICFN_INCLUDE, else include/ of the tree aicfn was built in);\n"
        "    *.cu files beside it are built with nvcc when it exists. A .so is used as is.\n"
        "  - model: the safetensors files are packed into a snapshot (zstd frames, byte planes)\n"
        "    in $TMPDIR (else /tmp), removed afterwards (by the next deploy if this one was killed).\n"
        "  - both are uploaded in chunks with their SHA-256; what the gateway has is skipped.\n"
        "  --gateway ADDR  the gateway (default: $AICFN_GATEWAY, else tcp://127.0.0.1:7070)\n"
        "  --key KEY       admin API key (default: $AICFN_KEY)\n"
        "  --deploy-id ID  this deploy's idempotency key (1..%d of [A-Za-z0-9_.:-], e.g. a CI run's\n"
        "                  id): a deploy of NAME with an ID that already made NAME:V, with the same\n"
        "                  handler, model and config, changes nothing and prints NAME:V (unchanged);\n"
        "                  with other content it fails (AICFN_E_EXISTS). Default: a random ID, so a\n"
        "                  deploy message that got no answer (the gateway slow or restarting) is sent\n"
        "                  again, up to %d times in all, without making a second version.\n"
        "  --no-activate   register the version without making it the active one (blue/green: test\n"
        "                  it as NAME:VER, then `aicfn activate NAME:VER`); calls to NAME keep going\n"
        "                  to the active version\n"
        "  --json          print "
        "{\"name\",\"version\",\"existing\",\"activated\",\"deploy_id\",\"handler\",\n"
        "                  ...} instead of text\n",
        GW_DEPLOY_ID_MAX, CD_DEPLOY_ASKS);
}

/* Runs argv[0] (PATH lookup), waits; 0 on exit status 0. */
static int cd_run(char *const argv[], aicfn_error *err) {
    pid_t pid; /* SIGCHLD is ours (cli/main.c resets an inherited SIG_IGN) */
    int rc = posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ);
    if (rc != 0) return aicfn_error_errno(err, AICFN_E_IO, rc, "running %s", argv[0]);
    int st = 0;
    pid_t got;
    while ((got = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {
    }
    /* ECHILD: a parent that ignores SIGCHLD (inherited) has the child reaped for us, its
     * status lost: never taken for a success. */
    if (got < 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "waiting for %s", argv[0]);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s failed (status %d)", argv[0],
                               WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    return AICFN_OK;
}

static int cd_include_dir(char *out, size_t len, aicfn_error *err) {
    const char *env = getenv("AICFN_INCLUDE");
    char probe[PATH_MAX + 32];
    if (env && env[0]) {
        snprintf(probe, sizeof probe, "%s/aicfn.h", env);
        if (access(probe, R_OK) != 0)
            return aicfn_error_set(err, AICFN_E_NOT_FOUND, "$AICFN_INCLUDE=%s holds no aicfn.h", env);
        snprintf(out, len, "%s", env);
        return AICFN_OK;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "reading /proc/self/exe");
    exe[n] = 0;
    for (int up = 0; up < 6; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash || slash == exe) break;
        *slash = 0;
        snprintf(probe, sizeof probe, "%s/include/aicfn.h", exe);
        if (access(probe, R_OK) == 0) {
            snprintf(out, len, "%s/include", exe);
            return AICFN_OK;
        }
    }
    return aicfn_error_set(
        err, AICFN_E_NOT_FOUND,
        "cannot find include/aicfn.h near the aicfn binary: set AICFN_INCLUDE to its folder");
}

/* Loads the handler here, as a worker will, to refuse before anything is uploaded one a
 * worker would refuse: built for another function ABI, or missing aicfn_fn_invoke or the
 * ABI symbol. A library this machine cannot load at all (built for another architecture,
 * or needing libraries only the workers' hosts have, such as the CUDA runtime) is left to
 * the workers, with a note. Loading runs the library's constructors here: it is the
 * deployer's own code. */
static int cd_check_handler(const char *so, aicfn_error *err) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s%s", strchr(so, '/') ? "" : "./", so); /* no search of the library path */
    dlerror();
    void *dl = dlopen(p, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        const char *why = dlerror();
        fprintf(stderr,
                "note: handler %s cannot be loaded on this machine (%s): its ABI is checked by the workers\n",
                so, why ? why : "unknown dlopen error");
        return AICFN_OK;
    }
    dlclose(dl);
    worker_handler *h = NULL;
    int rc = worker_handler_open(so, &h, err);
    if (rc == AICFN_OK) worker_handler_close(h);
    return rc;
}

/* Builds the handler source into tmp/handler.so. */
static int cd_build(const cli_manifest *m, const char *tmp, char *so, size_t so_len, aicfn_error *err) {
    char inc[PATH_MAX], incflag[PATH_MAX + 4];
    int rc = cd_include_dir(inc, sizeof inc, err);
    if (rc != AICFN_OK) return rc;
    snprintf(incflag, sizeof incflag, "-I%s", inc);
    snprintf(so, so_len, "%s/handler.so", tmp);

    if (m->handler_kind == CLI_HANDLER_CU) {
        if (access(CD_NVCC, X_OK) != 0)
            return aicfn_error_set(err, AICFN_E_UNSUPPORTED, "handler %s is CUDA source but %s is missing",
                                   m->handler, CD_NVCC);
        char *av[] = {CD_NVCC, "-shared", "-O2", "-Xcompiler", "-fPIC", "-DAICFN_HANDLER_CUDA=1",
                      incflag, "-o",      so,    m->handler,   NULL};
        fprintf(stderr, "building %s with nvcc\n", m->handler);
        rc = cd_run(av, err);
        if (rc != AICFN_OK) aicfn_error_wrap(err, "building handler %s", m->handler);
        return rc;
    }
    /* CUDA sources beside the handler. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", m->handler);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    char cu[CD_MAX_CU][PATH_MAX];
    int n_cu = 0;
    if (access(CD_NVCC, X_OK) == 0 && access(CD_CUDART, R_OK) == 0) {
        DIR *d = opendir(dir);
        struct dirent *e;
        int seen = 0;
        while (d && (e = readdir(d))) {
            size_t l = strlen(e->d_name);
            if (l > 3 && strcmp(e->d_name + l - 3, ".cu") == 0) {
                if (n_cu < CD_MAX_CU) snprintf(cu[n_cu++], PATH_MAX, "%s/%s", dir, e->d_name);
                seen++;
            }
        }
        if (d) closedir(d);
        if (seen > CD_MAX_CU) /* which ones would be left out depends on readdir's order */
            return aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s holds %d .cu files; at most %d are built", dir,
                                   seen, CD_MAX_CU);
    }
    if (n_cu > 0) {
        char objs[CD_MAX_CU][PATH_MAX + 16];
        bool ok = true;
        for (int i = 0; i < n_cu && ok; i++) {
            snprintf(objs[i], sizeof objs[i], "%s/cu%d.o", tmp, i);
            char *av[] = {CD_NVCC, "-c", "-O2", "-Xcompiler", "-fPIC", incflag, "-o", objs[i], cu[i], NULL};
            fprintf(stderr, "building %s with nvcc\n", cu[i]);
            ok = cd_run(av, err) == AICFN_OK;
        }
        if (ok) {
            char *av[16 + CD_MAX_CU];
            int a = 0;
            av[a++] = "cc";
            av[a++] = "-shared";
            av[a++] = "-fPIC";
            av[a++] = "-O2";
            av[a++] = "-DAICFN_HANDLER_CUDA=1";
            av[a++] = incflag;
            av[a++] = "-o";
            av[a++] = so;
            av[a++] = m->handler;
            for (int i = 0; i < n_cu; i++)
                av[a++] = objs[i];
            av[a++] = CD_CUDART;
            av[a++] = "-lstdc++";
            av[a++] = "-ldl";
            av[a++] = "-lrt";
            av[a++] = "-lpthread";
            av[a++] = "-lm";
            av[a] = NULL;
            fprintf(stderr, "building %s (CUDA)\n", m->handler);
            if (cd_run(av, err) == AICFN_OK) return AICFN_OK;
        }
        fprintf(stderr, "aicfn deploy: the CUDA build failed (%s); building the C path only\n", err->msg);
    }
    char *av[] = {"cc", "-shared", "-fPIC", "-O2", incflag, "-o", so, m->handler, "-lm", NULL};
    fprintf(stderr, "building %s\n", m->handler);
    rc = cd_run(av, err);
    if (rc != AICFN_OK) aicfn_error_wrap(err, "building handler %s", m->handler);
    return rc;
}

typedef struct cd_progress {
    bool tty;
    int last;
} cd_progress;

static void cd_on_progress(void *user, uint64_t done, uint64_t total) {
    cd_progress *p = user;
    if (!p->tty || total == 0) return;
    int pct = (int)(done * 100 / total);
    if (pct == p->last) return;
    p->last = pct;
    char a[32], b[32];
    fprintf(stderr, "\rpacking model: %3d%% (%s of %s)", pct, units_format_size(done, a, sizeof a),
            units_format_size(total, b, sizeof b));
    if (done >= total) fprintf(stderr, "\n");
}

/* SIGINT or SIGTERM during the uploads: the chunk in flight ends, the upload is aborted
 * on the gateway (else its space stays reserved until its idle timeout), and deploy
 * fails. Outside the uploads the default action stands (the packing's temporary
 * folder is removed by the next deploy). */
static volatile sig_atomic_t cd_interrupted;

static void cd_on_stop_signal(int sig) {
    (void)sig;
    static const char note[] = "\naicfn deploy: interrupted: aborting the upload (again to exit at once)\n";
    cd_interrupted = 1;
    ssize_t n = write(STDERR_FILENO, note, sizeof note - 1);
    (void)n;
}

/* Which failures a message may be sent again after. */
typedef enum cd_retry {
    CD_RETRY_REFUSED, /* the gateway refused it unseen (AICFN_E_OVERLOADED: its admin queue
                         was full): safe for any message */
    CD_RETRY_SENT,    /* also a dropped or timed-out connection (NNG dials again by itself),
                         which may have delivered it: for messages safe to send twice */
    CD_RETRY_SENT_IO, /* also the gateway's AICFN_E_IO (a chunk it could not write: its disk) */
} cd_retry;

static bool cd_retryable(int rc, cd_retry how) {
    if (rc == AICFN_E_OVERLOADED) return true;
    if (how == CD_RETRY_REFUSED) return false;
    return rc == AICFN_E_TIMEOUT || rc == AICFN_E_WORKER_LOST || rc == AICFN_E_UNAVAILABLE ||
           (how == CD_RETRY_SENT_IO && rc == AICFN_E_IO);
}

/* cli_gw_call, sent again after a failure `how` allows (CD_SEND_TRIES in all, the pause
 * doubling from CD_RETRY_MS) unless interrupted. *tries: the sends made. Chunks and
 * commits are safe to send twice: the gateway takes a chunk it already has as a no-op
 * (the SHA-256 at commit covers what was stored), and a second commit finds its upload
 * gone (AICFN_E_NOT_FOUND: the caller asks whether the artifact is stored). */
static int cd_call_retrying(rpc_client *c, wire_writer *w, uint32_t timeout_ms, cd_retry how, const char *what,
                            int *tries, rpc_msg **reply, wire_doc *doc, aicfn_error *err) {
    uint32_t pause_ms = CD_RETRY_MS;
    for (int attempt = 1;; attempt++) {
        *tries = attempt;
        int rc = cli_gw_call(c, w, timeout_ms, reply, doc, err);
        if (rc == AICFN_OK || attempt >= CD_SEND_TRIES || cd_interrupted || !cd_retryable(rc, how))
            return rc;
        char msg[sizeof err->msg];
        fprintf(stderr, "\naicfn deploy: %s failed (%s: %s); sending it again in %u ms\n", what,
                aicfn_status_name(rc), cli_text(err->msg, msg, sizeof msg), pause_ms);
        struct timespec ts = {.tv_sec = pause_ms / 1000, .tv_nsec = (long)(pause_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !cd_interrupted) {
        }
        if (cd_interrupted) return rc;
        pause_ms *= 2;
    }
}

/* upload_begin of artifact `hex` (`size` bytes): *exists when the gateway stores it, else
 * *token names the upload it opened. */
static int cd_upload_begin(rpc_client *c, const char *key, const char *hex, uint64_t size, bool *exists,
                           uint64_t *token, aicfn_error *err) {
    wire_writer w;
    wire_writer_init(&w);
    cli_gw_begin(&w, "upload_begin", key, 2);
    wire_kv_str(&w, "hash", hex);
    wire_kv_u64(&w, "size", size);
    rpc_msg *reply = NULL;
    wire_doc doc;
    int tries;
    /* Sent again only when refused unseen: a begin the gateway took whose answer was lost
     * holds its space until the upload times out, and a second one would need that space
     * again. */
    int rc = cd_call_retrying(c, &w, 30000, CD_RETRY_REFUSED, "upload_begin", &tries, &reply, &doc, err);
    wire_writer_fini(&w);
    if (rc != AICFN_OK) return rc;
    *exists = false;
    *token = 0;
    wire_get_u64(&doc.root, NULL, "upload", false, token, NULL);
    wire_get_bool(&doc.root, NULL, "exists", false, exists, NULL);
    wire_doc_fini(&doc);
    rpc_msg_free(reply);
    return AICFN_OK;
}

/* upload_commit (ok) or upload_abort of upload `token`: the gateway's answer (a commit
 * hashes and fsyncs the file: it waits `timeout_ms`). */
static int cd_upload_end(rpc_client *c, const char *key, uint64_t token, bool commit, uint32_t timeout_ms,
                         int *tries, aicfn_error *err) {
    wire_writer w;
    wire_writer_init(&w);
    cli_gw_begin(&w, commit ? "upload_commit" : "upload_abort", key, 1);
    wire_kv_u64(&w, "upload", token);
    rpc_msg *reply = NULL;
    wire_doc doc;
    int rc;
    if (commit) {
        rc = cd_call_retrying(c, &w, timeout_ms, CD_RETRY_SENT, "upload_commit", tries, &reply, &doc, err);
    } else {
        rc = cd_call_retrying(c, &w, timeout_ms, CD_RETRY_REFUSED, "upload_abort", tries, &reply, &doc, err);
    }
    wire_writer_fini(&w);
    if (rc == AICFN_OK) {
        wire_doc_fini(&doc);
        rpc_msg_free(reply);
    }
    return rc;
}

/* Whether the gateway now stores artifact `hex` (after a commit whose answer did not
 * come in time): upload_begin says `exists`; an upload it opened instead is aborted. */
static bool cd_stored(rpc_client *c, const char *key, const char *hex, uint64_t size) {
    bool exists = false;
    uint64_t token = 0;
    aicfn_error e;
    if (cd_upload_begin(c, key, hex, size, &exists, &token, &e) != AICFN_OK) return false;
    int tries;
    if (!exists && token) cd_upload_end(c, key, token, false, 60000, &tries, &e);
    return exists;
}

/* Uploads `path` (hash `hex`, `size` bytes) unless the gateway has it. */
static int cd_upload(rpc_client *c, const char *key, const char *path, const char *hex, uint64_t size,
                     bool tty, aicfn_error *err) {
    uint64_t token = 0;
    bool exists = false;
    int rc = cd_upload_begin(c, key, hex, size, &exists, &token, err);
    if (rc != AICFN_OK) return aicfn_error_wrap(err, "uploading %s", path);
    if (exists) {
        fprintf(stderr, "%s: already on the gateway (%.12s)\n", path, hex);
        return AICFN_OK;
    }
    int tries = 0;
    aicfn_error e2;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    uint8_t *buf = fd >= 0 ? malloc(AICFN_UPLOAD_CHUNK_BYTES) : NULL;
    if (!buf) {
        /* The upload the gateway opened holds a slot and the file's size until aborted. */
        rc = fd < 0 ? aicfn_error_errno(err, AICFN_E_IO, errno, "opening %s", path)
                    : aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
        if (fd >= 0) close(fd);
        cd_upload_end(c, key, token, false, 10000, &tries, &e2);
        return rc;
    }
    uint64_t off = 0;
    while (rc == AICFN_OK && off < size) {
        if (cd_interrupted) {
            rc =
                aicfn_error_set(err, AICFN_E_CANCELED, "interrupted after %llu of %llu bytes: upload aborted",
                                (unsigned long long)off, (unsigned long long)size);
            break;
        }
        ssize_t n = pread(fd, buf, AICFN_UPLOAD_CHUNK_BYTES, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            rc = n < 0 ? aicfn_error_errno(err, AICFN_E_IO, errno, "reading %s", path)
                       : aicfn_error_set(err, AICFN_E_IO, "%s shrank while uploading", path);
            break;
        }
        wire_writer w;
        wire_writer_init(&w);
        cli_gw_begin(&w, "upload_chunk", key, 3);
        wire_kv_u64(&w, "upload", token);
        wire_kv_u64(&w, "offset", off);
        wire_kv_bin(&w, "data", buf, (size_t)n);
        char what[64];
        snprintf(what, sizeof what, "the chunk at byte %llu", (unsigned long long)off);
        rpc_msg *reply = NULL;
        wire_doc doc;
        rc = cd_call_retrying(c, &w, 60000, CD_RETRY_SENT_IO, what, &tries, &reply, &doc, err);
        wire_writer_fini(&w);
        if (rc == AICFN_OK) {
            wire_doc_fini(&doc);
            rpc_msg_free(reply);
        }
        off += (uint64_t)n;
        if (tty && rc == AICFN_OK) {
            char a[32], b[32];
            fprintf(stderr, "\ruploading %s: %s of %s", path, units_format_size(off, a, sizeof a),
                    units_format_size(size, b, sizeof b));
        }
    }
    if (tty) fprintf(stderr, "\n");
    free(buf);
    close(fd);
    /* A commit hashes and fsyncs the whole file on the gateway: a minute, and a second
     * more per 64 MiB. */
    uint32_t commit_ms = 60000 + (uint32_t)(size / (64u << 20) < 3600 ? size / (64u << 20) * 1000 : 3600000);
    int rc2 = cd_upload_end(c, key, token, rc == AICFN_OK, rc == AICFN_OK ? commit_ms : 10000, &tries,
                            rc == AICFN_OK ? err : &e2);
    /* A commit whose answer never came (it finished after we stopped waiting, or its
     * answer was lost with the connection), or one sent again that found its upload
     * gone (the first one committed it): the gateway may store the file all the same. */
    if (rc == AICFN_OK && (cd_retryable(rc2, CD_RETRY_SENT) || (rc2 == AICFN_E_NOT_FOUND && tries > 1)) &&
        cd_stored(c, key, hex, size))
        rc2 = AICFN_OK;
    /* A commit refused (a revoked key, say) or failed leaves the upload open, holding
     * its slot and space until it times out: end it (a gone upload is AICFN_E_NOT_FOUND). */
    if (rc == AICFN_OK && rc2 != AICFN_OK) cd_upload_end(c, key, token, false, 10000, &tries, &e2);
    if (rc == AICFN_OK) rc = rc2;
    if (rc != AICFN_OK) aicfn_error_wrap(err, "uploading %s", path);
    return rc;
}

static void cd_rmtree(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[PATH_MAX + 256];
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

/* The folder deploy packs and builds in: $TMPDIR (else /tmp), whose /tmp may be a small
 * RAM-backed tmpfs where $TMPDIR points elsewhere. */
static const char *cd_tmp_root(void) {
    const char *t = getenv("TMPDIR");
    return t && t[0] == '/' ? t : "/tmp";
}

/* Where a pid means something, as a folder-name part: this host's name ([A-Za-z0-9.-], at
 * most 63 bytes; "host" when unknown), then the pid namespace's inode (containers with
 * one hostname may still have pid namespaces of their own). */
static void cd_host_tag(char *out, size_t n) {
    char h[256] = "";
    if (gethostname(h, sizeof h - 1) != 0 || !h[0]) snprintf(h, sizeof h, "host");
    size_t k = 0;
    for (size_t i = 0; h[i] && k + 1 < n && k < 63; i++)
        out[k++] = isalnum((unsigned char)h[i]) || h[i] == '.' || h[i] == '-' ? h[i] : '-';
    out[k] = '\0';
    struct stat ns;
    if (stat("/proc/self/ns/pid", &ns) == 0 && k + 1 < n)
        snprintf(out + k, n - k, "-%llu", (unsigned long long)ns.st_ino);
}

/* Removes the folders of deploys that died without cleaning up (Ctrl-C while packing, kill
 * -9): aicfn-deploy-<host>-<pid>-XXXXXX of this user, on this host, whose process is
 * gone. A model's snapshot is as large as the model: never left to pile up. A $TMPDIR
 * shared between hosts or containers (NFS, a bind mount) holds others' folders, whose
 * pids mean nothing here: their host part differs, and they are left alone. */
static void cd_clean_stale(const char *root, const char *host) {
    DIR *d = opendir(root);
    if (!d) return;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "aicfn-deploy-%s-", host);
    size_t pl = strlen(prefix);
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid = 0;
        char rest[16];
        if (strncmp(e->d_name, prefix, pl) != 0 || sscanf(e->d_name + pl, "%ld-%15s", &pid, rest) != 2 ||
            pid <= 0 || strlen(rest) != 6)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
        char p[PATH_MAX];
        struct stat st;
        if (snprintf(p, sizeof p, "%s/%s", root, e->d_name) >= (int)sizeof p) continue;
        if (lstat(p, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid()) continue;
        cd_rmtree(p);
    }
    closedir(d);
}

/* What the gateway at addr does with a deploy message's newer keys, from its status
 * "features": an older gateway ignores deploy_id and activate, so a deploy sent to it
 * again could make a second version, and --no-activate would activate. */
static int cd_gateway_features(const char *addr, const char *key, bool *ids, bool *staging,
                               aicfn_error *err) {
    int rc = cli_gw_has_feature(addr, key, "deploy_id", ids, err);
    return rc != AICFN_OK ? rc : cli_gw_has_feature(addr, key, "deploy_activate", staging, err);
}

/* What the deploy message registers (the artifacts are uploaded already). */
typedef struct cd_version {
    const char *name, *so_hex, *snap_hex; /* snap_hex NULL: no model */
    uint64_t raw_bytes;                   /* the model's tensor bytes */
    const char *config;
    const char *deploy_id; /* NULL: the gateway keeps none, and the message is sent once */
    bool activate;
} cd_version;

/* Whether a deploy message that failed so may be sent again with its deploy id: no
 * answer came (the gateway may have committed it all the same), or it was refused
 * before it was queued (the admin queue full). */
static bool cd_ask_again(int rc) {
    return rc == AICFN_E_TIMEOUT || rc == AICFN_E_UNAVAILABLE || rc == AICFN_E_WORKER_LOST ||
           rc == AICFN_E_OVERLOADED;
}

/* The deploy message: registers the uploaded artifacts as a version of v->name. With a
 * deploy id, a message cd_ask_again allows is sent again (after 1 s, then 2 s: a gateway
 * restarting), which the gateway answers with the version it made, if it made one
 * (registry.h). */
static int cd_register(rpc_client *c, const char *key, const cd_version *v, uint64_t *version, bool *existing,
                       aicfn_error *err) {
    int rc = AICFN_OK;
    const char *name = v->name, *deploy_id = v->deploy_id;
    int asks = deploy_id ? CD_DEPLOY_ASKS : 1;
    for (int ask = 1; ask <= asks; ask++) {
        wire_writer w;
        wire_writer_init(&w);
        cli_gw_begin(&w, "deploy", key, (v->snap_hex ? 5 : 3) + !!deploy_id + !v->activate);
        wire_kv_str(&w, "name", name);
        wire_kv_str(&w, "handler", v->so_hex);
        wire_kv_str(&w, "config", v->config);
        if (deploy_id) wire_kv_str(&w, "deploy_id", deploy_id);
        if (v->snap_hex) {
            wire_kv_str(&w, "snapshot", v->snap_hex);
            wire_kv_u64(&w, "model_raw_bytes", v->raw_bytes);
        }
        if (!v->activate) wire_kv_bool(&w, "activate", false);
        rpc_msg *reply = NULL;
        wire_doc doc;
        rc = cli_gw_call(c, &w, CD_DEPLOY_TIMEOUT_MS, &reply, &doc, err);
        wire_writer_fini(&w);
        if (rc == AICFN_OK) {
            rc = wire_get_u64(&doc.root, NULL, "version", true, version, err);
            if (rc == AICFN_OK) rc = wire_get_bool(&doc.root, NULL, "existing", false, existing, err);
            if (rc != AICFN_OK) aicfn_error_wrap(err, "the gateway's reply to deploy %s", name);
            wire_doc_fini(&doc);
            rpc_msg_free(reply);
            return rc;
        }
        if (!cd_ask_again(rc) || cd_interrupted || ask == asks) break;
        char msg[sizeof err->msg];
        fprintf(stderr, "deploy %s: %s; asking again in %d s (deploy id %s, %d of %d)\n", name,
                cli_text(err->msg, msg, sizeof msg), ask, deploy_id, ask + 1, asks);
        struct timespec pause = {.tv_sec = ask};
        while (nanosleep(&pause, &pause) != 0 && !cd_interrupted) {
        }
        if (cd_interrupted) break;
    }
    if (rc != AICFN_OK && cd_ask_again(rc) && deploy_id)
        aicfn_error_wrap(err,
                         "no answer to deploy %s: the gateway may have made the version all the same; "
                         "`aicfn deploy ... --deploy-id %s` finds out without making another",
                         name, deploy_id);
    return rc;
}

int cli_cmd_deploy(int argc, char **argv) {
    const char *gateway = NULL, *key_flag = NULL, *path = NULL, *deploy_id_flag = NULL;
    int json = 0;
    bool activate = true;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cd_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = cli_flag_value(argc, argv, &i, "--gateway"))) {
            gateway = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--key"))) {
            key_flag = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--deploy-id"))) {
            if (!gw_deploy_id_valid(v))
                return cli_usage_error("deploy", "--deploy-id '%.140s': 1..%d of [A-Za-z0-9_.:-]", v,
                                       GW_DEPLOY_ID_MAX);
            deploy_id_flag = v;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--no-activate")) {
            activate = false;
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            return cli_usage_error("deploy", "unknown or incomplete argument '%s'", argv[i]);
        }
    }
    if (!path) return cli_usage_error("deploy", "name the function's folder or its aicfn.yaml");
    char deploy_id[GW_DEPLOY_ID_MAX + 1];
    if (deploy_id_flag) {
        snprintf(deploy_id, sizeof deploy_id, "%s", deploy_id_flag);
    } else {
        unsigned char r[16];
        if (sodium_init() < 0) {
            fprintf(stderr, "aicfn deploy: libsodium failed to initialize\n");
            return CLI_EXIT_FAIL;
        }
        randombytes_buf(r, sizeof r);
        sodium_bin2hex(deploy_id, sizeof deploy_id, r, sizeof r);
    }
    const char *key = cli_api_key(key_flag);
    const char *addr = cli_gateway_addr(gateway);
    bool tty = isatty(STDERR_FILENO);

    aicfn_error err;
    aicfn_error_clear(&err);
    cli_manifest *m = NULL;
    if (cli_manifest_load(path, &m, &err) != AICFN_OK) return cli_fail(&err);
    const char *root = cd_tmp_root();
    char host[96];
    cd_host_tag(host, sizeof host);
    cd_clean_stale(root, host);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s/aicfn-deploy-%s-%ld-XXXXXX", root, host, (long)getpid()) >=
            (int)sizeof tmp ||
        !mkdtemp(tmp)) {
        cli_manifest_free(m);
        aicfn_error_errno(&err, AICFN_E_IO, errno, "creating a temporary folder in %s", root);
        return cli_fail(&err);
    }
    int rc = AICFN_OK;
    rpc_client *c = NULL;
    char so[PATH_MAX + 32], snap[PATH_MAX + 32] = "";
    char so_hex[65] = "", snap_hex[65] = "";
    uint64_t so_size = 0, snap_size = 0;
    snap_pack_stats st;
    memset(&st, 0, sizeof st);
    char *config = NULL;

    /* 0. The gateway, before the slow work: that it answers (and takes the key), and
     * what it supports. */
    bool gw_ids = false, gw_staging = false;
    rc = cd_gateway_features(addr, key, &gw_ids, &gw_staging, &err);
    if (rc == AICFN_OK && !activate && !gw_staging)
        rc = aicfn_error_set(&err, AICFN_E_UNSUPPORTED,
                             "the gateway at %s cannot stage a version (--no-activate): it would make it the "
                             "active one; upgrade the gateway",
                             addr);
    if (rc == AICFN_OK && deploy_id_flag && !gw_ids)
        rc = aicfn_error_set(&err, AICFN_E_UNSUPPORTED, "the gateway at %s keeps no deploy ids (--deploy-id)",
                             addr);
    if (rc == AICFN_OK && !gw_ids)
        fprintf(stderr,
                "note: the gateway at %s keeps no deploy ids: a deploy whose answer is lost is not "
                "sent again\n",
                addr);

    /* 1. The handler. */
    if (rc == AICFN_OK && m->handler_kind == CLI_HANDLER_SO)
        snprintf(so, sizeof so, "%s", m->handler);
    else if (rc == AICFN_OK)
        rc = cd_build(m, tmp, so, sizeof so, &err);
    if (rc == AICFN_OK) rc = cd_check_handler(so, &err);
    if (rc == AICFN_OK) rc = gw_artifacts_hash_file(so, so_hex, &so_size, &err);

    /* 2. The model. */
    if (rc == AICFN_OK && m->n_model_files > 0) {
        snprintf(snap, sizeof snap, "%s/model.aicsnap", tmp);
        snap_pack_opts o;
        snap_pack_opts_init(&o);
        o.name = m->name;
        cd_progress prog = {.tty = tty, .last = -1};
        o.progress = cd_on_progress;
        o.progress_user = &prog;
        rc = snap_pack((const char *const *)m->model_files, m->n_model_files, snap, &o, &st, &err);
        if (rc == AICFN_OK) {
            rc = gw_artifacts_hash_file(snap, snap_hex, &snap_size, &err);
            char a[32], b[32];
            fprintf(stderr, "packed %u tensors: %s -> %s (%.2fx)\n", st.n_tensors,
                    units_format_size(st.raw_bytes, a, sizeof a),
                    units_format_size(st.file_bytes, b, sizeof b),
                    st.file_bytes ? (double)st.raw_bytes / (double)st.file_bytes : 0.0);
        }
    }
    /* 3. The config. */
    if (rc == AICFN_OK) {
        json_t *cj = cli_manifest_config_json(m);
        config = cj ? json_dumps(cj, JSON_COMPACT) : NULL;
        json_decref(cj);
        if (!config) rc = aicfn_error_set(&err, AICFN_E_NOMEM, "out of memory");
    }
    /* 4. Upload and register. */
    if (rc == AICFN_OK) rc = cli_gw_open(addr, &c, &err);
    /* A concurrent `rm` of another function that used the same artifact may delete it
     * between our upload (skipped: the gateway had it) and the deploy; the deploy then
     * says AICFN_E_NOT_FOUND and one more round uploads it again. */
    uint64_t version = 0;
    bool existing = false;
    int opened = rc == AICFN_OK;
    /* SA_RESETHAND: the first signal asks for the abort, a second one has the default
     * action (a commit's wait or a silent gateway's may be long). */
    struct sigaction stop = {.sa_handler = cd_on_stop_signal, .sa_flags = SA_RESETHAND}, old_int, old_term;
    sigemptyset(&stop.sa_mask);
    sigaction(SIGINT, &stop, &old_int);
    sigaction(SIGTERM, &stop, &old_term);
    for (int attempt = 0; opened && attempt < 2; attempt++) {
        rc = cd_upload(c, key, so, so_hex, so_size, tty, &err);
        if (rc == AICFN_OK && snap[0]) rc = cd_upload(c, key, snap, snap_hex, snap_size, tty, &err);
        if (rc == AICFN_OK && cd_interrupted)
            rc = aicfn_error_set(&err, AICFN_E_CANCELED, "interrupted: nothing deployed");
        if (rc != AICFN_OK) break;
        cd_version v = {.name = m->name,
                        .so_hex = so_hex,
                        .snap_hex = snap[0] ? snap_hex : NULL,
                        .raw_bytes = st.blob_bytes,
                        .config = config,
                        .deploy_id = gw_ids ? deploy_id : NULL,
                        .activate = activate};
        rc = cd_register(c, key, &v, &version, &existing, &err);
        /* A random id is this run's alone: a version it names was made by an earlier ask
         * of this run, whose answer was lost. */
        if (!deploy_id_flag) existing = false;
        if (rc == AICFN_OK) break;
        if (rc != AICFN_E_NOT_FOUND || attempt == 1) {
            aicfn_error_wrap(&err, "deploying %s", m->name);
            break;
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (rc == AICFN_OK) {
        if (json)
            printf("{\"name\":\"%s\",\"version\":%llu,\"existing\":%s,\"activated\":%s,\"deploy_id\":\"%s\","
                   "\"handler\":\"%s\",\"snapshot\":\"%s\",\"model_bytes\":%llu,\"snapshot_bytes\":%llu}\n",
                   m->name, (unsigned long long)version, existing ? "true" : "false",
                   activate && !existing ? "true" : "false", gw_ids ? deploy_id : "", so_hex, snap_hex,
                   (unsigned long long)st.blob_bytes, (unsigned long long)snap_size);
        else if (existing)
            printf("%s:%llu unchanged (deploy id %s made it)\n", m->name, (unsigned long long)version,
                   deploy_id);
        else if (!activate)
            printf(
                "deployed %s:%llu, not active (invoke it as %s:%llu; `aicfn activate %s:%llu` makes it the "
                "active version)\n",
                m->name, (unsigned long long)version, m->name, (unsigned long long)version, m->name,
                (unsigned long long)version);
        else
            printf("deployed %s:%llu\n", m->name, (unsigned long long)version);
    }
    rpc_client_close(c);
    free(config);
    cli_manifest_free(m);
    cd_rmtree(tmp);
    return rc == AICFN_OK ? CLI_EXIT_OK : cli_fail(&err);
}
