#include "kernels/cpu/matmul.h"

#include <mutex>
#include <vector>

#include <Eigen/Core>

#include "kernels/cpu/parallel.h"

namespace pf::kernels::cpu {

namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using MutMap = Eigen::Map<RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Products of at least this many multiply-adds are split across threads (~130 µs of work on
// one core at 32 GFLOP/s); smaller ones run on the calling thread.
constexpr int64_t kGemmParallelWork = int64_t{1} << 22;
// A split dimension gives each thread at least this many rows (or columns).
constexpr int64_t kMinSplit = 16;

// Eigen's own GEMM threading synchronises its threads by spinning; on 2 shared cores that was
// 40% of a training step. The kernels here split products across threads themselves, so Eigen
// runs single-threaded: set once, process-wide, on first use.
void eigen_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { Eigen::setNbThreads(1); });
}

// One operand as stored: op(X) = X or Xᵀ, rows `ld` elements apart in memory.
template <class T>
struct Operand {
  const T* p;
  int64_t ld;
  bool trans;
};

// c (+)= op(a)·op(b) on the calling thread: op(a) (M,K), op(b) (K,N), c (M,N) with row stride ldc.
template <class T>
void gemm_serial(int64_t M, int64_t N, int64_t K, Operand<T> a, Operand<T> b, T* c, int64_t ldc,
                 bool accumulate) {
  MutMap<T> C(c, M, N, Eigen::OuterStride<>(ldc));
  if (K == 0) {  // an empty sum
    if (!accumulate) C.setZero();
    return;
  }
  const ConstMap<T> A(a.p, a.trans ? K : M, a.trans ? M : K, Eigen::OuterStride<>(a.ld));
  const ConstMap<T> B(b.p, b.trans ? N : K, b.trans ? K : N, Eigen::OuterStride<>(b.ld));
  // Four spelled-out cases: Eigen folds .transpose() of a map into the GEMM's packing.
  if (!accumulate) {
    if (!a.trans && !b.trans)
      C.noalias() = A * B;
    else if (!a.trans)
      C.noalias() = A * B.transpose();
    else if (!b.trans)
      C.noalias() = A.transpose() * B;
    else
      C.noalias() = A.transpose() * B.transpose();
  } else {
    if (!a.trans && !b.trans)
      C.noalias() += A * B;
    else if (!a.trans)
      C.noalias() += A * B.transpose();
    else if (!b.trans)
      C.noalias() += A.transpose() * B;
    else
      C.noalias() += A.transpose() * B.transpose();
  }
}

// Rows [r0, r1) of op(x) for x stored with op(x) of `rows` rows and `cols` columns.
template <class T>
Operand<T> op_rows(Operand<T> x, int64_t r0) {
  return {x.trans ? x.p + r0 : x.p + r0 * x.ld, x.ld, x.trans};
}
// Columns [c0, c1) of op(x).
template <class T>
Operand<T> op_cols(Operand<T> x, int64_t c0) {
  return {x.trans ? x.p + c0 * x.ld : x.p + c0, x.ld, x.trans};
}

// c (+)= op(a)·op(b) for contiguous c (M,N), split across threads along M, else N, else K.
template <class T>
void gemm_2d(int64_t M, int64_t N, int64_t K, Operand<T> a, Operand<T> b, T* c, bool accumulate) {
  const int nt = max_threads();
  if (M * N * K < kGemmParallelWork || nt == 1) {
    gemm_serial(M, N, K, a, b, c, N, accumulate);
    return;
  }
  if (M >= kMinSplit * nt) {  // row blocks of c: independent
#pragma omp parallel
    {
      int64_t r0, r1;
      thread_range(M, thread_num(), num_threads(), r0, r1);
      if (r0 < r1) gemm_serial(r1 - r0, N, K, op_rows(a, r0), b, c + r0 * N, N, accumulate);
    }
    return;
  }
  if (N >= kMinSplit * nt) {  // column blocks of c: independent
#pragma omp parallel
    {
      int64_t c0, c1;
      thread_range(N, thread_num(), num_threads(), c0, c1);
      if (c0 < c1) gemm_serial(M, c1 - c0, K, a, op_cols(b, c0), c + c0, N, accumulate);
    }
    return;
  }
  // A small c from a long inner dim (a weight gradient summed over many rows): one partial
  // product per thread over a slice of K, added in thread order.
  std::vector<T> partial(static_cast<size_t>(nt) * M * N, T(0));
#pragma omp parallel
  {
    const int t = thread_num();
    int64_t k0, k1;
    thread_range(K, t, num_threads(), k0, k1);
    if (k0 < k1)
      gemm_serial(M, N, k1 - k0, op_cols(a, k0), op_rows(b, k0),
                  partial.data() + static_cast<size_t>(t) * M * N, N, false);
  }
  for (int64_t e = 0; e < M * N; ++e) {
    T s = accumulate ? c[e] : T(0);
    for (int t = 0; t < nt; ++t) s += partial[static_cast<size_t>(t) * M * N + e];
    c[e] = s;
  }
}

}  // namespace

