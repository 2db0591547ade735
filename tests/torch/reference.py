"""A plain PyTorch reference for flash-bias attention (tests and bench share it).

out = softmax(scale * q kᵀ + bias + T[h, clip(j - i, -R, R) + R] + masks) v, written with einsum
and softmax only, in whatever dtype it is given (float64 for the references of the tests): it
materialises the (B, H, Nq, Nk) scores, which is what the kernels avoid. A row whose keys are all
masked gives 0, as the kernels do. Packed batches are run sequence by sequence.
"""
import torch


def relpos_bias(table, nq, nk):
    """(H, 2R+1) -> (H, nq, nk): T[h, clip(j - i, -R, R) + R]."""
    r = (table.shape[1] - 1) // 2
    i = torch.arange(nq, device=table.device)[:, None]
    j = torch.arange(nk, device=table.device)[None, :]
    return table[:, (j - i).clamp(-r, r) + r]


def attention(q, k, v, bias=None, causal=False, scale=None, relpos_table=None,
              key_padding_mask=None):
    """q:(B,Nq,H,D) k,v:(B,Nk,H,D) bias broadcastable to (B,H,Nq,Nk) -> (B,Nq,H,D)."""
    nq, nk, d = q.shape[1], k.shape[1], q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if bias is not None:
        s = s + bias
    if relpos_table is not None:
        s = s + relpos_bias(relpos_table, nq, nk).to(s.dtype)
    allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
    if causal:  # bottom-right aligned
        allowed = torch.ones_like(allowed).tril(nk - nq)
    allowed = allowed.expand(q.shape[0], 1, nq, nk)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask.bool()[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # fully masked rows: 0
    return torch.einsum("bhij,bjhd->bihd", p, v)


def attention_packed(q, k, v, cu_q, cu_k, bias=None, causal=False, scale=None,
                     relpos_table=None):
    """q:(Tq,H,D) k,v:(Tk,H,D) bias: 1-D blocks [H, nq_b, nk_b] -> (Tq,H,D)."""
    h = q.shape[1]
    outs, off = [], 0
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        n = h * (q1 - q0) * (k1 - k0)
        bb = None if bias is None else bias[off:off + n].reshape(1, h, q1 - q0, k1 - k0)
        off += n
        if q1 == q0:
            continue
        if k1 == k0:  # no keys: every row is fully masked
            outs.append(torch.zeros_like(q[q0:q1]))
            continue
        outs.append(attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], bb, causal, scale,
                              relpos_table)[0])
    return torch.cat(outs) if outs else torch.zeros_like(q)
