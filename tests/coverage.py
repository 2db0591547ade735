#!/usr/bin/env python3
"""Line and branch coverage of the CPU code, per folder, from a build configured with
-DPF_COVERAGE=ON after its test suite ran (gcovr reads the .gcda files the tests left).

  python3 tests/coverage.py build-cov                # the table per folder
  python3 tests/coverage.py build-cov --uncovered    # and every uncovered line, file by file
  python3 tests/coverage.py build-cov --min-lines 90 # exit 1 if a folder's line coverage is lower

Branches: gcovr's, without the branches that only throw or that the compiler marks unreachable
(the exception-handling edges gcc adds to every call would otherwise count as branches never
taken). Folders: kernels/cpu, framework (with framework/ops), models, data, run; the tests, the
fuzz harnesses and the CUDA code are not counted (see tests/COVERAGE.md).
"""
import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("kernels/cpu", "framework", "models", "data", "run")
# Files whose code past its first checks runs only with GPUs and NCCL (a CPU build compiles it;
# test_distributed runs it on a GPU machine). The table shows each folder with and without them;
# --min-lines judges the CPU-reachable figure.
GPU_ONLY = {
    "run/launch.cpp": "one process per GPU for --gpus N: needs NCCL and that many GPUs",
    "framework/distributed.cpp": "the NCCL communicator and gradient all-reduce: needs NCCL and GPUs",
    "run/train_step_gpu.cpp": "the one-GPU training step, eager and replayed from a CUDA graph: needs a GPU",
}


def folder_of(rel):
    for f in FOLDERS:
        if rel.startswith(f + "/"):
            return f
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", help="the coverage build directory (its tests already run)")
    ap.add_argument("--uncovered", action="store_true", help="list the uncovered lines of each file")
    ap.add_argument("--min-lines", type=float, default=0, help="fail if a folder's line coverage is below this %%")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    build = Path(args.build).resolve()
    if not (build / "CMakeCache.txt").exists():
        sys.exit(f"coverage: {build} is not a build directory (no CMakeCache.txt)")
    cmd = ["gcovr", "--root", str(REPO), "--object-directory", str(build), "--json", "-", "-j", str(args.jobs),
           "--exclude-throw-branches", "--exclude-unreachable-branches"]
    cmd += [a for f in FOLDERS for a in ("--filter", str(REPO / f) + "/")]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        sys.exit("coverage: gcovr not found (Debian: apt-get install gcovr)")
    except subprocess.CalledProcessError as e:
        sys.exit(f"coverage: gcovr failed: {e.stderr.strip().splitlines()[-1] if e.stderr.strip() else e}")
    files = json.loads(out)["files"]
    if not files:
        sys.exit(f"coverage: no coverage data under {build}: configure with -DPF_COVERAGE=ON and run its tests first")

    per = defaultdict(lambda: [0, 0, 0, 0])  # lines hit, lines, branches taken, branches
    gpu = defaultdict(lambda: [0, 0])  # lines hit, lines of the GPU_ONLY files
    uncovered = {}
    for f in files:
        rel = os.path.relpath(os.path.join(REPO, f["file"]), REPO)
        folder = folder_of(rel)
        if folder is None:
            continue
        acc = per[folder]
        missed = []
        for line in f["lines"]:
            if line.get("gcovr/noncode"):
                continue
            acc[1] += 1
            if rel in GPU_ONLY:
                gpu[folder][1] += 1
                gpu[folder][0] += line["count"] > 0
            if line["count"] > 0:
                acc[0] += 1
            else:
                missed.append(line["line_number"])
            for b in line.get("branches", []):
                acc[3] += 1
                acc[2] += b["count"] > 0
        if missed:
            uncovered[rel] = missed

    print(f"{'folder':14s} {'lines':>17s} {'lines w/o GPU-only':>21s} {'branches':>17s}")
    low = []
    total = [0, 0, 0, 0, 0, 0]
    for folder in FOLDERS:
        lh, ln, bh, bn = per[folder]
        ch, cn = lh - gpu[folder][0], ln - gpu[folder][1]
        total = [a + b for a, b in zip(total, (lh, ln, ch, cn, bh, bn))]
        lp = 100.0 * lh / ln if ln else 100.0
        cp = 100.0 * ch / cn if cn else 100.0
        bp = 100.0 * bh / bn if bn else 100.0
        print(f"{folder:14s} {lp:6.1f}% {lh:4d}/{ln:<5d} {cp:10.1f}% {ch:4d}/{cn:<5d} {bp:6.1f}% {bh:4d}/{bn:<5d}")
        if cp < args.min_lines:
            low.append(f"{folder} {cp:.1f}%")
    lh, ln, ch, cn, bh, bn = total
    print(f"{'all':14s} {100.0 * lh / ln:6.1f}% {lh:4d}/{ln:<5d} {100.0 * ch / cn:10.1f}% {ch:4d}/{cn:<5d} "
          f"{100.0 * bh / max(bn, 1):6.1f}% {bh:4d}/{bn:<5d}")
    print("GPU-only: " + "; ".join(f"{k} ({v})" for k, v in GPU_ONLY.items()))
    if args.uncovered:
        for rel in sorted(uncovered):
            lines = uncovered[rel]
            spans, start = [], lines[0]
            for a, b in zip(lines, lines[1:] + [None]):
                if b != a + 1:
                    spans.append(f"{start}" if start == a else f"{start}-{a}")
                    start = b
            print(f"{rel}: {', '.join(spans)}")
    if low:
        print(f"coverage: line coverage below {args.min_lines:g}%: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
