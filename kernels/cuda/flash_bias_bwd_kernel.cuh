// Flash-bias backward: dQ, dK, dV and the bias gradient dB.
//
// Derivation, per (b, h), with s = scale · Q Kᵀ + B (+ mask as −inf), P = softmax_rows(s), O = P V:
//   dV = Pᵀ dO
//   dP = dO Vᵀ
//   dS = P ∘ (dP − Δ),  Δ_i = Σ_j P_ij dP_ij = Σ_d dO_id O_id        (softmax Jacobian)
//   dB = dS, summed over the axes along which the bias is broadcast
//   dQ = scale · dS K        dK = scale · dSᵀ Q
// P is recomputed from the saved lse: P = 2^(log2 e · x − log2 e · lse) with x the logits. A row
// with lse = −inf (no attended key) uses +inf instead, so its P, dS and gradients are exactly 0.
//
// Two kernels:
// - flash_bias_bwd_kernel: one CTA per key block of 64 (and per (b, h), or per sharing group in
//   the grouped dB mode); it walks the query blocks, accumulates dK and dV in registers, writes dB
//   once per tile, and in the default mode adds dQ into an fp32 buffer with atomics.
// - flash_bias_bwd_dq_kernel (deterministic mode): one CTA per query block recomputes S, P, dP and
//   dS over the key blocks and accumulates dQ in registers: no atomics, fixed order.
#pragma once
#include <cooperative_groups.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_bias_fwd_kernel.cuh"
#include "kernels/cuda/flash_bias_mask.cuh"
#include "kernels/cuda/flash_bias_traits.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"

namespace pf::kernels::cuda::fb {

// P and dS of a warp's scores in place: S (logits) -> P = 2^(log2 e · S − lse2), dP -> dS = P ∘ (dP − Δ).
template <int NT>
__device__ __forceinline__ void probs_and_ds(float (&S)[1][NT][4], float (&dP)[1][NT][4],
                                             const float (&lse2)[2], const float (&dlt)[2]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float pij = fast_exp2(fmaf(S[0][nt][e], kLog2e, -lse2[e / 2]));
      S[0][nt][e] = pij;
      dP[0][nt][e] = pij * (dP[0][nt][e] - dlt[e / 2]);
    }
}

// Copies rows [m0, m0 + 64) ∩ [0, Nq) × keys [n0, n0 + 64) ∩ [0, Nk) of the dS tile (element type T,
// = the dbias dtype) to dbias in 16-byte pieces (rows 16-byte aligned); pieces straddling Nk
// element by element.
template <typename T, int BM, int BN, int kSPitch, int kNThreads>
__device__ __forceinline__ void store_dbias_tile(char* dbias, int64_t row_stride, const T* sdS, int m0,
                                                 int n0, int Nq, int Nk, int tid) {
  constexpr int kChunk = 16 / int(sizeof(T)), kChunksPerRow = BN / kChunk;
#pragma unroll
  for (int it = 0; it < (BM * kChunksPerRow + kNThreads - 1) / kNThreads; ++it) {
    const int c = tid + it * kNThreads;
    if ((BM * kChunksPerRow) % kNThreads != 0 && c >= BM * kChunksPerRow) break;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * kChunk;
    const int i = m0 + r, j = n0 + col;
    if (i >= Nq || j >= Nk) continue;
    T* dst = reinterpret_cast<T*>(dbias + int64_t(i) * row_stride * int64_t(sizeof(T))) + j;
    const T* src = sdS + r * kSPitch + col;
    if (j + kChunk <= Nk) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int e = 0; e < kChunk && j + e < Nk; ++e) dst[e] = src[e];
    }
  }
}

// Fetches the lse and Δ of rows [m0, m0 + BM) (rows past Nq: lse = +inf so that P = 0, Δ = 0).
template <int BM>
__device__ __forceinline__ void load_row_stats(float* sLse, float* sDelta, const float* lse,
                                               const float* delta, int m0, int Nq, int tid) {
  if (tid < BM) {
    const int i = m0 + tid;
    if (i < Nq) {
      cp_async_4(sLse + tid, lse + i);
      cp_async_4(sDelta + tid, delta + i);
    } else {
      sLse[tid] = INFINITY;
      sDelta[tid] = 0.f;
    }
  }
}

// Writes (or adds) one pair of dB values (dS at columns j, j + 1 of row i) of the bias's dtype.
__device__ __forceinline__ void store_dbias_pair(char* row, int kind, int j, int Nk, float x, float y,
                                                 bool accumulate, bool vec) {
  if (kind == int(ScalarType::F32)) {
    float* r = reinterpret_cast<float*>(row);
    if (vec && j + 1 < Nk) {
      float2 v = make_float2(x, y);
      if (accumulate) {
        const float2 o = load_pair(r + j);
        v.x += o.x;
        v.y += o.y;
      }
      *reinterpret_cast<float2*>(r + j) = v;
    } else {
      if (j < Nk) r[j] = accumulate ? r[j] + x : x;
      if (j + 1 < Nk) r[j + 1] = accumulate ? r[j + 1] + y : y;
    }
  } else if (kind == int(ScalarType::F16)) {
    __half* r = reinterpret_cast<__half*>(row);
    if (vec && j + 1 < Nk) {
      if (accumulate) {
        const float2 o = load_pair(r + j);
        x += o.x;
        y += o.y;
      }
      store_pair(r + j, x, y);
    } else {
      if (j < Nk) r[j] = __float2half_rn(accumulate ? __half2float(r[j]) + x : x);
      if (j + 1 < Nk) r[j + 1] = __float2half_rn(accumulate ? __half2float(r[j + 1]) + y : y);
    }
  } else {
    __nv_bfloat16* r = reinterpret_cast<__nv_bfloat16*>(row);
    if (vec && j + 1 < Nk) {
      if (accumulate) {
        const float2 o = load_pair(r + j);
        x += o.x;
        y += o.y;
      }
      store_pair(r + j, x, y);
    } else {
      if (j < Nk) r[j] = __float2bfloat16_rn(accumulate ? __bfloat162float(r[j]) + x : x);
      if (j + 1 < Nk) r[j + 1] = __float2bfloat16_rn(accumulate ? __bfloat162float(r[j + 1]) + y : y);
    }
  }
}

// Split cluster barrier (sm_90): arrive publishes this thread's shared-memory writes to the
// cluster, wait blocks until every thread of every CTA in the cluster has arrived.
// The host picks kCluster only on devices of compute capability 9.0 or newer.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

