// LayerNorm over the last dim on the CPU.
//
//   y = (x − μ)·r·w + b,   μ = mean(x),  r = 1/√(var(x) + eps)  (biased variance), per row
//
// Backward, with x̂ = (x − μ)·r and g = dy·w (per row of C):
//   dx = r·(g − mean(g) − x̂·mean(g·x̂)),   dw = Σ_rows dy·x̂,   db = Σ_rows dy
// (differentiate y through μ and r: ∂μ/∂x = 1/C, ∂r/∂x = −r³(x − μ)/C).
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

// x:(M,C) w,b:(C) → y:(M,C), mean,rstd:(M) (saved for the backward)
template <class T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t M, int64_t C,
                       double eps);

// dy,x:(M,C) w:(C) mean,rstd:(M) → dx:(M,C), dw,db:(C); all written (=), each only if non-null.
template <class T>
void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw,
                        T* db, int64_t M, int64_t C);

}  // namespace pf::kernels::cpu
