// Modules, the pair-bias model and the optimiser: names, shapes, float64 gradient checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "framework/allocator.h"
#include "framework/gradcheck.h"
#include "framework/optim.h"
#include "models/pairbias.h"
#include "run/modes.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_types = 5, c.d_model = 8, c.n_heads = 2, c.n_layers = 2, c.d_ff = 12, c.c_z = 4;
  c.relpos_clip = 3, c.dist_bins = 6, c.dist_max = 12.0;
  return c;
}

// Central differences in float64 with eps 1e-5: truncation O(eps^2 f''') ~ 1e-10 and rounding
// O(eps_64 |L| / eps) ~ 1e-11 per element, so a parameter whose gradient elements are ~1e-3 shows
// ~1e-7 relative; 1e-6 (the --gradcheck bound) sits above that and far below any real bug (O(1)).
constexpr double kGradTol = 1e-6;

void expect_gradcheck(const std::function<Tensor()>& f, const nn::NamedTensors& params) {
  GradcheckOptions opt;
  opt.eps = 1e-5;
  for (const auto& e : gradcheck(f, params, opt)) EXPECT_LT(e.rel_error, kGradTol) << e.name;
}

TEST(Model, ParameterNamesFollowTheDesign) {
  models::PairBiasModel m(tiny_config(), 0);
  std::set<std::string> names;
  for (const auto& [name, p] : m.named_parameters()) names.insert(name);
  std::set<std::string> want = {"embed.weight",    "pair.rel.weight", "pair.dist.weight", "final_norm.weight",
                                "final_norm.bias", "head.weight",     "head.bias"};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    for (const char* n : {"pair_norm.weight", "pair_norm.bias", "pair_proj.weight", "norm1.weight",
                          "norm1.bias", "norm2.weight", "norm2.bias", "attn.q.weight", "attn.q.bias",
                          "attn.k.weight", "attn.k.bias", "attn.v.weight", "attn.v.bias", "attn.o.weight",
                          "attn.o.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"})
      want.insert(p + n);
  }
  EXPECT_EQ(names, want);
  // [out, in] layout
  EXPECT_EQ(m.layers[0]->mlp->fc1->weight.shape(), (Shape{12, 8}));
  EXPECT_EQ(m.layers[1]->pair_proj->weight.shape(), (Shape{2, 4}));
  EXPECT_EQ(m.pair->rel->weight.shape(), (Shape{7, 4}));
}

TEST(Model, PairFeaturesMatchTheDefinition) {
  ModelConfig c = tiny_config();
  // Three residues on the x axis at 0, 2.5 and 13 Å.
  const std::vector<float> x = {0, 0, 0, 2.5f, 0, 0, 13, 0, 0};
  const auto f = models::pair_features(x.data(), 1, 3, c);
  const auto rel = f.rel_idx.to_vector<int32_t>();
  const auto bin = f.dist_bin.to_vector<int32_t>();
  EXPECT_EQ(rel[0 * 3 + 2], 2 + 3);  // j − i = 2, R = 3
  EXPECT_EQ(rel[2 * 3 + 0], -2 + 3);
  EXPECT_EQ(bin[0 * 3 + 1], 1);  // ⌊2.5 / 12 · 6⌋ = 1
  EXPECT_EQ(bin[0 * 3 + 2], 5);  // 13 Å clamps to the last bin
  EXPECT_EQ(bin[1 * 3 + 1], 0);
  EXPECT_EQ(models::distance_bin(11.999, c), 5);
}

