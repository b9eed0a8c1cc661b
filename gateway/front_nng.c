/* front_nng.c: the gateway's NNG client front (design.md §4): one REP server (many
 * nng_ctx contexts driven by aio callbacks, common/rpc.h) whose `invoke` messages go
 * straight to gw_invoke_submit from the NNG callback (decode, submit, return: no
 * blocking), and whose administrative messages (chunked artifact upload, deploy, ls,
 * rm, coldstarts, workers, status, register) run one at a time on an admin thread,
 * since they touch the disk and SQLite.
 *
 * Message types and fields are listed in docs/protocol.md ("Gateway messages").
 * Authentication: unless the gateway runs --insecure-local, every message carries `key`
 * (an API key, keys.h); administrative messages need an admin key. Results of key
 * checks are cached for a few seconds so that invocations do not hit SQLite.
 *
 * Not for: the call path itself (gateway.c), HTTP (http.c). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/tunables.h"
#include "common/wire.h"
#include "gateway/artifacts.h"
#include "gateway/gateway_internal.h"
#include "gateway/keys.h"
#include "gateway/ledger.h"
#include "gateway/registry.h"

#define FRONT_MAX_UPLOADS AICFN_ARTIFACT_MAX_UPLOADS
#define FRONT_ADMIN_QUEUE 256
#define FRONT_MAX_COMMITTED 64 /* committed uploads watched for the deploy that names them */

typedef struct front_admin_job {
    rpc_call *call;
    const uint8_t *msg;
    size_t len;
    uint64_t arrived_us; /* when the front received it: an upload's chunk counts from then */
    struct front_admin_job *next;
} front_admin_job;

/* An open upload. It belongs to the key that began it (`owner`, the key's digest; no
 * owner with --insecure-local): chunks, commit and abort with another key are refused.
 * One whose key is revoked meanwhile is aborted within AICFN_UPLOAD_KEY_CHECK_MS (the
 * admin thread, which owns the uploads, looks its key up by id: a message whose key
 * fails its check never reaches that thread). */
typedef struct front_upload {
    uint64_t token;
    gw_upload *u;
    char hash[GW_HASH_HEX_LEN + 1];
    uint64_t last_us;
    bool owned;
    unsigned char owner[GW_KEY_DIGEST_BYTES];
    char owner_id[GW_KEY_ID_LEN + 1]; /* the owner's key id ("" when not owned) */
} front_upload;

/* A committed upload that no deploy had named yet: removed if none has by due_us. */
typedef struct front_committed {
    char hash[GW_HASH_HEX_LEN + 1]; /* "" when the slot is free */
    uint64_t due_us;                /* monotonic */
} front_committed;

struct gw_front {
    gw_gateway *gw;
    rpc_server *srv;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t admin;
    bool admin_started;
    bool stopping;
    front_admin_job *jobs_head, *jobs_tail;
    unsigned n_jobs;

    front_upload uploads[FRONT_MAX_UPLOADS]; /* admin thread only */
    uint64_t next_token;                     /* starts at random: a client whose upload a restart cut off may
                                                send upload_abort with its old token, which must not name a new
                                                client's upload (below 2^52: exact in any JSON client) */
    uint64_t upload_idle_us;                 /* an upload without a chunk this long is aborted */
    uint64_t keys_checked_us;                /* when the open uploads' keys were last looked up */
    front_committed committed[FRONT_MAX_COMMITTED]; /* admin thread only; a ring */
    unsigned next_committed;

    gw_key_cache *keys;       /* recent authentications: no SQLite read per call */
    unsigned max_invocations; /* invocations held at once: the contexts less those kept for
                                 administrative requests (tunables.h, --max-requests) */
};

const char *gw_front_url(const gw_front *f) {
    return rpc_server_url(f->srv);
}

/* ---- Replies ---------------------------------------------------------------------- */

static void front_error(rpc_call *call, uint64_t id, int code, const char *msg) {
    wire_writer w;
    wire_writer_init(&w);
    if (wire_encode_error_reply(&w, id, code, msg, NULL) == AICFN_OK)
        rpc_reply(call, w.data, w.len);
    else
        rpc_call_drop(call);
    wire_writer_fini(&w);
}

/* An error reply with `retry_after_s` (seconds until the call may succeed: rate limits
 * and quotas) beside `error` at the top level: {v, id, ok:false, error, retry_after_s}. */
static void front_error_retry(rpc_call *call, uint64_t id, int code, const char *msg,
                              uint32_t retry_after_s) {
    wire_writer w;
    wire_writer_init(&w);
    wire_put_map(&w, 5);
    wire_kv_u64(&w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_u64(&w, "id", id);
    wire_kv_bool(&w, "ok", false);
    wire_put_str(&w, "error");
    wire_put_map(&w, 3);
    wire_kv_u64(&w, "code", (uint64_t)code);
    wire_kv_str(&w, "name", aicfn_status_name(code));
    wire_kv_str(&w, "message", msg ? msg : "");
    wire_kv_u64(&w, "retry_after_s", retry_after_s);
    if (wire_writer_status(&w, NULL) == AICFN_OK)
        rpc_reply(call, w.data, w.len);
    else
        rpc_call_drop(call);
    wire_writer_fini(&w);
}

/* Starts an ok reply with `extra` more key/value pairs to follow. */
static void front_ok_head(wire_writer *w, uint64_t id, uint32_t extra) {
    wire_put_map(w, 3 + extra);
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_u64(w, "id", id);
    wire_kv_bool(w, "ok", true);
}

static void front_send(rpc_call *call, uint64_t id, wire_writer *w) {
    aicfn_error e;
    if (wire_writer_status(w, &e) == AICFN_OK)
        rpc_reply(call, w->data, w->len);
    else
        front_error(call, id, e.code, e.msg);
    wire_writer_fini(w);
}

static void front_ok_json(rpc_call *call, uint64_t id, json_t *j) {
    if (!j) {
        front_error(call, id, AICFN_E_NOMEM, "out of memory");
        return;
    }
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text) {
        front_error(call, id, AICFN_E_NOMEM, "out of memory");
        return;
    }
    wire_writer w;
    wire_writer_init(&w);
    front_ok_head(&w, id, 1);
    wire_kv_str(&w, "json", text);
    free(text);
    front_send(call, id, &w);
}

