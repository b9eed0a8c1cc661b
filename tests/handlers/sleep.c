/* sleep.c: a handler that sleeps and counts its executions, to prove what ran.
 * For every request it executes it appends one line "<id>\n" to a count file, then
 * sleeps; it returns its inputs (like echo) plus "batch" (INT32 [1]: the batch size).
 * Request params (a config param of the same name is the default):
 *   sleep_ms=N     sleep N ms per batch (default 0)
 *   count_file=P   the file to append to (else env AICFN_TEST_COUNT_FILE; none: no count)
 * Config param only:
 *   init_sleep_ms=N  sleep N ms in init (a slow warm-up; else env AICFN_TEST_INIT_SLEEP_MS)
 *   init_file=P      append "init\n" to P when init starts: how many inits ran
 *   init_fail_once=PATH  when file PATH exists, init removes it and fails (AICFN_E_INVALID,
 *                    after its sleep): the first init fails, the next one succeeds
 *   fini_sleep_ms=N  sleep N ms in fini (a slow teardown; else env AICFN_TEST_FINI_SLEEP_MS),
 *   fini_file=P      then write "fini\n" to P (else env AICFN_TEST_FINI_FILE): proof that
 *                    fini ran to its end
 * Logs through the host API, exercising it. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aicfn.h"

AICFN_FN_DECLARE_ABI()

typedef struct sleep_state {
    long sleep_ms, fini_sleep_ms;
    char count_file[1024], fini_file[1024];
} sleep_state;

static void sleep_ms_now(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

AICFN_EXPORT int aicfn_fn_init(const aicfn_host_api *api, const aicfn_model *model,
                               const aicfn_fn_config *config, void **state) {
    (void)model;
    sleep_state *s = calloc(1, sizeof *s);
    if (s == NULL) return AICFN_E_NOMEM;
    const char *ms = api->find_param(config->params, config->n_params, "sleep_ms");
    const char *cf = api->find_param(config->params, config->n_params, "count_file");
    s->sleep_ms = ms ? atol(ms) : 0;
    snprintf(s->count_file, sizeof s->count_file, "%s", cf ? cf : "");
    const char *ims = api->find_param(config->params, config->n_params, "init_sleep_ms");
    if (!ims) ims = getenv("AICFN_TEST_INIT_SLEEP_MS");
    long init_ms = ims ? atol(ims) : 0;
    const char *inf = api->find_param(config->params, config->n_params, "init_file");
    if (inf) {
        int fd = open(inf, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            ssize_t w = write(fd, "init\n", 5);
            (void)w;
            close(fd);
        }
    }
    if (init_ms > 0) sleep_ms_now(init_ms);
    const char *once = api->find_param(config->params, config->n_params, "init_fail_once");
    if (once && unlink(once) == 0) {
        free(s);
        return AICFN_E_INVALID;
    }
    const char *fms = api->find_param(config->params, config->n_params, "fini_sleep_ms");
    const char *ff = api->find_param(config->params, config->n_params, "fini_file");
    if (!fms) fms = getenv("AICFN_TEST_FINI_SLEEP_MS");
    if (!ff) ff = getenv("AICFN_TEST_FINI_FILE");
    s->fini_sleep_ms = fms ? atol(fms) : 0;
    snprintf(s->fini_file, sizeof s->fini_file, "%s", ff ? ff : "");
    api->log(AICFN_LOG_DEBUG, "init: sleep_ms=%ld count_file=%s", s->sleep_ms, s->count_file);
    *state = s;
    return AICFN_OK;
}

AICFN_EXPORT void aicfn_fn_fini(const aicfn_host_api *api, void *state) {
    sleep_state *s = state;
    api->log(AICFN_LOG_DEBUG, "fini");
    if (s->fini_sleep_ms > 0) sleep_ms_now(s->fini_sleep_ms);
    if (s->fini_file[0]) {
        FILE *f = fopen(s->fini_file, "w");
        if (f) {
            fputs("fini\n", f);
            fclose(f);
        }
    }
    free(state);
}

AICFN_EXPORT int aicfn_fn_invoke(const aicfn_host_api *api, void *state, const aicfn_model *model,
                                 const aicfn_request *reqs, aicfn_response *const *resps, uint32_t n) {
    (void)model;
    sleep_state *s = state;
    long sleep_ms = s->sleep_ms;
    for (uint32_t i = 0; i < n; i++) {
        const char *ms = api->find_param(reqs[i].params, reqs[i].n_params, "sleep_ms");
        if (ms) sleep_ms = atol(ms);
        const char *cf = api->find_param(reqs[i].params, reqs[i].n_params, "count_file");
        if (cf == NULL && s->count_file[0]) cf = s->count_file;
        if (cf == NULL) cf = getenv("AICFN_TEST_COUNT_FILE");
        if (cf && cf[0]) {
            int fd = open(cf, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd < 0) {
                api->set_error(resps[i], AICFN_E_IO, "sleep handler: cannot open %s", cf);
                continue;
            }
            char line[300];
            int len = snprintf(line, sizeof line, "%s\n", reqs[i].id ? reqs[i].id : "");
            if (len > (int)sizeof line - 1) len = (int)sizeof line - 1;
            ssize_t w = write(fd, line, (size_t)len);
            close(fd);
            if (w != len) {
                api->set_error(resps[i], AICFN_E_IO, "sleep handler: short write to %s", cf);
                continue;
            }
        }
        for (uint32_t k = 0; k < reqs[i].n_inputs; k++) {
            const aicfn_tensor *in = &reqs[i].inputs[k];
            aicfn_tensor *out =
                api->alloc_output(resps[i], in->name, in->dtype, in->ndim, in->shape, in->nbytes);
            if (out == NULL) break;
            if (in->nbytes) memcpy(out->data, in->data, (size_t)in->nbytes);
        }
        int64_t one[1] = {1};
        aicfn_tensor *b = api->alloc_output(resps[i], "batch", AICFN_DTYPE_INT32, 1, one, 0);
        if (b) *(int32_t *)b->data = (int32_t)n;
    }
    if (sleep_ms > 0) {
        struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
    return AICFN_OK;
}
