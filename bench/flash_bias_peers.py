#!/usr/bin/env python3
"""PyTorch references for the flash-bias benchmark (bench/bench_flash_bias.cu runs this in the
same invocation and prints one table).

For each shape B,H,N,D,shared (fp16; the bias (B|1,H,N,N) requires grad like q, k, v), times the
forward and forward+backward (median, triton.testing.do_bench) of:
  sdpa   torch.nn.functional.scaled_dot_product_attention with the bias as a float attn_mask
  flex   torch.compile(flex_attention) with the bias captured in score_mod
  naive  softmax(scale * q k^T + bias) v in plain PyTorch ops
  triton, triton2, …  public Triton flash-attention-with-bias kernels, not part of pairflash: the
         files named by --triton-flash-bias or PF_TRITON_FLASH_BIAS (paths separated by ':'), each
         exposing flash_attn_w_bias, attention_with_bias or flash_attn_func(q, k, v, bias, causal,
         softmax_scale) on (B,N,H,D) tensors — e.g. flash_attn_w_bias.py of
         Flash-Attention-with-Bias-Triton (computes dB) and flash_attn/flash_attn_triton.py of
         flash-attention (its backward computes no dB: timed with a bias that does not require
         grad, so its forward+backward does less work than the others'). Each is checked against
         SDPA's output on stderr, and each runs every shape in a child process of its own: a peer
         that faults (an illegal address leaves the CUDA context unusable) costs only its own
         entries (nan), not the other implementations'.
and prints one line per (impl, shape):
  PEER impl B H N D shared fwd_ms fwdbwd_ms        (nan where the impl cannot run the shape)

With --relpos B,H,N,D,R: the fused relative-position bias, B[b,h,i,j] = T[h, clip(j-i,-R,R)+R] from
a learnable fp32 table T (H, 2R+1) (q, k, v fp16), forward and forward+backward (dq, dk, dv, dT):
  flex   flex_attention with the table lookup in score_mod (T requires grad: the backward computes dT)
  sdpa   the bias materialised from T by indexing (inside the timed region), cast to fp16, as SDPA's
         float attn_mask; its backward scatters dB into dT
printed as
  PEERREL impl B H N D R fwd_ms fwdbwd_ms
Diagnostics go to stderr.

    python3 bench/flash_bias_peers.py --shapes '2,4,4096,32,0;4,8,2048,64,1'
    python3 bench/flash_bias_peers.py --relpos '4,8,2048,64,2047'
"""
import argparse
import importlib.util
import math
import os
import subprocess
import sys
import traceback


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def qkv_dout(B, H, N, D, gen):
    """fp16 q, k, v (B,H,N,D) that require grad, and the output gradient dout."""
    import torch

    def draw(grad):
        t = torch.randn(B, H, N, D, device="cuda", dtype=torch.float16, generator=gen)
        return t.requires_grad_() if grad else t

    return draw(True), draw(True), draw(True), draw(False)


