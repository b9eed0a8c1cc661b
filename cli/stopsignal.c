/* stopsignal.c: the second-stop-signal watch (stopsignal.h). */
#include "cli/stopsignal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/log.h"

static atomic_bool ss_armed = true;
static sigset_t ss_set;
static const char *ss_stopping;

static void *ss_main(void *arg) {
    (void)arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&ss_set, &sig) != 0) continue;
        const char *name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
        if (!atomic_load(&ss_armed)) {
            log_info("received another %s: ignored, the stop is clean and the teardown finishing", name);
            continue;
        }
        log_warn("received a second %s: exiting now, without waiting for %s", name, ss_stopping);
        _exit(CLI_EXIT_FAIL);
    }
    return NULL;
}

void cli_stop_signal_watch(const sigset_t *set, const char *stopping) {
    ss_set = *set;
    ss_stopping = stopping;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, ss_main, NULL) != 0)
        log_warn("no watch for a second signal: only SIGKILL can cut the stop short");
    pthread_attr_destroy(&attr);
}

void cli_stop_signal_disarm(void) {
    atomic_store(&ss_armed, false);
}
