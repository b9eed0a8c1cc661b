/* bench_snapshot.c: `zig build bench-snapshot -Doptimize=ReleaseFast`: snapshot ratio,
 * decode and pack speed on real weights, against zstd measured in the same run.
 *
 * Data: all-MiniLM-L6-v2 (FP32) and the same tensors in BF16, prepared by
 * bench/setup_data.sh in bench/.cache (run here when missing). For each data set:
 *   - baseline: the concatenated tensor bytes compressed by the zstd CLI, `zstd -3`
 *     (ratio), and decompressed by `zstd -d -c > /dev/null` (timed around the process,
 *     single-threaded) and by libzstd single-shot (ZSTD_decompress, in process);
 *   - ours: `snap_pack` with default settings and 2 threads (pack MB/s), the snapshot's
 *     ratio (whole file), and decode (read + decompress + unfilter into one blob) with 1
 *     and 2 threads, in GB/s of raw bytes. Every decode is checked against the XXH3s.
 * Timings are the best of several runs (the machine is shared). JSON lines on stdout; the
 * last is {"bench":"snapshot","summary":{...}}.
 * Usage: bench-snapshot [--runs N] [FP32.safetensors BF16.safetensors] */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "common/clock.h"
#include "snapshots/safetensors.h"
#include "snapshots/snapshot.h"
#include "snapshots/writer.h"

typedef struct bs_result {
    const char *name;
    uint64_t raw_bytes;
    double zstd3_ratio, ratio, zstd_cli_dec_gbps, libzstd_dec_gbps, dec1_gbps, dec2_gbps, pack_mbps;
    double zstd3_comp_mbps;
} bs_result;

static double bs_now(void) {
    return (double)clock_now_us() / 1e6;
}

static int bs_run(const char *cmd) {
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "bench-snapshot: '%s' exited with %d\n", cmd, rc);
    return rc;
}

static uint64_t bs_file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* ---- Threaded decode through the reader API ---------------------------------------------- */

typedef struct bs_dec {
    const snap_reader *r;
    unsigned char *blob;
    atomic_uint next;
    atomic_int failed;
} bs_dec;

static void *bs_dec_worker(void *arg) {
    bs_dec *d = arg;
    snap_dctx *z;
    aicfn_error err;
    if (snap_dctx_create(&z, &err)) {
        atomic_store(&d->failed, 1);
        return NULL;
    }
    const snap_manifest *m = snap_reader_manifest(d->r);
    size_t cap = snap_reader_max_comp_size(d->r);
    unsigned char *comp = malloc(cap + 1), *filt = malloc(m->chunk_bytes);
    for (;;) {
        unsigned i = atomic_fetch_add(&d->next, 1);
        if (i >= snap_reader_frame_count(d->r) || !comp || !filt) break;
        const snap_frame *f = snap_reader_frame(d->r, i);
        int filtered = snap_frame_is_filtered(d->r, i);
        unsigned char *dst = d->blob + f->raw_offset;
        if (snap_frame_read(d->r, i, comp, cap, &err) ||
            snap_frame_decompress(z, d->r, i, comp, filtered ? filt : dst, &err) ||
            (filtered && snap_frame_unfilter(d->r, i, filt, dst, &err))) {
            fprintf(stderr, "bench-snapshot: %s\n", err.msg);
            atomic_store(&d->failed, 1);
            break;
        }
    }
    free(comp);
    free(filt);
    snap_dctx_free(z);
    return NULL;
}

