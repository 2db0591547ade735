// Evaluation (run::evaluate_set) of a validation set of chains of different lengths: the mean
// loss and accuracy over every residue of the set, whatever the batching. The reference is built
// without the packed path: each chain alone as a dense (1, length) batch, its loss and accuracy
// weighted by its length over the total length. Float64 model: the batchings differ only in the
// order of sums (relative ~1e-15), so 1e-9 separates rounding from a wrong weighting (averaging
// per chain instead of per residue moves the loss by ~1e-3 relative on such a set).
//
// The set and the model are drawn fresh each run; PF_TEST_SEED=<n> replays a run.
#include <gtest/gtest.h>

#include <vector>

#include "data/chain.h"
#include "framework/autograd.h"
#include "models/pairbias.h"
#include "run/modes.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

struct Means {
  double loss, accuracy;
};

// Σ_chains (loss of the chain alone · its length) / Σ lengths, and the same for accuracy.
Means per_residue_reference(const models::PairBiasModel& model, const ChainSet& set) {
  NoGradGuard no_grad;
  double loss = 0, correct = 0, total = 0;
  for (int s = 0; s < set.S; ++s) {
    const int n = set.length(s);
    const size_t row = size_t(s) * set.N;
    Batch b;
    b.B = 1, b.N = n;
    b.tokens.assign(set.tokens.begin() + row, set.tokens.begin() + row + n);
    b.labels.assign(set.labels.begin() + row, set.labels.begin() + row + n);
    b.coords.assign(set.coords.begin() + 3 * row, set.coords.begin() + 3 * (row + n));
    const run::BatchTensors t = run::to_tensors(b, model.config(), Device::CPU);
    const auto r = models::model_loss(model, t.tokens, t.pair, t.labels);
    loss += r.loss.item() * n;
    correct += r.accuracy() * n;
    total += n;
  }
  return {loss / total, correct / total};
}

TEST(Evaluate, VariableLengthSetWeighsEveryResidueEqually) {
  Rng rng = make_rng("eval_varlen");
  const int S = 20, n_min = 6, n_max = 23;
  ModelConfig mc;
  mc.n_types = 4, mc.d_model = 16, mc.n_heads = 2, mc.n_layers = 1, mc.d_ff = 24;
  mc.c_z = 8, mc.relpos_clip = 8, mc.dist_bins = 16;
  const ChainSet set = generate_chains(ChainSpec{S, n_min, n_max, mc.n_types, rng.next_u64(), "val"});
  ASSERT_FALSE(set.fixed_length());
  for (const char* bias : {"pair", "relpos"}) {
    SCOPED_TRACE(bias);
    mc.attn_bias = bias;
    models::PairBiasModel model(mc, rng.next_u64());
    model.to(DType::F64);
    const Means want = per_residue_reference(model, set);
    const auto check = [&](const run::EvalResult& got, const std::string& how) {
      EXPECT_NEAR(got.loss, want.loss, 1e-9 * want.loss) << how;
      EXPECT_NEAR(got.accuracy, want.accuracy, 1e-9) << how;
    };
    for (int batch : {1, 3, S})
      check(run::evaluate_set(model, set, batch, Device::CPU), "batch_size " + std::to_string(batch));
    // By tokens: one chain per batch at n_max, a few at 3·n_max (batch_size is then unused).
    for (int64_t tokens : {int64_t{n_max}, int64_t{3 * n_max}})
      check(run::evaluate_set(model, set, 1, Device::CPU, nullptr, tokens),
            "batch_tokens " + std::to_string(tokens));
  }
}

}  // namespace
}  // namespace pf
