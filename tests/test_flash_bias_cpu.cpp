// Tests of the CPU flash-bias kernel (kernels/cpu/flash_bias.h) against the plain, materialised
// float64 reference (kernels/cpu/flash_bias_reference.h), and of its gradients by central
// differences. The fused relative-position table is checked against the same reference with the
// bias T[h, clip(j−i)+R] materialised and dT reduced from dB over the diagonals; packed (varlen) batches against each sequence run alone
// through the dense path.
//
// Every case draws fresh random inputs, poisons every output buffer with NaN before each run,
// and compares by ‖x − ref‖ / ‖ref‖ over the logical elements. Tolerances:
// - float64: 1e-12. Unit roundoff 1.1e-16; each output is a chain of dot products of length
//   D ≤ 128 and sums over Nk ≤ 257 keys, plus exp/log: ~1e-14 at worst; measured ≤ 1e-15.
// - float32: 1e-5. Unit roundoff 6e-8 times the accumulation length: norm-wise errors grow like
//   u·√n to u·n with n ≈ a few hundred (D-long dot products, Nk-long sums), i.e. 1e-6 … 1.5e-5
//   at worst; measured ≤ 6e-7. (Each test prints its worst errors.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/flash_bias.h"
#include "kernels/cpu/flash_bias_reference.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#include "tests/test_util.h"

namespace {

using pf::kernels::BNHDStrides;
using pf::kernels::FlashBiasBwdParams;
using pf::kernels::FlashBiasParams;
using pf::kernels::ScalarType;
using pf::kernels::cpu::flash_bias_backward;
using pf::kernels::cpu::flash_bias_forward;
using pf::kernels::cpu::flash_bias_reference;
using pf::kernels::cpu::FlashBiasReferenceInputs;
using pf::kernels::cpu::FlashBiasReferenceOutputs;
using pf::testing_util::expect_error;
using pf::testing_util::rel_error;

std::mt19937_64& rng() {
  static std::mt19937_64 g(std::random_device{}());
  return g;
}
std::vector<double> randn(size_t n, double sd = 1.0) {
  std::normal_distribution<double> d(0.0, sd);
  std::vector<double> x(n);
  for (auto& e : x) e = d(rng());
  return x;
}

enum class BiasForm { None, BH, OneH, BOne, OneOne };
const char* bias_name(BiasForm f) {
  switch (f) {
    case BiasForm::None: return "none";
    case BiasForm::BH: return "(B,H)";
    case BiasForm::OneH: return "(1,H)";
    case BiasForm::BOne: return "(B,1)";
    case BiasForm::OneOne: return "(1,1)";
  }
  return "?";
}
bool bias_has_b(BiasForm f) { return f == BiasForm::BH || f == BiasForm::BOne; }
bool bias_has_h(BiasForm f) { return f == BiasForm::BH || f == BiasForm::OneH; }

// Contiguous: plain (B,N,H,D). Padded: gaps between heads, rows and batches. Packed: q, k, v as
// slices of one (B,N,3,H,D) buffer (needs Nq == Nk).
enum class Layout { Contiguous, Padded, Packed };

struct Case {
  int B, H, Nq, Nk, D;
  BiasForm bias;
  bool mask, causal;
  Layout layout;
  int R = -1;  // relative-position table (H, 2R+1) with clip R; -1 = none
  std::string str() const {
    return "B=" + std::to_string(B) + " H=" + std::to_string(H) + " Nq=" + std::to_string(Nq) +
           " Nk=" + std::to_string(Nk) + " D=" + std::to_string(D) + " bias=" + bias_name(bias) +
           (mask ? " mask" : "") + (causal ? " causal" : "") +
           (layout == Layout::Padded   ? " padded"
            : layout == Layout::Packed ? " packed"
                                       : "") +
           (R >= 0 ? " relpos R=" + std::to_string(R) : "");
  }
};

// ---- the float64 reference (kernels/cpu/flash_bias_reference.h) ----------------------------

// The reference's inputs, contiguous float64, with the case they were drawn for.
struct Inputs : FlashBiasReferenceInputs {
  Case c;
  int Bb() const { return bias_has_b(c.bias) ? c.B : 1; }
  int Hb() const { return bias_has_h(c.bias) ? c.H : 1; }
};

// ---- the kernel's buffers ---------------------------------------------------------------

// A (B,N,H,D) tensor inside a (possibly larger, possibly shared) buffer.
template <class T>
struct View {
  T* base = nullptr;
  BNHDStrides st;
  int B = 0, N = 0, H = 0, D = 0;
  T& at(int b, int n, int h, int d) const { return base[b * st.batch + n * st.row + h * st.head + d]; }
  // the logical elements as contiguous float64 (B,N,H,D)
  std::vector<double> values() const {
    std::vector<double> x;
    x.reserve(size_t(B) * N * H * D);
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < N; ++n)
        for (int h = 0; h < H; ++h)
          for (int d = 0; d < D; ++d) x.push_back(double(at(b, n, h, d)));
    return x;
  }
  void fill(const std::vector<double>& x) const {
    size_t t = 0;
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < N; ++n)
        for (int h = 0; h < H; ++h)
          for (int d = 0; d < D; ++d) at(b, n, h, d) = T(x[t++]);
  }
};

// Buffer holding one (B,N,H,D) tensor (or three, packed) in the requested layout.
template <class T>
struct Storage {
  std::vector<T> buf;
  std::vector<View<T>> views;
  Storage(Layout layout, int count, int B, int N, int H, int D) {
    const T nan = std::numeric_limits<T>::quiet_NaN();
    if (layout == Layout::Packed) {  // (B,N,count,H,D)
      const BNHDStrides st{int64_t(N) * count * H * D, int64_t(count) * H * D, D};
      buf.assign(size_t(B) * N * count * H * D, nan);
      for (int t = 0; t < count; ++t) views.push_back({buf.data() + t * H * D, st, B, N, H, D});
      return;
    }
    BNHDStrides st = pf::kernels::contiguous_bnhd(N, H, D);
    if (layout == Layout::Padded) {  // gaps of 3 between heads, 5 between rows, 7 between batches
      st.head = D + 3;
      st.row = H * st.head + 5;
      st.batch = N * st.row + 7;
    }
    const size_t one = size_t(B) * st.batch;
    buf.assign(one * count, nan);
    for (int t = 0; t < count; ++t) views.push_back({buf.data() + t * one, st, B, N, H, D});
  }
  void poison() { std::fill(buf.begin(), buf.end(), std::numeric_limits<T>::quiet_NaN()); }
  // Elements outside every view must still hold the NaN poison (nothing wrote past a tensor).
  bool padding_untouched() const {
    std::vector<char> logical(buf.size(), 0);
    for (const auto& v : views)
      for (int b = 0; b < v.B; ++b)
        for (int n = 0; n < v.N; ++n)
          for (int h = 0; h < v.H; ++h)
            for (int d = 0; d < v.D; ++d) logical[&v.at(b, n, h, d) - buf.data()] = 1;
    for (size_t i = 0; i < buf.size(); ++i)
      if (!logical[i] && !std::isnan(buf[i])) return false;
    return true;
  }
};

