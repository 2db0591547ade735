#include "kernels/cuda/pair_features.h"

#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

__global__ void relative_positions_kernel(int N, int R, int32_t* rel) {
  const int64_t n = int64_t{N} * N;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(k / N), j = static_cast<int>(k % N);
    rel[k] = min(max(j - i, -R), R) + R;
  }
}

// One thread per pair (b, i, j), a grid-stride loop in (b, i, j) order: a warp reads one x_i
// (broadcast) and 32 consecutive x_j, and writes 32 consecutive bins.
__global__ void distance_bins_kernel(const float* __restrict__ coords, int B, int N, double dist_max,
                                     int n_bins, int32_t* __restrict__ bins) {
  const int64_t n = int64_t{B} * N * N;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = k / (int64_t{N} * N), r = k % (int64_t{N} * N);
    const int i = static_cast<int>(r / N), j = static_cast<int>(r % N);
    const float* xi = coords + (b * N + i) * 3;
    const float* xj = coords + (b * N + j) * 3;
    const double dx = double(xi[0]) - double(xj[0]), dy = double(xi[1]) - double(xj[1]),
                 dz = double(xi[2]) - double(xj[2]);
    // (dx² + dy²) + dz², each operation rounded on its own like the CPU twin (no FMA)
    const double d2 = __dadd_rn(__dadd_rn(__dmul_rn(dx, dx), __dmul_rn(dy, dy)), __dmul_rn(dz, dz));
    const double q = __dmul_rn(__ddiv_rn(sqrt(d2), dist_max), double(n_bins));
    const double fb = floor(q);
    bins[k] = static_cast<int32_t>(fmin(fmax(fb, 0.0), double(n_bins - 1)));
  }
}

}  // namespace

void relative_positions(int N, int R, int32_t* rel) {
  const int64_t n = int64_t{N} * N;
  if (n == 0) return;
  relative_positions_kernel<<<grid_for(n, 256), 256, 0, cur_stream()>>>(N, R, rel);
  PF_CUDA_CHECK_LAUNCH("relative_positions");
}

void distance_bins(const float* coords, int B, int N, double dist_max, int n_bins, int32_t* bins) {
  const int64_t n = int64_t{B} * N * N;
  if (n == 0) return;
  distance_bins_kernel<<<grid_for(n, 256), 256, 0, cur_stream()>>>(coords, B, N, dist_max, n_bins, bins);
  PF_CUDA_CHECK_LAUNCH("distance_bins");
}

}  // namespace pf::kernels::cuda
