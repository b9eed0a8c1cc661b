/* rpc_link.c: framed messages over one stream socket, a reader thread and a writer
 * thread (see rpc_link.h for the frame and the contract).
 *
 * Sending: under the write lock, a frame goes straight to the socket (non-blocking
 * sendmsg of header and body) when nothing is queued; whatever the socket did not take
 * is queued, and the writer thread finishes it, waiting on POLLOUT. Frames leave in the
 * order their sends took the lock.
 * Receiving: the reader reads into a 64 KiB buffer and cuts frames out of it; a body
 * larger than what the buffer holds is read straight into its message. Between reads it
 * waits in poll(2) on the socket and an eventfd (rpc_link_due), at most until the next
 * tick its owner asked for, and at most a second (so an idle link costs one wake-up a
 * second, and the eventfd is written only for a tick due sooner than that wake-up).
 * Reading is a role (rmu), held by one thread except while it runs a callback; its
 * state (buffer, the frame being filled) lives in the link. The standby (takeover_ms)
 * looks every takeover_ms while frames come and takes the role from a callback that
 * has run that long; the replaced thread finds, when its callback returns, that the
 * epoch moved on and becomes the standby. No thread is woken per frame for it.
 * Not for: what the frames mean (rpc.c). */
#include "common/rpc_link.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"

#define LINK_BUF_BYTES (64u * 1024)
#define LINK_MAX_WAIT_MS 1000 /* the reader wakes at least this often while it may tick */

typedef struct link_out {
    unsigned char hdr[RPC_LINK_HEADER_BYTES];
    uint64_t id;
    nng_msg *msg;
    struct link_out *next;
} link_out;

struct rpc_link {
    int fd;
    int evfd;
    rpc_link_ops ops;
    char name[96];

    pthread_mutex_t mu; /* the write side: queue, q_off, ended, why */
    pthread_cond_t cv;
    link_out *q_head, *q_tail;
    size_t q_off;   /* bytes of the head frame (header included) already written */
    size_t q_bytes; /* bytes queued (bodies and headers, the head's written part included) */
    bool ended;     /* no more sends: the link ended or is shutting down */
    bool closing;   /* rpc_link_close: the writer exits */
    bool writing;   /* the writer is sending q_head (which link_end_locked then leaves to it) */
    char why[160];

    pthread_t reader, writer, standby;
    bool reader_started, writer_started, standby_started;
    _Atomic uint64_t wake_at; /* when the reader's current wait ends (UINT64_MAX: deciding) */

    /* The reading role: held by the thread that reads, except while it runs a callback
     * (link_deliver); the standby may then take it over (link_standby). */
    pthread_mutex_t rmu;
    unsigned epoch;      /* under rmu: the current reader's number */
    bool r_done;         /* under rmu: the link ended, no more reading */
    size_t r_have, r_at; /* under rmu: bytes in buf, and those already cut */
    nng_msg *r_body;     /* under rmu: the frame being filled */
    size_t r_body_have;  /* its bytes so far */
    uint64_t r_body_id;
    _Atomic uint64_t cb_since;      /* when the reader entered its callback; 0: not in one */
    _Atomic uint64_t last_frame_us; /* when the last frame was handed over */
    _Atomic bool standby_idle;      /* the standby sleeps until a frame comes */
    pthread_mutex_t smu;            /* the standby's sleep */
    pthread_cond_t scv;
    bool standby_stop; /* under smu */

    unsigned char buf[LINK_BUF_BYTES]; /* under rmu */
};

static void link_put_header(unsigned char h[RPC_LINK_HEADER_BYTES], uint32_t len, uint64_t id) {
    uint32_t magic = RPC_LINK_MAGIC;
    for (int i = 0; i < 4; i++) {
        h[i] = (unsigned char)(magic >> (8 * i));
        h[4 + i] = (unsigned char)(len >> (8 * i));
    }
    for (int i = 0; i < 8; i++)
        h[8 + i] = (unsigned char)(id >> (8 * i));
}

static uint32_t link_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t link_u64(const unsigned char *p) {
    return (uint64_t)link_u32(p) | (uint64_t)link_u32(p + 4) << 32;
}

/* Marks the link ended (lock held) with the first reason given, drops the queue, and
 * shuts the socket down so that the reader sees the end and the writer stops waiting. */
