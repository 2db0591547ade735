#include "kernels/cpu/layernorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace pf::kernels::cpu {

namespace {

// The row length: a compile-time constant for the common widths (the pair features have
// C = 16, the model C = 64), so that every per-row loop is fully unrolled and vectorised and the
// per-row scratch lives on the stack, or a runtime value otherwise.
template <int kC>
struct RowLen {
  constexpr int64_t operator()(int64_t) const { return kC; }
};
template <>
struct RowLen<0> {
  int64_t operator()(int64_t c) const { return c; }
};

// Scratch of one row's length.
template <class T, int kC>
struct RowBuf {
  explicit RowBuf(int64_t) {}
  T* data() { return v; }
  T v[kC];
};
template <class T>
struct RowBuf<T, 0> {
  explicit RowBuf(int64_t c) : v(c) {}
  T* data() { return v.data(); }
  std::vector<T> v;
};

// Rows per block of the forward: their 1/√(var + eps) are computed in one vectorised loop
// instead of a scalar sqrt and divide per row (1.25× faster; kernels/cpu/NOTES.md).
constexpr int kStatBlock = 16;

// Row statistics in the input type, two-pass (mean, then the mean of squared deviations):
// with C ≤ a few thousand the float sums lose < C·2⁻²⁴ relative, and the two-pass variance has
// no cancellation. `omp simd reduction` lets the row sums vectorise (a fixed reassociation).
template <class T, int kC>
void forward_rows(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t M, int64_t C_runtime,
                  double eps) {
  const int64_t C = RowLen<kC>()(C_runtime);
  const T inv_c = T(1) / static_cast<T>(C);
  const T eps_t = static_cast<T>(eps);
  parallel_range(M, 4 * C, [&](int64_t lo, int64_t hi) {
    for (int64_t r0 = lo; r0 < hi; r0 += kStatBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kStatBlock, hi - r0));
      T mu[kStatBlock], var[kStatBlock] = {}, rs[kStatBlock];
      for (int i = 0; i < n; ++i) {
        const T* xr = x + (r0 + i) * C;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < C; ++c) s += xr[c];
        const T m = s * inv_c;
        T v = 0;
#pragma omp simd reduction(+ : v)
        for (int64_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
        mu[i] = m;
        var[i] = v;
      }
#pragma omp simd
      for (int i = 0; i < kStatBlock; ++i) rs[i] = T(1) / std::sqrt(var[i] * inv_c + eps_t);
      for (int i = 0; i < n; ++i) {
        const T* xr = x + (r0 + i) * C;
        T* yr = y + (r0 + i) * C;
        const T m = mu[i], s = rs[i];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m) * s * w[c] + b[c];
        mean[r0 + i] = m;
        rstd[r0 + i] = s;
      }
    }
  });
}

// Rows per block whose dw/db contributions are summed in T before being added to the double
// totals: short enough for float (≤ 256 terms), long enough to amortise the conversion.
constexpr int64_t kParamBlock = 256;

template <class T, int kC>
void backward_rows(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw, T* db,
                   int64_t M, int64_t C_runtime) {
  const int64_t C = RowLen<kC>()(C_runtime);
  const T inv_c = T(1) / static_cast<T>(C);
  const int nt = max_threads();
  const bool want_params = dw || db;
  // dw, db: one double partial per thread over its rows, added in thread order.
  std::vector<double> pw(want_params ? static_cast<size_t>(nt) * C : 0, 0.0);
  std::vector<double> pb(want_params ? static_cast<size_t>(nt) * C : 0, 0.0);
  parallel_range(M, 6 * C, [&](int64_t lo, int64_t hi) {
    RowBuf<T, kC> xh_buf(C), g_buf(C), bw_buf(C), bb_buf(C);
    T* xh = xh_buf.data();  // x̂ of the current row
    // dy·w of the current row, rounded once and stored: dx subtracts its mean from the same
    // rounded values, so with C = 1 (or a constant row) dx is exactly 0 even where the compiler
    // fuses a product into the subtraction (FMA contraction under -march=native).
    T* g = g_buf.data();
    T* bw = bw_buf.data();  // Σ dy·x̂ over the current block of rows
    T* bb = bb_buf.data();  // Σ dy over the current block of rows
    double* aw = want_params ? pw.data() + static_cast<size_t>(thread_num()) * C : nullptr;
    double* ab = want_params ? pb.data() + static_cast<size_t>(thread_num()) * C : nullptr;
    for (int64_t r0 = lo; r0 < hi; r0 += kParamBlock) {
      const int64_t r1 = std::min(hi, r0 + kParamBlock);
      std::fill(bw, bw + C, T(0));
      std::fill(bb, bb + C, T(0));
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = x + r * C;
        const T* gr = dy + r * C;
        const T mu = mean[r], rs = rstd[r];
        T sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
        for (int64_t c = 0; c < C; ++c) {
          xh[c] = (xr[c] - mu) * rs;
          g[c] = gr[c] * w[c];
          sg += g[c];
          sgx += g[c] * xh[c];
          bw[c] += gr[c] * xh[c];
          bb[c] += gr[c];
        }
        if (!dx) continue;
        const T mg = sg * inv_c, mgx = sgx * inv_c;
        T* dxr = dx + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dxr[c] = rs * (g[c] - mg - xh[c] * mgx);
      }
      if (want_params)
        for (int64_t c = 0; c < C; ++c) {
          aw[c] += bw[c];
          ab[c] += bb[c];
        }
    }
  });
  if (!want_params) return;
  for (int64_t c = 0; c < C; ++c) {
    double sw = 0, sb = 0;
    for (int t = 0; t < nt; ++t) {
      sw += pw[static_cast<size_t>(t) * C + c];
      sb += pb[static_cast<size_t>(t) * C + c];
    }
    if (dw) dw[c] = static_cast<T>(sw);
    if (db) db[c] = static_cast<T>(sb);
  }
}

}  // namespace

template <class T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t M, int64_t C,
                       double eps) {
  switch (C) {
    case 16: return forward_rows<T, 16>(x, w, b, y, mean, rstd, M, C, eps);
    case 32: return forward_rows<T, 32>(x, w, b, y, mean, rstd, M, C, eps);
    case 64: return forward_rows<T, 64>(x, w, b, y, mean, rstd, M, C, eps);
    case 128: return forward_rows<T, 128>(x, w, b, y, mean, rstd, M, C, eps);
    default: return forward_rows<T, 0>(x, w, b, y, mean, rstd, M, C, eps);
  }
}

template <class T>
void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw,
                        T* db, int64_t M, int64_t C) {
  switch (C) {
    case 16: return backward_rows<T, 16>(dy, x, w, mean, rstd, dx, dw, db, M, C);
    case 32: return backward_rows<T, 32>(dy, x, w, mean, rstd, dx, dw, db, M, C);
    case 64: return backward_rows<T, 64>(dy, x, w, mean, rstd, dx, dw, db, M, C);
    case 128: return backward_rows<T, 128>(dy, x, w, mean, rstd, dx, dw, db, M, C);
    default: return backward_rows<T, 0>(dy, x, w, mean, rstd, dx, dw, db, M, C);
  }
}

#define PF_INSTANTIATE(T)                                                                                    \
  template void layernorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, double);    \
  template void layernorm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, \
                                      int64_t);
PF_INSTANTIATE(float)
PF_INSTANTIATE(double)
#undef PF_INSTANTIATE

}  // namespace pf::kernels::cpu
