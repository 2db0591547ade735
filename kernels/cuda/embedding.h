// Embedding lookup and its scatter-add backward on the GPU, twins of kernels/cpu/embedding.h.
// dtype F32 or BF16 (fp32 sums). Work is queued on the context's stream.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// weight:(V,D) idx:(n) → out:(n,D). An index outside [0,V) gives a row of NaN.
void embedding_forward(ScalarType t, const void* weight, const int32_t* idx, void* out, int64_t n, int64_t V,
                       int64_t D);

// Scratch bytes embedding_backward needs with the same arguments.
size_t embedding_backward_workspace_bytes(int64_t n, int64_t V, int64_t D, bool deterministic = false);

// dout:(n,D) idx:(n) → dweight:(V,D) written (=): row v = Σ_{i: idx[i]=v} dout[i]. Indices
// outside [0,V) are skipped. Three ways, by table size and mode:
// - V ≤ 96 rows of any width (every table of the pair-bias model: types, relative positions,
//   distance bins), or V·D ≤ 3072: per-warp tables in shared memory, in tiles of 32 columns,
//   rows in order, then per-block partials added in block order. Deterministic in both modes
//   (the order depends only on n and D).
// - larger tables, deterministic = false: fp32 atomics (fast; order-dependent rounding).
// - larger tables, deterministic = true: a stable radix sort of (index, row), each index's rows
//   summed in chunks of 32 in row order, the chunk sums added in chunk order. The summation
//   order depends only on idx: bitwise identical run to run, on any GPU.
void embedding_backward(ScalarType t, const void* dout, const int32_t* idx, void* dweight, int64_t n,
                        int64_t V, int64_t D, void* workspace, bool deterministic = false);

}  // namespace pf::kernels::cuda
