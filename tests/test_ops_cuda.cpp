// Every op of framework/ops.h on the GPU against the CPU on the same random inputs, forward and
// backward, in float32 and bfloat16; the raw kernels' outputs are NaN-poisoned first; the caching
// allocator's behaviour; AdamW and gradient clipping. Skips cleanly without a CUDA device.
//
// Tolerances (‖gpu − cpu‖ / ‖cpu‖ over all elements):
// - float32: 1e-5. Both sides compute in fp32 from the same inputs and differ only in the order
//   of their sums (cuBLAS, block reductions); for sums of n ≤ ~10⁴ terms the norm-wise error is a
//   few times √n·2⁻²⁴ ≈ 6e-6 in the worst case we draw, and typically 1e-7.
// - bfloat16: the GPU stores every result in bf16 (unit roundoff u = 2⁻⁸ ≈ 3.9e-3) while the CPU
//   reference computes the same (bf16-representable) inputs in fp32. Each checked value carries
//   at most three bf16 roundings in sequence (an intermediate stored in bf16 — e.g. a GEMM output
//   that a bias is added to — the result itself, and for gradients the bf16 upstream gradient),
//   so its relative error is ≤ 3u ≈ 1.2e-2 elementwise; a norm-wise bound of 3u = 1.17e-2 holds
//   with margin (rounding errors are not all of one sign). A wrong kernel is off by O(1).
//
// Inputs are drawn fresh each run; the seed is printed and PF_TEST_SEED=<n> replays a run.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "framework/allocator.h"
#include "framework/autograd.h"
#include "framework/ops.h"
#include "framework/optim.h"
#include "framework/random.h"
#include "framework/tensor.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/context.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/fused.h"
#include "kernels/cuda/layernorm.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/reduce.h"
#endif
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

constexpr double kF32Tol = 1e-5;
constexpr double kBF16Tol = 3.0 / 256.0;  // 3u, u = 2⁻⁸ (see the header)

#define PF_REQUIRE_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or a build without CUDA)"

// rel_error's floor here: a gradient that is zero in exact arithmetic (layernorm over one
// channel: x − mean(x) ≡ 0) holds only rounding noise on both devices — exactly 0 or ~1e-8
// depending on FMA contraction — so it is judged against a floor instead of its own noise.
double sum_sq(const Tensor& t) {
  double s = 0;
  for (double x : t.to_vector<double>()) s += x * x;
  return s;
}

bool all_finite_host(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// Fills the allocator's cache with NaN blocks shaped like `shapes` (then frees them), so that
// the op's outputs, which reuse cached blocks of their size class, start out as NaN.
void poison_cache(const std::vector<Shape>& shapes) {
  std::vector<Tensor> held;
  for (const Shape& s : shapes)
    for (DType t : {DType::F32, DType::BF16}) held.push_back(Tensor::full(s, std::nan(""), t, Device::CUDA));
}

// One op case: inputs drawn on the CPU in float32 (index tensors I32); the op; which inputs get
// gradients; which floating inputs stay float32 in the bf16 run (fp32 master weights).
struct OpCase {
  std::string name;
  std::function<std::vector<Tensor>(Rng&)> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> fn;
  std::vector<bool> grad;      // per input
  std::vector<bool> keep_f32;  // per input, in the bf16 run (empty: none)
};

struct RunResult {
  std::vector<double> out;
  std::vector<std::vector<double>> grads;  // per input with grad
};

// Runs c on `device` with floating inputs in `dtype`, backward from the upstream gradient r.
RunResult run_case(const OpCase& c, const std::vector<Tensor>& host_inputs, const Tensor& host_r,
                   Device device, DType dtype) {
  std::vector<Tensor> in;
  for (size_t i = 0; i < host_inputs.size(); ++i) {
    Tensor t = host_inputs[i];
    const bool keep = i < c.keep_f32.size() && c.keep_f32[i];
    if (is_floating(t.dtype()) && !keep) t = t.to(dtype);  // host conversion, then the copy
    t = t.to(device);
    if (c.grad[i]) t.requires_grad_(true);
    in.push_back(t);
  }
  Tensor out = c.fn(in);
  Tensor r = host_r.to(out.dtype()).to(device);
  if (device == Device::CUDA) poison_cache({out.shape()});
  out.backward(r);
  RunResult res;
  res.out = out.to(Device::CPU).to_vector<double>();
  for (size_t i = 0; i < in.size(); ++i)
    if (c.grad[i]) {
      EXPECT_TRUE(in[i].grad().defined()) << c.name << ": no gradient for input " << i;
      if (in[i].grad().defined()) {
        EXPECT_EQ(in[i].grad().dtype(), in[i].dtype()) << c.name << ": gradient dtype, input " << i;
        res.grads.push_back(in[i].grad().to(Device::CPU).to_vector<double>());
      } else {
        res.grads.emplace_back();
      }
    }
  return res;
}

// bf16-representable copies of the floating inputs (the values the bf16 run sees), as float32.
std::vector<Tensor> round_to_bf16(const OpCase& c, const std::vector<Tensor>& inputs) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const bool keep = i < c.keep_f32.size() && c.keep_f32[i];
    const Tensor& t = inputs[i];
    out.push_back(is_floating(t.dtype()) && !keep ? t.to(DType::BF16).to(DType::F32) : t);
  }
  return out;
}

void check_case(const OpCase& c, DType dtype, Rng& rng) {
  SCOPED_TRACE(c.name + (dtype == DType::BF16 ? " [bf16]" : " [fp32]"));
  std::vector<Tensor> inputs = c.inputs(rng);
  if (dtype == DType::BF16) inputs = round_to_bf16(c, inputs);
  // The upstream gradient: random, of the output's shape (from a no-grad CPU evaluation).
  Shape out_shape;
  {
    NoGradGuard ng;
    out_shape = c.fn(inputs).shape();
  }
  Tensor r = randn(out_shape, rng);
  if (dtype == DType::BF16) r = r.to(DType::BF16).to(DType::F32);
  const RunResult cpu = run_case(c, inputs, r, Device::CPU, DType::F32);
  const RunResult gpu = run_case(c, inputs, r, Device::CUDA, dtype);
  const double tol = dtype == DType::BF16 ? kBF16Tol : kF32Tol;
  ASSERT_EQ(cpu.out.size(), gpu.out.size());
  EXPECT_TRUE(all_finite_host(gpu.out)) << "non-finite output (an element never written?)";
  const double e_out = rel_error(gpu.out, cpu.out);
  EXPECT_LE(e_out, tol) << "forward";
  std::printf("  %-40s %s fwd %.2e", c.name.c_str(), dtype == DType::BF16 ? "bf16" : "fp32", e_out);
  ASSERT_EQ(cpu.grads.size(), gpu.grads.size());
  for (size_t g = 0; g < cpu.grads.size(); ++g) {
    ASSERT_EQ(cpu.grads[g].size(), gpu.grads[g].size()) << "gradient " << g;
    EXPECT_TRUE(all_finite_host(gpu.grads[g])) << "non-finite gradient " << g;
    // floor: a tenth of the incoming gradient's norm. A gradient that is zero only through
    // cancellation (attention with Nk = 1: dS = dP − rowsum(dO∘O) with dP and the rowsum summed in
    // different orders) holds noise of ~ε·(the cancelled terms) ≈ 1e-7·‖r‖ on each device; a
    // thousandth of ‖r‖ left that at ~1e-4 of the floor (seed 2621818111 failed), a tenth puts it
    // at ~1e-6 < 1e-5, while a wrong gradient, O(‖r‖), still fails by four orders of magnitude.
    const double e = rel_error(gpu.grads[g], cpu.grads[g], 0.1 * std::sqrt(sum_sq(r)));
    EXPECT_LE(e, tol) << "gradient " << g;
    std::printf("  d%zu %.2e", g, e);
  }
  std::printf("\n");
}

