// The Hopper flash-bias backward (flash_bias_sm90.h): compiled for sm_90a only.
//
// One CTA per (128 keys, h, b); the keys' K and V stay in shared memory and their dK, dV in
// registers while the CTA walks the query blocks of 64 rows. Three warpgroups:
//   warpgroup 0, the producer: one thread issues every copy — K and V once, then per query block
//     i the Q_i and dO_i tiles, the 64 × 128 bias tile and the block's lse and Δ into stage
//     i % n_stages of a shared-memory ring (mbarriers `full` / `empty`, as in the forward).
//   warpgroups 1 and 2, the consumers: keys 64w … 64w + 63 each (w = 0, 1). Per query block, in
//   the transposed orientation (rows = keys), so that dK and dV accumulate in place:
//     Sᵀ = K_w Q_iᵀ,  dPᵀ = V_w dO_iᵀ                       wgmma, both operands from shared memory
//     Pᵀ = 2^(Sᵀ·scale·log2 e + biasᵀ·log2 e + T·log2 e − lse·log2 e)
//                                                         (the bias read transposed, ldmatrix;
//                                                          T[h, clip(j − i) + R] from shared memory)
//     dSᵀ = Pᵀ ∘ (dPᵀ − Δ)                                  masked entries exactly 0
//     dV_w += Pᵀ dO_i,  dK_w += dSᵀ Q_i                      wgmma, A from registers
//     dS → shared memory (stmatrix, transposed back: the 64 × 128 tile of this query block)
//     dQ_i[:, half w] = dS K[:, half w]                     wgmma over all 128 keys
//     dQ into a shared-memory staging tile, added into the fp32 accumulator in global memory by
//     TMA reduce-adds (cp.reduce.async.bulk.tensor, whole 128-byte lines)
//   and dB leaves from the dS tile by TMA stores: into dbias (the bias not broadcast), or — a bias
//   shared over the batch or heads — into the (B,H,Nq,ld) stage that flash_bias_dbias_sum_kernel
//   then sums over the (b, h) pairs sharing it, in a fixed order.
//   Two named barriers per query block order the dS tile's writers and readers (both warpgroups'
//   halves, the dQ products of the block before, the TMA store or reduce of the block before).
// At the end dK = scale · Σ dSᵀ Q and dV are stored from registers; dQ = scale · accumulator is
// written by flash_bias_dq_finalize_kernel.
//
// A relative-position table (alone or with a bias): the CTA keeps the window of its head's table
// row that its keys can touch — the bins clip(j − i, −R, R) + R for the diagonals key − query from
// n0 − (last computed query) to n0 + 127 − (first query), at most relpos_window_bins(R, Nq) — in
// shared memory as pairs {T·log2 e, dT} (loaded and zeroed by all threads before the warpgroups
// part). dT per query block: each warp sums its dS over each of its 79 diagonals in registers
// (warp_diagonal_sums: 18 shuffles), stores the sums to its 80-float strip (plain stores; two sets
// of strips, by the block's parity), and after the block's second named barrier one thread per
// diagonal of the block (191) adds the up to 5 warps' entries into the window's dT — interior
// bins by one owner without atomics, the clipped end bins 0 and 2R summed over the warp and added
// with one shared atomic each. At the CTA's end the window's dT is added into drelpos_table with
// global atomics (zeroed before unless dbias_accumulate). Not deterministic (the order of the
// global atomics and of the end bins' shared ones).
//
// Preconditions (flash_bias_bwd_sm90_unsupported): fp16 / bf16, D 32 / 64 / 128, a dense batch,
// a bias (if any) of the inputs' dtype with 16-byte rows, dbias either broadcast (then staged per
// (b, h)) or written whole (=, 16-byte rows), a relative-position table window of at most
// kSm90RelposMaxBins bins, not deterministic.
//
// Shared memory: K, V (128 × D each), the dS tile (64 × 128, two 128-byte-swizzled panels of 64
// keys), the dQ staging tile (64 × 2·DQ fp32: one 128-byte-swizzled panel of 32 columns per
// consumer warpgroup, or one shared by both at D = 32), the table part (rel_bytes: a multiple of
// 1024, 0 without a table: two sets of 8 dT strips, then the window), then n_stages × {Q_i, dO_i
// (64 × D), bias (64 × 128), lse·log2 e and Δ (64 floats each)}, then the mbarriers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_bias_sm90.h"
#include "kernels/cuda/flash_bias_sm90_maps.h"
#include "kernels/cuda/flash_bias_traits.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"
#include "kernels/cuda/sm90.cuh"
#include "kernels/cuda/sm90_wgmma.cuh"

