/* cmd_snapshot.c: `aicfn snapshot pack|inspect|verify|unpack`, a thin layer over
 * snapshots/ (writer.h, snapshot.h, safetensors.h).
 * Not for: the format itself; every check lives in snapshots/. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "cli/cli.h"
#include "common/dtype.h"
#include "common/tunables.h"
#include "common/units.h"
#include "snapshots/filter.h"
#include "snapshots/format.h"
#include "snapshots/safetensors.h"
#include "snapshots/snapshot.h"
#include "snapshots/unpack.h"
#include "snapshots/writer.h"

#define SNAPCLI_PROGRESS_MIN (64ull << 20) /* show progress for inputs at least this large */

static void snapcli_help(FILE *o) {
    fprintf(o, "usage: aicfn snapshot pack IN... -o OUT.aicsnap [--name N] [--level L] [--chunk BYTES]\n"
               "                           [--filter auto|none|planes] [--threads N]\n"
               "       aicfn snapshot inspect FILE [--json]\n"
               "       aicfn snapshot verify FILE\n"
               "       aicfn snapshot unpack FILE -o OUT.safetensors\n"
               "\n"
               "Snapshots hold a model's tensors as independent zstd frames (docs/snapshot-format.md);\n"
               "'aicfn snapshot SUBCOMMAND --help' describes each.\n");
}

