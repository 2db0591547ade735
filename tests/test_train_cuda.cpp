// Whole training steps of the pair-bias model on the GPU against the CPU, from the same weights
// and the same batch: the loss and every parameter gradient of one step (float32: ≤ 1e-4
// relative), then ten AdamW steps whose losses agree; bf16 mixed precision against the fp32 CPU
// with a bound tied to bf16. Skips cleanly without a CUDA device.
//
// Tolerances:
// - fp32, 1e-4 (of the gradient's norm, floored at the RMS gradient norm for the two gradients
//   that are exactly zero in exact arithmetic; see the test): every op agrees with the CPU to ≤ 1e-5 (tests/test_ops_cuda.cpp); a step chains
//   ~60 ops and the backward adds their errors, the parameter gradients being sums over
//   B·N (or B·N·N) terms: a few ×1e-6 is typical, 1e-4 leaves a margin and still catches any
//   wrong op (which shows O(1)).
// - ten steps: AdamW divides by √v, which amplifies differences of tiny gradients; the losses
//   stay within 1e-3 relative over ten steps (measured ~1e-5).
// - bf16 step: activations and matmul inputs are rounded to bf16 (u = 2⁻⁸ ≈ 3.9e-3) at every
//   layer; the loss, a mean over all residues, moves by ≲ u, bound 2u; gradients are checked
//   norm-wise over all parameters at 10·u ≈ 4e-2 (each passes through ~10 bf16 roundings).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>

#include "data/chain.h"
#include "framework/allocator.h"
#include "framework/autograd.h"
#include "framework/cuda_graph.h"
#include "framework/deterministic.h"
#include "framework/ops.h"
#include "framework/optim.h"
#include "framework/precision.h"
#include "models/pairbias.h"
#include "run/modes.h"
#include "run/train_step.h"
#include "tests/run_record.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

#define PF_REQUIRE_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or a build without CUDA)"

ModelConfig small_model() {
  ModelConfig m;
  m.n_types = 8;
  m.d_model = 64;
  m.n_heads = 4;  // head dim 16
  m.n_layers = 2;
  m.d_ff = 256;
  m.c_z = 16;
  m.relpos_clip = 8;
  m.dist_bins = 24;
  m.dist_max = 16.0;
  return m;
}

// A model on `device` with the weights of `src` (same seed → same init, copied to be sure).
void copy_weights(const models::PairBiasModel& src, models::PairBiasModel& dst) {
  const auto s = src.named_parameters();
  const auto d = dst.named_parameters();
  ASSERT_EQ(s.size(), d.size());
  for (size_t i = 0; i < s.size(); ++i) {
    Tensor t = d[i].second;
    t.set_data(s[i].second.detach().to(t.device()));
  }
}

struct StepResult {
  double loss = 0;
  std::vector<std::vector<double>> grads;
};

StepResult one_step(models::PairBiasModel& model, const run::BatchTensors& b) {
  model.zero_grad();
  const auto r = models::model_loss(model, b.tokens, b.pair, b.labels);
  r.loss.backward();
  StepResult out;
  out.loss = r.loss.item();
  for (const auto& [name, p] : model.named_parameters()) {
    EXPECT_TRUE(p.grad().defined()) << name << " got no gradient";
    out.grads.push_back(p.grad().defined() ? p.grad().to_vector<double>() : std::vector<double>());
  }
  return out;
}

// One fp32 step of `cfg` at (B, N) on the CPU and the GPU: the loss and every parameter gradient.
void one_step_matches_cpu(const ModelConfig& cfg, int B, int N);

TEST(TrainCuda, OneStepLossAndEveryGradientMatchCpuFp32) {
  PF_REQUIRE_GPU();
  one_step_matches_cpu(small_model(), 3, 37);  // odd sizes on purpose
}

// Sizes past the register kernels and the old caps, in one model: c_z 128 with 32 heads (the
// chunked pair_bias kernels), head dim 64 / 32 = 2 (attention zero-padded to 16), tables of
// 2·100 + 1 relative positions and 300 distance bins (embedding_sum tiled over table rows).
TEST(TrainCuda, OneStepAtWidePairSizesMatchesCpuFp32) {
  PF_REQUIRE_GPU();
  ModelConfig cfg = small_model();
  cfg.c_z = 128;
  cfg.n_heads = 32;
  cfg.relpos_clip = 100;
  cfg.dist_bins = 300;
  one_step_matches_cpu(cfg, 2, 29);
}

