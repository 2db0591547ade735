// Branch-free float math for the CPU kernels' inner loops.
//
// The C library's expf is a scalar call (~5–20 ns); these are written without float compares
// or calls so that a loop over them vectorises without -ffast-math. They serve the float
// training path; double kernels (gradient checks) use the C library.
#pragma once
#include <cstdint>
#include <cstring>

namespace pf::kernels::cpu {

// e^t for t ≤ 0, including −inf (→ 0); NaN gives NaN (a NaN input must not vanish from a sum of
// exponentials: softmax, cross-entropy and the attention's probabilities keep it). Relative error < 1e-6 for t ≥ −87 (the normal float
// range): t = k·ln2 + r with |r| ≤ ln2/2, e^r by its 7th-order Taylor polynomial (remainder
// (ln2/2)⁸/8! < 5e-9), 2^k put into the exponent bits. Below 2⁻¹²⁶ the result is 0. The clamps
// are integer operations on the bit patterns, so no float compare blocks vectorisation.
inline float exp_nonpositive(float t) {
  uint32_t tb;
  std::memcpy(&tb, &t, 4);
  const int32_t nan_mask = -static_cast<int32_t>((tb & 0x7fffffffu) > 0x7f800000u);  // all ones for NaN
  // As unsigned bit patterns, negative floats order by magnitude: t < −104 (and −inf, −NaN)
  // become −104, whose exponential underflows to 0 below.
  constexpr uint32_t kMinus104 = 0xC2D00000u;
  tb = tb > kMinus104 ? kMinus104 : tb;
  // +inf lies outside the contract (t ≤ 0): mapped to −104 too (result 0), as is +NaN (its result
  // is set to NaN at the end), so that the float→int conversion below never sees a non-finite
  // value (undefined behaviour).
  tb = (tb >= 0x7f800000u && tb < 0x80000000u) ? kMinus104 : tb;
  std::memcpy(&t, &tb, 4);
  const float kf = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f;          // round(t/ln2)
  const float r = (t - kf * 0.693145751953125f) - kf * 1.42860682030941723212e-6f;  // ln2 hi+lo
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);
  const int32_t keep = -static_cast<int32_t>(k >= -126);  // all ones while 2^k is a normal float
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits = (bits + k * (1 << 23)) & keep;
  bits = (bits & ~nan_mask) | (0x7fc00000 & nan_mask);
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

}  // namespace pf::kernels::cpu