template <class T>
constexpr ScalarType dtype_of() {
  return std::is_same_v<T, double> ? ScalarType::F64 : ScalarType::F32;
}

// ‖x − ref‖ / ‖scale‖: for a sum of many terms that may cancel (dT: a bin whose terms sum to 0 in
// exact arithmetic, e.g. R = 0 gives Σ_ij dS_ij = 0 per row), rounding errors are relative to the
// sum of the terms' magnitudes, not to the sum itself. A wrong bin is still off by O(‖scale‖).
double err_vs_scale(const std::vector<double>& x, const std::vector<double>& ref,
                    const std::vector<double>& scale) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - ref[i]) * (x[i] - ref[i]);
    den += scale[i] * scale[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

// The size lse's rounding errors are relative to, per row (b, h, i): |lse| plus the largest
// magnitude a logit's terms reach, max_j (scale·Σ_d |q_id k_jd| + |bias_ij| + max |T_h|). A logit
// whose terms cancel (a single key with q·k ≈ 0 makes lse ≈ 0) still carries the dot product's
// rounding, relative to Σ_d |q_id k_jd|, not to the lse itself.
std::vector<double> lse_scale(const FlashBiasReferenceInputs& in, const std::vector<double>& lse_ref) {
  std::vector<double> scale(lse_ref.size());
  for (int b = 0; b < in.B; ++b)
    for (int h = 0; h < in.H; ++h) {
      double table_max = 0;
      if (in.relpos_clip >= 0)
        for (int r = 0; r <= 2 * in.relpos_clip; ++r)
          table_max = std::max(table_max, std::abs(in.table[size_t(h) * (2 * in.relpos_clip + 1) + r]));
      for (int i = 0; i < in.Nq; ++i) {
        double m = 0;
        for (int j = 0; j < in.Nk; ++j) {
          double dot = 0;
          for (int d = 0; d < in.D; ++d)
            dot += std::abs(in.q[((size_t(b) * in.Nq + i) * in.H + h) * in.D + d] *
                            in.k[((size_t(b) * in.Nk + j) * in.H + h) * in.D + d]);
          double bias = 0;
          if (!in.bias.empty()) {
            const size_t bb = in.bias_per_batch ? b : 0, hb = in.bias_per_head ? h : 0;
            const size_t hn = in.bias_per_head ? in.H : 1;
            bias = std::abs(in.bias[((bb * hn + hb) * in.Nq + i) * in.Nk + j]);
          }
          m = std::max(m, in.scale * dot + bias);
        }
        const size_t row = (size_t(b) * in.H + h) * in.Nq + i;
        scale[row] = std::abs(lse_ref[row]) + m + table_max;
      }
    }
  return scale;
}

template <class T>
double tol() {
  return std::is_same_v<T, double> ? 1e-12 : 1e-5;  // see the top of the file
}

// The worst error seen per quantity, printed at the end of a test to show the margin.
std::vector<std::pair<std::string, double>> g_worst;
void expect_close(const std::string& what, double err, double tolerance) {
  EXPECT_LE(err, tolerance) << what;
  for (auto& [name, worst] : g_worst)
    if (name == what) return void(worst = std::max(worst, err));
  g_worst.emplace_back(what, err);
}
void print_worst(const char* dtype) {
  std::printf("worst relative errors (%s):", dtype);
  for (const auto& [name, worst] : g_worst) std::printf(" %s %.2g", name.c_str(), worst);
  std::printf("\n");
  g_worst.clear();
}

// A whole problem: inputs in the kernel's types and layouts, output buffers, the params.
template <class T>
struct Problem {
  Inputs in;
  Storage<T> qkv_packed, q, k, v, out, dout, dq, dk, dv;
  std::vector<T> bias, dbias, lse, table, dtable;
  std::vector<uint8_t> mask;
  View<T> Q, K, V;

  explicit Problem(const Case& c)
      : qkv_packed(Layout::Packed, 3, c.B, c.Nq, c.H, c.D),
        q(c.layout, 1, c.B, c.Nq, c.H, c.D),
        k(c.layout, 1, c.B, c.Nk, c.H, c.D),
        v(c.layout, 1, c.B, c.Nk, c.H, c.D),
        out(c.layout, 1, c.B, c.Nq, c.H, c.D),
        dout(c.layout, 1, c.B, c.Nq, c.H, c.D),
        dq(c.layout, 1, c.B, c.Nq, c.H, c.D),
        dk(c.layout, 1, c.B, c.Nk, c.H, c.D),
        dv(c.layout, 1, c.B, c.Nk, c.H, c.D) {
    in.c = c;
    in.B = c.B, in.H = c.H, in.Nq = c.Nq, in.Nk = c.Nk, in.D = c.D;
    in.scale = T(1.0 / std::sqrt(double(c.D)));  // the kernel narrows the scale to T
    in.causal = c.causal;
    in.bias_per_batch = bias_has_b(c.bias), in.bias_per_head = bias_has_h(c.bias);
    in.relpos_clip = c.R;
    const bool packed = c.layout == Layout::Packed;
    if (packed) EXPECT_EQ(c.Nq, c.Nk) << "a packed qkv buffer needs Nq == Nk";
    Q = packed ? qkv_packed.views[0] : q.views[0];
    K = packed ? qkv_packed.views[1] : k.views[0];
    V = packed ? qkv_packed.views[2] : v.views[0];
    // Round the random draws to T so the reference sees exactly what the kernel sees.
    Q.fill(randn(size_t(c.B) * c.Nq * c.H * c.D));
    K.fill(randn(size_t(c.B) * c.Nk * c.H * c.D));
    V.fill(randn(size_t(c.B) * c.Nk * c.H * c.D));
    dout.views[0].fill(randn(size_t(c.B) * c.Nq * c.H * c.D));
    in.q = Q.values();
    in.k = K.values();
    in.v = V.values();
    in.dout = dout.views[0].values();
    if (c.bias != BiasForm::None) {
      for (double x : randn(size_t(in.Bb()) * in.Hb() * c.Nq * c.Nk, 2.0)) bias.push_back(T(x));
      in.bias.assign(bias.begin(), bias.end());
      dbias.assign(bias.size(), std::numeric_limits<T>::quiet_NaN());
    }
    if (c.mask) {  // about a quarter of the keys padded; every key of the last batch padded
      std::bernoulli_distribution pad(0.25);
      mask.resize(size_t(c.B) * c.Nk);
      for (int b = 0; b < c.B; ++b)
        for (int j = 0; j < c.Nk; ++j) mask[size_t(b) * c.Nk + j] = b == c.B - 1 || pad(rng());
      in.mask = mask;
    }
    if (c.R >= 0) {
      for (double x : randn(size_t(c.H) * (2 * c.R + 1), 2.0)) table.push_back(T(x));
      in.table.assign(table.begin(), table.end());
      dtable.assign(table.size(), std::numeric_limits<T>::quiet_NaN());
    }
    lse.assign(size_t(c.B) * c.H * c.Nq, std::numeric_limits<T>::quiet_NaN());
  }

  FlashBiasBwdParams params() {
    const Case& c = in.c;
    FlashBiasBwdParams p;
    p.B = c.B, p.H = c.H, p.Nq = c.Nq, p.Nk = c.Nk, p.D = c.D;
    p.scale = in.scale;
    p.dtype = dtype_of<T>();
    p.q = Q.base, p.q_stride = Q.st;
    p.k = K.base, p.k_stride = K.st;
    p.v = V.base, p.v_stride = V.st;
    p.out = out.views[0].base, p.out_stride = out.views[0].st;
    p.lse = lse.data();
    if (c.bias != BiasForm::None) {
      p.bias = bias.data();
      p.bias_dtype = dtype_of<T>();
      p.bias_row_stride = c.Nk;
      p.bias_head_stride = bias_has_h(c.bias) ? int64_t(c.Nq) * c.Nk : 0;
      p.bias_batch_stride = bias_has_b(c.bias) ? int64_t(in.Hb()) * c.Nq * c.Nk : 0;
      p.dbias = dbias.data();
      p.dbias_row_stride = p.bias_row_stride;
      p.dbias_head_stride = p.bias_head_stride;
      p.dbias_batch_stride = p.bias_batch_stride;
    }
    if (c.R >= 0) {
      p.relpos_table = table.data();
      p.relpos_dtype = dtype_of<T>();
      p.relpos_clip = c.R;
      p.drelpos_table = dtable.data();
    }
    p.key_padding_mask = c.mask ? mask.data() : nullptr;
    p.causal = c.causal;
    p.dout = dout.views[0].base, p.dout_stride = dout.views[0].st;
    p.dq = dq.views[0].base, p.dq_stride = dq.views[0].st;
    p.dk = dk.views[0].base, p.dk_stride = dk.views[0].st;
    p.dv = dv.views[0].base, p.dv_stride = dv.views[0].st;
    p.deterministic = true;
    return p;
  }

  void poison_grads() {
    dq.poison(), dk.poison(), dv.poison();
    std::fill(dbias.begin(), dbias.end(), std::numeric_limits<T>::quiet_NaN());
    std::fill(dtable.begin(), dtable.end(), std::numeric_limits<T>::quiet_NaN());
  }
  std::vector<double> dbias_values() const { return {dbias.begin(), dbias.end()}; }
  std::vector<double> dtable_values() const { return {dtable.begin(), dtable.end()}; }
};

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  // empty vectors may hold null data(), which memcmp must not be given (UB even for 0 bytes)
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// The full check of one case in one dtype.
template <class T>
void run_case(const Case& c) {
  SCOPED_TRACE(c.str() + (std::is_same_v<T, double> ? " float64" : " float32"));
  Problem<T> pr(c);
  const FlashBiasReferenceOutputs ref = flash_bias_reference(pr.in);
  FlashBiasBwdParams p = pr.params();

  // forward
  flash_bias_forward(p);
  expect_close("out", rel_error(pr.out.views[0].values(), ref.out), tol<T>());
  std::vector<double> lse(pr.lse.begin(), pr.lse.end()), lse_ref = ref.lse;
  for (size_t i = 0; i < lse.size(); ++i) {  // a fully masked row has lse = −inf exactly
    ASSERT_EQ(std::isinf(lse_ref[i]), std::isinf(lse[i])) << "lse[" << i << "] = " << lse[i];
    if (std::isinf(lse_ref[i])) {
      EXPECT_LT(lse[i], 0);
      lse[i] = lse_ref[i] = 0;
    }
  }
  expect_close("lse", err_vs_scale(lse, lse_ref, lse_scale(pr.in, lse_ref)), tol<T>());
  EXPECT_TRUE(pr.out.padding_untouched()) << "out written outside its elements";

  // backward
  flash_bias_backward(p);
  expect_close("dq", rel_error(pr.dq.views[0].values(), ref.dq), tol<T>());
  expect_close("dk", rel_error(pr.dk.views[0].values(), ref.dk), tol<T>());
  expect_close("dv", rel_error(pr.dv.views[0].values(), ref.dv), tol<T>());
  if (c.bias != BiasForm::None) expect_close("dbias", rel_error(pr.dbias_values(), ref.dbias), tol<T>());
  if (c.R >= 0) expect_close("dT", err_vs_scale(pr.dtable_values(), ref.dtable, ref.dtable_abs), tol<T>());
  EXPECT_TRUE(pr.dq.padding_untouched() && pr.dk.padding_untouched() && pr.dv.padding_untouched())
      << "a gradient was written outside its elements";

  // Fully masked rows: out exactly 0; keys nobody sees: dk, dv exactly 0.
  if (c.mask) {
    const int b = c.B - 1;  // every key of the last batch is padded
    for (int n = 0; n < c.Nq; ++n)
      for (int h = 0; h < c.H; ++h)
        for (int d = 0; d < c.D; ++d) {
          ASSERT_EQ(pr.out.views[0].at(b, n, h, d), T(0));
          ASSERT_EQ(pr.dq.views[0].at(b, n, h, d), T(0));
        }
    for (int n = 0; n < c.Nk; ++n)
      for (int h = 0; h < c.H; ++h)
        for (int d = 0; d < c.D; ++d) {
          ASSERT_EQ(pr.dk.views[0].at(b, n, h, d), T(0));
          ASSERT_EQ(pr.dv.views[0].at(b, n, h, d), T(0));
        }
  }

  // The backward again, from poison: bitwise identical.
  const auto dq1 = pr.dq.buf, dk1 = pr.dk.buf, dv1 = pr.dv.buf, db1 = pr.dbias, dt1 = pr.dtable;
  pr.poison_grads();
  flash_bias_backward(p);
  EXPECT_TRUE(bitwise_equal(dq1, pr.dq.buf) && bitwise_equal(dk1, pr.dk.buf) &&
              bitwise_equal(dv1, pr.dv.buf) && bitwise_equal(db1, pr.dbias) && bitwise_equal(dt1, pr.dtable))
      << "backward not reproducible";

  // One gradient at a time (the others null): each equals its value from the full run.
  for (int which = 0; which < 5; ++which) {
    if (which == 3 && c.bias == BiasForm::None) continue;
    if (which == 4 && c.R < 0) continue;
    pr.poison_grads();
    FlashBiasBwdParams one = p;
    if (which != 0) one.dq = nullptr;
    if (which != 1) one.dk = nullptr;
    if (which != 2) one.dv = nullptr;
    if (which != 3) one.dbias = nullptr;
    if (which != 4) one.drelpos_table = nullptr;
    flash_bias_backward(one);
    const bool same = which == 0   ? bitwise_equal(dq1, pr.dq.buf)
                      : which == 1 ? bitwise_equal(dk1, pr.dk.buf)
                      : which == 2 ? bitwise_equal(dv1, pr.dv.buf)
                      : which == 3 ? bitwise_equal(db1, pr.dbias)
                                   : bitwise_equal(dt1, pr.dtable);
    EXPECT_TRUE(same) << "gradient " << which << " alone differs from the full run";
    // the unwanted ones were not touched
    if (which != 0) EXPECT_TRUE(std::isnan(pr.dq.views[0].at(0, 0, 0, 0)));
    if (which != 1) EXPECT_TRUE(std::isnan(pr.dk.views[0].at(0, 0, 0, 0)));
    if (which != 2) EXPECT_TRUE(std::isnan(pr.dv.views[0].at(0, 0, 0, 0)));
    if (which != 3 && !pr.dbias.empty()) EXPECT_TRUE(std::isnan(pr.dbias[0]));
    if (which != 4 && !pr.dtable.empty()) EXPECT_TRUE(std::isnan(pr.dtable[0]));
  }

  // dbias_accumulate: added onto existing values R of the gradient's own magnitude.
  if (c.bias != BiasForm::None) {
    double rms = 0;
    for (double x : ref.dbias) rms += x * x;
    rms = std::sqrt(rms / ref.dbias.size());
    if (rms == 0) rms = 1;  // e.g. a single key: dS = P(dP − Δ) vanishes
    std::vector<double> R = randn(ref.dbias.size(), rms), want(R.size());
    for (size_t i = 0; i < R.size(); ++i) {
      pr.dbias[i] = T(R[i]);
      want[i] = double(pr.dbias[i]) + ref.dbias[i];
    }
    FlashBiasBwdParams acc = p;
    acc.dbias_accumulate = true;
    acc.dq = acc.dk = acc.dv = nullptr;
    flash_bias_backward(acc);
    expect_close("dbias accumulate", rel_error(pr.dbias_values(), want), tol<T>());
  }
  // The same for dT (alone: dbias_accumulate also applies to it).
  if (c.R >= 0) {
    double rms = 0;
    for (double x : ref.dtable_abs) rms += x * x;
    rms = rms > 0 ? std::sqrt(rms / ref.dtable.size()) : 1.0;
    std::vector<double> R = randn(ref.dtable.size(), rms), want(R.size()), scale(R.size());
    for (size_t i = 0; i < R.size(); ++i) {
      pr.dtable[i] = T(R[i]);
      want[i] = double(pr.dtable[i]) + ref.dtable[i];
      scale[i] = std::abs(want[i]) + ref.dtable_abs[i];
    }
    FlashBiasBwdParams acc = p;
    acc.dbias_accumulate = true;
    acc.dq = acc.dk = acc.dv = nullptr;
    acc.dbias = nullptr;
    flash_bias_backward(acc);
    expect_close("dT accumulate", err_vs_scale(pr.dtable_values(), want, scale), tol<T>());
  }
}

// Sizes 1, 17, 97, 257; D 16, 64, 128; every bias form, layout, mask and causal alignment.
const std::vector<Case> kCases = {
    {1, 1, 1, 1, 16, BiasForm::None, false, false, Layout::Contiguous},
    {2, 3, 17, 17, 16, BiasForm::BH, false, false, Layout::Contiguous},
    {2, 2, 17, 17, 64, BiasForm::OneH, true, false, Layout::Packed},
    {3, 2, 17, 97, 16, BiasForm::BOne, true, true, Layout::Padded},     // causal, Nq < Nk
    {2, 3, 97, 17, 64, BiasForm::OneOne, false, true, Layout::Padded},  // causal, Nq > Nk
    {2, 2, 97, 97, 16, BiasForm::BH, true, true, Layout::Packed},       // causal, Nq = Nk
    {3, 1, 33, 65, 128, BiasForm::OneOne, true, false, Layout::Padded},
    {4, 2, 1, 17, 16, BiasForm::BH, false, true, Layout::Contiguous},
    {2, 2, 17, 1, 16, BiasForm::OneH, true, true, Layout::Contiguous},  // rows with no key
    {3, 2, 64, 64, 16, BiasForm::BH, true, false, Layout::Packed},      // the demo tile
    {2, 2, 97, 97, 64, BiasForm::None, true, true, Layout::Padded},
    {1, 4, 17, 97, 64, BiasForm::OneOne, false, false, Layout::Contiguous},
    {2, 2, 257, 257, 16, BiasForm::BOne, true, true, Layout::Contiguous},
    // relative position, alone and on top of every dense bias form: R = 0 (one bin), 1, small,
    // ≥ N (the clip never applies), Nq ≠ Nk both ways, causal, masks, odd sizes, every layout
    {2, 3, 17, 17, 16, BiasForm::None, false, false, Layout::Contiguous, 0},
    {1, 1, 1, 1, 16, BiasForm::None, false, false, Layout::Contiguous, 0},
    {2, 2, 17, 97, 16, BiasForm::BH, true, true, Layout::Padded, 1},            // causal, Nq < Nk
    {2, 3, 97, 17, 64, BiasForm::OneOne, false, true, Layout::Padded, 5},       // causal, Nq > Nk
    {1, 2, 33, 65, 16, BiasForm::None, false, false, Layout::Contiguous, 200},  // R ≥ N
    {2, 2, 129, 70, 16, BiasForm::OneH, false, true, Layout::Contiguous, 128},  // R = Nq − 1
    {3, 2, 64, 64, 16, BiasForm::BH, true, false, Layout::Packed, 3},
    {2, 2, 97, 97, 16, BiasForm::None, true, true, Layout::Packed, 7},
    {2, 2, 1, 17, 16, BiasForm::BOne, false, false, Layout::Contiguous, 2},
    {2, 2, 17, 1, 16, BiasForm::None, true, true, Layout::Contiguous, 4},       // rows with no key
    {2, 1, 130, 131, 32, BiasForm::None, false, false, Layout::Contiguous, 9},  // 3 tiles
};

TEST(FlashBiasCpu, MatchesReferenceFloat64) {
  for (const Case& c : kCases) run_case<double>(c);
  print_worst("float64");
}

TEST(FlashBiasCpu, MatchesReferenceFloat32) {
  for (const Case& c : kCases) run_case<float>(c);
  print_worst("float32");
}

// ---- central differences --------------------------------------------------------------------

// L = Σ out ∘ W for a random W: the kernel's dq, dk, dv, dbias (with dout = W) against
// (L(x + h) − L(x − h)) / 2h with h = 1e-4: truncation h²·|L'''|/6 ≈ 1e-9 relative, rounding
// u·|L|/h ≈ 1e-12·|L| (relatively larger where a gradient is small). Over 300 random draws the
// worst relative error was 8e-9 at h = 1e-4 (1.4e-7 at h = 1e-5, 8e-7 at h = 1e-3), so 1e-6
// leaves a wide margin, while a missing or wrong term gives errors of order 1e-3 or more.
constexpr double kGradcheckTol = 1e-6;

void gradcheck(const Case& c) {
  SCOPED_TRACE(c.str());
  Problem<double> pr(c);
  FlashBiasBwdParams p = pr.params();
  flash_bias_forward(p);
  flash_bias_backward(p);
  const auto W = pr.in.dout;  // dout = W

  auto loss = [&]() {
    pr.out.poison();
    flash_bias_forward(p);
    const auto o = pr.out.views[0].values();
    double L = 0;
    for (size_t i = 0; i < o.size(); ++i) L += o[i] * W[i];
    return L;
  };
  auto numeric = [&](auto&& element, size_t n) {
    std::vector<double> g(n);
    const double h = 1e-4;
    for (size_t i = 0; i < n; ++i) {
      double& x = element(i);
      const double x0 = x;
      x = x0 + h;
      const double up = loss();
      x = x0 - h;
      const double down = loss();
      x = x0;
      g[i] = (up - down) / (2 * h);
    }
    return g;
  };
  auto logical = [](const View<double>& v) {
    return [v](size_t t) -> double& {
      const int d = t % v.D, h = (t / v.D) % v.H, n = (t / v.D / v.H) % v.N, b = t / v.D / v.H / v.N;
      return v.at(b, n, h, d);
    };
  };
  const size_t nq = pr.in.q.size(), nk = pr.in.k.size();
  expect_close("dq", rel_error(pr.dq.views[0].values(), numeric(logical(pr.Q), nq)), kGradcheckTol);
  expect_close("dk", rel_error(pr.dk.views[0].values(), numeric(logical(pr.K), nk)), kGradcheckTol);
  expect_close("dv", rel_error(pr.dv.views[0].values(), numeric(logical(pr.V), nk)), kGradcheckTol);
  if (c.bias != BiasForm::None) {
    const auto num = numeric([&](size_t i) -> double& { return pr.bias[i]; }, pr.bias.size());
    expect_close("dbias", rel_error(pr.dbias_values(), num), kGradcheckTol);
  }
  if (c.R >= 0) {
    const auto num = numeric([&](size_t i) -> double& { return pr.table[i]; }, pr.table.size());
    expect_close("dT", rel_error(pr.dtable_values(), num), kGradcheckTol);
  }
}

TEST(FlashBiasCpu, CentralDifferences) {
  gradcheck({2, 2, 3, 4, 5, BiasForm::BH, true, true, Layout::Padded});
  gradcheck({2, 3, 4, 2, 3, BiasForm::OneOne, false, true, Layout::Contiguous});  // Nq > Nk
  gradcheck({3, 2, 5, 5, 4, BiasForm::OneH, true, false, Layout::Packed});
  gradcheck({2, 3, 3, 6, 2, BiasForm::BOne, false, false, Layout::Padded});
  gradcheck({2, 2, 5, 7, 3, BiasForm::None, false, true, Layout::Contiguous, 2});
  gradcheck({2, 2, 6, 4, 3, BiasForm::BH, true, false, Layout::Padded, 1});
  // (not R = 0: every score of a row then gets the same T[h,0], so dT = 0 exactly and a central
  // difference measures only rounding; the reference tests check that dT vanishes)
  gradcheck({1, 3, 4, 4, 2, BiasForm::OneOne, false, false, Layout::Packed, 1});
  gradcheck({2, 2, 5, 6, 3, BiasForm::OneH, false, true, Layout::Contiguous, 9});  // R ≥ N
  print_worst("central differences, float64");
}

// ---- determinism across thread counts -------------------------------------------------------

TEST(FlashBiasCpu, IndependentOfThreadCount) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP";
#else
  const int threads = omp_get_max_threads();
  // Every dense bias form (each has its own backward task grid), each with a relpos table whose
  // dT goes through per-(b,h) partials.
  for (BiasForm f : {BiasForm::None, BiasForm::BH, BiasForm::OneH, BiasForm::BOne, BiasForm::OneOne}) {
    Problem<float> pr({5, 3, 97, 80, 16, f, true, true, Layout::Padded, 6});
    FlashBiasBwdParams p = pr.params();
    std::vector<std::vector<float>> runs;
    for (int n : {1, 2, 3}) {
      omp_set_num_threads(n);
      pr.out.poison();
      pr.poison_grads();
      flash_bias_forward(p);
      flash_bias_backward(p);
      std::vector<float> all = pr.out.buf;
      for (const auto* v : {&pr.dq.buf, &pr.dk.buf, &pr.dv.buf, &pr.dbias, &pr.dtable})
        all.insert(all.end(), v->begin(), v->end());
      runs.push_back(all);
    }
    omp_set_num_threads(threads);
    EXPECT_TRUE(bitwise_equal(runs[0], runs[1]) && bitwise_equal(runs[0], runs[2]))
        << "bias " << bias_name(f) << ": results depend on the thread count";
  }
#endif
}

