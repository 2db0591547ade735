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

struct CachingAllocator {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // class → cached blocks
  std::unordered_map<void*, size_t> live;                      // block → its class
  CudaMemoryStats stats;

  void* alloc(size_t bytes) {
    const size_t cls = size_class(bytes);
    std::lock_guard<std::mutex> lock(mu);
    void* p = nullptr;
    auto it = free_blocks.find(cls);
    if (it != free_blocks.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
    } else {
      p = kernels::cuda::raw_malloc(cls);
      if (!p) {  // out of memory: give the cache back and try once more
        release_cached_locked();
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
    }
    live[p] = cls;
    stats.allocated += cls;
    stats.peak_allocated = std::max(stats.peak_allocated, stats.allocated);
    return p;
  }

  void free(void* p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = live.find(p);
    PF_CHECK(it != live.end(), "device_free of a pointer the CUDA allocator did not hand out");
    stats.allocated -= it->second;
    free_blocks[it->second].push_back(p);
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
