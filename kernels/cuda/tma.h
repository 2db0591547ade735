// Tensor maps for the tensor-memory accelerator (TMA), built on the host.
//
// A tensor map describes a strided tensor in global memory and the box that one
// cp.async.bulk.tensor copies into shared memory. It is encoded by the driver
// (cuTensorMapEncodeTiled), reached through the runtime's entry-point query, so nothing links
// against libcuda and a machine without a GPU still loads the program.
#pragma once
#include <cuda.h>

#include <cstdint>

namespace pf::kernels::cuda {

// A 4-d tiled tensor map. dims and box innermost first; byte_strides of dims 1..3 (dim 0 has unit
// stride); elem_bytes 2 or 4; swizzle_bytes 0, 64 or 128 (the box's inner extent in bytes must
// then equal it). Out-of-range elements of a box read as zeros. Fails with a pf::Error naming
// the argument the driver refused.
CUtensorMap make_tensor_map_4d(const void* base, int elem_bytes, bool bf16, const uint64_t dims[4],
                               const uint64_t byte_strides[3], const uint32_t box[4], int swizzle_bytes);

}  // namespace pf::kernels::cuda
