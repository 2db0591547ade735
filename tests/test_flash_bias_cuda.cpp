// The CUDA flash-bias kernels (kernels/cuda/flash_bias.h) against the float64 CPU reference
// (kernels/cpu/flash_bias.h) on fresh random inputs.
//
// Every case: inputs drawn at random and rounded to the case's dtype; the same values, upcast to
// float64, go through the CPU reference. Outputs, gradients and the backward's workspace are
// poisoned with NaN bytes before each run. Errors are ‖x − ref‖ / ‖ref‖ over each whole tensor.
//
// Tolerances (tied to the precision):
// - float32 inputs: ≤ 1e-5 for every output. The kernels do fp32 arithmetic throughout; fp32's
//   unit roundoff is 6e-8 and the longest dot products here (Nk ≤ 1025 terms, pairwise through
//   64-key tiles) stay well under 1e-6 relative.
// - float16 / bfloat16 inputs: no worse than 2× the error of the same computation done naively in
//   that precision (every product accumulated exactly, then rounded to the dtype: S = rd(rd(QKᵀ)·
//   scale) + bias rounded, P = rd(softmax S), O = rd(P V), dP, dS, dQ, dK, dV likewise), the
//   error an eager framework makes in that dtype. This bound is measured here per case on the
//   same inputs. It is floored at the dtype's unit roundoff u (2⁻¹¹ for fp16, 2⁻⁸ for bf16):
//   an output stored in the dtype cannot be closer than its own rounding, and with a single key
//   the naive computation happens to be exact.
// - lse (always fp32): ≤ 1e-5, as it involves no low-precision rounding.
// - float32 inputs with a float16 / bfloat16 bias: dB is computed in fp32 and rounded once to
//   the bias dtype, so its bound is that dtype's unit roundoff.
// - dT, the gradient of a fused relative-position table (fp32): like dB, against the same naive
//   yardstick (its dS rounded to the dtype, summed exactly, rounded once to fp32) for fp16 / bf16
//   inputs, 1e-5 for fp32 inputs. The floor is the inputs' unit roundoff, not fp32's: dT sums dS
//   = P ∘ (dP − Δ) with Δ = rowsum(dO ∘ O) taken from the output O as stored (rounded to the
//   dtype), so where dT is exactly zero (one key per row, R = 0) its computed value is that
//   rounding's residue, measured against ‖dV‖ like dQ, dK and dB.
// The deterministic backward is run twice and must be bitwise identical.
//
// References for the fused modes are built from the dense float64 reference alone (not from the
// CPU kernel's own relative-position or packed paths): a relative-position table is materialised
// into a full (B,H,Nq,Nk) bias on the host, the reference's dB of that bias gives the dense bias's
// gradient (summed over its broadcast axes) and dT (summed over the diagonals, clipped to ±R); a
// packed batch is checked sequence by sequence, each run alone through the dense reference.
//
// The suite skips when no CUDA device is present; the argument checks run anywhere.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/flash_bias.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/flash_bias.h"
#include "kernels/flash_bias_params.h"
#include "tests/test_util.h"

