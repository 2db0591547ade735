"""GPU training throughput: the C++ trainer (bench_train_gpu) against the same model in PyTorch.

One run, one machine: for each config, tokens/s and peak GPU memory of training steps (forward,
backward, clip_grad_norm, AdamW) after warm-up, for
  ours fp32, ours bf16 (bf16 activations, fp32 master weights),
  the PyTorch reference of bench/torch_reference.py in each of its variants (eager, compile,
  compile max-autotune, compile with CUDA graphs) in bf16 (autocast, SDPA taking the bias) and
  fp32 (TF32), each compiled variant with its graph-break count,
printed as a table with ratios against the fastest PyTorch variant of the same precision
(bf16 for ours bf16, fp32 for ours fp32), and the step's bytes floor (bytes_floor) ÷ the measured
copy bandwidth next to each achieved time.

  python3 bench/bench_train_gpu.py --bin build/bench/bench_train_gpu [--steps 30 --warmup 5]
      [--configs large,af,demo,relpos] [--variants eager,compile,compile-cudagraphs,compile-max-autotune]
      [--torch-precisions bf16,fp32] [--unfused-too] [--profile]
      [--data fixed|sync|prefetch] [--graph] [--no-torch]

--unfused-too adds our runs with every fused op unfused (ops::set_fused: the chains of ops they
replace) and with ops::pair_bias alone fused, same run; --profile prints each of our runs' time split per op
category (framework/profile.h); --data picks how our steps get their batches (bench_train_gpu.cpp);
--graph adds, per precision, the training loop's step timed eagerly and replayed from a CUDA graph
(bench_train_gpu --graph=compare: the row is the replay, eager_ms_per_step the eager step).
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
    "af": (os.path.join(REPO, "configs", "pairbias_af.yaml"),
           dict(n_types=8, d_model=256, n_heads=8, n_layers=8, d_ff=1024, c_z=128,
                relpos_clip=32, dist_bins=64, dist_max=16.0), 8, 384),
    "demo": (os.path.join(REPO, "configs", "pairbias.yaml"),
             dict(n_types=8, d_model=64, n_heads=4, n_layers=2, d_ff=256, c_z=16,
                  relpos_clip=32, dist_bins=64, dist_max=16.0), 32, 64),
    # the bias is a learned table inside the attention kernel: no pair tensors, ours only
    # (bench/torch_pairbias.py is the pair-bias model)
    "relpos": (os.path.join(REPO, "configs", "relpos.yaml"),
               dict(n_types=8, d_model=64, n_heads=4, n_layers=2, d_ff=256, c_z=16,
                    relpos_clip=8, dist_bins=64, dist_max=16.0, attn_bias="relpos"), 32, 64),
}
# configs/pairbias_varlen.yaml packs chains of varied lengths; bench_train_gpu times fixed (B, N)
# batches, so it is not among these.
COPY_BW_FALLBACK = 2986e9  # H100 SXM, read + write (kernels/cuda/NOTES.md), when torch is absent


def n_params(m):
    d, f, c, H, K, L = (m["d_model"], m["d_ff"], m["c_z"], m["n_heads"], m["n_types"],
                        m["n_layers"])
    if m.get("attn_bias", "pair") == "relpos":  # per layer a (H, 2R+1) table, no pair tensors
        layer = H * (2 * m["relpos_clip"] + 1) + 4 * d + 4 * (d * d + d) + (f * d + f) + (d * f + d)
        return K * d + L * layer + 2 * d + K * d + K
    layer = 2 * c + H * c + 4 * d + 4 * (d * d + d) + (f * d + f) + (d * f + d)
    return K * d + (2 * m["relpos_clip"] + 1) * c + m["dist_bins"] * c + L * layer + 2 * d + K * d + K


def bytes_floor(m, B, N, precision):
    """Bytes a training step must move with the model's structure, each tensor once per use:
      pair: the indices (int32 bins and relative positions) read in the forward and the
        backward; z = Dist[bin] + Rel[rel] written once, read by each layer's pair bias in the
        forward and again in its backward; dz written once (the layers' sums fused) and read
        once by the tables' backward;
      biases: each layer's (B,H,N,N) bias written and read once, its gradient written and read once;
      token activations: per layer ~(20·d + 5·d_ff) values per token in the forward (inputs and
        outputs of LN, q/k/v/o, attention, residuals, MLP), twice that in the backward;
      parameters: AdamW reads w, g, m, v and writes w, m, v (fp32), the norm reads g, bf16
        weight copies read w and write a half: ~38 bytes each in bf16, 32 in fp32.
    Activations in bf16 (2 bytes) or fp32 (4)."""
    s = 2 if precision == "bf16" else 4
    P, T, L = B * N * N, B * N, m["n_layers"]
    c, H, d, f = m["c_z"], m["n_heads"], m["d_model"], m["d_ff"]
    pair = 2 * 2 * P * 4 + P * c * s * (1 + 2 * L) + 2 * P * c * s
    biases = 4 * L * P * H * s
    if m.get("attn_bias", "pair") == "relpos":  # the bias never leaves the attention kernel
        pair = biases = 0
    acts = 3 * L * T * (20 * d + 5 * f) * s
    params = n_params(m) * (38 if precision == "bf16" else 32)
    return pair + biases + acts + params


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


def run_torch(model_cfg, B, N, precision, variant, warmup, steps):
    import torch_reference as tr
    # the graph-break check once per config and precision (the variants compile one model)
    return tr.run(model_cfg, B, N, precision, variant, warmup, steps,
                  explain=variant == "compile")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bench", "bench_train_gpu"))
    ap.add_argument("--configs", default="large,af,demo,relpos")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--variants", default="eager,compile,compile-cudagraphs",
                    help="PyTorch variants (bench/torch_reference.py VARIANTS; "
                         "compile-max-autotune takes minutes to compile, so it is asked for)")
    ap.add_argument("--torch-precisions", default="bf16,fp32")
    ap.add_argument("--ours-precisions", default="fp32,bf16")
    ap.add_argument("--no-torch", action="store_true", help="our runs only")
    ap.add_argument("--unfused-too", action="store_true",
                    help="also our runs with the pair bias unfused (layernorm, linear, permute)")
    ap.add_argument("--profile", action="store_true", help="print our runs' time split")
    ap.add_argument("--data", default="fixed", choices=["fixed", "sync", "prefetch"])
    ap.add_argument("--graph", action="store_true",
                    help="also the training step eager vs replayed from a CUDA graph")
    args = ap.parse_args()
    try:
        import torch
        import torch_reference as tr
        torch_info = f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}"
        bw = tr.copy_bandwidth()
    except Exception as e:  # noqa: BLE001
        torch = None
        torch_info = f"torch unavailable ({e})"
        bw = COPY_BW_FALLBACK
    print(f"# {torch_info}; {args.warmup} warm-up + {args.steps} timed steps; copy bandwidth "
          f"{bw / 1e9:.0f} GB/s (read + write{'' if torch else ', not measured'})")
    rows = []
    for name in args.configs.split(","):
        config, mcfg, B, N = CONFIGS[name]
        res = {}
        extra = [f"--data={args.data}"] + (["--profile"] if args.profile else [])
        for prec in args.ours_precisions.split(","):
            if args.unfused_too:  # no fusion, then the pair bias fused alone
                res["ours " + prec + " unfused"] = run_ours(args.bin, config, prec, args.warmup,
                                                            args.steps, extra + ["--unfused"])
                res["ours " + prec + " +pair_bias"] = run_ours(
                    args.bin, config, prec, args.warmup, args.steps,
                    extra + ["--unfused=embedding_sum"])
            res["ours " + prec] = run_ours(args.bin, config, prec, args.warmup, args.steps, extra)
            if args.graph:
                r = run_ours(args.bin, config, prec, args.warmup, args.steps, ["--graph=compare"])
                res["ours " + prec + " graph"] = r
                if "eager_ms_per_step" in r:
                    print(f"# {name} {prec}: train step eager {r['eager_ms_per_step']:.3f} ms, "
                          f"graph replay {r['graph_ms_per_step']:.3f} ms")
        best = {}  # precision -> (run name, result) of the fastest PyTorch variant
        if torch is not None and not args.no_torch and mcfg.get("attn_bias", "pair") == "pair":
            for prec in args.torch_precisions.split(","):
                for variant in args.variants.split(","):
                    key = f"torch {prec} {variant}"
                    try:
                        r = run_torch(mcfg, B, N, prec, variant, args.warmup, args.steps)
                    except Exception as e:  # noqa: BLE001
                        r = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                    res[key] = r
                    torch._dynamo.reset()
                    torch.cuda.empty_cache()
                    if "tokens_per_s" in r and r["tokens_per_s"] > best.get(prec, ("", {"tokens_per_s": 0}))[1]["tokens_per_s"]:
                        best[prec] = (key, r)
        config_rows = []
        for k, v in res.items():
            prec = "bf16" if "bf16" in k else "fp32"
            ref_name, ref = best.get(prec, ("", {}))
            config_rows.append((name, k, v, ref_name, ref, bytes_floor(mcfg, B, N, prec) / bw * 1e3))
        print_table(config_rows)  # per config, so that a run cut short keeps what it measured
        rows += config_rows
    print(json.dumps({n + "/" + k: v for n, k, v, *_ in rows}))


def print_table(rows):
    for name, k, v, *_ in rows:
        if "split" in v:
            print(f"\n## {name} / {k}\n{v.pop('split')}")
    print()
    print("vs ref: our tokens/s over the fastest PyTorch variant of the same precision (marked *);"
          " floor: bytes_floor ÷ copy bandwidth; breaks: graph breaks under torch._dynamo.explain")
    print(f"{'config':7} {'run':34} {'tok/s':>10} {'ms/step':>9} {'floor ms':>9} {'x floor':>8} "
          f"{'peak MiB':>9} {'vs ref':>7} {'breaks':>6}")
    for name, k, v, ref_name, ref, floor_ms in rows:
        if "error" in v:
            print(f"{name:7} {k:34} ERROR {v['error']}")
            continue
        ratio = v["tokens_per_s"] / ref["tokens_per_s"] if "tokens_per_s" in ref else float("nan")
        mark = "*" if k == ref_name else " "
        print(f"{name:7} {k + mark:34} {v['tokens_per_s']:10.0f} {v['ms_per_step']:9.2f} "
              f"{floor_ms:9.3f} {v['ms_per_step'] / floor_ms:8.1f} {v['peak_mib']:9.0f} "
              f"{ratio:7.2f} {str(v.get('graph_breaks', '')):>6}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