namespace pf::kernels::cuda {

namespace fb90_bwd {

using fb::fast_exp2;
using fb::kLog2e;

constexpr int kMaxStages = 4;
constexpr int kThreads = 384;  // producer warpgroup + two consumer warpgroups
constexpr int kProducerRegs = 24, kConsumerRegs = 240;
static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= kThreads * sm90::launch_regs<kThreads>(),
              "the warpgroups' registers after setmaxnreg must fit the CTA's at launch");
constexpr int BM = 64, BN = 128;  // query rows per block, keys per CTA (64 per consumer warpgroup)
// dT: each consumer warp's 80 diagonal sums of a query block, staged for the block's pass
constexpr int kStripLen = 80, kStripBytes = 2 * 8 * kStripLen * 4;  // two sets: by the block's parity

template <int D>
struct Shape {
  static constexpr int kRowBytes = fb90::panel_bytes(D);  // Q/K/V/dO swizzle width (one panel)
  static constexpr int kPanels = 2 * D / kRowBytes;
  static constexpr int kKBytes = BN * D * 2, kQBytes = BM * D * 2;
  static constexpr int kDsBytes = BM * BN * 2;
  // dQ columns per product: a warpgroup's half of D, in two passes at D = 128 (registers)
  static constexpr int kDq = D == 128 ? 32 : D / 2;
  // the dQ staging tile: both warpgroups' products of one pass, 64 rows × 2·kDq fp32 as panels of
  // 32 columns (128-byte rows, the TMA reduce-add's box)
  static constexpr int kDqPanels = 2 * kDq / 32, kDqBytes = BM * 2 * kDq * 4;
  static_assert(D == 32 || D == 64 || D == 128, "head dim 32, 64 or 128");
};

struct Args {
  CUtensorMap q, k, v, dout, bias,
      dbias;           // dbias (B,H,Nq,Nk): the gradient or, a broadcast bias, the stage of dS per (b, h)
  const float* lse2;   // (B,H,nq_pad): lse·log2 e, +inf for a row without attended keys and past Nq
  const float* delta;  // (B,H,nq_pad): Δ = rowsum(dO ∘ O), 0 past Nq
  CUtensorMap dq_map;  // the fp32 dQ accumulator (B,H,Nq,D) += Σ dS K, boxes of 32 columns × 64 rows
  int want_dq;
  void* dk;
  BNHDStrides dk_stride;
  void* dv;
  BNHDStrides dv_stride;
  const uint8_t* kpm;    // (B, Nk) or null
  fb90::CtaOrder order;  // over (key block, h, b)
  int H, Nq, Nk, nq_pad;
  int has_bias, store_dbias;
  int bias_shared_b, bias_shared_h;
  int causal;
  int n_stages, stage_bytes, stage_tx;
  float scale, scale_log2;
  const float* relpos;  // (H, 2R+1) or null
  float* drelpos;       // (H, 2R+1) fp32, += ; null = dT not wanted
  int rel_clip;         // R
  int rel_last;         // 2R: the table row's last bin
  int rel_bytes;        // shared memory of the table window (0 without a table)
};

template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t x) {
  if constexpr (std::is_same_v<T, __half>)
    return __half22float2(*reinterpret_cast<const __half2*>(&x));
  else
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
}

// dT of one 64-query block: a warp's 16 keys × 64 queries of dS lie on the 79 diagonals
// key − query = (the warp's first key − the block's first query) + δ, δ = −63 … 15; lane (g, t)
// holds entry (hf, jj, e) on δ = g − 2t − e − 8(jj − hf). warp_diagonal_sums returns the warp's
// sum over each δ, spread over the lanes: lane l's sums[m] is that of strip position (δ + 64)
// r + 72 − 8(4m + q), with π = 25 l mod 32 (9π ≡ l), r = π / 4, q = π mod 4, for 4m + q ≤ 9
// (m = 2 of lanes with q ≥ 2 holds 0); the 80 positions 0 … 79 are each held once and each m's
// positions fall in 32 distinct banks.
//  1. x_e[k] = the thread's two entries of e and k = jj − hf ∈ [−1, 7] (on δ = c − e − 8k, c = g − 2t).
//  2. Lane (g + 1, t)'s e = 1 entries lie on lane (g, t)'s e = 0 diagonals (lane (0, t)'s on
//     lane (7, t)'s, one k further): one rotation by 4 lanes adds them. Lanes with c < 0 then
//     shift their registers by one, so that register i = κ + 1 of every lane holds δ = r + 8 − 8κ
//     with r = c mod 8, κ ∈ [−1, 8]. The lanes sharing r are the four π = 4r … 4r + 3 (lane + 9
//     is π + 1).
//  3. Those four lanes reduce-scatter their 10 registers: with lane π ^ 1 (5 shuffles, keeping
//     the registers of parity π mod 2), then with π ^ 2 (3 shuffles, keeping i ≡ π mod 4).
// 18 shuffles and 18 adds (plus 16 for step 1) per thread; every shuffle of a step is independent.
__device__ __forceinline__ int diag_pi(int lane) { return (25 * lane) & 31; }  // π of lane 9π mod 32
__device__ __forceinline__ void warp_diagonal_sums(const float (&ds)[BM / 2], int lane, float (&sums)[3]) {
  constexpr unsigned kAll = 0xffffffffu;
  const int g = lane / 4, t = lane % 4;
  float x[2][BM / 8 + 1];  // x[e][k + 1]
#pragma unroll
  for (int k = -1; k < BM / 8; ++k)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = 0.f;
      if (k >= 0) v += ds[4 * k + e];
      if (k + 1 < BM / 8) v += ds[4 * (k + 1) + 2 + e];
      x[e][k + 1] = v;
    }
  auto xv = [&](int e, int k) { return k >= -1 && k < BM / 8 ? x[e][k + 1] : 0.f; };
  // own e = 0 registers shifted when c < 0; the e = 1 registers sent to lane − 4 shifted when that
  // lane has c < 0 or wraps to g = 7: (g − 1) − 2t < 0 or g = 0, i.e. g ≤ 2t
  const bool own_shift = g < 2 * t, send_shift = g <= 2 * t;
  float z[10];
