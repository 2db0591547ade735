#include "run/environment.h"

#include <cstdio>
#include <thread>

#include "framework/allocator.h"
#include "framework/run_dir.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/device_info.h"
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace pf::run {

// The CUDA backend of the ops is a separate piece of work; until it is compiled in, "auto"
// stays on the CPU and "cuda" says why it cannot be had.
#ifdef PF_CUDA_OPS
constexpr bool kCudaOps = true;
#else
constexpr bool kCudaOps = false;
#endif

Device resolve_device(const std::string& requested) {
  if (requested == "cpu") return Device::CPU;
  const bool gpu = cuda_available();
  if (requested == "auto") return gpu && kCudaOps ? Device::CUDA : Device::CPU;
  PF_CHECK(requested == "cuda", "device must be auto, cpu or cuda, found '" << requested << "'");
  PF_CHECK(gpu, "device 'cuda' requested but no CUDA device is available (see train --check-env)");
  PF_CHECK(kCudaOps, "device 'cuda' requested but this build's ops have no CUDA backend yet; "
                     "use --device cpu");
  return Device::CUDA;
}

DType precision_dtype(const std::string& precision, Device device) {
  if (precision == "fp32") return DType::F32;
  if (precision == "fp64") return DType::F64;
  PF_CHECK(device == Device::CUDA, "train.precision '" << precision
                                                       << "' needs the CUDA backend; on the CPU use fp32 or fp64");
  return DType::F32;  // bf16 keeps fp32 master weights
}

int check_env() {
  const unsigned hw = std::thread::hardware_concurrency();
  int omp_threads = 1;
#ifdef _OPENMP
  omp_threads = omp_get_max_threads();
#endif
  std::printf("CPU: %u hardware threads, OpenMP %s (%d threads)\n", hw,
#ifdef _OPENMP
              "on",
#else
              "off",
#endif
              omp_threads);
  JsonLine j;
  j.add("mode", "check-env").add("cpu_threads", static_cast<int64_t>(hw)).add("omp_threads", omp_threads);
#ifdef PF_WITH_CUDA
  const auto info = kernels::cuda::device_info();
  std::printf("CUDA toolkit: runtime %d, driver %d\n", info.runtime_version, info.driver_version);
  if (info.available) {
    std::printf("GPU 0: %s, compute capability %d.%d, %d SMs, %.1f GiB (%d device(s))\n",
                info.name.c_str(), info.cc_major, info.cc_minor, info.sm_count,
                info.total_memory / 1073741824.0, info.device_count);
  } else {
    std::printf("GPU: none (%s)\n", info.reason.c_str());
  }
  std::printf("CUDA ops backend: %s\n", kCudaOps ? "built" : "not built (CPU training only)");
  j.add("cuda_toolkit", true).add("cuda_runtime", info.runtime_version)
      .add("cuda_driver", info.driver_version).add("gpu", info.available ? info.name : "none");
  if (info.available) j.add("compute_capability", std::to_string(info.cc_major) + "." + std::to_string(info.cc_minor));
#else
  std::printf("CUDA toolkit: not found at build time (CPU-only build)\n");
  j.add("cuda_toolkit", false).add("gpu", "none");
#endif
  std::printf("%s\n", j.str().c_str());
  return 0;
}

}  // namespace pf::run
