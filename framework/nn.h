// Modules: parameters with dotted names (the checkpoint names of docs/DESIGN.md §4), built from ops.
//
// A Module owns its parameters and its child modules; named_parameters() walks them in
// registration order with names like "layers.0.attn.q.weight". Weights are stored [out, in]
// as in PyTorch. Initialisation follows PyTorch's defaults so that runs are comparable:
// Linear U(±1/√in) for weight and bias, Embedding N(0, 1), LayerNorm weight 1, bias 0.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "framework/anomaly.h"
#include "framework/ops.h"
#include "framework/random.h"
#include "framework/tensor.h"

namespace pf::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  void zero_grad();
  // Moves/converts every parameter in place (handles held elsewhere stay valid).
  void to(Device device);
  void to(DType dtype);

 protected:
  Tensor register_parameter(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    static_cast<Module&>(*m).name_ = name;
    children_.emplace_back(name, m);
    return m;
  }
  // This module's anomaly scope (framework/anomaly.h), opened first thing by its forward: the name
  // its parent registered it under, so that the open scopes joined by '.' are the prefix of its
  // parameters ("layers.1.pair_norm"). A module no parent registered (the model) adds nothing.
  anomaly::Scope scope() const { return anomaly::Scope(name_.c_str()); }

 private:
  void collect(const std::string& prefix, NamedTensors& out) const;
  std::string name_;  // in the parent module; "" for a module no parent registered
  NamedTensors params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// y = x·wᵀ + b.  x:(...,in) → (...,out); w:(out,in) b:(out)
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias, Rng& rng);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;  // bias undefined when bias == false
};

// Over the last dim of size C, eps 1e-5.  x:(...,C)
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t C, double eps = 1e-5);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
  double eps;
};

// Table lookup.  idx:(...) I32 → (...,D); weight:(V,D)
class Embedding : public Module {
 public:
  Embedding(int64_t V, int64_t D, Rng& rng);
  Tensor forward(const Tensor& idx) const;
  Tensor weight;
};

// fc2(GELU(fc1(x))) with exact (erf) GELU.  x:(...,d) → (...,d); hidden d_ff
class MLP : public Module {
 public:
  MLP(int64_t d, int64_t d_ff, Rng& rng);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Linear> fc1, fc2;
};

// Multi-head attention steered by an additive bias.
// x:(B,N,d) bias:(B|1,H,N,N) or undefined → (B,N,d); heads of d/H, scale 1/√(d/H).
class BiasedSelfAttention : public Module {
 public:
  BiasedSelfAttention(int64_t d, int64_t H, Rng& rng);
  Tensor forward(const Tensor& x, const Tensor& bias, const ops::AttentionOptions& opt = {}) const;
  int64_t H;
  std::shared_ptr<Linear> q, k, v, o;
};

}  // namespace pf::nn