static int snapcli_is_help(const char *a) {
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* ---- pack ----------------------------------------------------------------------------- */

static void snapcli_progress(void *user, uint64_t done, uint64_t total) {
    (void)user;
    char a[32], b[32];
    units_format_size(done, a, sizeof a);
    units_format_size(total, b, sizeof b);
    fprintf(stderr, "\rpacking: %s / %s (%3.0f%%)", a, b,
            total ? 100.0 * (double)done / (double)total : 100.0);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

static int snapcli_pack(int argc, char **argv) {
    static const char *help =
        "usage: aicfn snapshot pack IN... -o OUT.aicsnap [options]\n"
        "Packs safetensors inputs (files, a sharded checkpoint's model.safetensors.index.json, or a\n"
        "directory holding either) into one snapshot. OUT is written through a temporary file.\n"
        "  -o, --output PATH   the snapshot to write (required)\n"
        "  --name N            model name (default: the first input's file name)\n"
        "  --level L           zstd level for unfiltered bytes, -7..19 but not 0 (default 3)\n"
        "  --chunk BYTES       raw bytes per frame, e.g. 4MiB (default 1MiB, 64KiB..64MiB, multiple of 256)\n"
        "  --filter MODE       auto (default: byte planes for BF16/FP16/FP32 when a sample compresses "
        "better),\n"
        "                      none, or planes (always for BF16/FP16/FP32)\n"
        "  --threads N         compression threads (default: the online CPUs)\n";
    snap_pack_opts o;
    snap_pack_opts_init(&o);
    const char *out = NULL;
    const char **in = calloc((size_t)argc + 1, sizeof *in);
    size_t n_in = 0;
    if (!in) {
        aicfn_error e;
        aicfn_error_set(&e, AICFN_E_NOMEM, "no memory");
        return cli_fail(&e);
    }
    int rc = CLI_EXIT_OK;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (snapcli_is_help(a)) {
            fputs(help, stdout);
            free(in);
            return CLI_EXIT_OK;
        }
        if (a[0] != '-' || strcmp(a, "-") == 0) {
            in[n_in++] = a;
            continue;
        }
        if (!v) {
            rc = cli_usage_error("snapshot pack", "%s needs a value", a);
            goto done;
        }
        i++;
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0)
            out = v;
        else if (strcmp(a, "--name") == 0)
            o.name = v;
        else if (strcmp(a, "--level") == 0) {
            char *end;
            long l = strtol(v, &end, 10);
            if (*end || end == v || l < AICFN_SNAP_MIN_LEVEL || l > AICFN_SNAP_MAX_LEVEL || l == 0) {
                rc = cli_usage_error("snapshot pack", "--level must be an integer in [%d, %d] other than 0",
                                     AICFN_SNAP_MIN_LEVEL, AICFN_SNAP_MAX_LEVEL);
                goto done;
            }
            o.level = (int)l;
        } else if (strcmp(a, "--chunk") == 0) {
            uint64_t c;
            if (units_parse_size(v, &c, NULL) || c < AICFN_SNAP_MIN_CHUNK || c > AICFN_SNAP_MAX_CHUNK ||
                c % AICFN_SNAP_ALIGN) {
                rc = cli_usage_error("snapshot pack",
                                     "--chunk '%s' must be a multiple of %u in [64KiB, 64MiB]", v,
                                     AICFN_SNAP_ALIGN);
                goto done;
            }
            o.chunk = (uint32_t)c;
        } else if (strcmp(a, "--filter") == 0) {
            int f = snap_filter_mode_from_name(v);
            if (f < 0) {
                rc = cli_usage_error("snapshot pack", "--filter must be auto, none or planes (got '%s')", v);
                goto done;
            }
            o.filter = (snap_filter_mode)f;
        } else if (strcmp(a, "--threads") == 0) {
            char *end;
            long t = strtol(v, &end, 10);
            if (*end || end == v || t < 1 || t > AICFN_SNAP_MAX_THREADS) {
                rc = cli_usage_error("snapshot pack", "--threads must be in [1, %d]", AICFN_SNAP_MAX_THREADS);
                goto done;
            }
            o.threads = (unsigned)t;
        } else {
            rc = cli_usage_error("snapshot pack", "unknown option '%s'", a);
            goto done;
        }
    }
    if (n_in == 0 || !out) {
        rc = cli_usage_error("snapshot pack", "needs at least one input and -o OUT");
        goto done;
    }
    aicfn_error err;
    aicfn_error_clear(&err);
    snap_st_set *set;
    if (snap_st_open(in, n_in, &set, &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    if (isatty(STDERR_FILENO) && snap_st_total_bytes(set) >= SNAPCLI_PROGRESS_MIN)
        o.progress = snapcli_progress;
    snap_pack_stats st;
    if (snap_pack_set(set, out, &o, &st, &err)) {
        snap_st_close(set);
        rc = cli_fail(&err);
        goto done;
    }
    snap_st_close(set);
    char raw[32], file[32];
    units_format_size(st.raw_bytes, raw, sizeof raw);
    units_format_size(st.file_bytes, file, sizeof file);
    printf("packed %u tensors (%s) into %s: %s, %.1f%% of raw (ratio %.3f), %u filtered, %u frames\n",
           st.n_tensors, raw, out, file,
           st.raw_bytes ? 100.0 * (double)st.file_bytes / (double)st.raw_bytes : 0.0,
           st.file_bytes ? (double)st.raw_bytes / (double)st.file_bytes : 0.0, st.n_filtered, st.n_frames);
done:
    free(in);
    return rc;
}

/* ---- inspect ---------------------------------------------------------------------------- */

/* Attributes compressed bytes to tensors. A data frame is a series of zstd frames, each
 * restoring one range of the frame's (filtered) bytes; the planes of a tensor segment stay
 * inside the segment's range, so each zstd frame's bytes are shared among the tensors its
 * range overlaps, in proportion. comp[t] gets tensor t's share. */
static int snapcli_shares(const snap_reader *r, double *comp, aicfn_error *err) {
    const snap_manifest *m = snap_reader_manifest(r);
    unsigned char *buf = malloc(snap_reader_max_comp_size(r) + 1);
    if (!buf) return aicfn_error_set(err, AICFN_E_NOMEM, "no memory");
    uint32_t t = 0;
    int rc = AICFN_OK;
    for (uint32_t i = 0; i < snap_reader_frame_count(r) && !rc; i++) {
        const snap_frame *f = snap_reader_frame(r, i);
        rc = snap_frame_read(r, i, buf, snap_reader_max_comp_size(r), err);
        if (rc) break;
        while (t < m->n_tensors && m->tensors[t].offset + m->tensors[t].nbytes <= f->raw_offset)
            t++;
        size_t at = 0;
        uint64_t pos = f->raw_offset;
        while (at < f->comp_size) {
            /* Only current-format frames reach libzstd's parsers (as in snap_frame_decompress:
             * the legacy ones are not for hostile bytes). */
            int current = f->comp_size - at >= 4 && snap_get_le32(buf + at) == ZSTD_MAGICNUMBER;
            size_t fsz = current ? ZSTD_findFrameCompressedSize(buf + at, f->comp_size - at) : 0;
            unsigned long long cs =
                current ? ZSTD_getFrameContentSize(buf + at, f->comp_size - at) : ZSTD_CONTENTSIZE_ERROR;
            if (!current || ZSTD_isError(fsz) || cs == ZSTD_CONTENTSIZE_ERROR ||
                cs == ZSTD_CONTENTSIZE_UNKNOWN) {
                cs = f->raw_offset + f->raw_size - pos; /* not ours: spread the rest evenly */
                fsz = f->comp_size - at;
            }
            uint64_t a = pos, e = pos + cs;
            for (uint32_t k = t; k < m->n_tensors && m->tensors[k].offset < e && cs; k++) {
                uint64_t s0 = m->tensors[k].offset > a ? m->tensors[k].offset : a;
                uint64_t e0 = m->tensors[k].offset + m->tensors[k].nbytes < e
                                  ? m->tensors[k].offset + m->tensors[k].nbytes
                                  : e;
                if (e0 > s0) comp[k] += (double)fsz * (double)(e0 - s0) / (double)cs;
            }
            pos = e;
            at += fsz;
        }
    }
    free(buf);
    return rc;
}

static void snapcli_shape(const snap_tensor *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (uint32_t d = 0; d < t->ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static int snapcli_inspect(int argc, char **argv) {
    const char *file = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (snapcli_is_help(argv[i])) {
            printf(
                "usage: aicfn snapshot inspect FILE [--json]\n"
                "Prints the manifest: model, blob and file sizes, frames, and per tensor its dtype, shape,\n"
                "offset, bytes, filter, compressed share and ratio. --json prints one JSON object "
                "instead.\n");
            return CLI_EXIT_OK;
        }
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (argv[i][0] == '-')
            return cli_usage_error("snapshot inspect", "unknown option '%s'", argv[i]);
        else if (file)
            return cli_usage_error("snapshot inspect", "one FILE only");
        else
            file = argv[i];
    }
    if (!file) return cli_usage_error("snapshot inspect", "needs a FILE");
    aicfn_error err;
    snap_reader *r;
    if (snap_open(file, &r, &err)) return cli_fail(&err);
    const snap_manifest *m = snap_reader_manifest(r);
    double *comp = calloc(m->n_tensors ? m->n_tensors : 1, sizeof *comp);
    if (!comp) {
        snap_close(r);
        aicfn_error_set(&err, AICFN_E_NOMEM, "no memory");
        return cli_fail(&err);
    }
    if (snapcli_shares(r, comp, &err)) {
        free(comp);
        snap_close(r);
        return cli_fail(&err);
    }
    uint64_t raw = 0, data_comp = 0;
    uint32_t n_filtered = 0;
    for (uint32_t t = 0; t < m->n_tensors; t++) {
        raw += m->tensors[t].nbytes;
        n_filtered += m->tensors[t].filter == SNAP_FILTER_PLANES;
    }
    for (uint32_t i = 0; i < snap_reader_frame_count(r); i++)
        data_comp += snap_reader_frame(r, i)->comp_size;
    uint64_t fb = snap_reader_file_bytes(r);
    int rc = CLI_EXIT_OK;
    if (json) {
        json_t *o = json_object(), *ts = json_array();
        json_object_set_new(o, "path", json_string(file));
        json_object_set_new(o, "format_version", json_integer(m->format_version));
        json_object_set_new(o, "model", json_string(m->model_name));
        json_object_set_new(o, "blob_bytes", json_integer((json_int_t)m->blob_bytes));
        json_object_set_new(o, "raw_bytes", json_integer((json_int_t)raw));
        json_object_set_new(o, "file_bytes", json_integer((json_int_t)fb));
        json_object_set_new(o, "data_bytes", json_integer((json_int_t)data_comp));
        json_object_set_new(o, "chunk_bytes", json_integer(m->chunk_bytes));
        json_object_set_new(o, "frames", json_integer(snap_reader_frame_count(r)));
        json_object_set_new(o, "ratio", json_real(fb ? (double)raw / (double)fb : 0.0));
        json_object_set_new(o, "filtered_tensors", json_integer(n_filtered));
        for (uint32_t t = 0; t < m->n_tensors; t++) {
            const snap_tensor *x = &m->tensors[t];
            json_t *e = json_object(), *sh = json_array();
            for (uint32_t d = 0; d < x->ndim; d++)
                json_array_append_new(sh, json_integer(x->shape[d]));
            char h[17];
            snprintf(h, sizeof h, "%016llx", (unsigned long long)x->xxh3);
            json_object_set_new(e, "name", json_string(x->name));
            json_object_set_new(e, "dtype", json_string(dtype_name(x->dtype)));
            json_object_set_new(e, "shape", sh);
            json_object_set_new(e, "offset", json_integer((json_int_t)x->offset));
            json_object_set_new(e, "nbytes", json_integer((json_int_t)x->nbytes));
            json_object_set_new(e, "filter", json_string(snap_filter_name(x->filter)));
            json_object_set_new(e, "compressed_bytes", json_integer((json_int_t)(comp[t] + 0.5)));
            json_object_set_new(e, "ratio", json_real(comp[t] > 0 ? (double)x->nbytes / comp[t] : 0.0));
            json_object_set_new(e, "xxh3", json_string(h));
            json_array_append_new(ts, e);
        }
        json_object_set_new(o, "tensors", ts);
        if (json_dumpf(o, stdout, JSON_INDENT(2)) != 0) rc = CLI_EXIT_FAIL;
        fputc('\n', stdout);
        json_decref(o);
    } else {
        char a[32], b[32], c[32];
        units_format_size(raw, a, sizeof a);
        units_format_size(fb, b, sizeof b);
        units_format_size(m->chunk_bytes, c, sizeof c);
        printf("snapshot %s\n  model      %s\n  format     %u\n  tensors    %u (%u filtered)\n"
               "  raw        %s (blob %llu bytes)\n  file       %s (ratio %.3f, %.1f%% of raw)\n"
               "  frames     %u of at most %s\n\n",
               file, m->model_name, m->format_version, m->n_tensors, n_filtered, a,
               (unsigned long long)m->blob_bytes, b, fb ? (double)raw / (double)fb : 0.0,
               raw ? 100.0 * (double)fb / (double)raw : 0.0, snap_reader_frame_count(r), c);
        printf("%-48s %-8s %-20s %12s %12s %7s %6s %s\n", "tensor", "dtype", "shape", "offset", "bytes",
               "share", "ratio", "filter");
        for (uint32_t t = 0; t < m->n_tensors; t++) {
            const snap_tensor *x = &m->tensors[t];
            char sh[128];
            snapcli_shape(x, sh, sizeof sh);
            printf("%-48s %-8s %-20s %12llu %12llu %6.2f%% %6.3f %s\n", x->name, dtype_name(x->dtype), sh,
                   (unsigned long long)x->offset, (unsigned long long)x->nbytes,
                   data_comp ? 100.0 * comp[t] / (double)data_comp : 0.0,
                   comp[t] > 0 ? (double)x->nbytes / comp[t] : 0.0, snap_filter_name(x->filter));
        }
    }
    free(comp);
    snap_close(r);
    return rc;
}

/* ---- verify and unpack -------------------------------------------------------------------- */

static int snapcli_verify(int argc, char **argv) {
    const char *file = NULL;
    for (int i = 1; i < argc; i++) {
        if (snapcli_is_help(argv[i])) {
            printf(
                "usage: aicfn snapshot verify FILE\n"
                "Decodes every frame and checks every tensor's XXH3 and the zero padding. Exits 1 and names\n"
                "the first bad frame or tensor.\n");
            return CLI_EXIT_OK;
        }
        if (argv[i][0] == '-') return cli_usage_error("snapshot verify", "unknown option '%s'", argv[i]);
        if (file) return cli_usage_error("snapshot verify", "one FILE only");
        file = argv[i];
    }
    if (!file) return cli_usage_error("snapshot verify", "needs a FILE");
    aicfn_error err;
    snap_reader *r;
    if (snap_open(file, &r, &err)) return cli_fail(&err);
    int rc = snap_verify(r, &err);
    if (rc) {
        snap_close(r);
        return cli_fail(&err);
    }
    const snap_manifest *m = snap_reader_manifest(r);
    printf("%s: OK (%u tensors, %u frames, %llu blob bytes)\n", file, m->n_tensors,
           snap_reader_frame_count(r), (unsigned long long)m->blob_bytes);
    snap_close(r);
    return CLI_EXIT_OK;
}

static int snapcli_unpack(int argc, char **argv) {
    const char *file = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (snapcli_is_help(argv[i])) {
            printf(
                "usage: aicfn snapshot unpack FILE -o OUT.safetensors\n"
                "Restores the original tensors (names, dtypes, shapes and bytes) as one safetensors file,\n"
                "checking every checksum. It decodes one frame at a time (memory for one frame, whatever\n"
                "the model's size); OUT is written through a temporary file renamed into place only when\n"
                "every checksum matched.\n");
            return CLI_EXIT_OK;
        }
        if (strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--output") == 0) {
            if (i + 1 >= argc) return cli_usage_error("snapshot unpack", "%s needs a value", argv[i]);
            out = argv[++i];
        } else if (argv[i][0] == '-')
            return cli_usage_error("snapshot unpack", "unknown option '%s'", argv[i]);
        else if (file)
            return cli_usage_error("snapshot unpack", "one FILE only");
        else
            file = argv[i];
    }
    if (!file || !out) return cli_usage_error("snapshot unpack", "needs FILE and -o OUT");
    aicfn_error err;
    snap_reader *r;
    if (snap_open(file, &r, &err)) return cli_fail(&err);
    int rc = snap_unpack(r, out, &err) ? cli_fail(&err) : CLI_EXIT_OK;
    if (rc == CLI_EXIT_OK)
        printf("unpacked %u tensors from %s into %s\n", snap_reader_manifest(r)->n_tensors, file, out);
    snap_close(r);
    return rc;
}

int cli_cmd_snapshot(int argc, char **argv) {
    if (argc < 2) {
        snapcli_help(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (snapcli_is_help(sub) || strcmp(sub, "help") == 0) {
        snapcli_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(sub, "pack") == 0) return snapcli_pack(argc - 1, argv + 1);
    if (strcmp(sub, "inspect") == 0) return snapcli_inspect(argc - 1, argv + 1);
    if (strcmp(sub, "verify") == 0) return snapcli_verify(argc - 1, argv + 1);
    if (strcmp(sub, "unpack") == 0) return snapcli_unpack(argc - 1, argv + 1);
    return cli_usage_error("snapshot", "unknown subcommand '%s' (pack, inspect, verify, unpack)", sub);
}
