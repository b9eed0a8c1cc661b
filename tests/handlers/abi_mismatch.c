/* abi_mismatch.c: a handler built for the NEXT major version of the function ABI. The
 * worker must refuse it at load with AICFN_E_ABI, naming both versions. */
#include "aicfn.h"

AICFN_FN_DECLARE_ABI_VERSION(AICFN_ABI_MAJOR + 1, AICFN_ABI_MINOR)

AICFN_EXPORT int aicfn_fn_invoke(const aicfn_host_api *api, void *state, const aicfn_model *model,
                                 const aicfn_request *reqs, aicfn_response *const *resps, uint32_t n) {
    (void)api, (void)state, (void)model, (void)reqs, (void)resps, (void)n;
    return AICFN_OK;
}
