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

namespace {

// ---- the kernels of the tensors' device: CPU float32/float64, CUDA float32/bfloat16 ----------

void launch_softmax_forward(const Tensor& x, Tensor& y, int64_t M, int64_t C) {
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    kernels::cuda::softmax_forward(scalar_type_of(x.dtype()), x.data_ptr(), y.data_ptr(), M, C);
    return;
  }
#endif
  dispatch_float(x.dtype(), "softmax", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::softmax_forward(x.data<T>(), y.data<T>(), M, C);
  });
}

void launch_softmax_backward(const Tensor& y, const Tensor& g, Tensor& dx, int64_t M, int64_t C) {
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    kernels::cuda::softmax_backward(scalar_type_of(g.dtype()), y.data_ptr(), g.data_ptr(), dx.data_ptr(), M,
                                    C);
    return;
  }
#endif
  dispatch_float(g.dtype(), "softmax", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::softmax_backward(y.data<T>(), g.data<T>(), dx.data<T>(), M, C);
  });
}

const int32_t* labels_ptr(const Tensor& labels) { return static_cast<const int32_t*>(labels.data_ptr()); }

// The dtype of the loss and of the saved row lse: float32 on the GPU (the loss stays on the
// device), the logits' dtype on the CPU.
DType loss_dtype(const Tensor& logits) {
  return logits.device() == Device::CUDA ? DType::F32 : logits.dtype();
}

// out = the mean row loss, lse = each row's log-sum-exp. On the GPU row losses, the lse and the
// mean are in fp32 or better, and a label outside [0,K) makes the loss NaN (accuracy() names
// such labels); on the CPU it is an error.
void launch_cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& lse, Tensor& out,
                                  int64_t N, int64_t K) {
#ifdef PF_WITH_CUDA
  if (logits.device() == Device::CUDA) {
    Tensor row_loss = Tensor::empty({N}, DType::F32, logits.device());
    kernels::cuda::cross_entropy_forward(scalar_type_of(logits.dtype()), logits.data_ptr(),
                                         labels_ptr(labels), static_cast<float*>(lse.data_ptr()),
                                         static_cast<float*>(row_loss.data_ptr()), kernels::ScalarType::F32,
                                         out.data_ptr(), N, K);
    return;
  }
#endif
  dispatch_float(logits.dtype(), "cross_entropy", [&](auto t) {
    using T = decltype(t);
    const double loss =
        kernels::cpu::cross_entropy_forward(logits.data<T>(), labels.data<int32_t>(), lse.data<T>(), N, K);
    out.fill_(loss);
  });
}

void launch_cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                                   const Tensor& g, Tensor& dx, int64_t N, int64_t K) {
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    kernels::cuda::cross_entropy_backward(scalar_type_of(logits.dtype()), logits.data_ptr(),
                                          labels_ptr(labels), static_cast<const float*>(lse.data_ptr()),
                                          scalar_type_of(g.dtype()), g.data_ptr(), dx.data_ptr(), N, K);
    return;
  }
#endif
  const double gv = g.item();
  dispatch_float(logits.dtype(), "cross_entropy", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::cross_entropy_backward(logits.data<T>(), labels.data<int32_t>(), lse.data<T>(), gv,
                                         dx.data<T>(), N, K);
  });
}

void check_logits_labels(const Tensor& logits, const Tensor& labels, const char* op) {
  check_float(logits, op, "logits");
  check_defined(labels, op, "labels");
  PF_CHECK(logits.ndim() == 2, op << ": logits must be (N,K), got " << logits.str());
  PF_CHECK(labels.dtype() == DType::I32, op << ": labels must be int32, got " << labels.str());
  PF_CHECK(labels.ndim() == 1 && labels.size(0) == logits.size(0),
           op << ": labels must be (" << logits.size(0) << ") to match logits " << shape_str(logits.shape())
              << ", got " << labels.str());
  PF_CHECK(labels.device() == logits.device(),
           op << ": logits and labels on different devices: " << logits.str() << " and " << labels.str());
  PF_CHECK(logits.size(0) >= 1 && logits.size(1) >= 1,
           op << ": logits must have at least one row and one class, got " << logits.str());
}

}  // namespace

// x:(...,C) → (...,C)
Tensor softmax(const Tensor& x) {
  const profile::Scope ps("softmax_loss");
  check_float(x, "softmax", "x");
  PF_CHECK(x.ndim() >= 1, "softmax: x must be (...,C), got a scalar " << x.str());
  const int64_t C = x.size(-1), M = C > 0 ? x.numel() / C : 0;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  launch_softmax_forward(x, y, M, C);
  const Tensor sy = y.detach();
  return make_result(y, "softmax", {x}, profile::timed([sy, M, C](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dx = Tensor::empty(sy.shape(), g.dtype(), g.device());
                       launch_softmax_backward(sy, g, dx, M, C);
                       return {dx};
                     }));
}

// logits:(N,K) labels:(N) I32 → ()
Tensor cross_entropy(const Tensor& logits, const Tensor& labels) {
  const profile::Scope ps("softmax_loss");
  check_logits_labels(logits, labels, "cross_entropy");
  const int64_t N = logits.size(0), K = logits.size(1);
  Tensor lse = Tensor::empty({N}, loss_dtype(logits), logits.device());
  Tensor out = Tensor::empty({}, loss_dtype(logits), logits.device());
  launch_cross_entropy_forward(logits, labels, lse, out, N, K);
  const Tensor sx = logits.detach(), sl = labels.detach();
  return make_result(out, "cross_entropy", {logits, labels},
                     profile::timed([sx, sl, lse, N, K](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dx = Tensor::empty(sx.shape(), sx.dtype(), sx.device());
                       launch_cross_entropy_backward(sx, sl, lse, g, dx, N, K);
                       return {dx, Tensor()};
                     }));
}

// logits:(N,K) labels:(N) I32 → (2) I32: rows whose argmax is the label, labels outside [0,K)
Tensor count_correct(const Tensor& logits, const Tensor& labels) {
  const profile::Scope ps("softmax_loss");
  check_logits_labels(logits, labels, "accuracy");
  const int64_t N = logits.size(0), K = logits.size(1);
  Tensor counts = Tensor::zeros({2}, DType::I32, logits.device());
#ifdef PF_WITH_CUDA
  if (logits.device() == Device::CUDA) {
    kernels::cuda::count_correct(scalar_type_of(logits.dtype()), logits.data_ptr(), labels_ptr(labels), N, K,
                                 static_cast<int*>(counts.data_ptr()));
    return counts;
  }
#endif
  kernels::cpu::check_labels(labels.data<int32_t>(), N, K, "accuracy");
  const int64_t correct = dispatch_float(logits.dtype(), "accuracy", [&](auto t) {
    using T = decltype(t);
    return kernels::cpu::count_correct(logits.data<T>(), labels.data<int32_t>(), N, K);
  });
  counts.data<int32_t>()[0] = static_cast<int32_t>(correct);
  return counts;
}

double accuracy_of(int64_t correct, int64_t bad_labels, int64_t N, int64_t K) {
  PF_CHECK(bad_labels == 0,
           "accuracy: " << bad_labels << " of " << N << " labels are outside [0, " << K << ")");
  return static_cast<double>(correct) / static_cast<double>(N);
}

// logits:(N,K) labels:(N) I32 → fraction of rows whose argmax is the label (waits for the count)
double accuracy(const Tensor& logits, const Tensor& labels) {
  const std::vector<int32_t> c = count_correct(logits, labels).to_vector<int32_t>();
  return accuracy_of(c[0], c[1], logits.size(0), logits.size(1));
}

}  // namespace pf::ops
