// Small kernels around the flash-bias backward:
// - preprocess: Δ = rowsum(dO ∘ O), the softmax-Jacobian term of dS = P ∘ (dP − Δ);
// - finalize: fp32 accumulators -> the gradients' own dtype and strides (dQ of the atomic mode),
//   and dB of a bias shared over the batch or heads summed from its partial slices;
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

// Whether every row of a tensor of elem_bytes-sized elements, at base + s0·i0 + s1·i1 + s2·i2
// elements, starts on a 16-byte boundary (base aligned, every stride whole 16-byte chunks): then a
// thread whose columns start at a multiple of 16 bytes can load or store them 16 bytes at a time.
__device__ __forceinline__ bool rows_16b_aligned(const void* base, int elem_bytes, int64_t s0, int64_t s1,
                                                 int64_t s2) {
  const int64_t c = 16 / elem_bytes;
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && s0 % c == 0 && s1 % c == 0 && s2 % c == 0;
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
// (packed: (H,Tq,D) -> (Tq,H,D)). One thread per 8 columns of a row (every head dim is a multiple
// of 8): two 16-byte loads, one 16-byte store where dq's base and strides allow it.
template <typename T>
__global__ void flash_bias_dq_finalize_kernel(const __grid_constant__ FlashBiasBwdParams p, bool varlen,
                                              const float* acc, float scale) {
  constexpr int C = 8;
  const StatRows sr = stat_rows(p, varlen);
  const int chunks = p.D / C;
  const int64_t n = sr.rows * chunks;
  static_assert(sizeof(T) * C % 16 == 0, "whole 16-byte stores");
  const bool vec_store =
      rows_16b_aligned(p.dq, sizeof(T), p.dq_stride.batch, p.dq_stride.row, p.dq_stride.head);
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / chunks;
    const int c0 = int(idx - r * chunks) * C;
    const float4* a = reinterpret_cast<const float4*>(acc + r * p.D + c0);
    const float4 a0 = a[0], a1 = a[1];
    const float x[C] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    T o[C];
#pragma unroll
    for (int c = 0; c < C; ++c) o[c] = from_float<T>(x[c] * scale);
    T* dq = static_cast<T*>(p.dq) + sr.origin(r, p.dq_stride) + c0;
    if (vec_store) {
#pragma unroll
      for (int k = 0; k < int(sizeof(o) / 16); ++k)
        reinterpret_cast<uint4*>(dq)[k] = reinterpret_cast<uint4*>(o)[k];
    } else {
#pragma unroll
      for (int c = 0; c < C; ++c) dq[c] = o[c];
    }
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

// dB of a bias shared over the batch and / or the heads, from per-slice partial sums:
// src:(src_b, src_h, Nq, ld) of Src (ld a multiple of kDbiasChunk, 16-byte aligned) ->
// dbias:(nsb, nsh, Nq, Nk) of Dst, = or += (p.dbias_accumulate). dB slice (bs, hs) sums the
// source slices (sb, sh) with sb = bs (src_b = nsb) or every sb (nsb = 1), likewise sh, in order
// (b outer, h inner) in fp32, rounded once: deterministic. Two uses: the fp32 accumulator of the
// portable kernels (src_b = nsb, src_h = nsh: one slice each, a conversion) and the Hopper
// backward's per-(b, h) dS in the bias dtype (src_b = B, src_h = H). One thread per kDbiasChunk
// consecutive keys of one row, vector loads, vector stores where dbias allows them.
constexpr int kDbiasChunk = 8;
template <typename Src, typename Dst>
__global__ void flash_bias_dbias_sum_kernel(const __grid_constant__ FlashBiasBwdParams p, const Src* src,
                                            int64_t ld, int src_b, int src_h, int nsb, int nsh) {
  constexpr int C = kDbiasChunk;
  const int chunks = (p.Nk + C - 1) / C, gb = src_b / nsb, gh = src_h / nsh;
  const int64_t rows = int64_t(nsb) * nsh * p.Nq, n = rows * chunks;
  // C elements in 16-byte stores where every dbias row starts 16-byte aligned
  static_assert(sizeof(Dst) * C % 16 == 0, "whole 16-byte stores");
  const bool vec_store =
      rows_16b_aligned(p.dbias, sizeof(Dst), p.dbias_batch_stride, p.dbias_head_stride, p.dbias_row_stride);
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / chunks;  // (bs, hs, i)
    const int j0 = int(idx - row * chunks) * C;
    const int i = int(row % p.Nq);
    const int hs = int((row / p.Nq) % nsh), bs = int(row / (int64_t(p.Nq) * nsh));
    float sum[C] = {};
    for (int db = 0; db < gb; ++db)
      for (int dh = 0; dh < gh; ++dh) {
        const int sb = bs * gb + db, sh = hs * gh + dh;
        const Src* x = src + ((int64_t(sb) * src_h + sh) * p.Nq + i) * ld + j0;
        Src v[C];
#pragma unroll
        for (int k = 0; k < int(sizeof(v) / 16); ++k)
          reinterpret_cast<uint4*>(v)[k] = reinterpret_cast<const uint4*>(x)[k];
#pragma unroll
        for (int c = 0; c < C; ++c) sum[c] += to_float(v[c]);
      }
    Dst* out = static_cast<Dst*>(p.dbias) + bs * p.dbias_batch_stride + hs * p.dbias_head_stride +
               int64_t(i) * p.dbias_row_stride + j0;
    if (vec_store && j0 + C <= p.Nk) {
      Dst o[C];
      if (p.dbias_accumulate)
#pragma unroll
        for (int k = 0; k < int(sizeof(o) / 16); ++k)
          reinterpret_cast<uint4*>(o)[k] = reinterpret_cast<const uint4*>(out)[k];
#pragma unroll
      for (int c = 0; c < C; ++c)
        o[c] = from_float<Dst>(p.dbias_accumulate ? to_float(o[c]) + sum[c] : sum[c]);
#pragma unroll
      for (int k = 0; k < int(sizeof(o) / 16); ++k)
        reinterpret_cast<uint4*>(out)[k] = reinterpret_cast<uint4*>(o)[k];
    } else {
      for (int c = 0; c < C && j0 + c < p.Nk; ++c)
        out[c] = from_float<Dst>(p.dbias_accumulate ? to_float(out[c]) + sum[c] : sum[c]);
    }
  }
}

}  // namespace pf::kernels::cuda::fb
