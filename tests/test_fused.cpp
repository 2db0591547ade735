// The fused ops of framework/ops.h on the CPU (framework/ops/fused.cpp, kernels/cpu/fused.h):
//   1. central-difference gradient checks in float64, every input, awkward sizes;
//   2. against the chain of ops each one replaces, forward and every gradient (float64), and
//      float32 against float64;
//   3. one-line errors for bad shapes and dtypes.
// The GPU kernels are checked against these CPU ones in tests/test_ops_cuda.cpp.
// pair_bias: LayerNorm + projection + permute; embedding_sum: two lookups added, one broadcast.
//
// Inputs are drawn fresh each run; the seed is printed and PF_TEST_SEED=<n> replays a run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "framework/autograd.h"
#include "framework/gradcheck.h"
#include "framework/ops.h"
#include "framework/random.h"
#include "framework/tensor.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

// Float64 central differences with eps 1e-6 (framework/gradcheck.h): an honest gradient shows a
// relative error around 1e-9 here (|L| = O(10)), a wrong one O(1e-2) or more.
constexpr double kGradTol = 1e-7;
// Fused against the chain, both float64: the same sums in another order, ~C·2⁻⁵³ ≈ 1e-14
// relative per value; 1e-11 leaves room for cancellation in small outputs.
constexpr double kChainTol = 1e-11;
// Float32 against float64 on float32-representable inputs: each output is a sum of C·H ≤ ~600
// products and row statistics over C values, so the norm-wise error is a few times
// √600·2⁻²⁴ ≈ 1.5e-6; 1e-5 holds with margin and a wrong kernel is off by O(1).
constexpr double kF32Tol = 1e-5;

// Sets ops::fused(op) for its scope.
class FuseGuard {
 public:
  FuseGuard(const char* op, bool on) : op_(op), previous_(ops::fused(op)) { ops::set_fused(op, on); }
  ~FuseGuard() { ops::set_fused(op_, previous_); }

 private:
  const char* op_;
  bool previous_;
};

struct PairShape {
  int64_t B, N, M, C, H;
  std::string str() const {
    return "B" + std::to_string(B) + " N" + std::to_string(N) + " M" + std::to_string(M) + " C" +
           std::to_string(C) + " H" + std::to_string(H);
  }
};

// Awkward on purpose: one pair, one channel (x̂ ≡ 0), N ≠ M, odd C, more heads than channels,
// C and H past the GPU kernel's compiled widths (the CPU takes any).
const std::vector<PairShape> kShapes = {{1, 1, 1, 1, 1}, {2, 5, 7, 3, 2},  {2, 9, 9, 16, 4},
                                        {1, 4, 3, 5, 9}, {3, 6, 6, 32, 8}, {1, 3, 4, 67, 17}};

// z with an offset mean (as real pair features have), γ around 1, β and W of either sign.
std::vector<Tensor> pair_inputs(const PairShape& s, Rng& rng, DType dtype) {
  Tensor z = ops::add(randn({s.B, s.N, s.M, s.C}, rng, DType::F64), Tensor::full({1}, 0.7, DType::F64));
  return {z.to(dtype), uniform({s.C}, 0.5, 1.5, rng, DType::F64).to(dtype),
          randn({s.C}, rng, DType::F64).to(dtype), randn({s.H, s.C}, rng, DType::F64).to(dtype)};
}

TEST(FusedPairBias, GradcheckFloat64) {
  for (const PairShape& s : kShapes) {
    SCOPED_TRACE(s.str());
    Rng rng = make_rng("grad" + s.str());
    std::vector<Tensor> in = pair_inputs(s, rng, DType::F64);
    for (Tensor& t : in) t.requires_grad_(true);
    GradcheckOptions opt;
    opt.max_elements = 200;
    opt.seed = test_seed();
    const auto entries = gradcheck([&] { return ops::pair_bias(in[0], in[1], in[2], in[3]); },
                                   {{"z", in[0]}, {"gamma", in[1]}, {"beta", in[2]}, {"w", in[3]}}, opt);
    for (const GradcheckEntry& e : entries) {
      EXPECT_LE(e.rel_error, kGradTol) << e.name << " (" << e.checked << " elements)";
      EXPECT_GT(e.checked, 0) << e.name;
    }
  }
}

