// Differentiable ops. Each op lives with its backward in framework/ops/<family>.cpp and
// dispatches on device and dtype to the raw kernels of kernels/cpu (and kernels/cuda).
//
// Conventions:
// - Inputs of one op share a device; floating inputs share a dtype (F32 or F64 on the CPU);
//   index tensors are I32, masks U8. A violation is an error naming the shapes/dtypes found.
// - Outputs are new contiguous tensors (reshape is the one op that shares storage).
// - Shapes in comments: (B,N,D) means exactly that rank; (...,D) any leading dims.
// - Ops record a graph node only when grad mode is on and an input requires grad
//   (framework/autograd.h). The ops marked "no grad" never record one.
#pragma once
#include <vector>

#include "framework/tensor.h"

namespace pf::ops {

// ---- elementwise (numpy broadcasting between a and b; the gradient of a broadcast input is
//      summed over the broadcast dims) -----------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double s);  // x·s
Tensor gelu(const Tensor& x);             // exact: x·Φ(x) = 0.5·x·(1 + erf(x/√2))

// ---- reductions ---------------------------------------------------------------------------
Tensor sum(const Tensor& x);                         // all elements → shape {}
Tensor mean(const Tensor& x);                        // all elements → shape {}
Tensor sum_to(const Tensor& x, const Shape& shape);  // sum over the dims broadcast from `shape`

// ---- linear algebra -----------------------------------------------------------------------
// a:(...,M,K) b:(...,K,N) → (...,M,N); with trans_a a is (...,K,M), with trans_b b is (...,N,K).
// Batch dims of a and b are equal, or b is 2-D (shared by every batch).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// x:(...,in) w:(out,in) b:(out) or undefined → (...,out)
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);

// ---- normalisation and activations ------------------------------------------------------------
// Over the last dim. x:(...,C) w:(C) b:(C)
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps = 1e-5);
Tensor softmax(const Tensor& x);  // over the last dim
// Mean over rows of −log softmax(logits)[label]. logits:(N,K) labels:(N) I32 in [0,K) → shape {}
Tensor cross_entropy(const Tensor& logits, const Tensor& labels);

// ---- indexing -------------------------------------------------------------------------------
// weight:(V,D) idx:(...) I32 in [0,V) → (...,D); backward scatter-adds into weight's gradient.
Tensor embedding(const Tensor& weight, const Tensor& idx);

// ---- dtype ------------------------------------------------------------------------------------
// x converted (nearest even) to a floating dtype; the gradient is converted back to x's dtype.
// Returns x itself when the dtype already matches.
Tensor cast(const Tensor& x, DType dtype);

// ---- shape ------------------------------------------------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);            // shares storage; one dim may be −1
Tensor permute(const Tensor& x, const std::vector<int>& dims);  // copy; out dim i = x dim dims[i]
Tensor transpose(const Tensor& x, int d0, int d1);              // permute swapping two dims
// x:(n,...) → the n tensors x[i]:(...), views of x's storage; their gradients add into x's
std::vector<Tensor> unbind(const Tensor& x);

// ---- attention with an additive bias (the flash-bias layer) ----------------------------------
struct AttentionOptions {
  double scale = 0.0;          // 0 → 1/√D
  Tensor key_padding_mask;     // (B,Nk) U8, nonzero = padding (ignored key); optional
  bool causal = false;         // bottom-right aligned: query i sees key j iff j ≤ i + Nk − Nq
  bool deterministic = false;  // bitwise-reproducible backward (the CPU path always is)
  // Packed variable-length batch (host arrays, (B+1) each, [0] = 0; empty = dense layout):
  // q is (Tq,H,D), k and v (Tk,H,D), the bias a 1-D tensor of the packed [H,nq_b,nk_b] blocks
  // (kernels/flash_bias_params.h); cu_seqlens_k empty = the same as cu_seqlens_q.
  std::vector<int32_t> cu_seqlens_q, cu_seqlens_k;
};
// out = softmax(scale·q·kᵀ + bias + mask)·v per batch and head.
// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) or undefined → (B,Nq,H,D).
// Backward gives dq, dk, dv and dbias (dbias summed over the bias's broadcast dims).
// Never materialises B·H·Nq·Nk scores: the kernels are tiled with an online softmax. On the GPU
// a head dim below 128 other than 16, 32, 64 runs zero-padded to the next of these, and one past
// 128 as a chain of ops that does store the scores (dense, no masks); each said once.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                 const AttentionOptions& opt = {});
// The same with a learned relative-position table T (H, 2R+1) (R from its width, q's dtype on the
// CPU, float32 on the GPU): the scores of query i, key j get + T[h, clip(j−i, −R, R) + R],
// looked up inside the kernel; T receives its gradient (reduced inside the kernel) like any input.
// bias may be undefined.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                 const Tensor& relpos_table, const AttentionOptions& opt = {});

