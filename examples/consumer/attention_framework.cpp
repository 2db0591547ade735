// pairflash::framework from another project: the attention op with a learnable bias shared over
// the batch, forward checked against the definition, backward giving the bias its gradient in
// the bias's own shape. Exit 0 when both hold.
#include <cmath>
#include <cstdio>

#include "framework/ops.h"
#include "framework/tensor.h"
#include "naive_attention.h"

int main() {
  using pf::DType;
  using pf::Tensor;
  const int B = 2, N = 29, H = 1, D = 8;
  const auto qv = example_values(size_t(B) * N * D, 5), kv = example_values(size_t(B) * N * D, 6),
             vv = example_values(size_t(B) * N * D, 7), bv = example_values(size_t(N) * N, 8);
  const Tensor q = Tensor::from_vector(qv, {B, N, H, D}, DType::F64);
  const Tensor k = Tensor::from_vector(kv, {B, N, H, D}, DType::F64);
  const Tensor v = Tensor::from_vector(vv, {B, N, H, D}, DType::F64);
  Tensor bias = Tensor::from_vector(bv, {1, 1, N, N}, DType::F64);  // shared over the batch
  bias.requires_grad_();

  const Tensor out = pf::ops::attention(q, k, v, bias);
  pf::ops::sum(out).backward();

  const auto got = out.to_vector<double>();
  double err = 0;
  for (int b = 0; b < B; ++b) {
    const size_t o = size_t(b) * N * D;
    const auto ref = naive_attention(qv.data() + o, kv.data() + o, vv.data() + o, bv.data(), N, N, D,
                                     1.0 / std::sqrt(double(D)));
    for (size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::abs(got[o + i] - ref[i]));
  }
  const bool grad_ok = bias.grad().defined() && bias.grad().shape() == bias.shape();
  std::printf("{\"example\": \"framework\", \"max_abs_err\": %.3e, \"dbias_shape_ok\": %s}\n", err,
              grad_ok ? "true" : "false");
  return err <= 1e-12 && grad_ok ? 0 : 1;
}
