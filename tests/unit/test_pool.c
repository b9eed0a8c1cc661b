/* test_pool.c: the local worker pool with stand-in worker programs (shell scripts):
 * the command line a worker gets, the ready report of one that writes to its
 * --ready-fd (and none for one that does not, or exits first), SIGTERM drain and exit, SIGKILL escalation of a
 * worker that ignores SIGTERM, kill -9, unique ids, reaping everything on destroy, and
 * a pool with live workers that sleeps while nothing happens, the fault note a worker
 * leaves when a handler crashes it, and a destroy that gives up on a worker that
 * outlives its SIGKILL. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gateway/pool.h"
#include "worker/faultnote.h"

typedef struct exits {
    int n;
    uint32_t ids[16];
    int status[16];
} exits;

static char g_dir[256];

/* Workers reported ready (on_ready). */
typedef struct readies {
    int n;
    uint32_t ids[16];
} readies;

static readies g_ready;

static void on_ready_cb(void *arg, uint32_t id) {
    readies *r = arg == NULL ? &g_ready : arg;
    int i = __atomic_load_n(&r->n, __ATOMIC_SEQ_CST);
    if (i < 16) r->ids[i] = id;
    __atomic_add_fetch(&r->n, 1, __ATOMIC_SEQ_CST);
}

static void on_ready_global(void *arg, uint32_t id) {
    (void)arg;
    on_ready_cb(NULL, id);
}

static void on_exit_cb(void *arg, uint32_t id, pid_t pid, int st) {
    (void)pid;
    exits *e = arg;
    if (e->n < 16) {
        e->ids[e->n] = id;
        e->status[e->n] = st;
    }
    __atomic_add_fetch(&e->n, 1, __ATOMIC_SEQ_CST);
}

static int wait_exits(exits *e, int want, int ms) {
    for (int i = 0; i < ms / 10; i++) {
        if (__atomic_load_n(&e->n, __ATOMIC_SEQ_CST) >= want) return 1;
        usleep(10000);
    }
    return __atomic_load_n(&e->n, __ATOMIC_SEQ_CST) >= want;
}

/* A stand-in worker: records its argv, exits 0 on SIGTERM (or ignores it). */
/* With `ready`, it writes a byte to its --ready-fd (the 11th argument) once started;
 * with `ready` < 0 it exits (status 5) without writing. */
static void write_script(const char *path, int ignore_term, int ready) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "#!/bin/sh\n%s\necho \"$@\" > \"%s/args.$7.txt\"\n%s\ni=0\nwhile [ $i -lt 3000 ]; do sleep 0.01; "
            "i=$((i+1)); done\n",
            ignore_term ? "trap '' TERM" : "trap 'exit 0' TERM", g_dir,
            ready > 0 ? "[ \"${10}\" = --ready-fd ] && eval \"printf R >&${11}\"" : ready < 0 ? "exit 5" : "");
    fclose(f);
    chmod(path, 0755);
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/aicfn-test-pool-XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    char p[300];
    snprintf(p, sizeof p, "%s/worker.sh", g_dir);
    write_script(p, 0, 0);
    snprintf(p, sizeof p, "%s/stubborn.sh", g_dir);
    write_script(p, 1, 0);
    snprintf(p, sizeof p, "%s/ready.sh", g_dir);
    write_script(p, 0, 1);
    snprintf(p, sizeof p, "%s/quitter.sh", g_dir);
    write_script(p, 0, -1);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Removes the argument files of earlier tests' workers: each pool numbers its workers
 * from 1 again, and a stale args.w1.txt would pass for a new w1 having started. */
static void clear_args_files(void) {
    DIR *d = opendir(g_dir);
    assert_non_null(d);
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        if (strncmp(ent->d_name, "args.", 5) != 0) continue;
        char path[600];
        snprintf(path, sizeof path, "%s/%s", g_dir, ent->d_name);
        assert_int_equal(unlink(path), 0);
    }
    closedir(d);
}

