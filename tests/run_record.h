// What a training run leaves behind, read back for comparisons between runs (determinism,
// data-parallel against one process): metrics.jsonl and the final JSON line without the timing
// fields, and every checkpoint dataset.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "framework/config.h"
#include "framework/h5io.h"
#include "framework/run_dir.h"
#include "run/modes.h"

namespace pf::testing_util {

// A fresh, empty directory under the system's temp dir, unique to this process.
inline std::string temp_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path p = fs::temp_directory_path() / ("pairflash_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

struct RunRecord {
  std::vector<std::string> metrics;                   // metrics.jsonl lines without tokens_per_s
  std::string final_line;                             // the final JSON line without tokens_per_s and out
  std::map<std::string, std::vector<float>> tensors;  // every checkpoint dataset
  std::vector<int64_t> attrs;                         // step, sampler_epoch, sampler_cursor
};

// Reads what the run into cfg.out left; `printed` is its captured stdout.
inline RunRecord read_run(const Config& cfg, const std::string& printed) {
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

// Trains per cfg in this process (as rank `comm` of data-parallel training when given).
inline RunRecord run_once(const Config& cfg, dist::Communicator* comm = nullptr) {
  testing::internal::CaptureStdout();
  const int rc = run::train(cfg, false, -1, comm);
  const std::string printed = testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 0);
  return read_run(cfg, printed);
}

// The error message of training per cfg in this process ("" if it ran), its stdout captured.
inline std::string train_error(const Config& cfg) {
  testing::internal::CaptureStdout();
  std::string msg;
  try {
    run::train(cfg, false);
  } catch (const Error& e) {
    msg = e.what();
  }
  testing::internal::GetCapturedStdout();
  return msg;
}

// Every numeric field of metrics.jsonl except the timing ones, in order ("loss@20=0.71…").
inline std::vector<std::string> metric_values(const std::string& path) {
  std::vector<std::string> out;
  for (const char* key : {"loss", "acc", "grad_norm", "lr", "val_loss", "val_acc"}) {
    MetricsLog log(path, true, 1 << 30);
    for (auto [step, v] : log.series(key)) {
      std::ostringstream os;
      os.precision(17);
      os << key << "@" << step << "=" << v;
      out.push_back(os.str());
    }
  }
  return out;
}

inline bool bitwise_equal(const RunRecord& a, const RunRecord& b) {
  if (a.tensors.size() != b.tensors.size()) return false;
  for (const auto& [name, va] : a.tensors) {
    const auto it = b.tensors.find(name);
    if (it == b.tensors.end() || it->second.size() != va.size() ||
        std::memcmp(va.data(), it->second.data(), va.size() * sizeof(float)) != 0)
      return false;
  }
  return true;
}

}  // namespace pf::testing_util
