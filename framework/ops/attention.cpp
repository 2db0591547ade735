// The flash-bias attention layer: out = softmax(scale·q·kᵀ + bias + T_rel + mask)·v per batch and
// head.
//
// The op turns tensors into the plain problem description of kernels/flash_bias_params.h and
// runs the CPU kernels of kernels/cpu/flash_bias.h or the CUDA ones (they derive the backward:
// dS = P∘(dP − Δ), Δ = rowsum(dO∘O); dq = scale·dS·k, dk = scale·dSᵀ·q, dv = Pᵀ·dO, dbias = dS
// summed over the bias's broadcast dims, dT = dS summed over the clipped diagonals). The forward
// saves the log-sum-exp per query row; the backward recomputes P from it tile by tile, so no
// (B,H,Nq,Nk) tensor exists at any point.
//
// Layouts:
// - Dense: q (B,Nq,H,D), k and v (B,Nk,H,D). A bias of shape (1,H,Nq,Nk), (B,1,Nq,Nk) or
//   (1,1,Nq,Nk) is passed with a zero batch and/or head stride; dbias has the bias's own shape
//   and receives the sum over the shared dims.
// - Packed (opt.cu_seqlens_q non-empty): q (Tq,H,D), k and v (Tk,H,D); sequence b is the rows
//   cu_seqlens[b] … cu_seqlens[b+1]−1; the bias is 1-D, the blocks [H,nq_b,nk_b] one after the
//   other; lse (H,Tq). The lengths live on the host (the op checks every shape against them)
//   and are copied, with the bias block offsets, to the tensors' device for the kernels.
// - Relative-position table T (H, 2R+1), optional: q's dtype on the CPU, float32 on the GPU (the
//   CUDA kernels read and reduce it in fp32 whatever the inputs' dtype).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "framework/allocator.h"
#include "framework/deterministic.h"
#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/flash_bias.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/context.h"
#include "kernels/cuda/flash_bias.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {

// The tensors of one attention call, validated; sizes as ints for the kernel structs.
struct AttentionShape {
  int B = 0, H = 0, Nq = 0, Nk = 0, D = 0;  // packed: B sequences, Nq/Nk the longest
  int64_t bias_batch_stride = 0, bias_head_stride = 0, bias_row_stride = 0;
  int R = -1;  // relpos clip; -1 = no table
  bool packed = false;
  int64_t Tq = 0, Tk = 0;             // packed: total query / key rows
  std::vector<int32_t> cu_q, cu_k;    // packed: (B+1) each
  std::vector<int64_t> bias_offsets;  // packed: (B+1), offsets of the bias blocks
};

// The lengths of a packed batch: (B+1) entries, [0] = 0, nondecreasing.
void check_cu_seqlens(const std::vector<int32_t>& cu, const char* name) {
  PF_CHECK(cu.size() >= 2, "attention: " << name << " must have B+1 >= 2 entries, got " << cu.size());
  PF_CHECK(cu[0] == 0, "attention: " << name << "[0] must be 0, got " << cu[0]);
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    PF_CHECK(cu[b + 1] >= cu[b], "attention: " << name << " must be nondecreasing, got " << name << "[" << b
                                               << "]=" << cu[b] << " > " << name << "[" << b + 1
                                               << "]=" << cu[b + 1]);
}

