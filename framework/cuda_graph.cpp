#include "framework/cuda_graph.h"

#include "framework/allocator.h"
#include "kernels/check.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/context.h"
#endif

namespace pf {

#ifdef PF_WITH_CUDA

CudaGraph::~CudaGraph() {
  if (exec_) kernels::cuda::graph_destroy(exec_);
  if (pool_) cuda_graph_pool_release(pool_);
}

void CudaGraph::capture(const std::function<void()>& work) {
  PF_CHECK(!exec_, "CudaGraph::capture: this graph is already captured");
  PF_CHECK(cuda_available(), "a CUDA graph needs a CUDA device");
  // Work queued before the capture (the inputs' uploads) runs before the replays: it is not
  // part of the graph, and nothing may still run when the pool starts.
  kernels::cuda::synchronize();
  const int pool = cuda_graph_pool_open();
  try {
    kernels::cuda::capture_begin();
    try {
      work();
    } catch (...) {
      kernels::cuda::capture_abort();
      throw;
    }
    exec_ = kernels::cuda::capture_end();
  } catch (...) {
    cuda_graph_pool_close();
    cuda_graph_pool_release(pool);
    throw;
  }
  cuda_graph_pool_close();
  pool_ = pool;
}

void CudaGraph::replay() const {
  PF_CHECK(exec_, "CudaGraph::replay before a capture");
  kernels::cuda::graph_launch(exec_);
}

#else  // a build without CUDA

CudaGraph::~CudaGraph() = default;

void CudaGraph::capture(const std::function<void()>&) {
  PF_FAIL("a CUDA graph was requested but this build has no CUDA support");
}

void CudaGraph::replay() const { PF_FAIL("a CUDA graph was requested but this build has no CUDA support"); }

#endif

}  // namespace pf
