// A CUDA graph of device work on the framework's stream: captured once, replayed many times
// (launch-bound steps become one launch), with a memory pool of its own.
//
//   CudaGraph g;
//   g.capture([&] { ... queue device work ... });   // nothing runs yet
//   g.replay();                                      // runs it; again and again
//
// How it works (stated once, here):
// - capture() runs the work under stream capture of kernels/cuda/context.h's stream
//   (thread-local mode). The host code of the work runs once; only its kernels, copies and
//   memsets between device buffers are recorded. Every replay reads and writes the same
//   addresses with the same shapes, so the work's inputs must be device buffers that live as long
//   as the graph, refilled before a replay (not part of the graph).
// - Every CUDA allocation during the capture comes from the graph's own pool
//   (framework/allocator.h: cuda_graph_pool_open): a block the captured work used, freed or not,
//   is never handed to an allocation outside the graph while the graph lives, and
//   cuda_empty_cache keeps it. Tensors made in the capture and kept (outputs, gradients) keep
//   their addresses, which each replay rewrites.
// - What a graph cannot hold fails the capture with one line naming it: a read back to the host
//   (item(), to_vector), an upload from pageable memory, a synchronisation, a cudaFree
//   (kernels/cuda/context.cu says so while capturing). The capture is then discarded, its pool
//   handed back, and the error rethrown; the caller runs the work eagerly instead.
// - Without CUDA (a CPU-only build or no device) capture() fails with a message; callers decide
//   beforehand whether to use a graph.
#pragma once
#include <functional>

namespace pf {

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Captures `work` (see above); throws, leaving nothing captured, if it cannot be captured.
  void capture(const std::function<void()>& work);
  bool captured() const { return exec_ != nullptr; }
  // Queues the captured work on the stream (asynchronous, as any launch).
  void replay() const;
  // The graph's pool id (framework/allocator.h), 0 before a capture.
  int pool() const { return pool_; }

 private:
  void* exec_ = nullptr;  // cudaGraphExec_t
  int pool_ = 0;
};

}  // namespace pf
