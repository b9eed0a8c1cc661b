/* test_rules.c: the design §4 rules for NNG 1.5.2 and msgpack-c 4.0.0 that can be checked
 * on the source tree, by scanning every *.c and *.h under common snapshots loader worker
 * gateway cli examples include:
 *  - no call to the nng_msg insert functions (nng_msg_[header_]insert*) (heap overflows, nng #1541 #1808);
 *  - no NNG HTTP/WebSocket server (nng #1594): no nng_http_server_* / nng_stream_listener_*
 *    and no NNG supplemental http include;
 *  - msgpack_unpack* only in common/wire_guard.c, behind the bounded validator;
 *  - every nng_aio_free(X) follows an nng_aio_stop(X) of the same aio in the same
 *    function (nng #1702), unless its line says the aio was "never started";
 *  - every socket a function opens (nng_*0_open(&S)) gets NNG_OPT_RECVMAXSZ set on S in
 *    that function, and a REQ socket NNG_OPT_REQ_RESENDTIME too.
 * The runtime halves (options really set, http:// refused) are in test_rpc.c. A self-test
 * plants each violation in a scratch tree to prove the scanner can fail. */
#include <dirent.h>
#include <limits.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static const char *const scan_dirs[] = {"common",  "snapshots", "loader",   "worker",
                                        "gateway", "cli",       "examples", "include"};

typedef struct rule_result {
    unsigned files;
    unsigned violations;
    char first[1024];
} rule_result;

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) buf[n] = 0;
    *len = n;
    return buf;
}

/* Blanks out C comments and string literals (keeping newlines) so that prose such as
 * "never call the nng_msg insert functions" does not count; string contents are kept separately
 * available for the http-include check through the raw text. */
static void strip_comments(char *s) {
    enum { CODE, LINE, BLOCK, STR, CHR } st = CODE;
    for (char *p = s; *p; p++) {
        switch (st) {
        case CODE:
            if (p[0] == '/' && p[1] == '/')
                st = LINE, *p = ' ';
            else if (p[0] == '/' && p[1] == '*')
                st = BLOCK, *p = ' ';
            else if (*p == '"')
                st = STR;
            else if (*p == '\'')
                st = CHR;
            break;
        case LINE:
            if (*p == '\n')
                st = CODE;
            else
                *p = ' ';
            break;
        case BLOCK:
            if (p[0] == '*' && p[1] == '/') {
                p[0] = p[1] = ' ';
                p++;
                st = CODE;
            } else if (*p != '\n')
                *p = ' ';
            break;
        case STR:
            if (*p == '\\' && p[1])
                p++;
            else if (*p == '"')
                st = CODE;
            break;
        case CHR:
            if (*p == '\\' && p[1])
                p++;
            else if (*p == '\'')
                st = CODE;
            break;
        }
    }
}

static int has(regex_t *re, const char *s) {
    return regexec(re, s, 0, NULL, 0) == 0;
}

static int rules_quiet; /* the self-test plants violations on purpose */

static void violation(rule_result *r, const char *path, const char *what) {
    if (r->violations++ == 0) snprintf(r->first, sizeof r->first, "%s: %s", path, what);
    if (!rules_quiet) fprintf(stderr, "rule violation: %s: %s\n", path, what);
}

typedef struct rules {
    regex_t insert, http, http_inc, unpack, aio_free, sock_open;
} rules;

static void rules_init(rules *R) {
    int f = REG_EXTENDED | REG_NOSUB;
    assert_int_equal(regcomp(&R->insert, "nng_msg_(header_)?insert[a-z0-9_]*[[:space:]]*\\(", f), 0);
    assert_int_equal(regcomp(&R->http, "nng_(http_server|stream_listener)_[a-z_]+[[:space:]]*\\(", f), 0);
    assert_int_equal(
        regcomp(&R->http_inc, "#[[:space:]]*include[[:space:]]*<nng/supplemental/(http|websocket)", f), 0);
    assert_int_equal(regcomp(&R->unpack, "msgpack_unpack(er)?[a-z_]*[[:space:]]*\\(", f), 0);
    assert_int_equal(regcomp(&R->aio_free, "nng_aio_free[[:space:]]*\\(", REG_EXTENDED), 0);
    assert_int_equal(regcomp(&R->sock_open, "nng_[a-z]+[0-9]_open(_raw)?[[:space:]]*\\(", REG_EXTENDED), 0);
}

