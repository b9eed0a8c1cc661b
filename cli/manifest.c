/* manifest.c: parsing aicfn.yaml with libyaml's event API into a small bounded tree,
 * then checking it against the manifest's schema with errors that name file, line,
 * column and key.
 *
 * Not for: building handlers or packing snapshots (cmd_deploy), the stored JSON form
 * of the config (gateway/registry.c). */
#include "cli/manifest.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "common/dtype.h"
#include "common/tunables.h"
#include "common/units.h"

/* ---- The tree ------------------------------------------------------------------- */

typedef enum { MAN_SCALAR, MAN_SEQ, MAN_MAP } man_kind;

typedef struct man_node {
    man_kind kind;
    unsigned line, col; /* 1-based */
    char *value;        /* scalars: NUL-terminated (may contain NULs: length below) */
    size_t len;
    bool plain;              /* a plain (unquoted) scalar */
    struct man_node **items; /* seq: elements; map: key, value, key, value... */
    size_t n, cap;
    struct man_node *parent;
} man_node;

typedef struct man_ctx {
    const char *file;
    aicfn_error *err;
    size_t nodes;
} man_ctx;

static void man_node_free(man_node *n) {
    if (!n) return;
    for (size_t i = 0; i < n->n; i++)
        man_node_free(n->items[i]);
    free(n->items);
    free(n->value);
    free(n);
}

static int man_err(man_ctx *c, const man_node *at, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int man_err(man_ctx *c, const man_node *at, const char *key, const char *fmt, ...) {
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (at)
        return aicfn_error_set(c->err, AICFN_E_INVALID, "%s:%u:%u: %s%s%s", c->file, at->line, at->col,
                               key ? key : "", key ? ": " : "", what);
    return aicfn_error_set(c->err, AICFN_E_INVALID, "%s: %s%s%s", c->file, key ? key : "", key ? ": " : "",
                           what);
}

static int man_add_child(man_ctx *c, man_node *parent, man_node *child) {
    if (parent->n == parent->cap) {
        size_t ncap = parent->cap ? parent->cap * 2 : 8;
        man_node **ni = realloc(parent->items, ncap * sizeof *ni);
        if (!ni) return aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
        parent->items = ni;
        parent->cap = ncap;
    }
    parent->items[parent->n++] = child;
    child->parent = parent;
    return AICFN_OK;
}

/* Builds the tree from libyaml events. *root is NULL for an empty document. */
static int man_build(man_ctx *c, const char *buf, size_t len, man_node **root) {
    *root = NULL;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: yaml parser", c->file);
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    man_node *top = NULL; /* the open container */
    unsigned depth = 0, docs = 0;
    int rc = AICFN_OK;
    bool done = false;
    while (!done && !rc) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            man_node at = {.line = (unsigned)p.problem_mark.line + 1,
                           .col = (unsigned)p.problem_mark.column + 1};
            rc = man_err(c, &at, NULL, "YAML syntax error: %s%s%s", p.problem ? p.problem : "unknown",
                         p.context ? " " : "", p.context ? p.context : "");
            break;
        }
        man_node at = {.line = (unsigned)ev.start_mark.line + 1, .col = (unsigned)ev.start_mark.column + 1};
        const yaml_char_t *anchor = NULL, *tag = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) rc = man_err(c, &at, NULL, "more than one YAML document");
            break;
        case YAML_ALIAS_EVENT:
            rc = man_err(c, &at, NULL, "YAML aliases (*%s) are not accepted",
                         (const char *)ev.data.alias.anchor);
            break;
        case YAML_SCALAR_EVENT:
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            if (ev.type == YAML_SCALAR_EVENT) {
                anchor = ev.data.scalar.anchor;
                tag = ev.data.scalar.tag;
            } else if (ev.type == YAML_SEQUENCE_START_EVENT) {
                anchor = ev.data.sequence_start.anchor;
                tag = ev.data.sequence_start.tag;
            } else {
                anchor = ev.data.mapping_start.anchor;
                tag = ev.data.mapping_start.tag;
            }
            if (anchor) {
                rc = man_err(c, &at, NULL, "YAML anchors (&%.64s) are not accepted", (const char *)anchor);
                break;
            }
            if (tag) {
                rc = man_err(c, &at, NULL, "YAML tags (%.64s) are not accepted", (const char *)tag);
                break;
            }
            if (++c->nodes > AICFN_MANIFEST_MAX_NODES) {
                rc = man_err(c, &at, NULL, "more than %d YAML nodes", AICFN_MANIFEST_MAX_NODES);
                break;
            }
            if (!top && *root) {
                rc = man_err(c, &at, NULL, "unexpected second root node");
                break;
            }
            man_node *n = calloc(1, sizeof *n);
            if (!n) {
                rc = aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
                break;
            }
            n->line = at.line;
            n->col = at.col;
            if (ev.type == YAML_SCALAR_EVENT) {
                n->kind = MAN_SCALAR;
                n->len = ev.data.scalar.length;
                n->value = malloc(n->len + 1);
                if (!n->value) {
                    free(n);
                    rc = aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
                    break;
                }
                memcpy(n->value, ev.data.scalar.value, n->len);
                n->value[n->len] = '\0';
                n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            } else {
                n->kind = ev.type == YAML_SEQUENCE_START_EVENT ? MAN_SEQ : MAN_MAP;
            }
            if (top) {
                if ((rc = man_add_child(c, top, n))) {
                    man_node_free(n);
                    break;
                }
            } else {
                *root = n;
            }
            if (n->kind != MAN_SCALAR) {
                if (++depth > AICFN_MANIFEST_MAX_DEPTH) {
                    rc = man_err(c, &at, NULL, "nesting deeper than %d", AICFN_MANIFEST_MAX_DEPTH);
                    break;
                }
                top = n;
            }
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (top) top = top->parent;
            depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    if (rc) {
        man_node_free(*root);
        *root = NULL;
    }
    return rc;
}

