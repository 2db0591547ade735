// The integer pair features of the pair-bias model (docs/DESIGN.md §4), computed from coordinates:
//   relative position  rel[i,j]    = clip(j − i, −R, R) + R
//   distance bin       bin[b,i,j]  = clamp(⌊d_ij / dist_max · n_bins⌋, 0, n_bins − 1)
// with d_ij = sqrt((dx² + dy²) + dz²) in double from the float32 coordinates widened to double.
//
// Convention (stated once, here): every product and sum of d² is rounded on its own (no fused
// multiply-add: this file is compiled with -ffp-contract=off, the CUDA twin uses __dmul_rn /
// __dadd_rn), so the CPU and the GPU give the same bin for every pair, also at bin edges.
// The CUDA twin is kernels/cuda/pair_features.h.
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

// → rel:(N,N)
void relative_positions(int N, int R, int32_t* rel);

// coords:(B,N,3) → bins:(B,N,N). Chains in parallel (disjoint outputs: any thread count gives
// the same result).
void distance_bins(const float* coords, int B, int N, double dist_max, int n_bins, int32_t* bins);

// One pair's bin (the rule above), for code that needs a single value.
int distance_bin(const float* xi, const float* xj, double dist_max, int n_bins);
// The bin of a distance d (Å): clamp(⌊d / dist_max · n_bins⌋, 0, n_bins − 1).
int bin_of_distance(double d, double dist_max, int n_bins);

}  // namespace pf::kernels::cpu
