// pairflash's flash-bias attention as PyTorch custom operators (library `pairflash`):
//
//   out = softmax(scale · q kᵀ + bias + T_rel + mask) · v        per batch b and head h
//
//   flash_attn(q, k, v, bias?, relpos_table?, key_padding_mask?, cu_seqlens_q?, cu_seqlens_k?,
//              max_seqlen_q, max_seqlen_k, causal, scale, deterministic) -> (out, lse)
//   flash_attn_backward(dout, q, k, v, out, lse, <the same optional inputs and flags>,
//              output_mask[5]) -> (dq, dk, dv, dbias, drelpos_table)
//
// One kernel per dispatch key: CPU (kernels/cpu/flash_bias.h: float32, float64), CUDA
// (kernels/cuda/flash_bias.h: float16, bfloat16, float32; on the caller's current stream, the
// backward's workspace from PyTorch's caching allocator) and Autograd (flash_attn's backward is
// flash_attn_backward, itself an operator, so a compiled graph holds both). The shapes-only
// (Meta / fake) kernels that FakeTensor and torch.compile trace through are registered from
// Python (python/pairflash_torch/__init__.py), where they take symbolic sizes too. The problem
// and its conventions are those of kernels/flash_bias_params.h; framework/ops/attention.cpp is
// the other caller.
//
// Layouts (q, k, v any strides with unit stride on D; copied to contiguous otherwise):
// - dense: q (B,Nq,H,D), k and v (B,Nk,H,D); bias (B|1,H|1,Nq,Nk) with its own strides (a size-1
//   batch or head dim is shared, and dbias, of the bias's shape, gets the sum over it);
//   key_padding_mask (B,Nk) bool or uint8, nonzero = ignore the key; lse (B,H,Nq).
// - packed (cu_seqlens_q given, int32 (B+1) on q's device): q (Tq,H,D), k and v (Tk,H,D), bias
//   1-D of the blocks [H, nq_b, nk_b] one after the other; lse (H,Tq); max_seqlen_q/k bound the
//   sequence lengths (checked against them on the CPU; on the GPU that check would wait for the
//   device, so the caller's values are trusted).
// - relpos_table (H, 2R+1): q's dtype on the CPU, float32 on the GPU.
// - dtypes: the bias has q's dtype on the CPU; on the GPU float32, float16 or bfloat16 whatever
//   q's (an fp32 bias with bf16 inputs); lse is float64 for float64 inputs, float32 otherwise.
// - output_mask says which of dq, dk, dv, dbias, drelpos_table are wanted; the others come back
//   as empty tensors (size 0), which the autograd kernel turns into "no gradient".
#include <torch/torch.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "kernels/cpu/flash_bias.h"
#include "kernels/flash_bias_params.h"
#ifdef PF_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/flash_bias.h"
#endif

namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;
using pf::kernels::BNHDStrides;
using pf::kernels::FlashBiasBwdParams;
using pf::kernels::FlashBiasParams;
using pf::kernels::ScalarType;

// The optional inputs and flags both operators take, in schema order.
struct Extras {
  OptTensor bias, relpos_table, key_padding_mask, cu_seqlens_q, cu_seqlens_k;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  bool causal = false;
  double scale = 1.0;
  bool deterministic = false;
};

Tensor get(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

ScalarType scalar_type(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScalarType::F32;
    case at::kDouble: return ScalarType::F64;
    case at::kHalf: return ScalarType::F16;
    case at::kBFloat16: return ScalarType::BF16;
    default: break;
  }
  TORCH_CHECK(false, "pairflash.flash_attn: ", name,
              " must be float16, bfloat16, float32 or "
              "float64, got ",
              t.scalar_type());
  return ScalarType::F32;  // not reached
}

// Errors unless t lives on q's device with a dtype the device's kernels take: the inputs' own
// (q's) on the CPU; float32, or with `gpu_half` float16 and bfloat16 too, on the GPU.
void check_dtype_device(const Tensor& q, const Tensor& t, const char* name, bool gpu_half) {
  TORCH_CHECK(t.device() == q.device(), "pairflash.flash_attn: ", name, " must be on q's device ", q.device(),
              ", got ", t.device());
  const auto d = t.scalar_type();
  if (q.is_cuda()) {
    const bool ok = d == at::kFloat || (gpu_half && (d == at::kHalf || d == at::kBFloat16));
    TORCH_CHECK(ok, "pairflash.flash_attn: ", name, " on the GPU must be float32",
                gpu_half ? ", float16 or bfloat16" : "", ", got ", d);
  } else {
    TORCH_CHECK(d == q.scalar_type(), "pairflash.flash_attn: ", name, " on the CPU must have q's dtype ",
                q.scalar_type(), ", got ", d);
  }
}