/* Decodes the whole snapshot with `threads` threads; returns seconds, or -1. */
static double bs_decode(const snap_reader *r, unsigned char *blob, unsigned threads) {
    bs_dec d = {.r = r, .blob = blob};
    atomic_init(&d.next, 0);
    atomic_init(&d.failed, 0);
    pthread_t th[8];
    double t0 = bs_now();
    for (unsigned i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, bs_dec_worker, &d);
    for (unsigned i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double t = bs_now() - t0;
    if (atomic_load(&d.failed)) return -1;
    aicfn_error err;
    for (uint32_t t2 = 0; t2 < snap_reader_manifest(r)->n_tensors; t2++)
        if (snap_tensor_verify(r, t2, blob, &err)) {
            fprintf(stderr, "bench-snapshot: %s\n", err.msg);
            return -1;
        }
    return t;
}

static int bs_dataset(const char *name, const char *path, int runs, const char *tmpdir, bs_result *res) {
    memset(res, 0, sizeof *res);
    res->name = name;
    aicfn_error err;
    snap_st_set *set;
    if (snap_st_open(&path, 1, &set, &err)) {
        fprintf(stderr, "bench-snapshot: %s\n", err.msg);
        return -1;
    }
    /* The raw bytes: every tensor, concatenated in file order. */
    uint64_t raw_n = snap_st_total_bytes(set);
    unsigned char *raw = malloc(raw_n + 1);
    uint64_t at = 0;
    for (uint32_t i = 0; i < snap_st_count(set); i++) {
        const snap_st_tensor *t = snap_st_tensor_at(set, i);
        if (snap_st_read(set, i, 0, raw + at, t->nbytes, &err)) {
            fprintf(stderr, "bench-snapshot: %s\n", err.msg);
            return -1;
        }
        at += t->nbytes;
    }
    res->raw_bytes = raw_n;
    char rawp[512], zp[512], snapp[512], cmd[2048];
    snprintf(rawp, sizeof rawp, "%s/%s.raw", tmpdir, name);
    snprintf(zp, sizeof zp, "%s/%s.raw.zst", tmpdir, name);
    snprintf(snapp, sizeof snapp, "%s/%s.aicsnap", tmpdir, name);
    FILE *f = fopen(rawp, "wb");
    if (!f || fwrite(raw, 1, raw_n, f) != raw_n || fclose(f) != 0) return -1;

    /* Baseline: zstd -3 by the CLI (ratio, compression speed), then its decode speed. */
    double best = 1e9;
    for (int k = 0; k < runs; k++) {
        snprintf(cmd, sizeof cmd, "zstd -q -f -3 -T1 '%s' -o '%s'", rawp, zp);
        double t0 = bs_now();
        if (bs_run(cmd)) return -1;
        double t = bs_now() - t0;
        if (t < best) best = t;
    }
    res->zstd3_comp_mbps = (double)raw_n / best / 1e6;
    uint64_t zn = bs_file_size(zp);
    res->zstd3_ratio = (double)raw_n / (double)zn;
    best = 1e9;
    for (int k = 0; k < runs; k++) {
        snprintf(cmd, sizeof cmd, "zstd -q -d -c '%s' > /dev/null", zp);
        double t0 = bs_now();
        if (bs_run(cmd)) return -1;
        double t = bs_now() - t0;
        if (t < best) best = t;
    }
    res->zstd_cli_dec_gbps = (double)raw_n / best / 1e9;
    /* libzstd single-shot decode of the same stream, in process. */
    unsigned char *zbuf = malloc(zn + 1), *out = malloc(raw_n + 1);
    f = fopen(zp, "rb");
    if (!f || fread(zbuf, 1, zn, f) != zn) return -1;
    fclose(f);
    ZSTD_DCtx *dz = ZSTD_createDCtx();
    best = 1e9;
    for (int k = 0; k < runs; k++) {
        double t0 = bs_now();
        size_t r = ZSTD_decompressDCtx(dz, out, raw_n, zbuf, zn);
        double t = bs_now() - t0;
        if (ZSTD_isError(r) || r != raw_n || memcmp(out, raw, raw_n)) return -1;
        if (t < best) best = t;
    }
    res->libzstd_dec_gbps = (double)raw_n / best / 1e9;
    ZSTD_freeDCtx(dz);
    free(zbuf);
    free(out);

    /* Ours: pack with 2 threads at the defaults. */
    snap_pack_opts o;
    snap_pack_opts_init(&o);
    o.threads = 2;
    o.name = name;
    snap_pack_stats st;
    best = 1e9;
    for (int k = 0; k < runs; k++) {
        double t0 = bs_now();
        if (snap_pack_set(set, snapp, &o, &st, &err)) {
            fprintf(stderr, "bench-snapshot: %s\n", err.msg);
            return -1;
        }
        double t = bs_now() - t0;
        if (t < best) best = t;
    }
    res->pack_mbps = (double)raw_n / best / 1e6;
    res->ratio = (double)raw_n / (double)st.file_bytes;

    snap_reader *r;
    if (snap_open(snapp, &r, &err)) {
        fprintf(stderr, "bench-snapshot: %s\n", err.msg);
        return -1;
    }
    unsigned char *blob = malloc(snap_reader_manifest(r)->blob_bytes + 1);
    for (unsigned threads = 1; threads <= 2; threads++) {
        best = 1e9;
        for (int k = 0; k < runs + 2; k++) {
            double t = bs_decode(r, blob, threads);
            if (t < 0) return -1;
            if (t < best) best = t;
        }
        double gbps = (double)raw_n / best / 1e9;
        if (threads == 1)
            res->dec1_gbps = gbps;
        else
            res->dec2_gbps = gbps;
    }
    printf("{\"bench\":\"snapshot\",\"data\":\"%s\",\"tensors\":%u,\"filtered\":%u,\"raw_bytes\":%llu,"
           "\"snapshot_bytes\":%llu,\"zstd3_bytes\":%llu,\"ratio\":%.4f,\"zstd3_ratio\":%.4f,"
           "\"share_pct\":%.2f,\"zstd3_share_pct\":%.2f,\"share_gain_pp\":%.2f,"
           "\"decode_gbps_1t\":%.3f,\"decode_gbps_2t\":%.3f,\"zstd_cli_decode_gbps\":%.3f,"
           "\"libzstd_decode_gbps\":%.3f,\"pack_mbps_2t\":%.1f,\"zstd3_cli_compress_mbps\":%.1f}\n",
           name, st.n_tensors, st.n_filtered, (unsigned long long)raw_n, (unsigned long long)st.file_bytes,
           (unsigned long long)zn, res->ratio, res->zstd3_ratio, 100.0 / res->ratio, 100.0 / res->zstd3_ratio,
           100.0 / res->zstd3_ratio - 100.0 / res->ratio, res->dec1_gbps, res->dec2_gbps,
           res->zstd_cli_dec_gbps, res->libzstd_dec_gbps, res->pack_mbps, res->zstd3_comp_mbps);
    fflush(stdout);
    free(blob);
    snap_close(r);
    snap_st_close(set);
    free(raw);
    unlink(rawp);
    unlink(zp);
    unlink(snapp);
    return 0;
}

int main(int argc, char **argv) {
    int runs = 3;
    const char *paths[2] = {"bench/.cache/minilm/model.safetensors",
                            "bench/.cache/minilm-bf16/model.safetensors"};
    int np = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (np < 2)
            paths[np++] = argv[i];
    }
    if (runs < 1) runs = 1;
#ifndef __OPTIMIZE__
    fprintf(stderr,
            "bench-snapshot: built without optimization; use -Doptimize=ReleaseFast for real figures\n");
#endif
    if (np == 0 && (access(paths[0], R_OK) != 0 || access(paths[1], R_OK) != 0) &&
        bs_run("bash bench/setup_data.sh") != 0)
        return 1;
    char tmpdir[] = "/tmp/aicfn-bench-snap-XXXXXX";
    if (!mkdtemp(tmpdir)) return 1;
    bs_result res[2];
    const char *names[2] = {"minilm-fp32", "minilm-bf16"};
    int rc = 0;
    for (int i = 0; i < 2 && !rc; i++)
        rc = bs_dataset(names[i], paths[i], runs, tmpdir, &res[i]);
    rmdir(tmpdir);
    if (rc) return 1;
    printf("{\"bench\":\"snapshot\",\"summary\":{"
           "\"fp32_ratio_vs_zstd3\":%.4f,\"bf16_ratio_vs_zstd3\":%.4f,\"bf16_share_gain_pp\":%.2f,"
           "\"fp32_share_gain_pp\":%.2f,"
           "\"fp32_decode_1t_vs_zstd_cli\":%.3f,\"bf16_decode_1t_vs_zstd_cli\":%.3f,"
           "\"fp32_decode_2t_vs_zstd_cli\":%.3f,\"bf16_decode_2t_vs_zstd_cli\":%.3f,"
           "\"fp32_decode_1t_vs_libzstd\":%.3f,\"bf16_decode_1t_vs_libzstd\":%.3f,"
           "\"fp32_pack_2t_vs_zstd3_cli\":%.3f,\"bf16_pack_2t_vs_zstd3_cli\":%.3f,"
           "\"fp32_pack_mbps_2t\":%.1f,\"bf16_pack_mbps_2t\":%.1f,\"pack_target_mbps\":100}}\n",
           res[0].ratio / res[0].zstd3_ratio, res[1].ratio / res[1].zstd3_ratio,
           100.0 / res[1].zstd3_ratio - 100.0 / res[1].ratio,
           100.0 / res[0].zstd3_ratio - 100.0 / res[0].ratio, res[0].dec1_gbps / res[0].zstd_cli_dec_gbps,
           res[1].dec1_gbps / res[1].zstd_cli_dec_gbps, res[0].dec2_gbps / res[0].zstd_cli_dec_gbps,
           res[1].dec2_gbps / res[1].zstd_cli_dec_gbps, res[0].dec1_gbps / res[0].libzstd_dec_gbps,
           res[1].dec1_gbps / res[1].libzstd_dec_gbps, res[0].pack_mbps / res[0].zstd3_comp_mbps,
           res[1].pack_mbps / res[1].zstd3_comp_mbps, res[0].pack_mbps, res[1].pack_mbps);
    return 0;
}