namespace {

using pf::kernels::BNHDStrides;
using pf::kernels::FlashBiasBwdParams;
using pf::kernels::FlashBiasParams;
using pf::kernels::ScalarType;
using pf::testing_util::error_of;

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

// ---- host-side dtype emulation -------------------------------------------------------------------

uint16_t float_to_half_bits(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds past 65504
  if (ax < 0x38800000u) {                                  // half subnormal (or zero)
    float af;
    std::memcpy(&af, &ax, 4);
    return uint16_t(sign | uint32_t(std::nearbyint(af * 16777216.0f)));
  }
  const uint32_t mant = ax & 0x7fffffu;
  uint32_t h = ((((ax >> 23) - 127 + 15)) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) ? 1u : 0u, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  float v;
  if (e == 0)
    v = std::ldexp(float(m), -24);
  else if (e == 31)
    v = m ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else
    v = std::ldexp(float(m | 0x400u), int(e) - 25);
  return sign ? -v : v;
}

uint16_t float_to_bf16_bits(float f) {  // round to nearest even (no NaN inputs here)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

float bf16_bits_to_float(uint16_t h) {
  const uint32_t x = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

int elt_size(ScalarType t) { return t == ScalarType::F32 ? 4 : t == ScalarType::F64 ? 8 : 2; }

// x rounded to dtype t (as the kernels' inputs and outputs are).
double rd(ScalarType t, double x) {
  if (std::isinf(x)) return x;
  switch (t) {
    case ScalarType::F16: return half_bits_to_float(float_to_half_bits(float(x)));
    case ScalarType::BF16: return bf16_bits_to_float(float_to_bf16_bits(float(x)));
    case ScalarType::F32: return double(float(x));
    case ScalarType::F64: return x;
  }
  return x;
}

double unit_roundoff(ScalarType t) {
  return t == ScalarType::F16    ? std::ldexp(1.0, -11)
         : t == ScalarType::BF16 ? std::ldexp(1.0, -8)
                                 : std::ldexp(1.0, -24);
}

// ---- strided host tensors mirrored on the device -----------------------------------------------

// A 4-d tensor with element strides (unit stride on the last dim), stored in dtype `dt`.
struct HostTensor {
  ScalarType dt = ScalarType::F32;
  int64_t n[4] = {1, 1, 1, 1};
  int64_t s[4] = {0, 0, 0, 1};
  std::vector<uint8_t> bytes;

  HostTensor() = default;
  HostTensor(ScalarType t, std::initializer_list<int64_t> dims, std::initializer_list<int64_t> strides)
      : dt(t) {
    std::copy(dims.begin(), dims.end(), n);
    std::copy(strides.begin(), strides.end(), s);
    int64_t last = 0;
    for (int d = 0; d < 4; ++d) last += (n[d] - 1) * s[d];
    bytes.assign(size_t(last + 1) * elt_size(dt), 0);
  }
  int64_t off(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return a * s[0] + b * s[1] + c * s[2] + d * s[3];
  }
  double get(int64_t a, int64_t b, int64_t c, int64_t d) const {
    const uint8_t* p = bytes.data() + off(a, b, c, d) * elt_size(dt);
    switch (dt) {
      case ScalarType::F16: {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return half_bits_to_float(h);
      }
      case ScalarType::BF16: {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return bf16_bits_to_float(h);
      }
      case ScalarType::F32: {
        float f;
        std::memcpy(&f, p, 4);
        return f;
      }
      case ScalarType::F64: {
        double x;
        std::memcpy(&x, p, 8);
        return x;
      }
    }
    return 0;
  }
  void set(int64_t a, int64_t b, int64_t c, int64_t d, double x) {
    uint8_t* p = bytes.data() + off(a, b, c, d) * elt_size(dt);
    switch (dt) {
      case ScalarType::F16: {
        uint16_t h = float_to_half_bits(float(x));
        std::memcpy(p, &h, 2);
        break;
      }
      case ScalarType::BF16: {
        uint16_t h = float_to_bf16_bits(float(x));
        std::memcpy(p, &h, 2);
        break;
      }
      case ScalarType::F32: {
        float f = float(x);
        std::memcpy(p, &f, 4);
        break;
      }
      case ScalarType::F64: std::memcpy(p, &x, 8); break;
    }
  }
  // Dense float64 copy in logical order.
  std::vector<double> dense() const {
    std::vector<double> out(size_t(n[0] * n[1] * n[2] * n[3]));
    size_t idx = 0;
    for (int64_t a = 0; a < n[0]; ++a)
      for (int64_t b = 0; b < n[1]; ++b)
        for (int64_t c = 0; c < n[2]; ++c)
          for (int64_t d = 0; d < n[3]; ++d) out[idx++] = get(a, b, c, d);
    return out;
  }
  BNHDStrides bnhd() const { return BNHDStrides{s[0], s[1], s[2]}; }  // for (B,N,H,D) tensors
};

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(n) {
    if (n > 0 && cudaMalloc(&ptr, n) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const HostTensor& t) {
    cudaMemcpy(ptr, t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice);
  }
  void download(HostTensor& t) const {
    cudaMemcpy(t.bytes.data(), ptr, t.bytes.size(), cudaMemcpyDeviceToHost);
  }
  void poison() {
    if (ptr) cudaMemset(ptr, 0xff, bytes);
  }  // NaN in fp16, bf16 and fp32
};

bool have_gpu() { return pf::kernels::cuda::device_info().available; }

// ---- cases ---------------------------------------------------------------------------------------

enum class BiasForm { kNone, kFull, kSharedB, kSharedH, kSharedBH };
enum Grad : unsigned { kDq = 1, kDk = 2, kDv = 4, kDb = 8, kDt = 16, kAll = 31 };

struct Case {
  ScalarType dtype = ScalarType::F16;
  ScalarType bias_dtype = ScalarType::F16;
  int B = 2, H = 3, Nq = 97, Nk = 97, D = 64;
  BiasForm bias = BiasForm::kFull;
  bool mask = false, causal = false;
  bool deterministic = false, accumulate = false;
  unsigned grads = kAll;
  bool padded = false;            // q/k/v/out/grads with padded (non-contiguous) strides
  int bias_pad = 0;               // extra elements per bias row (odd: unaligned rows)
  bool all_masked_batch = false;  // every key of batch 0 is padding
  double scale = 0;               // 0: 1/sqrt(D)
  int relpos = -1;                // R >= 0: fused relative-position table (H, 2R+1) on top of the bias
  std::string tag;                // for the test name
};

const char* dtype_tag(ScalarType t) {
  switch (t) {
    case ScalarType::F16: return "f16";
    case ScalarType::BF16: return "bf16";
    case ScalarType::F32: return "f32";
    case ScalarType::F64: return "f64";
  }
  return "x";
}

std::string case_name(const Case& c) {
  std::ostringstream os;
  os << dtype_tag(c.dtype) << "_bias" << dtype_tag(c.bias_dtype) << "_D" << c.D << "_B" << c.B << "H" << c.H
     << "_" << c.Nq << "x" << c.Nk;
  const char* forms[] = {"nobias", "full", "sharedB", "sharedH", "sharedBH"};
  os << "_" << forms[int(c.bias)];
  if (c.mask) os << "_mask";
  if (c.causal) os << "_causal";
  if (c.deterministic) os << "_det";
  if (c.accumulate) os << "_acc";
  if (c.grads != kAll) {
    os << "_only";
    if (c.grads & kDq) os << "dq";
    if (c.grads & kDk) os << "dk";
    if (c.grads & kDv) os << "dv";
    if (c.grads & kDb) os << "db";
    if (c.grads & kDt) os << "dt";
  }
  if (c.padded) os << "_padded";
  if (c.bias_pad) os << "_biaspad" << c.bias_pad;
  if (c.all_masked_batch) os << "_allmasked";
  if (c.relpos >= 0) os << "_relposR" << c.relpos;
  if (!c.tag.empty()) os << "_" << c.tag;
  return os.str();
}

std::vector<Case> all_cases() {
  std::vector<Case> cs;
  const ScalarType dts[] = {ScalarType::F16, ScalarType::BF16, ScalarType::F32};
  // Every dtype × head dim, odd and even sizes, Nq ≠ Nk, a full bias.
  const int sizes[][2] = {{17, 17}, {97, 33}, {1, 97}, {100, 64}};
  for (ScalarType dt : dts) {
    int si = 0;
    for (int D : {16, 32, 64, 128}) {
      Case c;
      c.dtype = c.bias_dtype = dt;
      c.D = D;
      c.Nq = sizes[si][0];
      c.Nk = sizes[si][1];
      ++si;
      cs.push_back(c);
    }
  }
  // Every bias form, with and without mask and causal, in every dtype (D = 64 and 32).
  for (ScalarType dt : dts)
    for (BiasForm f :
         {BiasForm::kNone, BiasForm::kFull, BiasForm::kSharedB, BiasForm::kSharedH, BiasForm::kSharedBH})
      for (int mc = 0; mc < 4; ++mc) {
        Case c;
        c.dtype = c.bias_dtype = dt;
        c.bias = f;
        c.mask = mc & 1;
        c.causal = mc & 2;
        c.D = (mc & 1) ? 32 : 64;
        c.Nq = mc == 3 ? 130 : 97;  // causal with Nq > Nk: leading rows see no key
        c.Nk = mc == 2 ? 150 : 97;
        cs.push_back(c);
      }
  // Deterministic backward at every bias form (bitwise repeat checked).
  for (ScalarType dt : dts)
    for (BiasForm f : {BiasForm::kFull, BiasForm::kSharedB, BiasForm::kSharedH, BiasForm::kSharedBH}) {
      Case c;
      c.dtype = c.bias_dtype = dt;
      c.bias = f;
      c.deterministic = true;
      c.mask = true;
      c.causal = f == BiasForm::kSharedB;
      c.Nq = 70;
      c.Nk = 129;
      c.D = dt == ScalarType::F32 ? 128 : 32;  // f32 at D = 128: the single-stage pipeline
      cs.push_back(c);
    }
  // Mixed bias dtypes: an fp32 learnable bias with fp16 / bf16 inputs, and the others.
  const ScalarType mixes[][2] = {{ScalarType::F16, ScalarType::F32},  {ScalarType::BF16, ScalarType::F32},
                                 {ScalarType::F16, ScalarType::BF16}, {ScalarType::BF16, ScalarType::F16},
                                 {ScalarType::F32, ScalarType::F16},  {ScalarType::F32, ScalarType::BF16}};
  for (auto& m : mixes)
    for (BiasForm f : {BiasForm::kFull, BiasForm::kSharedB}) {
      Case c;
      c.dtype = m[0];
      c.bias_dtype = m[1];
      c.bias = f;
      c.mask = true;
      c.Nq = 65;
      c.Nk = 77;
      cs.push_back(c);
      c.deterministic = true;
      cs.push_back(c);
    }
  // dB accumulated into an existing buffer; subsets of gradients.
  for (ScalarType dt : dts) {
    for (BiasForm f : {BiasForm::kFull, BiasForm::kSharedBH}) {
      Case c;
      c.dtype = c.bias_dtype = dt;
      c.bias = f;
      c.accumulate = true;
      c.causal = true;
      cs.push_back(c);
    }
    for (unsigned g : {unsigned(kDb), unsigned(kDq), unsigned(kDk | kDv), unsigned(kDq | kDb)}) {
      Case c;
      c.dtype = c.bias_dtype = dt;
      c.grads = g;
      c.mask = true;
      cs.push_back(c);
      c.deterministic = true;
      c.bias = BiasForm::kSharedH;
      cs.push_back(c);
    }
  }
  // Strided operands, unaligned and padded bias rows, fully masked batches, B = H = 1, N = 1.
  for (ScalarType dt : dts) {
    Case c;
    c.dtype = c.bias_dtype = dt;
    c.padded = true;
    c.bias_pad = 3;
    c.Nq = 66;
    c.Nk = 67;
    cs.push_back(c);
    c.padded = false;
    c.bias_pad = 8 + 5;  // aligned rows when Nk + pad is a multiple of 8: 67 + 13 = 80
    cs.push_back(c);
    Case m;
    m.dtype = m.bias_dtype = dt;
    m.mask = true;
    m.all_masked_batch = true;
    m.causal = true;
    m.bias = BiasForm::kSharedB;
    cs.push_back(m);
    m.deterministic = true;
    cs.push_back(m);
    Case one;
    one.dtype = one.bias_dtype = dt;
    one.B = one.H = 1;
    one.Nq = one.Nk = 1;
    one.D = 16;
    cs.push_back(one);
    one.causal = true;
    one.Nq = 5;  // Nq > Nk = 1: only the last query sees the key
    cs.push_back(one);
  }
  // More than 8 (b, h) share the bias: fp32 atomics (default) or the grouped loop (deterministic)
  // instead of the cluster reduction.
  for (ScalarType dt : dts)
    for (bool det : {false, true}) {
      Case c;
      c.dtype = c.bias_dtype = dt;
      c.B = 3;
      c.H = 3;
      c.bias = BiasForm::kSharedBH;
      c.deterministic = det;
      c.mask = true;
      c.causal = det;
      c.Nq = 80;
      c.Nk = 70;
      c.D = 32;
      cs.push_back(c);
      c.B = 9;
      c.H = 2;
      c.bias = BiasForm::kSharedB;
      c.accumulate = true;
      cs.push_back(c);
    }
  // Large, tile-crossing sizes (the CPU references dominate the run time here).
  {
    Case c;  // the shape at which a public flash-bias kernel returned a 0.22 relative error
    c.dtype = c.bias_dtype = ScalarType::F16;
    c.B = 2;
    c.H = 4;
    c.Nq = c.Nk = 1024;
    c.D = 32;
    c.tag = "large";
    cs.push_back(c);
    Case d;
    d.dtype = d.bias_dtype = ScalarType::F16;
    d.B = 2;
    d.H = 2;
    d.Nq = d.Nk = 1025;
    d.D = 32;
    d.mask = d.causal = true;
    d.bias = BiasForm::kSharedB;
    d.tag = "large";
    cs.push_back(d);
    Case e;
    e.dtype = ScalarType::BF16;
    e.bias_dtype = ScalarType::F32;
    e.B = 1;
    e.H = 2;
    e.Nq = 1000;
    e.Nk = 1025;
    e.D = 128;
    e.mask = true;
    e.deterministic = true;
    e.tag = "large";
    cs.push_back(e);
    Case f;
    f.dtype = f.bias_dtype = ScalarType::F32;
    f.B = 2;
    f.H = 1;
    f.Nq = f.Nk = 1000;
    f.D = 64;
    f.causal = true;
    f.bias = BiasForm::kSharedH;
    f.tag = "large";
    cs.push_back(f);
  }
  // The Hopper forward (flash_bias_sm90.h) takes bias rows of 16-byte multiples: every head dim,
  // bias form, mask and causal there, odd Nq and Nk (rows padded to 264 elements), several query
  // and key blocks (BM = 128, BN = 128 or 64).
  for (ScalarType dt : {ScalarType::F16, ScalarType::BF16})
    for (int D : {32, 64, 128})
      for (BiasForm f :
           {BiasForm::kNone, BiasForm::kFull, BiasForm::kSharedB, BiasForm::kSharedH, BiasForm::kSharedBH})
        for (int mc = 0; mc < 4; ++mc) {
          Case c;
          c.dtype = c.bias_dtype = dt;
          c.D = D;
          c.bias = f;
          c.mask = mc & 1;
          c.causal = mc & 2;
          c.Nq = mc == 2 ? 261 : 133;  // causal with Nq = Nk: the square's lower triangle
          c.Nk = 261;
          c.bias_pad = 3;
          c.grads = mc == 0 ? kAll : unsigned(kDq | kDb);
          cs.push_back(c);
        }
  // The Hopper backward (128 keys per CTA, 64-row query blocks): causal with Nq > Nk (the first
  // rows see no key), a broadcast dB added into an existing gradient, a fully padded batch, and a
  // long sequence whose query blocks wrap the stage ring many times.
  {
    Case c;
    c.bias_pad = 8;
    c.dtype = c.bias_dtype = ScalarType::BF16;
    c.D = 128;
    c.Nq = 300;
    c.Nk = 200;
    c.causal = true;
    cs.push_back(c);
    c.dtype = c.bias_dtype = ScalarType::F16;
    c.D = 64;
    c.Nq = c.Nk = 300;
    c.causal = false;
    c.B = 3;
    c.bias = BiasForm::kSharedB;
    c.accumulate = true;
    cs.push_back(c);
    c.B = 2;
    c.D = 32;
    c.bias = BiasForm::kFull;
    c.accumulate = false;
    c.mask = true;
    c.all_masked_batch = true;
    cs.push_back(c);
    c.mask = c.all_masked_batch = false;
    c.D = 64;
    c.B = 1;
    c.H = 2;
    c.Nq = c.Nk = 1000;
    c.tag = "large";
    cs.push_back(c);
  }
  {
    const ScalarType mixes[][2] = {{ScalarType::F16, ScalarType::F32},
                                   {ScalarType::BF16, ScalarType::F32},
                                   {ScalarType::F16, ScalarType::BF16},
                                   {ScalarType::BF16, ScalarType::F16}};
    for (auto& m : mixes)
      for (int D : {32, 64, 128}) {
        Case c;
        c.dtype = m[0];
        c.bias_dtype = m[1];
        c.D = D;
        c.bias = D == 64 ? BiasForm::kSharedB : BiasForm::kFull;
        c.mask = D == 32;
        c.causal = D == 128;
        c.Nq = 200;
        c.Nk = 136;
        c.padded = D == 64;
        cs.push_back(c);
      }
  }
  // Fused relative-position table: alone and on top of every dense bias form, every dtype and
  // head dim; R = 0 (one bin), 1, small, = N − 1 and > N; Nq ≠ Nk (also far apart, so that whole
  // tiles see only clipped bins); masks and causal; N = 1.
  struct Rel {
    int D, Nq, Nk, R;
    BiasForm bias;
    bool mask, causal;
  };
  const Rel rels[] = {
      {16, 17, 17, 3, BiasForm::kNone, false, false},
      {32, 97, 33, 0, BiasForm::kFull, false, true},
      {64, 1, 97, 200, BiasForm::kNone, true, false},
      {128, 100, 64, 8, BiasForm::kSharedB, false, false},
      {64, 97, 97, 96, BiasForm::kNone, false, true},
      {32, 130, 97, 16, BiasForm::kSharedH, true, true},
      {64, 65, 150, 40, BiasForm::kSharedBH, false, false},
      {16, 1, 1, 2, BiasForm::kNone, false, false},
      {128, 130, 200, 1, BiasForm::kNone, true, true},  // R = 1, D = 128, table alone
      {32, 300, 9, 2, BiasForm::kNone, false, false},   // query tiles far past every key: clipped bins only
      {64, 9, 300, 2, BiasForm::kFull, false, false},   // key blocks far past every query
      {128, 70, 190, 300, BiasForm::kSharedH, true, false},  // R > N at D = 128, with a broadcast dB
      // fewer bins than a 64-query block's 191 diagonals, over many query blocks: both clipped bins
      // take sums from most diagonals of every block (Hopper backward: its per-block dT pass)
      {64, 333, 333, 3, BiasForm::kNone, true, true},
      {32, 520, 130, 20, BiasForm::kSharedB, false, false},
  };
  for (ScalarType dt : dts) {
    for (const Rel& r : rels) {
      Case c;
      c.dtype = c.bias_dtype = dt;
      c.D = r.D;
      c.Nq = r.Nq;
      c.Nk = r.Nk;
      c.relpos = r.R;
      c.bias = r.bias;
      c.mask = r.mask;
      c.causal = r.causal;
      cs.push_back(c);
    }
    Case d;  // deterministic: bitwise repeat of dT (partial rows + ordered reduction)
    d.dtype = d.bias_dtype = dt;
    d.relpos = 10;
    d.bias = BiasForm::kFull;
    d.mask = true;
    d.deterministic = true;
    d.Nq = 70;
    d.Nk = 129;
    cs.push_back(d);
    d.relpos = 200;
    d.bias = BiasForm::kNone;
    d.mask = false;
    d.causal = true;
    d.Nq = d.Nk = 97;
    d.D = 32;
    cs.push_back(d);
    d.relpos = 0;
    d.causal = false;
    d.bias = BiasForm::kSharedB;
    cs.push_back(d);
    Case a;  // dT (and dB) accumulated into existing gradients, both modes
    a.dtype = a.bias_dtype = dt;
    a.relpos = 5;
    a.accumulate = true;
    a.Nq = 65;
    a.Nk = 77;
    a.bias = BiasForm::kNone;
    cs.push_back(a);
    a.deterministic = true;
    a.bias = BiasForm::kFull;
    cs.push_back(a);
    for (unsigned g : {unsigned(kDt), unsigned(kDq | kDt), unsigned(kDq | kDk | kDv)}) {  // subsets
      Case s;
      s.dtype = s.bias_dtype = dt;
      s.relpos = 12;
      s.grads = g;
      s.bias = BiasForm::kNone;
      s.causal = true;
      cs.push_back(s);
    }
  }
  {
    Case c;  // long sequences: many query blocks per key block carry diagonals through the walk
    c.dtype = c.bias_dtype = ScalarType::F16;
    c.B = 2;
    c.H = 2;
    c.Nq = c.Nk = 1025;
    c.D = 64;
    c.relpos = 1024;
    c.bias = BiasForm::kNone;
    c.causal = true;
    c.tag = "large";
    cs.push_back(c);
    c.dtype = ScalarType::BF16;
    c.bias_dtype = ScalarType::F32;
    c.B = 1;
    c.Nq = 1000;
    c.D = 32;
    c.relpos = 32;
    c.bias = BiasForm::kSharedB;
    c.causal = false;
    c.deterministic = true;
    cs.push_back(c);
  }
  // More query tiles (128 rows, h, b) than an H100 or H200 has SMs (132): the Hopper forward's
  // persistent CTAs walk two or three tiles each, loading the next tile's Q and first stages (of
  // another m0, often another head or batch) while they finish the current one and reloading the
  // table window per tile; causal with Nq > Nk gives tiles with no key block at all.
  struct Walk {
    ScalarType dt;
    int D, B, H, Nq, Nk, R;
    BiasForm bias;
    bool mask, causal;
  };
  const Walk walks[] = {
      {ScalarType::F16, 64, 4, 12, 777, 150, 40, BiasForm::kSharedB, true, true},    // 336 tiles
      {ScalarType::BF16, 128, 3, 12, 700, 300, 5, BiasForm::kSharedH, true, false},  // 216 tiles
      {ScalarType::BF16, 32, 4, 10, 520, 200, -1, BiasForm::kFull, false, true},     // 200, no table
      {ScalarType::F16, 64, 2, 16, 1100, 130, 200, BiasForm::kNone, false, false},   // 288, table alone
  };
  for (const Walk& w : walks) {
    Case c;
    c.dtype = c.bias_dtype = w.dt;
    c.D = w.D;
    c.B = w.B;
    c.H = w.H;
    c.Nq = w.Nq;
    c.Nk = w.Nk;
    c.relpos = w.R;
    c.bias = w.bias;
    c.mask = w.mask;
    c.causal = w.causal;
    c.grads = kDq;
    c.tag = "walk";
    cs.push_back(c);
  }
  return cs;
}

// ---- the naive low-precision computation (the fp16/bf16 error yardstick) ---------------------

struct Dense {  // logical (B,N,H,D) or (Bb,Hb,Nq,Nk) float64 arrays
  std::vector<double> q, k, v, dout, bias, out, lse, dq, dk, dv, dbias;
};

// Forward and backward of one (b, h) with every intermediate rounded to dtype t (dS, dB summed
// in float64 over the broadcast axes by the caller, then rounded to the bias dtype).
void naive_one_head(const Case& c, double scale, ScalarType t, const Dense& in,
                    const std::vector<uint8_t>& mask, int b, int h, std::vector<double>& out,
                    std::vector<double>& dq, std::vector<double>& dk_part, std::vector<double>& dv_part,
                    std::vector<double>& ds) {
  const int Nq = c.Nq, Nk = c.Nk, D = c.D, H = c.H;
  auto Q = [&](int i, int d) { return in.q[((size_t(b) * Nq + i) * H + h) * D + d]; };
  auto K = [&](int j, int d) { return in.k[((size_t(b) * Nk + j) * H + h) * D + d]; };
  auto V = [&](int j, int d) { return in.v[((size_t(b) * Nk + j) * H + h) * D + d]; };
  auto dO = [&](int i, int d) { return in.dout[((size_t(b) * Nq + i) * H + h) * D + d]; };
  const int Bb = (c.bias == BiasForm::kSharedB || c.bias == BiasForm::kSharedBH) ? 1 : c.B;
  const int Hb = (c.bias == BiasForm::kSharedH || c.bias == BiasForm::kSharedBH) ? 1 : c.H;
  const int bb = Bb == 1 ? 0 : b, hb = Hb == 1 ? 0 : h;
  std::vector<double> P(size_t(Nq) * Nk), dP(size_t(Nq) * Nk);
  for (int i = 0; i < Nq; ++i) {
    double m = -INFINITY;
    for (int j = 0; j < Nk; ++j) {
      const bool ok = !(c.mask && mask[size_t(b) * Nk + j]) && !(c.causal && j > i + Nk - Nq);
      double s = -INFINITY;
      if (ok) {
        double acc = 0;
        for (int d = 0; d < D; ++d) acc += Q(i, d) * K(j, d);
        s = rd(t, rd(t, acc) * scale);
        if (c.bias != BiasForm::kNone) s = rd(t, s + in.bias[((size_t(bb) * Hb + hb) * Nq + i) * Nk + j]);
      }
      P[size_t(i) * Nk + j] = s;
      m = std::max(m, s);
    }
    double sum = 0;
    for (int j = 0; j < Nk; ++j) {
      double& p = P[size_t(i) * Nk + j];
      p = m == -INFINITY ? 0.0 : std::exp(p - m);
      sum += p;
    }
    for (int j = 0; j < Nk; ++j) P[size_t(i) * Nk + j] = sum > 0 ? rd(t, P[size_t(i) * Nk + j] / sum) : 0.0;
  }
  std::vector<double> O(size_t(Nq) * D), delta(Nq);
  for (int i = 0; i < Nq; ++i) {
    for (int d = 0; d < D; ++d) {
      double acc = 0;
      for (int j = 0; j < Nk; ++j) acc += P[size_t(i) * Nk + j] * V(j, d);
      O[size_t(i) * D + d] = rd(t, acc);
      out[((size_t(b) * Nq + i) * H + h) * D + d] = O[size_t(i) * D + d];
    }
    double acc = 0;
    for (int d = 0; d < D; ++d) acc += dO(i, d) * O[size_t(i) * D + d];
    delta[i] = rd(t, acc);
  }
  for (int i = 0; i < Nq; ++i)
    for (int j = 0; j < Nk; ++j) {
      double acc = 0;
      for (int d = 0; d < D; ++d) acc += dO(i, d) * V(j, d);
      const double p = P[size_t(i) * Nk + j];
      ds[size_t(i) * Nk + j] = rd(t, p * (rd(t, acc) - delta[i]));
    }
  for (int i = 0; i < Nq; ++i)
    for (int d = 0; d < D; ++d) {
      double acc = 0;
      for (int j = 0; j < Nk; ++j) acc += ds[size_t(i) * Nk + j] * K(j, d);
      dq[((size_t(b) * Nq + i) * H + h) * D + d] = rd(t, rd(t, acc) * scale);
    }
  for (int j = 0; j < Nk; ++j)
    for (int d = 0; d < D; ++d) {
      double a = 0, bv = 0;
      for (int i = 0; i < Nq; ++i) {
        a += ds[size_t(i) * Nk + j] * Q(i, d);
        bv += P[size_t(i) * Nk + j] * dO(i, d);
      }
      dk_part[((size_t(b) * Nk + j) * H + h) * D + d] = rd(t, rd(t, a) * scale);
      dv_part[((size_t(b) * Nk + j) * H + h) * D + d] = rd(t, bv);
    }
}

double norm(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v * v;
  return std::sqrt(s);
}

// ‖x − ref‖ / ‖ref‖. Where the exact result is identically zero — the reference is 0, or below
// 1e-10 · zero_scale, i.e. only float64 rounding residue — ‖x − ref‖ / zero_scale instead
// (exactly zero required when zero_scale is 0).
// The norm rel_err divides by: ‖ref‖, or zero_scale where ‖ref‖ < 1e-10 · zero_scale.
double rel_scale(const std::vector<double>& ref, double zero_scale = 0) {
  double den = 0;
  for (double r : ref) den += r * r;
  den = std::sqrt(den);
  return zero_scale > 0 && den < 1e-10 * zero_scale ? zero_scale : den;
}

double rel_err(const std::vector<double>& x, const std::vector<double>& ref, double zero_scale = 0) {
  double num = 0;
  for (size_t i = 0; i < x.size(); ++i) num += (x[i] - ref[i]) * (x[i] - ref[i]);
  const double den = rel_scale(ref, zero_scale);
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return std::sqrt(num) / den;
}

// dT's part of the backward error that comes from the output being stored in the inputs' dtype:
// the kernel's Δ_i = Σ_d dO_id O_id reads the stored O, so every dS_ij = P_ij (dP_ij − Δ_i) carries
// −P_ij δ_i with δ_i = Σ_d dO_id (O_stored − O)_id. A bin of dT sums such terms over many rows
// (all the clipped diagonals of a row fall into one bin) and Σ_j P_ij ≤ 1, so
// ‖e‖₂ ≤ Σ_r |e_r| ≤ Σ_i |δ_i|: this bound, computed exactly from the stored and the exact output
// (rows of D contiguous values), is added to dT's tolerance. The naive yardstick does not model it:
// its own Δ comes from its own rounded O, a different sample of the same residue.
double stored_output_residue(const std::vector<double>& dout, const std::vector<double>& out_stored,
                             const std::vector<double>& out_exact, int D) {
  double bound = 0;
  for (size_t row = 0; row + D <= dout.size(); row += D) {
    double delta = 0;
    for (int d = 0; d < D; ++d) delta += dout[row + d] * (out_stored[row + d] - out_exact[row + d]);
    bound += std::abs(delta);
  }
  return bound;
}

size_t count_nan(const std::vector<double>& x) {
  return size_t(std::count_if(x.begin(), x.end(), [](double v) { return std::isnan(v); }));
}

// ---- the test ------------------------------------------------------------------------------------

using pf::kernels::cuda::FlashBiasPath;

// Sets the forward path for one scope (process-wide setting, restored on exit).
struct PathScope {
  FlashBiasPath saved = pf::kernels::cuda::flash_bias_path();
  explicit PathScope(FlashBiasPath p) { pf::kernels::cuda::set_flash_bias_path(p); }
  ~PathScope() { pf::kernels::cuda::set_flash_bias_path(saved); }
};

// Which cases a path's test runs: all; only those the default path runs on the Hopper forward
// (elsewhere the default run already was the portable kernel).
enum class Only { kAll, kHopperByDefault };

// Runs case c on the kernel path `path` (forward and backward).
void check_case(const Case& c, FlashBiasPath path, Only only);

class FlashBiasCuda : public ::testing::TestWithParam<Case> {};

// The default path: on an H100/H200 the Hopper forward and backward wherever they cover the case
// (and the dispatcher must then take them), the portable kernels elsewhere.
TEST_P(FlashBiasCuda, MatchesFloat64Reference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device: " << pf::kernels::cuda::device_info().reason;
  check_case(GetParam(), FlashBiasPath::kAuto, Only::kAll);
}

// The portable forward on the cases the default path runs on the Hopper kernel: both paths
// are checked against the same reference.
TEST_P(FlashBiasCuda, PortablePathMatchesFloat64Reference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device: " << pf::kernels::cuda::device_info().reason;
  check_case(GetParam(), FlashBiasPath::kPortable, Only::kHopperByDefault);
}

void check_case(const Case& c, FlashBiasPath path, Only only) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("case " + case_name(c) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);

  const int B = c.B, H = c.H, Nq = c.Nq, Nk = c.Nk, D = c.D;
  const double scale = c.scale != 0 ? c.scale : 1.0 / std::sqrt(double(D));
  const ScalarType dt = c.dtype, bdt = c.bias_dtype;
  const bool has_bias = c.bias != BiasForm::kNone;
  const bool shared_b = c.bias == BiasForm::kSharedB || c.bias == BiasForm::kSharedBH;
  const bool shared_h = c.bias == BiasForm::kSharedH || c.bias == BiasForm::kSharedBH;
  const int Bb = shared_b ? 1 : B, Hb = shared_h ? 1 : H;

  // (B,N,H,D) layouts: contiguous or padded (head stride D + 8, extra batch padding)
  auto bnhd = [&](int N) {
    const int64_t hs = c.padded ? D + 8 : D, rs = hs * H, bs = rs * N + (c.padded ? 8 : 0);
    return HostTensor(dt, {B, N, H, D}, {bs, rs, hs, 1});
  };
  HostTensor q = bnhd(Nq), k = bnhd(Nk), v = bnhd(Nk), dout = bnhd(Nq);
  HostTensor out = bnhd(Nq), dq = bnhd(Nq), dk = bnhd(Nk), dv = bnhd(Nk);
  const int64_t brow = Nk + c.bias_pad;
  HostTensor bias, dbias;
  if (has_bias) {
    bias =
        HostTensor(bdt, {Bb, Hb, Nq, Nk}, {shared_b ? 0 : Hb * Nq * brow, shared_h ? 0 : Nq * brow, brow, 1});
    dbias = bias;
  }
  for (HostTensor* t : {&q, &k, &v, &dout})
    for (int64_t a = 0; a < t->n[0]; ++a)
      for (int64_t b2 = 0; b2 < t->n[1]; ++b2)
        for (int64_t h = 0; h < t->n[2]; ++h)
          for (int64_t d = 0; d < t->n[3]; ++d) t->set(a, b2, h, d, normal(rng));
  if (has_bias)
    for (int a = 0; a < Bb; ++a)
      for (int h = 0; h < Hb; ++h)
        for (int i = 0; i < Nq; ++i)
          for (int j = 0; j < Nk; ++j) {
            bias.set(a, h, i, j, normal(rng));
            dbias.set(a, h, i, j, c.accumulate ? normal(rng) : 0.0);  // accumulate: existing gradient
          }
  // relative-position table (H, 2R+1) fp32 and its gradient (existing values when accumulating)
  const int R = c.relpos, nbins = 2 * std::max(R, 0) + 1;
  const bool has_rel = R >= 0, want_dt = has_rel && (c.grads & kDt);
  std::vector<float> table(has_rel ? size_t(H) * nbins : 0), dtable0(table.size());
  for (auto& x : table) x = float(normal(rng));
  for (auto& x : dtable0) x = c.accumulate ? float(normal(rng)) : 0.f;
  std::vector<uint8_t> mask(size_t(B) * Nk, 0);
  if (c.mask) {
    std::bernoulli_distribution pad(0.25);
    for (auto& m : mask) m = pad(rng) ? 1 : 0;
    if (c.all_masked_batch) std::fill(mask.begin(), mask.begin() + Nk, uint8_t(1));
  }

  // device copies; outputs poisoned
  DeviceBuffer d_q(q.bytes.size()), d_k(k.bytes.size()), d_v(v.bytes.size()), d_dout(dout.bytes.size());
  DeviceBuffer d_out(out.bytes.size()), d_dq(dq.bytes.size()), d_dk(dk.bytes.size()), d_dv(dv.bytes.size());
  DeviceBuffer d_lse(size_t(B) * H * Nq * sizeof(float));
  DeviceBuffer d_bias(bias.bytes.size()), d_dbias(dbias.bytes.size()), d_mask(mask.size());
  DeviceBuffer d_table(table.size() * 4), d_dtable(table.size() * 4);
  if (has_rel) CUDA_OK(cudaMemcpy(d_table.ptr, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  d_q.upload(q);
  d_k.upload(k);
  d_v.upload(v);
  d_dout.upload(dout);
  if (has_bias) d_bias.upload(bias);
  if (c.mask) CUDA_OK(cudaMemcpy(d_mask.ptr, mask.data(), mask.size(), cudaMemcpyHostToDevice));
  d_out.poison();
  d_lse.poison();

  FlashBiasBwdParams p;
  p.B = B;
  p.H = H;
  p.Nq = Nq;
  p.Nk = Nk;
  p.D = D;
  p.scale = scale;
  p.dtype = dt;
  p.q = d_q.ptr;
  p.q_stride = q.bnhd();
  p.k = d_k.ptr;
  p.k_stride = k.bnhd();
  p.v = d_v.ptr;
  p.v_stride = v.bnhd();
  p.out = d_out.ptr;
  p.out_stride = out.bnhd();
  p.lse = d_lse.ptr;
  if (has_bias) {
    p.bias = d_bias.ptr;
    p.bias_dtype = bdt;
    p.bias_batch_stride = bias.s[0];
    p.bias_head_stride = bias.s[1];
    p.bias_row_stride = bias.s[2];
  }
  p.key_padding_mask = c.mask ? static_cast<const uint8_t*>(d_mask.ptr) : nullptr;
  p.causal = c.causal;
  if (has_rel) {
    p.relpos_table = d_table.ptr;
    p.relpos_dtype = ScalarType::F32;
    p.relpos_clip = R;
  }
  p.dout = d_dout.ptr;
  p.dout_stride = dout.bnhd();
  if (c.grads & kDq) {
    p.dq = d_dq.ptr;
    p.dq_stride = dq.bnhd();
  }
  if (c.grads & kDk) {
    p.dk = d_dk.ptr;
    p.dk_stride = dk.bnhd();
  }
  if (c.grads & kDv) {
    p.dv = d_dv.ptr;
    p.dv_stride = dv.bnhd();
  }
  if (has_bias && (c.grads & kDb)) {
    p.dbias = d_dbias.ptr;
    p.dbias_batch_stride = dbias.s[0];
    p.dbias_head_stride = dbias.s[1];
    p.dbias_row_stride = dbias.s[2];
    p.dbias_accumulate = c.accumulate;
  }
  if (want_dt) {
    p.drelpos_table = d_dtable.ptr;
    p.dbias_accumulate = c.accumulate;
  }
  p.deterministic = c.deterministic;
  if (only == Only::kHopperByDefault &&
      std::string(pf::kernels::cuda::flash_bias_forward_kernel(p)) != "hopper")
    GTEST_SKIP() << "the default path runs the portable forward for this case";
  const PathScope scope(path);
  const std::string kernel = pf::kernels::cuda::flash_bias_forward_kernel(p);
  const std::string bwd_kernel = pf::kernels::cuda::flash_bias_backward_kernel(p);
  SCOPED_TRACE("forward kernel " + kernel + ", backward kernel " + bwd_kernel);
  if (path == FlashBiasPath::kAuto && pf::kernels::cuda::flash_bias_hopper_covers(p))
    EXPECT_EQ(bwd_kernel, "hopper")
        << "the default path must take the Hopper backward where it covers the case";
  pf::kernels::cuda::flash_bias_forward(p, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  const size_t ws_bytes = pf::kernels::cuda::flash_bias_backward_workspace_bytes(p);
  DeviceBuffer d_ws(ws_bytes);

  auto run_backward = [&]() {
    d_dq.poison();
    d_dk.poison();
    d_dv.poison();
    d_ws.poison();
    if (has_bias) {
      if (c.accumulate)
        d_dbias.upload(dbias);
      else
        d_dbias.poison();
    }
    if (want_dt) {
      if (c.accumulate)
        CUDA_OK(cudaMemcpy(d_dtable.ptr, dtable0.data(), dtable0.size() * 4, cudaMemcpyHostToDevice));
      else
        d_dtable.poison();
    }
    pf::kernels::cuda::flash_bias_backward(p, d_ws.ptr, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
  };
  run_backward();
  // again on poisoned outputs: races show as errors below
  if ((has_rel && !c.deterministic) || bwd_kernel == "hopper") run_backward();
  std::vector<float> dt_h(table.size());
  if (want_dt) CUDA_OK(cudaMemcpy(dt_h.data(), d_dtable.ptr, dt_h.size() * 4, cudaMemcpyDeviceToHost));

  HostTensor out_h = out, dq_h = dq, dk_h = dk, dv_h = dv, dbias_h = dbias;
  std::vector<float> lse_h(size_t(B) * H * Nq);
  d_out.download(out_h);
  d_dq.download(dq_h);
  d_dk.download(dk_h);
  d_dv.download(dv_h);
  if (has_bias) d_dbias.download(dbias_h);
  CUDA_OK(cudaMemcpy(lse_h.data(), d_lse.ptr, lse_h.size() * sizeof(float), cudaMemcpyDeviceToHost));

  if (c.deterministic) {  // the same inputs again: bitwise identical gradients
    run_backward();
    HostTensor dq2 = dq, dk2 = dk, dv2 = dv, db2 = dbias;
    d_dq.download(dq2);
    d_dk.download(dk2);
    d_dv.download(dv2);
    if (has_bias) d_dbias.download(db2);
    if (c.grads & kDq) EXPECT_EQ(dq2.bytes, dq_h.bytes) << "dq differs between two deterministic runs";
    if (c.grads & kDk) EXPECT_EQ(dk2.bytes, dk_h.bytes) << "dk differs between two deterministic runs";
    if (c.grads & kDv) EXPECT_EQ(dv2.bytes, dv_h.bytes) << "dv differs between two deterministic runs";
    if (has_bias && (c.grads & kDb))
      EXPECT_EQ(db2.bytes, dbias_h.bytes) << "dbias differs between two deterministic runs";
    if (want_dt) {
      std::vector<float> dt2(table.size());
      CUDA_OK(cudaMemcpy(dt2.data(), d_dtable.ptr, dt2.size() * 4, cudaMemcpyDeviceToHost));
      EXPECT_EQ(0, std::memcmp(dt2.data(), dt_h.data(), dt2.size() * 4))
          << "drelpos_table differs between two deterministic runs";
    }
  }

  // float64 reference on the same (rounded) inputs
  Dense in;
  in.q = q.dense();
  in.k = k.dense();
  in.v = v.dense();
  in.dout = dout.dense();
  if (has_bias) in.bias = bias.dense();
  // A relative-position table is materialised on top of the bias: the reference (and the naive
  // yardstick) then see a full (B,H,Nq,Nk) bias `comb`, whose gradient dS gives dB and dT.
  Dense in_ref = in;
  Case c_ref = c;
  if (has_rel) {
    in_ref.bias.assign(size_t(B) * H * Nq * Nk, 0.0);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < Nq; ++i)
          for (int j = 0; j < Nk; ++j) {
            double x = table[size_t(h) * nbins + std::clamp(j - i, -R, R) + R];
            if (has_bias)
              x += in.bias[((size_t(shared_b ? 0 : b) * Hb + (shared_h ? 0 : h)) * Nq + i) * Nk + j];
            in_ref.bias[((size_t(b) * H + h) * Nq + i) * Nk + j] = x;
          }
    c_ref.bias = BiasForm::kFull;
  }
  // Sums dS (B,H,Nq,Nk) over the dense bias's broadcast axes into db and over the clipped
  // diagonals into dtab (both hold their initial values).
  auto reduce_ds = [&](const std::vector<double>& ds, std::vector<double>& db, std::vector<double>& dtab) {
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < Nq; ++i)
          for (int j = 0; j < Nk; ++j) {
            const double x = ds[((size_t(b) * H + h) * Nq + i) * Nk + j];
            if (!db.empty())
              db[((size_t(shared_b ? 0 : b) * Hb + (shared_h ? 0 : h)) * Nq + i) * Nk + j] += x;
            if (!dtab.empty()) dtab[size_t(h) * nbins + std::clamp(j - i, -R, R) + R] += x;
          }
  };
  std::vector<double> r_out(in.q.size()), r_lse(lse_h.size()), r_dq(in.q.size()), r_dk(in.k.size()),
      r_dv(in.v.size());
  std::vector<double> r_db =
      has_bias ? dbias.dense() : std::vector<double>();  // initial values when accumulating
  std::vector<double> r_dt(dtable0.begin(), dtable0.end());
  std::vector<double> r_ds(has_rel ? size_t(B) * H * Nq * Nk : 0);
  {
    FlashBiasBwdParams r;
    r.B = B;
    r.H = H;
    r.Nq = Nq;
    r.Nk = Nk;
    r.D = D;
    r.scale = scale;
    r.dtype = ScalarType::F64;
    r.q = in.q.data();
    r.q_stride = pf::kernels::contiguous_bnhd(Nq, H, D);
    r.k = in.k.data();
    r.k_stride = pf::kernels::contiguous_bnhd(Nk, H, D);
    r.v = in.v.data();
    r.v_stride = r.k_stride;
    r.out = r_out.data();
    r.out_stride = r.q_stride;
    r.lse = r_lse.data();
    if (has_rel) {
      r.bias = in_ref.bias.data();
      r.bias_dtype = ScalarType::F64;
      r.bias_batch_stride = int64_t(H) * Nq * Nk;
      r.bias_head_stride = int64_t(Nq) * Nk;
      r.bias_row_stride = Nk;
    } else if (has_bias) {
      r.bias = in.bias.data();
      r.bias_dtype = ScalarType::F64;
      r.bias_batch_stride = shared_b ? 0 : int64_t(Hb) * Nq * Nk;
      r.bias_head_stride = shared_h ? 0 : int64_t(Nq) * Nk;
      r.bias_row_stride = Nk;
    }
    r.key_padding_mask = c.mask ? mask.data() : nullptr;
    r.causal = c.causal;
    pf::kernels::cpu::flash_bias_forward(r);
    r.dout = in.dout.data();
    r.dout_stride = r.q_stride;
    r.dq = r_dq.data();
    r.dq_stride = r.q_stride;
    r.dk = r_dk.data();
    r.dk_stride = r.k_stride;
    r.dv = r_dv.data();
    r.dv_stride = r.k_stride;
    if (has_rel) {
      r.dbias = r_ds.data();  // dS of the materialised bias, reduced below
      r.dbias_batch_stride = r.bias_batch_stride;
      r.dbias_head_stride = r.bias_head_stride;
      r.dbias_row_stride = Nk;
    } else if (has_bias) {
      r.dbias = r_db.data();
      r.dbias_batch_stride = r.bias_batch_stride;
      r.dbias_head_stride = r.bias_head_stride;
      r.dbias_row_stride = Nk;
      r.dbias_accumulate = c.accumulate;
    }
    pf::kernels::cpu::flash_bias_backward(r);
  }
  if (has_rel) {
    if (has_bias && !c.accumulate) std::fill(r_db.begin(), r_db.end(), 0.0);
    reduce_ds(r_ds, r_db, r_dt);
  }

  // the naive low-precision yardstick (fp16 / bf16 only)
  const bool low = dt != ScalarType::F32;
  std::vector<double> n_out, n_dq, n_dk, n_dv, n_db, n_dt;
  if (low) {
    n_out.assign(in.q.size(), 0);
    n_dq.assign(in.q.size(), 0);
    n_dk.assign(in.k.size(), 0);
    n_dv.assign(in.v.size(), 0);
    std::vector<double> ds_all(size_t(B) * H * Nq * Nk);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        std::vector<double> ds(size_t(Nq) * Nk);
        naive_one_head(c_ref, scale, dt, in_ref, mask, b, h, n_out, n_dq, n_dk, n_dv, ds);
        std::copy(ds.begin(), ds.end(), ds_all.begin() + (size_t(b) * H + h) * Nq * Nk);
      }
    if (has_bias) {
      n_db = dbias.dense();
      const std::vector<double> init = n_db;
      if (!c.accumulate) std::fill(n_db.begin(), n_db.end(), 0.0);
      std::vector<double> sum(n_db.size(), 0.0);
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
          for (size_t e = 0; e < size_t(Nq) * Nk; ++e)
            sum[((size_t(shared_b ? 0 : b) * Hb + (shared_h ? 0 : h)) * Nq * Nk) + e] +=
                ds_all[(size_t(b) * H + h) * Nq * Nk + e];
      for (size_t e = 0; e < n_db.size(); ++e) n_db[e] = rd(bdt, n_db[e] + rd(dt, sum[e]));
    }
    if (has_rel) {  // dT: the rounded dS summed exactly, rounded once to fp32
      std::vector<double> none, sum(table.size(), 0.0);
      reduce_ds(ds_all, none, sum);
      n_dt.resize(table.size());
      for (size_t e = 0; e < n_dt.size(); ++e) n_dt[e] = rd(ScalarType::F32, dtable0[e] + sum[e]);
    }
  }

  // When every row attends at most one key the softmax is constant and dQ, dK, dB are exactly
  // zero; computed, they are the rounding residue of dP − Δ, whose terms have the size of
  // dV = Pᵀ dO: they are then measured against ‖dV‖ (zero_scale).
  const double dv_scale = norm(r_dv);
  auto check = [&](const char* name, const std::vector<double>& got, const std::vector<double>& ref,
                   const std::vector<double>* naive, ScalarType out_dt, double zero_scale = 0,
                   double extra_abs = 0) {
    const size_t nans = count_nan(got);
    EXPECT_EQ(nans, 0u) << name << ": " << nans << " NaN (unwritten or poisoned) elements";
    const double err = rel_err(got, ref, zero_scale);
    double nerr = 0, tol = std::max(1e-5, unit_roundoff(out_dt));
    if (naive) {
      nerr = rel_err(*naive, ref, zero_scale);
      tol = std::max(2.0 * nerr, unit_roundoff(out_dt));
    }
    if (extra_abs > 0) tol += extra_abs / rel_scale(ref, zero_scale);
    EXPECT_LE(err, tol) << name << ": relative error " << err << " (naive " << dtype_tag(dt) << " error "
                        << nerr << ")";
    std::printf("    %-6s err %.3e  tol %.3e%s\n", name, err, tol, naive ? "  (2x naive or u)" : "");
  };

  std::printf("  %s (forward: %s kernel, backward: %s kernel)\n", case_name(c).c_str(), kernel.c_str(),
              bwd_kernel.c_str());
  check("out", out_h.dense(), r_out, low ? &n_out : nullptr, dt);
  {  // lse: finite entries by relative error, -inf exactly where the reference has it
    std::vector<double> got, ref;
    size_t inf_mismatch = 0;
    for (size_t i = 0; i < lse_h.size(); ++i) {
      if (std::isinf(r_lse[i]))
        inf_mismatch += !(std::isinf(lse_h[i]) && lse_h[i] < 0);
      else {
        got.push_back(lse_h[i]);
        ref.push_back(r_lse[i]);
      }
    }
    EXPECT_EQ(inf_mismatch, 0u) << "lse: rows with no attended key must have lse = -inf";
    if (!got.empty()) check("lse", got, ref, nullptr, ScalarType::F32);
  }
  if (c.grads & kDq) check("dq", dq_h.dense(), r_dq, low ? &n_dq : nullptr, dt, dv_scale);
  if (c.grads & kDk) check("dk", dk_h.dense(), r_dk, low ? &n_dk : nullptr, dt, dv_scale);
  if (c.grads & kDv) check("dv", dv_h.dense(), r_dv, low ? &n_dv : nullptr, dt);
  if (has_bias && (c.grads & kDb)) {
    check("dbias", dbias_h.dense(), r_db, low ? &n_db : nullptr, bdt, c.accumulate ? 0.0 : dv_scale);
  }
  if (want_dt) {
    const std::vector<double> got(dt_h.begin(), dt_h.end());
    check("dtable", got, r_dt, low ? &n_dt : nullptr, dt, c.accumulate ? 0.0 : dv_scale,
          stored_output_residue(in.dout, out_h.dense(), r_out, D));
  }

  if (c.all_masked_batch) {  // batch 0 attends nothing: exact zeros, lse = -inf
    for (int i = 0; i < Nq; ++i)
      for (int h = 0; h < H; ++h) {
        EXPECT_TRUE(std::isinf(lse_h[(size_t(0) * H + h) * Nq + i]));
        for (int d = 0; d < D; ++d) {
          ASSERT_EQ(out_h.get(0, i, h, d), 0.0) << "out of a fully masked row";
          if (c.grads & kDq) ASSERT_EQ(dq_h.get(0, i, h, d), 0.0) << "dq of a fully masked row";
        }
      }
    for (int j = 0; j < Nk; ++j)
      for (int h = 0; h < H; ++h)
        for (int d = 0; d < D; ++d) {
          if (c.grads & kDk) ASSERT_EQ(dk_h.get(0, j, h, d), 0.0) << "dk of a fully masked batch";
          if (c.grads & kDv) ASSERT_EQ(dv_h.get(0, j, h, d), 0.0) << "dv of a fully masked batch";
        }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, FlashBiasCuda, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return case_name(info.param); });

// A NaN in q or in the bias reaches exactly the rows whose scores it enters (out and lse NaN
// there, every other row finite), on both forward paths (the Hopper one where it runs).
TEST(FlashBiasCudaNaN, NaNInputsReachTheirRowsOnly) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device: " << pf::kernels::cuda::device_info().reason;
  const int B = 1, H = 2, N = 64, D = 64;
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<double> normal(0.0, 1.0);
  HostTensor q(ScalarType::F16, {B, N, H, D}, {N * H * D, H * D, D, 1}), k = q, v = q, out = q;
  HostTensor bias(ScalarType::F16, {B, H, N, N}, {H * N * N, N * N, N, 1});
  for (HostTensor* t : {&q, &k, &v})
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < H; ++h)
        for (int d = 0; d < D; ++d) t->set(0, n, h, d, normal(rng));
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j) bias.set(0, h, i, j, normal(rng));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  q.set(0, 5, 0, 3, nan);      // row 5 of head 0
  bias.set(0, 1, 9, 20, nan);  // row 9 of head 1
  DeviceBuffer d_q(q.bytes.size()), d_k(k.bytes.size()), d_v(v.bytes.size()), d_out(out.bytes.size());
  DeviceBuffer d_bias(bias.bytes.size()), d_lse(size_t(B) * H * N * sizeof(float));
  d_q.upload(q);
  d_k.upload(k);
  d_v.upload(v);
  d_bias.upload(bias);
  FlashBiasParams p;
  p.B = B;
  p.H = H;
  p.Nq = N;
  p.Nk = N;
  p.D = D;
  p.scale = 0.125;
  p.dtype = ScalarType::F16;
  p.q = d_q.ptr;
  p.q_stride = q.bnhd();
  p.k = d_k.ptr;
  p.k_stride = k.bnhd();
  p.v = d_v.ptr;
  p.v_stride = v.bnhd();
  p.out = d_out.ptr;
  p.out_stride = out.bnhd();
  p.lse = d_lse.ptr;
  p.bias = d_bias.ptr;
  p.bias_dtype = ScalarType::F16;
  p.bias_batch_stride = bias.s[0];
  p.bias_head_stride = bias.s[1];
  p.bias_row_stride = bias.s[2];
  for (FlashBiasPath path : {FlashBiasPath::kAuto, FlashBiasPath::kPortable}) {
    const PathScope scope(path);
    SCOPED_TRACE(std::string("forward kernel: ") + pf::kernels::cuda::flash_bias_forward_kernel(p));
    CUDA_OK(cudaMemset(d_out.ptr, 0x3c, d_out.bytes));  // finite poison (1.06 in fp16, 0.0115 in fp32):
    CUDA_OK(cudaMemset(d_lse.ptr, 0x3c, d_lse.bytes));  // a NaN row must have been written as NaN
    pf::kernels::cuda::flash_bias_forward(p, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    HostTensor out_h = out;
    d_out.download(out_h);
    std::vector<float> lse(size_t(H) * N);
    CUDA_OK(cudaMemcpy(lse.data(), d_lse.ptr, lse.size() * sizeof(float), cudaMemcpyDeviceToHost));
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < N; ++i) {
        const bool poisoned = (h == 0 && i == 5) || (h == 1 && i == 9);
        EXPECT_EQ(std::isnan(lse[size_t(h) * N + i]), poisoned) << "lse of head " << h << " row " << i;
        for (int d = 0; d < D; ++d)
          ASSERT_EQ(std::isnan(out_h.get(0, i, h, d)), poisoned)
              << "out of head " << h << " row " << i << " dim " << d;
      }
  }
}

