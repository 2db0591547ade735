// The flash-bias attention problem, described by plain pointers, shapes and strides.
//
//   out = softmax(scale · Q Kᵀ + B + mask) · V        per batch b and head h
//
// Shared by the CPU reference (kernels/cpu/flash_bias.h) and the CUDA kernels
// (kernels/cuda/flash_bias.h): both take exactly these structs, so a test can run the same
// problem through either.
//
// Conventions (stated once, here):
// - Q (B,Nq,H,D), K and V (B,Nk,H,D), out like Q: element [b,n,h,d] lives at
//   ptr + b*batch_stride + n*row_stride + h*head_stride + d   (unit stride on D).
// - Strides are in elements, not bytes.
// - bias (B|1, H|1, Nq, Nk): element [b,h,i,j] at bias + b*bias_batch_stride + h*bias_head_stride
//   + i*bias_row_stride + j. A zero batch (head) stride means the bias is shared over the batch
//   (heads); dbias then has the bias's own shape and receives the sum over the shared axis.
// - key_padding_mask (B,Nk) uint8, PyTorch's convention: nonzero = padding = key is ignored.
// - causal: bottom-right aligned as in FlashAttention 2 — query i sees key j iff
//   j <= i + (Nk - Nq). With Nq == Nk this is the usual lower triangle.
// - A row whose keys are all masked has out = 0, lse = -inf, and contributes zero gradient.
// - lse (B,H,Nq) contiguous, natural-log log-sum-exp of the scaled, biased, masked scores.
//   Its element type is the accumulator type: double for F64 inputs, float otherwise.
// - Gradients: dq, dk, dv are written (=); dbias and drelpos_table are written (=) unless
//   dbias_accumulate, in which case they are added to (+=). A null gradient pointer means
//   "not wanted": it is not computed.
//
// Fused relative-position bias (optional, on top of `bias` or alone):
//   the scores of query i and key j of head h get  + T[h, clip(j − i, −R, R) + R]
//   from a table T (H, 2R+1), contiguous, R = relpos_clip >= 0; i and j are positions inside the
//   sequence (0-based, also in a packed batch). No (Nq,Nk) bias exists in memory; the backward
//   reduces dT[h, r] = Σ_{b, i, j : clip(j−i)+R = r} dS[b,h,i,j] inside the kernel.
//
// Packed variable-length batches (optional; FlashAttention's "varlen" convention):
//   cu_seqlens_q / cu_seqlens_k (B+1) int32, nondecreasing, [0] = 0: sequence b's queries are the
//   rows cu_seqlens_q[b] … cu_seqlens_q[b+1]−1 of q/out/dout/dq, its keys the rows
//   cu_seqlens_k[b] … of k/v/dk/dv (batch strides unused), so q is (Tq,H,D) with
//   Tq = cu_seqlens_q[B]. Nq and Nk are then the largest sequence lengths (a bound for tiling).
//   Lengths may be 0 (nothing is read or written for that sequence).
//   - bias: packed blocks, sequence b's [H, nq_b, nk_b] block contiguous at
//     bias + bias_seq_offsets[b] (so element [b,h,i,j] is at that + (h·nq_b + i)·nk_b + j;
//     bias strides unused). dbias uses the same offsets and layout.
//   - lse: (H, Tq) contiguous: element [h, cu_seqlens_q[b] + i].
//   - key_padding_mask is not supported with packing (lengths already say which keys exist);
//     causal is bottom-right aligned per sequence.
//   - The pointers are host memory for the CPU kernels and device memory for the CUDA kernels.
#pragma once
#include <cstdint>

namespace pf::kernels {

enum class ScalarType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

inline const char* scalar_type_name(ScalarType t) {
  switch (t) {
    case ScalarType::F32: return "float32";
    case ScalarType::F64: return "float64";
    case ScalarType::F16: return "float16";
    case ScalarType::BF16: return "bfloat16";
  }
  return "?";
}

// Bytes per element.
inline int scalar_type_size(ScalarType t) {
  switch (t) {
    case ScalarType::F32: return 4;
    case ScalarType::F64: return 8;
    case ScalarType::F16:
    case ScalarType::BF16: return 2;
  }
  return 1;
}

// Strides of one (B, N, H, D) tensor with unit stride on D.
struct BNHDStrides {
  int64_t batch = 0, row = 0, head = 0;
};

inline BNHDStrides contiguous_bnhd(int64_t N, int64_t H, int64_t D) {
  return BNHDStrides{N * H * D, H * D, D};
}

struct FlashBiasParams {
  // problem size
  int B = 0, H = 0, Nq = 0, Nk = 0, D = 0;
  double scale = 1.0;                  // double so that the F64 reference path is exact; kernels narrow it
  ScalarType dtype = ScalarType::F32;  // of q, k, v, out (and dout, dq, dk, dv)

  const void* q = nullptr;
  BNHDStrides q_stride;  // (B,Nq,H,D)
  const void* k = nullptr;
  BNHDStrides k_stride;  // (B,Nk,H,D)
  const void* v = nullptr;
  BNHDStrides v_stride;  // (B,Nk,H,D)
  void* out = nullptr;
  BNHDStrides out_stride;  // (B,Nq,H,D)
  void* lse = nullptr;     // (B,H,Nq) contiguous; float or double

  // optional additive bias (B|1,H|1,Nq,Nk); null = no bias
  const void* bias = nullptr;
  ScalarType bias_dtype = ScalarType::F32;
  int64_t bias_batch_stride = 0, bias_head_stride = 0, bias_row_stride = 0;

  const uint8_t* key_padding_mask = nullptr;  // (B,Nk) contiguous; nonzero = ignore key
  bool causal = false;

  // optional fused relative-position bias: table (H, 2R+1) contiguous; null = none.
  // CPU: the inputs' dtype (F32 or F64); CUDA: F32.
  const void* relpos_table = nullptr;
  ScalarType relpos_dtype = ScalarType::F32;
  int relpos_clip = 0;  // R

  // optional packed variable-length batch; null = the dense (B,N,H,D) layout
  const int32_t* cu_seqlens_q = nullptr;      // (B+1)
  const int32_t* cu_seqlens_k = nullptr;      // (B+1)
  const int64_t* bias_seq_offsets = nullptr;  // (B+1), elements; needed when bias is packed
};

struct FlashBiasBwdParams : FlashBiasParams {
  const void* dout = nullptr;
  BNHDStrides dout_stride;  // (B,Nq,H,D)
  void* dq = nullptr;
  BNHDStrides dq_stride;  // (B,Nq,H,D), null = not wanted
  void* dk = nullptr;
  BNHDStrides dk_stride;  // (B,Nk,H,D), null = not wanted
  void* dv = nullptr;
  BNHDStrides dv_stride;  // (B,Nk,H,D), null = not wanted
  // (B|1,H|1,Nq,Nk) with the bias's dtype and broadcast pattern; null = not wanted
  void* dbias = nullptr;
  int64_t dbias_batch_stride = 0, dbias_head_stride = 0, dbias_row_stride = 0;
  void* drelpos_table = nullptr;  // (H, 2R+1) with relpos_dtype; null = not wanted
  bool dbias_accumulate = false;  // += into dbias and drelpos_table instead of =
  bool deterministic = false;     // bitwise-identical results run to run
};

}  // namespace pf::kernels
