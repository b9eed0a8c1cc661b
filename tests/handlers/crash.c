/* crash.c: a handler that crashes its process on purpose (a NULL write), to show that
 * a crashing handler takes down only its own worker. Param crash=0 makes it return
 * normally (INT32 "ok" = 1). */
#include <signal.h>
#include <string.h>

#include "aicfn.h"

AICFN_FN_DECLARE_ABI()

AICFN_EXPORT int aicfn_fn_invoke(const aicfn_host_api *api, void *state, const aicfn_model *model,
                                 const aicfn_request *reqs, aicfn_response *const *resps, uint32_t n) {
    (void)state, (void)model;
    for (uint32_t i = 0; i < n; i++) {
        const char *c = api->find_param(reqs[i].params, reqs[i].n_params, "crash");
        if (c == NULL || strcmp(c, "0") != 0) {
            api->log(AICFN_LOG_WARN, "crashing on purpose");
            raise(SIGSEGV);
        }
        int64_t one[1] = {1};
        aicfn_tensor *t = api->alloc_output(resps[i], "ok", AICFN_DTYPE_INT32, 1, one, 0);
        if (t) *(int32_t *)t->data = 1;
    }
    return AICFN_OK;
}
