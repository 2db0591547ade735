"""GPU training throughput: the C++ trainer (bench_train_gpu) against the same model in PyTorch.

One run, one machine: for each config, tokens/s and peak GPU memory of training steps (forward,
backward, clip_grad_norm, AdamW) after warm-up, for
  ours fp32, ours bf16 (bf16 activations, fp32 master weights),
  torch eager fp32, torch eager bf16 autocast + SDPA (pair bias as a float mask),
  torch.compile of the bf16 one,
printed as a table with ratios against torch.compile (or eager bf16 where compile is missing).

  python3 bench/bench_train_gpu.py --bin build/bench/bench_train_gpu [--steps 30 --warmup 5]
      [--unfused-too] [--profile] [--data fixed|sync|prefetch] [--no-torch]

--unfused-too adds our runs with every fused op unfused (ops::set_fused: the chains of ops they
replace) and with ops::pair_bias alone fused, same run; --profile prints each of our runs' time split per op
category (framework/profile.h); --data picks how our steps get their batches (bench_train_gpu.cpp).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

CONFIGS = {
    "large": (os.path.join(REPO, "configs", "pairbias_large.yaml"),
              dict(n_types=8, d_model=256, n_heads=8, n_layers=4, d_ff=1024, c_z=32,
                   relpos_clip=32, dist_bins=64, dist_max=16.0), 8, 512),
    "demo": (os.path.join(REPO, "configs", "pairbias.yaml"),
             dict(n_types=8, d_model=64, n_heads=4, n_layers=2, d_ff=256, c_z=16,
                  relpos_clip=32, dist_bins=64, dist_max=16.0), 32, 64),
}


def run_ours(binary, config, precision, warmup, steps, extra=()):
    out = subprocess.run([binary, config, f"warmup={warmup}", f"steps={steps}",
                          f"train.precision={precision}", *extra], capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    lines = out.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    if len(lines) > 1:  # the time split (--profile)
        res["split"] = "\n".join(lines[:-1])
    return res


def run_torch(model_cfg, B, N, mode, warmup, steps):
    import torch
    import torch_pairbias as tp
    torch.manual_seed(0)
    dev = torch.device("cuda")
    tokens, coords, labels = tp.generate_chains(4 * B, N, model_cfg["n_types"], seed=1234)
    tokens = torch.as_tensor(tokens).to(dev)
    coords = torch.as_tensor(coords).to(dev)
    labels = torch.as_tensor(labels).to(dev)
    model = tp.PairBiasModel(model_cfg, use_sdpa=(mode != "eager_fp32")).to(dev)
    opt = tp.make_adamw(model, 1e-3, 0.01)
    sched = dict(lr=1e-3, min_lr=1e-4, warmup=10, steps=1000)
    step_fn = tp.train_step
    if mode == "compile":
        model = torch.compile(model)
    amp = mode in ("eager_bf16_sdpa", "compile")

    def one(s):
        k = s % 4
        sl = slice(k * B, (k + 1) * B)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            return step_fn(model, opt, tokens[sl], coords[sl], labels[sl], s, sched, 1.0)

    for s in range(warmup):
        one(s)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for s in range(steps):
        loss, _ = one(s)
        loss.item()  # the C++ loop reads its loss each step too
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {"tokens_per_s": B * N * steps / sec, "ms_per_step": 1e3 * sec / steps,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bench", "bench_train_gpu"))
    ap.add_argument("--configs", default="large,demo")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-torch", action="store_true", help="our runs only")
    ap.add_argument("--unfused-too", action="store_true",
                    help="also our runs with the pair bias unfused (layernorm, linear, permute)")
    ap.add_argument("--profile", action="store_true", help="print our runs' time split")
    ap.add_argument("--data", default="fixed", choices=["fixed", "sync", "prefetch"])
    args = ap.parse_args()
    try:
        import torch
        torch_info = f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}"
    except Exception as e:  # noqa: BLE001
        torch = None
        torch_info = f"torch unavailable ({e})"
    print(f"# {torch_info}; {args.warmup} warm-up + {args.steps} timed steps")
    rows = []
    for name in args.configs.split(","):
        config, mcfg, B, N = CONFIGS[name]
        res = {}
        extra = [f"--data={args.data}"] + (["--profile"] if args.profile else [])
        for prec in ("fp32", "bf16"):
            if args.unfused_too:  # no fusion, then the pair bias fused alone
                res["ours " + prec + " unfused"] = run_ours(args.bin, config, prec, args.warmup,
                                                            args.steps, extra + ["--unfused"])
                res["ours " + prec + " +pair_bias"] = run_ours(
                    args.bin, config, prec, args.warmup, args.steps,
                    extra + ["--unfused=embedding_sum"])
            res["ours " + prec] = run_ours(args.bin, config, prec, args.warmup, args.steps, extra)
        if torch is not None and not args.no_torch:
            modes = ["eager_fp32", "eager_bf16_sdpa"] + ([] if args.no_compile else ["compile"])
            for mode in modes:
                try:
                    res["torch " + mode] = run_torch(mcfg, B, N, mode, args.warmup, args.steps)
                except Exception as e:  # noqa: BLE001
                    res["torch " + mode] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        ref = (res.get("torch compile") or res.get("torch eager_bf16_sdpa")
               or res.get("ours bf16 unfused") or {})
        for k, v in res.items():
            rows.append((name, k, v, ref))
    for name, k, v, _ in rows:
        if "split" in v:
            print(f"\n## {name} / {k}\n{v.pop('split')}")
    print()
    print(f"{'config':7} {'run':22} {'tok/s':>10} {'ms/step':>9} {'peak MiB':>9} {'vs ref':>7}")
    for name, k, v, ref in rows:
        if "error" in v:
            print(f"{name:7} {k:22} ERROR {v['error']}")
            continue
        ratio = v["tokens_per_s"] / ref["tokens_per_s"] if "tokens_per_s" in ref else float("nan")
        print(f"{name:7} {k:22} {v['tokens_per_s']:10.0f} {v['ms_per_step']:9.2f} "
              f"{v['peak_mib']:9.0f} {ratio:7.2f}")
    print(json.dumps({n + "/" + k: v for n, k, v, _ in rows}))


if __name__ == "__main__":
    main()
