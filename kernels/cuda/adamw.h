// AdamW on the GPU, twin of kernels/cpu/adamw.h (same formula, fp32 parameters, gradients and
// moments). Work is queued on the context's stream.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cpu/adamw.h"  // AdamWStep

namespace pf::kernels::cuda {

// One parameter tensor of adamw_update_many: p,g,m,v:(n) fp32, its own weight decay.
struct AdamWTensor {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
  double weight_decay;
};

// One update of step s.step (≥ 1) with decoupled weight decay of every tensor (s.weight_decay
// unused: each tensor's own): one launch per 24 tensors, not one per tensor.
void adamw_update_many(const std::vector<AdamWTensor>& ts, const cpu::AdamWStep& s);

}  // namespace pf::kernels::cuda
