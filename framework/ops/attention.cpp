// The flash-bias attention layer: out = softmax(scale·q·kᵀ + bias + mask)·v per batch and head.
//
// The op turns tensors into the plain problem description of kernels/flash_bias_params.h and
// runs the CPU kernels of kernels/cpu/flash_bias.h (they derive the backward: dS = P∘(dP − Δ),
// Δ = rowsum(dO∘O); dq = scale·dS·k, dk = scale·dSᵀ·q, dv = Pᵀ·dO, dbias = dS summed over the
// bias's broadcast dims). The forward saves the log-sum-exp per query row; the backward
// recomputes P from it tile by tile, so no (B,H,Nq,Nk) tensor exists at any point.
//
// A bias of shape (1,H,Nq,Nk), (B,1,Nq,Nk) or (1,1,Nq,Nk) is passed with a zero batch and/or
// head stride; dbias has the bias's own shape and receives the sum over the shared dims.
#include <cmath>

#include "framework/ops/common.h"
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
  int B = 0, H = 0, Nq = 0, Nk = 0, D = 0;
  int64_t bias_batch_stride = 0, bias_head_stride = 0, bias_row_stride = 0;
};

AttentionShape check_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& bias, const AttentionOptions& opt) {
  const char* op = "attention";
  check_float(q, op, "q");
  check_float(k, op, "k");
  check_float(v, op, "v");
  check_same(q, "q", k, "k", op);
  check_same(q, "q", v, "v", op);
  PF_CHECK(q.ndim() == 4, "attention: q must be (B,Nq,H,D), got " << q.str());
  PF_CHECK(k.ndim() == 4, "attention: k must be (B,Nk,H,D), got " << k.str());
  PF_CHECK(v.shape() == k.shape(),
           "attention: v must have k's shape " << shape_str(k.shape()) << ", got " << v.str());
  AttentionShape s;
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
    PF_CHECK(ok, "attention: bias must be (B|1,H|1,Nq,Nk) = (" << s.B << "|1," << s.H << "|1,"
                                                               << s.Nq << "," << s.Nk << "), got "
                                                               << bias.str());
    s.bias_row_stride = s.Nk;
    s.bias_head_stride = bias.size(1) == 1 ? 0 : int64_t{s.Nq} * s.Nk;
    s.bias_batch_stride = bias.size(0) == 1 ? 0 : bias.size(1) * s.Nq * s.Nk;
  }
  if (opt.key_padding_mask.defined()) {
    const Tensor& m = opt.key_padding_mask;
    PF_CHECK(m.dtype() == DType::U8, "attention: key_padding_mask must be uint8, got " << m.str());
    PF_CHECK(m.shape() == (Shape{s.B, s.Nk}), "attention: key_padding_mask must be (B,Nk) = ("
                                                  << s.B << "," << s.Nk << "), got " << m.str());
    PF_CHECK(m.device() == q.device(),
             "attention: key_padding_mask on " << m.str() << ", q on " << q.str());
  }
  PF_CHECK(opt.scale >= 0 && std::isfinite(opt.scale),
           "attention: scale must be finite and >= 0 (0 = 1/sqrt(D)), got " << opt.scale);
  return s;
}

// The forward problem over contiguous tensors (on either device).
kernels::FlashBiasParams forward_params(const AttentionShape& s, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor& bias, const Tensor& mask,
                                        bool causal, double scale) {
  kernels::FlashBiasParams p;
  p.B = s.B;
  p.H = s.H;
  p.Nq = s.Nq;
  p.Nk = s.Nk;
  p.D = s.D;
  p.scale = scale;
  p.dtype = scalar_type_of(q.dtype());
  p.q = q.data_ptr();
  p.q_stride = kernels::contiguous_bnhd(s.Nq, s.H, s.D);
  p.k = k.data_ptr();
  p.k_stride = kernels::contiguous_bnhd(s.Nk, s.H, s.D);
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
    Tensor ws = Tensor::empty(
        {static_cast<int64_t>(kernels::cuda::flash_bias_backward_workspace_bytes(bp))}, DType::U8,
        device);
    kernels::cuda::flash_bias_backward(bp, ws.data_ptr(),
                                       static_cast<cudaStream_t>(kernels::cuda::stream()));
    return;
  }
#endif
  (void)device;
  kernels::cpu::flash_bias_backward(bp);
}

}  // namespace

// q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) or undefined → (B,Nq,H,D)
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                 const AttentionOptions& opt) {
  const AttentionShape s = check_attention(q, k, v, bias, opt);
  const double scale = opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(s.D));
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  // The log-sum-exp per (b, h, query row), in the accumulator type: double for float64 inputs,
  // float otherwise (float32 on the CPU; float32, bfloat16 or float16 on the GPU).
  Tensor lse = Tensor::empty({s.B, s.H, s.Nq}, q.dtype() == DType::F64 ? DType::F64 : DType::F32,
                             q.device());
  kernels::FlashBiasParams p =
      forward_params(s, q, k, v, bias, opt.key_padding_mask, opt.causal, scale);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  launch_forward(p, q.device());

  const Tensor sq = q.detach(), sk = k.detach(), sv = v.detach(), so = out.detach();
  const Tensor sbias = bias.defined() ? bias.detach() : Tensor();
  const Tensor smask = opt.key_padding_mask.defined() ? opt.key_padding_mask.detach() : Tensor();
  const bool need_q = q.requires_grad(), need_k = k.requires_grad(), need_v = v.requires_grad();
  const bool need_bias = bias.defined() && bias.requires_grad();
  const bool causal = opt.causal, deterministic = opt.deterministic;
  return make_result(out, "attention", {q, k, v, bias},
                     [=](const Tensor& g) -> std::vector<Tensor> {
                       kernels::FlashBiasBwdParams bp;
                       static_cast<kernels::FlashBiasParams&>(bp) =
                           forward_params(s, sq, sk, sv, sbias, smask, causal, scale);
                       bp.out = const_cast<void*>(so.data_ptr());
                       bp.lse = const_cast<void*>(lse.data_ptr());
                       bp.dout = g.data_ptr();
                       bp.dout_stride = bp.q_stride;
                       Tensor dq, dk, dv, dbias;
                       if (need_q) dq = wanted_grad(sq, bp.dq, bp.dq_stride, bp.q_stride);
                       if (need_k) dk = wanted_grad(sk, bp.dk, bp.dk_stride, bp.k_stride);
                       if (need_v) dv = wanted_grad(sv, bp.dv, bp.dv_stride, bp.v_stride);
                       if (need_bias) {
                         dbias = Tensor::empty(sbias.shape(), sbias.dtype(), sbias.device());
                         bp.dbias = dbias.data_ptr();
                         bp.dbias_batch_stride = s.bias_batch_stride;
                         bp.dbias_head_stride = s.bias_head_stride;
                         bp.dbias_row_stride = s.bias_row_stride;
                       }
                       bp.deterministic = deterministic;
                       launch_backward(bp, g.device());
                       return {dq, dk, dv, dbias};
                     });
}

}  // namespace pf::ops
