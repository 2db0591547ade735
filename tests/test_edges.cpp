// Paths that the coverage report (tests/coverage.py, tests/COVERAGE.md) showed no other suite
// reaching on the CPU:
//   - the bfloat16 / float16 conversions of the host (kernels/cpu/convert.h) and the tensors
//     that store those dtypes on the CPU, against an independent rounding rule;
//   - the random generator's state round trip and its refusal of a text that is no state;
//   - device resolution (run/environment.h) and `train --check-env` in a CPU-only process;
//   - the step profiler (framework/profile.h) timing CPU work with the host clock.
//
// Inputs are drawn fresh each run; the seed is printed and PF_TEST_SEED=<n> replays a run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "framework/allocator.h"
#include "framework/ops.h"
#include "framework/anomaly.h"
#include "framework/profile.h"
#include "framework/random.h"
#include "framework/tensor.h"
#include "kernels/cpu/convert.h"
#include "run/environment.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;
using kernels::cpu::bf16_to_float;
using kernels::cpu::float_to_bf16;
using kernels::cpu::float_to_half;
using kernels::cpu::half_to_float;

// v rounded to nearest even in a binary format of p significant bits, smallest normal exponent
// emin and largest finite value below 2^(emax+1): the spacing at v is 2^(max(e, emin) − p + 1),
// nearbyint rounds to an even multiple of it, and a result of 2^(emax+1) or more is infinite.
double round_to_format(double v, int p, int emin, int emax) {
  if (std::isnan(v) || std::isinf(v) || v == 0) return v;
  const int e = std::max(std::ilogb(v), emin);
  const double q = std::ldexp(1.0, e - p + 1);
  const double r = std::nearbyint(v / q) * q;
  return std::abs(r) >= std::ldexp(1.0, emax + 1) ? std::copysign(INFINITY, v) : r;
}
double round_bf16(double v) { return round_to_format(v, 8, -126, 127); }
double round_half(double v) { return round_to_format(v, 11, -14, 15); }

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Random float bit patterns (every exponent, subnormals, infinities, NaN), the halfway cases
// of both formats and their neighbours, and the values at their overflow thresholds.
std::vector<float> awkward_floats(Rng& rng) {
  std::vector<float> v;
  for (int i = 0; i < 20000; ++i) v.push_back(from_bits(static_cast<uint32_t>(rng.next_u64())));
  for (int i = 0; i < 2000; ++i) {  // a half-ulp of bf16 (bit 15) and of fp16 (bit 12) exactly
    const uint32_t base = static_cast<uint32_t>(rng.next_u64()) & 0xffff0000u;
    for (uint32_t b : {base | 0x8000u, base | 0x7fffu, base | 0x8001u}) v.push_back(from_bits(b));
    const float h = half_to_float(static_cast<uint16_t>(rng.next_u64()));
    uint32_t hb;
    std::memcpy(&hb, &h, 4);
    for (uint32_t b : {hb | 0x1000u, hb | 0x0fffu, hb | 0x1001u}) v.push_back(from_bits(b));
  }
  for (float f : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 5.9604645e-08f, 2.9802322e-08f,
                  2.9802326e-08f, 6.1035156e-05f, 3.3895314e38f, 3.4028235e38f, INFINITY, -INFINITY})
    v.push_back(f);
  return v;
}

TEST(Conversions, Bfloat16AndFloat16RoundToNearestEven) {
  Rng rng = make_rng("conversions");
  for (float f : awkward_floats(rng)) {
    const float b = bf16_to_float(float_to_bf16(f)), h = half_to_float(float_to_half(f));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(b) && std::isnan(h)) << f;
      continue;
    }
    // Equal values, and the sign of a zero kept.
    EXPECT_EQ(b, round_bf16(f)) << std::hexfloat << f;
    EXPECT_EQ(std::signbit(b), std::signbit(f)) << std::hexfloat << f;
    EXPECT_EQ(h, round_half(f)) << std::hexfloat << f;
    EXPECT_EQ(std::signbit(h), std::signbit(f)) << std::hexfloat << f;
  }
}

TEST(Conversions, EveryBitPatternRoundTrips) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t u = static_cast<uint16_t>(i);
    const float b = bf16_to_float(u), h = half_to_float(u);
    if (std::isnan(b))
      EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(b))));
    else
      ASSERT_EQ(float_to_bf16(b), u) << std::hex << i;
    if (std::isnan(h))
      EXPECT_TRUE(std::isnan(half_to_float(float_to_half(h))));
    else
      ASSERT_EQ(float_to_half(h), u) << std::hex << i;
    // half_to_float decodes the fields: value = (−1)^s · 2^(E−15) · (1 + M/1024), or subnormal.
    const int s = i >> 15, E = (i >> 10) & 31, M = i & 1023;
    if (E == 31) continue;
    const double want = (s ? -1 : 1) * (E == 0 ? std::ldexp(M, -24) : std::ldexp(1024 + M, E - 25));
    ASSERT_EQ(h, want) << std::hex << i;
  }
}

