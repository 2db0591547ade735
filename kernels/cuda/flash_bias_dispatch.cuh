// The one place where run-time choices become template constants: dtype -> element type,
// head dim -> D. Causal, key padding, bias presence / dtype / broadcast, the dB mode, the fused
// relative-position table (and the dT mode) and packed variable-length batches stay run-time
// flags (uniform branches inside the kernels), which keeps the build to
// 3 element types × 4 head dims × 3 kernels.
//
// The launchers are defined with their kernels (flash_bias_fwd_kernel.cuh,
// flash_bias_bwd_kernel.cuh) and instantiated per element type in flash_bias_{fwd,bwd}_{f16,bf16,f32}.cu,
// so the element types compile in parallel.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <type_traits>

#include "kernels/check.h"
#include "kernels/cuda/flash_bias_traits.cuh"
#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda::fb {

template <typename T, int D>
void launch_flash_bias_fwd(const FwdArgs& args, cudaStream_t stream);
template <typename T, int D>
void launch_flash_bias_bwd(const BwdArgs& args, cudaStream_t stream);
template <typename T, int D>
void launch_flash_bias_bwd_dq(const BwdArgs& args, cudaStream_t stream);

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<T>{}) for the element type of `dtype`.
template <typename F>
void dispatch_dtype(ScalarType dtype, F&& f) {
  switch (dtype) {
    case ScalarType::F16: f(TypeTag<__half>{}); return;
    case ScalarType::BF16: f(TypeTag<__nv_bfloat16>{}); return;
    case ScalarType::F32: f(TypeTag<float>{}); return;
    default: break;
  }
  PF_FAIL("flash_bias (CUDA): dtype " << scalar_type_name(dtype)
                                      << " is not supported; supported: float16, bfloat16, float32");
}

// f(std::integral_constant<int, D>{}) for a supported head dim.
template <typename F>
void dispatch_head_dim(int D, F&& f) {
  switch (D) {
    case 16: f(std::integral_constant<int, 16>{}); return;
    case 32: f(std::integral_constant<int, 32>{}); return;
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    default: break;
  }
  PF_FAIL("flash_bias (CUDA): head dim D=" << D << " is not supported; supported: 16, 32, 64, 128");
}

// Instantiates the three launchers of one element type for every head dim.
#define PF_FLASH_BIAS_INSTANTIATE_FWD(T)                                    \
  template void launch_flash_bias_fwd<T, 16>(const FwdArgs&, cudaStream_t); \
  template void launch_flash_bias_fwd<T, 32>(const FwdArgs&, cudaStream_t); \
  template void launch_flash_bias_fwd<T, 64>(const FwdArgs&, cudaStream_t); \
  template void launch_flash_bias_fwd<T, 128>(const FwdArgs&, cudaStream_t);

#define PF_FLASH_BIAS_INSTANTIATE_BWD(T)                                       \
  template void launch_flash_bias_bwd<T, 16>(const BwdArgs&, cudaStream_t);    \
  template void launch_flash_bias_bwd<T, 32>(const BwdArgs&, cudaStream_t);    \
  template void launch_flash_bias_bwd<T, 64>(const BwdArgs&, cudaStream_t);    \
  template void launch_flash_bias_bwd<T, 128>(const BwdArgs&, cudaStream_t);   \
  template void launch_flash_bias_bwd_dq<T, 16>(const BwdArgs&, cudaStream_t); \
  template void launch_flash_bias_bwd_dq<T, 32>(const BwdArgs&, cudaStream_t); \
  template void launch_flash_bias_bwd_dq<T, 64>(const BwdArgs&, cudaStream_t); \
  template void launch_flash_bias_bwd_dq<T, 128>(const BwdArgs&, cudaStream_t);

}  // namespace pf::kernels::cuda::fb