/* ---- Authentication --------------------------------------------------------------- */

/* Fills tenant/role (and, when `limits` is given, the key's rate and daily quota) for
 * the message's `key`. */
static int front_auth_check(gw_front *f, wire_doc *doc, char *tenant, gw_key_role *role, gw_key_info *limits,
                            aicfn_error *err) {
    if (limits) {
        limits->rate_per_s = 0;
        limits->quota_per_day = 0;
    }
    if (gw_insecure_local(f->gw)) {
        snprintf(tenant, AICFN_TENANT_MAX_BYTES + 1, "local");
        *role = GW_KEY_ADMIN;
        return AICFN_OK;
    }
    const char *key = NULL;
    /* Up to protocol.md's 1024 bytes: a longer one is malformed; a wrong one of any length
     * within that is AICFN_E_UNAUTHENTICATED (gw_keys_authenticate), not a protocol error. */
    int rc = wire_get_cstr(doc, &doc->root, NULL, "key", false, AICFN_API_KEY_MAX_BYTES, &key, err);
    if (rc != AICFN_OK) return rc;
    if (!key) return aicfn_error_set(err, AICFN_E_UNAUTHENTICATED, "missing API key (`key`)");
    gw_key_info info;
    rc = gw_key_cache_authenticate(f->keys, gw_gateway_read_db(f->gw), key, &info, err);
    if (rc != AICFN_OK) return rc;
    snprintf(tenant, AICFN_TENANT_MAX_BYTES + 1, "%s", info.tenant);
    *role = info.role;
    if (limits) *limits = info;
    return AICFN_OK;
}

/* ---- Invoke (on the NNG callback thread) ------------------------------------------- */

static void front_invoke_done(void *user, const gw_invoke_result *res) {
    rpc_call *call = user;
    if (res->reply) {
        rpc_reply_msg(call, res->reply);
        return;
    }
    front_error(call, res->id, res->code, res->message);
}

static void front_invoke(gw_front *f, rpc_call *call, wire_doc *doc, uint64_t id) {
    aicfn_error e;
    wire_invoke_req req;
    int rc = wire_decode_invoke_req(doc, &req, &e);
    char tenant[AICFN_TENANT_MAX_BYTES + 1];
    gw_key_role role = GW_KEY_TENANT;
    gw_key_info lim;
    if (rc == AICFN_OK) rc = front_auth_check(f, doc, tenant, &role, &lim, &e);
    if (rc == AICFN_OK && role == GW_KEY_WORKER)
        rc = aicfn_error_set(&e, AICFN_E_FORBIDDEN,
                             "a worker key cannot invoke (it registers a worker and fetches artifacts)");
    if (rc == AICFN_OK) {
        uint32_t retry = 0;
        rc = gw_invoke_admit(f->gw, &req, tenant, lim.rate_per_s, lim.quota_per_day, &retry, &e);
        if (rc == AICFN_E_QUOTA) {
            front_error_retry(call, id, rc, e.msg, retry);
            return;
        }
    }
    if (rc == AICFN_OK) {
        req.has_spec = false; /* a client never dictates paths */
        rc = gw_invoke_submit(f->gw, &req, tenant, front_invoke_done, call, NULL, &e);
    }
    if (rc != AICFN_OK) front_error(call, id, rc, e.msg);
}

/* ---- Admin operations (admin thread) ----------------------------------------------- */

static front_upload *front_upload_find(gw_front *f, uint64_t token) {
    for (int i = 0; i < FRONT_MAX_UPLOADS; i++)
        if (f->uploads[i].u && f->uploads[i].token == token) return &f->uploads[i];
    return NULL;
}

/* The digest of the message's `key` into out; false when it has none (or a malformed one). */
static bool front_key_digest(wire_doc *doc, unsigned char out[GW_KEY_DIGEST_BYTES]) {
    const char *key = NULL;
    aicfn_error e;
    if (wire_get_cstr(doc, &doc->root, NULL, "key", false, AICFN_API_KEY_MAX_BYTES, &key, &e) != AICFN_OK ||
        !key)
        return false;
    gw_key_digest(key, out);
    return true;
}

/* Whether the message (doc) carries the key that began upload `up` (any message does for
 * an upload without an owner). */
static bool front_upload_owner_sent(const front_upload *up, wire_doc *doc) {
    if (!up->owned) return true;
    unsigned char d[GW_KEY_DIGEST_BYTES];
    return front_key_digest(doc, d) && sodium_memcmp(d, up->owner, sizeof d) == 0;
}

/* Aborts the uploads idle since before `now` - upload_idle_us (all of them at stop).
 * `now` is the arrival time of the message about to be handled, or the clock while no
 * message is queued, so a chunk that waited in the queue behind a slow operation
 * (a commit's fsync) never finds its upload gone. */
static void front_uploads_expire(gw_front *f, uint64_t now, bool all) {
    for (int i = 0; i < FRONT_MAX_UPLOADS; i++)
        if (f->uploads[i].u && (all || now > f->uploads[i].last_us + f->upload_idle_us)) {
            if (!all)
                log_warn("abandoned upload of %s aborted (no chunk for %llu ms)", f->uploads[i].hash,
                         (unsigned long long)(f->upload_idle_us / 1000));
            gw_upload_abort(f->uploads[i].u);
            f->uploads[i].u = NULL;
        }
}

