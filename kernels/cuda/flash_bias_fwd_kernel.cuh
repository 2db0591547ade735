// Flash-bias forward: one CTA per (BM query rows, h, b); it walks the key blocks with an online
// softmax and never materialises the Nq × Nk scores.
//
// Per key block j (x = logits of the block, m = running row max, l = running row sum):
//   m' = max(m, rowmax x)    α = e^(m − m')    P = e^(x − m')     (as 2^(log2 e · ...), one FFMA + EX2)
//   l' = α·l + rowsum P      O' = α·O + P·V_j
// and at the end out = O / l, lse = m + ln l. A row with no attended key keeps m = −inf and
// l = 0: out = 0, lse = −inf (never NaN: −inf logits use m' = 0 as their origin). A NaN score
// makes its row's P, l, out and lse NaN.
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_bias_mask.cuh"
#include "kernels/cuda/flash_bias_traits.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"

namespace pf::kernels::cuda::fb {

// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) mask:(B,Nk) table:(H,2R+1) -> out:(B,Nq,H,D) lse:(B,H,Nq)
// packed: q,out:(Tq,H,D) k,v:(Tk,H,D) bias: blocks [H,nq_b,nk_b] lse:(H,Tq)
// grid (ceil(Nq/BM), H, B) (packed: (B, H, ceil(Nq/BM)) with Nq the longest sequence, see grid_pos;
// CTAs past their sequence's end return at once), block 32·kNWarps, dynamic shared memory
// smem_bytes<Tr>(bias elt size, relpos).
// kGeneral: the packed-batch and relative-position paths are compiled in (see the backward kernel:
// without them, dense batches run the kernel these modes were added to).
template <typename Tr, bool kGeneral>
__global__ void __launch_bounds__(Tr::kNThreads, Tr::kMinBlocks)
    flash_bias_fwd_kernel(const __grid_constant__ FwdArgs args) {
  using T = typename Tr::Element;
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN;
  constexpr int kPitch = Tr::kPitch, kSPitch = Tr::kSPitch, kBiasPitch = Tr::kBiasPitch;
  constexpr int kStages = Tr::kStages, kNThreads = Tr::kNThreads;
  constexpr int kRelElems = Tr::kRelSliceElems;
  const FlashBiasParams& p = args.p;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const bool varlen = kGeneral && args.varlen;
  const GridPos pos = grid_pos(varlen);
  const int h = pos.h, b = pos.b;
  const int m0 = pos.block * BM;
  const SeqInfo seq = seq_info(p, b, varlen);
  const int Nq = seq.Nq, Nk = seq.Nk;
  if (m0 >= Nq) return;  // packed: past this sequence's queries

  extern __shared__ __align__(128) char smem[];
  T* sQ = reinterpret_cast<T*>(smem + Tr::kOffQ);
  T* sK = reinterpret_cast<T*>(smem + Tr::kOffK);
  T* sV = reinterpret_cast<T*>(smem + Tr::kOffV);
  T* sP = reinterpret_cast<T*>(smem + Tr::kOffP);  // fp32 path only
  uint8_t* sKeyOk = reinterpret_cast<uint8_t*>(smem + Tr::kOffKeyOk);
  char* sBias = smem + Tr::kOffBias;

  const T* q = static_cast<const T*>(p.q) + seq.q_origin(p.q_stride) + h * p.q_stride.head;
  const T* k = static_cast<const T*>(p.k) + seq.k_origin(p.k_stride) + h * p.k_stride.head;
  const T* v = static_cast<const T*>(p.v) + seq.k_origin(p.v_stride) + h * p.v_stride.head;
  const bool has_bias = args.bias_kind != kNoBias;
  const int belt = has_bias ? bias_elt_size(args.bias_kind) : 0;
  const int bias_tile_bytes = Tr::kBiasTileElems * belt;
  int64_t bias_row = 0;
  const int64_t bias_off = has_bias ? bias_slice(seq, h, p.bias_seq_offsets, p.bias_batch_stride,
                                                 p.bias_head_stride, p.bias_row_stride, bias_row)
                                    : 0;
  const char* bias = has_bias ? static_cast<const char*>(p.bias) + bias_off * belt : nullptr;
  // packed: 16-byte pieces need the sequence's block and rows aligned too
  const bool bias_vec =
      args.bias_vec && (!varlen || ((bias_off * belt) % 16 == 0 && (bias_row * belt) % 16 == 0));
  const uint8_t* kpm = p.key_padding_mask ? p.key_padding_mask + int64_t(b) * Nk : nullptr;
  const bool relpos = kGeneral && args.relpos;
  const int R = p.relpos_clip;
  const float* table_h =
      relpos ? static_cast<const float*>(p.relpos_table) + int64_t(h) * (2 * R + 1) : nullptr;
  float* sRel = reinterpret_cast<float*>(smem + rel_offset<Tr>(belt));
  const int tile_kind = has_bias ? args.bias_kind : relpos ? kRelOnly : kNoBias;
  const int causal_off = Nk - Nq;
  const float scale = args.scale;
  // kGeneral: what the key-block loads and the epilogue need, in shared memory rather than registers
  // (a broadcast load each per key block). Spill stores + loads of the fp16 D = 64 kernel under its
  // 128-register cap (ptxas -v): 16 bytes before the packed / relative-position inputs existed,
  // 152 with these values held in registers across the loop, 32 with them here.
  __shared__ struct {
    const T* k;
    const T* v;
    const char* bias;
    const float* table_h;
    int64_t bias_row;
    T* out;
    float* lse;
    int Nk, Nq;
    bool bias_vec;
  } src;
  if (kGeneral && tid == 0) {
    src.k = k;
    src.v = v;
    src.bias = bias;
    src.table_h = table_h;
    src.bias_row = bias_row;
    src.out = static_cast<T*>(p.out) + seq.q_origin(p.out_stride) + h * p.out_stride.head;
    src.lse = static_cast<float*>(p.lse) + seq.stat_row(h);
    src.Nk = Nk;
    src.Nq = Nq;
    src.bias_vec = bias_vec;
  }
  if constexpr (kGeneral) __syncthreads();
  // kGeneral: the value from shared memory, else the local (a kernel parameter, or derived from them)
  auto pick = [&](auto from_src, auto local) {
    if constexpr (kGeneral)
      return from_src;
    else
      return local;
  };

  // Key blocks this query block can see (causal: up to the diagonal of its last row).
  int n_blocks = (Nk + BN - 1) / BN;
  if (p.causal) {
    const int last_key = min(m0 + BM, Nq) - 1 + causal_off;
    n_blocks = last_key < 0 ? 0 : min(n_blocks, last_key / BN + 1);
  }

  auto load_kv = [&](int n_block, int stage) {
    const int n0 = n_block * BN;
    const int nk = pick(src.Nk, Nk);
    load_rows<T, D, BN, kPitch, kNThreads>(sK + stage * BN * kPitch, pick(src.k, k), p.k_stride.row, n0, nk,
                                           tid);
    load_rows<T, D, BN, kPitch, kNThreads>(sV + stage * BN * kPitch, pick(src.v, v), p.v_stride.row, n0, nk,
                                           tid);
    if (has_bias)
      load_bias_tile<BM, BN, kBiasPitch, kNThreads, kGeneral>(
          sBias + stage * bias_tile_bytes, pick(src.bias, bias), pick(src.bias_row, bias_row), args.bias_kind,
          m0, n0, pick(src.Nq, Nq), nk, pick(src.bias_vec, bias_vec), tid);
    if (relpos) load_rel_slice<BM, BN, kNThreads>(sRel + stage * kRelElems, src.table_h, R, m0, n0, tid);
  };

  // Prologue: Q and the first kStages − 1 key blocks, one commit group each.
  load_rows<T, D, BM, kPitch, kNThreads>(sQ, q, p.q_stride.row, m0, Nq, tid);
#pragma unroll
  for (int st = 0; st < (kStages > 2 ? kStages - 1 : 1); ++st) {
    if (st < n_blocks) {
      load_kv(st, st);
      if (tid < BN) sKeyOk[st * BN + tid] = key_ok(kpm, st * BN + tid, Nk);
    }
    cp_async_commit();
  }

  float acc_o[1][D / 8][4];
  zero_frag(acc_o);
  float m_row[2] = {-INFINITY, -INFINITY};  // running max of rows g and g + 8 of this warp (natural units)
  float l_row[2] = {0.f, 0.f};              // this thread's part of the running row sums

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb % kStages;
    uint8_t key_ok_next = 0;  // a later tile's key validity, stored to shared memory after compute
    if constexpr (kStages > 2) {
      // tile nb is complete once at most kStages − 2 younger groups are pending; after the
      // barrier every warp is done with tile nb − 1, whose stage receives tile nb + kStages − 1
      cp_async_wait<kStages - 2>();
      __syncthreads();
      if (nb + kStages - 1 < n_blocks) {
        load_kv(nb + kStages - 1, (nb + kStages - 1) % kStages);
        if (tid < BN) key_ok_next = key_ok(kpm, (nb + kStages - 1) * BN + tid, Nk);
      }
      cp_async_commit();
    } else if constexpr (kStages > 1) {
      if (nb + 1 < n_blocks) {
        load_kv(nb + 1, (nb + 1) % kStages);
        if (tid < BN) key_ok_next = key_ok(kpm, (nb + 1) * BN + tid, Nk);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
    } else {
      if (nb > 0) {
        load_kv(nb, 0);
        if (tid < BN) sKeyOk[tid] = key_ok(kpm, nb * BN + tid, Nk);
      }
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    }

    const int n0 = nb * BN;
    const T* sKs = sK + stage * BN * kPitch;
    const T* sVs = sV + stage * BN * kPitch;

    float S[1][BN / 8][4];
    zero_frag(S);
    warp_gemm<1, BN / 8, D, false, false>(S, sQ + warp * 16 * kPitch, kPitch, sKs, kPitch);
    const bool masked = tile_needs_mask<BM, BN>(kpm != nullptr, p.causal, m0, n0, Nk, causal_off);
    const float* sRel0 = sRel + stage * kRelElems + (BM - 1);
    with_tile_mode<kGeneral>(tile_kind, masked, [&](auto kind, auto msk) {
      scores_to_logits<decltype(kind)::value, decltype(msk)::value, BN / 8, kBiasPitch>(
          S, warp * 16, 0, m0, n0, sBias + stage * bias_tile_bytes, sRel0, sKeyOk + stage * BN, p.causal,
          causal_off, scale);
    });
    if (relpos && has_bias) add_relpos<BN / 8>(S, sRel0, warp * 16, 0);

    // online softmax over this key block: P = 2^(log2 e · (x − m))
    float mx[2] = {m_row[0], m_row[1]};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(S[0][nt][0], S[0][nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(S[0][nt][2], S[0][nt][3]));
    }
    float m_scaled[2], alpha[2], rowsum[2] = {0.f, 0.f};
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      mx[hf] = quad_max(mx[hf]);
      const float m_use = mx[hf] == -INFINITY ? 0.f : mx[hf];  // all −inf so far: P = 0, not NaN
      m_scaled[hf] = m_use * kLog2e;
      alpha[hf] = fast_exp2((m_row[hf] - m_use) * kLog2e);
      m_row[hf] = mx[hf];
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        S[0][nt][e] = fast_exp2(fmaf(S[0][nt][e], kLog2e, -m_scaled[e / 2]));
        rowsum[e / 2] += S[0][nt][e];
      }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) l_row[hf] = l_row[hf] * alpha[hf] + rowsum[hf];
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[0][nt][e] *= alpha[e / 2];

