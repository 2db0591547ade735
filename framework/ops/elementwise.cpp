// Elementwise ops: add, sub, mul (numpy broadcasting), scale, gelu; and the no-grad in-place
// updates and queries (add_, scale_, axpy_, sum_of_squares, all_finite).
//
// Backward, for out = a ∘ b broadcast to out's shape S and g = ∂L/∂out:
//   add: da = Σ→a g          db = Σ→b g           (Σ→x: sum over the dims x is broadcast along)
//   sub: da = Σ→a g          db = −Σ→b g
//   mul: da = Σ→a (g·b)      db = Σ→b (g·a)
//   scale: dx = s·g;   gelu: dx = g·(Φ(x) + x·φ(x))
#include <cmath>

#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/elementwise.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/context.h"
#include "kernels/cuda/elementwise.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {

// ---- the kernels of the tensors' device: CPU float32/float64, CUDA float32/bfloat16 ----------

// out = a ∘ b, a and b read through the broadcast strides sa, sb of out's shape.
void launch_binary(kernels::cpu::BinaryOp op, const Tensor& a, const Shape& sa, const Tensor& b,
                   const Shape& sb, Tensor& out, const char* name) {
  const Shape& shape = out.shape();
#ifdef PF_WITH_CUDA
  if (a.device() == Device::CUDA) {
    kernels::cuda::binary(op, scalar_type_of(a.dtype()), a.data_ptr(), sa.data(), b.data_ptr(), sb.data(),
                          out.data_ptr(), shape.data(), static_cast<int>(shape.size()));
    return;
  }
#endif
  dispatch_float(a.dtype(), name, [&](auto t) {
    using T = decltype(t);
    kernels::cpu::binary(op, a.data<T>(), sa.data(), b.data<T>(), sb.data(), out.data<T>(), shape.data(),
                         static_cast<int>(shape.size()));
  });
}

// out = x·s (out may be x itself).
void launch_scale(const Tensor& x, double s, Tensor& out, const char* name) {
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    kernels::cuda::scale(scalar_type_of(x.dtype()), x.data_ptr(), s, out.data_ptr(), x.numel());
    return;
  }
#endif
  dispatch_float(x.dtype(), name, [&](auto t) {
    using T = decltype(t);
    kernels::cpu::scale(x.data<T>(), static_cast<T>(s), out.data<T>(), x.numel());
  });
}

void launch_gelu_forward(const Tensor& x, Tensor& out) {
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    kernels::cuda::gelu_forward(scalar_type_of(x.dtype()), x.data_ptr(), out.data_ptr(), x.numel());
    return;
  }
#endif
  dispatch_float(x.dtype(), "gelu", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::gelu_forward(x.data<T>(), out.data<T>(), x.numel());
  });
}

void launch_gelu_backward(const Tensor& x, const Tensor& g, Tensor& dx) {
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    kernels::cuda::gelu_backward(scalar_type_of(g.dtype()), x.data_ptr(), g.data_ptr(), dx.data_ptr(),
                                 x.numel());
    return;
  }
#endif
  dispatch_float(x.dtype(), "gelu", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::gelu_backward(x.data<T>(), g.data<T>(), dx.data<T>(), x.numel());
  });
}

// ---- no autograd: what the forwards and the backwards share ------------------------------------

// out = a ∘ b with broadcasting.  a:(...) b:(...) → broadcast_shapes(a, b)
Tensor binary_raw(kernels::cpu::BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  check_float(a, name, "a");
  check_float(b, name, "b");
  check_same(a, "a", b, "b", name);
  const Shape shape = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  launch_binary(op, a, broadcast_strides(a.shape(), shape), b, broadcast_strides(b.shape(), shape), out,
                name);
  return out;
}

Tensor scale_raw(const Tensor& x, double s, const char* name) {
  check_float(x, name, "x");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  launch_scale(x, s, out, name);
  return out;
}

}  // namespace

// a:(...) b:(...) → broadcast shape
Tensor add(const Tensor& a, const Tensor& b) {
  const profile::Scope ps("elementwise");
  Tensor out = binary_raw(kernels::cpu::BinaryOp::Add, a, b, "add");
  const Shape sa = a.shape(), sb = b.shape();
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  return make_result(out, "add", {a, b},
                     profile::timed([sa, sb, need_a, need_b](const Tensor& g) -> std::vector<Tensor> {
                       return {need_a ? reduce_to(g, sa) : Tensor(), need_b ? reduce_to(g, sb) : Tensor()};
                     }));
}

// a:(...) b:(...) → broadcast shape
Tensor sub(const Tensor& a, const Tensor& b) {
  const profile::Scope ps("elementwise");
  Tensor out = binary_raw(kernels::cpu::BinaryOp::Sub, a, b, "sub");
  const Shape sa = a.shape(), sb = b.shape();
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  return make_result(out, "sub", {a, b},
                     profile::timed([sa, sb, need_a, need_b](const Tensor& g) -> std::vector<Tensor> {
                       return {need_a ? reduce_to(g, sa) : Tensor(),
                               need_b ? scale_raw(reduce_to(g, sb), -1.0, "sub") : Tensor()};
                     }));
}

