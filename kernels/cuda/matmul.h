// Matrix products on the GPU through cuBLAS, twins of kernels/cpu/matmul.h. Row-major operands;
// dtype F32 (fp32 arithmetic, no TF32) or BF16 (tensor cores, fp32 accumulation). Work is queued
// on the context's stream.
#pragma once
#include <cstdint>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// c[i] (+)= op(a[i])·op(b[i]) for i < batch; op(X) = Xᵀ when trans_X. op(a):(M,K) op(b):(K,N)
// c:(M,N). An operand that is not batched is shared by every i; c not batched (with batch > 1)
// receives the sum over i. accumulate adds to c instead of overwriting it.
void gemm(ScalarType t, int64_t batch, int64_t M, int64_t N, int64_t K, const void* a, bool a_batched,
          bool trans_a, const void* b, bool b_batched, bool trans_b, void* c, bool c_batched,
          bool accumulate);

// out:(rows,n) += bias:(n) on every row.
void add_row_vector(ScalarType t, void* out, const void* bias, int64_t rows, int64_t n);

}  // namespace pf::kernels::cuda