static void link_end_locked(rpc_link *l, const char *why) {
    if (!l->ended) {
        l->ended = true;
        snprintf(l->why, sizeof l->why, "%s", why);
        (void)shutdown(l->fd, SHUT_RDWR);
    }
    link_out *keep = l->writing ? l->q_head : NULL, *o = keep ? keep->next : l->q_head;
    while (o) {
        link_out *next = o->next;
        nng_msg_free(o->msg);
        free(o);
        o = next;
    }
    if (keep) keep->next = NULL;
    l->q_head = l->q_tail = keep;
    l->q_bytes = keep ? RPC_LINK_HEADER_BYTES + nng_msg_len(keep->msg) : 0;
    pthread_cond_broadcast(&l->cv);
}

/* Writes what it can of frame o from byte `off` without blocking. Returns the bytes
 * written (0 when the socket takes none now), or -1 with errno on a socket error. */
static ssize_t link_write_some(rpc_link *l, const link_out *o, size_t off) {
    size_t blen = nng_msg_len(o->msg);
    struct iovec iov[2];
    int n = 0;
    if (off < RPC_LINK_HEADER_BYTES) {
        iov[n].iov_base = (void *)(o->hdr + off);
        iov[n++].iov_len = RPC_LINK_HEADER_BYTES - off;
        if (blen) {
            iov[n].iov_base = nng_msg_body(o->msg);
            iov[n++].iov_len = blen;
        }
    } else {
        iov[n].iov_base = (unsigned char *)nng_msg_body(o->msg) + (off - RPC_LINK_HEADER_BYTES);
        iov[n++].iov_len = blen - (off - RPC_LINK_HEADER_BYTES);
    }
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    for (;;) {
        ssize_t w = sendmsg(l->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w >= 0) return w;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return -1;
    }
}

int rpc_link_send(rpc_link *l, uint64_t id, nng_msg *msg, bool *queued) {
    if (queued) *queued = false;
    size_t blen = nng_msg_len(msg);
    if (blen > UINT32_MAX) {
        nng_msg_free(msg);
        return AICFN_E_TOO_LARGE;
    }
    link_out *o = malloc(sizeof *o);
    if (o == NULL) {
        nng_msg_free(msg);
        return AICFN_E_NOMEM;
    }
    link_put_header(o->hdr, (uint32_t)blen, id);
    o->id = id;
    o->msg = msg;
    o->next = NULL;
    pthread_mutex_lock(&l->mu);
    if (l->ended) {
        pthread_mutex_unlock(&l->mu);
        nng_msg_free(msg);
        free(o);
        return AICFN_E_UNAVAILABLE;
    }
    size_t off = 0;
    if (l->q_head == NULL) {
        ssize_t w = link_write_some(l, o, 0);
        if (w < 0) {
            char why[128];
            snprintf(why, sizeof why, "sending: %s", strerror(errno));
            link_end_locked(l, why);
            pthread_mutex_unlock(&l->mu);
            nng_msg_free(msg);
            free(o);
            return AICFN_E_UNAVAILABLE;
        }
        if ((size_t)w == RPC_LINK_HEADER_BYTES + blen) {
            pthread_mutex_unlock(&l->mu);
            nng_msg_free(msg);
            free(o);
            return AICFN_OK;
        }
        off = (size_t)w;
    }
    if (l->q_head == NULL) {
        l->q_head = l->q_tail = o;
        l->q_off = off;
        pthread_cond_broadcast(&l->cv);
    } else {
        l->q_tail->next = o;
        l->q_tail = o;
    }
    l->q_bytes += RPC_LINK_HEADER_BYTES + blen;
    if (queued) *queued = true;
    pthread_mutex_unlock(&l->mu);
    return AICFN_OK;
}

