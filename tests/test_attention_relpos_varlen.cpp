// The attention op's two extra modes (framework/ops/attention.cpp, issue 5) on the CPU:
//   - the fused relative-position table T (H, 2R+1): attention(q, k, v, bias, T, opt);
//   - packed variable-length batches: opt.cu_seqlens_q / cu_seqlens_k, q (Tq,H,D), 1-D bias.
// 1. float64 central-difference gradient checks of q, k, v, bias and T (framework/gradcheck.h);
// 2. the relpos op against the plain op with the relative-position bias materialised (values, and
//    dT against dbias reduced over the clipped diagonals);
// 3. a packed batch against each of its sequences run alone through the dense op (values and
//    every gradient), lengths 0 and 1 and nq ≠ nk included, float64 and float32;
// 4. one-line errors for bad shapes, lengths and dtypes.
// Inputs are drawn fresh each run; the seed is printed and PF_TEST_SEED=<n> replays a run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "framework/autograd.h"
#include "framework/gradcheck.h"
#include "framework/ops.h"
#include "framework/random.h"
#include "framework/tensor.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

// Float64 gradient check, eps 1e-6: truncation ~eps²·|f'''| ≈ 1e-12, rounding ~2⁻⁵³·|L|/eps ≈
// 1e-10·|L|; with |L| = O(10) a correct gradient shows ~1e-9 and a wrong one O(1e-2) or more
// (the same reasoning and bound as tests/test_ops.cpp).
constexpr double kGradTol = 1e-7;

// ‖a − b‖₂ / ‖b‖₂ (‖a − b‖₂ when b = 0); NaN anywhere fails every comparison.
// The gradient checks call many tiny ops: one OpenMP thread (see tests/test_ops.cpp).
class SingleThreaded {
 public:
#ifdef _OPENMP
  SingleThreaded() : previous_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreaded() { omp_set_num_threads(previous_); }

 private:
  int previous_;
#endif
};

// Runs the gradient check of loss over params and expects every relative error <= kGradTol.
void expect_gradients(const std::string& what, const std::function<Tensor()>& loss,
                      const std::vector<std::pair<std::string, Tensor>>& params, Rng& rng) {
  GradcheckOptions opt;
  opt.seed = rng.next_u64();
  const auto entries = gradcheck(loss, params, opt);
  ASSERT_EQ(entries.size(), params.size());
  for (const GradcheckEntry& e : entries) {
    EXPECT_GT(e.checked, 0) << what << " d" << e.name;
    EXPECT_LE(e.rel_error, kGradTol) << what << " d" << e.name << ": max abs error " << e.max_abs_error;
    std::printf("gradcheck %-40s d%-5s rel error %.1e\n", what.c_str(), e.name.c_str(), e.rel_error);
  }
}

int relpos_bin(int64_t i, int64_t j, int R) {
  return static_cast<int>(std::clamp<int64_t>(j - i, -R, R) + R);
}

// ---- 1. gradient checks -----------------------------------------------------------------------

struct DenseSpec {
  int B, Nq, Nk, H, D;
  int bias_b, bias_h;  // 0 = no bias; else 1 or B (H)
  int R;
  bool mask = false, causal = false;
};

TEST(AttentionRelpos, Gradcheck) {
  const SingleThreaded one_thread;
  Rng rng = make_rng("relpos_gradcheck");
  for (const DenseSpec& c :
       {DenseSpec{2, 5, 7, 2, 3, 0, 0, 2},               // relpos alone, Nq < Nk
        DenseSpec{2, 6, 4, 3, 2, 2, 3, 3, false, true},  // + per-(b,h) bias, causal, Nq > Nk
        DenseSpec{1, 4, 4, 2, 3, 1, 1, 0},               // R = 0: dT = 0 exactly
        DenseSpec{2, 5, 6, 2, 2, 1, 2, 9, true, false},  // R ≥ N, key padding
        DenseSpec{3, 3, 5, 1, 4, 3, 1, 3, false, true}}) {
    const std::string what = "relpos B" + std::to_string(c.B) + " " + std::to_string(c.Nq) + "x" +
                             std::to_string(c.Nk) + " R" + std::to_string(c.R);
    std::vector<std::pair<std::string, Tensor>> params = {
        {"q", leaf(randn({c.B, c.Nq, c.H, c.D}, rng, DType::F64))},
        {"k", leaf(randn({c.B, c.Nk, c.H, c.D}, rng, DType::F64))},
        {"v", leaf(randn({c.B, c.Nk, c.H, c.D}, rng, DType::F64))},
        {"T", leaf(randn({c.H, 2 * c.R + 1}, rng, DType::F64))}};
    Tensor bias;
    if (c.bias_b > 0) {
      bias = leaf(randn({c.bias_b, c.bias_h, c.Nq, c.Nk}, rng, DType::F64));
      params.push_back({"bias", bias});
    }
    ops::AttentionOptions opt;
    opt.causal = c.causal;
    if (c.mask) {  // the last key of every batch padded
      std::vector<uint8_t> m(size_t(c.B) * c.Nk, 0);
      for (int b = 0; b < c.B; ++b) m[size_t(b) * c.Nk + c.Nk - 1] = 1;
      opt.key_padding_mask = Tensor::from_vector(m, {c.B, c.Nk}, DType::U8);
    }
    const Tensor q = params[0].second, k = params[1].second, v = params[2].second, T = params[3].second;
    expect_gradients(
        what, [&] { return ops::attention(q, k, v, bias, T, opt); }, params, rng);
  }
}

