"""CPU training speed: the C++ trainer against the PyTorch reference of the same model, in one run.

    /usr/bin/python3 bench/bench_train_cpu.py [--train-bin build/train] [--config configs/pairbias.yaml]
                                              [--threads 2] [--warmup 5] [--steps 30]

PyTorch side: the model of bench/torch_pairbias.py in float32, torch.set_num_threads(threads),
AdamW + global grad-norm clipping + the warmup/cosine lr schedule, on freely jointed chains
(batch and n_res of the config). A few untimed warm-up steps, then `steps` timed steps; the
median step time gives tokens/s = batch * n_res / median.

C++ side: `train CONFIG --device cpu --out TMP train.steps=n train.eval_every=n
train.log_every=10 train.warmup=min(warmup of the config, n)` with n = warmup + steps and
OMP_NUM_THREADS=threads; its last stdout line is the JSON summary, from which tokens_per_s is read.

Prints a table: implementation, tokens/s, step ms, ratio C++/PyTorch (of tokens/s), and ends
with one JSON line holding the same numbers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import torch  # noqa: E402

import torch_pairbias as tp  # noqa: E402

# Used when the config cannot be read (no file, or no yaml module): docs/DESIGN.md section 4 / 5 defaults.
FALLBACK_TRAIN = dict(batch_size=32, lr=3e-3, min_lr=3e-4, warmup=20, weight_decay=0.1,
                      grad_clip=1.0, seed=0)
FALLBACK_N_RES = 64


def read_config(path, args):
    """Returns (model cfg, train dict, n_res, source description)."""
    model, train, n_res, source = {}, dict(FALLBACK_TRAIN), FALLBACK_N_RES, "built-in defaults"
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is None:
        source = "built-in defaults (no yaml module: model keys from the command line)"
    elif not os.path.exists(path):
        source = f"built-in defaults ({path} not found)"
    else:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        model = dict(doc.get("model") or {})
        t = doc.get("train") or {}
        for k in FALLBACK_TRAIN:
            if k in t:
                train[k] = t[k]
        n_res = (doc.get("data") or {}).get("n_res", n_res)
        source = path
    for k in tp.DEFAULT_CONFIG:  # explicit command-line keys win
        v = getattr(args, k)
        if v is not None:
            model[k] = v
    if args.batch is not None:
        train["batch_size"] = args.batch
    if args.n_res is not None:
        n_res = args.n_res
    return tp.resolve_config(model), train, int(n_res), source


def load_average():
    """The 1-minute load average next to the core count: other work on a shared machine slows
    every step, so the numbers are only comparable when read with this."""
    try:
        return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def blas_description(threads):
    """Which BLAS the running PyTorch loaded (from /proc/self/maps) and its sgemm speed: on a
    machine where PyTorch links the reference (netlib) BLAS the comparison is not a fair one,
    and the table should say so."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                name = os.path.basename(path)
                if any(w in name for w in ("blas", "mkl", "blis")) and ".so" in name:
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 256), torch.randn(256, 256)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    gflops = 2 * 2048 * 256 * 256 * 20 / (time.perf_counter() - t0) / 1e9
    names = ", ".join(sorted(libs)) or "none found in /proc/self/maps"
    note = ""
    if any("/blas/libblas" in x or "netlib" in x for x in libs):
        note = "  <- the reference (netlib) BLAS: PyTorch's matmuls run unoptimised here"
    return f"BLAS {names}; sgemm 2048x256x256: {gflops:.1f} GFLOP/s{note}"