void check_packed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                  const AttentionOptions& opt, AttentionShape& s) {
  s.packed = true;
  s.cu_q = opt.cu_seqlens_q;
  s.cu_k = opt.cu_seqlens_k.empty() ? opt.cu_seqlens_q : opt.cu_seqlens_k;
  check_cu_seqlens(s.cu_q, "cu_seqlens_q");
  check_cu_seqlens(s.cu_k, "cu_seqlens_k");
  PF_CHECK(s.cu_q.size() == s.cu_k.size(),
           "attention: cu_seqlens_q and cu_seqlens_k must have the same length B+1, got "
               << s.cu_q.size() << " and " << s.cu_k.size());
  s.B = static_cast<int>(s.cu_q.size()) - 1;
  s.Tq = s.cu_q.back();
  s.Tk = s.cu_k.back();
  PF_CHECK(q.ndim() == 3, "attention: a packed q must be (Tq,H,D), got " << q.str());
  s.H = static_cast<int>(q.size(1));
  s.D = static_cast<int>(q.size(2));
  PF_CHECK(q.size(0) == s.Tq,
           "attention: q must be (Tq=" << s.Tq << ",H,D) for cu_seqlens_q, got " << q.str());
  PF_CHECK(k.ndim() == 3 && k.size(0) == s.Tk && k.size(1) == s.H && k.size(2) == s.D,
           "attention: k must be (Tk=" << s.Tk << ",H=" << s.H << ",D=" << s.D
                                       << ") for cu_seqlens_k and q, got " << k.str());
  PF_CHECK(v.shape() == k.shape(),
           "attention: v must have k's shape " << shape_str(k.shape()) << ", got " << v.str());
  PF_CHECK(s.H >= 1 && s.D >= 1, "attention: H and D must be >= 1, got q " << q.str());
  for (int b = 0; b < s.B; ++b) {
    s.Nq = std::max(s.Nq, s.cu_q[b + 1] - s.cu_q[b]);
    s.Nk = std::max(s.Nk, s.cu_k[b + 1] - s.cu_k[b]);
  }
  PF_CHECK(!opt.key_padding_mask.defined(),
           "attention: key_padding_mask is not supported with cu_seqlens (the lengths say which "
           "keys exist), got "
               << opt.key_padding_mask.str());
  if (bias.defined()) {
    check_float(bias, "attention", "bias");
    check_same(q, "q", bias, "bias", "attention");
    s.bias_offsets.assign(s.B + 1, 0);
    for (int b = 0; b < s.B; ++b)
      s.bias_offsets[b + 1] =
          s.bias_offsets[b] + int64_t{s.H} * (s.cu_q[b + 1] - s.cu_q[b]) * (s.cu_k[b + 1] - s.cu_k[b]);
    PF_CHECK(bias.ndim() == 1 && bias.size(0) == s.bias_offsets.back(),
             "attention: a packed bias must be 1-D with Σ H·nq_b·nk_b = " << s.bias_offsets.back()
                                                                          << " elements, got " << bias.str());
  }
}

void check_dense(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                 const AttentionOptions& opt, AttentionShape& s) {
  const char* op = "attention";
  PF_CHECK(opt.cu_seqlens_k.empty(),
           "attention: cu_seqlens_k given without cu_seqlens_q (" << opt.cu_seqlens_k.size() << " entries)");
  PF_CHECK(q.ndim() == 4, "attention: q must be (B,Nq,H,D), got " << q.str());
  PF_CHECK(k.ndim() == 4, "attention: k must be (B,Nk,H,D), got " << k.str());
  PF_CHECK(v.shape() == k.shape(),
           "attention: v must have k's shape " << shape_str(k.shape()) << ", got " << v.str());
  s.B = static_cast<int>(q.size(0));
  s.Nq = static_cast<int>(q.size(1));
  s.H = static_cast<int>(q.size(2));
  s.D = static_cast<int>(q.size(3));
  s.Nk = static_cast<int>(k.size(1));
  PF_CHECK(k.size(0) == s.B && k.size(2) == s.H && k.size(3) == s.D,
           "attention: k must be (B=" << s.B << ",Nk,H=" << s.H << ",D=" << s.D << ") to match q "
                                      << shape_str(q.shape()) << ", got " << k.str());
  PF_CHECK(s.B >= 1 && s.Nq >= 1 && s.Nk >= 1 && s.H >= 1 && s.D >= 1,
           "attention: every size must be >= 1, got q " << shape_str(q.shape()) << " and k "
                                                        << shape_str(k.shape()));
  if (bias.defined()) {
    check_float(bias, op, "bias");
    check_same(q, "q", bias, "bias", op);
    const bool ok = bias.ndim() == 4 && (bias.size(0) == s.B || bias.size(0) == 1) &&
                    (bias.size(1) == s.H || bias.size(1) == 1) && bias.size(2) == s.Nq &&
                    bias.size(3) == s.Nk;
    PF_CHECK(ok, "attention: bias must be (B|1,H|1,Nq,Nk) = (" << s.B << "|1," << s.H << "|1," << s.Nq << ","
                                                               << s.Nk << "), got " << bias.str());
    s.bias_row_stride = s.Nk;
    s.bias_head_stride = bias.size(1) == 1 ? 0 : int64_t{s.Nq} * s.Nk;
    s.bias_batch_stride = bias.size(0) == 1 ? 0 : bias.size(1) * s.Nq * s.Nk;
  }
  if (opt.key_padding_mask.defined()) {
    const Tensor& m = opt.key_padding_mask;
    PF_CHECK(m.dtype() == DType::U8, "attention: key_padding_mask must be uint8, got " << m.str());
    PF_CHECK(m.shape() == (Shape{s.B, s.Nk}),
             "attention: key_padding_mask must be (B,Nk) = (" << s.B << "," << s.Nk << "), got " << m.str());
    PF_CHECK(m.device() == q.device(), "attention: key_padding_mask on " << m.str() << ", q on " << q.str());
  }
}

