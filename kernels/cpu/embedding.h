// Table lookup on the CPU: rows of a (V,D) table gathered by int32 indices, and the
// scatter-add of the backward. An index outside [0, V) is an error naming its position.
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

// weight:(V,D) idx:(n) → out:(n,D)
template <class T>
void embedding_forward(const T* weight, const int32_t* idx, T* out, int64_t n, int64_t V, int64_t D);

// dout:(n,D) idx:(n) → dweight:(V,D) = Σ_{i: idx[i]=v} dout[i], written (=).
// Repeated indices add up; the order of the additions is fixed for a given thread count.
template <class T>
void embedding_backward(const T* dout, const int32_t* idx, T* dweight, int64_t n, int64_t V, int64_t D);

}  // namespace pf::kernels::cpu
