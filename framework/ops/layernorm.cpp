// LayerNorm over the last dim: forward saves the row mean and 1/std; the backward
// (kernels/cpu/layernorm.h derives it) gives dx, dw and db in one pass over the rows.
#include "framework/ops/common.h"
#include "kernels/cpu/layernorm.h"

namespace pf::ops {

using namespace detail;

// x:(...,C) w:(C) b:(C) → (...,C)
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  check_float(x, "layernorm", "x");
  check_float(w, "layernorm", "w");
  check_float(b, "layernorm", "b");
  check_same(x, "x", w, "w", "layernorm");
  check_same(x, "x", b, "b", "layernorm");
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
  if (x.device() == Device::CUDA) PF_FAIL("layernorm: CUDA backend not built yet");
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
      [sx, sw, mean, rstd, M, C, need_x, need_w, need_b](const Tensor& g) -> std::vector<Tensor> {
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
      });
}

}  // namespace pf::ops