// T (H, 2R+1): on q's device; q's dtype on the CPU, float32 on the GPU.
void check_relpos_table(const Tensor& q, const Tensor& table, AttentionShape& s) {
  check_defined(table, "attention", "relpos_table");
  PF_CHECK(table.device() == q.device(),
           "attention: relpos_table must be on q's device, got " << table.str() << " and q " << q.str());
  if (q.device() == Device::CUDA) {
    PF_CHECK(table.dtype() == DType::F32,
             "attention: relpos_table on the GPU must be float32, got " << table.str());
  } else {
    PF_CHECK(table.dtype() == q.dtype(), "attention: relpos_table on the CPU must have q's dtype "
                                             << dtype_name(q.dtype()) << ", got " << table.str());
  }
  PF_CHECK(table.ndim() == 2 && table.size(0) == s.H && table.size(1) % 2 == 1,
           "attention: relpos_table must be (H=" << s.H << ", 2R+1) with an odd width, got " << table.str());
  s.R = static_cast<int>((table.size(1) - 1) / 2);
}

AttentionShape check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                               const Tensor& table, const AttentionOptions& opt) {
  const char* op = "attention";
  check_float(q, op, "q");
  check_float(k, op, "k");
  check_float(v, op, "v");
  check_same(q, "q", k, "k", op);
  check_same(q, "q", v, "v", op);
  AttentionShape s;
  if (opt.cu_seqlens_q.empty())
    check_dense(q, k, v, bias, opt, s);
  else
    check_packed(q, k, v, bias, opt, s);
  if (table.defined()) check_relpos_table(q, table, s);
  PF_CHECK(opt.scale >= 0 && std::isfinite(opt.scale),
           "attention: scale must be finite and >= 0 (0 = 1/sqrt(D)), got " << opt.scale);
  return s;
}

// A host array copied to `device` as a tensor of raw bytes (the kernels read it as int32/int64).
template <class I>
Tensor index_array(const std::vector<I>& host, Device device) {
  const size_t bytes = host.size() * sizeof(I);
  Tensor t = Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8, device);
  copy_bytes(t.data_ptr(), device, host.data(), Device::CPU, bytes);
  return t;
}

// The packed batch's index arrays on the tensors' device; undefined in the dense layout.
struct PackedArrays {
  Tensor cu_q, cu_k, bias_offsets;
};

PackedArrays packed_arrays(const AttentionShape& s, Device device) {
  PackedArrays a;
  if (!s.packed) return a;
  a.cu_q = index_array(s.cu_q, device);
  a.cu_k = index_array(s.cu_k, device);
  if (!s.bias_offsets.empty()) a.bias_offsets = index_array(s.bias_offsets, device);
  return a;
}