/* ---- Scalars -------------------------------------------------------------------- */

static bool man_is_null(const man_node *n) {
    return n->kind == MAN_SCALAR && n->plain &&
           (n->len == 0 || strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 ||
            strcmp(n->value, "Null") == 0 || strcmp(n->value, "NULL") == 0);
}

static const char *man_kind_name(const man_node *n) {
    if (n->kind == MAN_MAP) return "a mapping";
    if (n->kind == MAN_SEQ) return "a list";
    return man_is_null(n) ? "null" : "a scalar";
}

static int man_string(man_ctx *c, const man_node *n, const char *key, const char **out) {
    if (n->kind != MAN_SCALAR || man_is_null(n))
        return man_err(c, n, key, "expected a string, got %s", man_kind_name(n));
    if (strlen(n->value) != n->len) return man_err(c, n, key, "string contains a NUL byte");
    *out = n->value;
    return AICFN_OK;
}

static int man_bool(man_ctx *c, const man_node *n, const char *key, bool *out) {
    if (n->kind == MAN_SCALAR && n->plain) {
        if (!strcmp(n->value, "true") || !strcmp(n->value, "True") || !strcmp(n->value, "TRUE")) {
            *out = true;
            return AICFN_OK;
        }
        if (!strcmp(n->value, "false") || !strcmp(n->value, "False") || !strcmp(n->value, "FALSE")) {
            *out = false;
            return AICFN_OK;
        }
    }
    return man_err(c, n, key, "expected true or false, got %s%s%.40s%s", man_kind_name(n),
                   n->kind == MAN_SCALAR ? " '" : "", n->kind == MAN_SCALAR ? n->value : "",
                   n->kind == MAN_SCALAR ? "'" : "");
}

