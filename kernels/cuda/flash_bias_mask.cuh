// Bias and mask handling shared by the flash-bias kernels: fetching a bias tile into shared
// memory, the key-validity tile (key range + key padding mask), and the transform of raw
// scores into logits with causal masking:
//
//   x[i][j] = scale · q_i·k_j + bias[i][j]   if key j is attended by query i
//           = −inf                           otherwise
//
// The bias dtype is a run-time value (bias_kind = int(ScalarType) or kNoBias) for the launch;
// inside a kernel it becomes a compile-time constant once per tile (with_tile_mode), together
// with whether the tile needs per-element masking at all.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/flash_bias_traits.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"

namespace pf::kernels::cuda::fb {

__host__ __device__ __forceinline__ int bias_elt_size(int kind) {
  return kind == int(ScalarType::F32) ? 4 : 2;
}

// Fetches bias rows [m0, m0 + BM) × columns [n0, n0 + BN) of one (b, h) slice into a shared tile
// (pitch kBiasPitch elements of kElt bytes). Elements outside Nq × Nk are zero (they are masked
// anyway). `vec`: the slice base and row stride allow aligned 16-byte pieces; pieces that
// straddle Nk, and all pieces of an unaligned bias, are copied element by element.
// g: bias slice (b, h) base, row_stride in elements.
// Each thread owns one 16-byte column piece and walks rows kNThreads / (BN / piece) apart.
template <int kElt, int BM, int BN, int kBiasPitch, int kNThreads>
__device__ __forceinline__ void load_bias_tile_t(char* s, const char* g, int64_t row_stride, int m0, int n0, int Nq,
                                                 int Nk, bool vec, int tid) {
  constexpr int kChunk = 16 / kElt;  // elements per 16-byte piece
  constexpr int kChunksPerRow = BN / kChunk;
  static_assert(kNThreads % kChunksPerRow == 0, "load_bias_tile: threads must cover whole rows");
  constexpr int kRowsPerPass = kNThreads / kChunksPerRow;
  constexpr int kPasses = (BM + kRowsPerPass - 1) / kRowsPerPass;
  using E = std::conditional_t<kElt == 4, uint32_t, uint16_t>;
  const int col = (tid % kChunksPerRow) * kChunk, rr = tid / kChunksPerRow;
  const int j = n0 + col;
  const bool whole = vec && j + kChunk <= Nk;  // the piece lies inside the row: one 16-byte copy
  const bool any = j < Nk;
  const char* src = g + (int64_t(m0 + rr) * row_stride + j) * kElt;
  const int64_t step = int64_t(kRowsPerPass) * row_stride * kElt;
  char* dst = s + (rr * kBiasPitch + col) * kElt;
#pragma unroll
  for (int ps = 0; ps < kPasses; ++ps) {
    const int r = rr + ps * kRowsPerPass;
    if (BM % kRowsPerPass != 0 && r >= BM) break;
    const bool row_ok = m0 + r < Nq;
    char* d = dst + ps * kRowsPerPass * kBiasPitch * kElt;
    const char* sp = src + ps * step;
    if (whole && row_ok) {
      cp_async_16(d, sp);
    } else if (!any || !row_ok) {
      *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
    } else {
#pragma unroll
      for (int e = 0; e < kChunk; ++e)
        reinterpret_cast<E*>(d)[e] = j + e < Nk ? reinterpret_cast<const E*>(sp)[e] : E(0);
    }
  }
}

template <int BM, int BN, int kBiasPitch, int kNThreads>
__device__ __forceinline__ void load_bias_tile(char* s, const char* g, int64_t row_stride, int kind, int m0, int n0,
                                               int Nq, int Nk, bool vec, int tid) {
  if (kind == int(ScalarType::F32))
    load_bias_tile_t<4, BM, BN, kBiasPitch, kNThreads>(s, g, row_stride, m0, n0, Nq, Nk, vec, tid);
  else
    load_bias_tile_t<2, BM, BN, kBiasPitch, kNThreads>(s, g, row_stride, m0, n0, Nq, Nk, vec, tid);
}

// Bias elements idx, idx + 1 of a shared tile (idx even), as floats; kKind = int(ScalarType).
template <int kKind>
__device__ __forceinline__ float2 read_bias_pair(const char* s, int idx) {
  if constexpr (kKind == int(ScalarType::F32)) return *reinterpret_cast<const float2*>(s + idx * 4);
  else if constexpr (kKind == int(ScalarType::F16)) return __half22float2(*reinterpret_cast<const __half2*>(s + idx * 2));
  else return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s + idx * 2));
}

