// Softmax over the last dim, cross-entropy and accuracy on the CPU.
//
//   softmax:  y = e^{x − max} / Σ e^{x − max}                 backward: dx = y·(dy − Σ dy·y)
//   cross-entropy (mean over M rows):  L = (1/M)·Σ_r (lse_r − x[r, label_r]),  lse = log Σ e^x
//                                      backward: dx[r, c] = g/M·(e^{x[r,c] − lse_r} − [c =
//                                      label_r])
// Labels are int32 in [0, K); a label outside is an error naming the row.
#pragma once
#include <cstdint>

namespace pf::kernels::cpu {

// x:(M,C) → y:(M,C)
template <class T>
void softmax_forward(const T* x, T* y, int64_t M, int64_t C);
// y,dy:(M,C) → dx:(M,C)
template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t M, int64_t C);

// logits:(M,K) labels:(M) → lse:(M) (saved for the backward); returns the mean loss.
template <class T>
double cross_entropy_forward(const T* logits, const int32_t* labels, T* lse, int64_t M, int64_t K);
// logits:(M,K) labels:(M) lse:(M), g = dL_mean → dlogits:(M,K)
template <class T>
void cross_entropy_backward(const T* logits, const int32_t* labels, const T* lse, double g, T* dlogits,
                            int64_t M, int64_t K);

// Rows whose argmax (the first maximum) equals the label.  logits:(M,K) labels:(M)
template <class T>
int64_t count_correct(const T* logits, const int32_t* labels, int64_t M, int64_t K);

// Errors unless every label is in [0, K).  labels:(M)
void check_labels(const int32_t* labels, int64_t M, int64_t K, const char* op);

}  // namespace pf::kernels::cpu