bool rpc_link_cancel(rpc_link *l, uint64_t id) {
    bool dropped = false;
    pthread_mutex_lock(&l->mu);
    /* The head is left alone once a byte of it left (or the writer holds it). */
    link_out **pp = &l->q_head, *prev = NULL;
    while (*pp) {
        link_out *o = *pp;
        bool started = o == l->q_head && (l->writing || l->q_off > 0);
        if (o->id == id && !started) {
            *pp = o->next;
            if (l->q_tail == o) l->q_tail = prev;
            l->q_bytes -= RPC_LINK_HEADER_BYTES + nng_msg_len(o->msg);
            nng_msg_free(o->msg);
            free(o);
            dropped = true;
            pthread_cond_broadcast(&l->cv);
            break;
        }
        prev = o;
        pp = &o->next;
    }
    pthread_mutex_unlock(&l->mu);
    return dropped;
}

static void *link_writer(void *arg) {
    rpc_link *l = arg;
    pthread_setname_np(pthread_self(), "aicfn:link-out");
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->closing && (l->ended || l->q_head == NULL))
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->closing) break;
        link_out *o = l->q_head;
        size_t off = l->q_off, total = RPC_LINK_HEADER_BYTES + nng_msg_len(o->msg);
        l->writing = true; /* o is this thread's until it clears this */
        pthread_mutex_unlock(&l->mu);
        /* Only this thread writes while the queue is not empty. */
        uint64_t last_progress = clock_now_us();
        const char *fail = NULL;
        char why[128];
        while (off < total) {
            ssize_t w = link_write_some(l, o, off);
            if (w < 0) {
                snprintf(why, sizeof why, "sending: %s", strerror(errno));
                fail = why;
                break;
            }
            if (w > 0) {
                off += (size_t)w;
                last_progress = clock_now_us();
                continue;
            }
            int wait_ms = -1;
            if (l->ops.stall_ms) {
                uint64_t until = last_progress + (uint64_t)l->ops.stall_ms * 1000, now = clock_now_us();
                if (now >= until) {
                    snprintf(why, sizeof why, "the peer took no bytes for %u ms", l->ops.stall_ms);
                    fail = why;
                    break;
                }
                wait_ms = (int)((until - now + 999) / 1000);
            }
            struct pollfd p = {.fd = l->fd, .events = POLLOUT};
            if (poll(&p, 1, wait_ms) < 0 && errno != EINTR) {
                snprintf(why, sizeof why, "waiting to send: %s", strerror(errno));
                fail = why;
                break;
            }
        }
        pthread_mutex_lock(&l->mu);
        l->writing = false;
        l->q_head = o->next; /* o is the head still (link_end_locked and rpc_link_cancel keep it) */
        if (l->q_head == NULL) l->q_tail = NULL;
        l->q_off = 0;
        l->q_bytes -= total;
        nng_msg_free(o->msg);
        free(o);
        pthread_cond_broadcast(&l->cv); /* a reader waiting for the queue to shrink */
        if (fail) link_end_locked(l, fail);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Lowers l->wake_at to `when` if it is later. */
static void link_lower_wake(rpc_link *l, uint64_t when) {
    uint64_t cur = atomic_load(&l->wake_at);
    while (cur > when && !atomic_compare_exchange_weak(&l->wake_at, &cur, when)) {
    }
}

/* Runs the owner's tick and sets the reader's next wake-up from it. wake_at is
 * UINT64_MAX while the tick runs, so that rpc_link_due meanwhile lowers it (and kicks). */
static void link_tick(rpc_link *l) {
    atomic_store(&l->wake_at, UINT64_MAX);
    uint64_t now = clock_now_us();
    uint64_t next = l->ops.tick(l->ops.user, now);
    uint64_t cap = now + (uint64_t)LINK_MAX_WAIT_MS * 1000;
    link_lower_wake(l, next == 0 || next > cap ? cap : next);
}

/* How long the reader may wait (ms for poll). */
static int link_wait_ms(rpc_link *l) {
    if (l->ops.tick == NULL) return -1;
    link_tick(l);
    uint64_t now = clock_now_us(), next = atomic_load(&l->wake_at);
    if (next <= now) return 0;
    return (int)((next - now + 999) / 1000);
}

/* Stops the standby (it returns from link_standby). */
static void link_stop_standby(rpc_link *l) {
    pthread_mutex_lock(&l->smu);
    l->standby_stop = true;
    pthread_cond_broadcast(&l->scv);
    pthread_mutex_unlock(&l->smu);
}

