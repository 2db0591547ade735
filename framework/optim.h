// AdamW with decoupled weight decay, the warm-up + cosine learning-rate schedule and global
// gradient-norm clipping — the optimisation recipe of docs/DESIGN.md §5, matching PyTorch's
// torch.optim.AdamW and clip_grad_norm_.
#pragma once
#include <string>
#include <vector>

#include "framework/nn.h"

namespace pf::optim {

struct AdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// The update count t (the bias corrections' step) counts updates, not steps: a skipped step
// (non-finite loss or gradient norm) leaves it, the weights and the moments as they were.
// On the GPU t lives in device memory, so that an update can be decided on the device
// (step(lr, go)) and a whole training step captured in a CUDA graph.
class AdamW {
 public:
  // decay[i] says whether params[i] gets weight decay. The parameters stay on the device they
  // are on now (the moments are made there).
  AdamW(nn::NamedTensors params, std::vector<bool> decay, AdamWOptions opt);
  // One update with learning rate lr, using each parameter's grad (parameters without a
  // gradient are skipped, as in PyTorch).
  void step(double lr);
  // GPU parameters: the update decided on the device, nothing read back. lr: () float64, go: ()
  // int32, both in device memory; where go is 0 nothing changes (t included).
  void step(const Tensor& lr, const Tensor& go);
  int64_t steps_taken() const;  // on the GPU: reads t back (a synchronisation)

  // State for checkpoints: the moments as "m.<param>" and "v.<param>" (handles to the live
  // tensors: a checkpoint loads into them in place), and the step count.
  nn::NamedTensors state() const;
  void set_steps_taken(int64_t t);
  const nn::NamedTensors& params() const { return params_; }

 private:
  nn::NamedTensors params_;
  std::vector<bool> decay_;
  std::vector<Tensor> m_, v_;
  AdamWOptions opt_;
  int64_t t_ = 0;  // CPU parameters
  // GPU parameters: t () float64, the scratch of the derived scalars, and step(lr)'s device lr
  // and go = 1
  Tensor t_dev_, scratch_, step_lr_, go_one_;
};

// Weight decay applies to the Linear weight matrices only: 2-D ".weight" parameters that are not
// embedding tables (names given in `embeddings`). Norm weights and biases are 1-D.
std::vector<bool> decay_mask(const nn::NamedTensors& params, const std::vector<std::string>& embeddings);

// Scales all gradients by min(1, max_norm / (‖g‖₂ + 1e-6)); returns the norm before clipping.
// max_norm <= 0 means no clipping (the norm is still returned, for the log).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
// The same on the GPU without reading anything back: → (2) float64 on the device, [0] the norm
// before clipping, [1] the coefficient (the scaling is decided on the device). clip_grad_norm
// on GPU parameters is this and one read.
Tensor clip_grad_norm_on_device(const std::vector<Tensor>& params, double max_norm);

// () int32 on loss's device: 1 where the loss () and norm (clip_grad_norm_on_device's) are both
// finite, else 0 — the go flag of AdamW::step(lr, go).
Tensor finite_flag(const Tensor& loss, const Tensor& norm);

// Learning rate for update `step` (0-based): linear warm-up to lr over `warmup` steps, then
// cosine decay to min_lr at `total` steps.
double lr_at(int64_t step, double lr, double min_lr, int64_t warmup, int64_t total);

}  // namespace pf::optim
