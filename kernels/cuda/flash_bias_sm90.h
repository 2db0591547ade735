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

// nullptr if the Hopper forward covers `p` (device aside), else what it does not cover:
// float16 / bfloat16 inputs, head dim 32, 64 or 128, the dense layout (no packed batch), no fused
// relative-position table, and a bias (if any) whose base is 16-byte aligned and whose row, head
// and batch strides are multiples of 16 bytes or zero (broadcast). Masks and causal: all.
const char* flash_bias_fwd_sm90_unsupported(const FlashBiasParams& p);

// Queues the Hopper forward of `p` on `stream` (p already validated; the device must be sm_90).
void flash_bias_fwd_sm90(const FlashBiasParams& p, cudaStream_t stream);

}  // namespace pf::kernels::cuda
