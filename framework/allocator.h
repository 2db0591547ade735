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

// The same for host memory: a CPU tensor the process could not get ("out of host memory: a
// tensor of N MiB was asked for").
struct HostOutOfMemory : Error {
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
  size_t graph_reserved = 0;                 // of reserved: blocks of the living graph pools
  // of graph_reserved: the blocks no live tensor holds — the memory a replay's temporaries use
  // (a graph's footprint is the live tensors plus this)
  size_t graph_cached = 0;
};
CudaMemoryStats cuda_memory_stats();
void cuda_reset_peak_memory();  // peaks := current values
void cuda_empty_cache();        // returns every cached (free) block to the device (graph pools: kept)

// Graph pools, for CUDA graphs (framework/cuda_graph.h), as PyTorch's graph memory pools: while
// a pool is open, every CUDA allocation is served from that pool's own blocks (new ones from
// cudaMalloc); a block of the pool, freed during the capture or after it, goes back to the pool
// and nowhere else, and cuda_empty_cache keeps it. So a tensor made between two replays can never
// alias memory the replays write. cuda_graph_pool_release (the graph is gone) hands the pool's
// cached blocks to the shared cache, and its live blocks join it when they are freed.
int cuda_graph_pool_open();  // a new pool, open until cuda_graph_pool_close; returns its id
void cuda_graph_pool_close();
void cuda_graph_pool_release(int pool);

// Page-locked host memory (CUDA builds; asynchronous uploads from it), for staging buffers.
void* pinned_host_alloc(size_t bytes);
void pinned_host_free(void* ptr);

}  // namespace pf