/* A plain decimal integer in [min, max]. */
static int man_int(man_ctx *c, const man_node *n, const char *key, int64_t min, int64_t max, int64_t *out) {
    if (n->kind != MAN_SCALAR || !n->plain || n->len == 0 || n->len > 19) goto bad;
    const char *s = n->value;
    bool neg = false;
    if (*s == '-' || *s == '+') neg = *s++ == '-';
    if (!*s) goto bad;
    int64_t v = 0;
    bool over = false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') goto bad;
        int d = *s - '0';
        if (v > (INT64_MAX - d) / 10) over = true; /* 19 digits can exceed int64 */
        if (!over) v = v * 10 + d;
    }
    if (over)
        return man_err(c, n, key, "%.40s is out of range (%lld..%lld)", n->value, (long long)min,
                       (long long)max);
    if (neg) v = -v;
    if (v < min || v > max)
        return man_err(c, n, key, "%lld is out of range (%lld..%lld)", (long long)v, (long long)min,
                       (long long)max);
    *out = v;
    return AICFN_OK;
bad:
    return man_err(c, n, key, "expected an integer, got %s%s%.40s%s", man_kind_name(n),
                   n->kind == MAN_SCALAR ? " '" : "", n->kind == MAN_SCALAR ? n->value : "",
                   n->kind == MAN_SCALAR ? "'" : "");
}

static int man_duration(man_ctx *c, const man_node *n, const char *key, uint64_t *out) {
    if (n->kind != MAN_SCALAR || man_is_null(n))
        return man_err(c, n, key, "expected a duration (30s, 250ms, 5m), got %s", man_kind_name(n));
    aicfn_error e;
    if (strlen(n->value) != n->len || units_parse_duration_us(n->value, out, &e) != AICFN_OK)
        return man_err(c, n, key, "expected a duration (30s, 250ms, 5m), got '%.40s'", n->value);
    return AICFN_OK;
}

static int man_size(man_ctx *c, const man_node *n, const char *key, uint64_t *out) {
    if (n->kind != MAN_SCALAR || man_is_null(n))
        return man_err(c, n, key, "expected a size (8MiB, 4096), got %s", man_kind_name(n));
    aicfn_error e;
    if (strlen(n->value) != n->len || units_parse_size(n->value, out, &e) != AICFN_OK)
        return man_err(c, n, key, "expected a size (8MiB, 4096), got '%.40s'", n->value);
    return AICFN_OK;
}

/* Checks a mapping's keys against `allowed` (NULL-terminated), refusing unknown and
 * duplicate keys. `where` names the mapping ("batching"). */
static int man_check_map(man_ctx *c, const man_node *map, const char *where, const char *const *allowed) {
    if (map->kind != MAN_MAP) return man_err(c, map, where, "expected a mapping, got %s", man_kind_name(map));
    for (size_t i = 0; i < map->n; i += 2) {
        const man_node *k = map->items[i];
        char path[160];
        if (k->kind != MAN_SCALAR) return man_err(c, k, where, "keys must be plain strings");
        snprintf(path, sizeof path, "%s%s%.64s", where ? where : "", where ? "." : "", k->value);
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k->value) == 0 && strlen(k->value) == k->len) ok = true;
        if (!ok) return man_err(c, k, path, "unknown key");
        for (size_t j = 0; j < i; j += 2)
            if (strcmp(map->items[j]->value, k->value) == 0) return man_err(c, k, path, "duplicate key");
    }
    return AICFN_OK;
}

/* ---- Sections ------------------------------------------------------------------- */

/* params: a mapping of names to scalars, handed to the handler's init as text (a number
 * or a bool as written): {KEY: VALUE, ...}. */
