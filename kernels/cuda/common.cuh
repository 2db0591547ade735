// Shared by the framework kernels of kernels/cuda (not the flash-bias ones): the stream, element
// conversions (every kernel computes in fp32 and stores its element type), dtype dispatch, launch
// sizes and warp/block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_attr.h"
#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

using bf16 = __nv_bfloat16;

inline cudaStream_t cur_stream() { return static_cast<cudaStream_t>(stream()); }

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// Calls f(T{}) with T = float for F32 and bf16 for BF16; anything else fails naming `what`.
template <class F>
void dispatch_dtype(ScalarType t, const char* what, F&& f) {
  switch (t) {
    case ScalarType::F32: f(float{}); return;
    case ScalarType::BF16: f(bf16{}); return;
    default: break;
  }
  PF_FAIL(what << ": no CUDA kernel for dtype " << scalar_type_name(t) << " (float32 or bfloat16 expected)");
}

// Grid for a grid-stride loop over n items: enough blocks to fill the GPU, never more than needed.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 4096)));
}

// The most dynamic shared memory a block of the current device may opt in to (227 KB on sm_90).
inline size_t max_smem_bytes() { return static_cast<size_t>(smem_optin_bytes()); }

// Lets `kernel` launch with smem bytes of dynamic shared memory (opting in past 48 KB).
template <class K>
void allow_smem(K kernel, size_t smem) {
  if (smem > 48 * 1024)
    PF_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
}

template <class A>
__device__ __forceinline__ A warp_sum(A v, int width = 32) {
  for (int o = width / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o, width);
  return v;
}

__device__ __forceinline__ float warp_max(float v, int width = 32) {
  for (int o = width / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, width));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in thread 0.
// Fixed order: deterministic.
template <class A>
__device__ A block_sum(A v) {
  __shared__ A partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  A total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
  return total;
}

}  // namespace pf::kernels::cuda
