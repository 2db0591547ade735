// Determinism on the CPU: the same seed and config give bitwise-identical metrics and final
// checkpoints (weights, AdamW moments, sampler state), with OpenMP threads on; a different
// train.seed or data.seed gives different ones (so the comparison can fail).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>

#include "framework/config.h"
#include "framework/h5io.h"
#include "run/modes.h"

namespace pf {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("pairflash_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// metrics.jsonl without the timing field, and the final JSON line without timing and out.
struct RunRecord {
  std::vector<std::string> metrics;
  std::string final_line;
  std::map<std::string, std::vector<float>> tensors;  // every checkpoint dataset
  std::vector<int64_t> attrs;                          // step, sampler_epoch, sampler_cursor
};

RunRecord run_once(const Config& cfg) {
  testing::internal::CaptureStdout();
  const int rc = run::train(cfg, false);
  const std::string printed = testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 0);
  RunRecord r;
  static const std::regex timing(R"re(, "tokens_per_s": [^,}]*)re"), out(R"re(, "out": "[^"]*")re");
  std::ifstream in(cfg.out + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) r.metrics.push_back(std::regex_replace(line, timing, ""));
  const size_t pos = printed.rfind("{\"mode\": \"train\"");
  EXPECT_NE(pos, std::string::npos) << printed;
  if (pos != std::string::npos)
    r.final_line = std::regex_replace(std::regex_replace(printed.substr(pos), timing, ""), out, "");
  H5Reader h(cfg.out + "/checkpoint.h5");
  for (const std::string& name : h.list_datasets("/")) r.tensors[name] = h.read_float(name);
  for (const char* a : {"step", "sampler_epoch", "sampler_cursor"}) r.attrs.push_back(h.attr_int("/", a));
  return r;
}

bool bitwise_equal(const RunRecord& a, const RunRecord& b) {
  if (a.tensors.size() != b.tensors.size()) return false;
  for (const auto& [name, va] : a.tensors) {
    const auto it = b.tensors.find(name);
    if (it == b.tensors.end() || it->second.size() != va.size() ||
        std::memcmp(va.data(), it->second.data(), va.size() * sizeof(float)) != 0)
      return false;
  }
  return true;
}

TEST(Determinism, SameSeedAndConfigGiveBitwiseIdenticalRuns) {
  const std::string dir = temp_dir("determinism");
  const uint64_t data_seed = std::random_device{}();
  auto cfg = [&](const std::string& out, const std::vector<std::string>& ov) {
    std::vector<std::string> all{"out=" + dir + "/" + out};
    all.insert(all.end(), ov.begin(), ov.end());
    // Awkward sizes; 3 epochs of 41 chains in batches of 6 (a partial batch dropped each epoch).
    return config_from_yaml_string(
        "model: {n_types: 5, d_model: 24, n_heads: 3, n_layers: 2, d_ff: 40, c_z: 5, relpos_clip: 6, dist_bins: 11}\n"
        "data: {train: " + dir + "/train.h5, val: " + dir + "/val.h5, n_train: 41, n_val: 13, n_res: 17, seed: " +
            std::to_string(data_seed) + "}\n"
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
  const RunRecord d = run_once(cfg("d", {"data.seed=" + std::to_string(data_seed + 1), "data.train=" + dir +
                                         "/train2.h5", "data.val=" + dir + "/val2.h5"}));
  EXPECT_NE(a.metrics, d.metrics);
  EXPECT_FALSE(bitwise_equal(a, d));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pf
