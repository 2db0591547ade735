"""The strongest PyTorch training step of the pair-bias model we know how to write, for the GPU
benchmark (bench/bench_train_gpu.py): the reference our trainer is measured against.

The model is bench/torch_pairbias.py's (same layers, parameters, loss), with what an expert
would do for speed on a GPU:
  - the pair features come in precomputed (distance bins and relative-position indices, int32),
    as bench_train_gpu's fixed batches give them to our trainer: the step does not recompute
    float64 distances;
  - bf16: autocast, the pair representation z written once in bf16 (not kept in fp32), and
    F.scaled_dot_product_attention taking the pair bias as its float mask; fp32: TF32 matmuls;
  - fused AdamW (one kernel for all parameters), clip_grad_norm_ with foreach;
  - the whole model (forward and, through AOTAutograd, backward) under torch.compile, checked
    for graph breaks with torch._dynamo.explain.
Variants (VARIANTS): eager, compile (default Inductor), compile with max-autotune (no CUDA
graphs), compile with CUDA graphs (mode reduce-overhead). bench_train_gpu.py times each and uses
the fastest as the reference.
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_pairbias as tp

VARIANTS = {
    "eager": None,
    "compile": dict(),
    "compile-max-autotune": dict(mode="max-autotune-no-cudagraphs"),
    "compile-cudagraphs": dict(mode="reduce-overhead"),
}


class PrecomputedPairModel(nn.Module):
    """tp.PairBiasModel with z built from precomputed indices and the loss inside (so that
    torch.compile sees it too): tokens (B,N) int, bins (B,N,N) int, rel (N,N) int, labels (B,N)
    int -> the mean cross-entropy."""

    def __init__(self, cfg, z_dtype=None):
        super().__init__()
        self.m = tp.PairBiasModel(cfg, use_sdpa=True)
        self.z_dtype = z_dtype  # bf16 runs: z stored once in bf16

    def forward(self, tokens, bins, rel, labels):
        m = self.m
        x = m.embed(tokens)
        z = m.pair.rel(rel)[None] + m.pair.dist(bins)  # (B,N,N,c_z)
        if self.z_dtype is not None:
            z = z.to(self.z_dtype)
        for layer in m.layers:
            x = layer(x, z, True)
        logits = m.head(m.final_norm(x))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def make_fused_adamw(model, lr, weight_decay):
    """The reference recipe's groups (tp.is_decayed), one fused kernel."""
    named = list(model.m.named_parameters())
    decay = [p for n, p in named if tp.is_decayed(n)]
    no_decay = [p for n, p in named if not tp.is_decayed(n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


def make_batches(cfg, B, N, n_batches, device, seed=1234):
    """n_batches fixed batches (tokens, bins, rel, labels) on the device, int32/int64 indices."""
    tokens, coords, labels = tp.generate_chains(n_batches * B, N, cfg["n_types"], seed=seed)
    tokens = torch.as_tensor(tokens).long()
    coords = torch.as_tensor(coords)
    labels = torch.as_tensor(labels).long()
    rel = tp.relpos_index(N, cfg["relpos_clip"]).to(device)
    out = []
    for k in range(n_batches):
        sl = slice(k * B, (k + 1) * B)
        bins = tp.distance_bins(coords[sl], cfg["dist_max"], cfg["dist_bins"])
        out.append((tokens[sl].to(device), bins.to(device), rel, labels[sl].to(device)))
    return out


def run(cfg, B, N, precision, variant, warmup, steps, explain=True):
    """Times `steps` training steps after `warmup`; returns tokens/s, ms/step, peak MiB and, for
    compiled variants, the graph-break count of the model under torch._dynamo.explain."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = precision == "fp32"
    torch.backends.cudnn.allow_tf32 = precision == "fp32"
    cfg = tp.resolve_config(cfg)
    amp = precision == "bf16"
    model = PrecomputedPairModel(cfg, torch.bfloat16 if amp else None).to(dev)
    opt = make_fused_adamw(model, 1e-3, 0.01)
    sched = dict(lr=1e-3, min_lr=1e-4, warmup=10, steps=1000)
    batches = make_batches(cfg, B, N, 4, dev)
    res = {}
    fwd = model
    if VARIANTS[variant] is not None:
        if explain:
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    ex = torch._dynamo.explain(model)(*batches[0])
                res["graph_breaks"] = ex.graph_break_count
                res["graphs"] = ex.graph_count
                res["break_reasons"] = [str(b.reason)[:200] for b in ex.break_reasons]
            except Exception as e:  # noqa: BLE001 (the timing still runs)
                res["graph_breaks"] = f"explain failed: {type(e).__name__}: {str(e)[:200]}"
            torch._dynamo.reset()
            model.zero_grad(set_to_none=True)
        fwd = torch.compile(model, **VARIANTS[variant])
    cudagraphs = variant == "compile-cudagraphs"

    def one(s):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = fwd(*batches[s % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        lr = tp.lr_at(s, sched["lr"], sched["min_lr"], sched["warmup"], sched["steps"])
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        return loss.item()  # read each step, as our trainer does

    # the peak over warm-up and timed steps: a CUDA graph's private pool is allocated while it is
    # captured (warm-up) and only replayed afterwards, so a peak taken over the timed steps alone
    # misses it
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for s in range(warmup):
        one(s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = 0.0
    for s in range(steps):
        loss = one(warmup + s)
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    res.update(tokens_per_s=B * N * steps / sec, ms_per_step=1e3 * sec / steps,
               peak_mib=torch.cuda.max_memory_allocated() / 2**20, loss=loss)
    return res


def copy_bandwidth(nbytes=1 << 30, reps=20):
    """Device-to-device copy bandwidth in bytes/s (read + write), median of reps copies."""
    x = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        y.copy_(x)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return 2 * nbytes / times[len(times) // 2]
