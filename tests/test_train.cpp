// End to end on the CPU: a tiny model trains (the loss falls), a resumed run equals an unbroken
// one step for step, --eval reproduces the logged validation loss, the checkpoint has the
// docs/DESIGN.md names and layout, and bad input gives one clear error.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "framework/config.h"
#include "framework/files.h"
#include "framework/h5io.h"
#include "framework/optim.h"
#include "framework/run_dir.h"
#include "run/modes.h"
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

}  // namespace
}  // namespace pf
