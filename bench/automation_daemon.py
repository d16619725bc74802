"""Automation under a real daemon: `featureflow ui` on a materialized micro home, then one fine-tune re-trained with
new settings from the shell; the `featureflow_automation` sensor recomputes what depends on it, each partition once.

  python bench/automation_daemon.py --dir /tmp/automation [--timeout 1200]

Steps: materialize micro in `<dir>` (skipped when it is already fresh), start `featureflow ui` there, wait for the
sensor's first evaluation, write `<dir>/micro-edited.yaml` (micro with `prose` trained at lr 1e-3, the staleness
table's "training (prose)" row), run `featureflow materialize --asset model/prose` on it, then wait until
`featureflow status` reads everything fresh. Prints the runs the daemon launched, the partitions materialized after
the edit (each should appear once: exactly the descendants of model/prose), the time to settle, and the sensor's
ticks (evaluated / skipped because nothing was recorded).
"""

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def featureflow(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "featureflow_dagster.cli", *args], env=env, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--timeout", type=float, default=1200.0)
    args = ap.parse_args()
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DAGSTER_HOME=str(root / "dagster"), FEATUREFLOW_HOME=str(root / "home"),
               FEATUREFLOW_LINEAGE="micro", DAGSTER_TELEMETRY_DISABLED="1")
    os.environ.update(DAGSTER_HOME=env["DAGSTER_HOME"])
    started = time.time()
    done = featureflow("materialize", env=env)
    if done.returncode != 0:
        sys.exit(f"materializing micro failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    print(f"micro materialized in {time.time() - started:.0f} s", flush=True)

    from featureflow_dagster.lineage import resolve_lineage_path

    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    next(n for n in raw["nodes"] if n["name"] == "prose")["training"] = {**raw["training"], "lr": 1.0e-3}
    edited = root / "micro-edited.yaml"
    edited.write_text(yaml.safe_dump(raw, sort_keys=False))
    env_edited = dict(env, FEATUREFLOW_LINEAGE=str(edited))

    import dagster as dg

    instance = dg.DagsterInstance.get()
    ui = subprocess.Popen([sys.executable, "-m", "featureflow_dagster.cli", "ui", "--port", str(free_port()),
                           "--reports-port", str(free_port())], env=env_edited, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def ticks():
            out = []
            for state in instance.all_instigator_state():
                if state.name == "featureflow_automation":
                    out += instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1000)
            return out

        deadline = time.time() + 300
        while not any(t.timestamp > started and t.status.value != "STARTED" for t in ticks()):
            if time.time() > deadline or ui.poll() is not None:
                sys.exit("the automation sensor did not tick within 5 minutes")
            time.sleep(5)
        mark = instance.event_log_storage.get_maximum_record_id() or 0
        edit_at = time.time()
        done = featureflow("materialize", "--asset", "model/prose", env=env_edited)
        if done.returncode != 0:
            sys.exit(f"materializing model/prose failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        print(f"model/prose re-trained with lr 1e-3 in {time.time() - edit_at:.0f} s; the daemon takes over", flush=True)
        settled = None
        while time.time() < edit_at + args.timeout:
            time.sleep(20)
            busy = instance.get_runs(filters=dg.RunsFilter(statuses=[
                dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.NOT_STARTED]))
            if busy:
                continue
            status = featureflow("status", env=env_edited)
            last = status.stdout.strip().splitlines()[-1] if status.stdout.strip() else status.stderr
            if status.returncode == 0 and last.endswith(" fresh") and "," not in last.split(":", 1)[1]:
                settled = time.time() - edit_at
                print(f"featureflow status: {last}", flush=True)
                break
        counts = collections.Counter()
        for key in instance.get_asset_keys():
            for record in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, after_storage_id=mark),
                                                          limit=1000).records:
                counts[(key.to_user_string(), record.partition_key)] += 1
        runs = [r for r in instance.get_runs() if r.tags.get("dagster/sensor_name") == "featureflow_automation"
                or "dagster/backfill" in r.tags]
        runs = [r for r in runs if (instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp() > edit_at)]
        backfills = instance.get_backfills()
        evaluated = sum(1 for t in ticks() if t.timestamp > edit_at and "not re-evaluated" not in (t.skip_reason or ""))
        skipped = sum(1 for t in ticks() if t.timestamp > edit_at and "not re-evaluated" in (t.skip_reason or ""))
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
    twice = sorted(k for k, n in counts.items() if n > 1)
    by_daemon = sum(counts.values()) - counts[("model/prose", "prose")]
    print(f"after the edit: {len(counts)} partitions materialized ({by_daemon} by the daemon's runs, model/prose by the "
          f"shell), {len(twice)} more than once{': ' + ', '.join(map(str, twice)) if twice else ''}")
    print(f"the daemon launched {len(runs)} runs ({len([b for b in backfills if b.backfill_timestamp > edit_at])} "
          f"backfills); sensor ticks since the edit: {evaluated} evaluated, {skipped} skipped (nothing recorded)")
    print("settled (everything fresh) " + (f"{settled:.0f} s after the edit" if settled else f"not within {args.timeout:.0f} s"))
    for key, pk in sorted(counts, key=str):
        print(f"  {key}[{pk}]" if pk else f"  {key}")
    return 0 if settled and not twice else 1


if __name__ == "__main__":
    sys.exit(main())