// A NaN among the inputs reaches exactly the outputs that depend on it, as in exact arithmetic:
// the rows whose scores it enters (out, lse, dq), and through them every key's dk, dv and the
// bias gradient of those rows. A row whose every score is NaN is not taken for a fully masked one.
template <class T>
void nan_propagates() {
  const Case c{1, 1, 6, 9, 8, BiasForm::BH, false, false, Layout::Contiguous};
  const T nan = std::numeric_limits<T>::quiet_NaN();
  auto row_nan = [&](const Problem<T>& pr, int i) {
    int n = 0;
    for (int d = 0; d < c.D; ++d) n += std::isnan(double(pr.out.views[0].at(0, i, 0, d)));
    return n;
  };
  // (what is poisoned, the query rows that must turn NaN)
  struct Poison {
    const char* what;
    std::function<void(Problem<T>&)> apply;
    std::vector<int> rows;
  };
  const std::vector<Poison> poisons = {
      {"one element of q row 2", [&](Problem<T>& pr) { pr.Q.at(0, 2, 0, 3) = nan; }, {2}},
      {"one bias element (4, 7)", [&](Problem<T>& pr) { pr.bias[4 * c.Nk + 7] = nan; }, {4}},
      {"every bias element of row 1",
       [&](Problem<T>& pr) {
         for (int j = 0; j < c.Nk; ++j) pr.bias[1 * c.Nk + j] = nan;
       },
       {1}},
      {"one element of k row 5", [&](Problem<T>& pr) { pr.K.at(0, 5, 0, 0) = nan; }, {0, 1, 2, 3, 4, 5}},
  };
  for (const Poison& poison : poisons) {
    SCOPED_TRACE(poison.what);
    Problem<T> pr(c);
    poison.apply(pr);
    FlashBiasBwdParams p = pr.params();
    pr.out.poison();
    flash_bias_forward(p);
    for (int i = 0; i < c.Nq; ++i) {
      const bool hit = std::find(poison.rows.begin(), poison.rows.end(), i) != poison.rows.end();
      EXPECT_EQ(row_nan(pr, i), hit ? c.D : 0) << "out row " << i;
      EXPECT_EQ(std::isnan(double(pr.lse[i])), hit) << "lse row " << i;
    }
    pr.poison_grads();
    flash_bias_backward(p);
    for (int i = 0; i < c.Nq; ++i) {
      const bool hit = std::find(poison.rows.begin(), poison.rows.end(), i) != poison.rows.end();
      for (int j = 0; j < c.Nk; ++j)
        EXPECT_EQ(std::isnan(double(pr.dbias[i * c.Nk + j])), hit) << "dbias (" << i << ", " << j << ")";
    }
    EXPECT_TRUE(std::isnan(double(pr.dv.views[0].at(0, 0, 0, 0)))) << "dv sums over the NaN rows";
  }
}

