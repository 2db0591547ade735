// Helpers shared by the test suites: the run's random seed (fresh each run, printed, replayable)
// and the relative error that compares a result with its reference.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "framework/random.h"
#include "kernels/check.h"
#include "framework/tensor.h"

namespace pf::testing_util {

// The seed of this test process: PF_TEST_SEED if set, else a fresh random one. Printed once, so
// a failure can be replayed with PF_TEST_SEED=<seed>.
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("PF_TEST_SEED");
    const uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::printf("test seed %llu (PF_TEST_SEED=%llu replays it)\n", static_cast<unsigned long long>(s),
                static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// A fresh generator for one test, derived from the run's seed and the test's name.
inline Rng make_rng(const std::string& name) { return Rng(test_seed() ^ std::hash<std::string>{}(name)); }

// ‖a − ref‖₂ / max(‖ref‖₂, floor) (the absolute ‖a − ref‖₂ where both are 0). `floor` serves a
// quantity that is zero in exact arithmetic, so that both sides hold only rounding noise: it is
// judged against a scale the caller justifies, not against its own noise.
inline double rel_error(const std::vector<double>& a, const std::vector<double>& ref, double floor = 0) {
  EXPECT_EQ(a.size(), ref.size());
  if (a.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  const double scale = std::max(std::sqrt(den), floor);
  return scale == 0 ? std::sqrt(num) : std::sqrt(num) / scale;
}

inline double rel_error(const Tensor& a, const Tensor& ref, double floor = 0) {
  const std::vector<double> x = a.to_vector<double>(), y = ref.to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  if (x.size() != y.size()) return INFINITY;
  return rel_error(x, y, floor);
}

// The message of the pf::Error that f throws ("" and a test failure if it throws nothing, or
// another exception).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected pf::Error, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected pf::Error, nothing was thrown";
  return "";
}

// f throws a pf::Error whose message contains `needle`.
inline void expect_error(const std::function<void()>& f, const std::string& needle) {
  const std::string msg = error_of(f);
  EXPECT_NE(msg.find(needle), std::string::npos)
      << "expected an error containing '" << needle << "', got: " << msg;
}

// t, marked as a leaf that wants its gradient.
inline Tensor leaf(Tensor t) {
  t.requires_grad_();
  return t;
}

}  // namespace pf::testing_util
