// Softmax over the last dim, mean cross-entropy, and accuracy (no grad).
//
//   softmax:       dx = y·(g − Σ_c g·y)                       (y saved from the forward)
//   cross_entropy: L = mean_r (lse_r − x[r, label_r]);   dx = g/N·(softmax(x) − onehot(label))
#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/softmax.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/context.h"
#include "kernels/cuda/softmax.h"
#endif

namespace pf::ops {

using namespace detail;

// x:(...,C) → (...,C)
Tensor softmax(const Tensor& x) {
  const profile::Scope ps("softmax_loss");
  check_float(x, "softmax", "x");
  PF_CHECK(x.ndim() >= 1, "softmax: x must be (...,C), got a scalar " << x.str());
  const int64_t C = x.size(-1), M = C > 0 ? x.numel() / C : 0;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA)
    kernels::cuda::softmax_forward(scalar_type_of(x.dtype()), x.data_ptr(), y.data_ptr(), M, C);
  else
#endif
  dispatch_float(x.dtype(), "softmax", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::softmax_forward(x.data<T>(), y.data<T>(), M, C);
  });
  const Tensor sy = y.detach();
  return make_result(
      y, "softmax", {x}, profile::timed([sy, M, C](const Tensor& g) -> std::vector<Tensor> {
        Tensor dx = Tensor::empty(sy.shape(), g.dtype(), g.device());
#ifdef PF_WITH_CUDA
        if (g.device() == Device::CUDA) {
          kernels::cuda::softmax_backward(scalar_type_of(g.dtype()), sy.data_ptr(), g.data_ptr(),
                                          dx.data_ptr(), M, C);
          return {dx};
        }
#endif
        dispatch_float(g.dtype(), "softmax", [&](auto t) {
          using T = decltype(t);
          kernels::cpu::softmax_backward(sy.data<T>(), g.data<T>(), dx.data<T>(), M, C);
        });
        return {dx};
      }));
}

namespace {
void check_logits_labels(const Tensor& logits, const Tensor& labels, const char* op) {
  check_float(logits, op, "logits");
  check_defined(labels, op, "labels");
  PF_CHECK(logits.ndim() == 2, op << ": logits must be (N,K), got " << logits.str());
  PF_CHECK(labels.dtype() == DType::I32, op << ": labels must be int32, got " << labels.str());
  PF_CHECK(labels.ndim() == 1 && labels.size(0) == logits.size(0),
           op << ": labels must be (" << logits.size(0) << ") to match logits "
              << shape_str(logits.shape()) << ", got " << labels.str());
  PF_CHECK(labels.device() == logits.device(), op << ": logits and labels on different devices: "
                                                  << logits.str() << " and " << labels.str());
  PF_CHECK(logits.size(0) >= 1 && logits.size(1) >= 1,
           op << ": logits must have at least one row and one class, got " << logits.str());
}

#ifdef PF_WITH_CUDA
const int32_t* labels_ptr(const Tensor& labels) {
  return static_cast<const int32_t*>(labels.data_ptr());
}

// The GPU path: logits float32 or bfloat16, the loss a float32 scalar that stays on the device
// (a label outside [0,K) makes it NaN; accuracy() names such labels). Row losses, the lse and the
// mean in fp32 or better.
Tensor cross_entropy_cuda(const Tensor& logits, const Tensor& labels) {
  const int64_t N = logits.size(0), K = logits.size(1);
  const auto st = scalar_type_of(logits.dtype());
  Tensor lse = Tensor::empty({N}, DType::F32, logits.device());
  Tensor row_loss = Tensor::empty({N}, DType::F32, logits.device());
  Tensor out = Tensor::empty({}, DType::F32, logits.device());
  kernels::cuda::cross_entropy_forward(st, logits.data_ptr(), labels_ptr(labels),
                                       static_cast<float*>(lse.data_ptr()),
                                       static_cast<float*>(row_loss.data_ptr()),
                                       kernels::ScalarType::F32, out.data_ptr(), N, K);
  const Tensor sx = logits.detach(), sl = labels.detach();
  return make_result(out, "cross_entropy", {logits, labels},
                     profile::timed([sx, sl, lse, N, K,
                                     st](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dx = Tensor::empty(sx.shape(), sx.dtype(), sx.device());
                       kernels::cuda::cross_entropy_backward(
                           st, sx.data_ptr(), labels_ptr(sl),
                           static_cast<const float*>(lse.data_ptr()), scalar_type_of(g.dtype()),
                           g.data_ptr(), dx.data_ptr(), N, K);
                       return {dx, Tensor()};
                     }));
}
#endif
}  // namespace

// logits:(N,K) labels:(N) I32 → ()
Tensor cross_entropy(const Tensor& logits, const Tensor& labels) {
  const profile::Scope ps("softmax_loss");
  check_logits_labels(logits, labels, "cross_entropy");
#ifdef PF_WITH_CUDA
  if (logits.device() == Device::CUDA) return cross_entropy_cuda(logits, labels);
#endif
  const int64_t N = logits.size(0), K = logits.size(1);
  Tensor lse = Tensor::empty({N}, logits.dtype(), logits.device());
  const double loss = dispatch_float(logits.dtype(), "cross_entropy", [&](auto t) {
    using T = decltype(t);
    return kernels::cpu::cross_entropy_forward(logits.data<T>(), labels.data<int32_t>(),
                                               lse.data<T>(), N, K);
  });
  Tensor out = Tensor::full({}, loss, logits.dtype(), logits.device());
  const Tensor sx = logits.detach(), sl = labels.detach();
  return make_result(out, "cross_entropy", {logits, labels},
                     profile::timed([sx, sl, lse, N, K](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dx = Tensor::empty(sx.shape(), sx.dtype(), sx.device());
                       const double gv = g.item();
                       dispatch_float(sx.dtype(), "cross_entropy", [&](auto t) {
                         using T = decltype(t);
                         kernels::cpu::cross_entropy_backward(sx.data<T>(), sl.data<int32_t>(),
                                                              lse.data<T>(), gv, dx.data<T>(), N,
                                                              K);
                       });
                       return {dx, Tensor()};
                     }));
}

// logits:(N,K) labels:(N) I32 → fraction of rows whose argmax is the label
double accuracy(const Tensor& logits, const Tensor& labels) {
  const profile::Scope ps("softmax_loss");
  check_logits_labels(logits, labels, "accuracy");
  const int64_t N = logits.size(0), K = logits.size(1);
#ifdef PF_WITH_CUDA
  if (logits.device() == Device::CUDA) {  // waits for the count
    Tensor counts = Tensor::empty({2}, DType::I32, logits.device());
    kernels::cuda::memset_zero(counts.data_ptr(), 2 * sizeof(int32_t));
    kernels::cuda::count_correct(scalar_type_of(logits.dtype()), logits.data_ptr(),
                                 labels_ptr(labels), N, K, static_cast<int*>(counts.data_ptr()));
    const std::vector<int32_t> c = counts.to_vector<int32_t>();
    PF_CHECK(c[1] == 0, "accuracy: " << c[1] << " of " << N << " labels are outside [0, " << K
                                     << ")");
    return static_cast<double>(c[0]) / static_cast<double>(N);
  }
#endif
  kernels::cpu::check_labels(labels.data<int32_t>(), N, K, "accuracy");
  const int64_t correct = dispatch_float(logits.dtype(), "accuracy", [&](auto t) {
    using T = decltype(t);
    return kernels::cpu::count_correct(logits.data<T>(), labels.data<int32_t>(), N, K);
  });
  return static_cast<double>(correct) / static_cast<double>(N);
}

}  // namespace pf::ops
