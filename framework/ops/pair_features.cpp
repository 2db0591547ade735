// The integer pair features of the pair-bias model (no grad): relative positions and distance
// bins, computed on the coordinates' device. The CPU and CUDA kernels are twins that give the
// same bin for every pair (kernels/cpu/pair_features.h states the rule and the rounding). On the
// GPU only the coordinates are uploaded (B·N·3 floats instead of B·N² bins).
#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/pair_features.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/pair_features.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {

// ---- the kernels of the device --------------------------------------------------------------

void launch_relative_positions(int N, int R, int32_t* rel, Device device) {
#ifdef PF_WITH_CUDA
  if (device == Device::CUDA) {
    kernels::cuda::relative_positions(N, R, rel);
    return;
  }
#endif
  (void)device;
  kernels::cpu::relative_positions(N, R, rel);
}

void launch_distance_bins(const float* coords, int B, int N, double dist_max, int n_bins, int32_t* bins,
                          Device device) {
#ifdef PF_WITH_CUDA
  if (device == Device::CUDA) {
    kernels::cuda::distance_bins(coords, B, N, dist_max, n_bins, bins);
    return;
  }
#endif
  (void)device;
  kernels::cpu::distance_bins(coords, B, N, dist_max, n_bins, bins);
}

void check_coords(const Tensor& coords, int ndim, const char* op, const char* shape) {
  check_defined(coords, op, "coords");
  PF_CHECK(coords.dtype() == DType::F32 && coords.ndim() == ndim && coords.size(-1) == 3,
           op << ": coords must be float32 " << shape << ", got " << coords.str());
}

}  // namespace

// → (N,N) I32
Tensor relative_positions(int N, int R, Device device) {
  PF_CHECK(N >= 0 && R >= 0, "relative_positions: expected N >= 0 and R >= 0, got " << N << " and " << R);
  Tensor rel = Tensor::empty({N, N}, DType::I32, device);
  launch_relative_positions(N, R, static_cast<int32_t*>(rel.data_ptr()), device);
  return rel;
}

// coords:(B,N,3) F32 → (B,N,N) I32
Tensor distance_bins(const Tensor& coords, double dist_max, int n_bins) {
  check_coords(coords, 3, "distance_bins", "(B,N,3)");
  const int B = static_cast<int>(coords.size(0)), N = static_cast<int>(coords.size(1));
  Tensor bins = Tensor::empty({B, N, N}, DType::I32, coords.device());
  launch_distance_bins(static_cast<const float*>(coords.data_ptr()), B, N, dist_max, n_bins,
                       static_cast<int32_t*>(bins.data_ptr()), coords.device());
  return bins;
}

// coords:(T,3) F32 → rel, bins:(P) I32, chain b's pairs at [start[b], start[b+1])
PackedPairFeatureTensors packed_pair_features(const Tensor& coords, const std::vector<int32_t>& cu_seqlens,
                                              const std::vector<int64_t>& start, int R, double dist_max,
                                              int n_bins) {
  check_coords(coords, 2, "packed_pair_features", "(T,3)");
  const int B = static_cast<int>(cu_seqlens.size()) - 1;
  PF_CHECK(B >= 1 && start.size() == cu_seqlens.size() && coords.size(0) == cu_seqlens.back(),
           "packed_pair_features: expected cu_seqlens and start of B+1 >= 2 entries and coords of "
               << cu_seqlens.back() << " rows, got " << cu_seqlens.size() << ", " << start.size() << " and "
               << coords.str());
  const Device device = coords.device();
  PackedPairFeatureTensors f;
  f.rel = Tensor::empty({start[B]}, DType::I32, device);
  f.bins = Tensor::empty({start[B]}, DType::I32, device);
  const float* x = static_cast<const float*>(coords.data_ptr());
  int32_t* rel = static_cast<int32_t*>(f.rel.data_ptr());
  int32_t* bins = static_cast<int32_t*>(f.bins.data_ptr());
  // Chain by chain with the dense kernels: in parallel on the CPU (disjoint outputs), queued one
  // after another on the GPU.
  const auto chain = [&](int b) {
    const int n = cu_seqlens[b + 1] - cu_seqlens[b];
    if (n == 0) return;
    launch_relative_positions(n, R, rel + start[b], device);
    launch_distance_bins(x + int64_t{cu_seqlens[b]} * 3, 1, n, dist_max, n_bins, bins + start[b], device);
  };
  if (device == Device::CPU) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int b = 0; b < B; ++b) chain(b);
  } else {
    for (int b = 0; b < B; ++b) chain(b);
  }
  return f;
}

}  // namespace pf::ops
