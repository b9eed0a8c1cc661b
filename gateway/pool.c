/* pool.c: local `aicfn worker` processes: start, reap, stop, kill (see pool.h).
 *
 * One thread owns the children. It forks them (fork + PR_SET_PDEATHSIG + execv: the
 * death signal follows the forking thread, so that thread must live as long as the
 * pool), reaps them and turns overdue SIGTERMs into SIGKILLs. It sleeps in poll() on a
 * pidfd per child (readable once the child exits) and an eventfd that callers write to
 * wake it, so an idle pool never wakes and an exit is seen at once. Where the kernel has
 * no pidfd_open (before Linux 5.3, or a seccomp filter refusing it) it polls
 * waitpid(WNOHANG) every POOL_TICK_MS instead. Callers hand it spawn requests and wait
 * on a condition variable for the fork to happen. Each child gets the write end of a
 * pipe (--ready-fd) and writes a byte to it once it listens; the thread polls the read
 * ends too and reports each worker that is ready (on_ready), so that the gateway dials
 * it at once instead of retrying a dial while it starts. Not for: policy (gateway.c). */
#include "gateway/pool.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/tunables.h"

#define POOL_TICK_MS 10 /* waitpid polling, only for a child without a pidfd */
#define POOL_MAX_ARGS 64

/* RUNNING -> TERMINATING (SIGTERM sent; SIGKILL after the grace) -> KILLED (SIGKILL sent:
 * nothing more to send, waiting to reap). */
typedef enum pool_state { POOL_RUNNING = 0, POOL_TERMINATING = 1, POOL_KILLED = 2 } pool_state;

typedef struct pool_child {
    uint32_t id;
    pid_t pid;
    int pidfd; /* readable once the child exits; -1 when pidfd_open failed (polled) */
    int ready_fd; /* read end of its --ready-fd pipe until it says it listens (or exits) */
    bool ready;   /* it said it listens */
    pool_state state;
    uint64_t term_at_us;   /* when SIGTERM was sent */
    uint64_t killed_at_us; /* when SIGKILL was sent */
    bool stuck_logged;     /* outlived its SIGKILL by reap_give_up_us: said once */
    struct pool_child *next;
} pool_child;

/* A spawn request handed to the pool thread. Lives on the caller's stack. */
typedef struct pool_spawn_req {
    uint32_t id;
    char addr[GW_POOL_ADDR_MAX];
    pid_t pid;
    bool want_link; /* make a socketpair: the worker serves its end (--link-fd) */
    int link_fd;    /* the gateway's end, when want_link */
    int code;
    aicfn_error err;
    bool done;
    struct pool_spawn_req *next;
} pool_spawn_req;

struct gw_pool {
    char *exe;
    char *run_dir;
    char *device;
    char memory[32];
    char **extra;
    size_t n_extra;
    uint64_t grace_us;
    uint64_t give_up_us;
    gw_pool_exit_fn on_exit;
    gw_pool_ready_fn on_ready;
    void *arg;

    pthread_mutex_t mu;
    int wake_fd;            /* eventfd: wakes the thread (spawn request, SIGTERM sent, stop) */
    pthread_cond_t done_cv; /* wakes spawn callers */
    pthread_t thread;
    bool stopping;
    bool thread_done;
    uint32_t next_id;
    pool_child *children;
    unsigned live;
    pool_spawn_req *reqs;
    struct pollfd *fds; /* the thread's poll set: wake_fd, then a pidfd and a ready_fd per child */
    size_t cap_fds;
};

static char *pool_strdup(const char *s) {
    return s ? strdup(s) : NULL;
}

/* SIGKILL, once (lock held). */
static void pool_kill_child(pool_child *c, uint64_t now) {
    kill(c->pid, SIGKILL);
    c->state = POOL_KILLED;
    c->killed_at_us = now;
}

