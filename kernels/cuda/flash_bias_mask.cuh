// Bias and mask handling shared by the flash-bias kernels: fetching a bias tile into shared
// memory, the key-validity tile (key range + key padding mask), and the transform of raw
// scores into base-2 logits with causal masking:
//
//   x[i][j] = log2(e) · (scale · q_i·k_j + bias[i][j])   if key j is attended by query i
//           = -inf                                       otherwise
//
// The bias dtype is a run-time value (bias_kind = int(ScalarType) or kNoBias): it changes only
// how a tile is fetched and read, so it costs no extra template instantiations.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/flash_bias_traits.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"

namespace pf::kernels::cuda::fb {

__host__ __device__ __forceinline__ int bias_elt_size(int kind) {
  return kind == int(ScalarType::F32) ? 4 : 2;
}

// Fetches bias rows [m0, m0 + BM) × columns [n0, n0 + BN) of one (b, h) slice into a shared tile
// (pitch kBiasPitch elements of the bias's own size). Elements outside Nq × Nk are zero (they
// are masked anyway). `vec`: the slice base and row stride allow aligned 16-byte pieces; pieces
// that straddle Nk, and all pieces of an unaligned bias, are copied element by element.
// g: bias slice (b, h) base, row_stride in elements.
template <int BM, int BN, int kBiasPitch, int kNThreads>
__device__ __forceinline__ void load_bias_tile(char* s, const char* g, int64_t row_stride, int kind,
                                               int m0, int n0, int Nq, int Nk, bool vec, int tid) {
  const int elt = bias_elt_size(kind);
  const int chunk = 16 / elt;                   // elements per 16-byte piece
  const int chunks_per_row = BN / chunk;
  const int total = BM * chunks_per_row;
  for (int c = tid; c < total; c += kNThreads) {
    const int r = c / chunks_per_row;
    const int col = (c - r * chunks_per_row) * chunk;
    const int i = m0 + r, j = n0 + col;
    char* dst = s + (r * kBiasPitch + col) * elt;
    const char* src = g + (int64_t(i) * row_stride + j) * elt;
    if (vec && i < Nq && j + chunk <= Nk) {
      cp_async_16(dst, src);
    } else if (i >= Nq || j >= Nk) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    } else if (elt == 4) {
      for (int e = 0; e < chunk; ++e)
        reinterpret_cast<uint32_t*>(dst)[e] = j + e < Nk ? reinterpret_cast<const uint32_t*>(src)[e] : 0u;
    } else {
      for (int e = 0; e < chunk; ++e)
        reinterpret_cast<uint16_t*>(dst)[e] = j + e < Nk ? reinterpret_cast<const uint16_t*>(src)[e] : uint16_t(0);
    }
  }
}

// Bias elements idx, idx + 1 of a shared tile (idx even), as floats.
__device__ __forceinline__ float2 read_bias_pair(const char* s, int kind, int idx) {
  if (kind == int(ScalarType::F32)) return *reinterpret_cast<const float2*>(s + idx * 4);
  if (kind == int(ScalarType::F16)) return __half22float2(*reinterpret_cast<const __half2*>(s + idx * 2));
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s + idx * 2));
}

// 1 if key j exists and is not padding. kpm_row: key_padding_mask + b·Nk, or null.
__device__ __forceinline__ uint8_t key_ok(const uint8_t* kpm_row, int j, int Nk) {
  if (j >= Nk) return 0;
  return (kpm_row == nullptr || kpm_row[j] == 0) ? 1 : 0;
}

// Turns a warp's raw scores S (16 rows × 8·NT columns, fragment layout) into base-2 logits in
// place. (row0, col0): the warp tile's origin inside the 64 × 64 tile whose global origin is
// (m0, n0). sBias: the tile's bias (null: no bias); sKeyOk: key validity of the tile's columns.
// Causal (bottom-right aligned): query i attends key j iff j <= i + causal_off, causal_off = Nk - Nq.
template <int NT, int kBiasPitch>
__device__ __forceinline__ void scores_to_log2(float (&S)[1][NT][4], int row0, int col0, int m0, int n0,
                                               const char* sBias, int bias_kind, const uint8_t* sKeyOk,
                                               bool causal, int causal_off, float scale_log2) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = row0 + g + 8 * hf;
      const int c = col0 + 8 * nt + 2 * t;
      float2 bias = make_float2(0.f, 0.f);
      if (sBias != nullptr) bias = read_bias_pair(sBias, bias_kind, r * kBiasPitch + c);
      const int last_key = m0 + r + causal_off;  // causal: keys n0 + c <= last_key are visible
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool ok = sKeyOk[c + e] != 0 && (!causal || n0 + c + e <= last_key);
        const float b = e == 0 ? bias.x : bias.y;
        float& x = S[0][nt][2 * hf + e];
        x = ok ? fmaf(x, scale_log2, b * kLog2e) : -INFINITY;
      }
    }
  }
}

}  // namespace pf::kernels::cuda::fb
