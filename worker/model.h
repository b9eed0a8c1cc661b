/* model.h: how the worker loads models into its cache: load ops for loader_cache that
 * run the snapshot pipeline and describe each resident model to handlers as an
 * aicfn_model (named tensors with device pointers, memory kind and device id).
 *
 * Each load gets a fresh generation number, unique for the process, so the worker can
 * tell a model that became resident again (new device pointers) from the one a
 * handler instance was initialised with, even if the allocator reuses an address.
 * Not for: choosing what stays resident (loader/cache.c) or running handlers (host.c). */
#ifndef AICFN_WORKER_MODEL_H
#define AICFN_WORKER_MODEL_H

#include <stdint.h>

#include "aicfn.h"
#include "loader/cache.h"

/* A resident model as the worker's load ops return it (loader_cache_entry_model). */
typedef struct worker_model {
    uint64_t generation;   /* > 0, unique per load in this process */
    void *loaded;          /* the loader_model */
    aicfn_model view;      /* what handlers see; tensors point into the device blob */
    aicfn_tensor *tensors; /* view.tensors, owned */
} worker_model;

/* The argument the ops need: the device, the pipeline's thread count, and the optional
 * hook that maps a snapshot path to a local file first (loader_resolve_fn, pipeline.h:
 * a remote worker downloads the snapshot from its gateway there; its time is the
 * load's fetch_us, counted in total_us and logged). */
typedef struct worker_model_ops_arg {
    loader_device *device;
    uint32_t load_threads;     /* 0 = loader_default_threads() */
    loader_resolve_fn resolve; /* NULL: snapshot paths are local files */
    void *resolve_arg;
} worker_model_ops_arg;

/* Load ops for loader_cache_config.ops (ops_arg = a worker_model_ops_arg that outlives
 * the cache): prepare opens the snapshot and reserves alloc_size(blob_bytes); load runs
 * the pipeline; unload frees the device memory and the view. Thread-safe. */
extern const loader_cache_load_ops worker_model_ops;

#endif