static void link_finish(rpc_link *l, nng_msg *partial, const char *why) {
    nng_msg_free(partial);
    link_stop_standby(l);
    pthread_mutex_lock(&l->mu);
    link_end_locked(l, why);
    char said[sizeof l->why];
    snprintf(said, sizeof said, "%s", l->why); /* the first reason, whoever gave it */
    pthread_mutex_unlock(&l->mu);
    l->ops.end(l->ops.user, said);
}

/* How a reading turn ended (link_read). */
enum { LINK_READ_ENDED = 0, LINK_READ_REPLACED = 1 };

/* Hands frame m to the owner, with the reading role (rmu) released meanwhile: a callback
 * still running after takeover_us may see the standby take the role over. Returns false
 * when this thread no longer reads (replaced, or the link ended meanwhile); rmu is then
 * released. */
static bool link_deliver(rpc_link *l, unsigned me, uint64_t id, nng_msg *m) {
    atomic_store(&l->last_frame_us, clock_now_us());
    if (atomic_load(&l->standby_idle)) { /* the first frame after a quiet spell */
        pthread_mutex_lock(&l->smu);
        pthread_cond_signal(&l->scv);
        pthread_mutex_unlock(&l->smu);
    }
    atomic_store(&l->cb_since, clock_now_us() | 1); /* never 0 while in a callback */
    pthread_mutex_unlock(&l->rmu);
    l->ops.recv(l->ops.user, id, m);
    pthread_mutex_lock(&l->rmu);
    if (l->epoch != me) {
        pthread_mutex_unlock(&l->rmu);
        return false;
    }
    atomic_store(&l->cb_since, 0);
    return true;
}

/* Ends the link from the reading role (rmu held; released). */
static int link_read_fail(rpc_link *l, const char *why) {
    nng_msg *partial = l->r_body;
    l->r_body = NULL;
    l->r_done = true;
    pthread_mutex_unlock(&l->rmu);
    link_finish(l, partial, why);
    return LINK_READ_ENDED;
}

/* One thread's turn at reading, entered with rmu held as reader `me`: reads frames and
 * hands them over until the link ends or another thread took the role over (the state
 * lives in l, so that it can). Returns with rmu released. */