// t itself when the kernels can read it in place (unit stride on D; on the GPU 16-byte aligned
// pointer and strides), else a contiguous copy.
Tensor kernel_layout(const Tensor& t) {
  bool ok = t.stride(-1) == 1 || t.size(-1) == 1;
  if (t.is_cuda()) {
    const int64_t align = 16 / t.element_size();
    ok = ok && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    for (int64_t d = 0; d + 1 < t.dim(); ++d) ok = ok && (t.size(d) == 1 || t.stride(d) % align == 0);
  }
  return ok ? t : t.contiguous();
}

// The (batch, row, head) strides of a (B,N,H,D) tensor, or of a packed (T,H,D) one.
BNHDStrides bnhd(const Tensor& t, bool packed) {
  if (packed) return BNHDStrides{0, t.stride(0), t.stride(1)};
  return BNHDStrides{t.stride(0), t.stride(1), t.stride(2)};
}

// A bias the kernels read with its own strides, as long as only its size-1 dims are shared
// (stride 0 on a larger dim, as expand() makes, would sum dbias over it): else a copy.
Tensor bias_layout(const Tensor& bias) {
  bool ok = bias.stride(-1) == 1;
  for (int64_t d = 0; d < bias.dim(); ++d) ok = ok && (bias.size(d) == 1 || bias.stride(d) != 0);
  return ok ? bias : bias.contiguous();
}

// The checked problem: sizes, inputs in kernel layout, and what they keep alive.
struct Problem {
  int B = 0, H = 0, Nq = 0, Nk = 0, D = 0;
  bool packed = false;
  Tensor q, k, v, bias, table, mask, cu_q, cu_k, bias_offsets;
  std::vector<int64_t> lse_shape;
};

// Packed batch: (B+1) int32 lengths on q's device; checked in full on the CPU.
void check_packed(Problem& p, const Tensor& q, const Tensor& k, const Extras& x) {
  const Tensor cu_q = *x.cu_seqlens_q;
  const Tensor cu_k = x.cu_seqlens_k.has_value() ? *x.cu_seqlens_k : cu_q;
  for (const auto& [t, name] : {std::pair{cu_q, "cu_seqlens_q"}, std::pair{cu_k, "cu_seqlens_k"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) >= 2 && t.scalar_type() == at::kInt, "pairflash.flash_attn: ", name,
                " must be int32 (B+1) with B >= 1, got ", t.scalar_type(), " ", t.sizes());
    TORCH_CHECK(t.device() == q.device(), "pairflash.flash_attn: ", name, " must be on q's device ",
                q.device(), ", got ", t.device());
  }
  TORCH_CHECK(cu_q.size(0) == cu_k.size(0),
              "pairflash.flash_attn: cu_seqlens_q and cu_seqlens_k "
              "must have the same length B+1, got ",
              cu_q.size(0), " and ", cu_k.size(0));
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && k.size(1) == q.size(1) && k.size(2) == q.size(2),
              "pairflash.flash_attn: packed q must be (Tq,H,D) and k, v (Tk,H,D), got q ", q.sizes(),
              " and k ", k.sizes());
  TORCH_CHECK(!x.key_padding_mask.has_value(),
              "pairflash.flash_attn: key_padding_mask is not "
              "supported with cu_seqlens (the lengths say which keys exist)");
  p.packed = true;
  p.B = static_cast<int>(cu_q.size(0) - 1);
  p.H = static_cast<int>(q.size(1));
  p.D = static_cast<int>(q.size(2));
  p.Nq = static_cast<int>(x.max_seqlen_q);
  p.Nk = static_cast<int>(x.max_seqlen_k);
  p.cu_q = cu_q.contiguous();
  p.cu_k = cu_k.contiguous();
  p.lse_shape = {p.H, q.size(0)};
  const Tensor nq = (p.cu_q.slice(0, 1) - p.cu_q.slice(0, 0, -1)).to(at::kLong);
  const Tensor nk = (p.cu_k.slice(0, 1) - p.cu_k.slice(0, 0, -1)).to(at::kLong);
  if (q.is_cpu()) {  // the lengths are host memory here: check them all
    const auto* cq = p.cu_q.data_ptr<int32_t>();
    const auto* ck = p.cu_k.data_ptr<int32_t>();
    TORCH_CHECK(cq[0] == 0 && ck[0] == 0, "pairflash.flash_attn: cu_seqlens must start at 0, got ", cq[0],
                " and ", ck[0]);
    for (int b = 0; b < p.B; ++b) {
      const int64_t lq = cq[b + 1] - cq[b], lk = ck[b + 1] - ck[b];
      TORCH_CHECK(lq >= 0 && lk >= 0 && lq <= x.max_seqlen_q && lk <= x.max_seqlen_k,
                  "pairflash.flash_attn: sequence ", b, " has ", lq, " queries and ", lk,
                  " keys; expected nonnegative lengths within max_seqlen_q=", x.max_seqlen_q,
                  " and max_seqlen_k=", x.max_seqlen_k);
    }
    TORCH_CHECK(cq[p.B] == q.size(0) && ck[p.B] == k.size(0),
                "pairflash.flash_attn: cu_seqlens "
                "end at Tq=",
                cq[p.B], " and Tk=", ck[p.B], ", got q ", q.sizes(), " and k ", k.sizes());
  }
  if (x.bias.has_value()) {
    // bias block b starts at Σ_{c<b} H·nq_c·nk_c: computed on the lengths' device.
    p.bias_offsets = at::cat({at::zeros({1}, nq.options()), at::cumsum(nq * nk * p.H, 0)});
    TORCH_CHECK(x.bias->dim() == 1,
                "pairflash.flash_attn: a packed bias must be 1-D (the blocks "
                "[H, nq_b, nk_b] one after the other), got ",
                x.bias->sizes());
    if (q.is_cpu()) {
      const int64_t want = p.bias_offsets[p.B].item<int64_t>();
      TORCH_CHECK(x.bias->size(0) == want, "pairflash.flash_attn: a packed bias must have ",
                  "Σ H·nq_b·nk_b = ", want, " elements, got ", x.bias->size(0));
    }
    p.bias = x.bias->contiguous();
  }
}