/* Aborts the uploads whose key was revoked since they began (their owner can no longer
 * go on with them, nor anyone else), once per AICFN_UPLOAD_KEY_CHECK_MS at most. */
static void front_uploads_check_keys(gw_front *f, uint64_t now) {
    if (now < f->keys_checked_us + (uint64_t)AICFN_UPLOAD_KEY_CHECK_MS * 1000) return;
    f->keys_checked_us = now;
    for (int i = 0; i < FRONT_MAX_UPLOADS; i++) {
        front_upload *up = &f->uploads[i];
        if (!up->u || !up->owner_id[0]) continue;
        bool active = true;
        aicfn_error e;
        if (gw_keys_is_active(gw_gateway_read_db(f->gw), up->owner_id, &active, &e) != AICFN_OK) continue;
        if (active) continue;
        log_warn("upload of %s aborted: the key that began it (%s) was revoked", up->hash, up->owner_id);
        gw_upload_abort(up->u);
        up->u = NULL;
    }
}

/* Watches a just committed upload: unless a deploy names it within twice the upload idle
 * timeout (counted again while another upload is open, or after a client is told the
 * file exists), front_committed_sweep removes it. A deploy normally follows its commit at
 * once; one that stopped in between (Ctrl-C, a client timeout, a refused config) would
 * otherwise leave the file until the gateway restarts, and enough of them fill the store
 * (`aicfn deploy` uploads again when a deploy finds its file gone). When more than
 * FRONT_MAX_COMMITTED commits are watched, the oldest is left to the sweep at start. */
static void front_committed_watch(gw_front *f, const char *hash, uint64_t now) {
    front_committed *c = &f->committed[f->next_committed];
    f->next_committed = (f->next_committed + 1) % FRONT_MAX_COMMITTED;
    snprintf(c->hash, sizeof c->hash, "%s", hash);
    c->due_us = now + 2 * f->upload_idle_us;
}

/* Gives watched upload `hash` (if it is watched) its whole grace again from now: a client
 * was just told it exists, and its deploy may follow. */
static void front_committed_rearm(gw_front *f, const char *hash, uint64_t now) {
    for (int i = 0; i < FRONT_MAX_COMMITTED; i++)
        if (strcmp(f->committed[i].hash, hash) == 0) f->committed[i].due_us = now + 2 * f->upload_idle_us;
}

/* Removes the watched uploads that are due and that no function version names. While an
 * upload is open none is removed: a deploy uploads its handler, then its snapshot (which
 * may take any time, the idle timeout bounding only the pauses), then names both. */
static void front_committed_sweep(gw_front *f, uint64_t now) {
    bool uploading = false;
    for (int i = 0; i < FRONT_MAX_UPLOADS && !uploading; i++)
        uploading = f->uploads[i].u != NULL;
    for (int i = 0; i < FRONT_MAX_COMMITTED; i++) {
        front_committed *c = &f->committed[i];
        if (!c->hash[0] || c->due_us > now) continue;
        if (uploading) {
            c->due_us = now + 2 * f->upload_idle_us;
            continue;
        }
        aicfn_error e;
        int used = gw_registry_artifact_in_use(gw_gateway_db(f->gw), c->hash, &e);
        if (used < 0) { /* the database is busy: look again later */
            log_warn("artifacts: %.12s not checked for a deploy: %s", c->hash, e.msg);
            c->due_us = now + f->upload_idle_us;
            continue;
        }
        uint64_t size = 0;
        if (!used && gw_artifacts_exists(gw_gateway_artifacts(f->gw), c->hash, &size)) {
            if (gw_artifacts_remove(gw_gateway_artifacts(f->gw), c->hash, &e) == AICFN_OK)
                log_info("artifacts: removed %s (%llu bytes): uploaded, but no deploy named it within %llu s",
                         c->hash, (unsigned long long)size,
                         (unsigned long long)(2 * f->upload_idle_us / 1000000));
            else
                log_warn("artifacts: %s", e.msg);
        }
        c->hash[0] = '\0';
    }
}

/* When the admin thread has upload work next (monotonic µs): an open upload becomes
 * abandoned, the owners' keys are due to be looked up, or a committed upload is due to be
 * checked for its deploy; UINT64_MAX: none. */
static uint64_t front_uploads_next_expiry(const gw_front *f) {
    uint64_t due = UINT64_MAX;
    for (int i = 0; i < FRONT_MAX_COMMITTED; i++)
        if (f->committed[i].hash[0] && f->committed[i].due_us < due) due = f->committed[i].due_us;
    bool owned = false;
    for (int i = 0; i < FRONT_MAX_UPLOADS; i++) {
        if (!f->uploads[i].u) continue;
        owned |= f->uploads[i].owner_id[0] != '\0';
        if (f->uploads[i].last_us + f->upload_idle_us < due) due = f->uploads[i].last_us + f->upload_idle_us;
    }
    uint64_t check = f->keys_checked_us + (uint64_t)AICFN_UPLOAD_KEY_CHECK_MS * 1000;
    return owned && check < due ? check : due;
}

/* artifact_get {hash, offset, len}: one chunk of a stored artifact, read with pread
 * (admin thread): {size: the artifact's total bytes, data: bytes [offset, offset+n)}
 * with n = min(len, size - offset). Remote workers download handlers and snapshots so
 * (worker/fetch.c). */