#pragma unroll
  for (int i = 0; i < 10; ++i) {
    const int kap = i - 1;
    const float own = own_shift ? xv(0, kap - 1) : xv(0, kap);
    const float send = send_shift ? xv(1, kap - 1) : xv(1, kap);
    z[i] = own + __shfl_sync(kAll, send, (lane + 4) & 31);
  }
  const int pi = diag_pi(lane);
  const bool odd = pi & 1, two = pi & 2;
  const int src1 = (9 * (pi ^ 1)) & 31, src2 = (9 * (pi ^ 2)) & 31;
  float w[6];
#pragma unroll
  for (int j = 0; j < 5; ++j)
    w[j] = (odd ? z[2 * j + 1] : z[2 * j]) + __shfl_sync(kAll, odd ? z[2 * j] : z[2 * j + 1], src1);
  w[5] = 0.f;
#pragma unroll
  for (int m = 0; m < 3; ++m)
    sums[m] = (two ? w[2 * m + 1] : w[2 * m]) + __shfl_sync(kAll, two ? w[2 * m] : w[2 * m + 1], src2);
}

// q,dout:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) -> dk,dv:(B,Nk,H,D), dq accumulator += , dbias
// grid: one CTA per (128 keys, h, b) in a.order, 384 threads, dynamic shared memory as launch() computes.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1) flash_bias_bwd_sm90_kernel(const __grid_constant__ Args a) {
  using Sh = Shape<D>;
  constexpr int RB = Sh::kRowBytes, DQ = Sh::kDq;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  extern __shared__ char smem_raw[];
  char* smem = smem_raw + ((1024 - (sm90::smem_addr(smem_raw) & 1023)) & 1023);
  char* sK = smem;
  char* sV = sK + Sh::kKBytes;
  char* sDs = sV + Sh::kKBytes;
  // the table part: the dT strips, then the window of float2 {T·log2 e, dT}
  constexpr int kOffRel = 2 * Sh::kKBytes + Sh::kDsBytes, kOffWin = kOffRel + kStripBytes;
  char* sDq = smem + kOffRel + a.rel_bytes;  // the dQ staging tile
  char* sStages = sDq + Sh::kDqBytes;
  uint64_t* full = reinterpret_cast<uint64_t*>(sStages + a.n_stages * a.stage_bytes);
  uint64_t* empty = full + kMaxStages;
  uint64_t* kv_full = empty + kMaxStages;
  // offsets inside a stage
  constexpr int kOffDo = Sh::kQBytes, kOffBias = 2 * Sh::kQBytes;
  const int off_stats = kOffBias + (a.has_bias ? Sh::kDsBytes : 0);  // lse2[64], then delta[64]

  int kb, h, b;
  a.order.decode(blockIdx.x, kb, h, b);
  const int n0 = kb * BN;
  const int Nq = a.Nq, Nk = a.Nk, causal_off = Nk - Nq;  // query i sees keys <= i + causal_off
  const int n_qb = (Nq + BM - 1) / BM;
  // causal: query blocks before the first query that sees key n0 contribute nothing (n0 − off <= Nq − 1)
  const int qb_first = a.causal ? max(0, n0 - causal_off) / BM : 0;
  const int hb = a.bias_shared_h ? 0 : h, bb = a.bias_shared_b ? 0 : b;

  if (threadIdx.x == 0) {
    for (int s = 0; s < a.n_stages; ++s) {
      sm90::mbar_init(&full[s], 1);     // the producer's arrive (+ the stage's transaction bytes)
      sm90::mbar_init(&empty[s], 256);  // one arrive per consumer thread (see the release below)
    }
    sm90::mbar_init(kv_full, 1);
    sm90::fence_barrier_init();
  }
  // the table window: bins rel_w0 … rel_w1 of the head's row, the clamps to [0, 2R] of
  // key − query + R at the extreme diagonals n0 − (n_qb·64 − 1) and n0 + 127 − qb_first·64
  const int rel_w0 = min(max(a.rel_clip + n0 - (n_qb * BM - 1), 0), a.rel_last);
  const int rel_w1 = max(min(a.rel_clip + n0 + BN - 1 - qb_first * BM, a.rel_last), 0);
  if (a.relpos != nullptr) {
    const float* trow = a.relpos + int64_t(h) * (a.rel_last + 1);
    float2* win = reinterpret_cast<float2*>(smem + kOffWin);
    for (int k = rel_w0 + int(threadIdx.x); k <= rel_w1; k += kThreads)
      win[k - rel_w0] = make_float2(trow[k] * kLog2e, 0.f);
  }
  __syncthreads();

  if (threadIdx.x < 128) {  // ---- producer ----
    sm90::setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) {
      sm90::tma_prefetch_descriptor(&a.q);
      sm90::tma_prefetch_descriptor(&a.k);
      sm90::tma_prefetch_descriptor(&a.v);
      sm90::tma_prefetch_descriptor(&a.dout);
      if (a.has_bias) sm90::tma_prefetch_descriptor(&a.bias);
      sm90::mbar_arrive_expect_tx(kv_full, 2 * Sh::kKBytes);
#pragma unroll
      for (int p = 0; p < Sh::kPanels; ++p) {
        sm90::tma_load_4d(sK + p * BN * RB, &a.k, kv_full, p * RB / 2, n0, h, b);
        sm90::tma_load_4d(sV + p * BN * RB, &a.v, kv_full, p * RB / 2, n0, h, b);
      }
      const int64_t stat_row = (int64_t(b) * a.H + h) * a.nq_pad;
      int stage = 0;
      uint32_t phase = 0;
      for (int qb = qb_first; qb < n_qb; ++qb) {
        sm90::mbar_wait(&empty[stage], phase ^ 1);
        char* st = sStages + stage * a.stage_bytes;
        uint64_t* bar = &full[stage];
        sm90::mbar_arrive_expect_tx(bar, a.stage_tx);
        const int i0 = qb * BM;
#pragma unroll
        for (int p = 0; p < Sh::kPanels; ++p) {
          sm90::tma_load_4d(st + p * BM * RB, &a.q, bar, p * RB / 2, i0, h, b);
          sm90::tma_load_4d(st + kOffDo + p * BM * RB, &a.dout, bar, p * RB / 2, i0, h, b);
        }
        if (a.has_bias)
          for (int p = 0; p < 2; ++p)
            sm90::tma_load_4d(st + kOffBias + p * BM * 128, &a.bias, bar, n0 + 64 * p, i0, hb, bb);
        sm90::bulk_load(st + off_stats, a.lse2 + stat_row + i0, BM * 4, bar);
        sm90::bulk_load(st + off_stats + BM * 4, a.delta + stat_row + i0, BM * 4, bar);
        if (++stage == a.n_stages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  // ---- consumers ----
  sm90::setmaxnreg_inc<kConsumerRegs>();
  const int ctid = threadIdx.x - 128, cw = ctid / 128;  // consumer warpgroup 0 or 1: keys 64cw …
  const int warp = (ctid / 32) % 4, lane = ctid % 32, g = lane / 4, t = lane % 4;
  const int kr = 64 * cw + 16 * warp + g;  // CTA key row of d[4j], d[4j + 1]; kr + 8 for d[4j + 2], d[4j + 3]
  const bool leader = ctid == 0;           // issues the dB stores and waits for them
  bool key_dead[2];                        // past Nk or padded: P = 0 in the whole row
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int key = n0 + kr + 8 * hf;
    key_dead[hf] = key >= Nk || (a.kpm != nullptr && a.kpm[int64_t(b) * Nk + key]);
  }
  const float scale_log2 = a.scale_log2;

  // the pair of table bin clamp(key − query + R, 0, 2R): a 32-bit offset from smem (a 64-bit
  // pointer would hold two more registers through the loop)
  const int rel_off = kOffWin - 8 * rel_w0;
  auto rel_pair = [&](int d) { return smem + rel_off + 8 * min(max(d, 0), a.rel_last); };
  // key − query + R of the thread's entry (hf, jj, e) = (0, 0, 0) of the query block at i0
  // (recomputed where used, with R read from the parameters: fewer registers through the loop)
  auto rel_d0 = [&](int i0) { return n0 + kr - i0 - 2 * t + a.rel_clip; };

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  sm90::mbar_wait(kv_full, 0);
  int stage = 0;
  uint32_t phase = 0;
  for (int qb = qb_first; qb < n_qb; ++qb) {
    sm90::mbar_wait(&full[stage], phase);
    const char* st = sStages + stage * a.stage_bytes;
    const char* sQ = st;
    const char* sDo = st + kOffDo;
    const float* lse2 = reinterpret_cast<const float*>(st + off_stats);
    const float* delta = lse2 + BM;
    const int i0 = qb * BM;

    // Sᵀ = K_w Q_iᵀ and dPᵀ = V_w dO_iᵀ (64 keys × 64 queries each)
    float s[BM / 2], dp[BM / 2];
    sm90::wgmma_fence();
    sm90::wgmma_ss_kmajor<BM, kBf16, RB, D>(s, sK + 64 * cw * RB, BN * RB, sQ, BM * RB);
    sm90::wgmma_commit();
    sm90::wgmma_ss_kmajor<BM, kBf16, RB, D>(dp, sV + 64 * cw * RB, BN * RB, sDo, BM * RB);
    sm90::wgmma_commit();
    sm90::wgmma_wait<1>();
    sm90::fence_regs(s);

    // Pᵀ; entries (key, query i) with i < key − causal_off are masked where the block crosses the diagonal
    const bool diag = a.causal && n0 + 64 * cw + 63 > i0 + causal_off;
    const char* sBias = st + kOffBias;
    // the table: Sᵀ·scale·log2 e + T·log2 e first (then scaled by s_mul = 1 below). Entry
    // (hf, jj, e) lies on diagonal key − query = d0 − e − 8(jj − hf): (0, k, e) and (1, k + 1, e)
    // share a bin, one shared load per diagonal k = jj − hf ∈ [−1, 7]
    const int d0 = rel_d0(i0);
    float s_mul = scale_log2;
    if (a.relpos != nullptr) {
#pragma unroll
      for (int k = -1; k < BM / 8; ++k)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float v = *reinterpret_cast<const float*>(rel_pair(d0 - e - 8 * k));
          if (k >= 0) s[4 * k + e] = fmaf(s[4 * k + e], scale_log2, v);
          if (k + 1 < BM / 8) s[4 * (k + 1) + 2 + e] = fmaf(s[4 * (k + 1) + 2 + e], scale_log2, v);
        }
      s_mul = 1.f;
    }
#pragma unroll
    for (int j = 0; j < BM / 8; j += 2) {
      // the bias of (keys kr, kr + 8) × (queries 8j + 2t, + 1 and 8j + 8 + 2t, + 1), read transposed
      // from the (query × key) tile
      uint32_t bias_pairs[4] = {0, 0, 0, 0};
      if (a.has_bias)
        sm90::ldmatrix_x4_trans(bias_pairs,
                                sBias + sm90::trans_x4_offset<BM>(lane, 64 * cw + 16 * warp, 8 * j));
#pragma unroll
      for (int jj = j; jj < j + 2; ++jj) {
        const float2 l2 = *reinterpret_cast<const float2*>(lse2 + 8 * jj + 2 * t);
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float2 bv = unpack2<T>(bias_pairs[2 * (jj - j) + hf]);
          const float c0 = fmaf(bv.x, kLog2e, -l2.x), c1 = fmaf(bv.y, kLog2e, -l2.y);
          const float x0 = fmaf(s[4 * jj + 2 * hf], s_mul, c0);
          const float x1 = fmaf(s[4 * jj + 2 * hf + 1], s_mul, c1);
          float p0 = fast_exp2(x0), p1 = fast_exp2(x1);
          if (key_dead[hf]) p0 = p1 = 0.f;
          if (diag) {
            const int key = n0 + kr + 8 * hf, i = i0 + 8 * jj + 2 * t;
            if (key > i + causal_off) p0 = 0.f;
            if (key > i + 1 + causal_off) p1 = 0.f;
          }
          s[4 * jj + 2 * hf] = p0;
          s[4 * jj + 2 * hf + 1] = p1;
        }
      }
    }
    sm90::wgmma_wait<0>();
    sm90::fence_regs(dp);
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) {
      const float2 dl = *reinterpret_cast<const float2*>(delta + 8 * j + 2 * t);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float p0 = s[4 * j + 2 * hf], p1 = s[4 * j + 2 * hf + 1];
        // a masked entry stays exactly 0 whatever dP holds
        dp[4 * j + 2 * hf] = p0 == 0.f ? 0.f : p0 * (dp[4 * j + 2 * hf] - dl.x);
        dp[4 * j + 2 * hf + 1] = p1 == 0.f ? 0.f : p1 * (dp[4 * j + 2 * hf + 1] - dl.y);
      }
    }
    // dT: the warp's dS summed per diagonal into its strip of this block's parity. The pass of the
    // block before reads the other set; this set's pass (after barrier 2 below) comes before every
    // thread's barrier 1 of the next block, so the block after next can store into it again.
    if (a.drelpos != nullptr) {
      float dt_sum[3];
      warp_diagonal_sums(dp, lane, dt_sum);
      const int pi = diag_pi(lane), pos0 = (pi >> 2) + 72 - 8 * (pi & 3);  // position of sums[0]
      // strip 4 cw + warp = ctid / 32 of the set (the form that ptxas fits without spilling at D = 128)
      float* strip = reinterpret_cast<float*>(smem + kOffRel) + kStripLen * (8 * (qb & 1) + (ctid >> 5));
#pragma unroll
      for (int m = 0; m < 3; ++m)
        if (m < 2 || (pi & 3) < 2) strip[pos0 - 32 * m] = dt_sum[m];
    }

    // dV_w += Pᵀ dO_i, dK_w += dSᵀ Q_i: Pᵀ and dSᵀ rounded to T in the A-fragment layout (k-chunk
    // kc = queries 16kc … 16kc + 15), dO_i and Q_i MN-major
    uint32_t pa[BM / 16][4], dsa[BM / 16][4];
