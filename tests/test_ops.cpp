// Every differentiable op of framework/ops.h on the CPU:
//   1. a registry of ops × shapes, each entry building the op from random float64 inputs, run
//      through the finite-difference gradient check and a float32-vs-float64 comparison;
//   2. forward values against direct loops and known numbers;
//   3. error messages for bad shapes and dtypes;
//   4. autograd behaviour (accumulation, reuse, no-grad, double backward, freed activations).
//
// Inputs are drawn fresh each run; the seed is printed and PF_TEST_SEED=<n> replays a run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
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
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/reduce.h"
#include "kernels/cpu/softmax.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

// Float64 gradient check with eps 1e-6 (framework/gradcheck.h): the central difference has a
// truncation error ~eps²·|f'''| ≈ 1e-12 and a rounding error ~2⁻⁵³·|L|/eps ≈ 1e-10·|L|; with
// |L| = O(10) here a correct gradient shows ≈ 1e-9, and a wrong one shows O(1e-2) or more.
constexpr double kGradTol = 1e-7;
// Float32 against float64 on the same (float32-representable) inputs: these ops combine at most
// ~100 terms per output, so the norm-wise relative error is a few times √100·2⁻²⁴ ≈ 6e-7 and
// stays under 1e-5 (a wrong float32 path is off by far more).
constexpr double kF32Tol = 1e-5;

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// Runs its scope on one OpenMP thread. The gradient checks call thousands of tiny ops; a team
// fork per call costs microseconds on an idle machine but can wait a scheduler quantum on a
// loaded one (seen: 40 s for one check on 2 busy cores). The kernels' results do not depend on
// the thread count, and the threaded paths are tested at large sizes in OpParallel below.
class SingleThreaded {
 public:
#ifdef _OPENMP
  SingleThreaded() : previous_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreaded() { omp_set_num_threads(previous_); }

 private:
  int previous_;
#endif
};

// =============================================================================================
// 1. The registry: op × shapes
// =============================================================================================

// The differentiable inputs (float64) and the op applied to them (in any float dtype).
struct Problem {
  std::vector<std::pair<std::string, Tensor>> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> f;
};

struct OpCase {
  std::string name;
  std::function<Problem(Rng&)> make;
};
// How ctest and gtest show a case: its name (not the bytes of the struct).
void PrintTo(const OpCase& c, std::ostream* os) { *os << c.name; }

Tensor randn64(const Shape& s, Rng& rng) { return randn(s, rng, DType::F64); }

// Binary op with a's and b's shapes.
OpCase binary_case(const std::string& name, Tensor (*op)(const Tensor&, const Tensor&), Shape sa, Shape sb) {
  return {name, [=](Rng& rng) {
            return Problem{{{"a", randn64(sa, rng)}, {"b", randn64(sb, rng)}},
                           [op](const std::vector<Tensor>& t) { return op(t[0], t[1]); }};
          }};
}

OpCase matmul_case(const std::string& name, Shape sa, Shape sb, bool ta, bool tb) {
  return {name, [=](Rng& rng) {
            return Problem{
                {{"a", randn64(sa, rng)}, {"b", randn64(sb, rng)}},
                [ta, tb](const std::vector<Tensor>& t) { return ops::matmul(t[0], t[1], ta, tb); }};
          }};
}

OpCase permute_case(const std::string& name, Shape s, std::vector<int> perm) {
  return {name, [=](Rng& rng) {
            return Problem{{{"x", randn64(s, rng)}},
                           [perm](const std::vector<Tensor>& t) { return ops::permute(t[0], perm); }};
          }};
}

// Attention over (B,Nq,Nk,H,D) with a bias of shape (bb,bh,Nq,Nk) (bb = 0: no bias).
struct AttnSpec {
  int B, Nq, Nk, H, D;
  int bias_b, bias_h;  // 0 = no bias; else 1 or B (H)
  bool mask = false, causal = false;
  double scale = 0;
};

// A key-padding mask that pads the last key of batch 0 and every other key of batch 1 from
// position 2 on (batch 1 keeps keys 0 and 1, so no query row is fully masked by padding).
Tensor make_mask(int B, int Nk) {
  std::vector<uint8_t> m(static_cast<size_t>(B) * Nk, 0);
  if (Nk > 1) m[Nk - 1] = 1;
  for (int b = 1; b < B; ++b)
    for (int j = 2; j < Nk; j += 2) m[static_cast<size_t>(b) * Nk + j] = 1;
  return Tensor::from_vector(m, {B, Nk}, DType::U8);
}

OpCase attention_case(const std::string& name, AttnSpec s) {
  return {name, [=](Rng& rng) {
            Problem p;
            p.inputs = {{"q", randn64({s.B, s.Nq, s.H, s.D}, rng)},
                        {"k", randn64({s.B, s.Nk, s.H, s.D}, rng)},
                        {"v", randn64({s.B, s.Nk, s.H, s.D}, rng)}};
            if (s.bias_b > 0) p.inputs.push_back({"bias", randn64({s.bias_b, s.bias_h, s.Nq, s.Nk}, rng)});
            ops::AttentionOptions opt;
            opt.causal = s.causal;
            opt.scale = s.scale;
            if (s.mask) opt.key_padding_mask = make_mask(s.B, s.Nk);
            p.f = [opt](const std::vector<Tensor>& t) {
              return ops::attention(t[0], t[1], t[2], t.size() > 3 ? t[3] : Tensor(), opt);
            };
            return p;
          }};
}

