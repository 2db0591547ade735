#!/usr/bin/env python3
"""Planted-bug check: apply each mutant of tests/mutants/ to a scratch copy of the tree, rebuild
(CPU only, incremental, ccache), run the CPU test suite and say whether some test failed (killed)
or none did (survived). Prints one line per mutant and the score; exits non-zero when a mutant
survives, when a mutant no longer applies (its original text is not found exactly once) or does
not compile, or when the unmutated suite itself fails.

Usage (from anywhere):
  python3 tests/mutants/run.py                  # every CPU mutant
  python3 tests/mutants/run.py ce_no_max_shift eval_per_chain_mean   # these (names or paths)
  python3 tests/mutants/run.py --list           # the mutants and the bug each models
  python3 tests/mutants/run.py --check-applies  # only check that every mutant (GPU ones too)
                                                # still applies to the tree: no build, no test
Options: --scratch DIR (default build-mutants/ in the repository: kept between runs, so the
second run rebuilds only what a mutant touches), --build-dir NAME (the build folder inside the
scratch copy, default build), --cmake-args "..." (extra configure arguments), --jobs N,
--timeout S (per test; a test that runs past it counts as a kill), --gpu (the GPU mutants too:
needs a CUDA build and a GPU), --no-baseline (skip the unmutated suite run, e.g. right after CI
ran it on the same tree), --in-place (mutate the repository itself and build in its
--build-dir, which must be configured already: for CI on a throw-away clone, reusing its build;
every file is restored after each mutant), --pack DIR (build each chosen mutant's `tests:`
suites in the scratch copy and keep the programs in DIR/<mutant>/, no test run: for a GPU
machine whose time should go to running, not compiling; with --gpu), --prebuilt DIR (run the
programs --pack kept, each suite alone: killed when one fails; a mutant they all pass counts
as survived by its named suites only, without the full suite's verdict; GoogleTest programs,
stopped at their first failure; a mutant's `sanitizer:` line (memcheck, racecheck, …) runs them
under compute-sanitizer, its `filter:` line passes a --gtest_filter).

Each mutant is first tried against the suites its `tests:` line names (built and run alone,
stopping at the first failure); only if they all pass is the whole tree built and the whole
suite run, so a survivor is always judged by the full suite. The file format is in README.md.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KEYS = ("file", "bug", "tests", "gpu", "check", "equivalent", "sanitizer", "filter")


class MutantError(Exception):
    pass


def parse(path):
    """A mutant file: `key: value` header lines (# comments allowed), then the blocks
    `@@ original`, `@@ replacement`, closed by `@@ end`."""
    m = {"name": path.stem, "path": path, "tests": "", "gpu": "no"}
    block, lines = None, {"original": [], "replacement": []}
    for n, line in enumerate(path.read_text().split("\n"), 1):
        if line.startswith("@@ "):
            tag = line[3:].strip()
            if tag not in ("original", "replacement", "end"):
                raise MutantError(f"{path}:{n}: expected '@@ original', '@@ replacement' or '@@ end', found '{line}'")
            block = None if tag == "end" else tag
            continue
        if block:
            lines[block].append(line)
        elif line.strip() and not line.startswith("#"):
            key, sep, value = line.partition(":")
            if not sep or key.strip() not in KEYS:
                raise MutantError(f"{path}:{n}: expected a header line '<{'|'.join(KEYS)}>: ...', found '{line}'")
            m[key.strip()] = value.strip()
    for key in ("file", "bug"):
        if not m.get(key):
            raise MutantError(f"{path}: the header line '{key}:' is missing")
    if not lines["original"]:
        raise MutantError(f"{path}: the '@@ original' block is missing or empty")
    m["original"] = "\n".join(lines["original"])
    m["replacement"] = "\n".join(lines["replacement"])
    if m["original"] == m["replacement"]:
        raise MutantError(f"{path}: the replacement equals the original")
    m["gpu"] = m["gpu"].lower() in ("yes", "true", "1")
    m["tests"] = m["tests"].split()
    return m


def load_all():
    return [parse(p) for p in sorted(HERE.glob("*.mutant"))]


def mutate(text, m):
    """The text with the mutant applied; the original must occur exactly once."""
    count = text.count(m["original"])
    if count != 1:
        raise MutantError(f"mutant {m['name']}: its original text occurs {count} times in {m['file']} "
                          f"(expected exactly once): the code moved or changed, update {m['path'].name}")
    return text.replace(m["original"], m["replacement"])


def check_applies(mutants, root):
    """Checks that each mutant applies to the tree at root (its target exists and holds its
    original text exactly once); returns {target file: its text}."""
    originals = {}
    for m in mutants:
        f = root / m["file"]
        if not f.is_file():
            raise MutantError(f"mutant {m['name']}: its target {m['file']} does not exist")
        originals[m["file"]] = f.read_text()
        mutate(originals[m["file"]], m)
    return originals


def sh(cmd, cwd, timeout=None, log=None):
    """Runs cmd; returns (exit code, seconds). Output goes to log (a file) or is discarded."""
    t0 = time.time()
    out = open(log, "a") if log else subprocess.DEVNULL
    try:
        rc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    finally:
        if log:
            out.close()
    return rc, time.time() - t0


def failed_tests(log, offset):
    """The names of the tests ctest listed as failed in the log after byte offset."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return re.findall(r"^\s+\d+ - (\S+).*\((?:Failed|Timeout|SEGFAULT|Subprocess aborted|Exception|Child aborted)", text, re.M)


def sync_tree(src, dst):
    """Copies the repository's files (tracked and untracked, not ignored) to dst; a file whose
    bytes are unchanged is left alone, so its mtime stays and the build stays incremental."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=src, check=True,
                           capture_output=True).stdout.decode().split("\0")
    keep = set(filter(None, files))
    # A file the repository no longer has (deleted, moved) leaves the copy too; build folders stay.
    for b in [p for p in dst.rglob("*") if p.is_file() or p.is_symlink()]:
        rel = b.relative_to(dst)
        if rel.parts[0].startswith("build") or str(rel) in keep:
            continue
        b.unlink()
    for rel in keep:
        a, b = src / rel, dst / rel
        if not a.is_file():
            continue
        data = a.read_bytes()
        if b.is_file() and b.read_bytes() == data:
            continue
        b.parent.mkdir(parents=True, exist_ok=True)
        b.write_bytes(data)
        shutil.copymode(a, b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mutants", nargs="*", help="names (file stems) or paths; default: all CPU mutants")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check-applies", action="store_true")
    ap.add_argument("--scratch", default=str(REPO / "build-mutants"))
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--cmake-args", default="")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--in-place", action="store_true")
    ap.add_argument("--pack", metavar="DIR")
    ap.add_argument("--prebuilt", metavar="DIR")
    args = ap.parse_args()

    try:
        everything = load_all()
    except MutantError as e:
        sys.exit(f"mutants: {e}")
    if args.list:
        for m in everything:
            kind = "GPU" if m["gpu"] else "CPU"
            print(f"{m['name']:32s} {kind}  {m['file']}: {m['bug']}")
        return 0
    if args.mutants:
        by_name = {m["name"]: m for m in everything}
        chosen = []
        for a in args.mutants:
            name = Path(a).stem
            if name not in by_name:
                sys.exit(f"mutants: no mutant named '{name}' in {HERE} (--list shows them)")
            chosen.append(by_name[name])
    else:
        chosen = [m for m in everything if args.gpu or args.check_applies or not m["gpu"]]
    if args.prebuilt:
        return run_prebuilt(Path(args.prebuilt).resolve(), chosen if args.mutants else None, args.timeout)
    if args.check_applies:  # against the repository itself; the GPU mutants too
        try:
            check_applies(chosen, REPO)
        except MutantError as e:
            sys.exit(f"mutants: {e}")
        print(f"mutants: all {len(chosen)} apply to {REPO}")
        return 0

    scratch = Path(args.scratch).resolve()
    src = REPO if args.in_place else scratch / "src"
    build = src / args.build_dir
    log = scratch / "log.txt"
    scratch.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    if args.in_place:
        if not (build / "CMakeCache.txt").exists():
            sys.exit(f"mutants: --in-place needs a configured build in {build}, found none")
    else:
        src.mkdir(parents=True, exist_ok=True)
        sync_tree(REPO, src)
    # Every mutant must apply to the tree as it is now, before any build time is spent.
    try:
        originals = check_applies(chosen, src)
    except MutantError as e:
        sys.exit(f"mutants: {e}")

    env_cc = os.environ.setdefault("CCACHE_BASEDIR", str(REPO))
    cuda = "ON" if args.gpu else "OFF"
    if not (build / "CMakeCache.txt").exists():
        cfg = ["cmake", "-S", ".", "-B", args.build_dir, "-DCMAKE_BUILD_TYPE=Release", f"-DPF_CUDA={cuda}",
               "-DPF_BENCH=OFF", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache", "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
        cfg += args.cmake_args.split()
        if sh(cfg, src, log=log)[0]:
            sys.exit(f"mutants: configuring {build} failed (see {log})")
    build_all = ["cmake", "--build", args.build_dir, f"-j{args.jobs}"]
    ctest = ["ctest", "--test-dir", args.build_dir, f"-j{args.jobs}", "--timeout", str(args.timeout)]
    print(f"mutants: {'the repository itself' if args.in_place else 'scratch tree'} {src} (CCACHE_BASEDIR={env_cc}), log {log}", flush=True)
    if args.pack:  # only the named suites, each built with its mutant
        return pack(chosen, originals, src, args, Path(args.pack).resolve(), log)
    rc, t = sh(build_all, src, log=log)
    if rc:
        sys.exit(f"mutants: the unmutated tree does not build (see {log})")
    if not args.no_baseline:
        rc, t2 = sh(ctest, src, log=log)
        if rc:
            sys.exit(f"mutants: the unmutated suite fails (see {log}): fix that first")
        print(f"mutants: unmutated build {t:.0f} s, suite passes in {t2:.0f} s", flush=True)

    results = []
    for m in chosen:
        f = src / m["file"]
        t0 = time.time()
        with open(log, "a") as lf:
            lf.write(f"\n==== mutant {m['name']} ({m['file']})\n")
        offset = log.stat().st_size
        f.write_text(mutate(originals[m["file"]], m))
        try:
            verdict, by = None, ""
            hint = [t for t in m["tests"] if t]
            if hint:  # the named suites first, stopping at the first failure
                rc, _ = sh(build_all + ["--target"] + hint, src, log=log)
                if rc:
                    verdict = "no-build"
                else:
                    labels = "|".join(f"^{t}$" for t in hint)
                    rc, _ = sh(ctest + ["-L", labels, "--stop-on-failure"], src, log=log)
                    if rc:
                        verdict, by = "killed", " ".join(hint)
            if verdict is None:  # the whole suite
                rc, _ = sh(build_all, src, log=log)
                if rc:
                    verdict = "no-build"
                else:
                    rc, _ = sh(ctest, src, log=log)
                    verdict, by = ("killed", "full suite") if rc else ("survived", "")
        finally:
            f.write_text(originals[m["file"]])
        dt = time.time() - t0
        if verdict == "killed":
            names = failed_tests(log, offset)
            by += ": " + (" ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "") if names else "?")
        results.append((m, verdict, by, dt))
        note = f" (documented equivalent: {m['equivalent']})" if verdict == "survived" and m.get("equivalent") else ""
        print(f"{verdict:9s} {m['name']:32s} {dt:6.0f} s  {by}{note}", flush=True)

    killed = sum(v == "killed" for _, v, _, _ in results)
    equivalent = sum(v == "survived" and bool(m.get("equivalent")) for m, v, _, _ in results)
    bad = [m["name"] for m, v, _, _ in results if v == "no-build" or (v == "survived" and not m.get("equivalent"))]
    scored = len(results) - equivalent
    print(f"mutants: {killed} killed of {scored} ({100.0 * killed / max(scored, 1):.0f}%)"
          + (f", {equivalent} documented equivalent" if equivalent else "")
          + (f"; FAILING: {' '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def pack(chosen, originals, src, args, out, log):
    """--pack: each mutant's named suites built with the mutant in place, kept in out/<name>/."""
    bad = []
    for m in chosen:
        hint = [t for t in m["tests"] if t]
        if not hint:
            sys.exit(f"mutants: --pack needs a 'tests:' line, {m['name']} has none")
        f = src / m["file"]
        f.write_text(mutate(originals[m["file"]], m))
        try:
            rc, dt = sh(["cmake", "--build", args.build_dir, f"-j{args.jobs}", "--target"] + hint, src, log=log)
        finally:
            f.write_text(originals[m["file"]])
        if rc:
            bad.append(m["name"])
            print(f"no-build  {m['name']:32s} {dt:6.0f} s", flush=True)
            continue
        d = out / m["name"]
        d.mkdir(parents=True, exist_ok=True)
        for t in hint:
            shutil.copy2(src / args.build_dir / "tests" / t, d / t)
        print(f"packed    {m['name']:32s} {dt:6.0f} s  {' '.join(hint)}", flush=True)
    # the tree's own build is left unmutated: its next build recompiles what the mutants touched
    rc, _ = sh(["cmake", "--build", args.build_dir, f"-j{args.jobs}", "--target"] +
               sorted({t for m in chosen for t in m["tests"] if t}), src, log=log)
    print(f"mutants: {len(chosen) - len(bad)} packed in {out}" + (f"; FAILING: {' '.join(bad)}" if bad else ""))
    return 1 if bad or rc else 0


def run_prebuilt(d, chosen, timeout):
    """--prebuilt: the suites --pack kept, run one mutant after another; each program alone."""
    by_name = {m["name"]: m for m in load_all()}
    names = [m["name"] for m in chosen] if chosen else sorted(p.name for p in d.iterdir() if p.is_dir())
    if not names:
        sys.exit(f"mutants: no packed mutants in {d}")
    killed, survived = 0, []
    for name in names:
        progs = sorted((d / name).glob("*")) if (d / name).is_dir() else []
        if not progs:
            sys.exit(f"mutants: {d / name} holds no programs (--pack them first)")
        verdict, by, t0 = "survived", "", time.time()
        m = by_name.get(name, {})
        for prog in progs:
            logf = d / f"{name}.{prog.name}.log"
            cmd = [str(prog), "--gtest_fail_fast"]  # the first failure is the kill
            if m.get("filter"):
                cmd.append(f"--gtest_filter={m['filter']}")
            if m.get("sanitizer"):  # a bug whose values never reach a result (an out-of-bounds read)
                cmd = ["compute-sanitizer", "--tool", m["sanitizer"], "--error-exitcode", "9"] + cmd
            start = logf.stat().st_size if logf.exists() else 0
            rc, _ = sh(cmd, d, timeout=timeout, log=logf)
            out = logf.read_text(errors="replace")[start:]
            ran = len(re.findall(r"^\[ RUN      \]", out, re.M))
            if ran == len(re.findall(r"^\[  SKIPPED \] \S+ \(\d+ ms\)", out, re.M)):  # none, or every one skipped
                verdict, by = "no-tests", f"{prog.name}: the filter {m.get('filter', '')!r} ran no test ({ran} skipped)"
                break
            if rc:
                fails = re.findall(r"^\[  FAILED  \] (\S+)", logf.read_text(errors="replace"), re.M)
                verdict = "killed"
                by = f"{prog.name} (rc {rc}): " + (" ".join(fails[:3]) + (f" (+{len(fails) - 3})" if len(fails) > 3 else "")
                                                   if fails else "no failed test listed (crash or timeout)")
                break
        killed += verdict == "killed"
        if verdict in ("survived", "no-tests"):
            survived.append(name)
        print(f"{verdict:9s} {name:32s} {time.time() - t0:6.0f} s  {by}", flush=True)
    print(f"mutants: {killed} killed of {len(names)} ({100.0 * killed / len(names):.0f}%), prebuilt suites only"
          + (f"; SURVIVED (or ran no test) its named suites: {' '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
