#include "kernels/cuda/context.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cublas_check.h"

namespace pf::kernels::cuda {

namespace {

// cuBLAS's workspace: 32 MiB, the size NVIDIA recommends for Hopper (cuBLAS documentation,
// cublasSetWorkspace); the same in eager steps and in captured ones.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  void* cublas_workspace = nullptr;
  Context() {
    PF_CUDA_CHECK(cudaSetDevice(0));
    // A blocking stream: it also orders against the legacy default stream that other code
    // (tests, the flash-bias benchmark) may use.
    PF_CUDA_CHECK(cudaStreamCreate(&stream));
    PF_CUBLAS_CHECK(cublasCreate(&cublas));
    PF_CUBLAS_CHECK(cublasSetStream(cublas, stream));
    // fp32 GEMMs stay fp32 (no TF32): the fp32 mode is compared with the CPU at 1e-5.
    PF_CUBLAS_CHECK(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH));
    PF_CUDA_CHECK(cudaMalloc(&cublas_workspace, kCublasWorkspaceBytes));
    PF_CUBLAS_CHECK(cublasSetWorkspace(cublas, cublas_workspace, kCublasWorkspaceBytes));
  }
};

Context& ctx() {
  static Context c;  // intentionally leaked at exit order: handles die with the process
  return c;
}

// What a graph cannot hold: named in one line while the stream is being captured.
void check_not_capturing(const char* what) {
  PF_CHECK(!capturing(), what << " while the stream is captured in a CUDA graph (a graph holds only "
                                 "device work: the step must not read values back to the host, "
                                 "upload from pageable memory or free device memory)");
}

}  // namespace

bool capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  PF_CUDA_CHECK(cudaStreamIsCapturing(ctx().stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

void capture_begin() {
  PF_CUDA_CHECK(cudaStreamBeginCapture(ctx().stream, cudaStreamCaptureModeThreadLocal));
}

void* capture_end() {
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(ctx().stream, &graph);
  if (err != cudaSuccess) {
    cudaGetLastError();  // a capture error is not sticky: clear it, then say it
    if (graph) cudaGraphDestroy(graph);
    PF_FAIL("CUDA graph capture failed: " << cudaGetErrorString(err));
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ierr = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (ierr != cudaSuccess) {
    cudaGetLastError();
    PF_FAIL("CUDA graph instantiation failed: " << cudaGetErrorString(ierr));
  }
  return exec;
}

void capture_abort() {
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(ctx().stream, &graph);  // invalidated or not: discarded
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
}

void graph_launch(void* exec) {
  PF_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), ctx().stream));
}

void graph_destroy(void* exec) {
  if (exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));  // from destructors: no throw
}

void* pinned_malloc(size_t bytes) {
  ctx();
  void* p = nullptr;
  PF_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
  return p;
}

void pinned_free(void* ptr) {
  if (ptr) cudaFreeHost(ptr);  // from destructors: no throw
}

void* stream() { return ctx().stream; }
void* cublas_handle() { return ctx().cublas; }

void synchronize() {
  check_not_capturing("a synchronisation of the stream");
  PF_CUDA_CHECK(cudaStreamSynchronize(ctx().stream));
}

void copy_host_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  check_not_capturing("a host-to-device copy");
  PF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx().stream));
}

void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  check_not_capturing("a device-to-host copy (a value read back to the host)");
  PF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx().stream));
  PF_CUDA_CHECK(cudaStreamSynchronize(ctx().stream));
}

void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  PF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx().stream));
}

void memset_zero(void* dst, size_t bytes) {
  if (!bytes) return;
  PF_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, ctx().stream));
}

void* raw_malloc(size_t bytes) {
  ctx();
  void* p = nullptr;
  // During a capture (thread-local mode) cudaMalloc counts as unsafe; it does not touch the
  // captured stream, so it runs in relaxed mode, as PyTorch's caching allocator does.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  PF_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  const cudaError_t err = cudaMalloc(&p, bytes);
  PF_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it: the caller frees its cache and retries
    return nullptr;
  }
  PF_CUDA_CHECK(err);
  return p;
}

void memory_info(size_t* free_bytes, size_t* total_bytes) {
  ctx();
  PF_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

void raw_free(void* ptr) {
  check_not_capturing("a cudaFree");
  // Blocks in the cache may still be read by queued kernels: finish them first.
  PF_CUDA_CHECK(cudaStreamSynchronize(ctx().stream));
  PF_CUDA_CHECK(cudaFree(ptr));
}

}  // namespace pf::kernels::cuda
