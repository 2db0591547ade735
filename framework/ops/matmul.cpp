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
  PF_CHECK(d.K == kb, "matmul: inner dims differ: a " << shape_str(a.shape()) << (ta ? " (transposed)" : "")
                                                      << " gives K=" << d.K << ", b " << shape_str(b.shape())
                                                      << (tb ? " (transposed)" : "") << " gives K=" << kb);
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2);
  const Shape b_batch(b.shape().begin(), b.shape().end() - 2);
  d.b_batched = b.ndim() > 2;
  PF_CHECK(!d.b_batched || a_batch == b_batch, "matmul: batch dims must be equal or b must be 2-D, got a "
                                                   << shape_str(a.shape()) << " and b "
                                                   << shape_str(b.shape()));
  d.batch = shape_numel(a_batch);
  d.out_shape = a_batch;
  d.out_shape.push_back(d.M);
  d.out_shape.push_back(d.N);
  return d;
}

// ---- the kernels of the tensors' device: CPU float32/float64, CUDA float32/bfloat16 (cuBLAS) --

// c = op(a)·op(b), batched over `batch` where *_batched (else one matrix shared by every batch).
void launch_gemm(int64_t batch, int64_t M, int64_t N, int64_t K, const Tensor& a, bool a_batched,
                 bool trans_a, const Tensor& b, bool b_batched, bool trans_b, Tensor& c, bool c_batched) {
#ifdef PF_WITH_CUDA
  if (c.device() == Device::CUDA) {
    kernels::cuda::gemm(scalar_type_of(c.dtype()), batch, M, N, K, a.data_ptr(), a_batched, trans_a,
                        b.data_ptr(), b_batched, trans_b, c.data_ptr(), c_batched, false);
    return;
  }
#endif
  dispatch_float(c.dtype(), "gemm", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::gemm<T>(batch, M, N, K, a.data<T>(), a_batched, trans_a, b.data<T>(), b_batched, trans_b,
                          c.data<T>(), c_batched, false);
  });
}

// y[r, :] += bias for every row.  y:(rows, n) bias:(n)
void launch_add_row_vector(Tensor& y, const Tensor& bias, int64_t rows, int64_t n) {
#ifdef PF_WITH_CUDA
  if (y.device() == Device::CUDA) {
    kernels::cuda::add_row_vector(scalar_type_of(y.dtype()), y.data_ptr(), bias.data_ptr(), rows, n);
    return;
  }
#endif
  dispatch_float(y.dtype(), "linear", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::add_row_vector(y.data<T>(), bias.data<T>(), rows, n);
  });
}

// out = Σ_rows x[r, :].  x:(rows, n) out:(n)
void launch_column_sums(const Tensor& x, int64_t rows, int64_t n, Tensor& out) {
#ifdef PF_WITH_CUDA
  if (x.device() == Device::CUDA) {
    const int64_t shape2[2] = {rows, n}, out_stride[2] = {0, 1};
    kernels::cuda::sum_to(scalar_type_of(x.dtype()), x.data_ptr(), shape2, 2, out_stride, out.data_ptr(), n);
    return;
  }
#endif
  dispatch_float(x.dtype(), "linear", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::column_sums(x.data<T>(), rows, n, out.data<T>());
  });
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
  launch_gemm(d.batch, d.M, d.N, d.K, a, true, trans_a, b, d.b_batched, trans_b, out, true);
  const Tensor sa = b.requires_grad() ? a.detach() : Tensor();  // dB needs A
  const Tensor sb = a.requires_grad() ? b.detach() : Tensor();  // dA needs B
  const Shape a_shape = a.shape(), b_shape = b.shape();
  return make_result(
      out, "matmul", {a, b},
      profile::timed([sa, sb, a_shape, b_shape, d, trans_a, trans_b](const Tensor& g) -> std::vector<Tensor> {
        Tensor da, db;
        if (sb.defined()) {
          da = Tensor::empty(a_shape, g.dtype(), g.device());
          if (!trans_a)  // dA (M,K) = G·op(B)ᵀ
            launch_gemm(d.batch, d.M, d.K, d.N, g, true, false, sb, d.b_batched, !trans_b, da, true);
          else  // dA (K,M) = op(B)·Gᵀ
            launch_gemm(d.batch, d.K, d.M, d.N, sb, d.b_batched, trans_b, g, true, true, da, true);
        }
        if (sa.defined()) {
          db = Tensor::empty(b_shape, g.dtype(), g.device());
          if (!trans_b)  // dB (K,N) = op(A)ᵀ·G
            launch_gemm(d.batch, d.K, d.N, d.M, sa, true, !trans_a, g, true, false, db, d.b_batched);
          else  // dB (N,K) = Gᵀ·op(A)
            launch_gemm(d.batch, d.N, d.K, d.M, g, true, true, sa, true, trans_a, db, d.b_batched);
        }
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
  PF_CHECK(x.ndim() >= 1 && x.size(-1) == w.size(1), "linear: x must be (...," << w.size(1) << ") to match w "
                                                                               << shape_str(w.shape())
                                                                               << ", got " << x.str());
  const int64_t in = w.size(1), out_f = w.size(0), M = x.numel() / std::max<int64_t>(in, 1);
  if (b.defined()) {
    check_float(b, "linear", "b");
    check_same(x, "x", b, "b", "linear");
    PF_CHECK(b.shape() == Shape{out_f}, "linear: b must be (" << out_f << ") to match w "
                                                              << shape_str(w.shape()) << ", got " << b.str());
  }
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  // One GEMM over all rows: (M,in)·(out,in)ᵀ.
  launch_gemm(1, M, out_f, in, x, false, false, w, false, true, y, false);
  if (b.defined()) launch_add_row_vector(y, b, M, out_f);
  const Tensor sx = w.requires_grad() ? x.detach() : Tensor();  // dw needs x
  const Tensor sw = x.requires_grad() ? w.detach() : Tensor();  // dx needs w
  const bool need_b = b.defined() && b.requires_grad();
  const Shape x_shape = x.shape(), w_shape = w.shape();
  return make_result(y, "linear", {x, w, b},
                     profile::timed([sx, sw, need_b, x_shape, w_shape, M, in,
                                     out_f](const Tensor& g) -> std::vector<Tensor> {
                       Tensor dx, dw, db;
                       if (sw.defined()) {  // dx (M,in) = G (M,out) · w (out,in)
                         dx = Tensor::empty(x_shape, g.dtype(), g.device());
                         launch_gemm(1, M, in, out_f, g, false, false, sw, false, false, dx, false);
                       }
                       if (sx.defined()) {  // dw (out,in) = Gᵀ (out,M) · x (M,in)
                         dw = Tensor::empty(w_shape, g.dtype(), g.device());
                         launch_gemm(1, out_f, in, M, g, false, true, sx, false, false, dw, false);
                       }
                       if (need_b) {  // column sums of G (M,out)
                         db = Tensor::empty({out_f}, g.dtype(), g.device());
                         launch_column_sums(g, M, out_f, db);
                       }
                       return {dx, dw, db};
                     }));
}

}  // namespace pf::ops