void check_dense(Problem& p, const Tensor& q, const Tensor& k, const Extras& x) {
  TORCH_CHECK(!x.cu_seqlens_k.has_value(),
              "pairflash.flash_attn: cu_seqlens_k given without "
              "cu_seqlens_q");
  TORCH_CHECK(q.dim() == 4, "pairflash.flash_attn: q must be (B,Nq,H,D), got ", q.sizes());
  TORCH_CHECK(k.dim() == 4 && k.size(0) == q.size(0) && k.size(2) == q.size(2) && k.size(3) == q.size(3),
              "pairflash.flash_attn: k must be (B,Nk,H,D) with q's B, H, D, got q ", q.sizes(), " and k ",
              k.sizes());
  p.B = static_cast<int>(q.size(0));
  p.Nq = static_cast<int>(q.size(1));
  p.H = static_cast<int>(q.size(2));
  p.D = static_cast<int>(q.size(3));
  p.Nk = static_cast<int>(k.size(1));
  TORCH_CHECK(p.B >= 1 && p.Nq >= 1 && p.Nk >= 1 && p.H >= 1 && p.D >= 1,
              "pairflash.flash_attn: every size must be >= 1, got q ", q.sizes(), " and k ", k.sizes());
  p.lse_shape = {p.B, p.H, p.Nq};
  if (x.bias.has_value()) {
    const Tensor& b = *x.bias;
    TORCH_CHECK(b.dim() == 4 && (b.size(0) == p.B || b.size(0) == 1) &&
                    (b.size(1) == p.H || b.size(1) == 1) && b.size(2) == p.Nq && b.size(3) == p.Nk,
                "pairflash.flash_attn: bias must be (B|1,H|1,Nq,Nk) = (", p.B, "|1,", p.H, "|1,", p.Nq, ",",
                p.Nk, "), got ", b.sizes());
    p.bias = bias_layout(b);
  }
  if (x.key_padding_mask.has_value()) {
    const Tensor& m = *x.key_padding_mask;
    TORCH_CHECK(m.dim() == 2 && m.size(0) == p.B && m.size(1) == p.Nk,
                "pairflash.flash_attn: key_padding_mask must be (B,Nk) = (", p.B, ",", p.Nk, "), got ",
                m.sizes());
    TORCH_CHECK(m.scalar_type() == at::kBool || m.scalar_type() == at::kByte,
                "pairflash.flash_attn: key_padding_mask must be bool or uint8, got ", m.scalar_type());
    TORCH_CHECK(m.device() == q.device(),
                "pairflash.flash_attn: key_padding_mask must be on q's "
                "device ",
                q.device(), ", got ", m.device());
    p.mask = m.to(at::kByte).contiguous();
  }
}

