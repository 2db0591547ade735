#include "kernels/cpu/softmax.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/parallel.h"

namespace pf::kernels::cpu {

namespace {

// e^t for t ≤ 0: the vectorising float version, the C library for double.
inline float exp_le0(float t) { return exp_nonpositive(t); }
inline double exp_le0(double t) { return std::exp(t); }

template <class T>
T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < n; ++c) m = x[c] > m ? x[c] : m;
  return m;
}

// y = e^{x − m}; returns Σ y (accumulated in T: at most n terms in (0, 1], one of them 1).
template <class T>
T exp_shifted(const T* x, T m, T* y, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) {
    y[c] = exp_le0(x[c] - m);
    s += y[c];
  }
  return s;
}

}  // namespace

template <class T>
void softmax_forward(const T* x, T* y, int64_t M, int64_t C) {
  parallel_range(M, 8 * C, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      const T m = row_max(xr, C);
      const T inv = T(1) / exp_shifted(xr, m, yr, C);
      for (int64_t c = 0; c < C; ++c) yr[c] *= inv;
    }
  });
}

template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t M, int64_t C) {
  parallel_range(M, 4 * C, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* yr = y + r * C;
      const T* gr = dy + r * C;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < C; ++c) s += gr[c] * yr[c];
      T* dr = dx + r * C;
      for (int64_t c = 0; c < C; ++c) dr[c] = yr[c] * (gr[c] - s);
    }
  });
}

void check_labels(const int32_t* labels, int64_t M, int64_t K, const char* op) {
  for (int64_t r = 0; r < M; ++r)
    PF_CHECK(labels[r] >= 0 && labels[r] < K,
             op << ": label " << labels[r] << " at row " << r << " is outside [0, " << K << ")");
}

template <class T>
double cross_entropy_forward(const T* logits, const int32_t* labels, T* lse, int64_t M, int64_t K) {
  check_labels(labels, M, K, "cross_entropy");
  std::vector<double> partial(max_threads(), 0.0);
  parallel_range(M, 8 * K, [&](int64_t lo, int64_t hi) {
    std::vector<T> tmp(K);
    double acc = 0;
    for (int64_t r = lo; r < hi; ++r) {
      const T* xr = logits + r * K;
      const T m = row_max(xr, K);
      const T l = m + std::log(exp_shifted(xr, m, tmp.data(), K));
      lse[r] = l;
      acc += static_cast<double>(l) - xr[labels[r]];
    }
    partial[thread_num()] = acc;
  });
  double total = 0;
  for (double p : partial) total += p;
  return M > 0 ? total / static_cast<double>(M) : 0.0;
}

template <class T>
void cross_entropy_backward(const T* logits, const int32_t* labels, const T* lse, double g, T* dlogits,
                            int64_t M, int64_t K) {
  const T gm = static_cast<T>(g / static_cast<double>(M));
  parallel_range(M, 4 * K, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* xr = logits + r * K;
      T* dr = dlogits + r * K;
      const T l = lse[r];
      for (int64_t c = 0; c < K; ++c) dr[c] = gm * exp_le0(xr[c] - l);
      dr[labels[r]] -= gm;
    }
  });
}

template <class T>
int64_t count_correct(const T* logits, const int32_t* labels, int64_t M, int64_t K) {
  int64_t correct = 0;
  for (int64_t r = 0; r < M; ++r) {
    const T* xr = logits + r * K;
    int64_t best = 0;
    for (int64_t c = 1; c < K; ++c)
      if (xr[c] > xr[best]) best = c;
    correct += best == labels[r];
  }
  return correct;
}

#define PF_INSTANTIATE(T)                                                                                    \
  template void softmax_forward<T>(const T*, T*, int64_t, int64_t);                                          \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t);                               \
  template double cross_entropy_forward<T>(const T*, const int32_t*, T*, int64_t, int64_t);                  \
  template void cross_entropy_backward<T>(const T*, const int32_t*, const T*, double, T*, int64_t, int64_t); \
  template int64_t count_correct<T>(const T*, const int32_t*, int64_t, int64_t);
PF_INSTANTIATE(float)
PF_INSTANTIATE(double)
#undef PF_INSTANTIATE

}  // namespace pf::kernels::cpu