static int man_params(man_ctx *c, const man_node *map, gw_fn_config *cfg) {
    if (map->kind != MAN_MAP) return man_err(c, map, "params", "expected a mapping, got %s", man_kind_name(map));
    for (size_t i = 0; i < map->n; i += 2) {
        const man_node *k = map->items[i], *v = map->items[i + 1];
        char path[160];
        snprintf(path, sizeof path, "params.%.64s", k->kind == MAN_SCALAR ? k->value : "?");
        if (k->kind != MAN_SCALAR || man_is_null(k)) return man_err(c, k, "params", "keys must be plain strings");
        if (v->kind != MAN_SCALAR || man_is_null(v))
            return man_err(c, v, path, "expected a string, number or boolean, got %s", man_kind_name(v));
        aicfn_error pe;
        if (gw_fn_config_add_param(cfg, k->value, k->len, v->value, v->len, &pe) != AICFN_OK)
            return man_err(c, k, NULL, "%s", pe.msg); /* the message names params and the key */
    }
    return AICFN_OK;
}

static int man_tensors(man_ctx *c, const man_node *seq, const char *where, gw_tensor_spec **out,
                       size_t *nout) {
    if (seq->kind != MAN_SEQ) return man_err(c, seq, where, "expected a list of {name, dtype, shape}");
    if (seq->n > AICFN_MAX_TENSORS) return man_err(c, seq, where, "more than %d tensors", AICFN_MAX_TENSORS);
    if (seq->n == 0) return AICFN_OK;
    gw_tensor_spec *t = calloc(seq->n, sizeof *t);
    if (!t) return aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
    *out = t;
    *nout = seq->n;
    static const char *const keys[] = {"name", "dtype", "shape", NULL};
    for (size_t i = 0; i < seq->n; i++) {
        const man_node *m = seq->items[i];
        char w[64];
        snprintf(w, sizeof w, "%s[%zu]", where, i);
        int rc = man_check_map(c, m, w, keys);
        if (rc) return rc;
        bool have_name = false, have_dtype = false, have_shape = false;
        for (size_t j = 0; j < m->n; j += 2) {
            const char *k = m->items[j]->value;
            const man_node *v = m->items[j + 1];
            char path[96];
            snprintf(path, sizeof path, "%s.%s", w, k);
            if (!strcmp(k, "name")) {
                const char *s;
                if ((rc = man_string(c, v, path, &s))) return rc;
                if (!s[0] || strlen(s) > AICFN_MAX_NAME_BYTES)
                    return man_err(c, v, path, "want 1..%d bytes", AICFN_MAX_NAME_BYTES);
                for (size_t p = 0; p < i; p++)
                    if (!strcmp(t[p].name, s)) return man_err(c, v, path, "duplicate tensor name '%.64s'", s);
                memcpy(t[i].name, s, strlen(s) + 1);
                have_name = true;
            } else if (!strcmp(k, "dtype")) {
                const char *s;
                if ((rc = man_string(c, v, path, &s))) return rc;
                t[i].dtype = dtype_from_name(s);
                if (t[i].dtype == AICFN_DTYPE_INVALID)
                    return man_err(c, v, path, "unknown dtype '%.32s' (want FP32, INT64, BYTES...)", s);
                have_dtype = true;
            } else {
                if (v->kind != MAN_SEQ) return man_err(c, v, path, "expected a list of dims, like [-1, 784]");
                if (v->n > AICFN_MAX_DIMS) return man_err(c, v, path, "more than %d dims", AICFN_MAX_DIMS);
                t[i].ndim = (unsigned)v->n;
                for (size_t d = 0; d < v->n; d++) {
                    int64_t x;
                    if ((rc = man_int(c, v->items[d], path, -1, INT64_C(1) << 48, &x))) return rc;
                    t[i].shape[d] = x;
                }
                have_shape = true;
            }
        }
        if (!have_name) return man_err(c, m, w, "missing required key 'name'");
        if (!have_dtype) return man_err(c, m, w, "missing required key 'dtype'");
        if (!have_shape) return man_err(c, m, w, "missing required key 'shape'");
    }
    return AICFN_OK;
}

/* Whether `path` starts as an ELF shared object does: the ELF magic and e_type ET_DYN (in
 * the file's own byte order). */