TEST(FlashBiasCpu, NaNInputsPropagateFloat64) { nan_propagates<double>(); }
TEST(FlashBiasCpu, NaNInputsPropagateFloat32) { nan_propagates<float>(); }

// ---- packed variable-length batches -------------------------------------------------------------

// Sequence b has nq[b] queries and nk[b] keys; q, k, v, out, … are (T,H,D) with padded rows and
// heads and a batch stride that must not be used; the bias blocks [H,nq_b,nk_b] sit at offsets
// with poisoned gaps between them. `slack` is added to the Nq/Nk bounds (they are only bounds).
struct VarlenCase {
  std::vector<int> nq, nk;
  int H, D;
  bool bias, causal;
  int R = -1;
  int slack = 0;
  std::string str() const {
    std::string s = "varlen";
    for (size_t b = 0; b < nq.size(); ++b) s += " " + std::to_string(nq[b]) + "x" + std::to_string(nk[b]);
    return s + " H=" + std::to_string(H) + " D=" + std::to_string(D) + (bias ? " bias" : "") +
           (causal ? " causal" : "") + (R >= 0 ? " relpos R=" + std::to_string(R) : "") +
           (slack ? " slack=" + std::to_string(slack) : "");
  }
};

template <class T>
struct PackedProblem {
  VarlenCase c;
  int B = 0, Nq = 0, Nk = 0;
  std::vector<int32_t> cu_q, cu_k;
  std::vector<int64_t> offs;
  BNHDStrides st;  // the same padded layout for every (T,H,D) tensor
  std::vector<T> q, k, v, dout, out, dq, dk, dv, bias, dbias, lse, table, dtable;

