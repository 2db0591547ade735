// Numerical trouble: anomaly mode names the first non-finite op (forward or backward) with its
// shape and layer; in training a non-finite loss or gradient norm skips the update and is
// counted, train.max_bad_steps in a row stop the run, and a good checkpoint is never replaced
// by non-finite weights.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include "data/chain.h"
#include "framework/anomaly.h"
#include "framework/config.h"
#include "framework/h5io.h"
#include "models/pairbias.h"
#include "run/modes.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

namespace fs = std::filesystem;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

void expect_contains(const std::string& msg, const std::vector<std::string>& parts) {
  for (const std::string& p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

// A small model on a fresh random batch of awkward sizes (B = 3 chains of N = 7 residues).
struct Fixture {
  ModelConfig cfg;
  models::PairBiasModel model;
  run::BatchTensors batch;
  explicit Fixture(uint64_t seed) : cfg(make_cfg()), model(cfg, seed) {
    const ChainSet set = generate_chains(3, 7, cfg.n_types, seed, "anomaly");
    batch = run::to_tensors(gather_batch(set, {0, 1, 2}), cfg, Device::CPU);
  }
  static ModelConfig make_cfg() {
    ModelConfig c;
    c.n_types = 5, c.d_model = 12, c.n_heads = 3, c.n_layers = 2, c.d_ff = 17, c.c_z = 6;
    c.relpos_clip = 4, c.dist_bins = 9, c.dist_max = 15.0;
    return c;
  }
  Tensor param(const std::string& name) const {
    for (const auto& [n, p] : model.named_parameters())
      if (n == name) return p;
    ADD_FAILURE() << "no parameter " << name;
    return {};
  }
  models::LossResult loss() const {
    return models::model_loss(model, batch.tokens, batch.pair, batch.labels);
  }
};

uint64_t fresh_seed() { return std::random_device{}(); }

TEST(Anomaly, ForwardNamesTheFirstNonFiniteOpWithShapeAndLayer) {
  // B=3, N=7, d=12, H=3, d_ff=17, c_z=6, K=5.
  struct Case {
    const char* param;
    double poison;
    const char* op;
    const char* where;
    const char* shape;
    const char* at = "(first at flat index ";  // the index of the first non-finite value
  };
  const Case cases[] = {
      {"embed.weight", kInf, "'embedding'", "in embed ", "[3, 7, 12]"},
      // the pair representation and the pair bias are fused ops (framework/ops.h); one op makes
      // every layer's bias, its output's first index the layer
      {"pair.dist.weight", kNaN, "'embedding_sum'", "in pair ", "[3, 7, 7, 6]"},
      {"layers.1.pair_norm.weight", kNaN, "'pair_bias'", "in layers.pair_norm+pair_proj ", "[2, 3, 3, 7, 7]",
       ", [1, 0, 0, 0, 0])"},
      {"layers.0.pair_proj.weight", kInf, "'pair_bias'", "in layers.pair_norm+pair_proj ", "[2, 3, 3, 7, 7]",
       ", [0, 0, 0, 0, 0])"},
      {"layers.0.attn.k.bias", kNaN, "'linear'", "in layers.0.attn.k ", "[3, 7, 12]"},
      {"layers.1.mlp.fc1.weight", -kInf, "'linear'", "in layers.1.mlp.fc1 ", "[3, 7, 17]"},
      {"final_norm.bias", kNaN, "'layernorm'", "in final_norm ", "[3, 7, 12]"},
      {"head.weight", kInf, "'linear'", "in head ", "[3, 7, 5]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.param);
    Fixture f(fresh_seed());
    f.param(c.param).fill_(c.poison);
    {
      // Without the mode nothing is checked: the loss comes back non-finite, the op unnamed.
      anomaly::EnableGuard off(false);
      EXPECT_FALSE(std::isfinite(f.loss().loss.item()));
    }
    anomaly::EnableGuard on(true);
    expect_contains(error_of([&] { f.loss(); }),
                    {"in the forward of " + std::string(c.op), c.where, c.shape, c.at});
  }
  EXPECT_FALSE(anomaly::enabled()) << "the guard restores the previous setting";
}

TEST(Anomaly, FiniteModelPassesAndTheScopeStackIsBalanced) {
  Fixture f(fresh_seed());
  anomaly::EnableGuard on(true);
  const auto r = f.loss();
  r.loss.backward();  // every forward output and every gradient checked: all finite
  EXPECT_TRUE(std::isfinite(r.loss.item()));
  EXPECT_EQ(anomaly::current_scope(), "");
  {
    anomaly::Scope a("layers", 3), b("attn");
    EXPECT_EQ(anomaly::current_scope(), "layers.3.attn");
  }
  EXPECT_EQ(anomaly::current_scope(), "");
  // An error thrown inside scopes unwinds them.
  f.param("layers.0.norm2.bias").fill_(kNaN);
  EXPECT_THROW(f.loss(), Error);
  EXPECT_EQ(anomaly::current_scope(), "");
}

TEST(Anomaly, BackwardNamesTheOpTheInputAndTheLayerOfTheForward) {
  anomaly::EnableGuard on(true);
  // An op whose forward is finite and whose backward is not (as an overflowing derivative is),
  // recorded inside layers.2.blk: the backward reports the scope of the forward.
  Tensor x = Tensor::full({4, 17}, 0.5).requires_grad_(true);
  Tensor y;
  {
    anomaly::Scope s("layers", 2), b("blk");
    y = make_result(x.detach().clone(), "overflowing_op", {x}, [](const Tensor& g) -> std::vector<Tensor> {
      Tensor dx = g.clone();
      dx.data<float>()[33] = static_cast<float>(kInf);
      return {dx};
    });
  }
  const std::string msg = error_of([&] { ops::sum(y).backward(); });
  expect_contains(msg, {"(inf) in the backward of 'overflowing_op'", "gradient of input 0 [4, 17]",
                        "in layers.2.blk", "flat index 33"});

  // Through the real model: a NaN gradient seed is first turned into a non-finite gradient by
  // the loss's own backward, outside any module.
  Fixture f(fresh_seed());
  const auto r = f.loss();
  expect_contains(
      error_of([&] { r.loss.backward(Tensor::full({}, kNaN)); }),
      {"(nan) in the backward of 'cross_entropy'", "gradient of input 0 [21, 5]", "at the top level"});
}

// ---- in training -----------------------------------------------------------------------------

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("pairflash_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

Config tiny(const std::string& dir, const std::vector<std::string>& overrides) {
  return config_from_yaml_string(
      "model: {n_types: 4, d_model: 16, n_heads: 2, n_layers: 1, c_z: 4, relpos_clip: 4, dist_bins: 8}\n"
      "data: {train: " +
          dir + "/train.h5, val: " + dir +
          "/val.h5, n_train: 48, n_val: 11, n_res: 9, seed: " + std::to_string(fresh_seed()) +
          "}\n"
          "train: {steps: 20, batch_size: 5, warmup: 2, eval_every: 10, log_every: 1, checkpoint_every: 1, seed: 3}\n"
          "device: cpu\nout: " +
          dir + "/run\n",
      overrides);
}

std::vector<float> dataset(const std::string& file, const std::string& name) {
  return H5Reader(file).read_float(name);
}

TEST(NonFiniteSteps, AreSkippedCountedAndStopTheRunKeepingTheLastGoodCheckpoint) {
  const std::string dir = temp_dir("badsteps");
  // lr 1e30: the first update is finite but throws the weights to ~1e30, and every later
  // forward overflows. warmup 0 so that the first update already uses it.
  const Config cfg =
      tiny(dir, {"train.lr=1e30", "train.min_lr=0", "train.warmup=0", "train.max_bad_steps=3"});
  testing::internal::CaptureStdout();
  const std::string msg = error_of([&] { run::train(cfg, false); });
  const std::string printed = testing::internal::GetCapturedStdout();
  expect_contains(msg,
                  {"3 steps in a row (the last at step 4) had a non-finite loss or gradient norm",
                   "train.max_bad_steps = 3", "the last good checkpoint (step 3) is kept at " + cfg.out});
  EXPECT_NE(printed.find("step      2  SKIPPED"), std::string::npos) << printed;

  // The checkpoint is intact and loads; steps 2 and 3 made no update: 1 AdamW step in 3.
  const std::string ckpt = cfg.out + "/checkpoint.h5";
  testing::internal::CaptureStdout();
  EXPECT_EQ(run::evaluate(cfg, ckpt), 0);
  testing::internal::GetCapturedStdout();
  H5Reader r(ckpt);
  EXPECT_EQ(r.attr_int("/", "step"), 3);
  EXPECT_EQ(r.attr_int("/optim", "steps_taken"), 1);
  EXPECT_EQ(r.attr_int("/", "skipped_steps"), 2);
  EXPECT_EQ(r.attr_int("/", "bad_steps_in_row"), 2);

  // Each skipped step is logged with its counts.
  std::ifstream log(cfg.out + "/metrics.jsonl");
  std::string line;
  int skipped_lines = 0;
  while (std::getline(log, line))
    if (line.find("\"skipped\": true") != std::string::npos) {
      ++skipped_lines;
      EXPECT_NE(line.find("\"bad_in_row\": " + std::to_string(skipped_lines)), std::string::npos) << line;
      EXPECT_NE(line.find("\"loss\": null"), std::string::npos) << line;
    }
  EXPECT_EQ(skipped_lines, 3);

  // The skipped steps changed nothing: the weights and moments equal those right after step 1.
  const std::string dir1 = temp_dir("badsteps_1");
  Config one = cfg;
  one.out = dir1 + "/run";
  testing::internal::CaptureStdout();
  ASSERT_EQ(run::train(one, false, /*stop_at=*/1), 0);
  testing::internal::GetCapturedStdout();
  for (const std::string& name : r.list_datasets("/")) {
    const auto a = dataset(ckpt, name), b = dataset(one.out + "/checkpoint.h5", name);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << name;
  }

  // The count in a row is part of the checkpoint: resumed, the next bad step (the third in a
  // row) stops the run at once.
  testing::internal::CaptureStdout();
  const std::string resumed = error_of([&] { run::train(cfg, true); });
  testing::internal::GetCapturedStdout();
  expect_contains(resumed, {"3 steps in a row (the last at step 4)"});
  fs::remove_all(dir);
  fs::remove_all(dir1);
}

// A finite loss with a non-finite gradient norm is skipped too. float64, lr 1e45: the first
// update moves every weight by ~1e45, so step 2's loss (~1e90) is finite while its gradient's
// sum of squares (elements ~1e180) overflows double.
TEST(NonFiniteSteps, FiniteLossWithNonFiniteGradientNormIsSkipped) {
  const std::string dir = temp_dir("badgrad");
  const Config cfg = tiny(dir, {"train.precision=fp64", "train.lr=1e45", "train.min_lr=0", "train.warmup=0",
                                "train.max_bad_steps=1"});
  testing::internal::CaptureStdout();
  const std::string msg = error_of([&] { run::train(cfg, false); });
  const std::string printed = testing::internal::GetCapturedStdout();
  expect_contains(msg, {"1 steps in a row (the last at step 2) had a non-finite loss or gradient norm",
                        "the last good checkpoint (step 1)"});
  const std::string skipped = "step      2  SKIPPED: loss ";
  const size_t at = printed.find(skipped);
  ASSERT_NE(at, std::string::npos) << printed;
  const double loss = std::strtod(printed.c_str() + at + skipped.size(), nullptr);
  EXPECT_TRUE(std::isfinite(loss)) << "this case needs a finite loss: " << printed.substr(at, 120);
  EXPECT_NE(printed.find("grad_norm inf", at), std::string::npos) << printed.substr(at, 120);
  fs::remove_all(dir);
}

// A run that stops before its first checkpoint says that none was written.
TEST(NonFiniteSteps, StopBeforeTheFirstCheckpointSaysSo) {
  const std::string dir = temp_dir("badsteps_early");
  const Config cfg = tiny(dir, {"train.lr=1e30", "train.min_lr=0", "train.warmup=0", "train.max_bad_steps=1",
                                "train.checkpoint_every=100"});
  testing::internal::CaptureStdout();
  const std::string msg = error_of([&] { run::train(cfg, false); });
  testing::internal::GetCapturedStdout();
  expect_contains(msg, {"1 steps in a row (the last at step 2)", "stopped: no checkpoint was written yet"});
  EXPECT_FALSE(fs::exists(cfg.out + "/checkpoint.h5"));
  fs::remove_all(dir);
}

TEST(NonFiniteSteps, NonFiniteWeightsNeverReplaceAGoodCheckpoint) {
  const std::string dir = temp_dir("badweights");
  Config cfg = tiny(dir, {"train.checkpoint_every=2"});
  testing::internal::CaptureStdout();
  ASSERT_EQ(run::train(cfg, false, /*stop_at=*/2), 0);
  testing::internal::GetCapturedStdout();
  const std::string ckpt = cfg.out + "/checkpoint.h5";
  const auto before = dataset(ckpt, "model/layers.0.attn.q.weight");

  // Resumed with lr 1e300 (not part of the config hash): step 3's update overflows float32 to
  // inf; the checkpoint due at step 4 must not be written.
  Config wild = cfg;
  wild.train.lr = 1e300;
  testing::internal::CaptureStdout();
  const std::string msg = error_of([&] { run::train(wild, true); });
  testing::internal::GetCapturedStdout();
  expect_contains(msg, {"holds a NaN or an infinity after step 4, so no checkpoint is written",
                        "the last good checkpoint (step 2) is kept at " + ckpt});
  H5Reader r(ckpt);
  EXPECT_EQ(r.attr_int("/", "step"), 2);
  const auto after = dataset(ckpt, "model/layers.0.attn.q.weight");
  EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * sizeof(float)), 0);
  // ... and it still resumes (the normal lr) to the end.
  testing::internal::CaptureStdout();
  EXPECT_EQ(run::train(cfg, true), 0);
  testing::internal::GetCapturedStdout();
  fs::remove_all(dir);
}

TEST(NonFiniteSteps, AnomalyModeInTrainingNamesTheOpInsteadOfSkipping) {
  const std::string dir = temp_dir("anomaly_train");
  const Config cfg =
      tiny(dir, {"train.lr=1e30", "train.min_lr=0", "train.warmup=0", "train.detect_anomaly=true"});
  testing::internal::CaptureStdout();
  const std::string msg = error_of([&] { run::train(cfg, false); });
  testing::internal::GetCapturedStdout();
  // Which op overflows first depends on the random data; that it is named, with a shape and a
  // layer of the model, does not.
  EXPECT_NE(msg.find("non-finite value"), std::string::npos) << msg;
  EXPECT_TRUE(msg.find("in the forward of '") != std::string::npos ||
              msg.find("in the backward of '") != std::string::npos)
      << msg;
  EXPECT_TRUE(msg.find(" in layers.0.") != std::string::npos || msg.find(" in head") != std::string::npos ||
              msg.find(" in embed") != std::string::npos || msg.find(" in pair.") != std::string::npos ||
              msg.find(" in final_norm") != std::string::npos ||
              msg.find("at the top level") != std::string::npos)
      << msg;
  EXPECT_FALSE(anomaly::enabled()) << "train restores the mode when it ends";
  EXPECT_EQ(H5Reader(cfg.out + "/checkpoint.h5").attr_int("/", "step"), 1);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pf
