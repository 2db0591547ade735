// train — the command-line program of pairflash: a config in, a run directory out.
//
//   ./train CONFIG [--device auto|cpu|cuda] [--out DIR] [--resume | --overwrite] [--gpus N] [key=value ...]
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
//
// Values are taken as typed: `--out "runs/exp #3"` is that directory, `--gpus` a plain number.
// A training run owns its directory for as long as it runs (framework/run_dir.h: RunDirLock):
// a fresh run refuses a directory holding another run unless --overwrite says to start over.
// SIGINT / SIGTERM stop training after the current step with a checkpoint (framework/
// interrupt.h), exit status 130 / 143; --resume continues from it.
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "framework/config.h"
#include "framework/interrupt.h"
#include "framework/run_dir.h"
#include "run/modes.h"

namespace {

const char* kUsage =
    "usage: train CONFIG [--device auto|cpu|cuda] [--out DIR] [--resume | --overwrite] [--gpus N] [key=value ...]\n"
    "       train CONFIG --eval CHECKPOINT\n"
    "       train CONFIG --gradcheck\n"
    "       train --check-env\n";

struct Args {
  std::string config;
  std::vector<std::string> overrides;  // dotted keys: train.steps=200
  std::string eval_checkpoint;
  bool resume = false, overwrite = false, gradcheck = false, check_env = false, help = false;
  int gpus = 0;  // > 0: data-parallel over that many GPUs, one process each (run/launch.h)
};

Args parse_args(int argc, char** argv) {
  Args a;
  std::set<std::string> seen;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s.rfind("--", 0) == 0 && !seen.insert(s).second) PF_FAIL(s << " is given twice");
    auto value = [&](const char* flag) {
      PF_CHECK(i + 1 < argc, flag << " expects a value");
      return std::string(argv[++i]);
    };
    if (s == "--device")
      a.overrides.push_back("device=" + value("--device"));
    else if (s == "--out")
      a.overrides.push_back("out=" + value("--out"));
    else if (s == "--eval")
      a.eval_checkpoint = value("--eval");
    else if (s == "--resume")
      a.resume = true;
    else if (s == "--overwrite")
      a.overwrite = true;
    else if (s == "--gpus") {
      const std::string n = value("--gpus");
      int g = 0;
      const auto r = std::from_chars(n.data(), n.data() + n.size(), g);
      PF_CHECK(r.ec == std::errc() && r.ptr == n.data() + n.size() && g >= 1 && g <= 1024,
               "--gpus expects a number of GPUs from 1 to 1024, found '" << pf::echo(n) << "'");
      a.gpus = g;
    } else if (s == "--gradcheck")
      a.gradcheck = true;
    else if (s == "--check-env")
      a.check_env = true;
    else if (s == "--help" || s == "-h")
      a.help = true;
    else if (s.rfind("--", 0) == 0)
      PF_FAIL("unknown option '" << pf::echo(s) << "' (see train --help)");
    else if (s.find('=') != std::string::npos)
      a.overrides.push_back(s);
    else if (a.config.empty())
      a.config = s;
    else
      PF_FAIL("unexpected argument '" << pf::echo(s) << "' (the config is already '" << pf::echo(a.config)
                                      << "')");
  }
  // One mode per call; the training flags only with training.
  std::vector<std::string> modes;
  if (a.check_env) modes.push_back("--check-env");
  if (!a.eval_checkpoint.empty()) modes.push_back("--eval");
  if (a.gradcheck) modes.push_back("--gradcheck");
  PF_CHECK(modes.size() <= 1,
           modes[0] << " and " << modes[1] << " cannot be combined: each is a mode of its own");
  for (const auto& [on, flag] :
       {std::pair{a.resume, "--resume"}, {a.overwrite, "--overwrite"}, {a.gpus > 0, "--gpus"}})
    PF_CHECK(!on || modes.empty(),
             modes[0] << " and " << flag << " cannot be combined: " << flag << " is for training runs");
  PF_CHECK(!(a.resume && a.overwrite),
           "--resume and --overwrite cannot be combined: --resume continues the "
           "run in the directory, --overwrite removes it and starts over");
  return a;
}

int run(const Args& a) {
  if (a.help) return std::printf("%s", kUsage), 0;
  if (a.check_env) return pf::run::check_env();
  PF_CHECK(!a.config.empty(), "no config file given (see train --help)");
  const pf::Config cfg = pf::load_config(a.config, a.overrides);
  if (a.gradcheck) return pf::run::gradcheck(cfg);
  if (!a.eval_checkpoint.empty()) return pf::run::evaluate(cfg, a.eval_checkpoint);
  // Held until the run ends (data-parallel workers share it).
  const pf::RunDirLock lock(cfg.out, a.resume      ? pf::RunStart::Resume
                                     : a.overwrite ? pf::RunStart::Overwrite
                                                   : pf::RunStart::Fresh);
  const pf::InterruptGuard interrupts;
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
