// libFuzzer harness: checkpoint loading (run::evaluate, the loader of `train --eval`) on
// arbitrary bytes written to a file, against the tiny config below (the architecture of the
// seed checkpoint in corpus/checkpoint, see README.md). Every input must load and evaluate, or
// give a pf::Error of one line, with no HDF5 object left open; anything else is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "framework/config.h"
#include "kernels/check.h"
#include "run/modes.h"
#include "tests/fuzz/harness.h"

namespace {

const std::string& dir() {
  static const std::string d = "/tmp/pf_fuzz_checkpoint_" + std::to_string(::getpid());
  return d;
}

const pf::Config& config() {
  static const pf::Config cfg = pf::config_from_yaml_string(
      "model: {n_types: 2, d_model: 2, n_heads: 1, n_layers: 1, d_ff: 2, c_z: 1, relpos_clip: 1, dist_bins: 2}\n"
      "data: {train: " +
      dir() + "/train.h5, val: " + dir() +
      "/val.h5, n_train: 2, n_val: 1, n_res: 6, seed: 1}\n"
      "train: {steps: 1, batch_size: 1, warmup: 0, seed: 1}\n"
      "device: cpu\nout: " +
      dir() + "/run\n");
  return cfg;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::filesystem::create_directories(dir());
  if (!std::freopen("/dev/null", "w", stdout)) std::abort();  // evaluate's JSON lines
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = dir() + "/checkpoint.h5";
  pf::fuzz::write_input(path, data, size);
  try {
    pf::run::evaluate(config(), path);  // generates the tiny data set on the first call
  } catch (const pf::Error& e) {
    pf::fuzz::expect_one_line(e);
  }
  pf::fuzz::expect_no_open_hdf5_objects();
  return 0;
}