// The fused op and the chain it replaces agree: forward and the gradient of every input.
TEST(FusedPairBias, MatchesTheChainOfOps) {
  for (const PairShape& s : kShapes) {
    SCOPED_TRACE(s.str());
    Rng rng = make_rng("chain" + s.str());
    const std::vector<Tensor> in = pair_inputs(s, rng, DType::F64);
    Tensor r;                                  // the upstream gradient
    std::vector<std::vector<Tensor>> results;  // [fused, chain] → out, dz, dγ, dβ, dW
    for (bool fused : {true, false}) {
      const FuseGuard guard("pair_bias", fused);
      std::vector<Tensor> x;
      for (const Tensor& t : in) x.push_back(t.clone().requires_grad_(true));
      Tensor out = ops::pair_bias(x[0], x[1], x[2], x[3]);
      ASSERT_EQ(out.shape(), (Shape{s.B, s.H, s.N, s.M}));
      if (!r.defined()) r = randn(out.shape(), rng, DType::F64);
      out.backward(r);
      results.push_back({out, x[0].grad(), x[1].grad(), x[2].grad(), x[3].grad()});
    }
    const char* names[] = {"out", "dz", "dgamma", "dbeta", "dw"};
    for (int k = 0; k < 5; ++k) {
      ASSERT_TRUE(results[0][k].defined() && results[1][k].defined()) << names[k];
      // dz and dγ of a one-channel row are zero in exact arithmetic: judge them absolutely.
      const double e = s.C == 1 && (k == 1 || k == 2)
                           ? std::sqrt(ops::sum_of_squares(ops::sub(results[0][k], results[1][k])))
                           : rel_error(results[0][k], results[1][k]);
      EXPECT_LE(e, kChainTol) << names[k];
    }
  }
}

TEST(FusedPairBias, Float32MatchesFloat64) {
  for (const PairShape& s : kShapes) {
    SCOPED_TRACE(s.str());
    Rng rng = make_rng("f32" + s.str());
    const std::vector<Tensor> in32 = pair_inputs(s, rng, DType::F32);
    std::vector<std::vector<Tensor>> results;
    Tensor r32 = randn({s.B, s.H, s.N, s.M}, rng, DType::F32);
    for (DType dt : {DType::F32, DType::F64}) {
      std::vector<Tensor> x;
      for (const Tensor& t : in32) x.push_back(t.to(dt).clone().requires_grad_(true));
      Tensor out = ops::pair_bias(x[0], x[1], x[2], x[3]);
      out.backward(r32.to(dt));
      for (const Tensor& t : x) EXPECT_EQ(t.grad().dtype(), dt);
      results.push_back({out, x[0].grad(), x[1].grad(), x[2].grad(), x[3].grad()});
    }
    const char* names[] = {"out", "dz", "dgamma", "dbeta", "dw"};
    for (int k = 0; k < 5; ++k) {
      // one-channel rows: dz and dγ are rounding noise around 0 (see MatchesTheChainOfOps)
      if (s.C == 1 && (k == 1 || k == 2)) continue;
      EXPECT_LE(rel_error(results[0][k], results[1][k]), kF32Tol) << names[k];
    }
  }
}

