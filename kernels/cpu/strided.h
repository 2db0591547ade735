// Loops over a dense row-major iteration space read or written through strided operands.
//
// Broadcasting (stride 0), permutation (permuted strides) and reduction to a broadcast shape
// all reduce to one pattern: walk the elements of a contiguous tensor of `shape` in order and
// visit, for each, one element of each of K operands at  Σ_d index[d]·stride[k][d].
// StridedIter first drops size-1 dims and merges neighbouring dims that every operand walks
// contiguously, so that the common cases become one or two long dims; the innermost dim then
// runs as a plain loop, which the kernels specialise on its strides (0 or 1) to vectorise.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/check.h"
#include "kernels/cpu/parallel.h"

namespace pf::kernels::cpu {

constexpr int kMaxDims = 8;

template <int K>
struct StridedIter {
  int ndim = 1;                      // after merging; at least 1
  int64_t shape[kMaxDims] = {1};     // sizes of the merged dims
  int64_t stride[K][kMaxDims] = {};  // per operand, in elements

  int64_t inner() const { return shape[ndim - 1]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
};

// shape:(ndim) the iteration space; strides[k]:(ndim) operand k's stride per dim.
template <int K>
StridedIter<K> make_strided_iter(const int64_t* shape, int ndim, const int64_t* const* strides) {
  PF_CHECK(ndim <= kMaxDims,
           "strided loop over " << ndim << " dims, at most " << kMaxDims << " are supported");
  StridedIter<K> it;
  int n = 0;  // dims kept so far, built innermost first
  int64_t sh[kMaxDims];
  int64_t st[K][kMaxDims];
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    if (n > 0) {
      bool mergeable = true;
      for (int k = 0; k < K; ++k) mergeable = mergeable && strides[k][d] == st[k][n - 1] * sh[n - 1];
      if (mergeable) {
        sh[n - 1] *= shape[d];
        continue;
      }
    }
    sh[n] = shape[d];
    for (int k = 0; k < K; ++k) st[k][n] = strides[k][d];
    ++n;
  }
  if (n == 0) {  // every dim is 1 (or a scalar): one element
    sh[0] = 1;
    for (int k = 0; k < K; ++k) st[k][0] = 0;
    n = 1;
  }
  it.ndim = n;
  for (int i = 0; i < n; ++i) {
    it.shape[i] = sh[n - 1 - i];
    for (int k = 0; k < K; ++k) it.stride[k][i] = st[k][n - 1 - i];
  }
  for (int d = 0; d < ndim; ++d)
    if (shape[d] == 0) it.shape[0] = 0;  // an empty space stays empty
  return it;
}

// Visits the flat elements [begin, end) of the iteration space as runs along the innermost dim:
// f(flat_index_of_run_start, offsets[K] of that element, run_length, inner_strides[K]).
template <int K, class F>
void strided_runs(const StridedIter<K>& it, int64_t begin, int64_t end, F&& f) {
  if (begin >= end) return;
  const int nd = it.ndim;
  const int64_t inner = it.inner();
  int64_t idx[kMaxDims];
  int64_t off[K] = {};
  int64_t rem = begin;
  for (int d = nd - 1; d >= 0; --d) {
    idx[d] = rem % it.shape[d];
    rem /= it.shape[d];
    for (int k = 0; k < K; ++k) off[k] += idx[d] * it.stride[k][d];
  }
  int64_t inner_stride[K];
  for (int k = 0; k < K; ++k) inner_stride[k] = it.stride[k][nd - 1];
  int64_t pos = begin;
  while (pos < end) {
    const int64_t run = std::min<int64_t>(inner - idx[nd - 1], end - pos);
    f(pos, off, run, inner_stride);
    pos += run;
    if (pos >= end) break;
    // advance the odometer to the start of the next row
    for (int k = 0; k < K; ++k) off[k] += (run)*inner_stride[k] - inner * inner_stride[k];
    idx[nd - 1] = 0;
    for (int d = nd - 2; d >= 0; --d) {
      ++idx[d];
      for (int k = 0; k < K; ++k) off[k] += it.stride[k][d];
      if (idx[d] < it.shape[d]) break;
      for (int k = 0; k < K; ++k) off[k] -= idx[d] * it.stride[k][d];
      idx[d] = 0;
    }
  }
}

// strided_runs over the whole space, split into contiguous element ranges across threads when
// the space holds at least kParallelWork elements. `f` must not throw.
template <int K, class F>
void parallel_strided_runs(const StridedIter<K>& it, F&& f) {
  const int64_t n = it.numel();
  if (n < kParallelWork || max_threads() == 1) {
    strided_runs(it, 0, n, f);
    return;
  }
#pragma omp parallel
  {
    int64_t b, e;
    thread_range(n, thread_num(), num_threads(), b, e);
    strided_runs(it, b, e, f);
  }
}

}  // namespace pf::kernels::cpu
