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
//   dT[h, r] = Σ_{b,i,j: clip(j−i, −R, R) + R = r} dS[b,h,i,j]   (B = T[h, clip(j−i)+R] is a
//            gather from T, so its gradient is the scatter-add of dS into the bins it read).
// P is recomputed tile by tile from the saved lse: P = exp(S − lse). Masked scores are −inf, so
// their P and dS are exactly 0; a fully masked row (lse = −inf) is given P = 0 throughout.
//
// One mechanism for every layout: a (b,h) problem (HeadProblem) is the sequence's rows of q, k, v
// (dense: batch b; packed: rows cu_seqlens[b] …, with that sequence's own lengths) and its bias
// source (BiasSource): an (nq,nk) block given by a pointer and a row stride — a broadcast dense
// bias and a packed block are both just that — plus, optionally, the relative-position row
// T[h, :]. Everything below the head problem is the same code for dense, packed and relpos.
//
// Work split: the forward runs one task per (b,h). The backward keeps every output element owned
// by one task: per (b,h) when dbias is per (b,h) or absent (always, for a packed batch); per h
// (looping b in order) when dbias is shared over the batch; per b (looping h in order) when it is
// shared over heads; and when it is shared over both, per h into a per-head partial dbias that is
// then summed over h in order. dT goes through per-(b,h) partial tables (double, each filled by
// the one task that owns its (b,h), in tile order), summed over b in order at the end.
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

// The largest relpos_clip accepted: 2R+1 bins must fit an int with room to spare.
constexpr int kMaxRelposClip = 1 << 29;

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

// ---- sequences: where problem b lives --------------------------------------------------------

// Sequence b of the batch: its lengths and where its rows start. Dense: batch b, lengths Nq, Nk.
// Packed: rows cu_seqlens_q[b] … of q/out (q0) and cu_seqlens_k[b] … of k/v (k0).
struct Seq {
  int b = 0, nq = 0, nk = 0;
  bool packed = false;
  int64_t q0 = 0, k0 = 0;
};

Seq sequence(const FlashBiasParams& p, int b) {
  Seq s;
  s.b = b;
  s.packed = p.cu_seqlens_q != nullptr;
  if (!s.packed) {
    s.nq = p.Nq;
    s.nk = p.Nk;
    return s;
  }
  s.q0 = p.cu_seqlens_q[b];
  s.k0 = p.cu_seqlens_k[b];
  s.nq = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
  s.nk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
  return s;
}

// Head h of sequence s in a tensor on the query side (q, out, dout, dq) or the key side (k, v, …).
template <class T>
Slice<T> q_slice(T* base, const BNHDStrides& st, const Seq& s, int h) {
  if (base == nullptr) return {};
  return {base + (s.packed ? s.q0 * st.row : s.b * st.batch) + h * st.head, st.row};
}
template <class T>
Slice<T> k_slice(T* base, const BNHDStrides& st, const Seq& s, int h) {
  if (base == nullptr) return {};
  return {base + (s.packed ? s.k0 * st.row : s.b * st.batch) + h * st.head, st.row};
}

// The (nq) log-sum-exp row of (s, h): dense (B,H,Nq), packed (H,Tq).
template <class T>
T* lse_row(T* lse, const FlashBiasParams& p, const Seq& s, int h) {
  if (s.packed) return lse + int64_t(h) * p.cu_seqlens_q[p.B] + s.q0;
  return lse + (int64_t(s.b) * p.H + h) * p.Nq;
}

// A (nq, nk) block of the bias or dbias of (s, h): its first element and its row stride.
// Dense: any broadcast form through the strides; packed: the contiguous [H, nq, nk] block of s.
template <class T>
struct Block {
  T* ptr = nullptr;
  int64_t rs = 0;
};

template <class T>
Block<T> bias_block(T* base, const FlashBiasParams& p, const Seq& s, int h, int64_t batch_stride,
                    int64_t head_stride, int64_t row_stride) {
  if (base == nullptr) return {};
  if (s.packed) return {base + p.bias_seq_offsets[s.b] + int64_t(h) * s.nq * s.nk, s.nk};
  return {base + s.b * batch_stride + h * head_stride, row_stride};
}

// ---- the bias source: dense block and/or relative-position row -------------------------------

