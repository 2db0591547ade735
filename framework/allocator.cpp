#include "framework/allocator.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <vector>

#ifdef PF_WITH_CUDA
#include "kernels/cuda/context.h"
#include "kernels/cuda/device_info.h"
#endif

namespace pf {

namespace {

// 64-byte aligned host memory.
void* host_alloc(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) {
    std::ostringstream os;
    os.setf(std::ios::fixed);
    os.precision(1);
    os << "out of host memory: a tensor of " << bytes / (1024.0 * 1024.0) << " MiB (" << bytes
       << " bytes) was asked for";
    throw HostOutOfMemory(os.str());
  }
  return p;
}

}  // namespace

// Build configuration: the GPU side (the caching allocator, copies, counters) exists only in a
// build with CUDA; without CUDA there is no GPU, so no GPU tensor can be made.
#ifdef PF_WITH_CUDA
namespace {

// Size classes: multiples of 512 bytes up to 1 MiB; above, 16 classes per power of two (at most
// 6.25% rounding waste). A block is reused only for its own class, so no block is ever split.
size_t size_class(size_t bytes) {
  constexpr size_t kSmall = size_t{1} << 20;
  if (bytes <= kSmall) return (bytes + 511) / 512 * 512;
  size_t pow2 = kSmall;
  while (pow2 * 2 < bytes) pow2 *= 2;
  const size_t step = pow2 / 16;
  return (bytes + step - 1) / step * step;
}

using FreeLists = std::unordered_map<size_t, std::vector<void*>>;  // class → cached blocks

struct CachingAllocator {
  std::mutex mu;
  FreeLists free_blocks;  // the shared cache
  struct Block {
    size_t cls;
    int pool;  // 0: the shared cache; else the graph pool that owns the block
  };
  std::unordered_map<void*, Block> live;
  std::unordered_map<int, FreeLists> pools;  // the living graph pools' cached blocks
  int open_pool = 0, next_pool = 1;
  CudaMemoryStats stats;

  static void* pop(FreeLists& lists, size_t cls) {
    auto it = lists.find(cls);
    if (it == lists.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    return p;
  }

  void* alloc(size_t bytes) {
    const size_t cls = size_class(bytes);
    std::lock_guard<std::mutex> lock(mu);
    const int pool = open_pool;
    void* p = pop(pool ? pools[pool] : free_blocks, cls);
    if (p && pool) stats.graph_cached -= cls;
    if (!p) {
      p = kernels::cuda::raw_malloc(cls);
      if (!p && !pool) {          // out of memory: give the cache back and try once more (not in a
        release_cached_locked();  // capture: cudaFree would synchronise the captured stream)
        p = kernels::cuda::raw_malloc(cls);
      }
      if (!p) {
        const auto mib = [](double b) { return b / (1024.0 * 1024.0); };
        size_t free_b = 0, total_b = 0;
        kernels::cuda::memory_info(&free_b, &total_b);
        std::ostringstream os;
        os.setf(std::ios::fixed);
        os.precision(1);
        os << "GPU out of memory: a tensor of " << mib(bytes) << " MiB was asked for while live tensors hold "
           << mib(stats.allocated) << " MiB (peak " << mib(stats.peak_allocated) << " MiB); the device has "
           << mib(free_b) << " MiB free of " << mib(total_b) << " MiB";
        throw CudaOutOfMemory(os.str());
      }
      ++stats.device_mallocs;
      stats.reserved += cls;
      stats.peak_reserved = std::max(stats.peak_reserved, stats.reserved);
      if (pool) stats.graph_reserved += cls;
    }
    live[p] = {cls, pool};
    stats.allocated += cls;
    stats.peak_allocated = std::max(stats.peak_allocated, stats.allocated);
    return p;
  }

  void free(void* p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = live.find(p);
    PF_CHECK(it != live.end(), "device_free of a pointer the CUDA allocator did not hand out");
    const Block b = it->second;
    stats.allocated -= b.cls;
    auto pool = b.pool ? pools.find(b.pool) : pools.end();
    if (pool != pools.end()) {
      pool->second[b.cls].push_back(p);
      stats.graph_cached += b.cls;
    } else {
      if (b.pool) stats.graph_reserved -= b.cls;  // its pool was released: it joins the cache
      free_blocks[b.cls].push_back(p);
    }
    live.erase(it);
  }

  void release_cached_locked() {
    for (auto& [cls, blocks] : free_blocks) {
      for (void* p : blocks) {
        kernels::cuda::raw_free(p);
        stats.reserved -= cls;
      }
      blocks.clear();
    }
  }

  int pool_open() {
    std::lock_guard<std::mutex> lock(mu);
    PF_CHECK(open_pool == 0, "a CUDA graph pool is already open (captures do not nest)");
    open_pool = next_pool++;
    pools[open_pool];
    return open_pool;
  }

  void pool_close() {
    std::lock_guard<std::mutex> lock(mu);
    open_pool = 0;
  }

  void pool_release(int pool) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = pools.find(pool);
    if (it == pools.end()) return;
    if (open_pool == pool) open_pool = 0;
    for (auto& [cls, blocks] : it->second) {
      for (void* p : blocks) free_blocks[cls].push_back(p);
      stats.graph_reserved -= cls * blocks.size();
      stats.graph_cached -= cls * blocks.size();
    }
    pools.erase(it);
  }
};

CachingAllocator& cuda_allocator() {
  static CachingAllocator* a = new CachingAllocator;  // outlives static tensors at exit
  return *a;
}

// A copy with at least one side on the GPU.
void gpu_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (dst_device == Device::CPU) {
    kernels::cuda::copy_device_to_host(dst, src, bytes);
  } else if (src_device == Device::CPU) {
    kernels::cuda::copy_host_to_device(dst, src, bytes);
  } else {
    kernels::cuda::copy_device_to_device(dst, src, bytes);
  }
}

