// Backward launchers (dK/dV/dB kernel and deterministic dQ kernel) for element type __half
// (every supported head dim); see flash_bias_dispatch.cuh.
#include "kernels/cuda/flash_bias_bwd_kernel.cuh"
#include "kernels/cuda/flash_bias_dispatch.cuh"

namespace pf::kernels::cuda::fb {
PF_FLASH_BIAS_INSTANTIATE_BWD(__half)
}  // namespace pf::kernels::cuda::fb