static bool man_is_elf_shared_object(const char *path) {
    unsigned char h[EI_NIDENT + 2];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    if (n != (ssize_t)sizeof h || memcmp(h, ELFMAG, SELFMAG) != 0) return false;
    unsigned type = h[EI_DATA] == ELFDATA2MSB ? (unsigned)(h[EI_NIDENT] << 8 | h[EI_NIDENT + 1])
                                              : (unsigned)(h[EI_NIDENT] | h[EI_NIDENT + 1] << 8);
    return type == ET_DYN;
}

static char *man_join(const char *dir, const char *rel) {
    if (!dir || rel[0] == '/') return strdup(rel);
    size_t n = strlen(dir) + 1 + strlen(rel) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", dir, rel);
    return s;
}

static int man_cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int man_push_model(man_ctx *c, cli_manifest *m, const man_node *at, char *path) {
    if (m->n_model_files >= AICFN_MANIFEST_MAX_MODEL_FILES) {
        free(path);
        return man_err(c, at, "model", "more than %d model files", AICFN_MANIFEST_MAX_MODEL_FILES);
    }
    char **nf = realloc(m->model_files, (m->n_model_files + 1) * sizeof *nf);
    if (!nf) {
        free(path);
        return aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
    }
    m->model_files = nf;
    m->model_files[m->n_model_files++] = path;
    return AICFN_OK;
}

/* Adds one model entry: a file, or a directory: its model.safetensors.index.json when it
 * has one (a sharded checkpoint: the index names the shards, and packing checks that each
 * is there and holds what the index says), else its *.safetensors files (sorted). */
static int man_model_entry(man_ctx *c, cli_manifest *m, const man_node *v, const char *key) {
    const char *rel;
    int rc = man_string(c, v, key, &rel);
    if (rc) return rc;
    char *path = man_join(m->dir, rel);
    if (!path) return aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
    if (!m->dir) return man_push_model(c, m, v, path);
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        rc = man_err(c, v, key, "cannot find '%.200s': %s", path, strerror(e));
        free(path);
        return rc;
    }
    if (S_ISREG(st.st_mode)) return man_push_model(c, m, v, path);
    if (!S_ISDIR(st.st_mode)) {
        rc = man_err(c, v, key, "'%.200s' is neither a file nor a directory", path);
        free(path);
        return rc;
    }
    char *index = man_join(path, "model.safetensors.index.json");
    if (!index) {
        free(path);
        return aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
    }
    if (stat(index, &st) == 0) {
        free(path);
        if (S_ISREG(st.st_mode)) return man_push_model(c, m, v, index);
        free(index);
        return man_err(c, v, key, "model.safetensors.index.json in '%.200s' is not a regular file", rel);
    }
    free(index);
    DIR *d = opendir(path);
    if (!d) {
        rc = man_err(c, v, key, "cannot open directory '%.200s': %s", path, strerror(errno));
        free(path);
        return rc;
    }
    size_t first = m->n_model_files;
    struct dirent *e;
    while (!rc && (e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        /* Hidden files are never weights (macOS writes '._NAME' AppleDouble files beside
         * the real ones when copying to other filesystems). */
        if (e->d_name[0] == '.' || n <= 12 || strcmp(e->d_name + n - 12, ".safetensors") != 0) continue;
        char *f = man_join(path, e->d_name);
        if (!f)
            rc = aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
        else
            rc = man_push_model(c, m, v, f);
    }
    closedir(d);
    if (!rc && m->n_model_files == first)
        rc = man_err(c, v, key, "directory '%.200s' holds no .safetensors files", path);
    free(path);
    if (!rc) qsort(m->model_files + first, m->n_model_files - first, sizeof *m->model_files, man_cmp_str);
    return rc;
}