// kCluster: this CTA (cluster rank `rank` of G) sums rows r ≡ rank (mod G) of the G fp32 dS tiles
// in rank order and writes them to dB (bias dtype, = or +=). dbias: the shared dB slice.
template <int BM, int BN, int kS32Pitch, int kNThreads>
__device__ __forceinline__ void reduce_dbias_cluster(float* sdS32, int rank, int G, char* dbias,
                                                     int64_t row_stride, int belt, int kind, int m0, int n0,
                                                     int Nq, int Nk, bool accumulate, bool vec, int tid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  constexpr int kQuads = BN / 4;
  const int rows = (BM - rank + G - 1) / G;
  for (int idx = tid; idx < rows * kQuads; idx += kNThreads) {
    const int r = rank + (idx / kQuads) * G, c = (idx % kQuads) * 4;
    const int i = m0 + r, j = n0 + c;
    if (i >= Nq || j >= Nk) continue;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int qr = 0; qr < G; ++qr) {
      const float4 v =
          *reinterpret_cast<const float4*>(cluster.map_shared_rank(sdS32 + r * kS32Pitch + c, qr));
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    char* row = dbias + int64_t(i) * row_stride * belt;
    store_dbias_pair(row, kind, j, Nk, sum.x, sum.y, accumulate, vec);
    store_dbias_pair(row, kind, j + 2, Nk, sum.z, sum.w, accumulate, vec);
  }
#else
  __trap();
#endif
}

// ---- dT, the relative-position table's gradient ------------------------------------------------
//
// dT[h, r] = Σ_{b, i, j : clip(j − i, −R, R) + R = r} dS[b,h,i,j]. A CTA owns key block n0 and
// walks the query blocks m0 = 64·m_begin … downwards in j − i: the 64 × 64 tile at m0 covers the
// diagonals d = j − i ∈ [n0 − m0 − 63, n0 − m0 + 63], the next tile [n0 − m0 − 127, n0 − m0 − 1].
// So after the tile at m0 the diagonals d ∈ [n0 − m0, n0 − m0 + 63] are final for this CTA, and
// the other 63 carry into the next tile. Per tile:
//   1. the fp32 dS tile goes to shared memory "wrapped" (BwdTraits::kWrapPitch): column w holds
//      diagonals w and w − 64; 256 threads sum the columns by quarters of 16 rows, each thread
//      splitting its column at the row where the diagonal changes (fixed order);
//   2. after the next barrier every warp finishes 8 of the 64 final diagonals (quarters + carry,
//      fixed order) and keeps their carry: an interior diagonal (|d| < R) is its own bin d + R and
//      is emitted at once; the ones clipped to the end bins (d ≥ R, d ≤ −R) are summed per warp and
//      emitted once, summed over the warps in order, when the CTA is done.
// Emitting: kAtomic adds into p.drelpos_table (fp32 atomics; zeroes skipped); kPartial writes the
// CTA's workspace row, which covers bins clip(d_lo) + R … clip(d_hi) + R with d_lo = n0 − 64·m_blocks + 1,
// d_hi = n0 + 63 (every bin written once, untouched ones as 0), for one ordered reduction
// (flash_bias_drel_reduce_kernel) to sum in a fixed order.
// Measured (H100, B=4 H=8 N=2048 D=64): summing the diagonals of an unwrapped tile, one thread per
// diagonal with a bounds check per row, and emitting from warp 0 alone cost +32% backward time.

// Stores a warp's fp32 accumulator fragment (rows row0 + g (+8), columns col0 + 8·nt + 2t (+1)) into
// the wrapped tile: (r, c) at r·kWrapPitch + ((c − r) & 63).
template <int NT, int kWrapPitch>
__device__ __forceinline__ void store_frag_wrapped(const float (&acc)[1][NT][4], float* sW, int row0,
                                                   int col0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int base = col0 + 2 * t - row0 - g;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = row0 + g + 8 * (e / 2);
      sW[r * kWrapPitch + ((base + 8 * nt + (e & 1) - 8 * (e / 2)) & 63)] = acc[0][nt][e];
    }
}

// Column sums of the wrapped 64 × 64 tile: thread tid sums column w = tid % 64 over the rows
// 16·q … 16·q + 15 (q = tid / 64), in order, into diagonal w (rows r < 64 − w) and w − 64 (the
// others), and writes sDiag[128·q + δ + 63] for δ = w and (w > 0) δ = w − 64. 256 threads; a warp
// reads 32 consecutive columns of one row at a time (no bank conflicts).
template <int kWrapPitch>
__device__ __forceinline__ void tile_diagonal_sums(const float* sW, float* sDiag, int tid) {
  const int w = tid & 63, q = tid >> 6;
  const int split = min(max(64 - w - 16 * q, 0), 16);  // rows 16q + i, i < split: diagonal w
  const float* col = sW + 16 * q * kWrapPitch + w;
  float pos = 0.f, neg = 0.f;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const float x = col[i * kWrapPitch];
    if (i < split)
      pos += x;
    else
      neg += x;
  }
  sDiag[128 * q + w + 63] = pos;
  if (w > 0) sDiag[128 * q + w - 1] = neg;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2)
    x += __shfl_xor_sync(0xffffffffu, x, off);  // same value in every lane
  return x;
}

// Where a CTA sends the dT sums of its key block (see above). No member initialisers: it lives in
// shared memory (the kernel's per-(b, h) block), where they are not allowed.
struct DrelSink {
  DrelMode mode;
  float* table;  // kAtomic: p.drelpos_table row of head h
  float* row;    // kPartial: this CTA's workspace row, bin bin_lo at row[0]
  int bin_lo;
  int R;
  __device__ __forceinline__ void put(int bin, float v) const {
    if (mode == DrelMode::kAtomic) {
      if (v != 0.f) atomicAdd(table + bin, v);
    } else {
      row[bin - bin_lo] = v;
    }
  }
};

// Warp-collective: lane's diagonal d (if valid) with sum v: interior -> its bin; clipped -> the
// warp's end sums hi (d >= R) / lo (d <= −R) in sState[64 + 2·warp], [65 + 2·warp] (lane 0 writes).
__device__ __forceinline__ void drel_emit(const DrelSink& sink, bool valid, int d, float v, float* sState) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool is_hi = valid && d >= sink.R, is_lo = valid && !is_hi && d <= -sink.R;
  if (__any_sync(0xffffffffu, is_hi)) {
    const float s = warp_sum(is_hi ? v : 0.f);
    if (lane == 0) sState[64 + 2 * warp] += s;
  }
  if (__any_sync(0xffffffffu, is_lo)) {
    const float s = warp_sum(is_lo ? v : 0.f);
    if (lane == 0) sState[65 + 2 * warp] += s;
  }
  if (valid && !is_hi && !is_lo) sink.put(d + sink.R, v);
}

