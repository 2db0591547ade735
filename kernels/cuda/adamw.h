// AdamW on the GPU, twin of kernels/cpu/adamw.h (same formula, fp32 parameters, gradients and
// moments), and the device side of gradient clipping. Work is queued on the context's stream.
//
// The step's scalars live in device memory, so that a whole training step can run without the
// host (and be captured in a CUDA graph, framework/cuda_graph.h): the learning rate, the flag
// that says whether to update at all (loss and gradient norm finite), and the update count t
// that the bias corrections use.
#pragma once
#include <cstdint>
#include <vector>

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

// The device scalars of one update. lr: () double; go: () int; t: () double, the updates taken
// so far; scratch: kAdamWScratchBytes of device memory for the update's derived scalars.
struct AdamWDeviceStep {
  const double* lr;
  const int* go;
  double* t;
  void* scratch;
  double beta1, beta2, eps;  // host constants of the optimizer
};
constexpr int kAdamWScratchBytes = 64;

// Where *go != 0: t ← t + 1, then one update of every tensor at step t with decoupled weight
// decay (each tensor's own): one launch per 24 tensors, not one per tensor. Where *go == 0
// nothing is written (weights, moments and t stay), as a skipped step on the host.
void adamw_update_many(const std::vector<AdamWTensor>& ts, const AdamWDeviceStep& s);

// sumsq_coef:(2) double, [0] = Σ‖g‖² on entry. Writes [0] = ‖g‖ = √Σ and [1] = the clip
// coefficient max_norm / (‖g‖ + 1e-6) (max_norm <= 0: 1, no clipping), for scale_many's s_dev.
void clip_coefficient(double* sumsq_coef, double max_norm);

// *go = 1 if the loss () float and the gradient norm () double are both finite, else 0.
void finite_flag(const float* loss, const double* norm, int* go);

}  // namespace pf::kernels::cuda