static int man_handler(man_ctx *c, cli_manifest *m, const man_node *v) {
    const char *rel;
    int rc = man_string(c, v, "handler", &rel);
    if (rc) return rc;
    size_t n = strlen(rel);
    if (n > 2 && !strcmp(rel + n - 2, ".c"))
        m->handler_kind = CLI_HANDLER_C;
    else if (n > 3 && !strcmp(rel + n - 3, ".cu"))
        m->handler_kind = CLI_HANDLER_CU;
    else if (n > 3 && !strcmp(rel + n - 3, ".so"))
        m->handler_kind = CLI_HANDLER_SO;
    else
        return man_err(c, v, "handler", "'%.200s' is not a .c, .cu or .so file", rel);
    m->handler = man_join(m->dir, rel);
    if (!m->handler) return aicfn_error_set(c->err, AICFN_E_NOMEM, "%s: out of memory", c->file);
    if (m->dir) {
        struct stat st;
        if (stat(m->handler, &st) != 0)
            return man_err(c, v, "handler", "cannot find '%.200s': %s", m->handler, strerror(errno));
        if (!S_ISREG(st.st_mode))
            return man_err(c, v, "handler", "'%.200s' is not a regular file", m->handler);
        /* A prebuilt handler is uploaded as it is: only an ELF shared object, so that a
         * handler path (a symlink in a repository, say) cannot send any other file. */
        if (m->handler_kind == CLI_HANDLER_SO && !man_is_elf_shared_object(m->handler))
            return man_err(c, v, "handler", "'%.200s' is not an ELF shared object", m->handler);
    }
    return AICFN_OK;
}

static int man_section(man_ctx *c, cli_manifest *m, const char *key, const man_node *v) {
    gw_fn_config *cfg = &m->config;
    int rc;
    int64_t x;
    if (!strcmp(key, "batching")) {
        static const char *const keys[] = {"max_batch", "max_delay_us", NULL};
        if ((rc = man_check_map(c, v, key, keys))) return rc;
        for (size_t i = 0; i < v->n; i += 2) {
            const char *k = v->items[i]->value;
            const man_node *val = v->items[i + 1];
            if (!strcmp(k, "max_batch")) {
                if ((rc = man_int(c, val, "batching.max_batch", 1, AICFN_MAX_BATCH, &x))) return rc;
                cfg->max_batch = (uint32_t)x;
            } else {
                if ((rc = man_int(c, val, "batching.max_delay_us", 0, (int64_t)AICFN_MAX_DELAY_US_MAX, &x)))
                    return rc;
                cfg->max_delay_us = (uint64_t)x;
            }
        }
    } else if (!strcmp(key, "limits")) {
        static const char *const keys[] = {"timeout", "max_request_bytes", NULL};
        if ((rc = man_check_map(c, v, key, keys))) return rc;
        for (size_t i = 0; i < v->n; i += 2) {
            const char *k = v->items[i]->value;
            const man_node *val = v->items[i + 1];
            if (!strcmp(k, "timeout")) {
                if ((rc = man_duration(c, val, "limits.timeout", &cfg->timeout_us))) return rc;
                if (cfg->timeout_us == 0 || cfg->timeout_us > AICFN_MAX_TIMEOUT_US)
                    return man_err(c, val, "limits.timeout", "want more than 0 and at most 1h");
            } else {
                if ((rc = man_size(c, val, "limits.max_request_bytes", &cfg->max_request_bytes))) return rc;
                if (cfg->max_request_bytes == 0 || cfg->max_request_bytes > AICFN_MAX_MESSAGE_BYTES)
                    return man_err(c, val, "limits.max_request_bytes", "want 1..%u bytes",
                                   AICFN_MAX_MESSAGE_BYTES);
            }
        }
    } else if (!strcmp(key, "scaling")) {
        static const char *const keys[] = {"min_workers", "max_workers", "idle_timeout", NULL};
        if ((rc = man_check_map(c, v, key, keys))) return rc;
        for (size_t i = 0; i < v->n; i += 2) {
            const char *k = v->items[i]->value;
            const man_node *val = v->items[i + 1];
            if (!strcmp(k, "min_workers")) {
                if ((rc = man_int(c, val, "scaling.min_workers", 0, AICFN_MAX_WORKERS, &x))) return rc;
                cfg->min_workers = (uint32_t)x;
            } else if (!strcmp(k, "max_workers")) {
                if ((rc = man_int(c, val, "scaling.max_workers", 1, AICFN_MAX_WORKERS, &x))) return rc;
                cfg->max_workers = (uint32_t)x;
            } else {
                if ((rc = man_duration(c, val, "scaling.idle_timeout", &cfg->idle_timeout_us))) return rc;
            }
        }
        if (cfg->min_workers > cfg->max_workers)
            return man_err(c, v, "scaling", "min_workers (%u) exceeds max_workers (%u)", cfg->min_workers,
                           cfg->max_workers);
    } else if (!strcmp(key, "cache")) {
        static const char *const keys[] = {"responses", "ttl", NULL};
        if ((rc = man_check_map(c, v, key, keys))) return rc;
        for (size_t i = 0; i < v->n; i += 2) {
            const char *k = v->items[i]->value;
            const man_node *val = v->items[i + 1];
            if (!strcmp(k, "responses"))
                rc = man_bool(c, val, "cache.responses", &cfg->cache_responses);
            else
                rc = man_duration(c, val, "cache.ttl", &cfg->cache_ttl_us);
            if (rc) return rc;
        }
    } else if (!strcmp(key, "idempotent")) {
        return man_bool(c, v, key, &cfg->idempotent);
    } else if (!strcmp(key, "inputs")) {
        return man_tensors(c, v, key, &cfg->inputs, &cfg->n_inputs);
    } else if (!strcmp(key, "outputs")) {
        return man_tensors(c, v, key, &cfg->outputs, &cfg->n_outputs);
    } else if (!strcmp(key, "params")) {
        return man_params(c, v, cfg);
    }
    return AICFN_OK;
}

