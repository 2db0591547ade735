// Matrix products: matmul (batched, optional transposes) and linear.
//
// matmul: C = op(A)·op(B) per batch, op(X) = X or Xᵀ. With G = ∂L/∂C:
//   dA = G·op(B)ᵀ          (stored as op(B)·Gᵀ when A is given transposed)
//   dB = op(A)ᵀ·G          (stored as Gᵀ·op(A) when B is given transposed), summed over the
//                          batch when B is one 2-D matrix shared by every batch
// linear: y = x·wᵀ + b on x viewed as (M, in):  dx = G·w,  dw = Gᵀ·x,  db = Σ_rows G
#include <algorithm>

#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/matmul.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/reduce.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {

// The (batch, M, N, K) of a matmul and whether b is batched; validates the shapes.
struct MatmulDims {
  int64_t batch = 1, M = 0, N = 0, K = 0;
  bool b_batched = false;
  Shape out_shape;
};

MatmulDims matmul_dims(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  PF_CHECK(a.ndim() >= 2, "matmul: a must be (...,M,K) with at least 2 dims, got " << a.str());
  PF_CHECK(b.ndim() >= 2, "matmul: b must be (...,K,N) with at least 2 dims, got " << b.str());
  MatmulDims d;
  const int64_t a0 = a.size(-2), a1 = a.size(-1), b0 = b.size(-2), b1 = b.size(-1);
  d.M = ta ? a1 : a0;
  d.K = ta ? a0 : a1;
  d.N = tb ? b0 : b1;
  const int64_t kb = tb ? b1 : b0;
  PF_CHECK(d.K == kb, "matmul: inner dims differ: a "
                          << shape_str(a.shape()) << (ta ? " (transposed)" : "")
                          << " gives K=" << d.K << ", b " << shape_str(b.shape())
                          << (tb ? " (transposed)" : "") << " gives K=" << kb);
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2);
  const Shape b_batch(b.shape().begin(), b.shape().end() - 2);
  d.b_batched = b.ndim() > 2;
  PF_CHECK(!d.b_batched || a_batch == b_batch,
           "matmul: batch dims must be equal or b must be 2-D, got a "
               << shape_str(a.shape()) << " and b " << shape_str(b.shape()));
  d.batch = shape_numel(a_batch);
  d.out_shape = a_batch;
  d.out_shape.push_back(d.M);
  d.out_shape.push_back(d.N);
  return d;
}

}  // namespace

// a:(...,M,K)|(...,K,M) b:(...,K,N)|(...,N,K)|(K,N)|(N,K) → (...,M,N)
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const profile::Scope ps("gemm");
  check_float(a, "matmul", "a");
  check_float(b, "matmul", "b");
  check_same(a, "a", b, "b", "matmul");
  const MatmulDims d = matmul_dims(a, b, trans_a, trans_b);
  Tensor out = Tensor::empty(d.out_shape, a.dtype(), a.device());
#ifdef PF_WITH_CUDA
  if (a.device() == Device::CUDA)
    kernels::cuda::gemm(scalar_type_of(a.dtype()), d.batch, d.M, d.N, d.K, a.data_ptr(), true,
                        trans_a, b.data_ptr(), d.b_batched, trans_b, out.data_ptr(), true, false);
  else
#endif
  dispatch_float(a.dtype(), "matmul", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::gemm<T>(d.batch, d.M, d.N, d.K, a.data<T>(), true, trans_a, b.data<T>(),
                          d.b_batched, trans_b, out.data<T>(), true, false);
  });
  const Tensor sa = b.requires_grad() ? a.detach() : Tensor();  // dB needs A
  const Tensor sb = a.requires_grad() ? b.detach() : Tensor();  // dA needs B
  const Shape a_shape = a.shape(), b_shape = b.shape();
  return make_result(
      out, "matmul", {a, b},
      profile::timed([sa, sb, a_shape, b_shape, d, trans_a,
                      trans_b](const Tensor& g) -> std::vector<Tensor> {
        Tensor da, db;
#ifdef PF_WITH_CUDA
        if (g.device() == Device::CUDA) {  // the same products as the CPU path below
          const auto st = scalar_type_of(g.dtype());
          if (sb.defined()) {
            da = Tensor::empty(a_shape, g.dtype(), g.device());
            if (!trans_a)
              kernels::cuda::gemm(st, d.batch, d.M, d.K, d.N, g.data_ptr(), true, false,
                                  sb.data_ptr(), d.b_batched, !trans_b, da.data_ptr(), true, false);
            else
              kernels::cuda::gemm(st, d.batch, d.K, d.M, d.N, sb.data_ptr(), d.b_batched, trans_b,
                                  g.data_ptr(), true, true, da.data_ptr(), true, false);
          }
          if (sa.defined()) {
            db = Tensor::empty(b_shape, g.dtype(), g.device());
            if (!trans_b)
              kernels::cuda::gemm(st, d.batch, d.K, d.N, d.M, sa.data_ptr(), true, !trans_a,
                                  g.data_ptr(), true, false, db.data_ptr(), d.b_batched, false);
            else
              kernels::cuda::gemm(st, d.batch, d.N, d.K, d.M, g.data_ptr(), true, true,
                                  sa.data_ptr(), true, trans_a, db.data_ptr(), d.b_batched, false);
          }
          return {da, db};
        }
#endif
        dispatch_float(g.dtype(), "matmul", [&](auto t) {
          using T = decltype(t);
          const T* gp = g.data<T>();
          if (sb.defined()) {
            da = Tensor::empty(a_shape, g.dtype(), g.device());
            if (!trans_a)  // dA (M,K) = G·op(B)ᵀ
              kernels::cpu::gemm<T>(d.batch, d.M, d.K, d.N, gp, true, false, sb.data<T>(),
                                    d.b_batched, !trans_b, da.data<T>(), true, false);
            else  // dA (K,M) = op(B)·Gᵀ
              kernels::cpu::gemm<T>(d.batch, d.K, d.M, d.N, sb.data<T>(), d.b_batched, trans_b, gp,
                                    true, true, da.data<T>(), true, false);
          }
          if (sa.defined()) {
            db = Tensor::empty(b_shape, g.dtype(), g.device());
            if (!trans_b)  // dB (K,N) = op(A)ᵀ·G
              kernels::cpu::gemm<T>(d.batch, d.K, d.N, d.M, sa.data<T>(), true, !trans_a, gp, true,
                                    false, db.data<T>(), d.b_batched, false);
            else  // dB (N,K) = Gᵀ·op(A)
              kernels::cpu::gemm<T>(d.batch, d.N, d.K, d.M, gp, true, true, sa.data<T>(), true,
                                    trans_a, db.data<T>(), d.b_batched, false);
          }
        });
        return {da, db};
      }));
}