// The forward problem over contiguous tensors (on either device).
kernels::FlashBiasParams forward_params(const AttentionShape& s, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor& bias, const Tensor& table,
                                        const Tensor& mask, const PackedArrays& arrays, bool causal,
                                        double scale) {
  kernels::FlashBiasParams p;
  p.B = s.B;
  p.H = s.H;
  p.Nq = s.Nq;
  p.Nk = s.Nk;
  p.D = s.D;
  p.scale = scale;
  p.dtype = scalar_type_of(q.dtype());
  p.q = q.data_ptr();
  p.q_stride = kernels::contiguous_bnhd(s.packed ? s.Tq : s.Nq, s.H, s.D);
  p.k = k.data_ptr();
  p.k_stride = kernels::contiguous_bnhd(s.packed ? s.Tk : s.Nk, s.H, s.D);
  p.v = v.data_ptr();
  p.v_stride = p.k_stride;
  p.out_stride = p.q_stride;
  if (bias.defined()) {
    p.bias = bias.data_ptr();
    p.bias_dtype = scalar_type_of(bias.dtype());
    p.bias_batch_stride = s.bias_batch_stride;
    p.bias_head_stride = s.bias_head_stride;
    p.bias_row_stride = s.bias_row_stride;
  }
  if (table.defined()) {
    p.relpos_table = table.data_ptr();
    p.relpos_dtype = scalar_type_of(table.dtype());
    p.relpos_clip = s.R;
  }
  if (s.packed) {
    p.cu_seqlens_q = static_cast<const int32_t*>(arrays.cu_q.data_ptr());
    p.cu_seqlens_k = static_cast<const int32_t*>(arrays.cu_k.data_ptr());
    if (arrays.bias_offsets.defined())
      p.bias_seq_offsets = static_cast<const int64_t*>(arrays.bias_offsets.data_ptr());
  }
  if (mask.defined()) p.key_padding_mask = static_cast<const uint8_t*>(mask.data_ptr());
  p.causal = causal;
  return p;
}

// A gradient the backward must write: a tensor like x, laid out with x's strides.
Tensor wanted_grad(const Tensor& x, void*& ptr, kernels::BNHDStrides& stride,
                   const kernels::BNHDStrides& x_stride) {
  Tensor g = Tensor::empty(x.shape(), x.dtype(), x.device());
  ptr = g.data_ptr();
  stride = x_stride;
  return g;
}

// The kernels of the tensors' device: CPU (float32/float64) or CUDA (float32/bfloat16/float16,
// workspace from the caching allocator, on the one stream).
void launch_forward(const kernels::FlashBiasParams& p, Device device) {
#ifdef PF_WITH_CUDA
  if (device == Device::CUDA) {
    kernels::cuda::flash_bias_forward(p, static_cast<cudaStream_t>(kernels::cuda::stream()));
    return;
  }
#endif
  (void)device;
  kernels::cpu::flash_bias_forward(p);
}

void launch_backward(const kernels::FlashBiasBwdParams& bp, Device device) {
#ifdef PF_WITH_CUDA
  if (device == Device::CUDA) {
    Tensor ws = Tensor::empty({static_cast<int64_t>(kernels::cuda::flash_bias_backward_workspace_bytes(bp))},
                              DType::U8, device);
    kernels::cuda::flash_bias_backward(bp, ws.data_ptr(), static_cast<cudaStream_t>(kernels::cuda::stream()));
    return;
  }
#endif
  (void)device;
  kernels::cpu::flash_bias_backward(bp);
}

// The GPU kernels take head dims 16, 32, 64 and 128 (kernels/cuda/flash_bias.h); the next of
// these at or above D, or 0 where D is one of them or past 128.
int64_t padded_head_dim(int64_t D) {
  for (int64_t d : {16, 32, 64, 128})
    if (D <= d) return D == d ? 0 : d;
  return 0;
}