// ---- the registry --------------------------------------------------------------------------

Tensor rn(const Shape& s, Rng& rng) { return randn(s, rng); }

std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  auto binary = [&](const std::string& name, Shape a, Shape b, Tensor (*f)(const Tensor&, const Tensor&)) {
    cases.push_back({name + " " + shape_str(a) + " " + shape_str(b),
                     [a, b](Rng& rng) {
                       return std::vector<Tensor>{rn(a, rng), rn(b, rng)};
                     },
                     [f](const std::vector<Tensor>& x) { return f(x[0], x[1]); },
                     {true, true}});
  };
  for (auto f : {std::make_pair("add", &ops::add), std::make_pair("sub", &ops::sub),
                 std::make_pair("mul", &ops::mul)}) {
    binary(f.first, {17, 97}, {17, 97}, f.second);
    binary(f.first, {3, 17, 64}, {64}, f.second);
    binary(f.first, {2, 9, 9, 16}, {9, 9, 16}, f.second);
    binary(f.first, {4, 1, 3}, {1, 5, 1}, f.second);
    binary(f.first, {1}, {7, 1}, f.second);
  }
  cases.push_back({"scale -1.7 (33,5)",
                   [](Rng& rng) {
                     return std::vector<Tensor>{rn({33, 5}, rng)};
                   },
                   [](const std::vector<Tensor>& x) { return ops::scale(x[0], -1.7); },
                   {true}});
  for (Shape s : {Shape{1}, Shape{17, 97}, Shape{4099}})
    cases.push_back({"gelu " + shape_str(s),
                     [s](Rng& rng) { return std::vector<Tensor>{rn(s, rng)}; },
                     [](const std::vector<Tensor>& x) { return ops::gelu(x[0]); },
                     {true}});
  for (Shape s : {Shape{1}, Shape{17, 97}, Shape{3, 1000}}) {
    cases.push_back({"sum " + shape_str(s),
                     [s](Rng& rng) { return std::vector<Tensor>{rn(s, rng)}; },
                     [](const std::vector<Tensor>& x) { return ops::sum(x[0]); },
                     {true}});
    cases.push_back({"mean " + shape_str(s),
                     [s](Rng& rng) { return std::vector<Tensor>{rn(s, rng)}; },
                     [](const std::vector<Tensor>& x) { return ops::mean(x[0]); },
                     {true}});
  }
  auto sum_to = [&](Shape from, Shape to) {
    cases.push_back({"sum_to " + shape_str(from) + "->" + shape_str(to),
                     [from](Rng& rng) { return std::vector<Tensor>{rn(from, rng)}; },
                     [to](const std::vector<Tensor>& x) { return ops::sum_to(x[0], to); },
                     {true}});
  };
  sum_to({97, 17}, {17});
  sum_to({97, 17}, {97, 1});
  sum_to({3, 5, 7, 2}, {5, 1, 2});
  sum_to({2, 33, 33, 16}, {33, 33, 16});
  sum_to({4097, 3}, {1, 3});
  sum_to({4099, 300}, {300});     // 16 row chunks, a column tile cut at 300
  sum_to({2, 4096, 256}, {256});  // a bias gradient of the large config: 32 chunks
  auto matmul = [&](Shape a, Shape b, bool ta, bool tb) {
    cases.push_back(
        {std::string("matmul ") + shape_str(a) + (ta ? "T " : " ") + shape_str(b) + (tb ? "T" : ""),
         [a, b](Rng& rng) {
           return std::vector<Tensor>{rn(a, rng), rn(b, rng)};
         },
         [ta, tb](const std::vector<Tensor>& x) { return ops::matmul(x[0], x[1], ta, tb); },
         {true, true}});
  };
  matmul({17, 33}, {33, 5}, false, false);
  matmul({33, 17}, {33, 5}, true, false);
  matmul({17, 33}, {5, 33}, false, true);
  matmul({33, 17}, {5, 33}, true, true);
  matmul({3, 17, 33}, {3, 33, 9}, false, false);
  matmul({3, 33, 17}, {3, 9, 33}, true, true);
  matmul({2, 3, 17, 33}, {33, 9}, false, false);  // b shared by every batch: dB summed
  matmul({2, 3, 33, 17}, {9, 33}, true, true);
  matmul({1, 1}, {1, 1}, false, false);
  for (auto [M, in, out] : {std::array<int64_t, 3>{1, 1, 1}, {97, 64, 17}, {2 * 64, 64, 256}}) {
    cases.push_back({"linear M=" + std::to_string(M) + " " + std::to_string(in) + "->" + std::to_string(out),
                     [M = M, in = in, out = out](Rng& rng) {
                       return std::vector<Tensor>{rn({M, in}, rng), rn({out, in}, rng), rn({out}, rng)};
                     },
                     [](const std::vector<Tensor>& x) { return ops::linear(x[0], x[1], x[2]); },
                     {true, true, true}});
  }
  cases.push_back({"linear no bias (2,9,16)->4",
                   [](Rng& rng) {
                     return std::vector<Tensor>{rn({2, 9, 16}, rng), rn({4, 16}, rng)};
                   },
                   [](const std::vector<Tensor>& x) { return ops::linear(x[0], x[1], Tensor()); },
                   {true, true}});
  // 1025: past the old 1024 cap; 7300: the backward's sums need one row group per block.
  for (int64_t C : {1, 5, 16, 17, 32, 64, 256, 1024, 1025, 7300}) {
    const int64_t M = C >= 256 ? 37 : 299;
    cases.push_back({"layernorm (" + std::to_string(M) + "," + std::to_string(C) + ")",
                     [M, C](Rng& rng) {
                       Tensor x = randn({M, C}, rng);
                       // an offset mean, as real activations have
                       return std::vector<Tensor>{ops::add(x, Tensor::full({1}, 0.7)),
                                                  uniform({C}, 0.5, 1.5, rng), rn({C}, rng)};
                     },
                     [](const std::vector<Tensor>& x) { return ops::layernorm(x[0], x[1], x[2]); },
                     {true, true, true}});
  }
  for (Shape s : {Shape{1, 1}, Shape{17, 97}, Shape{3, 5, 8}})
    cases.push_back({"softmax " + shape_str(s),
                     [s](Rng& rng) { return std::vector<Tensor>{rn(s, rng)}; },
                     [](const std::vector<Tensor>& x) { return ops::softmax(x[0]); },
                     {true}});
  for (auto [N, K] : {std::array<int, 2>{1, 1}, {97, 8}, {4099, 17}})
    cases.push_back({"cross_entropy (" + std::to_string(N) + "," + std::to_string(K) + ")",
                     [N = N, K = K](Rng& rng) {
                       return std::vector<Tensor>{ops::scale(rn({N, K}, rng), 3.0), randint({N}, 0, K, rng)};
                     },
                     [](const std::vector<Tensor>& x) { return ops::cross_entropy(x[0], x[1]); },
                     {true, false}});
  for (auto [V, D, n] : {std::array<int, 3>{1, 1, 1}, {8, 64, 97}, {65, 16, 4099}, {300, 17, 999}})
    cases.push_back(
        {"embedding V=" + std::to_string(V) + " D=" + std::to_string(D) + " n=" + std::to_string(n),
         [V = V, D = D, n = n](Rng& rng) {
           return std::vector<Tensor>{rn({V, D}, rng), randint({n}, 0, V, rng)};
         },
         [](const std::vector<Tensor>& x) { return ops::embedding(x[0], x[1]); },
         {true, false}});
  auto permute = [&](Shape s, std::vector<int> p) {
    std::string ps;
    for (int d : p) ps += std::to_string(d);
    cases.push_back({"permute " + shape_str(s) + " " + ps,
                     [s](Rng& rng) { return std::vector<Tensor>{rn(s, rng)}; },
                     [p](const std::vector<Tensor>& x) { return ops::permute(x[0], p); },
                     {true}});
  };
  permute({2, 17, 17, 4}, {0, 3, 1, 2});  // the pair bias (B,N,N,H) → (B,H,N,N): tiled path
  permute({2, 5, 7, 3}, {0, 2, 1, 3});    // general path
  permute({33, 65}, {1, 0});
  permute({1, 1, 1}, {2, 0, 1});
  cases.push_back({"reshape+transpose (6,10)",
                   [](Rng& rng) {
                     return std::vector<Tensor>{rn({6, 10}, rng)};
                   },
                   [](const std::vector<Tensor>& x) {
                     return ops::transpose(ops::reshape(x[0], {3, 2, 10}), 0, 2);
                   },
                   {true}});
  cases.push_back({"cast f32->bf16->f32 (17,9)",
                   [](Rng& rng) {
                     return std::vector<Tensor>{rn({17, 9}, rng)};
                   },
                   [](const std::vector<Tensor>& x) {
                     return ops::mul(ops::cast(ops::cast(x[0], DType::BF16), x[0].dtype()), x[0]);
                   },
                   {true}});
  // attention: q,k,v (B,N,H,D), every bias broadcast form, odd and even lengths; head dims the
  // GPU kernels do not take run zero-padded (4 with 64 heads: d_model 256; 24; 100) or, past
  // 128, unfused (160)
  struct Att {
    int B, Nq, Nk, H, D;
    Shape bias;
  };
  for (const Att& a : {Att{1, 1, 1, 1, 16, {1, 1, 1, 1}}, Att{2, 17, 17, 4, 16, {2, 4, 17, 17}},
                       Att{2, 33, 97, 2, 32, {1, 2, 33, 97}}, Att{3, 64, 64, 2, 64, {3, 1, 64, 64}},
                       Att{2, 65, 65, 8, 32, {1, 1, 65, 65}}, Att{1, 19, 19, 2, 128, {1, 2, 19, 19}},
                       Att{2, 13, 13, 64, 4, {2, 64, 13, 13}}, Att{1, 21, 17, 3, 24, {1, 3, 21, 17}},
                       Att{2, 9, 9, 2, 100, {2, 1, 9, 9}}, Att{2, 9, 13, 2, 160, {2, 1, 9, 13}}})
    cases.push_back(
        {"attention B" + std::to_string(a.B) + " Nq" + std::to_string(a.Nq) + " Nk" + std::to_string(a.Nk) +
             " H" + std::to_string(a.H) + " D" + std::to_string(a.D) + " bias" + shape_str(a.bias),
         [a](Rng& rng) {
           return std::vector<Tensor>{rn({a.B, a.Nq, a.H, a.D}, rng), rn({a.B, a.Nk, a.H, a.D}, rng),
                                      rn({a.B, a.Nk, a.H, a.D}, rng), rn(a.bias, rng)};
         },
         [](const std::vector<Tensor>& x) { return ops::attention(x[0], x[1], x[2], x[3]); },
         {true, true, true, true}});
  // the relative-position table (H, 2R+1) (float32 on the GPU) at a head dim padded (24) and
  // past the kernels (160)
  for (int D : {24, 160})
    cases.push_back(
        {"attention relpos table R3 D" + std::to_string(D),
         [D](Rng& rng) {
           return std::vector<Tensor>{rn({2, 11, 2, D}, rng), rn({2, 11, 2, D}, rng), rn({2, 11, 2, D}, rng),
                                      rn({2, 7}, rng)};
         },
         [](const std::vector<Tensor>& x) { return ops::attention(x[0], x[1], x[2], Tensor(), x[3]); },
         {true, true, true, true},
         {false, false, false, true}});
  return cases;
}

