/* crash.c: a handler that kills its worker on request, to test how the gateway handles a
 * worker dying with a call in flight (retry once for idempotent functions, back-off for a
 * request that crashed its worker twice). Otherwise it echoes its inputs.
 * Request params: crash=1 aborts the worker process (abort(), SIGABRT); sleep_ms=N
 * sleeps N ms first (the call is in flight on its worker meanwhile). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aicfn.h"

AICFN_FN_DECLARE_ABI()

AICFN_EXPORT int aicfn_fn_invoke(const aicfn_host_api *api, void *state, const aicfn_model *model,
                                 const aicfn_request *reqs, aicfn_response *const *resps, uint32_t n) {
    (void)state;
    (void)model;
    for (uint32_t i = 0; i < n; i++) {
        const char *sleep_ms = api->find_param(reqs[i].params, reqs[i].n_params, "sleep_ms");
        if (sleep_ms) {
            long ms = strtol(sleep_ms, NULL, 10);
            struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        const char *crash = api->find_param(reqs[i].params, reqs[i].n_params, "crash");
        if (crash && strcmp(crash, "1") == 0) abort();
        for (uint32_t k = 0; k < reqs[i].n_inputs; k++) {
            const aicfn_tensor *in = &reqs[i].inputs[k];
            aicfn_tensor *out = api->alloc_output(resps[i], in->name, in->dtype, in->ndim, in->shape, in->nbytes);
            if (out == NULL) break;
            if (in->nbytes) memcpy(out->data, in->data, (size_t)in->nbytes);
        }
    }
    return AICFN_OK;
}
