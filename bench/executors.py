"""Wall time of a whole lineage, in-process against the multiprocess executor, on this machine.

Both sides run `featureflow materialize` from scratch (a fresh home and Dagster instance each), one
after the other, on the same lineage; the baseline is the in-process executor (one partition at a
time, every core for each). Prints both wall times, the ratio, and the sum of the per-partition
seconds each side reported (how much slower each step ran while sharing the cores).

  python bench/executors.py [--lineage demo] [--workers 2] [--keep DIR]

Run it on an otherwise idle machine: anything else on the cores changes both sides differently.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(lineage: str, root: Path, extra: list[str]) -> tuple[float, float, int, str]:
    env = {**os.environ, "FEATUREFLOW_HOME": str(root / "home"), "DAGSTER_HOME": str(root / "dagster")}
    cmd = [sys.executable, "-m", "featureflow_dagster.cli", "materialize", "--lineage", lineage, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    steps = [float(m.group(1)) for m in re.finditer(r"^done\s+\S+\s+([\d.]+) s", proc.stdout, re.M)]
    return wall, sum(steps), len(steps), proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="demo")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", default=None, help="keep both homes and logs under this folder")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="featureflow-bench-"))
    sides = {"in_process": [], "multiprocess": ["--executor", "multiprocess", "--workers", str(args.workers)]}
    results = {}
    for name, extra in sides.items():
        root = base / name
        root.mkdir(parents=True, exist_ok=True)
        print(f"{name}: materializing '{args.lineage}' under {root} ...", flush=True)
        results[name] = run(args.lineage, root, extra)
        (root / "log.txt").write_text(results[name][3])
    print(f"\nlineage '{args.lineage}', {os.cpu_count()} cores, multiprocess with {args.workers} workers")
    print(f"{'executor':<14}{'wall s':>9}{'partitions':>12}{'sum of step s':>15}")
    for name, (wall, steps, n, _) in results.items():
        print(f"{name:<14}{wall:9.1f}{n:12d}{steps:15.1f}")
    ip, mp = results["in_process"][0], results["multiprocess"][0]
    print(f"multiprocess / in_process wall time: {mp / ip:.3f} ({ip / mp:.2f}x speed-up)")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
