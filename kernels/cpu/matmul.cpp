#include "kernels/cpu/matmul.h"

#include <vector>

#include <Eigen/Core>

#include "kernels/cpu/parallel.h"

namespace pf::kernels::cpu {

namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const RowMat<T>>;
template <class T>
using MutMap = Eigen::Map<RowMat<T>>;

// c (+)= op(a)·op(b) for one (M,K)·(K,N) product.
template <class T>
void gemm_one(int64_t M, int64_t N, int64_t K, const T* a, bool ta, const T* b, bool tb, T* c,
              bool accumulate) {
  MutMap<T> C(c, M, N);
  if (K == 0) {  // an empty sum
    if (!accumulate) C.setZero();
    return;
  }
  const ConstMap<T> A(a, ta ? K : M, ta ? M : K);
  const ConstMap<T> B(b, tb ? N : K, tb ? K : N);
  // Four spelled-out cases: Eigen folds .transpose() of a map into the GEMM's packing.
  if (!accumulate) {
    if (!ta && !tb) C.noalias() = A * B;
    else if (!ta && tb) C.noalias() = A * B.transpose();
    else if (ta && !tb) C.noalias() = A.transpose() * B;
    else C.noalias() = A.transpose() * B.transpose();
  } else {
    if (!ta && !tb) C.noalias() += A * B;
    else if (!ta && tb) C.noalias() += A * B.transpose();
    else if (ta && !tb) C.noalias() += A.transpose() * B;
    else C.noalias() += A.transpose() * B.transpose();
  }
}

}  // namespace

template <class T>
void gemm(int64_t batch, int64_t M, int64_t N, int64_t K, const T* a, bool a_batched,
          bool trans_a, const T* b, bool b_batched, bool trans_b, T* c, bool c_batched,
          bool accumulate) {
  if (M == 0 || N == 0) return;
  if (batch == 0) {  // an empty batch: a summed c is an empty sum
    if (!c_batched && !accumulate)
      for (int64_t e = 0; e < M * N; ++e) c[e] = T(0);
    return;
  }
  const int64_t sa = a_batched ? M * K : 0, sb = b_batched ? K * N : 0, sc = c_batched ? M * N : 0;
  if (batch == 1) {
    gemm_one(M, N, K, a, trans_a, b, trans_b, c, accumulate);
    return;
  }
  // Stacked single GEMMs (one large product beats `batch` small ones):
  // shared b, batched a and c, a not transposed: the batch stacks along M.
  if (a_batched && !b_batched && c_batched && !trans_a) {
    gemm_one(batch * M, N, K, a, false, b, trans_b, c, accumulate);
    return;
  }
  // c summed over the batch, aᵀ·b with a and b batched: the batch stacks along K.
  if (!c_batched && a_batched && b_batched && trans_a && !trans_b) {
    gemm_one(M, N, batch * K, a, true, b, false, c, accumulate);
    return;
  }
  if (c_batched) {
    // Independent products: one thread per batch slot range (Eigen runs single-threaded inside).
    parallel_range(batch, M * N * K, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        gemm_one(M, N, K, a + i * sa, trans_a, b + i * sb, trans_b, c + i * sc, accumulate);
    });
    return;
  }
  // c summed over the batch: accumulate in batch order.
  for (int64_t i = 0; i < batch; ++i)
    gemm_one(M, N, K, a + i * sa, trans_a, b + i * sb, trans_b, c, accumulate || i > 0);
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

#define PF_INSTANTIATE(T)                                                                    \
  template void gemm<T>(int64_t, int64_t, int64_t, int64_t, const T*, bool, bool, const T*, \
                        bool, bool, T*, bool, bool);                                         \
  template void add_row_vector<T>(T*, const T*, int64_t, int64_t);                           \
  template void column_sums<T>(const T*, int64_t, int64_t, T*);
PF_INSTANTIATE(float)
PF_INSTANTIATE(double)
#undef PF_INSTANTIATE

}  // namespace pf::kernels::cpu
