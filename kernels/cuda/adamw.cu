#include "kernels/cuda/adamw.h"

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

// The scalars are formed on the host exactly as the CPU kernel forms them (in double, then
// rounded to float), so the two agree to the rounding of the element-wise arithmetic.
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, float decay,
                             float b1, float b2, float step_size, float inv_sqrt_bc2, float eps) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    float pi = p[i] * decay;
    const float mi = b1 * m[i] + (1 - b1) * gi;
    const float vi = b2 * v[i] + (1 - b2) * gi * gi;
    pi -= step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const cpu::AdamWStep& s) {
  if (n == 0) return;
  const float decay = static_cast<float>(1.0 - s.lr * s.weight_decay);
  const float bc1 = static_cast<float>(1.0 - std::pow(s.beta1, static_cast<double>(s.step)));
  const float inv_sqrt_bc2 =
      static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(s.beta2, static_cast<double>(s.step))));
  const float step_size = static_cast<float>(s.lr) / bc1;
  adamw_kernel<<<grid_for(n, 256), 256, 0, cur_stream()>>>(
      p, g, m, v, n, decay, static_cast<float>(s.beta1), static_cast<float>(s.beta2), step_size,
      inv_sqrt_bc2, static_cast<float>(s.eps));
  PF_CUDA_CHECK_LAUNCH("adamw_update");
}

}  // namespace pf::kernels::cuda
