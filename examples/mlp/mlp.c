/* mlp.c: the mlp example: a two-layer perceptron classifier.
 *   logits = relu(x · fc1.weightᵀ + fc1.bias) · fc2.weightᵀ + fc2.bias
 * Input "x": FP32 [rows, D] (or [D] for one row). Outputs: "logits" FP32 [rows, C],
 * "probs" FP32 [rows, C] (softmax), "label" INT64 [rows] (argmax); for a 1-D input the
 * leading dimension is dropped. Every row is computed the same way whatever the batch,
 * so batched calls give the same outputs as single ones.
 * Model tensors in host memory run the C path below; in device memory (a GPU worker)
 * the CUDA path in mlp_kernels.cu, compiled when the build has CUDA. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aicfn.h"
#ifdef AICFN_HANDLER_CUDA
#include "mlp_cuda.h"
#endif

AICFN_FN_DECLARE_ABI()

typedef struct mlp_state {
    const float *w1, *b1, *w2, *b2; /* host or device pointers, as the model lives */
    int d, h, c;
    int on_device;
#ifdef AICFN_HANDLER_CUDA
    mlp_cuda *cuda;
#endif
} mlp_state;

static const aicfn_tensor *mlp_find(const aicfn_model *m, const char *name) {
    for (uint32_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

static const aicfn_tensor *mlp_want(const aicfn_host_api *api, const aicfn_model *m, const char *name,
                                    uint32_t ndim) {
    const aicfn_tensor *t = mlp_find(m, name);
    if (t == NULL) {
        api->log(AICFN_LOG_ERROR, "model %s has no tensor '%s'", m->name, name);
        return NULL;
    }
    if (t->dtype != AICFN_DTYPE_FP32 || t->ndim != ndim) {
        api->log(AICFN_LOG_ERROR, "tensor '%s' must be FP32 with %u dims", name, ndim);
        return NULL;
    }
    return t;
}

AICFN_EXPORT int aicfn_fn_init(const aicfn_host_api *api, const aicfn_model *model,
                               const aicfn_fn_config *config, void **state) {
    (void)config;
    if (model == NULL) {
        api->log(AICFN_LOG_ERROR, "mlp needs a model (fc1.weight, fc1.bias, fc2.weight, fc2.bias)");
        return AICFN_E_INVALID;
    }
    const aicfn_tensor *w1 = mlp_want(api, model, "fc1.weight", 2), *b1 = mlp_want(api, model, "fc1.bias", 1),
                       *w2 = mlp_want(api, model, "fc2.weight", 2), *b2 = mlp_want(api, model, "fc2.bias", 1);
    if (!w1 || !b1 || !w2 || !b2) return AICFN_E_INVALID;
    int64_t h = w1->shape[0], d = w1->shape[1], c = w2->shape[0];
    if (h <= 0 || d <= 0 || c <= 0 || h > 65536 || d > 65536 || c > 65536 || b1->shape[0] != h ||
        w2->shape[1] != h || b2->shape[0] != c) {
        api->log(AICFN_LOG_ERROR, "inconsistent shapes: fc1.weight [%lld,%lld] fc2.weight [%lld,%lld]",
                 (long long)h, (long long)d, (long long)w2->shape[0], (long long)w2->shape[1]);
        return AICFN_E_INVALID;
    }
    mlp_state *s = calloc(1, sizeof *s);
    if (s == NULL) return AICFN_E_NOMEM;
    s->w1 = w1->data, s->b1 = b1->data, s->w2 = w2->data, s->b2 = b2->data;
    s->d = (int)d, s->h = (int)h, s->c = (int)c;
    s->on_device = model->mem == AICFN_MEM_DEVICE;
    if (s->on_device) {
#ifdef AICFN_HANDLER_CUDA
        char msg[256] = "";
        if (mlp_cuda_create(model->device_id, s->h, &s->cuda, msg, sizeof msg) != 0) {
            api->log(AICFN_LOG_ERROR, "CUDA path on device %d: %s", model->device_id, msg);
            free(s);
            return AICFN_E_DEVICE;
        }
        api->log(AICFN_LOG_INFO, "CUDA path on device %d (%dx%dx%d)", model->device_id, s->d, s->h, s->c);
#else
        api->log(AICFN_LOG_ERROR, "the model is in device memory but this handler was built without CUDA");
        free(s);
        return AICFN_E_UNSUPPORTED;
#endif
    } else {
        api->log(AICFN_LOG_DEBUG, "C path (%dx%dx%d)", s->d, s->h, s->c);
    }
    *state = s;
    return AICFN_OK;
}

AICFN_EXPORT void aicfn_fn_fini(const aicfn_host_api *api, void *state) {
    (void)api;
    mlp_state *s = state;
    if (s == NULL) return;
#ifdef AICFN_HANDLER_CUDA
    mlp_cuda_destroy(s->cuda);
#endif
    free(s);
}

/* The C path: one row at a time, a sequential sum per output. */
static void mlp_row_cpu(const mlp_state *s, const float *x, float *hid, float *logits) {
    for (int j = 0; j < s->h; j++) {
        float acc = s->b1[j];
        const float *w = s->w1 + (size_t)j * s->d;
        for (int k = 0; k < s->d; k++)
            acc += w[k] * x[k];
        hid[j] = acc > 0.0f ? acc : 0.0f;
    }
    for (int o = 0; o < s->c; o++) {
        float acc = s->b2[o];
        const float *w = s->w2 + (size_t)o * s->h;
        for (int j = 0; j < s->h; j++)
            acc += w[j] * hid[j];
        logits[o] = acc;
    }
}

/* softmax and argmax of one row of logits. */
static int64_t mlp_finish_row(const float *logits, int c, float *probs) {
    int64_t best = 0;
    float m = logits[0];
    for (int o = 1; o < c; o++)
        if (logits[o] > m) m = logits[o], best = o;
    double sum = 0.0;
    for (int o = 0; o < c; o++)
        sum += exp((double)logits[o] - (double)m);
    for (int o = 0; o < c; o++)
        probs[o] = (float)(exp((double)logits[o] - (double)m) / sum);
    return best;
}

/* Checks request i's input and allocates its outputs; returns its row count or -1. */
static int64_t mlp_prepare(const aicfn_host_api *api, const mlp_state *s, const aicfn_request *req,
                           aicfn_response *resp, const float **x, float **logits, float **probs,
                           int64_t **label) {
    const aicfn_tensor *t = api->find_input(req, "x");
    if (t == NULL) {
        api->set_error(resp, AICFN_E_INVALID, "mlp: missing input 'x' (FP32 [rows, %d])", s->d);
        return -1;
    }
    if (t->dtype != AICFN_DTYPE_FP32 || t->ndim < 1 || t->ndim > 2 || t->shape[t->ndim - 1] != s->d) {
        api->set_error(resp, AICFN_E_INVALID, "mlp: input 'x' must be FP32 [rows, %d] or [%d]", s->d, s->d);
        return -1;
    }
    int64_t rows = t->ndim == 2 ? t->shape[0] : 1;
    int64_t shape2[2] = {rows, s->c}, shape1[1] = {rows};
    int64_t c1[1] = {s->c};
    int two = t->ndim == 2;
    aicfn_tensor *lo = api->alloc_output(resp, "logits", AICFN_DTYPE_FP32, two ? 2 : 1, two ? shape2 : c1, 0);
    aicfn_tensor *pr =
        lo ? api->alloc_output(resp, "probs", AICFN_DTYPE_FP32, two ? 2 : 1, two ? shape2 : c1, 0) : NULL;
    aicfn_tensor *la =
        pr ? api->alloc_output(resp, "label", AICFN_DTYPE_INT64, two ? 1 : 0, shape1, 0) : NULL;
    if (la == NULL) return -1; /* alloc_output recorded why */
    *x = t->data;
    *logits = lo->data;
    *probs = pr->data;
    *label = la->data;
    return rows;
}

AICFN_EXPORT int aicfn_fn_invoke(const aicfn_host_api *api, void *state, const aicfn_model *model,
                                 const aicfn_request *reqs, aicfn_response *const *resps, uint32_t n) {
    (void)model;
    mlp_state *s = state;
    const float *x[n];
    float *logits[n], *probs[n];
    int64_t *label[n], rows[n];
    int64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        rows[i] = mlp_prepare(api, s, &reqs[i], resps[i], &x[i], &logits[i], &probs[i], &label[i]);
        if (rows[i] > 0) total += rows[i];
    }
    if (!s->on_device) {
        float *hid = malloc((size_t)s->h * sizeof *hid);
        if (hid == NULL) return AICFN_E_NOMEM;
        for (uint32_t i = 0; i < n; i++)
            for (int64_t r = 0; r < rows[i]; r++) {
                mlp_row_cpu(s, x[i] + r * s->d, hid, logits[i] + r * s->c);
                label[i][r] = mlp_finish_row(logits[i] + r * s->c, s->c, probs[i] + r * s->c);
            }
        free(hid);
        return AICFN_OK;
    }
#ifdef AICFN_HANDLER_CUDA
    /* One launch for the whole batch: gather the rows, run, scatter the logits. */
    if (total == 0) return AICFN_OK;
    if (total > (1 << 24)) return AICFN_E_TOO_LARGE;
    float *xs = malloc((size_t)total * s->d * sizeof(float)),
          *ls = malloc((size_t)total * s->c * sizeof(float));
    if (xs == NULL || ls == NULL) {
        free(xs);
        free(ls);
        return AICFN_E_NOMEM;
    }
    int64_t at = 0;
    for (uint32_t i = 0; i < n; i++)
        if (rows[i] > 0) {
            memcpy(xs + at * s->d, x[i], (size_t)rows[i] * s->d * sizeof(float));
            at += rows[i];
        }
    char msg[256] = "";
    int rc = mlp_cuda_forward(s->cuda, s->w1, s->b1, s->w2, s->b2, s->d, s->h, s->c, xs, (int)total, ls, msg,
                              sizeof msg);
    if (rc != 0) {
        for (uint32_t i = 0; i < n; i++)
            if (rows[i] >= 0) api->set_error(resps[i], AICFN_E_DEVICE, "mlp CUDA path: %s", msg);
    } else {
        at = 0;
        for (uint32_t i = 0; i < n; i++)
            for (int64_t r = 0; r < (rows[i] > 0 ? rows[i] : 0); r++, at++) {
                memcpy(logits[i] + r * s->c, ls + at * s->c, (size_t)s->c * sizeof(float));
                label[i][r] = mlp_finish_row(logits[i] + r * s->c, s->c, probs[i] + r * s->c);
            }
    }
    free(xs);
    free(ls);
    return AICFN_OK;
#else
    (void)total;
    return AICFN_E_UNSUPPORTED;
#endif
}