std::vector<OpCase> registry() {
  using namespace ops;
  std::vector<OpCase> r;
  // ---- elementwise, with every broadcast form of a bias-like operand ----
  r.push_back(binary_case("add_same", add, {3, 17}, {3, 17}));
  r.push_back(binary_case("add_bias_C", add, {2, 5, 7}, {7}));
  r.push_back(binary_case("add_bias_1C", add, {4, 7}, {1, 7}));
  r.push_back(binary_case("add_bias_B1C", add, {3, 5, 7}, {3, 1, 7}));
  r.push_back(binary_case("add_outer", add, {5, 1}, {1, 6}));
  r.push_back(binary_case("add_scalar", add, {2, 3}, {}));
  r.push_back(binary_case("sub_same", sub, {17}, {17}));
  r.push_back(binary_case("sub_bias_C", sub, {5, 7}, {7}));
  r.push_back(binary_case("sub_bias_B1C_first", sub, {3, 1, 7}, {3, 5, 7}));
  r.push_back(binary_case("mul_same", mul, {3, 17}, {3, 17}));
  r.push_back(binary_case("mul_bias_C", mul, {2, 5, 7}, {7}));
  r.push_back(binary_case("mul_bias_1C", mul, {4, 7}, {1, 7}));
  r.push_back(binary_case("mul_bias_B1C", mul, {3, 5, 7}, {3, 1, 7}));
  r.push_back({"mul_self", [](Rng& rng) {  // one tensor used twice: gradients add
                 return Problem{{{"x", randn64({4, 9}, rng)}},
                                [](const std::vector<Tensor>& t) { return mul(t[0], t[0]); }};
               }});
  r.push_back({"scale", [](Rng& rng) {
                 return Problem{{{"x", randn64({3, 11}, rng)}},
                                [](const std::vector<Tensor>& t) { return scale(t[0], -1.7); }};
               }});
  r.push_back({"gelu", [](Rng& rng) {
                 return Problem{{{"x", scale(randn64({97}, rng), 2.0)}},
                                [](const std::vector<Tensor>& t) { return gelu(t[0]); }};
               }});
  // ---- reductions ----
  r.push_back({"sum", [](Rng& rng) {
                 return Problem{{{"x", randn64({3, 17}, rng)}},
                                [](const std::vector<Tensor>& t) { return sum(t[0]); }};
               }});
  r.push_back({"mean", [](Rng& rng) {
                 return Problem{{{"x", randn64({3, 17}, rng)}},
                                [](const std::vector<Tensor>& t) { return mean(t[0]); }};
               }});
  for (const Shape& target : {Shape{5, 1}, Shape{1, 4}, Shape{2, 1, 4}, Shape{4}, Shape{}}) {
    std::string n = "sum_to";
    for (int64_t d : target) n += "_" + std::to_string(d);
    r.push_back({n, [target](Rng& rng) {
                   return Problem{{{"x", randn64({2, 5, 4}, rng)}},
                                  [target](const std::vector<Tensor>& t) { return sum_to(t[0], target); }};
                 }});
  }
  // ---- matmul: 2-D, every transpose form, batched, shared 2-D b ----
  r.push_back(matmul_case("matmul_2d", {5, 7}, {7, 3}, false, false));
  r.push_back(matmul_case("matmul_2d_ta", {7, 5}, {7, 3}, true, false));
  r.push_back(matmul_case("matmul_2d_tb", {5, 7}, {3, 7}, false, true));
  r.push_back(matmul_case("matmul_2d_ta_tb", {7, 5}, {3, 7}, true, true));
  r.push_back(matmul_case("matmul_batched", {2, 5, 7}, {2, 7, 3}, false, false));
  r.push_back(matmul_case("matmul_batched_ta_tb", {2, 3, 7, 5}, {2, 3, 1, 7}, true, true));
  r.push_back(matmul_case("matmul_batched_tb", {3, 5, 4}, {3, 6, 4}, false, true));
  r.push_back(matmul_case("matmul_shared_b", {2, 3, 5, 7}, {7, 4}, false, false));
  r.push_back(matmul_case("matmul_shared_b_ta", {3, 7, 5}, {7, 4}, true, false));
  r.push_back(matmul_case("matmul_shared_b_tb", {3, 5, 7}, {4, 7}, false, true));
  r.push_back(matmul_case("matmul_shared_b_ta_tb", {3, 7, 5}, {4, 7}, true, true));
  r.push_back(matmul_case("matmul_1x1", {1, 1}, {1, 1}, false, false));
  // ---- linear ----
  r.push_back({"linear", [](Rng& rng) {
                 return Problem{
                     {{"x", randn64({2, 5, 7}, rng)}, {"w", randn64({3, 7}, rng)}, {"b", randn64({3}, rng)}},
                     [](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); }};
               }});
  r.push_back({"linear_no_bias", [](Rng& rng) {
                 return Problem{{{"x", randn64({17, 4}, rng)}, {"w", randn64({5, 4}, rng)}},
                                [](const std::vector<Tensor>& t) { return linear(t[0], t[1], Tensor()); }};
               }});
  r.push_back({"linear_1d_x", [](Rng& rng) {
                 return Problem{
                     {{"x", randn64({6}, rng)}, {"w", randn64({1, 6}, rng)}, {"b", randn64({1}, rng)}},
                     [](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); }};
               }});
  // ---- normalisation, activations ----
  r.push_back({"layernorm", [](Rng& rng) {
                 return Problem{
                     {{"x", randn64({4, 17}, rng)}, {"w", randn64({17}, rng)}, {"b", randn64({17}, rng)}},
                     [](const std::vector<Tensor>& t) { return layernorm(t[0], t[1], t[2]); }};
               }});
  r.push_back({"layernorm_3d_c16", [](Rng& rng) {
                 return Problem{
                     {{"x", randn64({2, 3, 16}, rng)}, {"w", randn64({16}, rng)}, {"b", randn64({16}, rng)}},
                     [](const std::vector<Tensor>& t) { return layernorm(t[0], t[1], t[2], 1e-3); }};
               }});
  r.push_back({"layernorm_c64_m19", [](Rng& rng) {  // a compile-time width, a partial block
                 return Problem{
                     {{"x", randn64({19, 64}, rng)}, {"w", randn64({64}, rng)}, {"b", randn64({64}, rng)}},
                     [](const std::vector<Tensor>& t) { return layernorm(t[0], t[1], t[2]); }};
               }});
  r.push_back({"softmax", [](Rng& rng) {
                 return Problem{{{"x", scale(randn64({5, 13}, rng), 2.0)}},
                                [](const std::vector<Tensor>& t) { return softmax(t[0]); }};
               }});
  r.push_back({"softmax_3d", [](Rng& rng) {
                 return Problem{{{"x", randn64({2, 3, 4}, rng)}},
                                [](const std::vector<Tensor>& t) { return softmax(t[0]); }};
               }});
  r.push_back({"cross_entropy", [](Rng& rng) {
                 const Tensor labels = randint({17}, 0, 8, rng);
                 return Problem{
                     {{"logits", scale(randn64({17, 8}, rng), 2.0)}},
                     [labels](const std::vector<Tensor>& t) { return cross_entropy(t[0], labels); }};
               }});
  r.push_back({"cross_entropy_1row", [](Rng& rng) {
                 const Tensor labels = randint({1}, 0, 3, rng);
                 return Problem{{{"logits", randn64({1, 3}, rng)}}, [labels](const std::vector<Tensor>& t) {
                                  return cross_entropy(t[0], labels);
                                }};
               }});
  // ---- embedding: 51 draws from 11 rows repeat rows for sure ----
  r.push_back({"embedding_repeats", [](Rng& rng) {
                 const Tensor idx = randint({3, 17}, 0, 11, rng);
                 return Problem{{{"weight", randn64({11, 5}, rng)}},
                                [idx](const std::vector<Tensor>& t) { return embedding(t[0], idx); }};
               }});
  r.push_back({"embedding_one_row", [](Rng& rng) {
                 const Tensor idx = Tensor::from_vector(std::vector<int32_t>{2, 2, 2, 0}, {4});
                 return Problem{{{"weight", randn64({3, 1}, rng)}},
                                [idx](const std::vector<Tensor>& t) { return embedding(t[0], idx); }};
               }});
  // ---- shape ----
  r.push_back(permute_case("permute_0312", {2, 3, 4, 5}, {0, 3, 1, 2}));
  r.push_back(permute_case("permute_0231", {2, 3, 4, 5}, {0, 2, 3, 1}));
  r.push_back(permute_case("permute_3210", {2, 3, 4, 5}, {3, 2, 1, 0}));
  r.push_back(permute_case("permute_1023", {2, 3, 4, 5}, {1, 0, 2, 3}));
  r.push_back(permute_case("permute_0213", {2, 3, 4, 5}, {0, 2, 1, 3}));
  r.push_back(permute_case("permute_10_large", {37, 41}, {1, 0}));
  r.push_back(permute_case("permute_neg", {3, 1, 5}, {-1, 0, 1}));
  r.push_back({"transpose", [](Rng& rng) {
                 return Problem{{{"x", randn64({2, 3, 5}, rng)}},
                                [](const std::vector<Tensor>& t) { return transpose(t[0], 0, -1); }};
               }});
  r.push_back({"reshape_then_mul", [](Rng& rng) {  // the view carries the gradient back
                 return Problem{{{"x", randn64({2, 3, 4}, rng)}, {"y", randn64({4, 6}, rng)}},
                                [](const std::vector<Tensor>& t) {
                                  return mul(reshape(t[0], {4, -1}), t[1]);
                                }};
               }});
  // ---- attention: every bias form, padding, causal, Nq ≠ Nk, odd sizes ----
  r.push_back(attention_case("attn_bias_BH", {2, 5, 7, 3, 4, 2, 3}));
  r.push_back(attention_case("attn_bias_1H", {2, 5, 7, 3, 4, 1, 3}));
  r.push_back(attention_case("attn_bias_B1", {2, 5, 7, 3, 4, 2, 1}));
  r.push_back(attention_case("attn_bias_11", {2, 5, 7, 3, 4, 1, 1}));
  r.push_back(attention_case("attn_no_bias", {2, 6, 6, 2, 3, 0, 0}));
  r.push_back(attention_case("attn_mask", {2, 5, 7, 2, 4, 2, 2, true}));
  r.push_back(attention_case("attn_causal", {1, 6, 6, 2, 4, 1, 2, false, true}));
  r.push_back(attention_case("attn_causal_nq_gt_nk", {2, 7, 5, 1, 3, 2, 1, false, true}));
  r.push_back(attention_case("attn_causal_mask_nq_lt_nk", {2, 3, 9, 2, 5, 1, 1, true, true}));
  r.push_back(attention_case("attn_one_query", {3, 1, 4, 2, 2, 3, 2}));
  r.push_back(attention_case("attn_one_key", {1, 4, 1, 1, 3, 1, 1}));
  r.push_back(attention_case("attn_scale", {1, 3, 5, 2, 17, 1, 2, false, false, 0.7}));
  return r;
}

class OpGrad : public ::testing::TestWithParam<OpCase> {};

// ∂(Σ op(inputs)∘W)/∂inputs by one backward agrees with central differences.
TEST_P(OpGrad, MatchesFiniteDifferences) {
  const SingleThreaded one_thread;
  const OpCase& c = GetParam();
  Rng rng = make_rng(c.name);
  Problem p = c.make(rng);
  std::vector<Tensor> inputs;
  for (auto& [name, t] : p.inputs) {
    t.requires_grad_();
    inputs.push_back(t);
  }
  GradcheckOptions opt;
  opt.seed = rng.next_u64();
  const std::vector<double> before = inputs[0].to_vector<double>();
  const auto entries = gradcheck([&] { return p.f(inputs); }, p.inputs, opt);
  ASSERT_EQ(entries.size(), p.inputs.size());
  double worst = 0;
  for (const GradcheckEntry& e : entries) worst = std::max(worst, e.rel_error);
  std::printf("gradcheck %-28s worst rel error %.1e\n", c.name.c_str(), worst);
  for (const GradcheckEntry& e : entries) {
    EXPECT_GT(e.checked, 0) << e.name;
    EXPECT_LE(e.rel_error, kGradTol) << c.name << " d" << e.name << ": max abs error " << e.max_abs_error;
  }
  // The checker leaves values and gradients as it found them.
  EXPECT_EQ(inputs[0].to_vector<double>(), before);
  for (const Tensor& t : inputs) EXPECT_FALSE(t.grad().defined());
}