static void pool_child_free(pool_child *c) {
    if (c->pidfd >= 0) close(c->pidfd);
    if (c->ready_fd >= 0) close(c->ready_fd);
    free(c);
}

static pool_child *pool_find(gw_pool *p, uint32_t id) {
    for (pool_child *c = p->children; c; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

/* Worker `id`'s listening address (its socket's path in the run directory, named for
 * this gateway's pid); false when it does not fit. */
static bool pool_worker_addr(const gw_pool *p, uint32_t id, char *out, size_t cap) {
    int n = snprintf(out, cap, "ipc://%s/w%ld-%u.ipc", p->run_dir, (long)getpid(), id);
    return n >= 0 && (size_t)n < cap;
}

/* Removes an exited worker's socket and fault note (its exit handled, the note read):
 * else every restart leaves two files in the run directory until the gateway stops. */
static void pool_remove_files(const gw_pool *p, uint32_t id) {
    char addr[GW_POOL_ADDR_MAX], note[GW_POOL_ADDR_MAX];
    if (!pool_worker_addr(p, id, addr, sizeof addr)) return;
    (void)unlink(addr + strlen("ipc://"));
    if (gw_pool_fault_note_path(addr, note, sizeof note)) (void)unlink(note);
}

/* Forks one worker. Called on the pool thread with p->mu held (the child only calls
 * async-signal-safe functions before execv). */
static void pool_fork(gw_pool *p, pool_spawn_req *r) {
    r->id = ++p->next_id;
    if (r->id == 0) r->id = p->next_id = 1; /* wrapped: ids are never 0 */
    if (!pool_worker_addr(p, r->id, r->addr, sizeof r->addr)) {
        r->code =
            aicfn_error_set(&r->err, AICFN_E_INVALID, "worker address under '%s' is too long", p->run_dir);
        return;
    }
    char idbuf[16], note[GW_POOL_ADDR_MAX];
    snprintf(idbuf, sizeof idbuf, "w%u", r->id);
    if (!gw_pool_fault_note_path(r->addr, note, sizeof note)) {
        r->code = aicfn_error_set(&r->err, AICFN_E_INVALID, "worker %s: no fault note path", idbuf);
        return;
    }
    int ready[2]; /* the child writes a byte to ready[1] once it listens */
    if (pipe2(ready, O_CLOEXEC) != 0) {
        r->code = aicfn_error_errno(&r->err, AICFN_E_IO, errno, "starting worker %s: pipe", idbuf);
        return;
    }
    (void)fcntl(ready[0], F_SETFL, O_NONBLOCK);
    char ready_arg[16];
    snprintf(ready_arg, sizeof ready_arg, "%d", ready[1]);
    int link[2] = {-1, -1}; /* [0] the gateway's end, [1] the worker's */
    r->link_fd = -1;
    if (r->want_link && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, link) != 0) {
        r->code = aicfn_error_errno(&r->err, AICFN_E_IO, errno, "starting worker %s: socketpair", idbuf);
        close(ready[0]);
        close(ready[1]);
        return;
    }
    char link_arg[16];
    snprintf(link_arg, sizeof link_arg, "%d", link[1]);
    const char *argv[POOL_MAX_ARGS];
    size_t a = 0;
    argv[a++] = p->exe;
    argv[a++] = "worker";
    argv[a++] = "--listen";
    argv[a++] = r->addr;
    argv[a++] = "--device";
    argv[a++] = p->device;
    argv[a++] = "--id";
    argv[a++] = idbuf;
    argv[a++] = "--fault-note";
    argv[a++] = note;
    argv[a++] = "--ready-fd";
    argv[a++] = ready_arg;
    if (link[1] >= 0) {
        argv[a++] = "--link-fd";
        argv[a++] = link_arg;
    }
    if (p->memory[0]) {
        argv[a++] = "--memory";
        argv[a++] = p->memory;
    }
    for (size_t i = 0; i < p->n_extra && a + 1 < POOL_MAX_ARGS; i++)
        argv[a++] = p->extra[i];
    argv[a] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        r->code = aicfn_error_errno(&r->err, AICFN_E_IO, errno, "starting worker %s: fork", idbuf);
        close(ready[0]);
        close(ready[1]);
        if (link[0] >= 0) close(link[0]), close(link[1]);
        return;
    }
    if (pid == 0) {
        /* Child: die with the gateway. SIGKILL, not SIGTERM: a clean stop reaps every
         * worker before the gateway exits, so this only fires when the gateway died
         * abnormally, and a worker whose gateway is gone can answer nobody (a drain
         * could keep an orphan alive for a whole call timeout). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (fcntl(ready[1], F_SETFD, 0) != 0) _exit(127); /* the descriptors it keeps */
        if (link[1] >= 0 && fcntl(link[1], F_SETFD, 0) != 0) _exit(127);
        execv(p->exe, (char *const *)argv);
        _exit(127);
    }
    close(ready[1]);
    if (link[1] >= 0) close(link[1]);
    pool_child *c = calloc(1, sizeof *c);
    if (!c) {
        close(ready[0]);
        if (link[0] >= 0) close(link[0]);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        r->code = aicfn_error_set(&r->err, AICFN_E_NOMEM, "starting worker %s: out of memory", idbuf);
        return;
    }
    c->id = r->id;
    c->pid = pid;
    c->ready_fd = ready[0];
    c->pidfd = pidfd_open(pid, 0);
    if (c->pidfd < 0)
        log_debug("worker %s: pidfd_open: %s (its exit is polled every %d ms)", idbuf, strerror(errno),
                  POOL_TICK_MS);
    c->next = p->children;
    p->children = c;
    p->live++;
    r->pid = pid;
    r->link_fd = link[0];
    r->code = AICFN_OK;
    log_info("started worker w%u (pid %ld) on %s", r->id, (long)pid, r->addr);
}

