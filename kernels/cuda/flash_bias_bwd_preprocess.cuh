// Small kernels around the flash-bias backward:
// - preprocess: Δ = rowsum(dO ∘ O), the softmax-Jacobian term of dS = P ∘ (dP − Δ);
// - finalize: fp32 accumulators -> the gradients' own dtype and strides (dQ of the atomic mode,
//   dB of a bias shared over the batch or heads);
// - the deterministic dT reduction: per-CTA partial rows -> dT, summed in a fixed order.
// All are memory-bound element loops; one launch each.
//
// Row statistics (lse, Δ) and the dQ accumulator are indexed by "stat rows": (B,H,Nq) in a dense
// batch, (H,Tq) in a packed one (Tq = cu_seqlens_q[B], read on the device: the host never waits).
#pragma once
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/flash_bias_mask.cuh"
#include "kernels/cuda/flash_bias_traits.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"

namespace pf::kernels::cuda::fb {

// Stat row r -> the element offset of its (b, i, h) row in a (B,N,H,D) tensor with strides s
// (packed: row t = cu_seqlens_q[b] + i of a (T,H,D) tensor).
struct StatRows {
  int64_t rows = 0;  // B·H·Nq, or H·Tq
  int Nq = 1, H = 1;
  bool varlen = false;
  __device__ __forceinline__ int64_t origin(int64_t r, const BNHDStrides& s) const {
    if (varlen) {
      const int64_t tq = rows / H;
      return (r % tq) * s.row + (r / tq) * s.head;
    }
    const int i = int(r % Nq);
    const int h = int((r / Nq) % H);
    const int b = int(r / (int64_t(Nq) * H));
    return b * s.batch + int64_t(i) * s.row + h * s.head;
  }
};
__device__ __forceinline__ StatRows stat_rows(const FlashBiasParams& p, bool varlen) {
  StatRows s;
  s.Nq = p.Nq;
  s.H = p.H;
  s.varlen = varlen;
  s.rows = varlen ? int64_t(p.H) * p.cu_seqlens_q[p.B] : int64_t(p.B) * p.H * p.Nq;
  return s;
}

// Σ_c o[c]·d[c] over a row of D elements, by one warp (every lane gets the sum).
template <typename T>
__device__ __forceinline__ float warp_row_dot(const T* o, const T* d, int D) {
  float s = 0.f;
  for (int c = threadIdx.x % 32; c < D; c += 32) s = fmaf(to_float(o[c]), to_float(d[c]), s);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
  return s;
}

// out,dout:(B,Nq,H,D) -> delta:(B,H,Nq) fp32 (packed: (Tq,H,D) -> (H,Tq)). One warp per row.
template <typename T>
__global__ void flash_bias_bwd_delta_kernel(const __grid_constant__ FlashBiasBwdParams p, bool varlen,
                                            float* delta) {
  const StatRows sr = stat_rows(p, varlen);
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < sr.rows; r += warps) {
    const float s = warp_row_dot(static_cast<const T*>(p.out) + sr.origin(r, p.out_stride),
                                 static_cast<const T*>(p.dout) + sr.origin(r, p.dout_stride), p.D);
    if (threadIdx.x % 32 == 0) delta[r] = s;
  }
}

// The row statistics of the Hopper backward (dense batches), in rows padded to nq_pad (a multiple
// of its 64-row query blocks, so that each block's 64 values are one aligned bulk copy):
// delta:(B,H,nq_pad) = rowsum(dO ∘ O), lse2:(B,H,nq_pad) = lse·log2 e (+inf for lse = −inf: P = 0);
// past Nq delta = 0 and lse2 = +inf: a padding row attends nothing (P = 0, dS = 0, whatever the
// bias or relative-position table adds to its zero-filled Q row's scores). One warp per row.
template <typename T>
__global__ void flash_bias_bwd_padded_stats_kernel(const __grid_constant__ FlashBiasBwdParams p, int nq_pad,
                                                   float* delta, float* lse2) {
  const StatRows sr = stat_rows(p, false);
  const int64_t rows = int64_t(p.B) * p.H * nq_pad;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const int i = int(r % nq_pad);
    float s = 0.f, l2 = INFINITY;
    if (i < p.Nq) {
      const int64_t stat = r / nq_pad * p.Nq + i;  // the unpadded stat row
      s = warp_row_dot(static_cast<const T*>(p.out) + sr.origin(stat, p.out_stride),
                       static_cast<const T*>(p.dout) + sr.origin(stat, p.dout_stride), p.D);
      l2 = lse_to_log2(static_cast<const float*>(p.lse)[stat]);
    }
    if (threadIdx.x % 32 == 0) {
      delta[r] = s;
      lse2[r] = l2;
    }
  }
}

