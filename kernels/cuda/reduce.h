// Reductions on the GPU, twins of kernels/cpu/reduce.h (dtype F32 or BF16, fp32 or better
// accumulation, deterministic: fixed summation order). Work is queued on the context's stream.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// *out (one device element of dtype out_t) = factor · Σ x  — x:(n) of dtype t, summed in double.
void sum(ScalarType t, const void* x, int64_t n, ScalarType out_t, void* out, double factor = 1.0);

// x:(shape) contiguous → out:(out_numel) contiguous, summed over the dims where out_stride is 0
// (out_stride: out's strides read as x's shape, 0 on the broadcast dims, as kernels/cpu/reduce.h).
void sum_to(ScalarType t, const void* x, const int64_t* shape, int ndim, const int64_t* out_stride, void* out,
            int64_t out_numel);

// One device scalar of gather_scalars: a float, double or int32 element at p.
struct ScalarRef {
  enum Kind { F32, F64, I32 } kind;
  const void* p;
};
constexpr int kMaxGatherScalars = 16;
// out:(in.size()) double = the scalars of `in`, in one launch (several results of a step read
// back by one copy). At most kMaxGatherScalars.
void gather_scalars(const std::vector<ScalarRef>& in, double* out);

}  // namespace pf::kernels::cuda