static gw_pool *make_pool_giving_up(const char *script, exits *e, uint64_t grace_us, uint64_t give_up_us) {
    clear_args_files();
    memset(&g_ready, 0, sizeof g_ready);
    char exe[300];
    snprintf(exe, sizeof exe, "%s/%s", g_dir, script);
    gw_pool_config cfg = {.exe = exe,
                          .run_dir = g_dir,
                          .device = "host",
                          .worker_memory = 1234,
                          .kill_grace_us = grace_us,
                          .reap_give_up_us = give_up_us};
    gw_pool *p = NULL;
    aicfn_error err;
    assert_int_equal(gw_pool_create(&cfg, on_exit_cb, on_ready_global, e, &p, &err), 0);
    return p;
}

static gw_pool *make_pool(const char *script, exits *e, uint64_t grace_us) {
    return make_pool_giving_up(script, e, grace_us, 0);
}

static void spawn_args_and_terminate(void **state) {
    (void)state;
    exits e = {0};
    gw_pool *p = make_pool("worker.sh", &e, 2000000);
    uint32_t id = 0;
    char addr[GW_POOL_ADDR_MAX];
    pid_t pid = 0;
    assert_int_equal(gw_pool_spawn(p, &id, addr, sizeof addr, &pid, NULL), 0);
    assert_true(id > 0);
    assert_true(pid > 0);
    assert_int_equal(gw_pool_live(p), 1);
    assert_int_equal(gw_pool_pid(p, id), pid);
    char prefix[300];
    snprintf(prefix, sizeof prefix, "ipc://%s/", g_dir);
    assert_memory_equal(addr, prefix, strlen(prefix));

    /* The worker saw its command line (wait for the file, bounded). */
    char path[600], line[1024] = {0};
    snprintf(path, sizeof path, "%s/args.w%u.txt", g_dir, id);
    FILE *f = NULL;
    for (int i = 0; i < 300 && !f; i++) {
        f = fopen(path, "r");
        if (f && !fgets(line, sizeof line, f)) {
            fclose(f);
            f = NULL;
        }
        if (!f) usleep(10000);
    }
    assert_non_null(f);
    fclose(f);
    char want[700];
    char note[GW_POOL_ADDR_MAX];
    assert_true(gw_pool_fault_note_path(addr, note, sizeof note));
    snprintf(want, sizeof want, "worker --listen %s --device host --id w%u --fault-note %s --ready-fd ", addr,
             id, note);
    assert_memory_equal(line, want, strlen(want));
    char *end = NULL;
    long fd = strtol(line + strlen(want), &end, 10);
    assert_true(fd >= 3);
    assert_string_equal(end, " --memory 1234\n");
    /* It never wrote to that descriptor: not ready. */
    assert_false(gw_pool_ready(p, id));
    assert_int_equal(__atomic_load_n(&g_ready.n, __ATOMIC_SEQ_CST), 0);

    assert_int_equal(gw_pool_terminate(p, id), 0);
    assert_true(wait_exits(&e, 1, 3000));
    assert_int_equal(e.ids[0], id);
    assert_true(WIFEXITED(e.status[0]));
    assert_int_equal(WEXITSTATUS(e.status[0]), 0);
    assert_int_equal(gw_pool_live(p), 0);
    assert_int_equal(gw_pool_pid(p, id), -1);
    assert_int_equal(gw_pool_terminate(p, id), AICFN_E_NOT_FOUND);
    gw_pool_destroy(p);
    assert_int_equal(e.n, 1);
    assert_int_equal(g_ready.n, 0);
}

static int wait_readies(int want, int ms) {
    for (int i = 0; i < ms / 10; i++) {
        if (__atomic_load_n(&g_ready.n, __ATOMIC_SEQ_CST) >= want) return 1;
        usleep(10000);
    }
    return __atomic_load_n(&g_ready.n, __ATOMIC_SEQ_CST) >= want;
}

/* A worker that writes to its --ready-fd is reported once, by id, and gw_pool_ready
 * says so until it is reaped; one that exits without writing is never reported. */
