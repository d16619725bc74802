"""CPU of the automation on an up-to-date home, per tick of the `featureflow_automation` sensor: one evaluation of
every asset's automation conditions (what each tick cost before the sensor's gate, and what a tick still costs after
something was recorded), and the gated tick the daemon runs when nothing was recorded since the last evaluation.

  DAGSTER_HOME=<the home's instance> python bench/idle_ticks.py --lineage demo --home <FEATUREFLOW_HOME> [--ticks 3]

Nothing is materialized: on a fresh home every evaluation requests nothing. Per minute of an idle UI at the sensor's
interval (`automation.AUTOMATION_INTERVAL_S`): ungated, every tick evaluates; gated, every tick skips.
`bench/idle_ui.py` measures the whole `featureflow ui` process tree instead.
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
    from featureflow_dagster.automation import AUTOMATION_INTERVAL_S, NOT_EVALUATED, SENSOR_NAME
    from featureflow_dagster.definitions import build_definitions
    from featureflow_dagster.lineage import load_lineage

    lineage = load_lineage(args.lineage)
    instance = dg.DagsterInstance.get()
    defs = build_definitions(lineage, home=args.home, device="cpu")
    cursor, full, requested = None, [], 0
    for _ in range(args.ticks):
        started = time.process_time()
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        full.append(time.process_time() - started)
        requested += result.total_requested
    sensor, repo = defs.resolve_sensor_def(SENSOR_NAME), defs.get_repository_def()
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None, repository_def=repo))
    gated, skipped = [], 0
    for _ in range(args.ticks):
        started = time.process_time()
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor, repository_def=repo))
        gated.append(time.process_time() - started)
        skipped += NOT_EVALUATED in (data.skip_message or "")
    per, idle = statistics.median(full), statistics.median(gated)
    print(f"lineage {lineage.name}: {args.ticks} evaluations of the conditions, CPU s each: "
          f"{' '.join(f'{c:.2f}' for c in full)} (median {per:.2f}); requested {requested}")
    print(f"gated sensor ticks with nothing recorded since: {' '.join(f'{c * 1000:.1f}' for c in gated)} ms CPU "
          f"(median {idle * 1000:.1f} ms); {skipped} of {args.ticks} skipped")
    per_min = 60 / AUTOMATION_INTERVAL_S
    print(f"per minute of an idle UI at one tick every {AUTOMATION_INTERVAL_S} s: evaluating every tick "
          f"{per * per_min:.1f} s; gated {idle * per_min:.3f} s; ratio {per / idle:.0f}x")
    return 0 if requested == 0 and skipped == args.ticks else 1


if __name__ == "__main__":
    sys.exit(main())
