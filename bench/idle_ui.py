"""CPU per minute of an open, idle `featureflow ui`: every process it starts (the webserver, the daemon, the code
servers), summed from the operating system's counters, on a home where everything is already materialized.

  DAGSTER_HOME=<instance> FEATUREFLOW_HOME=<home> python bench/idle_ui.py --lineage demo [--warmup 120] [--window 240]

It starts `featureflow ui` on free ports, waits `--warmup` seconds (start-up: loading the definitions, the first
sensor ticks), then counts the CPU seconds of the whole process tree over `--window` seconds, and prints them per
minute beside the sensor ticks the daemon recorded in that window (skipped or evaluated). Nothing is materialized:
the automation sensor has nothing to request on a fresh home.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu(root: psutil.Process) -> float:
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def sensor_ticks(since: float) -> tuple[int, int]:
    """(evaluated, skipped) ticks of the featureflow_automation sensor after `since` (a timestamp)."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    evaluated = skipped = 0
    for state in instance.all_instigator_state():
        if state.name != "featureflow_automation":
            continue
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=500):
            if tick.timestamp < since:
                continue
            if tick.status.value == "SKIPPED" and "not re-evaluated" in (tick.skip_reason or ""):
                skipped += 1
            else:
                evaluated += 1
    return evaluated, skipped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="demo")
    ap.add_argument("--warmup", type=float, default=120.0)
    ap.add_argument("--window", type=float, default=240.0)
    args = ap.parse_args()
    if not os.environ.get("DAGSTER_HOME") or not os.environ.get("FEATUREFLOW_HOME"):
        sys.exit("set DAGSTER_HOME and FEATUREFLOW_HOME to a materialized, fresh home")
    cmd = [sys.executable, "-m", "featureflow_dagster.cli", "ui", "--lineage", args.lineage,
           "--port", str(free_port()), "--reports-port", str(free_port())]
    ui = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    root = psutil.Process(ui.pid)
    try:
        time.sleep(args.warmup)
        if ui.poll() is not None:
            sys.exit(f"featureflow ui exited with {ui.returncode} during the warm-up")
        started, cpu0 = time.time(), tree_cpu(root)
        time.sleep(args.window)
        cpu1, ended = tree_cpu(root), time.time()
        evaluated, skipped = sensor_ticks(started)
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
    minutes = (ended - started) / 60
    print(f"lineage {args.lineage}: idle featureflow ui over {ended - started:.0f} s (after {args.warmup:.0f} s warm-up): "
          f"{cpu1 - cpu0:.1f} CPU s, {(cpu1 - cpu0) / minutes:.2f} CPU s per minute; automation sensor ticks in the "
          f"window: {evaluated} evaluated, {skipped} skipped (nothing new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
