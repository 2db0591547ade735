// The pair-bias transformer of DESIGN §4: residue types in, per-residue type logits out, with
// attention steered by a learned pair representation (relative position + pairwise distance).
//
//   x = E[t]                                             (B,N,d)
//   z_ij = Rel[clip(j−i, −R, R) + R] + Dist[bin(d_ij)]   (B,N,N,c_z)
//   per layer: b = LN_z(z)·W_b  → (B,H,N,N)
//              x += Attn(LN₁(x); b);  x += fc2(GELU(fc1(LN₂(x))))
//   logits = head(LN_f(x))                               (B,N,K)
#pragma once
#include <memory>
#include <vector>

#include "framework/config.h"
#include "framework/nn.h"

namespace pf::models {

// Integer pair features, computed once per batch on the host (no gradient flows into them).
struct PairFeatures {
  Tensor rel_idx;   // (N,N) I32: clip(j − i, −R, R) + R
  Tensor dist_bin;  // (B,N,N) I32: clamp(⌊‖x_i − x_j‖ / dist_max · dist_bins⌋, 0, dist_bins − 1)
};
// coords: B·N·3 floats, row-major (B,N,3). Distances are computed in double.
PairFeatures pair_features(const float* coords, int B, int N, const ModelConfig& cfg,
                           Device device = Device::CPU);
int distance_bin(double d, const ModelConfig& cfg);

// z = Rel[rel_idx] + Dist[dist_bin].  → (B,N,N,c_z)
class PairRepresentation : public nn::Module {
 public:
  PairRepresentation(const ModelConfig& cfg, Rng& rng);
  Tensor forward(const PairFeatures& f) const;
  std::shared_ptr<nn::Embedding> rel, dist;
};

// One pre-norm layer.  x:(B,N,d) z:(B,N,N,c_z) → (B,N,d)
class PairBiasLayer : public nn::Module {
 public:
  PairBiasLayer(const ModelConfig& cfg, Rng& rng);
  Tensor forward(const Tensor& x, const Tensor& z) const;
  Tensor bias(const Tensor& z) const;  // LN_z(z)·W_b permuted to (B,H,N,N)
  std::shared_ptr<nn::LayerNorm> pair_norm, norm1, norm2;
  std::shared_ptr<nn::Linear> pair_proj;
  std::shared_ptr<nn::BiasedSelfAttention> attn;
  std::shared_ptr<nn::MLP> mlp;
};

class PairBiasModel : public nn::Module {
 public:
  PairBiasModel(const ModelConfig& cfg, uint64_t seed);
  // tokens:(B,N) I32 → logits (B,N,K)
  Tensor forward(const Tensor& tokens, const PairFeatures& f) const;
  const ModelConfig& config() const { return cfg_; }

  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<PairRepresentation> pair;
  std::vector<std::shared_ptr<PairBiasLayer>> layers;
  std::shared_ptr<nn::LayerNorm> final_norm;
  std::shared_ptr<nn::Linear> head;

 private:
  ModelConfig cfg_;
};

// Mean cross-entropy over all residues and the fraction predicted right.
struct LossResult {
  Tensor loss;      // shape {}
  double accuracy;  // no grad
};
// tokens/labels:(B,N) I32
LossResult model_loss(const PairBiasModel& model, const Tensor& tokens, const PairFeatures& f,
                      const Tensor& labels);

}  // namespace pf::models

namespace pf::models {

// The learned bias of one layer as a function of one pair feature, the other held fixed
// (what the plots of the run directory show). Both return (points, H), no grad.
// Against distance bin k (x = bin centre in Å) at relative offset +R (far along the chain):
Tensor bias_vs_distance(const PairBiasModel& model, int layer);
// Against relative offset o ∈ [−R, R] at the typical chain distance 3.8·√|o| Å:
Tensor bias_vs_relpos(const PairBiasModel& model, int layer);

}  // namespace pf::models
