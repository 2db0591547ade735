#include "models/pairbias.h"

#include "framework/allocator.h"
#include "framework/anomaly.h"
#include "framework/autograd.h"
#include "framework/precision.h"
#include "kernels/cpu/pair_features.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pf::models {

int distance_bin(double d, const ModelConfig& cfg) {
  return kernels::cpu::bin_of_distance(d, cfg.dist_max, cfg.dist_bins);
}

// The features are computed on `device` (ops::relative_positions, ops::distance_bins): on the GPU
// from the uploaded coordinates, with the CPU's bins exactly (models/NOTES.md says why).
PairFeatures pair_features(const float* coords, int B, int N, const ModelConfig& cfg, Device device) {
  return pair_features(Tensor::from_vector(std::vector<float>(coords, coords + int64_t{B} * N * 3), {B, N, 3},
                                           DType::F32, device),
                       cfg);
}

PairFeatures pair_features(const Tensor& coords, const ModelConfig& cfg) {
  PairFeatures f;
  f.rel_idx = ops::relative_positions(static_cast<int>(coords.size(1)), cfg.relpos_clip, coords.device());
  f.dist_bin = ops::distance_bins(coords, cfg.dist_max, cfg.dist_bins);
  return f;
}

PackedPairFeatures packed_pair_features(const float* coords, const std::vector<int32_t>& cu_seqlens,
                                        const ModelConfig& cfg, Device device) {
  PF_CHECK(cu_seqlens.size() >= 2 && cu_seqlens[0] == 0,
           "packed_pair_features: cu_seqlens must have B+1 >= 2 entries starting at 0, got "
               << cu_seqlens.size() << " entries");
  const int B = static_cast<int>(cu_seqlens.size()) - 1;
  std::vector<int64_t> start(static_cast<size_t>(B) + 1, 0);  // of each chain's pairs
  for (int b = 0; b < B; ++b) {
    const int64_t n = cu_seqlens[b + 1] - cu_seqlens[b];
    PF_CHECK(n >= 0, "packed_pair_features: cu_seqlens must be nondecreasing, got "
                         << cu_seqlens[b] << " then " << cu_seqlens[b + 1]);
    start[b + 1] = start[b] + n * n;
  }
  PackedPairFeatures f;
  f.pair_start = start;
  const int64_t T = cu_seqlens[B];
  const Tensor x =
      Tensor::from_vector(std::vector<float>(coords, coords + 3 * T), {T, 3}, DType::F32, device);
  auto t = ops::packed_pair_features(x, cu_seqlens, start, cfg.relpos_clip, cfg.dist_max, cfg.dist_bins);
  f.rel_idx = t.rel;
  f.dist_bin = t.bins;
  return f;
}

namespace {
// The runs of pack_blocks: segment b, row h is x[h·P + s_b …] ↔ out[H·s_b + h·m_b …]. B·H device
// copies and no index array: 5× the residues/s of a gather by an uploaded index (models/NOTES.md).

void copy_runs(const Tensor& from, Tensor& to, const std::vector<int64_t>& start, int64_t H, bool to_blocks) {
  const int64_t P = start.back();
  const size_t elt = dtype_size(from.dtype());
  const char* src = static_cast<const char*>(from.data_ptr());
  char* dst = static_cast<char*>(to.data_ptr());
  for (size_t b = 0; b + 1 < start.size(); ++b) {
    const int64_t s = start[b], m = start[b + 1] - start[b];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t rows = h * P + s, blocks = H * s + h * m;  // element offsets
      copy_bytes(dst + elt * (to_blocks ? blocks : rows), to.device(),
                 src + elt * (to_blocks ? rows : blocks), from.device(), elt * m);
    }
  }
}
}  // namespace

Tensor pack_blocks(const Tensor& x, const std::vector<int64_t>& start) {
  PF_CHECK(x.defined() && x.ndim() == 2,
           "pack_blocks: x must be (H,P), got " << (x.defined() ? x.str() : "none"));
  PF_CHECK(start.size() >= 2 && start[0] == 0 && start.back() == x.size(1),
           "pack_blocks: segment starts must run from 0 to P = " << x.size(1) << ", got "
                                                                 << (start.empty() ? -1 : start.back()));
  for (size_t b = 0; b + 1 < start.size(); ++b)
    PF_CHECK(start[b + 1] >= start[b], "pack_blocks: segment starts must be nondecreasing");
  const int64_t H = x.size(0);
  Tensor out = Tensor::empty({x.numel()}, x.dtype(), x.device());
  copy_runs(x, out, start, H, true);
  const Shape shape = x.shape();
  return make_result(out, "pack_blocks", {x}, [start, H, shape](const Tensor& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(shape, g.dtype(), g.device());
    copy_runs(g, dx, start, H, false);
    return {dx};
  });
}

