"""Wall time of a whole lineage, in-process against the multiprocess executor, on this machine.

Both sides run `featureflow materialize` from scratch (a fresh home and Dagster instance each), one
after the other, on the same lineage; the baseline is the in-process executor (one partition at a
time, every core for each). The machine's speed drifts between runs by as much as the effect, so the
sides alternate over `--repeats` rounds (in-process first in odd rounds, multiprocess first in even
ones); prints each run's wall time, per side the minimum and median, their ratios, and the sum of the
per-partition seconds each side reported (how much slower each step ran while sharing the cores).

  python bench/executors.py [--lineage demo] [--workers 2] [--repeats 2] [--keep DIR]

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
    ap.add_argument("--repeats", type=int, default=2, help="rounds; each runs both sides, the order alternating")
    args = ap.parse_args()
    import statistics
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="featureflow-bench-"))
    sides = {"in_process": [], "multiprocess": ["--executor", "multiprocess", "--workers", str(args.workers)]}
    results: dict[str, list] = {name: [] for name in sides}
    for r in range(args.repeats):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            root = base / f"{name}-{r + 1}"
            root.mkdir(parents=True, exist_ok=True)
            print(f"round {r + 1}, {name}: materializing '{args.lineage}' under {root} ...", flush=True)
            results[name].append(run(args.lineage, root, sides[name]))
            (root / "log.txt").write_text(results[name][-1][3])
            if not args.keep:
                import shutil

                shutil.rmtree(root / "home", ignore_errors=True)
    print(f"\nlineage '{args.lineage}', {os.cpu_count()} cores, multiprocess with {args.workers} workers, {args.repeats} rounds")
    print(f"{'executor':<14}{'round':>6}{'wall s':>9}{'partitions':>12}{'sum of step s':>15}")
    for name, runs in results.items():
        for r, (wall, steps, n, _) in enumerate(runs):
            print(f"{name:<14}{r + 1:6d}{wall:9.1f}{n:12d}{steps:15.1f}")
    walls = {name: [w for w, *_ in runs] for name, runs in results.items()}
    for stat, f in (("minimum", min), ("median", statistics.median)):
        ip, mp = f(walls["in_process"]), f(walls["multiprocess"])
        print(f"{stat}: in_process {ip:.1f} s, multiprocess {mp:.1f} s, ratio {mp / ip:.3f} ({ip / mp:.2f}x speed-up)")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