static void front_artifact_get(gw_front *f, rpc_call *call, wire_doc *doc, uint64_t id) {
    aicfn_error e;
    aicfn_error_clear(&e);
    const msgpack_object *root = &doc->root;
    const char *hash = NULL;
    uint64_t offset = 0, len = 0;
    int rc = wire_get_cstr(doc, root, NULL, "hash", true, GW_HASH_HEX_LEN, &hash, &e);
    if (rc == AICFN_OK) rc = wire_get_u64(root, NULL, "offset", true, &offset, &e);
    if (rc == AICFN_OK) rc = wire_get_u64(root, NULL, "len", true, &len, &e);
    if (rc == AICFN_OK && !gw_hash_hex_valid(hash))
        rc = aicfn_error_set(&e, AICFN_E_INVALID, "artifact_get: 'hash' must be 64 lowercase hex characters");
    if (rc == AICFN_OK && (len == 0 || len > AICFN_UPLOAD_CHUNK_BYTES))
        rc = aicfn_error_set(&e, AICFN_E_INVALID, "artifact_get: 'len' must be 1..%u, not %llu",
                             AICFN_UPLOAD_CHUNK_BYTES, (unsigned long long)len);
    char path[PATH_MAX];
    if (rc == AICFN_OK) rc = gw_artifacts_path(gw_gateway_artifacts(f->gw), hash, path, sizeof path, &e);
    int fd = -1;
    if (rc == AICFN_OK) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            rc = errno == ENOENT ? aicfn_error_set(&e, AICFN_E_NOT_FOUND, "artifact %s is not stored", hash)
                                 : aicfn_error_errno(&e, AICFN_E_IO, errno, "artifact %s", hash);
    }
    struct stat st;
    if (rc == AICFN_OK && fstat(fd, &st) != 0)
        rc = aicfn_error_errno(&e, AICFN_E_IO, errno, "artifact %s", hash);
    uint64_t size = rc == AICFN_OK ? (uint64_t)st.st_size : 0;
    if (rc == AICFN_OK && offset > size)
        rc = aicfn_error_set(&e, AICFN_E_INVALID, "artifact %s: offset %llu is past its %llu bytes", hash,
                             (unsigned long long)offset, (unsigned long long)size);
    size_t n = rc == AICFN_OK ? (size_t)(size - offset < len ? size - offset : len) : 0;
    uint8_t *buf = rc == AICFN_OK ? malloc(n ? n : 1) : NULL;
    if (rc == AICFN_OK && !buf) rc = aicfn_error_set(&e, AICFN_E_NOMEM, "artifact_get: out of memory");
    size_t got = 0;
    while (rc == AICFN_OK && got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(offset + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            rc = aicfn_error_errno(&e, AICFN_E_IO, errno, "artifact %s: reading at offset %llu", hash,
                                   (unsigned long long)(offset + got));
        else if (r == 0)
            rc = aicfn_error_set(&e, AICFN_E_IO, "artifact %s: ends at %llu, before its %llu bytes", hash,
                                 (unsigned long long)(offset + got), (unsigned long long)size);
        else
            got += (size_t)r;
    }
    if (fd >= 0) close(fd);
    if (rc != AICFN_OK) {
        free(buf);
        front_error(call, id, rc, e.msg);
        return;
    }
    wire_writer w;
    wire_writer_init(&w);
    front_ok_head(&w, id, 2);
    wire_kv_u64(&w, "size", size);
    wire_kv_bin(&w, "data", buf, n);
    free(buf);
    front_send(call, id, &w);
}

/* Whether the sender of administrative request `t` (doc) may make it: an admin key's;
 * a worker key's for register and artifact_get; any key's for status. *who: its key
 * (key_id "" without keys, --insecure-local). */
static int front_admin_allowed(gw_front *f, wire_doc *doc, const char *t, gw_key_info *who,
                               aicfn_error *err) {
    char tenant[AICFN_TENANT_MAX_BYTES + 1];
    gw_key_role role = GW_KEY_TENANT;
    memset(who, 0, sizeof *who);
    int rc = front_auth_check(f, doc, tenant, &role, who, err);
    if (rc != AICFN_OK || role == GW_KEY_ADMIN || strcmp(t, "status") == 0) return rc;
    if (role == GW_KEY_WORKER && (strcmp(t, "register") == 0 || strcmp(t, "artifact_get") == 0)) return rc;
    if (role == GW_KEY_WORKER)
        return aicfn_error_set(
            err, AICFN_E_FORBIDDEN,
            "'%s' needs an admin key (a worker key registers a worker and fetches artifacts)", t);
    return aicfn_error_set(err, AICFN_E_FORBIDDEN, "'%s' needs an admin key", t);
}