Problem check(const Tensor& q, const Tensor& k, const Tensor& v, const Extras& x) {
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "pairflash.flash_attn: q, k, v must share one dtype, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(),
              "pairflash.flash_attn: q, k, v must be on one device, got ", q.device(), ", ", k.device(), ", ",
              v.device());
  TORCH_CHECK(v.sizes() == k.sizes(), "pairflash.flash_attn: v must have k's shape ", k.sizes(), ", got ",
              v.sizes());
  if (q.is_cuda()) {
    scalar_type(q, "q");
  } else {
    TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                "pairflash.flash_attn: q, k, v on the CPU must be float32 or float64, got ", q.scalar_type());
  }
  Problem p;
  if (x.cu_seqlens_q.has_value())
    check_packed(p, q, k, x);
  else
    check_dense(p, q, k, x);
  if (p.bias.defined()) check_dtype_device(q, p.bias, "bias", true);
  if (x.relpos_table.has_value()) {
    const Tensor& t = *x.relpos_table;
    TORCH_CHECK(t.dim() == 2 && t.size(0) == p.H && t.size(1) % 2 == 1,
                "pairflash.flash_attn: relpos_table must be (H=", p.H,
                ", 2R+1) with an odd "
                "width, got ",
                t.sizes());
    check_dtype_device(q, t, "relpos_table", false);
    p.table = t.contiguous();
  }
  TORCH_CHECK(std::isfinite(x.scale) && x.scale >= 0,
              "pairflash.flash_attn: softmax_scale must "
              "be finite and >= 0, got ",
              x.scale);
  p.q = kernel_layout(q);
  p.k = kernel_layout(k);
  p.v = kernel_layout(v);
  return p;
}

Tensor empty_lse(const Problem& p, const Tensor& q) {
  return at::empty(p.lse_shape, q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
}

FlashBiasParams forward_params(const Problem& p, const Extras& x) {
  FlashBiasParams f;
  f.B = p.B;
  f.H = p.H;
  f.Nq = p.Nq;
  f.Nk = p.Nk;
  f.D = p.D;
  f.scale = x.scale;
  f.dtype = scalar_type(p.q, "q");
  f.q = p.q.data_ptr();
  f.q_stride = bnhd(p.q, p.packed);
  f.k = p.k.data_ptr();
  f.k_stride = bnhd(p.k, p.packed);
  f.v = p.v.data_ptr();
  f.v_stride = bnhd(p.v, p.packed);
  if (p.bias.defined()) {
    f.bias = p.bias.data_ptr();
    f.bias_dtype = scalar_type(p.bias, "bias");
    if (!p.packed) {
      f.bias_batch_stride = p.bias.size(0) == 1 ? 0 : p.bias.stride(0);
      f.bias_head_stride = p.bias.size(1) == 1 ? 0 : p.bias.stride(1);
      f.bias_row_stride = p.bias.stride(2);
    }
  }
  if (p.table.defined()) {
    f.relpos_table = p.table.data_ptr();
    f.relpos_dtype = scalar_type(p.table, "relpos_table");
    f.relpos_clip = static_cast<int>((p.table.size(1) - 1) / 2);
  }
  if (p.mask.defined()) f.key_padding_mask = p.mask.data_ptr<uint8_t>();
  if (p.packed) {
    f.cu_seqlens_q = p.cu_q.data_ptr<int32_t>();
    f.cu_seqlens_k = p.cu_k.data_ptr<int32_t>();
    if (p.bias_offsets.defined()) f.bias_seq_offsets = p.bias_offsets.data_ptr<int64_t>();
  }
  f.causal = x.causal;
  return f;
}

std::tuple<Tensor, Tensor> flash_attn_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Extras& x) {
  const Problem p = check(q, k, v, x);
  Tensor out = at::empty(q.sizes(), q.options());  // contiguous
  Tensor lse = empty_lse(p, q);
  FlashBiasParams f = forward_params(p, x);
  f.out = out.data_ptr();
  f.out_stride = bnhd(out, p.packed);
  f.lse = lse.data_ptr();
#ifdef PF_TORCH_CUDA
  if (q.is_cuda()) {
    const c10::cuda::CUDAGuard guard(q.device());
    pf::kernels::cuda::flash_bias_forward(f, c10::cuda::getCurrentCUDAStream());
    return {out, lse};
  }
#endif
  TORCH_CHECK(q.is_cpu(), "pairflash.flash_attn: this build has no kernel for ", q.device());
  pf::kernels::cpu::flash_bias_forward(f);
  return {out, lse};
}

