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

// embedding_sum (kernels/cpu/fused.h): out[r] = A[ia[r]] + B[ib[r mod S]] in dtype ot (F32 or
// BF16), tables of dtype tt (F32 or BF16). An index outside its table reads NaN (forward) and
// adds nothing (backward).  a:(Va,D) ia:(rows) b:(Vb,D) ib:(S) → out:(rows,D)
void embedding_sum_forward(ScalarType tt, ScalarType ot, const void* a, const int32_t* ia, const void* b,
                           const int32_t* ib, void* out, int64_t rows, int64_t S, int D, int Va, int Vb);

// Whether embedding_sum_backward takes tables of Va + Vb rows of width D: it adds into tiles of
// the stacked table [A; B] in shared memory (columns, then rows, tiled), up to 3072 rows.
bool embedding_sum_fits(int D, int Va, int Vb);

// Bytes of scratch embedding_sum_backward needs (per-block partial tables, fp32).
size_t embedding_sum_backward_workspace_bytes(int64_t rows, int D, int Va, int Vb);

// g:(rows,D) of dtype gt → da:(Va,D), db:(Vb,D) of dtype tt, written (=), each only if non-null.
// Per-warp tiles of the tables in shared memory (≤ 12288 floats), rows in order, then warps and
// blocks in order: deterministic. Requires embedding_sum_fits(D, Va, Vb).
void embedding_sum_backward(ScalarType gt, ScalarType tt, const void* g, const int32_t* ia, const int32_t* ib,
                            void* da, void* db, int64_t rows, int64_t S, int D, int Va, int Vb,
                            void* workspace);

}  // namespace pf::kernels::cuda
