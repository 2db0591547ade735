// Deterministic mode (train.deterministic), the process-wide switch of the GPU's order-dependent
// reductions, like PyTorch's torch.use_deterministic_algorithms:
//
//   set_deterministic(true);   // or: const DeterministicGuard on(cfg.train.deterministic);
//
// What it changes (stated once, here): with the mode on, every GPU op whose result could depend
// on the order in which threads add floating-point numbers takes a variant with a fixed
// summation order, so that the same inputs give bitwise-identical results run to run on the same
// GPU model, driver and build:
// - the attention backward (framework/ops/attention.cpp): dQ, a shared bias's dB and the
//   relative-position table's dT without atomics (FlashBiasParams::deterministic);
// - the embedding backward (framework/ops/embedding.cpp) of tables too large to be summed in
//   shared memory (more than 96 rows and 3072 entries; none of the pair-bias model's): a stable
//   sort of the indices and ordered segment sums instead of atomics.
// Everything else is deterministic in both modes: the gradient norm's Σx² (per-block partials
// summed in block order), the embedding backward of small tables, layernorm's dw/db, sum_to,
// the fused pair-bias kernels, the loss, and the cuBLAS GEMMs (one handle on one stream,
// atomics not allowed: bitwise reproducible per the cuBLAS documentation). The measured cost is
// in kernels/cuda/NOTES.md ("Deterministic mode").
// The CPU backend is always deterministic. The mode is read when an op runs its forward (the
// attention op) or its backward (the embedding op); flip it between steps, not inside one.
#pragma once

namespace pf {

bool deterministic();
void set_deterministic(bool on);  // process-wide

// Sets the mode for its lifetime and restores the previous setting.
class DeterministicGuard {
 public:
  explicit DeterministicGuard(bool on);
  ~DeterministicGuard();
  DeterministicGuard(const DeterministicGuard&) = delete;
  DeterministicGuard& operator=(const DeterministicGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace pf
