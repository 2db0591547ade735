#include "kernels/cuda/context.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cublas_check.h"

namespace pf::kernels::cuda {

namespace {

struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  Context() {
    PF_CUDA_CHECK(cudaSetDevice(0));
    // A blocking stream: it also orders against the legacy default stream that other code
    // (tests, the flash-bias benchmark) may use.
    PF_CUDA_CHECK(cudaStreamCreate(&stream));
    PF_CUBLAS_CHECK(cublasCreate(&cublas));
    PF_CUBLAS_CHECK(cublasSetStream(cublas, stream));
    // fp32 GEMMs stay fp32 (no TF32): the fp32 mode is compared with the CPU at 1e-5.
    PF_CUBLAS_CHECK(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH));
  }
};

Context& ctx() {
  static Context c;  // intentionally leaked at exit order: handles die with the process
  return c;
}

}  // namespace

void* stream() { return ctx().stream; }
void* cublas_handle() { return ctx().cublas; }

void synchronize() { PF_CUDA_CHECK(cudaStreamSynchronize(ctx().stream)); }

void copy_host_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  PF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx().stream));
}

void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
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
  const cudaError_t err = cudaMalloc(&p, bytes);
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
  // Blocks in the cache may still be read by queued kernels: finish them first.
  PF_CUDA_CHECK(cudaStreamSynchronize(ctx().stream));
  PF_CUDA_CHECK(cudaFree(ptr));
}

}  // namespace pf::kernels::cuda
