#include "run/gradcheck.h"

#include <algorithm>
#include <cstdio>

#include "framework/gradcheck.h"
#include "framework/run_dir.h"
#include "models/pairbias.h"
#include "run/batches.h"

namespace pf::run {

int gradcheck(const Config& cfg) {
  // A tiny batch: 2 chains, at most 10 residues (long enough for non-local neighbours); a packed
  // run checks the packed model on 2 chains of lengths drawn from 6..10.
  const bool packed = packed_batches(cfg);
  const int N = std::min(cfg.data.n_res, 10);
  const ChainSet set = generate_chains(ChainSpec{2, packed ? 6 : N, packed ? 10 : N, cfg.model.n_types,
                                                 cfg.data.seed, "gradcheck", cfg.data.task});
  models::PairBiasModel model(cfg.model, cfg.train.seed);
  model.to(DType::F64);
  const auto params = model.named_parameters();
  int64_t n_params = 0;
  for (const auto& [name, p] : params) n_params += p.numel();
  // Every element of every parameter for models up to 20k parameters; beyond that a seeded
  // random subset of 256 elements per parameter keeps the check to seconds.
  GradcheckOptions opt;
  opt.max_elements = n_params <= 20000 ? 0 : 256;
  opt.eps = 1e-5;
  int64_t tokens = 0;
  const auto loss = [&] { return batch_loss(model, set, {0, 1}, packed, Device::CPU, &tokens).loss; };
  const auto entries = pf::gradcheck(loss, params, opt);
  const double tol = 1e-6;  // float64 central differences, eps 1e-5: truncation ~1e-10,
                            // rounding ~1e-11 per element; small gradients show ~1e-7
  double worst = 0;
  std::string worst_name;
  std::printf("%-36s %10s %12s\n", "parameter", "checked", "rel. error");
  for (const auto& e : entries) {
    std::printf("%-36s %10lld %12.3e%s\n", e.name.c_str(), static_cast<long long>(e.checked), e.rel_error,
                e.rel_error > tol ? "  FAIL" : "");
    if (e.rel_error > worst || worst_name.empty()) worst = e.rel_error, worst_name = e.name;
  }
  const bool passed = worst <= tol;
  std::printf("%s\n", JsonLine()
                          .add("mode", "gradcheck")
                          .add("passed", passed)
                          .add("worst_rel_error", worst)
                          .add("worst_param", worst_name)
                          .add("params", static_cast<int64_t>(entries.size()))
                          .add("tolerance", tol)
                          .str()
                          .c_str());
  return passed ? 0 : 1;
}

}  // namespace pf::run