static int link_read(rpc_link *l, unsigned me) {
    char why[192];
    for (;;) {
        if (l->r_done) { /* another reader ended the link */
            pthread_mutex_unlock(&l->rmu);
            return LINK_READ_ENDED;
        }
        /* A tick due while frames keep coming (the reader never waits then). */
        if (l->ops.tick && clock_now_us() >= atomic_load(&l->wake_at)) link_tick(l);
        /* Cut every complete frame out of the buffer. */
        for (;;) {
            if (l->r_body) {
                size_t need = nng_msg_len(l->r_body) - l->r_body_have;
                size_t take = l->r_have - l->r_at < need ? l->r_have - l->r_at : need;
                memcpy((unsigned char *)nng_msg_body(l->r_body) + l->r_body_have, l->buf + l->r_at, take);
                l->r_body_have += take;
                l->r_at += take;
                if (l->r_body_have < nng_msg_len(l->r_body)) break;
                nng_msg *m = l->r_body;
                l->r_body = NULL;
                if (!link_deliver(l, me, l->r_body_id, m)) return LINK_READ_REPLACED;
                continue;
            }
            if (l->r_have - l->r_at < RPC_LINK_HEADER_BYTES) break;
            const unsigned char *h = l->buf + l->r_at;
            uint32_t magic = link_u32(h), len = link_u32(h + 4);
            if (magic != RPC_LINK_MAGIC) {
                snprintf(why, sizeof why, "bad frame header (magic %08x, not %08x)", magic, RPC_LINK_MAGIC);
                return link_read_fail(l, why);
            }
            if (len > l->ops.recv_max) {
                snprintf(why, sizeof why, "a frame of %u bytes exceeds the limit of %zu", len,
                         l->ops.recv_max);
                return link_read_fail(l, why);
            }
            if (nng_msg_alloc(&l->r_body, len) != 0) {
                l->r_body = NULL;
                snprintf(why, sizeof why, "out of memory for a frame of %u bytes", len);
                return link_read_fail(l, why);
            }
            l->r_body_id = link_u64(h + 8);
            l->r_body_have = 0;
            l->r_at += RPC_LINK_HEADER_BYTES;
        }
        memmove(l->buf, l->buf + l->r_at, l->r_have - l->r_at);
        l->r_have -= l->r_at;
        l->r_at = 0;

        /* A peer that sends and does not read its replies fills our queue: stop reading
         * (it then blocks in turn) until the queue is below the cap or the link ends. */
        if (l->ops.queue_max) {
            pthread_mutex_lock(&l->mu);
            while (!l->ended && l->q_bytes > l->ops.queue_max)
                pthread_cond_wait(&l->cv, &l->mu);
            pthread_mutex_unlock(&l->mu);
        }
        /* Read more: a big body's rest straight into it, anything else into the buffer. */
        unsigned char *dst;
        size_t room;
        bool into_body =
            l->r_body && l->r_have == 0 && nng_msg_len(l->r_body) - l->r_body_have >= LINK_BUF_BYTES;
        if (into_body) {
            dst = (unsigned char *)nng_msg_body(l->r_body) + l->r_body_have;
            room = nng_msg_len(l->r_body) - l->r_body_have;
        } else {
            dst = l->buf + l->r_have;
            room = LINK_BUF_BYTES - l->r_have;
        }
        ssize_t n = recv(l->fd, dst, room, MSG_DONTWAIT);
        if (n > 0) {
            if (into_body)
                l->r_body_have += (size_t)n;
            else
                l->r_have += (size_t)n;
            if (into_body && l->r_body_have == nng_msg_len(l->r_body)) {
                nng_msg *m = l->r_body;
                l->r_body = NULL;
                if (!link_deliver(l, me, l->r_body_id, m)) return LINK_READ_REPLACED;
            }
            continue;
        }
        if (n == 0) {
            pthread_mutex_lock(&l->mu);
            bool here = l->ended;
            pthread_mutex_unlock(&l->mu);
            return link_read_fail(l, here ? "shut down"
                                     : l->r_body || l->r_have > 0
                                         ? "the peer closed the connection inside a frame"
                                         : "the peer closed the connection");
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            snprintf(why, sizeof why, "receiving: %s", strerror(errno));
            return link_read_fail(l, why);
        }
        struct pollfd p[2] = {{.fd = l->fd, .events = POLLIN}, {.fd = l->evfd, .events = POLLIN}};
        int r = poll(p, 2, link_wait_ms(l));
        if (r < 0 && errno != EINTR) {
            snprintf(why, sizeof why, "waiting to receive: %s", strerror(errno));
            return link_read_fail(l, why);
        }
        if (r > 0 && (p[1].revents & POLLIN)) {
            uint64_t v;
            (void)!read(l->evfd, &v, sizeof v);
        }
    }
}

/* The standby (ops.takeover_ms): while frames come, it looks every takeover_ms at the
 * reader, and takes the reading role over from one whose callback has run that long (a
 * slow call the owner runs on the reader: the frames behind it are read meanwhile);
 * after a second without frames it sleeps until the next one. The thread it replaced
 * becomes the standby when its callback returns. */
static void link_standby(rpc_link *l) {
    uint64_t wait_us = (uint64_t)l->ops.takeover_ms * 1000;
    for (;;) {
        pthread_mutex_lock(&l->smu);
        if (l->standby_stop) {
            pthread_mutex_unlock(&l->smu);
            return;
        }
        uint64_t now = clock_now_us();
        if (now - atomic_load(&l->last_frame_us) > 1000000 && atomic_load(&l->cb_since) == 0) {
            atomic_store(&l->standby_idle, true);
            /* Re-checked after saying so: a frame that came meanwhile signals, or is seen. */
            if (clock_now_us() - atomic_load(&l->last_frame_us) > 1000000)
                pthread_cond_wait(&l->scv, &l->smu);
            atomic_store(&l->standby_idle, false);
        } else {
            struct timespec ts;
            clock_deadline_to_timespec(now + wait_us, &ts);
            pthread_cond_timedwait(&l->scv, &l->smu, &ts);
        }
        bool stop = l->standby_stop;
        pthread_mutex_unlock(&l->smu);
        if (stop) return;
        uint64_t since = atomic_load(&l->cb_since);
        if (since == 0 || clock_now_us() - since < wait_us || pthread_mutex_trylock(&l->rmu) != 0) continue;
        if (atomic_load(&l->cb_since) != since || l->r_done) { /* it came back meanwhile */
            pthread_mutex_unlock(&l->rmu);
            continue;
        }
        unsigned me = ++l->epoch;
        atomic_store(&l->cb_since, 0);
        if (link_read(l, me) == LINK_READ_ENDED) return;
    }
}