// (Dp, D) of x's dtype and device with ones on the diagonal: linear(x, E) widens (…,D) to (…,Dp)
// with zero columns, linear(y, Eᵀ) keeps y's first D columns (exact: one product by 1 per value).
// Made once per (Dp, D, dtype, device) and kept: a training step then uploads nothing, so that
// it can be captured in a CUDA graph (run/train_step.h) after its first, eager run.
Tensor widening(int64_t Dp, int64_t D, const Tensor& like) {
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, DType, Device>, Tensor> made;
  const std::lock_guard<std::mutex> lock(mu);
  Tensor& e = made[{Dp, D, like.dtype(), like.device()}];
  if (!e.defined()) {
    Tensor host = Tensor::zeros({Dp, D}, DType::F32, Device::CPU);
    for (int64_t i = 0; i < D; ++i) host.data<float>()[i * D + i] = 1.f;
    e = host.to(like.dtype()).to(like.device());
  }
  return e;
}
// Head dims past the GPU kernels' 128: softmax(scale·q·kᵀ + bias + T[h, clip(j−i)+R])·v as a
// chain of ops in float32 (matmul, softmax: the (B,H,Nq,Nk) scores are materialised), the result
// in q's dtype. Dense batches without masks only (what the pair-bias and relpos models use).
Tensor attention_unfused(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                         const Tensor& table, const AttentionOptions& opt, const AttentionShape& s,
                         double scale) {
  PF_CHECK(!s.packed && !opt.key_padding_mask.defined() && !opt.causal,
           "attention: head dim D = "
               << s.D
               << " is past the GPU kernels' 128; the unfused form "
                  "that runs instead takes no packed batch, key padding mask or causal mask");
  static std::atomic<bool> said{false};
  note_once(said, "attention: the CUDA kernels take head dims up to 128; D = " + std::to_string(s.D) +
                      " runs unfused (matmul, softmax; the scores stored)");
  auto f32 = [](const Tensor& t) { return t.dtype() == DType::F32 ? t : cast(t, DType::F32); };
  auto heads_first = [&](const Tensor& t) { return permute(f32(t), {0, 2, 1, 3}); };  // (B,H,N,D)
  Tensor scores = ops::scale(matmul(heads_first(q), heads_first(k), false, true), scale);
  if (bias.defined()) scores = add(scores, f32(bias));
  if (table.defined()) {  // T[h, clip(j − i, −R, R) + R] as a (1,H,Nq,Nk) bias
    Tensor idx = Tensor::empty({s.Nq, s.Nk}, DType::I32, Device::CPU);
    for (int i = 0; i < s.Nq; ++i)
      for (int j = 0; j < s.Nk; ++j)
        idx.data<int32_t>()[int64_t(i) * s.Nk + j] = std::clamp(j - i, -s.R, s.R) + s.R;
    const Tensor rel = embedding(transpose(f32(table), 0, 1), idx.to(q.device()));  // (Nq,Nk,H)
    scores = add(scores, reshape(permute(rel, {2, 0, 1}), {1, s.H, s.Nq, s.Nk}));
  }
  const Tensor out = permute(matmul(softmax(scores), heads_first(v)), {0, 2, 1, 3});
  return out.dtype() == q.dtype() ? out : cast(out, q.dtype());
}
}  // namespace

// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) or undefined → (B,Nq,H,D)
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                 const AttentionOptions& opt) {
  return attention(q, k, v, bias, Tensor(), opt);
}

// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) relpos_table:(H,2R+1), either undefined
// → (B,Nq,H,D). Packed: q:(Tq,H,D) k,v:(Tk,H,D) bias:(Σ H·nq_b·nk_b) → (Tq,H,D).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                 const Tensor& relpos_table, const AttentionOptions& opt) {
  const profile::Scope ps("attention");
  const AttentionShape s = check_attention(q, k, v, bias, relpos_table, opt);
  const double scale = opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(s.D));
  if (q.device() == Device::CUDA && s.D > 128)
    return attention_unfused(q, k, v, bias, relpos_table, opt, s, scale);
  if (const int64_t Dp = q.device() == Device::CUDA ? padded_head_dim(s.D) : 0) {
    // A head dim the GPU kernels do not take: q, k, v zero-padded to Dp (q·kᵀ unchanged, the
    // output's extra columns zero and dropped), the scale kept at D's.
    static std::atomic<bool> said{false};
    note_once(said, "attention: the CUDA kernels take head dims 16, 32, 64, 128; D = " + std::to_string(s.D) +
                        " runs zero-padded to " + std::to_string(Dp));
    AttentionOptions o = opt;
    o.scale = scale;
    const Tensor e = widening(Dp, s.D, q);
    const Tensor out = attention(linear(q, e, Tensor()), linear(k, e, Tensor()), linear(v, e, Tensor()), bias,
                                 relpos_table, o);
    return linear(out, transpose(e, 0, 1), Tensor());
  }
  const PackedArrays arrays = packed_arrays(s, q.device());
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  // The log-sum-exp per (b, h, query row) — (H, Tq) when packed — in the accumulator type:
  // double for float64 inputs, float otherwise (float32 on the CPU; float32, bfloat16 or float16
  // on the GPU).
  const Shape lse_shape = s.packed ? Shape{s.H, s.Tq} : Shape{s.B, s.H, s.Nq};
  Tensor lse = Tensor::empty(lse_shape, q.dtype() == DType::F64 ? DType::F64 : DType::F32, q.device());
  kernels::FlashBiasParams p =
      forward_params(s, q, k, v, bias, relpos_table, opt.key_padding_mask, arrays, opt.causal, scale);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  launch_forward(p, q.device());

  const Tensor sq = q.detach(), sk = k.detach(), sv = v.detach(), so = out.detach();
  const Tensor sbias = bias.defined() ? bias.detach() : Tensor();
  const Tensor saved_table = relpos_table.defined() ? relpos_table.detach() : Tensor();
  const Tensor smask = opt.key_padding_mask.defined() ? opt.key_padding_mask.detach() : Tensor();
  const bool need_q = q.requires_grad(), need_k = k.requires_grad(), need_v = v.requires_grad();
  const bool need_bias = bias.defined() && bias.requires_grad();
  const bool need_table = relpos_table.defined() && relpos_table.requires_grad();
  const bool causal = opt.causal, deterministic = opt.deterministic || pf::deterministic();
  return make_result(
      out, "attention", {q, k, v, bias, relpos_table}, [=](const Tensor& g) -> std::vector<Tensor> {
        const profile::Scope ps("attention");  // backward: grad mode is off here
        kernels::FlashBiasBwdParams bp;
        static_cast<kernels::FlashBiasParams&>(bp) =
            forward_params(s, sq, sk, sv, sbias, saved_table, smask, arrays, causal, scale);
        bp.out = const_cast<void*>(so.data_ptr());
        bp.lse = const_cast<void*>(lse.data_ptr());
        bp.dout = g.data_ptr();
        bp.dout_stride = bp.q_stride;
        Tensor dq, dk, dv, dbias, dtable;
        if (need_q) dq = wanted_grad(sq, bp.dq, bp.dq_stride, bp.q_stride);
        if (need_k) dk = wanted_grad(sk, bp.dk, bp.dk_stride, bp.k_stride);
        if (need_v) dv = wanted_grad(sv, bp.dv, bp.dv_stride, bp.v_stride);
        if (need_bias) {  // packed: the same offsets as the bias (strides unused)
          dbias = Tensor::empty(sbias.shape(), sbias.dtype(), sbias.device());
          bp.dbias = dbias.data_ptr();
          bp.dbias_batch_stride = s.bias_batch_stride;
          bp.dbias_head_stride = s.bias_head_stride;
          bp.dbias_row_stride = s.bias_row_stride;
        }
        if (need_table) {
          dtable = Tensor::empty(saved_table.shape(), saved_table.dtype(), saved_table.device());
          bp.drelpos_table = dtable.data_ptr();
        }
        bp.deterministic = deterministic;
        launch_backward(bp, g.device());
        return {dq, dk, dv, dbias, dtable};
      });
}

}  // namespace pf::ops
