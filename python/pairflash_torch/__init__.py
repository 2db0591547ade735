"""pairflash's flash-bias attention for PyTorch.

    from pairflash_torch import flash_attn_w_bias
    out = flash_attn_w_bias(q, k, v, bias, causal=False, softmax_scale=None)

out = softmax(softmax_scale * q kᵀ + bias [+ relative-position bias] [+ masks]) v per batch and
head, with the call of the public Triton flash-attention-with-bias function: q (B, Nq, H, D),
k and v (B, Nk, H, D), bias (B|1, H|1, Nq, Nk) or None (a 2-D or 3-D bias is read as (1, 1, Nq,
Nk) or (1, H, Nq, Nk)); any Nq, Nk; the gradient of the bias has the bias's own shape, summed over
the dims it shares. Keywords add what pairflash has on top:

- relpos_table (H, 2R+1): scores get + T[h, clip(j - i, -R, R) + R], computed inside the kernel,
  with its gradient reduced there too (no (Nq, Nk) tensor in memory).
- cu_seqlens_q / cu_seqlens_k: int32 (B+1) on q's device, packed variable-length sequences in
  FlashAttention's varlen layout: q (Tq, H, D), k and v (Tk, H, D), the bias 1-D with the blocks
  [H, nq_b, nk_b] one after the other. max_seqlen_q / max_seqlen_k bound the lengths; left out,
  they are read from cu_seqlens (which waits for the GPU).
- key_padding_mask (B, Nk) bool or uint8: True/nonzero keys are ignored (nn.MultiheadAttention's
  convention, the opposite of SDPA's boolean attn_mask).
- deterministic: a backward whose results are bitwise identical run to run (the CPU's always is).
- dtypes: CPU float32 / float64 (bias and table of q's dtype); CUDA float16 / bfloat16 / float32
  inputs with a float32, float16 or bfloat16 bias (an fp32 bias with bf16 inputs is fine) and a
  float32 relpos table. Causal masking is bottom-right aligned (FlashAttention 2) when Nq != Nk.

The work is done by the operators torch.ops.pairflash.flash_attn and flash_attn_backward (CPU and
CUDA kernels on the current stream, an Autograd kernel, and the shapes-only kernels below for
FakeTensor tracing), so torch.compile keeps the call in its graph.
"""
import math
import os

import torch

torch.ops.load_library(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ops.so"))

__all__ = ["flash_attn_w_bias"]


# ---- shapes-only kernels: what FakeTensor / torch.compile / meta tensors see -----------------
# (in Python, so symbolic sizes pass through; the operators' real kernels are in C++)

def flash_attn_fake(q, k, v, bias, relpos_table, key_padding_mask, cu_seqlens_q, cu_seqlens_k,
                    max_seqlen_q, max_seqlen_k, causal, scale, deterministic):
    """-> out like q; lse (B,H,Nq), packed (H,Tq); float64 for float64 inputs, else float32."""
    lse_shape = (q.shape[1], q.shape[0]) if cu_seqlens_q is not None else \
        (q.shape[0], q.shape[2], q.shape[1])
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=lse_dtype)


def flash_attn_backward_fake(dout, q, k, v, out, lse, bias, relpos_table, key_padding_mask,
                             cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
                             deterministic, output_mask):
    """-> dq, dk, dv, dbias, drelpos_table like their inputs; an empty tensor where not wanted."""
    def grad(wanted, x):
        return x.new_empty(x.shape) if wanted and x is not None else q.new_empty((0,))
    return tuple(grad(w, x) for w, x in zip(output_mask, (q, k, v, bias, relpos_table)))


if hasattr(torch.library, "register_fake"):  # PyTorch >= 2.4
    torch.library.register_fake("pairflash::flash_attn")(flash_attn_fake)
    torch.library.register_fake("pairflash::flash_attn_backward")(flash_attn_backward_fake)
else:  # older: as Meta kernels
    _meta = torch.library.Library("pairflash", "IMPL", "Meta")
    _meta.impl("flash_attn", flash_attn_fake)
    _meta.impl("flash_attn_backward", flash_attn_backward_fake)


def _max_len(cu_seqlens):
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0


def flash_attn_w_bias(q, k, v, bias=None, causal=False, softmax_scale=None, *,
                      relpos_table=None, key_padding_mask=None, cu_seqlens_q=None,
                      cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
                      deterministic=False):
    """q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias:(B|1,H|1,Nq,Nk) -> (B,Nq,H,D); packed: (Tq,H,D)."""
    if bias is not None and cu_seqlens_q is None and 2 <= bias.dim() < 4:
        bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
    if cu_seqlens_q is not None:
        if cu_seqlens_k is None:
            cu_seqlens_k = cu_seqlens_q
        if max_seqlen_q is None:
            max_seqlen_q = _max_len(cu_seqlens_q)
        if max_seqlen_k is None:
            max_seqlen_k = _max_len(cu_seqlens_k)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out, _ = torch.ops.pairflash.flash_attn(
        q, k, v, bias, relpos_table, key_padding_mask, cu_seqlens_q, cu_seqlens_k,
        max_seqlen_q or 0, max_seqlen_k or 0, causal, float(scale), deterministic)
    return out