TEST(OpsCuda, EveryOpFloat32MatchesCpu) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed());
  for (const OpCase& c : op_cases()) check_case(c, DType::F32, rng);
}

TEST(OpsCuda, EveryOpBfloat16MatchesCpu) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 1);
  for (const OpCase& c : op_cases()) check_case(c, DType::BF16, rng);
}

// LayerNorm with fp32 weights and bf16 activations (the bf16 training mode): dw, db in fp32.
TEST(OpsCuda, LayernormFp32WeightsBf16Activations) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 2);
  OpCase c{"layernorm mixed (999,32)",
           [](Rng& r) {
             return std::vector<Tensor>{randn({999, 32}, r), uniform({32}, 0.5, 1.5, r), randn({32}, r)};
           },
           [](const std::vector<Tensor>& x) { return ops::layernorm(x[0], x[1], x[2]); },
           {true, true, true},
           {false, true, true}};
  check_case(c, DType::BF16, rng);
}

// ---- fused ops (framework/ops/fused.cpp) ------------------------------------------------------

// A pair_bias case of the tests below: z (B,N,M,C) shifted off zero mean, γ near 1, β, W (H,C).
struct PairBiasSize {
  int64_t B, N, M, C, H;
  std::string name(const std::string& what) const {
    return what + " B" + std::to_string(B) + " N" + std::to_string(N) + " M" + std::to_string(M) + " C" +
           std::to_string(C) + " H" + std::to_string(H);
  }
  std::function<std::vector<Tensor>(Rng&)> inputs() const {
    const PairBiasSize s = *this;
    return [s](Rng& r) {
      return std::vector<Tensor>{ops::add(randn({s.B, s.N, s.M, s.C}, r), Tensor::full({1}, 0.7)),
                                 uniform({s.C}, 0.5, 1.5, r), randn({s.C}, r), randn({s.H, s.C}, r)};
    };
  }
};

// pair_bias on the GPU against the CPU kernel. bf16: z, the output and the upstream gradient in
// bf16, the parameters fp32 (as in training; their gradients fp32) and in one case bf16 too. The
// kernel computes each value in fp32 from bf16-exact inputs and rounds it once, so the
// harness's 3u bound holds with room; dW, dγ, dβ are fp32 sums over up to 180k pairs, within
// the fp32 bound of the header. Sizes: awkward C and H (1, odd, at and past 16/32, the largest
// of the register kernels 64 and 16), N ≠ M, and 180k pairs so that every block of the backward
// takes several tiles. The lane-group kernels (past the register kernels, C ≤ 256): one channel
// or one head past the register kernels (65, 1) and (64, 17), the AlphaFold width (128, 8) at
// 180k pairs (each warp several batches of 32 rows, the prefetch crossing them), and each of
// their shapes — (128, 8) half a warp per row, (128, 16), (256, 8), (128, 32) and (256, 16) (W in
// shared memory) a warp per row — with rows not a multiple of a warp's 32, and C = 203 (a lane
// ending inside the row, lanes past its end, rows not 16-byte aligned). The chunked kernels
// (past those): channels ending inside a 32-chunk (100) with an odd H (33), the widest named in
// the kernel's header (256, 64) and a second head group (65 heads). Outputs and gradients start
// from NaN-poisoned blocks.
TEST(OpsCuda, FusedPairBiasMatchesCpu) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 7);
  using S = PairBiasSize;
  for (const S& s : {S{1, 1, 1, 1, 1}, S{2, 17, 19, 5, 3}, S{2, 9, 9, 16, 4}, S{1, 13, 11, 17, 9},
                     S{2, 33, 31, 32, 8}, S{1, 7, 5, 33, 16}, S{1, 6, 8, 64, 1}, S{2, 300, 300, 32, 8},
                     S{1, 5, 3, 65, 1}, S{1, 7, 9, 64, 17}, S{2, 13, 11, 100, 33}, S{2, 300, 300, 128, 8},
                     S{1, 17, 19, 256, 64}, S{1, 9, 7, 33, 65}, S{1, 9, 11, 128, 16}, S{1, 7, 9, 256, 8},
                     S{1, 13, 11, 128, 32}, S{1, 7, 9, 256, 16}, S{1, 9, 7, 203, 5}}) {
    const std::string name = s.name("pair_bias");
    const auto inputs = s.inputs();
    auto fn = [](const std::vector<Tensor>& x) { return ops::pair_bias(x[0], x[1], x[2], x[3]); };
    const Shape zs{s.B, s.N, s.M, s.C}, os{s.B, s.H, s.N, s.M};
    poison_cache({zs, zs, os});
    check_case({name, inputs, fn, {true, true, true, true}}, DType::F32, rng);
    poison_cache({zs, zs, os});
    check_case({name + " fp32 params", inputs, fn, {true, true, true, true}, {false, true, true, true}},
               DType::BF16, rng);
    if (s.C == 16 || s.C == 33 || s.C == 100)
      check_case({name + " bf16 params", inputs, fn, {true, true, true, true}}, DType::BF16, rng);
  }
}

