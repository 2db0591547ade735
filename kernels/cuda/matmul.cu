#include "kernels/cuda/matmul.h"

#include <cublas_v2.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_check.h"

namespace pf::kernels::cuda {

namespace {

cudaDataType_t cuda_type(ScalarType t) {
  switch (t) {
    case ScalarType::F32: return CUDA_R_32F;
    case ScalarType::BF16: return CUDA_R_16BF;
    case ScalarType::F16: return CUDA_R_16F;
    default: break;
  }
  PF_FAIL("gemm: no cuBLAS path for dtype " << scalar_type_name(t) << " (float32 or bfloat16 expected)");
}

template <class T>
__global__ void add_row_vector_kernel(T* out, const T* bias, int64_t rows, int64_t n) {
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<T>(to_f(out[i]) + to_f(bias[i % n]));
}

// One strided-batched call. Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, and a
// row-major X is the column-major Xᵀ in memory: so cuBLAS gets B first, then A, untransposed
// when the row-major operand is, and m = N, n = M.
void gemm_call(ScalarType t, int64_t batch, int64_t M, int64_t N, int64_t K, const void* a, int64_t stride_a,
               bool trans_a, const void* b, int64_t stride_b, bool trans_b, void* c, int64_t stride_c,
               float beta) {
  const cudaDataType_t type = cuda_type(t);
  const float alpha = 1.0f;
  const int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N;
  PF_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX && batch <= INT32_MAX,
           "gemm: sizes beyond int32 (batch " << batch << ", M " << M << ", N " << N << ", K " << K << ")");
  PF_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      static_cast<cublasHandle_t>(cublas_handle()), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
      &alpha, b, type, static_cast<int>(ldb), stride_b, a, type, static_cast<int>(lda), stride_a, &beta, c,
      type, static_cast<int>(N), stride_c, static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void gemm(ScalarType t, int64_t batch, int64_t M, int64_t N, int64_t K, const void* a, bool a_batched,
          bool trans_a, const void* b, bool b_batched, bool trans_b, void* c, bool c_batched,
          bool accumulate) {
  if (M == 0 || N == 0 || batch == 0) return;
  const size_t es = t == ScalarType::F32 ? 4 : 2;
  if (K == 0) {  // empty sums
    if (!accumulate) {
      memset_zero(c, static_cast<size_t>(c_batched ? batch : 1) * M * N * es);
    }
    return;
  }
  const int64_t sa = a_batched ? M * K : 0, sb = b_batched ? K * N : 0;
  if (c_batched || batch == 1) {
    gemm_call(t, batch, M, N, K, a, sa, trans_a, b, sb, trans_b, c, c_batched ? M * N : 0,
              accumulate ? 1.0f : 0.0f);
    return;
  }
  // c shared over the batch: Σ_i op(A_i)·op(B_i).
  if (a_batched && b_batched && trans_a && !trans_b) {
    // A_i stored (K,M) and B_i stored (K,N), stacked: one product with inner dim batch·K.
    gemm_call(t, 1, M, N, batch * K, a, 0, true, b, 0, false, c, 0, accumulate ? 1.0f : 0.0f);
    return;
  }
  for (int64_t i = 0; i < batch; ++i) {
    const char* ai = static_cast<const char*>(a) + static_cast<size_t>(i * sa) * es;
    const char* bi = static_cast<const char*>(b) + static_cast<size_t>(i * sb) * es;
    gemm_call(t, 1, M, N, K, ai, 0, trans_a, bi, 0, trans_b, c, 0, (accumulate || i > 0) ? 1.0f : 0.0f);
  }
}

void add_row_vector(ScalarType t, void* out, const void* bias, int64_t rows, int64_t n) {
  if (rows * n == 0) return;
  dispatch_dtype(t, "add_row_vector", [&](auto tag) {
    using T = decltype(tag);
    add_row_vector_kernel<T><<<grid_for(rows * n, 256), 256, 0, cur_stream()>>>(
        static_cast<T*>(out), static_cast<const T*>(bias), rows, n);
    PF_CUDA_CHECK_LAUNCH("add_row_vector");
  });
}

}  // namespace pf::kernels::cuda