TEST(Modules, GradcheckEachModule) {
  Rng rng(3);
  nn::Linear lin(5, 3, true, rng);
  nn::LayerNorm ln(5);
  nn::MLP mlp(5, 7, rng);
  nn::BiasedSelfAttention attn(6, 2, rng);
  for (nn::Module* m : std::initializer_list<nn::Module*>{&lin, &ln, &mlp, &attn}) m->to(DType::F64);
  // LayerNorm with identity weights hides errors in the weight's gradient: perturb them.
  ln.weight.copy_(uniform({5}, 0.5, 1.5, rng, DType::F64));
  ln.bias.copy_(uniform({5}, -0.5, 0.5, rng, DType::F64));
  Tensor x = randn({2, 3, 5}, rng, DType::F64).requires_grad_();
  Tensor xa = randn({2, 4, 6}, rng, DType::F64).requires_grad_();
  Tensor bias = randn({2, 2, 4, 4}, rng, DType::F64).requires_grad_();
  auto with = [](nn::NamedTensors p, std::vector<std::pair<std::string, Tensor>> extra) {
    p.insert(p.end(), extra.begin(), extra.end());
    return p;
  };
  expect_gradcheck([&] { return lin.forward(x); }, with(lin.named_parameters(), {{"x", x}}));
  expect_gradcheck([&] { return ln.forward(x); }, with(ln.named_parameters(), {{"x", x}}));
  expect_gradcheck([&] { return mlp.forward(x); }, with(mlp.named_parameters(), {{"x", x}}));
  expect_gradcheck([&] { return attn.forward(xa, bias); },
                   with(attn.named_parameters(), {{"x", xa}, {"bias", bias}}));
}

TEST(Model, GradcheckWholeModelFloat64) {
  const ModelConfig c = tiny_config();
  models::PairBiasModel m(c, 1);
  m.to(DType::F64);
  Rng rng(5);
  for (auto& [name, p] : m.named_parameters())  // break the symmetry of identity norms
    if (name.find("norm") != std::string::npos)
      p.copy_(ops::add(p, uniform(p.shape(), -0.3, 0.3, rng, DType::F64)));
  const ChainSet set = generate_chains(2, 9, c.n_types, 7, "test");
  const auto b = run::to_tensors(gather_batch(set, {0, 1}), c, Device::CPU);
  expect_gradcheck([&] { return models::model_loss(m, b.tokens, b.pair, b.labels).loss; },
                   m.named_parameters());
}

// ---- attn_bias: relpos ----------------------------------------------------------------------

ModelConfig tiny_relpos_config() {
  ModelConfig c = tiny_config();
  c.attn_bias = "relpos";
  return c;
}

TEST(RelposModel, ParametersAreTheTablesAndNoPairRepresentation) {
  const ModelConfig c = tiny_relpos_config();
  models::PairBiasModel m(c, 0);
  EXPECT_TRUE(m.relpos_bias());
  EXPECT_FALSE(m.pair);
  std::set<std::string> names;
  for (const auto& [name, p] : m.named_parameters()) names.insert(name);
  std::set<std::string> want = {"embed.weight", "final_norm.weight", "final_norm.bias", "head.weight",
                                "head.bias"};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    for (const char* n :
         {"attn.relpos", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.q.weight",
          "attn.q.bias", "attn.k.weight", "attn.k.bias", "attn.v.weight", "attn.v.bias", "attn.o.weight",
          "attn.o.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"})
      want.insert(p + n);
  }
  EXPECT_EQ(names, want);
  // (H, 2R+1), the locality prior −m_h·|o| with m_h = 2^(−8h/H): H = 2 → slopes 1 and 1/16.
  const Tensor& t = m.layers[1]->attn->relpos;
  ASSERT_EQ(t.shape(), (Shape{2, 7}));
  EXPECT_EQ(t.dtype(), DType::F32);
  const auto v = t.to_vector<double>();
  for (int o = -3; o <= 3; ++o) {
    EXPECT_EQ(v[o + 3], -std::abs(o)) << o;
    EXPECT_EQ(v[7 + o + 3], -std::abs(o) / 16.0) << o;
  }
  EXPECT_EQ(models::relpos_table(m, 1).to_vector<double>(), v);
  EXPECT_THROW(models::bias_vs_relpos(m, 0), Error);  // a pair model's plot
  EXPECT_THROW(models::relpos_table(models::PairBiasModel(tiny_config(), 0), 0), Error);
  // the table is a bias, not a weight: no weight decay
  const auto params = m.named_parameters();
  const auto mask = optim::decay_mask(params, {"embed.weight"});
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].first.find("relpos") != std::string::npos) EXPECT_FALSE(mask[i]) << params[i].first;
}

