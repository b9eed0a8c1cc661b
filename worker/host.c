/* host.c: dlopen of handler libraries with the ABI check, the instance lifecycle, the
 * helper table handed to handlers, and the response records behind it.
 * Not for: scheduling (batcher.c) or the wire (server.c). */
#include "worker/host.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/log.h"
#include "common/tunables.h"

struct worker_handler {
    void *dl;
    char *path;
    uint32_t abi;
    aicfn_fn_init_t init;
    aicfn_fn_invoke_t invoke;
    aicfn_fn_fini_t fini;
};

struct worker_instance {
    worker_handler *h;
    const aicfn_model *model;
    void *state;
    char *function;
    aicfn_param *params;
    uint32_t n_params;
    aicfn_fn_config config;
};

struct aicfn_response {
    uint64_t max_bytes;
    uint64_t used_bytes;
    uint32_t n_out;
    aicfn_tensor out[AICFN_MAX_TENSORS]; /* the handler writes these (through alloc_output) */
    struct {                             /* ... and never these: what alloc_output gave out */
        char *name;
        void *data;
        uint64_t nbytes;
    } alloc[AICFN_MAX_TENSORS];
    int code;
    char msg[AICFN_ERRMSG_MAX];
};

/* The function whose handler code runs on this thread, for log lines. */
static _Thread_local const char *host_current_fn;

/* ---- responses ---- */

aicfn_response *worker_response_create(uint64_t max_bytes) {
    aicfn_response *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->max_bytes = max_bytes ? max_bytes : AICFN_MAX_MESSAGE_BYTES;
    return r;
}

static void host_free_outputs(aicfn_response *r) {
    for (uint32_t i = 0; i < r->n_out; i++) { /* from the record: out[] may hold anything */
        free(r->alloc[i].name);
        free(r->alloc[i].data);
    }
    memset(r->out, 0, sizeof r->out);
    memset(r->alloc, 0, sizeof r->alloc);
    r->n_out = 0;
    r->used_bytes = 0;
}

void worker_response_reset(aicfn_response *r) {
    if (r == NULL) return;
    host_free_outputs(r);
    r->code = AICFN_OK;
    r->msg[0] = '\0';
}

void worker_response_destroy(aicfn_response *r) {
    if (r == NULL) return;
    host_free_outputs(r);
    free(r);
}

int worker_response_status(const aicfn_response *r, const char **msg) {
    if (msg) *msg = r->msg;
    return r->code;
}

/* Marks r failed. Its outputs are not freed here: the handler may still hold and write
 * them (it only learns of a failed alloc_output from the NULL it returns); they are not
 * sent (worker_response_n_outputs) and are freed with the response. */
static int host_vfail(aicfn_response *r, int code, const char *fmt, va_list ap) {
    if (r == NULL) return code;
    if (code == AICFN_OK || code < 0 || code >= AICFN_STATUS_COUNT) code = AICFN_E_HANDLER;
    r->code = code;
    vsnprintf(r->msg, sizeof r->msg, fmt ? fmt : "", ap);
    return code;
}

int worker_response_fail(aicfn_response *r, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = host_vfail(r, code, fmt, ap);
    va_end(ap);
    return rc;
}

uint32_t worker_response_n_outputs(const aicfn_response *r) {
    return r->code == AICFN_OK ? r->n_out : 0;
}
const aicfn_tensor *worker_response_outputs(const aicfn_response *r) {
    return r->out;
}
uint64_t worker_response_output_bytes(const aicfn_response *r) {
    return r->used_bytes;
}

/* ---- tensor checks ---- */

