// Seeded random numbers: one generator type for initialisation, data and tests.
//
// Rng wraps std::mt19937_64 and draws every value from the engine alone (no cached normals),
// so its whole state is the engine's: state() / set_state() round-trip it through a string for
// checkpoints, and two Rngs with the same seed produce the same stream on every platform.
//
// The tensor factories fill in row-major order, one draw per element (randn: one normal each).
#pragma once
#include <cstdint>
#include <random>
#include <string>

#include "framework/tensor.h"

namespace pf {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : engine_(seed) {}

  uint64_t next_u64() { return engine_(); }
  double uniform();                                                            // [0, 1), 53 random bits
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }  // [lo, hi)
  double normal();                          // N(0, 1), Box–Muller on two uniforms
  int64_t randint(int64_t lo, int64_t hi);  // uniform in [lo, hi), unbiased; needs lo < hi

  std::string state() const;             // the engine state as text
  void set_state(const std::string& s);  // error if `s` is not a state written by state()

 private:
  std::mt19937_64 engine_;
};

// shape → N(0, 1) samples converted to `dtype` (F32, F64, BF16 or F16).
Tensor randn(const Shape& shape, Rng& rng, DType dtype = DType::F32);
// shape → U[lo, hi) samples converted to `dtype`.
Tensor uniform(const Shape& shape, double lo, double hi, Rng& rng, DType dtype = DType::F32);
// shape → I32 integers uniform in [lo, hi) (hi exclusive, like a Python range).
Tensor randint(const Shape& shape, int lo, int hi, Rng& rng);

}  // namespace pf