// Repeat rep of a backward: the gradients of p kept from the first run (rep 0), bitwise equal
// to them afterwards.
void expect_same_grads_as_first(const std::vector<Tensor>& p, int rep,
                                std::vector<std::vector<float>>& first) {
  for (size_t i = 0; i < p.size(); ++i) {
    const std::vector<float> v = p[i].grad().to_vector<float>();
    if (rep == 0)
      first.push_back(v);
    else
      EXPECT_EQ(v, first[i]) << "input " << i << ", repeat " << rep;
  }
}

// The parameter gradients of pair_bias are summed in a fixed order: bitwise equal run to run
// (the register kernels at C = 32, the lane-group ones at C = 128 and, W in shared memory, 256).
TEST(OpsCuda, FusedPairBiasBackwardIsDeterministic) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 8);
  for (const auto& [C, H] : {std::pair<int64_t, int64_t>{32, 8}, {128, 8}, {256, 16}}) {
    SCOPED_TRACE("C " + std::to_string(C) + " H " + std::to_string(H));
    const Tensor z = randn({2, 97, 97, C}, rng).to(Device::CUDA);
    const Tensor g = randn({2, H, 97, 97}, rng).to(Device::CUDA);
    const Tensor gamma = uniform({C}, 0.5, 1.5, rng).to(Device::CUDA);
    const Tensor beta = randn({C}, rng).to(Device::CUDA), w = randn({H, C}, rng).to(Device::CUDA);
    std::vector<std::vector<float>> first;
    for (int rep = 0; rep < 3; ++rep) {
      std::vector<Tensor> p{z.detach().requires_grad_(true), gamma.detach().requires_grad_(true),
                            beta.detach().requires_grad_(true), w.detach().requires_grad_(true)};
      ops::pair_bias(p[0], p[1], p[2], p[3]).backward(g);
      expect_same_grads_as_first(p, rep, first);
    }
  }
}

// pair_bias adding dz into the gradient sum autograd holds for z (make_result_into,
// framework/autograd.h): z = 2x comes from an op (so autograd sums its gradient) and is read by
// two pair_bias calls; the second to run finds the first's fresh dz and adds into it (the
// kernels' accumulate path). In fp32 a third reader, mul(z, z), makes two more arrivals in an
// order the graph decides (a pair_bias call may then add into a sum autograd made). Against the
// CPU (whose kernel adds likewise; tests/test_fused.cpp checks it against the unfused chain in
// float64). bf16 runs the two pair_bias calls alone: ×2 and ×(−0.5) are exact, so each value
// carries at most three roundings in sequence (a term, the sum, the upstream gradient), the
// harness's 3u argument. Sizes: each kernel family — the register kernels (32, 8), the
// lane-group ones (128, 8) and (256, 16) at rows not a multiple of 32, C = 100 (a lane ending
// inside the row, lanes past it) with one head, and the chunked kernels (65, 33) — and 90300
// rows at (128, 8). The outputs and the sum start from NaN-poisoned blocks, so a dz written
// where it should be added (or added where it should be written) fails.
TEST(OpsCuda, FusedPairBiasAddsIntoTheGradientSum) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 11);
  using S = PairBiasSize;
  for (const S& s : {S{2, 7, 9, 32, 8}, S{2, 7, 9, 128, 8}, S{1, 13, 11, 256, 16}, S{1, 9, 7, 100, 1},
                     S{2, 5, 7, 65, 33}, S{1, 300, 301, 128, 8}}) {
    const std::string name = s.name("pair_bias into");
    const auto inputs = s.inputs();
    auto pairs = [](const std::vector<Tensor>& x, const Tensor& z) {
      return ops::add(ops::pair_bias(z, x[1], x[2], x[3]),
                      ops::pair_bias(z, x[1], x[2], ops::scale(x[3], -0.5)));
    };
    auto with_mul = [pairs](const std::vector<Tensor>& x) {
      const Tensor z = ops::scale(x[0], 2.0);
      return ops::add(pairs(x, z), ops::pair_bias(ops::mul(z, z), x[1], x[2], x[3]));
    };
    auto two_calls = [pairs](const std::vector<Tensor>& x) { return pairs(x, ops::scale(x[0], 2.0)); };
    const Shape zs{s.B, s.N, s.M, s.C}, os{s.B, s.H, s.N, s.M};
    poison_cache({zs, zs, zs, os, os});
    check_case({name, inputs, with_mul, {true, true, true, true}}, DType::F32, rng);
    // The GPU run is check_case's last backward: at least one pair_bias call added into the sum.
    EXPECT_GE(last_backward_sums().by_op, 1) << name;
    poison_cache({zs, zs, os, os});
    check_case(
        {name + " fp32 params", inputs, two_calls, {true, true, true, true}, {false, true, true, true}},
        DType::BF16, rng);
    EXPECT_EQ(last_backward_sums().by_op, 1) << name;
  }
}

// pair_bias_layers: L layers' biases from one z (the model's call). The op's result is checked
// through Σ_l ys[l]/(l + 1) (distinct weights: a layer's slice written to another's place, or a
// layer's parameters used for another, fails), and every parameter's gradient. bf16: the
// one-pass kernels round the normalised z and the folded weights W_l·γ_l to bf16 before the
// tensor cores' fp32 sums, and the result once more: three roundings per value, the harness's 3u
// bound (the CPU reference computes the same bf16-exact inputs in fp32). Sizes: each C the
// kernels take (16, 32, 64, 128) with O = L·H of 8, 15 (not a multiple of 16), 32 and 64;
// N·M not a multiple of 8 (scalar plane stores) and a multiple (16-byte stores); rows not a
// multiple of a warp's 16 or a block's 64, and 180k rows (each backward block several steps);
// layers left out of the sum (their slices' gradient zero); past the kernels (C = 48; L·H = 80),
// where each layer runs its own pair_bias. Outputs and gradients start from NaN-poisoned blocks.
struct PairBiasLayersSize {
  int64_t B, N, M, C, H, L;
  std::string name() const {
    return "pair_bias_layers B" + std::to_string(B) + " N" + std::to_string(N) + " M" + std::to_string(M) +
           " C" + std::to_string(C) + " H" + std::to_string(H) + " L" + std::to_string(L);
  }
};