// A tile row whose first column has the offset d0 = j0 − i splits into three runs of columns:
// [0, lo) with offset < −R (bin 0), [lo, hi) with −R ≤ offset ≤ R (bins bin, bin+1, … of T's
// row, contiguous) and [hi, cols) with offset > R (bin 2R).
struct RelposRuns {
  int lo = 0, hi = 0;
  int64_t bin = 0;  // the bin of column lo (meaningful when lo < hi)
};

inline RelposRuns relpos_runs(int64_t d0, int cols, int R) {
  RelposRuns r;
  r.lo = static_cast<int>(std::clamp<int64_t>(-int64_t(R) - d0, 0, cols));
  r.hi = static_cast<int>(std::clamp<int64_t>(int64_t(R) - d0 + 1, r.lo, cols));
  r.bin = d0 + r.lo + R;
  return r;
}

// The bias of one (b,h) problem: B[i,j] = dense[i·rs + j] (if present) + rel[clip(j−i,−R,R)+R]
// (if present), for positions i, j inside the sequence.
template <class T>
struct BiasSource {
  Block<const T> dense;    // null ptr = no dense bias
  const T* rel = nullptr;  // T[h, :] (2R+1); null = no relative-position bias
  int R = 0;

  bool any() const { return dense.ptr != nullptr || rel != nullptr; }

  // tile[r, c] += B[i0 + r, j0 + c]   tile:(rows, cols)
  template <class Tile>
  void add_to(Tile& tile, int i0, int rows, int j0, int cols) const {
    for (int r = 0; r < rows; ++r) {
      auto row = tile.row(r);
      if (dense.ptr != nullptr)
        row += Eigen::Map<const RowVec<T>>(dense.ptr + (i0 + r) * dense.rs + j0, cols);
      if (rel != nullptr) {
        const RelposRuns u = relpos_runs(int64_t(j0) - (i0 + r), cols, R);
        if (u.lo > 0) row.head(u.lo).array() += rel[0];
        if (u.hi > u.lo)
          row.segment(u.lo, u.hi - u.lo) += Eigen::Map<const RowVec<T>>(rel + u.bin, u.hi - u.lo);
        if (u.hi < cols) row.tail(cols - u.hi).array() += rel[2 * R];
      }
    }
  }
};

// The bins of T that a problem of at most Nq × Nk can touch: offsets −(Nq−1) … Nk−1, clipped.
// dT partials cover only these (a table far wider than the sequences costs nothing extra).
struct BinWindow {
  int64_t lo = 0, n = 0;
};

BinWindow bin_window(const FlashBiasParams& p) {
  const int64_t R = p.relpos_clip;
  const int64_t lo = std::clamp<int64_t>(-(int64_t(p.Nq) - 1), -R, R) + R;
  const int64_t hi = std::clamp<int64_t>(int64_t(p.Nk) - 1, -R, R) + R;
  return {lo, std::max<int64_t>(hi - lo + 1, 0)};
}

// ---- one (b,h) problem ------------------------------------------------------------------------

// Everything one (b,h) attention problem reads.
template <class T>
struct HeadProblem {
  int Nq = 0, Nk = 0, D = 0;
  T scale = 1;
  bool causal = false;
  Slice<const T> q, k, v;
  BiasSource<T> bias;
  const T* key_add = nullptr;  // (Nk): 0 for a kept key, −inf for a padded one; null = no mask

  // Keys that rows [i0, i0+rows) may see end before this column (causal); may be <= 0.
  int key_end(int i0, int rows) const {
    if (!causal) return Nk;
    return static_cast<int>(std::min<int64_t>(Nk, int64_t(i0) + rows + Nk - Nq));
  }
};