// ---- PairRepresentation ----------------------------------------------------------------------

PairRepresentation::PairRepresentation(const ModelConfig& cfg, Rng& rng) {
  rel = register_module("rel", std::make_shared<nn::Embedding>(2 * cfg.relpos_clip + 1, cfg.c_z, rng));
  dist = register_module("dist", std::make_shared<nn::Embedding>(cfg.dist_bins, cfg.c_z, rng));
}

Tensor PairRepresentation::forward(const PackedPairFeatures& f) const {
  const anomaly::Scope in_module = scope();
  // Dist[bin] + Rel[rel] per pair, (P,c_z), in one op as in the dense path
  const DType dt = autocast_enabled() ? autocast_dtype() : dist->weight.dtype();
  return ops::embedding_sum(dist->weight, f.dist_bin, rel->weight, f.rel_idx, dt);
}

Tensor PairRepresentation::forward(const PairFeatures& f) const {
  const anomaly::Scope in_module = scope();
  // Dist[bin] + Rel[rel] in one op, (N,N,c_z) broadcast over the batch onto (B,N,N,c_z), written
  // once in the activations' dtype (framework/precision.h)
  const DType dt = autocast_enabled() ? autocast_dtype() : dist->weight.dtype();
  return ops::embedding_sum(dist->weight, f.dist_bin, rel->weight, f.rel_idx, dt);
}

// ---- Attention ---------------------------------------------------------------------------------

Attention::Attention(const ModelConfig& cfg, Rng& rng)
    : nn::BiasedSelfAttention(cfg.d_model, cfg.n_heads, rng) {
  if (cfg.attn_bias == "relpos") {
    // A locality prior: T[h, o] = −m_h·|o| with slopes m_h = 2^(−8h/H) (1, 1/4, 1/16, 1/64 for
    // H = 4), ALiBi's geometric slopes started at 1, so head 0 starts on the nearest residues
    // and the others at ever longer ranges: val_acc 0.99 on configs/relpos.yaml after 300 steps,
    // against 0.13 from zeros and 0.25 from ALiBi's own slopes (models/NOTES.md).
    const int R = cfg.relpos_clip, W = 2 * R + 1;
    std::vector<double> t(static_cast<size_t>(H) * W);
    for (int64_t h = 0; h < H; ++h)
      for (int o = -R; o <= R; ++o)
        t[h * W + o + R] =
            -std::pow(2.0, -8.0 * static_cast<double>(h) / static_cast<double>(H)) * std::abs(o);
    relpos = register_parameter("relpos", Tensor::from_vector(t, {H, W}, DType::F32));
  }
}

Tensor Attention::forward(const Tensor& x, const Tensor& bias, const std::vector<int32_t>& cu_seqlens) const {
  const anomaly::Scope in_module = scope();
  const bool packed = !cu_seqlens.empty();
  PF_CHECK(x.ndim() == (packed ? 2 : 3), "attention input must be "
                                             << (packed ? "(T,d) when packed" : "(B,N,d)") << ", got "
                                             << shape_str(x.shape()));
  const int64_t d = x.size(-1);
  Shape heads = x.shape();  // (B,N,H,d/H) or packed (T,H,d/H)
  heads.back() = H;
  heads.push_back(d / H);
  ops::AttentionOptions opt;
  opt.cu_seqlens_q = cu_seqlens;
  const Tensor qh = ops::reshape(q->forward(x), heads), kh = ops::reshape(k->forward(x), heads),
               vh = ops::reshape(v->forward(x), heads);
  // The CPU kernel takes the table in q's dtype (the parameters' dtype: fp32 or fp64), the GPU
  // kernel in fp32 whatever the activations are (bf16 keeps fp32 parameters anyway).
  Tensor table = relpos;
  if (table.defined() && x.device() == Device::CUDA && table.dtype() != DType::F32)
    table = ops::cast(table, DType::F32);
  // (B,N,H,d/H) or (T,H,d/H), scale 1/√(d/H); T undefined for pair models
  const Tensor a = ops::attention(qh, kh, vh, bias, table, opt);
  return o->forward(ops::reshape(a, x.shape()));
}

// ---- PairBiasLayer -----------------------------------------------------------------------------

