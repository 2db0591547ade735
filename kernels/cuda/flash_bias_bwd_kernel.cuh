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

// lse as stored by the forward (natural log) -> log2 e · lse, the origin used to recompute P.
__device__ __forceinline__ float lse_to_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

// P and dS of a warp's scores in place: S (logits) -> P = 2^(log2 e · S − lse2), dP -> dS = P ∘ (dP − Δ).
template <int NT>
__device__ __forceinline__ void probs_and_ds(float (&S)[1][NT][4], float (&dP)[1][NT][4], const float (&lse2)[2],
                                             const float (&dlt)[2]) {
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
__device__ __forceinline__ void store_dbias_tile(char* dbias, int64_t row_stride, const T* sdS, int m0, int n0, int Nq,
                                                 int Nk, int tid) {
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
__device__ __forceinline__ void load_row_stats(float* sLse, float* sDelta, const float* lse, const float* delta,
                                               int m0, int Nq, int tid) {
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
      if (accumulate) { const float2 o = load_pair(r + j); v.x += o.x; v.y += o.y; }
      *reinterpret_cast<float2*>(r + j) = v;
    } else {
      if (j < Nk) r[j] = accumulate ? r[j] + x : x;
      if (j + 1 < Nk) r[j + 1] = accumulate ? r[j + 1] + y : y;
    }
  } else if (kind == int(ScalarType::F16)) {
    __half* r = reinterpret_cast<__half*>(row);
    if (vec && j + 1 < Nk) {
      if (accumulate) { const float2 o = load_pair(r + j); x += o.x; y += o.y; }
      store_pair(r + j, x, y);
    } else {
      if (j < Nk) r[j] = __float2half_rn(accumulate ? __half2float(r[j]) + x : x);
      if (j + 1 < Nk) r[j + 1] = __float2half_rn(accumulate ? __half2float(r[j + 1]) + y : y);
    }
  } else {
    __nv_bfloat16* r = reinterpret_cast<__nv_bfloat16*>(row);
    if (vec && j + 1 < Nk) {
      if (accumulate) { const float2 o = load_pair(r + j); x += o.x; y += o.y; }
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
__device__ __forceinline__ void reduce_dbias_cluster(float* sdS32, int rank, int G, char* dbias, int64_t row_stride,
                                                     int belt, int kind, int m0, int n0, int Nq, int Nk,
                                                     bool accumulate, bool vec, int tid) {
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
      const float4 v = *reinterpret_cast<const float4*>(cluster.map_shared_rank(sdS32 + r * kS32Pitch + c, qr));
      sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
    }
    char* row = dbias + int64_t(i) * row_stride * belt;
    store_dbias_pair(row, kind, j, Nk, sum.x, sum.y, accumulate, vec);
    store_dbias_pair(row, kind, j + 2, Nk, sum.z, sum.w, accumulate, vec);
  }
#else
  __trap();
#endif
}

// ------------------------------------------------------------------------------------------------
// q,dout:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) lse,delta:(B,H,Nq)
//   -> dk,dv:(B,Nk,H,D) dbias:(B|1,H|1,Nq,Nk) [dq_accum:(B,H,Nq,D) fp32 +=]
// grid (ceil(Nk/64), group_h ? 1 : H, group_b ? 1 : B), or 1-d with the sharing dims fastest
// (args.sharing_fastest), block 256.
// Warp w: S/dP piece rows 16·(w%4), cols 32·(w/4); dK/dV rows (keys) 16·(w%4), cols (d) (D/2)·(w/4);
// dQ rows 16·(w%4), cols (D/2)·(w/4).
template <typename Tr>
__global__ void __launch_bounds__(Tr::kNThreads, Tr::kMinBlocks)
    flash_bias_bwd_kernel(const __grid_constant__ BwdArgs args) {
  using T = typename Tr::Element;
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN;
  constexpr int kPitch = Tr::kPitch, kSPitch = Tr::kSPitch, kBiasPitch = Tr::kBiasPitch;
  constexpr int kStages = Tr::kStages, kNThreads = Tr::kNThreads;
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
  float* sdS32 = reinterpret_cast<float*>(smem + Tr::kOffdS32);  // kCluster only
  char* sBias = smem + Tr::kOffBias;
  constexpr int kS32Pitch = Tr::kS32Pitch;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp % 4) * 16, wn = (warp / 4) * 32;   // S / dP piece
  const int wk = (warp % 4) * 16, wd = (warp / 4) * (D / 2);  // dK / dV / dQ piece
  // CTA -> (key block, h, b). With dB summed by atomics, the CTAs that add into the same dB tile
  // (the sharing b and/or h) are adjacent in launch order, so their additions meet in L2.
  int n_block = blockIdx.x, h_cta = blockIdx.y, b_cta = blockIdx.z;
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
  const int m_blocks = (p.Nq + BM - 1) / BM;
  const int causal_off = p.Nk - p.Nq;
  const bool has_bias = args.bias_kind != kNoBias;
  const int belt = has_bias ? bias_elt_size(args.bias_kind) : 0;
  const int bias_tile_bytes = Tr::kBiasTileElems * belt;
  const float scale = args.scale;
  const bool want_dk = p.dk != nullptr, want_dv = p.dv != nullptr;
  const bool dq_atomic = args.dq_accum != nullptr;
  const DbiasMode dbias_mode = args.dbias_mode;

  // First query block that sees any key of this block (causal), identical for every (b, h).
  int m_begin = 0;
  if (p.causal) {
    const int i_min = n0 - causal_off;
    m_begin = i_min <= 0 ? 0 : min(i_min / BM, m_blocks);
  }

  const int b_begin = args.group_b ? 0 : b_cta, b_end = args.group_b ? p.B : b_cta + 1;
  const int h_begin = args.group_h ? 0 : h_cta, h_end = args.group_h ? p.H : h_cta + 1;

  for (int b = b_begin; b < b_end; ++b) {
    for (int h = h_begin; h < h_end; ++h) {
      const int64_t bh = int64_t(b) * p.H + h;
      const T* q = static_cast<const T*>(p.q) + b * p.q_stride.batch + h * p.q_stride.head;
      const T* k = static_cast<const T*>(p.k) + b * p.k_stride.batch + h * p.k_stride.head;
      const T* v = static_cast<const T*>(p.v) + b * p.v_stride.batch + h * p.v_stride.head;
      const T* dout = static_cast<const T*>(p.dout) + b * p.dout_stride.batch + h * p.dout_stride.head;
      const char* bias = has_bias ? static_cast<const char*>(p.bias) +
                                        (b * p.bias_batch_stride + h * p.bias_head_stride) * belt
                                  : nullptr;
      const float* lse = static_cast<const float*>(p.lse) + bh * p.Nq;
      const float* delta = args.delta + bh * p.Nq;
      const uint8_t* kpm = p.key_padding_mask ? p.key_padding_mask + int64_t(b) * p.Nk : nullptr;
      char* dbias = nullptr;  // kDirect: this (b, h)'s dB slice; kCluster: the shared slice
      float* dbias_acc = nullptr;  // kAtomic / kGrouped: the fp32 accumulator slice
      if (dbias_mode == DbiasMode::kDirect) {
        dbias = static_cast<char*>(p.dbias) + (b * p.dbias_batch_stride + h * p.dbias_head_stride) * belt;
      } else if (dbias_mode == DbiasMode::kCluster) {
        const int bs = args.shared_b ? 0 : b, hs = args.shared_h ? 0 : h;
        dbias = static_cast<char*>(p.dbias) + (bs * p.dbias_batch_stride + hs * p.dbias_head_stride) * belt;
      } else if (dbias_mode != DbiasMode::kNone) {
        const int bs = args.shared_b ? 0 : b, hs = args.shared_h ? 0 : h;
        const int nsh = args.shared_h ? 1 : p.H;
        dbias_acc = args.dbias_accum + (int64_t(bs) * nsh + hs) * p.Nq * args.dbias_accum_ld;
      }

      // dB rows that the causal skip leaves out are zero (dS = 0 there); in a cluster, rank 0 writes them.
      const int cluster_rank = dbias_mode == DbiasMode::kCluster ? int(blockIdx.x % unsigned(args.cluster_size)) : 0;
      if (dbias != nullptr && !p.dbias_accumulate && m_begin > 0 && cluster_rank == 0) {
        const int rows = min(m_begin * BM, p.Nq), cols = min(BN, p.Nk - n0);
        for (int idx = tid; idx < rows * cols; idx += kNThreads) {
          const int i = idx / cols, j = n0 + idx % cols;
          char* row = dbias + int64_t(i) * p.dbias_row_stride * belt;
          if (belt == 4) reinterpret_cast<float*>(row)[j] = 0.f;
          else reinterpret_cast<uint16_t*>(row)[j] = 0;  // +0 in fp16 and bf16
        }
      }
      if (tid < BN) sKeyOk[tid] = key_ok(kpm, n0 + tid, p.Nk);

      float acc_dk[1][kDT][4], acc_dv[1][kDT][4];
      zero_frag(acc_dk);
      zero_frag(acc_dv);

      auto load_q_block = [&](int mb, int stage) {
        const int m0 = mb * BM;
        load_rows<T, D, BM, kPitch, kNThreads>(sQ + stage * BM * kPitch, q, p.q_stride.row, m0, p.Nq, tid);
        load_rows<T, D, BM, kPitch, kNThreads>(sdO + stage * BM * kPitch, dout, p.dout_stride.row, m0, p.Nq, tid);
        if (has_bias)
          load_bias_tile<BM, BN, kBiasPitch, kNThreads>(sBias + stage * bias_tile_bytes, bias, p.bias_row_stride,
                                                        args.bias_kind, m0, n0, p.Nq, p.Nk, args.bias_vec, tid);
        load_row_stats<BM>(sLse + stage * BM, sDelta + stage * BM, lse, delta, m0, p.Nq, tid);
      };

      const bool cluster_mode = dbias_mode == DbiasMode::kCluster;
      if (cluster_mode) cluster_arrive();  // pairs with the first wait below (or the final one)
      if (m_begin < m_blocks) {
        load_rows<T, D, BN, kPitch, kNThreads>(sK, k, p.k_stride.row, n0, p.Nk, tid);
        load_rows<T, D, BN, kPitch, kNThreads>(sV, v, p.v_stride.row, n0, p.Nk, tid);
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
          const bool masked = tile_needs_mask<BM, BN>(kpm != nullptr, p.causal, m0, n0, p.Nk, causal_off);
          with_tile_mode(args.bias_kind, masked, [&](auto kind, auto msk) {
            scores_to_logits<decltype(kind)::value, decltype(msk)::value, 4, kBiasPitch>(
                S, wm, wn, m0, n0, sBias + stage * bias_tile_bytes, sKeyOk, p.causal, causal_off, scale);
          });
          float lse2[2], dlt[2];
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            lse2[hf] = lse_to_log2(sLses[wm + g + 8 * hf]);
            dlt[hf] = sDeltas[wm + g + 8 * hf];
          }
          probs_and_ds(S, dP, lse2, dlt);  // S <- P, dP <- dS

          // dB from the fp32 dS, once per tile (or from the dS tile below, or summed over the cluster)
          if (dbias_mode != DbiasMode::kNone && dbias_mode != DbiasMode::kCluster && !args.dbias_from_smem) {
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int i = m0 + wm + g + 8 * hf;
              if (i >= p.Nq) continue;
#pragma unroll
              for (int nt = 0; nt < 4; ++nt) {
                const int j = n0 + wn + 8 * nt + 2 * t;
                const float x = dP[0][nt][2 * hf], y = dP[0][nt][2 * hf + 1];
                if (dbias_mode == DbiasMode::kDirect) {
                  store_dbias_pair(dbias + int64_t(i) * p.dbias_row_stride * belt, args.bias_kind, j, p.Nk, x, y,
                                   p.dbias_accumulate, args.dbias_vec);
                } else {
                  float* r = dbias_acc + int64_t(i) * args.dbias_accum_ld + j;  // ld % 4 == 0: j even is 8-byte aligned
                  if (dbias_mode == DbiasMode::kAtomic) {
                    if (j + 1 < p.Nk) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                      atomicAdd(reinterpret_cast<float2*>(r), make_float2(x, y));
#else
                      atomicAdd(r, x);
                      atomicAdd(r + 1, y);
#endif
                    } else if (j < p.Nk) {
                      atomicAdd(r, x);
                    }
                  } else {  // kGrouped: this CTA is the only writer, in a fixed (b, h) order
                    if (j < p.Nk) r[0] += x;
                    if (j + 1 < p.Nk) r[1] += y;
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
          __syncthreads();
          if (cluster_mode) cluster_arrive();  // publishes the fp32 dS tile; waited on after the products
          if (args.dbias_from_smem)
            store_dbias_tile<T, BM, BN, kSPitch, kNThreads>(dbias, p.dbias_row_stride, sdS, m0, n0, p.Nq, p.Nk, tid);

          if (want_dv) warp_gemm<1, kDT, BM, true, true>(acc_dv, sP + wk, kSPitch, sdOs + wd, kPitch);
          if (want_dk) warp_gemm<1, kDT, BM, true, true>(acc_dk, sdS + wk, kSPitch, sQs + wd, kPitch);
          if (dq_atomic) {
            float acc_dq[1][kDT][4];
            zero_frag(acc_dq);
            warp_gemm<1, kDT, BN, false, true>(acc_dq, sdS + wm * kSPitch, kSPitch, sK + wd, kPitch);
            float* dq = args.dq_accum + bh * p.Nq * D;
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int i = m0 + wm + g + 8 * hf;
              if (i >= p.Nq) continue;
#pragma unroll
              for (int nt = 0; nt < kDT; ++nt) {
                float* r = dq + int64_t(i) * D + wd + 8 * nt + 2 * t;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                atomicAdd(reinterpret_cast<float2*>(r), make_float2(acc_dq[0][nt][2 * hf], acc_dq[0][nt][2 * hf + 1]));
#else
                atomicAdd(r, acc_dq[0][nt][2 * hf]);
                atomicAdd(r + 1, acc_dq[0][nt][2 * hf + 1]);
#endif
              }
            }
          }
          if (cluster_mode) {
            cluster_wait();  // all fp32 dS tiles of this query block are visible
            reduce_dbias_cluster<BM, BN, kS32Pitch, kNThreads>(sdS32, cluster_rank, args.cluster_size, dbias,
                                                               p.dbias_row_stride, belt, args.bias_kind, m0, n0, p.Nq,
                                                               p.Nk, p.dbias_accumulate, args.dbias_vec, tid);
            cluster_arrive_relaxed();  // reads done (their values are consumed); no memory to publish
          }
          __syncthreads();
        }
        cp_async_wait<0>();
      }
      if (cluster_mode) cluster_wait();  // no CTA leaves while the cluster may still read its tiles

      // dK = scale · Σ dSᵀ Q, dV = Σ Pᵀ dO for keys n0 + wk + ...
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int j = n0 + wk + g + 8 * hf;
        if (j >= p.Nk) continue;
        if (want_dk) {
          T* row = static_cast<T*>(p.dk) + b * p.dk_stride.batch + h * p.dk_stride.head + int64_t(j) * p.dk_stride.row;
#pragma unroll
          for (int nt = 0; nt < kDT; ++nt)
            store_pair(row + wd + 8 * nt + 2 * t, acc_dk[0][nt][2 * hf] * scale, acc_dk[0][nt][2 * hf + 1] * scale);
        }
        if (want_dv) {
          T* row = static_cast<T*>(p.dv) + b * p.dv_stride.batch + h * p.dv_stride.head + int64_t(j) * p.dv_stride.row;
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
// q,dout:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) lse,delta:(B,H,Nq) -> dq:(B,Nq,H,D)
// grid (ceil(Nq/64), H, B), block 128; warp w owns query rows 16·w of the block.
template <typename Tr>
__global__ void __launch_bounds__(Tr::kNThreads)
    flash_bias_bwd_dq_kernel(const __grid_constant__ BwdArgs args) {
  using T = typename Tr::Element;
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN;
  constexpr int kPitch = Tr::kPitch, kSPitch = Tr::kSPitch, kBiasPitch = Tr::kBiasPitch;
  constexpr int kStages = Tr::kStages, kNThreads = Tr::kNThreads;
  const FlashBiasBwdParams& p = args.p;

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

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int m0 = blockIdx.x * BM;
  const int64_t bh = int64_t(b) * p.H + h;

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride.batch + h * p.q_stride.head;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride.batch + h * p.k_stride.head;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride.batch + h * p.v_stride.head;
  const T* dout = static_cast<const T*>(p.dout) + b * p.dout_stride.batch + h * p.dout_stride.head;
  const bool has_bias = args.bias_kind != kNoBias;
  const int belt = has_bias ? bias_elt_size(args.bias_kind) : 0;
  const int bias_tile_bytes = Tr::kBiasTileElems * belt;
  const char* bias = has_bias ? static_cast<const char*>(p.bias) + (b * p.bias_batch_stride + h * p.bias_head_stride) * belt
                              : nullptr;
  const uint8_t* kpm = p.key_padding_mask ? p.key_padding_mask + int64_t(b) * p.Nk : nullptr;
  const int causal_off = p.Nk - p.Nq;
  const float scale = args.scale;

  int n_blocks = (p.Nk + BN - 1) / BN;
  if (p.causal) {
    const int last_key = min(m0 + BM, p.Nq) - 1 + causal_off;
    n_blocks = last_key < 0 ? 0 : min(n_blocks, last_key / BN + 1);
  }

  auto load_kv = [&](int n_block, int stage) {
    const int n0 = n_block * BN;
    load_rows<T, D, BN, kPitch, kNThreads>(sK + stage * BN * kPitch, k, p.k_stride.row, n0, p.Nk, tid);
    load_rows<T, D, BN, kPitch, kNThreads>(sV + stage * BN * kPitch, v, p.v_stride.row, n0, p.Nk, tid);
    if (has_bias)
      load_bias_tile<BM, BN, kBiasPitch, kNThreads>(sBias + stage * bias_tile_bytes, bias, p.bias_row_stride,
                                                    args.bias_kind, m0, n0, p.Nq, p.Nk, args.bias_vec, tid);
  };

  load_rows<T, D, BM, kPitch, kNThreads>(sQ, q, p.q_stride.row, m0, p.Nq, tid);
  load_rows<T, D, BM, kPitch, kNThreads>(sdO, dout, p.dout_stride.row, m0, p.Nq, tid);
  load_row_stats<BM>(sLse, sDelta, static_cast<const float*>(p.lse) + bh * p.Nq, args.delta + bh * p.Nq, m0,
                     p.Nq, tid);
  if (n_blocks > 0) {
    load_kv(0, 0);
    if (tid < BN) sKeyOk[tid] = key_ok(kpm, tid, p.Nk);
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
        if (tid < BN) key_ok_next = key_ok(kpm, (nb + 1) * BN + tid, p.Nk);
      }
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      if (nb > 0) {
        load_kv(nb, 0);
        if (tid < BN) sKeyOk[tid] = key_ok(kpm, nb * BN + tid, p.Nk);
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
    const bool masked = tile_needs_mask<BM, BN>(kpm != nullptr, p.causal, m0, n0, p.Nk, causal_off);
    with_tile_mode(args.bias_kind, masked, [&](auto kind, auto msk) {
      scores_to_logits<decltype(kind)::value, decltype(msk)::value, BN / 8, kBiasPitch>(
          S, warp * 16, 0, m0, n0, sBias + stage * bias_tile_bytes, sKeyOk + stage * BN, p.causal, causal_off, scale);
    });
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

  T* dq = static_cast<T*>(p.dq) + b * p.dq_stride.batch + h * p.dq_stride.head;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = m0 + warp * 16 + g + 8 * hf;
    if (i >= p.Nq) continue;
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
  auto kernel = flash_bias_bwd_kernel<Tr>;
  set_smem_limit<Tr>(kernel);
  const int n_kblocks = (p.Nk + Tr::kBlockN - 1) / Tr::kBlockN;
  const dim3 grid = args.sharing_fastest ? dim3(unsigned(n_kblocks) * p.H * p.B, 1, 1)
                                         : dim3(n_kblocks, args.group_h ? 1 : p.H, args.group_b ? 1 : p.B);
  const int smem = smem_bytes<Tr>(launch_bias_elt(args.bias_kind));
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
  set_smem_limit<Tr>(kernel);
  const dim3 grid((p.Nq + Tr::kBlockM - 1) / Tr::kBlockM, p.H, p.B);
  kernel<<<grid, Tr::kNThreads, smem_bytes<Tr>(launch_bias_elt(args.bias_kind)), stream>>>(args);
  PF_CUDA_CHECK_LAUNCH("flash_bias_bwd_dq_kernel");
}

}  // namespace pf::kernels::cuda::fb