int worker_tensor_check(const aicfn_tensor *t, aicfn_error *err) {
    const char *name = t->name ? t->name : "?";
    if (t->dtype <= AICFN_DTYPE_INVALID || t->dtype >= AICFN_DTYPE_COUNT)
        return aicfn_error_set(err, AICFN_E_INVALID, "tensor '%s': unknown dtype %d", name, (int)t->dtype);
    if (t->ndim > AICFN_MAX_DIMS)
        return aicfn_error_set(err, AICFN_E_INVALID, "tensor '%s': %u dims, at most %d", name, t->ndim,
                               AICFN_MAX_DIMS);
    uint64_t elems;
    if (dtype_shape_elements(t->shape, t->ndim, &elems) != 0)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "tensor '%s': negative dimension or element count overflows", name);
    if (t->nbytes > 0 && t->data == NULL)
        return aicfn_error_set(err, AICFN_E_INVALID, "tensor '%s': no data", name);
    if (t->dtype != AICFN_DTYPE_BYTES) {
        uint64_t want;
        if (dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &want) != 0)
            return aicfn_error_set(err, AICFN_E_INVALID, "tensor '%s': size overflows", name);
        if (want != t->nbytes)
            return aicfn_error_set(
                err, AICFN_E_INVALID, "tensor '%s': dtype %s and shape give %llu bytes but the data has %llu",
                name, dtype_name(t->dtype), (unsigned long long)want, (unsigned long long)t->nbytes);
        return AICFN_OK;
    }
    /* BYTES: elems × (u32 LE length, bytes), exactly filling nbytes. */
    const unsigned char *p = t->data;
    uint64_t off = 0;
    for (uint64_t i = 0; i < elems; i++) {
        if (t->nbytes - off < 4)
            return aicfn_error_set(
                err, AICFN_E_INVALID,
                "tensor '%s': BYTES element %llu of %llu: length prefix runs past %llu bytes", name,
                (unsigned long long)i, (unsigned long long)elems, (unsigned long long)t->nbytes);
        uint32_t len = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
                       (uint32_t)p[off + 3] << 24;
        off += 4;
        if (len > t->nbytes - off)
            return aicfn_error_set(
                err, AICFN_E_INVALID,
                "tensor '%s': BYTES element %llu has length %u past the end (offset %llu of %llu)", name,
                (unsigned long long)i, len, (unsigned long long)off, (unsigned long long)t->nbytes);
        off += len;
    }
    if (off != t->nbytes)
        return aicfn_error_set(
            err, AICFN_E_INVALID, "tensor '%s': %llu BYTES elements use %llu bytes but the data has %llu",
            name, (unsigned long long)elems, (unsigned long long)off, (unsigned long long)t->nbytes);
    return AICFN_OK;
}

/* ---- the helper table ---- */

static const aicfn_tensor *host_find_input(const aicfn_request *req, const char *name) {
    if (req == NULL || name == NULL) return NULL;
    for (uint32_t i = 0; i < req->n_inputs; i++)
        if (req->inputs[i].name && strcmp(req->inputs[i].name, name) == 0) return &req->inputs[i];
    return NULL;
}

static const char *host_find_param(const aicfn_param *params, uint32_t n, const char *key) {
    if (params == NULL || key == NULL) return NULL;
    for (uint32_t i = 0; i < n; i++)
        if (params[i].key && strcmp(params[i].key, key) == 0) return params[i].value;
    return NULL;
}

