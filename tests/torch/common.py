"""What the CPU and GPU tests of the PyTorch op share."""
from pairflash_torch import flash_attn_w_bias
import torch


def rel_err(x, ref, zero_scale=0.0):
    """‖x − ref‖ / ‖ref‖ over the whole tensor, in float64. Where the exact gradient is zero (every
    row attends one key: the softmax is constant, dq, dk and dbias vanish) the computed one is the
    rounding residue of dP − Δ, whose terms have the size of dV = Pᵀ dO: with zero_scale (‖dV‖)
    given and ‖ref‖ < 1e-10 · zero_scale the error is measured against zero_scale instead, as in
    tests/test_flash_bias_cuda.cpp."""
    num, den = (x.double() - ref.double()).norm().item(), ref.double().norm().item()
    if zero_scale > 0 and den < 1e-10 * zero_scale:
        return num / zero_scale
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return num / den


def check_deterministic_backward(test, q, k, v, bias, table):
    """The deterministic backward (causal, bias and relpos table) twice: bitwise equal."""
    dout = torch.randn_like(q)

    def grads():
        out = flash_attn_w_bias(q, k, v, bias, True, relpos_table=table, deterministic=True)
        return torch.autograd.grad(out, (q, k, v, bias, table), dout)
    for a, b in zip(grads(), grads()):
        test.assertTrue(torch.equal(a, b))
