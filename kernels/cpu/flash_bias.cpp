// Flash-bias attention on the CPU (see flash_bias.h; conventions in kernels/flash_bias_params.h).
//
// Forward, per (b,h) and per block of query rows (online softmax, FlashAttention-style):
//   for each key block j:  S = scale·Q Kⱼᵀ + B[:, j] + mask
//                          m' = max(m, rowmax S);  P = exp(S − m');  α = exp(m − m')
//                          l = α·l + rowsum P;      A = α·A + P Vⱼ;   m = m'
//   out = A / l,  lse = m + log l          (a row with every key masked: out = 0, lse = −inf)
//
// Backward. With P = softmax(S) row-wise and O = P V, for a loss L with dO = ∂L/∂O:
//   dV = Pᵀ dO                                   (O is linear in V)
//   dP = dO Vᵀ                                   (O is linear in P)
//   dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik)        (softmax Jacobian: diag(p) − p pᵀ)
//         = P_ij (dP_ij − Δ_i),   Δ_i = Σ_k P_ik (dO_i · V_k) = dO_i · O_i
//   dQ = scale · dS K,   dK = scale · dSᵀ Q       (S = scale·Q Kᵀ + …)
//   dB = dS, summed over the axes the bias is broadcast along.
// P is recomputed tile by tile from the saved lse: P = exp(S − lse). Masked scores are −inf, so
// their P and dS are exactly 0; a fully masked row (lse = −inf) is given P = 0 throughout.
//
// Work split: the forward runs one task per (b,h). The backward keeps every output element owned
// by one task: per (b,h) when dbias is per (b,h) or absent; per h (looping b in order) when dbias
// is shared over the batch; per b (looping h in order) when it is shared over heads; and when it
// is shared over both, per h into a per-head partial dbias that is then summed over h in order.
// So the results are bitwise reproducible and independent of the number of threads.
#include "kernels/cpu/flash_bias.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/check.h"

namespace pf::kernels::cpu {
namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowVec = Eigen::Matrix<T, 1, Eigen::Dynamic>;
template <class T>
using ConstRows = Eigen::Map<const RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using Rows = Eigen::Map<RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Query rows × key columns per tile.
constexpr int kBlockQ = 64;
constexpr int kBlockK = 64;

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// One (b,h) slice of a (B,N,H,D) tensor: N rows of D contiguous elements, `rs` apart.
template <class T>
struct Slice {
  T* ptr = nullptr;
  int64_t rs = 0;

  // rows [r0, r0+n) as an (n, D) row-major view
  ConstRows<std::remove_const_t<T>> rows(int r0, int n, int D) const {
    return {ptr + r0 * rs, n, D, Eigen::OuterStride<>(rs)};
  }
  Rows<std::remove_const_t<T>> rows_mut(int r0, int n, int D) const {
    return {ptr + r0 * rs, n, D, Eigen::OuterStride<>(rs)};
  }
};

template <class T>
Slice<T> slice(T* base, const BNHDStrides& s, int b, int h) {
  return {base == nullptr ? nullptr : base + b * s.batch + h * s.head, s.row};
}

// Everything one (b,h) attention problem reads.
template <class T>
struct HeadProblem {
  int Nq = 0, Nk = 0, D = 0;
  T scale = 1;
  bool causal = false;
  Slice<const T> q, k, v;
  const T* bias = nullptr;  // (Nq, Nk) with row stride bias_rs; null = no bias
  int64_t bias_rs = 0;
  const T* key_add = nullptr;  // (Nk): 0 for a kept key, −inf for a padded one; null = no mask

