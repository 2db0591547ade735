#include "kernels/cpu/embedding.h"

#include <cstring>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/parallel.h"

namespace pf::kernels::cpu {

namespace {
void check_indices(const int32_t* idx, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i)
    PF_CHECK(idx[i] >= 0 && idx[i] < V,
             "embedding: index " << idx[i] << " at position " << i << " is outside [0, " << V << ")");
}
}  // namespace

template <class T>
void embedding_forward(const T* weight, const int32_t* idx, T* out, int64_t n, int64_t V, int64_t D) {
  check_indices(idx, n, V);
  parallel_range(n, D, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      std::memcpy(out + i * D, weight + static_cast<int64_t>(idx[i]) * D, D * sizeof(T));
  });
}

template <class T>
void embedding_backward(const T* dout, const int32_t* idx, T* dweight, int64_t n, int64_t V, int64_t D) {
  check_indices(idx, n, V);
  const int nt = max_threads();
  // Sums run in double (a row of the pair tables collects thousands of terms). Small tables
  // (the pair features: ~65×16 rows hit by B·N·N indices) get one private table per thread,
  // added in thread order; a table too large to copy per thread is done on one thread.
  const bool parallel = nt > 1 && n * D >= kParallelWork && V * D * nt <= n * D;
  const int parts = parallel ? nt : 1;
  std::vector<double> partial(static_cast<size_t>(parts) * V * D, 0.0);
  auto scatter = [&](int t, int64_t lo, int64_t hi) {
    double* table = partial.data() + static_cast<size_t>(t) * V * D;
    for (int64_t i = lo; i < hi; ++i) {
      double* row = table + static_cast<int64_t>(idx[i]) * D;
      const T* g = dout + i * D;
      for (int64_t d = 0; d < D; ++d) row[d] += g[d];
    }
  };
  if (!parallel) {
    scatter(0, 0, n);
  } else {
#pragma omp parallel num_threads(parts)
    {
      int64_t lo, hi;
      thread_range(n, thread_num(), num_threads(), lo, hi);
      scatter(thread_num(), lo, hi);
    }
  }
  for (int64_t e = 0; e < V * D; ++e) {
    double s = 0;
    for (int t = 0; t < parts; ++t) s += partial[static_cast<size_t>(t) * V * D + e];
    dweight[e] = static_cast<T>(s);
  }
}

#define PF_INSTANTIATE(T)                                                                      \
  template void embedding_forward<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t); \
  template void embedding_backward<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t);
PF_INSTANTIATE(float)
PF_INSTANTIATE(double)
#undef PF_INSTANTIATE

}  // namespace pf::kernels::cpu
