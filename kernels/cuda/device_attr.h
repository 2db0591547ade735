// Attributes of the current device that size launches: the SM count (grids of resident blocks,
// persistent kernels) and the dynamic shared memory a block may opt in to (227 KB on sm_90).
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_check.h"

namespace pf::kernels::cuda {

inline int current_device_attribute(cudaDeviceAttr attr) {
  int dev = 0, value = 0;
  PF_CUDA_CHECK(cudaGetDevice(&dev));
  PF_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, dev));
  return value;
}

inline int sm_count() { return current_device_attribute(cudaDevAttrMultiProcessorCount); }

inline int smem_optin_bytes() { return current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin); }

}  // namespace pf::kernels::cuda