// A packed batch: per-sequence query and key lengths.
struct PackedSpec {
  std::vector<int32_t> nq, nk;
  int H, D;
  bool bias;
  int R;  // -1 = no table
  bool causal = false;
  std::string str() const {
    std::string s = "packed";
    for (size_t b = 0; b < nq.size(); ++b) s += " " + std::to_string(nq[b]) + "x" + std::to_string(nk[b]);
    s += " H" + std::to_string(H) + (bias ? " bias" : "") + (R >= 0 ? " R" + std::to_string(R) : "") +
         (causal ? " causal" : "");
    return s;
  }
};

std::vector<int32_t> cumulative(const std::vector<int32_t>& n) {
  std::vector<int32_t> cu(n.size() + 1, 0);
  for (size_t b = 0; b < n.size(); ++b) cu[b + 1] = cu[b] + n[b];
  return cu;
}

int64_t packed_bias_size(const PackedSpec& c) {
  int64_t n = 0;
  for (size_t b = 0; b < c.nq.size(); ++b) n += int64_t(c.H) * c.nq[b] * c.nk[b];
  return n;
}

TEST(AttentionVarlen, Gradcheck) {
  const SingleThreaded one_thread;
  Rng rng = make_rng("varlen_gradcheck");
  for (const PackedSpec& c :
       {PackedSpec{{3, 0, 1, 4}, {2, 3, 0, 4}, 2, 3, true, -1},  // lengths 0 and 1, nq ≠ nk
        PackedSpec{{3, 2, 4}, {4, 2, 3}, 2, 2, true, 2, true},   // + relpos, causal
        PackedSpec{{5, 1}, {3, 1}, 1, 3, false, 1},              // relpos alone
        PackedSpec{{2, 3}, {2, 3}, 3, 2, true, 5, false}}) {     // R ≥ every length
    const std::vector<int32_t> cu_q = cumulative(c.nq), cu_k = cumulative(c.nk);
    std::vector<std::pair<std::string, Tensor>> params = {
        {"q", leaf(randn({cu_q.back(), c.H, c.D}, rng, DType::F64))},
        {"k", leaf(randn({cu_k.back(), c.H, c.D}, rng, DType::F64))},
        {"v", leaf(randn({cu_k.back(), c.H, c.D}, rng, DType::F64))}};
    Tensor bias, T;
    if (c.bias) {
      bias = leaf(randn({packed_bias_size(c)}, rng, DType::F64));
      params.push_back({"bias", bias});
    }
    if (c.R >= 0) {
      T = leaf(randn({c.H, 2 * c.R + 1}, rng, DType::F64));
      params.push_back({"T", T});
    }
    ops::AttentionOptions opt;
    opt.causal = c.causal;
    opt.cu_seqlens_q = cu_q;
    opt.cu_seqlens_k = cu_k;
    const Tensor q = params[0].second, k = params[1].second, v = params[2].second;
    expect_gradients(
        c.str(), [&] { return ops::attention(q, k, v, bias, T, opt); }, params, rng);
  }
}

// ---- 2. relpos = the plain op with the bias materialised ----------------------------------------