static void rules_fini(rules *R) {
    regfree(&R->insert);
    regfree(&R->http);
    regfree(&R->http_inc);
    regfree(&R->unpack);
    regfree(&R->aio_free);
    regfree(&R->sock_open);
}

/* Functions are told apart by their closing brace at the start of a line (the tree is
 * clang-formatted): the one around `at` runs from after the previous "\n}" to the next. */
static const char *fn_begin(const char *text, const char *at) {
    const char *b = text;
    for (const char *p = text; (p = strstr(p, "\n}")) != NULL && p < at; p += 2)
        b = p + 2;
    return b;
}

static const char *fn_end(const char *at) {
    const char *e = strstr(at, "\n}");
    return e ? e : at + strlen(at);
}

/* The first argument of the call whose '(' is at `paren`, spaces and a leading '&' cut. */
static void first_arg(const char *paren, char *out, size_t cap) {
    const char *p = paren + 1;
    while (*p == ' ' || *p == '&')
        p++;
    size_t n = 0;
    int depth = 0;
    for (; *p && n + 1 < cap; p++) {
        if ((*p == ',' || *p == ')') && depth == 0) break;
        if (*p == '(') depth++;
        if (*p == ')') depth--;
        out[n++] = *p;
    }
    while (n && out[n - 1] == ' ')
        n--;
    out[n] = 0;
}

/* Whether [from, to) holds `a` `arg` `b` (e.g. "nng_aio_stop(" "c->aio" ")"). */
static int has_call(const char *from, const char *to, const char *a, const char *arg, const char *b) {
    char needle[512];
    snprintf(needle, sizeof needle, "%s%s%s", a, arg, b);
    const char *p = strstr(from, needle);
    return p != NULL && p < to;
}

/* Each match of re in the stripped text `code`, with its first argument; `raw` is the
 * text before stripping (same offsets) for the "never started" note. */
static void check_aio_frees(rules *R, const char *path, const char *raw, const char *code, rule_result *r) {
    regmatch_t m;
    for (const char *p = code; regexec(&R->aio_free, p, 1, &m, p == code ? 0 : REG_NOTBOL) == 0;
         p += m.rm_eo) {
        const char *at = p + m.rm_so, *paren = p + m.rm_eo - 1;
        char arg[256];
        first_arg(paren, arg, sizeof arg);
        if (has_call(fn_begin(code, at), at, "nng_aio_stop(", arg, ")")) continue;
        const char *line_end = strchr(raw + (at - code), '\n');
        size_t ln = line_end ? (size_t)(line_end - (raw + (at - code))) : strlen(raw + (at - code));
        char line[512];
        snprintf(line, sizeof line, "%.*s", (int)(ln < sizeof line - 1 ? ln : sizeof line - 1),
                 raw + (at - code));
        if (strstr(line, "never started")) continue;
        char what[512];
        snprintf(what, sizeof what, "nng_aio_free(%s) without nng_aio_stop(%s) before it (nng #1702)", arg,
                 arg);
        violation(r, path, what);
    }
}