typedef struct pool_exited {
    uint32_t id;
    pid_t pid;
    int status;
} pool_exited;

/* Wakes the pool thread (any thread, lock held or not). */
static void pool_wake(gw_pool *p) {
    if (p->wake_fd >= 0) eventfd_write(p->wake_fd, 1); /* nonblocking; the counter cannot fill up */
}

/* Sleeps until a child exits, the thread is woken, or the earliest SIGKILL escalation is
 * due (lock held; released while asleep). Children are only added and removed by this
 * thread, so the poll set stays valid while the lock is dropped. */
static void pool_sleep_locked(gw_pool *p) {
    size_t want = 1;
    for (pool_child *c = p->children; c; c = c->next)
        want += 2;
    if (want > p->cap_fds) {
        struct pollfd *f = realloc(p->fds, want * sizeof *f);
        if (f) {
            p->fds = f;
            p->cap_fds = want;
        }
    }
    int timeout_ms = -1;
    nfds_t n = 0;
    if (p->cap_fds) p->fds[n++] = (struct pollfd){.fd = p->wake_fd, .events = POLLIN};
    uint64_t now = clock_now_us();
    for (pool_child *c = p->children; c; c = c->next) {
        if (c->pidfd >= 0 && n < p->cap_fds)
            p->fds[n++] = (struct pollfd){.fd = c->pidfd, .events = POLLIN};
        else
            timeout_ms = POOL_TICK_MS; /* no pidfd (or no room for it): poll waitpid */
        if (c->ready_fd >= 0) {
            if (n < p->cap_fds)
                p->fds[n++] = (struct pollfd){.fd = c->ready_fd, .events = POLLIN};
            else
                timeout_ms = POOL_TICK_MS;
        }
        uint64_t due = c->state == POOL_TERMINATING                  ? c->term_at_us + p->grace_us
                       : c->state == POOL_KILLED && !c->stuck_logged ? c->killed_at_us + p->give_up_us
                                                                     : 0;
        if (due) {
            uint64_t ms = due > now ? (due - now + 999) / 1000 : 0;
            if (timeout_ms < 0 || ms < (uint64_t)timeout_ms) timeout_ms = (int)(ms > INT_MAX ? INT_MAX : ms);
        }
    }
    if (n == 0 && timeout_ms < 0) timeout_ms = POOL_TICK_MS; /* out of memory for even the wake fd */
    pthread_mutex_unlock(&p->mu);
    if (poll(p->fds, n, timeout_ms) > 0 && (p->fds[0].revents & POLLIN)) {
        eventfd_t v;
        eventfd_read(p->wake_fd, &v); /* drain; nonblocking */
    }
    pthread_mutex_lock(&p->mu);
}

