// Fused ops on the CPU: each does in one pass over memory what a chain of ops of framework/ops.h
// does in several. The reference the CUDA twins (kernels/cuda/fused.h) are tested against.
//
// pair_bias: one layer's attention bias from the pair representation, i.e.
//   layernorm(z, γ, β) · Wᵀ  permuted from (B,N,M,H) to (B,H,N,M)
// in one pass over z, with no normalised copy of z in memory:
//   out[b,h,i,j] = Σ_c W[h,c]·n[c],  n = x̂·γ + β,  x̂ = (z_bij − μ)·r   (pair (b,i,j), over c)
//   μ = mean(z_bij),  r = 1/√(var(z_bij) + eps)  (biased variance, two-pass)
// Backward, per pair with dy[h] = ∂L/∂out[b,h,i,j]:
//   dn[c] = Σ_h dy[h]·W[h,c]
//   dW[h,c] = Σ_pairs dy[h]·n[c],   dγ[c] = Σ_pairs dn[c]·x̂[c],   dβ[c] = Σ_pairs dn[c]
//   dz = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)),   dx̂ = dn·γ      (LayerNorm's backward,
//                                                               kernels/cpu/layernorm.h)
// The backward recomputes μ and r from z: z is all the op keeps.
//
// embedding_sum: two table lookups added, the second broadcast over the first's leading dims
// (the pair representation z = Dist[bin] + Rel[rel]: bins (B,N,M), relative positions (N,M)):
//   out[r] = A[ia[r]] + B[ib[r mod S]]          (r over the rows of ia, S = ib's size)
// Backward: dA[v] = Σ_{r: ia[r]=v} g[r],   dB[v] = Σ_{r: ib[r mod S]=v} g[r].
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

// z:(B,N,M,C) γ,β:(C) W:(H,C) → out:(B,H,N,M)
template <class T>
void pair_bias_forward(const T* z, const T* gamma, const T* beta, const T* w, T* out, int64_t B, int64_t N,
                       int64_t M, int64_t C, int64_t H, double eps);

// g:(B,H,N,M) z:(B,N,M,C) γ,β:(C) W:(H,C) → dz:(B,N,M,C), dγ,dβ:(C), dW:(H,C); each only if
// non-null. dγ, dβ, dW are written (=); dz is written, or added to (+=) with accumulate_dz (the
// sum of z's gradients over the ops that read it, framework/autograd.h). The parameter gradients
// are summed in double, per thread in row order, then over threads in thread order
// (deterministic for a given thread count).
template <class T>
void pair_bias_backward(const T* g, const T* z, const T* gamma, const T* beta, const T* w, T* dz, T* dgamma,
                        T* dbeta, T* dw, int64_t B, int64_t N, int64_t M, int64_t C, int64_t H, double eps,
                        bool accumulate_dz);

// a:(Va,D) ia:(rows) b:(Vb,D) ib:(S), S divides rows → out:(rows,D). An index outside its table
// is an error naming its position.
template <class T>
void embedding_sum_forward(const T* a, const int32_t* ia, const T* b, const int32_t* ib, T* out, int64_t rows,
                           int64_t S, int64_t D, int64_t Va, int64_t Vb);

// g:(rows,D) → da:(Va,D), db:(Vb,D) written (=), each only if non-null; summed in double, per
// thread in row order, then over threads in thread order.
template <class T>
void embedding_sum_backward(const T* g, const int32_t* ia, const int32_t* ib, T* da, T* db, int64_t rows,
                            int64_t S, int64_t D, int64_t Va, int64_t Vb);

}  // namespace pf::kernels::cpu
