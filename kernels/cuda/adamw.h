// AdamW on the GPU, twin of kernels/cpu/adamw.h (same formula, fp32 parameters, gradients and
// moments). Work is queued on the context's stream.
#pragma once
#include <cstdint>

#include "kernels/cpu/adamw.h"  // AdamWStep

namespace pf::kernels::cuda {

// p,g,m,v:(n) fp32; one update of step s.step (≥ 1) with decoupled weight decay.
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const cpu::AdamWStep& s);

}  // namespace pf::kernels::cuda
