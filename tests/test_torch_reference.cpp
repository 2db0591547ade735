// The whole model against an outside reference: the same model written in PyTorch
// (bench/torch_pairbias.py) produced tests/fixtures/pairbias_ref.h5 in float64 with
// tests/fixtures/make_pairbias_fixture.py — parameters, a batch, the loss, every parameter's
// gradient, and ten AdamW steps (losses, gradient norms, final parameters).
#include <gtest/gtest.h>

#include <cmath>

#include "run/checkpoint.h"
#include "framework/h5io.h"
#include "framework/optim.h"
#include "models/pairbias.h"
#include "run/modes.h"
#include "tests/test_util.h"

namespace pf {
namespace {

using namespace testing_util;

const std::string kFixture = std::string(PF_SOURCE_DIR) + "/tests/fixtures/pairbias_ref.h5";

double norm(const std::vector<double>& a) {
  double s = 0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}

// rel_error's floor: some gradients are exactly zero in exact arithmetic (attn.k.bias and
// pair_norm.bias: softmax ignores a constant added to every score of a query), so both sides
// hold only rounding noise there; they are judged against a thousandth of the whole model's
// gradient norm, 1e-3 · ‖every expected gradient‖₂, rather than against their own noise.
double gradient_floor(const H5Reader& r) {
  double s = 0;
  for (const std::string& name : r.list_datasets("expected/grad")) {
    const double n = norm(r.read_double("expected/grad/" + name));
    s += n * n;
  }
  return 1e-3 * std::sqrt(s);
}

struct Fixture {
  ModelConfig cfg;
  Batch batch;
  std::unique_ptr<models::PairBiasModel> model;
  H5Reader r{kFixture};

  explicit Fixture(DType dtype) {
    cfg.n_types = r.attr_int("/model", "n_types");
    cfg.d_model = r.attr_int("/model", "d_model");
    cfg.n_heads = r.attr_int("/model", "n_heads");
    cfg.n_layers = r.attr_int("/model", "n_layers");
    cfg.d_ff = r.attr_int("/model", "d_ff");
    cfg.c_z = r.attr_int("/model", "c_z");
    cfg.relpos_clip = r.attr_int("/model", "relpos_clip");
    cfg.dist_bins = r.attr_int("/model", "dist_bins");
    cfg.dist_max = r.attr_double("/model", "dist_max");
    const auto shape = r.shape("batch/tokens");
    batch.B = static_cast<int>(shape[0]);
    batch.N = static_cast<int>(shape[1]);
    batch.tokens = r.read_int32("batch/tokens");
    batch.labels = r.read_int32("batch/labels");
    batch.coords = r.read_float("batch/coords");
    model = std::make_unique<models::PairBiasModel>(cfg, 99);
    model->to(dtype);
    run::read_tensors(r, "model", model->named_parameters());
  }

  Tensor loss() {
    const auto b = run::to_tensors(batch, cfg, Device::CPU);
    return models::model_loss(*model, b.tokens, b.pair, b.labels).loss;
  }
};

// float64 against float64: both sides are exact up to different summation orders, ~1e-15
// relative per op; 1e-10 leaves room for the depth of the network and still catches any bug.
TEST(TorchReference, LossAndEveryGradientFloat64) {
  Fixture f(DType::F64);
  Tensor loss = f.loss();
  EXPECT_NEAR(loss.item(), f.r.read_double("expected/loss")[0], 1e-10);
  loss.backward();
  const double floor = gradient_floor(f.r);
  for (const auto& [name, p] : f.model->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    const double e = rel_error(p.grad().to_vector<double>(), f.r.read_double("expected/grad/" + name), floor);
    EXPECT_LT(e, 1e-10) << name;
  }
}

// float32 forward/backward against the float64 reference: fp32 unit roundoff 6e-8 amplified by
// a few dozen ops and the layer norms' 1/σ; 1e-4 is the bound the GPU backend must also meet.
TEST(TorchReference, LossAndEveryGradientFloat32) {
  Fixture f(DType::F32);
  Tensor loss = f.loss();
  EXPECT_NEAR(loss.item(), f.r.read_double("expected/loss")[0], 1e-5);
  loss.backward();
  const double floor = gradient_floor(f.r);
  for (const auto& [name, p] : f.model->named_parameters()) {
    const double e = rel_error(p.grad().to_vector<double>(), f.r.read_double("expected/grad/" + name), floor);
    EXPECT_LT(e, 1e-4) << name;
  }
}

// Ten AdamW steps with warm-up + cosine schedule, decoupled weight decay on the Linear weights
// only and active gradient clipping: losses, gradient norms and the final parameters agree.
TEST(TorchReference, TenAdamWStepsFloat64) {
  Fixture f(DType::F64);
  const double lr = f.r.attr_double("/expected", "lr"), min_lr = f.r.attr_double("/expected", "min_lr");
  const int64_t warmup = f.r.attr_int("/expected", "warmup"), steps = f.r.attr_int("/expected", "steps");
  const double clip = f.r.attr_double("/expected", "grad_clip");
  const auto params = f.model->named_parameters();
  optim::AdamW opt(params, optim::decay_mask(params, {"embed.weight", "pair.rel.weight", "pair.dist.weight"}),
                   {lr, f.r.attr_double("/expected", "beta1"), f.r.attr_double("/expected", "beta2"),
                    f.r.attr_double("/expected", "adam_eps"), f.r.attr_double("/expected", "weight_decay")});
  const auto losses = f.r.read_double("expected/adamw_losses");
  const auto norms = f.r.read_double("expected/adamw_grad_norms");
  ASSERT_EQ(static_cast<int64_t>(losses.size()), steps);
  int clipped = 0;
  for (int64_t s = 0; s < steps; ++s) {
    f.model->zero_grad();
    Tensor loss = f.loss();
    EXPECT_NEAR(loss.item(), losses[s], 1e-9 * std::max(1.0, std::abs(losses[s]))) << "step " << s;
    loss.backward();
    const double norm = optim::clip_grad_norm(f.model->parameters(), clip);
    EXPECT_NEAR(norm, norms[s], 1e-9 * norms[s]) << "step " << s;
    clipped += norm > clip;
    opt.step(optim::lr_at(s, lr, min_lr, warmup, steps));
  }
  EXPECT_GT(clipped, 0) << "the fixture is meant to exercise clipping";
  for (const auto& [name, p] : params) {
    const double e = rel_error(p.to_vector<double>(), f.r.read_double("expected/adamw_final/" + name));
    EXPECT_LT(e, 1e-9) << name;
  }
}

}  // namespace
}  // namespace pf
