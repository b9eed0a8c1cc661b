/* mlp_cuda.h: the CUDA path of the mlp example (mlp_kernels.cu), called from mlp.c
 * when the model's tensors live in device memory. Only built with AICFN_HANDLER_CUDA. */
#ifndef AICFN_EXAMPLE_MLP_CUDA_H
#define AICFN_EXAMPLE_MLP_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mlp_cuda mlp_cuda;

/* Binds to CUDA device `device` for a hidden layer of `h` units (kept in shared memory
 * per block: fails, saying so, when the device cannot hold it) and creates a stream.
 * Returns 0, or -1 with the reason (the CUDA error's text) in msg. */
int mlp_cuda_create(int device, int h, mlp_cuda **out, char *msg, size_t cap);

/* logits[rows × c] (host) = relu(x · w1ᵀ + b1) · w2ᵀ + b2 for x[rows × d] (host); the
 * weights are device pointers. Grows its device scratch as needed. Returns 0 or -1. */
int mlp_cuda_forward(mlp_cuda *m, const float *w1, const float *b1, const float *w2, const float *b2, int d,
                     int h, int c, const float *x, int rows, float *logits, char *msg, size_t cap);

/* Frees the scratch and the stream. NULL is accepted. */
void mlp_cuda_destroy(mlp_cuda *m);

#ifdef __cplusplus
}
#endif
#endif
