// Small kernels around the flash-bias backward:
// - preprocess: Δ = rowsum(dO ∘ O), the softmax-Jacobian term of dS = P ∘ (dP − Δ);
// - finalize: fp32 accumulators -> the gradients' own dtype and strides (dQ of the atomic mode,
//   dB of a bias shared over the batch or heads).
// All are memory-bound element loops; one launch each.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/flash_bias_mask.cuh"
#include "kernels/cuda/flash_bias_traits.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"

namespace pf::kernels::cuda::fb {

// out,dout:(B,Nq,H,D) -> delta:(B,H,Nq) fp32. One warp per row (b, h, i).
template <typename T>
__global__ void flash_bias_bwd_delta_kernel(const __grid_constant__ FlashBiasBwdParams p, float* delta) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = int64_t(p.B) * p.H * p.Nq;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const int i = int(r % p.Nq);
    const int h = int((r / p.Nq) % p.H);
    const int b = int(r / (int64_t(p.Nq) * p.H));
    const T* o = static_cast<const T*>(p.out) + b * p.out_stride.batch + int64_t(i) * p.out_stride.row +
                 h * p.out_stride.head;
    const T* d = static_cast<const T*>(p.dout) + b * p.dout_stride.batch + int64_t(i) * p.dout_stride.row +
                 h * p.dout_stride.head;
    float s = 0.f;
    for (int c = lane; c < p.D; c += 32) s = fmaf(to_float(o[c]), to_float(d[c]), s);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) delta[r] = s;
  }
}

// dq_accum:(B,H,Nq,D) fp32 (unscaled Σ dS K) -> dq:(B,Nq,H,D) = scale · dq_accum
template <typename T>
__global__ void flash_bias_dq_finalize_kernel(const __grid_constant__ FlashBiasBwdParams p, const float* acc,
                                              float scale) {
  const int64_t n = int64_t(p.B) * p.H * p.Nq * p.D;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.D);
    const int64_t row = idx / p.D;  // (b, h, i)
    const int i = int(row % p.Nq);
    const int h = int((row / p.Nq) % p.H);
    const int b = int(row / (int64_t(p.Nq) * p.H));
    T* dq = static_cast<T*>(p.dq) + b * p.dq_stride.batch + int64_t(i) * p.dq_stride.row + h * p.dq_stride.head;
    dq[d] = from_float<T>(acc[idx] * scale);
  }
}

// acc:(nsb,nsh,Nq,ld) fp32 -> dbias:(B|1,H|1,Nq,Nk) in the bias dtype, = or += (p.dbias_accumulate).
__global__ void flash_bias_dbias_finalize_kernel(const __grid_constant__ FlashBiasBwdParams p, int kind,
                                                 const float* acc, int64_t ld, int nsb, int nsh) {
  const int64_t n = int64_t(nsb) * nsh * p.Nq * p.Nk;
  const int elt = bias_elt_size(kind);
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int j = int(idx % p.Nk);
    const int64_t row = idx / p.Nk;  // (bs, hs, i)
    const int i = int(row % p.Nq);
    const int hs = int((row / p.Nq) % nsh);
    const int bs = int(row / (int64_t(p.Nq) * nsh));
    float v = acc[row * ld + j];
    char* dst = static_cast<char*>(p.dbias) +
                (bs * p.dbias_batch_stride + hs * p.dbias_head_stride + int64_t(i) * p.dbias_row_stride + j) * elt;
    if (kind == int(ScalarType::F32)) {
      float* x = reinterpret_cast<float*>(dst);
      *x = p.dbias_accumulate ? *x + v : v;
    } else if (kind == int(ScalarType::F16)) {
      __half* x = reinterpret_cast<__half*>(dst);
      if (p.dbias_accumulate) v += __half2float(*x);
      *x = __float2half_rn(v);
    } else {
      __nv_bfloat16* x = reinterpret_cast<__nv_bfloat16*>(dst);
      if (p.dbias_accumulate) v += __bfloat162float(*x);
      *x = __float2bfloat16_rn(v);
    }
  }
}

}  // namespace pf::kernels::cuda::fb
