#include "framework/allocator.h"

#include <cstdlib>
#include <cstring>

#ifdef PF_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/device_info.h"
#endif

namespace pf {

void* device_alloc(Device device, size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (device == Device::CPU) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    PF_CHECK(p != nullptr, "out of host memory allocating " << bytes << " bytes");
    return p;
  }
#ifdef PF_WITH_CUDA
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  PF_CHECK(err == cudaSuccess,
           "cudaMalloc of " << bytes << " bytes failed: " << cudaGetErrorString(err));
  return p;
#else
  PF_FAIL("a CUDA tensor was requested but this build has no CUDA support");
#endif
}

void device_free(Device device, void* ptr, size_t /*bytes*/) {
  if (!ptr) return;
  if (device == Device::CPU) {
    std::free(ptr);
    return;
  }
#ifdef PF_WITH_CUDA
  cudaFree(ptr);
#endif
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device == Device::CPU && src_device == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef PF_WITH_CUDA
  cudaMemcpyKind kind = dst_device == Device::CPU   ? cudaMemcpyDeviceToHost
                        : src_device == Device::CPU ? cudaMemcpyHostToDevice
                                                    : cudaMemcpyDeviceToDevice;
  cudaError_t err = cudaMemcpy(dst, src, bytes, kind);
  PF_CHECK(err == cudaSuccess, "cudaMemcpy of " << bytes << " bytes failed: "
                                                 << cudaGetErrorString(err));
#else
  PF_FAIL("a CUDA copy was requested but this build has no CUDA support");
#endif
}

bool cuda_available() {
#ifdef PF_WITH_CUDA
  static const bool available = kernels::cuda::device_info().available;
  return available;
#else
  return false;
#endif
}

}  // namespace pf