TEST(AttentionRelpos, EqualsMaterialisedBias) {
  Rng rng = make_rng("relpos_materialised");
  struct Case {
    int B, Nq, Nk, H, D, R;
    bool causal;
  };
  for (const Case& c :
       {Case{2, 17, 23, 3, 8, 4, false}, Case{1, 70, 65, 2, 16, 100, true}, Case{3, 9, 9, 2, 4, 0, true}}) {
    for (DType t : {DType::F64, DType::F32}) {
      SCOPED_TRACE(std::to_string(c.Nq) + "x" + std::to_string(c.Nk) + " R=" + std::to_string(c.R) + " " +
                   dtype_name(t));
      const Tensor q = randn({c.B, c.Nq, c.H, c.D}, rng, t), k = randn({c.B, c.Nk, c.H, c.D}, rng, t),
                   v = randn({c.B, c.Nk, c.H, c.D}, rng, t), g = randn({c.B, c.Nq, c.H, c.D}, rng, t);
      const Tensor table = randn({c.H, 2 * c.R + 1}, rng, t);
      const Tensor dense = randn({c.B, c.H, c.Nq, c.Nk}, rng, t);
      // the relative-position bias written out, added to the dense bias: (B,H,Nq,Nk)
      const std::vector<double> tv = table.to_vector<double>(), dv = dense.to_vector<double>();
      std::vector<double> full(dv.size());
      for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.H; ++h)
          for (int i = 0; i < c.Nq; ++i)
            for (int j = 0; j < c.Nk; ++j) {
              const size_t e = ((size_t(b) * c.H + h) * c.Nq + i) * c.Nk + j;
              full[e] = dv[e] + tv[size_t(h) * (2 * c.R + 1) + relpos_bin(i, j, c.R)];
            }
      ops::AttentionOptions opt;
      opt.causal = c.causal;
      Tensor q1 = leaf(q.clone()), k1 = leaf(k.clone()), v1 = leaf(v.clone()), b1 = leaf(dense.clone()),
             t1 = leaf(table.clone());
      Tensor out1 = ops::attention(q1, k1, v1, b1, t1, opt);
      out1.backward(g);
      Tensor q2 = leaf(q.clone()), k2 = leaf(k.clone()), v2 = leaf(v.clone()),
             b2 = leaf(Tensor::from_vector(full, dense.shape(), t));
      Tensor out2 = ops::attention(q2, k2, v2, b2, opt);
      out2.backward(g);
      // dT from the materialised op's dbias: summed over b, i, j of each (h, bin)
      const std::vector<double> db2 = b2.grad().to_vector<double>();
      std::vector<double> dt_want(tv.size(), 0.0);
      for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.H; ++h)
          for (int i = 0; i < c.Nq; ++i)
            for (int j = 0; j < c.Nk; ++j)
              dt_want[size_t(h) * (2 * c.R + 1) + relpos_bin(i, j, c.R)] +=
                  db2[((size_t(b) * c.H + h) * c.Nq + i) * c.Nk + j];
      // float64: rounding of the bias sum only (1e-12). float32: the materialised bias is rounded
      // to float once more than the fused one, ~2⁻²⁴ relative on scores of O(5), which moves
      // out and the gradients by a few 1e-7; dT sums up to B·Nq·Nk terms that cancel (each row of
      // dS sums to 0; R = 0 makes dT exactly 0), so it is judged against Σ|dbias| per bin.
      const double tol = t == DType::F64 ? 1e-12 : 2e-5;
      EXPECT_LE(rel_error(out1.to_vector<double>(), out2.to_vector<double>()), tol);
      EXPECT_LE(rel_error(q1.grad().to_vector<double>(), q2.grad().to_vector<double>()), tol);
      EXPECT_LE(rel_error(k1.grad().to_vector<double>(), k2.grad().to_vector<double>()), tol);
      EXPECT_LE(rel_error(v1.grad().to_vector<double>(), v2.grad().to_vector<double>()), tol);
      EXPECT_LE(rel_error(b1.grad().to_vector<double>(), db2), tol);
      std::vector<double> scale(tv.size(), 0.0);
      for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.H; ++h)
          for (int i = 0; i < c.Nq; ++i)
            for (int j = 0; j < c.Nk; ++j)
              scale[size_t(h) * (2 * c.R + 1) + relpos_bin(i, j, c.R)] +=
                  std::abs(db2[((size_t(b) * c.H + h) * c.Nq + i) * c.Nk + j]);
      const std::vector<double> dt = t1.grad().to_vector<double>();
      double err = 0, den = 0;
      for (size_t r = 0; r < dt.size(); ++r) {
        err += (dt[r] - dt_want[r]) * (dt[r] - dt_want[r]);
        den += scale[r] * scale[r];
      }
      EXPECT_LE(std::sqrt(err / den), tol) << "dT";
      EXPECT_EQ(t1.grad().shape(), table.shape());
      EXPECT_EQ(t1.grad().dtype(), t);
    }
  }
}