// Every warp after a tile (diagonal origin dc = n0 − m0): lanes 0–7 of warp w finish the diagonals
// d = dc + δ, δ = 8w + lane ∈ [0, 63] (four quarter sums + the carry) and keep the carry of δ − 64.
// sState[δ]: the carried sum for δ, owned by that lane.
__device__ __forceinline__ void drel_emit_tile(const DrelSink& sink, const float* sDiag, float* sState,
                                               int dc) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool mine = lane < 8;
  const int dl = 8 * warp + (lane & 7);  // δ
  float v = 0.f;
  if (mine) {
    v = (((sDiag[dl + 63] + sDiag[128 + dl + 63]) + sDiag[256 + dl + 63]) + sDiag[384 + dl + 63]) +
        sState[dl];
    const int dm = dl - 1;  // index of δ − 64 (+ 63)
    sState[dl] = dl > 0 ? ((sDiag[dm] + sDiag[128 + dm]) + sDiag[256 + dm]) + sDiag[384 + dm] : 0.f;
  }
  drel_emit(sink, mine, dc + dl, v, sState);
}

// ------------------------------------------------------------------------------------------------
// q,dout:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) table:(H,2R+1) lse,delta:(B,H,Nq)
//   -> dk,dv:(B,Nk,H,D) dbias:(B|1,H|1,Nq,Nk) [dq_accum:(B,H,Nq,D) fp32 +=] [dT: see above]
// packed: q,dout:(Tq,H,D) k,v:(Tk,H,D) bias, dbias: blocks [H,nq_b,nk_b] lse,delta:(H,Tq) dq_accum:(H,Tq,D)
// grid (ceil(Nk/64), group_h ? 1 : H, group_b ? 1 : B), or 1-d with the sharing dims fastest
// (args.sharing_fastest), block 256. Packed: Nk is the longest sequence; CTAs past their
// sequence's keys return at once.
// Warp w: S/dP piece rows 16·(w%4), cols 32·(w/4); dK/dV rows (keys) 16·(w%4), cols (d) (D/2)·(w/4);
// dQ rows 16·(w%4), cols (D/2)·(w/4).
// kGeneral: the packed-batch and relative-position paths are compiled in. Without them (dense
// batches, no table) the kernel is the one these modes were added to: compiled into it, the
// run-time branches and the per-sequence values cost the D = 64 kernel 27% of its backward time
// at B=4 H=8 N=2048 (H100; ptxas spills 100 -> 300 bytes under the 128-register cap).
template <typename Tr, bool kGeneral>
__global__ void __launch_bounds__(Tr::kNThreads, Tr::kMinBlocks)
    flash_bias_bwd_kernel(const __grid_constant__ BwdArgs args) {
  using T = typename Tr::Element;
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN;
  constexpr int kPitch = Tr::kPitch, kSPitch = Tr::kSPitch, kBiasPitch = Tr::kBiasPitch;
  constexpr int kStages = Tr::kStages, kNThreads = Tr::kNThreads;
  constexpr int kRelElems = Tr::kRelSliceElems;
  constexpr int kDT = D / 16;  // n-tiles of a warp's half of the head dim
  const FlashBiasBwdParams& p = args.p;

  extern __shared__ __align__(128) char smem[];
  T* sK = reinterpret_cast<T*>(smem + Tr::kOffK);
  T* sV = reinterpret_cast<T*>(smem + Tr::kOffV);
  T* sQ = reinterpret_cast<T*>(smem + Tr::kOffQ);
  T* sdO = reinterpret_cast<T*>(smem + Tr::kOffdO);
  T* sP = reinterpret_cast<T*>(smem + Tr::kOffP);
  T* sdS = reinterpret_cast<T*>(smem + Tr::kOffdS);
  float* sLse = reinterpret_cast<float*>(smem + Tr::kOffLse);
  float* sDelta = reinterpret_cast<float*>(smem + Tr::kOffDelta);
  uint8_t* sKeyOk = reinterpret_cast<uint8_t*>(smem + Tr::kOffKeyOk);
  float* sdS32 = reinterpret_cast<float*>(smem + Tr::kOffdS32);  // kCluster and dT only
  char* sBias = smem + Tr::kOffBias;
  constexpr int kS32Pitch = Tr::kS32Pitch;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp % 4) * 16, wn = (warp / 4) * 32;       // S / dP piece
  const int wk = (warp % 4) * 16, wd = (warp / 4) * (D / 2);  // dK / dV / dQ piece
  // CTA -> (key block, h, b). With dB summed by atomics, the CTAs that add into the same dB tile
  // (the sharing b and/or h) are adjacent in launch order, so their additions meet in L2.
  const GridPos pos = grid_pos(kGeneral && args.varlen);
  int n_block = pos.block, h_cta = pos.h, b_cta = pos.b;
  if (args.sharing_fastest) {
    int r = blockIdx.x;
    const int ib = args.shared_b ? r % p.B : 0;
    if (args.shared_b) r /= p.B;
    const int ih = args.shared_h ? r % p.H : 0;
    if (args.shared_h) r /= p.H;
    const int n_kblocks = (p.Nk + BN - 1) / BN;
    n_block = r % n_kblocks;
    r /= n_kblocks;
    h_cta = args.shared_h ? ih : r % p.H;
    if (!args.shared_h) r /= p.H;
    b_cta = args.shared_b ? ib : r;
  }
  const int n0 = n_block * BN;
  const bool has_bias = args.bias_kind != kNoBias;
  const int belt = has_bias ? bias_elt_size(args.bias_kind) : 0;
  const int bias_tile_bytes = Tr::kBiasTileElems * belt;
  const bool varlen = kGeneral && args.varlen;
  const bool relpos = kGeneral && args.relpos;
  const int R = p.relpos_clip;
  float* sRel = reinterpret_cast<float*>(smem + rel_offset<Tr>(belt));
  float* sDiag = sRel + kStages * kRelElems;       // [4][128], dT only
  float* sDrelState = sDiag + 4 * Tr::kDiagElems;  // carry[64], per-warp hi, lo: dT only
  const DrelMode drel_mode = kGeneral ? args.drel_mode : DrelMode::kNone;
  const float scale = args.scale;
  const bool want_dk = p.dk != nullptr, want_dv = p.dv != nullptr;
  const bool dq_atomic = args.dq_accum != nullptr;
  const DbiasMode dbias_mode = args.dbias_mode;

  const int b_begin = args.group_b ? 0 : b_cta, b_end = args.group_b ? p.B : b_cta + 1;
  const int h_begin = args.group_h ? 0 : h_cta, h_end = args.group_h ? p.H : h_cta + 1;

  // kGeneral: what the query-block loop and the epilogue need per (b, h), in shared memory rather
  // than registers (written by thread 0 before each (b, h); see the forward kernel).
  __shared__ struct {
    const T* q;
    const T* dout;
    const char* bias;
    const float* lse;
    const float* delta;
    const float* table_h;
    char* dbias;
    float* dbias_acc;
    float* dq_acc;
    T* dk;
    T* dv;
    int64_t bias_row, dbias_row;
    int Nq, Nk;
    bool bias_vec, dbias_vec, dbias_from_smem;
    DrelSink sink;
  } src;

  for (int b = b_begin; b < b_end; ++b) {
    const SeqInfo seq = seq_info(p, b, varlen);
    const int Nq = seq.Nq, Nk = seq.Nk;
    if (kGeneral && n0 >= Nk) continue;  // packed: past this sequence's keys (uniform over the CTA)
    const int m_blocks = (Nq + BM - 1) / BM;
    const int causal_off = Nk - Nq;
    // First query block that sees any key of this block (causal).
    int m_begin = 0;
    if (p.causal) {
      const int i_min = n0 - causal_off;
      m_begin = i_min <= 0 ? 0 : min(i_min / BM, m_blocks);
    }
    const uint8_t* kpm = p.key_padding_mask ? p.key_padding_mask + int64_t(b) * Nk : nullptr;

    for (int h = h_begin; h < h_end; ++h) {
      const T* q = static_cast<const T*>(p.q) + seq.q_origin(p.q_stride) + h * p.q_stride.head;
      const T* k = static_cast<const T*>(p.k) + seq.k_origin(p.k_stride) + h * p.k_stride.head;
      const T* v = static_cast<const T*>(p.v) + seq.k_origin(p.v_stride) + h * p.v_stride.head;
      const T* dout = static_cast<const T*>(p.dout) + seq.q_origin(p.dout_stride) + h * p.dout_stride.head;
      int64_t bias_row = 0;
      const int64_t bias_off = has_bias ? bias_slice(seq, h, p.bias_seq_offsets, p.bias_batch_stride,
                                                     p.bias_head_stride, p.bias_row_stride, bias_row)
                                        : 0;
      const char* bias = has_bias ? static_cast<const char*>(p.bias) + bias_off * belt : nullptr;
      const bool bias_vec =
          args.bias_vec && (!varlen || ((bias_off * belt) % 16 == 0 && (bias_row * belt) % 16 == 0));
      const int64_t stat_row = seq.stat_row(h);
      const float* lse = static_cast<const float*>(p.lse) + stat_row;
      const float* delta = args.delta + stat_row;
      const float* table_h =
          relpos ? static_cast<const float*>(p.relpos_table) + int64_t(h) * (2 * R + 1) : nullptr;
      char* dbias = nullptr;  // kDirect: this (b, h)'s dB slice; kCluster: the shared slice
      int64_t dbias_row = p.dbias_row_stride;
      bool dbias_vec = args.dbias_vec, dbias_from_smem = args.dbias_from_smem;
      float* dbias_acc = nullptr;  // kAtomic / kGrouped: the fp32 accumulator slice
      if (dbias_mode == DbiasMode::kDirect) {
        const int64_t off = bias_slice(seq, h, p.bias_seq_offsets, p.dbias_batch_stride, p.dbias_head_stride,
                                       p.dbias_row_stride, dbias_row);
        dbias = static_cast<char*>(p.dbias) + off * belt;
        if (varlen) {  // the host checked the base pointer; the sequence's block and rows here
          dbias_vec = dbias_vec && off % 2 == 0 && dbias_row % 2 == 0;
          dbias_from_smem = dbias_from_smem && (off * belt) % 16 == 0 && (dbias_row * belt) % 16 == 0;
        }
      } else if (dbias_mode == DbiasMode::kCluster) {
        const int bs = args.shared_b ? 0 : b, hs = args.shared_h ? 0 : h;
        dbias = static_cast<char*>(p.dbias) + (bs * p.dbias_batch_stride + hs * p.dbias_head_stride) * belt;
      } else if (dbias_mode != DbiasMode::kNone) {
        const int bs = args.shared_b ? 0 : b, hs = args.shared_h ? 0 : h;
        const int nsh = args.shared_h ? 1 : p.H;
        dbias_acc = args.dbias_accum + (int64_t(bs) * nsh + hs) * p.Nq * args.dbias_accum_ld;
      }

      // dT: this CTA's sink (built where needed: its fields are not held across the walk), and
      // (kPartial) the bins its walk will not reach, written as 0
      const bool drel = drel_mode != DrelMode::kNone && Nq > 0;
      auto drel_sink = [&]() {
        DrelSink sk;
        sk.mode = drel_mode;
        sk.R = R;
        sk.table = sk.row = nullptr;
        sk.bin_lo = 0;
        if (drel_mode == DrelMode::kAtomic) {
          sk.table = static_cast<float*>(p.drelpos_table) + int64_t(h) * (2 * R + 1);
        } else {
          const int n_kblocks = (p.Nk + BN - 1) / BN;
          sk.row = args.drel_part + ((int64_t(b) * p.H + h) * n_kblocks + n_block) * args.drel_part_ld;
          sk.bin_lo = min(max(n0 - m_blocks * BM + 1, -R), R) + R;
        }
        return sk;
      };
      if (drel) {
        if (drel_mode == DrelMode::kPartial) {
          const DrelSink sk = drel_sink();
          const int d_lo = n0 - m_blocks * BM + 1, d_hi = n0 + BN - 1;
          const int d_walk_hi = m_begin < m_blocks ? n0 - m_begin * BM + BN - 1 : d_lo - 1;
          for (int d = d_walk_hi + 1 + tid; d <= d_hi; d += kNThreads)
            if (d > -R && d < R) sk.row[d + R - sk.bin_lo] = 0.f;
        }
        if (tid < 80) sDrelState[tid] = 0.f;  // carries and end sums; published by the barrier below
      }

      if (kGeneral && tid == 0) {
        src.q = q;
        src.dout = dout;
        src.bias = bias;
        src.lse = lse;
        src.delta = delta;
        src.table_h = table_h;
        src.dbias = dbias;
        src.dbias_acc = dbias_acc;
        src.dq_acc = dq_atomic ? args.dq_accum + stat_row * D : nullptr;
        src.dk = want_dk ? static_cast<T*>(p.dk) + seq.k_origin(p.dk_stride) + h * p.dk_stride.head : nullptr;
        src.dv = want_dv ? static_cast<T*>(p.dv) + seq.k_origin(p.dv_stride) + h * p.dv_stride.head : nullptr;
        src.bias_row = bias_row;
        src.dbias_row = dbias_row;
        src.Nq = Nq;
        src.Nk = Nk;
        src.bias_vec = bias_vec;
        src.dbias_vec = dbias_vec;
        src.dbias_from_smem = dbias_from_smem;
        if (drel) src.sink = drel_sink();
      }

      // dB rows that the causal skip leaves out are zero (dS = 0 there); in a cluster, rank 0 writes them.
      const int cluster_rank =
          dbias_mode == DbiasMode::kCluster ? int(blockIdx.x % unsigned(args.cluster_size)) : 0;
      if (dbias != nullptr && !p.dbias_accumulate && m_begin > 0 && cluster_rank == 0) {
        const int rows = min(m_begin * BM, Nq), cols = min(BN, Nk - n0);
        for (int idx = tid; idx < rows * cols; idx += kNThreads) {
          const int i = idx / cols, j = n0 + idx % cols;
          char* row = dbias + int64_t(i) * dbias_row * belt;
          if (belt == 4)
            reinterpret_cast<float*>(row)[j] = 0.f;
          else
            reinterpret_cast<uint16_t*>(row)[j] = 0;  // +0 in fp16 and bf16
        }
      }
      if (tid < BN) sKeyOk[tid] = key_ok(kpm, n0 + tid, Nk);

      float acc_dk[1][kDT][4], acc_dv[1][kDT][4];
      zero_frag(acc_dk);
      zero_frag(acc_dv);

      if constexpr (kGeneral) __syncthreads();  // src
      // kGeneral: the value from shared memory, else the local (a kernel parameter, or derived from them)
      auto pick = [&](auto from_src, auto local) {
        if constexpr (kGeneral)
          return from_src;
        else
          return local;
      };
      auto load_q_block = [&](int mb, int stage) {
        const int m0 = mb * BM;
        const int nq = pick(src.Nq, Nq);
        load_rows<T, D, BM, kPitch, kNThreads>(sQ + stage * BM * kPitch, pick(src.q, q), p.q_stride.row, m0,
                                               nq, tid);
        load_rows<T, D, BM, kPitch, kNThreads>(sdO + stage * BM * kPitch, pick(src.dout, dout),
                                               p.dout_stride.row, m0, nq, tid);
        if (has_bias)
          load_bias_tile<BM, BN, kBiasPitch, kNThreads, kGeneral>(
              sBias + stage * bias_tile_bytes, pick(src.bias, bias), pick(src.bias_row, p.bias_row_stride),
              args.bias_kind, m0, n0, nq, pick(src.Nk, Nk), pick(src.bias_vec, args.bias_vec), tid);
        if (relpos) load_rel_slice<BM, BN, kNThreads>(sRel + stage * kRelElems, src.table_h, R, m0, n0, tid);
        load_row_stats<BM>(sLse + stage * BM, sDelta + stage * BM, pick(src.lse, lse), pick(src.delta, delta),
                           m0, nq, tid);
      };

      const bool cluster_mode = dbias_mode == DbiasMode::kCluster;
      float* sW = cluster_mode ? sDrelState + 128 : sdS32;  // the wrapped fp32 dS tile (dT)
      if (cluster_mode) cluster_arrive();  // pairs with the first wait below (or the final one)
      if (m_begin < m_blocks) {
        load_rows<T, D, BN, kPitch, kNThreads>(sK, k, p.k_stride.row, n0, Nk, tid);
        load_rows<T, D, BN, kPitch, kNThreads>(sV, v, p.v_stride.row, n0, Nk, tid);
        load_q_block(m_begin, 0);
        cp_async_commit();

        for (int mb = m_begin; mb < m_blocks; ++mb) {
          const int it = mb - m_begin;
          const int stage = it % kStages;
          if constexpr (kStages > 1) {
            if (mb + 1 < m_blocks) load_q_block(mb + 1, (it + 1) % kStages);
            cp_async_commit();
            cp_async_wait<1>();
          } else {
            if (it > 0) load_q_block(mb, 0);
            cp_async_commit();
            cp_async_wait<0>();
          }
          __syncthreads();

          const int m0 = mb * BM;
          const T* sQs = sQ + stage * BM * kPitch;
          const T* sdOs = sdO + stage * BM * kPitch;
          const float* sLses = sLse + stage * BM;
          const float* sDeltas = sDelta + stage * BM;

          float S[1][4][4], dP[1][4][4];
          zero_frag(S);
          zero_frag(dP);
          warp_gemm<1, 4, D, false, false>(S, sQs + wm * kPitch, kPitch, sK + wn * kPitch, kPitch);
          warp_gemm<1, 4, D, false, false>(dP, sdOs + wm * kPitch, kPitch, sV + wn * kPitch, kPitch);
          const bool masked = tile_needs_mask<BM, BN>(kpm != nullptr, p.causal, m0, n0, Nk, causal_off);
          const float* sRel0 = sRel + stage * kRelElems + (BM - 1);
          // (the tile mode from the kernel parameters rather than a register held across the loop)
          with_tile_mode<kGeneral>(
              has_bias ? args.bias_kind
              : relpos ? kRelOnly
                       : kNoBias,
              masked, [&](auto kind, auto msk) {
                scores_to_logits<decltype(kind)::value, decltype(msk)::value, 4, kBiasPitch>(
                    S, wm, wn, m0, n0, sBias + stage * bias_tile_bytes, sRel0, sKeyOk, p.causal, causal_off,
                    scale);
              });
          if (relpos && has_bias) add_relpos<4>(S, sRel0, wm, wn);
          float lse2[2], dlt[2];
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            lse2[hf] = lse_to_log2(sLses[wm + g + 8 * hf]);
            dlt[hf] = sDeltas[wm + g + 8 * hf];
          }
          probs_and_ds(S, dP, lse2, dlt);  // S <- P, dP <- dS

          // dB from the fp32 dS, once per tile (or from the dS tile below, or summed over the cluster)
          // (dense batches: the dB flags and row strides straight from the kernel parameters)
          if (dbias_mode != DbiasMode::kNone && dbias_mode != DbiasMode::kCluster &&
              !pick(src.dbias_from_smem, args.dbias_from_smem)) {
            const int nq = pick(src.Nq, Nq), nk = pick(src.Nk, Nk);
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int i = m0 + wm + g + 8 * hf;
              if (i >= nq) continue;
#pragma unroll
              for (int nt = 0; nt < 4; ++nt) {
                const int j = n0 + wn + 8 * nt + 2 * t;
                const float x = dP[0][nt][2 * hf], y = dP[0][nt][2 * hf + 1];
                if (dbias_mode == DbiasMode::kDirect) {
                  store_dbias_pair(
                      pick(src.dbias, dbias) + int64_t(i) * pick(src.dbias_row, p.dbias_row_stride) * belt,
                      args.bias_kind, j, nk, x, y, p.dbias_accumulate, pick(src.dbias_vec, args.dbias_vec));
                } else {
                  float* r = pick(src.dbias_acc, dbias_acc) + int64_t(i) * args.dbias_accum_ld +
                             j;  // ld % 4 == 0: j even is 8-byte aligned
                  if (dbias_mode == DbiasMode::kAtomic) {
                    if (j + 1 < nk) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                      atomicAdd(reinterpret_cast<float2*>(r), make_float2(x, y));
#else
                      atomicAdd(r, x);
                      atomicAdd(r + 1, y);
#endif
                    } else if (j < nk) {
                      atomicAdd(r, x);
                    }
                  } else {  // kGrouped: this CTA is the only writer, in a fixed (b, h) order
                    if (j < nk) r[0] += x;
                    if (j + 1 < nk) r[1] += y;
                  }
                }
              }
            }
          }

          store_frag(S, sP + wm * kSPitch + wn, kSPitch);
          store_frag(dP, sdS + wm * kSPitch + wn, kSPitch);
          if (cluster_mode) {
            cluster_wait();  // every CTA of the cluster has finished reading the previous fp32 dS tiles
            store_frag(dP, sdS32 + wm * kS32Pitch + wn, kS32Pitch);
          }
          if (drel) store_frag_wrapped<4, Tr::kWrapPitch>(dP, sW, wm, wn);
          __syncthreads();
          if (cluster_mode) cluster_arrive();  // publishes the fp32 dS tile; waited on after the products
          if (drel) tile_diagonal_sums<Tr::kWrapPitch>(sW, sDiag, tid);
          if (pick(src.dbias_from_smem, args.dbias_from_smem))
            store_dbias_tile<T, BM, BN, kSPitch, kNThreads>(pick(src.dbias, dbias),
                                                            pick(src.dbias_row, p.dbias_row_stride), sdS, m0,
                                                            n0, pick(src.Nq, Nq), pick(src.Nk, Nk), tid);

          if (want_dv) warp_gemm<1, kDT, BM, true, true>(acc_dv, sP + wk, kSPitch, sdOs + wd, kPitch);
          if (want_dk) warp_gemm<1, kDT, BM, true, true>(acc_dk, sdS + wk, kSPitch, sQs + wd, kPitch);
          if (dq_atomic) {
            float acc_dq[1][kDT][4];
            zero_frag(acc_dq);
            warp_gemm<1, kDT, BN, false, true>(acc_dq, sdS + wm * kSPitch, kSPitch, sK + wd, kPitch);
            float* dq = pick(src.dq_acc, args.dq_accum + stat_row * D);
            const int nq = pick(src.Nq, Nq);
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int i = m0 + wm + g + 8 * hf;
              if (i >= nq) continue;
#pragma unroll
              for (int nt = 0; nt < kDT; ++nt) {
                float* r = dq + int64_t(i) * D + wd + 8 * nt + 2 * t;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                atomicAdd(reinterpret_cast<float2*>(r),
                          make_float2(acc_dq[0][nt][2 * hf], acc_dq[0][nt][2 * hf + 1]));
#else
                atomicAdd(r, acc_dq[0][nt][2 * hf]);
                atomicAdd(r + 1, acc_dq[0][nt][2 * hf + 1]);
#endif
              }
            }
          }
          if (cluster_mode) {
            cluster_wait();  // all fp32 dS tiles of this query block are visible
            reduce_dbias_cluster<BM, BN, kS32Pitch, kNThreads>(
                sdS32, cluster_rank, args.cluster_size, pick(src.dbias, dbias), p.dbias_row_stride, belt,
                args.bias_kind, m0, n0, pick(src.Nq, Nq), pick(src.Nk, Nk), p.dbias_accumulate,
                args.dbias_vec, tid);
            cluster_arrive_relaxed();  // reads done (their values are consumed); no memory to publish
          }
          __syncthreads();
          // the tile's final diagonals, 8 per warp; sDiag is next written after the next tile's barrier
          if (drel) drel_emit_tile(src.sink, sDiag, sDrelState, n0 - m0);
        }
        cp_async_wait<0>();
        if (drel) {  // the last tile's carried diagonals d = n0 − 64·(m_blocks − 1) + δ − 64, δ ∈ [1, 63]
          const int dl = 8 * warp + (lane & 7);
          const float carried = lane < 8 ? sDrelState[dl] : 0.f;  // lanes 8–31 hold no diagonal
          drel_emit(src.sink, lane < 8 && dl > 0, n0 - (m_blocks - 1) * BM + dl - 64, carried, sDrelState);
        }
      }
      if (drel) {  // the end bins, once: the warps' sums in order
        __syncthreads();
        if (tid == 0) {
          float hi = 0.f, lo = 0.f;
          for (int w = 0; w < kNThreads / 32; ++w) {
            hi += sDrelState[64 + 2 * w];
            lo += sDrelState[65 + 2 * w];
          }
          const DrelSink& sk = src.sink;
          if (R == 0) {
            sk.put(0, hi + lo);
          } else {
            if (n0 + BN - 1 >= R) sk.put(2 * R, hi);
            if (n0 - m_blocks * BM + 1 <= -R) sk.put(0, lo);
          }
        }
      }
      if (cluster_mode) cluster_wait();  // no CTA leaves while the cluster may still read its tiles

        // dK = scale · Σ dSᵀ Q, dV = Σ Pᵀ dO for keys n0 + wk + ...
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int j = n0 + wk + g + 8 * hf;
        if (j >= pick(src.Nk, Nk)) continue;
        if (want_dk) {
          T* row = pick(src.dk, static_cast<T*>(p.dk) + seq.k_origin(p.dk_stride) + h * p.dk_stride.head) +
                   int64_t(j) * p.dk_stride.row;
#pragma unroll
          for (int nt = 0; nt < kDT; ++nt)
            store_pair(row + wd + 8 * nt + 2 * t, acc_dk[0][nt][2 * hf] * scale,
                       acc_dk[0][nt][2 * hf + 1] * scale);
        }
        if (want_dv) {
          T* row = pick(src.dv, static_cast<T*>(p.dv) + seq.k_origin(p.dv_stride) + h * p.dv_stride.head) +
                   int64_t(j) * p.dv_stride.row;
#pragma unroll
          for (int nt = 0; nt < kDT; ++nt)
            store_pair(row + wd + 8 * nt + 2 * t, acc_dv[0][nt][2 * hf], acc_dv[0][nt][2 * hf + 1]);
        }
      }
      __syncthreads();  // sKeyOk and the tiles are reused by the next (b, h) of a group
    }
  }
}