// a:(...) b:(...) → broadcast shape
Tensor mul(const Tensor& a, const Tensor& b) {
  const profile::Scope ps("elementwise");
  Tensor out = binary_raw(kernels::cpu::BinaryOp::Mul, a, b, "mul");
  // Each gradient needs the other input; save it only if that gradient is wanted.
  const Tensor save_b = a.requires_grad() ? b.detach() : Tensor();
  const Tensor save_a = b.requires_grad() ? a.detach() : Tensor();
  const Shape sa = a.shape(), sb = b.shape();
  return make_result(out, "mul", {a, b},
                     profile::timed([save_a, save_b, sa, sb](const Tensor& g) -> std::vector<Tensor> {
                       using kernels::cpu::BinaryOp;
                       Tensor da, db;
                       if (save_b.defined()) da = reduce_to(binary_raw(BinaryOp::Mul, g, save_b, "mul"), sa);
                       if (save_a.defined()) db = reduce_to(binary_raw(BinaryOp::Mul, g, save_a, "mul"), sb);
                       return {da, db};
                     }));
}

// x:(...) → (...)
Tensor scale(const Tensor& x, double s) {
  const profile::Scope ps("elementwise");
  Tensor out = scale_raw(x, s, "scale");
  return make_result(out, "scale", {x}, profile::timed([s](const Tensor& g) -> std::vector<Tensor> {
                       return {scale_raw(g, s, "scale")};
                     }));
}

// x:(...) → (...)
Tensor gelu(const Tensor& x) {
  const profile::Scope ps("elementwise");
  check_float(x, "gelu", "x");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  launch_gelu_forward(x, out);
  const Tensor saved_x = x.detach();
  return make_result(out, "gelu", {x}, profile::timed([saved_x](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dx = Tensor::empty(saved_x.shape(), saved_x.dtype(), saved_x.device());
                       launch_gelu_backward(saved_x, g, dx);
                       return {dx};
                     }));
}

// ---- no grad ----------------------------------------------------------------------------------

namespace {
void check_inplace(const Tensor& dst, const Tensor& src, const char* op) {
  check_float(dst, op, "dst");
  check_float(src, op, "src");
  check_same(dst, "dst", src, "src", op);
  PF_CHECK(dst.shape() == src.shape(),
           op << ": dst " << dst.str() << " and src " << src.str() << " must have the same shape");
}
}  // namespace

// dst:(...) += src:(...)
void add_(Tensor& dst, const Tensor& src) { axpy_(dst, 1.0, src); }

// x:(...) *= s
void scale_(Tensor& x, double s) {
  const profile::Scope ps("elementwise");
  check_float(x, "scale_", "x");
  launch_scale(x, s, x, "scale_");
}

// y:(...) += alpha·x:(...)
void axpy_(Tensor& y, double alpha, const Tensor& x) {
  const profile::Scope ps("elementwise");
  check_inplace(y, x, "axpy_");
#ifdef PF_WITH_CUDA
  if (y.device() == Device::CUDA) {
    kernels::cuda::axpy(scalar_type_of(y.dtype()), y.data_ptr(), alpha, x.data_ptr(), y.numel());
    return;
  }
#endif
  dispatch_float(y.dtype(), "axpy_", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::axpy(y.data<T>(), static_cast<T>(alpha), x.data<T>(), y.numel());
  });
}

// x:(...) → Σ x²
double sum_of_squares(const Tensor& x) {
  check_float(x, "sum_of_squares", "x");
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {  // waits for the result
    Tensor acc = Tensor::empty({}, DType::F64, Device::CUDA);
    kernels::cuda::memset_zero(acc.data_ptr(), sizeof(double));
    kernels::cuda::sum_of_squares(scalar_type_of(x.dtype()), x.data_ptr(), x.numel(),
                                  static_cast<double*>(acc.data_ptr()));
    return acc.item();
  }
#endif
  return dispatch_float(x.dtype(), "sum_of_squares", [&](auto t) {
    using T = decltype(t);
    return kernels::cpu::sum_of_squares(x.data<T>(), x.numel());
  });
}

// x:(...) → no NaN/inf
bool all_finite(const Tensor& x) {
  check_float(x, "all_finite", "x");
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {  // waits for the result
    Tensor flag = Tensor::full({}, 1.0, DType::I32, Device::CUDA);
    kernels::cuda::all_finite(scalar_type_of(x.dtype()), x.data_ptr(), x.numel(),
                              static_cast<int*>(flag.data_ptr()));
    return flag.item() != 0;
  }
#endif
  return dispatch_float(x.dtype(), "all_finite", [&](auto t) {
    using T = decltype(t);
    return kernels::cpu::all_finite(x.data<T>(), x.numel());
  });
}

}  // namespace pf::ops