template <class T>
void gemm(int64_t batch, int64_t M, int64_t N, int64_t K, const T* a, bool a_batched, bool trans_a,
          const T* b, bool b_batched, bool trans_b, T* c, bool c_batched, bool accumulate) {
  eigen_single_threaded();
  if (M == 0 || N == 0) return;
  if (batch == 0) {  // an empty batch: a summed c is an empty sum
    if (!c_batched && !accumulate)
      for (int64_t e = 0; e < M * N; ++e) c[e] = T(0);
    return;
  }
  // Leading dims of the stored matrices: a is (M,K) or (K,M), b is (K,N) or (N,K).
  const int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N;
  const int64_t sa = a_batched ? M * K : 0, sb = b_batched ? K * N : 0, sc = c_batched ? M * N : 0;
  if (batch == 1) {
    gemm_2d(M, N, K, Operand<T>{a, lda, trans_a}, Operand<T>{b, ldb, trans_b}, c, accumulate);
    return;
  }
  // Stacked single products (one large product beats `batch` small ones):
  // shared b, batched a and c, a not transposed: the batch stacks along M.
  if (a_batched && !b_batched && c_batched && !trans_a) {
    gemm_2d(batch * M, N, K, Operand<T>{a, K, false}, Operand<T>{b, ldb, trans_b}, c, accumulate);
    return;
  }
  // c summed over the batch, aᵀ·b with a and b batched and b not transposed: the batch stacks
  // along K.
  if (!c_batched && a_batched && b_batched && trans_a && !trans_b) {
    gemm_2d(M, N, batch * K, Operand<T>{a, M, true}, Operand<T>{b, N, false}, c, accumulate);
    return;
  }
  if (c_batched) {
    // Independent products: threads take whole batch slots when there are enough of them.
    if (batch >= max_threads()) {
      parallel_range(batch, M * N * K / 16, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i)
          gemm_serial(M, N, K, Operand<T>{a + i * sa, lda, trans_a}, Operand<T>{b + i * sb, ldb, trans_b},
                      c + i * sc, N, accumulate);
      });
    } else {
      for (int64_t i = 0; i < batch; ++i)
        gemm_2d(M, N, K, Operand<T>{a + i * sa, lda, trans_a}, Operand<T>{b + i * sb, ldb, trans_b},
                c + i * sc, accumulate);
    }
    return;
  }
  // c summed over the batch: accumulate in batch order.
  for (int64_t i = 0; i < batch; ++i)
    gemm_2d(M, N, K, Operand<T>{a + i * sa, lda, trans_a}, Operand<T>{b + i * sb, ldb, trans_b}, c,
            accumulate || i > 0);
}

template <class T>
void add_row_vector(T* out, const T* bias, int64_t rows, int64_t n) {
  parallel_range(rows, n, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      T* o = out + r * n;
      for (int64_t j = 0; j < n; ++j) o[j] += bias[j];
    }
  });
}

template <class T>
void column_sums(const T* x, int64_t rows, int64_t n, T* out) {
  const int nt = max_threads();
  std::vector<double> partial(static_cast<size_t>(nt) * n, 0.0);
  parallel_range(rows, n, [&](int64_t lo, int64_t hi) {
    double* acc = partial.data() + static_cast<size_t>(thread_num()) * n;
    for (int64_t r = lo; r < hi; ++r) {
      const T* xr = x + r * n;
      for (int64_t j = 0; j < n; ++j) acc[j] += xr[j];
    }
  });
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int t = 0; t < nt; ++t) s += partial[static_cast<size_t>(t) * n + j];
    out[j] = static_cast<T>(s);
  }
}

#define PF_INSTANTIATE(T)                                                                                   \
  template void gemm<T>(int64_t, int64_t, int64_t, int64_t, const T*, bool, bool, const T*, bool, bool, T*, \
                        bool, bool);                                                                        \
  template void add_row_vector<T>(T*, const T*, int64_t, int64_t);                                          \
  template void column_sums<T>(const T*, int64_t, int64_t, T*);
PF_INSTANTIATE(float)
PF_INSTANTIATE(double)
#undef PF_INSTANTIATE

}  // namespace pf::kernels::cpu
