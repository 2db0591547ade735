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

Device resolve_device(const std::string& requested) {
  if (requested == "cpu") return Device::CPU;
  const bool gpu = cuda_available();  // a GPU is present and the build has CUDA
  if (requested == "auto") return gpu ? Device::CUDA : Device::CPU;
  PF_CHECK(requested == "cuda", "device must be auto, cpu or cuda, found '" << requested << "'");
#ifndef PF_WITH_CUDA  // build configuration: says why there is no GPU when it is the build
  PF_FAIL(
      "device 'cuda' requested but this build has no CUDA backend (no CUDA toolkit was found, or "
      "-DPF_CUDA=OFF); use --device cpu");
#endif
  PF_CHECK(gpu, "device 'cuda' requested but no CUDA device is available (see train --check-env)");
  return Device::CUDA;
}

DType precision_dtype(const std::string& precision, Device device) {
  if (precision == "fp32") return DType::F32;
  if (precision == "fp64") return DType::F64;
  PF_CHECK(device == Device::CUDA,
           "train.precision '" << precision << "' needs the CUDA backend; on the CPU use fp32 or fp64");
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
#ifdef PF_WITH_CUDA  // build configuration: the report says whether the build has CUDA at all
  const auto info = kernels::cuda::device_info();
  std::printf("CUDA toolkit: runtime %d, driver %d\n", info.runtime_version, info.driver_version);
  if (info.available) {
    std::printf("GPU 0: %s, compute capability %d.%d, %d SMs, %.1f GiB (%d device(s))\n", info.name.c_str(),
                info.cc_major, info.cc_minor, info.sm_count, info.total_memory / 1073741824.0,
                info.device_count);
  } else {
    std::printf("GPU: none (%s)\n", info.reason.c_str());
  }
  j.add("cuda_toolkit", true)
      .add("cuda_runtime", info.runtime_version)
      .add("cuda_driver", info.driver_version)
      .add("gpu", info.available ? info.name : "none");
  if (info.available)
    j.add("compute_capability", std::to_string(info.cc_major) + "." + std::to_string(info.cc_minor));
#else
  std::printf("CUDA toolkit: not found at build time (CPU-only build)\n");
  j.add("cuda_toolkit", false).add("gpu", "none");
#endif
  std::printf("%s\n", j.str().c_str());
  return 0;
}

}  // namespace pf::run
