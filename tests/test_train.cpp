// End to end on the CPU: a tiny model trains (the loss falls), a resumed run equals an unbroken
// one step for step, --eval reproduces the logged validation loss, the checkpoint has the
// docs/DESIGN.md names and layout, and bad input gives one clear error.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "framework/allocator.h"
#include "framework/config.h"
#include "framework/cuda_graph.h"
#include "framework/files.h"
#include "framework/h5io.h"
#include "framework/ops.h"
#include "framework/optim.h"
#include "framework/run_dir.h"
#include "run/modes.h"
#include "run/train_step.h"
#include "tests/run_record.h"

namespace pf {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

Config tiny(const std::string& dir, const std::string& out) {
  return config_from_yaml_string(
      "model: {n_types: 4, d_model: 16, n_heads: 2, n_layers: 2, c_z: 8, relpos_clip: 8, "
      "dist_bins: 16, dist_max: 16.0}\n"
      "data: {train: " +
      dir + "/train.h5, val: " + dir +
      "/val.h5, n_train: 256, n_val: 64, "
      "n_res: 16, seed: 3}\n"
      "train: {steps: 160, batch_size: 16, lr: 1.0e-2, min_lr: 1.0e-3, warmup: 5, eval_every: 40, "
      "log_every: 10, checkpoint_every: 40, seed: 1}\n"
      "device: cpu\nout: " +
      dir + "/" + out + "\n");
}

TEST(Train, LossFallsAndResumeEqualsAnUnbrokenRun) {
  const std::string dir = temp_dir("resume");
  testing::internal::CaptureStdout();
  ASSERT_EQ(run::train(tiny(dir, "unbroken"), false), 0);
  ASSERT_EQ(run::train(tiny(dir, "broken"), false, /*stop_at=*/80), 0);
  ASSERT_EQ(run::train(tiny(dir, "broken"), true), 0);
  const std::string printed = testing::internal::GetCapturedStdout();
  EXPECT_NE(printed.find("resumed from"), std::string::npos);

  const auto a = metric_values(dir + "/unbroken/metrics.jsonl");
  const auto b = metric_values(dir + "/broken/metrics.jsonl");
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b) << "a resumed run must reproduce the unbroken run's metrics exactly";

  MetricsLog log(dir + "/unbroken/metrics.jsonl", true, 1 << 30);
  const auto loss = log.series("loss");
  ASSERT_GE(loss.size(), 4u);
  EXPECT_LT(loss.back().second, loss.front().second * 0.9) << "the training loss must fall";
  // Step k, logged after its update, used the schedule's value at k − 1 (steps count from 0);
  // the log prints 6 significant digits.
  const Config c = tiny(dir, "unbroken");
  for (const auto& [step, lr] : log.series("lr")) {
    const double want = optim::lr_at(static_cast<int64_t>(step) - 1, c.train.lr, c.train.min_lr,
                                     c.train.warmup, c.train.steps);
    EXPECT_NEAR(lr, want, 5e-6 * want) << "step " << step;
  }
  for (const char* f :
       {"config.yaml", "checkpoint.h5", "curves.svg", "bias_vs_distance.svg", "bias_vs_relpos.svg"})
    EXPECT_TRUE(fs::exists(dir + "/unbroken/" + f)) << f;
  for (const auto& e : fs::directory_iterator(dir + "/unbroken"))  // no temp file left behind
    EXPECT_FALSE(is_temp_path(e.path().string())) << e.path();
  // Resuming a finished run trains nothing: it reports the final state (step 160) and leaves the
  // metrics as they were.
  testing::internal::CaptureStdout();
  ASSERT_EQ(run::train(tiny(dir, "unbroken"), true), 0);
  const std::string again = testing::internal::GetCapturedStdout();
  EXPECT_NE(again.find("\"steps\": 160"), std::string::npos) << again;
  EXPECT_EQ(metric_values(dir + "/unbroken/metrics.jsonl"), a);
  fs::remove_all(dir);
}