/* ---- Entry points --------------------------------------------------------------- */

void cli_manifest_free(cli_manifest *m) {
    if (!m) return;
    free(m->path);
    free(m->dir);
    free(m->handler);
    for (size_t i = 0; i < m->n_model_files; i++)
        free(m->model_files[i]);
    free(m->model_files);
    gw_fn_config_clear(&m->config);
    free(m);
}

int cli_manifest_parse(const char *buf, size_t len, const char *filename, const char *base_dir,
                       cli_manifest **out, aicfn_error *err) {
    *out = NULL;
    if (!filename) filename = "aicfn.yaml";
    man_ctx c = {.file = filename, .err = err};
    if (len > AICFN_MANIFEST_MAX_BYTES)
        return aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: %zu bytes, at most %u", filename, len,
                               AICFN_MANIFEST_MAX_BYTES);
    man_node *root = NULL;
    int rc = man_build(&c, buf, len, &root);
    if (rc) return rc;
    if (!root || man_is_null(root)) {
        man_node_free(root);
        return man_err(&c, NULL, NULL, "empty manifest (want at least name and handler)");
    }
    cli_manifest *m = calloc(1, sizeof *m);
    if (!m) {
        man_node_free(root);
        return aicfn_error_set(err, AICFN_E_NOMEM, "%s: out of memory", filename);
    }
    gw_fn_config_init(&m->config);
    m->path = strdup(filename);
    m->dir = base_dir ? strdup(base_dir) : NULL;
    if (!m->path || (base_dir && !m->dir)) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "%s: out of memory", filename);
        goto out;
    }
    static const char *const top_keys[] = {"name",  "handler",    "model",  "batching", "limits", "scaling",
                                           "cache", "idempotent", "inputs", "outputs",  "params", NULL};
    if ((rc = man_check_map(&c, root, NULL, top_keys))) goto out;
    bool have_name = false, have_handler = false;
    for (size_t i = 0; !rc && i < root->n; i += 2) {
        const char *k = root->items[i]->value;
        const man_node *v = root->items[i + 1];
        if (!strcmp(k, "name")) {
            const char *s;
            if ((rc = man_string(&c, v, "name", &s))) break;
            if (!gw_fn_name_valid(s)) {
                rc =
                    man_err(&c, v, "name",
                            "'%.80s' is not a valid function name ([A-Za-z0-9_.-], starting with a letter or "
                            "digit, at most %d bytes)",
                            s, AICFN_FN_NAME_MAX_BYTES);
                break;
            }
            snprintf(m->name, sizeof m->name, "%s", s);
            have_name = true;
        } else if (!strcmp(k, "handler")) {
            rc = man_handler(&c, m, v);
            have_handler = true;
        } else if (!strcmp(k, "model")) {
            if (v->kind == MAN_SEQ) {
                if (v->n == 0) rc = man_err(&c, v, "model", "empty list");
                for (size_t j = 0; !rc && j < v->n; j++)
                    rc = man_model_entry(&c, m, v->items[j], "model");
            } else {
                rc = man_model_entry(&c, m, v, "model");
            }
        } else {
            rc = man_section(&c, m, k, v);
        }
    }
    if (rc) goto out;
    if (!have_name) {
        rc = man_err(&c, root, "name", "missing required key");
        goto out;
    }
    if (!have_handler) {
        rc = man_err(&c, root, "handler", "missing required key");
        goto out;
    }
    aicfn_error verr;
    if (gw_fn_config_validate(&m->config, &verr) != AICFN_OK) {
        rc = man_err(&c, root, NULL, "%s", verr.msg);
        goto out;
    }
