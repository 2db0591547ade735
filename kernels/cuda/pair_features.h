// The integer pair features on the GPU, twins of kernels/cpu/pair_features.h (same rule, same
// rounding: every bin equals the CPU's). Work is queued on the context's stream; pointers are
// device memory.
#pragma once
#include <cstdint>

namespace pf::kernels::cuda {

// → rel:(N,N)
void relative_positions(int N, int R, int32_t* rel);

// coords:(B,N,3) → bins:(B,N,N)
void distance_bins(const float* coords, int B, int N, double dist_max, int n_bins, int32_t* bins);

}  // namespace pf::kernels::cuda
