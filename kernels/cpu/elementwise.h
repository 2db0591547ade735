// Elementwise CPU kernels: broadcast binary ops, scaling, GELU, and the in-place updates and
// queries of the optimiser. Plain pointers and sizes; T is float or double.
//
// Conventions: `n` counts elements; out may alias an input only where a comment says so.
// Long loops run on OpenMP threads above kParallelWork elements (kernels/cpu/parallel.h).
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

enum class BinaryOp : int { Add, Sub, Mul };

// out = a ∘ b over a row-major output of `shape`.
// shape:(ndim)  a_stride, b_stride:(ndim) element strides of a and b over out's dims, 0 on the
// dims where that input is broadcast.  out: contiguous, shape_numel(shape) elements.
template <class T>
void binary(BinaryOp op, const T* a, const int64_t* a_stride, const T* b, const int64_t* b_stride, T* out,
            const int64_t* shape, int ndim);

// out = s·x.  x, out:(n); out may be x.
template <class T>
void scale(const T* x, T s, T* out, int64_t n);
// y += alpha·x.  x, y:(n)
template <class T>
void axpy(T* y, T alpha, const T* x, int64_t n);

// y = x·Φ(x) = 0.5·x·(1 + erf(x/√2)).  x, y:(n)
template <class T>
void gelu_forward(const T* x, T* y, int64_t n);
// dx = dy·(Φ(x) + x·φ(x)),  φ(x) = exp(−x²/2)/√(2π).  x, dy, dx:(n)
template <class T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n);

// Σ x², accumulated in double.  x:(n)
template <class T>
double sum_of_squares(const T* x, int64_t n);
// No NaN or ±inf among x:(n).
template <class T>
bool all_finite(const T* x, int64_t n);

}  // namespace pf::kernels::cpu