#pragma unroll
    for (int kc = 0; kc < BM / 16; ++kc)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pa[kc][e] = fb::pack2<T>(s[8 * kc + 2 * e], s[8 * kc + 2 * e + 1]);
        dsa[kc][e] = fb::pack2<T>(dp[8 * kc + 2 * e], dp[8 * kc + 2 * e + 1]);
      }
    sm90::fence_regs(dv);
    sm90::fence_regs(dk);
    sm90::wgmma_fence();
#pragma unroll
    for (int kc = 0; kc < BM / 16; ++kc)
      sm90::Wgmma<D, kBf16>::rs(dv, pa[kc], sm90::make_desc<RB>(sDo + kc * 16 * RB, BM * RB));
#pragma unroll
    for (int kc = 0; kc < BM / 16; ++kc)
      sm90::Wgmma<D, kBf16>::rs(dk, dsa[kc], sm90::make_desc<RB>(sQ + kc * 16 * RB, BM * RB));
    sm90::wgmma_commit();

    // dS into the shared tiles, once the block before is done with them: its dQ products (each
    // warpgroup waited for its own) and its dB store (the leader waits for the read)
    if (leader) sm90::bulk_wait_read<0>();
    sm90::named_barrier<256>(1);
#pragma unroll
    for (int j = 0; j < BM / 8; j += 2) {
      // the fragments of dsa[j / 2] are the four 8 × 8 matrices (keys + 0 / + 8) × (queries 8j / 8j + 8),
      // stored transposed: dS[query][key]
      sm90::stmatrix_x4_trans(sDs + sm90::trans_x4_offset<BM>(lane, 64 * cw + 16 * warp, 8 * j), dsa[j / 2]);
    }
    sm90::fence_proxy_async_smem();
    sm90::named_barrier<256>(2);
    if (leader && a.store_dbias) {
      for (int p = 0; p < 2; ++p) sm90::tma_store_4d(&a.dbias, sDs + p * BM * 128, n0 + 64 * p, i0, h, b);
      sm90::bulk_commit();
    }
    // dT: the block's 191 diagonals n0 − i0 − 63 … n0 − i0 + 127, one per thread of the first six
    // warps (slot s = key − query − (n0 − i0 − 64); warp wi's strip entry p is slot 16 wi + p):
    // the up to 5 warps' entries summed and added into the window's dT. An interior bin has one
    // owner here (plain read-add-write; the next block's pass comes after its barriers 1 and 2);
    // the clipped bins 0 and 2R, which many diagonals may share, are summed over the warp and
    // added with one shared atomic each (R = 0: bin 0 takes both).
    if (a.drelpos != nullptr && ctid < 192) {
      const int slot = ctid, bin = a.rel_clip + n0 - i0 - 64 + slot;  // slot 0 (δ = −64 of warp 0) is empty
      const float* strips = reinterpret_cast<const float*>(smem + kOffRel) + kStripLen * 8 * (qb & 1);
      float v = 0.f;
#pragma unroll
      for (int dw = 0; dw < 5; ++dw) {  // warp wi's strip entry slot − 16 wi, if in 0 … 79
        const int wi = (slot >> 4) - dw;
        if (wi >= 0 && wi < 8) v += strips[kStripLen * wi + (slot & 15) + 16 * dw];
      }
      const bool lo = slot > 0 && bin <= 0, hi = slot > 0 && !lo && bin >= a.rel_last;
      if (slot > 0 && !lo && !hi) *reinterpret_cast<float*>(smem + rel_off + 8 * bin + 4) += v;
      if (__any_sync(0xffffffffu, lo || hi)) {
        float vl = lo ? v : 0.f, vh = hi ? v : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o /= 2) {
          vl += __shfl_xor_sync(0xffffffffu, vl, o);
          vh += __shfl_xor_sync(0xffffffffu, vh, o);
        }
        if (lane == 0 && vl != 0.f) atomicAdd(reinterpret_cast<float*>(rel_pair(0) + 4), vl);
        if (lane == 0 && vh != 0.f) atomicAdd(reinterpret_cast<float*>(rel_pair(a.rel_last) + 4), vh);
      }
    }

    // dQ_i[:, columns of warpgroup cw] = dS (64 × 128 keys, K-major) · K[:, those columns] (MN-major),
    // DQ columns at a time, through the staging tile into the fp32 accumulator: both warpgroups
    // write their pass's fragments (staging column 32·cw + column − c0 at D ≥ 64, the column itself
    // at D = 32), then the leader adds each panel by one TMA reduce-add (rows past Nq clipped). The
    // staging is free again once the leader's reduce-adds have read it: bulk_wait_read before
    // barrier 1 of the next block, or before the second pass at D = 128.
    auto issue_dq = [&](int pass, float(&dq)[DQ / 2]) {
      const int col_byte = 2 * (cw * (D / 2) + pass * DQ);  // column c0, in bytes of a K row
      const char* sKc = sK + (col_byte / RB) * BN * RB + col_byte % RB;
      sm90::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < BN / 16; ++ks) {
        const int byte = ks * 32;
        const uint64_t da =
            sm90::desc_advance(sm90::make_desc<128>(sDs + (byte / 128) * BM * 128), byte % 128);
        const uint64_t db = sm90::make_desc<RB>(sKc + ks * 16 * RB, BN * RB);
        sm90::Wgmma<DQ, kBf16>::ss_mn(dq, da, db, ks > 0);
      }
    };
    auto add_dq = [&](int pass, float(&dq)[DQ / 2]) {
      sm90::fence_regs(dq);
      if (pass > 0) {  // the first pass's reduce-adds have read the staging
        if (leader) sm90::bulk_wait_read<0>();
        sm90::named_barrier<256>(5);
      }
      const int sc0 = cw * DQ;  // the staging column of this warpgroup's column c0
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
#pragma unroll
        for (int j = 0; j < DQ / 8; ++j)
          *reinterpret_cast<float2*>(
              sDq + sm90::panel_offset<BM>(16 * warp + g + 8 * hf, 4 * (sc0 + 8 * j + 2 * t))) =
              make_float2(dq[4 * j + 2 * hf], dq[4 * j + 2 * hf + 1]);
      sm90::fence_proxy_async_smem();
      sm90::named_barrier<256>(4);
      if (leader) {
        // panel q holds warpgroup q's columns (D = 32: both warpgroups' 32 columns)
        for (int q = 0; q < Sh::kDqPanels; ++q)
          sm90::tma_reduce_add_4d(&a.dq_map, sDq + q * BM * 128, q * (D / 2) + pass * DQ, i0, h, b);
        sm90::bulk_commit();
      }
    };
    // dV, dK and the stage are done with; the stage goes back to the producer
    auto release_stage = [&] {
      sm90::fence_regs(dv);
      sm90::fence_regs(dk);
      // Q_i, dO_i, bias, lse, Δ all read. Every thread releases its own reads of lse and Δ (plain
      // shared loads of bulk-copied data): compute-sanitizer's racecheck does not carry one lane's
      // release across __syncwarp and reported the next round's bulk copy as a race with them.
      sm90::mbar_arrive(&empty[stage]);
      if (++stage == a.n_stages) {
        stage = 0;
        phase ^= 1;
      }
    };
    if constexpr (D <= 64) {
      // one pass, issued before the wait for dV and dK (its own commit group, empty without dQ)
      float dq[DQ / 2];
      if (a.want_dq) issue_dq(0, dq);
      sm90::wgmma_commit();
      sm90::wgmma_wait<1>();
      release_stage();
      sm90::wgmma_wait<0>();
      if (a.want_dq) add_dq(0, dq);
    } else {  // two passes (registers): dQ after dV and dK
      sm90::wgmma_wait<0>();
      release_stage();
      if (a.want_dq) {
#pragma unroll
        for (int pass = 0; pass < D / 2 / DQ; ++pass) {
          float dq[DQ / 2];
          issue_dq(pass, dq);
          sm90::wgmma_commit();
          sm90::wgmma_wait<0>();
          add_dq(pass, dq);
        }
      }
    }
  }

  // causal: the query blocks before qb_first see none of these keys, dS = 0 there
  if (a.causal && a.store_dbias && qb_first > 0) {
    if (leader) sm90::bulk_wait_read<0>();
    sm90::named_barrier<256>(1);
    for (int i = ctid; i < Sh::kDsBytes / 16; i += 256)
      reinterpret_cast<uint4*>(sDs)[i] = make_uint4(0, 0, 0, 0);
    sm90::fence_proxy_async_smem();
    sm90::named_barrier<256>(2);
    if (leader) {
      for (int qb = 0; qb < qb_first; ++qb)
        for (int p = 0; p < 2; ++p)
          sm90::tma_store_4d(&a.dbias, sDs + p * BM * 128, n0 + 64 * p, qb * BM, h, b);
      sm90::bulk_commit();
    }
  }
  if (leader) sm90::bulk_wait<0>();  // every store done before the CTA's shared memory goes

  // dT: the window's sums into drelpos_table
  if (a.drelpos != nullptr) {
    sm90::named_barrier<256>(3);  // both consumer warpgroups' last pass done
    float* drow = a.drelpos + int64_t(h) * (a.rel_last + 1);
    const float2* win = reinterpret_cast<const float2*>(smem + kOffWin);
    for (int k = rel_w0 + ctid; k <= rel_w1; k += 256) {
      const float v = win[k - rel_w0].y;
      if (v != 0.f) atomicAdd(&drow[k], v);
    }
  }

  // dK = scale · Σ dSᵀ Q, dV = Σ Pᵀ dO
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int key = n0 + kr + 8 * hf;
    if (key >= Nk) continue;
    if (a.dk != nullptr) {
      T* row = static_cast<T*>(a.dk) + int64_t(b) * a.dk_stride.batch + int64_t(key) * a.dk_stride.row +
               int64_t(h) * a.dk_stride.head;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        fb::store_pair(row + 8 * j + 2 * t, a.scale * dk[4 * j + 2 * hf], a.scale * dk[4 * j + 2 * hf + 1]);
    }
    if (a.dv != nullptr) {
      T* row = static_cast<T*>(a.dv) + int64_t(b) * a.dv_stride.batch + int64_t(key) * a.dv_stride.row +
               int64_t(h) * a.dv_stride.head;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        fb::store_pair(row + 8 * j + 2 * t, dv[4 * j + 2 * hf], dv[4 * j + 2 * hf + 1]);
    }
  }
}