    // O += P · V_j
    if constexpr (Tr::kTensorCores) {
      uint32_t pa[BN / 16][4];
      frag_to_A<BN / 8, T>(S, pa);
      warp_gemm_rA<D / 8, BN, true>(acc_o, pa, sVs, kPitch);
    } else {
      T* sPw = sP + warp * 16 * kSPitch;
      store_frag(S, sPw, kSPitch);
      __syncwarp();
      warp_gemm<1, D / 8, BN, false, true>(acc_o, sPw, kSPitch, sVs, kPitch);
    }

    if constexpr (kStages > 2) {
      if (nb + kStages - 1 < n_blocks && tid < BN)
        sKeyOk[((nb + kStages - 1) % kStages) * BN + tid] = key_ok_next;
    } else {
      if constexpr (kStages > 1) {
        if (nb + 1 < n_blocks && tid < BN) sKeyOk[((nb + 1) % kStages) * BN + tid] = key_ok_next;
      }
      __syncthreads();  // the next iteration's loads overwrite the stage just read
    }
  }
  cp_async_wait<0>();

  // epilogue: out = O / l, lse = m + ln l
  T* out = pick(src.out, static_cast<T*>(p.out) + seq.q_origin(p.out_stride) + h * p.out_stride.head);
  float* lse = pick(src.lse, static_cast<float*>(p.lse) + seq.stat_row(h));
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float l = quad_sum(l_row[hf]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int i = m0 + warp * 16 + g + 8 * hf;
    if (i < Nq) {
      T* orow = out + int64_t(i) * p.out_stride.row;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt)
        store_pair(orow + 8 * nt + 2 * t, acc_o[0][nt][2 * hf] * inv, acc_o[0][nt][2 * hf + 1] * inv);
      if (t == 0)
        lse[i] = l == 0.f ? -INFINITY : m_row[hf] + log2f(l) * kLn2;  // NaN l (a NaN score) stays NaN
    }
  }
}