// z read by several ops, as the pair representation is by every layer: its gradient is the sum
// of theirs. The pair_bias calls that find a sum autograd owns add dz into it (make_result_into,
// framework/autograd.h; the kernel's accumulate path) instead of returning a fresh tensor. The
// sum equals the one the unfused chain (ordinary ops, fresh gradients) gives, in float64 to
// rounding, for every input; last_backward_sums says how the sums were made. z is made by an op
// (its gradient flows through the graph; a leaf's is summed apart) and read by three pair_bias
// calls and by mul(z, z) (two more arrivals, whose first is not autograd's to add into), in
// both orders of the loss's terms.
TEST(FusedPairBias, GradientOfASharedInputIsSummedInPlace) {
  const PairShape s{2, 5, 7, 6, 3};
  Rng rng = make_rng("into");
  const std::vector<Tensor> in = pair_inputs(s, rng, DType::F64);
  const Tensor w3 = randn({s.H, s.C}, rng, DType::F64);
  const Tensor r = randn({s.B, s.H, s.N, s.M}, rng, DType::F64);
  const Tensor rz = randn({s.B, s.N, s.M, s.C}, rng, DType::F64);
  for (bool pair_first : {true, false}) {
    SCOPED_TRACE(pair_first ? "pair_bias terms first" : "mul term first");
    std::vector<std::vector<Tensor>> grads;  // [fused, chain] → dx, dγ, dβ, dW
    std::vector<BackwardSums> sums;
    for (bool fused : {true, false}) {
      const FuseGuard guard("pair_bias", fused);
      std::vector<Tensor> x;
      for (const Tensor& t : in) x.push_back(t.clone().requires_grad_(true));
      const Tensor z = ops::scale(x[0], 1.5);
      auto term = [&](const Tensor& w) { return ops::sum(ops::mul(ops::pair_bias(z, x[1], x[2], w), r)); };
      const Tensor pairs = ops::add(ops::add(term(x[3]), term(ops::scale(x[3], -0.5))), term(w3));
      const Tensor other = ops::sum(ops::mul(ops::mul(z, z), rz));
      (pair_first ? ops::add(pairs, other) : ops::add(other, pairs)).backward();
      grads.push_back({x[0].grad(), x[1].grad(), x[2].grad(), x[3].grad()});
      sums.push_back(last_backward_sums());
    }
    const char* names[] = {"dx", "dgamma", "dbeta", "dw"};
    for (int k = 0; k < 4; ++k) EXPECT_LE(rel_error(grads[0][k], grads[1][k]), kChainTol) << names[k];
    // Five arrivals at z make four additions; whatever the order, at least the second and third
    // pair_bias calls find a sum that autograd owns (the first call's fresh dz, or the sum
    // autograd made of mul's two) and add into it; the chain's ops never do.
    EXPECT_GE(sums[0].by_op, 2);
    EXPECT_EQ(sums[0].fresh + sums[0].in_place + sums[0].by_op, 4);
    EXPECT_EQ(sums[1].by_op, 0);
  }
}

// A gradient an op hands on may alias another: add's backward gives its one gradient tensor to
// both inputs, z and u. When that tensor is the first to reach z, it is not a sum autograd owns,
// so no pair_bias call may add into it: that would also change u's gradient, which u's node
// (run last: u is read first, by a term the graph search meets before the others) sums later.
// In the order "add term last" the add node runs before the pair_bias calls; the other order
// runs them first. u's gradient stays exactly what add and mul passed it; z's is the chain's.
TEST(FusedPairBias, AnAliasedFirstGradientIsNotAddedInto) {
  const PairShape s{1, 4, 5, 7, 2};
  Rng rng = make_rng("alias");
  const std::vector<Tensor> in = pair_inputs(s, rng, DType::F64);
  const Tensor r = randn({s.B, s.H, s.N, s.M}, rng, DType::F64);
  const Tensor ry = randn({s.B, s.N, s.M, s.C}, rng, DType::F64),
               ru = randn({s.B, s.N, s.M, s.C}, rng, DType::F64);
  const Tensor v0 = randn({s.B, s.N, s.M, s.C}, rng, DType::F64);
  for (bool add_last : {true, false}) {
    SCOPED_TRACE(add_last ? "add term last" : "add term first");
    std::vector<Tensor> dx, dv;  // [fused, chain]
    for (bool fused : {true, false}) {
      const FuseGuard guard("pair_bias", fused);
      std::vector<Tensor> x;
      for (const Tensor& t : in) x.push_back(t.clone().requires_grad_(true));
      Tensor v = v0.clone().requires_grad_(true);
      const Tensor z = ops::scale(x[0], 1.5), u = ops::scale(v, 2.0);
      const Tensor added = ops::sum(ops::mul(ops::add(z, u), ry));  // add hands one tensor to z and u
      const Tensor pairs =
          ops::add(ops::sum(ops::mul(ops::pair_bias(z, x[1], x[2], x[3]), r)),
                   ops::sum(ops::mul(ops::pair_bias(z, x[1], x[2], ops::scale(x[3], 0.3)), r)));
      const Tensor rest = ops::add(ops::sum(ops::mul(u, ru)), pairs);
      (add_last ? ops::add(rest, added) : ops::add(added, rest)).backward();
      dx.push_back(x[0].grad());
      dv.push_back(v.grad());
    }
    EXPECT_LE(rel_error(dx[0], dx[1]), kChainTol);
    // v's gradient is 2·(ry + ru) exactly (one rounding in the sum, scaling by 2 is exact).
    EXPECT_EQ(dv[0].to_vector<double>(), ops::scale(ops::add(ry, ru), 2.0).to_vector<double>());
  }
}