// ---- packed variable-length batches ----------------------------------------------------------------
//
// q, out, dout, dq: (Tq,H,D); k, v, dk, dv: (Tk,H,D); sequence b owns rows cu_seqlens[b] …; its bias
// block [H, nq_b, nk_b] lies at bias_seq_offsets[b]; lse (H,Tq). Each sequence is run alone through
// the dense float64 reference (and the naive yardstick) and the results are compared over the
// whole packed tensors, with the same tolerances as above. A sequence without keys must give
// out = 0, lse = −inf, dq = 0; one without queries dk = dv = 0.

struct VarlenCase {
  ScalarType dtype = ScalarType::F16;
  ScalarType bias_dtype = ScalarType::F16;
  std::vector<int> lq, lk;  // lengths per sequence (lk empty: = lq)
  int H = 2, D = 64;
  bool bias = false;  // packed dense bias blocks
  int relpos = -1;    // R >= 0: relative-position table (per sequence positions)
  bool causal = false, deterministic = false, accumulate = false;
  unsigned grads = kAll;
  std::string tag;
};

std::string varlen_name(const VarlenCase& c) {
  std::ostringstream os;
  os << dtype_tag(c.dtype) << "_D" << c.D << "_H" << c.H << "_len";
  for (size_t i = 0; i < c.lq.size(); ++i) {
    os << "_" << c.lq[i];
    if (!c.lk.empty() && c.lk[i] != c.lq[i]) os << "x" << c.lk[i];
  }
  if (c.bias) os << "_bias" << dtype_tag(c.bias_dtype);
  if (c.relpos >= 0) os << "_relposR" << c.relpos;
  if (c.causal) os << "_causal";
  if (c.deterministic) os << "_det";
  if (c.accumulate) os << "_acc";
  if (c.grads != kAll) os << "_grads" << c.grads;
  if (!c.tag.empty()) os << "_" << c.tag;
  return os.str();
}