// The relpos model equals the same transformer run with the table materialised by hand as a
// dense (1,H,N,N) bias through the plain attention op: the fused lookup is exactly the rule
// b_hij = T[h, clip(j−i, −R, R) + R], and the loss and every gradient agree.
TEST(RelposModel, EqualsTheTableMaterialisedAsADenseBias) {
  const ModelConfig c = tiny_relpos_config();
  models::PairBiasModel m(c, 4);
  m.to(DType::F64);
  Rng rng(11);
  for (auto& [name, p] : m.named_parameters())  // a table with structure in every entry
    if (name.find("relpos") != std::string::npos) p.copy_(randn(p.shape(), rng, DType::F64));
  const int B = 3, N = 11;  // N > 2R+1: clipped offsets on both sides
  const ChainSet set = generate_chains(B, N, c.n_types, 9, "test", "relpos");
  const auto b = run::to_tensors(gather_batch(set, {0, 1, 2}), c, Device::CPU);
  EXPECT_FALSE(b.pair.rel_idx.defined()) << "a relpos model needs no pair features";

  m.zero_grad();
  const auto fused = models::model_loss(m, b.tokens, b.pair, b.labels);
  fused.loss.backward();
  std::vector<std::vector<double>> g_fused;
  for (const auto& [name, p] : m.named_parameters()) g_fused.push_back(p.grad().to_vector<double>());

  // By hand: embed → layers with the dense bias → head, sharing m's parameters.
  const int R = c.relpos_clip;
  std::vector<int32_t> idx(N * N);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) idx[i * N + j] = std::clamp(j - i, -R, R) + R;
  const Tensor rel = Tensor::from_vector(idx, {N, N});
  m.zero_grad();
  Tensor x = m.embed->forward(b.tokens);
  for (const auto& layer : m.layers) {
    const Tensor table = layer->attn->relpos;  // (H, 2R+1) → (1,H,N,N)
    const Tensor bias = ops::reshape(
        ops::permute(ops::embedding(ops::transpose(table, 0, 1), rel), {2, 0, 1}), {1, c.n_heads, N, N});
    x = ops::add(x, layer->attn->nn::BiasedSelfAttention::forward(layer->norm1->forward(x), bias));
    x = ops::add(x, layer->mlp->forward(layer->norm2->forward(x)));
  }
  const Tensor logits = m.head->forward(m.final_norm->forward(x));
  const Tensor loss =
      ops::cross_entropy(ops::reshape(logits, {B * N, c.n_types}), ops::reshape(b.labels, {B * N}));
  loss.backward();
  // float64 throughout; the two paths differ only in summation order (~1e-16 relative).
  EXPECT_NEAR(fused.loss.item(), loss.item(), 1e-12);
  size_t k = 0;
  for (const auto& [name, p] : m.named_parameters()) {
    const auto g = p.grad().to_vector<double>();
    ASSERT_EQ(g.size(), g_fused[k].size()) << name;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < g.size(); ++i)
      diff += (g[i] - g_fused[k][i]) * (g[i] - g_fused[k][i]), norm += g[i] * g[i];
    EXPECT_LE(std::sqrt(diff), 1e-10 * std::sqrt(norm) + 1e-14) << name;
    ++k;
  }
}

TEST(RelposModel, GradcheckWholeModelFloat64) {
  const ModelConfig c = tiny_relpos_config();
  models::PairBiasModel m(c, 2);
  m.to(DType::F64);
  Rng rng(6);
  for (auto& [name, p] : m.named_parameters())  // break the symmetry of identity norms and the prior
    if (name.find("norm") != std::string::npos || name.find("relpos") != std::string::npos)
      p.copy_(ops::add(p, uniform(p.shape(), -0.3, 0.3, rng, DType::F64)));
  const ChainSet set = generate_chains(2, 9, c.n_types, 7, "test", "relpos");  // 9 > 2R+1 = 7
  const auto b = run::to_tensors(gather_batch(set, {0, 1}), c, Device::CPU);
  expect_gradcheck([&] { return models::model_loss(m, b.tokens, b.pair, b.labels).loss; },
                   m.named_parameters());
}