static void check_socket_opens(rules *R, const char *path, const char *code, rule_result *r) {
    regmatch_t m;
    for (const char *p = code; regexec(&R->sock_open, p, 1, &m, p == code ? 0 : REG_NOTBOL) == 0;
         p += m.rm_eo) {
        const char *at = p + m.rm_so, *paren = p + m.rm_eo - 1, *end = fn_end(at);
        char sock[256], what[512];
        first_arg(paren, sock, sizeof sock);
        if (!has_call(at, end, "nng_socket_set_size(", sock, ", NNG_OPT_RECVMAXSZ")) {
            snprintf(what, sizeof what, "opens socket %s without setting NNG_OPT_RECVMAXSZ on it", sock);
            violation(r, path, what);
        }
        if (strncmp(at, "nng_req0_open", 13) == 0 &&
            !has_call(at, end, "nng_socket_set_ms(", sock, ", NNG_OPT_REQ_RESENDTIME")) {
            snprintf(what, sizeof what, "opens REQ socket %s without setting NNG_OPT_REQ_RESENDTIME on it",
                     sock);
            violation(r, path, what);
        }
    }
}

/* `rel` is the path relative to the root, used for the one allowed msgpack_unpack site. */
static void check_file(rules *R, const char *path, const char *rel, rule_result *r) {
    size_t len;
    char *raw = slurp(path, &len);
    if (!raw) return;
    r->files++;
    if (has(&R->http_inc, raw)) violation(r, path, "includes NNG's HTTP/WebSocket support (nng #1594)");
    char *code = strdup(raw);
    assert_non_null(code);
    strip_comments(code);
    if (has(&R->insert, code)) violation(r, path, "calls an nng_msg insert function (nng #1541, #1808)");
    if (has(&R->http, code)) violation(r, path, "uses NNG's HTTP/WebSocket server (nng #1594)");
    if (has(&R->unpack, code) && strcmp(rel, "common/wire_guard.c") != 0)
        violation(r, path, "calls msgpack_unpack* outside common/wire_guard.c (use wire_doc_parse)");
    check_aio_frees(R, path, raw, code, r);
    check_socket_opens(R, path, code, r);
    free(code);
    free(raw);
}

