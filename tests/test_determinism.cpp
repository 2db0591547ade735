// Determinism on the CPU: the same seed and config give bitwise-identical metrics and final
// checkpoints (weights, AdamW moments, sampler state), with OpenMP threads on; a different
// train.seed or data.seed gives different ones (so the comparison can fail).
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "tests/run_record.h"

namespace pf {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

TEST(Determinism, SameSeedAndConfigGiveBitwiseIdenticalRuns) {
  const std::string dir = temp_dir("determinism");
  const uint64_t data_seed = std::random_device{}();
  auto cfg = [&](const std::string& out, const std::vector<std::string>& ov) {
    std::vector<std::string> all{"out=" + dir + "/" + out};
    all.insert(all.end(), ov.begin(), ov.end());
    // Awkward sizes; 3 epochs of 41 chains in batches of 6 (a partial batch dropped each epoch).
    return config_from_yaml_string(
        "model: {n_types: 5, d_model: 24, n_heads: 3, n_layers: 2, d_ff: 40, c_z: 5, relpos_clip: 6, dist_bins: 11}\n"
        "data: {train: " +
            dir + "/train.h5, val: " + dir +
            "/val.h5, n_train: 41, n_val: 13, n_res: 17, seed: " + std::to_string(data_seed) +
            "}\n"
            "train: {steps: 20, batch_size: 6, warmup: 3, eval_every: 7, log_every: 1, checkpoint_every: 9, seed: 11}\n"
            "device: cpu\n",
        all);
  };
  const RunRecord a = run_once(cfg("a", {}));
  const RunRecord b = run_once(cfg("b", {}));
  ASSERT_GE(a.metrics.size(), 20u);
  EXPECT_EQ(a.metrics, b.metrics);
  EXPECT_EQ(a.final_line, b.final_line);
  EXPECT_EQ(a.attrs, b.attrs);
  EXPECT_TRUE(bitwise_equal(a, b)) << "same seed and config: the final checkpoints must be bitwise identical";

  // The comparison can fail: another initialisation or another data set changes everything.
  const RunRecord c = run_once(cfg("c", {"train.seed=12"}));
  EXPECT_NE(a.metrics, c.metrics);
  EXPECT_FALSE(bitwise_equal(a, c));
  const RunRecord d =
      run_once(cfg("d", {"data.seed=" + std::to_string(data_seed + 1), "data.train=" + dir + "/train2.h5",
                         "data.val=" + dir + "/val2.h5"}));
  EXPECT_NE(a.metrics, d.metrics);
  EXPECT_FALSE(bitwise_equal(a, d));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pf
