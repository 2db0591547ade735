#include "kernels/cpu/fused.h"

#include <cmath>
#include <vector>

#include "kernels/check.h"

#include "kernels/cpu/parallel.h"

namespace pf::kernels::cpu {

namespace {

// x̂ of one row of z (C values) into xh; returns r = 1/√(var + eps). Two-pass statistics in T.
template <class T>
T normalise_row(const T* zr, int64_t C, double eps, T* xh) {
  T s = 0;
  for (int64_t c = 0; c < C; ++c) s += zr[c];
  const T mu = s / static_cast<T>(C);
  T v = 0;
  for (int64_t c = 0; c < C; ++c) v += (zr[c] - mu) * (zr[c] - mu);
  const T r = T(1) / std::sqrt(v / static_cast<T>(C) + static_cast<T>(eps));
  for (int64_t c = 0; c < C; ++c) xh[c] = (zr[c] - mu) * r;
  return r;
}

}  // namespace

template <class T>
void pair_bias_forward(const T* z, const T* gamma, const T* beta, const T* w, T* out, int64_t B, int64_t N,
                       int64_t M, int64_t C, int64_t H, double eps) {
  const int64_t NM = N * M;
  parallel_range(B * NM, 4 * C * (H + 2), [&](int64_t lo, int64_t hi) {
    std::vector<T> xh(C), n(C);
    for (int64_t row = lo; row < hi; ++row) {
      const int64_t b = row / NM, ij = row % NM;
      normalise_row(z + row * C, C, eps, xh.data());
      for (int64_t c = 0; c < C; ++c) n[c] = xh[c] * gamma[c] + beta[c];
      for (int64_t h = 0; h < H; ++h) {
        T acc = 0;
        for (int64_t c = 0; c < C; ++c) acc += w[h * C + c] * n[c];
        out[(b * H + h) * NM + ij] = acc;
      }
    }
  });
}

template <class T>
void pair_bias_backward(const T* g, const T* z, const T* gamma, const T* beta, const T* w, T* dz, T* dgamma,
                        T* dbeta, T* dw, int64_t B, int64_t N, int64_t M, int64_t C, int64_t H, double eps,
                        bool accumulate_dz) {
  const int64_t NM = N * M;
  const int nt = max_threads();
  const bool want_params = dgamma || dbeta || dw;
  // Per thread: dW (H·C), dγ (C), dβ (C) in double.
  const int64_t P = H * C + 2 * C;
  std::vector<double> partial(want_params ? static_cast<size_t>(nt) * P : 0, 0.0);
  parallel_range(B * NM, 6 * C * (H + 2), [&](int64_t lo, int64_t hi) {
    std::vector<T> xh(C), n(C), dn(C), dy(H);
    double* acc = want_params ? partial.data() + static_cast<size_t>(thread_num()) * P : nullptr;
    for (int64_t row = lo; row < hi; ++row) {
      const int64_t b = row / NM, ij = row % NM;
      const T r = normalise_row(z + row * C, C, eps, xh.data());
      for (int64_t h = 0; h < H; ++h) dy[h] = g[(b * H + h) * NM + ij];
      for (int64_t c = 0; c < C; ++c) {
        n[c] = xh[c] * gamma[c] + beta[c];
        T s = 0;
        for (int64_t h = 0; h < H; ++h) s += dy[h] * w[h * C + c];
        dn[c] = s;
      }
      if (acc) {
        for (int64_t h = 0; h < H; ++h)
          for (int64_t c = 0; c < C; ++c) acc[h * C + c] += double(dy[h]) * double(n[c]);
        for (int64_t c = 0; c < C; ++c) {
          acc[H * C + c] += double(dn[c]) * double(xh[c]);
          acc[H * C + C + c] += double(dn[c]);
        }
      }
      if (!dz) continue;
      // dx̂ = dn·γ, rounded once and stored (in n, no longer needed): dz subtracts the mean of
      // the same rounded values, so a row with C = 1 gets exactly 0 under FMA contraction too.
      T s1 = 0, s2 = 0;  // Σ dx̂, Σ dx̂·x̂
      for (int64_t c = 0; c < C; ++c) {
        n[c] = dn[c] * gamma[c];
        s1 += n[c];
        s2 += n[c] * xh[c];
      }
      const T m1 = s1 / static_cast<T>(C), m2 = s2 / static_cast<T>(C);
      T* dzr = dz + row * C;
      if (accumulate_dz)
        for (int64_t c = 0; c < C; ++c) dzr[c] += r * (n[c] - m1 - xh[c] * m2);
      else
        for (int64_t c = 0; c < C; ++c) dzr[c] = r * (n[c] - m1 - xh[c] * m2);
    }
  });
  if (!want_params) return;
  for (int64_t p = 0; p < P; ++p) {
    double s = 0;
    for (int t = 0; t < nt; ++t) s += partial[static_cast<size_t>(t) * P + p];
    if (p < H * C) {
      if (dw) dw[p] = static_cast<T>(s);
    } else if (p < H * C + C) {
      if (dgamma) dgamma[p - H * C] = static_cast<T>(s);
    } else if (dbeta) {
      dbeta[p - H * C - C] = static_cast<T>(s);
    }
  }
}

namespace {
void check_index(int32_t v, int64_t V, const char* table, int64_t at) {
  PF_CHECK(v >= 0 && v < V, "embedding_sum: index " << v << " of table " << table << " at position " << at
                                                    << " is outside [0, " << V << ")");
}
}  // namespace

template <class T>
void embedding_sum_forward(const T* a, const int32_t* ia, const T* b, const int32_t* ib, T* out, int64_t rows,
                           int64_t S, int64_t D, int64_t Va, int64_t Vb) {
  for (int64_t s = 0; s < S; ++s) check_index(ib[s], Vb, "b", s);
  for (int64_t r = 0; r < rows; ++r) check_index(ia[r], Va, "a", r);
  parallel_range(rows, 2 * D, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* ar = a + int64_t{ia[r]} * D;
      const T* br = b + int64_t{ib[r % S]} * D;
      for (int64_t c = 0; c < D; ++c) out[r * D + c] = ar[c] + br[c];
    }
  });
}