static void ready_worker_is_reported(void **state) {
    (void)state;
    exits e = {0};
    gw_pool *p = make_pool("ready.sh", &e, 2000000);
    uint32_t a, b;
    assert_int_equal(gw_pool_spawn(p, &a, NULL, 0, NULL, NULL), 0);
    assert_int_equal(gw_pool_spawn(p, &b, NULL, 0, NULL, NULL), 0);
    assert_true(wait_readies(2, 3000));
    assert_true((g_ready.ids[0] == a && g_ready.ids[1] == b) || (g_ready.ids[0] == b && g_ready.ids[1] == a));
    assert_true(gw_pool_ready(p, a));
    assert_true(gw_pool_ready(p, b));
    assert_false(gw_pool_ready(p, b + 1));
    assert_int_equal(gw_pool_terminate(p, a), 0);
    assert_true(wait_exits(&e, 1, 3000));
    assert_false(gw_pool_ready(p, a));
    assert_true(gw_pool_ready(p, b));
    gw_pool_destroy(p);
    assert_int_equal(g_ready.n, 2); /* once each */

    exits e2 = {0};
    p = make_pool("quitter.sh", &e2, 2000000);
    assert_int_equal(gw_pool_spawn(p, &a, NULL, 0, NULL, NULL), 0);
    assert_true(wait_exits(&e2, 1, 3000));
    assert_int_equal(WEXITSTATUS(e2.status[0]), 5);
    assert_false(gw_pool_ready(p, a));
    gw_pool_destroy(p);
    assert_int_equal(g_ready.n, 0);
}

/* Waits (bounded) for worker `id`'s argument file: the stand-in has started,
 * and installed its SIGTERM trap (the line before it writes the file). */
static void wait_started(uint32_t id) {
    char path[600];
    snprintf(path, sizeof path, "%s/args.w%u.txt", g_dir, id);
    for (int i = 0; i < 300 && access(path, F_OK) != 0; i++)
        usleep(10000);
    assert_int_equal(access(path, F_OK), 0);
}

static void stubborn_worker_is_killed_after_grace(void **state) {
    (void)state;
    exits e = {0};
    gw_pool *p = make_pool("stubborn.sh", &e, 200000);
    uint32_t id;
    char addr[GW_POOL_ADDR_MAX];
    assert_int_equal(gw_pool_spawn(p, &id, addr, sizeof addr, NULL, NULL), 0);
    wait_started(id); /* its trap is installed */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(gw_pool_terminate(p, id), 0);
    assert_true(wait_exits(&e, 1, 3000));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 150); /* not before the grace period */
    assert_true(WIFSIGNALED(e.status[0]));
    assert_int_equal(WTERMSIG(e.status[0]), SIGKILL);
    gw_pool_destroy(p);
}

/* Writes `text` to a cgroup control file; false when it cannot be written. */
static bool cgroup_write(const char *dir, const char *file, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    if (!f) return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

static bool cgroup_frozen(const char *dir) {
    char path[512], state[32] = {0};
    snprintf(path, sizeof path, "%s/freezer.state", dir);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool frozen = fgets(state, sizeof state, f) && strncmp(state, "FROZEN", 6) == 0;
    fclose(f);
    return frozen;
}

static void *destroy_thread(void *arg) {
    gw_pool_destroy(arg);
    return NULL;
}

/* A worker that outlives its SIGKILL (frozen by the cgroup v1 freezer: asleep
 * uninterruptibly, as in a wedged GPU driver) does not hold up the pool's destroy
 * (a stopping gateway) past the give-up time. Needs a writable v1 freezer (root). */
static void killed_worker_that_never_exits_is_given_up_on(void **state) {
    (void)state;
    char cg[128];
    snprintf(cg, sizeof cg, "/sys/fs/cgroup/freezer/aicfn-test-pool-%ld", (long)getpid());
    if (mkdir(cg, 0700) != 0) {
        fprintf(stderr, "[  SKIP    ] no writable cgroup v1 freezer (%s: %s): the test needs root and one\n",
                cg, strerror(errno));
        skip();
    }
    exits e = {0};
    gw_pool *p = make_pool_giving_up("stubborn.sh", &e, 100000, 300000);
    uint32_t id;
    pid_t pid = 0;
    assert_int_equal(gw_pool_spawn(p, &id, NULL, 0, &pid, NULL), 0);
    wait_started(id);
    char pidtext[32];
    snprintf(pidtext, sizeof pidtext, "%ld\n", (long)pid);
    assert_true(cgroup_write(cg, "cgroup.procs", pidtext));
    assert_true(cgroup_write(cg, "freezer.state", "FROZEN\n"));
    for (int i = 0; i < 300 && !cgroup_frozen(cg); i++)
        usleep(10000);
    assert_true(cgroup_frozen(cg));
    assert_int_equal(gw_pool_kill(p, id), 0);

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, destroy_thread, p), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    bool returned = pthread_timedjoin_np(t, NULL, &until) == 0;
    int exits_seen = __atomic_load_n(&e.n, __ATOMIC_SEQ_CST);
    /* Thawed, it takes its SIGKILL: reaped here, or by a pool still waiting for it. */
    assert_true(cgroup_write(cg, "freezer.state", "THAWED\n"));
    if (!returned) pthread_join(t, NULL);
    int st = 0;
    if (returned) assert_int_equal(waitpid(pid, &st, 0), pid);
    for (int i = 0; i < 300 && rmdir(cg) != 0; i++)
        usleep(10000);
    assert_true(returned);
    assert_int_equal(exits_seen, 0); /* never reaped by the pool: no exit reported */
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
}

