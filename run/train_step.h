// One optimisation step of the training loop (run/train_loop.cpp), every stage one call, and the
// CUDA graph that replays it.
//
// On the GPU in one process the whole step is device work with no host dependency: forward and
// loss, backward, the gradient norm and the clip coefficient, the "loss and norm finite" flag
// and the AdamW update that it gates, with the learning rate and the update count in device
// memory; loss, accuracy counts, norm and flag are read back once, at the step's end. That one
// code path runs eagerly, and with train.cuda_graph (auto | on | off) it is captured once in a
// CUDA graph (framework/cuda_graph.h) and replayed: the first step runs eagerly (cuBLAS and the
// allocator's cache warmed), the second is captured, and each step from then on copies its
// batch into the graph's input buffers (pinned staging, asynchronous) and replays.
//
// What runs eagerly instead, and why (said once in the log; with train.cuda_graph: on, an
// error): cuda_graph_blocker's reasons for the whole run; for one step, a batch whose shape
// differs from the captured one or the profiler switched on; a capture that fails (the reason
// is CUDA's or the one line naming what the graph cannot hold).
#pragma once
#include <memory>
#include <string>

#include "framework/config.h"
#include "framework/cuda_graph.h"
#include "framework/optim.h"
#include "models/pairbias.h"
#include "run/batches.h"

namespace pf::dist {
class Communicator;
class GradientSync;
}  // namespace pf::dist

namespace pf::run {

// What one step reports: the batch's loss and accuracy (with comm, the means over the ranks), the
// gradient norm before clipping, and whether the weights were updated.
struct StepResult {
  double loss = 0, accuracy = 0, grad_norm = 0;
  bool updated = false;
  // SIGINT / SIGTERM received (framework/interrupt.h): the run stops after this step. The ranks
  // of data-parallel training decide together, with the step's metrics.
  int stop_signal = 0;
};

// The training loop's AdamW for `model` (on its device): lr and weight decay from t, decay on the
// Linear weights only (optim::decay_mask; the embedding tables excluded).
optim::AdamW training_optimizer(const models::PairBiasModel& model, const TrainConfig& t);

// Why the training steps of cfg on `device` cannot be captured in a CUDA graph, or "" where they
// can (train.cuda_graph off, the CPU, data parallel, packed batches, anomaly mode).
std::string cuda_graph_blocker(const Config& cfg, Device device, bool data_parallel);

class TrainStep {
 public:
  // With grad_sync and comm: one rank of data-parallel training. train.cuda_graph: on with a
  // blocker is an error naming it.
  TrainStep(models::PairBiasModel& model, optim::AdamW& opt, const Config& cfg, Device device,
            dist::GradientSync* grad_sync = nullptr, dist::Communicator* comm = nullptr);

  // One step on `batch` at learning rate lr. A non-finite loss or gradient norm gets no update:
  // weights, moments and the update count stay as they were.
  StepResult operator()(const HostBatch& batch, double lr);

  // Steps replayed from the graph so far (0: all eager).
  int64_t replays() const { return replays_; }

 private:
  struct Graph;
  StepResult host_step(const HostBatch& batch, double lr);
  StepResult device_step(const HostBatch& batch, double lr);
  Tensor step_on_device(const models::LossResult& r);
  bool replayable(const HostBatch& batch);
  void graphs_off(const std::string& why);

  models::PairBiasModel& model_;
  optim::AdamW& opt_;
  const Config& cfg_;
  const Device device_;
  const bool packed_;
  dist::GradientSync* grad_sync_;
  dist::Communicator* comm_;
  Tensor lr_;  // () F64 on the GPU: the device steps' learning rate
  bool use_graph_ = false, warmed_ = false;
  std::shared_ptr<Graph> graph_;  // shared_ptr: Graph is complete only in train_step_gpu.cpp
  int64_t replays_ = 0;
};

}  // namespace pf::run