// ------------------------------------------------------------------------------------------------
// q,dout:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) table:(H,2R+1) lse,delta:(B,H,Nq) -> dq:(B,Nq,H,D)
// packed: as the forward. grid (ceil(Nq/64), H, B), block 128; warp w owns query rows 16·w of the block.
template <typename Tr>
__global__ void __launch_bounds__(Tr::kNThreads)
    flash_bias_bwd_dq_kernel(const __grid_constant__ BwdArgs args) {
  using T = typename Tr::Element;
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN;
  constexpr int kPitch = Tr::kPitch, kSPitch = Tr::kSPitch, kBiasPitch = Tr::kBiasPitch;
  constexpr int kStages = Tr::kStages, kNThreads = Tr::kNThreads;
  constexpr int kRelElems = Tr::kRelSliceElems;
  const FlashBiasBwdParams& p = args.p;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const GridPos pos = grid_pos(args.varlen);
  const int h = pos.h, b = pos.b;
  const int m0 = pos.block * BM;
  const SeqInfo seq = seq_info(p, b, args.varlen);
  const int Nq = seq.Nq, Nk = seq.Nk;
  if (m0 >= Nq) return;  // packed: past this sequence's queries

  extern __shared__ __align__(128) char smem[];
  T* sQ = reinterpret_cast<T*>(smem + Tr::kOffQ);
  T* sdO = reinterpret_cast<T*>(smem + Tr::kOffdO);
  T* sK = reinterpret_cast<T*>(smem + Tr::kOffK);
  T* sV = reinterpret_cast<T*>(smem + Tr::kOffV);
  T* sdS = reinterpret_cast<T*>(smem + Tr::kOffdS);  // fp32 path only
  float* sLse = reinterpret_cast<float*>(smem + Tr::kOffLse);
  float* sDelta = reinterpret_cast<float*>(smem + Tr::kOffDelta);
  uint8_t* sKeyOk = reinterpret_cast<uint8_t*>(smem + Tr::kOffKeyOk);
  char* sBias = smem + Tr::kOffBias;

  const T* q = static_cast<const T*>(p.q) + seq.q_origin(p.q_stride) + h * p.q_stride.head;
  const T* k = static_cast<const T*>(p.k) + seq.k_origin(p.k_stride) + h * p.k_stride.head;
  const T* v = static_cast<const T*>(p.v) + seq.k_origin(p.v_stride) + h * p.v_stride.head;
  const T* dout = static_cast<const T*>(p.dout) + seq.q_origin(p.dout_stride) + h * p.dout_stride.head;
  const bool has_bias = args.bias_kind != kNoBias;
  const int belt = has_bias ? bias_elt_size(args.bias_kind) : 0;
  const int bias_tile_bytes = Tr::kBiasTileElems * belt;
  int64_t bias_row = 0;
  const int64_t bias_off = has_bias ? bias_slice(seq, h, p.bias_seq_offsets, p.bias_batch_stride,
                                                 p.bias_head_stride, p.bias_row_stride, bias_row)
                                    : 0;
  const char* bias = has_bias ? static_cast<const char*>(p.bias) + bias_off * belt : nullptr;
  const bool bias_vec =
      args.bias_vec && (!args.varlen || ((bias_off * belt) % 16 == 0 && (bias_row * belt) % 16 == 0));
  const uint8_t* kpm = p.key_padding_mask ? p.key_padding_mask + int64_t(b) * Nk : nullptr;
  const bool relpos = args.relpos;
  const int R = p.relpos_clip;
  const float* table_h =
      relpos ? static_cast<const float*>(p.relpos_table) + int64_t(h) * (2 * R + 1) : nullptr;
  float* sRel = reinterpret_cast<float*>(smem + rel_offset<Tr>(belt));
  const int tile_kind = has_bias ? args.bias_kind : relpos ? kRelOnly : kNoBias;
  const int64_t stat_row = seq.stat_row(h);
  const int causal_off = Nk - Nq;
  const float scale = args.scale;

  int n_blocks = (Nk + BN - 1) / BN;
  if (p.causal) {
    const int last_key = min(m0 + BM, Nq) - 1 + causal_off;
    n_blocks = last_key < 0 ? 0 : min(n_blocks, last_key / BN + 1);
  }

  auto load_kv = [&](int n_block, int stage) {
    const int n0 = n_block * BN;
    load_rows<T, D, BN, kPitch, kNThreads>(sK + stage * BN * kPitch, k, p.k_stride.row, n0, Nk, tid);
    load_rows<T, D, BN, kPitch, kNThreads>(sV + stage * BN * kPitch, v, p.v_stride.row, n0, Nk, tid);
    if (has_bias)
      load_bias_tile<BM, BN, kBiasPitch, kNThreads, true>(sBias + stage * bias_tile_bytes, bias, bias_row,
                                                          args.bias_kind, m0, n0, Nq, Nk, bias_vec, tid);
    if (relpos) load_rel_slice<BM, BN, kNThreads>(sRel + stage * kRelElems, table_h, R, m0, n0, tid);
  };

  load_rows<T, D, BM, kPitch, kNThreads>(sQ, q, p.q_stride.row, m0, Nq, tid);
  load_rows<T, D, BM, kPitch, kNThreads>(sdO, dout, p.dout_stride.row, m0, Nq, tid);
  load_row_stats<BM>(sLse, sDelta, static_cast<const float*>(p.lse) + stat_row, args.delta + stat_row, m0, Nq,
                     tid);
  if (n_blocks > 0) {
    load_kv(0, 0);
    if (tid < BN) sKeyOk[tid] = key_ok(kpm, tid, Nk);
  }
  cp_async_commit();

  float acc_dq[1][D / 8][4];
  zero_frag(acc_dq);

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb % kStages;
    uint8_t key_ok_next = 0;
    if constexpr (kStages > 1) {
      if (nb + 1 < n_blocks) {
        load_kv(nb + 1, (nb + 1) % kStages);
        if (tid < BN) key_ok_next = key_ok(kpm, (nb + 1) * BN + tid, Nk);
      }
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      if (nb > 0) {
        load_kv(nb, 0);
        if (tid < BN) sKeyOk[tid] = key_ok(kpm, nb * BN + tid, Nk);
      }
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();

    const int n0 = nb * BN;
    const T* sKs = sK + stage * BN * kPitch;
    const T* sVs = sV + stage * BN * kPitch;

    float S[1][BN / 8][4], dP[1][BN / 8][4];
    zero_frag(S);
    zero_frag(dP);
    warp_gemm<1, BN / 8, D, false, false>(S, sQ + warp * 16 * kPitch, kPitch, sKs, kPitch);
    warp_gemm<1, BN / 8, D, false, false>(dP, sdO + warp * 16 * kPitch, kPitch, sVs, kPitch);
    const bool masked = tile_needs_mask<BM, BN>(kpm != nullptr, p.causal, m0, n0, Nk, causal_off);
    const float* sRel0 = sRel + stage * kRelElems + (BM - 1);
    with_tile_mode(tile_kind, masked, [&](auto kind, auto msk) {
      scores_to_logits<decltype(kind)::value, decltype(msk)::value, BN / 8, kBiasPitch>(
          S, warp * 16, 0, m0, n0, sBias + stage * bias_tile_bytes, sRel0, sKeyOk + stage * BN, p.causal,
          causal_off, scale);
    });
    if (relpos && has_bias) add_relpos<BN / 8>(S, sRel0, warp * 16, 0);
    float lse2[2], dlt[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      lse2[hf] = lse_to_log2(sLse[warp * 16 + g + 8 * hf]);
      dlt[hf] = sDelta[warp * 16 + g + 8 * hf];
    }
    probs_and_ds(S, dP, lse2, dlt);  // dP <- dS

    // dQ += dS · K_j
    if constexpr (Tr::kTensorCores) {
      uint32_t da[BN / 16][4];
      frag_to_A<BN / 8, T>(dP, da);
      warp_gemm_rA<D / 8, BN, true>(acc_dq, da, sKs, kPitch);
    } else {
      T* sdSw = sdS + warp * 16 * kSPitch;
      store_frag(dP, sdSw, kSPitch);
      __syncwarp();
      warp_gemm<1, D / 8, BN, false, true>(acc_dq, sdSw, kSPitch, sKs, kPitch);
    }

    if constexpr (kStages > 1) {
      if (nb + 1 < n_blocks && tid < BN) sKeyOk[((nb + 1) % kStages) * BN + tid] = key_ok_next;
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  T* dq = static_cast<T*>(p.dq) + seq.q_origin(p.dq_stride) + h * p.dq_stride.head;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = m0 + warp * 16 + g + 8 * hf;
    if (i >= Nq) continue;
    T* row = dq + int64_t(i) * p.dq_stride.row;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
      store_pair(row + 8 * nt + 2 * t, acc_dq[0][nt][2 * hf] * scale, acc_dq[0][nt][2 * hf + 1] * scale);
  }
}

template <typename T, int D>
void launch_flash_bias_bwd(const BwdArgs& args, cudaStream_t stream) {
  using Tr = BwdTraits<T, D>;
  const FlashBiasBwdParams& p = args.p;
  const bool general = args.varlen || args.relpos;
  auto kernel = general ? flash_bias_bwd_kernel<Tr, true> : flash_bias_bwd_kernel<Tr, false>;
  if (general)
    set_smem_limit<Tr, flash_bias_bwd_kernel<Tr, true>, Tr::kWrapBytes>();
  else
    set_smem_limit<Tr, flash_bias_bwd_kernel<Tr, false>>();
  const int n_kblocks = (p.Nk + Tr::kBlockN - 1) / Tr::kBlockN;
  const dim3 grid = args.sharing_fastest ? dim3(unsigned(n_kblocks) * p.H * p.B, 1, 1)
                    : args.varlen        ? launch_grid(true, n_kblocks, p.H, p.B)
                                         : dim3(n_kblocks, args.group_h ? 1 : p.H, args.group_b ? 1 : p.B);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;  // packed batch with no keys
  // the cluster mode keeps its own fp32 dS tile: the wrapped one for dT follows the relative-position state
  const int smem = smem_bytes<Tr>(launch_bias_elt(args.bias_kind), args.relpos) +
                   (args.relpos && args.dbias_mode == DbiasMode::kCluster ? Tr::kWrapBytes : 0);
  if (args.dbias_mode == DbiasMode::kCluster) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(Tr::kNThreads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(args.cluster_size);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    PF_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args));
  } else {
    kernel<<<grid, Tr::kNThreads, smem, stream>>>(args);
  }
  PF_CUDA_CHECK_LAUNCH("flash_bias_bwd_kernel");
}

template <typename T, int D>
void launch_flash_bias_bwd_dq(const BwdArgs& args, cudaStream_t stream) {
  using Tr = DqTraits<T, D>;
  const FlashBiasBwdParams& p = args.p;
  auto kernel = flash_bias_bwd_dq_kernel<Tr>;
  set_smem_limit<Tr, flash_bias_bwd_dq_kernel<Tr>>();
  const dim3 grid = launch_grid(args.varlen, (p.Nq + Tr::kBlockM - 1) / Tr::kBlockM, p.H, p.B);
  if (grid.x == 0 || grid.z == 0) return;  // packed batch with no queries
  kernel<<<grid, Tr::kNThreads, smem_bytes<Tr>(launch_bias_elt(args.bias_kind), args.relpos), stream>>>(args);
  PF_CUDA_CHECK_LAUNCH("flash_bias_bwd_dq_kernel");
}

}  // namespace pf::kernels::cuda::fb