// Float32 forward and backward agree with float64 on the same (float32-rounded) inputs.
TEST_P(OpGrad, Float32MatchesFloat64) {
  const SingleThreaded one_thread;
  const OpCase& c = GetParam();
  Rng rng = make_rng(c.name + "/f32");
  Problem p = c.make(rng);
  std::vector<Tensor> in32, in64;
  for (auto& [name, t] : p.inputs) {
    in32.push_back(leaf(t.to(DType::F32)));
    in64.push_back(leaf(in32.back().to(DType::F64)));
  }
  const Tensor out32 = p.f(in32), out64 = p.f(in64);
  ASSERT_EQ(out32.dtype(), DType::F32);
  ASSERT_EQ(out64.dtype(), DType::F64);
  ASSERT_EQ(out32.shape(), out64.shape());
  const double fwd = rel_error(out32, out64);
  EXPECT_LE(fwd, kF32Tol) << c.name << " forward";
  const Tensor w = randn(out64.shape(), rng, DType::F64);
  out64.backward(w);
  out32.backward(w.to(DType::F32));
  double bwd = 0;
  for (size_t i = 0; i < in32.size(); ++i) {
    ASSERT_TRUE(in32[i].grad().defined()) << p.inputs[i].first;
    EXPECT_EQ(in32[i].grad().dtype(), DType::F32);
    const double e = rel_error(in32[i].grad(), in64[i].grad());
    bwd = std::max(bwd, e);
    EXPECT_LE(e, kF32Tol) << c.name << " d" << p.inputs[i].first;
  }
  std::printf("float32 vs float64 %-28s forward %.1e  gradients %.1e\n", c.name.c_str(), fwd, bwd);
}

INSTANTIATE_TEST_SUITE_P(Registry, OpGrad, ::testing::ValuesIn(registry()),
                         [](const ::testing::TestParamInfo<OpCase>& info) { return info.param.name; });

// =============================================================================================
// 2. Forward values
// =============================================================================================

TEST(OpForward, GeluKnownValues) {
  // gelu(x) = x·Φ(x): Φ(1) = 0.8413447460685429, Φ(−1) = 1 − Φ(1), gelu(0) = 0.
  const std::vector<double> x = {1.0, -1.0, 0.0, 3.0};
  const std::vector<double> want = {0.8413447460685429, -0.15865525393145707, 0.0, 3.0 * 0.9986501019683699};
  for (DType t : {DType::F64, DType::F32}) {
    const std::vector<double> got = ops::gelu(Tensor::from_vector(x, {4}, t)).to_vector<double>();
    // float64: libm erf (≤ 1 ulp); float32: a vectorised erf of a few ulp.
    const double tol = t == DType::F64 ? 1e-15 : 5e-7;
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << x[i];
  }
}

TEST(OpForward, GeluFloat32OverARange) {
  // The float32 path (own erf/exp approximations) against libm in double, over ±6.
  std::vector<float> x;
  for (int i = -6000; i <= 6000; ++i) x.push_back(i * 1e-3f);
  const int n = static_cast<int>(x.size());
  Tensor xt = Tensor::from_vector(x, {n});
  const std::vector<double> y = ops::gelu(xt).to_vector<double>();
  Tensor xl = leaf(xt.clone());
  ops::sum(ops::gelu(xl)).backward();
  const std::vector<double> dy = xl.grad().to_vector<double>();
  double err = 0, derr = 0;
  for (int i = 0; i < n; ++i) {
    const double v = x[i], cdf = 0.5 * (1 + std::erf(v / std::sqrt(2.0)));
    err = std::max(err, std::abs(y[i] - v * cdf));
    derr = std::max(derr, std::abs(dy[i] - (cdf + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI))));
  }
  // Absolute: |gelu| ≤ 6 and |gelu'| ≤ 1.13 here, float32 resolution there ~5e-7 and ~1e-7.
  EXPECT_LT(err, 2e-6);
  EXPECT_LT(derr, 1e-6);
}

TEST(OpForward, LayerNormRowsHaveMeanZeroVarianceOne) {
  Rng rng = make_rng("layernorm_stats");
  for (DType t : {DType::F64, DType::F32}) {
    const int64_t M = 7, C = 33;
    Tensor x = ops::add(ops::scale(randn({M, C}, rng, t), 3.0), Tensor::full({}, 5.0, t));
    const double eps = 1e-5;
    Tensor y = ops::layernorm(x, Tensor::full({C}, 1.0, t), Tensor::zeros({C}, t), eps);
    const std::vector<double> xv = x.to_vector<double>(), yv = y.to_vector<double>();
    const double tol = t == DType::F64 ? 1e-12 : 2e-6;  // float32: ~C·2⁻²⁴
    for (int64_t r = 0; r < M; ++r) {
      double xm = 0, xvar = 0, ym = 0, yvar = 0;
      for (int64_t c = 0; c < C; ++c) xm += xv[r * C + c] / C;
      for (int64_t c = 0; c < C; ++c) xvar += (xv[r * C + c] - xm) * (xv[r * C + c] - xm) / C;
      for (int64_t c = 0; c < C; ++c) ym += yv[r * C + c] / C;
      for (int64_t c = 0; c < C; ++c) yvar += (yv[r * C + c] - ym) * (yv[r * C + c] - ym) / C;
      EXPECT_NEAR(ym, 0.0, tol);
      EXPECT_NEAR(yvar, xvar / (xvar + eps), 10 * tol);  // variance 1 up to the eps term
    }
  }
}

TEST(OpForward, LayerNormAppliesWeightAndBias) {
  Rng rng = make_rng("layernorm_affine");
  const int64_t M = 3, C = 5;
  Tensor x = randn({M, C}, rng, DType::F64), w = randn({C}, rng, DType::F64), b = randn({C}, rng, DType::F64);
  const std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>(),
                            bv = b.to_vector<double>();
  const std::vector<double> y = ops::layernorm(x, w, b, 0.1).to_vector<double>();
  for (int64_t r = 0; r < M; ++r) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += xv[r * C + c] / C;
    for (int64_t c = 0; c < C; ++c) v += (xv[r * C + c] - m) * (xv[r * C + c] - m) / C;
    for (int64_t c = 0; c < C; ++c)
      EXPECT_NEAR(y[r * C + c], (xv[r * C + c] - m) / std::sqrt(v + 0.1) * wv[c] + bv[c], 1e-13);
  }
}

TEST(OpForward, CrossEntropyOfUniformLogitsIsLogK) {
  for (DType t : {DType::F64, DType::F32}) {
    for (int K : {1, 2, 8, 97}) {
      Tensor logits = Tensor::full({5, K}, 0.3, t);
      Tensor labels = Tensor::from_vector(std::vector<int32_t>{0, K - 1, 0, K / 2, K - 1}, {5});
      EXPECT_NEAR(ops::cross_entropy(logits, labels).item(), std::log(static_cast<double>(K)),
                  t == DType::F64 ? 1e-14 : 1e-6)
          << K;
    }
  }
}

TEST(OpForward, CrossEntropyMatchesDirectFormula) {
  Rng rng = make_rng("ce_direct");
  const int N = 9, K = 6;
  Tensor logits = ops::scale(randn({N, K}, rng, DType::F64), 30.0);  // large: needs the max shift
  Tensor labels = randint({N}, 0, K, rng);
  const std::vector<double> x = logits.to_vector<double>();
  const std::vector<int32_t> l = labels.to_vector<int32_t>();
  double want = 0;
  for (int r = 0; r < N; ++r) {
    double m = -INFINITY, s = 0;
    for (int c = 0; c < K; ++c) m = std::max(m, x[r * K + c]);
    for (int c = 0; c < K; ++c) s += std::exp(x[r * K + c] - m);
    want += (m + std::log(s) - x[r * K + l[r]]) / N;
  }
  EXPECT_NEAR(ops::cross_entropy(logits, labels).item(), want, 1e-12 * std::abs(want));
}

