#include "run/train_step.h"

#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "framework/allocator.h"
#include "framework/distributed.h"
#include "framework/interrupt.h"
#include "framework/ops.h"
#include "framework/profile.h"

namespace pf::run {

std::string cuda_graph_blocker(const Config& cfg, Device device, bool data_parallel) {
  const auto& t = cfg.train;
  if (t.cuda_graph == "off") return "train.cuda_graph is off";
  if (device != Device::CUDA) return "the device is the CPU";
  if (data_parallel) return "data-parallel training (--gpus) exchanges gradients and metrics with the other ranks";
  if (packed_batches(cfg))
    return "packed batches (data.n_res_min < n_res_max or train.batch_tokens > 0) change shape from step to step";
  if (t.detect_anomaly) return "anomaly mode (train.detect_anomaly) reads every op's output back to the host";
  return "";
}

// The graph of the dense step and what lives as long as it: the input buffers each replay
// reads (refilled from pinned staging before it), the outputs and gradients it writes.
struct TrainStep::Graph {
  CudaGraph graph;
  int B = 0, N = 0;
  Tensor tokens, labels, coords;  // (B,N) I32, (B,N) I32, (B,N,3) F32 on the GPU
  void* staging = nullptr;        // pinned: tokens, labels, coords one after another
  Tensor outputs;                 // step_on_device's
  std::vector<Tensor> grads;      // the parameters' gradients, in model.parameters() order
  bool said_shape = false, said_profile = false;

  Graph(int b, int n) : B(b), N(n) {
    tokens = Tensor::empty({B, N}, DType::I32, Device::CUDA);
    labels = Tensor::empty({B, N}, DType::I32, Device::CUDA);
    coords = Tensor::empty({B, N, 3}, DType::F32, Device::CUDA);
    staging = pinned_host_alloc(tokens.nbytes() + labels.nbytes() + coords.nbytes());
  }
  ~Graph() { pinned_host_free(staging); }

  // The batch into the input buffers: host → pinned, then asynchronous uploads in stream order
  // (the previous step's read-back has finished with the staging memory).
  void stage(const Batch& b) {
    char* p = static_cast<char*>(staging);
    for (auto [dst, src] : {std::pair<Tensor*, const void*>{&tokens, b.tokens.data()},
                            {&labels, b.labels.data()},
                            {&coords, b.coords.data()}}) {
      std::memcpy(p, src, dst->nbytes());
      copy_bytes(dst->data_ptr(), Device::CUDA, p, Device::CPU, dst->nbytes());
      p += dst->nbytes();
    }
  }
};

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

TrainStep::~TrainStep() = default;

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

// The step's device work after the forward and loss r, with no host dependency: backward, the
// norm and clip on the device, the finite flag, AdamW gated by it at the device lr. → (6) F64:
// loss, rows right, labels out of range, gradient norm, clip coefficient, updated (1 or 0).
Tensor TrainStep::step_on_device(const models::LossResult& r) {
  r.loss.backward();
  const Tensor norm_coef = optim::clip_grad_norm_on_device(model_.parameters(), cfg_.train.grad_clip);
  const Tensor go = optim::finite_flag(r.loss, norm_coef);
  opt_.step(lr_, go);
  return ops::stack_scalars({r.loss, r.correct, norm_coef, go});
}

// Whether this step can be replayed (or captured): the batch has the captured shape and the
// profiler is off. Says once why not.
bool TrainStep::replayable(const HostBatch& batch) {
  if (profile::enabled()) {
    if (!graph_->said_profile)
      std::printf("cuda graph: steps run eagerly while the profiler is on (it records events inside the step)\n");
    graph_->said_profile = true;
    return false;
  }
  if (batch.dense.B != graph_->B || batch.dense.N != graph_->N) {
    if (!graph_->said_shape)
      std::printf("cuda graph: a batch of (B, N) = (%d, %d) runs eagerly: the graph was captured at (%d, %d)\n",
                  batch.dense.B, batch.dense.N, graph_->B, graph_->N);
    graph_->said_shape = true;
    return false;
  }
  return true;
}

StepResult TrainStep::device_step(const HostBatch& batch, double lr) {
  lr_.fill_(lr);  // in stream order, before the step that reads it (a fill kernel, no upload)
  const auto& cfg = model_.config();
  Tensor out;
  int64_t rows = 0, classes = cfg.n_types;
  if (use_graph_ && warmed_ && !graph_) graph_ = std::make_unique<Graph>(batch.dense.B, batch.dense.N);
  if (graph_ && use_graph_ && replayable(batch)) {
    Graph& g = *graph_;
    g.stage(batch.dense);
    if (!g.graph.captured()) {
      try {
        g.graph.capture([&] {
          model_.zero_grad();
          const models::PairFeatures f =
              cfg.attn_bias == "pair" ? models::pair_features(g.coords, cfg) : models::PairFeatures{};
          g.outputs = step_on_device(models::model_loss(model_, g.tokens, f, g.labels));
        });
        for (const Tensor& p : model_.parameters()) g.grads.push_back(p.grad());
        std::printf("cuda graph: the training step is captured (B %d, N %d) and replayed from now on\n", g.B, g.N);
        std::fflush(stdout);
      } catch (const std::exception& e) {
        PF_CHECK(cfg_.train.cuda_graph != "on",
                 "train.cuda_graph is on, but the training step could not be captured: " << e.what());
        graphs_off(std::string("the step could not be captured: ") + e.what());
        graph_.reset();
      }
    }
    if (graph_) {
      g.graph.replay();
      ++replays_;
      std::vector<Tensor> params = model_.parameters();  // handles: their gradients are the graph's
      for (size_t i = 0; i < params.size(); ++i) params[i].set_grad(g.grads[i]);
      out = g.outputs;
      rows = int64_t{g.B} * g.N;
    }
  }
  if (!out.defined()) {  // eagerly: the same device work on freshly uploaded tensors
    model_.zero_grad();
    const models::LossResult r = host_batch_loss(model_, batch, packed_, device_);
    out = step_on_device(r);
    rows = r.rows;
    classes = r.classes;
    warmed_ = true;
  }
  const std::vector<double> o = out.to_vector<double>();  // the step's one read-back
  return {o[0], ops::accuracy_of(static_cast<int64_t>(o[1]), static_cast<int64_t>(o[2]), rows, classes), o[3],
          o[5] != 0, interrupt_signal()};
}

}  // namespace pf::run