  static constexpr T nan() { return std::numeric_limits<T>::quiet_NaN(); }
  // a (rows,H,D) buffer in the padded layout, NaN between the elements
  std::vector<T> buffer(int rows) const { return std::vector<T>(size_t(rows) * st.row, nan()); }
  T& at(std::vector<T>& x, int64_t row, int h, int d) const { return x[row * st.row + h * st.head + d]; }
  T at(const std::vector<T>& x, int64_t row, int h, int d) const { return x[row * st.row + h * st.head + d]; }
  void fill_random(std::vector<T>& x, int rows) const {
    const auto r = randn(size_t(rows) * c.H * c.D);
    size_t t = 0;
    for (int n = 0; n < rows; ++n)
      for (int h = 0; h < c.H; ++h)
        for (int d = 0; d < c.D; ++d) at(x, n, h, d) = T(r[t++]);
  }

  explicit PackedProblem(const VarlenCase& vc) : c(vc) {
    B = static_cast<int>(c.nq.size());
    cu_q.assign(B + 1, 0);
    cu_k.assign(B + 1, 0);
    offs.assign(B + 1, 3);  // the first block starts 3 elements in
    for (int b = 0; b < B; ++b) {
      cu_q[b + 1] = cu_q[b] + c.nq[b];
      cu_k[b + 1] = cu_k[b] + c.nk[b];
      offs[b + 1] = offs[b] + int64_t(c.H) * c.nq[b] * c.nk[b] + 5;  // 5 poisoned between blocks
      Nq = std::max(Nq, c.nq[b]);
      Nk = std::max(Nk, c.nk[b]);
    }
    Nq += c.slack;
    Nk += c.slack;
    st.head = c.D + 1;
    st.row = int64_t(c.H) * st.head + 2;
    st.batch = int64_t(1) << 40;  // unused when packed: any use would read far out of bounds
    q = buffer(cu_q[B]), dout = buffer(cu_q[B]), out = buffer(cu_q[B]), dq = buffer(cu_q[B]);
    k = buffer(cu_k[B]), v = buffer(cu_k[B]), dk = buffer(cu_k[B]), dv = buffer(cu_k[B]);
    fill_random(q, cu_q[B]);
    fill_random(dout, cu_q[B]);
    fill_random(k, cu_k[B]);
    fill_random(v, cu_k[B]);
    if (c.bias) {
      bias.assign(offs[B] + 2, nan());  // the gaps stay NaN: reading one would poison a score
      for (int b = 0; b < B; ++b) {
        const auto r = randn(size_t(c.H) * c.nq[b] * c.nk[b], 2.0);
        for (size_t i = 0; i < r.size(); ++i) bias[offs[b] + i] = T(r[i]);
      }
      dbias.assign(bias.size(), nan());
    }
    if (c.R >= 0) {
      for (double x : randn(size_t(c.H) * (2 * c.R + 1), 2.0)) table.push_back(T(x));
      dtable.assign(table.size(), nan());
    }
    lse.assign(size_t(c.H) * cu_q[B], nan());
  }