std::vector<VarlenCase> varlen_cases() {
  std::vector<VarlenCase> cs;
  const ScalarType dts[] = {ScalarType::F16, ScalarType::BF16, ScalarType::F32};
  int di = 0;
  for (ScalarType dt : dts) {
    const int Ds[] = {16, 32, 64, 128};
    VarlenCase c;  // lengths 0, 1, 17, 300 in mixed order; no bias, then a packed bias, causal
    c.dtype = c.bias_dtype = dt;
    c.lq = {17, 0, 300, 1};
    c.D = Ds[di++ % 4];
    cs.push_back(c);
    c.bias = true;
    c.causal = true;
    c.D = Ds[di++ % 4];
    cs.push_back(c);
    VarlenCase r;  // relative positions per sequence, with and without a bias; Nq ≠ Nk per sequence
    r.dtype = r.bias_dtype = dt;
    r.lq = {17, 0, 300, 1, 64};
    r.lk = {33, 5, 250, 0, 64};
    r.relpos = 16;
    r.D = Ds[di++ % 4];
    cs.push_back(r);
    r.bias = true;
    r.bias_dtype = ScalarType::F32;
    r.causal = true;
    r.relpos = 400;  // R > every length
    r.D = Ds[di++ % 4];
    cs.push_back(r);
    VarlenCase d;  // deterministic (bitwise repeat), aligned lengths (16-byte bias rows)
    d.dtype = d.bias_dtype = dt;
    d.lq = {64, 128, 8, 200};
    d.bias = true;
    d.relpos = 0;
    d.deterministic = true;
    d.D = 64;
    cs.push_back(d);
    d.lq = {17, 0, 300, 1};
    d.relpos = 20;
    d.causal = true;
    d.accumulate = true;
    d.D = 32;
    cs.push_back(d);
    VarlenCase a;  // accumulate, non-deterministic; subsets of gradients
    a.dtype = a.bias_dtype = dt;
    a.lq = {65, 3, 129};
    a.bias = true;
    a.relpos = 7;
    a.accumulate = true;
    cs.push_back(a);
    a.accumulate = false;
    a.grads = kDt | kDq;
    cs.push_back(a);
    a.grads = kDk | kDv | kDb;
    a.deterministic = true;
    cs.push_back(a);
  }
  VarlenCase e;  // nothing at all: every sequence empty
  e.lq = {0, 0};
  e.relpos = 3;
  e.bias = true;
  cs.push_back(e);
  VarlenCase k;  // queries without keys only, and keys without queries only
  k.lq = {5, 0};
  k.lk = {0, 9};
  k.relpos = 2;
  k.bias = true;
  cs.push_back(k);
  return cs;
}

