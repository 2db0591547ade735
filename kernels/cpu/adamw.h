// One AdamW update of a parameter tensor in place (PyTorch's formulation, decoupled decay):
//   p ← p·(1 − lr·wd);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
//   p ← p − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)        t = step, counted from 1
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

struct AdamWStep {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // t ≥ 1
};

// p, g, m, v: n elements each
template <class T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamWStep& s);

}  // namespace pf::kernels::cpu
