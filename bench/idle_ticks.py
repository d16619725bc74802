"""CPU of an idle automation evaluation: what the daemon computes each time the `featureflow_automation` sensor runs
under `featureflow ui` on an up-to-date home, and what that costs per minute at Dagster's default interval (30 s)
against featureflow's (`definitions.AUTOMATION_INTERVAL_S`).

  DAGSTER_HOME=<the home's instance> python bench/idle_ticks.py --lineage demo --home <FEATUREFLOW_HOME> [--ticks 3]

Nothing is materialized: on a fresh home every evaluation requests nothing; the CPU seconds are what an open UI costs.
"""

import argparse
import statistics
import sys
import time

import dagster as dg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="demo")
    ap.add_argument("--home", required=True, help="the lineage's FEATUREFLOW_HOME, materialized and fresh")
    ap.add_argument("--ticks", type=int, default=3)
    args = ap.parse_args()
    from featureflow_dagster.definitions import AUTOMATION_INTERVAL_S, build_definitions
    from featureflow_dagster.lineage import load_lineage

    lineage = load_lineage(args.lineage)
    instance = dg.DagsterInstance.get()
    defs = build_definitions(lineage, home=args.home, device="cpu")
    cursor, cpu, requested = None, [], 0
    for _ in range(args.ticks):
        started = time.process_time()
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        cpu.append(time.process_time() - started)
        requested += result.total_requested
    per = statistics.median(cpu)
    print(f"lineage {lineage.name}: {args.ticks} idle evaluations, CPU seconds each: {' '.join(f'{c:.2f}' for c in cpu)} "
          f"(median {per:.2f}); requested {requested}")
    print(f"per minute of an idle UI: every 30 s (Dagster's default) {per * 2:.1f} s; every {AUTOMATION_INTERVAL_S} s "
          f"(featureflow's) {per * 60 / AUTOMATION_INTERVAL_S:.1f} s; ratio {AUTOMATION_INTERVAL_S / 30:.1f}x")
    return 0 if requested == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