// A gradient the kernels write (=): contiguous like x when wanted, else an empty tensor.
Tensor grad_buffer(bool wanted, const Tensor& x) {
  return wanted ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> flash_attn_bwd(const Tensor& dout, const Tensor& q,
                                                                  const Tensor& k, const Tensor& v,
                                                                  const Tensor& out, const Tensor& lse,
                                                                  const Extras& x, std::array<bool, 5> mask) {
  const Problem p = check(q, k, v, x);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes() && dout.scalar_type() == q.scalar_type(),
              "pairflash.flash_attn_backward: dout and out must be like q ", q.sizes(), " ", q.scalar_type(),
              ", got ", dout.sizes(), " ", dout.scalar_type(), " and ", out.sizes());
  const bool want_bias = mask[3] && p.bias.defined(), want_table = mask[4] && p.table.defined();
  Tensor dq = grad_buffer(mask[0], p.q), dk = grad_buffer(mask[1], p.k), dv = grad_buffer(mask[2], p.v);
  Tensor dbias = want_bias ? at::empty(p.bias.sizes(), p.bias.options()) : at::empty({0}, q.options());
  Tensor dtable = want_table ? at::empty(p.table.sizes(), p.table.options()) : at::empty({0}, q.options());
  const Tensor o = kernel_layout(out), d_o = kernel_layout(dout), l = lse.contiguous();

  FlashBiasBwdParams b;
  static_cast<FlashBiasParams&>(b) = forward_params(p, x);
  b.out = const_cast<void*>(o.data_ptr());
  b.out_stride = bnhd(o, p.packed);
  b.lse = const_cast<void*>(l.data_ptr());
  b.dout = d_o.data_ptr();
  b.dout_stride = bnhd(d_o, p.packed);
  if (mask[0]) b.dq = dq.data_ptr(), b.dq_stride = bnhd(dq, p.packed);
  if (mask[1]) b.dk = dk.data_ptr(), b.dk_stride = bnhd(dk, p.packed);
  if (mask[2]) b.dv = dv.data_ptr(), b.dv_stride = bnhd(dv, p.packed);
  if (want_bias) {  // dbias: contiguous, shared (size-1) dims as the bias's (packed: its offsets)
    b.dbias = dbias.data_ptr();
    if (!p.packed) {
      b.dbias_batch_stride = dbias.size(0) == 1 ? 0 : dbias.stride(0);
      b.dbias_head_stride = dbias.size(1) == 1 ? 0 : dbias.stride(1);
      b.dbias_row_stride = dbias.stride(2);
    }
  }
  if (want_table) b.drelpos_table = dtable.data_ptr();
  b.deterministic = x.deterministic;
#ifdef PF_TORCH_CUDA
  if (q.is_cuda()) {
    const c10::cuda::CUDAGuard guard(q.device());
    const Tensor ws =
        at::empty({static_cast<int64_t>(pf::kernels::cuda::flash_bias_backward_workspace_bytes(b))},
                  q.options().dtype(at::kByte));
    pf::kernels::cuda::flash_bias_backward(b, ws.data_ptr(), c10::cuda::getCurrentCUDAStream());
    return {dq, dk, dv, dbias, dtable};
  }
#endif
  TORCH_CHECK(q.is_cpu(), "pairflash.flash_attn: this build has no kernel for ", q.device());
  pf::kernels::cpu::flash_bias_backward(b);
  return {dq, dk, dv, dbias, dtable};
}

// ---- the operators' kernels: the schema's flat arguments → Extras ----------------------------

#define PF_EXTRAS_ARGS                                                                     \
  const OptTensor &bias, const OptTensor &relpos_table, const OptTensor &key_padding_mask, \
      const OptTensor &cu_seqlens_q, const OptTensor &cu_seqlens_k, int64_t max_seqlen_q,  \
      int64_t max_seqlen_k, bool causal, double scale, bool deterministic
#define PF_EXTRAS                                                                                         \
  Extras {                                                                                                \
    bias, relpos_table, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, \
        scale, deterministic                                                                              \
  }
