// LayerNorm over the last dim: forward saves the row mean and 1/std; the backward
// (kernels/cpu/layernorm.h derives it) gives dx, dw and db in one pass over the rows.
#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/layernorm.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/layernorm.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {

// The row statistics saved for the backward: fp32 on the GPU, x's dtype on the CPU.
DType stats_dtype(const Tensor& x) { return x.device() == Device::CUDA ? DType::F32 : x.dtype(); }

// The kernels of the tensors' device. CPU: x, w, b of one dtype, float32 or float64. CUDA: x
// float32 or bfloat16; w, b of x's dtype or float32 (fp32 weights with bf16 activations);
// statistics, arithmetic and the weight gradients' sums in fp32.
void launch_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y, Tensor& mean, Tensor& rstd,
                    int64_t M, int64_t C, double eps) {
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    kernels::cuda::layernorm_forward(
        scalar_type_of(x.dtype()), scalar_type_of(w.dtype()), x.data_ptr(), w.data_ptr(), b.data_ptr(),
        y.data_ptr(), static_cast<float*>(mean.data_ptr()), static_cast<float*>(rstd.data_ptr()), M, C, eps);
    return;
  }
#endif
  dispatch_float(x.dtype(), "layernorm", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::layernorm_forward(x.data<T>(), w.data<T>(), b.data<T>(), y.data<T>(), mean.data<T>(),
                                    rstd.data<T>(), M, C, eps);
  });
}

// dx, dw, db: each undefined when not wanted.
void launch_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                     const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db, int64_t M, int64_t C) {
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    Tensor ws = Tensor::empty({static_cast<int64_t>(kernels::cuda::layernorm_backward_workspace_bytes(M, C))},
                              DType::U8, g.device());
    kernels::cuda::layernorm_backward(
        scalar_type_of(x.dtype()), scalar_type_of(w.dtype()), g.data_ptr(), x.data_ptr(), w.data_ptr(),
        static_cast<const float*>(mean.data_ptr()), static_cast<const float*>(rstd.data_ptr()),
        dx.defined() ? dx.data_ptr() : nullptr, dw.defined() ? dw.data_ptr() : nullptr,
        db.defined() ? db.data_ptr() : nullptr, M, C, ws.data_ptr());
    return;
  }
#endif
  dispatch_float(g.dtype(), "layernorm", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::layernorm_backward(g.data<T>(), x.data<T>(), w.data<T>(), mean.data<T>(), rstd.data<T>(),
                                     dx.defined() ? dx.data<T>() : nullptr,
                                     dw.defined() ? dw.data<T>() : nullptr,
                                     db.defined() ? db.data<T>() : nullptr, M, C);
  });
}

}  // namespace

// x:(...,C) w:(C) b:(C) → (...,C)
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const profile::Scope ps("layernorm");
  check_float(x, "layernorm", "x");
  check_float(w, "layernorm", "w");
  check_float(b, "layernorm", "b");
  check_same(w, "w", b, "b", "layernorm");
  if (x.device() == Device::CUDA && w.dtype() == DType::F32)  // fp32 weights, any activations
    PF_CHECK(w.device() == x.device(),
             "layernorm: x and w must be on the same device, got " << x.str() << " and " << w.str());
  else
    check_same(x, "x", w, "w", "layernorm");
  PF_CHECK(x.ndim() >= 1, "layernorm: x must be (...,C), got a scalar " << x.str());
  const int64_t C = x.size(-1);
  PF_CHECK(w.shape() == Shape{C},
           "layernorm: w must be (" << C << ") to match x " << shape_str(x.shape()) << ", got " << w.str());
  PF_CHECK(b.shape() == Shape{C},
           "layernorm: b must be (" << C << ") to match x " << shape_str(x.shape()) << ", got " << b.str());
  PF_CHECK(C >= 1, "layernorm: the normalised dim of x " << x.str() << " is empty");
  PF_CHECK(eps >= 0, "layernorm: eps must be >= 0, got " << eps);
  const int64_t M = x.numel() / C;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({M}, stats_dtype(x), x.device());
  Tensor rstd = Tensor::empty({M}, stats_dtype(x), x.device());
  launch_forward(x, w, b, y, mean, rstd, M, C, eps);
  const bool need_x = x.requires_grad(), need_w = w.requires_grad(), need_b = b.requires_grad();
  const Tensor sx = x.detach(), sw = w.detach();
  return make_result(y, "layernorm", {x, w, b},
                     profile::timed([sx, sw, mean, rstd, M, C, need_x, need_w,
                                     need_b](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dx = need_x ? Tensor::empty(sx.shape(), sx.dtype(), g.device()) : Tensor();
                       Tensor dw = need_w ? Tensor::empty({C}, sw.dtype(), g.device()) : Tensor();
                       Tensor db = need_b ? Tensor::empty({C}, sw.dtype(), g.device()) : Tensor();
                       launch_backward(g, sx, sw, mean, rstd, dx, dw, db, M, C);
                       return {dx, dw, db};
                     }));
}

}  // namespace pf::ops