// The five-argument op is the relpos op without a table.
TEST(AttentionRelpos, NoTableIsThePlainOp) {
  Rng rng = make_rng("relpos_none");
  const Tensor q = randn({2, 7, 2, 4}, rng), k = randn({2, 9, 2, 4}, rng), v = randn({2, 9, 2, 4}, rng),
               bias = randn({1, 2, 7, 9}, rng);
  EXPECT_EQ(ops::attention(q, k, v, bias).to_vector<float>(),
            ops::attention(q, k, v, bias, Tensor()).to_vector<float>());
}

// ---- 3. packed = each sequence alone ------------------------------------------------------------

// Rows [r0, r0+n) of a (T, ...) tensor as a new (1, n, ...) tensor.
Tensor rows_as_batch(const Tensor& x, int64_t r0, int64_t n) {
  const int64_t row = x.numel() / x.size(0);
  const std::vector<double> all = x.to_vector<double>();
  Shape shape = x.shape();
  shape[0] = n;
  shape.insert(shape.begin(), 1);
  return Tensor::from_vector(std::vector<double>(all.begin() + r0 * row, all.begin() + (r0 + n) * row), shape,
                             x.dtype());
}

// Elements [e0, e0+n) of a 1-D tensor as a tensor of `shape`.
Tensor elements(const Tensor& x, int64_t e0, int64_t n, const Shape& shape) {
  const std::vector<double> all = x.to_vector<double>();
  return Tensor::from_vector(std::vector<double>(all.begin() + e0, all.begin() + e0 + n), shape, x.dtype());
}

std::vector<double> part(const std::vector<double>& x, int64_t e0, int64_t n) {
  return {x.begin() + e0, x.begin() + e0 + n};
}