// Logits far past exp's overflow (e^x is inf for x > 88.7 in float32, > 709.8 in float64): only
// the max shift keeps the loss and its gradient finite. One row alone is exact: {B, 0, −B} with
// label 1 has loss B and gradient {1, −1, 0} (e^−B underflows to 0 next to 1 in both dtypes).
// Random rows at the same scale are compared with a long-double reference.
TEST(OpForward, CrossEntropyPastExpOverflow) {
  Rng rng = make_rng("ce_overflow");
  for (DType t : {DType::F32, DType::F64}) {
    const double big = t == DType::F32 ? 100.0 : 800.0;
    SCOPED_TRACE(dtype_name(t));
    {  // one row, exact
      Tensor x = Tensor::from_vector(std::vector<double>{big, 0.0, -big}, {1, 3}, t);
      x.requires_grad_();
      const Tensor loss =
          ops::cross_entropy(x, Tensor::from_vector(std::vector<int32_t>{1}, {1}, DType::I32));
      EXPECT_EQ(loss.item(), big);
      loss.backward();
      EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{1.0, -1.0, 0.0}));
    }
    // M rows of K logits, N(0, 1)·3·big (most rows span several times the overflow point), each
    // rounded to t; rows of ties, one label at the max and one at the min, at ±big.
    const int M = 23, K = 7;
    std::vector<double> x(M * K);
    for (double& v : x) v = t == DType::F32 ? double(float(3 * big * rng.normal())) : 3 * big * rng.normal();
    for (int c = 0; c < K; ++c) x[c] = big, x[K + c] = c % 2 ? big : -big;
    std::vector<int32_t> labels(M);
    for (int32_t& l : labels) l = static_cast<int32_t>(rng.randint(0, K));
    Tensor logits = Tensor::from_vector(x, {M, K}, t);
    logits.requires_grad_();
    const Tensor loss = ops::cross_entropy(logits, Tensor::from_vector(labels, {M}, DType::I32));
    loss.backward();
    const std::vector<double> grad = logits.grad().to_vector<double>();
    // Error bounds: t's unit roundoff u, and e the relative error of its e^t for t ≤ 0 (float32:
    // kernels/cpu/fast_math.h's exp_nonpositive, < 1e-6; float64: the C library's, ~u). The
    // row's log-sum-exp l = m + log Σ e^{x−m} carries e + 2u·(|l| + 1); each probability
    // e^{x−l} carries e + u·(|x| + |l|) relative to itself from the rounded argument.
    const double u = t == DType::F32 ? 0x1p-24 : 0x1p-53, e = t == DType::F32 ? 1e-6 : 2 * u;
    long double want = 0;
    double loss_tol = 0;
    for (int r = 0; r < M; ++r) {
      const double* xr = &x[r * K];
      long double m = -INFINITY, s = 0;
      for (int c = 0; c < K; ++c) m = std::max<long double>(m, xr[c]);
      for (int c = 0; c < K; ++c) s += std::exp(xr[c] - m);
      const long double l = m + std::log(s);
      want += (l - xr[labels[r]]) / M;
      loss_tol += (e + 2 * u * (std::abs(double(l)) + 1)) / M;
      for (int c = 0; c < K; ++c) {
        const double p = double(std::exp(xr[c] - l));
        const double g = (p - (c == labels[r])) / M;
        // and the gradient (p − [c = label])/M three roundings more (1/M, the product, the −)
        const double tol = (p * (e + u * (std::abs(xr[c]) + std::abs(double(l)) + 2)) + 2 * u) / M;
        ASSERT_TRUE(std::isfinite(grad[r * K + c])) << "row " << r << " col " << c;
        EXPECT_NEAR(grad[r * K + c], g, tol) << "row " << r << " col " << c;
      }
    }
    // The mean is summed in double over M terms l − x_label ≥ 0: recursive summation adds at
    // most M·2⁻⁵³·Σ terms, and the division one rounding more.
    loss_tol += (M + 1) * 0x1p-53 * double(want);
    ASSERT_TRUE(std::isfinite(loss.item()));
    EXPECT_NEAR(loss.item(), double(want), loss_tol);
  }
}

TEST(OpForward, SoftmaxMatchesDirectLoops) {
  Rng rng = make_rng("softmax_direct");
  const int M = 4, C = 19;
  for (DType t : {DType::F64, DType::F32}) {
    Tensor x = ops::scale(randn({M, C}, rng, t), 10.0);
    x.data_ptr();
    const std::vector<double> xv = x.to_vector<double>();
    const std::vector<double> y = ops::softmax(x).to_vector<double>();
    for (int r = 0; r < M; ++r) {
      double m = -INFINITY, s = 0, total = 0;
      for (int c = 0; c < C; ++c) m = std::max(m, xv[r * C + c]);
      for (int c = 0; c < C; ++c) s += std::exp(xv[r * C + c] - m);
      for (int c = 0; c < C; ++c) {
        const double want = std::exp(xv[r * C + c] - m) / s;
        EXPECT_NEAR(y[r * C + c], want, t == DType::F64 ? 1e-15 : 1e-6 * std::max(want, 1e-2));
        total += y[r * C + c];
      }
      EXPECT_NEAR(total, 1.0, t == DType::F64 ? 1e-14 : 1e-6);
    }
  }
}

TEST(OpForward, SoftmaxTreatsMinusInfinityAsZeroWeight) {
  for (DType t : {DType::F64, DType::F32}) {
    Tensor x = Tensor::from_vector(std::vector<double>{0.0, -INFINITY, std::log(3.0), -INFINITY}, {1, 4}, t);
    const std::vector<double> y = ops::softmax(x).to_vector<double>();
    EXPECT_NEAR(y[0], 0.25, 1e-7);
    EXPECT_EQ(y[1], 0.0);
    EXPECT_NEAR(y[2], 0.75, 1e-7);
    EXPECT_EQ(y[3], 0.0);
  }
}

// A NaN input is never dropped: the float32 path's exponential (kernels/cpu/fast_math.h) keeps it,
// so a softmax row, a cross-entropy loss and gelu with a NaN in them come out NaN, as in float64.
TEST(OpForward, NaNInputsStayNaN) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (DType t : {DType::F64, DType::F32}) {
    SCOPED_TRACE(dtype_name(t));
    Tensor x = Tensor::from_vector(std::vector<double>{0.0, nan, 1.0, 2.0, 0.5, -1.0}, {2, 3}, t);
    const std::vector<double> y = ops::softmax(x).to_vector<double>();
    for (int c = 0; c < 3; ++c) EXPECT_TRUE(std::isnan(y[c])) << "row 0 holds the NaN, column " << c;
    for (int c = 3; c < 6; ++c) EXPECT_TRUE(std::isfinite(y[c])) << "row 1 is finite, column " << c;
    for (int label : {0, 1}) {  // the NaN is the label's logit, or another one
      Tensor labels = Tensor::from_vector(std::vector<int32_t>{label, 2}, {2});
      EXPECT_TRUE(std::isnan(ops::cross_entropy(x, labels).item())) << "label " << label;
    }
    Tensor g = leaf(Tensor::from_vector(std::vector<double>{nan, 1.0}, {2}, t));
    ops::sum(ops::gelu(g)).backward();
    EXPECT_TRUE(std::isnan(ops::gelu(g).to_vector<double>()[0]));
    EXPECT_TRUE(std::isnan(g.grad().to_vector<double>()[0]));
    EXPECT_TRUE(std::isfinite(g.grad().to_vector<double>()[1]));
  }
}

TEST(OpForward, BroadcastBinaryOpsMatchDirectLoops) {
  Rng rng = make_rng("binary_direct");
  // (3,1,5) ∘ (4,1): out (3,4,5), a[i,0,k], b[j,0]
  Tensor a = randn({3, 1, 5}, rng, DType::F64), b = randn({4, 1}, rng, DType::F64);
  const std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>();
  const std::vector<double> s = ops::add(a, b).to_vector<double>();
  const std::vector<double> d = ops::sub(a, b).to_vector<double>();
  const std::vector<double> m = ops::mul(a, b).to_vector<double>();
  ASSERT_EQ(s.size(), 60u);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < 5; ++k) {
        const int o = (i * 4 + j) * 5 + k;
        EXPECT_EQ(s[o], av[i * 5 + k] + bv[j]);
        EXPECT_EQ(d[o], av[i * 5 + k] - bv[j]);
        EXPECT_EQ(m[o], av[i * 5 + k] * bv[j]);
      }
}

TEST(OpForward, LargeBroadcastAddRunsOnThreadsCorrectly) {
  // Above the parallel threshold: (B·N·N, c) + (c), and a same-shape add, against loops.
  Rng rng = make_rng("binary_large");
  const int64_t R = 4099, C = 16;
  Tensor a = randn({R, C}, rng), b = randn({C}, rng), c = randn({R, C}, rng);
  const std::vector<float> av = a.to_vector<float>(), bv = b.to_vector<float>(), cv = c.to_vector<float>();
  const std::vector<float> s = ops::add(a, b).to_vector<float>();
  const std::vector<float> t = ops::add(a, c).to_vector<float>();
  int64_t bad = 0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < C; ++j) {
      bad += s[r * C + j] != av[r * C + j] + bv[j];
      bad += t[r * C + j] != av[r * C + j] + cv[r * C + j];
    }
  EXPECT_EQ(bad, 0);
  // and the reduction back: sum_to over 4099 rows in double accumulation
  const std::vector<double> col = ops::sum_to(a.to(DType::F64), {C}).to_vector<double>();
  for (int64_t j = 0; j < C; ++j) {
    double want = 0;
    for (int64_t r = 0; r < R; ++r) want += av[r * C + j];
    EXPECT_NEAR(col[j], want, 1e-9);
  }
}

// c = op(a)·op(b) by a triple loop in double; a, b as stored.
std::vector<double> naive_matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t batch,
                                 int64_t M, int64_t N, int64_t K, bool ta, bool tb, bool b_batched) {
  std::vector<double> c(batch * M * N, 0.0);
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double x = ta ? a[i * M * K + k * M + m] : a[i * M * K + m * K + k];
          const int64_t bo = b_batched ? i * K * N : 0;
          const double y = tb ? b[bo + n * K + k] : b[bo + k * N + n];
          s += x * y;
        }
        c[(i * M + m) * N + n] = s;
      }
  return c;
}

