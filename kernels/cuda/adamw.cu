#include "kernels/cuda/adamw.h"

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

// The derived scalars of one update, formed on the device from the step's device scalars in
// double and rounded to float as kernels/cpu/adamw.h forms them on the host (pow may differ
// from the host's by an ulp of double; the float rounding hides it nearly always).
struct AdamWScalars {
  double lr;
  float b1, b2, step_size, inv_sqrt_bc2, eps;
  int go;
};
static_assert(sizeof(AdamWScalars) <= kAdamWScratchBytes, "kAdamWScratchBytes too small");

__global__ void adamw_scalars_kernel(const double* lr, const int* go, double* t, double beta1, double beta2,
                                     double eps, AdamWScalars* out) {
  const int g = *go != 0;
  out->go = g;
  if (!g) return;
  const double step = *t + 1;
  *t = step;
  const double l = *lr;
  const float bc1 = static_cast<float>(1.0 - pow(beta1, step));
  out->lr = l;
  out->b1 = static_cast<float>(beta1);
  out->b2 = static_cast<float>(beta2);
  out->step_size = static_cast<float>(l) / bc1;
  out->inv_sqrt_bc2 = static_cast<float>(1.0 / sqrt(1.0 - pow(beta2, step)));
  out->eps = static_cast<float>(eps);
}

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
  double weight_decay[kBatch];
  int block_start[kBatch + 1];
  int count;
};

__global__ void __launch_bounds__(kThreads) adamw_kernel(AdamWBatch b, const AdamWScalars* cs) {
  const AdamWScalars c = *cs;
  if (!c.go) return;
  int k = 0;
  while (k + 1 < b.count && static_cast<int>(blockIdx.x) >= b.block_start[k + 1]) ++k;
  const int64_t begin = (blockIdx.x - b.block_start[k]) * kChunk;
  const int64_t end = min(b.n[k], begin + kChunk);
  float* p = b.p[k];
  const float* g = b.g[k];
  float* m = b.m[k];
  float* v = b.v[k];
  const float decay = static_cast<float>(1.0 - c.lr * b.weight_decay[k]);
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

__global__ void clip_coefficient_kernel(double* sc, double max_norm) {
  const double norm = sqrt(sc[0]);
  sc[0] = norm;
  sc[1] = max_norm > 0 ? max_norm / (norm + 1e-6) : 1.0;
}

__global__ void finite_flag_kernel(const float* loss, const double* norm, int* go) {
  *go = isfinite(*loss) && isfinite(*norm) ? 1 : 0;
}

}  // namespace

void adamw_update_many(const std::vector<AdamWTensor>& ts, const AdamWDeviceStep& s) {
  auto* c = static_cast<AdamWScalars*>(s.scratch);
  adamw_scalars_kernel<<<1, 1, 0, cur_stream()>>>(s.lr, s.go, s.t, s.beta1, s.beta2, s.eps, c);
  PF_CUDA_CHECK_LAUNCH("adamw_scalars");
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
      b.weight_decay[k] = t.weight_decay;
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

void clip_coefficient(double* sumsq_coef, double max_norm) {
  clip_coefficient_kernel<<<1, 1, 0, cur_stream()>>>(sumsq_coef, max_norm);
  PF_CUDA_CHECK_LAUNCH("clip_coefficient");
}

void finite_flag(const float* loss, const double* norm, int* go) {
  finite_flag_kernel<<<1, 1, 0, cur_stream()>>>(loss, norm, go);
  PF_CUDA_CHECK_LAUNCH("finite_flag");
}

}  // namespace pf::kernels::cuda
