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
//
// Relative-position bias: + T[h, clip(j − i, −R, R) + R]. A tile's slice of T (one entry per
// diagonal j − i) sits in shared memory; with no dense bias it takes the bias's place in the
// logits (tile mode kRelOnly, one FFMA per element), next to a dense bias it is added after
// (add_relpos; a masked −inf stays −inf).
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
// kBatch: an unaligned piece's element loads are all issued before its stores (in flight
// together; packed bias blocks have rows of any length, so most of their pieces go this way).
// Off in the dense kernels: the extra registers of the batch cost them spills (ptxas, fp16
// dK/dV kernel at D = 64: 72 -> 104 bytes stored) and 4–11% of their time (H100).
template <int kElt, int BM, int BN, int kBiasPitch, int kNThreads, bool kBatch>
__device__ __forceinline__ void load_bias_tile_t(char* s, const char* g, int64_t row_stride, int m0, int n0,
                                                 int Nq, int Nk, bool vec, int tid) {
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
    } else if constexpr (kBatch) {  // all loads first, then the stores
      E x[kChunk];
#pragma unroll
      for (int e = 0; e < kChunk; ++e) x[e] = j + e < Nk ? __ldg(reinterpret_cast<const E*>(sp) + e) : E(0);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) reinterpret_cast<E*>(d)[e] = x[e];
    } else {
#pragma unroll
      for (int e = 0; e < kChunk; ++e)
        reinterpret_cast<E*>(d)[e] = j + e < Nk ? reinterpret_cast<const E*>(sp)[e] : E(0);
    }
  }
}

template <int BM, int BN, int kBiasPitch, int kNThreads, bool kBatch>
__device__ __forceinline__ void load_bias_tile(char* s, const char* g, int64_t row_stride, int kind, int m0,
                                               int n0, int Nq, int Nk, bool vec, int tid) {
  if (kind == int(ScalarType::F32))
    load_bias_tile_t<4, BM, BN, kBiasPitch, kNThreads, kBatch>(s, g, row_stride, m0, n0, Nq, Nk, vec, tid);
  else
    load_bias_tile_t<2, BM, BN, kBiasPitch, kNThreads, kBatch>(s, g, row_stride, m0, n0, Nq, Nk, vec, tid);
}

// Bias elements idx, idx + 1 of a shared tile (idx even), as floats; kKind = int(ScalarType).
template <int kKind>
__device__ __forceinline__ float2 read_bias_pair(const char* s, int idx) {
  if constexpr (kKind == int(ScalarType::F32))
    return *reinterpret_cast<const float2*>(s + idx * 4);
  else if constexpr (kKind == int(ScalarType::F16))
    return __half22float2(*reinterpret_cast<const __half2*>(s + idx * 2));
  else
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s + idx * 2));
}

// Stages the table entries of the diagonals of the tile rows [m0, m0 + BM) × keys [n0, n0 + BN):
// s[k] = T[clip(n0 − m0 − (BM − 1) + k, −R, R) + R] for k < BM + BN − 1, so that element (r, c)
// of the tile reads s[c − r + BM − 1]. table_h: T's row of head h (fp32, contiguous).
template <int BM, int BN, int kNThreads>
__device__ __forceinline__ void load_rel_slice(float* s, const float* table_h, int R, int m0, int n0,
                                               int tid) {
  constexpr int kN = BM + BN - 1;
  const int d0 = n0 - m0 - (BM - 1);
#pragma unroll
  for (int k = tid; k < kN; k += kNThreads) {
    const int d = min(max(d0 + k, -R), R);
    cp_async_4(s + k, table_h + d + R);
  }
}

// A thread's accumulator element (hf, nt, e) (row g + 8·hf, column 8·nt + 2t + e of the warp's
// 16 × 8·NT fragment at (row0, col0) of the tile) lies on diagonal 8(nt − hf) + 2t − g + e + col0 − row0:
// rel_diag_base(...) + 8(nt − hf) + e. sRel0: the slice pointer for diagonal 0 (s + BM − 1).
__device__ __forceinline__ const float* rel_diag_base(const float* sRel0, int row0, int col0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  return sRel0 + col0 - row0 + 2 * t - g;
}