// Tensors of bf16 / fp16 on the CPU store through the same rounding (from double via float)
// and read back exactly what they store; a cast between them goes through float.
TEST(Conversions, HalfPrecisionTensorsOnTheCpu) {
  Rng rng = make_rng("half_tensors");
  std::vector<double> x(37);
  for (double& v : x) v = std::ldexp(rng.normal(), static_cast<int>(rng.randint(-20, 20)));
  for (DType t : {DType::BF16, DType::F16}) {
    SCOPED_TRACE(dtype_name(t));
    const Tensor a = Tensor::from_vector(x, {37}, t);
    EXPECT_EQ(a.dtype(), t);
    EXPECT_EQ(dtype_size(t), 2u);
    const std::vector<double> y = a.to_vector<double>();
    for (size_t i = 0; i < x.size(); ++i) {
      const float f = static_cast<float>(x[i]);
      EXPECT_EQ(y[i], t == DType::BF16 ? round_bf16(f) : round_half(f)) << x[i];
    }
    EXPECT_EQ(a.to(DType::F64).to_vector<double>(), y);
  }
}

TEST(RngState, RoundTripsAndRefusesOtherText) {
  Rng a = make_rng("rng_state");
  for (int i = 0; i < 17; ++i) a.next_u64();
  const std::string s = a.state();
  Rng b(12345);
  b.set_state(s);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.next_u64(), b.next_u64()) << i;
  expect_error([&] { b.set_state("not a state"); }, "Rng::set_state: the text is not an mt19937_64 state");
}

TEST(Environment, DeviceResolutionAndCheckEnv) {
  EXPECT_EQ(run::resolve_device("cpu"), Device::CPU);
  expect_error([] { run::resolve_device("gpu"); }, "device must be auto, cpu or cuda, found 'gpu'");
  if (!cuda_available()) {
    EXPECT_EQ(run::resolve_device("auto"), Device::CPU);
#ifdef PF_WITH_CUDA
    const char* why = "device 'cuda' requested but no CUDA device is available";
#else
    const char* why = "device 'cuda' requested but this build has no CUDA backend";
#endif
    expect_error([] { run::resolve_device("cuda"); }, why);
  }
  expect_error([] { run::precision_dtype("fp16", Device::CPU); }, "train.precision 'fp16'");
  testing::internal::CaptureStdout();
  EXPECT_EQ(run::check_env(), 0);
  const std::string out = testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("CPU: "), std::string::npos) << out;
  EXPECT_NE(out.find("hardware threads"), std::string::npos) << out;
}

// The profiler on the CPU: an op's scope inside another scope is charged to the outer one
// only; a backward closure is charged to its forward's category; reset() empties the totals.
TEST(Profile, CpuScopesChargeTheOutermostCategory) {
  Rng rng = make_rng("profile");
  Tensor a = randn({17, 9}, rng, DType::F64);
  a.requires_grad_();
  const Tensor b = randn({9, 5}, rng, DType::F64);
  profile::set_enabled(true, Device::CPU);
  profile::reset();
  EXPECT_TRUE(profile::enabled());
  {
    const profile::Scope s("data");
    ops::matmul(a, b);  // "gemm" inside "data": charged to data
  }
  ops::sum(ops::matmul(a, b)).backward();
  const std::vector<profile::Row> rows = profile::report();
  const std::string table = profile::table(rows, 1, 1000.0);
  profile::set_enabled(false);
  EXPECT_FALSE(profile::enabled());
  const auto row = [&](const std::string& name) {
    for (const auto& r : rows)
      if (r.category == name) return r;
    ADD_FAILURE() << "no row '" << name << "' in: " << table;
    return profile::Row{};
  };
  EXPECT_EQ(row("data").fwd_calls + row("data").bwd_calls, 1) << table;
  EXPECT_EQ(row("gemm").fwd_calls, 1) << table;  // the nested one is not counted
  EXPECT_GE(row("gemm").bwd_calls, 1) << table;
  EXPECT_GE(row("elementwise").fwd_calls, 1) << table;
  for (const auto& r : rows) EXPECT_TRUE(r.fwd_ms >= 0 && r.bwd_ms >= 0) << r.category;
  for (const char* part : {"gemm", "data", "untracked"})
    EXPECT_NE(table.find(part), std::string::npos) << table;
  profile::reset();
  EXPECT_TRUE(profile::report().empty());
}

// The pair tensors' work is charged by module, whatever the op: inside the pair representation's
// scope ("pair") to pair_features, inside a layer's pair_norm / pair_proj to pair_bias; a module
// whose name only starts with "pair" without the underscore is not one of them.
TEST(Profile, PairModulesHaveTheirOwnCategories) {
  Rng rng = make_rng("profile pair");
  const Tensor a = randn({8, 4}, rng, DType::F64), b = randn({4, 3}, rng, DType::F64);
  profile::set_enabled(true, Device::CPU);
  profile::reset();
  {
    const anomaly::Scope m("pair");
    ops::matmul(a, b);
  }
  {
    const anomaly::Scope layer("layers", 2);
    const anomaly::Scope m("pair_proj");
    ops::matmul(a, b);
    ops::matmul(a, b);
  }
  {
    const anomaly::Scope m("pairwise");
    ops::matmul(a, b);
  }
  const std::vector<profile::Row> rows = profile::report();
  const std::string table = profile::table(rows, 1, 1000.0);
  profile::set_enabled(false);
  profile::reset();
  auto calls = [&](const std::string& name) {
    for (const auto& r : rows)
      if (r.category == name) return r.fwd_calls + r.bwd_calls;
    return int64_t{0};
  };
  EXPECT_EQ(calls("pair_features"), 1) << table;
  EXPECT_EQ(calls("pair_bias"), 2) << table;
  EXPECT_EQ(calls("gemm"), 1) << table;
}

}  // namespace
}  // namespace pf
