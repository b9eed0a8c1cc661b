/* echo.c: the echo function: returns each request's inputs unchanged, as outputs of the
 * same names. It has no model; it measures the latency floor of an invocation.
 * Built against include/aicfn.h only. */
#include <string.h>

#include "aicfn.h"

AICFN_FN_DECLARE_ABI()

AICFN_EXPORT int aicfn_fn_invoke(const aicfn_host_api *api, void *state, const aicfn_model *model,
                                 const aicfn_request *reqs, aicfn_response *const *resps, uint32_t n) {
    (void)state;
    (void)model;
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t k = 0; k < reqs[i].n_inputs; k++) {
            const aicfn_tensor *in = &reqs[i].inputs[k];
            aicfn_tensor *out =
                api->alloc_output(resps[i], in->name, in->dtype, in->ndim, in->shape, in->nbytes);
            if (out == NULL) break; /* the response carries the reason */
            if (in->nbytes) memcpy(out->data, in->data, (size_t)in->nbytes);
        }
    }
    return AICFN_OK;
}