static void front_admin_op(gw_front *f, rpc_call *call, wire_doc *doc, const wire_header *h, uint64_t now) {
    aicfn_error e;
    aicfn_error_clear(&e);
    gw_gateway *gw = f->gw;
    const msgpack_object *root = &doc->root;
    uint64_t id = h->id;
    gw_key_info who;
    int rc = front_admin_allowed(f, doc, h->t, &who, &e); /* again: a key may be revoked meanwhile */
    if (rc != AICFN_OK) {
        front_error(call, id, rc, e.msg);
        return;
    }
    front_uploads_expire(f, now, false);
    front_uploads_check_keys(f, clock_now_us());
    wire_writer w;

    if (strcmp(h->t, "upload_begin") == 0) {
        const char *hash = NULL;
        uint64_t size = 0;
        rc = wire_get_cstr(doc, root, NULL, "hash", true, GW_HASH_HEX_LEN, &hash, &e);
        if (rc == AICFN_OK) rc = wire_get_u64(root, NULL, "size", true, &size, &e);
        /* Before the slots: a request that can never succeed is not told to try again. */
        if (rc == AICFN_OK) rc = gw_upload_check(hash, size, &e);
        front_upload *slot = NULL;
        for (int i = 0; rc == AICFN_OK && i < FRONT_MAX_UPLOADS && !slot; i++)
            if (!f->uploads[i].u) slot = &f->uploads[i];
        gw_upload *u = NULL;
        bool exists = false;
        uint64_t stored = 0;
        /* A file already stored needs no slot: "exists" even while every slot is taken. */
        if (rc == AICFN_OK && !slot && gw_artifacts_exists(gw_gateway_artifacts(gw), hash, &stored) &&
            stored == size)
            exists = true;
        else if (rc == AICFN_OK && !slot)
            rc = aicfn_error_set(&e, AICFN_E_OVERLOADED, "%d uploads already open", FRONT_MAX_UPLOADS);
        if (rc == AICFN_OK && !exists) {
            rc = gw_upload_begin(gw_gateway_artifacts(gw), hash, size, &u, &e);
            if (rc == AICFN_E_EXISTS) {
                exists = true;
                rc = AICFN_OK;
            }
        }
        if (rc != AICFN_OK) {
            front_error(call, id, rc, e.msg);
            return;
        }
        if (exists) front_committed_rearm(f, hash, now); /* a deploy naming it may be coming */
        uint64_t token = 0;
        if (u) {
            token = ++f->next_token;
            slot->u = u;
            slot->token = token;
            slot->last_us = now;
            snprintf(slot->hash, sizeof slot->hash, "%s", hash);
            slot->owned = !gw_insecure_local(gw) && front_key_digest(doc, slot->owner);
            snprintf(slot->owner_id, sizeof slot->owner_id, "%s", slot->owned ? who.key_id : "");
        }
        wire_writer_init(&w);
        front_ok_head(&w, id, 2);
        wire_kv_u64(&w, "upload", token);
        wire_kv_bool(&w, "exists", exists);
        front_send(call, id, &w);
        return;
    }
    if (strcmp(h->t, "upload_chunk") == 0 || strcmp(h->t, "upload_commit") == 0 ||
        strcmp(h->t, "upload_abort") == 0) {
        uint64_t token = 0;
        rc = wire_get_u64(root, NULL, "upload", true, &token, &e);
        front_upload *up = rc == AICFN_OK ? front_upload_find(f, token) : NULL;
        if (rc == AICFN_OK && !up)
            rc = aicfn_error_set(&e, AICFN_E_NOT_FOUND, "no open upload %llu", (unsigned long long)token);
        if (rc == AICFN_OK && !front_upload_owner_sent(up, doc))
            rc = aicfn_error_set(&e, AICFN_E_FORBIDDEN, "upload %llu was begun with another key",
                                 (unsigned long long)token);
        if (rc != AICFN_OK) {
            front_error(call, id, rc, e.msg);
            return;
        }
        up->last_us = now;
        if (strcmp(h->t, "upload_chunk") == 0) {
            uint64_t offset = 0;
            const uint8_t *data = NULL;
            size_t len = 0;
            rc = wire_get_u64(root, NULL, "offset", true, &offset, &e);
            if (rc == AICFN_OK) rc = wire_get_bin(root, NULL, "data", true, &data, &len, &e);
            if (rc == AICFN_OK) rc = gw_upload_write(up->u, offset, data, len, &e);
            if (rc != AICFN_OK) {
                front_error(call, id, rc, e.msg);
                return;
            }
            wire_writer_init(&w);
            front_ok_head(&w, id, 1);
            wire_kv_u64(&w, "received", gw_upload_received(up->u));
            front_send(call, id, &w);
            return;
        }
        gw_upload *u = up->u;
        up->u = NULL;
        if (strcmp(h->t, "upload_abort") == 0) {
            gw_upload_abort(u);
        } else {
            char hash[GW_HASH_HEX_LEN + 1];
            snprintf(hash, sizeof hash, "%s", up->hash);
            rc = gw_upload_commit(u, &e);
            if (rc != AICFN_OK) {
                front_error(call, id, rc, e.msg);
                return;
            }
            front_committed_watch(f, hash, clock_now_us());
        }
        wire_writer_init(&w);
        front_ok_head(&w, id, 0);
        front_send(call, id, &w);
        return;
    }
    if (strcmp(h->t, "deploy") == 0) {
        const char *name = NULL, *handler = NULL, *snapshot = NULL, *config = NULL, *deploy_id = NULL;
        uint64_t handler_bytes = 0, snapshot_bytes = 0, raw = 0;
        rc = wire_get_cstr(doc, root, NULL, "name", true, AICFN_FN_NAME_MAX_BYTES, &name, &e);
        if (rc == AICFN_OK)
            rc = wire_get_cstr(doc, root, NULL, "handler", true, GW_HASH_HEX_LEN, &handler, &e);
        if (rc == AICFN_OK)
            rc = wire_get_cstr(doc, root, NULL, "snapshot", false, GW_HASH_HEX_LEN, &snapshot, &e);
        /* The config fits the admin bound with 64 KiB left for the rest of the message. */
        if (rc == AICFN_OK)
            rc = wire_get_cstr(doc, root, NULL, "config", false, AICFN_GW_ADMIN_MAX_BYTES - (64u << 10),
                               &config, &e);
        if (rc == AICFN_OK) rc = wire_get_u64(root, NULL, "model_raw_bytes", false, &raw, &e);
        if (rc == AICFN_OK)
            rc = wire_get_cstr(doc, root, NULL, "deploy_id", false, GW_DEPLOY_ID_MAX, &deploy_id, &e);
        bool activate = true;
        if (rc == AICFN_OK) rc = wire_get_bool(root, NULL, "activate", false, &activate, &e);
        gw_artifacts *art = gw_gateway_artifacts(gw);
        if (rc == AICFN_OK &&
            (!gw_hash_hex_valid(handler) || (snapshot && snapshot[0] && !gw_hash_hex_valid(snapshot))))
            rc =
                aicfn_error_set(&e, AICFN_E_INVALID, "artifact hashes are 64 lowercase hex digits (SHA-256)");
        if (rc == AICFN_OK && !gw_artifacts_exists(art, handler, &handler_bytes))
            rc = aicfn_error_set(&e, AICFN_E_NOT_FOUND, "handler artifact %s was not uploaded", handler);
        if (rc == AICFN_OK && snapshot && snapshot[0] && !gw_artifacts_exists(art, snapshot, &snapshot_bytes))
            rc = aicfn_error_set(&e, AICFN_E_NOT_FOUND, "snapshot artifact %s was not uploaded", snapshot);
        gw_fn_config cfg;
        gw_fn_config_init(&cfg);
        if (rc == AICFN_OK && config) rc = gw_fn_config_from_string(config, &cfg, &e);
        gw_fn_config_clear(&cfg);
        uint32_t version = 0;
        bool existing = false;
        if (rc == AICFN_OK) {
            gw_function_spec spec = {.name = name,
                                     .handler_hash = handler,
                                     .handler_bytes = handler_bytes,
                                     .snapshot_hash = snapshot && snapshot[0] ? snapshot : NULL,
                                     .snapshot_bytes = snapshot_bytes,
                                     .model_raw_bytes = raw,
                                     .config_json = config,
                                     .deploy_id = deploy_id,
                                     .inactive = !activate};
            rc = gw_registry_deploy(gw_gateway_db(gw), &spec, &version, &existing, &e);
        }
        if (rc != AICFN_OK) {
            front_error(call, id, rc, e.msg);
            return;
        }
        if (existing) {
            log_info("deploy %s of %s: already made %s:%u, nothing changed", deploy_id, name, name, version);
        } else {
            gw_functions_changed(gw);
            log_info("deployed %s:%u%s (handler %.12s, snapshot %.12s)", name, version,
                     activate ? "" : ", not active", handler, snapshot ? snapshot : "-");
        }
        wire_writer_init(&w);
        front_ok_head(&w, id, 3);
        wire_kv_str(&w, "name", name);
        wire_kv_u64(&w, "version", version);
        wire_kv_bool(&w, "existing", existing);
        front_send(call, id, &w);
        return;
    }
    if (strcmp(h->t, "ls") == 0) {
        gw_function_summary *s = NULL;
        size_t n = 0;
        rc = gw_registry_list(gw_gateway_db(gw), &s, &n, &e);
        if (rc != AICFN_OK) {
            front_error(call, id, rc, e.msg);
            return;
        }
        front_ok_json(call, id, gw_function_summaries_to_json(s, n));
        free(s);
        return;
    }
    if (strcmp(h->t, "rm") == 0) {
        const char *ref = NULL;
        rc = wire_get_cstr(doc, root, NULL, "ref", true, AICFN_FN_NAME_MAX_BYTES + 12, &ref, &e);
        uint32_t removed = 0;
        char(*orphans)[GW_HASH_HEX_LEN + 1] = NULL;
        size_t n_orphans = 0;
        if (rc == AICFN_OK)
            rc = gw_registry_remove(gw_gateway_db(gw), ref, &removed, &orphans, &n_orphans, &e);
        if (rc != AICFN_OK) {
            front_error(call, id, rc, e.msg);
            return;
        }
        gw_functions_changed(gw);
        char name[AICFN_FN_NAME_MAX_BYTES + 1];
        uint32_t ver = 0;
        if (gw_fn_ref_parse(ref, name, &ver, NULL) == AICFN_OK) gw_functions_removed(gw, name, ver);
        /* Artifacts no version references any more are deleted. Workers that hold the
         * handler or the snapshot open keep their copy (unlink leaves open files alone);
         * a call to the removed version that has not loaded its model yet fails with
         * AICFN_E_NOT_FOUND. Deploys run on this same thread and check that their
         * artifacts exist, so none can register a file deleted here (`aicfn deploy`
         * uploads again when that check fails). */
        for (size_t i = 0; i < n_orphans; i++) {
            aicfn_error ge;
            if (gw_artifacts_remove(gw_gateway_artifacts(gw), orphans[i], &ge) != AICFN_OK)
                log_warn("rm %s: artifact %.12s left on disk: %s", ref, orphans[i], ge.msg);
        }
        if (n_orphans) log_info("rm %s: deleted %zu unreferenced artifacts", ref, n_orphans);
        free(orphans);
        log_info("removed %s (%u versions)", ref, removed);
        wire_writer_init(&w);
        front_ok_head(&w, id, 1);
        wire_kv_u64(&w, "removed", removed);
        front_send(call, id, &w);
        return;
    }
    if (strcmp(h->t, "activate") == 0) {
        /* Rollback (or roll forward): NAME:VER takes the traffic of NAME, nothing removed. */
        const char *ref = NULL;
        rc = wire_get_cstr(doc, root, NULL, "ref", true, AICFN_FN_NAME_MAX_BYTES + 12, &ref, &e);
        char name[AICFN_FN_NAME_MAX_BYTES + 1];
        uint32_t version = 0;
        if (rc == AICFN_OK) rc = gw_fn_ref_parse(ref, name, &version, &e);
        if (rc == AICFN_OK && version == 0)
            rc = aicfn_error_set(&e, AICFN_E_INVALID, "activate needs NAME:VER, got '%s'", ref);
        /* With `canary`: only that share of NAME's calls goes to it (0: the canary ends). */
        uint32_t canary = UINT32_MAX;
        if (rc == AICFN_OK) rc = wire_get_u32(root, NULL, "canary", false, &canary, &e);
        if (rc == AICFN_OK)
            rc = canary == UINT32_MAX ? gw_registry_activate(gw_gateway_db(gw), name, version, &e)
                                      : gw_registry_set_canary(gw_gateway_db(gw), name, version, canary, &e);
        if (rc != AICFN_OK) {
            front_error(call, id, rc, e.msg);
            return;
        }
        gw_functions_changed(gw);
        if (canary == UINT32_MAX)
            log_info("activated %s:%u", name, version);
        else if (canary)
            log_info("canary: %u%% of %s's calls go to %s:%u", canary, name, name, version);
        else
            log_info("canary of %s ended", name);
        wire_writer_init(&w);
        front_ok_head(&w, id, canary == UINT32_MAX ? 2 : 3);
        wire_kv_str(&w, "name", name);
        wire_kv_u64(&w, "version", version);
        if (canary != UINT32_MAX) wire_kv_u64(&w, "canary", canary);
        front_send(call, id, &w);
        return;
    }
    if (strcmp(h->t, "coldstarts") == 0) {
        const char *fn = NULL;
        uint64_t since = 0;
        rc = wire_get_cstr(doc, root, NULL, "fn", false, AICFN_FN_NAME_MAX_BYTES, &fn, &e);
        if (rc == AICFN_OK) rc = wire_get_u64(root, NULL, "since_us", false, &since, &e);
        /* What was recorded before it, if the database keeps up: a stalled one (disk full,
         * long lock) leaves the rows committed so far, rather than holding the admin thread
         * (deploys, uploads, registrations) and answering nothing. */
        aicfn_error fe;
        if (rc == AICFN_OK &&
            gw_ledger_flush(gw_gateway_ledger(gw), AICFN_GW_COLDSTARTS_FLUSH_MS, &fe) != AICFN_OK)
            log_warn("coldstarts: answered without the records still queued (%s)", fe.msg);
        gw_coldstart_summary *s = NULL;
        size_t n = 0;
        if (rc == AICFN_OK)
            rc = gw_ledger_coldstarts(gw_gateway_query_db(gw), fn && fn[0] ? fn : NULL, since, &s, &n, &e);
        if (rc != AICFN_OK) {
            front_error(call, id, rc, e.msg);
            return;
        }
        front_ok_json(call, id, gw_coldstarts_to_json(s, n));
        free(s);
        return;
    }
    if (strcmp(h->t, "workers") == 0) {
        front_ok_json(call, id, gw_workers_json(gw));
        return;
    }
    if (strcmp(h->t, "artifact_get") == 0) {
        front_artifact_get(f, call, doc, id);
        return;
    }
    if (strcmp(h->t, "register") == 0) {
        const char *addr = NULL, *name = NULL, *ctl = NULL;
        rc = wire_get_cstr(doc, root, NULL, "addr", true, 255, &addr, &e);
        /* Read up to the name limit of the wire; gw_register_worker refuses one over 63
         * characters as AICFN_E_INVALID, as it does other bad names. */
        if (rc == AICFN_OK) rc = wire_get_cstr(doc, root, NULL, "name", false, AICFN_MAX_NAME_BYTES, &name, &e);
        if (rc == AICFN_OK)
            rc = wire_get_cstr(doc, root, NULL, "ctl", false, AICFN_WORKER_EXIT_TOKEN_MAX, &ctl, &e);
        if (rc == AICFN_OK) rc = gw_register_worker(gw, name, addr, ctl && ctl[0] ? ctl : NULL, &e);
        if (rc != AICFN_OK) {
            front_error(call, id, rc, e.msg);
            return;
        }
        wire_writer_init(&w);
        front_ok_head(&w, id, 0);
        front_send(call, id, &w);
        return;
    }
    front_error(call, id, AICFN_E_PROTOCOL, "unknown message type");
}