// An empty inner dimension (K = 0) is an empty sum: c = 0, or c unchanged when accumulating,
// whatever c held (NaN here), for one product, a batch of them and a batch summed into one c.
TEST(OpForward, MatmulWithEmptyInnerDimIsAnEmptySum) {
  const int64_t M = 3, N = 5;
  const double none[1] = {0};  // a and b hold no elements
  for (int64_t batch : {1, 4})
    for (bool c_batched : {true, false})
      for (bool accumulate : {false, true}) {
        const double before = accumulate ? 7.0 : std::numeric_limits<double>::quiet_NaN();
        std::vector<double> c((c_batched ? batch : 1) * M * N, before);
        kernels::cpu::gemm<double>(batch, M, N, 0, none, true, false, none, true, false, c.data(), c_batched,
                                   accumulate);
        for (double v : c)
          ASSERT_EQ(v, accumulate ? 7.0 : 0.0) << "batch " << batch << " c_batched " << c_batched;
      }
}

TEST(OpForward, MatmulMatchesTripleLoop) {
  Rng rng = make_rng("matmul_direct");
  const int64_t batch = 3, M = 17, N = 5, K = 97;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool bb : {false, true}) {
        Tensor a = randn(ta ? Shape{batch, K, M} : Shape{batch, M, K}, rng, DType::F64);
        Shape bs = tb ? Shape{N, K} : Shape{K, N};
        if (bb) bs.insert(bs.begin(), batch);
        Tensor b = randn(bs, rng, DType::F64);
        const std::vector<double> got = ops::matmul(a, b, ta, tb).to_vector<double>();
        const std::vector<double> want =
            naive_matmul(a.to_vector<double>(), b.to_vector<double>(), batch, M, N, K, ta, tb, bb);
        EXPECT_LT(max_abs_diff(got, want), 1e-12) << ta << tb << bb;
      }
}

TEST(OpForward, LinearMatchesLoops) {
  Rng rng = make_rng("linear_direct");
  const int64_t M = 13, in = 7, out = 3;
  Tensor x = randn({M, in}, rng, DType::F64), w = randn({out, in}, rng, DType::F64),
         b = randn({out}, rng, DType::F64);
  const std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>(),
                            bv = b.to_vector<double>();
  const std::vector<double> y = ops::linear(x, w, b).to_vector<double>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < out; ++o) {
      double s = bv[o];
      for (int64_t i = 0; i < in; ++i) s += xv[m * in + i] * wv[o * in + i];
      EXPECT_NEAR(y[m * out + o], s, 1e-13);
    }
}

TEST(OpForward, EmbeddingGathersRowsAndScatterAddsGradients) {
  Rng rng = make_rng("embedding_direct");
  const int64_t V = 65, D = 16;
  Tensor w = leaf(randn({V, D}, rng, DType::F64));
  Tensor idx = randint({4, 33, 33}, 0, static_cast<int>(V), rng);  // above the parallel threshold
  Tensor y = ops::embedding(w, idx);
  ASSERT_EQ(y.shape(), (Shape{4, 33, 33, D}));
  const std::vector<double> wv = w.to_vector<double>(), yv = y.to_vector<double>();
  const std::vector<int32_t> iv = idx.to_vector<int32_t>();
  int64_t bad = 0;
  for (size_t i = 0; i < iv.size(); ++i)
    for (int64_t d = 0; d < D; ++d) bad += yv[i * D + d] != wv[iv[i] * D + d];
  EXPECT_EQ(bad, 0);
  Tensor g = randn(y.shape(), rng, DType::F64);
  y.backward(g);
  std::vector<double> want(V * D, 0.0);
  const std::vector<double> gv = g.to_vector<double>();
  for (size_t i = 0; i < iv.size(); ++i)
    for (int64_t d = 0; d < D; ++d) want[iv[i] * D + d] += gv[i * D + d];
  EXPECT_LT(max_abs_diff(w.grad().to_vector<double>(), want), 1e-11);
}

TEST(OpForward, PermuteMatchesIndexArithmetic) {
  Rng rng = make_rng("permute_direct");
  // The pair-bias layout change (B,N,N,H) → (B,H,N,N), at an odd N, and a generic 4-D perm.
  const int64_t B = 2, N = 37, H = 4;
  Tensor x = randn({B, N, N, H}, rng);
  const std::vector<float> xv = x.to_vector<float>();
  const std::vector<float> y = ops::permute(x, {0, 3, 1, 2}).to_vector<float>();
  int64_t bad = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j)
          bad += y[((b * H + h) * N + i) * N + j] != xv[((b * N + i) * N + j) * H + h];
  EXPECT_EQ(bad, 0);
  Tensor z = randn({3, 4, 5, 6}, rng, DType::F64);
  const std::vector<double> zv = z.to_vector<double>();
  const std::vector<double> p = ops::permute(z, {2, 0, 3, 1}).to_vector<double>();  // (5,3,6,4)
  bad = 0;
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 4; ++b)
      for (int c = 0; c < 5; ++c)
        for (int d = 0; d < 6; ++d)
          bad += p[((c * 3 + a) * 6 + d) * 4 + b] != zv[((a * 4 + b) * 5 + c) * 6 + d];
  EXPECT_EQ(bad, 0);
}

TEST(OpForward, ReshapeSharesStorageAndInfersMinusOne) {
  Tensor x = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor y = ops::reshape(x, {-1, 2});
  EXPECT_EQ(y.shape(), (Shape{3, 2}));
  EXPECT_EQ(y.data_ptr(), x.data_ptr());
  EXPECT_EQ(y.to_vector<double>(), x.to_vector<double>());
}

TEST(OpForward, ReductionsAndQueries) {
  Tensor x = Tensor::from_vector(std::vector<double>{1, -2, 3, 4.5}, {2, 2});
  EXPECT_EQ(ops::sum(x).item(), 6.5);
  EXPECT_EQ(ops::sum(x).shape(), Shape{});
  EXPECT_EQ(ops::mean(x).item(), 6.5 / 4);
  EXPECT_EQ(ops::sum_of_squares(x), 1 + 4 + 9 + 20.25);
  EXPECT_EQ(ops::sum_to(x, {2}).to_vector<double>(), (std::vector<double>{4, 2.5}));
  EXPECT_EQ(ops::sum_to(x, {2, 1}).to_vector<double>(), (std::vector<double>{-1, 7.5}));
  EXPECT_TRUE(ops::all_finite(x));
  for (double bad : std::vector<double>{std::nan(""), INFINITY, -INFINITY}) {
    Tensor y = Tensor::full({1000}, 1.0, DType::F32);
    y.data<float>()[777] = static_cast<float>(bad);
    EXPECT_FALSE(ops::all_finite(y)) << bad;
  }
}

TEST(OpForward, InPlaceUpdates) {
  Tensor y = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3});
  const Tensor x = Tensor::from_vector(std::vector<double>{10, 20, 30}, {3});
  ops::add_(y, x);
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{11, 22, 33}));
  ops::axpy_(y, -0.5, x);
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{6, 12, 18}));
  ops::scale_(y, 0.5);
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{3, 6, 9}));
}

TEST(OpForward, AccuracyCountsArgmaxHits) {
  Tensor logits =
      Tensor::from_vector(std::vector<float>{0.1f, 0.9f, 0.0f, /**/ 2.0f, 1.0f, 0.5f, /**/ 0.0f, 0.0f, 3.0f,
                                             /**/ 1.0f, 1.0f, 0.0f},
                          {4, 3});
  // argmax: 1, 0, 2, 0 (first of a tie)
  Tensor labels = Tensor::from_vector(std::vector<int32_t>{1, 0, 1, 0}, {4});
  EXPECT_DOUBLE_EQ(ops::accuracy(logits, labels), 0.75);
}

// out[b,i,h,:] by the textbook formula in double: every score materialised.
std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                                    const ops::AttentionOptions& opt) {
  const int64_t B = q.size(0), Nq = q.size(1), H = q.size(2), D = q.size(3), Nk = k.size(1);
  const std::vector<double> qv = q.to_vector<double>(), kv = k.to_vector<double>(),
                            vv = v.to_vector<double>();
  const std::vector<double> bv = bias.defined() ? bias.to_vector<double>() : std::vector<double>();
  const std::vector<uint8_t> mv =
      opt.key_padding_mask.defined() ? opt.key_padding_mask.to_vector<uint8_t>() : std::vector<uint8_t>();
  const double scale = opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> out(B * Nq * H * D, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Nq; ++i) {
        std::vector<double> s(Nk, -INFINITY);
        for (int64_t j = 0; j < Nk; ++j) {
          if (!mv.empty() && mv[b * Nk + j]) continue;
          if (opt.causal && j > i + Nk - Nq) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += qv[((b * Nq + i) * H + h) * D + d] * kv[((b * Nk + j) * H + h) * D + d];
          s[j] = scale * dot;
          if (!bv.empty()) {
            const int64_t bb = bias.size(0) == 1 ? 0 : b, bh = bias.size(1) == 1 ? 0 : h;
            s[j] += bv[((bb * bias.size(1) + bh) * Nq + i) * Nk + j];
          }
        }
        double m = -INFINITY;
        for (double x : s) m = std::max(m, x);
        if (m == -INFINITY) continue;  // every key masked: out = 0
        double z = 0;
        for (double& x : s) z += (x = std::exp(x - m));
        for (int64_t j = 0; j < Nk; ++j)
          for (int64_t d = 0; d < D; ++d)
            out[((b * Nq + i) * H + h) * D + d] += s[j] / z * vv[((b * Nk + j) * H + h) * D + d];
      }
  return out;
}