  // Keys that rows [i0, i0+rows) may see end before this column (causal); may be <= 0.
  int key_end(int i0, int rows) const {
    if (!causal) return Nk;
    return static_cast<int>(std::min<int64_t>(Nk, int64_t(i0) + rows + Nk - Nq));
  }
};

template <class T>
HeadProblem<T> head_problem(const FlashBiasParams& p, int b, int h, const T* key_add) {
  HeadProblem<T> hp;
  hp.Nq = p.Nq;
  hp.Nk = p.Nk;
  hp.D = p.D;
  hp.scale = static_cast<T>(p.scale);
  hp.causal = p.causal;
  hp.q = slice(static_cast<const T*>(p.q), p.q_stride, b, h);
  hp.k = slice(static_cast<const T*>(p.k), p.k_stride, b, h);
  hp.v = slice(static_cast<const T*>(p.v), p.v_stride, b, h);
  if (p.bias != nullptr) {
    hp.bias = static_cast<const T*>(p.bias) + b * p.bias_batch_stride + h * p.bias_head_stride;
    hp.bias_rs = p.bias_row_stride;
  }
  hp.key_add = key_add;
  return hp;
}

// The key padding mask of batch b as an additive row: 0 (kept) or −inf (ignored).
template <class T>
const T* key_add_row(const FlashBiasParams& p, int b, std::vector<T>& buf) {
  if (p.key_padding_mask == nullptr) return nullptr;
  buf.resize(p.Nk);
  const uint8_t* m = p.key_padding_mask + int64_t(b) * p.Nk;
  for (int j = 0; j < p.Nk; ++j) buf[j] = m[j] ? kNegInf<T> : T(0);
  return buf.data();
}

// s[0:rows, 0:cols] = scale · Q[i0:i0+rows] K[j0:j0+cols]ᵀ + bias + key mask + causal mask.
// s:(>=rows, >=cols)
template <class T>
void score_tile(const HeadProblem<T>& hp, int i0, int rows, int j0, int cols, RowMat<T>& s) {
  auto tile = s.topLeftCorner(rows, cols);
  tile.noalias() = hp.q.rows(i0, rows, hp.D) * hp.k.rows(j0, cols, hp.D).transpose();
  tile *= hp.scale;
  for (int r = 0; r < rows; ++r) {
    auto row = tile.row(r);
    if (hp.bias != nullptr)
      row += Eigen::Map<const RowVec<T>>(hp.bias + (i0 + r) * hp.bias_rs + j0, cols);
    if (hp.key_add != nullptr) row += Eigen::Map<const RowVec<T>>(hp.key_add + j0, cols);
  }
  if (hp.causal) {
    // query i sees key j iff j <= i + (Nk − Nq)
    const int64_t shift = int64_t(hp.Nk) - hp.Nq;
    for (int r = 0; r < rows; ++r) {
      const int64_t first_hidden = int64_t(i0) + r + shift + 1 - j0;  // tile column
      for (int64_t c = std::max<int64_t>(first_hidden, 0); c < cols; ++c) tile(r, c) = kNegInf<T>;
    }
  }
}

// x ← exp(x − shift) for a row whose maximum is at most `shift`, with exactly 0 where x = −inf.
// Eigen's vectorised exp clamps its argument (−88.4 for float, −709 for double), so −inf comes out
// as a tiny positive number; results below kFlush are set to 0 in a second, vectorisable pass.
// (A select inside the exp expression is not vectorised by Eigen 3.4 and made exp 3× slower.)
// Flushing values < 1e-30 of a row whose largest term is 1 changes its sum by < Nk·1e-30.
// x:(1,n)
template <class T>
constexpr T kFlush = T(1e-30);

template <class Row, class T>
void exp_shifted(Row&& x, T shift) {
  x.array() = (x.array() - shift).exp();
  T* e = x.data();
  const int n = static_cast<int>(x.size());
  for (int j = 0; j < n; ++j) e[j] = e[j] < kFlush<T> ? T(0) : e[j];
}

// ---- forward ------------------------------------------------------------------------------

template <class T>
struct FwdScratch {
  RowMat<T> s, acc;  // (kBlockQ, kBlockK) scores/probabilities, (kBlockQ, D) unnormalised out
  Eigen::Array<T, Eigen::Dynamic, 1> m, l;  // (kBlockQ) running max and sum
  std::vector<T> key_add;                   // (Nk)
  explicit FwdScratch(int D) : s(kBlockQ, kBlockK), acc(kBlockQ, D), m(kBlockQ), l(kBlockQ) {}
};

// One (b,h): out:(Nq,D) rows of the slice, lse:(Nq) contiguous.
template <class T>
void forward_head(const HeadProblem<T>& hp, Slice<T> out, T* lse, FwdScratch<T>& w) {
  const int D = hp.D;
  for (int i0 = 0; i0 < hp.Nq; i0 += kBlockQ) {
    const int rows = std::min(kBlockQ, hp.Nq - i0);
    const int j_end = hp.key_end(i0, rows);
    auto acc = w.acc.topRows(rows);
    acc.setZero();
    w.m.head(rows).setConstant(kNegInf<T>);
    w.l.head(rows).setZero();
    for (int j0 = 0; j0 < j_end; j0 += kBlockK) {
      const int cols = std::min(kBlockK, j_end - j0);
      score_tile(hp, i0, rows, j0, cols, w.s);
      for (int r = 0; r < rows; ++r) {
        auto srow = w.s.row(r).head(cols);
        const T m_new = std::max(w.m[r], srow.maxCoeff());
        if (m_new == kNegInf<T>) {  // every key so far masked: nothing to add
          srow.setZero();
          continue;
        }
        exp_shifted(srow, m_new);
        const T alpha = std::exp(w.m[r] - m_new);  // 0 when m was −inf
        w.l[r] = alpha * w.l[r] + srow.sum();
        if (alpha != T(1)) acc.row(r) *= alpha;
        w.m[r] = m_new;
      }
      acc.noalias() += w.s.topLeftCorner(rows, cols) * hp.v.rows(j0, cols, D);
    }
    auto o = out.rows_mut(i0, rows, D);
    for (int r = 0; r < rows; ++r) {
      if (w.m[r] == kNegInf<T>) {
        o.row(r).setZero();
        lse[i0 + r] = kNegInf<T>;
      } else {
        o.row(r) = acc.row(r) / w.l[r];
        lse[i0 + r] = w.m[r] + std::log(w.l[r]);
      }
    }
  }
}

template <class T>
void forward_impl(const FlashBiasParams& p) {
  const int tasks = p.B * p.H;
#pragma omp parallel
  {
    FwdScratch<T> w(p.D);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < tasks; ++t) {
      const int b = t / p.H, h = t % p.H;
      const T* key_add = key_add_row(p, b, w.key_add);
      forward_head(head_problem<T>(p, b, h, key_add),
                   slice(static_cast<T*>(p.out), p.out_stride, b, h),
                   static_cast<T*>(p.lse) + (int64_t(b) * p.H + h) * p.Nq, w);
    }
  }
}