// ---- packed batches of chains of different lengths --------------------------------------------

// One chain of a packed batch as a dense batch of its own (B = 1, N = its length).
Batch single(const PackedBatch& p, int k) {
  Batch b;
  b.B = 1;
  b.N = p.cu_seqlens[k + 1] - p.cu_seqlens[k];
  const size_t at = static_cast<size_t>(p.cu_seqlens[k]), n = static_cast<size_t>(b.N);
  b.tokens.assign(p.tokens.begin() + at, p.tokens.begin() + at + n);
  b.labels.assign(p.labels.begin() + at, p.labels.begin() + at + n);
  b.coords.assign(p.coords.begin() + 3 * at, p.coords.begin() + 3 * (at + n));
  return b;
}

// Packed forward, loss and every gradient equal running each chain alone, padding-free:
// logits row for row, loss = Σ n_b·loss_b / T, gradient = Σ (n_b / T)·gradient_b.
void expect_packed_equals_each_chain_alone(const ModelConfig& c) {
  SCOPED_TRACE("attn_bias " + c.attn_bias);
  models::PairBiasModel m(c, 3);
  m.to(DType::F64);
  Rng rng(12);
  for (auto& [name, p] : m.named_parameters())  // structure in the norms and the tables
    if (name.find("norm") != std::string::npos || name.find("relpos") != std::string::npos)
      p.copy_(ops::add(p, uniform(p.shape(), -0.3, 0.3, rng, DType::F64)));
  // Lengths 6..13 around 2R+1 = 7 (clipped offsets in the long chains, none in the short ones).
  const ChainSet set = generate_chains(ChainSpec{5, 6, 13, c.n_types, 21, "test", "relpos"});
  const std::vector<int> idx = {3, 0, 4, 1};
  const PackedBatch p = gather_packed(set, idx);
  ASSERT_GT(p.cu_seqlens[2] - p.cu_seqlens[1], 0);
  const auto pt = run::to_tensors(p, c, Device::CPU);
  EXPECT_EQ(pt.tokens.shape(), (Shape{p.T()}));

  m.zero_grad();
  const Tensor logits = m.forward(pt.tokens, pt.packing);
  ASSERT_EQ(logits.shape(), (Shape{p.T(), c.n_types}));
  const auto r = models::model_loss(m, pt.tokens, pt.packing, pt.labels);
  r.loss.backward();
  std::vector<std::vector<double>> g_packed;
  for (const auto& [name, t] : m.named_parameters()) g_packed.push_back(t.grad().to_vector<double>());

  const auto all_logits = logits.to_vector<double>();
  double loss = 0;
  std::vector<std::vector<double>> g_sum(g_packed.size());
  for (size_t k = 0; k < idx.size(); ++k) {
    const Batch one = single(p, static_cast<int>(k));
    const double w = static_cast<double>(one.N) / static_cast<double>(p.T());
    const auto b = run::to_tensors(one, c, Device::CPU);
    m.zero_grad();
    const Tensor lk = m.forward(b.tokens, b.pair);  // (1,n,K)
    const auto lv = lk.to_vector<double>();
    const std::vector<double> rows(all_logits.begin() + p.cu_seqlens[k] * c.n_types,
                                   all_logits.begin() + p.cu_seqlens[k + 1] * c.n_types);
    EXPECT_LT(rel_error(rows, lv), 1e-12) << "logits of chain " << k;
    const auto rk = models::model_loss(m, b.tokens, b.pair, b.labels);
    rk.loss.backward();
    loss += w * rk.loss.item();
    size_t i = 0;
    for (const auto& [name, t] : m.named_parameters()) {
      const auto g = t.grad().to_vector<double>();
      g_sum[i].resize(g.size(), 0.0);
      for (size_t e = 0; e < g.size(); ++e) g_sum[i][e] += w * g[e];
      ++i;
    }
  }
  // float64 both ways; only the order of sums differs (~1e-16 relative per operation). The
  // attention's k biases get a gradient that is 0 in exact arithmetic (softmax ignores a shift
  // shared by all keys): those are held to the whole gradient's norm instead of their own.
  EXPECT_NEAR(r.loss.item(), loss, 1e-12 * loss);
  double total = 0;
  for (const auto& g : g_sum)
    for (double x : g) total += x * x;
  size_t i = 0;
  for (const auto& [name, t] : m.named_parameters()) {
    double diff = 0, norm = 0;
    for (size_t e = 0; e < g_sum[i].size(); ++e)
      diff += (g_packed[i][e] - g_sum[i][e]) * (g_packed[i][e] - g_sum[i][e]),
          norm += g_sum[i][e] * g_sum[i][e];
    EXPECT_LE(std::sqrt(diff), 1e-11 * std::max(std::sqrt(norm), 1e-3 * std::sqrt(total))) << name;
    ++i;
  }
}

