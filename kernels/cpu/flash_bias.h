// Flash-bias attention on the CPU: forward and backward, float32 and float64.
//
//   out = softmax(scale · Q Kᵀ + B + mask) · V        per batch b and head h
//
// The problem, its strides and its conventions (broadcast bias, key padding, bottom-right causal,
// fully masked rows, = vs += for gradients) are stated once in kernels/flash_bias_params.h.
//
// This is both the CPU training path of the attention op and the reference the CUDA kernels are
// tested against. It never materialises a (B,H,Nq,Nk) tensor: scores live in per-thread tiles
// and the softmax is computed online (running max and sum), as in FlashAttention.
//
// CPU-specific rules:
// - dtype F32 or F64 for q, k, v, out, dout, dq, dk, dv; the bias (and dbias) and the relpos
//   table (and its gradient) have the same dtype.
// - Accumulation in the inputs' own type (float for F32, double for F64); lse likewise. The one
//   exception is dT: each bin sums up to B·Nq·Nk terms, so its partial sums are double.
// - Both optional modes of the params are supported, in any combination with a dense bias (a
//   packed one when packed), causal and F32/F64: the fused relative-position table and packed
//   variable-length batches (sequences of length 0 included; no key padding mask when packed).
// - Threads: OpenMP when available. Both passes are deterministic and their results do not
//   depend on the thread count: every output element is produced by one task in a fixed order.
#pragma once
#include "kernels/flash_bias_params.h"

namespace pf::kernels::cpu {

// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) key_padding_mask:(B,Nk) relpos_table:(H,2R+1)
// -> out:(B,Nq,H,D) lse:(B,H,Nq)
// packed: q:(Tq,H,D) k,v:(Tk,H,D) bias: blocks [H,nq_b,nk_b] -> out:(Tq,H,D) lse:(H,Tq)
void flash_bias_forward(const FlashBiasParams& p);

// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) out,dout:(B,Nq,H,D) lse:(B,H,Nq)
// -> dq:(B,Nq,H,D) dk,dv:(B,Nk,H,D) dbias:(B|1,H|1,Nq,Nk) drelpos_table:(H,2R+1), each only
// where non-null (packed: the packed shapes, as in the forward).
// Needs p.out and p.lse from flash_bias_forward on the same inputs.
void flash_bias_backward(const FlashBiasBwdParams& p);

}  // namespace pf::kernels::cpu
