// Where tensor memory comes from. CPU: 64-byte aligned host memory. CUDA: a caching allocator
// over device memory: freed blocks go to size-class free lists and are handed out again, so a
// training step in steady state makes no cudaMalloc/cudaFree calls. All CUDA work runs on one
// stream (kernels/cuda/context.h), so a block freed by the host may be reused at once: any later
// use is queued after every earlier use.
#pragma once
#include <cstddef>
#include <cstdint>

#include "framework/tensor.h"

namespace pf {

// The GPU could not hold a requested block even after the cache was given back. The message
// names the size asked for and what the device holds; callers that know which settings drive
// the sizes (run/train_loop.cpp) add them.
struct CudaOutOfMemory : Error {
  using Error::Error;
};

void* device_alloc(Device device, size_t bytes);
void device_free(Device device, void* ptr, size_t bytes);
// Copies bytes between any two devices (host↔device, device↔device, host↔host), in stream order;
// a copy to the host waits for it to finish.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
bool cuda_available();  // a CUDA device is present and the build has CUDA

// The CUDA caching allocator's counters (all zero in a build without CUDA).
struct CudaMemoryStats {
  size_t allocated = 0, peak_allocated = 0;  // bytes held by live tensors (size-class rounded)
  size_t reserved = 0, peak_reserved = 0;    // bytes obtained from cudaMalloc (live + cached)
  int64_t device_mallocs = 0;                // cudaMalloc calls so far
};
CudaMemoryStats cuda_memory_stats();
void cuda_reset_peak_memory();  // peaks := current values
void cuda_empty_cache();        // returns every cached (free) block to the device

}  // namespace pf
