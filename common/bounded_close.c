/* bounded_close.c: closes run on a thread of their own and waited for with a bound
 * (bounded_close.h). */
#include "common/bounded_close.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"

typedef struct bounded_close {
    bounded_close_fn close, release;
    void *arg;
    char what[128];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;      /* close returned */
    bool abandoned; /* the caller stopped waiting: the thread frees everything */
    uint64_t start_us;
} bounded_close;

static _Atomic uint64_t g_stuck;

uint64_t bounded_close_stuck(void) {
    return atomic_load(&g_stuck);
}

static void bc_free(bounded_close *t) {
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static void *bc_thread(void *p) {
    bounded_close *t = p;
    pthread_setname_np(pthread_self(), "aicfn:nngclose");
    t->close(t->arg);
    pthread_mutex_lock(&t->mu);
    t->done = true;
    bool abandoned = t->abandoned;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    if (abandoned) { /* the caller has gone on (and detached this thread): finish for it */
        log_warn("%s: NNG's close returned after all, %llu ms after it began", t->what,
                 (unsigned long long)((clock_now_us() - t->start_us) / 1000));
        if (t->release) t->release(t->arg);
        bc_free(t);
    }
    return NULL;
}

bool bounded_close_run(bounded_close_fn close, bounded_close_fn release, void *arg, unsigned bound_ms,
                       const char *what) {
    bounded_close *t = calloc(1, sizeof *t);
    if (!t || pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t);
        close(arg);
        return true;
    }
    if (clock_cond_init(&t->cv) != 0) {
        pthread_mutex_destroy(&t->mu);
        free(t);
        close(arg);
        return true;
    }
    t->close = close;
    t->release = release;
    t->arg = arg;
    snprintf(t->what, sizeof t->what, "%s", what ? what : "nng");
    t->start_us = clock_now_us();
    pthread_t th;
    if (pthread_create(&th, NULL, bc_thread, t) != 0) {
        bc_free(t);
        close(arg);
        return true;
    }
    struct timespec ts;
    clock_deadline_to_timespec(t->start_us + (uint64_t)bound_ms * 1000, &ts);
    pthread_mutex_lock(&t->mu);
    while (!t->done)
        if (pthread_cond_timedwait(&t->cv, &t->mu, &ts) == ETIMEDOUT) break;
    bool done = t->done;
    if (!done) t->abandoned = true;
    pthread_mutex_unlock(&t->mu);
    if (done) {
        pthread_join(th, NULL);
        bc_free(t);
        return true;
    }
    pthread_detach(th);
    atomic_fetch_add(&g_stuck, 1);
    log_error("%s: NNG's close has not returned after %u ms (NNG 1.5.2's reaper deadlock, nng #1813); "
              "going on without it: its socket stays open and every later NNG close in this process "
              "may hang the same way (restart the process)",
              what ? what : "nng", bound_ms); /* not t->what: t may be gone by now */
    return false;
}