template <class T>
HeadProblem<T> head_problem(const FlashBiasParams& p, const Seq& s, int h, const T* key_add) {
  HeadProblem<T> hp;
  hp.Nq = s.nq;
  hp.Nk = s.nk;
  hp.D = p.D;
  hp.scale = static_cast<T>(p.scale);
  hp.causal = p.causal;
  hp.q = q_slice(static_cast<const T*>(p.q), p.q_stride, s, h);
  hp.k = k_slice(static_cast<const T*>(p.k), p.k_stride, s, h);
  hp.v = k_slice(static_cast<const T*>(p.v), p.v_stride, s, h);
  hp.bias.dense = bias_block(static_cast<const T*>(p.bias), p, s, h, p.bias_batch_stride, p.bias_head_stride,
                             p.bias_row_stride);
  if (p.relpos_table != nullptr) {
    hp.bias.rel = static_cast<const T*>(p.relpos_table) + int64_t(h) * (2 * p.relpos_clip + 1);
    hp.bias.R = p.relpos_clip;
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
  if (hp.bias.any()) hp.bias.add_to(tile, i0, rows, j0, cols);
  if (hp.key_add != nullptr) {
    for (int r = 0; r < rows; ++r) tile.row(r) += Eigen::Map<const RowVec<T>>(hp.key_add + j0, cols);
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
        // A NaN score makes the row NaN, as in exact arithmetic (std::max would drop it, and a
        // row of NaN scores would pass for a fully masked one: output 0, the NaN hidden).
        const T row_max = srow.template maxCoeff<Eigen::PropagateNaN>();
        const T m_new = std::isnan(row_max) || std::isnan(w.m[r]) ? std::numeric_limits<T>::quiet_NaN()
                                                                  : std::max(w.m[r], row_max);
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
      const Seq s = sequence(p, b);
      if (s.nq == 0) continue;
      const T* key_add = key_add_row(p, b, w.key_add);
      forward_head(head_problem<T>(p, s, h, key_add), q_slice(static_cast<T*>(p.out), p.out_stride, s, h),
                   lse_row(static_cast<T*>(p.lse), p, s, h), w);
    }
  }
}

// ---- backward -----------------------------------------------------------------------------

template <class T>
struct BwdScratch {
  RowMat<T> s, dp;                                // (kBlockQ, kBlockK) P, then dP and dS
  RowMat<T> dq;                                   // (kBlockQ, D) dQ of the row block, unscaled
  RowMat<T> dk, dv;                               // (Nk, D) dK (unscaled), dV of the whole head
  Eigen::Array<T, Eigen::Dynamic, 1> delta, lse;  // (kBlockQ)
  std::vector<T> key_add;                         // (Nk)
  BwdScratch(int Nk, int D)
      : s(kBlockQ, kBlockK),
        dp(kBlockQ, kBlockK),
        dq(kBlockQ, D),
        dk(Nk, D),
        dv(Nk, D),
        delta(kBlockQ),
        lse(kBlockQ) {}
};

// Where one (b,h) task writes its gradients; null members are not wanted.
template <class T>
struct HeadGrads {
  Slice<const T> out, dout;
  const T* lse = nullptr;  // (Nq)
  Slice<T> dq, dk, dv;
  Block<T> dbias;          // (Nq, Nk)
  bool dbias_add = false;  // += into dbias (else =)
  double* drel = nullptr;  // this (b,h)'s partial dT over the bins [drel_lo, drel_lo + n), +=
  int64_t drel_lo = 0;
};

// part[bin − lo] += Σ of the row's dS that read T[h, bin], for one tile row (see RelposRuns).
template <class Row>
void reduce_relpos_row(const Row& ds, int64_t d0, int R, double* part, int64_t lo) {
  const int cols = static_cast<int>(ds.size());
  const RelposRuns u = relpos_runs(d0, cols, R);
  if (u.lo > 0) part[0 - lo] += ds.head(u.lo).template cast<double>().sum();
  if (u.hi > u.lo)
    Eigen::Map<Eigen::Array<double, 1, Eigen::Dynamic>>(part + (u.bin - lo), u.hi - u.lo) +=
        ds.segment(u.lo, u.hi - u.lo).template cast<double>().array();
  if (u.hi < cols) part[2 * int64_t(R) - lo] += ds.tail(cols - u.hi).template cast<double>().sum();
}

