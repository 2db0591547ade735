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
#include <filesystem>
#include <random>

#include "data/chain.h"
#include "framework/allocator.h"
#include "framework/autograd.h"
#include "framework/optim.h"
#include "framework/precision.h"
#include "models/pairbias.h"
#include "run/modes.h"
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
  std::string msg;
  testing::internal::CaptureStdout();
  try {
    run::train(cfg, false);
  } catch (const Error& e) {
    msg = e.what();
  }
  testing::internal::GetCapturedStdout();
  ASSERT_FALSE(msg.empty()) << "the run should not fit in GPU memory";
  EXPECT_NE(msg.find("GPU out of memory"), std::string::npos) << msg;
  EXPECT_NE(msg.find("MiB was asked for"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.batch_size"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.n_res"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  cuda_empty_cache();  // give the device back to the next tests
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace pf