  FlashBiasBwdParams params() {
    FlashBiasBwdParams p;
    p.B = B, p.H = c.H, p.Nq = Nq, p.Nk = Nk, p.D = c.D;
    p.scale = T(1.0 / std::sqrt(double(c.D)));
    p.dtype = dtype_of<T>();
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.dout = dout.data();
    p.dq = dq.data(), p.dk = dk.data(), p.dv = dv.data();
    p.q_stride = p.k_stride = p.v_stride = p.out_stride = p.dout_stride = st;
    p.dq_stride = p.dk_stride = p.dv_stride = st;
    p.lse = lse.data();
    p.cu_seqlens_q = cu_q.data();
    p.cu_seqlens_k = cu_k.data();
    if (c.bias) {
      p.bias = bias.data();
      p.bias_dtype = dtype_of<T>();
      p.bias_seq_offsets = offs.data();
      p.bias_batch_stride = p.bias_head_stride = p.bias_row_stride = -7;  // unused when packed
      p.dbias = dbias.data();
    }
    if (c.R >= 0) {
      p.relpos_table = table.data();
      p.relpos_dtype = dtype_of<T>();
      p.relpos_clip = c.R;
      p.drelpos_table = dtable.data();
    }
    p.causal = c.causal;
    p.deterministic = true;
    return p;
  }