void packed_equals_alone(const PackedSpec& c, DType t, Rng& rng) {
  SCOPED_TRACE(c.str() + " " + dtype_name(t));
  const int H = c.H, D = c.D, B = static_cast<int>(c.nq.size());
  const std::vector<int32_t> cu_q = cumulative(c.nq), cu_k = cumulative(c.nk);
  const Tensor q = randn({cu_q.back(), H, D}, rng, t), k = randn({cu_k.back(), H, D}, rng, t),
               v = randn({cu_k.back(), H, D}, rng, t), g = randn({cu_q.back(), H, D}, rng, t);
  const Tensor bias = c.bias ? randn({packed_bias_size(c)}, rng, t) : Tensor();
  const Tensor table = c.R >= 0 ? randn({H, 2 * c.R + 1}, rng, t) : Tensor();

  ops::AttentionOptions opt;
  opt.causal = c.causal;
  opt.cu_seqlens_q = cu_q;
  opt.cu_seqlens_k = cu_k;
  Tensor qp = leaf(q.clone()), kp = leaf(k.clone()), vp = leaf(v.clone());
  Tensor bp = c.bias ? leaf(bias.clone()) : Tensor(), tp = c.R >= 0 ? leaf(table.clone()) : Tensor();
  const Tensor out = ops::attention(qp, kp, vp, bp, tp, opt);
  out.backward(g);
  const std::vector<double> o = out.to_vector<double>(), dq = qp.grad().to_vector<double>(),
                            dk = kp.grad().to_vector<double>(), dv = vp.grad().to_vector<double>();
  const std::vector<double> db = c.bias ? bp.grad().to_vector<double>() : std::vector<double>();
  std::vector<double> dt_sum(c.R >= 0 ? table.numel() : 0, 0.0), dt_scale(dt_sum.size(), 0.0);

  // float64: the same kernel code on the same values, so only the dT sum order differs (1e-12).
  // float32: likewise bitwise-close; dT's per-sequence values are rounded to float before the
  // test sums them, ~2⁻²⁴ relative to Σ|dT_b| (judged against that).
  const double tol = t == DType::F64 ? 1e-12 : 1e-5;
  int64_t bias_at = 0;
  for (int b = 0; b < B; ++b) {
    const int64_t nq = c.nq[b], nk = c.nk[b], q0 = cu_q[b], k0 = cu_k[b];
    SCOPED_TRACE("sequence " + std::to_string(b));
    if (nq == 0 || nk == 0) {  // nothing to attend: out and dq rows 0; keys nobody sees: 0
      for (double x : part(o, q0 * H * D, nq * H * D)) ASSERT_EQ(x, 0.0);
      for (double x : part(dq, q0 * H * D, nq * H * D)) ASSERT_EQ(x, 0.0);
      for (double x : part(dk, k0 * H * D, nk * H * D)) ASSERT_EQ(x, 0.0);
      for (double x : part(dv, k0 * H * D, nk * H * D)) ASSERT_EQ(x, 0.0);
      continue;
    }
    ops::AttentionOptions one;
    one.causal = c.causal;
    Tensor qb = leaf(rows_as_batch(q, q0, nq)), kb = leaf(rows_as_batch(k, k0, nk)),
           vb = leaf(rows_as_batch(v, k0, nk));
    Tensor bb = c.bias ? leaf(elements(bias, bias_at, H * nq * nk, {1, H, nq, nk})) : Tensor();
    Tensor tb = c.R >= 0 ? leaf(table.clone()) : Tensor();
    const Tensor ob = ops::attention(qb, kb, vb, bb, tb, one);
    ob.backward(rows_as_batch(g, q0, nq));
    EXPECT_LE(rel_error(part(o, q0 * H * D, nq * H * D), ob.to_vector<double>()), tol) << "out";
    EXPECT_LE(rel_error(part(dq, q0 * H * D, nq * H * D), qb.grad().to_vector<double>()), tol) << "dq";
    EXPECT_LE(rel_error(part(dk, k0 * H * D, nk * H * D), kb.grad().to_vector<double>()), tol) << "dk";
    EXPECT_LE(rel_error(part(dv, k0 * H * D, nk * H * D), vb.grad().to_vector<double>()), tol) << "dv";
    if (c.bias)
      EXPECT_LE(rel_error(part(db, bias_at, H * nq * nk), bb.grad().to_vector<double>()), tol) << "dbias";
    if (c.R >= 0) {
      const std::vector<double> dtb = tb.grad().to_vector<double>();
      for (size_t r = 0; r < dtb.size(); ++r) {
        dt_sum[r] += dtb[r];
        dt_scale[r] += std::abs(dtb[r]);
      }
    }
    bias_at += H * nq * nk;
  }
  if (c.R >= 0) {
    const std::vector<double> dt = tp.grad().to_vector<double>();
    double err = 0, den = 0;
    for (size_t r = 0; r < dt.size(); ++r) {
      err += (dt[r] - dt_sum[r]) * (dt[r] - dt_sum[r]);
      den += dt_scale[r] * dt_scale[r];
    }
    EXPECT_LE(den > 0 ? std::sqrt(err / den) : std::sqrt(err), tol) << "dT";
  }
}

TEST(AttentionVarlen, PackedEqualsEachSequenceAlone) {
  Rng rng = make_rng("varlen_alone");
  const std::vector<PackedSpec> specs = {
      {{17, 0, 1, 40, 5}, {23, 4, 0, 40, 1}, 2, 8, true, -1},  // 0, 1, nq ≠ nk
      {{70, 3, 1, 33}, {65, 9, 1, 33}, 3, 16, true, 6, true},  // relpos, causal, > 1 tile
      {{12, 0, 29}, {12, 5, 31}, 2, 4, false, 40},             // relpos alone, R ≥ N
      {{1}, {1}, 1, 4, true, 0},                               // one token
      {{130, 20}, {66, 140}, 2, 8, true, 2, true}};            // several tiles both ways
  for (const PackedSpec& c : specs)
    for (DType t : {DType::F64, DType::F32}) packed_equals_alone(c, t, rng);
}

// ---- 4. errors ----------------------------------------------------------------------------------

#define EXPECT_PF_ERROR(stmt, substring)                                                              \
  do {                                                                                                \
    try {                                                                                             \
      stmt;                                                                                           \
      ADD_FAILURE() << #stmt " did not throw";                                                        \
    } catch (const ::pf::Error& e) {                                                                  \
      EXPECT_NE(std::string(e.what()).find(substring), std::string::npos) << "message: " << e.what(); \
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "not one line: " << e.what(); \
    }                                                                                                 \
  } while (0)