void* gpu_alloc(size_t bytes) { return cuda_allocator().alloc(bytes); }
void gpu_free(void* ptr) { cuda_allocator().free(ptr); }

}  // namespace

bool cuda_available() {
  static const bool available = kernels::cuda::device_info().available;
  return available;
}

CudaMemoryStats cuda_memory_stats() {
  auto& a = cuda_allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.stats;
}

void cuda_reset_peak_memory() {
  auto& a = cuda_allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  a.stats.peak_allocated = a.stats.allocated;
  a.stats.peak_reserved = a.stats.reserved;
}

void cuda_empty_cache() {
  auto& a = cuda_allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  a.release_cached_locked();
}

int cuda_graph_pool_open() { return cuda_allocator().pool_open(); }
void cuda_graph_pool_close() { cuda_allocator().pool_close(); }
void cuda_graph_pool_release(int pool) { cuda_allocator().pool_release(pool); }

void* pinned_host_alloc(size_t bytes) { return kernels::cuda::pinned_malloc(bytes == 0 ? 1 : bytes); }
void pinned_host_free(void* ptr) { kernels::cuda::pinned_free(ptr); }

#else  // a build without CUDA

namespace {
void gpu_copy(void*, Device, const void*, Device, size_t) {
  PF_FAIL("a CUDA copy was requested but this build has no CUDA support");
}
void* gpu_alloc(size_t) { PF_FAIL("a CUDA tensor was requested but this build has no CUDA support"); }
void gpu_free(void*) {}  // never reached: no GPU block was ever handed out
}  // namespace

bool cuda_available() { return false; }
CudaMemoryStats cuda_memory_stats() { return {}; }
void cuda_reset_peak_memory() {}
void cuda_empty_cache() {}
int cuda_graph_pool_open() { PF_FAIL("a CUDA graph pool was requested but this build has no CUDA support"); }
void cuda_graph_pool_close() {}
void cuda_graph_pool_release(int) {}
void* pinned_host_alloc(size_t) {
  PF_FAIL("pinned host memory was requested but this build has no CUDA support");
}
void pinned_host_free(void*) {}

#endif

void* device_alloc(Device device, size_t bytes) {
  if (bytes == 0) bytes = 1;
  return device == Device::CPU ? host_alloc(bytes) : gpu_alloc(bytes);
}

void device_free(Device device, void* ptr, size_t /*bytes*/) {
  if (!ptr) return;
  if (device == Device::CPU) {
    std::free(ptr);
  } else {
    gpu_free(ptr);
  }
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device == Device::CPU && src_device == Device::CPU) {
    std::memcpy(dst, src, bytes);
  } else {
    gpu_copy(dst, dst_device, src, src_device, bytes);
  }
}

}  // namespace pf