TEST(OpForward, AttentionMatchesTextbookFormula) {
  Rng rng = make_rng("attention_direct");
  struct Case {
    int B, Nq, Nk, H, D, bb, bh;
    bool mask, causal;
  };
  for (const Case& c : {Case{2, 17, 97, 3, 16, 2, 3, false, false}, Case{2, 33, 17, 2, 8, 1, 2, true, false},
                        Case{1, 9, 9, 4, 16, 1, 1, false, true}, Case{3, 5, 7, 2, 4, 3, 1, true, true},
                        Case{2, 1, 1, 1, 2, 0, 0, false, false}}) {
    for (DType t : {DType::F64, DType::F32}) {
      Tensor q = randn({c.B, c.Nq, c.H, c.D}, rng, t), k = randn({c.B, c.Nk, c.H, c.D}, rng, t),
             v = randn({c.B, c.Nk, c.H, c.D}, rng, t);
      Tensor bias = c.bb ? randn({c.bb, c.bh, c.Nq, c.Nk}, rng, t) : Tensor();
      ops::AttentionOptions opt;
      opt.causal = c.causal;
      if (c.mask) opt.key_padding_mask = make_mask(c.B, c.Nk);
      const std::vector<double> got = ops::attention(q, k, v, bias, opt).to_vector<double>();
      const std::vector<double> want = naive_attention(q, k, v, bias, opt);
      // float64: summation-order differences only; float32: ~Nk·2⁻²⁴ on O(1) values.
      EXPECT_LT(max_abs_diff(got, want), t == DType::F64 ? 1e-12 : 2e-5)
          << c.B << " " << c.Nq << " " << c.Nk << " " << dtype_name(t);
    }
  }
}

TEST(OpForward, AttentionDeterministicBackwardIsRepeatable) {
  Rng rng = make_rng("attention_repeat");
  Tensor q = randn({2, 19, 2, 16}, rng), k = randn({2, 23, 2, 16}, rng), v = randn({2, 23, 2, 16}, rng),
         bias = randn({1, 2, 19, 23}, rng);
  Tensor g = randn({2, 19, 2, 16}, rng);
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 3; ++run) {
    Tensor ql = leaf(q.clone()), kl = leaf(k.clone()), vl = leaf(v.clone()), bl = leaf(bias.clone());
    ops::AttentionOptions opt;
    opt.deterministic = true;
    ops::attention(ql, kl, vl, bl, opt).backward(g);
    std::vector<std::vector<float>> grads = {ql.grad().to_vector<float>(), kl.grad().to_vector<float>(),
                                             vl.grad().to_vector<float>(), bl.grad().to_vector<float>()};
    if (run == 0)
      first = grads;
    else
      EXPECT_EQ(grads, first) << "run " << run;  // bitwise
    EXPECT_EQ(bl.grad().shape(), bias.shape());
  }
}

// The raw kernels write every element of their outputs: each output buffer starts as NaN, at
// awkward sizes, on one thread and (where the size allows) on several.
template <class T>
std::vector<T> nan_buffer(size_t n) {
  return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN());
}

template <class T>
bool finite(const std::vector<T>& v) {
  for (T x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

template <class T>
void check_kernels_overwrite_poison(int64_t M, int64_t C, Rng& rng) {
  namespace k = kernels::cpu;
  std::vector<T> x(M * C), g(M * C), w(C), b(C);
  for (T& v : x) v = static_cast<T>(rng.normal());
  for (T& v : g) v = static_cast<T>(rng.normal());
  for (T& v : w) v = static_cast<T>(rng.normal());
  for (T& v : b) v = static_cast<T>(rng.normal());
  const std::string where = std::to_string(M) + "x" + std::to_string(C);
  {  // broadcast binary: (M,C) + (C)
    auto out = nan_buffer<T>(M * C);
    const int64_t shape[2] = {M, C}, sa[2] = {C, 1}, sb[2] = {0, 1};
    k::binary(k::BinaryOp::Mul, x.data(), sa, b.data(), sb, out.data(), shape, 2);
    EXPECT_TRUE(finite(out)) << "binary " << where;
  }
  {
    auto out = nan_buffer<T>(M * C), dx = nan_buffer<T>(M * C);
    k::scale(x.data(), T(3), out.data(), M * C);
    EXPECT_TRUE(finite(out)) << "scale " << where;
    k::gelu_forward(x.data(), out.data(), M * C);
    k::gelu_backward(x.data(), g.data(), dx.data(), M * C);
    EXPECT_TRUE(finite(out) && finite(dx)) << "gelu " << where;
  }
  {  // (M,C) → (1,C) and → (M,1)
    auto cols = nan_buffer<T>(C), rows = nan_buffer<T>(M);
    const int64_t shape[2] = {M, C}, to_cols[2] = {0, 1}, to_rows[2] = {1, 0};
    k::sum_to(x.data(), shape, 2, to_cols, cols.data(), C);
    k::sum_to(x.data(), shape, 2, to_rows, rows.data(), M);
    EXPECT_TRUE(finite(cols) && finite(rows)) << "sum_to " << where;
  }
  {
    auto out = nan_buffer<T>(M * C);
    const int64_t shape[3] = {M, 1, C};
    const int perm[3] = {2, 1, 0};
    k::permute(x.data(), shape, 3, perm, out.data(), sizeof(T));
    EXPECT_TRUE(finite(out)) << "permute " << where;
  }
  {  // op(x) (M,C) · op(v) (C,7) in every transpose form, then a reduction over the M rows
    std::vector<T> v(C * 7);
    for (T& e : v) e = static_cast<T>(rng.normal());
    auto out = nan_buffer<T>(M * 7);
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        out = nan_buffer<T>(M * 7);
        k::gemm<T>(1, M, 7, C, x.data(), true, ta, v.data(), true, tb, out.data(), true, false);
        EXPECT_TRUE(finite(out)) << "gemm " << where << " " << ta << tb;
      }
    auto red = nan_buffer<T>(C * 7);
    k::gemm<T>(1, C, 7, M, x.data(), true, true, out.data(), true, false, red.data(), true, false);
    EXPECT_TRUE(finite(red)) << "gemm reduction " << where;
  }
  {
    auto y = nan_buffer<T>(M * C), mean = nan_buffer<T>(M), rstd = nan_buffer<T>(M);
    auto dx = nan_buffer<T>(M * C), dw = nan_buffer<T>(C), db = nan_buffer<T>(C);
    k::layernorm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), M, C, 1e-5);
    k::layernorm_backward(g.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(),
                          db.data(), M, C);
    EXPECT_TRUE(finite(y) && finite(mean) && finite(rstd)) << "layernorm fwd " << where;
    EXPECT_TRUE(finite(dx) && finite(dw) && finite(db)) << "layernorm bwd " << where;
  }
  {
    auto y = nan_buffer<T>(M * C), dx = nan_buffer<T>(M * C), lse = nan_buffer<T>(M);
    auto dl = nan_buffer<T>(M * C);
    k::softmax_forward(x.data(), y.data(), M, C);
    k::softmax_backward(y.data(), g.data(), dx.data(), M, C);
    EXPECT_TRUE(finite(y) && finite(dx)) << "softmax " << where;
    std::vector<int32_t> labels(M);
    for (int32_t& l : labels) l = static_cast<int32_t>(rng.randint(0, C));
    k::cross_entropy_forward(x.data(), labels.data(), lse.data(), M, C);
    k::cross_entropy_backward(x.data(), labels.data(), lse.data(), 1.0, dl.data(), M, C);
    EXPECT_TRUE(finite(lse) && finite(dl)) << "cross_entropy " << where;
  }
  {  // a table of C rows of width 5, M lookups (table and gradient sized here: x and g hold
     // M·C values, fewer than C·5 or M·5 when M or C is below 5)
    const int64_t V = C, D = 5;
    std::vector<int32_t> idx(M);
    for (int32_t& i : idx) i = static_cast<int32_t>(rng.randint(0, V));
    std::vector<T> table(V * D), dout(M * D);
    for (T& v : table) v = static_cast<T>(rng.normal());
    for (T& v : dout) v = static_cast<T>(rng.normal());
    auto out = nan_buffer<T>(M * D), dw = nan_buffer<T>(V * D);
    k::embedding_forward(table.data(), idx.data(), out.data(), M, V, D);
    k::embedding_backward(dout.data(), idx.data(), dw.data(), M, V, D);
    EXPECT_TRUE(finite(out) && finite(dw)) << "embedding " << where;
  }
}

TEST(Kernels, OverwriteEveryOutputElement) {
  Rng rng = make_rng("poison");
  for (auto [M, C] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {17, 16}, {97, 33}, {16411, 17}}) {
    check_kernels_overwrite_poison<float>(M, C, rng);
    check_kernels_overwrite_poison<double>(M, C, rng);
  }
}

