"""The automation sensor the daemon runs under `featureflow ui`: Dagster's evaluation of every asset's
AutomationCondition (assets/__init__.py: eager, once upstream settles, not on a failed SAE; missing on the lineage's
`schedule:`), gated so that an idle UI costs next to nothing.

An evaluation of the conditions costs seconds of CPU on the demo even when nothing changed (their exact-once clause
looks three hops upstream for every partition; `bench/idle_ticks.py`). Every input those conditions read is in the
instance's event log (materializations, observations of the lineage file, runs starting and ending, check results)
except the clock, which only the `schedule:`'s cron ticks read. So each tick first compares the newest event id, the
asset graph and the next cron tick with those of the last evaluation, and evaluates only when one moved; otherwise it
skips, saying so. Skipping an evaluation whose inputs did not change changes no answer: the conditions' state
(`since_last_handled`, `newly_updated`) is kept in the cursor and advances at the next evaluation exactly as it
would have at the skipped one.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from featureflow_dagster.dagster_internals import evaluate_automation_tick, evaluation_clock, latest_event_id, next_cron_tick
from featureflow_dagster.runs import STEP_TAG

AUTOMATION_INTERVAL_S = 30  # seconds between the sensor's ticks (Dagster's default); an idle tick skips
SENSOR_NAME = "featureflow_automation"
NOT_EVALUATED = "not re-evaluated"
SHELL_RUNNING = "featureflow materialize is running"
ACTIVE = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED)


def graph_digest(graph) -> str:
    """What in the definitions an evaluation reads besides the event log: the assets, their partitions, their
    conditions (a reloaded code location with an edited lineage can add partitions before anything is recorded)."""
    parts = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        pdef = node.partitions_def
        parts.append((key.to_user_string(), pdef.get_partition_keys() if pdef else None,
                      str(node.automation_condition.get_label()) if node.automation_condition else None))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cursor(raw: str | None) -> dict:
    """The sensor's state: {"event", "digest", "at", "daemon"}; a cursor left by Dagster's own automation sensor
    of the same name (featureflow before this gate) is its serialized daemon cursor, kept as such."""
    if not raw:
        return {}
    try:
        state = json.loads(raw)
    except ValueError:
        return {"daemon": raw}
    return state if isinstance(state, dict) and "daemon" in state else {"daemon": raw}


def due(state: dict, event: int, digest: str, schedule: str | None, now: float) -> str | None:
    """Why this tick must evaluate the conditions, or None when nothing they read has changed."""
    if not state.get("at"):
        return "first evaluation"
    if state.get("event") != event:
        return f"new events (up to id {event})"
    if state.get("digest") != digest:
        return "the definitions changed"
    if schedule and next_cron_tick(schedule, state["at"]) <= now:
        return f"a tick of {schedule} passed"
    return None


def automation_sensor(schedule: str | None) -> dg.SensorDefinition:
    selection = dg.AssetSelection.all(include_sources=True)

    @dg.sensor(name=SENSOR_NAME, asset_selection=selection, minimum_interval_seconds=AUTOMATION_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Evaluates the assets' automation conditions (recompute what an update made stale, once "
                           "upstream settles; on the lineage's schedule what is missing) when something was recorded "
                           "since the last evaluation; otherwise skips.")
    def featureflow_automation(context: dg.SensorEvaluationContext):
        state = read_cursor(context.cursor)
        event, now = latest_event_id(context.instance), evaluation_clock()
        digest = graph_digest(context.repository_def.asset_graph)
        reason = due(state, event, digest, schedule, now)
        if reason is None:
            return dg.SkipReason(f"nothing recorded since the last evaluation (event {event}): conditions {NOT_EVALUATED}")
        # a partition the shell is computing (its observation of the lineage file already recorded, its result not yet)
        # would look updated-upstream-but-unhandled to an evaluation that overlaps the run, and be requested again
        # (measured: model/prose twice in bench/automation_daemon.py); its end is an event, so the next tick evaluates
        shell = [r for r in context.instance.get_runs(filters=dg.RunsFilter(statuses=list(ACTIVE))) if STEP_TAG in r.tags]
        if shell:
            return dg.SkipReason(f"{SHELL_RUNNING} ({shell[0].tags[STEP_TAG]}, run {shell[0].run_id[:8]}): conditions "
                                 "evaluated after it ends")
        context.log.info(f"evaluating the automation conditions: {reason}")
        run_requests, daemon, evaluations = evaluate_automation_tick(context, state.get("daemon"), selection)
        cursor = json.dumps({"event": event, "digest": digest, "at": now, "daemon": daemon})
        return dg.SensorResult(run_requests=run_requests, cursor=cursor, automation_condition_evaluations=evaluations)

    return featureflow_automation