  void poison_outputs() {
    for (auto* x : {&out, &dq, &dk, &dv, &dbias, &lse, &dtable}) std::fill(x->begin(), x->end(), nan());
  }
  // NaN everywhere outside the logical elements of out, dq, dk, dv and dbias
  bool gaps_untouched() const {
    auto rows_ok = [&](const std::vector<T>& x) {
      for (size_t i = 0; i < x.size(); ++i) {
        const int64_t in_row = int64_t(i) % st.row;
        const bool logical = in_row < c.H * st.head && in_row % st.head < c.D;
        if (!logical && !std::isnan(x[i])) return false;
      }
      return true;
    };
    bool ok = rows_ok(out) && rows_ok(dq) && rows_ok(dk) && rows_ok(dv);
    for (int b = 0; b < B && c.bias; ++b)
      for (int64_t i = offs[b] + int64_t(c.H) * c.nq[b] * c.nk[b]; i < offs[b + 1]; ++i)
        ok = ok && std::isnan(dbias[i]);
    for (int64_t i = 0; i < offs[0] && c.bias; ++i) ok = ok && std::isnan(dbias[i]);
    return ok;
  }
  // every output of one run, for bitwise comparisons
  std::vector<T> all_outputs() const {
    std::vector<T> all;
    for (const auto* x : {&out, &lse, &dq, &dk, &dv, &dbias, &dtable})
      all.insert(all.end(), x->begin(), x->end());
    return all;
  }
};

// The packed run against each sequence run alone through the dense path (Problem<T> with B = 1,
// the same values): forward, lse, dq, dk, dv, dbias, and dT against the sum of the sequences' dT.
// Same kernel code on the same values, so the tolerance of the dense tests holds with room.
template <class T>
void run_varlen(const VarlenCase& c) {
  SCOPED_TRACE(c.str() + (std::is_same_v<T, double> ? " float64" : " float32"));
  PackedProblem<T> pk(c);
  FlashBiasBwdParams p = pk.params();
  flash_bias_forward(p);
  flash_bias_backward(p);
  EXPECT_TRUE(pk.gaps_untouched()) << "written outside the logical elements";

  const int H = c.H, D = c.D;
  const int64_t Tq = pk.cu_q[pk.B];
  std::vector<double> dt_sum(pk.table.size(), 0.0), dt_scale(pk.table.size(), 0.0);
  for (int b = 0; b < pk.B; ++b) {
    SCOPED_TRACE("sequence " + std::to_string(b));
    const int nq = c.nq[b], nk = c.nk[b];
    const int64_t q0 = pk.cu_q[b], k0 = pk.cu_k[b];
    if (nq == 0 || nk == 0) {  // nothing to attend: out, dq 0 and lse −inf; unseen keys: dk, dv 0
      for (int i = 0; i < nq; ++i)
        for (int h = 0; h < H; ++h) {
          EXPECT_EQ(pk.lse[h * Tq + q0 + i], -std::numeric_limits<T>::infinity());
          for (int d = 0; d < D; ++d) {
            EXPECT_EQ(pk.at(pk.out, q0 + i, h, d), T(0));
            EXPECT_EQ(pk.at(pk.dq, q0 + i, h, d), T(0));
          }
        }
      for (int j = 0; j < nk; ++j)
        for (int h = 0; h < H; ++h)
          for (int d = 0; d < D; ++d) {
            EXPECT_EQ(pk.at(pk.dk, k0 + j, h, d), T(0));
            EXPECT_EQ(pk.at(pk.dv, k0 + j, h, d), T(0));
          }
      continue;
    }
    // the sequence alone, dense: B = 1, a (1,H,nq,nk) bias, the same table
    Problem<T> one(
        {1, H, nq, nk, D, c.bias ? BiasForm::BH : BiasForm::None, false, c.causal, Layout::Contiguous, c.R});
    auto take = [&](const std::vector<T>& src, int64_t r0, int n) {
      std::vector<double> x;
      for (int i = 0; i < n; ++i)
        for (int h = 0; h < H; ++h)
          for (int d = 0; d < D; ++d) x.push_back(double(pk.at(src, r0 + i, h, d)));
      return x;
    };
    one.Q.fill(take(pk.q, q0, nq));
    one.K.fill(take(pk.k, k0, nk));
    one.V.fill(take(pk.v, k0, nk));
    one.dout.views[0].fill(take(pk.dout, q0, nq));
    if (c.bias) std::copy_n(pk.bias.begin() + pk.offs[b], one.bias.size(), one.bias.begin());
    if (c.R >= 0) one.table = pk.table;
    FlashBiasBwdParams op = one.params();
    flash_bias_forward(op);
    flash_bias_backward(op);

    expect_close("varlen out", rel_error(take(pk.out, q0, nq), one.out.views[0].values()), tol<T>());
    std::vector<double> lse_p, lse_d;
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < nq; ++i) {
        const double lp = pk.lse[h * Tq + q0 + i], ld = one.lse[size_t(h) * nq + i];
        ASSERT_EQ(std::isinf(lp), std::isinf(ld)) << "lse row " << i;  // −inf: fully masked row
        lse_p.push_back(std::isinf(lp) ? 0.0 : lp);
        lse_d.push_back(std::isinf(ld) ? 0.0 : ld);
      }
    expect_close("varlen lse", rel_error(lse_p, lse_d), tol<T>());
    expect_close("varlen dq", rel_error(take(pk.dq, q0, nq), one.dq.views[0].values()), tol<T>());
    expect_close("varlen dk", rel_error(take(pk.dk, k0, nk), one.dk.views[0].values()), tol<T>());
    expect_close("varlen dv", rel_error(take(pk.dv, k0, nk), one.dv.views[0].values()), tol<T>());
    if (c.bias) {
      const std::vector<double> db(pk.dbias.begin() + pk.offs[b],
                                   pk.dbias.begin() + pk.offs[b] + one.dbias.size());
      expect_close("varlen dbias", rel_error(db, one.dbias_values()), tol<T>());
    }
    for (size_t r = 0; r < dt_sum.size(); ++r) {
      dt_sum[r] += double(one.dtable[r]);
      dt_scale[r] += std::abs(double(one.dtable[r]));
    }
  }
  // dT of the batch = Σ over sequences; each sequence's dT was rounded to T before this sum, so
  // the difference is rounding relative to Σ|dT_b|.
  if (c.R >= 0)
    expect_close("varlen dT", err_vs_scale({pk.dtable.begin(), pk.dtable.end()}, dt_sum, dt_scale), tol<T>());

  // Again from poison: bitwise identical. Then dbias and dT with dbias_accumulate.
  const std::vector<T> first = pk.all_outputs();
  pk.poison_outputs();
  flash_bias_forward(p);
  flash_bias_backward(p);
  EXPECT_TRUE(bitwise_equal(first, pk.all_outputs())) << "packed run not reproducible";
  if (c.bias || c.R >= 0) {
    const std::vector<T> db1 = pk.dbias, dt1 = pk.dtable;
    std::vector<double> want_db, want_dt;
    for (size_t i = 0; i < pk.dbias.size(); ++i) {
      if (std::isnan(db1[i])) continue;  // a gap
      pk.dbias[i] = T(0.5 + 0.25 * double(i % 7));
      want_db.push_back(double(pk.dbias[i]) + double(db1[i]));
    }
    for (size_t i = 0; i < pk.dtable.size(); ++i) {
      pk.dtable[i] = T(-1.0 + 0.125 * double(i % 5));
      want_dt.push_back(double(pk.dtable[i]) + double(dt1[i]));
    }
    FlashBiasBwdParams acc = p;
    acc.dq = acc.dk = acc.dv = nullptr;
    acc.dbias_accumulate = true;
    flash_bias_backward(acc);
    std::vector<double> got_db;
    for (size_t i = 0; i < pk.dbias.size(); ++i)
      if (!std::isnan(db1[i])) got_db.push_back(pk.dbias[i]);
    expect_close("varlen dbias accumulate", rel_error(got_db, want_db), tol<T>());
    expect_close("varlen dT accumulate", rel_error({pk.dtable.begin(), pk.dtable.end()}, want_dt), tol<T>());
    EXPECT_TRUE(pk.gaps_untouched()) << "accumulate wrote into a gap";
  }
}