TEST(PackedModel, EqualsEachChainAlonePairBias) { expect_packed_equals_each_chain_alone(tiny_config()); }
TEST(PackedModel, EqualsEachChainAloneRelposBias) {
  expect_packed_equals_each_chain_alone(tiny_relpos_config());
}

TEST(PackedModel, PairFeaturesPerChain) {
  ModelConfig c = tiny_config();  // R = 3
  // Two chains: 2 residues on the x axis (0 and 2.5 Å), then 3 (0, 13, 0 Å).
  const std::vector<float> x = {0, 0, 0, 2.5f, 0, 0, 0, 0, 0, 13, 0, 0, 0, 0, 0};
  const auto f = models::packed_pair_features(x.data(), {0, 2, 5}, c);
  ASSERT_EQ(f.rel_idx.shape(), (Shape{4 + 9}));
  EXPECT_EQ(f.pair_start, (std::vector<int64_t>{0, 4, 13}));
  const auto rel = f.rel_idx.to_vector<int32_t>();
  const auto bin = f.dist_bin.to_vector<int32_t>();
  EXPECT_EQ(rel[1], 1 + 3);       // chain 0, (0,1)
  EXPECT_EQ(rel[4 + 2], 2 + 3);   // chain 1, (0,2)
  EXPECT_EQ(rel[4 + 6], -2 + 3);  // chain 1, (2,0)
  EXPECT_EQ(bin[1], 1);           // ⌊2.5 / 12 · 6⌋
  EXPECT_EQ(bin[4 + 1], 5);       // 13 Å: the last bin
  EXPECT_EQ(bin[4 + 2], 0);       // residues 0 and 2 of chain 1 coincide
}

TEST(PackedModel, PackBlocksAndItsGradient) {
  // x (H=2, P=4+9+0+1): segments of 4, 9, 0 and 1 pairs → blocks [2,4], [2,9], [2,0], [2,1].
  const std::vector<int64_t> start = {0, 4, 13, 13, 14};
  std::vector<double> xv(28);
  for (int k = 0; k < 28; ++k) xv[k] = k;  // x[h, p] = 14·h + p
  Tensor x = Tensor::from_vector(xv, {2, 14}).requires_grad_();
  const Tensor out = models::pack_blocks(x, start);
  std::vector<double> want;
  for (size_t b = 0; b + 1 < start.size(); ++b)
    for (int h = 0; h < 2; ++h)
      for (int64_t p = start[b]; p < start[b + 1]; ++p) want.push_back(14 * h + p);
  EXPECT_EQ(out.to_vector<double>(), want);
  // The backward is the inverse copy: the gradient of Σ w·out is w moved back to x's places.
  std::vector<double> w(28);
  for (int k = 0; k < 28; ++k) w[k] = 100 + k;
  ops::sum(ops::mul(out, Tensor::from_vector(w, {28}))).backward();
  const auto g = x.grad().to_vector<double>();
  for (int k = 0; k < 28; ++k) EXPECT_EQ(g[static_cast<size_t>(want[k])], w[k]) << k;
  EXPECT_THROW(models::pack_blocks(x, {0, 4, 13}), Error);  // does not cover P
  EXPECT_THROW(models::pack_blocks(x, {0, 5, 4, 14}), Error);
}