// Only the inputs that require grad get one; the others are left alone.
TEST(FusedPairBias, GradientsOnlyWhereWanted) {
  Rng rng = make_rng("wanted");
  std::vector<Tensor> in = pair_inputs({2, 3, 3, 4, 2}, rng, DType::F64);
  in[3].requires_grad_(true);  // W only
  ops::pair_bias(in[0], in[1], in[2], in[3]).backward(randn({2, 2, 3, 3}, rng, DType::F64));
  EXPECT_FALSE(in[0].grad().defined());
  EXPECT_FALSE(in[1].grad().defined());
  EXPECT_TRUE(in[3].grad().defined());
  NoGradGuard ng;  // no graph without grad mode
  EXPECT_EQ(ops::pair_bias(in[0], in[1], in[2], in[3]).grad_fn(), nullptr);
}

TEST(FusedPairBias, ErrorsNameWhatIsWrong) {
  Rng rng = make_rng("errors");
  const std::vector<Tensor> in = pair_inputs({1, 2, 2, 4, 3}, rng, DType::F32);
  expect_error(
      [&] {
        ops::pair_bias(ops::reshape(in[0], {2, 2, 4}), in[1], in[2], in[3]);
      },
      "z must be (B,N,M,C)");
  expect_error([&] { ops::pair_bias(in[0], randn({5}, rng), in[2], in[3]); }, "gamma and beta must be (4)");
  expect_error([&] { ops::pair_bias(in[0], in[1], in[2], randn({3, 5}, rng)); }, "w must be (H,4)");
  expect_error([&] { ops::pair_bias(in[0].to(DType::F64), in[1], in[2], in[3]); }, "same dtype");
}

// ---- pair_bias_layers ---------------------------------------------------------------------------

// L layers' parameters for one z: γ_l around 1, β_l and W_l of either sign.
struct Layers {
  std::vector<Tensor> gammas, betas, ws;
};
Layers layer_inputs(const PairShape& s, int64_t L, Rng& rng, DType dtype) {
  Layers p;
  for (int64_t l = 0; l < L; ++l) {
    p.gammas.push_back(uniform({s.C}, 0.5, 1.5, rng, DType::F64).to(dtype));
    p.betas.push_back(randn({s.C}, rng, DType::F64).to(dtype));
    p.ws.push_back(randn({s.H, s.C}, rng, DType::F64).to(dtype));
  }
  return p;
}