// ---- backward -----------------------------------------------------------------------------

template <class T>
struct BwdScratch {
  RowMat<T> s, dp;          // (kBlockQ, kBlockK) P, then dP and dS
  RowMat<T> dq;             // (kBlockQ, D) dQ of the row block, unscaled
  RowMat<T> dk, dv;         // (Nk, D) dK (unscaled), dV of the whole head
  Eigen::Array<T, Eigen::Dynamic, 1> delta, lse;  // (kBlockQ)
  std::vector<T> key_add;   // (Nk)
  BwdScratch(int Nk, int D)
      : s(kBlockQ, kBlockK), dp(kBlockQ, kBlockK), dq(kBlockQ, D), dk(Nk, D), dv(Nk, D),
        delta(kBlockQ), lse(kBlockQ) {}
};

// Where one (b,h) task writes its gradients; null members are not wanted.
template <class T>
struct HeadGrads {
  Slice<const T> out, dout;
  const T* lse = nullptr;  // (Nq)
  Slice<T> dq, dk, dv;
  T* dbias = nullptr;  // (Nq, Nk) with row stride dbias_rs
  int64_t dbias_rs = 0;
  bool dbias_add = false;  // += into dbias (else =)
};

template <class T>
void backward_head(const HeadProblem<T>& hp, const HeadGrads<T>& g, BwdScratch<T>& w) {
  const int D = hp.D, Nk = hp.Nk;
  const bool want_dq = g.dq.ptr != nullptr, want_dk = g.dk.ptr != nullptr;
  const bool want_dv = g.dv.ptr != nullptr, want_db = g.dbias != nullptr;
  const bool want_ds = want_dq || want_dk || want_db;
  if (want_dk) w.dk.setZero();
  if (want_dv) w.dv.setZero();

  for (int i0 = 0; i0 < hp.Nq; i0 += kBlockQ) {
    const int rows = std::min(kBlockQ, hp.Nq - i0);
    const int j_end = std::max(hp.key_end(i0, rows), 0);
    const auto dO = g.dout.rows(i0, rows, D);
    if (want_ds) w.delta.head(rows) = dO.cwiseProduct(g.out.rows(i0, rows, D)).rowwise().sum().array();
    for (int r = 0; r < rows; ++r) {
      const T l = g.lse[i0 + r];
      w.lse[r] = l == kNegInf<T> ? T(0) : l;  // fully masked row: every score is −inf, P = 0
    }
    auto dq = w.dq.topRows(rows);
    if (want_dq) dq.setZero();

    for (int j0 = 0; j0 < j_end; j0 += kBlockK) {
      const int cols = std::min(kBlockK, j_end - j0);
      score_tile(hp, i0, rows, j0, cols, w.s);
      auto P = w.s.topLeftCorner(rows, cols);
      for (int r = 0; r < rows; ++r) exp_shifted(P.row(r), w.lse[r]);
      if (want_dv) w.dv.middleRows(j0, cols).noalias() += P.transpose() * dO;
      if (!want_ds) continue;

      auto dS = w.dp.topLeftCorner(rows, cols);
      dS.noalias() = dO * hp.v.rows(j0, cols, D).transpose();  // dP
      for (int r = 0; r < rows; ++r)
        dS.row(r) = P.row(r).cwiseProduct((dS.row(r).array() - w.delta[r]).matrix());
      if (want_db) {
        for (int r = 0; r < rows; ++r) {
          Eigen::Map<RowVec<T>> db(g.dbias + (i0 + r) * g.dbias_rs + j0, cols);
          if (g.dbias_add) db += dS.row(r);
          else db = dS.row(r);
        }
      }
      if (want_dq) dq.noalias() += dS * hp.k.rows(j0, cols, D);
      if (want_dk) w.dk.middleRows(j0, cols).noalias() += dS.transpose() * hp.q.rows(i0, rows, D);
    }

    if (want_db && !g.dbias_add && j_end < Nk) {  // keys hidden by the causal mask: dS = 0
      for (int r = 0; r < rows; ++r)
        std::fill(g.dbias + (i0 + r) * g.dbias_rs + j_end, g.dbias + (i0 + r) * g.dbias_rs + Nk,
                  T(0));
    }
    if (want_dq) g.dq.rows_mut(i0, rows, D) = hp.scale * dq;
  }
  if (want_dk) g.dk.rows_mut(0, Nk, D) = hp.scale * w.dk;
  if (want_dv) g.dv.rows_mut(0, Nk, D) = w.dv;
}

