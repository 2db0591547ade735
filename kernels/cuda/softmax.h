// Softmax over the last dim, cross-entropy and accuracy on the GPU, twins of
// kernels/cpu/softmax.h. dtype F32 or BF16 for x/logits (fp32 arithmetic); lse, per-row losses
// and the loss gradient are fp32. Work is queued on the context's stream.
//
// Labels are not validated on the device: a label outside [0,K) gives a NaN row loss (so the
// mean loss is NaN) and is counted in *bad by count_correct, which the caller checks.
#pragma once
#include <cstdint>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

// x:(M,C) → y:(M,C)
void softmax_forward(ScalarType t, const void* x, void* y, int64_t M, int64_t C);
// y,dy:(M,C) → dx:(M,C) = y·(dy − Σ_c dy·y)
void softmax_backward(ScalarType t, const void* y, const void* dy, void* dx, int64_t M, int64_t C);

// logits:(M,K) labels:(M) → lse:(M) fp32, *loss (device, dtype loss_t: F32 or F64) = mean row
// loss; row_loss:(M) fp32 scratch.
void cross_entropy_forward(ScalarType t, const void* logits, const int32_t* labels, float* lse,
                           float* row_loss, ScalarType loss_t, void* loss, int64_t M, int64_t K);
// dlogits:(M,K) = g/M·(softmax(logits) − onehot(label)), g the device scalar *g of dtype g_t.
void cross_entropy_backward(ScalarType t, const void* logits, const int32_t* labels, const float* lse,
                            ScalarType g_t, const void* g, void* dlogits, int64_t M, int64_t K);
// counts[0] += rows whose first argmax is the label; counts[1] += rows with a label outside [0,K).
void count_correct(ScalarType t, const void* logits, const int32_t* labels, int64_t M, int64_t K,
                   int* counts);

}  // namespace pf::kernels::cuda