static void kill_now_and_unique_ids(void **state) {
    (void)state;
    exits e = {0};
    gw_pool *p = make_pool("worker.sh", &e, 2000000);
    uint32_t a, b, c;
    char addr_a[GW_POOL_ADDR_MAX], addr_b[GW_POOL_ADDR_MAX];
    assert_int_equal(gw_pool_spawn(p, &a, addr_a, sizeof addr_a, NULL, NULL), 0);
    assert_int_equal(gw_pool_spawn(p, &b, addr_b, sizeof addr_b, NULL, NULL), 0);
    assert_int_not_equal(a, b);
    assert_string_not_equal(addr_a, addr_b);
    assert_int_equal(gw_pool_live(p), 2);
    assert_int_equal(gw_pool_kill(p, a), 0);
    assert_true(wait_exits(&e, 1, 3000));
    assert_int_equal(e.ids[0], a);
    assert_true(WIFSIGNALED(e.status[0]));
    assert_int_equal(WTERMSIG(e.status[0]), SIGKILL);
    assert_int_equal(gw_pool_live(p), 1);
    /* A replacement gets a new id. */
    assert_int_equal(gw_pool_spawn(p, &c, NULL, 0, NULL, NULL), 0);
    assert_true(c != a && c != b);
    /* destroy drains the rest and reports each exit. */
    gw_pool_destroy(p);
    assert_int_equal(e.n, 3);
}

/* A pool with live workers and nothing to do must not wake: it sleeps on the children's
 * pidfds (a pool polling waitpid every 10 ms switches ~50 times in 500 ms). The test's
 * own thread only sleeps meanwhile, and the stand-ins are other processes. Voluntary
 * switches count the wake-ups; involuntary ones (preemptions) count the machine's load,
 * so a pool that spins without sleeping is caught by its CPU time instead. */
