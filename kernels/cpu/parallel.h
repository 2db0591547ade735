// OpenMP helpers shared by the CPU kernels.
//
// Kernels split their outer loop over OpenMP threads only when it holds at least kParallelWork
// element-operations (~100 µs of work): a team fork/join costs a few µs on idle cores but can
// wait for a scheduler quantum (ms) when the cores are shared, so small ops stay on one thread.
// Reductions that run in parallel keep one partial result per thread and combine them in thread
// order, so a result depends on the thread count but never on scheduling.
#pragma once
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pf::kernels::cpu {

// Element-operations of work below which a kernel stays on one thread.
constexpr int64_t kParallelWork = 1 << 18;

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_num() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int num_threads() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// The contiguous slice [begin, end) of [0, n) that thread `t` of `nt` owns (static partition).
inline void thread_range(int64_t n, int t, int nt, int64_t& begin, int64_t& end) {
  const int64_t chunk = n / nt, rem = n % nt;
  begin = t * chunk + (t < rem ? t : rem);
  end = begin + chunk + (t < rem ? 1 : 0);
}

// f(begin, end) over slices of [0, n) — one per thread when n·work_per_item ≥ kParallelWork,
// else f(0, n) on the calling thread. `f` must not throw.
template <class F>
void parallel_range(int64_t n, int64_t work_per_item, F&& f) {
  if (n <= 0) return;
  if (n * work_per_item < kParallelWork || max_threads() == 1 || n == 1) {
    f(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    int64_t b, e;
    thread_range(n, thread_num(), num_threads(), b, e);
    if (b < e) f(b, e);
  }
}

}  // namespace pf::kernels::cpu
