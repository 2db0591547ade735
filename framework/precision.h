// Mixed precision (train.precision: bf16). While an AutocastGuard(DType::BF16) is alive on a
// thread, the modules of framework/nn compute activations in bfloat16: Embedding casts its
// output, Linear uses bfloat16 copies of its fp32 weights (ops::cast, so gradients flow back to
// the fp32 master weights), LayerNorm takes fp32 weights with bfloat16 activations. Statistics,
// softmax, the loss and every reduction stay in fp32; the optimizer sees only fp32 tensors.
// Without a guard, activations follow the parameters' dtype (fp32 or fp64).
#pragma once
#include "framework/tensor.h"

namespace pf {

// The activation dtype modules cast to, or F32 meaning "no cast" (follow the parameters).
DType autocast_dtype();
bool autocast_enabled();

class AutocastGuard {
 public:
  explicit AutocastGuard(DType dtype);  // BF16 enables; F32/F64 leave activations alone
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  DType previous_;
};

}  // namespace pf