template <class T>
void backward_head(const HeadProblem<T>& hp, const HeadGrads<T>& g, BwdScratch<T>& w) {
  const int D = hp.D, Nk = hp.Nk;
  const bool want_dq = g.dq.ptr != nullptr, want_dk = g.dk.ptr != nullptr;
  const bool want_dv = g.dv.ptr != nullptr, want_db = g.dbias.ptr != nullptr;
  const bool want_dt = g.drel != nullptr;
  const bool want_ds = want_dq || want_dk || want_db || want_dt;
  if (want_dk) w.dk.topRows(Nk).setZero();
  if (want_dv) w.dv.topRows(Nk).setZero();

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
          Eigen::Map<RowVec<T>> db(g.dbias.ptr + (i0 + r) * g.dbias.rs + j0, cols);
          if (g.dbias_add)
            db += dS.row(r);
          else
            db = dS.row(r);
        }
      }
      if (want_dt) {
        for (int r = 0; r < rows; ++r)
          reduce_relpos_row(dS.row(r), int64_t(j0) - (i0 + r), hp.bias.R, g.drel, g.drel_lo);
      }
      if (want_dq) dq.noalias() += dS * hp.k.rows(j0, cols, D);
      if (want_dk) w.dk.middleRows(j0, cols).noalias() += dS.transpose() * hp.q.rows(i0, rows, D);
    }

    if (want_db && !g.dbias_add && j_end < Nk) {  // keys hidden by the causal mask: dS = 0
      for (int r = 0; r < rows; ++r)
        std::fill(g.dbias.ptr + (i0 + r) * g.dbias.rs + j_end, g.dbias.ptr + (i0 + r) * g.dbias.rs + Nk,
                  T(0));
    }
    if (want_dq) g.dq.rows_mut(i0, rows, D) = hp.scale * dq;
  }
  if (want_dk) g.dk.rows_mut(0, Nk, D) = hp.scale * w.dk.topRows(Nk);
  if (want_dv) g.dv.rows_mut(0, Nk, D) = w.dv.topRows(Nk);
}

// drelpos_table (=|+=) Σ_b partial[b, h, :] with b in order; bins no problem can reach get 0.
// partial:(B, H, win.n) double
template <class T>
void sum_relpos_partials(const FlashBiasBwdParams& p, const std::vector<double>& partial,
                         const BinWindow& win) {
  const int64_t bins = 2 * int64_t(p.relpos_clip) + 1;
  T* dt = static_cast<T*>(p.drelpos_table);
  for (int h = 0; h < p.H; ++h) {
    for (int64_t r = 0; r < bins; ++r) {
      double sum = p.dbias_accumulate ? double(dt[h * bins + r]) : 0.0;
      if (r >= win.lo && r < win.lo + win.n) {
        for (int b = 0; b < p.B; ++b) sum += partial[(int64_t(b) * p.H + h) * win.n + r - win.lo];
      }
      dt[h * bins + r] = static_cast<T>(sum);
    }
  }
}

template <class T>
void backward_impl(const FlashBiasBwdParams& p) {
  const bool want_db = p.dbias != nullptr;
  const bool packed = p.cu_seqlens_q != nullptr;
  // A broadcast axis of length 1 is not shared: only a length > 1 axis with stride 0 is.
  // (A packed bias has one block per (sequence, head): never shared.)
  const bool shared_b = want_db && !packed && p.B > 1 && p.dbias_batch_stride == 0;
  const bool shared_h = want_db && !packed && p.H > 1 && p.dbias_head_stride == 0;

  // Both shared: each head's contribution goes to its own partial (H, Nq, Nk), summed below.
  std::vector<T> partial;
  if (shared_b && shared_h) partial.resize(size_t(p.H) * p.Nq * p.Nk);

  // dT: one partial table per (b,h) over the reachable bins, summed over b below.
  const bool want_dt = p.drelpos_table != nullptr;
  const BinWindow win = want_dt ? bin_window(p) : BinWindow{};
  std::vector<double> rel_partial;
  if (want_dt) rel_partial.assign(size_t(p.B) * p.H * win.n, 0.0);

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
        const Seq s = sequence(p, b);
        const T* key_add = key_add_row(p, b, w.key_add);
        HeadGrads<T> g;
        g.out = q_slice(static_cast<const T*>(p.out), p.out_stride, s, h);
        g.dout = q_slice(static_cast<const T*>(p.dout), p.dout_stride, s, h);
        g.lse = lse_row(static_cast<const T*>(p.lse), p, s, h);
        g.dq = q_slice(static_cast<T*>(p.dq), p.dq_stride, s, h);
        g.dk = k_slice(static_cast<T*>(p.dk), p.dk_stride, s, h);
        g.dv = k_slice(static_cast<T*>(p.dv), p.dv_stride, s, h);
        if (want_db) {
          if (!partial.empty()) {
            g.dbias = {partial.data() + int64_t(h) * p.Nq * p.Nk, p.Nk};
            g.dbias_add = u > 0;
          } else {
            g.dbias = bias_block(static_cast<T*>(p.dbias), p, s, h, p.dbias_batch_stride, p.dbias_head_stride,
                                 p.dbias_row_stride);
            g.dbias_add = p.dbias_accumulate || u > 0;
          }
        }
        if (want_dt) {
          g.drel = rel_partial.data() + (int64_t(b) * p.H + h) * win.n;
          g.drel_lo = win.lo;
        }
        if (s.nq == 0 && s.nk == 0) continue;
        if (s.nq == 0) {  // no query sees these keys: dk = dv = 0
          if (g.dk.ptr != nullptr) g.dk.rows_mut(0, s.nk, p.D).setZero();
          if (g.dv.ptr != nullptr) g.dv.rows_mut(0, s.nk, p.D).setZero();
          continue;
        }
        backward_head(head_problem<T>(p, s, h, key_add), g, w);
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
  if (want_dt) sum_relpos_partials<T>(p, rel_partial, win);
}

