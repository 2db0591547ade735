#include "kernels/cpu/flash_bias_reference.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

namespace pf::kernels::cpu {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The bin of T that query i and key j read: clip(j − i, −R, R) + R (written out, not shared with
// the tiled kernels).
int relpos_bin(int i, int j, int R) {
  int d = j - i;
  if (d < -R) d = -R;
  if (d > R) d = R;
  return d + R;
}

}  // namespace

FlashBiasReferenceOutputs flash_bias_reference(const FlashBiasReferenceInputs& in) {
  const int B = in.B, H = in.H, Nq = in.Nq, Nk = in.Nk, D = in.D, R = in.relpos_clip;
  const bool has_bias = !in.bias.empty(), has_mask = !in.mask.empty();
  const int Hb = in.bias_per_head ? H : 1;
  auto ix = [&](int b, int n, int N, int h, int d) { return ((size_t(b) * N + n) * H + h) * D + d; };
  FlashBiasReferenceOutputs o;
  o.out.assign(size_t(B) * Nq * H * D, 0);
  o.lse.assign(size_t(B) * H * Nq, 0);
  o.dq.assign(o.out.size(), 0);
  o.dk.assign(size_t(B) * Nk * H * D, 0);
  o.dv.assign(o.dk.size(), 0);
  o.dbias.assign(in.bias.size(), 0);
  o.dtable.assign(in.table.size(), 0);
  o.dtable_abs.assign(in.table.size(), 0);
  std::vector<double> S(size_t(Nq) * Nk), P(S.size()), dP(S.size()), Brel(S.size(), 0.0), dBrel(S.size());
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const size_t boff = (size_t(in.bias_per_batch ? b : 0) * Hb + (in.bias_per_head ? h : 0)) * Nq * Nk;
      if (R >= 0) {
        for (int i = 0; i < Nq; ++i)
          for (int j = 0; j < Nk; ++j)
            Brel[size_t(i) * Nk + j] = in.table[size_t(h) * (2 * R + 1) + relpos_bin(i, j, R)];
      }
      for (int i = 0; i < Nq; ++i)
        for (int j = 0; j < Nk; ++j) {
          double s = 0;
          for (int d = 0; d < D; ++d) s += in.q[ix(b, i, Nq, h, d)] * in.k[ix(b, j, Nk, h, d)];
          s *= in.scale;
          if (has_bias) s += in.bias[boff + size_t(i) * Nk + j];
          s += Brel[size_t(i) * Nk + j];
          if (has_mask && in.mask[size_t(b) * Nk + j]) s = -kInf;
          if (in.causal && j > i + (Nk - Nq)) s = -kInf;
          S[size_t(i) * Nk + j] = s;
        }
      for (int i = 0; i < Nq; ++i) {
        double m = -kInf;
        for (int j = 0; j < Nk; ++j) m = std::max(m, S[size_t(i) * Nk + j]);
        double l = 0;
        for (int j = 0; j < Nk; ++j) {
          const double e = m == -kInf ? 0.0 : std::exp(S[size_t(i) * Nk + j] - m);
          P[size_t(i) * Nk + j] = e;
          l += e;
        }
        for (int j = 0; j < Nk; ++j) P[size_t(i) * Nk + j] = l > 0 ? P[size_t(i) * Nk + j] / l : 0;
        o.lse[(size_t(b) * H + h) * Nq + i] = l > 0 ? m + std::log(l) : -kInf;
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int j = 0; j < Nk; ++j) acc += P[size_t(i) * Nk + j] * in.v[ix(b, j, Nk, h, d)];
          o.out[ix(b, i, Nq, h, d)] = acc;
        }
      }
      for (int i = 0; i < Nq; ++i) {
        double delta = 0;
        for (int j = 0; j < Nk; ++j) {
          double dp = 0;
          for (int d = 0; d < D; ++d) dp += in.dout[ix(b, i, Nq, h, d)] * in.v[ix(b, j, Nk, h, d)];
          dP[size_t(i) * Nk + j] = dp;
          delta += P[size_t(i) * Nk + j] * dp;
        }
        for (int j = 0; j < Nk; ++j) {
          const double p = P[size_t(i) * Nk + j];
          const double ds = p * (dP[size_t(i) * Nk + j] - delta);
          if (has_bias) o.dbias[boff + size_t(i) * Nk + j] += ds;
          dBrel[size_t(i) * Nk + j] = ds;
          for (int d = 0; d < D; ++d) {
            o.dq[ix(b, i, Nq, h, d)] += in.scale * ds * in.k[ix(b, j, Nk, h, d)];
            o.dk[ix(b, j, Nk, h, d)] += in.scale * ds * in.q[ix(b, i, Nq, h, d)];
            o.dv[ix(b, j, Nk, h, d)] += p * in.dout[ix(b, i, Nq, h, d)];
          }
        }
      }
      if (R >= 0) {  // dT: dBrel summed over the clipped diagonals
        for (int i = 0; i < Nq; ++i)
          for (int j = 0; j < Nk; ++j) {
            const size_t r = size_t(h) * (2 * R + 1) + relpos_bin(i, j, R);
            o.dtable[r] += dBrel[size_t(i) * Nk + j];
            o.dtable_abs[r] += std::abs(dBrel[size_t(i) * Nk + j]);
          }
      }
    }
  return o;
}

}  // namespace pf::kernels::cpu