// Every op with a threaded path, at a size above the kernels' parallel threshold (2¹⁸
// element-operations), against the same op on one thread: forward and all gradients.
TEST(OpParallel, ThreadedResultsMatchOneThread) {
#ifdef _OPENMP
  if (omp_get_max_threads() < 2) GTEST_SKIP() << "one OpenMP thread: no threaded path to test";
#endif
  Rng rng = make_rng("parallel");
  struct Big {
    std::string name;
    std::vector<Tensor> inputs;  // float32 leaves
    std::function<Tensor(const std::vector<Tensor>&)> f;
  };
  const Tensor idx = randint({4, 67, 67}, 0, 65, rng);
  const Tensor labels = randint({40000}, 0, 8, rng);
  std::vector<Big> cases = {
      {"add_bias",
       {randn({16411, 17}, rng), randn({17}, rng)},
       [](const std::vector<Tensor>& t) { return ops::add(t[0], t[1]); }},
      {"mul_B1C",
       {randn({61, 301, 16}, rng), randn({61, 1, 16}, rng)},
       [](const std::vector<Tensor>& t) { return ops::mul(t[0], t[1]); }},
      {"layernorm_c16",
       {randn({20011, 16}, rng), randn({16}, rng), randn({16}, rng)},
       [](const std::vector<Tensor>& t) { return ops::layernorm(t[0], t[1], t[2]); }},
      {"layernorm_c37",
       {randn({9001, 37}, rng), randn({37}, rng), randn({37}, rng)},
       [](const std::vector<Tensor>& t) { return ops::layernorm(t[0], t[1], t[2]); }},
      {"gelu", {randn({300007}, rng)}, [](const std::vector<Tensor>& t) { return ops::gelu(t[0]); }},
      {"softmax", {randn({20011, 17}, rng)}, [](const std::vector<Tensor>& t) { return ops::softmax(t[0]); }},
      {"cross_entropy",
       {randn({40000, 8}, rng)},
       [labels](const std::vector<Tensor>& t) { return ops::cross_entropy(t[0], labels); }},
      {"embedding",
       {randn({65, 16}, rng)},
       [idx](const std::vector<Tensor>& t) { return ops::embedding(t[0], idx); }},
      {"permute_bnnh_bhnn",
       {randn({2, 97, 97, 16}, rng)},
       [](const std::vector<Tensor>& t) {
         return ops::permute(t[0], {0, 3, 1, 2});
       }},
      {"linear",
       {randn({4099, 64}, rng), randn({256, 64}, rng), randn({256}, rng)},
       [](const std::vector<Tensor>& t) { return ops::linear(t[0], t[1], t[2]); }},
      {"sum", {randn({300007}, rng)}, [](const std::vector<Tensor>& t) { return ops::sum(t[0]); }},
      // GEMMs split along M, N and K (the pair projection's weight gradient sums 70001 rows)
      {"linear_16_to_4",
       {randn({70001, 16}, rng), randn({4, 16}, rng)},
       [](const std::vector<Tensor>& t) { return ops::linear(t[0], t[1], Tensor()); }},
      {"matmul_wide",
       {randn({8, 300}, rng), randn({300, 4001}, rng)},
       [](const std::vector<Tensor>& t) { return ops::matmul(t[0], t[1]); }},
      {"matmul_wide_ta_tb",
       {randn({300, 8}, rng), randn({4001, 300}, rng)},
       [](const std::vector<Tensor>& t) { return ops::matmul(t[0], t[1], true, true); }},
      {"matmul_batched_shared_b",
       {randn({3, 1001, 64}, rng), randn({64, 72}, rng)},
       [](const std::vector<Tensor>& t) { return ops::matmul(t[0], t[1]); }},
  };
  for (Big& c : cases) {
    std::vector<std::vector<std::vector<double>>> results;  // [run][0 = out, 1.. = grads]
    for (int run = 0; run < 2; ++run) {
      std::unique_ptr<SingleThreaded> one;
      if (run == 1) one = std::make_unique<SingleThreaded>();
      std::vector<Tensor> in;
      for (const Tensor& t : c.inputs) in.push_back(leaf(t.clone()));
      const Tensor out = c.f(in);
      out.backward(Tensor::full(out.shape(), 0.5, out.dtype()));
      std::vector<std::vector<double>> r = {out.to_vector<double>()};
      for (const Tensor& t : in) r.push_back(t.grad().to_vector<double>());
      results.push_back(r);
    }
    for (size_t i = 0; i < results[0].size(); ++i) {
      const Tensor a = Tensor::from_vector(results[0][i], {int64_t(results[0][i].size())});
      const Tensor b = Tensor::from_vector(results[1][i], {int64_t(results[1][i].size())});
      // Row-wise work is identical; sums over rows regroup per thread (float32: ~1e-7).
      EXPECT_LE(rel_error(a, b), 1e-6) << c.name << (i == 0 ? " forward" : " gradient ") << i;
    }
  }
}

// =============================================================================================
// 3. Errors that name what was expected and what was found
// =============================================================================================

#define EXPECT_PF_ERROR(stmt, substring)                                                              \
  do {                                                                                                \
    try {                                                                                             \
      stmt;                                                                                           \
      ADD_FAILURE() << #stmt " did not throw";                                                        \
    } catch (const ::pf::Error& e) {                                                                  \
      EXPECT_NE(std::string(e.what()).find(substring), std::string::npos) << "message: " << e.what(); \
    }                                                                                                 \
  } while (0)

TEST(OpErrors, ShapesAndDtypes) {
  const Tensor a = Tensor::zeros({3, 4}), b5 = Tensor::zeros({5}), d = Tensor::zeros({3, 4}, DType::F64);
  const Tensor i = Tensor::zeros({3, 4}, DType::I32);
  EXPECT_PF_ERROR(ops::add(a, b5), "do not broadcast");
  EXPECT_PF_ERROR(ops::mul(a, d), "same dtype");
  EXPECT_PF_ERROR(ops::add(i, i), "float32 or float64");
  EXPECT_PF_ERROR(ops::add(a, Tensor()), "undefined");
  EXPECT_PF_ERROR(ops::matmul(a, Tensor::zeros({5, 2})), "inner dims differ");
  EXPECT_PF_ERROR(ops::matmul(Tensor::zeros({2, 3, 4}), Tensor::zeros({3, 4, 2})), "batch dims");
  EXPECT_PF_ERROR(ops::matmul(b5, a), "at least 2 dims");
  EXPECT_PF_ERROR(ops::linear(a, Tensor::zeros({2, 5}), Tensor()), "linear: x must be (...,5)");
  EXPECT_PF_ERROR(ops::linear(a, Tensor::zeros({2, 4}), Tensor::zeros({3})), "b must be (2)");
  EXPECT_PF_ERROR(ops::layernorm(a, Tensor::zeros({3}), Tensor::zeros({4})), "w must be (4)");
  EXPECT_PF_ERROR(ops::layernorm(a, Tensor::zeros({4}), Tensor::zeros({4}, DType::F64)), "same dtype");
  EXPECT_PF_ERROR(ops::softmax(Tensor::zeros({})), "scalar");
  EXPECT_PF_ERROR(ops::sum_to(a, {2, 4}), "does not broadcast");
  EXPECT_PF_ERROR(ops::sum_to(a, {1, 3, 4}), "more dims");
  EXPECT_PF_ERROR(ops::reshape(a, {5, -1}), "cannot infer");
  EXPECT_PF_ERROR(ops::reshape(a, {2, 5}), "holds 10 elements");
  EXPECT_PF_ERROR(ops::permute(a, {0, 0}), "appears twice");
  EXPECT_PF_ERROR(ops::permute(a, {0}), "1 dims given");
  EXPECT_PF_ERROR(ops::transpose(a, 0, 2), "out of range");
  Tensor y = Tensor::zeros({3});
  EXPECT_PF_ERROR(ops::add_(y, Tensor::zeros({4})), "same shape");
  EXPECT_PF_ERROR(ops::mean(Tensor::zeros({0, 3})), "no elements");
}

TEST(OpErrors, IndicesAndLabels) {
  const Tensor logits = Tensor::zeros({3, 4});
  const Tensor good = Tensor::from_vector(std::vector<int32_t>{0, 3, 1}, {3});
  EXPECT_PF_ERROR(ops::cross_entropy(logits, Tensor::zeros({3})), "labels must be int32");
  EXPECT_PF_ERROR(ops::cross_entropy(logits, Tensor::zeros({2}, DType::I32)), "labels must be (3)");
  EXPECT_PF_ERROR(ops::cross_entropy(Tensor::zeros({3}), good), "logits must be (N,K)");
  EXPECT_PF_ERROR(ops::cross_entropy(logits, Tensor::from_vector(std::vector<int32_t>{0, 4, 1}, {3})),
                  "label 4 at row 1 is outside [0, 4)");
  EXPECT_PF_ERROR(ops::accuracy(logits, Tensor::from_vector(std::vector<int32_t>{0, 1, -1}, {3})),
                  "label -1 at row 2");
  const Tensor table = Tensor::zeros({5, 2});
  EXPECT_PF_ERROR(ops::embedding(table, Tensor::from_vector(std::vector<int32_t>{1, 5}, {2})),
                  "index 5 at position 1 is outside [0, 5)");
  EXPECT_PF_ERROR(ops::embedding(table, Tensor::zeros({2})), "idx must be int32");
  EXPECT_PF_ERROR(ops::embedding(Tensor::zeros({5}), good), "weight must be (V,D)");
}