TEST(PackedModel, GradcheckFloat64) {
  const ModelConfig c = tiny_config();
  models::PairBiasModel m(c, 5);
  m.to(DType::F64);
  Rng rng(8);
  for (auto& [name, p] : m.named_parameters())
    if (name.find("norm") != std::string::npos)
      p.copy_(ops::add(p, uniform(p.shape(), -0.3, 0.3, rng, DType::F64)));
  const ChainSet set = generate_chains(ChainSpec{2, 6, 9, c.n_types, 7, "test", "chain"});
  ASSERT_NE(set.lengths[0], set.lengths[1]);
  const auto b = run::to_tensors(gather_packed(set, {0, 1}), c, Device::CPU);
  expect_gradcheck([&] { return models::model_loss(m, b.tokens, b.packing, b.labels).loss; },
                   m.named_parameters());
}

// On the GPU: the packed features equal the CPU's (the same bins), and a packed step of both
// models agrees with the CPU's float32 step (loss and every gradient).
TEST(PackedModel, GpuMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or a build without CUDA)";
  for (const char* bias : {"pair", "relpos"}) {
    SCOPED_TRACE(bias);
    ModelConfig c = tiny_config();
    c.attn_bias = bias;
    c.d_model = 32, c.n_heads = 2, c.d_ff = 48;  // head dim 16: a size the GPU kernels take
    const ChainSet set = generate_chains(ChainSpec{6, 6, 70, c.n_types, 17, "test", "chain"});
    const PackedBatch p = gather_packed(set, {5, 0, 3, 1, 4});
    const auto cpu_b = run::to_tensors(p, c, Device::CPU);
    const auto gpu_b = run::to_tensors(p, c, Device::CUDA);
    if (c.attn_bias == "pair") {
      EXPECT_EQ(gpu_b.packing.pair.rel_idx.to_vector<int32_t>(),
                cpu_b.packing.pair.rel_idx.to_vector<int32_t>());
      EXPECT_EQ(gpu_b.packing.pair.dist_bin.to_vector<int32_t>(),
                cpu_b.packing.pair.dist_bin.to_vector<int32_t>());
    }
    models::PairBiasModel cpu(c, 4), gpu(c, 4);  // same seed: the same weights
    gpu.to(Device::CUDA);
    double loss[2];
    std::vector<std::vector<double>> grads[2];
    int k = 0;
    for (auto* m : {&cpu, &gpu}) {
      const auto& b = k == 0 ? cpu_b : gpu_b;
      m->zero_grad();
      const auto r = models::model_loss(*m, b.tokens, b.packing, b.labels);
      r.loss.backward();
      loss[k] = r.loss.item();
      for (const auto& [name, t] : m->named_parameters()) grads[k].push_back(t.grad().to_vector<double>());
      ++k;
    }
    // float32 on both devices, different summation orders: ~1e-6 relative; 1e-4 as in
    // test_train_cuda, with the k biases (0 in exact arithmetic) held to the whole gradient.
    EXPECT_NEAR(loss[1], loss[0], 1e-4 * loss[0]);
    double total = 0;
    for (const auto& g : grads[0])
      for (double x : g) total += x * x;
    size_t i = 0;
    for (const auto& [name, t] : cpu.named_parameters()) {
      double diff = 0, norm = 0;
      for (size_t e = 0; e < grads[0][i].size(); ++e)
        diff += (grads[1][i][e] - grads[0][i][e]) * (grads[1][i][e] - grads[0][i][e]),
            norm += grads[0][i][e] * grads[0][i][e];
      EXPECT_LE(std::sqrt(diff), 1e-4 * std::max(std::sqrt(norm), 1e-2 * std::sqrt(total))) << name;
      ++i;
    }
  }
}