def bench_torch(cfg, train, n_res, threads, warmup, steps, seed=0):
    """Times float32 training steps of the PyTorch model. Returns (median s, all step times s)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    B = int(train["batch_size"])
    n_batches = 4
    tokens, coords, labels = tp.generate_chains(n_batches * B, n_res, cfg["n_types"], seed + 1)
    tokens, coords, labels = (torch.from_numpy(a) for a in (tokens, coords, labels))
    model = tp.PairBiasModel(cfg, dtype=torch.float32)
    opt = tp.make_adamw(model, float(train["lr"]), float(train["weight_decay"]))
    sched = dict(lr=float(train["lr"]), min_lr=float(train["min_lr"]),
                 warmup=min(int(train["warmup"]), warmup + steps), steps=warmup + steps)
    times = []
    for s in range(warmup + steps):
        sl = slice((s % n_batches) * B, (s % n_batches + 1) * B)
        t0 = time.perf_counter()
        loss, _ = tp.train_step(model, opt, tokens[sl], coords[sl], labels[sl], s, sched,
                                float(train["grad_clip"]))
        loss = loss.item()  # a use of the result: the step has finished
        dt = time.perf_counter() - t0
        if s >= warmup:
            times.append(dt)
    return statistics.median(times), times, loss


def run_cpp(binary, config, n_steps, threads, overrides, timeout):
    """Runs the C++ trainer; returns (parsed JSON summary or None, message)."""
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        return None, (f"C++ trainer not found at '{binary}' (expected an executable; build it "
                      f"with `cmake --build build --target train`, or pass --train-bin)")
    if not os.path.exists(config):
        return None, f"config '{config}' not found: the C++ trainer needs it"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="pf_bench_") as out:
        cmd = [binary, config, "--device", "cpu", "--out", out, f"train.steps={n_steps}",
               f"train.eval_every={n_steps}", "train.log_every=10"] + overrides
        print("running:", " ".join(cmd), flush=True)
        try:
            p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"C++ trainer did not finish within {timeout} s"
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-5:])
        how = (f"was killed by signal {-p.returncode}" if p.returncode < 0
               else f"exited with {p.returncode}")
        return None, f"C++ trainer {how}:\n{tail}"
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            js = json.loads(line)
        except ValueError:
            continue
        if isinstance(js, dict) and js.get("mode") == "train" and "tokens_per_s" in js:
            return js, "ok"
        break
    last = p.stdout.strip().splitlines()[-1:] or ["<empty>"]
    return None, (f"C++ trainer's last stdout line is not the expected JSON summary "
                  f"{{\"mode\": \"train\", ..., \"tokens_per_s\": ...}}; found: {last[0]!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-bin", default=os.path.join(REPO, "build", "train"))
    ap.add_argument("--config", default=os.path.join(REPO, "configs", "pairbias.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (at least 30)")
    ap.add_argument("--batch", type=int, default=None, help="override train.batch_size (both sides)")
    ap.add_argument("--n-res", type=int, default=None, help="override data.n_res (both sides)")
    ap.add_argument("--no-cpp", action="store_true", help="time the PyTorch model only")
    ap.add_argument("--cpp-timeout", type=int, default=1800)
    for k, v in tp.DEFAULT_CONFIG.items():
        ap.add_argument("--" + k.replace("_", "-"), dest=k, default=None,
                        type=float if k == "dist_max" else int,
                        help=f"model key {k} (PyTorch side; default: config, else {v})")
    args = ap.parse_args()
    args.train_bin = os.path.abspath(args.train_bin)  # the trainer runs from the repo root
    args.config = os.path.abspath(args.config)
    if args.steps < 30:
        ap.error(f"--steps: expected at least 30 timed steps, found {args.steps}")

    cfg, train, n_res, source = read_config(args.config, args)
    B = int(train["batch_size"])
    attn = ("scaled_dot_product_attention" if hasattr(torch.nn.functional,
            "scaled_dot_product_attention") else "explicit softmax")
    print(f"config: {source}")
    print(f"model: {cfg}")
    print(f"batch {B} x n_res {n_res}, threads {args.threads}, warm-up {args.warmup}, "
          f"timed {args.steps}; torch {torch.__version__} float32, attention {attn}", flush=True)
    print(f"PyTorch {blas_description(args.threads)}", flush=True)
    print(f"load average before: {load_average()}", flush=True)

    med, times, last_loss = bench_torch(cfg, train, n_res, args.threads, args.warmup, args.steps)
    torch_tps = B * n_res / med
    print(f"PyTorch: median {med * 1e3:.1f} ms/step (min {min(times) * 1e3:.1f}, "
          f"max {max(times) * 1e3:.1f}), last loss {last_loss:.4f}", flush=True)

    rows = [("PyTorch (float32)", torch_tps, med * 1e3, min(times) * 1e3)]
    cpp = None
    if args.no_cpp:
        print("C++: skipped (--no-cpp)")
    else:
        # the trainer refuses a warm-up longer than the run
        n = args.warmup + args.steps
        overrides = [f"train.warmup={min(int(train['warmup']), n)}"]
        if args.batch is not None:
            overrides.append(f"train.batch_size={args.batch}")
        if args.n_res is not None:
            overrides.append(f"data.n_res={args.n_res}")
        cpp, msg = run_cpp(args.train_bin, args.config, args.warmup + args.steps, args.threads,
                           overrides, args.cpp_timeout)
        if cpp is None:
            print(f"C++: not measured: {msg}")
        else:
            tps = float(cpp["tokens_per_s"])
            rows.append(("pairflash C++ (cpu)", tps, B * n_res / tps * 1e3, None))
    print(f"load average after: {load_average()}")

    # tokens/s and step ms from the median step (C++: from its own tokens_per_s); best ms is
    # the fastest timed step, the least disturbed by other work on the machine
    print()
    print(f"{'implementation':<22} {'tokens/s':>12} {'step ms':>10} {'best ms':>10} "
          f"{'C++/PyTorch':>12}")
    for name, tps, ms, best in rows:
        ratio = f"{tps / torch_tps:.2f}x" if name.startswith("pairflash") else "1.00x"
        best = f"{best:.1f}" if best is not None else "-"
        print(f"{name:<22} {tps:>12.0f} {ms:>10.1f} {best:>10} {ratio:>12}")
    summary = {"mode": "bench_train_cpu", "threads": args.threads, "batch": B, "n_res": n_res,
               "torch_tokens_per_s": round(torch_tps, 1), "torch_step_ms": round(med * 1e3, 3),
               "torch_best_step_ms": round(min(times) * 1e3, 3),
               "cpp_tokens_per_s": float(cpp["tokens_per_s"]) if cpp else None,
               "ratio_cpp_over_torch": (float(cpp["tokens_per_s"]) / torch_tps) if cpp else None}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