TEST(OpsCuda, PairBiasLayersMatchesCpu) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 12);
  using S = PairBiasLayersSize;
  for (const S& s : {S{1, 1, 1, 16, 1, 1}, S{2, 5, 7, 16, 4, 2}, S{2, 9, 9, 32, 8, 4}, S{1, 13, 11, 64, 3, 5},
                     S{2, 24, 24, 128, 8, 8}, S{1, 37, 41, 128, 16, 4}, S{1, 40, 40, 32, 8, 8},
                     S{2, 300, 300, 128, 8, 8}, S{1, 9, 7, 48, 4, 2}, S{1, 5, 5, 32, 16, 5}}) {
    const int64_t L = s.L;
    auto inputs = [s](Rng& r) {
      std::vector<Tensor> x{ops::add(randn({s.B, s.N, s.M, s.C}, r), Tensor::full({1}, 0.7))};
      for (int64_t l = 0; l < s.L; ++l) x.push_back(uniform({s.C}, 0.5, 1.5, r));
      for (int64_t l = 0; l < s.L; ++l) x.push_back(randn({s.C}, r));
      for (int64_t l = 0; l < s.L; ++l) x.push_back(randn({s.H, s.C}, r));
      return x;
    };
    // every layer, or (L >= 3) every layer but the second
    auto fn = [L](const std::vector<Tensor>& x, bool skip) {
      const std::vector<Tensor> g(x.begin() + 1, x.begin() + 1 + L),
          b(x.begin() + 1 + L, x.begin() + 1 + 2 * L), w(x.begin() + 1 + 2 * L, x.end());
      const std::vector<Tensor> ys = ops::pair_bias_layers(x[0], g, b, w);
      Tensor out;
      for (int64_t l = 0; l < L; ++l) {
        if (skip && l == 1) continue;
        const Tensor y = ops::scale(ys[l], 1.0 / double(l + 1));
        out = out.defined() ? ops::add(out, y) : y;
      }
      return out;
    };
    std::vector<bool> grad(1 + 3 * L, true), params(1 + 3 * L, true);
    params[0] = false;
    const Shape zs{s.B, s.N, s.M, s.C}, os{L, s.B, s.H, s.N, s.M};
    for (bool skip : {false, true}) {
      if (skip && L < 3) continue;
      const std::string name = s.name() + (skip ? " (layer 1 unused)" : "");
      auto f = [fn, skip](const std::vector<Tensor>& x) { return fn(x, skip); };
      poison_cache({zs, zs, os, os});
      check_case({name, inputs, f, grad}, DType::F32, rng);
      poison_cache({zs, zs, os, os});
      check_case({name + " fp32 params", inputs, f, grad, params}, DType::BF16, rng);
    }
  }
}

// The one-pass backward sums in a fixed order: bitwise equal run to run; and where z's gradient
// sum is autograd's (z = 2x read by two pair_bias_layers calls), the second call adds into it.
TEST(OpsCuda, PairBiasLayersBackwardIsDeterministicAndAddsIntoTheSum) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 13);
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const int64_t B = 2, N = 97, M = 97, C = 128, H = 8, L = 8;
    const Tensor x = randn({B, N, M, C}, rng).to(dt).to(Device::CUDA);
    const Tensor r = randn({L, B, H, N, M}, rng).to(dt).to(Device::CUDA);
    std::vector<Tensor> gs, bs, ws;
    for (int64_t l = 0; l < L; ++l) {
      gs.push_back(uniform({C}, 0.5, 1.5, rng).to(Device::CUDA));
      bs.push_back(randn({C}, rng).to(Device::CUDA));
      ws.push_back(randn({H, C}, rng).to(Device::CUDA));
    }
    std::vector<std::vector<float>> first;
    for (int rep = 0; rep < 3; ++rep) {
      std::vector<Tensor> p{x.detach().requires_grad_(true)};
      for (const auto* v : {&gs, &bs, &ws})
        for (const Tensor& t : *v) p.push_back(t.detach().requires_grad_(true));
      const std::vector<Tensor> g(p.begin() + 1, p.begin() + 1 + L),
          b(p.begin() + 1 + L, p.begin() + 1 + 2 * L), w(p.begin() + 1 + 2 * L, p.end());
      const Tensor z = ops::scale(p[0], 2.0);
      Tensor loss;
      for (int call = 0; call < 2; ++call) {
        const std::vector<Tensor> ys = ops::pair_bias_layers(z, g, b, w);
        for (int64_t l = 0; l < L; ++l) {
          const Tensor y = ops::sum(ops::mul(ys[l], r.select(l)));
          loss = loss.defined() ? ops::add(loss, y) : y;
        }
      }
      loss.backward();
      // per call, 7 of the 8 slices' gradients added into the stacked sum (unbind), and the
      // second call's dz into the first's
      EXPECT_EQ(last_backward_sums().by_op, 2 * (L - 1) + 1);
      expect_same_grads_as_first(p, rep, first);
    }
  }
}

// embedding_sum on the GPU against the CPU: fp32 tables with fp32 output, and (the bf16 training
// mode) fp32 tables with a bf16 output, its upstream gradient bf16 and the table gradients fp32
// sums of it. Sizes: one row, a one-row table (every row adds into it), the pair representation
// of the large config's shape at a smaller N (bins (2,97,97), relative positions (97,97), D 32),
// D past a warp (33 columns: lanes take two), and 300k rows (each backward block takes many).
// Tiles of the backward ((Va + Vb)·D past 12288 floats): the AlphaFold tables (64 + 65 rows of
// 128: two column tiles of 64), a width ending inside the second tile (97 = 64 + 33), one row
// past the column-only tiling (385 rows of 40: row tiles of 384 × column tiles of 32 and 8),
// the most rows the kernel takes (3072: 8 row tiles) and one more, which runs the chain. In the
// bf16 run the shapes with D a multiple of 8 and Va + Vb <= 144 take the tensor-core backward
// instead (EmbeddingSumBackwardTensorCoresMatchFloat64 tests its edges).
TEST(OpsCuda, FusedEmbeddingSumMatchesCpu) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 9);
  struct S {
    Shape ia, ib;
    int Va, Vb, D;
  };
  for (const S& s :
       {S{{1}, {1}, 1, 1, 1}, S{{7, 5}, {5}, 1, 3, 4}, S{{2, 97, 97}, {97, 97}, 64, 65, 32},
        S{{3, 17, 19}, {17, 19}, 9, 33, 33}, S{{30000, 10}, {10}, 64, 1, 16},
        S{{2, 97, 97}, {97, 97}, 64, 65, 128}, S{{50, 37}, {37}, 100, 29, 97},
        S{{3000, 11}, {11}, 300, 85, 40}, S{{400, 9}, {9}, 3000, 72, 33}, S{{20, 7}, {7}, 3000, 73, 8}}) {
    const std::string name = "embedding_sum ia" + shape_str(s.ia) + " ib" + shape_str(s.ib) + " Va" +
                             std::to_string(s.Va) + " Vb" + std::to_string(s.Vb) + " D" + std::to_string(s.D);
    auto inputs = [s](Rng& r) {
      return std::vector<Tensor>{randn({s.Va, s.D}, r), randint(s.ia, 0, s.Va, r), randn({s.Vb, s.D}, r),
                                 randint(s.ib, 0, s.Vb, r)};
    };
    const Shape os = [&] {
      Shape o = s.ia;
      o.push_back(s.D);
      return o;
    }();
    poison_cache({os, os});
    check_case(
        {name,
         inputs,
         [](const std::vector<Tensor>& x) { return ops::embedding_sum(x[0], x[1], x[2], x[3], DType::F32); },
         {true, false, true, false}},
        DType::F32, rng);
    poison_cache({os, os});
    check_case({name + " bf16 out",
                inputs,
                [](const std::vector<Tensor>& x) {
                  const DType out = x[0].device() == Device::CUDA ? DType::BF16 : DType::F32;
                  return ops::embedding_sum(x[0], x[1], x[2], x[3], out);
                },
                {true, false, true, false},
                {true, false, true, false}},
               DType::BF16, rng);
  }
}