static void *link_reader(void *arg) {
    rpc_link *l = arg;
    pthread_setname_np(pthread_self(), "aicfn:link-in");
    pthread_mutex_lock(&l->rmu);
    if (link_read(l, l->epoch) == LINK_READ_REPLACED) link_standby(l);
    return NULL;
}

static void *link_standby_main(void *arg) {
    rpc_link *l = arg;
    pthread_setname_np(pthread_self(), "aicfn:link-in");
    link_standby(l);
    return NULL;
}

void rpc_link_due(rpc_link *l, uint64_t when_us) {
    if (when_us >= atomic_load(&l->wake_at)) return;
    link_lower_wake(l, when_us);
    uint64_t one = 1;
    (void)!write(l->evfd, &one, sizeof one);
}

void rpc_link_shutdown(rpc_link *l) {
    pthread_mutex_lock(&l->mu);
    link_end_locked(l, "shut down");
    pthread_mutex_unlock(&l->mu);
}

int rpc_link_open(rpc_link **out, int fd, const rpc_link_ops *ops, aicfn_error *err) {
    *out = NULL;
    rpc_link *l = calloc(1, sizeof *l);
    if (l == NULL) {
        close(fd);
        return aicfn_error_set(err, AICFN_E_NOMEM, "link %s", ops->name ? ops->name : "");
    }
    l->fd = fd;
    l->ops = *ops;
    snprintf(l->name, sizeof l->name, "%s", ops->name ? ops->name : "link");
    l->ops.name = l->name;
    atomic_init(&l->wake_at, 0); /* the reader ticks first thing */
    atomic_init(&l->cb_since, 0);
    atomic_init(&l->last_frame_us, 0);
    atomic_init(&l->standby_idle, false);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    pthread_mutex_init(&l->rmu, NULL);
    pthread_mutex_init(&l->smu, NULL);
    clock_cond_init(&l->scv);
    l->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int fl = fcntl(fd, F_GETFL);
    int rc = AICFN_OK;
    if (l->evfd < 0 || fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "link %s: setting up its socket", l->name);
    } else if (pthread_create(&l->writer, NULL, link_writer, l) != 0) {
        rc = aicfn_error_set(err, AICFN_E_IO, "link %s: no writer thread", l->name);
    } else {
        l->writer_started = true;
        /* Published before the reader starts: a frame may be waiting already, and the
         * owner's callbacks may reach the link through *out (a reply's rpc_link_send). */
        *out = l;
        if (pthread_create(&l->reader, NULL, link_reader, l) != 0) {
            *out = NULL;
            rc = aicfn_error_set(err, AICFN_E_IO, "link %s: no reader thread", l->name);
        } else {
            l->reader_started = true;
            /* Without a standby a slow callback only delays the frames behind it. */
            if (l->ops.takeover_ms && pthread_create(&l->standby, NULL, link_standby_main, l) == 0)
                l->standby_started = true;
            else if (l->ops.takeover_ms)
                log_warn("link %s: no standby reader thread: a slow call delays the frames behind it",
                         l->name);
        }
    }
    if (rc != AICFN_OK) {
        rpc_link_close(l); /* no callback ran: the reader never started */
        return rc;
    }
    return AICFN_OK;
}

void rpc_link_close(rpc_link *l) {
    if (l == NULL) return;
    pthread_mutex_lock(&l->mu);
    link_end_locked(l, "shut down");
    l->closing = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    link_stop_standby(l);
    if (l->reader_started) pthread_join(l->reader, NULL);
    if (l->standby_started) pthread_join(l->standby, NULL);
    if (l->writer_started) pthread_join(l->writer, NULL);
    nng_msg_free(l->r_body);
    close(l->fd);
    if (l->evfd >= 0) close(l->evfd);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->scv);
    pthread_mutex_destroy(&l->smu);
    pthread_mutex_destroy(&l->rmu);
    free(l);
}
