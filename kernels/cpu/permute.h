// Data-movement CPU kernels: a gather through arbitrary strides, and the permutation and
// broadcast copies built on it. Work on any element type of 1, 2, 4 or 8 bytes (bit copies).
#pragma once
#include <cstddef>
#include <cstdint>

namespace pf::kernels::cpu {

// out[i] = x[Σ_d index_d(i)·x_stride[d]] for i over a row-major out of `shape`.
// shape:(ndim)  x_stride:(ndim) in elements (any, 0 repeats: a broadcast)  out: contiguous.
void strided_copy(const void* x, const int64_t* x_stride, void* out, const int64_t* shape, int ndim,
                  size_t elem_size);

// out dim i = x dim perm[i].  x:(shape[0..ndim)) contiguous → out:(shape[perm[0]], ...).
void permute(const void* x, const int64_t* shape, int ndim, const int* perm, void* out, size_t elem_size);

}  // namespace pf::kernels::cpu
