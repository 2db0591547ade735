// The training step (run/train_step.h): the choice between graph and eager, and the host-decided
// step of the CPU and of data-parallel training. The one-GPU step is run/train_step_gpu.cpp.
#include "run/train_step.h"

#include <csignal>
#include <cmath>
#include <cstdio>
#include <vector>

#include "framework/distributed.h"
#include "framework/interrupt.h"

namespace pf::run {

optim::AdamW training_optimizer(const models::PairBiasModel& model, const TrainConfig& t) {
  const auto params = model.named_parameters();
  return optim::AdamW(params,
                      optim::decay_mask(params, {"embed.weight", "pair.rel.weight", "pair.dist.weight"}),
                      {t.lr, 0.9, 0.999, 1e-8, t.weight_decay});
}

std::string cuda_graph_blocker(const Config& cfg, Device device, bool data_parallel) {
  const auto& t = cfg.train;
  if (t.cuda_graph == "off") return "train.cuda_graph is off";
  if (device != Device::CUDA) return "the device is the CPU";
  if (data_parallel)
    return "data-parallel training (--gpus) exchanges gradients and metrics with the other ranks";
  if (packed_batches(cfg))
    return "packed batches (data.n_res_min < n_res_max or train.batch_tokens > 0) change shape from step to step";
  if (t.detect_anomaly) return "anomaly mode (train.detect_anomaly) reads every op's output back to the host";
  return "";
}

TrainStep::TrainStep(models::PairBiasModel& model, optim::AdamW& opt, const Config& cfg, Device device,
                     dist::GradientSync* grad_sync, dist::Communicator* comm)
    : model_(model),
      opt_(opt),
      cfg_(cfg),
      device_(device),
      packed_(packed_batches(cfg)),
      grad_sync_(grad_sync),
      comm_(comm) {
  const std::string blocker = cuda_graph_blocker(cfg, device, comm != nullptr);
  PF_CHECK(cfg.train.cuda_graph != "on" || blocker.empty(),
           "train.cuda_graph is on, but the training step cannot be captured in a CUDA graph: " << blocker);
  use_graph_ = blocker.empty();
  if (!use_graph_ && (!comm || comm->rank() == 0)) graphs_off(blocker);
  if (device == Device::CUDA && !comm) lr_ = Tensor::zeros({}, DType::F64, Device::CUDA);
}

void TrainStep::graphs_off(const std::string& why) {
  use_graph_ = false;
  std::printf("cuda graph: off (%s); the steps run eagerly\n", why.c_str());
  std::fflush(stdout);
}

StepResult TrainStep::operator()(const HostBatch& batch, double lr) {
  return lr_.defined() ? device_step(batch, lr) : host_step(batch, lr);
}

// The CPU and data-parallel training: the host decides (the ranks agree on the loss first).
StepResult TrainStep::host_step(const HostBatch& batch, double lr) {
  model_.zero_grad();
  const auto r = host_batch_loss(model_, batch, packed_, device_);
  if (grad_sync_) {
    grad_sync_->backward(r.loss);  // the mean of the ranks' gradients = the global batch's
  } else {
    r.loss.backward();
  }
  const double grad_norm = optim::clip_grad_norm(model_.parameters(), cfg_.train.grad_clip);
  double loss = r.loss.item(), acc = r.accuracy();
  int stop_signal = interrupt_signal();
  if (comm_) {  // every rank has the same number of residues: the global means are the means
    std::vector<double> m{loss, acc, static_cast<double>(stop_signal)};
    comm_->all_reduce_sum(m);
    loss = m[0] / comm_->world();
    acc = m[1] / comm_->world();
    if (m[2] > 0 && stop_signal == 0) stop_signal = SIGTERM;  // another rank's
  }
  const bool good = std::isfinite(loss) && std::isfinite(grad_norm);
  if (good) opt_.step(lr);
  return {loss, acc, grad_norm, good, stop_signal};
}

}  // namespace pf::run