// ---- fused (framework/ops/fused.cpp): one pass where a chain of ops would make several ---------
// One layer's attention bias from the pair representation: permute(linear(layernorm(z, gamma,
// beta, eps), w), {0,3,1,2}) without the normalised copy of z; the backward recomputes the row
// statistics from z. z:(B,N,M,C) gamma,beta:(C) w:(H,C) → (B,H,N,M). On the GPU z is float32
// or bfloat16 and the parameters float32 or z's dtype; any C and H (where the kernels' shared
// memory does not hold W, past C = 256 with H = 64, the op runs the chain and says so once).
Tensor pair_bias(const Tensor& z, const Tensor& gamma, const Tensor& beta, const Tensor& w,
                 double eps = 1e-5);
// The biases of L layers that read one z (the pair-bias model's layers): pair_bias(z, gammas[l],
// betas[l], ws[l], eps) for each l, as L views of one (L,B,H,N,M) result. One pass over z forward
// and one backward where a kernel takes the sizes (GPU: C in {16, 32, 64, 128} and L·H <= 64,
// kernels/cuda/fused.h; CPU: the single layer's kernel per layer in one op), with z's gradient
// summed over the layers inside it; elsewhere (and unfused) one pair_bias per layer.
std::vector<Tensor> pair_bias_layers(const Tensor& z, const std::vector<Tensor>& gammas,
                                     const std::vector<Tensor>& betas, const std::vector<Tensor>& ws,
                                     double eps = 1e-5);
// The pair representation's two lookups in one op: cast(a[ia]) + cast(b[ib]) with ib's dims the
// trailing dims of ia's (broadcast over the rest), written once in out_dtype (on the CPU the
// tables' dtype; on the GPU float32 or bfloat16; past Va + Vb = 3072 rows the GPU runs the chain
// and says so once). Gradients reach a and b.
// a:(Va,D) ia:(...,S...) I32 b:(Vb,D) ib:(S...) I32 → (...,S...,D)
Tensor embedding_sum(const Tensor& a, const Tensor& ia, const Tensor& b, const Tensor& ib, DType out_dtype);
// Off: the fused op `op` ("pair_bias", "embedding_sum") runs the chain of ops it replaces instead
// (the unfused reference, for benchmarks and tests). Process-wide, on by default.
void set_fused(const char* op, bool on);
bool fused(const char* op);

// ---- pair features (framework/ops/pair_features.cpp; no grad): the integer inputs of the pair
//      representation, computed on the device of the coordinates, the same on either device ----
// rel[i,j] = clip(j − i, −R, R) + R.  → (N,N) I32 on `device`
Tensor relative_positions(int N, int R, Device device);
// bins[b,i,j] = clamp(⌊‖x_i − x_j‖ / dist_max · n_bins⌋, 0, n_bins − 1).  coords:(B,N,3) F32 → (B,N,N) I32
Tensor distance_bins(const Tensor& coords, double dist_max, int n_bins);
// Both for the chains of a packed batch: coords:(T,3) F32, cu_seqlens (B+1) and start (B+1, the
// chains' first pair) on the host → rel, bins:(P) I32, chain b's n_b² pairs row-major from start[b].
struct PackedPairFeatureTensors {
  Tensor rel, bins;
};
PackedPairFeatureTensors packed_pair_features(const Tensor& coords, const std::vector<int32_t>& cu_seqlens,
                                              const std::vector<int64_t>& start, int R, double dist_max,
                                              int n_bins);

// ---- no grad: in-place updates and queries -----------------------------------------------------
void add_(Tensor& dst, const Tensor& src);             // dst += src (same shape)
void scale_(Tensor& x, double s);                      // x *= s
void axpy_(Tensor& y, double alpha, const Tensor& x);  // y += alpha·x (same shape)
double sum_of_squares(const Tensor& x);                // Σ x², accumulated in double
// Fraction of rows whose argmax equals the label. logits:(N,K) labels:(N) I32
double accuracy(const Tensor& logits, const Tensor& labels);
// The same as counts left on logits' device (nothing read back): (2) I32, [0] the rows right,
// [1] the labels outside [0,K) (on the CPU such a label is an error at once).
Tensor count_correct(const Tensor& logits, const Tensor& labels);
// count_correct's counts → the fraction right; a label outside [0,K) is an error naming them.
double accuracy_of(int64_t correct, int64_t bad_labels, int64_t N, int64_t K);
// Tensors of one device (float32, float64 or int32) → (Σ numel) F64 there, their elements in
// order, in one launch on the GPU (at most 16 elements): several results read back by one copy.
Tensor stack_scalars(const std::vector<Tensor>& xs);
bool all_finite(const Tensor& x);

}  // namespace pf::ops