// 1 if key j exists and is not padding. kpm_row: key_padding_mask + b·Nk, or null.
__device__ __forceinline__ uint8_t key_ok(const uint8_t* kpm_row, int j, int Nk) {
  if (j >= Nk) return 0;
  return (kpm_row == nullptr || kpm_row[j] == 0) ? 1 : 0;
}

// Whether the tile rows [m0, m0 + BM) × keys [n0, n0 + BN) needs per-element masking: a key
// padding mask, keys past Nk, or (causal) a key past the first row's diagonal. Most tiles of a
// large problem need none, and skip the per-element checks entirely.
template <int BM, int BN>
__device__ __forceinline__ bool tile_needs_mask(bool has_kpm, bool causal, int m0, int n0, int Nk, int causal_off) {
  return has_kpm || n0 + BN > Nk || (causal && n0 + BN - 1 > m0 + causal_off);
}

// Calls f(kind, masked) with both as compile-time constants (std::integral_constant), so the
// per-element code of each (bias dtype, masking) pair is straight-line; one uniform branch per tile.
template <typename F>
__device__ __forceinline__ void with_tile_mode(int bias_kind, bool masked, F&& f) {
  using F32 = std::integral_constant<int, int(ScalarType::F32)>;
  using F16 = std::integral_constant<int, int(ScalarType::F16)>;
  using BF16 = std::integral_constant<int, int(ScalarType::BF16)>;
  using None = std::integral_constant<int, kNoBias>;
  if (masked) {
    if (bias_kind == F16::value) f(F16{}, std::true_type{});
    else if (bias_kind == F32::value) f(F32{}, std::true_type{});
    else if (bias_kind == BF16::value) f(BF16{}, std::true_type{});
    else f(None{}, std::true_type{});
  } else {
    if (bias_kind == F16::value) f(F16{}, std::false_type{});
    else if (bias_kind == F32::value) f(F32{}, std::false_type{});
    else if (bias_kind == BF16::value) f(BF16{}, std::false_type{});
    else f(None{}, std::false_type{});
  }
}

// Turns a warp's raw scores S = q·k (16 rows × 8·NT columns, fragment layout) into logits in
// place, in natural units: x = scale · S + bias where attended, −inf elsewhere.
// (row0, col0): the warp tile's origin inside the tile whose global origin is (m0, n0).
// sBias: the tile's bias (pitch kBiasPitch); sKeyOk: key validity of the tile's columns.
// Causal (bottom-right aligned): query i attends key j iff j <= i + causal_off, causal_off = Nk − Nq.
template <int kKind, bool kMasked, int NT, int kBiasPitch>
__device__ __forceinline__ void scores_to_logits(float (&S)[1][NT][4], int row0, int col0, int m0, int n0,
                                                 const char* sBias, const uint8_t* sKeyOk, bool causal,
                                                 int causal_off, float scale) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = row0 + g + 8 * hf;
      const int c = col0 + 8 * nt + 2 * t;
      float2 bias = make_float2(0.f, 0.f);
      if constexpr (kKind != kNoBias) bias = read_bias_pair<kKind>(sBias, r * kBiasPitch + c);
      float& x0 = S[0][nt][2 * hf];
      float& x1 = S[0][nt][2 * hf + 1];
      x0 = fmaf(x0, scale, bias.x);
      x1 = fmaf(x1, scale, bias.y);
      if constexpr (kMasked) {
        const int last_key = causal ? m0 + r + causal_off : INT_MAX;  // keys n0 + c <= last_key are visible
        const uint16_t ok = *reinterpret_cast<const uint16_t*>(sKeyOk + c);  // c even: aligned
        if (!(ok & 0xff) || n0 + c > last_key) x0 = -INFINITY;
        if (!(ok >> 8) || n0 + c + 1 > last_key) x1 = -INFINITY;
      }
    }
  }
}

}  // namespace pf::kernels::cuda::fb
