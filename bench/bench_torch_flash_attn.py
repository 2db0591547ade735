#!/usr/bin/env python3
"""pairflash_torch.flash_attn_w_bias against SDPA, FlexAttention and a plain reference, in one
process on one GPU: what switching gives a PyTorch user.

For each shape B,H,N,D,shared (fp16 q, k, v; a bias (B|1,H,N,N) that requires grad like them),
times the forward and forward+backward (median, triton.testing.do_bench, through
bench/flash_bias_peers.py's time_fwd_fwdbwd) of
  pairflash  flash_attn_w_bias, q/k/v (B,N,H,D) and an fp16 bias
  sdpa       scaled_dot_product_attention with the bias as a float attn_mask, q/k/v (B,H,N,D)
  flex       torch.compile(flex_attention) with the bias read in score_mod
  naive      softmax(scale q kᵀ + bias) v in plain PyTorch ops
and the output's error ‖out − ref‖/‖ref‖ against a float64 computation of the same inputs.
One line per (impl, shape), then the ratios to pairflash:

    PYTHONPATH=build/python python3 bench/bench_torch_flash_attn.py --shapes '2,4,1024,32,0;4,8,2048,64,1'
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flash_bias_peers import time_fwd_fwdbwd  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="2,4,1024,32,0;2,4,1024,32,1;4,8,2048,64,0;1,8,4096,64,1",
                    help="B,H,N,D,shared;...")
    args = ap.parse_args()
    from triton.testing import do_bench

    from pairflash_torch import flash_attn_w_bias
    try:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception as e:  # older PyTorch
        flex = None
        print(f"flex_attention unavailable: {e}", file=sys.stderr)

    def bench(fn, grads):
        return do_bench(fn, warmup=25, rep=200, grad_to_none=grads, return_mode="median")

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}; fp16, times in ms")
    print(f"{'impl':10s} {'B':>2s} {'H':>2s} {'N':>5s} {'D':>4s} {'shared':>6s} "
          f"{'fwd':>8s} {'fwd+bwd':>8s} {'out err':>9s}  {'fwd/ours':>8s} {'f+b/ours':>8s}")
    for spec in filter(None, args.shapes.split(";")):
        B, H, N, D, shared = (int(x) for x in spec.split(","))
        scale = 1.0 / math.sqrt(D)
        gen = torch.Generator(device="cuda").manual_seed(0)
        draw = lambda *s: torch.randn(*s, device="cuda", dtype=torch.float16, generator=gen)
        q, k, v = (draw(B, N, H, D).requires_grad_() for _ in range(3))
        bias = draw(1 if shared else B, H, N, N).requires_grad_()
        dout = draw(B, N, H, D)
        # SDPA, flex and naive take (B,H,N,D): their own contiguous copies, outside the timing
        qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        doutt = dout.transpose(1, 2).contiguous()
        with torch.no_grad():
            s = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * scale + bias.double()
            ref = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v.double())
        del s

        def score_mod(score, b, h, qi, ki):
            return score + bias[0 if shared else b, h, qi, ki]

        def naive():
            s = torch.matmul(qt, kt.transpose(-1, -2)) * scale + bias
            return torch.matmul(torch.softmax(s, dim=-1), vt)

        impls = [
            ("pairflash", lambda: flash_attn_w_bias(q, k, v, bias), dout, [q, k, v, bias], False),
            ("sdpa", lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, scale=scale),
             doutt, [qt, kt, vt, bias], True),
            ("flex", (lambda: flex(qt, kt, vt, score_mod=score_mod, scale=scale)) if flex else None,
             doutt, [qt, kt, vt, bias], True),
            ("naive", naive, doutt, [qt, kt, vt, bias], True),
        ]
        ours = None
        for name, fn, g, grads, bhnd in impls:
            t_f = t_fb = err = float("nan")
            if fn is not None:
                try:
                    with torch.no_grad():
                        out = fn()
                    out = out.transpose(1, 2) if bhnd else out
                    err = ((out.double() - ref).norm() / ref.norm()).item()
                    t_f, t_fb = time_fwd_fwdbwd(bench, fn, g, grads)
                except Exception as e:  # out of memory, unsupported shape: reported, not fatal
                    print(f"{name} failed at {spec}: {type(e).__name__}: {str(e)[:200]}",
                          file=sys.stderr)
                torch.cuda.empty_cache()
            ours = ours or (t_f, t_fb)
            print(f"{name:10s} {B:2d} {H:2d} {N:5d} {D:4d} {shared:6d} {t_f:8.3f} {t_fb:8.3f} "
                  f"{err:9.2e}  {t_f / ours[0]:8.2f} {t_fb / ours[1]:8.2f}", flush=True)


if __name__ == "__main__":
    main()