// dq_accum:(B,H,Nq,D) fp32 (unscaled Σ dS K) -> dq:(B,Nq,H,D) = scale · dq_accum
// (packed: (H,Tq,D) -> (Tq,H,D))
template <typename T>
__global__ void flash_bias_dq_finalize_kernel(const __grid_constant__ FlashBiasBwdParams p, bool varlen,
                                              const float* acc, float scale) {
  const StatRows sr = stat_rows(p, varlen);
  const int64_t n = sr.rows * p.D;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.D);
    T* dq = static_cast<T*>(p.dq) + sr.origin(idx / p.D, p.dq_stride);
    dq[d] = from_float<T>(acc[idx] * scale);
  }
}

// Deterministic dT: part:(B,H,n_kb,ld) fp32 rows written by flash_bias_bwd_kernel (one per CTA,
// bins clip(d_lo) + R … clip(d_hi) + R, d_lo = 64·kb − 64·ceil(nq_b/64) + 1, d_hi = 64·kb + 63; no
// row where nq_b = 0 or 64·kb >= nk_b) -> drelpos_table (H, 2R+1) fp32, = or +=. One thread per
// (h, bin) sums over b, then kb, in order.
__global__ void flash_bias_drel_reduce_kernel(const __grid_constant__ FlashBiasBwdParams p, bool varlen,
                                              const float* part, int64_t ld) {
  const int R = p.relpos_clip, nbins = 2 * R + 1;
  const int n_kb = (p.Nk + 63) / 64;
  const int64_t n = int64_t(p.H) * nbins;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int h = int(idx / nbins), bin = int(idx % nbins);
    float sum = 0.f;
    for (int b = 0; b < p.B; ++b) {
      const int nq = varlen ? p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b] : p.Nq;
      const int nk = varlen ? p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] : p.Nk;
      if (nq == 0) continue;
      const int m_span = (nq + 63) / 64 * 64;
      const float* rows = part + (int64_t(b) * p.H + h) * n_kb * ld;
      for (int kb = 0; kb * 64 < nk; ++kb) {
        const int d_lo = 64 * kb - m_span + 1, d_hi = 64 * kb + 63;
        const int lo = min(max(d_lo, -R), R) + R, hi = min(max(d_hi, -R), R) + R;
        if (bin >= lo && bin <= hi) sum += rows[int64_t(kb) * ld + (bin - lo)];
      }
    }
    float* out = static_cast<float*>(p.drelpos_table) + idx;
    *out = p.dbias_accumulate ? *out + sum : sum;
  }
}

// acc:(nsb,nsh,Nq,ld) fp32 -> dbias:(B|1,H|1,Nq,Nk) in the bias dtype, = or += (p.dbias_accumulate).
__global__ void flash_bias_dbias_finalize_kernel(const __grid_constant__ FlashBiasBwdParams p, int kind,
                                                 const float* acc, int64_t ld, int nsb, int nsh) {
  const int64_t n = int64_t(nsb) * nsh * p.Nq * p.Nk;
  const int elt = bias_elt_size(kind);
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int j = int(idx % p.Nk);
    const int64_t row = idx / p.Nk;  // (bs, hs, i)
    const int i = int(row % p.Nq);
    const int hs = int((row / p.Nq) % nsh);
    const int bs = int(row / (int64_t(p.Nq) * nsh));
    float v = acc[row * ld + j];
    char* dst =
        static_cast<char*>(p.dbias) +
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
