// The pair-bias transformer of docs/DESIGN.md §4: residue types in, per-residue type logits out, with
// attention steered by a learned pair representation (relative position + pairwise distance).
//
//   x = E[t]                                             (B,N,d)
//   z_ij = Rel[clip(j−i, −R, R) + R] + Dist[bin(d_ij)]   (B,N,N,c_z)
//   per layer: b = LN_z(z)·W_b  → (B,H,N,N)
//              x += Attn(LN₁(x); b);  x += fc2(GELU(fc1(LN₂(x))))
//   logits = head(LN_f(x))                               (B,N,K)
//
// model.attn_bias: relpos is the same transformer with a different bias: no pair representation
// and no distances; each layer's only attention bias is its learned relative-position table
//   b_hij = T_ℓ[h, clip(j−i, −R, R) + R]     T_ℓ = layers.ℓ.attn.relpos  (H, 2R+1)
// handed to the attention kernel, which looks it up itself (no (B,H,N,N) bias in memory).
//
// Packed batches (chains of different lengths, no padding): tokens (T) with cu_seqlens (B+1);
// the pair representation is built per chain, z (P, c_z) with P = Σ n_b², each chain's n_b²
// pairs row-major one after another; each layer's bias LN_z(z)·W_b comes out of the fused
// pair-bias op as (H, P) and is cut into the packed [H, n_b, n_b] blocks the attention op
// expects (pack_blocks: B·H contiguous runs copied, no index array; its backward copies the runs
// back); the loss is the mean over the T real residues.
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
// The same from coordinates already on their device: coords (B,N,3) F32.
PairFeatures pair_features(const Tensor& coords, const ModelConfig& cfg);
int distance_bin(double d, const ModelConfig& cfg);

// The pair features of a packed batch, per chain (no gradient flows into them).
struct PackedPairFeatures {
  Tensor rel_idx;   // (P) I32, P = Σ n_b²: pair (i,j) of chain b at pair_start[b] + i·n_b + j
  Tensor dist_bin;  // (P) I32
  std::vector<int64_t> pair_start;  // (B+1) host: chain b's pairs are [pair_start[b], pair_start[b+1])
};
// coords (T,3) of the chains cu_seqlens (B+1) delimits.
PackedPairFeatures packed_pair_features(const float* coords, const std::vector<int32_t>& cu_seqlens,
                                        const ModelConfig& cfg, Device device = Device::CPU);

// x:(H,P) → 1-D, segment b's (H, m_b) block after another: out[H·s_b + h·m_b + k] = x[h, s_b + k]
// with s = start (B+1), m_b = s_{b+1} − s_b. One contiguous copy per (b,h) on x's device; the
// backward copies the gradient's runs back. The packed bias layout of the attention op.
Tensor pack_blocks(const Tensor& x, const std::vector<int64_t>& start);

// What a packed batch hands the model besides its tokens.
struct Packing {
  std::vector<int32_t> cu_seqlens;  // (B+1), host
  PackedPairFeatures pair;          // empty for attn_bias: relpos
};

// z = Rel[rel_idx] + Dist[dist_bin].  → (B,N,N,c_z)
class PairRepresentation : public nn::Module {
 public:
  PairRepresentation(const ModelConfig& cfg, Rng& rng);
  Tensor forward(const PairFeatures& f) const;
  Tensor forward(const PackedPairFeatures& f) const;  // → (P,c_z)
  std::shared_ptr<nn::Embedding> rel, dist;
};

// The self-attention of one layer: nn::BiasedSelfAttention's projections (attn.{q,k,v,o}) and,
// for attn_bias: relpos, the table `relpos` (H, 2R+1), initialised to a locality prior
// −m_h·|j−i| with per-head slopes 1, 2^(−8/H), 2^(−16/H), ... (pairbias.cpp says why).
// The table is a parameter like any other (fp32 master weight in bf16 mode; it is never cast
// to bf16: the GPU kernel reads it as fp32).
class Attention : public nn::BiasedSelfAttention {
 public:
  Attention(const ModelConfig& cfg, Rng& rng);
  // x:(B,N,d) bias:(B,H,N,N) or undefined → (B,N,d); packed (cu_seqlens given):
  // x:(T,d) bias: the packed [H,n_b,n_b] blocks (1-D) or undefined → (T,d)
  Tensor forward(const Tensor& x, const Tensor& bias, const std::vector<int32_t>& cu_seqlens = {}) const;
  Tensor relpos;  // (H, 2R+1); undefined for attn_bias: pair
};

