/* model.c: the worker's cache load ops (snapshot pipeline + an aicfn_model view with a
 * generation number). See model.h. Not for: eviction policy or handler calls. */
#include "worker/model.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "loader/pipeline.h"
#include "snapshots/snapshot.h"

static atomic_uint_fast64_t model_next_generation = 1;

/* The device id in a device name such as "cuda:1" (0 for "cuda"), -1 for host. */
static int32_t model_device_id(loader_device *dev) {
    if (loader_device_is_host(dev)) return -1;
    const char *n = loader_device_name(dev);
    const char *colon = n ? strrchr(n, ':') : NULL;
    return colon ? (int32_t)strtol(colon + 1, NULL, 10) : 0;
}

typedef struct model_prep {
    snap_reader *reader;
    uint64_t open_us;
    uint64_t fetch_us;
} model_prep;

static int model_prepare(void *arg, const char *key, const char *path, void **prep, uint64_t *bytes,
                         aicfn_error *err) {
    worker_model_ops_arg *a = arg;
    *prep = NULL;
    model_prep *p = calloc(1, sizeof *p);
    if (p == NULL) return aicfn_error_set(err, AICFN_E_NOMEM, "model %s: out of memory", key);
    char local[PATH_MAX];
    if (a->resolve) {
        uint64_t tf = clock_now_us();
        int rc = a->resolve(a->resolve_arg, path, local, sizeof local, err);
        if (rc != AICFN_OK) {
            free(p);
            return aicfn_error_wrap(err, "model %s", key);
        }
        p->fetch_us = clock_now_us() - tf;
        if (strcmp(local, path) != 0)
            log_info("model %s: snapshot ready at %s after %llu ms", key, local,
                     (unsigned long long)(p->fetch_us / 1000));
        path = local;
    }
    uint64_t t0 = clock_now_us();
    int rc = snap_open(path, &p->reader, err);
    if (rc != AICFN_OK) {
        free(p);
        return aicfn_error_wrap(err, "model %s", key);
    }
    p->open_us = clock_now_us() - t0;
    *bytes = loader_manifest_device_bytes(a->device, snap_reader_manifest(p->reader));
    *prep = p;
    return AICFN_OK;
}

static void model_abort(void *arg, void *prep) {
    (void)arg;
    model_prep *p = prep;
    if (p == NULL) return;
    snap_close(p->reader);
    free(p);
}

static int model_load(void *arg, void *prep, uint64_t max_bytes, void **model, uint64_t *alloc_bytes,
                      loader_timing *timing, aicfn_error *err) {
    worker_model_ops_arg *a = arg;
    model_prep *p = prep;
    *model = NULL;
    loader_load_opts opts = {.threads = a->load_threads, .max_bytes = max_bytes, .skip_verify = 0};
    loader_model *lm = NULL;
    loader_timing t;
    memset(&t, 0, sizeof t);
    int rc = loader_load_reader(a->device, p->reader, &opts, &lm, &t, err);
    uint64_t open_us = p->open_us, fetch_us = p->fetch_us;
    model_abort(arg, p);
    if (rc != AICFN_OK) return rc;
    t.open_us += open_us;
    t.fetch_us = fetch_us;
    t.total_us += open_us + fetch_us; /* prepare's fetch and open count in the cold start */
    const snap_manifest *man = loader_model_manifest(lm);
    worker_model *m = calloc(1, sizeof *m);
    aicfn_tensor *ts = calloc(man->n_tensors ? man->n_tensors : 1, sizeof *ts);
    if (m == NULL || ts == NULL) {
        free(m);
        free(ts);
        /* The message first: man belongs to lm. */
        aicfn_error_set(err, AICFN_E_NOMEM, "model %s: out of memory for %u tensor views",
                        man->model_name ? man->model_name : "?", man->n_tensors);
        loader_model_free(lm);
        return AICFN_E_NOMEM;
    }
    aicfn_mem_kind mem = loader_device_is_host(a->device) ? AICFN_MEM_HOST : AICFN_MEM_DEVICE;
    int32_t dev_id = model_device_id(a->device);
    for (uint32_t i = 0; i < man->n_tensors; i++) {
        const snap_tensor *st = &man->tensors[i];
        ts[i].name = st->name;
        ts[i].dtype = st->dtype;
        ts[i].ndim = st->ndim;
        for (uint32_t d = 0; d < st->ndim && d < AICFN_MAX_DIMS; d++)
            ts[i].shape[d] = st->shape[d];
        ts[i].data = loader_model_tensor_ptr(lm, i);
        ts[i].nbytes = st->nbytes;
        ts[i].mem = mem;
        ts[i].device_id = dev_id;
    }
    m->generation = atomic_fetch_add(&model_next_generation, 1);
    m->loaded = lm;
    m->tensors = ts;
    m->view.name = man->model_name ? man->model_name : "";
    m->view.n_tensors = man->n_tensors;
    m->view.tensors = ts;
    m->view.mem = mem;
    m->view.device_id = dev_id;
    m->view.bytes = loader_model_alloc_bytes(lm);
    *alloc_bytes = loader_model_alloc_bytes(lm);
    if (timing) *timing = t;
    *model = m;
    return AICFN_OK;
}

static void model_unload(void *arg, void *model) {
    (void)arg;
    worker_model *m = model;
    if (m == NULL) return;
    loader_model_free(m->loaded);
    free(m->tensors);
    free(m);
}

const loader_cache_load_ops worker_model_ops = {
    .prepare = model_prepare,
    .load = model_load,
    .abort = model_abort,
    .unload = model_unload,
};
