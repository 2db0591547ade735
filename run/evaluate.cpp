#include "run/evaluate.h"

#include <algorithm>
#include <cstdio>

#include "framework/anomaly.h"
#include "framework/autograd.h"
#include "framework/distributed.h"
#include "framework/precision.h"
#include "framework/run_dir.h"
#include "run/batches.h"
#include "run/checkpoint.h"
#include "run/environment.h"

namespace pf::run {

EvalResult evaluate_set(const models::PairBiasModel& model, const ChainSet& set, int batch_size,
                        Device device, dist::Communicator* comm, int64_t batch_tokens) {
  NoGradGuard no_grad;
  const int world = comm ? comm->world() : 1, rank = comm ? comm->rank() : 0;
  const int begin = static_cast<int>(int64_t{set.S} * rank / world);
  const int end = static_cast<int>(int64_t{set.S} * (rank + 1) / world);
  if (!set.fixed_length()) {     // packed batches; every residue weighs the same
    double sums[3] = {0, 0, 0};  // loss·T, correct, T
    for (int start = begin; start < end;) {
      std::vector<int> idx;
      int64_t used = 0;
      for (int s = start; s < end; ++s) {  // batch_size chains, or what fits in batch_tokens
        if (batch_tokens > 0 ? !idx.empty() && used + set.length(s) > batch_tokens
                             : static_cast<int>(idx.size()) == batch_size)
          break;
        idx.push_back(s);
        used += set.length(s);
      }
      int64_t T = 0;
      const auto r = batch_loss(model, set, idx, true, device, &T);
      sums[0] += r.loss.item() * T;
      sums[1] += r.accuracy() * T;
      sums[2] += T;
      start += static_cast<int>(idx.size());
    }
    if (comm) {
      std::vector<double> v(sums, sums + 3);
      comm->all_reduce_sum(v);
      std::copy(v.begin(), v.end(), sums);
    }
    return {sums[0] / sums[2], sums[1] / sums[2]};
  }
  double loss_sum = 0, correct = 0;
  for (int start = begin; start < end; start += batch_size) {
    std::vector<int> idx;
    for (int s = start; s < std::min(end, start + batch_size); ++s) idx.push_back(s);
    const BatchTensors b = to_tensors(gather_batch(set, idx), model.config(), device);
    const auto r = models::model_loss(model, b.tokens, b.pair, b.labels);
    loss_sum += r.loss.item() * idx.size();
    correct += r.accuracy() * idx.size();
  }
  if (comm) {
    std::vector<double> sums{loss_sum, correct};
    comm->all_reduce_sum(sums);
    loss_sum = sums[0];
    correct = sums[1];
  }
  return {loss_sum / set.S, correct / set.S};
}

int evaluate(const Config& cfg, const std::string& checkpoint_path) {
  const Device device = resolve_device(cfg.device);
  const anomaly::EnableGuard anomaly_mode(cfg.train.detect_anomaly);
  ChainSet train_set, val_set;
  load_data(cfg, train_set, val_set);
  models::PairBiasModel model(cfg.model, cfg.train.seed);
  model.to(precision_dtype(cfg.train.precision, device));
  model.to(device);
  const AutocastGuard autocast(cfg.train.precision == "bf16" ? DType::BF16 : DType::F32);
  const TrainState st = load_checkpoint(checkpoint_path, cfg, model, nullptr);
  const EvalResult e =
      evaluate_set(model, val_set, cfg.train.batch_size, device, nullptr, cfg.train.batch_tokens);
  std::printf("%s\n", JsonLine()
                          .add("mode", "eval")
                          .add("val_loss", e.loss)
                          .add("val_acc", e.accuracy)
                          .add("step", st.step)
                          .add("checkpoint", checkpoint_path)
                          .str()
                          .c_str());
  return 0;
}

}  // namespace pf::run
