// Fused ops on the GPU, twins of kernels/cpu/fused.h (which defines them and derives the
// backward). z, out, g, dz have dtype zt (F32 or BF16); γ, β, W and their gradients dtype pt
// (F32 or BF16: fp32 master weights with bf16 activations); all arithmetic and every sum is fp32.
// Work is queued on the context's stream.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// The widest pair_bias whose row (C values) and H outputs stay in per-thread registers. Wider
// ones up to C = 256 run kernels that give a row to 16 or 32 lanes of a warp (C ≤ 128 with
// H ≤ 32, C ≤ 256 with H ≤ 16); past those, kernels that take the channels in chunks of 32 and
// the heads in groups of 64, with W in shared memory: they take any (C, H) whose shared memory
// fits (pair_bias_fits), which includes C ≤ 256 with H ≤ 64 on sm_80 and later.
constexpr int kPairBiasMaxC = 64;
constexpr int kPairBiasMaxH = 16;

// Whether the kernels take C channels and H heads on the current device.
bool pair_bias_fits(int C, int H);

// z:(B,N,M,C) γ,β:(C) W:(H,C) → out:(B,H,N,M).  Requires pair_bias_fits(C, H).
void pair_bias_forward(ScalarType zt, ScalarType pt, const void* z, const void* gamma, const void* beta,
                       const void* w, void* out, int64_t B, int64_t N, int64_t M, int C, int H, double eps);

// Bytes of scratch pair_bias_backward needs (per-block partial sums of dW, dγ, dβ, fp32).
size_t pair_bias_backward_workspace_bytes(int64_t B, int64_t N, int64_t M, int C, int H);

// g:(B,H,N,M) z:(B,N,M,C) → dz:(B,N,M,C), dγ,dβ:(C), dW:(H,C) (null = not wanted). dγ, dβ, dW
// are written (=); dz is written, or added to (+=, one rounding to zt) with accumulate_dz. The
// parameter gradients are summed in a fixed order (deterministic).
void pair_bias_backward(ScalarType zt, ScalarType pt, const void* g, const void* z, const void* gamma,
                        const void* beta, const void* w, void* dz, void* dgamma, void* dbeta, void* dw,
                        int64_t B, int64_t N, int64_t M, int C, int H, double eps, bool accumulate_dz,
                        void* workspace);

// pair_bias of the L layers that read one z (the pair-bias model: every layer's bias from the one
// pair representation), in one pass over z forward and one backward (kernels/cuda/
// pair_bias_layers.cu): out[l] = pair_bias(z, γ_l, β_l, W_l) stacked as (L,B,H,N,M), and z's
// gradient summed over the layers inside the kernel. The layers' γ_l, W_l are folded into one
// (L·H) × C product (plus β_l's constant) that runs on the tensor cores for bf16 z (the
// normalised z and the folded weights rounded to bf16, fp32 sums) and in fp32 on the CUDA cores
// for fp32 z. Takes C ∈ {16, 32, 64, 128} and L·H <= 64 (pair_bias_layers_fits); z 16-byte aligned.
constexpr int kPairBiasLayersMaxOutputs = 64;
constexpr int kPairBiasLayersMaxLayers = 64;
struct PairBiasLayerParams {  // the layers' γ_l, β_l:(C) and W_l:(H,C), dtype pt
  int L = 0;
  const void* gamma[kPairBiasLayersMaxLayers] = {};
  const void* beta[kPairBiasLayersMaxLayers] = {};
  const void* w[kPairBiasLayersMaxLayers] = {};
};
struct PairBiasLayerGrads {  // their gradients (dtype pt), written (=); null = not wanted
  void* gamma[kPairBiasLayersMaxLayers] = {};
  void* beta[kPairBiasLayersMaxLayers] = {};
  void* w[kPairBiasLayersMaxLayers] = {};
};

bool pair_bias_layers_fits(ScalarType zt, int C, int H, int L);

// Bytes of scratch both directions need (the folded weights; the backward's per-block sums).
size_t pair_bias_layers_workspace_bytes(ScalarType zt, int C);

// z:(B,N,M,C) → out:(L,B,H,N,M).  Requires pair_bias_layers_fits.
void pair_bias_layers_forward(ScalarType zt, ScalarType pt, const void* z, const PairBiasLayerParams& p,
                              void* out, int64_t B, int64_t N, int64_t M, int C, int H, double eps,
                              void* workspace);

// g:(L,B,H,N,M) z:(B,N,M,C) → dz:(B,N,M,C) (written, or added to with accumulate_dz; null = not
// wanted) and the layers' gradients. Sums in a fixed order (deterministic).
void pair_bias_layers_backward(ScalarType zt, ScalarType pt, const void* g, const void* z,
                               const PairBiasLayerParams& p, const PairBiasLayerGrads& d, void* dz, int64_t B,
                               int64_t N, int64_t M, int C, int H, double eps, bool accumulate_dz,
                               void* workspace);

// embedding_sum (kernels/cpu/fused.h): out[r] = A[ia[r]] + B[ib[r mod S]] in dtype ot (F32 or
// BF16), tables of dtype tt (F32 or BF16). An index outside its table reads NaN (forward) and
// adds nothing (backward).  a:(Va,D) ia:(rows) b:(Vb,D) ib:(S) → out:(rows,D)
void embedding_sum_forward(ScalarType tt, ScalarType ot, const void* a, const int32_t* ia, const void* b,
                           const int32_t* ib, void* out, int64_t rows, int64_t S, int D, int Va, int Vb);

// Whether embedding_sum_backward takes tables of Va + Vb rows of width D: it adds into tiles of
// the stacked table [A; B] in shared memory (columns, then rows, tiled), up to 3072 rows; the
// tensor-core kernel takes a part of these (embedding_sum_backward_on_tensor_cores).
bool embedding_sum_fits(int D, int Va, int Vb);

// Whether embedding_sum_backward runs its tensor-core kernel for g of dtype gt (given a 16-byte
// aligned g): 16-bit g (BF16 or F16), D a multiple of 8 (any width: column tiles of 128) and
// Va + Vb <= 144 (9 m-tiles of 16 table rows, whose fp32 accumulators a warp keeps in registers),
// within embedding_sum_fits. Everything else — fp32 g, other widths, larger tables — runs the
// shared-memory kernel.
bool embedding_sum_backward_on_tensor_cores(ScalarType gt, int D, int Va, int Vb);

// Bytes of scratch embedding_sum_backward needs (per-block partial tables, fp32), for either kernel.
size_t embedding_sum_backward_workspace_bytes(int64_t rows, int D, int Va, int Vb);

// g:(rows,D) of dtype gt → da:(Va,D), db:(Vb,D) of dtype tt, written (=), each only if non-null.
// Two kernels, both deterministic (bitwise the same run to run): the stacked table [A; B] as a
// one-hot GEMM on the tensor cores (embedding_sum_backward_on_tensor_cores), else per-warp tiles
// of the tables in shared memory (≤ 12288 floats), rows in order, then warps. Each block leaves
// an fp32 partial table, added in block order. Requires embedding_sum_fits(D, Va, Vb).
void embedding_sum_backward(ScalarType gt, ScalarType tt, const void* g, const int32_t* ia, const int32_t* ib,
                            void* da, void* db, int64_t rows, int64_t S, int D, int Va, int Vb,
                            void* workspace);

}  // namespace pf::kernels::cuda