// Adds the relative-position bias to logits that already hold scale · S + bias (masked: −inf).
// Walks the n-tiles with a window of two entry pairs: the pair of row g + 8 at n-tile nt is the
// pair of row g at n-tile nt − 1 (one diagonal), so 2(NT + 1) loads serve 4·NT elements.
template <int NT>
__device__ __forceinline__ void add_relpos(float (&S)[1][NT][4], const float* sRel0, int row0, int col0) {
  const float* base = rel_diag_base(sRel0, row0, col0);
  float lo0 = base[-8], lo1 = base[-7];  // diagonal pair of row g + 8 at n-tile 0
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const float hi0 = base[8 * nt], hi1 = base[8 * nt + 1];  // row g at n-tile nt
    S[0][nt][0] += hi0;
    S[0][nt][1] += hi1;
    S[0][nt][2] += lo0;
    S[0][nt][3] += lo1;
    lo0 = hi0;
    lo1 = hi1;
  }
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
__device__ __forceinline__ bool tile_needs_mask(bool has_kpm, bool causal, int m0, int n0, int Nk,
                                                int causal_off) {
  return has_kpm || n0 + BN > Nk || (causal && n0 + BN - 1 > m0 + causal_off);
}

// Calls f(kind, masked) with both as compile-time constants (std::integral_constant), so the
// per-element code of each (bias dtype, masking) pair is straight-line; one uniform branch per tile.
// kind: the bias dtype, kNoBias, or kRelOnly (no dense bias, the relative-position slice instead).
// kAllowRel = false leaves the kRelOnly code out (kernels compiled without the table).
template <bool kAllowRel = true, typename F>
__device__ __forceinline__ void with_tile_mode(int kind, bool masked, F&& f) {
  using F32 = std::integral_constant<int, int(ScalarType::F32)>;
  using F16 = std::integral_constant<int, int(ScalarType::F16)>;
  using BF16 = std::integral_constant<int, int(ScalarType::BF16)>;
  using None = std::integral_constant<int, kNoBias>;
  using Rel = std::integral_constant<int, kRelOnly>;
  auto for_kind = [&](auto msk) {
    if (kind == F16::value)
      f(F16{}, msk);
    else if (kind == F32::value)
      f(F32{}, msk);
    else if (kind == BF16::value)
      f(BF16{}, msk);
    else {
      if constexpr (kAllowRel) {
        if (kind == Rel::value) {
          f(Rel{}, msk);
          return;
        }
      }
      f(None{}, msk);
    }
  };
  if (masked)
    for_kind(std::true_type{});
  else
    for_kind(std::false_type{});
}

// Turns a warp's raw scores S = q·k (16 rows × 8·NT columns, fragment layout) into logits in
// place, in natural units: x = scale · S + bias where attended, −inf elsewhere.
// (row0, col0): the warp tile's origin inside the tile whose global origin is (m0, n0).
// sBias: the tile's bias (pitch kBiasPitch); sKeyOk: key validity of the tile's columns;
// sRel0: kKind == kRelOnly, the tile's relative-position slice at diagonal 0 (else unused).
// Causal (bottom-right aligned): query i attends key j iff j <= i + causal_off, causal_off = Nk − Nq.
template <int kKind, bool kMasked, int NT, int kBiasPitch>
__device__ __forceinline__ void scores_to_logits(float (&S)[1][NT][4], int row0, int col0, int m0, int n0,
                                                 const char* sBias, const float* sRel0, const uint8_t* sKeyOk,
                                                 bool causal, int causal_off, float scale) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const float* rel = kKind == kRelOnly ? rel_diag_base(sRel0, row0, col0) : nullptr;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = row0 + g + 8 * hf;
      const int c = col0 + 8 * nt + 2 * t;
      float2 bias = make_float2(0.f, 0.f);
      if constexpr (kKind == kRelOnly)
        bias = make_float2(rel[8 * (nt - hf)], rel[8 * (nt - hf) + 1]);
      else if constexpr (kKind != kNoBias)
        bias = read_bias_pair<kKind>(sBias, r * kBiasPitch + c);
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
