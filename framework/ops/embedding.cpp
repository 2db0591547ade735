// Embedding: rows of a table gathered by int32 indices; the backward scatter-adds the
// gradient rows into the table's gradient (repeated indices add up).
#include "framework/deterministic.h"
#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/embedding.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/embedding.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {

// The kernels of the tensors' device. CPU: float32/float64 tables. CUDA: float32 or bfloat16
// tables, fp32 sums; the backward of tables of ≤ 96 rows or ≤ 3072 entries (every table of the
// model) is summed in a fixed order, larger tables too in deterministic mode
// (framework/deterministic.h; read when the backward runs). An index outside [0,V) reads NaN and
// adds nothing on the GPU.
void launch_forward(const Tensor& weight, const Tensor& idx, Tensor& out, int64_t n, int64_t V, int64_t D) {
#ifdef PF_WITH_CUDA
  if (weight.device() == Device::CUDA) {
    kernels::cuda::embedding_forward(scalar_type_of(weight.dtype()), weight.data_ptr(),
                                     static_cast<const int32_t*>(idx.data_ptr()), out.data_ptr(), n, V, D);
    return;
  }
#endif
  dispatch_float(weight.dtype(), "embedding", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::embedding_forward(weight.data<T>(), idx.data<int32_t>(), out.data<T>(), n, V, D);
  });
}

void launch_backward(const Tensor& g, const Tensor& idx, Tensor& dw, int64_t n, int64_t V, int64_t D) {
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    const bool det = deterministic();
    Tensor ws =
        Tensor::empty({static_cast<int64_t>(kernels::cuda::embedding_backward_workspace_bytes(n, V, D, det))},
                      DType::U8, g.device());
    kernels::cuda::embedding_backward(scalar_type_of(g.dtype()), g.data_ptr(),
                                      static_cast<const int32_t*>(idx.data_ptr()), dw.data_ptr(), n, V, D,
                                      ws.data_ptr(), det);
    return;
  }
#endif
  dispatch_float(g.dtype(), "embedding", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::embedding_backward(g.data<T>(), idx.data<int32_t>(), dw.data<T>(), n, V, D);
  });
}

}  // namespace

// weight:(V,D) idx:(...) I32 → (...,D)
Tensor embedding(const Tensor& weight, const Tensor& idx) {
  const profile::Scope ps("embedding");
  check_float(weight, "embedding", "weight");
  check_defined(idx, "embedding", "idx");
  PF_CHECK(weight.ndim() == 2, "embedding: weight must be (V,D), got " << weight.str());
  PF_CHECK(idx.dtype() == DType::I32, "embedding: idx must be int32, got " << idx.str());
  PF_CHECK(idx.device() == weight.device(),
           "embedding: weight and idx on different devices: " << weight.str() << " and " << idx.str());
  const int64_t V = weight.size(0), D = weight.size(1), n = idx.numel();
  Shape out_shape = idx.shape();
  out_shape.push_back(D);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  launch_forward(weight, idx, out, n, V, D);
  const Tensor sidx = idx.detach();
  return make_result(out, "embedding", {weight, idx},
                     profile::timed([sidx, V, D, n](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dw = Tensor::empty({V, D}, g.dtype(), g.device());
                       launch_backward(g, sidx, dw, n, V, D);
                       return {dw, Tensor()};
                     }));
}

}  // namespace pf::ops