out:
    man_node_free(root);
    if (rc) {
        cli_manifest_free(m);
        return rc;
    }
    *out = m;
    return AICFN_OK;
}

int cli_manifest_load(const char *path, cli_manifest **out, aicfn_error *err) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return aicfn_error_errno(err, AICFN_E_IO, errno, "reading manifest %s", path);
    char *file = NULL;
    if (S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + sizeof "/aicfn.yaml";
        file = malloc(n);
        if (!file) return aicfn_error_set(err, AICFN_E_NOMEM, "manifest path");
        snprintf(file, n, "%s/aicfn.yaml", path);
    } else {
        file = strdup(path);
        if (!file) return aicfn_error_set(err, AICFN_E_NOMEM, "manifest path");
    }
    char *dir = strdup(file);
    char *buf = NULL;
    int rc = AICFN_OK;
    int fd = -1;
    if (!dir) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "manifest path");
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the open */
    if (fd < 0 || fstat(fd, &st) != 0) {
        rc = aicfn_error_errno(err, AICFN_E_IO, errno, "reading manifest %s", file);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = aicfn_error_set(err, AICFN_E_INVALID, "manifest %s is not a regular file", file);
        goto out;
    }
    if ((uint64_t)st.st_size > AICFN_MANIFEST_MAX_BYTES) {
        rc = aicfn_error_set(err, AICFN_E_TOO_LARGE, "%s: %lld bytes, at most %u", file,
                             (long long)st.st_size, AICFN_MANIFEST_MAX_BYTES);
        goto out;
    }
    /* Read at most the limit + 1 so a file growing meanwhile is still bounded. */
    buf = malloc(AICFN_MANIFEST_MAX_BYTES + 1);
    if (!buf) {
        rc = aicfn_error_set(err, AICFN_E_NOMEM, "reading %s", file);
        goto out;
    }
    size_t got = 0;
    while (got <= AICFN_MANIFEST_MAX_BYTES) {
        ssize_t r = read(fd, buf + got, AICFN_MANIFEST_MAX_BYTES + 1 - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = aicfn_error_errno(err, AICFN_E_IO, errno, "reading %s", file);
            goto out;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    rc = cli_manifest_parse(buf, got, file, dir, out, err);
out:
    if (fd >= 0) close(fd);
    free(buf);
    free(dir);
    free(file);
    return rc;
}

json_t *cli_manifest_config_json(const cli_manifest *m) {
    return gw_fn_config_to_json(&m->config);
}
