// cast: a differentiable dtype conversion (fp32 master weights → bf16 matmul inputs, and back).
//
//   y = round(x) to the target dtype (nearest even);   dx = g converted back to x's dtype
#include "framework/ops/common.h"
#include "framework/profile.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/elementwise.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {
// x converted to dtype on its own device (no autograd).
Tensor convert_raw(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    Tensor out = Tensor::empty(x.shape(), dtype, x.device());
    kernels::cuda::convert(scalar_type_of(x.dtype()), x.data_ptr(), scalar_type_of(dtype), out.data_ptr(),
                           x.numel());
    return out;
  }
#endif
  return x.to(dtype);
}
}  // namespace

// x:(...) → (...) of dtype
Tensor cast(const Tensor& x, DType dtype) {
  const profile::Scope ps("cast");
  check_defined(x, "cast", "x");
  PF_CHECK(is_floating(x.dtype()) && is_floating(dtype),
           "cast: converts between floating dtypes, got " << x.str() << " to " << dtype_name(dtype));
  if (x.dtype() == dtype) return x;
  Tensor out = convert_raw(x, dtype);
  const DType from = x.dtype();
  return make_result(out, "cast", {x}, profile::timed([from](const Tensor& g) -> std::vector<Tensor> {
                       return {convert_raw(g, from)};
                     }));
}

}  // namespace pf::ops
