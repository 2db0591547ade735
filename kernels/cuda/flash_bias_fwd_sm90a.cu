// The Hopper flash-bias forward (flash_bias_sm90.h): compiled for sm_90a only.
//
// A persistent grid of min(tiles, SMs) CTAs walks the work tiles (128 query rows, h, b) in
// a.order's order, round-robin: CTA c takes tiles c, c + gridDim.x, … (so the tiles in flight
// together are consecutive in CtaOrder, as a wave of one CTA per tile would be, and the CTAs that
// share a broadcast bias tile still meet in L2). Three warpgroups:
//   warpgroup 0, the producer: one thread issues every TMA copy — per tile the Q tile, then per key
//     block j the K_j and V_j tiles and the 128 × BN bias tile into the next stage of a shared-
//     memory ring. A stage is refilled only after the consumers have released it (mbarrier
//     `empty`), the Q tile only after the consumers' last QKᵀ of the previous tile (`q_empty`), so
//     the next tile's Q and first stages load during this tile's last blocks and epilogue; the
//     copies complete as transaction bytes on the `full` / `q_full` mbarriers. The producer keeps
//     24 registers (setmaxnreg) and hands the rest to the consumers.
//   warpgroups 1 and 2, the consumers: 64 query rows each. Per key block:
//     S = Q K_jᵀ          wgmma, A and B from shared memory (K-major), fp32 accumulators
//     x = S·scale·log2 e + bias·log2 e + T[h, clip(j − i) + R]·log2 e, masked keys −inf
//                          (bias read from the swizzled tile, the table from shared memory)
//     m' = max(m, rowmax x)   P = 2^(x − m')   l' = 2^(m − m')·l + rowsum P   O' = 2^(m − m')·O
//     O' += P V_j          wgmma, P from registers (the accumulator layout is the A fragment),
//                          V from shared memory (MN-major)
//     and release the stage. At the end of the tile out = O / l and lse = (m + log2 l)·ln 2.
//   The products are issued in turns (the schedule of FlashAttention-3): a consumer's step j issues
//   S_j = Q K_jᵀ and O += P_{j−1} V_{j−1} together (the first step S_0 alone, a last step the final
//   PV alone), waits for S_j only, computes the softmax of block j while its PV runs, then waits for
//   the PV, releases stage j − 1 and rescales O. The two warpgroups take turns issuing a step's
//   products (named barriers kTurnBarrier + w: warpgroup w waits on its own, then arrives on the
//   other's), so that one's softmax runs under the other's products instead of both competing for
//   the tensor cores at once. Both take n_blocks + 1 turns per tile (the same for both: n_blocks is
//   the tile's), warpgroup 1 hands warpgroup 0 the first turn at the start and warpgroup 0 takes
//   the last handover at the end, so every barrier phase completes.
//
// Shared memory: Q (128 × D), [the table window,] then n_stages × {K (BN × D), V (BN × D),
// bias (128 × BN)}, then the mbarriers; every tile 1024-byte aligned and stored as TMA writes it (swizzled rows of
// min(2D, 128) bytes for Q/K/V, 128 bytes for the bias; D = 128 tiles as two 64-column panels).
// n_stages (2 to 4) is as many as fit in the opt-in shared memory for the bias's element size.
// With a relative-position table, Q is followed by the window (rel_bytes, a multiple of 1024) of
// the table row of the tile's head that the tile can touch: the table bins
// clip(j − i, −R, R) + R for the diagonals j − i from −(m0 + 127) to n_blocks·BN − 1 − m0 (the
// computed columns past Nk included, so that every read lies inside the window), at most
// relpos_window_bins(R, Nk) ≤ kSm90RelposMaxBins floats, pre-multiplied by log2 e. The window
// changes with the tile (h, m0), and only the consumers read it, so they reload it per tile:
//   named barrier kRelBarrier over the 256 consumer threads (both warpgroups are past the previous
//   tile's last read of the window) → the 256 load the new window → kRelBarrier again (it is
//   complete) → the tile's key blocks read it.
// Without a table there is no window and no barrier. The producer never joins these barriers, and
// after the warpgroups part nothing waits for the whole CTA.
//
// Measurement switches, read once per process, so that one binary can time both schedules:
// PF_FWD_SM90_TILES=1 launches the same kernel with one CTA per tile (grid = all tiles, each CTA
// walks one), the pre-persistent schedule; PF_FWD_SM90_PINGPONG=0 lets the consumer warpgroups issue
// their products without taking turns (the steps' order inside a warpgroup unchanged).
//
// The kernel is compiled twice per (T, D): for an fp32 bias and for the 16-bit ones (and none). In
// one kernel the fp32 variant's loop-invariant bias offsets beside the 16-bit variants' made ptxas
// spill the consumers' registers (120–208 bytes at D = 32 / 64); apart, none spills.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
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