void one_step_matches_cpu(const ModelConfig& cfg, int B, int N) {
  std::vector<int> rows(B);
  for (int i = 0; i < B; ++i) rows[i] = i;
  const ChainSet set = generate_chains(B, N, cfg.n_types, test_seed(), "test");
  const Batch batch = gather_batch(set, rows);
  models::PairBiasModel cpu(cfg, test_seed()), gpu(cfg, test_seed() + 1);
  gpu.to(Device::CUDA);
  copy_weights(cpu, gpu);
  const StepResult rc = one_step(cpu, run::to_tensors(batch, cfg, Device::CPU));
  const StepResult rg = one_step(gpu, run::to_tensors(batch, cfg, Device::CUDA));
  EXPECT_NEAR(rg.loss, rc.loss, 1e-4 * std::abs(rc.loss));
  const auto names = cpu.named_parameters();
  // Two gradients are zero in exact arithmetic: attn.k.bias and pair_norm.bias only add a
  // per-(query, head) constant to every score of a row, which the softmax ignores. Both sides
  // then hold rounding noise of cancelled O(‖g‖) terms, so each parameter is judged against
  // 1e-4 of its own norm or, if larger, 1e-4 of the RMS parameter-gradient norm (the floor).
  double rms = 0;
  for (const auto& g : rc.grads) {
    double n2 = 0;
    for (double v : g) n2 += v * v;
    rms += n2 / rc.grads.size();
  }
  rms = std::sqrt(rms);
  double worst = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    double d2 = 0, n2 = 0;
    for (size_t j = 0; j < rc.grads[i].size(); ++j) {
      d2 += (rg.grads[i][j] - rc.grads[i][j]) * (rg.grads[i][j] - rc.grads[i][j]);
      n2 += rc.grads[i][j] * rc.grads[i][j];
    }
    const double e = std::sqrt(d2) / std::max(std::sqrt(n2), rms);
    EXPECT_LE(e, 1e-4) << names[i].first << " (gradient norm " << std::sqrt(n2) << ", floor " << rms << ")";
    worst = std::max(worst, e);
  }
  std::printf("fp32 step: loss cpu %.9g gpu %.9g, worst gradient rel. error %.2e over %zu params\n", rc.loss,
              rg.loss, worst, names.size());
}

TEST(TrainCuda, TenStepsOfLossAgreeFp32) {
  PF_REQUIRE_GPU();
  const ModelConfig cfg = small_model();
  const int B = 4, N = 33;
  const ChainSet set = generate_chains(40, N, cfg.n_types, test_seed() + 7, "test");
  models::PairBiasModel cpu(cfg, test_seed()), gpu(cfg, test_seed());
  gpu.to(Device::CUDA);
  copy_weights(cpu, gpu);
  const std::vector<std::string> emb = {"embed.weight", "pair.rel.weight", "pair.dist.weight"};
  const auto pc = cpu.named_parameters(), pg = gpu.named_parameters();
  optim::AdamW oc(pc, optim::decay_mask(pc, emb), {3e-3, 0.9, 0.999, 1e-8, 0.01});
  optim::AdamW og(pg, optim::decay_mask(pg, emb), {3e-3, 0.9, 0.999, 1e-8, 0.01});
  double worst = 0;
  for (int step = 0; step < 10; ++step) {
    std::vector<int> idx;
    for (int i = 0; i < B; ++i) idx.push_back((step * B + i) % set.S);
    const Batch batch = gather_batch(set, idx);
    double losses[2];
    int k = 0;
    for (auto* m : {&cpu, &gpu}) {
      const Device dev = m == &cpu ? Device::CPU : Device::CUDA;
      const auto b = run::to_tensors(batch, cfg, dev);
      m->zero_grad();
      const auto r = models::model_loss(*m, b.tokens, b.pair, b.labels);
      r.loss.backward();
      optim::clip_grad_norm(m->parameters(), 1.0);
      (m == &cpu ? oc : og).step(3e-3);
      losses[k++] = r.loss.item();
    }
    const double e = std::abs(losses[1] - losses[0]) / std::abs(losses[0]);
    EXPECT_LE(e, 1e-3) << "step " << step << ": cpu " << losses[0] << " gpu " << losses[1];
    worst = std::max(worst, e);
  }
  std::printf("ten fp32 steps: worst loss rel. difference %.2e\n", worst);
}