static void *front_admin_main(void *arg) {
    pthread_setname_np(pthread_self(), "aicfn:admin");
    gw_front *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->jobs_head && !f->stopping) {
            /* Idle: sleep until a message comes or an open upload is due to expire (the
             * uploads are this thread's; with nothing queued, none has a chunk coming). */
            uint64_t due = front_uploads_next_expiry(f);
            if (due == UINT64_MAX) {
                pthread_cond_wait(&f->cv, &f->mu);
                continue;
            }
            uint64_t now = clock_now_us();
            if (now <= due) {
                struct timespec ts;
                clock_deadline_to_timespec(due + 1, &ts);
                pthread_cond_timedwait(&f->cv, &f->mu, &ts);
                continue;
            }
            pthread_mutex_unlock(&f->mu);
            front_uploads_expire(f, now, false); /* removes files: not under the lock */
            front_uploads_check_keys(f, now);
            front_committed_sweep(f, now);
            pthread_mutex_lock(&f->mu);
        }
        if (!f->jobs_head && f->stopping) break;
        front_admin_job *j = f->jobs_head;
        f->jobs_head = j->next;
        if (!f->jobs_head) f->jobs_tail = NULL;
        f->n_jobs--;
        pthread_mutex_unlock(&f->mu);
        wire_doc doc;
        wire_header h;
        aicfn_error e;
        int rc = wire_doc_parse(&doc, j->msg, j->len, NULL, &e);
        if (rc == AICFN_OK) rc = wire_decode_header(&doc, &h, &e);
        if (rc == AICFN_OK)
            front_admin_op(f, j->call, &doc, &h, j->arrived_us);
        else
            front_error(j->call, wire_peek_id(j->msg, j->len), rc, e.msg);
        wire_doc_fini(&doc);
        free(j);
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    front_uploads_expire(f, UINT64_MAX, true);
    return NULL;
}