// ---- validation ---------------------------------------------------------------------------

// The packed-batch fields: both cu_seqlens or neither, each starting at 0 and nondecreasing,
// lengths within Nq / Nk, no key padding mask, bias blocks that fit between their offsets.
void check_packed(const FlashBiasParams& p, const char* fn) {
  PF_CHECK((p.cu_seqlens_q == nullptr) == (p.cu_seqlens_k == nullptr),
           fn << ": a packed batch needs both cu_seqlens_q and cu_seqlens_k, got cu_seqlens_q="
              << p.cu_seqlens_q << " cu_seqlens_k=" << p.cu_seqlens_k);
  if (p.cu_seqlens_q == nullptr) {
    PF_CHECK(p.bias_seq_offsets == nullptr,
             fn << ": bias_seq_offsets is set but the batch is not packed (no cu_seqlens)");
    return;
  }
  PF_CHECK(p.key_padding_mask == nullptr,
           fn << ": a key_padding_mask is not supported with a packed batch (the sequence lengths"
                 " say which keys exist)");
  struct Side {
    const int32_t* cu;
    const char *name, *bound_name;
    int bound;
  };
  for (const Side& side :
       {Side{p.cu_seqlens_q, "cu_seqlens_q", "Nq", p.Nq}, Side{p.cu_seqlens_k, "cu_seqlens_k", "Nk", p.Nk}}) {
    const int32_t* cu = side.cu;
    const char* name = side.name;
    PF_CHECK(cu[0] == 0, fn << ": " << name << "[0] must be 0, got " << cu[0]);
    for (int b = 0; b < p.B; ++b) {
      const int64_t n = int64_t(cu[b + 1]) - cu[b];
      PF_CHECK(n >= 0, fn << ": " << name << " must be nondecreasing, got " << name << "[" << b
                          << "]=" << cu[b] << " > " << name << "[" << b + 1 << "]=" << cu[b + 1]);
      PF_CHECK(n <= side.bound, fn << ": sequence " << b << " has length " << n << " in " << name
                                   << ", more than the bound " << side.bound_name << "=" << side.bound);
    }
  }
  if (p.bias != nullptr) {
    PF_CHECK(p.bias_seq_offsets != nullptr,
             fn << ": a packed batch with a bias needs bias_seq_offsets (B+1)");
    PF_CHECK(p.bias_seq_offsets[0] >= 0,
             fn << ": bias_seq_offsets[0] must be >= 0, got " << p.bias_seq_offsets[0]);
    for (int b = 0; b < p.B; ++b) {
      const int64_t need = int64_t(p.H) * (p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b]) *
                           (p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]);
      const int64_t have = p.bias_seq_offsets[b + 1] - p.bias_seq_offsets[b];
      PF_CHECK(have >= need, fn << ": bias block " << b << " needs H·nq·nk = " << need
                                << " elements, bias_seq_offsets leaves " << have << " ("
                                << p.bias_seq_offsets[b] << " to " << p.bias_seq_offsets[b + 1] << ")");
    }
  }
}