PairBiasLayer::PairBiasLayer(const ModelConfig& cfg, Rng& rng) {
  if (cfg.attn_bias == "pair") {
    pair_norm = register_module("pair_norm", std::make_shared<nn::LayerNorm>(cfg.c_z));
    pair_proj = register_module("pair_proj", std::make_shared<nn::Linear>(cfg.c_z, cfg.n_heads, false, rng));
  }
  norm1 = register_module("norm1", std::make_shared<nn::LayerNorm>(cfg.d_model));
  attn = register_module("attn", std::make_shared<Attention>(cfg, rng));
  norm2 = register_module("norm2", std::make_shared<nn::LayerNorm>(cfg.d_model));
  mlp = register_module("mlp", std::make_shared<nn::MLP>(cfg.d_model, cfg.d_ff, rng));
}

Tensor PairBiasLayer::forward(const Tensor& x, const Tensor& b, const Packing* packing) const {
  const anomaly::Scope in_module = scope();
  const Tensor x1 = norm1->forward(x);
  const Tensor h = ops::add(x, attn->forward(x1, b, packing ? packing->cu_seqlens : std::vector<int32_t>{}));
  return ops::add(h, mlp->forward(norm2->forward(h)));
}

// ---- PairBiasModel -----------------------------------------------------------------------------

PairBiasModel::PairBiasModel(const ModelConfig& cfg, uint64_t seed) : cfg_(cfg) {
  PF_CHECK(cfg.attn_bias == "pair" || cfg.attn_bias == "relpos",
           "PairBiasModel: model.attn_bias must be pair or relpos, found '" << cfg.attn_bias << "'");
  Rng rng(seed);
  embed = register_module("embed", std::make_shared<nn::Embedding>(cfg.n_types, cfg.d_model, rng));
  if (cfg.attn_bias == "pair") pair = register_module("pair", std::make_shared<PairRepresentation>(cfg, rng));
  for (int l = 0; l < cfg.n_layers; ++l)
    layers.push_back(
        register_module("layers." + std::to_string(l), std::make_shared<PairBiasLayer>(cfg, rng)));
  final_norm = register_module("final_norm", std::make_shared<nn::LayerNorm>(cfg.d_model));
  head = register_module("head", std::make_shared<nn::Linear>(cfg.d_model, cfg.n_types, true, rng));
}

// Each module's forward opens its own anomaly scope (nn::Module::scope): anomaly mode names the
// layer of a non-finite value ("layers.1.pair_norm").
Tensor PairBiasModel::forward(const Tensor& tokens, const PairFeatures& f) const {
  const Tensor x = embed->forward(tokens);              // (B,N,d)
  const Tensor z = pair ? pair->forward(f) : Tensor();  // (B,N,N,c_z); none for attn_bias: relpos
  return layers_and_head(x, z, nullptr);
}

Tensor PairBiasModel::forward(const Tensor& tokens, const Packing& packing) const {
  PF_CHECK(tokens.ndim() == 1 && !packing.cu_seqlens.empty() && tokens.size(0) == packing.cu_seqlens.back(),
           "PairBiasModel: packed tokens must be (T) with T = cu_seqlens[B] = "
               << (packing.cu_seqlens.empty() ? -1 : packing.cu_seqlens.back()) << ", got " << tokens.str());
  const Tensor x = embed->forward(tokens);                         // (T,d)
  const Tensor z = pair ? pair->forward(packing.pair) : Tensor();  // (P,c_z); none for attn_bias: relpos
  return layers_and_head(x, z, &packing);
}

Tensor PairBiasModel::layers_and_head(Tensor x, const Tensor& z, const Packing* packing) const {
  const std::vector<Tensor> biases =
      z.defined() ? pair_biases(z, packing) : std::vector<Tensor>(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) x = layers[l]->forward(x, biases[l], packing);
  return head->forward(final_norm->forward(x));
}

