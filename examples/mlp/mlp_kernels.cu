// mlp_kernels.cu: the CUDA path of the mlp example: one block per input row computes the
// hidden layer into shared memory, then the logits. Same arithmetic order as the C path
// (a sequential sum per output), so both give the same classes and near-equal logits.
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "mlp_cuda.h"

struct mlp_cuda {
    int device;
    cudaStream_t stream;
    float *x;        // device scratch: rows × d
    float *logits;   // device scratch: rows × c
    size_t cap_rows;
    int cap_d, cap_c;
};

static int mlp_cuda_err(cudaError_t e, const char *what, char *msg, size_t cap) {
    if (e == cudaSuccess) return 0;
    if (msg && cap) snprintf(msg, cap, "%s: %s (%d)", what, cudaGetErrorString(e), (int)e);
    return -1;
}

__global__ void mlp_forward_kernel(const float *w1, const float *b1, const float *w2, const float *b2,
                                   const float *x, float *logits, int d, int h, int c) {
    extern __shared__ float hid[];
    const float *xr = x + (size_t)blockIdx.x * d;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float acc = b1[j];
        for (int k = 0; k < d; k++) acc += w1[(size_t)j * d + k] * xr[k];
        hid[j] = acc > 0.0f ? acc : 0.0f;
    }
    __syncthreads();
    for (int o = threadIdx.x; o < c; o += blockDim.x) {
        float acc = b2[o];
        for (int j = 0; j < h; j++) acc += w2[(size_t)o * h + j] * hid[j];
        logits[(size_t)blockIdx.x * c + o] = acc;
    }
}

extern "C" int mlp_cuda_create(int device, int h, mlp_cuda **out, char *msg, size_t cap) {
    *out = NULL;
    if (mlp_cuda_err(cudaSetDevice(device), "cudaSetDevice", msg, cap)) return -1;
    // The hidden layer lives in dynamic shared memory: past the default 48 KiB a kernel
    // must opt in, up to the device's per-block limit.
    size_t shared = (size_t)h * sizeof(float);
    if (shared > 48u * 1024) {
        int most = 0;
        if (mlp_cuda_err(cudaDeviceGetAttribute(&most, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                         "cudaDeviceGetAttribute", msg, cap))
            return -1;
        if (shared > (size_t)most) {
            snprintf(msg, cap, "hidden size %d needs %zu bytes of shared memory per block; device %d has %d", h,
                     shared, device, most);
            return -1;
        }
        if (mlp_cuda_err(cudaFuncSetAttribute(mlp_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              (int)shared),
                         "cudaFuncSetAttribute", msg, cap))
            return -1;
    }
    mlp_cuda *m = (mlp_cuda *)calloc(1, sizeof *m);
    if (m == NULL) {
        snprintf(msg, cap, "out of host memory");
        return -1;
    }
    m->device = device;
    if (mlp_cuda_err(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking), "cudaStreamCreate", msg, cap)) {
        free(m);
        return -1;
    }
    *out = m;
    return 0;
}

extern "C" int mlp_cuda_forward(mlp_cuda *m, const float *w1, const float *b1, const float *w2, const float *b2,
                                int d, int h, int c, const float *x, int rows, float *logits, char *msg,
                                size_t cap) {
    if (rows <= 0) return 0;
    if (mlp_cuda_err(cudaSetDevice(m->device), "cudaSetDevice", msg, cap)) return -1;
    if ((size_t)rows > m->cap_rows || d > m->cap_d || c > m->cap_c) {
        cudaFree(m->x);
        cudaFree(m->logits);
        m->x = m->logits = NULL;
        m->cap_rows = 0;
        size_t r = (size_t)rows < 64 ? 64 : (size_t)rows;
        if (mlp_cuda_err(cudaMalloc((void **)&m->x, r * (size_t)d * sizeof(float)), "cudaMalloc x", msg, cap) ||
            mlp_cuda_err(cudaMalloc((void **)&m->logits, r * (size_t)c * sizeof(float)), "cudaMalloc logits", msg,
                         cap)) {
            (void)cudaGetLastError(); // not sticky: keep it from failing the next launch's check
            return -1;
        }
        m->cap_rows = r;
        m->cap_d = d;
        m->cap_c = c;
    }
    if (mlp_cuda_err(cudaMemcpyAsync(m->x, x, (size_t)rows * d * sizeof(float), cudaMemcpyHostToDevice, m->stream),
                     "copy x to device", msg, cap))
        return -1;
    int threads = h < 128 ? 128 : 256;
    (void)cudaGetLastError(); // the check below must see this launch's error only
    mlp_forward_kernel<<<rows, threads, (size_t)h * sizeof(float), m->stream>>>(w1, b1, w2, b2, m->x, m->logits, d,
                                                                                h, c);
    if (mlp_cuda_err(cudaGetLastError(), "mlp_forward_kernel launch", msg, cap)) return -1;
    if (mlp_cuda_err(cudaMemcpyAsync(logits, m->logits, (size_t)rows * c * sizeof(float), cudaMemcpyDeviceToHost,
                                     m->stream),
                     "copy logits to host", msg, cap))
        return -1;
    return mlp_cuda_err(cudaStreamSynchronize(m->stream), "cudaStreamSynchronize", msg, cap);
}

extern "C" void mlp_cuda_destroy(mlp_cuda *m) {
    if (m == NULL) return;
    cudaSetDevice(m->device);
    cudaFree(m->x);
    cudaFree(m->logits);
    cudaStreamDestroy(m->stream);
    free(m);
}
