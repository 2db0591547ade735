"""Data-parallel scaling of `train --gpus N` (framework/distributed.h) on one host.

For N in 1, 2, 4, 8 (those that fit the GPUs visible), trains the config for a few hundred
tokens' worth of steps with a fixed batch per GPU (weak scaling: the global batch grows with N,
as data-parallel training is used), and prints tokens/s, the speed-up over one GPU and the
scaling efficiency (tokens/s at N) / (N · tokens/s at 1). The plain single-process path (no NCCL)
is measured too, so the cost of the data-parallel machinery on one GPU shows as well.

  python3 bench/bench_data_parallel.py --bin build/train [--config configs/pairbias_large.yaml]
      [--per-gpu-batch 8 --steps 60] [--precision bf16]

tokens/s is what the trainer reports: steps after the first (warm-up) are timed, from batch
assembly to the optimizer update, excluding evaluation and checkpoints.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def gpu_count():
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=60)
        return len([l for l in out.stdout.splitlines() if l.startswith("GPU ")])
    except (OSError, subprocess.SubprocessError):
        return 0


def run(binary, config, gpus, batch, steps, precision, out_dir):
    cmd = [binary, config, f"out={out_dir}", f"train.batch_size={batch}", f"train.steps={steps}",
           f"train.warmup=5", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
           f"train.log_every={steps}", f"train.precision={precision}", "device=cuda"]
    if gpus is not None:
        cmd += ["--gpus", str(gpus)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        return {"error": (p.stderr.strip() or p.stdout.strip())[-400:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/train")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       "configs", "pairbias_large.yaml"))
    ap.add_argument("--per-gpu-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--max-gpus", type=int, default=8)
    a = ap.parse_args()
    visible = gpu_count()
    counts = [n for n in (1, 2, 4, 8) if n <= min(visible, a.max_gpus)]
    print(f"GPUs visible: {visible}; config {os.path.basename(a.config)}, {a.per_gpu_batch} sequences per GPU, "
          f"{a.steps} steps, {a.precision}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(a.bin, a.config, None, a.per_gpu_batch, a.steps, a.precision, os.path.join(tmp, "plain"))
        rows.append(("1 (plain, no NCCL)", plain))
        for n in counts:
            rows.append((str(n), run(a.bin, a.config, n, a.per_gpu_batch * n, a.steps, a.precision,
                                     os.path.join(tmp, f"gpus{n}"))))
    base = next((r.get("tokens_per_s") for name, r in rows if name == "1"), None)
    print(f"{'GPUs':>20} {'tokens/s':>12} {'speed-up':>9} {'efficiency':>10} {'val_acc':>8}")
    for name, r in rows:
        if "error" in r:
            print(f"{name:>20}  error: {r['error']}")
            continue
        tps = r["tokens_per_s"]
        n = int(name.split()[0])
        speed = tps / base if base else float("nan")
        print(f"{name:>20} {tps:12.0f} {speed:9.2f} {speed / n:10.1%} {r['val_acc']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
