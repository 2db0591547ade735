// Checked CUDA runtime calls and kernel launches. Every CUDA call in kernels/cuda goes through
// one of these, so a failure names the call, the CUDA error and file:line as a pf::Error.
//
//   PF_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, stream));
//   my_kernel<<<grid, block, smem, stream>>>(args);
//   PF_CUDA_CHECK_LAUNCH("my_kernel");
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/check.h"

#define PF_CUDA_CHECK(call)                                                                \
  do {                                                                                     \
    cudaError_t pf_cuda_err_ = (call);                                                     \
    if (pf_cuda_err_ != cudaSuccess)                                                       \
      PF_FAIL("CUDA call failed: " #call ": " << cudaGetErrorName(pf_cuda_err_) << " ("    \
                                              << cudaGetErrorString(pf_cuda_err_) << ")"); \
  } while (0)

// After a <<<...>>> launch: reports a bad configuration (grid, block, shared memory) at once.
// Errors raised while the kernel runs surface at the next synchronising call.
#define PF_CUDA_CHECK_LAUNCH(what)                                                                 \
  do {                                                                                             \
    cudaError_t pf_cuda_err_ = cudaGetLastError();                                                 \
    if (pf_cuda_err_ != cudaSuccess)                                                               \
      PF_FAIL("CUDA launch of " << (what) << " failed: " << cudaGetErrorName(pf_cuda_err_) << " (" \
                                << cudaGetErrorString(pf_cuda_err_) << ")");                       \
  } while (0)
