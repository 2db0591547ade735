#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <cstring>
#include <vector>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/strided.h"

namespace pf::kernels::cpu {

// ---------------------------------------------------------------------------------------------
// broadcast binary ops

namespace {

struct AddOp {
  template <class T>
  T operator()(T a, T b) const {
    return a + b;
  }
};
struct SubOp {
  template <class T>
  T operator()(T a, T b) const {
    return a - b;
  }
};
struct MulOp {
  template <class T>
  T operator()(T a, T b) const {
    return a * b;
  }
};

template <class T, class Op>
void binary_impl(const T* a, const int64_t* a_stride, const T* b, const int64_t* b_stride, T* out,
                 const int64_t* shape, int ndim) {
  const int64_t* strides[2] = {a_stride, b_stride};
  const StridedIter<2> it = make_strided_iter<2>(shape, ndim, strides);
  const Op op;
  parallel_strided_runs(it, [&](int64_t pos, const int64_t* off, int64_t n, const int64_t* st) {
    const T* pa = a + off[0];
    const T* pb = b + off[1];
    T* po = out + pos;
    // The innermost strides are almost always 1 (same shape) or 0 (broadcast): separate loops
    // for those let the compiler vectorise them.
    if (st[0] == 1 && st[1] == 1) {
      for (int64_t i = 0; i < n; ++i) po[i] = op(pa[i], pb[i]);
    } else if (st[0] == 1 && st[1] == 0) {
      const T vb = *pb;
      for (int64_t i = 0; i < n; ++i) po[i] = op(pa[i], vb);
    } else if (st[0] == 0 && st[1] == 1) {
      const T va = *pa;
      for (int64_t i = 0; i < n; ++i) po[i] = op(va, pb[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) po[i] = op(pa[i * st[0]], pb[i * st[1]]);
    }
  });
}

}  // namespace

template <class T>
void binary(BinaryOp op, const T* a, const int64_t* a_stride, const T* b, const int64_t* b_stride, T* out,
            const int64_t* shape, int ndim) {
  switch (op) {
    case BinaryOp::Add: return binary_impl<T, AddOp>(a, a_stride, b, b_stride, out, shape, ndim);
    case BinaryOp::Sub: return binary_impl<T, SubOp>(a, a_stride, b, b_stride, out, shape, ndim);
    case BinaryOp::Mul: return binary_impl<T, MulOp>(a, a_stride, b, b_stride, out, shape, ndim);
  }
}

// ---------------------------------------------------------------------------------------------
// scale, axpy

template <class T>
void scale(const T* x, T s, T* out, int64_t n) {
  parallel_range(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = s * x[i];
  });
}

template <class T>
void axpy(T* y, T alpha, const T* x, int64_t n) {
  parallel_range(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] += alpha * x[i];
  });
}

// ---------------------------------------------------------------------------------------------
// GELU
//
// gelu(x) = x·Φ(x),  Φ(x) = (1 + erf(x/√2))/2;   gelu'(x) = Φ(x) + x·φ(x),  φ(x) = e^{−x²/2}/√(2π).
// double: the C library's erf and exp (gradient checks). float: the training path, where a
// scalar erff per element costs ~20 ns; Eigen's vectorised rational erf (a few ulp on [−4, 4],
// ±1 in float beyond) and exp_nonpositive (kernels/cpu/fast_math.h) keep it near 1 ns.

namespace {

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

constexpr int64_t kGeluChunk = 256;  // stays in L1 between the erf pass and the combine pass

}  // namespace

template <>
void gelu_forward<double>(const double* x, double* y, int64_t n) {
  parallel_range(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = 0.5 * x[i] * (1.0 + std::erf(x[i] * kSqrt1_2));
  });
}

template <>
void gelu_forward<float>(const float* x, float* y, int64_t n) {
  parallel_range(n, 4, [&](int64_t b, int64_t e) {
    Eigen::Map<const Eigen::ArrayXf> X(x + b, e - b);
    Eigen::Map<Eigen::ArrayXf> Y(y + b, e - b);
    Y = 0.5f * X * (1.0f + (X * static_cast<float>(kSqrt1_2)).erf());
  });
}

template <>
void gelu_backward<double>(const double* x, const double* dy, double* dx, int64_t n) {
  parallel_range(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const double cdf = 0.5 * (1.0 + std::erf(x[i] * kSqrt1_2));
      const double pdf = kInvSqrt2Pi * std::exp(-0.5 * x[i] * x[i]);
      dx[i] = dy[i] * (cdf + x[i] * pdf);
    }
  });
}

template <>
void gelu_backward<float>(const float* x, const float* dy, float* dx, int64_t n) {
  parallel_range(n, 4, [&](int64_t b, int64_t e) {
    float cdf[kGeluChunk];
    for (int64_t c = b; c < e; c += kGeluChunk) {
      const int64_t m = std::min(kGeluChunk, e - c);
      const float* xc = x + c;
      Eigen::Map<const Eigen::ArrayXf> X(xc, m);
      Eigen::Map<Eigen::ArrayXf>(cdf, m) = 0.5f * (1.0f + (X * static_cast<float>(kSqrt1_2)).erf());
      const float* dyc = dy + c;
      float* dxc = dx + c;
      for (int64_t i = 0; i < m; ++i) {
        const float pdf = static_cast<float>(kInvSqrt2Pi) * exp_nonpositive(-0.5f * xc[i] * xc[i]);
        dxc[i] = dyc[i] * (cdf[i] + xc[i] * pdf);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// queries

template <class T>
double sum_of_squares(const T* x, int64_t n) {
  std::vector<double> partial(max_threads(), 0.0);
  parallel_range(n, 1, [&](int64_t b, int64_t e) {
    double acc[4] = {0, 0, 0, 0};  // independent chains: the adds pipeline
    int64_t i = b;
    for (; i + 4 <= e; i += 4)
      for (int j = 0; j < 4; ++j) acc[j] += static_cast<double>(x[i + j]) * x[i + j];
    for (; i < e; ++i) acc[0] += static_cast<double>(x[i]) * x[i];
    partial[thread_num()] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

template <class T>
bool all_finite(const T* x, int64_t n) {
  // x·0 is 0 for finite x and NaN for NaN/±inf; the sum is NaN iff some element is not finite.
  T acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += x[i] * T(0);
  return acc == T(0);
}

// ---------------------------------------------------------------------------------------------

#define PF_INSTANTIATE(T)                                                                                   \
  template void binary<T>(BinaryOp, const T*, const int64_t*, const T*, const int64_t*, T*, const int64_t*, \
                          int);                                                                             \
  template void scale<T>(const T*, T, T*, int64_t);                                                         \
  template void axpy<T>(T*, T, const T*, int64_t);                                                          \
  template double sum_of_squares<T>(const T*, int64_t);                                                     \
  template bool all_finite<T>(const T*, int64_t);
PF_INSTANTIATE(float)
PF_INSTANTIATE(double)
#undef PF_INSTANTIATE

}  // namespace pf::kernels::cpu