static void *pool_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:pool");
    gw_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        /* Spawn requests. */
        while (p->reqs) {
            pool_spawn_req *r = p->reqs;
            p->reqs = r->next;
            if (p->stopping)
                r->code = aicfn_error_set(&r->err, AICFN_E_CANCELED, "the worker pool is stopping");
            else
                pool_fork(p, r);
            r->done = true;
        }
        pthread_cond_broadcast(&p->done_cv);

        /* Workers that say they listen (a byte on their ready pipe; end of file: it
         * exited first, which the reaping below reports). Reported without the lock. */
        uint32_t ready[32];
        size_t n_ready = 0;
        for (pool_child *c = p->children; c && n_ready < 32; c = c->next) {
            if (c->ready_fd < 0) continue;
            char b[16];
            ssize_t got = read(c->ready_fd, b, sizeof b);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            close(c->ready_fd);
            c->ready_fd = -1;
            if (got > 0) {
                c->ready = true;
                ready[n_ready++] = c->id;
            }
        }
        if (n_ready) {
            pthread_mutex_unlock(&p->mu);
            for (size_t i = 0; i < n_ready; i++)
                if (p->on_ready) p->on_ready(p->arg, ready[i]);
            pthread_mutex_lock(&p->mu);
        }

        /* Reap, escalate. Collect exits, report them without the lock. */
        pool_exited ex[32];
        size_t n_ex = 0;
        uint64_t now = clock_now_us();
        for (pool_child **pc = &p->children; *pc && n_ex < 32;) {
            pool_child *c = *pc;
            int st = 0;
            pid_t w = waitpid(c->pid, &st, WNOHANG);
            if (w == c->pid || (w < 0 && errno == ECHILD)) {
                ex[n_ex++] = (pool_exited){c->id, c->pid, w == c->pid ? st : 0};
                *pc = c->next;
                p->live--;
                pool_child_free(c);
                continue;
            }
            if (c->state == POOL_TERMINATING && now - c->term_at_us > p->grace_us) {
                log_warn("worker w%u (pid %ld) still running %llu ms after SIGTERM: SIGKILL", c->id,
                         (long)c->pid, (unsigned long long)(p->grace_us / 1000));
                pool_kill_child(c, now); /* once: the next passes only wait to reap it */
            }
            if (c->state == POOL_KILLED && now - c->killed_at_us >= p->give_up_us) {
                if (!c->stuck_logged)
                    log_error("worker w%u (pid %ld) has not exited %llu ms after SIGKILL (asleep "
                              "uninterruptibly, in a device driver?)%s",
                              c->id, (long)c->pid, (unsigned long long)(p->give_up_us / 1000),
                              p->stopping ? ": left unreaped" : ": its slot stays taken until it exits");
                c->stuck_logged = true;
                if (p->stopping) {
                    /* Its SIGKILL is pending; init reaps it once it wakes, after we exit. */
                    *pc = c->next;
                    p->live--;
                    pool_child_free(c);
                    continue;
                }
            }
            pc = &c->next;
        }
        if (n_ex) {
            pthread_mutex_unlock(&p->mu);
            for (size_t i = 0; i < n_ex; i++) {
                int st = ex[i].status;
                if (WIFSIGNALED(st))
                    log_info("worker w%u (pid %ld) exited on signal %d", ex[i].id, (long)ex[i].pid,
                             WTERMSIG(st));
                else
                    log_info("worker w%u (pid %ld) exited with status %d", ex[i].id, (long)ex[i].pid,
                             WEXITSTATUS(st));
                if (p->on_exit) p->on_exit(p->arg, ex[i].id, ex[i].pid, st);
                pool_remove_files(p, ex[i].id);
            }
            pthread_mutex_lock(&p->mu);
            continue;
        }
        if (p->stopping && !p->children && !p->reqs) break;
        if (p->reqs) continue;
        pool_sleep_locked(p);
    }
    p->thread_done = true;
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int gw_pool_create(const gw_pool_config *cfg, gw_pool_exit_fn on_exit, gw_pool_ready_fn on_ready, void *arg,
                   gw_pool **out, aicfn_error *err) {
    *out = NULL;
    if (!cfg || !cfg->run_dir || !cfg->run_dir[0])
        return aicfn_error_set(err, AICFN_E_INVALID, "worker pool: no run directory");
    gw_pool *p = calloc(1, sizeof *p);
    if (!p) return aicfn_error_set(err, AICFN_E_NOMEM, "worker pool: out of memory");
    p->wake_fd = -1;
    if (cfg->exe) {
        p->exe = strdup(cfg->exe);
    } else {
        char buf[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
        if (n <= 0) {
            free(p);
            return aicfn_error_errno(err, AICFN_E_IO, errno, "worker pool: reading /proc/self/exe");
        }
        buf[n] = 0;
        p->exe = strdup(buf);
    }
    p->run_dir = pool_strdup(cfg->run_dir);
    p->device = pool_strdup(cfg->device ? cfg->device : "auto");
    if (cfg->worker_memory)
        snprintf(p->memory, sizeof p->memory, "%llu", (unsigned long long)cfg->worker_memory);
    p->grace_us = cfg->kill_grace_us ? cfg->kill_grace_us : (uint64_t)AICFN_WORKER_KILL_GRACE_MS * 1000;
    p->give_up_us =
        cfg->reap_give_up_us ? cfg->reap_give_up_us : (uint64_t)AICFN_WORKER_REAP_GIVE_UP_MS * 1000;
    p->on_exit = on_exit;
    p->on_ready = on_ready;
    p->arg = arg;
    p->next_id = cfg->first_id ? cfg->first_id - 1 : 0;
    bool oom = !p->exe || !p->run_dir || !p->device;
    if (cfg->extra_args) {
        while (cfg->extra_args[p->n_extra])
            p->n_extra++;
        p->extra = calloc(p->n_extra + 1, sizeof *p->extra);
        if (!p->extra) oom = true;
        for (size_t i = 0; !oom && i < p->n_extra; i++)
            if (!(p->extra[i] = strdup(cfg->extra_args[i]))) oom = true;
    }
    pthread_mutex_init(&p->mu, NULL);
    clock_cond_init(&p->done_cv);
    p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->wake_fd < 0) {
        int e = errno;
        p->thread_done = true;
        gw_pool_destroy(p);
        return aicfn_error_errno(err, AICFN_E_IO, e, "worker pool: eventfd");
    }
    if (oom) {
        p->thread_done = true;
        gw_pool_destroy(p);
        return aicfn_error_set(err, AICFN_E_NOMEM, "worker pool: out of memory");
    }
    int rc = pthread_create(&p->thread, NULL, pool_main, p);
    if (rc != 0) {
        p->thread_done = true;
        gw_pool_destroy(p);
        return aicfn_error_errno(err, AICFN_E_IO, rc, "worker pool: starting its thread");
    }
    *out = p;
    return AICFN_OK;
}

