// Data movement on the GPU, twins of kernels/cpu/permute.h: any element size (1, 2, 4, 8 bytes),
// up to 8 dims. Work is queued on the context's stream.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pf::kernels::cuda {

// out:(shape) contiguous = x read through x_stride (elements; 0 broadcasts a dim).
void strided_copy(const void* x, const int64_t* x_stride, void* out, const int64_t* shape, int ndim,
                  size_t elem_size);

// x:(shape) contiguous → out with out dim i = x dim perm[i], contiguous.
void permute(const void* x, const int64_t* shape, int ndim, const int* perm, void* out, size_t elem_size);

}  // namespace pf::kernels::cuda