// The shared-memory layout's sizes: a stage's transaction bytes and its 1024-aligned size, the
// fixed part (alignment slack, K, V, the dS tile, the dQ staging, the table window, the mbarriers)
// and as many stages (up to kMaxStages) as fit beside it in `smem_optin` bytes.
struct SmemPlan {
  int stage_tx = 0, stage_bytes = 0, rel_bytes = 0, fixed = 0, n_stages = 0;
};
template <int D>
SmemPlan smem_plan(bool has_bias, bool relpos, int rel_bins, int smem_optin) {
  using Sh = Shape<D>;
  SmemPlan m;
  m.stage_tx = 2 * Sh::kQBytes + (has_bias ? Sh::kDsBytes : 0) + 2 * BM * 4;
  m.stage_bytes = (m.stage_tx + 1023) / 1024 * 1024;  // every stage 1024-byte aligned (swizzled tiles)
  // the dT strips, then a float2 per bin
  m.rel_bytes = relpos ? (rel_bins * 8 + kStripBytes + 1023) / 1024 * 1024 : 0;
  m.fixed = 1024 /* alignment */ + 2 * Sh::kKBytes + Sh::kDsBytes + Sh::kDqBytes + m.rel_bytes +
            (2 * kMaxStages + 1) * 8;
  m.n_stages = std::min(kMaxStages, (smem_optin - m.fixed) / m.stage_bytes);
  return m;
}