namespace fb90 {

using fb::fast_exp2;
using fb::kLn2;
using fb::kLog2e;

constexpr int kMaxStages = 4;
constexpr int kThreads = 384;    // producer warpgroup + two consumer warpgroups
constexpr int kRelBarrier = 1;   // named barrier of the 256 consumer threads around the window's reload
constexpr int kTurnBarrier = 2;  // 2 + w: consumer warpgroup w's turn to issue its products (file header)
constexpr int kProducerRegs = 24, kConsumerRegs = 240;
static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= kThreads * sm90::launch_regs<kThreads>(),
              "the warpgroups' registers after setmaxnreg must fit the CTA's at launch");

enum BiasKind : int { kNone = 0, kF16 = 1, kBF16 = 2, kF32 = 3 };

// Tile shape of head dim D: 128 query rows; 128 keys per block (64 at D = 128, where two 64 × 128
// fp32 accumulators, S and O, fill the consumer's registers).
template <int D>
struct Shape {
  static constexpr int BM = 128, BN = D == 128 ? 64 : 128;
  static constexpr int kRowBytes = panel_bytes(D);  // Q/K/V swizzle width (one panel)
  static constexpr int kPanels = 2 * D / kRowBytes;
  static constexpr int kQBytes = BM * D * 2, kKBytes = BN * D * 2;
  static_assert(D == 32 || D == 64 || D == 128, "head dim 32, 64 or 128");
};

struct Args {
  CUtensorMap q, k, v, bias;  // bias unused when bias_kind == kNone
  void* out;
  BNHDStrides out_stride;
  float* lse;
  const uint8_t* kpm;    // (B, Nk) or null
  fb90::CtaOrder order;  // over (query tile, h, b)
  int n_tiles;           // order.ctas(): the tiles the grid walks
  int H, Nq, Nk;
  int bias_kind, bias_elt;  // BiasKind and its element size (0 without a bias)
  int bias_shared_b, bias_shared_h;
  int causal;
  int n_stages, stage_bytes;
  float scale_log2;     // scale · log2 e
  const float* relpos;  // (H, 2R+1) or null
  int rel_last;         // 2R: the table row's last bin
  int rel_bytes;        // shared memory of the table window after Q (0 without a table)
  int pingpong;         // the consumer warpgroups take turns issuing their products
};

template <int kBias>
__device__ __forceinline__ float2 load_bias2(const char* p) {
  if constexpr (kBias == kF16)
    return __half22float2(*reinterpret_cast<const __half2*>(p));
  else if constexpr (kBias == kBF16)
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  else
    return *reinterpret_cast<const float2*>(p);
}

// One tile of a CTA's walk: its query rows m0 … m0 + 127 of head h, batch b, and the key blocks
// it computes (under causal masking, those up to the diagonal of its last row).
struct Tile {
  int m0, h, b, n_blocks;
};
template <int BM, int BN>
__device__ __forceinline__ Tile tile_at(const Args& a, int lin) {
  Tile x;
  int tile;
  a.order.decode(lin, tile, x.h, x.b);
  x.m0 = tile * BM;
  x.n_blocks = (a.Nk + BN - 1) / BN;
  if (a.causal) {
    const int last_key = min(x.m0 + BM, a.Nq) - 1 + a.Nk - a.Nq;
    x.n_blocks = last_key < 0 ? 0 : min(x.n_blocks, last_key / BN + 1);
  }
  return x;
}

// The parity of tile lin's place in this CTA's walk: the phase of q_full / q_empty that it uses.
__device__ __forceinline__ uint32_t walk_parity(int lin) {
  return uint32_t(lin - int(blockIdx.x)) / gridDim.x & 1;
}

// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) mask:(B,Nk) -> out:(B,Nq,H,D) lse:(B,H,Nq)
// grid: min(a.n_tiles, SMs) CTAs (a.n_tiles with PF_FWD_SM90_TILES=1), each walking the tiles
// blockIdx.x + k·gridDim.x of a.order; 384 threads, dynamic shared memory as launch() sets.
template <typename T, int D, bool kF32Bias>
__global__ void __launch_bounds__(kThreads, 1) flash_bias_fwd_sm90_kernel(const __grid_constant__ Args a) {
  using Sh = Shape<D>;
  constexpr int BM = Sh::BM, BN = Sh::BN, RB = Sh::kRowBytes;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  extern __shared__ char smem_raw[];
  char* smem = smem_raw + ((1024 - (sm90::smem_addr(smem_raw) & 1023)) & 1023);
  char* sQ = smem;
  float* sRel = reinterpret_cast<float*>(smem + Sh::kQBytes);  // the table window (with a table)
  char* sStages = smem + Sh::kQBytes + a.rel_bytes;
  uint64_t* full = reinterpret_cast<uint64_t*>(sStages + a.n_stages * a.stage_bytes);
  uint64_t* empty = full + kMaxStages;
  uint64_t* q_full = empty + kMaxStages;
  uint64_t* q_empty = q_full + 1;
  const int n_tiles = a.n_tiles;

  if (threadIdx.x == 0) {
    for (int s = 0; s < a.n_stages; ++s) {
      sm90::mbar_init(&full[s], 1);   // the producer's arrive (+ the stage's transaction bytes)
      sm90::mbar_init(&empty[s], 8);  // one arrive per consumer warp
    }
    sm90::mbar_init(q_full, 1);
    sm90::mbar_init(q_empty, 8);
    sm90::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {  // ---- producer ----
    sm90::setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) {
      sm90::tma_prefetch_descriptor(&a.q);
      sm90::tma_prefetch_descriptor(&a.k);
      sm90::tma_prefetch_descriptor(&a.v);
      if (a.bias_kind != kNone) sm90::tma_prefetch_descriptor(&a.bias);
      const int bias_panels = BN * a.bias_elt / 128, bias_cols = a.bias_elt ? 128 / a.bias_elt : 0;
      int stage = 0;
      uint32_t phase = 0;
      for (int lin = blockIdx.x; lin < n_tiles; lin += gridDim.x) {
        const Tile x = tile_at<BM, BN>(a, lin);
        sm90::mbar_wait(q_empty, walk_parity(lin) ^ 1);  // the previous tile's last QKᵀ is done
        sm90::mbar_arrive_expect_tx(q_full, Sh::kQBytes);
#pragma unroll
        for (int p = 0; p < Sh::kPanels; ++p)
          sm90::tma_load_4d(sQ + p * BM * RB, &a.q, q_full, p * RB / 2, x.m0, x.h, x.b);
        const int hb = a.bias_shared_h ? 0 : x.h, bb = a.bias_shared_b ? 0 : x.b;
        for (int nb = 0; nb < x.n_blocks; ++nb) {
          sm90::mbar_wait(&empty[stage], phase ^ 1);
          char* st = sStages + stage * a.stage_bytes;
          uint64_t* bar = &full[stage];
          sm90::mbar_arrive_expect_tx(bar, a.stage_bytes);
          const int n0 = nb * BN;
#pragma unroll
          for (int p = 0; p < Sh::kPanels; ++p) {
            sm90::tma_load_4d(st + p * BN * RB, &a.k, bar, p * RB / 2, n0, x.h, x.b);
            sm90::tma_load_4d(st + Sh::kKBytes + p * BN * RB, &a.v, bar, p * RB / 2, n0, x.h, x.b);
          }
          for (int p = 0; p < bias_panels; ++p)
            sm90::tma_load_4d(st + 2 * Sh::kKBytes + p * BM * 128, &a.bias, bar, n0 + p * bias_cols, x.m0, hb,
                              bb);
          if (++stage == a.n_stages) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
    }
    return;
  }

  // ---- consumers ----
  sm90::setmaxnreg_inc<kConsumerRegs>();
  const int ctid = threadIdx.x - 128, cw = ctid / 128;  // consumer warpgroup 0 or 1
  const int warp = (ctid / 32) % 4, lane = ctid % 32, g = lane / 4, t = lane % 4;
  const int r0 = 64 * cw + 16 * warp + g;  // tile row of d[4j], d[4j + 1]; r0 + 8 for d[4j + 2], d[4j + 3]
  const int Nq = a.Nq, Nk = a.Nk, causal_off = Nk - Nq;
  const float scale_log2 = a.scale_log2;
  const int R = a.rel_last / 2;
  auto release_q = [&] {  // this warp's last read of the tile's Q is done
    __syncwarp();
    if (lane == 0) sm90::mbar_arrive(q_empty);
  };

  // warpgroup 0 takes the first turn: warpgroup 1 hands it over before its own first turn
  if (a.pingpong && cw == 1) sm90::named_barrier_arrive<256>(kTurnBarrier);
  int stage = 0;
  uint32_t phase = 0;
  for (int lin = blockIdx.x; lin < n_tiles; lin += gridDim.x) {
    const Tile x = tile_at<BM, BN>(a, lin);
    const int m0 = x.m0, n_blocks = x.n_blocks;
    const uint8_t* kpm = a.kpm ? a.kpm + int64_t(x.b) * Nk : nullptr;

    // the table window, times log2 e: bins rel_w0 … rel_w1 of the head's row, the clamps to [0, 2R]
    // of j − i + R at the tile's extreme diagonals j − i = −(m0 + 127) and n_blocks·BN − 1 − m0
    const int rel_w0 = min(max(R - (m0 + BM - 1), 0), a.rel_last);
    if (a.relpos != nullptr) {
      sm90::named_barrier<256>(kRelBarrier);  // both warpgroups are past the previous tile's window
      const int rel_w1 = max(min(R + n_blocks * BN - 1 - m0, a.rel_last), 0);
      const float* trow = a.relpos + int64_t(x.h) * (a.rel_last + 1);
      for (int k = rel_w0 + ctid; k <= rel_w1; k += 256) sRel[k - rel_w0] = trow[k] * kLog2e;
      sm90::named_barrier<256>(kRelBarrier);  // the window is complete
    }
    // entry (i, j) of the tile reads bin clamp(j − i + R, 0, 2R) of the window, a 32-bit offset from
    // smem (a 64-bit pointer would hold two more registers through the loop)
    const int rel_off = Sh::kQBytes - 4 * rel_w0;

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m_row[2] = {-INFINITY, -INFINITY};  // running row max (log2 units) of rows r0, r0 + 8
    float l_row[2] = {0.f, 0.f};              // this thread's part of the running row sums

    // Block nb's scores s → its probabilities, in place: the logits, the running max and sums,
    // and the factor alpha_row by which O (once the block before's PV has landed) is rescaled.
    float s[BN / 2];
    float alpha_row[2];
    auto softmax_block = [&](int nb, const char* st, auto kind) {
      const int n0 = nb * BN;
      // logits in log2 units: x = S·scale·log2 e + bias·log2 e; keys outside the row's view −inf
      const bool masked =
          kpm != nullptr || n0 + BN > Nk || (a.causal && n0 + BN - 1 > m0 + 64 * cw + causal_off);
      const char* sb = st + 2 * Sh::kKBytes;
      auto logits = [&](auto kind, auto mask) {
        constexpr int kBias = decltype(kind)::value;
        constexpr int kElt = kBias == kF32 ? 4 : 2;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int col = 8 * j + 2 * t;
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int r = r0 + 8 * hf;
            float x0 = s[4 * j + 2 * hf] * scale_log2, x1 = s[4 * j + 2 * hf + 1] * scale_log2;
            if constexpr (kBias != kNone) {
              const int byte = col * kElt;
              const float2 bv =
                  load_bias2<kBias>(sb + (byte / 128) * BM * 128 + sm90::swizzled_offset<128>(r, byte % 128));
              x0 = fmaf(bv.x, kLog2e, x0);
              x1 = fmaf(bv.y, kLog2e, x1);
            }
            if constexpr (decltype(mask)::value) {
              const int i = m0 + r, jg = n0 + col;
              const int last = a.causal ? min(Nk - 1, i + causal_off) : Nk - 1;
              if (jg > last || (kpm && kpm[jg])) x0 = -INFINITY;
              if (jg + 1 > last || (kpm && kpm[jg + 1])) x1 = -INFINITY;
            }
            s[4 * j + 2 * hf] = x0;
            s[4 * j + 2 * hf + 1] = x1;
          }
        }
      };
      auto with_mask = [&](auto kind) {
        if (masked)
          logits(kind, std::true_type{});
        else
          logits(kind, std::false_type{});
      };
      with_mask(kind);
      if (a.relpos != nullptr) {  // + T[h, clip(j − i) + R]·log2 e (a masked −inf stays −inf)
        // entry (hf, j, e) lies on diagonal j − i = base + 8(j − hf) + e: (0, k, e) and (1, k + 1, e)
        // read the same bin
        const int base = n0 + 2 * t - (m0 + r0) + R;
#pragma unroll
        for (int k = -1; k < BN / 8; ++k)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float v = *reinterpret_cast<const float*>(smem + rel_off +
                                                            4 * min(max(base + 8 * k + e, 0), a.rel_last));
            if (k >= 0) s[4 * k + e] += v;
            if (k + 1 < BN / 8) s[4 * (k + 1) + 2 + e] += v;
          }
      }

      // online softmax over this key block
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = m_row[hf];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
        mx = fb::quad_max(mx);
        const float m_use = mx == -INFINITY ? 0.f : mx;  // all −inf so far: P = 0, not NaN
        const float alpha = fast_exp2(m_row[hf] - m_use);
        m_row[hf] = mx;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          s[4 * j + 2 * hf] = fast_exp2(s[4 * j + 2 * hf] - m_use);
          s[4 * j + 2 * hf + 1] = fast_exp2(s[4 * j + 2 * hf + 1] - m_use);
          sum += s[4 * j + 2 * hf] + s[4 * j + 2 * hf + 1];
        }
        l_row[hf] = l_row[hf] * alpha + sum;
        alpha_row[hf] = alpha;
      }
    };
    // P of the block before, rounded to T in the A-fragment layout (k-chunk kc = key columns
    // 16kc … 16kc + 15), and the stage that holds its V
    uint32_t pa[BN / 16][4];
    int pv_stage = 0;
    auto issue_s = [&](const char* st) {
      sm90::wgmma_ss_kmajor<BN, kBf16, RB, D>(s, sQ + 64 * cw * RB, BM * RB, st, BN * RB);
      sm90::wgmma_commit();
    };
    auto issue_pv = [&] {
      const char* sv = sStages + pv_stage * a.stage_bytes + Sh::kKBytes;
#pragma unroll
      for (int kc = 0; kc < BN / 16; ++kc)
        sm90::Wgmma<D, kBf16>::rs(o, pa[kc], sm90::make_desc<RB>(sv + kc * 16 * RB, BN * RB));
      sm90::wgmma_commit();
    };
    auto release_pv_stage = [&] {  // this warp's reads of the stage (K, V, bias) are done
      __syncwarp();
      if (lane == 0) sm90::mbar_arrive(&empty[pv_stage]);
    };
    // O rescaled by the block's alpha (after the PV before it landed), its P packed for the next PV
    auto finish_block = [&] {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          o[4 * j + 2 * hf] *= alpha_row[hf];
          o[4 * j + 2 * hf + 1] *= alpha_row[hf];
        }