TEST(Train, CheckpointHasDesignLayoutAndEvalReproducesValLoss) {
  const std::string dir = temp_dir("eval");
  const Config cfg = tiny(dir, "run");
  testing::internal::CaptureStdout();
  ASSERT_EQ(run::train(cfg, false), 0);
  ASSERT_EQ(run::evaluate(cfg, cfg.out + "/checkpoint.h5"), 0);
  const std::string printed = testing::internal::GetCapturedStdout();

  H5Reader r(cfg.out + "/checkpoint.h5");
  EXPECT_EQ(r.shape("model/layers.1.mlp.fc1.weight"), (std::vector<int64_t>{64, 16}));  // [out, in]
  EXPECT_EQ(r.shape("model/layers.0.pair_proj.weight"), (std::vector<int64_t>{2, 8}));
  EXPECT_EQ(r.attr_int("/model", "d_model"), 16);
  EXPECT_EQ(r.attr_double("/model", "dist_max"), 16.0);
  EXPECT_EQ(r.attr_int("/", "step"), 160);
  EXPECT_TRUE(r.has("optim/m.embed.weight"));

  MetricsLog log(cfg.out + "/metrics.jsonl", true, 1 << 30);
  const double logged = log.series("val_loss").back().second;
  const std::string prefix = "{\"mode\": \"eval\", \"val_loss\": ";
  const size_t pos = printed.find(prefix);
  ASSERT_NE(pos, std::string::npos) << printed;
  const double evaluated = std::stod(printed.substr(pos + prefix.size()));
  EXPECT_NEAR(evaluated, logged, 1e-5 * logged);  // both printed with 6 significant digits
  fs::remove_all(dir);
}

TEST(Train, BadInputGivesOneClearError) {
  const std::string dir = temp_dir("bad");
  Config cfg = tiny(dir, "run");
  // A checkpoint of another architecture.
  testing::internal::CaptureStdout();
  ASSERT_EQ(run::train(cfg, false, 20), 0);
  testing::internal::GetCapturedStdout();
  Config other = cfg;
  other.model.d_model = 32;
  other.model.d_ff = 128;
  try {
    run::evaluate(other, cfg.out + "/checkpoint.h5");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.d_model is 16 but the config says 32"), std::string::npos)
        << e.what();
  }
  // A corrupt checkpoint.
  {
    std::ofstream f(dir + "/junk.h5", std::ios::binary);
    f << "this is not an HDF5 file";
  }
  EXPECT_THROW(run::evaluate(cfg, dir + "/junk.h5"), Error);
  // Resume without a checkpoint.
  Config fresh = tiny(dir, "nothing_here");
  EXPECT_THROW(run::train(fresh, true), Error);
  fs::remove_all(dir);
}

// train.cuda_graph: why a run's steps cannot be captured in a CUDA graph, each reason alone
// (host logic: no GPU needed), and `on` with a reason is one clear error before any step.
TEST(Train, CudaGraphBlockersNameTheReason) {
  const Config dense = tiny("d", "r");
  EXPECT_EQ(run::cuda_graph_blocker(dense, Device::CUDA, false), "");
  const auto blocker = [&](Config c, Device device, bool data_parallel) {
    return run::cuda_graph_blocker(c, device, data_parallel);
  };
  Config off = dense;
  off.train.cuda_graph = "off";
  EXPECT_EQ(blocker(off, Device::CUDA, false), "train.cuda_graph is off");
  EXPECT_EQ(blocker(dense, Device::CPU, false), "the device is the CPU");
  EXPECT_NE(blocker(dense, Device::CUDA, true).find("data-parallel training"), std::string::npos);
  Config varlen = dense;
  varlen.data.n_res_min = 8;
  EXPECT_NE(blocker(varlen, Device::CUDA, false).find("packed batches"), std::string::npos);
  Config by_tokens = dense;
  by_tokens.train.batch_tokens = 64;
  EXPECT_NE(blocker(by_tokens, Device::CUDA, false).find("packed batches"), std::string::npos);
  Config anomaly = dense;
  anomaly.train.detect_anomaly = true;
  EXPECT_NE(blocker(anomaly, Device::CUDA, false).find("train.detect_anomaly"), std::string::npos);
  // auto and on name the same reasons; off wins over all of them
  Config on = anomaly;
  on.train.cuda_graph = "on";
  EXPECT_EQ(blocker(on, Device::CUDA, false), blocker(anomaly, Device::CUDA, false));
  off.train.detect_anomaly = true;
  EXPECT_EQ(blocker(off, Device::CPU, true), "train.cuda_graph is off");
}

