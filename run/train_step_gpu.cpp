// The training step on one GPU (run/train_step.h): the device work without host syncs, eager or
// captured once in a CUDA graph and replayed. Runs only where there is a GPU (a CPU build
// compiles it; tests/test_train_cuda runs it).
#include <cstdio>
#include <cstring>
#include <vector>

#include "framework/allocator.h"
#include "framework/interrupt.h"
#include "framework/ops.h"
#include "framework/profile.h"
#include "run/train_step.h"

namespace pf::run {

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
      std::printf(
          "cuda graph: steps run eagerly while the profiler is on (it records events inside the step)\n");
    std::fflush(stdout);
    graph_->said_profile = true;
    return false;
  }
  if (batch.dense.B != graph_->B || batch.dense.N != graph_->N) {
    if (!graph_->said_shape)
      std::printf(
          "cuda graph: a batch of (B, N) = (%d, %d) runs eagerly: the graph was captured at (%d, %d)\n",
          batch.dense.B, batch.dense.N, graph_->B, graph_->N);
    std::fflush(stdout);
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
  if (use_graph_ && warmed_ && !graph_) graph_ = std::make_shared<Graph>(batch.dense.B, batch.dense.N);
  if (graph_ && use_graph_ && replayable(batch)) {
    Graph& g = *graph_;
    g.stage(batch.dense);
    if (!g.graph.captured()) {
      // The warm-up step's freed blocks go back to the device: the graph's pool takes fresh
      // ones, and the shared cache is left to what runs between replays (evaluation).
      cuda_empty_cache();
      try {
        g.graph.capture([&] {
          model_.zero_grad();
          const models::PairFeatures f =
              cfg.attn_bias == "pair" ? models::pair_features(g.coords, cfg) : models::PairFeatures{};
          g.outputs = step_on_device(models::model_loss(model_, g.tokens, f, g.labels));
        });
        for (const Tensor& p : model_.parameters()) g.grads.push_back(p.grad());
        std::printf("cuda graph: the training step is captured (B %d, N %d) and replayed from now on\n", g.B,
                    g.N);
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
