// LayerNorm over the last dim on the GPU, twin of kernels/cpu/layernorm.h (which derives the
// backward). x, y, dy, dx have dtype xt (F32 or BF16); w, b, dw, db have dtype wt (xt or F32:
// fp32 weights with bf16 activations); mean and rstd are always fp32; all arithmetic is fp32.
// Any C up to 29056 (the backward keeps 2·C sums per row group in shared memory). Work is
// queued on the context's stream.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// x:(M,C) w,b:(C) → y:(M,C) mean,rstd:(M) fp32
void layernorm_forward(ScalarType xt, ScalarType wt, const void* x, const void* w, const void* b, void* y,
                       float* mean, float* rstd, int64_t M, int64_t C, double eps);

// Bytes of scratch layernorm_backward needs (per-block partial sums of dw and db, fp32).
size_t layernorm_backward_workspace_bytes(int64_t M, int64_t C);

// dy,x:(M,C) w:(C) mean,rstd:(M) → dx:(M,C) dw,db:(C) (each written with =; null = not wanted).
// dw and db are summed in a fixed order (deterministic).
void layernorm_backward(ScalarType xt, ScalarType wt, const void* dy, const void* x, const void* w,
                        const float* mean, const float* rstd, void* dx, void* dw, void* db, int64_t M,
                        int64_t C, void* workspace);

}  // namespace pf::kernels::cuda