// The embedding_sum backward kernels called directly with 16-bit g, against a float64 reference,
// at the edges of the tensor-core kernel (embedding_sum_backward_on_tensor_cores): widths 8, 16,
// 32, 128, 136 (a column tile of one n8 tile: 8 columns), 256 (two column tiles) and 20 (not a
// multiple of 8: the shared-memory kernel); stacked tables of V = 5, 127, 128, 129, 144 (the most
// the kernel takes) and 145 (the shared-memory kernel); rows fewer than one 64-row tile, a
// multiple of it and neither; broadcast indices S = 1, S dividing rows, S = rows; indices drawn
// uniformly (every m-tile touched) and like the model's (distance bins and relative positions of
// an N × N grid: consecutive rows touch few m-tiles); ~4% of the indices out of their table (−1,
// Va or Vb: they add nothing). Each case runs with bf16 g (fp16 g for two) into fp32 and bf16
// tables, outputs and scratch NaN-poisoned, twice: the two results must have the same bits.
//
// Tolerance, per element e (n_e terms, A_e = Σ|g| over them, r_e the float64 sum): every product
// is an exact g value (the one-hot operand is 1 or 0). The tensor cores add each mma's products
// to the fp32 accumulator aligned to the largest exponent and truncated, not rounded per add:
// at most (t + 1)·2⁻²³·max|addend| for a step with t nonzero terms, max|addend| ≤ A_e. Over the
// ≤ n_e steps that touch e, Σ (t + 1) ≤ 2·n_e: |fp32 − r_e| ≤ n_e·2⁻²²·A_e (the float64 sum of
// the blocks' partials adds ≤ 264·2⁻⁵³·A_e, inside it). The output rounding adds u·(|r_e| + that),
// u = 2⁻²⁴ (fp32) or 2⁻⁸ (bf16, as above). Cases keep n_e small (≲ 30), so a lost or doubled row
// (|g| ~ 1) is far outside the bound.
TEST(OpsCuda, EmbeddingSumBackwardTensorCoresMatchFloat64) {
  PF_REQUIRE_GPU();
#ifdef PF_WITH_CUDA
  using kernels::ScalarType;
  Rng rng(test_seed() + 13);
  struct C {
    int64_t rows, S;
    int Va, Vb, D;
    bool pairs;  // indices like the model's (rows = B·N·N, S = N·N, N = pair_n)
    int pair_n;
    ScalarType gt;
    bool tensor_cores;  // the kernel expected to run
  };
  const ScalarType BF = ScalarType::BF16, H = ScalarType::F16;
  const std::vector<C> cases{
      {5, 1, 3, 2, 8, false, 0, BF, true},                      // fewer rows than a tile, S = 1
      {1000, 40, 64, 65, 16, false, 0, BF, true},               // V = 129, rows 15 tiles + 40
      {969, 323, 64, 65, 128, false, 0, BF, true},              // the AF tables
      {2 * 41 * 41, 41 * 41, 64, 65, 128, true, 41, BF, true},  // the AF tables, model-like indices
      {1000, 8, 100, 44, 256, false, 0, BF, true},              // V = 144: the most; two column tiles
      {777, 7, 63, 64, 136, false, 0, BF, true},                // V = 127; 136 = 128 + one n8 tile
      {320, 320, 1, 127, 32, false, 0, BF, true},               // V = 128, rows 5 tiles, S = rows
      {3 * 23 * 23, 23 * 23, 64, 65, 64, true, 23, H, true},    // fp16 g, model-like indices
      {640, 10, 70, 74, 256, false, 0, H, true},                // fp16 g, V = 144, D = 256
      {500, 5, 80, 65, 64, false, 0, BF, false},                // V = 145: the shared-memory kernel
      {300, 3, 64, 65, 20, false, 0, BF, false},                // D = 20: the shared-memory kernel
  };
  for (const C& c : cases) {
    const std::string name = "embedding_sum backward rows " + std::to_string(c.rows) + " S " +
                             std::to_string(c.S) + " Va " + std::to_string(c.Va) + " Vb " +
                             std::to_string(c.Vb) + " D " + std::to_string(c.D) +
                             (c.gt == H ? " fp16 g" : " bf16 g") + (c.pairs ? " pair indices" : "");
    SCOPED_TRACE(name);
    ASSERT_EQ(c.rows % c.S, 0);
    EXPECT_EQ(kernels::cuda::embedding_sum_backward_on_tensor_cores(c.gt, c.D, c.Va, c.Vb), c.tensor_cores);
    ASSERT_TRUE(kernels::cuda::embedding_sum_fits(c.D, c.Va, c.Vb));
    // Indices: in range, then ~4% moved out of it (−1 or the table's size).
    auto outside = [&](int v, int size) {
      const int64_t u = rng.randint(0, 50);
      return u == 0 ? -1 : u == 1 ? size : v;
    };
    std::vector<int32_t> ia(c.rows), ib(c.S);
    if (c.pairs) {
      const int n = c.pair_n, R = (c.Vb - 1) / 2;
      for (int64_t r = 0; r < c.rows; ++r) {  // a smooth distance: |i − j| scaled, with noise
        const int64_t i = (r / n) % n, j = r % n;
        const int bin = static_cast<int>(std::abs(i - j) * 3 / 2 + rng.randint(0, 3));
        ia[r] = outside(std::min(bin, c.Va - 1), c.Va);
      }
      for (int64_t s = 0; s < c.S; ++s) {
        const int64_t i = s / n, j = s % n;
        ib[s] = outside(static_cast<int>(std::clamp<int64_t>(j - i, -R, R) + R), c.Vb);
      }
    } else {
      for (auto& v : ia) v = outside(static_cast<int>(rng.randint(0, c.Va)), c.Va);
      for (auto& v : ib) v = outside(static_cast<int>(rng.randint(0, c.Vb)), c.Vb);
    }
    const DType gd = c.gt == H ? DType::F16 : DType::BF16;
    const Tensor g = randn({c.rows, c.D}, rng).to(gd);
    const std::vector<double> gv = g.to_vector<double>();  // the values as rounded to 16 bits
    // The float64 reference of the stacked table [dA; dB], Σ|g| and the number of terms.
    const int V = c.Va + c.Vb;
    std::vector<double> ref(size_t(V) * c.D, 0.0), mag(ref.size(), 0.0);
    std::vector<int64_t> terms(V, 0);
    for (int64_t r = 0; r < c.rows; ++r) {
      const int a = ia[r], b = ib[r % c.S];
      for (int v : {a >= 0 && a < c.Va ? a : -1, b >= 0 && b < c.Vb ? c.Va + b : -1}) {
        if (v < 0) continue;
        ++terms[v];
        for (int d = 0; d < c.D; ++d) {
          ref[size_t(v) * c.D + d] += gv[r * c.D + d];
          mag[size_t(v) * c.D + d] += std::abs(gv[r * c.D + d]);
        }
      }
    }
    const Tensor gg = g.to(Device::CUDA);
    const Tensor iag = Tensor::from_vector(ia, {c.rows}, DType::I32, Device::CUDA);
    const Tensor ibg = Tensor::from_vector(ib, {c.S}, DType::I32, Device::CUDA);
    const size_t ws_bytes = kernels::cuda::embedding_sum_backward_workspace_bytes(c.rows, c.D, c.Va, c.Vb);
    for (DType td : {DType::F32, DType::BF16}) {
      const ScalarType tt = td == DType::F32 ? ScalarType::F32 : ScalarType::BF16;
      const double u = td == DType::F32 ? std::ldexp(1.0, -24) : kBF16Tol / 3;
      std::vector<float> first;
      for (int run = 0; run < 2; ++run) {
        Tensor da = Tensor::full({c.Va, c.D}, std::nan(""), td, Device::CUDA);
        Tensor db = Tensor::full({c.Vb, c.D}, std::nan(""), td, Device::CUDA);
        Tensor ws =
            Tensor::full({static_cast<int64_t>(ws_bytes / 4)}, std::nan(""), DType::F32, Device::CUDA);
        kernels::cuda::embedding_sum_backward(c.gt, tt, gg.data_ptr(),
                                              static_cast<const int32_t*>(iag.data_ptr()),
                                              static_cast<const int32_t*>(ibg.data_ptr()), da.data_ptr(),
                                              db.data_ptr(), c.rows, c.S, c.D, c.Va, c.Vb, ws.data_ptr());
        std::vector<float> got = da.to_vector<float>();
        const std::vector<float> gb = db.to_vector<float>();
        got.insert(got.end(), gb.begin(), gb.end());
        if (run == 1) {
          EXPECT_EQ(std::memcmp(got.data(), first.data(), got.size() * sizeof(float)), 0)
              << "two runs differ in their bits (" << dtype_name(td) << " tables)";
          break;
        }
        first = got;
        int bad = 0;
        for (size_t e = 0; e < ref.size(); ++e) {
          const double acc = double(terms[e / c.D]) * std::ldexp(1.0, -22) * mag[e];
          const double bound = acc + u * (std::abs(ref[e]) + acc);
          if (!(std::abs(got[e] - ref[e]) <= bound) && ++bad <= 5)
            ADD_FAILURE() << dtype_name(td) << " tables: entry (" << e / c.D << ", " << e % c.D
                          << ") = " << got[e] << ", float64 " << ref[e] << ", bound " << bound << " ("
                          << terms[e / c.D] << " terms)";
        }
        EXPECT_EQ(bad, 0) << dtype_name(td) << " tables";
      }
    }
  }
#endif
}