#pragma unroll
      for (int kc = 0; kc < BN / 16; ++kc)
#pragma unroll
        for (int e = 0; e < 4; ++e) pa[kc][e] = fb::pack2<T>(s[8 * kc + 2 * e], s[8 * kc + 2 * e + 1]);
      pv_stage = stage;
      if (++stage == a.n_stages) {
        stage = 0;
        phase ^= 1;
      }
    };
    auto turn_begin = [&] {  // this warpgroup's turn to issue products
      if (a.pingpong) sm90::named_barrier<256>(kTurnBarrier + cw);
      sm90::fence_regs(o);
      sm90::wgmma_fence();
    };
    auto turn_end = [&] {  // the other warpgroup's turn
      if (a.pingpong) sm90::named_barrier_arrive<256>(kTurnBarrier + (cw ^ 1));
    };

    sm90::mbar_wait(q_full, walk_parity(lin));
    if (n_blocks == 0) release_q();
    // the key blocks, compiled once per bias element type (an fp32 bias in a kernel of its own:
    // beside the 16-bit variants, ptxas spills the consumers' registers)
    auto key_blocks = [&](auto kind) {
      // block 0: S alone
      sm90::mbar_wait(&full[stage], phase);
      const char* st = sStages + stage * a.stage_bytes;
      turn_begin();
      issue_s(st);
      turn_end();
      sm90::wgmma_wait<0>();
      sm90::fence_regs(s);
      if (n_blocks == 1) release_q();  // the producer may load the next tile's Q
      softmax_block(0, st, kind);
      finish_block();
      // block nb: S = Q K_nbᵀ and O += P_{nb−1} V_{nb−1} in one turn, the softmax of nb under the PV
      for (int nb = 1; nb < n_blocks; ++nb) {
        sm90::mbar_wait(&full[stage], phase);
        const char* st = sStages + stage * a.stage_bytes;
        turn_begin();
        issue_s(st);
        issue_pv();
        turn_end();
        sm90::wgmma_wait<1>();  // S has landed, the PV may still run
        sm90::fence_regs(s);
        if (nb == n_blocks - 1) release_q();
        softmax_block(nb, st, kind);
        sm90::wgmma_wait<0>();
        sm90::fence_regs(o);
        release_pv_stage();
        finish_block();
      }
      // the last block's PV
      turn_begin();
      issue_pv();
      turn_end();
      sm90::wgmma_wait<0>();
      sm90::fence_regs(o);
      release_pv_stage();
    };
    if (n_blocks > 0) {
      if constexpr (kF32Bias) {
        key_blocks(std::integral_constant<int, kF32>{});
      } else {
        switch (a.bias_kind) {
          case kF16: key_blocks(std::integral_constant<int, kF16>{}); break;
          case kBF16: key_blocks(std::integral_constant<int, kBF16>{}); break;
          default: key_blocks(std::integral_constant<int, kNone>{}); break;
        }
      }
    }

    // epilogue: out = O / l, lse = (m + log2 l)·ln 2 (−inf for a row with no attended key; NaN stays NaN)
    const Tile y =
        tile_at<BM, BN>(a, lin);  // decoded again: h and b need no registers through the key blocks
    const int h = y.h, b = y.b;
    T* out = static_cast<T*>(a.out) + int64_t(b) * a.out_stride.batch + int64_t(h) * a.out_stride.head;
    float* lse = a.lse + (int64_t(b) * a.H + h) * Nq;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float l = fb::quad_sum(l_row[hf]);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int i = m0 + r0 + 8 * hf;
      if (i < Nq) {
        T* orow = out + int64_t(i) * a.out_stride.row;
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
          fb::store_pair(orow + 8 * j + 2 * t, o[4 * j + 2 * hf] * inv, o[4 * j + 2 * hf + 1] * inv);
        if (t == 0) lse[i] = l == 0.f ? -INFINITY : (m_row[hf] + log2f(l)) * kLn2;
      }
    }
  }
  // warpgroup 1's last handover, so that no barrier is left half-arrived when the CTA ends
  if (a.pingpong && cw == 0) sm90::named_barrier<256>(kTurnBarrier);
}

