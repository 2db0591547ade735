// What the CUDA runtime can see: used by `train --check-env`, `--device auto` and the GPU test
// suites (which skip when no device is present). Never throws: absence is an answer.
#pragma once
#include <string>

namespace pf::kernels::cuda {

struct DeviceInfo {
  bool available = false;  // a usable device is present
  std::string reason;      // why not, when !available
  int device_count = 0;
  std::string name;  // of device 0
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_memory = 0;                      // bytes
  int driver_version = 0, runtime_version = 0;  // e.g. 13000
};

DeviceInfo device_info();

}  // namespace pf::kernels::cuda