template <class T>
void backward_impl(const FlashBiasBwdParams& p) {
  const bool want_db = p.dbias != nullptr;
  // A broadcast axis of length 1 is not shared: only a length > 1 axis with stride 0 is.
  const bool shared_b = want_db && p.B > 1 && p.dbias_batch_stride == 0;
  const bool shared_h = want_db && p.H > 1 && p.dbias_head_stride == 0;

  // Both shared: each head's contribution goes to its own partial (H, Nq, Nk), summed below.
  std::vector<T> partial;
  if (shared_b && shared_h) partial.resize(size_t(p.H) * p.Nq * p.Nk);

  // The task grid: `outer` tasks in parallel, each running `inner` (b,h) pairs in order.
  const int outer = shared_b ? p.H : (shared_h ? p.B : p.B * p.H);
  const int inner = shared_b ? p.B : (shared_h ? p.H : 1);

#pragma omp parallel
  {
    BwdScratch<T> w(p.Nk, p.D);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < outer; ++t) {
      for (int u = 0; u < inner; ++u) {
        const int b = shared_b ? u : (shared_h ? t : t / p.H);
        const int h = shared_b ? t : (shared_h ? u : t % p.H);
        const T* key_add = key_add_row(p, b, w.key_add);
        HeadGrads<T> g;
        g.out = slice(static_cast<const T*>(p.out), p.out_stride, b, h);
        g.dout = slice(static_cast<const T*>(p.dout), p.dout_stride, b, h);
        g.lse = static_cast<const T*>(p.lse) + (int64_t(b) * p.H + h) * p.Nq;
        g.dq = slice(static_cast<T*>(p.dq), p.dq_stride, b, h);
        g.dk = slice(static_cast<T*>(p.dk), p.dk_stride, b, h);
        g.dv = slice(static_cast<T*>(p.dv), p.dv_stride, b, h);
        if (want_db) {
          if (!partial.empty()) {
            g.dbias = partial.data() + int64_t(h) * p.Nq * p.Nk;
            g.dbias_rs = p.Nk;
            g.dbias_add = u > 0;
          } else {
            g.dbias = static_cast<T*>(p.dbias) + b * p.dbias_batch_stride +
                      h * p.dbias_head_stride;
            g.dbias_rs = p.dbias_row_stride;
            g.dbias_add = p.dbias_accumulate || u > 0;
          }
        }
        backward_head(head_problem<T>(p, b, h, key_add), g, w);
      }
    }
  }

  if (!partial.empty()) {  // dbias (=|+=) Σ_h partial[h], h in order
    const int64_t hs = int64_t(p.Nq) * p.Nk;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < p.Nq; ++i) {
      T* db = static_cast<T*>(p.dbias) + int64_t(i) * p.dbias_row_stride;
      const T* src = partial.data() + int64_t(i) * p.Nk;
      for (int j = 0; j < p.Nk; ++j) {
        T sum = p.dbias_accumulate ? db[j] : T(0);
        for (int h = 0; h < p.H; ++h) sum += src[h * hs + j];
        db[j] = sum;
      }
    }
  }
}