// The measurement switches (file header), read once per process: an unset variable is its default.
static bool env_switch(const char* name, bool fallback) {
  const char* e = std::getenv(name);
  const std::string v = e ? e : "";
  PF_CHECK(v.empty() || v == "0" || v == "1", name << ": expected 0 or 1, found '" << v << "'");
  return v.empty() ? fallback : v == "1";
}
// PF_FWD_SM90_TILES=1: one CTA per tile instead of the persistent grid.
static bool one_tile_per_cta() {
  static const bool on = env_switch("PF_FWD_SM90_TILES", false);
  return on;
}
// PF_FWD_SM90_PINGPONG=0: the consumer warpgroups issue their products without taking turns.
static bool take_turns() {
  static const bool on = env_switch("PF_FWD_SM90_PINGPONG", true);
  return on;
}

template <typename T, int D>
void launch(const FlashBiasParams& p, cudaStream_t stream) {
  using Sh = Shape<D>;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  Args a{};
  a.q = bnhd_map(p.q, p.q_stride, p.B, p.Nq, p.H, D, kBf16, Sh::BM);
  a.k = bnhd_map(p.k, p.k_stride, p.B, p.Nk, p.H, D, kBf16, Sh::BN);
  a.v = bnhd_map(p.v, p.v_stride, p.B, p.Nk, p.H, D, kBf16, Sh::BN);
  a.bias_kind = kNone;
  if (p.bias != nullptr) {
    const int e = scalar_type_size(p.bias_dtype);
    a.bias_kind = p.bias_dtype == ScalarType::F16 ? kF16 : p.bias_dtype == ScalarType::BF16 ? kBF16 : kF32;
    a.bias_elt = e;
    a.bias_shared_b = p.bias_batch_stride == 0;
    a.bias_shared_h = p.bias_head_stride == 0;
    a.bias = pair_map(p.bias, e, p.bias_dtype == ScalarType::BF16, p.B, p.H, p.Nq, p.Nk, p.bias_batch_stride,
                      p.bias_head_stride, p.bias_row_stride, Sh::BM);
  }
  a.out = p.out;
  a.out_stride = p.out_stride;
  a.lse = static_cast<float*>(p.lse);
  a.kpm = p.key_padding_mask;
  a.H = p.H;
  a.Nq = p.Nq;
  a.Nk = p.Nk;
  a.causal = p.causal;
  a.scale_log2 = float(p.scale * double(kLog2e));
  a.relpos = static_cast<const float*>(p.relpos_table);
  a.rel_last = 2 * p.relpos_clip;
  a.pingpong = take_turns();
  const int rel_bins = relpos_window_bins(p.relpos_clip, p.Nk);
  PF_CHECK(p.relpos_table == nullptr || rel_bins <= kSm90RelposMaxBins,
           "flash_bias_fwd_sm90: the relative-position table window of " << rel_bins << " bins exceeds "
                                                                         << kSm90RelposMaxBins);

  const int smem_optin = smem_optin_bytes();
  a.stage_bytes = 2 * Sh::kKBytes + Sh::BM * Sh::BN * a.bias_elt;
  a.rel_bytes = p.relpos_table != nullptr ? (rel_bins * 4 + 1023) / 1024 * 1024 : 0;  // stages stay aligned
  const int fixed = 1024 /* alignment */ + Sh::kQBytes + a.rel_bytes + (2 * kMaxStages + 2) * 8;
  a.n_stages = std::min(kMaxStages, (smem_optin - fixed) / a.stage_bytes);
  PF_CHECK(a.n_stages >= 2,
           "flash_bias_fwd_sm90: " << smem_optin << " bytes of shared memory per block hold fewer than two "
                                   << a.stage_bytes << "-byte stages");
  const int smem = fixed + a.n_stages * a.stage_bytes;
  auto kernel =
      a.bias_kind == kF32 ? flash_bias_fwd_sm90_kernel<T, D, true> : flash_bias_fwd_sm90_kernel<T, D, false>;
  static const cudaError_t attr[2] = {
      cudaFuncSetAttribute(flash_bias_fwd_sm90_kernel<T, D, false>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin),
      cudaFuncSetAttribute(flash_bias_fwd_sm90_kernel<T, D, true>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin)};
  PF_CUDA_CHECK(attr[0]);
  PF_CUDA_CHECK(attr[1]);
  const int q_tiles = (p.Nq + Sh::BM - 1) / Sh::BM, n_sm = sm_count();
  const int64_t n_tiles = int64_t(q_tiles) * p.H * p.B;
  PF_CHECK(n_tiles + n_sm <= INT32_MAX,
           "flash_bias_fwd_sm90: " << n_tiles << " query tiles exceed the int range of the tile walk");
  a.order = fb90::cta_order(q_tiles, p.H, p.B, a.bias_kind != kNone, a.bias_shared_b, a.bias_shared_h);
  a.n_tiles = int(n_tiles);
  const int grid = one_tile_per_cta() ? a.n_tiles : std::min(a.n_tiles, n_sm);
  kernel<<<grid, kThreads, smem, stream>>>(a);
  PF_CUDA_CHECK_LAUNCH("flash_bias_fwd_sm90_kernel");
}

}  // namespace fb90

void flash_bias_fwd_sm90(const FlashBiasParams& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarType::BF16;
  switch (p.D) {
    case 32: bf16 ? fb90::launch<__nv_bfloat16, 32>(p, stream) : fb90::launch<__half, 32>(p, stream); return;
    case 64: bf16 ? fb90::launch<__nv_bfloat16, 64>(p, stream) : fb90::launch<__half, 64>(p, stream); return;
    case 128:
      bf16 ? fb90::launch<__nv_bfloat16, 128>(p, stream) : fb90::launch<__half, 128>(p, stream);
      return;
    default: break;
  }
  PF_FAIL("flash_bias_fwd_sm90: head dim " << p.D << " is not supported; supported: 32, 64, 128");
}

}  // namespace pf::kernels::cuda