// The stacked op is pair_bias per layer: each slice's value and every input's gradient equal the
// per-layer ops' (float64: the same kernel per layer; z's gradient is summed in another order),
// with one layer's slice left out of the loss (its parameters' gradients zero), and the slices
// are views of one (L,B,H,N,M) tensor in layer order.
TEST(FusedPairBiasLayers, MatchesPairBiasPerLayer) {
  for (const PairShape& s : kShapes) {
    for (int64_t L : {1, 3}) {
      SCOPED_TRACE(s.str() + " L" + std::to_string(L));
      Rng rng = make_rng("layers" + s.str() + std::to_string(L));
      const Tensor z0 = pair_inputs(s, rng, DType::F64)[0];
      const Layers p0 = layer_inputs(s, L, rng, DType::F64);
      std::vector<Tensor> r;
      for (int64_t l = 0; l < L; ++l) r.push_back(randn({s.B, s.H, s.N, s.M}, rng, DType::F64));
      std::vector<std::vector<Tensor>> results;  // [stacked, per layer] → slices, dz, dγ…, dβ…, dW…
      for (bool stacked : {true, false}) {
        const Tensor z = z0.clone().requires_grad_(true);
        Layers p;
        for (int64_t l = 0; l < L; ++l) {
          p.gammas.push_back(p0.gammas[l].clone().requires_grad_(true));
          p.betas.push_back(p0.betas[l].clone().requires_grad_(true));
          p.ws.push_back(p0.ws[l].clone().requires_grad_(true));
        }
        std::vector<Tensor> ys;
        if (stacked) {
          ys = ops::pair_bias_layers(z, p.gammas, p.betas, p.ws);
        } else {
          for (int64_t l = 0; l < L; ++l) ys.push_back(ops::pair_bias(z, p.gammas[l], p.betas[l], p.ws[l]));
        }
        ASSERT_EQ(static_cast<int64_t>(ys.size()), L);
        Tensor loss;
        for (int64_t l = 0; l < L; ++l) {
          ASSERT_EQ(ys[l].shape(), (Shape{s.B, s.H, s.N, s.M}));
          if (stacked && l > 0)  // one storage, layer after layer
            EXPECT_EQ(static_cast<const char*>(ys[l].data_ptr()),
                      static_cast<const char*>(ys[l - 1].data_ptr()) + ys[l].nbytes());
          if (L > 1 && l == 1) continue;  // left out: zero gradients for its parameters
          const Tensor t = ops::sum(ops::mul(ys[l], r[l]));
          loss = loss.defined() ? ops::add(loss, t) : t;
        }
        loss.backward();
        std::vector<Tensor> res(ys.begin(), ys.end());
        res.push_back(z.grad());
        for (const auto* v : {&p.gammas, &p.betas, &p.ws})
          for (const Tensor& t : *v)
            res.push_back(t.grad().defined() ? t.grad() : Tensor::zeros(t.shape(), t.dtype()));
        results.push_back(res);
      }
      for (size_t k = 0; k < results[0].size(); ++k) {
        SCOPED_TRACE("result " + std::to_string(k));
        const bool zero_in_exact = s.C == 1 && k >= static_cast<size_t>(L);  // one channel: x̂ ≡ 0
        const double e = zero_in_exact
                             ? std::sqrt(ops::sum_of_squares(ops::sub(results[0][k], results[1][k])))
                             : rel_error(results[0][k], results[1][k]);
        EXPECT_LE(e, kChainTol);
      }
      if (L > 1) EXPECT_EQ(ops::sum_of_squares(results[0][L + 1 + 1]), 0.0) << "dγ of the unused layer";
    }
  }
}

TEST(FusedPairBiasLayers, GradcheckFloat64) {
  const PairShape s{2, 3, 4, 5, 2};
  Rng rng = make_rng("layers grad");
  Tensor z = pair_inputs(s, rng, DType::F64)[0].requires_grad_(true);
  Layers p = layer_inputs(s, 2, rng, DType::F64);
  std::vector<std::pair<std::string, Tensor>> named{{"z", z}};
  for (int64_t l = 0; l < 2; ++l) {
    named.emplace_back("gamma" + std::to_string(l), p.gammas[l].requires_grad_(true));
    named.emplace_back("beta" + std::to_string(l), p.betas[l].requires_grad_(true));
    named.emplace_back("w" + std::to_string(l), p.ws[l].requires_grad_(true));
  }
  const Tensor r0 = randn({s.B, s.H, s.N, s.M}, rng, DType::F64),
               r1 = randn({s.B, s.H, s.N, s.M}, rng, DType::F64);
  GradcheckOptions opt;
  opt.max_elements = 200;
  opt.seed = test_seed();
  const auto entries = gradcheck(
      [&] {
        const std::vector<Tensor> ys = ops::pair_bias_layers(z, p.gammas, p.betas, p.ws);
        return ops::add(ops::sum(ops::mul(ys[0], r0)), ops::sum(ops::mul(ys[1], r1)));
      },
      named, opt);
  for (const GradcheckEntry& e : entries) {
    EXPECT_LE(e.rel_error, kGradTol) << e.name << " (" << e.checked << " elements)";
    EXPECT_GT(e.checked, 0) << e.name;
  }
}