TEST(OpErrors, Attention) {
  const Tensor q = Tensor::zeros({2, 5, 3, 4}), k = Tensor::zeros({2, 7, 3, 4});
  EXPECT_PF_ERROR(ops::attention(Tensor::zeros({2, 5, 12}), k, k, Tensor()), "q must be (B,Nq,H,D)");
  EXPECT_PF_ERROR(ops::attention(q, Tensor::zeros({2, 7, 3, 8}), Tensor::zeros({2, 7, 3, 8}), Tensor()),
                  "k must be (B=2,Nk,H=3,D=4)");
  EXPECT_PF_ERROR(ops::attention(q, k, Tensor::zeros({2, 6, 3, 4}), Tensor()), "v must have k's shape");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor::zeros({2, 3, 7, 5})),
                  "bias must be (B|1,H|1,Nq,Nk) = (2|1,3|1,5,7)");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor::zeros({2, 2, 5, 7})), "got float32[2, 2, 5, 7]");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor::zeros({3, 5, 7})), "bias must be");
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor::zeros({1, 1, 5, 7}, DType::F64)), "same dtype");
  ops::AttentionOptions opt;
  opt.key_padding_mask = Tensor::zeros({2, 7});
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), opt), "key_padding_mask must be uint8");
  opt.key_padding_mask = Tensor::zeros({2, 5}, DType::U8);
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), opt), "key_padding_mask must be (B,Nk) = (2,7)");
  opt.key_padding_mask = Tensor();
  opt.scale = -1;
  EXPECT_PF_ERROR(ops::attention(q, k, k, Tensor(), opt), "scale must be");
}

// =============================================================================================
// 4. Autograd behaviour
// =============================================================================================

TEST(Autograd, GradientsAccumulateOverBackwardCalls) {
  Tensor x = leaf(Tensor::from_vector(std::vector<double>{1, 2, 3}, {3}));
  const Tensor c = Tensor::from_vector(std::vector<double>{0.5, -1, 4}, {3});
  ops::sum(ops::mul(x, c)).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{0.5, -1, 4}));
  ops::sum(ops::mul(x, c)).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{1, -2, 8}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, TensorUsedTwiceGetsTheSummedGradient) {
  Tensor x = leaf(Tensor::from_vector(std::vector<double>{1, -2, 3}, {3}));
  ops::sum(ops::mul(x, x)).backward();  // d(Σx²) = 2x
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{2, -4, 6}));
  x.zero_grad();
  // Two paths through different ops: y = gelu(x) + 3x
  Tensor y = ops::add(ops::gelu(x), ops::scale(x, 3.0));
  ops::sum(y).backward();
  const std::vector<double> g = x.grad().to_vector<double>(), xv = x.to_vector<double>();
  for (size_t i = 0; i < xv.size(); ++i) {
    const double cdf = 0.5 * (1 + std::erf(xv[i] / std::sqrt(2.0)));
    EXPECT_NEAR(g[i], 3 + cdf + xv[i] * std::exp(-0.5 * xv[i] * xv[i]) / std::sqrt(2 * M_PI), 1e-14);
  }
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = leaf(Tensor::from_vector(std::vector<double>{1, 2}, {2}));
  {
    NoGradGuard guard;
    Tensor y = ops::sum(ops::gelu(ops::mul(x, x)));
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
  }
  Tensor y = ops::sum(x);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_NE(y.grad_fn(), nullptr);
  // Inputs that do not require grad record nothing either.
  Tensor z = ops::mul(x.detach(), x.detach());
  EXPECT_EQ(z.grad_fn(), nullptr);
}

TEST(Autograd, SecondBackwardThroughAGraphThrows) {
  Tensor x = leaf(Tensor::from_vector(std::vector<double>{1, 2}, {2}));
  Tensor y = ops::sum(ops::gelu(x));
  y.backward();
  EXPECT_PF_ERROR(y.backward(), "a second time");
}

TEST(Autograd, SavedActivationsAreFreedByBackward) {
  Tensor x = leaf(Tensor::from_vector(std::vector<double>{0.1, 0.2, 0.3}, {3}));
  Tensor w = leaf(Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}));
  std::weak_ptr<Storage> hidden, act;
  Tensor loss;
  {
    Tensor h = ops::scale(x, 2.0);  // intermediate, saved by gelu
    Tensor a = ops::gelu(h);        // saved (as an input) by linear
    hidden = h.impl()->storage;
    act = a.impl()->storage;
    loss = ops::sum(ops::linear(a, w, Tensor()));
  }
  EXPECT_FALSE(hidden.expired());  // held by the graph only
  EXPECT_FALSE(act.expired());
  loss.backward();
  EXPECT_TRUE(hidden.expired());  // released as each node ran
  EXPECT_TRUE(act.expired());
  EXPECT_TRUE(x.grad().defined());
  EXPECT_TRUE(w.grad().defined());
}

TEST(Autograd, GradientsHaveTheInputsShapesAndDtypes) {
  // The broadcast operand of add/mul gets a gradient of its own shape.
  for (DType t : {DType::F32, DType::F64}) {
    Tensor a = leaf(Tensor::full({3, 5, 7}, 1.0, t)), b = leaf(Tensor::full({1, 7}, 2.0, t));
    ops::sum(ops::mul(a, b)).backward();
    EXPECT_EQ(b.grad().shape(), (Shape{1, 7}));
    EXPECT_EQ(b.grad().dtype(), t);
    EXPECT_EQ(b.grad().to_vector<double>(), std::vector<double>(7, 15.0));  // Σ over 3·5 of a
    EXPECT_EQ(a.grad().to_vector<double>(), std::vector<double>(105, 2.0));
  }
}

// =============================================================================================
// The gradient checker itself
// =============================================================================================

TEST(Gradcheck, FindsAWrongGradient) {
  // An "op" whose backward is off by 10%: the checker must report it.
  Tensor x = leaf(Tensor::from_vector(std::vector<double>{0.3, -1.2, 2.0}, {3}));
  auto wrong_square = [](const Tensor& t) {
    Tensor out = ops::mul(t.detach(), t.detach());
    const Tensor saved = t.detach();
    return make_result(out, "wrong_square", {t}, [saved](const Tensor& g) -> std::vector<Tensor> {
      return {ops::mul(g, ops::scale(saved, 2.2))};
    });
  };
  const auto e = gradcheck([&] { return wrong_square(x); }, {{"x", x}});
  ASSERT_EQ(e.size(), 1u);
  EXPECT_GT(e[0].rel_error, 0.05);
  EXPECT_EQ(e[0].checked, 3);
}

TEST(Gradcheck, GradientsZeroInExactArithmeticCountAsZero) {
  // softmax(x + c) does not depend on the scalar c: its gradient is rounding noise on both sides.
  Rng rng = make_rng("gradcheck_zero");
  Tensor x = leaf(randn({3, 5}, rng, DType::F64));
  Tensor c = leaf(randn({}, rng, DType::F64));
  const auto e = gradcheck([&] { return ops::softmax(ops::add(x, c)); }, {{"x", x}, {"c", c}});
  EXPECT_LE(e[0].rel_error, kGradTol);
  EXPECT_EQ(e[1].rel_error, 0.0);
  EXPECT_LT(e[1].max_abs_error, 1e-8);
}

TEST(Gradcheck, AMissingGradientIsCaught) {
  // An op that forgets its input's gradient: analytic 0, numeric clearly not.
  Tensor x = leaf(Tensor::from_vector(std::vector<double>{0.3, -1.2}, {2}));
  Tensor y = leaf(Tensor::from_vector(std::vector<double>{2.0, 0.5}, {2}));
  auto forgetful_mul = [](const Tensor& a, const Tensor& b) {
    Tensor out = ops::mul(a.detach(), b.detach());
    const Tensor sa = a.detach();
    return make_result(out, "forgetful_mul", {a, b}, [sa](const Tensor& g) -> std::vector<Tensor> {
      return {Tensor::zeros(sa.shape(), DType::F64), ops::mul(g, sa)};
    });
  };
  const auto e = gradcheck([&] { return forgetful_mul(x, y); }, {{"x", x}, {"y", y}});
  EXPECT_EQ(e[0].rel_error, 1.0);
  EXPECT_LE(e[1].rel_error, kGradTol);
}

TEST(Gradcheck, SubsetAndValidation) {
  Rng rng = make_rng("gradcheck_subset");
  Tensor x = leaf(randn({40}, rng, DType::F64));
  GradcheckOptions opt;
  opt.max_elements = 7;
  const auto e = gradcheck([&] { return ops::gelu(x); }, {{"x", x}}, opt);
  EXPECT_EQ(e[0].checked, 7);
  EXPECT_LE(e[0].rel_error, kGradTol);
  Tensor f = leaf(randn({3}, rng, DType::F32));
  EXPECT_PF_ERROR(gradcheck([&] { return ops::gelu(f); }, {{"f", f}}), "float64");
  Tensor nl = randn({3}, rng, DType::F64);
  EXPECT_PF_ERROR(gradcheck([&] { return ops::gelu(nl); }, {{"nl", nl}}), "requires grad");
}

}  // namespace
}  // namespace pf
