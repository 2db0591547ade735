// train — the command-line program of pairflash: a config in, a run directory out.
//
//   ./train CONFIG [--device auto|cpu|cuda] [--out DIR] [--resume] [--gpus N] [key=value ...]
//   ./train CONFIG --eval CHECKPOINT
//   ./train CONFIG --gradcheck
//   ./train --check-env
//
// (./train: the link to build/train that the build leaves at the repository root.) A walk through
// one training step, file by file: docs/TOUR.md; the design as built: docs/DESIGN.md.
//
// The stack, bottom up (each folder depends only on those above it in this list):
//   kernels/    raw compute: CPU (Eigen) and CUDA flash-bias kernels
//   framework/  Tensor, autograd, ops, nn modules, AdamW, gradcheck, config, HDF5 I/O
//   models/     the pair-bias transformer (models/pairbias.h)
//   data/       the chain data set (data/chain.h)
//   run/        the modes below, one job per file (run/modes.h lists them): training loop,
//               evaluation, gradient check, checkpoint format, plots, device selection,
//               and one process per GPU for data-parallel training (run/launch.h)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "framework/config.h"
#include "run/modes.h"

namespace {

const char* kUsage =
    "usage: train CONFIG [--device auto|cpu|cuda] [--out DIR] [--resume] [--gpus N] [key=value ...]\n"
    "       train CONFIG --eval CHECKPOINT\n"
    "       train CONFIG --gradcheck\n"
    "       train --check-env\n";

struct Args {
  std::string config;
  std::vector<std::string> overrides;  // dotted keys: train.steps=200
  std::string eval_checkpoint;
  bool resume = false, gradcheck = false, check_env = false, help = false;
  int gpus = 0;  // > 0: data-parallel over that many GPUs, one process each (run/launch.h)
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&](const char* flag) {
      PF_CHECK(i + 1 < argc, flag << " expects a value");
      return std::string(argv[++i]);
    };
    if (s == "--device") a.overrides.push_back("device=" + value("--device"));
    else if (s == "--out") a.overrides.push_back("out=" + value("--out"));
    else if (s == "--eval") a.eval_checkpoint = value("--eval");
    else if (s == "--resume") a.resume = true;
    else if (s == "--gpus") {
      const std::string n = value("--gpus");
      char* end = nullptr;
      const long g = std::strtol(n.c_str(), &end, 10);
      PF_CHECK(!n.empty() && *end == '\0' && g >= 1 && g <= 1024,
               "--gpus expects a number of GPUs >= 1, got '" << n << "'");
      a.gpus = static_cast<int>(g);
    }
    else if (s == "--gradcheck") a.gradcheck = true;
    else if (s == "--check-env") a.check_env = true;
    else if (s == "--help" || s == "-h") a.help = true;
    else if (s.rfind("--", 0) == 0) PF_FAIL("unknown option '" << s << "' (see train --help)");
    else if (s.find('=') != std::string::npos) a.overrides.push_back(s);
    else if (a.config.empty()) a.config = s;
    else PF_FAIL("unexpected argument '" << s << "' (the config is already '" << a.config << "')");
  }
  return a;
}

int run(const Args& a) {
  if (a.help) return std::printf("%s", kUsage), 0;
  if (a.check_env) return pf::run::check_env();
  PF_CHECK(!a.config.empty(), "no config file given (see train --help)");
  const pf::Config cfg = pf::load_config(a.config, a.overrides);
  if (a.gradcheck) return pf::run::gradcheck(cfg);
  if (!a.eval_checkpoint.empty()) return pf::run::evaluate(cfg, a.eval_checkpoint);
  if (a.gpus > 0) return pf::run::train_data_parallel(cfg, a.resume, a.gpus);
  return pf::run::train(cfg, a.resume);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "train: error: %s\n", e.what());
    return 1;
  }
}