TEST(FusedPairBiasLayers, ErrorsNameWhatIsWrong) {
  Rng rng = make_rng("layers errors");
  const PairShape s{1, 2, 2, 4, 3};
  const Tensor z = pair_inputs(s, rng, DType::F32)[0];
  const Layers p = layer_inputs(s, 2, rng, DType::F32);
  expect_error([&] { ops::pair_bias_layers(z, p.gammas, {p.betas[0]}, p.ws); },
               "one gamma, beta and w per layer expected, got 2, 1 and 2");
  expect_error([&] { ops::pair_bias_layers(z, {}, {}, {}); }, "one gamma, beta and w per layer expected");
  expect_error(
      [&] {
        ops::pair_bias_layers(z, p.gammas, p.betas, {p.ws[0], randn({2, 4}, rng)});
      },
      "every layer's w must be [3, 4], layer 1 has");
  expect_error(
      [&] {
        ops::pair_bias_layers(z, p.gammas, p.betas, {p.ws[0], randn({3, 5}, rng)});
      },
      "w must be (H,4)");
}

// unbind: views of x's slices; their gradients land in x's slices, zero where none arrives.
TEST(Unbind, SlicesShareStorageAndTheirGradientsFillXsSlices) {
  Rng rng = make_rng("unbind");
  const Tensor x0 = randn({3, 2, 5}, rng, DType::F64);
  const Tensor x = ops::scale(x0.clone().requires_grad_(true), 1.0);  // an op's output: a sum autograd owns
  const std::vector<Tensor> parts = ops::unbind(x);
  ASSERT_EQ(parts.size(), 3u);
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(parts[i].shape(), (Shape{2, 5}));
    EXPECT_EQ(parts[i].to_vector<double>(), x0.select(i).clone().to_vector<double>());
  }
  Tensor leaf = x0.clone().requires_grad_(true);
  const std::vector<Tensor> lp = ops::unbind(leaf);
  const Tensor r0 = randn({2, 5}, rng, DType::F64), r2 = randn({2, 5}, rng, DType::F64);
  ops::add(ops::sum(ops::mul(lp[2], r2)), ops::sum(ops::mul(lp[0], r0))).backward();
  const std::vector<double> g = leaf.grad().to_vector<double>(), a = r0.to_vector<double>(),
                            c = r2.to_vector<double>();
  ASSERT_EQ(g.size(), 30u);
  for (size_t k = 0; k < 10; ++k) {
    EXPECT_EQ(g[k], a[k]);
    EXPECT_EQ(g[10 + k], 0.0) << "slice 1 got no gradient";
    EXPECT_EQ(g[20 + k], c[k]);
  }
  expect_error([&] { ops::unbind(Tensor::full({}, 1.0)); }, "unbind: x must have a leading dim");
}

// ---- embedding_sum ----------------------------------------------------------------------------

struct SumShape {
  Shape ia, ib;  // ib: trailing dims of ia
  int64_t Va, Vb, D;
  std::string str() const {
    return "ia" + shape_str(ia) + " ib" + shape_str(ib) + " Va" + std::to_string(Va) + " Vb" +
           std::to_string(Vb) + " D" + std::to_string(D);
  }
};

// One row, ib of the same shape as ia, ib shared over a batch (the pair representation), a
// table of one row (every index the same: all rows add into it), ib a scalar-sized suffix.
const std::vector<SumShape> kSumShapes = {{{1}, {1}, 1, 1, 1},
                                          {{7}, {7}, 5, 3, 4},
                                          {{3, 6, 6}, {6, 6}, 9, 11, 16},
                                          {{2, 5, 4}, {5, 4}, 1, 7, 3},
                                          {{4, 3}, {3}, 6, 2, 33}};