/* ---- The REP handler ---------------------------------------------------------------- */

static void front_handler(void *user, rpc_call *call, const uint8_t *msg, size_t len) {
    gw_front *f = user;
    wire_doc doc;
    wire_header h;
    aicfn_error e;
    int rc = wire_doc_parse(&doc, msg, len, NULL, &e);
    if (rc == AICFN_OK) rc = wire_decode_header(&doc, &h, &e);
    if (rc != AICFN_OK) {
        wire_doc_fini(&doc);
        front_error(call, wire_peek_id(msg, len), rc, e.msg);
        return;
    }
    if (strcmp(h.t, WIRE_T_INVOKE) == 0) {
        /* Past the front's bound, refused at once: a request waiting in NNG for a context
         * would have no deadline, and would hold up the administrative ones behind it. */
        unsigned held;
        uint64_t held_bytes;
        rpc_call_server_load(call, &held, &held_bytes);
        if (held > f->max_invocations || held_bytes > AICFN_GW_FRONT_MAX_HELD_BYTES) {
            wire_doc_fini(&doc);
            front_error(call, h.id, AICFN_E_OVERLOADED,
                        held > f->max_invocations
                            ? "the gateway holds as many requests as it takes: try again"
                            : "the gateway holds as many request bytes as it takes: try again");
            return;
        }
        front_invoke(f, call, &doc, h.id);
        wire_doc_fini(&doc);
        return;
    }
    /* Administrative requests wait for the one admin thread, their bytes held meanwhile:
     * only an authorized sender's get there, and only small ones (an upload chunk's
     * size is the chunk's). A flood from anyone else is refused here, at once. */
    size_t most = strcmp(h.t, "upload_chunk") == 0
                      ? (size_t)AICFN_UPLOAD_CHUNK_BYTES + AICFN_GW_ADMIN_MAX_BYTES
                      : AICFN_GW_ADMIN_MAX_BYTES;
    gw_key_info who;
    rc = len > most ? aicfn_error_set(&e, AICFN_E_TOO_LARGE, "'%.32s' request of %zu bytes (at most %zu)",
                                      h.t, len, most)
                    : front_admin_allowed(f, &doc, h.t, &who, &e);
    wire_doc_fini(&doc);
    if (rc != AICFN_OK) {
        front_error(call, h.id, rc, e.msg);
        return;
    }
    if (strcmp(h.t, "status") == 0) {
        /* Any key may ask, and the answer is a few counters read under the lock: answered
         * here, never queued for the admin thread, where a tenant polling it could fill
         * the queue that remote workers' artifact_get and deploys wait in. */
        front_ok_json(call, h.id, gw_status_json(f->gw));
        return;
    }
    front_admin_job *j = malloc(sizeof *j);
    if (!j) {
        front_error(call, h.id, AICFN_E_NOMEM, "out of memory");
        return;
    }
    j->call = call;
    j->msg = msg;
    j->len = len;
    j->arrived_us = clock_now_us();
    j->next = NULL;
    pthread_mutex_lock(&f->mu);
    if (f->stopping || f->n_jobs >= FRONT_ADMIN_QUEUE) {
        bool stopping = f->stopping;
        pthread_mutex_unlock(&f->mu);
        free(j);
        front_error(call, h.id, stopping ? AICFN_E_UNAVAILABLE : AICFN_E_OVERLOADED,
                    stopping ? "the gateway is stopping" : "too many administrative requests queued");
        return;
    }
    if (f->jobs_tail)
        f->jobs_tail->next = j;
    else
        f->jobs_head = j;
    f->jobs_tail = j;
    f->n_jobs++;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

int gw_front_start(gw_gateway *gw, const char *url, unsigned max_requests, gw_front **out, aicfn_error *err) {
    *out = NULL;
    if (max_requests == 0) max_requests = AICFN_GW_FRONT_MAX_REQUESTS;
    if (max_requests < 16)
        return aicfn_error_set(err, AICFN_E_INVALID, "max_requests %u: at least 16", max_requests);
    gw_front *f = calloc(1, sizeof *f);
    if (!f) return aicfn_error_set(err, AICFN_E_NOMEM, "out of memory");
    f->gw = gw;
    unsigned kept = max_requests / 4 < 32 ? max_requests / 4 : 32;
    f->max_invocations = max_requests - kept;
    f->upload_idle_us = gw_upload_idle_us(gw);
    int krc = gw_key_cache_create(&f->keys, err);
    if (krc != AICFN_OK) {
        free(f);
        return krc;
    }
    randombytes_buf(&f->next_token, sizeof f->next_token); /* libsodium: initialized above */
    f->next_token = (f->next_token & ((1ull << 52) - 1)) | (1ull << 40);
    pthread_mutex_init(&f->mu, NULL);
    clock_cond_init(&f->cv);
    if (pthread_create(&f->admin, NULL, front_admin_main, f) != 0) {
        gw_front_stop(f);
        return aicfn_error_set(err, AICFN_E_IO, "starting the admin thread");
    }
    f->admin_started = true;
    rpc_server_opts o = {
        .recv_max = AICFN_MAX_MESSAGE_BYTES, .contexts = max_requests, .reply_timeout_ms = AICFN_GW_REPLY_TIMEOUT_MS};
    int rc = rpc_server_start(&f->srv, url, &o, front_handler, f, err);
    if (rc != AICFN_OK) {
        aicfn_error_wrap(err, "gateway front on %s", url);
        gw_front_stop(f);
        return rc;
    }
    *out = f;
    return AICFN_OK;
}

void gw_front_stop(gw_front *f) {
    if (!f) return;
    /* Close the socket first: rpc_server_destroy waits for every call to be answered,
     * which the admin thread and the call path keep doing meanwhile. */
    rpc_server *srv = f->srv;
    f->srv = NULL;
    pthread_mutex_lock(&f->mu);
    bool admin = f->admin_started;
    pthread_mutex_unlock(&f->mu);
    if (srv) {
        /* Stop taking admin jobs only after the server is gone, so queued ones finish. */
        rpc_server_destroy(srv);
    }
    pthread_mutex_lock(&f->mu);
    f->stopping = true;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (admin) pthread_join(f->admin, NULL);
    pthread_mutex_destroy(&f->mu);
    gw_key_cache_destroy(f->keys);
    pthread_cond_destroy(&f->cv);
    free(f);
}
