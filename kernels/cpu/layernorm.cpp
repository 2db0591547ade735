#include "kernels/cpu/layernorm.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace pf::kernels::cpu {

// Row statistics in the input type, two-pass (mean, then the mean of squared deviations):
// with C ≤ a few thousand the float sums lose < C·2⁻²⁴ relative, and the two-pass variance has
// no cancellation. `omp simd reduction` lets the row sums vectorise (a fixed reassociation).
template <class T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t M,
                       int64_t C, double eps) {
  const T inv_c = T(1) / static_cast<T>(C);
  parallel_range(M, 4 * C, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < C; ++c) s += xr[c];
      const T mu = s * inv_c;
      T v = 0;
#pragma omp simd reduction(+ : v)
      for (int64_t c = 0; c < C; ++c) v += (xr[c] - mu) * (xr[c] - mu);
      const T rs = T(1) / std::sqrt(v * inv_c + static_cast<T>(eps));
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mu) * rs * w[c] + b[c];
      mean[r] = mu;
      rstd[r] = rs;
    }
  });
}

template <class T>
void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                        T* dw, T* db, int64_t M, int64_t C) {
  const T inv_c = T(1) / static_cast<T>(C);
  const int nt = max_threads();
  const bool want_params = dw || db;
  // dw, db: one double partial per thread over its rows, added in thread order.
  std::vector<double> pw(want_params ? static_cast<size_t>(nt) * C : 0, 0.0);
  std::vector<double> pb(want_params ? static_cast<size_t>(nt) * C : 0, 0.0);
  parallel_range(M, 6 * C, [&](int64_t lo, int64_t hi) {
    double* aw = want_params ? pw.data() + static_cast<size_t>(thread_num()) * C : nullptr;
    double* ab = want_params ? pb.data() + static_cast<size_t>(thread_num()) * C : nullptr;
    for (int64_t r = lo; r < hi; ++r) {
      const T* xr = x + r * C;
      const T* gr = dy + r * C;
      const T mu = mean[r], rs = rstd[r];
      if (want_params) {
        for (int64_t c = 0; c < C; ++c) {
          aw[c] += static_cast<double>(gr[c]) * ((xr[c] - mu) * rs);
          ab[c] += gr[c];
        }
      }
      if (!dx) continue;
      T sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
      for (int64_t c = 0; c < C; ++c) {
        const T g = gr[c] * w[c];
        sg += g;
        sgx += g * ((xr[c] - mu) * rs);
      }
      const T mg = sg * inv_c, mgx = sgx * inv_c;
      T* dxr = dx + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const T xh = (xr[c] - mu) * rs;
        dxr[c] = rs * (gr[c] * w[c] - mg - xh * mgx);
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

#define PF_INSTANTIATE(T)                                                                      \
  template void layernorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, \
                                     double);                                                  \
  template void layernorm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*,  \
                                      T*, int64_t, int64_t);
PF_INSTANTIATE(float)
PF_INSTANTIATE(double)
#undef PF_INSTANTIATE

}  // namespace pf::kernels::cpu
