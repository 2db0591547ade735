#include "kernels/cuda/adamw.h"

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

// The scalars are formed on the host exactly as the CPU kernel forms them (in double, then
// rounded to float), so the two agree to the rounding of the element-wise arithmetic.
struct AdamWScalars {
  float b1, b2, step_size, inv_sqrt_bc2, eps;
};

AdamWScalars scalars_of(const cpu::AdamWStep& s) {
  const float bc1 = static_cast<float>(1.0 - std::pow(s.beta1, static_cast<double>(s.step)));
  return {static_cast<float>(s.beta1), static_cast<float>(s.beta2), static_cast<float>(s.lr) / bc1,
          static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(s.beta2, static_cast<double>(s.step)))),
          static_cast<float>(s.eps)};
}

float decay_of(double lr, double weight_decay) { return static_cast<float>(1.0 - lr * weight_decay); }

// Up to kBatch tensors per launch; tensor k owns blocks [block_start[k], block_start[k + 1]),
// each block kChunk consecutive elements of it.
constexpr int kBatch = 24;
constexpr int kThreads = 256;
constexpr int64_t kChunk = 8 * kThreads;
struct AdamWBatch {
  float* p[kBatch];
  const float* g[kBatch];
  float* m[kBatch];
  float* v[kBatch];
  int64_t n[kBatch];
  float decay[kBatch];
  int block_start[kBatch + 1];
  int count;
};

__global__ void __launch_bounds__(kThreads) adamw_kernel(AdamWBatch b, AdamWScalars c) {
  int k = 0;
  while (k + 1 < b.count && static_cast<int>(blockIdx.x) >= b.block_start[k + 1]) ++k;
  const int64_t begin = (blockIdx.x - b.block_start[k]) * kChunk;
  const int64_t end = min(b.n[k], begin + kChunk);
  float* p = b.p[k];
  const float* g = b.g[k];
  float* m = b.m[k];
  float* v = b.v[k];
  const float decay = b.decay[k];
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const float gi = g[i];
    float pi = p[i] * decay;
    const float mi = c.b1 * m[i] + (1 - c.b1) * gi;
    const float vi = c.b2 * v[i] + (1 - c.b2) * gi * gi;
    pi -= c.step_size * mi / (sqrtf(vi) * c.inv_sqrt_bc2 + c.eps);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adamw_update_many(const std::vector<AdamWTensor>& ts, const cpu::AdamWStep& s) {
  const AdamWScalars c = scalars_of(s);
  for (size_t first = 0; first < ts.size(); first += kBatch) {
    AdamWBatch b{};
    int blocks = 0;
    for (size_t i = first; i < ts.size() && b.count < kBatch; ++i) {
      const AdamWTensor& t = ts[i];
      const int k = b.count++;
      b.p[k] = t.p;
      b.g[k] = t.g;
      b.m[k] = t.m;
      b.v[k] = t.v;
      b.n[k] = t.n;
      b.decay[k] = decay_of(s.lr, t.weight_decay);
      b.block_start[k] = blocks;
      const int64_t nb = (t.n + kChunk - 1) / kChunk;
      PF_CHECK(blocks + nb <= INT32_MAX, "adamw_update_many: too many elements in one launch");
      blocks += static_cast<int>(nb);
    }
    b.block_start[b.count] = blocks;
    if (blocks == 0) continue;
    adamw_kernel<<<blocks, kThreads, 0, cur_stream()>>>(b, c);
    PF_CUDA_CHECK_LAUNCH("adamw_update");
  }
}

}  // namespace pf::kernels::cuda
