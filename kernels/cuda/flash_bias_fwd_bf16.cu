// Forward launchers for element type __nv_bfloat16 (every supported head dim); see flash_bias_dispatch.cuh.
#include "kernels/cuda/flash_bias_dispatch.cuh"
#include "kernels/cuda/flash_bias_fwd_kernel.cuh"

namespace pf::kernels::cuda::fb {
PF_FLASH_BIAS_INSTANTIATE_FWD(__nv_bfloat16)
}  // namespace pf::kernels::cuda::fb