TEST(TrainCuda, OneStepBf16AgreesWithFp32Cpu) {
  PF_REQUIRE_GPU();
  const ModelConfig cfg = small_model();
  const int B = 3, N = 37;
  const ChainSet set = generate_chains(B, N, cfg.n_types, test_seed() + 3, "test");
  const Batch batch = gather_batch(set, {0, 1, 2});
  models::PairBiasModel cpu(cfg, test_seed()), gpu(cfg, test_seed());
  gpu.to(Device::CUDA);
  copy_weights(cpu, gpu);
  const StepResult rc = one_step(cpu, run::to_tensors(batch, cfg, Device::CPU));
  StepResult rg;
  {
    const AutocastGuard bf16(DType::BF16);
    rg = one_step(gpu, run::to_tensors(batch, cfg, Device::CUDA));
  }
  // master weights and their gradients stay fp32
  for (const auto& [name, p] : gpu.named_parameters()) {
    EXPECT_EQ(p.dtype(), DType::F32) << name;
    if (p.grad().defined()) EXPECT_EQ(p.grad().dtype(), DType::F32) << name;
  }
  const double u = 1.0 / 256;
  EXPECT_NEAR(rg.loss, rc.loss, 2 * u * std::abs(rc.loss));
  std::vector<double> all_c, all_g;
  for (size_t i = 0; i < rc.grads.size(); ++i) {
    all_c.insert(all_c.end(), rc.grads[i].begin(), rc.grads[i].end());
    all_g.insert(all_g.end(), rg.grads[i].begin(), rg.grads[i].end());
  }
  const double e = rel_error(all_g, all_c);
  EXPECT_LE(e, 10 * u);
  std::printf("bf16 step: loss cpu %.6f gpu %.6f; all gradients rel. error %.2e\n", rc.loss, rg.loss, e);
}

// The pair features computed on the GPU (from uploaded coordinates) equal the CPU's bin for bin,
// also for pairs placed exactly on bin edges, where a fused multiply-add on one side would move
// the pair to the neighbouring bin.
TEST(TrainCuda, PairFeaturesOnTheGpuEqualTheCpu) {
  PF_REQUIRE_GPU();
  ModelConfig c = small_model();
  c.dist_bins = 64;
  c.dist_max = 16.0;  // bin width 0.25 Å: edges exactly representable
  std::mt19937_64 rng(test_seed());
  std::normal_distribution<float> g(0.f, 6.f);
  const int B = 3, N = 97;
  std::vector<float> x(static_cast<size_t>(B) * N * 3);
  for (float& v : x) v = g(rng);
  // chain 0: residue i at (0.25·i, 0, 0) and (0, 0.25·i·3/5, 0.25·i·4/5)-like points on edges
  for (int i = 0; i < N; ++i) {
    x[3 * i] = 0.25f * static_cast<float>(i % 70);
    x[3 * i + 1] = 0.f;
    x[3 * i + 2] = i % 2 ? 0.f : 0.75f;  // 3-4-5 triangles: d = 1.25 between some pairs
  }
  const models::PairFeatures cpu = models::pair_features(x.data(), B, N, c, Device::CPU);
  const models::PairFeatures gpu = models::pair_features(x.data(), B, N, c, Device::CUDA);
  EXPECT_EQ(gpu.rel_idx.to(Device::CPU).to_vector<int32_t>(), cpu.rel_idx.to_vector<int32_t>());
  const auto bc = cpu.dist_bin.to_vector<int32_t>(), bg = gpu.dist_bin.to(Device::CPU).to_vector<int32_t>();
  ASSERT_EQ(bc.size(), bg.size());
  int64_t differ = 0, on_edge = 0;
  for (size_t k = 0; k < bc.size(); ++k) differ += bc[k] != bg[k];
  for (int i = 0; i < N; ++i)  // the bins of chain 0 that sit exactly on an edge
    for (int j = 0; j < N; ++j)
      on_edge += bc[static_cast<size_t>(i) * N + j] > 0 && (x[3 * i] - x[3 * j]) != 0.f;
  EXPECT_EQ(differ, 0) << "of " << bc.size() << " bins";
  EXPECT_GT(on_edge, 0);
}