// One pre-norm layer.  x:(B,N,d) z:(B,N,N,c_z) (undefined for attn_bias: relpos) → (B,N,d);
// packed: x:(T,d) z:(P,c_z) → (T,d)
class PairBiasLayer : public nn::Module {
 public:
  PairBiasLayer(const ModelConfig& cfg, Rng& rng);
  // b: this layer's attention bias, LN_z(z)·W_b as (B,H,N,N) or packed into the 1-D [H,n_b,n_b]
  // blocks (PairBiasModel computes every layer's in one op); undefined for relpos models
  Tensor forward(const Tensor& x, const Tensor& b, const Packing* packing = nullptr) const;
  std::shared_ptr<nn::LayerNorm> pair_norm, norm1, norm2;  // pair_norm: pair models only
  std::shared_ptr<nn::Linear> pair_proj;                   // pair models only
  std::shared_ptr<Attention> attn;
  std::shared_ptr<nn::MLP> mlp;
};

class PairBiasModel : public nn::Module {
 public:
  PairBiasModel(const ModelConfig& cfg, uint64_t seed);
  // tokens:(B,N) I32 → logits (B,N,K). f is not read for attn_bias: relpos (may be empty).
  Tensor forward(const Tensor& tokens, const PairFeatures& f) const;
  // A packed batch: tokens:(T) I32 → logits (T,K)
  Tensor forward(const Tensor& tokens, const Packing& packing) const;
  const ModelConfig& config() const { return cfg_; }
  bool relpos_bias() const { return cfg_.attn_bias == "relpos"; }

  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<PairRepresentation> pair;  // null for attn_bias: relpos
  std::vector<std::shared_ptr<PairBiasLayer>> layers;
  std::shared_ptr<nn::LayerNorm> final_norm;
  std::shared_ptr<nn::Linear> head;

 private:
  // x: the embedded tokens; z: the pair representation (undefined for relpos models)
  Tensor layers_and_head(Tensor x, const Tensor& z, const Packing* packing) const;
  // Every layer's attention bias from z in one op (ops::pair_bias_layers): z is read once each way
  std::vector<Tensor> pair_biases(const Tensor& z, const Packing* packing) const;
  ModelConfig cfg_;
};

// Mean cross-entropy over all residues and the count predicted right, both left on the device
// (a training step reads them back once, at its end).
struct LossResult {
  Tensor loss;     // shape {}
  Tensor correct;  // (2) I32, no grad: ops::count_correct's rows right and labels out of range
  int64_t rows = 0, classes = 0;
  double accuracy() const;  // the fraction right (reads the counts back)
};
// tokens/labels:(B,N) I32
LossResult model_loss(const PairBiasModel& model, const Tensor& tokens, const PairFeatures& f,
                      const Tensor& labels);
// A packed batch: mean over its T residues. tokens/labels:(T) I32
LossResult model_loss(const PairBiasModel& model, const Tensor& tokens, const Packing& packing,
                      const Tensor& labels);

}  // namespace pf::models

namespace pf::models {

// The learned bias of one layer as a function of one pair feature, the other held fixed
// (what the plots of the run directory show). Both return (points, H), no grad; pair models.
// Against distance bin k (x = bin centre in Å) at relative offset +R (far along the chain):
Tensor bias_vs_distance(const PairBiasModel& model, int layer);
// Against relative offset o ∈ [−R, R] at the typical chain distance 3.8·√|o| Å:
Tensor bias_vs_relpos(const PairBiasModel& model, int layer);
// The relative-position table of one layer of an attn_bias: relpos model, (H, 2R+1) float64 on
// the CPU (column o + R is offset o = j − i).
Tensor relpos_table(const PairBiasModel& model, int layer);

}  // namespace pf::models