#define PF_EXTRAS_PASS                                                                                  \
  bias, relpos_table, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, \
      scale, deterministic

std::tuple<Tensor, Tensor> flash_attn(const Tensor& q, const Tensor& k, const Tensor& v, PF_EXTRAS_ARGS) {
  return flash_attn_fwd(q, k, v, PF_EXTRAS);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> flash_attn_backward(const Tensor& dout, const Tensor& q,
                                                                       const Tensor& k, const Tensor& v,
                                                                       const Tensor& out, const Tensor& lse,
                                                                       PF_EXTRAS_ARGS,
                                                                       std::array<bool, 5> output_mask) {
  return flash_attn_bwd(dout, q, k, v, out, lse, PF_EXTRAS, output_mask);
}

// Autograd: forward below autograd, backward through flash_attn_backward.
class FlashAttnFunction : public torch::autograd::Function<FlashAttnFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& q,
                                                const Tensor& k, const Tensor& v, PF_EXTRAS_ARGS) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("pairflash::flash_attn", "")
                         .typed<decltype(flash_attn)>();
    auto [out, lse] = op.call(q, k, v, PF_EXTRAS_PASS);
    ctx->save_for_backward({q, k, v, out, lse, get(bias), get(relpos_table), get(key_padding_mask),
                            get(cu_seqlens_q), get(cu_seqlens_k)});
    ctx->saved_data["max_seqlen_q"] = max_seqlen_q;
    ctx->saved_data["max_seqlen_k"] = max_seqlen_k;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["deterministic"] = deterministic;
    // Which of q, k, v, bias, relpos_table want a gradient (the backward's output_mask).
    const Tensor wants[5] = {q, k, v, get(bias), get(relpos_table)};
    int64_t mask = 0;
    for (int i = 0; i < 5; ++i)
      if (wants[i].defined() && wants[i].requires_grad()) mask |= int64_t{1} << i;
    ctx->saved_data["output_mask"] = mask;
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto opt = [](const Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); };
    const int64_t bits = ctx->saved_data["output_mask"].toInt();
    std::array<bool, 5> mask{};
    for (int i = 0; i < 5; ++i) mask[i] = (bits >> i) & 1;
    torch::autograd::variable_list g(13);  // one per forward input; non-tensors get none
    if (!grads[0].defined()) return g;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("pairflash::flash_attn_backward", "")
                         .typed<decltype(flash_attn_backward)>();
    auto r = op.call(grads[0], s[0], s[1], s[2], s[3], s[4], opt(s[5]), opt(s[6]), opt(s[7]), opt(s[8]),
                     opt(s[9]), ctx->saved_data["max_seqlen_q"].toInt(),
                     ctx->saved_data["max_seqlen_k"].toInt(), ctx->saved_data["causal"].toBool(),
                     ctx->saved_data["scale"].toDouble(), ctx->saved_data["deterministic"].toBool(), mask);
    const std::array<Tensor, 5> d{std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r),
                                  std::get<4>(r)};
    for (int i = 0; i < 5; ++i)
      if (mask[i]) g[i] = d[i];
    return g;
  }
};

std::tuple<Tensor, Tensor> flash_attn_autograd(const Tensor& q, const Tensor& k, const Tensor& v,
                                               PF_EXTRAS_ARGS) {
  auto r = FlashAttnFunction::apply(q, k, v, PF_EXTRAS_PASS);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY(pairflash, m) {
  m.def(
      "flash_attn(Tensor q, Tensor k, Tensor v, Tensor? bias, Tensor? relpos_table, "
      "Tensor? key_padding_mask, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, "
      "int max_seqlen_k, bool causal, float scale, bool deterministic) -> (Tensor, Tensor)");
  m.def(
      "flash_attn_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor? bias, Tensor? relpos_table, Tensor? key_padding_mask, Tensor? cu_seqlens_q, "
      "Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, bool causal, float scale, "
      "bool deterministic, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pairflash, CPU, m) {
  m.impl("flash_attn", &flash_attn);
  m.impl("flash_attn_backward", &flash_attn_backward);
}

#ifdef PF_TORCH_CUDA
TORCH_LIBRARY_IMPL(pairflash, CUDA, m) {
  m.impl("flash_attn", &flash_attn);
  m.impl("flash_attn_backward", &flash_attn_backward);
}
#endif

TORCH_LIBRARY_IMPL(pairflash, Autograd, m) { m.impl("flash_attn", &flash_attn_autograd); }
