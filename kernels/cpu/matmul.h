// Matrix products on the CPU through Eigen's GEMM (row-major maps, no copies).
//
//   c[i] (+)= op(a[i]) · op(b[i])   for i in [0, batch),   op(m) = m or mᵀ
//
// op(a[i]) is (M,K) and op(b[i]) is (K,N): a[i] is stored (M,K), or (K,M) when trans_a; b[i]
// is stored (K,N), or (N,K) when trans_b. A non-batched operand is one matrix used for every
// i (a stride-0 batch). A non-batched c receives the sum over the batch.
//
// Threads: a large product is split across OpenMP threads by blocks of rows of c, else of
// columns, else of the inner dim (one partial product per thread, added in thread order); each
// block is one single-threaded Eigen product. Eigen's own GEMM threading is switched off
// process-wide on first use (Eigen::setNbThreads(1)): it synchronises by spinning, which cost
// 40% of a training step on 2 shared cores.
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

// a:(batch|1, M,K | K,M)  b:(batch|1, K,N | N,K)  c:(batch|1, M,N)
// accumulate: c += product instead of c = product.
template <class T>
void gemm(int64_t batch, int64_t M, int64_t N, int64_t K, const T* a, bool a_batched, bool trans_a,
          const T* b, bool b_batched, bool trans_b, T* c, bool c_batched, bool accumulate);

// out[r, :] += bias for every row.  out:(rows, n) bias:(n)
template <class T>
void add_row_vector(T* out, const T* bias, int64_t rows, int64_t n);

// out = Σ_rows x[r, :], written (=), accumulated in double.  x:(rows, n) out:(n)
template <class T>
void column_sums(const T* x, int64_t rows, int64_t n, T* out);

}  // namespace pf::kernels::cpu
