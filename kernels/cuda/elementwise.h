// Elementwise kernels on the GPU, twins of kernels/cpu/elementwise.h: the same names, dtype given
// as a ScalarType (F32 or BF16; fp32 arithmetic), device pointers, work queued on the context's
// stream (kernels/cuda/context.h). Strides are in elements.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cpu/elementwise.h"    // BinaryOp
#include "kernels/flash_bias_params.h"  // ScalarType

namespace pf::kernels::cuda {

using cpu::BinaryOp;

// out:(shape) = a ∘ b, a and b read through their (broadcast) strides: a:(shape|stride 0 dims)
void binary(BinaryOp op, ScalarType t, const void* a, const int64_t* a_stride, const void* b,
            const int64_t* b_stride, void* out, const int64_t* shape, int ndim);
void scale(ScalarType t, const void* x, double s, void* out, int64_t n);   // out = s·x
void axpy(ScalarType t, void* y, double alpha, const void* x, int64_t n);  // y += alpha·x
void gelu_forward(ScalarType t, const void* x, void* y, int64_t n);        // exact (erf) GELU
void gelu_backward(ScalarType t, const void* x, const void* dy, void* dx, int64_t n);
// *acc (device double) += Σ x² (fp32 per thread, double across threads), summed in a fixed
// order: bitwise deterministic. Calls must not run concurrently (they share a static scratch).
void sum_of_squares(ScalarType t, const void* x, int64_t n, double* acc);
// A tensor of the *_many kernels: dtype (F32 or BF16), device pointer, element count.
struct TensorRef {
  ScalarType t;
  void* x;
  int64_t n;
};
// sum_of_squares over several tensors, one launch per 24 of them.
void sum_of_squares_many(const std::vector<TensorRef>& ts, double* acc);
// x ← s·x for each tensor (as scale), one launch per 24 of them. With s_dev (a device double),
// s is unused and the factor c = *s_dev is read on the device: x ← c·x where c < 1, nothing
// otherwise (NaN: nothing) — gradient clipping without a host round trip.
void scale_many(const std::vector<TensorRef>& ts, double s, const double* s_dev = nullptr);
// *flag (device int) is set to 0 if x holds a NaN or an infinity (left alone otherwise).
void all_finite(ScalarType t, const void* x, int64_t n, int* flag);
void fill(ScalarType t, void* x, double value, int64_t n);
// dst:(n) of dtype dt = src:(n) of dtype st, rounded to nearest even (F32, F64, BF16).
void convert(ScalarType st, const void* src, ScalarType dt, void* dst, int64_t n);
// out:(n) = factor · *scalar, scalar a device value of dtype st (the backward of sum and mean).
void broadcast_scalar(ScalarType t, void* out, int64_t n, ScalarType st, const void* scalar, double factor);

}  // namespace pf::kernels::cuda