class FlashBiasCudaVarlen : public ::testing::TestWithParam<VarlenCase> {};

TEST_P(FlashBiasCudaVarlen, MatchesEachSequenceAlone) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device: " << pf::kernels::cuda::device_info().reason;
  const VarlenCase c = GetParam();
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("case " + varlen_name(c) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);

  const int B = int(c.lq.size()), H = c.H, D = c.D;
  const std::vector<int> lq = c.lq, lk = c.lk.empty() ? c.lq : c.lk;
  std::vector<int32_t> cuq(B + 1, 0), cuk(B + 1, 0);
  std::vector<int64_t> boff(B + 1, 0);
  for (int b = 0; b < B; ++b) {
    cuq[b + 1] = cuq[b] + lq[b];
    cuk[b + 1] = cuk[b] + lk[b];
    boff[b + 1] = boff[b] + int64_t(H) * lq[b] * lk[b];
  }
  const int Tq = cuq[B], Tk = cuk[B];
  const int Nq = *std::max_element(lq.begin(), lq.end()), Nk = *std::max_element(lk.begin(), lk.end());
  const double scale = 1.0 / std::sqrt(double(D));
  const ScalarType dt = c.dtype, bdt = c.bias_dtype;
  const int R = c.relpos, nbins = 2 * std::max(R, 0) + 1;
  const bool has_rel = R >= 0, want_dt = has_rel && (c.grads & kDt), want_db = c.bias && (c.grads & kDb);

  // packed tensors as (1, T, H, D); the bias blocks as one flat row
  auto thd = [&](int T) {
    return HostTensor(dt, {1, std::max(T, 1), H, D}, {int64_t(std::max(T, 1)) * H * D, H * D, D, 1});
  };
  HostTensor q = thd(Tq), k = thd(Tk), v = thd(Tk), dout = thd(Tq), out = thd(Tq), dq = thd(Tq), dk = thd(Tk),
             dv = thd(Tk);
  const int64_t nbias = std::max<int64_t>(boff[B], 1);
  HostTensor bias(bdt, {1, 1, 1, nbias}, {0, 0, 0, 1}), dbias0 = bias;
  for (HostTensor* t : {&q, &k, &v, &dout})
    for (int64_t n = 0; n < t->n[1]; ++n)
      for (int h = 0; h < H; ++h)
        for (int d = 0; d < D; ++d) t->set(0, n, h, d, normal(rng));
  for (int64_t e = 0; e < nbias; ++e) {
    bias.set(0, 0, 0, e, normal(rng));
    dbias0.set(0, 0, 0, e, c.accumulate ? normal(rng) : 0.0);
  }
  std::vector<float> table(has_rel ? size_t(H) * nbins : 1), dtable0(table.size());
  for (auto& x : table) x = float(normal(rng));
  for (auto& x : dtable0) x = c.accumulate ? float(normal(rng)) : 0.f;

  DeviceBuffer d_q(q.bytes.size()), d_k(k.bytes.size()), d_v(v.bytes.size()), d_dout(dout.bytes.size());
  DeviceBuffer d_out(out.bytes.size()), d_dq(dq.bytes.size()), d_dk(dk.bytes.size()), d_dv(dv.bytes.size());
  DeviceBuffer d_lse(size_t(H) * std::max(Tq, 1) * 4), d_bias(bias.bytes.size()), d_dbias(bias.bytes.size());
  DeviceBuffer d_table(table.size() * 4), d_dtable(table.size() * 4);
  DeviceBuffer d_cuq(cuq.size() * 4), d_cuk(cuk.size() * 4), d_boff(boff.size() * 8);
  d_q.upload(q);
  d_k.upload(k);
  d_v.upload(v);
  d_dout.upload(dout);
  d_bias.upload(bias);
  CUDA_OK(cudaMemcpy(d_table.ptr, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_cuq.ptr, cuq.data(), cuq.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_cuk.ptr, cuk.data(), cuk.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_boff.ptr, boff.data(), boff.size() * 8, cudaMemcpyHostToDevice));
  d_out.poison();
  d_lse.poison();

  FlashBiasBwdParams p;
  p.B = B;
  p.H = H;
  p.Nq = Nq;
  p.Nk = Nk;
  p.D = D;
  p.scale = scale;
  p.dtype = dt;
  p.q = d_q.ptr;
  p.q_stride = q.bnhd();
  p.k = d_k.ptr;
  p.k_stride = k.bnhd();
  p.v = d_v.ptr;
  p.v_stride = v.bnhd();
  p.out = d_out.ptr;
  p.out_stride = out.bnhd();
  p.lse = d_lse.ptr;
  p.cu_seqlens_q = static_cast<const int32_t*>(d_cuq.ptr);
  p.cu_seqlens_k = static_cast<const int32_t*>(d_cuk.ptr);
  if (c.bias) {
    p.bias = d_bias.ptr;
    p.bias_dtype = bdt;
    p.bias_seq_offsets = static_cast<const int64_t*>(d_boff.ptr);
  }
  if (has_rel) {
    p.relpos_table = d_table.ptr;
    p.relpos_clip = R;
  }
  p.causal = c.causal;
  pf::kernels::cuda::flash_bias_forward(p, nullptr);
  CUDA_OK(cudaDeviceSynchronize());

  p.dout = d_dout.ptr;
  p.dout_stride = dout.bnhd();
  if (c.grads & kDq) {
    p.dq = d_dq.ptr;
    p.dq_stride = dq.bnhd();
  }
  if (c.grads & kDk) {
    p.dk = d_dk.ptr;
    p.dk_stride = dk.bnhd();
  }
  if (c.grads & kDv) {
    p.dv = d_dv.ptr;
    p.dv_stride = dv.bnhd();
  }
  if (want_db) p.dbias = d_dbias.ptr;
  if (want_dt) p.drelpos_table = d_dtable.ptr;
  p.dbias_accumulate = c.accumulate;
  p.deterministic = c.deterministic;
  DeviceBuffer d_ws(pf::kernels::cuda::flash_bias_backward_workspace_bytes(p));
  auto run_backward = [&]() {
    d_dq.poison();
    d_dk.poison();
    d_dv.poison();
    d_ws.poison();
    if (c.accumulate) {
      d_dbias.upload(dbias0);
      CUDA_OK(cudaMemcpy(d_dtable.ptr, dtable0.data(), dtable0.size() * 4, cudaMemcpyHostToDevice));
    } else {
      d_dbias.poison();
      d_dtable.poison();
    }
    pf::kernels::cuda::flash_bias_backward(p, d_ws.ptr, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
  };
  struct Got {
    HostTensor dq, dk, dv, db;
    std::vector<float> dt;
  };
  auto fetch = [&]() {
    Got g{dq, dk, dv, dbias0, std::vector<float>(table.size())};
    d_dq.download(g.dq);
    d_dk.download(g.dk);
    d_dv.download(g.dv);
    d_dbias.download(g.db);
    EXPECT_EQ(cudaMemcpy(g.dt.data(), d_dtable.ptr, g.dt.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return g;
  };
  run_backward();
  const Got g1 = fetch();
  run_backward();  // the same inputs again: bitwise equal when deterministic, and within tolerance always
  const Got g2 = fetch();
  if (c.deterministic) {
    if (c.grads & kDq) EXPECT_EQ(g1.dq.bytes, g2.dq.bytes) << "dq differs between two deterministic runs";
    if (c.grads & kDk) EXPECT_EQ(g1.dk.bytes, g2.dk.bytes) << "dk differs between two deterministic runs";
    if (c.grads & kDv) EXPECT_EQ(g1.dv.bytes, g2.dv.bytes) << "dv differs between two deterministic runs";
    if (want_db) EXPECT_EQ(g1.db.bytes, g2.db.bytes) << "dbias differs between two deterministic runs";
    if (want_dt) EXPECT_EQ(0, std::memcmp(g1.dt.data(), g2.dt.data(), g1.dt.size() * 4)) << "dtable differs";
  }
  HostTensor out_h = out;
  d_out.download(out_h);
  std::vector<float> lse_h(size_t(H) * Tq);
  if (Tq > 0) CUDA_OK(cudaMemcpy(lse_h.data(), d_lse.ptr, lse_h.size() * 4, cudaMemcpyDeviceToHost));

  // references: every sequence alone (float64 dense reference; naive yardstick for fp16 / bf16)
  const bool low = dt != ScalarType::F32;
  const std::vector<double> qd = q.dense(), kd = k.dense(), vd = v.dense(), dod = dout.dense(),
                            bd = bias.dense();
  std::vector<double> r_out(qd.size(), 0), r_dq(qd.size(), 0), r_dk(kd.size(), 0), r_dv(vd.size(), 0);
  std::vector<double> r_lse(lse_h.size(), -INFINITY), r_db = dbias0.dense(),
                                                      r_dt(dtable0.begin(), dtable0.end());
  std::vector<double> n_out(qd.size(), 0), n_dq(qd.size(), 0), n_dk(kd.size(), 0), n_dv(vd.size(), 0);
  std::vector<double> n_db = r_db, n_dt = r_dt;
  if (!c.accumulate) {
    std::fill(r_db.begin(), r_db.end(), 0.0);
    std::fill(n_db.begin(), n_db.end(), 0.0);
  }
  std::vector<double> n_dt_sum(table.size(), 0.0);
  for (int b = 0; b < B; ++b) {
    const int nq = lq[b], nk = lk[b];
    if (nq == 0 || nk == 0) continue;  // zeros (and lse = −inf) as initialised
    const int64_t q0 = cuq[b], k0 = cuk[b];
    Dense in;  // this sequence alone, (1,n,H,D), with its bias block (+ table) as a full (1,H,nq,nk) bias
    in.q.assign(qd.begin() + q0 * H * D, qd.begin() + (q0 + nq) * H * D);
    in.dout.assign(dod.begin() + q0 * H * D, dod.begin() + (q0 + nq) * H * D);
    in.k.assign(kd.begin() + k0 * H * D, kd.begin() + (k0 + nk) * H * D);
    in.v.assign(vd.begin() + k0 * H * D, vd.begin() + (k0 + nk) * H * D);
    const bool any_bias = c.bias || has_rel;
    in.bias.assign(any_bias ? size_t(H) * nq * nk : 0, 0.0);
    for (int h = 0; h < H && any_bias; ++h)
      for (int i = 0; i < nq; ++i)
        for (int j = 0; j < nk; ++j) {
          double x = c.bias ? bd[boff[b] + (int64_t(h) * nq + i) * nk + j] : 0.0;
          if (has_rel) x += table[size_t(h) * nbins + std::clamp(j - i, -R, R) + R];
          in.bias[(size_t(h) * nq + i) * nk + j] = x;
        }
    std::vector<double> o(in.q.size()), l(size_t(H) * nq), gq(in.q.size()), gk(in.k.size()), gv(in.v.size());
    std::vector<double> ds(in.bias.size());
    FlashBiasBwdParams r;
    r.B = 1;
    r.H = H;
    r.Nq = nq;
    r.Nk = nk;
    r.D = D;
    r.scale = scale;
    r.dtype = ScalarType::F64;
    r.q = in.q.data();
    r.q_stride = pf::kernels::contiguous_bnhd(nq, H, D);
    r.k = in.k.data();
    r.k_stride = pf::kernels::contiguous_bnhd(nk, H, D);
    r.v = in.v.data();
    r.v_stride = r.k_stride;
    r.out = o.data();
    r.out_stride = r.q_stride;
    r.lse = l.data();
    if (any_bias) {
      r.bias = in.bias.data();
      r.bias_dtype = ScalarType::F64;
      r.bias_batch_stride = 0;
      r.bias_head_stride = int64_t(nq) * nk;
      r.bias_row_stride = nk;
    }
    r.causal = c.causal;
    pf::kernels::cpu::flash_bias_forward(r);
    r.dout = in.dout.data();
    r.dout_stride = r.q_stride;
    r.dq = gq.data();
    r.dq_stride = r.q_stride;
    r.dk = gk.data();
    r.dk_stride = r.k_stride;
    r.dv = gv.data();
    r.dv_stride = r.k_stride;
    if (any_bias) {
      r.dbias = ds.data();
      r.dbias_head_stride = int64_t(nq) * nk;
      r.dbias_row_stride = nk;
    }
    pf::kernels::cpu::flash_bias_backward(r);
    std::copy(o.begin(), o.end(), r_out.begin() + q0 * H * D);
    std::copy(gq.begin(), gq.end(), r_dq.begin() + q0 * H * D);
    std::copy(gk.begin(), gk.end(), r_dk.begin() + k0 * H * D);
    std::copy(gv.begin(), gv.end(), r_dv.begin() + k0 * H * D);
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < nq; ++i) r_lse[size_t(h) * Tq + q0 + i] = l[size_t(h) * nq + i];
    // dS -> the packed dB block and dT
    auto reduce = [&](const std::vector<double>& s, std::vector<double>& db, std::vector<double>& dtab) {
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < nq; ++i)
          for (int j = 0; j < nk; ++j) {
            const double x = s[(size_t(h) * nq + i) * nk + j];
            if (c.bias) db[boff[b] + (int64_t(h) * nq + i) * nk + j] += x;
            if (has_rel) dtab[size_t(h) * nbins + std::clamp(j - i, -R, R) + R] += x;
          }
    };
    reduce(ds, r_db, r_dt);
    if (low) {
      Case cn;
      cn.B = 1;
      cn.H = H;
      cn.Nq = nq;
      cn.Nk = nk;
      cn.D = D;
      cn.bias = any_bias ? BiasForm::kFull : BiasForm::kNone;
      cn.causal = c.causal;
      std::vector<double> no(in.q.size()), nq_(in.q.size()), nk_(in.k.size()), nv(in.v.size()),
          nds(size_t(nq) * nk);
      std::vector<double> nds_all(size_t(H) * nq * nk);
      for (int h = 0; h < H; ++h) {
        naive_one_head(cn, scale, dt, in, {}, 0, h, no, nq_, nk_, nv, nds);
        std::copy(nds.begin(), nds.end(), nds_all.begin() + size_t(h) * nq * nk);
      }
      std::copy(no.begin(), no.end(), n_out.begin() + q0 * H * D);
      std::copy(nq_.begin(), nq_.end(), n_dq.begin() + q0 * H * D);
      std::copy(nk_.begin(), nk_.end(), n_dk.begin() + k0 * H * D);
      std::copy(nv.begin(), nv.end(), n_dv.begin() + k0 * H * D);
      std::vector<double> nb(n_db.size(), 0.0);
      reduce(nds_all, nb, n_dt_sum);
      for (int64_t e = boff[b]; e < boff[b + 1]; ++e) n_db[e] = rd(bdt, n_db[e] + nb[e]);
    }
  }
  for (size_t e = 0; e < n_dt.size(); ++e) n_dt[e] = rd(ScalarType::F32, n_dt[e] + n_dt_sum[e]);

  const double dv_scale = std::max(norm(r_dv), 1e-30);
  auto check = [&](const std::string& name, const std::vector<double>& got, const std::vector<double>& ref,
                   const std::vector<double>* naive, ScalarType out_dt, double zero_scale = 0,
                   double extra_abs = 0) {
    const size_t nans = count_nan(got);
    EXPECT_EQ(nans, 0u) << name << ": " << nans << " NaN (unwritten or poisoned) elements";
    const double err = rel_err(got, ref, zero_scale);
    double nerr = 0, tol = std::max(1e-5, unit_roundoff(out_dt));
    if (naive) {
      nerr = rel_err(*naive, ref, zero_scale);
      tol = std::max(2.0 * nerr, unit_roundoff(out_dt));
    }
    if (extra_abs > 0) tol += extra_abs / rel_scale(ref, zero_scale);
    EXPECT_LE(err, tol) << name << ": relative error " << err << " (naive " << dtype_tag(dt) << " error "
                        << nerr << ")";
    std::printf("    %-9s err %.3e  tol %.3e\n", name.c_str(), err, tol);
  };
  std::printf("  %s\n", varlen_name(c).c_str());
  if (Tq > 0) {
    check("out", out_h.dense(), r_out, low ? &n_out : nullptr, dt);
    std::vector<double> got, ref;
    size_t inf_mismatch = 0;
    for (size_t i = 0; i < lse_h.size(); ++i) {
      if (std::isinf(r_lse[i]))
        inf_mismatch += !(std::isinf(lse_h[i]) && lse_h[i] < 0);
      else {
        got.push_back(lse_h[i]);
        ref.push_back(r_lse[i]);
      }
    }
    EXPECT_EQ(inf_mismatch, 0u) << "lse: rows with no key must have lse = -inf";
    if (!got.empty()) check("lse", got, ref, nullptr, ScalarType::F32);
  }
  for (const Got* g : {&g1, &g2}) {
    const std::string run = g == &g1 ? "" : "(2)";
    if ((c.grads & kDq) && Tq > 0)
      check("dq" + run, g->dq.dense(), r_dq, low ? &n_dq : nullptr, dt, dv_scale);
    if ((c.grads & kDk) && Tk > 0)
      check("dk" + run, g->dk.dense(), r_dk, low ? &n_dk : nullptr, dt, dv_scale);
    if ((c.grads & kDv) && Tk > 0)
      check("dv" + run, g->dv.dense(), r_dv, low ? &n_dv : nullptr, dt, dv_scale);
    if (want_db && boff[B] > 0)
      check("dbias" + run, g->db.dense(), r_db, low ? &n_db : nullptr, bdt, c.accumulate ? 0.0 : dv_scale);
    if (want_dt)
      check("dtable" + run, std::vector<double>(g->dt.begin(), g->dt.end()), r_dt, low ? &n_dt : nullptr, dt,
            c.accumulate ? 0.0 : dv_scale,
            Tq > 0 ? stored_output_residue(dod, out_h.dense(), r_out, D) : 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, FlashBiasCudaVarlen, ::testing::ValuesIn(varlen_cases()),
                         [](const ::testing::TestParamInfo<VarlenCase>& info) {
                           return varlen_name(info.param);
                         });

// ---- argument checks (no device needed: they fail before any CUDA call) -----------------------

FlashBiasBwdParams valid_params() {
  FlashBiasBwdParams p;
  p.B = 2;
  p.H = 2;
  p.Nq = 17;
  p.Nk = 17;
  p.D = 64;
  p.scale = 0.125f;
  p.dtype = ScalarType::F16;
  void* fake = reinterpret_cast<void*>(uintptr_t(1) << 20);  // aligned, never dereferenced
  p.q = p.k = p.v = fake;
  p.out = p.lse = fake;
  p.q_stride = p.k_stride = p.v_stride = p.out_stride = pf::kernels::contiguous_bnhd(17, 2, 64);
  p.dout = fake;
  p.dout_stride = p.q_stride;
  return p;
}

TEST(FlashBiasCudaArgs, RejectsUnsupportedHeadDim) {
  FlashBiasBwdParams p = valid_params();
  p.D = 48;
  p.q_stride = p.k_stride = p.v_stride = p.out_stride = pf::kernels::contiguous_bnhd(17, 2, 48);
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("D=48"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16, 32, 64, 128"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsFloat64) {
  FlashBiasBwdParams p = valid_params();
  p.dtype = ScalarType::F64;
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("float64"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsMisalignedStrides) {
  FlashBiasBwdParams p = valid_params();
  p.k_stride.row = 2 * 64 + 4;  // 4 halves = 8 bytes: not a 16-byte multiple
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("k strides"), std::string::npos) << msg;
  EXPECT_NE(msg.find("multiples of 8"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsMisalignedPointer) {
  FlashBiasBwdParams p = valid_params();
  p.v = static_cast<const char*>(p.v) + 2;
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("v must be 16-byte aligned"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsDbiasWithoutBias) {
  FlashBiasBwdParams p = valid_params();
  p.dbias = reinterpret_cast<void*>(uintptr_t(1) << 20);
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_backward(p, nullptr, nullptr); });
  EXPECT_NE(msg.find("no bias"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsMissingWorkspace) {
  FlashBiasBwdParams p = valid_params();
  p.dq = reinterpret_cast<void*>(uintptr_t(1) << 20);
  p.dq_stride = p.q_stride;
  ASSERT_GT(pf::kernels::cuda::flash_bias_backward_workspace_bytes(p), 0u);
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_backward(p, nullptr, nullptr); });
  EXPECT_NE(msg.find("workspace"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsFloat64Bias) {
  FlashBiasBwdParams p = valid_params();
  p.bias = reinterpret_cast<void*>(uintptr_t(1) << 20);
  p.bias_dtype = ScalarType::F64;
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("bias dtype float64"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsKeyPaddingMaskWhenPacked) {
  FlashBiasBwdParams p = valid_params();
  const int32_t* fake_seqlens = reinterpret_cast<const int32_t*>(uintptr_t(1) << 20);
  p.cu_seqlens_q = p.cu_seqlens_k = fake_seqlens;
  p.key_padding_mask = reinterpret_cast<const uint8_t*>(uintptr_t(1) << 20);
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("key_padding_mask is not supported with a packed batch"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsHalfPackedBatch) {
  FlashBiasBwdParams p = valid_params();
  p.cu_seqlens_q = reinterpret_cast<const int32_t*>(uintptr_t(1) << 20);
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("needs both cu_seqlens_q and cu_seqlens_k"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsPackedBiasWithoutOffsets) {
  FlashBiasBwdParams p = valid_params();
  p.cu_seqlens_q = p.cu_seqlens_k = reinterpret_cast<const int32_t*>(uintptr_t(1) << 20);
  p.bias = reinterpret_cast<void*>(uintptr_t(1) << 20);
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("bias_seq_offsets"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsFloat64RelposTable) {
  FlashBiasBwdParams p = valid_params();
  p.relpos_table = reinterpret_cast<void*>(uintptr_t(1) << 20);
  p.relpos_dtype = ScalarType::F64;
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("relpos_table dtype float64"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsNegativeRelposClip) {
  FlashBiasBwdParams p = valid_params();
  p.relpos_table = reinterpret_cast<void*>(uintptr_t(1) << 20);
  p.relpos_clip = -1;
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); });
  EXPECT_NE(msg.find("relpos_clip R must be in [0, 2^29], got -1"), std::string::npos) << msg;
}

TEST(FlashBiasCudaArgs, RejectsDrelposWithoutTable) {
  FlashBiasBwdParams p = valid_params();
  p.drelpos_table = reinterpret_cast<void*>(uintptr_t(1) << 20);
  const std::string msg = error_of([&] { pf::kernels::cuda::flash_bias_backward(p, nullptr, nullptr); });
  EXPECT_NE(msg.find("no relpos_table"), std::string::npos) << msg;
}

// The deterministic dT needs one workspace row per (b, h, key block); the atomic one none.
TEST(FlashBiasCudaArgs, RelposWorkspace) {
  FlashBiasBwdParams p = valid_params();
  p.relpos_table = reinterpret_cast<void*>(uintptr_t(1) << 20);
  p.relpos_clip = 3;
  const size_t base = pf::kernels::cuda::flash_bias_backward_workspace_bytes(p);
  p.drelpos_table = reinterpret_cast<void*>(uintptr_t(1) << 20);
  EXPECT_EQ(pf::kernels::cuda::flash_bias_backward_workspace_bytes(p), base);
  p.deterministic = true;
  const size_t det_base = [&] {
    FlashBiasBwdParams r = p;
    r.drelpos_table = nullptr;
    return pf::kernels::cuda::flash_bias_backward_workspace_bytes(r);
  }();
  // B·H·ceil(Nk/64) rows of min(2R+1, 64·ceil(Nq/64) + 63) = 7 floats, rounded up to 256 bytes
  EXPECT_EQ(pf::kernels::cuda::flash_bias_backward_workspace_bytes(p), det_base + 256);
}

}  // namespace
