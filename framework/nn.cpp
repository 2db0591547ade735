#include "framework/nn.h"

#include <cmath>

#include "framework/anomaly.h"
#include "framework/precision.h"

namespace pf::nn {

// ---- Module ----------------------------------------------------------------------------------

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  t.requires_grad_(true);
  params_.emplace_back(name, t);
  return t;
}

void Module::collect(const std::string& prefix, NamedTensors& out) const {
  for (const auto& [name, t] : params_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", out);
  for (auto& [name, t] : out) t.set_name(name);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

void Module::zero_grad() {
  for (Tensor& t : parameters()) t.zero_grad();
}

void Module::to(Device device) {
  for (Tensor& t : parameters()) {
    t.set_data(t.to(device));
    t.zero_grad();
  }
}

void Module::to(DType dtype) {
  for (Tensor& t : parameters()) {
    t.set_data(t.to(dtype));
    t.zero_grad();
  }
}

// ---- Linear ----------------------------------------------------------------------------------

Linear::Linear(int64_t in, int64_t out, bool with_bias, Rng& rng) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = register_parameter("weight", uniform({out, in}, -bound, bound, rng));
  if (with_bias) bias = register_parameter("bias", uniform({out}, -bound, bound, rng));
}

Tensor Linear::forward(const Tensor& x) const {
  const anomaly::Scope in_module = scope();
  // bf16 activations (framework/precision.h): the product uses bf16 copies of the fp32 weights.
  if (x.defined() && x.dtype() == DType::BF16 && weight.dtype() != DType::BF16)
    return ops::linear(x, ops::cast(weight, x.dtype()), bias.defined() ? ops::cast(bias, x.dtype()) : bias);
  return ops::linear(x, weight, bias);
}

// ---- LayerNorm -------------------------------------------------------------------------------

LayerNorm::LayerNorm(int64_t C, double eps_) : eps(eps_) {
  weight = register_parameter("weight", Tensor::full({C}, 1.0));
  bias = register_parameter("bias", Tensor::zeros({C}));
}

Tensor LayerNorm::forward(const Tensor& x) const {
  const anomaly::Scope in_module = scope();
  return ops::layernorm(x, weight, bias, eps);
}

// ---- Embedding -------------------------------------------------------------------------------

Embedding::Embedding(int64_t V, int64_t D, Rng& rng) {
  weight = register_parameter("weight", randn({V, D}, rng));
}

Tensor Embedding::forward(const Tensor& idx) const {
  const anomaly::Scope in_module = scope();
  const Tensor out = ops::embedding(weight, idx);
  return autocast_enabled() ? ops::cast(out, autocast_dtype()) : out;  // framework/precision.h
}

// ---- MLP -------------------------------------------------------------------------------------

MLP::MLP(int64_t d, int64_t d_ff, Rng& rng) {
  fc1 = register_module("fc1", std::make_shared<Linear>(d, d_ff, true, rng));
  fc2 = register_module("fc2", std::make_shared<Linear>(d_ff, d, true, rng));
}

Tensor MLP::forward(const Tensor& x) const {
  const anomaly::Scope in_module = scope();
  return fc2->forward(ops::gelu(fc1->forward(x)));
}

// ---- BiasedSelfAttention -----------------------------------------------------------------------

BiasedSelfAttention::BiasedSelfAttention(int64_t d, int64_t H_, Rng& rng) : H(H_) {
  PF_CHECK(d % H == 0, "attention: d_model " << d << " is not divisible by n_heads " << H);
  q = register_module("q", std::make_shared<Linear>(d, d, true, rng));
  k = register_module("k", std::make_shared<Linear>(d, d, true, rng));
  v = register_module("v", std::make_shared<Linear>(d, d, true, rng));
  o = register_module("o", std::make_shared<Linear>(d, d, true, rng));
}

Tensor BiasedSelfAttention::forward(const Tensor& x, const Tensor& bias,
                                    const ops::AttentionOptions& opt) const {
  PF_CHECK(x.ndim() == 3, "attention input must be (B,N,d), got " << shape_str(x.shape()));
  const int64_t B = x.size(0), N = x.size(1), d = x.size(2);
  const Shape heads{B, N, H, d / H};
  const anomaly::Scope in_module = scope();
  const Tensor qh = ops::reshape(q->forward(x), heads), kh = ops::reshape(k->forward(x), heads),
               vh = ops::reshape(v->forward(x), heads);
  const Tensor a = ops::attention(qh, kh, vh, bias, opt);  // (B,N,H,d/H), scale 1/√(d/H) by default
  return o->forward(ops::reshape(a, {B, N, d}));
}

}  // namespace pf::nn