// x:(...,in) w:(out,in) b:(out) or undefined → (...,out)
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const profile::Scope ps("gemm");
  check_float(x, "linear", "x");
  check_float(w, "linear", "w");
  check_same(x, "x", w, "w", "linear");
  PF_CHECK(w.ndim() == 2, "linear: w must be (out,in), got " << w.str());
  PF_CHECK(x.ndim() >= 1 && x.size(-1) == w.size(1),
           "linear: x must be (...," << w.size(1) << ") to match w " << shape_str(w.shape())
                                     << ", got " << x.str());
  const int64_t in = w.size(1), out_f = w.size(0), M = x.numel() / std::max<int64_t>(in, 1);
  if (b.defined()) {
    check_float(b, "linear", "b");
    check_same(x, "x", b, "b", "linear");
    PF_CHECK(b.shape() == Shape{out_f}, "linear: b must be (" << out_f << ") to match w "
                                                              << shape_str(w.shape()) << ", got "
                                                              << b.str());
  }
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    const auto st = scalar_type_of(x.dtype());
    kernels::cuda::gemm(st, 1, M, out_f, in, x.data_ptr(), false, false, w.data_ptr(), false, true,
                        y.data_ptr(), false, false);
    if (b.defined()) kernels::cuda::add_row_vector(st, y.data_ptr(), b.data_ptr(), M, out_f);
  } else
#endif
  dispatch_float(x.dtype(), "linear", [&](auto t) {
    using T = decltype(t);
    // One GEMM over all rows: (M,in)·(out,in)ᵀ.
    kernels::cpu::gemm<T>(1, M, out_f, in, x.data<T>(), false, false, w.data<T>(), false, true,
                          y.data<T>(), false, false);
    if (b.defined()) kernels::cpu::add_row_vector(y.data<T>(), b.data<T>(), M, out_f);
  });
  const Tensor sx = w.requires_grad() ? x.detach() : Tensor();  // dw needs x
  const Tensor sw = x.requires_grad() ? w.detach() : Tensor();  // dx needs w
  const bool need_b = b.defined() && b.requires_grad();
  const Shape x_shape = x.shape(), w_shape = w.shape();
  return make_result(
      y, "linear", {x, w, b},
      profile::timed([sx, sw, need_b, x_shape, w_shape, M, in,
                      out_f](const Tensor& g) -> std::vector<Tensor> {
        Tensor dx, dw, db;
#ifdef PF_WITH_CUDA
        if (g.device() == Device::CUDA) {  // the same products as the CPU path below
          const auto st = scalar_type_of(g.dtype());
          if (sw.defined()) {
            dx = Tensor::empty(x_shape, g.dtype(), g.device());
            kernels::cuda::gemm(st, 1, M, in, out_f, g.data_ptr(), false, false, sw.data_ptr(),
                                false, false, dx.data_ptr(), false, false);
          }
          if (sx.defined()) {
            dw = Tensor::empty(w_shape, g.dtype(), g.device());
            kernels::cuda::gemm(st, 1, out_f, in, M, g.data_ptr(), false, true, sx.data_ptr(),
                                false, false, dw.data_ptr(), false, false);
          }
          if (need_b) {  // column sums of G (M,out)
            db = Tensor::empty({out_f}, g.dtype(), g.device());
            const int64_t shape2[2] = {M, out_f}, out_stride[2] = {0, 1};
            kernels::cuda::sum_to(st, g.data_ptr(), shape2, 2, out_stride, db.data_ptr(), out_f);
          }
          return {dx, dw, db};
        }
#endif
        dispatch_float(g.dtype(), "linear", [&](auto t) {
          using T = decltype(t);
          const T* gp = g.data<T>();
          if (sw.defined()) {  // dx (M,in) = G (M,out) · w (out,in)
            dx = Tensor::empty(x_shape, g.dtype(), g.device());
            kernels::cpu::gemm<T>(1, M, in, out_f, gp, false, false, sw.data<T>(), false, false,
                                  dx.data<T>(), false, false);
          }
          if (sx.defined()) {  // dw (out,in) = Gᵀ (out,M) · x (M,in)
            dw = Tensor::empty(w_shape, g.dtype(), g.device());
            kernels::cpu::gemm<T>(1, out_f, in, M, gp, false, true, sx.data<T>(), false, false,
                                  dw.data<T>(), false, false);
          }
          if (need_b) {
            db = Tensor::empty({out_f}, g.dtype(), g.device());
            kernels::cpu::column_sums(gp, M, out_f, db.data<T>());
          }
        });
        return {dx, dw, db};
      }));
}

}  // namespace pf::ops