void check_common(const FlashBiasParams& p, const char* fn) {
  const bool packed = p.cu_seqlens_q != nullptr;
  // A packed batch may have Nq = 0 or Nk = 0 (every sequence empty); a dense one may not.
  const int min_n = packed ? 0 : 1;
  PF_CHECK(p.B >= 1 && p.H >= 1 && p.Nq >= min_n && p.Nk >= min_n && p.D >= 1,
           fn << ": sizes must all be >= 1 (Nq, Nk >= 0 when packed), got B=" << p.B << " H=" << p.H
              << " Nq=" << p.Nq << " Nk=" << p.Nk << " D=" << p.D);
  PF_CHECK(p.dtype == ScalarType::F32 || p.dtype == ScalarType::F64,
           fn << ": the CPU kernel takes float32 or float64 inputs, got " << scalar_type_name(p.dtype));
  check_packed(p, fn);
  // Null data is allowed only where a packed batch has no rows on that side.
  const bool has_q = !packed || p.cu_seqlens_q[p.B] > 0;
  const bool has_k = !packed || p.cu_seqlens_k[p.B] > 0;
  PF_CHECK((p.q != nullptr || !has_q) && ((p.k != nullptr && p.v != nullptr) || !has_k),
           fn << ": q, k and v must be non-null (q=" << p.q << " k=" << p.k << " v=" << p.v << ")");
  PF_CHECK((p.out != nullptr && p.lse != nullptr) || !has_q,
           fn << ": out and lse must be non-null (out=" << p.out << " lse=" << p.lse << ")");
  if (p.bias != nullptr) {
    PF_CHECK(p.bias_dtype == p.dtype, fn << ": on the CPU the bias must have the inputs' dtype "
                                         << scalar_type_name(p.dtype) << ", got "
                                         << scalar_type_name(p.bias_dtype));
  }
  if (p.relpos_table != nullptr) {
    PF_CHECK(p.relpos_clip >= 0 && p.relpos_clip <= kMaxRelposClip,
             fn << ": relpos_clip R must be in [0, " << kMaxRelposClip << "], got " << p.relpos_clip);
    PF_CHECK(p.relpos_dtype == p.dtype, fn << ": on the CPU the relpos table must have the inputs' dtype "
                                           << scalar_type_name(p.dtype) << ", got "
                                           << scalar_type_name(p.relpos_dtype));
  }
}

}  // namespace

void flash_bias_forward(const FlashBiasParams& p) {
  check_common(p, "flash_bias_forward");
  if (p.dtype == ScalarType::F64)
    forward_impl<double>(p);
  else
    forward_impl<float>(p);
}

void flash_bias_backward(const FlashBiasBwdParams& p) {
  const char* fn = "flash_bias_backward";
  check_common(p, fn);
  const bool packed = p.cu_seqlens_q != nullptr;
  PF_CHECK(p.dout != nullptr || (packed && p.cu_seqlens_q[p.B] == 0), fn << ": dout must be non-null");
  if (p.dbias != nullptr) {
    PF_CHECK(p.bias != nullptr, fn << ": dbias was requested but there is no bias");
    // dbias has the bias's shape: the same axes broadcast (a length-1 axis may have any stride).
    // A packed dbias uses the bias's offsets: nothing to compare.
    PF_CHECK(packed || p.B == 1 || (p.bias_batch_stride == 0) == (p.dbias_batch_stride == 0),
             fn << ": dbias must be broadcast over the batch exactly when the bias is; bias batch"
                   " stride "
                << p.bias_batch_stride << ", dbias batch stride " << p.dbias_batch_stride);
    PF_CHECK(packed || p.H == 1 || (p.bias_head_stride == 0) == (p.dbias_head_stride == 0),
             fn << ": dbias must be broadcast over heads exactly when the bias is; bias head"
                   " stride "
                << p.bias_head_stride << ", dbias head stride " << p.dbias_head_stride);
  }
  if (p.drelpos_table != nullptr) {
    PF_CHECK(p.relpos_table != nullptr, fn << ": drelpos_table was requested but there is no relpos_table");
  }
  if (p.dq == nullptr && p.dk == nullptr && p.dv == nullptr && p.dbias == nullptr &&
      p.drelpos_table == nullptr)
    return;
  if (p.dtype == ScalarType::F64)
    backward_impl<double>(p);
  else
    backward_impl<float>(p);
}

}  // namespace pf::kernels::cpu
