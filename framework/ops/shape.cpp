// Shape ops: reshape and unbind (share storage), permute and transpose (copy).
//
//   reshape: dx = g viewed as x's shape;   permute by p: dx = permute(g, p⁻¹)
//   unbind:  dx[i] = g_i (the slices' gradients, zero where none arrives)
#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/permute.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/permute.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {
// out = x permuted by perm (no autograd), on x's device.
void permute_raw(const Tensor& x, const std::vector<int>& perm, Tensor& out) {
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    kernels::cuda::permute(x.data_ptr(), x.shape().data(), x.ndim(), perm.data(), out.data_ptr(),
                           dtype_size(x.dtype()));
    return;
  }
#endif
  kernels::cpu::permute(x.data_ptr(), x.shape().data(), x.ndim(), perm.data(), out.data_ptr(),
                        dtype_size(x.dtype()));
}
}  // namespace

// x:(...) → shape (one entry may be −1: inferred)
Tensor reshape(const Tensor& x, const Shape& shape) {
  check_defined(x, "reshape", "x");
  Shape target = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < target.size(); ++i) {
    if (target[i] == -1) {
      PF_CHECK(infer < 0, "reshape: more than one -1 in " << shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      PF_CHECK(target[i] >= 0, "reshape: negative size in " << shape_str(shape));
      known *= target[i];
    }
  }
  if (infer >= 0) {
    PF_CHECK(known > 0 && x.numel() % known == 0,
             "reshape: cannot infer the -1 of " << shape_str(shape) << " for " << x.str());
    target[infer] = x.numel() / known;
  }
  PF_CHECK(shape_numel(target) == x.numel(), "reshape: " << shape_str(shape) << " holds "
                                                         << shape_numel(target) << " elements, x " << x.str()
                                                         << " has " << x.numel());
  Tensor out = x.view(target);
  const Shape x_shape = x.shape();
  return make_result(out, "reshape", {x},
                     [x_shape](const Tensor& g) -> std::vector<Tensor> { return {g.view(x_shape)}; });
}

// x:(d0..dn−1) → (d_dims[0], ..., d_dims[n−1]); dims may count from the end (−1 = last)
Tensor permute(const Tensor& x, const std::vector<int>& dims) {
  const profile::Scope ps("permute");
  check_defined(x, "permute", "x");
  const int n = x.ndim();
  PF_CHECK(static_cast<int>(dims.size()) == n,
           "permute: " << dims.size() << " dims given for x " << x.str() << " of " << n << " dims");
  std::vector<int> perm(n), inverse(n, -1);
  for (int i = 0; i < n; ++i) {
    const int d = dims[i] < 0 ? dims[i] + n : dims[i];
    PF_CHECK(d >= 0 && d < n, "permute: dim " << dims[i] << " out of range for x " << x.str());
    PF_CHECK(inverse[d] < 0, "permute: dim " << dims[i] << " appears twice; dims must be a "
                                             << "permutation of 0.." << n - 1);
    perm[i] = d;
    inverse[d] = i;
  }
  Shape out_shape(n);
  for (int i = 0; i < n; ++i) out_shape[i] = x.shape()[perm[i]];
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  permute_raw(x, perm, out);
  return make_result(out, "permute", {x}, profile::timed([inverse](const Tensor& g) -> std::vector<Tensor> {
                       Shape shape(g.ndim());
                       std::vector<int> p = inverse;
                       for (int i = 0; i < g.ndim(); ++i) shape[i] = g.shape()[p[i]];
                       Tensor dx = Tensor::empty(shape, g.dtype(), g.device());
                       permute_raw(g, p, dx);
                       return {dx};
                     }));
}

// x:(...) → x with dims d0 and d1 swapped (may count from the end)
Tensor transpose(const Tensor& x, int d0, int d1) {
  check_defined(x, "transpose", "x");
  const int n = x.ndim();
  const int a = d0 < 0 ? d0 + n : d0, b = d1 < 0 ? d1 + n : d1;
  PF_CHECK(a >= 0 && a < n && b >= 0 && b < n,
           "transpose: dims (" << d0 << ", " << d1 << ") out of range for x " << x.str());
  std::vector<int> perm(n);
  for (int i = 0; i < n; ++i) perm[i] = i;
  std::swap(perm[a], perm[b]);
  return permute(x, perm);
}

// x:(n,...) → x[0], …, x[n − 1]
std::vector<Tensor> unbind(const Tensor& x) {
  check_defined(x, "unbind", "x");
  PF_CHECK(x.ndim() >= 1, "unbind: x must have a leading dim, got " << x.str());
  const Shape shape = x.shape();
  const DType dtype = x.dtype();
  const Device device = x.device();
  std::vector<Tensor> out;
  for (int64_t i = 0; i < x.size(0); ++i)
    out.push_back(make_result_into(
        x.select(i), "unbind", {x},
        profile::timed([=](const Tensor& g, const std::vector<Tensor>& into) -> std::vector<Tensor> {
          // slice i of x's gradient sum: added into where autograd holds one, else a fresh zero sum
          if (into[0].defined()) {
            Tensor part = into[0].select(i);
            add_(part, g);
            return {into[0]};
          }
          Tensor sum = Tensor::zeros(shape, dtype, device);
          sum.select(i).copy_(g);
          return {sum};
        })));
  return out;
}

}  // namespace pf::ops