const std::vector<VarlenCase> kVarlenCases = {
    {{17, 0, 1, 40, 5}, {23, 4, 0, 40, 1}, 2, 16, true, false},   // lengths 0 and 1
    {{70, 3, 1, 33}, {65, 9, 1, 33}, 3, 16, true, true, 6},       // causal, relpos
    {{12, 0, 29, 0}, {12, 5, 31, 0}, 2, 8, false, false, 40, 3},  // relpos alone, R ≥ N
    {{130, 20}, {66, 140}, 2, 32, true, true, 2},                 // several tiles
    {{1}, {1}, 1, 16, true, false, 0},                            // one token
    {{0, 0}, {0, 3}, 2, 16, true, false, 1},                      // no query at all
};

TEST(FlashBiasCpu, PackedEqualsEachSequenceAloneFloat64) {
  for (const VarlenCase& c : kVarlenCases) run_varlen<double>(c);
  print_worst("varlen, float64");
}

TEST(FlashBiasCpu, PackedEqualsEachSequenceAloneFloat32) {
  for (const VarlenCase& c : kVarlenCases) run_varlen<float>(c);
  print_worst("varlen, float32");
}

TEST(FlashBiasCpu, PackedIndependentOfThreadCount) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP";
#else
  const int threads = omp_get_max_threads();
  PackedProblem<float> pk({{97, 0, 33, 64, 5, 80}, {80, 7, 1, 64, 90, 81}, 3, 16, true, true, 6});
  FlashBiasBwdParams p = pk.params();
  std::vector<std::vector<float>> runs;
  for (int n : {1, 2, 3}) {
    omp_set_num_threads(n);
    pk.poison_outputs();
    flash_bias_forward(p);
    flash_bias_backward(p);
    runs.push_back(pk.all_outputs());
  }
  omp_set_num_threads(threads);
  EXPECT_TRUE(bitwise_equal(runs[0], runs[1]) && bitwise_equal(runs[0], runs[2]))
      << "packed results (dT included) depend on the thread count";
#endif
}

// ---- errors -----------------------------------------------------------------------------------

TEST(FlashBiasCpu, RejectsBadInput) {
  Problem<float> pr({2, 2, 5, 7, 16, BiasForm::OneH, false, false, Layout::Contiguous});
  const FlashBiasBwdParams good = pr.params();
  FlashBiasBwdParams p = good;
  p.dtype = ScalarType::F16;
  expect_error([&] { flash_bias_forward(p); }, "got float16");
  p = good;
  p.bias_dtype = ScalarType::F64;
  expect_error([&] { flash_bias_forward(p); }, "bias must have the inputs' dtype float32, got float64");
  p = good;
  p.Nk = 0;
  expect_error([&] { flash_bias_forward(p); }, "Nk=0");
  p = good;
  p.lse = nullptr;
  expect_error([&] { flash_bias_forward(p); }, "out and lse must be non-null");
  p = good;
  p.dout = nullptr;
  expect_error([&] { flash_bias_backward(p); }, "dout must be non-null");
  p = good;
  p.bias = nullptr;
  expect_error([&] { flash_bias_backward(p); }, "dbias was requested but there is no bias");
  p = good;
  p.dbias_head_stride = 0;
  expect_error([&] { flash_bias_backward(p); }, "broadcast over heads exactly when the bias is");
  p = good;
  p.dbias_batch_stride = 35;
  expect_error([&] { flash_bias_backward(p); }, "broadcast over the batch exactly when the bias is");
}

TEST(FlashBiasCpu, RejectsBadRelpos) {
  Problem<float> pr({2, 2, 5, 7, 16, BiasForm::None, false, false, Layout::Contiguous, 3});
  const FlashBiasBwdParams good = pr.params();
  FlashBiasBwdParams p = good;
  p.relpos_clip = -1;
  expect_error([&] { flash_bias_forward(p); }, "relpos_clip R must be in [0, 536870912], got -1");
  p = good;
  p.relpos_dtype = ScalarType::F64;
  expect_error([&] { flash_bias_forward(p); },
               "relpos table must have the inputs' dtype float32, got float64");
  p = good;
  p.relpos_table = nullptr;
  expect_error([&] { flash_bias_backward(p); }, "drelpos_table was requested but there is no relpos_table");
}

TEST(FlashBiasCpu, RejectsBadPacked) {
  PackedProblem<float> pk({{2, 0, 3}, {3, 1, 2}, 2, 16, true, false, 1});
  const FlashBiasBwdParams good = pk.params();
  FlashBiasBwdParams p = good;
  std::vector<int32_t> bad_cu;
  p.cu_seqlens_k = nullptr;
  expect_error([&] { flash_bias_forward(p); }, "needs both cu_seqlens_q and cu_seqlens_k");
  p = good;
  bad_cu = {1, 2, 2, 5};
  p.cu_seqlens_q = bad_cu.data();
  expect_error([&] { flash_bias_forward(p); }, "cu_seqlens_q[0] must be 0, got 1");
  p = good;
  bad_cu = {0, 3, 2, 6};
  p.cu_seqlens_k = bad_cu.data();
  expect_error([&] { flash_bias_forward(p); },
               "cu_seqlens_k must be nondecreasing, got cu_seqlens_k[1]=3 > cu_seqlens_k[2]=2");
  p = good;
  p.Nq = 2;
  expect_error([&] { flash_bias_forward(p); },
               "sequence 2 has length 3 in cu_seqlens_q, more than the bound Nq=2");
  p = good;
  std::vector<uint8_t> mask(16, 0);
  p.key_padding_mask = mask.data();
  expect_error([&] { flash_bias_forward(p); }, "key_padding_mask is not supported with a packed");
  p = good;
  p.bias_seq_offsets = nullptr;
  expect_error([&] { flash_bias_forward(p); }, "needs bias_seq_offsets");
  p = good;
  std::vector<int64_t> tight = {0, 12, 12, 23};  // block 2 needs 2·3·2 = 12
  p.bias_seq_offsets = tight.data();
  expect_error([&] { flash_bias_forward(p); },
               "bias block 2 needs H·nq·nk = 12 elements, bias_seq_offsets leaves 11 (12 to 23)");
  p = good;
  p.cu_seqlens_q = p.cu_seqlens_k = nullptr;
  p.Nq = p.Nk = 3;
  expect_error([&] { flash_bias_forward(p); }, "bias_seq_offsets is set but the batch is not packed");
}

}  // namespace