TEST(Train, CudaGraphOnWhereTheStepCannotBeCapturedIsOneClearError) {
  const std::string dir = temp_dir("graph_on");
  Config cfg = tiny(dir, "run");  // device cpu
  cfg.train.cuda_graph = "on";
  const std::string msg = train_error(cfg);
  EXPECT_NE(msg.find("train.cuda_graph is on, but the training step cannot be captured in a CUDA graph: "
                     "the device is the CPU"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  // auto on the CPU: the run trains eagerly and says once why graphs are off
  cfg.train.cuda_graph = "auto";
  cfg.train.steps = 3;
  cfg.train.warmup = 1;
  cfg.out = dir + "/auto";
  testing::internal::CaptureStdout();
  ASSERT_EQ(run::train(cfg, false), 0);
  const std::string log = testing::internal::GetCapturedStdout();
  const std::string said = "cuda graph: off (the device is the CPU); the steps run eagerly\n";
  EXPECT_NE(log.find(said), std::string::npos) << log;
  EXPECT_EQ(log.find(said), log.rfind(said)) << "said once: " << log;
  fs::remove_all(dir);
}

// The pieces of the one-GPU step on the CPU: stack_scalars gathers elements in order;
// the device-only calls give one clear error instead of running on host memory.
TEST(Train, DeviceStepPiecesOnTheCpu) {
  const Tensor a = Tensor::full({}, 1.5, DType::F32, Device::CPU);
  const Tensor b = Tensor::from_vector(std::vector<int32_t>{3, -4}, {2}, DType::I32, Device::CPU);
  const Tensor c = Tensor::from_vector(std::vector<double>{0.25}, {1}, DType::F64, Device::CPU);
  EXPECT_EQ(ops::stack_scalars({a, b, c}).to_vector<double>(), (std::vector<double>{1.5, 3, -4, 0.25}));
  EXPECT_THROW(ops::stack_scalars({a, Tensor::zeros({1}, DType::BF16, Device::CPU)}), Error);
  Tensor w = Tensor::zeros({3}, DType::F32, Device::CPU);
  w.requires_grad_();
  w.set_grad(Tensor::full({3}, 2.0, DType::F32, Device::CPU));
  optim::AdamW opt({{"w", w}}, {false}, {});
  const auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message([&] {
              opt.step(Tensor::zeros({}, DType::F64, Device::CPU), Tensor());
            }).find("AdamW::step(lr, go) takes GPU parameters"),
            std::string::npos);
  EXPECT_NE(message([&] { optim::clip_grad_norm_on_device({w}, 1.0); }).find("takes GPU parameters"),
            std::string::npos);
  EXPECT_NE(message([&] { optim::finite_flag(a, c); }).find("on the GPU"), std::string::npos);
  EXPECT_EQ(opt.steps_taken(), 0);
  if (!cuda_available()) {
    CudaGraph graph;
    EXPECT_NE(message([&] { graph.capture([] {}); }).find("CUDA"), std::string::npos);
    EXPECT_FALSE(graph.captured());
    EXPECT_THROW(graph.replay(), Error);
  }
}

}  // namespace
}  // namespace pf