// A run too large for the GPU stops with one line that names the size asked for, what the device
// holds, and the config keys that drive the sizes (not a CUDA error code, not a crash).
TEST(TrainCuda, OutOfMemoryNamesTheSizesAndTheKeys) {
  PF_REQUIRE_GPU();
  const std::string dir = testing_util::temp_dir("oom");
  // N = 4096, B = 16, c_z = 1024: the pair representation alone is 16·4096²·1024 floats = 1.1 TB,
  // several times the memory of any GPU made (288 GB at most today), so the request fails on
  // every card; its first allocation is that tensor (the host batch is c_z-free).
  const Config cfg = config_from_yaml_string(
      "model: {n_types: 4, d_model: 32, n_heads: 2, n_layers: 2, d_ff: 64, c_z: 1024, relpos_clip: 8, dist_bins: 8}\n"
      "data: {train: " +
      dir + "/train.h5, val: " + dir +
      "/val.h5, n_train: 16, n_val: 16, n_res: 4096, seed: 1}\n"
      "train: {steps: 2, batch_size: 16, warmup: 0}\n"
      "device: cuda\nout: " +
      dir + "/run\n");
  const std::string msg = train_error(cfg);
  ASSERT_FALSE(msg.empty()) << "the run should not fit in GPU memory";
  EXPECT_NE(msg.find("GPU out of memory"), std::string::npos) << msg;
  EXPECT_NE(msg.find("MiB was asked for"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.batch_size"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.n_res"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  cuda_empty_cache();  // give the device back to the next tests
  std::filesystem::remove_all(dir);
}

// ---- the training step captured in a CUDA graph (run/train_step.h) ------------------------------
//
// Eager steps and graph replays run the same kernels in the same order on the same inputs, so
// with train.deterministic (the attention backward without atomics; every other reduction of the
// step has a fixed order, framework/deterministic.h) they agree bitwise: losses, accuracy,
// gradient norms, and the weights and moments after every step. No tolerance applies.

// A dense config of the small model for TrainStep: B chains of N residues.
Config graph_config(int B, int N, const std::string& cuda_graph) {
  Config c;
  c.model = small_model();
  c.data.n_res = c.data.n_res_min = c.data.n_res_max = N;
  c.train.batch_size = B;
  c.train.grad_clip = 1.0;
  c.train.weight_decay = 0.01;
  c.train.deterministic = true;
  c.train.cuda_graph = cuda_graph;
  return c;
}

// The host values of every parameter and moment, as raw float bits (NaN compares equal to itself).
std::vector<std::vector<uint32_t>> snapshot(const models::PairBiasModel& model, const optim::AdamW& opt) {
  std::vector<std::vector<uint32_t>> out;
  auto bits = [&](const Tensor& t) {
    const std::vector<float> v = t.to_vector<float>();
    std::vector<uint32_t> b(v.size());
    std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
    out.push_back(std::move(b));
  };
  for (const auto& [name, p] : model.named_parameters()) bits(p);
  for (const auto& [name, m] : opt.state()) bits(m);
  return out;
}

// A model on the GPU, its optimizer and its TrainStep, from one seed.
struct Trainer {
  Config cfg;
  std::unique_ptr<models::PairBiasModel> model_ptr;
  std::unique_ptr<optim::AdamW> opt_ptr;
  std::unique_ptr<run::TrainStep> step_ptr;
  Trainer(const Config& c, uint64_t seed) : cfg(c) {
    model_ptr = std::make_unique<models::PairBiasModel>(cfg.model, seed);
    model_ptr->to(Device::CUDA);
    const auto params = model_ptr->named_parameters();
    opt_ptr = std::make_unique<optim::AdamW>(
        params, optim::decay_mask(params, {"embed.weight", "pair.rel.weight", "pair.dist.weight"}),
        optim::AdamWOptions{3e-3, 0.9, 0.999, 1e-8, cfg.train.weight_decay});
    step_ptr = std::make_unique<run::TrainStep>(*model_ptr, *opt_ptr, cfg, Device::CUDA);
  }
  models::PairBiasModel& model() { return *model_ptr; }
  optim::AdamW& opt() { return *opt_ptr; }
  run::TrainStep& step() { return *step_ptr; }
};

// K steps of `model` at (B, N), eager and with graph replay, compared after every step.
void check_replay_equals_eager(const ModelConfig& model, int B, int N, int K) {
  const DeterministicGuard deterministic(true);
  const ChainSet set = generate_chains(B * K, N, model.n_types, test_seed() + 11, "test");
  Config eager_cfg = graph_config(B, N, "off"), graph_cfg = graph_config(B, N, "on");
  eager_cfg.model = graph_cfg.model = model;
  Trainer eager(eager_cfg, test_seed()), graphed(graph_cfg, test_seed());
  ASSERT_EQ(snapshot(eager.model(), eager.opt()), snapshot(graphed.model(), graphed.opt()))
      << "same seed, same init";
  for (int k = 0; k < K; ++k) {
    std::vector<int> idx;
    for (int i = 0; i < B; ++i) idx.push_back(k * B + i);
    const run::HostBatch batch = run::gather_host(set, idx, false, 1, 0);
    const double lr = optim::lr_at(k, 3e-3, 3e-4, 2, K);  // changes every step: read from the device
    const run::StepResult a = eager.step()(batch, lr), b = graphed.step()(batch, lr);
    SCOPED_TRACE("step " + std::to_string(k));
    EXPECT_TRUE(std::isfinite(a.loss));
    EXPECT_EQ(a.loss, b.loss);
    EXPECT_EQ(a.accuracy, b.accuracy);
    EXPECT_EQ(a.grad_norm, b.grad_norm);
    EXPECT_TRUE(a.updated);
    EXPECT_TRUE(b.updated);
    EXPECT_TRUE(snapshot(eager.model(), eager.opt()) == snapshot(graphed.model(), graphed.opt()))
        << "weights or moments differ after step " << k;
    // The gradients the parameters hold are the step's in both (the graph's buffers after a replay).
    const auto pe = eager.model().parameters(), pg = graphed.model().parameters();
    for (size_t i = 0; i < pe.size(); ++i)
      ASSERT_EQ(pe[i].grad().to_vector<float>(), pg[i].grad().to_vector<float>()) << "gradient " << i;
  }
  EXPECT_EQ(eager.step().replays(), 0);
  EXPECT_EQ(graphed.step().replays(), K - 1) << "step 1 eager (warm-up), steps 2.. replayed";
  EXPECT_EQ(eager.opt().steps_taken(), K);
  EXPECT_EQ(graphed.opt().steps_taken(), K);
}

TEST(TrainCuda, GraphReplayGivesTheEagerLossesAndWeightsBitwise) {
  PF_REQUIRE_GPU();
  check_replay_equals_eager(small_model(), 4, 29, 6);
}

// Head dim 24: attention runs zero-padded to 32 through a widening matrix made in the eager
// warm-up step and kept, so the captured step uploads nothing.
TEST(TrainCuda, GraphReplayWithAPaddedHeadDimGivesTheEagerLosses) {
  PF_REQUIRE_GPU();
  ModelConfig m = small_model();
  m.d_model = 48;
  m.n_heads = 2;
  m.d_ff = 96;
  check_replay_equals_eager(m, 3, 17, 4);
}

// A step whose loss is not finite, under replay: no update, exactly as the eager step (weights,
// moments and the update count unchanged); the next good step updates again.
TEST(TrainCuda, GraphReplayOfANonFiniteStepChangesNothing) {
  PF_REQUIRE_GPU();
  const DeterministicGuard deterministic(true);
  const int B = 3, N = 21;
  const ChainSet set = generate_chains(B * 5, N, small_model().n_types, test_seed() + 12, "test");
  Trainer eager(graph_config(B, N, "off"), test_seed()), graphed(graph_config(B, N, "on"), test_seed());
  auto batch_of = [&](int k) {
    std::vector<int> idx;
    for (int i = 0; i < B; ++i) idx.push_back(k * B + i);
    return run::gather_host(set, idx, false, 1, 0);
  };
  for (int k = 0; k < 2; ++k) {  // warm-up, then the capture (and its replay)
    const auto batch = batch_of(k);
    ASSERT_TRUE(eager.step()(batch, 1e-3).updated);
    ASSERT_TRUE(graphed.step()(batch, 1e-3).updated);
  }
  ASSERT_EQ(graphed.step().replays(), 1);
  // The embedding table set to NaN in place (the graph reads these addresses): the loss is NaN.
  std::vector<Tensor> saved;
  for (Trainer* t : {&eager, &graphed}) {
    Tensor w = t->model().embed->weight;
    saved.push_back(w.to(Device::CPU));
    w.fill_(std::nan(""));
  }
  const auto before_e = snapshot(eager.model(), eager.opt()),
             before_g = snapshot(graphed.model(), graphed.opt());
  const auto batch = batch_of(2);
  const run::StepResult a = eager.step()(batch, 1e-3), b = graphed.step()(batch, 1e-3);
  EXPECT_EQ(graphed.step().replays(), 2);
  EXPECT_FALSE(a.updated);
  EXPECT_FALSE(b.updated);
  EXPECT_TRUE(std::isnan(a.loss));
  EXPECT_TRUE(std::isnan(b.loss));
  EXPECT_TRUE(snapshot(eager.model(), eager.opt()) == before_e)
      << "eager: a skipped step changed weights or moments";
  EXPECT_TRUE(snapshot(graphed.model(), graphed.opt()) == before_g)
      << "replay: a skipped step changed weights or moments";
  EXPECT_EQ(eager.opt().steps_taken(), 2);
  EXPECT_EQ(graphed.opt().steps_taken(), 2) << "a skipped step does not count as an update";
  // Back to good weights: both update again, alike.
  int i = 0;
  for (Trainer* t : {&eager, &graphed}) t->model().embed->weight.copy_(saved[i++]);
  const run::StepResult c = eager.step()(batch_of(3), 1e-3), d = graphed.step()(batch_of(3), 1e-3);
  EXPECT_TRUE(c.updated);
  EXPECT_TRUE(d.updated);
  EXPECT_EQ(c.loss, d.loss);
  EXPECT_EQ(graphed.opt().steps_taken(), 3);
  EXPECT_TRUE(snapshot(eager.model(), eager.opt()) == snapshot(graphed.model(), graphed.opt()));
}

// A batch of another shape runs eagerly (the graph was captured at the first shape) and gives
// the eager result; the graph replays again at its own shape.
TEST(TrainCuda, GraphFallsBackToEagerForAnotherBatchShape) {
  PF_REQUIRE_GPU();
  const DeterministicGuard deterministic(true);
  const int B = 3, N = 21;
  const ChainSet set = generate_chains(B * 4, N, small_model().n_types, test_seed() + 13, "test");
  Trainer eager(graph_config(B, N, "off"), test_seed()), graphed(graph_config(B, N, "auto"), test_seed());
  const std::vector<std::vector<int>> batches = {{0, 1, 2}, {3, 4, 5}, {6, 7}, {8, 9, 10}};
  testing::internal::CaptureStdout();
  for (const auto& idx : batches) {
    const auto batch = run::gather_host(set, idx, false, 1, 0);
    const run::StepResult a = eager.step()(batch, 2e-3), b = graphed.step()(batch, 2e-3);
    EXPECT_EQ(a.loss, b.loss);
    EXPECT_EQ(a.grad_norm, b.grad_norm);
  }
  const std::string log = testing::internal::GetCapturedStdout();
  EXPECT_EQ(graphed.step().replays(), 2) << "batches 2 and 4 replayed; 1 warm-up and 3 (B = 2) eager";
  EXPECT_NE(log.find("(B, N) = (2, 21) runs eagerly"), std::string::npos) << log;
  EXPECT_TRUE(snapshot(eager.model(), eager.opt()) == snapshot(graphed.model(), graphed.opt()));
}

// The graph's memory pool: a block the captured work allocated is never handed to an allocation
// outside the graph, survives cuda_empty_cache, and the replay still writes only its own memory;
// the pool's bytes are counted while the graph lives and handed back when it goes.
TEST(TrainCuda, GraphPoolKeepsItsBlocksFromOtherAllocations) {
  PF_REQUIRE_GPU();
  NoGradGuard no_grad;
  const int64_t n = 1 << 16;
  const CudaMemoryStats start = cuda_memory_stats();
  {
    const Tensor in = Tensor::full({n}, 2.0, DType::F32, Device::CUDA);
    Tensor out = Tensor::zeros({n}, DType::F32, Device::CUDA);
    std::vector<const void*> inside;
    CudaGraph graph;
    graph.capture([&] {
      const Tensor tmp = ops::scale(in, 3.0);  // allocated in the capture, freed in it
      inside.push_back(tmp.data_ptr());
      const Tensor tmp2 = ops::scale(tmp, 0.5);
      inside.push_back(tmp2.data_ptr());
      out.copy_(tmp2);
    });
    ASSERT_TRUE(graph.captured());
    const CudaMemoryStats after = cuda_memory_stats();
    EXPECT_GE(after.graph_reserved, start.graph_reserved + 2 * n * sizeof(float));
    EXPECT_GE(after.graph_cached, start.graph_cached + 2 * n * sizeof(float))
        << "the capture's two temporaries wait in the pool, counted as its cached bytes";
    cuda_empty_cache();
    EXPECT_EQ(cuda_memory_stats().graph_reserved, after.graph_reserved)
        << "empty_cache keeps the graph's pool";
    std::vector<Tensor> outside;
    for (int i = 0; i < 8; ++i) {
      outside.push_back(Tensor::full({n}, 7.0, DType::F32, Device::CUDA));
      for (const void* p : inside) EXPECT_NE(outside.back().data_ptr(), p) << "a graph block handed out";
    }
    graph.replay();
    graph.replay();
    EXPECT_EQ(out.to_vector<float>(), std::vector<float>(n, 3.f));
    for (const Tensor& t : outside) EXPECT_EQ(t.to_vector<float>(), std::vector<float>(n, 7.f));
  }
  const CudaMemoryStats end = cuda_memory_stats();
  EXPECT_EQ(end.graph_reserved, start.graph_reserved) << "the pool goes back when the graph does";
  EXPECT_EQ(end.graph_cached, start.graph_cached);
  EXPECT_EQ(end.allocated, start.allocated) << "every tensor of the test was freed";
}

// Work that reads a value back to the host cannot be captured: the capture fails with one line
// saying so, leaves no pool behind, and the stream works eagerly afterwards.
TEST(TrainCuda, GraphCaptureOfAHostReadFailsAndCleansUp) {
  PF_REQUIRE_GPU();
  NoGradGuard no_grad;
  const CudaMemoryStats start = cuda_memory_stats();
  const Tensor x = Tensor::full({100}, 1.5, DType::F32, Device::CUDA);
  std::string msg;
  {
    CudaGraph graph;
    try {
      graph.capture([&] { (void)ops::sum(x).item(); });
    } catch (const Error& e) {
      msg = e.what();
    }
    EXPECT_FALSE(graph.captured());
  }
  EXPECT_NE(msg.find("while the stream is captured in a CUDA graph"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  EXPECT_EQ(cuda_memory_stats().graph_reserved, start.graph_reserved);
  EXPECT_EQ(ops::sum(x).item(), 150.0) << "eager work after the failed capture";
}

// The whole training loop with the graph: evaluation and checkpoints between replays (tensors made
// outside the graph while it lives), the lr schedule, the counters. With train.deterministic
// a run that replays equals an eager run bitwise: metrics, final line and every checkpoint
// dataset (moments and weights).
TEST(TrainCuda, TrainingRunWithGraphReplayEqualsEagerRunBitwise) {
  PF_REQUIRE_GPU();
  const std::string dir = temp_dir("graph_run");
  auto config = [&](const std::string& out, const std::string& graph) {
    return config_from_yaml_string(
        "model: {n_types: 8, d_model: 32, n_heads: 2, n_layers: 2, d_ff: 64, c_z: 8, relpos_clip: 6, "
        "dist_bins: 11}\n"
        "data: {train: " +
        dir + "/train.h5, val: " + dir +
        "/val.h5, n_train: 40, n_val: 12, n_res: 19, seed: " + std::to_string(test_seed()) +
        "}\n"
        "train: {steps: 14, batch_size: 6, warmup: 3, eval_every: 5, log_every: 1, checkpoint_every: 4, "
        "seed: 5, deterministic: true, cuda_graph: " +
        graph + "}\ndevice: cuda\nout: " + dir + "/" + out + "\n");
  };
  const Config eager_cfg = config("eager", "off"), graph_cfg = config("graph", "on");
  testing::internal::CaptureStdout();
  ASSERT_EQ(run::train(graph_cfg, false), 0);
  const std::string graph_log = testing::internal::GetCapturedStdout();
  EXPECT_NE(graph_log.find("cuda graph: the training step is captured (B 6, N 19)"), std::string::npos)
      << graph_log;
  const RunRecord g = read_run(graph_cfg, graph_log), e = run_once(eager_cfg);
  ASSERT_GE(e.metrics.size(), 14u);
  EXPECT_EQ(e.metrics, g.metrics);
  EXPECT_EQ(e.final_line, g.final_line);
  EXPECT_EQ(e.attrs, g.attrs);
  EXPECT_TRUE(bitwise_equal(e, g)) << "the checkpoints of the eager and the replayed run differ";
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace pf