// A width the kernels cannot take ((300, 70) needs more shared memory than any current GPU gives
// a block): the kernel refuses with the sizes and the shared memory; the op runs the unfused
// chain instead — the same result as the CPU, forward and backward — and says so once.
TEST(OpsCuda, FusedPairBiasPastTheKernelRunsTheChain) {
  PF_REQUIRE_GPU();
#ifdef PF_WITH_CUDA  // (a CPU-only build has no kernels::cuda; PF_REQUIRE_GPU skipped above)
  ASSERT_FALSE(kernels::cuda::pair_bias_fits(300, 70));
  ASSERT_TRUE(kernels::cuda::pair_bias_fits(256, 64));
  const Tensor z = Tensor::zeros({1, 2, 2, 300}, DType::F32, Device::CUDA);
  const Tensor gamma = Tensor::zeros({300}, DType::F32, Device::CUDA);
  const Tensor w = Tensor::zeros({70, 300}, DType::F32, Device::CUDA);
  Tensor out = Tensor::empty({1, 70, 2, 2}, DType::F32, Device::CUDA);
  try {
    kernels::cuda::pair_bias_forward(kernels::ScalarType::F32, kernels::ScalarType::F32, z.data_ptr(),
                                     gamma.data_ptr(), gamma.data_ptr(), w.data_ptr(), out.data_ptr(), 1, 2,
                                     2, 300, 70, 1e-5);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("C = 300"), std::string::npos) << m;
    EXPECT_NE(m.find("shared memory"), std::string::npos) << m;
  }
  Rng rng(test_seed() + 10);
  auto inputs = [](Rng& r) {
    return std::vector<Tensor>{ops::add(randn({1, 5, 6, 300}, r), Tensor::full({1}, 0.7)),
                               uniform({300}, 0.5, 1.5, r), randn({300}, r), randn({70, 300}, r)};
  };
  auto fn = [](const std::vector<Tensor>& x) { return ops::pair_bias(x[0], x[1], x[2], x[3]); };
  testing::internal::CaptureStderr();
  check_case({"pair_bias C300 H70 (chain)", inputs, fn, {true, true, true, true}}, DType::F32, rng);
  check_case({"pair_bias C300 H70 (chain) fp32 params",
              inputs,
              fn,
              {true, true, true, true},
              {false, true, true, true}},
             DType::BF16, rng);
  const std::string err = testing::internal::GetCapturedStderr();
  const size_t at = err.find("pair_bias: the CUDA kernels do not take C = 300");
  EXPECT_NE(at, std::string::npos) << err;
  EXPECT_EQ(err.find("pair_bias: the CUDA", at + 1), std::string::npos) << "said more than once: " << err;
#endif
}

// ---- no-grad ops -----------------------------------------------------------------------------

TEST(OpsCuda, InPlaceAndQueries) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 3);
  const Tensor x = randn({4099}, rng), y = randn({4099}, rng);
  Tensor cy = y.clone(), gy = y.to(Device::CUDA);
  ops::axpy_(cy, -0.3, x);
  ops::axpy_(gy, -0.3, x.to(Device::CUDA));
  EXPECT_LE(rel_error(gy.to_vector<double>(), cy.to_vector<double>()), kF32Tol);
  ops::scale_(cy, 1.5);
  ops::scale_(gy, 1.5);
  EXPECT_LE(rel_error(gy.to_vector<double>(), cy.to_vector<double>()), kF32Tol);
  ops::add_(cy, x);
  ops::add_(gy, x.to(Device::CUDA));
  EXPECT_LE(rel_error(gy.to_vector<double>(), cy.to_vector<double>()), kF32Tol);
  const double sc = ops::sum_of_squares(cy), sg = ops::sum_of_squares(gy);
  EXPECT_NEAR(sg, sc, 1e-5 * sc);
  EXPECT_TRUE(ops::all_finite(gy));
  std::vector<float> v = gy.to_vector<float>();
  v[4098] = std::nanf("");
  EXPECT_FALSE(ops::all_finite(Tensor::from_vector(v, {4099}, DType::F32, Device::CUDA)));
  v[4098] = INFINITY;
  EXPECT_FALSE(ops::all_finite(Tensor::from_vector(v, {4099}, DType::BF16, Device::CUDA)));
  const Tensor logits = randn({999, 8}, rng);
  const Tensor labels = randint({999}, 0, 8, rng);
  EXPECT_DOUBLE_EQ(ops::accuracy(logits.to(Device::CUDA), labels.to(Device::CUDA)),
                   ops::accuracy(logits, labels));
  std::vector<int32_t> bad = labels.to_vector<int32_t>();
  bad[5] = 8;
  EXPECT_THROW(
      ops::accuracy(logits.to(Device::CUDA), Tensor::from_vector(bad, {999}, DType::I32, Device::CUDA)),
      Error);
}

// ---- raw kernels write every output element (outputs NaN-poisoned first) ---------------------

