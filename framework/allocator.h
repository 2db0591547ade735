// Where tensor memory comes from. CPU: 64-byte aligned host memory. CUDA: device memory
// (the caching allocator of the CUDA backend lives behind the same two calls).
#pragma once
#include <cstddef>

#include "framework/tensor.h"

namespace pf {

void* device_alloc(Device device, size_t bytes);
void device_free(Device device, void* ptr, size_t bytes);
// Copies bytes between any two devices (host↔device, device↔device, host↔host).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
bool cuda_available();  // a CUDA device is present and the build has CUDA

}  // namespace pf
