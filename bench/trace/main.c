/* bench/trace: replays a Zipf(1.1) request trace over 50 models of mixed sizes (1 to 64
 * MiB, bf16 with N(0, 0.02) weights, packed once into bench/.cache/trace/) through the
 * real model cache, pipeline and host device, with a budget for roughly 10 of them.
 * Prints the hit ratio, bytes loaded, evictions and thrash reloads, and checks them
 * against an offline LRU simulation of the same trace with the same (device-charged)
 * sizes: the two hit ratios must match exactly (the replay is sequential).
 * Usage: zig build bench-trace -Doptimize=ReleaseFast -- [--requests N] [--seed S]
 * Output: JSON lines, the last {"bench": "trace", "summary": {...}}. Exit 1 on mismatch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"
#include "loader/cache.h"
#include "loader/device.h"
#include "loader/pipeline.h"
#include "snapshots/safetensors.h"
#include "snapshots/snapshot.h"
#include "snapshots/writer.h"

#define N_MODELS 50
#define DIR "bench/.cache/trace"

static uint64_t rng_s = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void) {
    rng_s ^= rng_s << 13;
    rng_s ^= rng_s >> 7;
    rng_s ^= rng_s << 17;
    return rng_s;
}
static double unif(void) {
    return ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
}

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && st.st_size > 0;
}

/* Writes and packs model i of `bytes` raw bytes (one or a few bf16 tensors). */
static int make_model(int i, uint64_t bytes, const char *snap) {
    char st[256];
    snprintf(st, sizeof st, DIR "/m%02d.safetensors", i);
    uint64_t elems = bytes / 2;
    int64_t cols = 1024;
    int64_t rows = (int64_t)(elems / (uint64_t)cols);
    if (rows < 1) rows = 1;
    uint16_t *data = malloc((size_t)rows * (size_t)cols * 2);
    if (!data) return -1;
    for (int64_t k = 0; k < rows * cols; k += 2) {
        double u1 = unif(), u2 = unif();
        double m = sqrt(-2.0 * log(u1)) * 0.02;
        float a = (float)(m * cos(6.283185307179586 * u2)), b = (float)(m * sin(6.283185307179586 * u2));
        uint32_t ba, bb;
        memcpy(&ba, &a, 4);
        memcpy(&bb, &b, 4);
        data[k] = (uint16_t)(ba >> 16);
        if (k + 1 < rows * cols) data[k + 1] = (uint16_t)(bb >> 16);
    }
    int64_t shape[2] = {rows, cols};
    char name[32];
    snprintf(name, sizeof name, "w%02d", i);
    snap_st_out_tensor t = {.name = name,
                            .dtype = AICFN_DTYPE_BF16,
                            .ndim = 2,
                            .shape = shape,
                            .data = data,
                            .nbytes = (uint64_t)rows * (uint64_t)cols * 2};
    aicfn_error err;
    int rc = snap_st_write(st, &t, 1, &err);
    free(data);
    if (rc != AICFN_OK) {
        fprintf(stderr, "bench-trace: %s\n", err.msg);
        return -1;
    }
    snap_pack_opts o;
    snap_pack_opts_init(&o);
    const char *in[] = {st};
    rc = snap_pack(in, 1, snap, &o, NULL, &err);
    unlink(st);
    if (rc != AICFN_OK) {
        fprintf(stderr, "bench-trace: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    int requests = 2000;
    uint64_t seed = 42;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--requests") == 0 && i + 1 < argc)
            requests = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
    }
    if (requests < 1) requests = 1;
    mkdir("bench/.cache", 0755);
    mkdir(DIR, 0755);
    /* Sizes: log-uniform in [1, 64] MiB, fixed by the model seed (not the trace seed). */
    char paths[N_MODELS][64];
    uint64_t raw[N_MODELS];
    uint64_t gen_t0 = clock_now_us();
    int generated = 0;
    for (int i = 0; i < N_MODELS; i++) { /* all sizes first: generation draws from the same rng */
        double mib = exp(unif() * log(64.0));
        raw[i] = ((uint64_t)(mib * 1048576.0) / 2048) * 2048;
        if (raw[i] < 2048) raw[i] = 2048;
        snprintf(paths[i], sizeof paths[i], DIR "/m%02d-%llu.aicsnap", i, (unsigned long long)raw[i]);
    }
    for (int i = 0; i < N_MODELS; i++) {
        snap_reader *probe = NULL;
        if (exists(paths[i]) && snap_open(paths[i], &probe, NULL) == AICFN_OK) { /* else stale or partial */
            snap_close(probe);
            continue;
        }
        if (make_model(i, raw[i], paths[i]) != 0) return 1;
        generated++;
    }
    if (generated)
        fprintf(stderr, "bench-trace: generated %d snapshots in %.1f s\n", generated,
                (double)(clock_now_us() - gen_t0) / 1e6);

    aicfn_error err;
    loader_device *dev;
    /* Device-charged sizes (what the cache will charge) from the manifests. */
    uint64_t charged[N_MODELS], total = 0;
    if (loader_device_host_open(8ull << 30, &dev, &err) != AICFN_OK) return 1;
    for (int i = 0; i < N_MODELS; i++) {
        snap_reader *r;
        if (snap_open(paths[i], &r, &err) != AICFN_OK) {
            fprintf(stderr, "bench-trace: %s\n", err.msg);
            return 1;
        }
        charged[i] = loader_device_alloc_size(dev, snap_reader_manifest(r)->blob_bytes);
        total += charged[i];
        snap_close(r);
    }
    uint64_t budget = total / N_MODELS * 10;
    uint64_t mn = UINT64_MAX, mx = 0;
    for (int i = 0; i < N_MODELS; i++) {
        if (charged[i] < mn) mn = charged[i];
        if (charged[i] > mx) mx = charged[i];
    }

    /* The trace: Zipf(1.1) over ranks; ranks mapped to models by a seeded shuffle. */
    rng_s = seed * 0x9e3779b97f4a7c15ull + 1;
    int perm[N_MODELS];
    for (int i = 0; i < N_MODELS; i++)
        perm[i] = i;
    for (int i = N_MODELS - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint64_t)(i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    double cdf[N_MODELS], z = 0;
    for (int k = 0; k < N_MODELS; k++)
        z += 1.0 / pow(k + 1, 1.1);
    for (int k = 0; k < N_MODELS; k++) {
        cdf[k] = (k ? cdf[k - 1] : 0) + 1.0 / pow(k + 1, 1.1) / z;
    }
    int *trace = malloc((size_t)requests * sizeof *trace);
    if (!trace) return 1;
    for (int q = 0; q < requests; q++) {
        double u = unif();
        int k = 0;
        while (k < N_MODELS - 1 && u > cdf[k])
            k++;
        trace[q] = perm[k];
    }

    /* Offline LRU simulation. */
    uint64_t sim_hits = 0, sim_evictions = 0, sim_bytes = 0, sim_used = 0;
    uint64_t last[N_MODELS];
    int res[N_MODELS];
    memset(res, 0, sizeof res);
    memset(last, 0, sizeof last);
    for (int q = 0; q < requests; q++) {
        int m = trace[q];
        if (res[m]) {
            sim_hits++;
        } else {
            while (sim_used + charged[m] > budget) {
                int v = -1;
                for (int i = 0; i < N_MODELS; i++)
                    if (res[i] && (v < 0 || last[i] < last[v])) v = i;
                res[v] = 0;
                sim_used -= charged[v];
                sim_evictions++;
            }
            res[m] = 1;
            sim_used += charged[m];
            sim_bytes += charged[m];
        }
        last[m] = (uint64_t)q + 1;
    }

    /* Replay through the real cache. */
    loader_pipeline_source src = {.device = dev, .threads = 0};
    loader_cache_config cfg = {.budget_bytes = budget, .ops = &loader_pipeline_cache_ops, .ops_arg = &src};
    loader_cache *c;
    if (loader_cache_create(&cfg, &c, &err) != AICFN_OK) return 1;
    uint64_t hits = 0, load_us = 0, loads = 0, hit_us_max = 0, thrash = 0, evictions = 0;
    uint64_t t0 = clock_now_us();
    for (int q = 0; q < requests; q++) {
        char key[16];
        snprintf(key, sizeof key, "m%02d", trace[q]);
        loader_cache_entry *e;
        loader_acquire_info info;
        if (loader_cache_acquire(c, key, paths[trace[q]], 0, &e, &info, &err) != AICFN_OK) {
            fprintf(stderr, "bench-trace: request %d (%s): %s\n", q, key, err.msg);
            return 1;
        }
        loader_cache_release(c, e);
        if (info.cold) {
            loads++;
            load_us += info.timing.total_us;
            thrash += (uint64_t)info.thrash;
            evictions += info.n_evictions;
        } else {
            hits++;
            if (info.wait_us > hit_us_max) hit_us_max = info.wait_us;
        }
    }
    uint64_t wall = clock_now_us() - t0;
    loader_cache_counters k;
    loader_cache_get_counters(c, &k);
    loader_cache_status st;
    loader_cache_get_status(c, &st, NULL, 0);
    double hr = (double)hits / requests, sim_hr = (double)sim_hits / requests;
    int match = hits == sim_hits && k.evictions == sim_evictions && k.bytes_loaded == sim_bytes;
    printf("{\"bench\":\"trace\",\"models\":%d,\"requests\":%d,\"zipf_s\":1.1,\"budget_bytes\":%llu,"
           "\"all_models_bytes\":%llu,\"min_model_bytes\":%llu,\"max_model_bytes\":%llu}\n",
           N_MODELS, requests, (unsigned long long)budget, (unsigned long long)total, (unsigned long long)mn,
           (unsigned long long)mx);
    printf("{\"bench\":\"trace\",\"measure\":\"cache\",\"hit_ratio\":%.4f,\"hits\":%llu,\"loads\":%llu,"
           "\"bytes_loaded\":%llu,\"evictions\":%llu,\"thrash_reloads\":%llu,\"wall_s\":%.2f,"
           "\"mean_load_ms\":%.2f,\"max_hit_us\":%llu,\"load_gb_s\":%.3f}\n",
           hr, (unsigned long long)hits, (unsigned long long)loads, (unsigned long long)k.bytes_loaded,
           (unsigned long long)k.evictions, (unsigned long long)k.thrash_reloads, (double)wall / 1e6,
           loads ? (double)load_us / (double)loads / 1e3 : 0.0, (unsigned long long)hit_us_max,
           load_us ? (double)k.bytes_loaded / (double)load_us / 1e3 : 0.0);
    printf("{\"bench\":\"trace\",\"measure\":\"lru_simulation\",\"hit_ratio\":%.4f,\"hits\":%llu,"
           "\"bytes_loaded\":%llu,\"evictions\":%llu}\n",
           sim_hr, (unsigned long long)sim_hits, (unsigned long long)sim_bytes,
           (unsigned long long)sim_evictions);
    printf("{\"bench\":\"trace\",\"summary\":{\"hit_ratio\":%.4f,\"lru_sim_hit_ratio\":%.4f,"
           "\"ratio_vs_lru_sim\":%.4f,\"match\":%s,\"bytes_loaded\":%llu,\"evictions\":%llu,"
           "\"thrash_reloads\":%llu,\"used_bytes\":%llu,\"budget_bytes\":%llu,\"requests\":%d,\"wall_s\":%."
           "2f}}\n",
           hr, sim_hr, sim_hr > 0 ? hr / sim_hr : 0.0, match ? "true" : "false",
           (unsigned long long)k.bytes_loaded, (unsigned long long)k.evictions,
           (unsigned long long)k.thrash_reloads, (unsigned long long)st.used_bytes,
           (unsigned long long)budget, requests, (double)wall / 1e6);
    (void)thrash;
    (void)evictions;
    loader_cache_destroy(c);
    loader_device_close(dev);
    free(trace);
    if (!match) {
        fprintf(stderr, "bench-trace: cache (%llu hits, %llu evictions) != LRU simulation (%llu, %llu)\n",
                (unsigned long long)hits, (unsigned long long)k.evictions, (unsigned long long)sim_hits,
                (unsigned long long)sim_evictions);
        return 1;
    }
    return 0;
}