template <class T>
void embedding_sum_backward(const T* g, const int32_t* ia, const int32_t* ib, T* da, T* db, int64_t rows,
                            int64_t S, int64_t D, int64_t Va, int64_t Vb) {
  const int nt = max_threads();
  const int64_t P = (Va + Vb) * D;  // per thread: dA then dB, in double
  std::vector<double> partial(static_cast<size_t>(nt) * P, 0.0);
  parallel_range(rows, 2 * D, [&](int64_t lo, int64_t hi) {
    double* acc = partial.data() + static_cast<size_t>(thread_num()) * P;
    for (int64_t r = lo; r < hi; ++r) {
      double* pa = acc + int64_t{ia[r]} * D;
      double* pb = acc + (Va + ib[r % S]) * D;
      for (int64_t c = 0; c < D; ++c) {
        pa[c] += g[r * D + c];
        pb[c] += g[r * D + c];
      }
    }
  });
  for (int64_t p = 0; p < P; ++p) {
    double s = 0;
    for (int t = 0; t < nt; ++t) s += partial[static_cast<size_t>(t) * P + p];
    if (p < Va * D) {
      if (da) da[p] = static_cast<T>(s);
    } else if (db) {
      db[p - Va * D] = static_cast<T>(s);
    }
  }
}

#define PF_INSTANTIATE(T)                                                                                   \
  template void pair_bias_forward<T>(const T*, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                     int64_t, int64_t, double);                                             \
  template void pair_bias_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*,     \
                                      int64_t, int64_t, int64_t, int64_t, int64_t, double, bool);           \
  template void embedding_sum_forward<T>(const T*, const int32_t*, const T*, const int32_t*, T*, int64_t,   \
                                         int64_t, int64_t, int64_t, int64_t);                               \
  template void embedding_sum_backward<T>(const T*, const int32_t*, const int32_t*, T*, T*, int64_t,        \
                                          int64_t, int64_t, int64_t, int64_t);
PF_INSTANTIATE(float)
PF_INSTANTIATE(double)
#undef PF_INSTANTIATE

}  // namespace pf::kernels::cpu
