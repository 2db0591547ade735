"""What the CPU and GPU tests of the PyTorch op share."""
from pairflash_torch import flash_attn_w_bias
import torch


def rel_err(x, ref):
    """‖x − ref‖ / ‖ref‖ over the whole tensor, in float64."""
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def check_deterministic_backward(test, q, k, v, bias, table):
    """The deterministic backward (causal, bias and relpos table) twice: bitwise equal."""
    dout = torch.randn_like(q)

    def grads():
        out = flash_attn_w_bias(q, k, v, bias, True, relpos_table=table, deterministic=True)
        return torch.autograd.grad(out, (q, k, v, bias, table), dout)
    for a, b in zip(grads(), grads()):
        test.assertTrue(torch.equal(a, b))