std::vector<Tensor> sum_inputs(const SumShape& s, Rng& rng, DType dtype) {
  return {randn({s.Va, s.D}, rng, DType::F64).to(dtype), randint(s.ia, 0, static_cast<int>(s.Va), rng),
          randn({s.Vb, s.D}, rng, DType::F64).to(dtype), randint(s.ib, 0, static_cast<int>(s.Vb), rng)};
}

TEST(FusedEmbeddingSum, GradcheckFloat64) {
  for (const SumShape& s : kSumShapes) {
    SCOPED_TRACE(s.str());
    Rng rng = make_rng("esgrad" + s.str());
    std::vector<Tensor> in = sum_inputs(s, rng, DType::F64);
    in[0].requires_grad_(true);
    in[2].requires_grad_(true);
    const auto entries = gradcheck([&] { return ops::embedding_sum(in[0], in[1], in[2], in[3], DType::F64); },
                                   {{"a", in[0]}, {"b", in[2]}});
    for (const GradcheckEntry& e : entries) EXPECT_LE(e.rel_error, kGradTol) << e.name;
  }
}

// Against embedding + embedding + add (float64: the same sums, another order) and float32
// against float64.
TEST(FusedEmbeddingSum, MatchesTheChainOfOps) {
  for (const SumShape& s : kSumShapes) {
    SCOPED_TRACE(s.str());
    Rng rng = make_rng("eschain" + s.str());
    const std::vector<Tensor> in = sum_inputs(s, rng, DType::F64);
    Shape out_shape = s.ia;
    out_shape.push_back(s.D);
    const Tensor r = randn(out_shape, rng, DType::F64);
    std::vector<std::vector<Tensor>> results;  // fused f64, chain f64, fused f32
    for (int run = 0; run < 3; ++run) {
      const FuseGuard guard("embedding_sum", run != 1);
      const DType dt = run == 2 ? DType::F32 : DType::F64;
      // fresh leaves each run (to() returns the tensor itself when the dtype already matches)
      Tensor a = in[0].to(dt).clone().requires_grad_(true);
      Tensor b = in[2].to(dt).clone().requires_grad_(true);
      Tensor out = ops::embedding_sum(a, in[1], b, in[3], dt);
      ASSERT_EQ(out.shape(), out_shape);
      out.backward(r.to(dt));
      results.push_back({out, a.grad(), b.grad()});
    }
    const char* names[] = {"out", "da", "db"};
    for (int k = 0; k < 3; ++k) {
      EXPECT_LE(rel_error(results[0][k], results[1][k]), kChainTol) << names[k] << " vs the chain";
      EXPECT_LE(rel_error(results[2][k], results[0][k]), kF32Tol) << names[k] << " float32";
    }
  }
}

TEST(FusedEmbeddingSum, ErrorsNameWhatIsWrong) {
  Rng rng = make_rng("eserrors");
  const std::vector<Tensor> in = sum_inputs({{2, 3}, {3}, 4, 5, 2}, rng, DType::F32);
  expect_error([&] { ops::embedding_sum(in[0], in[1], in[2], randint({2}, 0, 5, rng), DType::F32); },
               "trailing dims");
  expect_error([&] { ops::embedding_sum(in[0], in[1], randn({5, 3}, rng), in[3], DType::F32); }, "one D");
  expect_error([&] { ops::embedding_sum(in[0], in[1], in[2], in[3], DType::F64); }, "tables' (float32)");
  const Tensor bad = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3, 4, 1}, {2, 3});
  expect_error([&] { ops::embedding_sum(in[0], bad, in[2], in[3], DType::F32); },
               "index 4 of table a at position 4");
  expect_error([] { ops::set_fused("no_such_op", false); }, "no fused op named 'no_such_op'");
}

}  // namespace
}  // namespace pf
