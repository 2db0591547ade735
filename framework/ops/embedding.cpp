// Embedding: rows of a table gathered by int32 indices; the backward scatter-adds the
// gradient rows into the table's gradient (repeated indices add up).
#include "framework/ops/common.h"
#include "kernels/cpu/embedding.h"

namespace pf::ops {

using namespace detail;

// weight:(V,D) idx:(...) I32 → (...,D)
Tensor embedding(const Tensor& weight, const Tensor& idx) {
  check_float(weight, "embedding", "weight");
  check_defined(idx, "embedding", "idx");
  PF_CHECK(weight.ndim() == 2, "embedding: weight must be (V,D), got " << weight.str());
  PF_CHECK(idx.dtype() == DType::I32, "embedding: idx must be int32, got " << idx.str());
  PF_CHECK(idx.device() == weight.device(), "embedding: weight and idx on different devices: "
                                                << weight.str() << " and " << idx.str());
  if (weight.device() == Device::CUDA) PF_FAIL("embedding: CUDA backend not built yet");
  const int64_t V = weight.size(0), D = weight.size(1), n = idx.numel();
  Shape out_shape = idx.shape();
  out_shape.push_back(D);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  dispatch_float(weight.dtype(), "embedding", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::embedding_forward(weight.data<T>(), idx.data<int32_t>(), out.data<T>(), n, V, D);
  });
  const Tensor sidx = idx.detach();
  return make_result(out, "embedding", {weight, idx},
                     [sidx, V, D, n](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dw = Tensor::empty({V, D}, g.dtype(), g.device());
                       dispatch_float(g.dtype(), "embedding", [&](auto t) {
                         using T = decltype(t);
                         kernels::cpu::embedding_backward(g.data<T>(), sidx.data<int32_t>(),
                                                          dw.data<T>(), n, V, D);
                       });
                       return {dw, Tensor()};
                     });
}

}  // namespace pf::ops