// Raises kKernel's dynamic shared-memory limit to what a fp32 bias and the relative-position
// slices need (the largest case, + kExtra), once per kernel and process (the attribute belongs to
// the kernel, not a launch; the static is per kKernel, so each variant gets its own call).
template <typename Tr, auto kKernel, int kExtra = 0>
inline void set_smem_limit() {
  constexpr int kMax = smem_bytes<Tr>(4, true) + kExtra;
  if constexpr (kMax > 48 * 1024) {
    static const cudaError_t err =
        cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMax);
    PF_CUDA_CHECK(err);
  }
}

inline int launch_bias_elt(int bias_kind) { return bias_kind == kNoBias ? 0 : bias_elt_size(bias_kind); }

template <typename T, int D>
void launch_flash_bias_fwd(const FwdArgs& args, cudaStream_t stream) {
  using Tr = FwdTraits<T, D>;
  const FlashBiasParams& p = args.p;
  const bool general = args.varlen || args.relpos;
  auto kernel = general ? flash_bias_fwd_kernel<Tr, true> : flash_bias_fwd_kernel<Tr, false>;
  if (general)
    set_smem_limit<Tr, flash_bias_fwd_kernel<Tr, true>>();
  else
    set_smem_limit<Tr, flash_bias_fwd_kernel<Tr, false>>();
  const dim3 grid = launch_grid(args.varlen, (p.Nq + Tr::kBlockM - 1) / Tr::kBlockM, p.H, p.B);
  if (grid.x == 0 || grid.z == 0) return;  // packed batch of empty sequences
  kernel<<<grid, Tr::kNThreads, smem_bytes<Tr>(launch_bias_elt(args.bias_kind), args.relpos), stream>>>(args);
  PF_CUDA_CHECK_LAUNCH("flash_bias_fwd_kernel");
}

}  // namespace pf::kernels::cuda::fb
