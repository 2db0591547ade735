// Flash-bias attention on the GPU: forward and backward (dQ, dK, dV and the bias gradient dB).
//
//   out = softmax(scale · Q Kᵀ + B + mask) · V        per batch b and head h
//
// The problem is described by kernels/flash_bias_params.h (pointers, shapes, strides in
// elements); every convention stated there holds here. The CPU twin with the same API is
// kernels/cpu/flash_bias.h and is the reference these kernels are tested against
// (tests/test_flash_bias_cuda.cpp).
//
// Supported:
// - dtype (q, k, v, out, dout, dq, dk, dv): F16 or BF16 (tensor cores, fp32 accumulation), or F32
//   (fp32 arithmetic throughout, no tf32). The lse is float (B,H,Nq) contiguous.
// - bias_dtype: F32, F16 or BF16, independent of dtype (an fp32 learnable bias with bf16 inputs
//   is fine); dbias has the bias's dtype.
// - head dim D in {16, 32, 64, 128}; any B, H, Nq, Nk >= 1.
// - q, k, v, out, dout, dq, dk, dv: 16-byte aligned pointers and batch/row/head strides that are
//   multiples of 16 bytes (8 halves, 4 floats). The bias and its gradient may have any strides.
// - A fused relative-position table (relpos_table, fp32 (H, 2R+1)) alone or on top of a bias, with
//   its gradient drelpos_table (fp32) reduced inside the backward.
// - Packed variable-length batches (cu_seqlens_q/k, device memory): Nq and Nk are the longest
//   lengths (lengths 0 allowed; they are not checked against Nq, Nk: that would need a host wait);
//   a bias is packed per sequence (bias_seq_offsets, device memory); no key_padding_mask.
// Anything else fails with a pf::Error naming what was given and what is supported.
//
// All work is queued on `stream`; nothing synchronises. Errors raised while a kernel runs surface
// at the caller's next synchronising CUDA call.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// Which kernels run. kAuto (the default): the Hopper forward (flash_bias_sm90.h) on a compute
// capability 9.0 device for the problems it covers, likewise the Hopper backward, the portable
// kernels otherwise. kPortable: always the portable kernels. kHopper: the Hopper forward
// and backward, or a pf::Error saying why one cannot run. Process-wide; for tests and benchmarks
// that compare the paths.
enum class FlashBiasPath { kAuto, kPortable, kHopper };
void set_flash_bias_path(FlashBiasPath path);
FlashBiasPath flash_bias_path();

// The kernel flash_bias_forward / flash_bias_backward would run for `p` on the current device
// under the current path setting: "hopper" or "portable". With kHopper and a problem the Hopper
// kernel does not cover, fails with the reason.
const char* flash_bias_forward_kernel(const FlashBiasParams& p);
const char* flash_bias_backward_kernel(const FlashBiasBwdParams& p);

// Whether the Hopper forward and backward both cover `p` on the current device (what kHopper needs).
bool flash_bias_hopper_covers(const FlashBiasBwdParams& p);

// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) mask:(B,Nk) -> out:(B,Nq,H,D) lse:(B,H,Nq)
void flash_bias_forward(const FlashBiasParams& p, cudaStream_t stream);

// Bytes of scratch that flash_bias_backward needs for `p` (a multiple of 256): rowsum(dO∘O)
// (B,H,Nq) fp32, the fp32 dQ accumulator (B,H,Nq,D) unless p.deterministic, the fp32 dB
// accumulator (B|1,H|1,Nq,Nk) when more than 8 (b, h) pairs share one bias slice (up to 8, the
// sharing CTAs form a thread-block cluster and sum dB on chip, in a fixed order), and with
// p.deterministic and drelpos_table the per-CTA dT rows (B, H, ceil(Nk/64), min(2R+1, 64·ceil(Nq/64)+63)).
// Packed batches use the same bounds (Tq <= B·Nq). The Hopper backward needs the row statistics
// (Δ and lse·log2 e) in rows padded to 64, the dQ accumulator, and the dB accumulator of any
// broadcast bias.
size_t flash_bias_backward_workspace_bytes(const FlashBiasBwdParams& p);

// Needs p.out and p.lse from the forward. dout:(B,Nq,H,D) -> dq:(B,Nq,H,D) dk,dv:(B,Nk,H,D)
// dbias:(B|1,H|1,Nq,Nk); each gradient is computed only when its pointer is non-null.
// `workspace` holds at least flash_bias_backward_workspace_bytes(p) bytes of device memory
// (256-byte aligned; contents need not be initialised).
// With p.deterministic the results are bitwise identical run to run (no floating-point atomics);
// otherwise dQ, dB of a bias shared by more than 8 (b, h) pairs, and dT are summed with fp32
// atomics (run-to-run differences at the level of fp32 rounding only).
void flash_bias_backward(const FlashBiasBwdParams& p, void* workspace, cudaStream_t stream);

}  // namespace pf::kernels::cuda
