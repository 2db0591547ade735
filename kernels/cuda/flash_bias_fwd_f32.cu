// Forward launchers for element type float (every supported head dim); see flash_bias_dispatch.cuh.
#include "kernels/cuda/flash_bias_dispatch.cuh"
#include "kernels/cuda/flash_bias_fwd_kernel.cuh"

namespace pf::kernels::cuda::fb {
PF_FLASH_BIAS_INSTANTIATE_FWD(float)
}  // namespace pf::kernels::cuda::fb
