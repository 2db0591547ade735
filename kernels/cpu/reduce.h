// Reduction CPU kernels: the sum of all elements and the sum down to a broadcast shape
// (the gradient of a broadcast). Accumulation is in double for float and double inputs.
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

// Σ x.  x:(n)
template <class T>
double sum(const T* x, int64_t n);

// out = x summed over the dims that out broadcasts.
// x: contiguous, shape:(ndim);  out_stride:(ndim) out's element strides over x's dims, 0 on the
// dims summed away;  out:(out_numel) contiguous, written (=).
template <class T>
void sum_to(const T* x, const int64_t* shape, int ndim, const int64_t* out_stride, T* out, int64_t out_numel);

}  // namespace pf::kernels::cpu
