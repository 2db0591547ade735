// pairflash::kernels from another project: the CPU flash-bias forward on one batch entry and
// head (B = H = 1, so (B,N,H,D) is (N,D)), checked against the definition. Exit 0 when they agree.
#include <cmath>
#include <cstdio>

#include "kernels/cpu/flash_bias.h"
#include "naive_attention.h"

int main() {
  const int Nq = 37, Nk = 53, D = 16;
  const double scale = 1.0 / std::sqrt(double(D));
  const auto q = example_values(size_t(Nq) * D, 1), k = example_values(size_t(Nk) * D, 2),
             v = example_values(size_t(Nk) * D, 3), bias = example_values(size_t(Nq) * Nk, 4);
  std::vector<double> out(size_t(Nq) * D), lse(Nq);

  pf::kernels::FlashBiasParams p;
  p.B = 1, p.H = 1, p.Nq = Nq, p.Nk = Nk, p.D = D, p.scale = scale;
  p.dtype = pf::kernels::ScalarType::F64;
  p.q = q.data(), p.q_stride = pf::kernels::contiguous_bnhd(Nq, 1, D);
  p.k = k.data(), p.k_stride = pf::kernels::contiguous_bnhd(Nk, 1, D);
  p.v = v.data(), p.v_stride = p.k_stride;
  p.out = out.data(), p.out_stride = p.q_stride, p.lse = lse.data();
  p.bias = bias.data(), p.bias_dtype = pf::kernels::ScalarType::F64, p.bias_row_stride = Nk;
  pf::kernels::cpu::flash_bias_forward(p);

  const auto ref = naive_attention(q.data(), k.data(), v.data(), bias.data(), Nq, Nk, D, scale);
  double err = 0;
  for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::abs(out[i] - ref[i]));
  std::printf("{\"example\": \"kernels\", \"max_abs_err\": %.3e}\n", err);
  return err <= 1e-12 ? 0 : 1;  // float64 throughout: rounding residue only
}