static void scan_dir(rules *R, const char *root, const char *rel, rule_result *r, int depth) {
    if (depth > 12) return;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char sub[PATH_MAX];
        snprintf(sub, sizeof sub, "%s/%s", rel, de->d_name);
        char full[PATH_MAX];
        snprintf(full, sizeof full, "%s/%s", root, sub);
        struct stat st;
        if (lstat(full, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            scan_dir(R, root, sub, r, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            size_t n = strlen(de->d_name);
            if (n > 2 && (strcmp(de->d_name + n - 2, ".c") == 0 || strcmp(de->d_name + n - 2, ".h") == 0))
                check_file(R, full, sub, r);
        }
    }
    closedir(d);
}

static rule_result scan_tree(const char *root) {
    rules R;
    rules_init(&R);
    rule_result r = {0};
    for (size_t i = 0; i < sizeof scan_dirs / sizeof scan_dirs[0]; i++)
        scan_dir(&R, root, scan_dirs[i], &r, 0);
    rules_fini(&R);
    return r;
}

static int is_root(const char *dir) {
    char p[PATH_MAX];
    struct stat st;
    snprintf(p, sizeof p, "%s/build.zig", dir);
    if (stat(p, &st) != 0) return 0;
    snprintf(p, sizeof p, "%s/common/wire.h", dir);
    return stat(p, &st) == 0;
}

/* The repository root: $AICFN_SOURCE_DIR, else the first ancestor of the working
 * directory or of this executable that holds build.zig and common/wire.h. */
static int find_root(char *out, size_t cap) {
    const char *env = getenv("AICFN_SOURCE_DIR");
    if (env && is_root(env)) {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    char starts[2][PATH_MAX];
    if (!getcwd(starts[0], sizeof starts[0])) starts[0][0] = 0;
    ssize_t n = readlink("/proc/self/exe", starts[1], sizeof starts[1] - 1);
    starts[1][n > 0 ? n : 0] = 0;
    for (int s = 0; s < 2; s++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", starts[s]);
        for (int up = 0; up < 16 && dir[0]; up++) {
            if (is_root(dir)) {
                snprintf(out, cap, "%s", dir);
                return 0;
            }
            char *slash = strrchr(dir, '/');
            if (!slash) break;
            if (slash == dir) {
                if (dir[1] == 0) break;
                dir[1] = 0;
            } else {
                *slash = 0;
            }
        }
    }
    return -1;
}

static void tree_obeys_the_rules(void **state) {
    (void)state;
    char root[PATH_MAX];
    assert_int_equal(find_root(root, sizeof root), 0);
    rule_result r = scan_tree(root);
    print_message("# scanned %u files under %s\n", r.files, root);
    assert_true(r.files >= 10); /* the scan really found the sources */
    if (r.violations) fail_msg("%u rule violation(s), first: %s", r.violations, r.first);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Each planted violation is found; compliant code and mere mentions in comments are not. */
static void scanner_detects_planted_violations(void **state) {
    (void)state;
    char root[] = "/tmp/aicfn-rules-XXXXXX";
    assert_non_null(mkdtemp(root));
    rules_quiet = 1;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/common", root);
    assert_int_equal(mkdir(p, 0700), 0);
    static const struct {
        const char *text;
        unsigned violations;
    } cases[] = {
        /* The banned names are split so that a plain grep of the tree finds none. */
        {"/* never call nng_msg_"
         "insert(m, p, n) */ int ok;\n",
         0},
        {"void f(nng_msg *m) { nng_msg_"
         "insert(m, \"x\", 1); }\n",
         1},
        {"void f(nng_msg *m) { nng_msg_header_"
         "insert_u32 (m, 1); }\n",
         1},
        {"#include <nng/supplemental/http/http.h>\n", 1},
        {"void f(void) { nng_http_server_hold(0, 0); }\n", 1},
        {"void f(void) { msgpack_unpack(0, 0, 0, 0, 0); }\n", 1},
        {"void f(nng_aio *a) { nng_aio_free(a); }\n", 1},
        {"void f(nng_aio *a) { nng_aio_stop(a); nng_aio_free(a); }\n", 0},
        {"void f(nng_aio *a) {\n    nng_aio_free(a); /* never started */\n}\n", 0},
        /* A stop of another aio, or in another function, does not count. */
        {"void f(nng_aio *a, nng_aio *b) { nng_aio_stop(b); nng_aio_free(a); }\n", 1},
        {"void g(nng_aio *a) {\n    nng_aio_stop(a);\n}\nvoid f(nng_aio *a) {\n    nng_aio_free(a);\n}\n", 1},
        {"void f(nng_aio *a, nng_aio *b) {\n    nng_aio_stop(a);\n    nng_aio_free(a);\n    "
         "nng_aio_free(b);\n}\n",
         1},
        {"void f(nng_socket *s) { nng_rep0_open(s); }\n", 1},
        {"void f(nng_socket *s) { nng_req0_open(s); nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 1); }\n", 1},
        {"void f(nng_socket s) { nng_req0_open(&s); nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 1);"
         " nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, -1); }\n",
         0},
        /* Each socket gets its own limit: setting it on one of two does not do. */
        {"void f(nng_socket a, nng_socket b) {\n    nng_rep0_open(&a);\n    nng_rep0_open(&b);\n"
         "    nng_socket_set_size(a, NNG_OPT_RECVMAXSZ, 1);\n}\n",
         1},
        {"void f(nng_socket a) {\n    nng_rep0_open(&a);\n}\nvoid g(nng_socket a) {\n"
         "    nng_socket_set_size(a, NNG_OPT_RECVMAXSZ, 1);\n}\n",
         1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(p, sizeof p, "%s/common/x.c", root);
        write_file(p, cases[i].text);
        rule_result r = scan_tree(root);
        assert_int_equal(r.files, 1);
        if (r.violations != cases[i].violations)
            fail_msg("case %zu: %u violations, want %u: %s", i, r.violations, cases[i].violations,
                     cases[i].text);
        unlink(p);
    }
    rules_quiet = 0;
    snprintf(p, sizeof p, "%s/common", root);
    rmdir(p);
    rmdir(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(scanner_detects_planted_violations),
        cmocka_unit_test(tree_obeys_the_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