static aicfn_tensor *host_alloc_output(aicfn_response *r, const char *name, aicfn_dtype dtype, uint32_t ndim,
                                       const int64_t *shape, uint64_t nbytes) {
    if (r == NULL) return NULL;
    if (r->code != AICFN_OK) return NULL; /* already failed: nothing more will be sent */
    if (name == NULL || name[0] == '\0' || strnlen(name, AICFN_MAX_NAME_BYTES + 1) > AICFN_MAX_NAME_BYTES) {
        worker_response_fail(r, AICFN_E_INVALID, "alloc_output: the name is empty or longer than %d bytes",
                             AICFN_MAX_NAME_BYTES);
        return NULL;
    }
    if (dtype <= AICFN_DTYPE_INVALID || dtype >= AICFN_DTYPE_COUNT || ndim > AICFN_MAX_DIMS ||
        (ndim > 0 && shape == NULL)) {
        worker_response_fail(r, AICFN_E_INVALID, "alloc_output '%s': bad dtype %d or %u dims", name,
                             (int)dtype, ndim);
        return NULL;
    }
    for (uint32_t i = 0; i < r->n_out; i++)
        if (strcmp(r->alloc[i].name, name) == 0) { /* the record: out[] is the handler's to write */
            worker_response_fail(r, AICFN_E_INVALID, "alloc_output '%s': an output of that name exists",
                                 name);
            return NULL;
        }
    if (r->n_out >= AICFN_MAX_TENSORS) {
        worker_response_fail(r, AICFN_E_TOO_LARGE, "alloc_output '%s': more than %d outputs", name,
                             AICFN_MAX_TENSORS);
        return NULL;
    }
    uint64_t elems;
    if (dtype_shape_elements(shape, ndim, &elems) != 0) {
        worker_response_fail(r, AICFN_E_INVALID, "alloc_output '%s': negative dimension or overflow", name);
        return NULL;
    }
    if (dtype != AICFN_DTYPE_BYTES) {
        uint64_t want;
        if (dtype_tensor_bytes(dtype, shape, ndim, &want) != 0 || (nbytes != 0 && nbytes != want)) {
            worker_response_fail(r, AICFN_E_INVALID,
                                 "alloc_output '%s': nbytes %llu does not match %s × shape", name,
                                 (unsigned long long)nbytes, dtype_name(dtype));
            return NULL;
        }
        nbytes = want;
    } else if (elems > 0 && nbytes / 4 < elems) {
        worker_response_fail(r, AICFN_E_INVALID,
                             "alloc_output '%s': %llu BYTES elements need at least %llu bytes", name,
                             (unsigned long long)elems, (unsigned long long)(elems * 4));
        return NULL;
    }
    if (nbytes > r->max_bytes || r->used_bytes + nbytes > r->max_bytes) {
        worker_response_fail(r, AICFN_E_TOO_LARGE,
                             "alloc_output '%s': %llu bytes exceed the reply limit of %llu", name,
                             (unsigned long long)nbytes, (unsigned long long)r->max_bytes);
        return NULL;
    }
    char *nm = strdup(name);
    void *data = calloc(1, nbytes ? (size_t)nbytes : 1);
    if (nm == NULL || data == NULL) {
        free(nm);
        free(data);
        worker_response_fail(r, AICFN_E_NOMEM, "alloc_output '%s': out of host memory for %llu bytes", name,
                             (unsigned long long)nbytes);
        return NULL;
    }
    r->alloc[r->n_out].name = nm;
    r->alloc[r->n_out].data = data;
    r->alloc[r->n_out].nbytes = nbytes;
    aicfn_tensor *t = &r->out[r->n_out++];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->dtype = dtype;
    t->ndim = ndim;
    for (uint32_t i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = nbytes;
    t->mem = AICFN_MEM_HOST;
    t->device_id = -1;
    r->used_bytes += nbytes;
    return t;
}

static int host_set_error(aicfn_response *r, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = host_vfail(r, code, fmt, ap);
    va_end(ap);
    return rc;
}

static void host_log(aicfn_log_level level, const char *fmt, ...) {
    log_level lv = level <= AICFN_LOG_ERROR  ? LOG_ERROR
                   : level == AICFN_LOG_WARN ? LOG_WARN
                   : level == AICFN_LOG_INFO ? LOG_INFO
                                             : LOG_DEBUG;
    if (!log_enabled(lv) || fmt == NULL) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_write(lv, "fn %s: %s", host_current_fn ? host_current_fn : "?", line);
}

static const aicfn_host_api host_api = {
    .abi_version = AICFN_ABI_ENCODE(AICFN_ABI_MAJOR, AICFN_ABI_MINOR),
    .struct_size = sizeof(aicfn_host_api),
    .find_input = host_find_input,
    .find_param = host_find_param,
    .alloc_output = host_alloc_output,
    .set_error = host_set_error,
    .log = host_log,
};

const aicfn_host_api *worker_host_api(void) {
    return &host_api;
}

/* ---- handler libraries ---- */

int worker_handler_open(const char *path, worker_handler **out, aicfn_error *err) {
    *out = NULL;
    if (path == NULL || path[0] == '\0') return aicfn_error_set(err, AICFN_E_INVALID, "no handler path");
    if (access(path, R_OK) != 0)
        return aicfn_error_errno(err, errno == ENOENT ? AICFN_E_NOT_FOUND : AICFN_E_IO, errno, "handler %s",
                                 path);
    /* dlopen needs a slash to avoid searching LD_LIBRARY_PATH for a relative name. */
    char buf[4096];
    const char *p = path;
    if (strchr(path, '/') == NULL) {
        snprintf(buf, sizeof buf, "./%s", path);
        p = buf;
    }
    dlerror();
    void *dl = dlopen(p, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        const char *e = dlerror();
        return aicfn_error_set(err, AICFN_E_ABI, "handler %s: cannot load: %s", path,
                               e ? e : "unknown dlopen error");
    }
    const char *missing = NULL;
    aicfn_fn_abi_version_t ver = (aicfn_fn_abi_version_t)dlsym(dl, AICFN_FN_SYM_ABI_VERSION);
    if (ver == NULL) missing = AICFN_FN_SYM_ABI_VERSION " (define it with AICFN_FN_DECLARE_ABI())";
    aicfn_fn_invoke_t inv = (aicfn_fn_invoke_t)dlsym(dl, AICFN_FN_SYM_INVOKE);
    if (missing == NULL && inv == NULL) missing = AICFN_FN_SYM_INVOKE;
    if (missing) {
        dlclose(dl);
        return aicfn_error_set(err, AICFN_E_ABI, "handler %s: missing required symbol %s", path, missing);
    }
    uint32_t v = ver();
    uint32_t mine = AICFN_ABI_ENCODE(AICFN_ABI_MAJOR, AICFN_ABI_MINOR);
    if (AICFN_ABI_MAJOR_OF(v) != AICFN_ABI_MAJOR || AICFN_ABI_MINOR_OF(v) > AICFN_ABI_MINOR) {
        dlclose(dl);
        return aicfn_error_set(
            err, AICFN_E_ABI,
            "handler %s was built for function ABI %u.%u but this worker implements ABI %u.%u (%s)", path,
            AICFN_ABI_MAJOR_OF(v), AICFN_ABI_MINOR_OF(v), AICFN_ABI_MAJOR_OF(mine), AICFN_ABI_MINOR_OF(mine),
            AICFN_ABI_MAJOR_OF(v) != AICFN_ABI_MAJOR ? "major versions differ"
                                                     : "its minor version is newer");
    }
    worker_handler *h = calloc(1, sizeof *h);
    if (h == NULL || (h->path = strdup(path)) == NULL) {
        free(h);
        dlclose(dl);
        return aicfn_error_set(err, AICFN_E_NOMEM, "handler %s: out of memory", path);
    }
    h->dl = dl;
    h->abi = v;
    h->invoke = inv;
    h->init = (aicfn_fn_init_t)dlsym(dl, AICFN_FN_SYM_INIT);
    h->fini = (aicfn_fn_fini_t)dlsym(dl, AICFN_FN_SYM_FINI);
    *out = h;
    return AICFN_OK;
}

void worker_handler_close(worker_handler *h) {
    if (h == NULL) return;
    dlclose(h->dl);
    free(h->path);
    free(h);
}

const char *worker_handler_path(const worker_handler *h) {
    return h->path;
}
uint32_t worker_handler_abi_version(const worker_handler *h) {
    return h->abi;
}

/* ---- instances ---- */

static void host_instance_free(worker_instance *inst) {
    for (uint32_t i = 0; i < inst->n_params; i++) {
        free((char *)inst->params[i].key);
        free((char *)inst->params[i].value);
    }
    free(inst->params);
    free(inst->function);
    free(inst);
}

int worker_instance_create(worker_handler *h, const aicfn_model *model, const aicfn_fn_config *config,
                           worker_instance **out, aicfn_error *err) {
    *out = NULL;
    if (h == NULL || config == NULL || config->function == NULL || (config->n_params && !config->params))
        return aicfn_error_set(err, AICFN_E_INVALID, "worker_instance_create: bad arguments");
    worker_instance *inst = calloc(1, sizeof *inst);
    if (inst == NULL)
        return aicfn_error_set(err, AICFN_E_NOMEM, "instance of %s: out of memory", config->function);
    inst->h = h;
    inst->model = model;
    inst->function = strdup(config->function);
    inst->params = config->n_params ? calloc(config->n_params, sizeof *inst->params) : NULL;
    int oom = inst->function == NULL || (config->n_params && inst->params == NULL);
    if (!oom) {
        for (uint32_t i = 0; i < config->n_params; i++) {
            inst->params[i].key = strdup(config->params[i].key ? config->params[i].key : "");
            inst->params[i].value = strdup(config->params[i].value ? config->params[i].value : "");
            inst->n_params = i + 1;
            if (!inst->params[i].key || !inst->params[i].value) {
                oom = 1;
                break;
            }
        }
    }
    if (oom) {
        host_instance_free(inst);
        return aicfn_error_set(err, AICFN_E_NOMEM, "instance of %s: out of memory", config->function);
    }
    inst->config = *config;
    inst->config.function = inst->function;
    inst->config.params = inst->params;
    inst->config.n_params = inst->n_params;
    if (inst->config.max_batch == 0) inst->config.max_batch = 1;
    if (h->init) {
        const char *prev = host_current_fn;
        host_current_fn = inst->function;
        void *state = NULL;
        int rc = h->init(&host_api, model, &inst->config, &state);
        host_current_fn = prev;
        if (rc != AICFN_OK) {
            int code = (rc > 0 && rc < AICFN_STATUS_COUNT) ? rc : AICFN_E_HANDLER;
            aicfn_error_set(err, code, "function %s: handler %s: init failed with %s (%d)", inst->function,
                            h->path, aicfn_status_name(code), rc);
            host_instance_free(inst);
            return code;
        }
        inst->state = state;
    }
    *out = inst;
    return AICFN_OK;
}

void worker_instance_destroy(worker_instance *inst) {
    if (inst == NULL) return;
    if (inst->h->fini) {
        const char *prev = host_current_fn;
        host_current_fn = inst->function;
        inst->h->fini(&host_api, inst->state);
        host_current_fn = prev;
    }
    host_instance_free(inst);
}

const aicfn_model *worker_instance_model(const worker_instance *inst) {
    return inst->model;
}

int worker_instance_invoke(worker_instance *inst, const aicfn_request *reqs, aicfn_response *const *resps,
                           uint32_t n, aicfn_error *err) {
    if (inst == NULL || reqs == NULL || resps == NULL || n == 0 || n > inst->config.max_batch)
        return aicfn_error_set(err, AICFN_E_INVALID, "invoke: bad batch (n=%u, max_batch=%u)", n,
                               inst ? inst->config.max_batch : 0);
    const char *prev = host_current_fn;
    host_current_fn = inst->function;
    int rc = inst->h->invoke(&host_api, inst->state, inst->model, reqs, resps, n);
    host_current_fn = prev;
    int code = rc == AICFN_OK ? AICFN_OK : ((rc > 0 && rc < AICFN_STATUS_COUNT) ? rc : AICFN_E_HANDLER);
    for (uint32_t i = 0; i < n; i++) {
        aicfn_response *r = resps[i];
        if (r->code != AICFN_OK) continue;
        if (code != AICFN_OK) {
            worker_response_fail(r, code, "function %s: handler returned %s (%d)", inst->function,
                                 aicfn_status_name(code), rc);
            continue;
        }
        /* The handler wrote the outputs (the BYTES framing included) and may have changed
         * their dtype, shape or nbytes: check them all, so a handler's bug is reported as
         * AICFN_E_HANDLER, not as a bad request by the encoder; and against what it was
         * given, so the reply never reads past a buffer or a pointer the worker did not
         * allocate (a reshape within the buffer, or a BYTES output shrunk to what it
         * filled, is fine). */
        uint64_t used = 0;
        for (uint32_t k = 0; k < r->n_out; k++) {
            aicfn_error e;
            const aicfn_tensor *t = &r->out[k];
            int rc = AICFN_OK;
            if (t->data != r->alloc[k].data || t->name != r->alloc[k].name || t->mem != AICFN_MEM_HOST)
                rc = aicfn_error_set(&e, AICFN_E_HANDLER,
                                     "output %u ('%s'): its data, name or memory kind is not what "
                                     "alloc_output returned",
                                     k, r->alloc[k].name);
            /* The size first: the check of a BYTES output walks its data up to nbytes. */
            if (rc == AICFN_OK && t->nbytes > r->alloc[k].nbytes)
                rc = aicfn_error_set(
                    &e, AICFN_E_HANDLER, "tensor '%s': %llu bytes, more than the %llu alloc_output gave it",
                    r->alloc[k].name, (unsigned long long)t->nbytes, (unsigned long long)r->alloc[k].nbytes);
            if (rc == AICFN_OK) rc = worker_tensor_check(t, &e);
            if (rc != AICFN_OK) {
                worker_response_fail(r, AICFN_E_HANDLER, "function %s: malformed output: %s", inst->function,
                                     e.msg);
                break;
            }
            used += t->nbytes;
        }
        if (r->code == AICFN_OK) r->used_bytes = used;
    }
    return AICFN_OK;
}
