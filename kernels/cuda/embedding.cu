#include "kernels/cuda/embedding.h"

#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int64_t kMaxPrivate = 3072;  // V·D floats per warp: 4 warps × 12 KiB = 48 KiB shared
constexpr int kMaxBlocks = 512;

template <class T>
__global__ void embedding_forward_kernel(const T* weight, const int32_t* idx, T* out, int64_t n,
                                         int64_t V, int64_t D) {
  const int64_t total = n * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / D, d = i % D;
    const int32_t v = idx[row];
    out[i] = (v >= 0 && v < V) ? weight[v * D + d] : from_f<T>(NAN);
  }
}

// Each warp sums a contiguous run of rows into its private table in shared memory, lane l owning
// columns l, l+32, ... (no two lanes touch one address, rows in order: deterministic); the block
// adds its warps' tables in order into its partial table.
template <class T>
__global__ void embedding_backward_private_kernel(const T* dout, const int32_t* idx, int64_t n,
                                                  int64_t V, int64_t D, float* partial) {
  extern __shared__ float table[];  // [kWarps][V*D]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t VD = V * D;
  for (int64_t k = threadIdx.x; k < kWarps * VD; k += blockDim.x) table[k] = 0;
  __syncthreads();
  const int64_t chunks = int64_t(gridDim.x) * kWarps, chunk = blockIdx.x * int64_t(kWarps) + warp;
  const int64_t lo = n * chunk / chunks, hi = n * (chunk + 1) / chunks;
  float* mine = table + warp * VD;
  for (int64_t r = lo; r < hi; ++r) {
    const int32_t v = idx[r];
    if (v < 0 || v >= V) continue;
    for (int64_t d = lane; d < D; d += 32) mine[v * D + d] += to_f(dout[r * D + d]);
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < VD; k += blockDim.x) {
    float s = 0;
    for (int w = 0; w < kWarps; ++w) s += table[w * VD + k];
    partial[blockIdx.x * VD + k] = s;
  }
}

template <class T>
__global__ void embedding_finalize_kernel(const float* partial, int blocks, int64_t VD, T* dweight) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < VD;
       k += int64_t(gridDim.x) * blockDim.x) {
    float s = 0;
    for (int b = 0; b < blocks; ++b) s += partial[b * VD + k];
    dweight[k] = from_f<T>(s);
  }
}

template <class T>
__global__ void embedding_backward_atomic_kernel(const T* dout, const int32_t* idx, int64_t n,
                                                 int64_t D, int64_t V, float* acc) {
  const int64_t total = n * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t v = idx[i / D];
    if (v >= 0 && v < V) atomicAdd(acc + v * D + i % D, to_f(dout[i]));
  }
}

__global__ void f32_to_bf16_kernel(const float* src, bf16* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

int private_blocks(int64_t n) {
  // at least ~256 rows per warp so that the partial tables stay few
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, n / (256 * kWarps))));
}

}  // namespace

void embedding_forward(ScalarType t, const void* weight, const int32_t* idx, void* out, int64_t n,
                       int64_t V, int64_t D) {
  if (n * D == 0) return;
  dispatch_dtype(t, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    embedding_forward_kernel<T><<<grid_for(n * D, 256), 256, 0, cur_stream()>>>(
        static_cast<const T*>(weight), idx, static_cast<T*>(out), n, V, D);
    PF_CUDA_CHECK_LAUNCH("embedding_forward");
  });
}

size_t embedding_backward_workspace_bytes(int64_t n, int64_t V, int64_t D) {
  if (V * D <= kMaxPrivate) return static_cast<size_t>(private_blocks(n)) * V * D * sizeof(float);
  return static_cast<size_t>(V) * D * sizeof(float);  // the fp32 accumulator of the atomic path
}

void embedding_backward(ScalarType t, const void* dout, const int32_t* idx, void* dweight,
                        int64_t n, int64_t V, int64_t D, void* workspace) {
  const int64_t VD = V * D;
  if (VD == 0) return;
  float* ws = static_cast<float*>(workspace);
  dispatch_dtype(t, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    if (VD <= kMaxPrivate) {
      const int blocks = private_blocks(n);
      const size_t smem = kWarps * VD * sizeof(float);
      if (smem > 48 * 1024)
        PF_CUDA_CHECK(cudaFuncSetAttribute(embedding_backward_private_kernel<T>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
      embedding_backward_private_kernel<T><<<blocks, kWarps * 32, smem, cur_stream()>>>(
          static_cast<const T*>(dout), idx, n, V, D, ws);
      PF_CUDA_CHECK_LAUNCH("embedding_backward");
      embedding_finalize_kernel<T><<<grid_for(VD, 256), 256, 0, cur_stream()>>>(
          ws, blocks, VD, static_cast<T*>(dweight));
      PF_CUDA_CHECK_LAUNCH("embedding_finalize");
      return;
    }
    float* acc = std::is_same<T, float>::value ? static_cast<float*>(dweight) : ws;
    memset_zero(acc, VD * sizeof(float));
    if (n * D > 0)
      embedding_backward_atomic_kernel<T><<<grid_for(n * D, 256), 256, 0, cur_stream()>>>(
          static_cast<const T*>(dout), idx, n, D, V, acc);
    PF_CUDA_CHECK_LAUNCH("embedding_backward (atomic)");
    if (!std::is_same<T, float>::value) {
      f32_to_bf16_kernel<<<grid_for(VD, 256), 256, 0, cur_stream()>>>(acc, static_cast<bf16*>(dweight), VD);
      PF_CUDA_CHECK_LAUNCH("embedding_backward (to bf16)");
    }
  });
}

}  // namespace pf::kernels::cuda
