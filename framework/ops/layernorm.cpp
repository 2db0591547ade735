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

#ifdef PF_WITH_CUDA
namespace {
// The GPU path: x float32 or bfloat16; w, b of x's dtype or float32 (fp32 weights with bf16
// activations); statistics, arithmetic and the weight gradients' sums in fp32.
Tensor layernorm_cuda(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const int64_t C = x.size(-1), M = x.numel() / C;
  const auto xt = scalar_type_of(x.dtype()), wt = scalar_type_of(w.dtype());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({M}, DType::F32, x.device());
  Tensor rstd = Tensor::empty({M}, DType::F32, x.device());
  kernels::cuda::layernorm_forward(xt, wt, x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(),
                                   static_cast<float*>(mean.data_ptr()),
                                   static_cast<float*>(rstd.data_ptr()), M, C, eps);
  const bool need_x = x.requires_grad(), need_w = w.requires_grad(), need_b = b.requires_grad();
  const Tensor sx = x.detach(), sw = w.detach();
  return make_result(
      y, "layernorm", {x, w, b},
      profile::timed([=](const Tensor& g) -> std::vector<Tensor> {
        Tensor dx = need_x ? Tensor::empty(sx.shape(), sx.dtype(), g.device()) : Tensor();
        Tensor dw = need_w ? Tensor::empty({C}, sw.dtype(), g.device()) : Tensor();
        Tensor db = need_b ? Tensor::empty({C}, sw.dtype(), g.device()) : Tensor();
        Tensor ws = Tensor::empty(
            {static_cast<int64_t>(kernels::cuda::layernorm_backward_workspace_bytes(M, C))},
            DType::U8, g.device());
        kernels::cuda::layernorm_backward(
            xt, wt, g.data_ptr(), sx.data_ptr(), sw.data_ptr(),
            static_cast<const float*>(mean.data_ptr()), static_cast<const float*>(rstd.data_ptr()),
            need_x ? dx.data_ptr() : nullptr, need_w ? dw.data_ptr() : nullptr,
            need_b ? db.data_ptr() : nullptr, M, C, ws.data_ptr());
        return {dx, dw, db};
      }));
}
}  // namespace
#endif

// x:(...,C) w:(C) b:(C) → (...,C)
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const profile::Scope ps("layernorm");
  check_float(x, "layernorm", "x");
  check_float(w, "layernorm", "w");
  check_float(b, "layernorm", "b");
  check_same(w, "w", b, "b", "layernorm");
  if (x.device() == Device::CUDA && w.dtype() == DType::F32)  // fp32 weights, any activations
    PF_CHECK(w.device() == x.device(), "layernorm: x and w must be on the same device, got "
                                           << x.str() << " and " << w.str());
  else
    check_same(x, "x", w, "w", "layernorm");
  PF_CHECK(x.ndim() >= 1, "layernorm: x must be (...,C), got a scalar " << x.str());
  const int64_t C = x.size(-1);
  PF_CHECK(w.shape() == Shape{C}, "layernorm: w must be (" << C << ") to match x "
                                                           << shape_str(x.shape()) << ", got "
                                                           << w.str());
  PF_CHECK(b.shape() == Shape{C}, "layernorm: b must be (" << C << ") to match x "
                                                           << shape_str(x.shape()) << ", got "
                                                           << b.str());
  PF_CHECK(C >= 1, "layernorm: the normalised dim of x " << x.str() << " is empty");
  PF_CHECK(eps >= 0, "layernorm: eps must be >= 0, got " << eps);
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) return layernorm_cuda(x, w, b, eps);
#endif
  const int64_t M = x.numel() / C;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({M}, x.dtype(), x.device());
  Tensor rstd = Tensor::empty({M}, x.dtype(), x.device());
  dispatch_float(x.dtype(), "layernorm", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::layernorm_forward(x.data<T>(), w.data<T>(), b.data<T>(), y.data<T>(),
                                    mean.data<T>(), rstd.data<T>(), M, C, eps);
  });
  const bool need_x = x.requires_grad(), need_w = w.requires_grad(), need_b = b.requires_grad();
  const Tensor sx = x.detach(), sw = w.detach();
  return make_result(
      y, "layernorm", {x, w, b},
      profile::timed([sx, sw, mean, rstd, M, C, need_x, need_w,
                      need_b](const Tensor& g) -> std::vector<Tensor> {
        Tensor dx = need_x ? Tensor::empty(sx.shape(), g.dtype(), g.device()) : Tensor();
        Tensor dw = need_w ? Tensor::empty({C}, g.dtype(), g.device()) : Tensor();
        Tensor db = need_b ? Tensor::empty({C}, g.dtype(), g.device()) : Tensor();
        dispatch_float(g.dtype(), "layernorm", [&](auto t) {
          using T = decltype(t);
          kernels::cpu::layernorm_backward(g.data<T>(), sx.data<T>(), sw.data<T>(), mean.data<T>(),
                                           rstd.data<T>(), need_x ? dx.data<T>() : nullptr,
                                           need_w ? dw.data<T>() : nullptr,
                                           need_b ? db.data<T>() : nullptr, M, C);
        });
        return {dx, dw, db};
      }));
}

}  // namespace pf::ops
