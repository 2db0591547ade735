#include "kernels/cpu/pair_features.h"

#include <algorithm>
#include <cmath>

namespace pf::kernels::cpu {

void relative_positions(int N, int R, int32_t* rel) {
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) rel[int64_t{i} * N + j] = std::clamp(j - i, -R, R) + R;
}

int distance_bin(const float* xi, const float* xj, double dist_max, int n_bins) {
  const double dx = double(xi[0]) - xj[0], dy = double(xi[1]) - xj[1], dz = double(xi[2]) - xj[2];
  return bin_of_distance(std::sqrt((dx * dx + dy * dy) + dz * dz), dist_max,
                         n_bins);  // no FMA: see the header
}

int bin_of_distance(double d, double dist_max, int n_bins) {
  const double b = std::floor(d / dist_max * n_bins);
  return static_cast<int>(std::clamp(b, 0.0, static_cast<double>(n_bins - 1)));
}

void distance_bins(const float* coords, int B, int N, double dist_max, int n_bins, int32_t* bins) {
#pragma omp parallel for schedule(static)
  for (int b = 0; b < B; ++b) {
    const float* x = coords + int64_t{b} * N * 3;
    int32_t* out = bins + int64_t{b} * N * N;
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        out[int64_t{i} * N + j] = distance_bin(x + 3 * i, x + 3 * j, dist_max, n_bins);
  }
}

}  // namespace pf::kernels::cpu
