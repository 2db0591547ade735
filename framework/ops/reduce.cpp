// Reductions: sum, mean (to a scalar) and sum_to (down to a broadcast shape).
//
//   sum:    y = Σ x            dx = g (broadcast to x's shape)
//   mean:   y = Σ x / n        dx = g / n
//   sum_to: y = x summed over the dims broadcast from `shape`;  dx = g broadcast back to x's shape
#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/reduce.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/reduce.h"
#endif

namespace pf::ops {

namespace detail {

Tensor reduce_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  Tensor out = Tensor::empty(shape, g.dtype(), g.device());
  const Shape out_strides = broadcast_strides(shape, g.shape());
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    kernels::cuda::sum_to(scalar_type_of(g.dtype()), g.data_ptr(), g.shape().data(), g.ndim(),
                          out_strides.data(), out.data_ptr(), out.numel());
    return out;
  }
#endif
  dispatch_float(g.dtype(), "sum_to", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::sum_to(g.data<T>(), g.shape().data(), g.ndim(), out_strides.data(), out.data<T>(),
                         out.numel());
  });
  return out;
}

Tensor expand_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  const Shape strides = broadcast_strides(x.shape(), shape);
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    kernels::cuda::strided_copy(x.data_ptr(), strides.data(), out.data_ptr(), shape.data(),
                                static_cast<int>(shape.size()), dtype_size(x.dtype()));
    return out;
  }
#endif
  kernels::cpu::strided_copy(x.data_ptr(), strides.data(), out.data_ptr(), shape.data(),
                             static_cast<int>(shape.size()), dtype_size(x.dtype()));
  return out;
}

}  // namespace detail

using namespace detail;

namespace {

// x:(...) → scalar Σ x · factor (accumulated in double), in x's dtype.
Tensor scaled_total(const Tensor& x, double factor, const char* op) {
  check_float(x, op, "x");
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {  // stays on the device: no wait
    Tensor out = Tensor::empty({}, x.dtype(), x.device());
    kernels::cuda::sum(scalar_type_of(x.dtype()), x.data_ptr(), x.numel(), scalar_type_of(x.dtype()),
                       out.data_ptr(), factor);
    return out;
  }
#endif
  const double total = dispatch_float(x.dtype(), op, [&](auto t) {
    using T = decltype(t);
    return kernels::cpu::sum(x.data<T>(), x.numel());
  });
  return Tensor::full({}, total * factor, x.dtype(), x.device());
}

// g:() → (shape) filled with g·factor; on the GPU without reading g back to the host.
Tensor broadcast_grad(const Tensor& g, const Shape& shape, double factor) {
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    Tensor out = Tensor::empty(shape, g.dtype(), g.device());
    kernels::cuda::broadcast_scalar(scalar_type_of(g.dtype()), out.data_ptr(), out.numel(),
                                    scalar_type_of(g.dtype()), g.data_ptr(), factor);
    return out;
  }
#endif
  return Tensor::full(shape, g.item() * factor, g.dtype(), g.device());
}

}  // namespace

// x:(...) → ()
Tensor sum(const Tensor& x) {
  const profile::Scope ps("elementwise");
  Tensor out = scaled_total(x, 1.0, "sum");
  const Shape shape = x.shape();
  return make_result(out, "sum", {x}, profile::timed([shape](const Tensor& g) -> std::vector<Tensor> {
                       return {broadcast_grad(g, shape, 1.0)};
                     }));
}

// x:(...) → ()
Tensor mean(const Tensor& x) {
  const profile::Scope ps("elementwise");
  check_float(x, "mean", "x");
  PF_CHECK(x.numel() > 0, "mean: x has no elements (" << x.str() << ")");
  const double inv_n = 1.0 / static_cast<double>(x.numel());
  Tensor out = scaled_total(x, inv_n, "mean");
  const Shape shape = x.shape();
  return make_result(out, "mean", {x}, profile::timed([shape, inv_n](const Tensor& g) -> std::vector<Tensor> {
                       return {broadcast_grad(g, shape, inv_n)};
                     }));
}

// x:(...) → shape, where shape broadcasts to x's shape
Tensor sum_to(const Tensor& x, const Shape& shape) {
  const profile::Scope ps("elementwise");
  check_float(x, "sum_to", "x");
  PF_CHECK(shape.size() <= x.shape().size(),
           "sum_to: target " << shape_str(shape) << " has more dims than x " << x.str());
  for (size_t i = 0; i < shape.size(); ++i) {
    const int64_t xd = x.shape()[x.shape().size() - shape.size() + i];
    PF_CHECK(shape[i] == xd || shape[i] == 1, "sum_to: target "
                                                  << shape_str(shape) << " does not broadcast to x's shape "
                                                  << shape_str(x.shape()) << " (dim " << i << ")");
  }
  Tensor out = reduce_to(x, shape);
  if (out.impl() == x.impl()) out = x.clone();  // a new tensor even when nothing is summed
  const Shape x_shape = x.shape();
  return make_result(out, "sum_to", {x}, profile::timed([x_shape](const Tensor& g) -> std::vector<Tensor> {
                       return {expand_to(g, x_shape)};
                     }));
}

// xs: tensors of one device → (Σ numel) F64, their elements in order
Tensor stack_scalars(const std::vector<Tensor>& xs) {
  PF_CHECK(!xs.empty(), "stack_scalars: no tensors");
  const Device device = xs[0].device();
  int64_t n = 0;
  for (const Tensor& x : xs) {
    PF_CHECK(x.defined() && x.device() == device &&
                 (x.dtype() == DType::F32 || x.dtype() == DType::F64 || x.dtype() == DType::I32),
             "stack_scalars: float32, float64 or int32 tensors on "
                 << device_name(device) << " expected, got " << (x.defined() ? x.str() : "none"));
    n += x.numel();
  }
  Tensor out = Tensor::empty({n}, DType::F64, device);
#ifdef PF_WITH_CUDA
  if (device == Device::CUDA) {
    std::vector<kernels::cuda::ScalarRef> refs;
    for (const Tensor& x : xs) {
      const auto kind = x.dtype() == DType::F32   ? kernels::cuda::ScalarRef::F32
                        : x.dtype() == DType::F64 ? kernels::cuda::ScalarRef::F64
                                                  : kernels::cuda::ScalarRef::I32;
      for (int64_t i = 0; i < x.numel(); ++i)
        refs.push_back({kind, static_cast<const char*>(x.data_ptr()) + i * dtype_size(x.dtype())});
    }
    kernels::cuda::gather_scalars(refs, static_cast<double*>(out.data_ptr()));
    return out;
  }
#endif
  int64_t k = 0;
  for (const Tensor& x : xs)
    for (double v : x.to_vector<double>()) out.data<double>()[k++] = v;
  return out;
}

}  // namespace pf::ops
