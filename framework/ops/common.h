// Shared by the op families in framework/ops/*.cpp (not a public header): input checks that
// name the op and the tensors, and the dtype dispatch to the templated CPU kernels.
#pragma once
#include <atomic>
#include <cstdio>
#include <string>
#include <type_traits>

#include "framework/autograd.h"
#include "framework/ops.h"
#include "framework/tensor.h"
#include "kernels/flash_bias_params.h"  // ScalarType

namespace pf::ops::detail {

// Errors unless t is defined.
inline void check_defined(const Tensor& t, const char* op, const char* name) {
  PF_CHECK(t.defined(), op << ": " << name << " is an undefined tensor");
}

// Errors unless t is a defined float32/float64 tensor (on the GPU: float32 or bfloat16).
inline void check_float(const Tensor& t, const char* op, const char* name) {
  check_defined(t, op, name);
  if (t.device() == Device::CUDA) {
    PF_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16,
             op << ": " << name << " on the GPU must be float32 or bfloat16, got " << t.str());
    return;
  }
  PF_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64,
           op << ": " << name << " must be float32 or float64, got " << t.str());
}

// The kernels' name for a dtype (floating dtypes only).
inline kernels::ScalarType scalar_type_of(DType t) {
  switch (t) {
    case DType::F64: return kernels::ScalarType::F64;
    case DType::BF16: return kernels::ScalarType::BF16;
    case DType::F16: return kernels::ScalarType::F16;
    default: return kernels::ScalarType::F32;
  }
}

// Errors unless a and b share dtype and device.
inline void check_same(const Tensor& a, const char* an, const Tensor& b, const char* bn, const char* op) {
  PF_CHECK(a.dtype() == b.dtype(), op << ": " << an << " and " << bn << " must have the same dtype, got "
                                      << a.str() << " and " << b.str());
  PF_CHECK(a.device() == b.device(), op << ": " << an << " and " << bn << " must be on the same device, got "
                                        << a.str() << " and " << b.str());
}

// Calls f(T{}) with T = float or double for a F32/F64 dtype.
template <class F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: return f(float{});
    case DType::F64: return f(double{});
    default: break;
  }
  PF_FAIL(op << ": no CPU kernel for dtype " << dtype_name(t) << " (float32 or float64 expected)");
}

// Row-major element strides of a contiguous tensor of `shape`.
inline Shape contiguous_strides(const Shape& shape) {
  Shape s(shape.size());
  int64_t acc = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

// Strides of a contiguous tensor of shape `from` read as the broadcast shape `to` (aligned on
// the right): 0 on the dims `from` lacks or has as 1.
inline Shape broadcast_strides(const Shape& from, const Shape& to) {
  const Shape cs = contiguous_strides(from);
  const size_t lead = to.size() - from.size();
  Shape s(to.size(), 0);
  for (size_t i = 0; i < from.size(); ++i) s[lead + i] = from[i] == 1 ? 0 : cs[i];
  return s;
}

// The sum of g down to `shape` (no autograd): the gradient of an input broadcast to g's shape.
Tensor reduce_to(const Tensor& g, const Shape& shape);
// x read as the broadcast shape `shape` (no autograd): a new contiguous tensor.
Tensor expand_to(const Tensor& x, const Shape& shape);

// Where an op runs another form of itself on the GPU (a size its kernel does not take), it says
// so on stderr once per process: `said` is the op's flag.
inline void note_once(std::atomic<bool>& said, const std::string& what) {
  if (!said.exchange(true)) std::fprintf(stderr, "note: %s\n", what.c_str());
}

}  // namespace pf::ops::detail
