// The Hopper (sm_90a) flash-bias forward: TMA tile loads into a multi-stage shared-memory ring
// completed on mbarriers, QKᵀ and PV on wgmma, one producer warpgroup that only loads and two
// consumer warpgroups that compute (registers moved to them with setmaxnreg).
//
// Built beside the portable kernels when the CUDA compiler can target sm_90a
// (PF_FLASH_BIAS_SM90); flash_bias_forward (flash_bias.h) picks it on a compute capability 9.0
// device for the problems it covers (flash_bias_fwd_sm90_unsupported) and runs the portable
// kernel for everything else. Same semantics and outputs (out, lse) as the portable forward.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// A fused relative-position table on the Hopper kernels: each CTA keeps in shared memory the bins
// of the table row of its head that its 128 rows (forward: queries, backward: keys) can touch
// against the n positions of the other side rounded up to whole tiles (≤ 127 more), at most
// min(2R + 1, n + 254) of them (relpos_window_bins); at most kSm90RelposMaxBins.
constexpr int kSm90RelposMaxBins = 4096;
inline int relpos_window_bins(int R, int n) {
  const long long bins = 2 * (long long)R + 1, span = (long long)n + 254;
  return int(bins < span ? bins : span);
}

// nullptr if the Hopper forward covers `p` (device aside), else what it does not cover:
// float16 / bfloat16 inputs, head dim 32, 64 or 128, the dense layout (no packed batch), a fused
// relative-position table (if any, alone or with a bias) whose window
// relpos_window_bins(R, max(Nq, Nk)) is at most kSm90RelposMaxBins (the same bound serves the
// backward), and a bias (if any) whose base is 16-byte aligned and whose row,
// head and batch strides are multiples of 16 bytes or zero (broadcast). Masks and causal: all.
const char* flash_bias_fwd_sm90_unsupported(const FlashBiasParams& p);

// Queues the Hopper forward of `p` on `stream` (p already validated; the device must be sm_90).
void flash_bias_fwd_sm90(const FlashBiasParams& p, cudaStream_t stream);

// The Hopper backward (flash_bias_bwd_sm90a.cu): dK, dV and dB (a bias not broadcast) straight
// from the kernel; dQ through an fp32 accumulator that the portable finalize kernel converts; dB
// of a broadcast bias as each (b, h)'s dS in the bias dtype into a stage that
// flash_bias_dbias_sum_kernel sums. The row statistics it reads are padded to whole 64-row blocks.
struct FlashBiasBwdSm90Workspace {
  const float* lse2 = nullptr;  // (B,H,nq_pad): lse·log2 e, +inf for a row without attended keys and past Nq
  const float* delta = nullptr;  // (B,H,nq_pad): Δ = rowsum(dO ∘ O), 0 past Nq
  int nq_pad = 0;                // Nq rounded up to 64
  float* dq_accum = nullptr;     // (B,H,Nq,D), zeroed; used when dq is wanted
  void* dbias_stage = nullptr;   // (B,H,Nq,ld) in the bias dtype: dS of a broadcast bias; null otherwise
  int64_t dbias_stage_ld = 0;    // a multiple of 8 elements
};

// nullptr if the Hopper backward covers `p` (device aside), else what it does not cover: what
// the forward does not, and a bias of another dtype than the inputs, a gradient dbias to add into
// (dbias_accumulate) or with rows not 16-byte multiples where the bias is not broadcast, the
// deterministic mode (dQ and dT are summed with fp32 atomics), and a layout that leaves fewer than
// two pipeline stages in shared memory (flash_bias_bwd_sm90_stages: a large relative-position
// table window at head dim 128).
const char* flash_bias_bwd_sm90_unsupported(const FlashBiasBwdParams& p);

// The number of pipeline stages the Hopper backward's shared memory holds for `p` (of at most 4;
// it needs 2), from the current device's opt-in shared memory per block.
int flash_bias_bwd_sm90_stages(const FlashBiasBwdParams& p);

// Queues the Hopper backward's main kernel (p validated, the workspace's row statistics written
// and its dQ accumulator zeroed, drelpos_table zeroed unless dbias_accumulate; the device must be
// sm_90).
void flash_bias_bwd_sm90(const FlashBiasBwdParams& p, const FlashBiasBwdSm90Workspace& ws,
                         cudaStream_t stream);

}  // namespace pf::kernels::cuda
