/* stopsignal.h: the second stop signal of a long-running command (aicfn gateway, aicfn
 * worker). The first SIGTERM/SIGINT starts a clean stop, which may wait long (calls in
 * flight until their deadlines, workers draining); a second one ends the process at
 * once, so an operator is never left with SIGKILL as the only way out. The signals stay
 * blocked in every thread and are taken with sigwait.
 * Not for: the first signal (each command waits for it its own way). */
#ifndef AICFN_CLI_STOPSIGNAL_H
#define AICFN_CLI_STOPSIGNAL_H

#include <signal.h>

/* Starts the watch (a detached thread) for a second signal of `set`: it logs, then
 * _exit(CLI_EXIT_FAIL), while armed. `stopping` names what the first one started (for
 * the log). A failure to start is logged: then only SIGKILL cuts the stop short. */
void cli_stop_signal_watch(const sigset_t *set, const char *stopping);

/* Once nothing is left to cut short (a drain ended cleanly; the teardown should finish):
 * further signals are logged and ignored. */
void cli_stop_signal_disarm(void);

#endif