// The fused pair bias does the work of two modules in every layer: an anomaly inside it names
// both ("layers.pair_norm+pair_proj", the layer being the first index of the value it names).
std::vector<Tensor> PairBiasModel::pair_biases(const Tensor& z, const Packing* packing) const {
  std::vector<Tensor> gammas, betas, ws;
  for (const auto& layer : layers) {
    PF_CHECK(layer->pair_proj, "PairBiasModel: a layer without a pair bias in a pair model");
    gammas.push_back(layer->pair_norm->weight);
    betas.push_back(layer->pair_norm->bias);
    ws.push_back(layer->pair_proj->weight);
  }
  const double eps = layers.front()->pair_norm->eps;  // every layer's (nn::LayerNorm's 1e-5)
  const anomaly::Scope in_layers("layers"), in_modules("pair_norm+pair_proj");
  if (!packing)  // LN_z(z)·W_b permuted to (B,H,N,N) per layer: no normalised copy of z
    return ops::pair_bias_layers(z, gammas, betas, ws, eps);
  // z (P,c_z) as (1,1,P,c_z): each layer's (1,H,1,P), each head's row over all pairs; the
  // attention op wants chain by chain [H,n_b,n_b].
  const int64_t P = z.size(0);
  std::vector<Tensor> biases =
      ops::pair_bias_layers(ops::reshape(z, {1, 1, P, z.size(1)}), gammas, betas, ws, eps);
  for (Tensor& b : biases) b = pack_blocks(ops::reshape(b, {b.size(1), P}), packing->pair.pair_start);
  return biases;
}

LossResult model_loss(const PairBiasModel& model, const Tensor& tokens, const PairFeatures& f,
                      const Tensor& labels) {
  Tensor logits = model.forward(tokens, f);
  const int64_t rows = logits.size(0) * logits.size(1);
  Tensor flat = ops::reshape(logits, {rows, logits.size(2)});
  Tensor flat_labels = ops::reshape(labels, {rows});
  return {ops::cross_entropy(flat, flat_labels), ops::count_correct(flat.detach(), flat_labels), rows,
          flat.size(1)};
}

LossResult model_loss(const PairBiasModel& model, const Tensor& tokens, const Packing& packing,
                      const Tensor& labels) {
  const Tensor logits = model.forward(tokens, packing);  // (T,K): real residues only
  return {ops::cross_entropy(logits, labels), ops::count_correct(logits.detach(), labels), logits.size(0),
          logits.size(1)};
}

double LossResult::accuracy() const {
  const std::vector<int32_t> c = correct.to_vector<int32_t>();
  return ops::accuracy_of(c[0], c[1], rows, classes);
}

}  // namespace pf::models

namespace pf::models {

namespace {
// b = W_b·LN_z(Rel[rel] + Dist[dist]) for lists of (rel index, distance bin) pairs → (P,H)
Tensor bias_at(const PairBiasModel& model, int layer, const std::vector<int32_t>& rel,
               const std::vector<int32_t>& dist) {
  PF_CHECK(model.pair,
           "the bias against distance and relative position is a pair model's (model.attn_bias is "
               << model.config().attn_bias << ")");
  NoGradGuard no_grad;
  const Device dev = model.pair->rel->weight.device();
  const int64_t P = static_cast<int64_t>(rel.size());
  // The modules are called outside the model's forward: their parents' scopes are opened here,
  // so that anomaly mode still names them in full ("layers.0.pair_proj").
  Tensor z;
  {
    const anomaly::Scope in_pair("pair");
    z = ops::add(model.pair->rel->forward(Tensor::from_vector(rel, {P}, DType::I32, dev)),
                 model.pair->dist->forward(Tensor::from_vector(dist, {P}, DType::I32, dev)));
  }
  const anomaly::Scope in_layer("layers", layer);
  const auto& l = *model.layers.at(layer);
  return l.pair_proj->forward(l.pair_norm->forward(z)).to(Device::CPU).to(DType::F64);
}
}  // namespace

Tensor bias_vs_distance(const PairBiasModel& model, int layer) {
  const ModelConfig& c = model.config();
  std::vector<int32_t> rel(c.dist_bins, 2 * c.relpos_clip), dist(c.dist_bins);
  for (int k = 0; k < c.dist_bins; ++k) dist[k] = k;
  return bias_at(model, layer, rel, dist);
}

Tensor bias_vs_relpos(const PairBiasModel& model, int layer) {
  const ModelConfig& c = model.config();
  std::vector<int32_t> rel, dist;
  for (int o = -c.relpos_clip; o <= c.relpos_clip; ++o) {
    rel.push_back(o + c.relpos_clip);
    dist.push_back(distance_bin(3.8 * std::sqrt(std::abs(o)), c));
  }
  return bias_at(model, layer, rel, dist);
}

Tensor relpos_table(const PairBiasModel& model, int layer) {
  const Tensor& t = model.layers.at(layer)->attn->relpos;
  PF_CHECK(t.defined(), "relpos_table: layer " << layer
                                               << " has no relative-position table (model.attn_bias is "
                                               << model.config().attn_bias << ")");
  return t.detach().to(Device::CPU).to(DType::F64);
}

}  // namespace pf::models