template <typename T, int D>
void launch(const FlashBiasBwdParams& p, const FlashBiasBwdSm90Workspace& ws, cudaStream_t stream) {
  using Sh = Shape<D>;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  Args a{};
  a.q = fb90::bnhd_map(p.q, p.q_stride, p.B, p.Nq, p.H, D, kBf16, BM);
  a.dout = fb90::bnhd_map(p.dout, p.dout_stride, p.B, p.Nq, p.H, D, kBf16, BM);
  a.k = fb90::bnhd_map(p.k, p.k_stride, p.B, p.Nk, p.H, D, kBf16, BN);
  a.v = fb90::bnhd_map(p.v, p.v_stride, p.B, p.Nk, p.H, D, kBf16, BN);
  a.has_bias = p.bias != nullptr;
  if (a.has_bias) {
    a.bias_shared_b = p.bias_batch_stride == 0;
    a.bias_shared_h = p.bias_head_stride == 0;
    a.bias = fb90::pair_map(p.bias, 2, kBf16, p.B, p.H, p.Nq, p.Nk, p.bias_batch_stride, p.bias_head_stride,
                            p.bias_row_stride, BM);
  }
  a.store_dbias = p.dbias != nullptr;
  if (p.dbias != nullptr && ws.dbias_stage != nullptr) {  // broadcast bias: the stage (B, H, Nq, ld)
    const int64_t ld = ws.dbias_stage_ld;
    a.dbias =
        fb90::pair_map(ws.dbias_stage, 2, kBf16, p.B, p.H, p.Nq, p.Nk, p.H * p.Nq * ld, p.Nq * ld, ld, BM);
  } else if (p.dbias != nullptr) {
    a.dbias = fb90::pair_map(p.dbias, 2, kBf16, p.B, p.H, p.Nq, p.Nk, p.dbias_batch_stride,
                             p.dbias_head_stride, p.dbias_row_stride, BM);
  }
  a.lse2 = ws.lse2;
  a.delta = ws.delta;
  a.nq_pad = ws.nq_pad;
  a.want_dq = p.dq != nullptr;
  if (a.want_dq)  // (B,H,Nq,D) fp32, row-major: a "pair" tensor of Nq × D per (b, h)
    a.dq_map = fb90::pair_map(ws.dq_accum, 4, false, p.B, p.H, p.Nq, D, int64_t(p.H) * p.Nq * D,
                              int64_t(p.Nq) * D, D, BM);
  a.dk = p.dk;
  a.dk_stride = p.dk_stride;
  a.dv = p.dv;
  a.dv_stride = p.dv_stride;
  a.kpm = p.key_padding_mask;
  a.H = p.H;
  a.Nq = p.Nq;
  a.Nk = p.Nk;
  a.causal = p.causal;
  a.scale = float(p.scale);
  a.scale_log2 = float(p.scale * double(kLog2e));
  a.relpos = static_cast<const float*>(p.relpos_table);
  a.drelpos = static_cast<float*>(p.drelpos_table);
  a.rel_clip = p.relpos_clip;
  a.rel_last = 2 * p.relpos_clip;
  const int rel_bins = relpos_window_bins(p.relpos_clip, p.Nq);
  PF_CHECK(p.relpos_table == nullptr || rel_bins <= kSm90RelposMaxBins,
           "flash_bias_bwd_sm90: the relative-position table window of " << rel_bins << " bins exceeds "
                                                                         << kSm90RelposMaxBins);

  const int smem_optin = smem_optin_bytes();
  const SmemPlan m = smem_plan<D>(a.has_bias, p.relpos_table != nullptr, rel_bins, smem_optin);
  a.stage_tx = m.stage_tx;
  a.stage_bytes = m.stage_bytes;
  a.rel_bytes = m.rel_bytes;
  a.n_stages = m.n_stages;
  PF_CHECK(a.n_stages >= 2,
           "flash_bias_bwd_sm90: " << smem_optin << " bytes of shared memory per block hold fewer than two "
                                   << a.stage_bytes << "-byte stages beside " << m.fixed << " fixed bytes");
  const int smem = m.fixed + a.n_stages * a.stage_bytes;
  auto kernel = flash_bias_bwd_sm90_kernel<T, D>;
  static const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin);
  PF_CUDA_CHECK(attr);
  a.order = fb90::cta_order((p.Nk + BN - 1) / BN, p.H, p.B, a.has_bias, a.bias_shared_b, a.bias_shared_h);
  kernel<<<a.order.ctas(), kThreads, smem, stream>>>(a);
  PF_CUDA_CHECK_LAUNCH("flash_bias_bwd_sm90_kernel");
}

}  // namespace fb90_bwd