TEST(Optim, ScheduleWarmsUpThenDecaysToMin) {
  EXPECT_DOUBLE_EQ(optim::lr_at(0, 1.0, 0.1, 4, 20), 0.25);
  EXPECT_DOUBLE_EQ(optim::lr_at(3, 1.0, 0.1, 4, 20), 1.0);
  EXPECT_DOUBLE_EQ(optim::lr_at(4, 1.0, 0.1, 4, 20), 1.0);
  EXPECT_NEAR(optim::lr_at(12, 1.0, 0.1, 4, 20), 0.55, 1e-12);  // half-way: (1 + 0.1) / 2
  EXPECT_NEAR(optim::lr_at(20, 1.0, 0.1, 4, 20), 0.1, 1e-12);
}

TEST(Optim, AdamWStepMatchesTheFormula) {
  Tensor w = Tensor::from_vector(std::vector<double>{1.0, -2.0, 0.5, 3.0}, {2, 2}).requires_grad_();
  Tensor b = Tensor::from_vector(std::vector<double>{0.1, 0.2}, {2}).requires_grad_();
  optim::AdamW opt({{"lin.weight", w}, {"lin.bias", b}},
                   optim::decay_mask({{"lin.weight", w}, {"lin.bias", b}}, {}), {0.1, 0.9, 0.999, 1e-8, 0.5});
  const std::vector<double> g = {0.3, -0.1, 0.0, 2.0};
  for (int step = 1; step <= 2; ++step) {
    w.set_grad(Tensor::from_vector(g, {2, 2}));
    b.set_grad(Tensor::from_vector(std::vector<double>{1.0, -1.0}, {2}));
    opt.step(0.1);
  }
  // By hand for element 0 of w (decayed): two steps with the same gradient.
  double p = 1.0, m = 0, v = 0;
  for (int t = 1; t <= 2; ++t) {
    p *= 1 - 0.1 * 0.5;
    m = 0.9 * m + 0.1 * g[0];
    v = 0.999 * v + 0.001 * g[0] * g[0];
    p -= 0.1 * (m / (1 - std::pow(0.9, t))) / (std::sqrt(v / (1 - std::pow(0.999, t))) + 1e-8);
  }
  EXPECT_NEAR(w.to_vector<double>()[0], p, 1e-14);
  // The bias gets no decay: two steps of size lr·sign(g) (Adam's first steps are ±lr).
  EXPECT_NEAR(b.to_vector<double>()[0], 0.1 - 0.2, 1e-7);
}

TEST(Optim, ClipGradNormScalesToTheBound) {
  Tensor a = Tensor::zeros({2}, DType::F64).requires_grad_();
  Tensor c = Tensor::zeros({1}, DType::F64).requires_grad_();
  a.set_grad(Tensor::from_vector(std::vector<double>{3, 0}, {2}));
  c.set_grad(Tensor::from_vector(std::vector<double>{4}, {1}));
  EXPECT_DOUBLE_EQ(optim::clip_grad_norm({a, c}, 1.0), 5.0);
  EXPECT_NEAR(a.grad().to_vector<double>()[0], 3.0 / (5.0 + 1e-6), 1e-15);
  EXPECT_NEAR(c.grad().to_vector<double>()[0], 4.0 / (5.0 + 1e-6), 1e-15);
  EXPECT_NEAR(optim::clip_grad_norm({a, c}, 10.0), 1.0, 1e-6);  // under the bound: untouched
  EXPECT_NEAR(c.grad().to_vector<double>()[0], 4.0 / (5.0 + 1e-6), 1e-15);
}

TEST(Optim, DecayOnlyOnLinearWeights) {
  models::PairBiasModel m(tiny_config(), 0);
  const auto params = m.named_parameters();
  const auto mask = optim::decay_mask(params, {"embed.weight", "pair.rel.weight", "pair.dist.weight"});
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& n = params[i].first;
    const bool linear_weight =
        n.find("pair_proj.weight") != std::string::npos ||
        n.find("attn.") != std::string::npos && n.find(".weight") != std::string::npos ||
        n.find("mlp.") != std::string::npos && n.find(".weight") != std::string::npos || n == "head.weight";
    EXPECT_EQ(mask[i], linear_weight) << n;
  }
}

}  // namespace
}  // namespace pf
