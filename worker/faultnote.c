/* faultnote.c: the fault note (see faultnote.h): thread-local names of the calls a
 * handler runs for, and the async-signal-safe handler that writes them when it faults.
 * Not for: reading the note (the gateway's pool does). */
#include "worker/faultnote.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "common/units.h"

static const int fn_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

static int fn_fd = -1;
static atomic_flag fn_written = ATOMIC_FLAG_INIT; /* one line: the first thread to fault */
static _Thread_local const char *fn_name;
static _Thread_local uint32_t fn_ver;
static _Thread_local const uint64_t *fn_ids;
static _Thread_local uint32_t fn_n;

/* Writes buf[0..len) whole (write() may be short); async-signal-safe. */
static void fn_write_all(const char *buf, size_t len) {
    while (len > 0) {
        ssize_t w = write(fn_fd, buf, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        buf += w;
        len -= (size_t)w;
    }
}

static void fn_on_fault(int sig) {
    int saved = errno;
    const uint64_t *ids = fn_ids;
    const char *name = fn_name;
    uint32_t n = fn_n;
    if (fn_fd >= 0 && ids && n && name && !atomic_flag_test_and_set(&fn_written)) {
        char buf[2048];
        size_t len = 0;
        static const char head[] = "fault ";
        for (size_t i = 0; i < sizeof head - 1; i++)
            buf[len++] = head[i];
        len += units_put_u64(buf + len, (uint64_t)sig);
        buf[len++] = ' ';
        for (size_t i = 0; name[i] && i < 256; i++)
            buf[len++] = name[i];
        buf[len++] = ' ';
        len += units_put_u64(buf + len, fn_ver);
        buf[len++] = ' ';
        len += units_put_u64(buf + len, n);
        for (uint32_t i = 0; i < n; i++) {
            if (len > sizeof buf - 24) {
                fn_write_all(buf, len);
                len = 0;
            }
            buf[len++] = ' ';
            len += units_put_u64(buf + len, ids[i]);
        }
        buf[len++] = '\n';
        fn_write_all(buf, len);
    }
    errno = saved;
    /* SA_RESETHAND put the default action back: a fault returns to the faulting
     * instruction and dies there; a raised signal (abort, raise) dies once this returns. */
    raise(sig);
}

int worker_fault_note_open(const char *path, aicfn_error *err) {
    if (fn_fd >= 0) return aicfn_error_set(err, AICFN_E_INVALID, "fault note: already open");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "fault note %s", path);
    fn_fd = fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn_on_fault;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof fn_signals / sizeof fn_signals[0]; i++)
        sigaction(fn_signals[i], &sa, NULL);
    return AICFN_OK;
}

void worker_fault_note_enter(const char *fn, uint32_t ver, const uint64_t *ids, uint32_t n) {
    fn_name = fn;
    fn_ver = ver;
    fn_ids = ids;
    fn_n = n < WORKER_FAULT_NOTE_MAX_IDS ? n : WORKER_FAULT_NOTE_MAX_IDS;
}

void worker_fault_note_leave(void) {
    fn_n = 0;
    fn_ids = NULL;
    fn_name = NULL;
}