int flash_bias_bwd_sm90_stages(const FlashBiasBwdParams& p) {
  const bool has_bias = p.bias != nullptr;
  const bool relpos = p.relpos_table != nullptr;
  const int bins = relpos_window_bins(p.relpos_clip, p.Nq), optin = smem_optin_bytes();
  switch (p.D) {
    case 32: return fb90_bwd::smem_plan<32>(has_bias, relpos, bins, optin).n_stages;
    case 64: return fb90_bwd::smem_plan<64>(has_bias, relpos, bins, optin).n_stages;
    case 128: return fb90_bwd::smem_plan<128>(has_bias, relpos, bins, optin).n_stages;
    default: break;
  }
  return 0;
}

void flash_bias_bwd_sm90(const FlashBiasBwdParams& p, const FlashBiasBwdSm90Workspace& ws,
                         cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarType::BF16;
  switch (p.D) {
    case 32:
      bf16 ? fb90_bwd::launch<__nv_bfloat16, 32>(p, ws, stream) : fb90_bwd::launch<__half, 32>(p, ws, stream);
      return;
    case 64:
      bf16 ? fb90_bwd::launch<__nv_bfloat16, 64>(p, ws, stream) : fb90_bwd::launch<__half, 64>(p, ws, stream);
      return;
    case 128:
      bf16 ? fb90_bwd::launch<__nv_bfloat16, 128>(p, ws, stream)
           : fb90_bwd::launch<__half, 128>(p, ws, stream);
      return;
    default: break;
  }
  PF_FAIL("flash_bias_bwd_sm90: head dim " << p.D << " is not supported; supported: 32, 64, 128");
}

}  // namespace pf::kernels::cuda