def load_triton_peer(name, path):
    """The attention function of the Triton module at `path` (its folder on sys.path, for a module
    that imports itself by name), or None."""
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        stem = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(stem, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[stem] = mod
        spec.loader.exec_module(mod)
        for attr in ("flash_attn_w_bias", "attention_with_bias", "flash_attn_func"):
            if hasattr(mod, attr):
                log(f"{name} peer: {path} ({attr})")
                return getattr(mod, attr)
        log(f"{name} peer: {path} has none of flash_attn_w_bias, attention_with_bias, flash_attn_func")
    except Exception as e:
        log(f"{name} peer unavailable ({path}): {type(e).__name__}: {e}")
    return None


def peer_bias(attn, q, k, v, bias, scale, dout):
    """A copy of bias for a Triton peer: requiring grad if the peer's backward computes dB."""
    b = bias.detach().clone().requires_grad_()
    try:
        attn(q, k, v, b, False, scale).backward(dout)
        ok = b.grad is not None
    except Exception:
        ok = False
    for t in (q, k, v):
        t.grad = None
    return b if ok else bias.detach()


def time_fwd_fwdbwd(bench, fn, dout, grads):
    """Median ms of fn() under no_grad, and of fn().backward(dout) (grads reset each run)."""
    import torch

    with torch.no_grad():
        t_f = bench(fn, None)
    return t_f, bench(lambda: fn().backward(dout), grads)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="", help="B,H,N,D,shared;...")
    ap.add_argument("--relpos", default="", help="B,H,N,D,R: the relative-position table mode")
    ap.add_argument("--impls", default="sdpa,flex,naive,triton")
    ap.add_argument("--triton-flash-bias", default=os.environ.get("PF_TRITON_FLASH_BIAS", ""),
                    help="paths (':'-separated) of Triton flash-attention-with-bias modules")
    ap.add_argument("--triton-child", default="", help=argparse.SUPPRESS)  # NAME=PATH: this process times one peer
    args = ap.parse_args()
    if args.shapes and args.triton_flash_bias and not args.triton_child:
        # the Triton peers in child processes (one per peer and shape), the PyTorch ones here
        for spec in filter(None, args.shapes.split(";")):
            for i, path in enumerate(filter(None, args.triton_flash_bias.split(":"))):
                if "triton" in args.impls:
                    run_triton_child("triton" if i == 0 else f"triton{i + 1}", path, spec)
        args.impls = ",".join(n for n in args.impls.split(",") if n != "triton")
        args.triton_flash_bias = ""

    import torch
    import torch.nn.functional as F
    from triton.testing import do_bench

    log(f"peers: torch {torch.__version__}, device {torch.cuda.get_device_name(0)}")
    try:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception as e:  # older PyTorch
        flex = None
        log(f"flex_attention unavailable: {e}")

    def bench(fn, grads):
        return do_bench(fn, warmup=25, rep=200, grad_to_none=grads, return_mode="median")

    tritons = {}  # impl name -> the module's attention function (None: could not be loaded)
    if args.triton_child:
        name, path = args.triton_child.split("=", 1)
        tritons[name] = load_triton_peer(name, path)
        args.impls = "triton"

    if args.relpos:
        relpos(args.relpos, flex, bench)
    for spec in filter(None, args.shapes.split(";")):
        B, H, N, D, shared = (int(x) for x in spec.split(","))
        scale = 1.0 / math.sqrt(D)
        dev, dt = "cuda", torch.float16
        gen = torch.Generator(device=dev).manual_seed(0)
        q, k, v, dout = qkv_dout(B, H, N, D, gen)
        bias = torch.randn(1 if shared else B, H, N, N, device=dev, dtype=dt, generator=gen).requires_grad_()
        grads = [q, k, v, bias]

        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

        def score_mod(score, b, h, qi, ki):
            return score + bias[0 if shared else b, h, qi, ki]

        def flex_fn():
            return flex(q, k, v, score_mod=score_mod, scale=scale)

        def naive():
            s = torch.matmul(q, k.transpose(-1, -2)) * scale + bias
            return torch.matmul(torch.softmax(s, dim=-1), v)

        impls = {"sdpa": sdpa, "flex": flex_fn if flex is not None else None, "naive": naive}
        inputs = {}  # impl -> (dout, the tensors whose gradients are reset) where not the common ones
        # the Triton peers' layout: (B,N,H,D) copies, made outside the timed region; the bias
        # requires grad where the peer's backward computes dB
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
        dout_t = dout.transpose(1, 2).contiguous()
        for name, attn in tritons.items():
            if attn is None:
                impls[name] = None
                continue
            bias_t = peer_bias(attn, qt, kt, vt, bias, scale, dout_t)
            impls[name] = (lambda a, b: lambda: a(qt, kt, vt, b, False, scale))(attn, bias_t)
            inputs[name] = (dout_t, [qt, kt, vt] + ([bias_t] if bias_t.requires_grad else []))
            try:
                with torch.no_grad():  # the same attention as SDPA's (fp16 rounding apart)?
                    err = (impls[name]().transpose(1, 2).float() - sdpa().float()).abs().max().item()
                log(f"  {name} {spec}: max |out - sdpa out| = {err:.2e}; dB {'computed' if bias_t.requires_grad else 'not computed'}")
            except Exception as e:
                log(f"{name} cannot run {spec}: {type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
                impls[name] = None
        names = [n for n in args.impls.split(",") if n != "triton"] + (list(tritons) if "triton" in args.impls else [])
        for name in names:
            fn = impls.get(name)
            impl_dout, impl_grads = inputs.get(name, (dout, grads))
            t_f = t_fb = float("nan")
            if fn is not None:
                try:
                    t_f, t_fb = time_fwd_fwdbwd(bench, fn, impl_dout, impl_grads)
                except Exception as e:
                    log(f"{name} failed at {spec}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    traceback.print_exc(limit=1, file=sys.stderr)
                torch.cuda.empty_cache()
            print(f"PEER {name} {B} {H} {N} {D} {shared} {t_f:.4f} {t_fb:.4f}", flush=True)
            log(f"  {name:6s} {spec}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms")


def run_triton_child(name, path, spec):
    """Times Triton peer `name` (the module at `path`) on one shape in a child process and passes on
    its PEER line; nan where the child did not print one (it failed, or faulted the GPU)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--shapes", spec, "--triton-child", f"{name}={path}"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith(f"PEER {name} ")]
    for l in r.stderr.splitlines():
        if not l.startswith("peers: torch"):
            log(l)
    if lines:
        print(lines[-1], flush=True)
        return
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    log(f"{name} failed at {spec} in its child process (exit {r.returncode}): {tail}")
    B, H, N, D, shared = spec.split(",")
    print(f"PEER {name} {B} {H} {N} {D} {shared} nan nan", flush=True)


def relpos(spec, flex, bench):
    import torch
    import torch.nn.functional as F

    B, H, N, D, R = (int(x) for x in spec.split(","))
    scale = 1.0 / math.sqrt(D)
    dev, dt = "cuda", torch.float16
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v, dout = qkv_dout(B, H, N, D, gen)
    table = torch.randn(H, 2 * R + 1, device=dev, dtype=torch.float32, generator=gen).requires_grad_()
    pos = torch.arange(N, device=dev)
    idx = (pos[None, :] - pos[:, None]).clamp(-R, R) + R  # (N, N): clip(j - i) + R
    grads = [q, k, v, table]

    def score_mod(score, b, h, qi, ki):
        return score + table[h, torch.clamp(ki - qi, -R, R) + R]

    # Inductor's default FlexAttention tiles for this score_mod asked for more shared memory than an
    # H100 has (245760 > 232448 bytes, torch 2.11): the first options that compile are used.
    flex_options = [None, {"num_stages": 2}, {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2}]

    def flex_fn(opts):
        return lambda: flex(q, k, v, score_mod=score_mod, scale=scale, kernel_options=opts)

    def sdpa():
        bias = table[:, idx].to(dt).unsqueeze(0)  # (1, H, N, N), shared over the batch
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    runs = [("flex", flex_fn(o), o) for o in flex_options] if flex is not None else [("flex", None, None)]
    runs.append(("sdpa", sdpa, None))
    done = set()
    for name, fn, opts in runs:
        if name in done:
            continue
        t_f = t_fb = float("nan")
        if fn is not None:
            try:
                t_f, t_fb = time_fwd_fwdbwd(bench, fn, dout, grads)
                if table.grad is None:
                    log(f"{name}: the table received no gradient")
                if opts:
                    log(f"{name}: kernel_options {opts}")
            except Exception as e:
                log(f"{name} relpos failed at {spec} (kernel_options {opts}): {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}")
                torch.cuda.empty_cache()
                if name == "flex" and opts is not flex_options[-1]:
                    continue  # the next options
            torch.cuda.empty_cache()
        done.add(name)
        print(f"PEERREL {name} {B} {H} {N} {D} {R} {t_f:.4f} {t_fb:.4f}", flush=True)
        log(f"  {name:6s} relpos {spec}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms")


if __name__ == "__main__":
    main()