static void idle_pool_sleeps(void **state) {
    (void)state;
    exits e = {0};
    gw_pool *p = make_pool("worker.sh", &e, 2000000);
    uint32_t a, b;
    assert_int_equal(gw_pool_spawn(p, &a, NULL, 0, NULL, NULL), 0);
    assert_int_equal(gw_pool_spawn(p, &b, NULL, 0, NULL, NULL), 0);
    wait_started(a);
    wait_started(b);
    struct rusage r0, r1;
    assert_int_equal(getrusage(RUSAGE_SELF, &r0), 0);
    usleep(500000);
    assert_int_equal(getrusage(RUSAGE_SELF, &r1), 0);
    long switches = r1.ru_nvcsw - r0.ru_nvcsw;
    long cpu_us =
        (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec + r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1000000L +
        (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
    assert_true(switches <= 10);
    assert_true(cpu_us < 100000); /* of 500 ms */
    /* And it still sees an exit at once, without being woken for it. */
    assert_int_equal(gw_pool_kill(p, a), 0);
    assert_true(wait_exits(&e, 1, 3000));
    assert_int_equal(e.ids[0], a);
    assert_int_equal(gw_pool_live(p), 1);
    gw_pool_destroy(p);
    assert_int_equal(e.n, 2);
}

/* A worker's fault note (worker/faultnote.h) read back by the gateway's half: a child
 * that aborts inside a handler call names that call's function and ids; a missing, torn
 * or malformed note names none; the note is removed once read. */
static void fault_note_round_trip(void **state) {
    (void)state;
    char addr[GW_POOL_ADDR_MAX], path[GW_POOL_ADDR_MAX];
    snprintf(addr, sizeof addr, "ipc://%s/w1-7.ipc", g_dir);
    assert_true(gw_pool_fault_note_path(addr, path, sizeof path));
    char want[GW_POOL_ADDR_MAX];
    snprintf(want, sizeof want, "%s/w1-7.fault", g_dir);
    assert_string_equal(path, want);
    assert_false(gw_pool_fault_note_path("tcp://127.0.0.1:1", path, sizeof path));
    assert_false(gw_pool_fault_note_path("ipc:///x.sock", path, sizeof path));

    gw_fault_note *note = calloc(1, sizeof *note);
    assert_non_null(note);
    assert_false(gw_pool_take_fault_note(addr, note)); /* none yet */

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static const uint64_t calls[3] = {7, UINT64_MAX, 42};
        if (worker_fault_note_open(want, NULL) != AICFN_OK) _exit(3);
        worker_fault_note_enter("echo", 2, calls, 2); /* a handler call for the first two */
        worker_fault_note_leave();
        worker_fault_note_enter("mlp.v2", 7, calls, 3);
        abort();
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_true(gw_pool_take_fault_note(addr, note));
    assert_int_equal(note->signo, SIGABRT);
    assert_string_equal(note->fn, "mlp.v2");
    assert_int_equal(note->ver, 7);
    assert_int_equal(note->n, 3);
    assert_true(note->ids[0] == 7 && note->ids[1] == UINT64_MAX && note->ids[2] == 42);
    assert_int_equal(access(want, F_OK), -1); /* taken */

    /* The note is the worker's: anything not exactly one well-formed line names nothing. */
    static const char *const bad[] = {"fault 6 f 1 3 1 2\n",
                                      "fault 6 f 1 2 1 -2\n",
                                      "fault 6 f 1 1 5",
                                      "nonsense\n",
                                      "fault 6 f 1 1 99999999999999999999\n",
                                      "",
                                      "fault 6 f 1 1\n5\n",
                                      "fault 6 f 1 1 5 6\n",
                                      "fault 0 f 1 1 5\n",
                                      "fault 6  f 1 1 5\n",
                                      "fault 6 f 1 0\n",
                                      "fault 6 f 4294967296 1 5\n",
                                      "fault 6 f 1 1 +5\n",
                                      "fault 6 f 1 1 5 \n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        FILE *f = fopen(want, "w");
        assert_non_null(f);
        fputs(bad[i], f);
        fclose(f);
        if (gw_pool_take_fault_note(addr, note)) fail_msg("note '%s' was taken as well formed", bad[i]);
    }
    free(note);
}

static void bad_config(void **state) {
    (void)state;
    gw_pool *p = (gw_pool *)1;
    aicfn_error err;
    gw_pool_config cfg = {0};
    assert_int_equal(gw_pool_create(&cfg, NULL, NULL, NULL, &p, &err), AICFN_E_INVALID);
    assert_null(p);
    gw_pool_destroy(NULL);
    /* An exe that does not exist: the child exits 127, reported as an exit. */
    exits e = {0};
    cfg.exe = "/nonexistent/aicfn";
    cfg.run_dir = g_dir;
    assert_int_equal(gw_pool_create(&cfg, on_exit_cb, NULL, &e, &p, &err), 0);
    uint32_t id;
    assert_int_equal(gw_pool_spawn(p, &id, NULL, 0, NULL, NULL), 0);
    assert_true(wait_exits(&e, 1, 3000));
    assert_true(WIFEXITED(e.status[0]));
    assert_int_equal(WEXITSTATUS(e.status[0]), 127);
    gw_pool_destroy(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(spawn_args_and_terminate),
        cmocka_unit_test(ready_worker_is_reported),
        cmocka_unit_test(stubborn_worker_is_killed_after_grace),
        cmocka_unit_test(kill_now_and_unique_ids),
        cmocka_unit_test(idle_pool_sleeps),
        cmocka_unit_test(fault_note_round_trip),
        cmocka_unit_test(bad_config),
        cmocka_unit_test(killed_worker_that_never_exits_is_given_up_on),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