int gw_pool_spawn(gw_pool *p, uint32_t *id, char *addr, size_t addr_len, pid_t *pid, aicfn_error *err) {
    return gw_pool_spawn_linked(p, id, addr, addr_len, pid, NULL, err);
}

int gw_pool_spawn_linked(gw_pool *p, uint32_t *id, char *addr, size_t addr_len, pid_t *pid, int *link_fd,
                         aicfn_error *err) {
    pool_spawn_req r;
    memset(&r, 0, sizeof r);
    r.want_link = link_fd != NULL;
    if (link_fd) *link_fd = -1;
    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        pthread_mutex_unlock(&p->mu);
        return aicfn_error_set(err, AICFN_E_CANCELED, "the worker pool is stopping");
    }
    if (pthread_equal(pthread_self(), p->thread)) {
        /* From an on_exit callback (the pool thread, which then holds no lock): fork here. */
        pool_fork(p, &r);
    } else {
        pool_spawn_req **tail = &p->reqs;
        while (*tail)
            tail = &(*tail)->next;
        *tail = &r;
        pool_wake(p);
        while (!r.done)
            pthread_cond_wait(&p->done_cv, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    if (r.code != AICFN_OK) {
        if (err) *err = r.err;
        return r.code;
    }
    if (id) *id = r.id;
    if (pid) *pid = r.pid;
    if (link_fd) *link_fd = r.link_fd;
    if (addr && addr_len) snprintf(addr, addr_len, "%s", r.addr);
    return AICFN_OK;
}

static int pool_signal(gw_pool *p, uint32_t id, int sig) {
    pthread_mutex_lock(&p->mu);
    pool_child *c = pool_find(p, id);
    if (!c) {
        pthread_mutex_unlock(&p->mu);
        return AICFN_E_NOT_FOUND;
    }
    /* One SIGTERM per worker: a second one stops `aicfn worker` at once, cutting short
     * the drain and teardown the first one asked for (the grace's SIGKILL ends it). */
    if (sig == SIGKILL) {
        if (c->state != POOL_KILLED) {
            pool_kill_child(c, clock_now_us());
            pool_wake(p); /* to time the give-up */
        }
    } else if (c->state == POOL_RUNNING) {
        kill(c->pid, SIGTERM);
        c->state = POOL_TERMINATING;
        c->term_at_us = clock_now_us();
        pool_wake(p); /* to time the SIGKILL escalation */
    }
    pthread_mutex_unlock(&p->mu);
    return AICFN_OK;
}

int gw_pool_terminate(gw_pool *p, uint32_t id) {
    return pool_signal(p, id, SIGTERM);
}

int gw_pool_kill(gw_pool *p, uint32_t id) {
    return pool_signal(p, id, SIGKILL);
}

unsigned gw_pool_live(gw_pool *p) {
    pthread_mutex_lock(&p->mu);
    unsigned n = p->live;
    pthread_mutex_unlock(&p->mu);
    return n;
}

bool gw_pool_ready(gw_pool *p, uint32_t id) {
    pthread_mutex_lock(&p->mu);
    pool_child *c = pool_find(p, id);
    bool ready = c && c->ready;
    pthread_mutex_unlock(&p->mu);
    return ready;
}

pid_t gw_pool_pid(gw_pool *p, uint32_t id) {
    pthread_mutex_lock(&p->mu);
    pool_child *c = pool_find(p, id);
    pid_t pid = c ? c->pid : -1;
    pthread_mutex_unlock(&p->mu);
    return pid;
}

void gw_pool_destroy(gw_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    uint64_t now = clock_now_us();
    for (pool_child *c = p->children; c; c = c->next) {
        if (c->state == POOL_RUNNING) {
            kill(c->pid, SIGTERM);
            c->state = POOL_TERMINATING;
            c->term_at_us = now;
        }
    }
    bool joinable = !p->thread_done;
    pool_wake(p);
    pthread_mutex_unlock(&p->mu);
    if (joinable) pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->done_cv);
    if (p->wake_fd >= 0) close(p->wake_fd);
    free(p->fds);
    free(p->exe);
    free(p->run_dir);
    free(p->device);
    for (size_t i = 0; p->extra && i < p->n_extra; i++)
        free(p->extra[i]);
    free(p->extra);
    free(p);
}