TEST(AttentionRelpos, Errors) {
  const Tensor q = Tensor::zeros({2, 5, 3, 4}), k = Tensor::zeros({2, 7, 3, 4});
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), Tensor::zeros({2, 5})),
                  "relpos_table must be (H=3, 2R+1) with an odd width, got float32[2, 5]");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), Tensor::zeros({3, 4})), "odd width, got float32[3, 4]");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), Tensor::zeros({3})), "relpos_table must be");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), Tensor::zeros({3, 5}, DType::F64)),
                  "relpos_table on the CPU must have q's dtype float32, got float64[3, 5]");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), Tensor::zeros({3, 5}, DType::I32)), "q's dtype float32");
}

TEST(AttentionVarlen, Errors) {
  // lengths q: 2, 0, 3 (Tq = 5); k: 3, 1, 2 (Tk = 6); H = 2, D = 4; bias 2·(6 + 0 + 6) = 24
  const Tensor q = Tensor::zeros({5, 2, 4}), k = Tensor::zeros({6, 2, 4});
  ops::AttentionOptions opt;
  opt.cu_seqlens_q = {0, 2, 2, 5};
  opt.cu_seqlens_k = {0, 3, 4, 6};
  EXPECT_NO_THROW(ops::attention(q, k, k, Tensor::zeros({24}), opt));
  EXPECT_NO_THROW(ops::attention(q, k, k, Tensor::zeros({24}), Tensor::zeros({2, 3}), opt));
  EXPECT_PF_ERROR(ops::attention(Tensor::zeros({6, 2, 4}), k, k, Tensor(), opt),
                  "q must be (Tq=5,H,D) for cu_seqlens_q, got float32[6, 2, 4]");
  EXPECT_PF_ERROR(ops::attention(Tensor::zeros({1, 5, 2, 4}), k, k, Tensor(), opt),
                  "a packed q must be (Tq,H,D), got float32[1, 5, 2, 4]");
  EXPECT_PF_ERROR(ops::attention(q, Tensor::zeros({5, 2, 4}), Tensor::zeros({5, 2, 4}), Tensor(), opt),
                  "k must be (Tk=6,H=2,D=4) for cu_seqlens_k and q, got float32[5, 2, 4]");
  EXPECT_PF_ERROR(ops::attention(q, k, Tensor::zeros({6, 2, 3}), Tensor(), opt), "v must have k's shape");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor::zeros({23}), opt),
                  "a packed bias must be 1-D with Σ H·nq_b·nk_b = 24 elements, got float32[23]");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor::zeros({2, 12}), opt), "got float32[2, 12]");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), Tensor::zeros({3, 3}), opt),
                  "relpos_table must be (H=2, 2R+1)");
  ops::AttentionOptions bad = opt;
  bad.key_padding_mask = Tensor::zeros({3, 3}, DType::U8);
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), bad),
                  "key_padding_mask is not supported with cu_seqlens");
  bad = opt;
  bad.cu_seqlens_q = {1, 2, 2, 5};
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), bad), "cu_seqlens_q[0] must be 0, got 1");
  bad = opt;
  bad.cu_seqlens_k = {0, 3, 2, 6};
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), bad),
                  "cu_seqlens_k must be nondecreasing, got cu_seqlens_k[1]=3 > cu_seqlens_k[2]=2");
  bad = opt;
  bad.cu_seqlens_k = {0, 3, 6};
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), bad),
                  "cu_seqlens_q and cu_seqlens_k must have the same length B+1, got 4 and 3");
  bad = opt;
  bad.cu_seqlens_q = {0};
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), bad), "must have B+1 >= 2 entries, got 1");
  // cu_seqlens_k alone, with dense tensors
  ops::AttentionOptions dense;
  dense.cu_seqlens_k = {0, 5};
  EXPECT_PF_ERROR(ops::attention(Tensor::zeros({1, 5, 2, 4}), Tensor::zeros({1, 5, 2, 4}),
                                 Tensor::zeros({1, 5, 2, 4}), Tensor(), dense),
                  "cu_seqlens_k given without cu_seqlens_q");
  // cu_seqlens_k empty = the query lengths
  ops::AttentionOptions same;
  same.cu_seqlens_q = {0, 2, 5};
  EXPECT_NO_THROW(ops::attention(q, q, q, Tensor(), same));
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), same),
                  "k must be (Tk=5,H=2,D=4) for cu_seqlens_k and q, got float32[6, 2, 4]");
}

}  // namespace
}  // namespace pf