#ifdef PF_WITH_CUDA
TEST(OpsCuda, RawKernelsWriteEveryOutput) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 4);
  namespace kc = kernels::cuda;
  const auto F32 = kernels::ScalarType::F32;
  const double nan = std::nan("");
  for (int64_t M : {1, 97, 4099}) {
    for (int64_t C : {1, 16, 17, 64, 1024}) {
      const Tensor x = randn({M, C}, rng).to(Device::CUDA), w = randn({C}, rng).to(Device::CUDA);
      Tensor y = Tensor::full({M, C}, nan, DType::F32, Device::CUDA);
      Tensor mean = Tensor::full({M}, nan, DType::F32, Device::CUDA), rstd = mean.clone();
      kc::layernorm_forward(F32, F32, x.data_ptr(), w.data_ptr(), w.data_ptr(), y.data_ptr(),
                            static_cast<float*>(mean.data_ptr()), static_cast<float*>(rstd.data_ptr()), M, C,
                            1e-5);
      Tensor dx = Tensor::full({M, C}, nan, DType::F32, Device::CUDA);
      Tensor dw = Tensor::full({C}, nan, DType::F32, Device::CUDA), db = dw.clone();
      Tensor ws = Tensor::full({int64_t(kc::layernorm_backward_workspace_bytes(M, C)) / 4}, nan, DType::F32,
                               Device::CUDA);
      kc::layernorm_backward(F32, F32, x.data_ptr(), x.data_ptr(), w.data_ptr(),
                             static_cast<const float*>(mean.data_ptr()),
                             static_cast<const float*>(rstd.data_ptr()), dx.data_ptr(), dw.data_ptr(),
                             db.data_ptr(), M, C, ws.data_ptr());
      for (const Tensor* t : {&y, &mean, &rstd, &dx, &dw, &db})
        EXPECT_TRUE(all_finite_host(t->to_vector<double>())) << "layernorm M=" << M << " C=" << C;
      // sum_to over the rows
      Tensor s = Tensor::full({C}, nan, DType::F32, Device::CUDA);
      const int64_t shape[2] = {M, C}, ostride[2] = {0, 1};
      kc::sum_to(F32, x.data_ptr(), shape, 2, ostride, s.data_ptr(), C);
      EXPECT_TRUE(all_finite_host(s.to_vector<double>())) << "sum_to M=" << M << " C=" << C;
      // gemm writes all of C
      Tensor c = Tensor::full({M, M}, nan, DType::F32, Device::CUDA);
      kc::gemm(F32, 1, M, M, C, x.data_ptr(), false, false, x.data_ptr(), false, true, c.data_ptr(), false,
               false);
      EXPECT_TRUE(all_finite_host(c.to_vector<double>())) << "gemm M=" << M << " K=" << C;
    }
  }
  for (auto [V, D, n] : {std::array<int64_t, 3>{1, 1, 1}, {65, 32, 100003}, {4000, 3, 77}}) {
    const Tensor g = randn({n, D}, rng).to(Device::CUDA);
    const Tensor idx = randint({n}, 0, static_cast<int>(V), rng).to(Device::CUDA);
    Tensor dw = Tensor::full({V, D}, nan, DType::F32, Device::CUDA);
    Tensor ws = Tensor::full({std::max<int64_t>(1, kc::embedding_backward_workspace_bytes(n, V, D) / 4)}, nan,
                             DType::F32, Device::CUDA);
    kc::embedding_backward(F32, g.data_ptr(), static_cast<const int32_t*>(idx.data_ptr()), dw.data_ptr(), n,
                           V, D, ws.data_ptr());
    EXPECT_TRUE(all_finite_host(dw.to_vector<double>())) << "embedding_backward V=" << V;
  }
}

// The embedding backward of the pair tables is bitwise deterministic run to run.
TEST(OpsCuda, EmbeddingBackwardIsDeterministic) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 5);
  const Tensor w = randn({65, 32}, rng).to(Device::CUDA).requires_grad_(true);
  const Tensor idx = randint({4, 97, 97}, 0, 65, rng).to(Device::CUDA);
  const Tensor r = randn({4, 97, 97, 32}, rng).to(Device::CUDA);
  std::vector<float> first;
  for (int rep = 0; rep < 3; ++rep) {
    Tensor wl = w.detach().requires_grad_(true);
    ops::embedding(wl, idx).backward(r);
    const std::vector<float> g = wl.grad().to_vector<float>();
    if (rep == 0)
      first = g;
    else
      EXPECT_EQ(g, first) << "repeat " << rep;
  }
}
#endif

// ---- optimizer -------------------------------------------------------------------------------

TEST(OpsCuda, AdamWAndClippingMatchCpu) {
  PF_REQUIRE_GPU();
  Rng rng(test_seed() + 6);
  // 30 tensors: the GPU updates them (and sums their squares) 24 to a launch, so two launches,
  // the second partly filled; sizes end inside a 2048-element chunk or fill several.
  std::vector<Shape> shapes = {{17, 9}, {1}, {4099}};
  for (int64_t i = 0; i < 27; ++i) shapes.push_back({i * 379 + 1});
  nn::NamedTensors cpu_params, gpu_params;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor p = randn(shapes[i], rng);
    Tensor pc = p.clone().requires_grad_(true), pg = p.to(Device::CUDA).requires_grad_(true);
    cpu_params.emplace_back("p" + std::to_string(i) + ".weight", pc);
    gpu_params.emplace_back("p" + std::to_string(i) + ".weight", pg);
  }
  std::vector<bool> decay;
  for (size_t i = 0; i < shapes.size(); ++i) decay.push_back(i % 3 != 1);
  optim::AdamW oc(cpu_params, decay, {1e-2, 0.9, 0.999, 1e-8, 0.1});
  optim::AdamW og(gpu_params, decay, {1e-2, 0.9, 0.999, 1e-8, 0.1});
  for (int step = 0; step < 5; ++step) {
    std::vector<Tensor> pcs, pgs;
    for (size_t i = 0; i < shapes.size(); ++i) {
      const Tensor g = ops::scale(randn(shapes[i], rng), 3.0);
      cpu_params[i].second.set_grad(g.clone());
      gpu_params[i].second.set_grad(g.to(Device::CUDA));
      pcs.push_back(cpu_params[i].second);
      pgs.push_back(gpu_params[i].second);
    }
    const double nc = optim::clip_grad_norm(pcs, 1.0), ng = optim::clip_grad_norm(pgs, 1.0);
    EXPECT_NEAR(ng, nc, 1e-6 * nc) << "step " << step;
    oc.step(1e-2);
    og.step(1e-2);
    for (size_t i = 0; i < shapes.size(); ++i)
      EXPECT_LE(rel_error(gpu_params[i].second.to_vector<double>(), cpu_params[i].second.to_vector<double>()),
                kF32Tol)
          << "param " << i << " step " << step;
  }
}

// ---- allocator -------------------------------------------------------------------------------

TEST(OpsCuda, CachingAllocatorReusesBlocks) {
  PF_REQUIRE_GPU();
  { Tensor warm = Tensor::empty({1 << 20}, DType::F32, Device::CUDA); }
  const CudaMemoryStats before = cuda_memory_stats();
  for (int i = 0; i < 100; ++i) {
    Tensor a = Tensor::empty({1 << 20}, DType::F32, Device::CUDA);
    Tensor b = Tensor::empty({777}, DType::F32, Device::CUDA);
  }
  const CudaMemoryStats after = cuda_memory_stats();
  // at most b's size class once (none if an earlier test left such a block in the cache)
  EXPECT_LE(after.device_mallocs, before.device_mallocs + 1)
      << "steady-state allocations must come from the cache";
  EXPECT_EQ(after.allocated, before.allocated);
  EXPECT_GE(after.peak_allocated, before.allocated + (size_t{4} << 20));
  cuda_empty_cache();
  EXPECT_EQ(cuda_memory_stats().reserved, cuda_memory_stats().allocated);
}

TEST(OpsCuda, ErrorsNameWhatIsWrong) {
  PF_REQUIRE_GPU();
  const Tensor a = Tensor::zeros({3, 4}, DType::F32, Device::CUDA);
  const Tensor b = Tensor::zeros({3, 4}, DType::F32, Device::CPU);
  try {
    ops::add(a, b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("same device"), std::string::npos) << e.what();
  }
  const Tensor d = Tensor::zeros({3, 4}, DType::F64, Device::CPU).to(Device::CUDA);
  try {
    ops::gelu(d);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("float32 or bfloat16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace pf
