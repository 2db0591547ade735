// Embedding lookup and its scatter-add backward on the GPU, twins of kernels/cpu/embedding.h.
// dtype F32 or BF16 (fp32 sums). Work is queued on the context's stream.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// weight:(V,D) idx:(n) → out:(n,D). An index outside [0,V) gives a row of NaN.
void embedding_forward(ScalarType t, const void* weight, const int32_t* idx, void* out, int64_t n,
                       int64_t V, int64_t D);

// Scratch bytes embedding_backward needs (per-block partial tables; 0 for tables too large to
// privatise, which are summed with atomics instead).
size_t embedding_backward_workspace_bytes(int64_t n, int64_t V, int64_t D);

// dout:(n,D) idx:(n) → dweight:(V,D) written (=): row v = Σ_{i: idx[i]=v} dout[i].
// Tables with V·D ≤ 3072 (every table of the pair-bias model) are summed in a fixed order:
// bitwise deterministic. Larger ones use fp32 atomics (order-dependent rounding). Indices
// outside [0,V) are skipped.
void embedding_backward(ScalarType t, const void* dout, const int32_t* idx, void* dweight,
                        int64_t n, int64_t V, int64_t D, void* workspace);

}  // namespace pf::kernels::cuda
