#include "kernels/cpu/reduce.h"

#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/strided.h"

namespace pf::kernels::cpu {

template <class T>
double sum(const T* x, int64_t n) {
  std::vector<double> partial(max_threads(), 0.0);
  parallel_range(n, 1, [&](int64_t b, int64_t e) {
    double acc[4] = {0, 0, 0, 0};  // independent chains: the adds pipeline
    int64_t i = b;
    for (; i + 4 <= e; i += 4)
      for (int j = 0; j < 4; ++j) acc[j] += x[i + j];
    for (; i < e; ++i) acc[0] += x[i];
    partial[thread_num()] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

namespace {

// acc[out offset] += x over the flat x elements [begin, end).
template <class T>
void accumulate_runs(const StridedIter<1>& it, const T* x, double* acc, int64_t begin, int64_t end) {
  strided_runs(it, begin, end, [&](int64_t pos, const int64_t* off, int64_t n, const int64_t* st) {
    const T* px = x + pos;
    double* pa = acc + off[0];
    if (st[0] == 1) {  // kept inner dim: column sums, vectorises
      for (int64_t i = 0; i < n; ++i) pa[i] += px[i];
    } else if (st[0] == 0) {  // reduced inner dim: one row sum
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += px[i];
      *pa += s;
    } else {
      for (int64_t i = 0; i < n; ++i) pa[i * st[0]] += px[i];
    }
  });
}

}  // namespace

template <class T>
void sum_to(const T* x, const int64_t* shape, int ndim, const int64_t* out_stride, T* out,
            int64_t out_numel) {
  const int64_t* strides[1] = {out_stride};
  const StridedIter<1> it = make_strided_iter<1>(shape, ndim, strides);
  const int64_t n = it.numel();
  const int nt = max_threads();
  std::vector<double> acc(out_numel, 0.0);
  if (n < kParallelWork || nt == 1) {
    accumulate_runs(it, x, acc.data(), 0, n);
  } else if (it.stride[0][0] != 0 && it.shape[0] >= nt) {
    // The outermost dim is kept: threads own disjoint slices of it, hence of out.
    const int64_t block = n / it.shape[0];
#pragma omp parallel
    {
      int64_t b, e;
      thread_range(it.shape[0], thread_num(), num_threads(), b, e);
      accumulate_runs(it, x, acc.data(), b * block, e * block);
    }
  } else {
    // The outermost dim is summed: one partial result per thread, added in thread order.
    std::vector<std::vector<double>> partial(nt);
#pragma omp parallel
    {
      const int t = thread_num();
      int64_t b, e;
      thread_range(n, t, num_threads(), b, e);
      partial[t].assign(out_numel, 0.0);
      accumulate_runs(it, x, partial[t].data(), b, e);
    }
    for (const auto& p : partial)
      for (int64_t i = 0; i < static_cast<int64_t>(p.size()); ++i) acc[i] += p[i];
  }
  for (int64_t i = 0; i < out_numel; ++i) out[i] = static_cast<T>(acc[i]);
}

template double sum<float>(const float*, int64_t);
template double sum<double>(const double*, int64_t);
template void sum_to<float>(const float*, const int64_t*, int, const int64_t*, float*, int64_t);
template void sum_to<double>(const double*, const int64_t*, int, const int64_t*, double*, int64_t);

}  // namespace pf::kernels::cpu