// ---- validation ---------------------------------------------------------------------------

void check_common(const FlashBiasParams& p, const char* fn) {
  PF_CHECK(p.B >= 1 && p.H >= 1 && p.Nq >= 1 && p.Nk >= 1 && p.D >= 1,
           fn << ": sizes must all be >= 1, got B=" << p.B << " H=" << p.H << " Nq=" << p.Nq
              << " Nk=" << p.Nk << " D=" << p.D);
  PF_CHECK(p.dtype == ScalarType::F32 || p.dtype == ScalarType::F64,
           fn << ": the CPU kernel takes float32 or float64 inputs, got "
              << scalar_type_name(p.dtype));
  PF_CHECK(p.q != nullptr && p.k != nullptr && p.v != nullptr,
           fn << ": q, k and v must be non-null (q=" << p.q << " k=" << p.k << " v=" << p.v
              << ")");
  PF_CHECK(p.out != nullptr && p.lse != nullptr,
           fn << ": out and lse must be non-null (out=" << p.out << " lse=" << p.lse << ")");
  if (p.bias != nullptr) {
    PF_CHECK(p.bias_dtype == p.dtype, fn << ": on the CPU the bias must have the inputs' dtype "
                                         << scalar_type_name(p.dtype) << ", got "
                                         << scalar_type_name(p.bias_dtype));
  }
}

}  // namespace

void flash_bias_forward(const FlashBiasParams& p) {
  check_common(p, "flash_bias_forward");
  if (p.dtype == ScalarType::F64) forward_impl<double>(p);
  else forward_impl<float>(p);
}

void flash_bias_backward(const FlashBiasBwdParams& p) {
  const char* fn = "flash_bias_backward";
  check_common(p, fn);
  PF_CHECK(p.dout != nullptr, fn << ": dout must be non-null");
  if (p.dbias != nullptr) {
    PF_CHECK(p.bias != nullptr, fn << ": dbias was requested but there is no bias");
    // dbias has the bias's shape: the same axes broadcast (a length-1 axis may have any stride).
    PF_CHECK(p.B == 1 || (p.bias_batch_stride == 0) == (p.dbias_batch_stride == 0),
             fn << ": dbias must be broadcast over the batch exactly when the bias is; bias batch"
                   " stride " << p.bias_batch_stride << ", dbias batch stride "
                << p.dbias_batch_stride);
    PF_CHECK(p.H == 1 || (p.bias_head_stride == 0) == (p.dbias_head_stride == 0),
             fn << ": dbias must be broadcast over heads exactly when the bias is; bias head"
                   " stride " << p.bias_head_stride << ", dbias head stride "
                << p.dbias_head_stride);
  }
  if (p.dq == nullptr && p.dk == nullptr && p.dv == nullptr && p.dbias == nullptr) return;
  if (p.dtype == ScalarType::F64) backward_impl<double>(p);
  else backward_impl<float>(p);
}

}  // namespace pf::kernels::cpu