/* ---- Fault notes ---- */

bool gw_pool_fault_note_path(const char *addr, char *out, size_t cap) {
    static const char scheme[] = "ipc://", ext[] = ".ipc";
    size_t n = strlen(addr);
    if (strncmp(addr, scheme, sizeof scheme - 1) != 0 || n < sizeof scheme - 1 + sizeof ext - 1 ||
        strcmp(addr + n - (sizeof ext - 1), ext) != 0)
        return false;
    int w = snprintf(out, cap, "%.*s.fault", (int)(n - (sizeof scheme - 1) - (sizeof ext - 1)),
                     addr + sizeof scheme - 1);
    return w > 0 && (size_t)w < cap;
}

/* The next token of *p (up to a space or the end): its start and length, *p after it and
 * one separating space; false when there is none. */
static bool pool_token(const char **p, const char **tok, size_t *len) {
    const char *s = *p;
    size_t n = strcspn(s, " ");
    if (n == 0) return false;
    *tok = s;
    *len = n;
    *p = s[n] == ' ' ? s + n + 1 : s + n;
    return true;
}

/* A decimal of at most 20 digits that fits a uint64_t. */
static bool pool_u64(const char *tok, size_t len, uint64_t *out) {
    if (len == 0 || len > 20) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (tok[i] < '0' || tok[i] > '9') return false;
        unsigned d = (unsigned)(tok[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

bool gw_pool_take_fault_note(const char *addr, gw_fault_note *out) {
    memset(out, 0, sizeof *out - sizeof out->ids);
    char path[GW_POOL_ADDR_MAX];
    if (!gw_pool_fault_note_path(addr, path, sizeof path)) return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return false;
    /* One line: "fault", signo, a function name, a version, n and n ids of <= 20 digits. */
    size_t max = 64 + AICFN_MAX_NAME_BYTES + (size_t)GW_FAULT_NOTE_MAX_IDS * 21;
    char *text = malloc(max + 1);
    size_t len = 0;
    ssize_t r;
    while (text && len < max && (r = read(fd, text + len, max - len)) > 0)
        len += (size_t)r;
    close(fd);
    unlink(path);
    if (!text) return false;
    text[len] = 0;
    char *nl = memchr(text, '\n', len);
    bool ok = nl != NULL && nl > text && nl[-1] != ' '; /* one line, no trailing space */
    if (ok) *nl = 0;
    const char *p = text, *tok;
    size_t tl;
    uint64_t sig = 0, ver = 0, count = 0;
    ok = ok && pool_token(&p, &tok, &tl) && tl == 5 && memcmp(tok, "fault", 5) == 0;
    ok = ok && pool_token(&p, &tok, &tl) && pool_u64(tok, tl, &sig) && sig > 0 && sig < 64;
    ok = ok && pool_token(&p, &tok, &tl) && tl < sizeof out->fn;
    if (ok) {
        memcpy(out->fn, tok, tl);
        out->fn[tl] = 0;
    }
    ok = ok && pool_token(&p, &tok, &tl) && pool_u64(tok, tl, &ver) && ver <= UINT32_MAX;
    ok = ok && pool_token(&p, &tok, &tl) && pool_u64(tok, tl, &count) && count > 0;
    uint32_t k = 0;
    for (uint64_t i = 0; ok && i < count; i++) {
        uint64_t id;
        ok = pool_token(&p, &tok, &tl) && pool_u64(tok, tl, &id);
        if (ok && k < GW_FAULT_NOTE_MAX_IDS) out->ids[k++] = id;
    }
    ok = ok && *p == 0; /* nothing after the ids */
    free(text);
    if (!ok) return false;
    out->signo = (int)sig;
    out->ver = (uint32_t)ver;
    out->n = k;
    return true;
}
