"""Running a lineage from the shell (`featureflow materialize`, `featureflow plan`).

Every asset partition runs as its own Dagster run in dependency order, skipping fresh ones, so a
changed fine-tune recomputes only what depends on it. Before planning, the runner

- marks runs whose featureflow process is gone (SIGKILL, out of memory) as failed and frees the pool
  slots they held, and frees slots held by runs that already ended;
- observes `lineage_config`, so that an edit of the lineage file is visible as per-partition staleness.

While running it prints one line per finished partition (status, seconds, one key figure), a
transient progress line on a terminal, and Dagster's events only at WARNING and above unless
`verbose`; the full event log stays in the run storage (`featureflow ui`). A partition below an SAE
that failed a (blocking) quality check is reported as blocked and not run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg

from featureflow_dagster import progress
from featureflow_dagster.lineage import Edge
from featureflow_dagster.assets.config import CONFIG_KEY
from featureflow_dagster.dagster_internals import (
    failed_check_partitions, observe_sources, pool_info, recorded_versions, stale_status_resolver
)
from featureflow_dagster.runs import HOST_TAG, KEY_FIGURES_METADATA, PID_TAG, POOL, STEP_TAG, partition_label, process_tags

def _log_config(verbose: bool) -> dict:
    return {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "WARNING"}}}}


# ---------------------------------------------------------------------------------------------
# The plan: what is missing, stale or fresh
# ---------------------------------------------------------------------------------------------


def materialization_plan(defs: dg.Definitions) -> list[tuple[dg.AssetKey, str | None]]:
    """(asset key, partition key) pairs of every materializable asset, upstream first."""
    graph = defs.resolve_asset_graph()
    plan = []
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable:
            continue
        if node.partitions_def is None:
            plan.append((key, None))
        else:
            plan.extend((key, pk) for pk in node.partitions_def.get_partition_keys())
    return plan


def config_assets(defs: dg.Definitions) -> list:
    """The observable source assets (lineage_config) among the definitions."""
    return [a for a in defs.assets if isinstance(a, dg.SourceAsset) and a.is_observable]


def observe_config(defs: dg.Definitions, instance: dg.DagsterInstance, verbose: bool = False) -> None:
    """Record the lineage file's current per-partition versions (cheap; what makes an edit visible). When the
    instance already holds exactly these versions, `lineage_config` is not observed again: an observation run
    writes an event per partition (about 1 s on the demo) and would wake the automation sensor for nothing.
    Other observable sources (pretrained weights) are observed every time."""
    sources = [s for s in config_assets(defs) if not _config_recorded(s, instance)]
    if sources:
        observe_sources(sources, instance, _log_config(verbose), process_tags())


def _config_recorded(source, instance: dg.DagsterInstance) -> bool:
    if source.key != CONFIG_KEY:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # DataVersionsByPartition
        current = {pk: v.value for pk, v in source.observe_fn().data_versions_by_partition.items()}
    recorded = recorded_versions(instance, CONFIG_KEY)
    return all(recorded.get(pk) == v for pk, v in current.items())


def stale_statuses(defs: dg.Definitions, instance: dg.DagsterInstance,
                   previous: dict[tuple[dg.AssetKey, str | None], str] | None = None,
                   done: set[tuple[dg.AssetKey, str | None]] | frozenset = frozenset(),
                   ) -> dict[tuple[dg.AssetKey, str | None], str]:
    """'MISSING', 'STALE' or 'FRESH' for every (asset, partition), in dependency order.

    Dagster's own status marks a partition stale when a *direct* upstream changed (data version,
    code version, or its `lineage_config` partition). Here staleness is also passed down: a partition
    below a stale or missing one is stale too, so a changed base shows every descendant as out of date.

    With `previous` (the statuses before some runs of this process) and `done` (what those runs
    materialized), only the answers those runs can have changed are asked again (each question costs a
    few SQL queries): a FRESH partition stays fresh (nothing above it is missing or stale, so no run of
    this process touched its inputs) and a MISSING one stays missing until it is done itself; a STALE
    one may have become fresh (its parents were re-materialized to the same bytes), and a done one is asked."""
    graph = defs.resolve_asset_graph()
    resolver = stale_status_resolver(instance, graph)
    out: dict[tuple[dg.AssetKey, str | None], str] = {}
    for key, pk in materialization_plan(defs):
        was = previous.get((key, pk)) if previous is not None else None
        if was == "FRESH" or (was == "MISSING" and (key, pk) not in done):
            out[(key, pk)] = was
            continue
        status = resolver.get_status(key, pk).value
        if status == "FRESH":
            parents = graph.get_parents_partitions(key, pk).parent_partitions
            if any(out.get((p.asset_key, p.partition_key), "FRESH") != "FRESH" for p in parents):
                status = "STALE"
        out[(key, pk)] = status
    return out


def failed_blocking_checks(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[tuple[dg.AssetKey, str | None], list[str]]:
    """Partitions whose latest evaluation of a blocking check failed, with the checks' names."""
    graph = defs.resolve_asset_graph()
    out: dict[tuple[dg.AssetKey, str | None], list[str]] = {}
    for spec in graph.asset_check_keys:
        if graph.get(spec).blocking:
            for pk in sorted(failed_check_partitions(instance, spec), key=str):  # checks are partitioned like the SAE
                out.setdefault((spec.asset_key, pk), []).append(spec.name)
    return out


@dataclass
class Step:
    key: dg.AssetKey
    partition: str | None
    reason: str  # missing, stale, forced, fresh, blocked

    @property
    def label(self) -> str:
        return partition_label(self.key.to_user_string(), self.partition)


def select(defs: dg.Definitions, assets: list[str] | None = None, nodes: set[str] | None = None) -> set[tuple[dg.AssetKey, str | None]]:
    """The (asset, partition) pairs `--asset`/`--node` choose (None: everything).

    `assets` are keys (`model/base`) or groups of keys (`model`: every model/<node>). `nodes` keep
    partitions of those nodes, edges between two of them, and the unpartitioned assets they need
    (the tokenizer), not the lineage-wide `feature_flow`. Unknown names raise ValueError listing the valid ones."""
    plan = materialization_plan(defs)
    keys = list(dict.fromkeys(k for k, _ in plan))
    chosen = set(plan)
    if assets:
        names = [k.to_user_string() for k in keys]
        wanted = set()
        for a in assets:
            hit = {k for k, n in zip(keys, names) if n == a or n.startswith(a.rstrip("/") + "/")}
            if not hit:
                raise ValueError(f"unknown asset '{a}'; valid: {', '.join(names)} (or a group such as 'model')")
            wanted |= hit
        chosen = {(k, pk) for k, pk in chosen if k in wanted}
    if nodes is not None:
        graph = defs.resolve_asset_graph()

        def keep(pk: str | None) -> bool:
            edge = Edge.from_key(pk) if pk is not None else None
            return pk in nodes or (edge is not None and set(edge) <= nodes)

        partitioned = {(k, pk) for k, pk in chosen if pk is not None and keep(pk)}
        needed = set()
        for k, pk in partitioned:
            needed |= _ancestors(graph, k)
        chosen = partitioned | {(k, pk) for k, pk in chosen if pk is None and k in needed}
    return chosen


def _ancestors(graph, key: dg.AssetKey) -> set[dg.AssetKey]:
    seen, todo = set(), [key]
    while todo:
        for parent in graph.get(todo.pop()).parent_keys:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def plan(defs: dg.Definitions, instance: dg.DagsterInstance, chosen=None, force: bool = False) -> list[Step]:
    """Every chosen partition in dependency order with why it would run (missing / stale / forced),
    or why not (fresh; blocked: below an SAE that failed a blocking check)."""
    statuses = stale_statuses(defs, instance)
    return _steps(defs, statuses, failed_blocking_checks(defs, instance), chosen, force)


def _steps(defs, statuses, failed_checks, chosen, force) -> list[Step]:
    graph = defs.resolve_asset_graph()
    blocked = set(failed_checks)
    steps = []
    for key, pk in materialization_plan(defs):
        parents = {(p.asset_key, p.partition_key) for p in graph.get_parents_partitions(key, pk).parent_partitions}
        is_blocked = bool(parents & blocked)
        if is_blocked:
            blocked.add((key, pk))
        if chosen is not None and (key, pk) not in chosen:
            continue
        status = statuses[(key, pk)]
        reason = "blocked" if is_blocked else status.lower() if status != "FRESH" else ("forced" if force else "fresh")
        steps.append(Step(key, pk, reason))
    return steps


# ---------------------------------------------------------------------------------------------
# Crash recovery
# ---------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_runs(instance: dg.DagsterInstance, echo=print) -> list[str]:
    """Mark featureflow's runs on this host whose process is gone as failed, and free pool slots held
    by runs that are no longer running. Returns the run ids marked failed."""
    active = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.CANCELING]
    dead = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=active, tags={HOST_TAG: socket.gethostname()})):
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and not _alive(pid):
            instance.report_run_failed(run, f"featureflow process {pid} is gone (killed or crashed); marked failed by a later featureflow")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            dead.append(run.run_id)
            echo(f"recovered: run {run.run_id[:8]} ({run.job_name}, pid {pid}) had died; marked failed, its pool slots freed")
    info = pool_info(instance, POOL)
    for slot in info.claimed_slots if info is not None else []:
        run = instance.get_run_by_id(slot.run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(slot.run_id)
            echo(f"recovered: pool '{POOL}' slot held by finished run {slot.run_id[:8]} freed")
    return dead


def pool_holder(instance: dg.DagsterInstance) -> str | None:
    """Who holds every slot of the gpu pool, or None when one is free (or the instance has no pools)."""
    info = pool_info(instance, POOL)
    if info is None or info.slot_count is None or len(info.claimed_slots) < info.slot_count:
        return None
    holders = []
    for slot in info.claimed_slots:
        run = instance.get_run_by_id(slot.run_id)
        who = f"run {slot.run_id[:8]}"
        if run is not None:
            who += f" ({run.status.value}, step {slot.step_key}" + (f", featureflow pid {run.tags[PID_TAG]}" if PID_TAG in run.tags else "") + ")"
        holders.append(who)
    return ", ".join(holders)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def key_figures(assets, key: dg.AssetKey) -> list[str]:
    """The metadata the shell prints on `key`'s line: what its Artefact names (assets/spec.py), carried
    in the asset definition's metadata."""
    for a in assets:
        if isinstance(a, dg.AssetsDefinition) and key in a.keys:
            value = a.metadata_by_key.get(key, {}).get(KEY_FIGURES_METADATA)
            return list(getattr(value, "value", value) or [])
    return []


def key_figure(figures: list[str], metadata: dict) -> str:
    """`figures` of the run's materialization `metadata`, as 'name value, ...'."""
    parts = []
    for name in figures:
        if name in metadata:
            v = metadata[name].value if hasattr(metadata[name], "value") else metadata[name]
            if isinstance(v, float):
                v = f"{v:.4g}"
            elif isinstance(v, dict):
                v = " ".join(f"{k}={x:.2f}" if isinstance(x, float) else f"{k}={x}" for k, x in v.items())
            parts.append(f"{name.split('/')[-1]} {v}")
    return ", ".join(parts)


class RunFailed(RuntimeError):
    pass


@dataclass
class Report:
    done: list[tuple[dg.AssetKey, str | None]] = field(default_factory=list)
    # partitions another process materialized while this one waited for them (same code and data versions): not run
    skipped: list[tuple[dg.AssetKey, str | None]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed_checks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.blocked and not self.failed_checks


def materialize_lineage(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    only: set[dg.AssetKey] | None = None,
    partitions: set[str] | None = None,
    force: bool = False,
    chosen: set[tuple[dg.AssetKey, str | None]] | None = None,
    echo=print,
    verbose: bool = False,
    workers: int = 1,
    rebuild: Callable[[], dg.Definitions] | None = None,
    device_slots: int | None = None,
) -> Report:
    """Materialize missing or stale partitions (all with `force`) in dependency order, one run each.

    `only`/`partitions` (or `chosen`, from `select`) restrict the plan. Raises RunFailed on the first
    failed run, naming it and its error; partitions below an SAE that fails a check are skipped.

    With `workers` > 1 (the multiprocess executor) independent partitions run at once, each in one of
    `workers` processes that build the definitions with `rebuild` (picklable); at most as many steps
    that use the device run at once as the instance's `gpu` pool has slots (`device_slots` sets them,
    on the instance, for this and later runs). Needs a persistent instance (the workers open it by reference)."""
    if not verbose:
        _quiet_libraries()
    recover_dead_runs(instance, echo)
    if device_slots is not None:
        instance.event_log_storage.set_concurrency_slots(POOL, device_slots)
    observe_config(defs, instance, verbose)
    assets, resources = list(defs.assets), defs.resources
    if chosen is None:
        chosen = {(k, pk) for k, pk in materialization_plan(defs)
                  if (only is None or k in only) and (partitions is None or pk is None or pk in partitions)}
    graph = defs.resolve_asset_graph()
    failed_checks = failed_blocking_checks(defs, instance)
    report = Report()
    bar = progress.TerminalBar()
    progress.set_sink(bar)
    try:
        statuses = stale_statuses(defs, instance)
        first = _steps(defs, statuses, failed_checks, chosen, force)
        width = max((len(s.label) for s in first), default=20)
        counts = {r: sum(s.reason == r for s in first) for r in ("missing", "stale", "forced", "blocked", "fresh")}
        echo(f"{len(first)} asset partitions: " + ", ".join(f"{n} {r}" for r, n in counts.items() if n)
             + (("; materializing in dependency order" if workers == 1 else
                 f"; materializing up to {workers} at once, each as soon as its inputs are done")
                if len(first) > counts["fresh"] else ""))
        if workers > 1:
            _run_parallel(defs, instance, statuses, failed_checks, chosen, force, report, bar, width, echo,
                          workers, rebuild, verbose)
            return report
        while True:
            pending = _pending(defs, statuses, failed_checks, chosen, force, report)
            if not pending:
                break
            step = pending[0]
            if step.reason == "blocked":
                report.blocked.append(step.label)
                echo(f"blocked  {step.label}: an SAE it reads failed a quality check")
                continue
            if graph.get(step.key).pools and (holder := pool_holder(instance)):
                echo(f"waiting  {step.label}: pool '{POOL}' is held by {holder}")
            bar.start(step.label)
            outcome = run_step(assets, resources, instance, step, verbose, graph=graph, echo=lambda m: (bar.clear(), echo(m)))
            bar.clear()
            _record(outcome, step, report, failed_checks, width, echo)
            # what this run changed (or found done by another process) decides what is stale below
            statuses = stale_statuses(defs, instance, statuses, set(report.done) | set(report.skipped))
    finally:
        bar.clear()
        progress.set_sink(None)
    return report


def _pending(defs, statuses, failed_checks, chosen, force, report: Report, running=frozenset()) -> list[Step]:
    """The chosen partitions still to run or to report blocked, in dependency order: not fresh, not done
    or reported by this process, not `running` now."""
    return [s for s in _steps(defs, statuses, failed_checks, chosen, force)
            if s.reason != "fresh" and (s.key, s.partition) not in report.done and (s.key, s.partition) not in report.skipped
            and s.label not in report.blocked and (s.key, s.partition) not in running]


@dataclass
class Outcome:
    """What one partition's run produced, small enough to come back from a worker process."""
    success: bool
    seconds: float
    run_id: str
    checks_only: bool = False  # failed only because a blocking check failed (the asset was written)
    skipped: bool = False  # another process materialized it while this one waited (not run)
    metadata: dict = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)  # the names in `metadata`, in the order the shell prints them
    failed_checks: list[str] = field(default_factory=list)
    error: str = ""


@contextlib.contextmanager
def partition_lock(instance: dg.DagsterInstance, step: Step, echo=print):
    """Hold the partition's lock (a file lock under the Dagster instance's folder) while it runs, so that two
    featureflow processes on one instance never compute it at once; the second waits, saying for whom. An
    ephemeral instance (one process, tests) takes no lock."""
    from featureflow_dagster.storage import file_lock, lock_name

    root = None if instance.is_ephemeral else getattr(instance, "root_directory", None)
    if not root:
        yield
        return

    def wait(other: str) -> None:
        echo(f"waiting  {step.label}: another featureflow process ({other or 'unknown'}) is materializing it")

    with file_lock(Path(root) / "featureflow_locks" / lock_name(step.label), f"pid {os.getpid()} on {socket.gethostname()}", wait):
        yield


def fresh_now(instance: dg.DagsterInstance, graph, step: Step) -> bool:
    """Whether the partition is FRESH by Dagster's versions right now (asked anew: another process may have
    materialized it, from the same code and inputs, since this one planned)."""
    return stale_status_resolver(instance, graph).get_status(step.key, step.partition).value == "FRESH"


def run_step(assets, resources, instance: dg.DagsterInstance, step: Step, verbose: bool, graph=None, echo=print) -> Outcome:
    """Materialize one asset partition as its own Dagster run (in this process), under its partition lock; with
    `graph` (the asset graph) a partition planned as missing or stale that is fresh once the lock is taken (another
    process materialized it meanwhile) is skipped, not computed again."""
    with partition_lock(instance, step, echo):
        if graph is not None and step.reason in ("missing", "stale") and fresh_now(instance, graph, step):
            return Outcome(success=True, seconds=0.0, run_id="-", skipped=True)
        return _run_step(assets, resources, instance, step, verbose)


def _run_step(assets, resources, instance: dg.DagsterInstance, step: Step, verbose: bool) -> Outcome:
    started = time.perf_counter()
    result = dg.materialize(assets, selection=[step.key], partition_key=step.partition, instance=instance,
                            resources=resources, raise_on_error=False, run_config=_log_config(verbose),
                            tags={**process_tags(), STEP_TAG: step.label})
    seconds = time.perf_counter() - started
    meta = next((e.materialization.metadata for e in result.get_asset_materialization_events()), {})
    figures = key_figures(assets, step.key)
    plain = {k: (v.value if hasattr(v, "value") else v) for k, v in meta.items() if k in figures}
    checks_only = not result.success and _only_blocking_checks_failed(result)
    return Outcome(success=result.success, seconds=seconds, run_id=result.run_id, checks_only=checks_only, metadata=plain, figures=figures,
                   failed_checks=[e.check_name for e in result.get_asset_check_evaluations() if not e.passed],
                   error="" if result.success or checks_only else _failure(result))


def _record(outcome: Outcome, step: Step, report: Report, failed_checks: dict, width: int, echo) -> None:
    """One line per finished partition; raise RunFailed on a failed run (not on a failed check)."""
    if not outcome.success and not outcome.checks_only:
        echo(f"FAILED   {step.label} after {outcome.seconds:.1f} s")
        raise RunFailed(f"materializing {step.label} failed (run {outcome.run_id}): {outcome.error}")
    if outcome.skipped:
        report.skipped.append((step.key, step.partition))
        echo(f"{'skipped':8} {step.label:<{width}}  another featureflow process materialized it meanwhile (same code and inputs)")
        return
    report.done.append((step.key, step.partition))
    checks = f"; checks FAILED: {', '.join(outcome.failed_checks)}" if outcome.failed_checks else ""
    echo(f"{'done':8} {step.label:<{width}} {outcome.seconds:7.1f} s  {step.reason:<7}  {key_figure(outcome.figures, outcome.metadata)}{checks}")
    if outcome.failed_checks:
        report.failed_checks[step.label] = outcome.failed_checks
        failed_checks[(step.key, step.partition)] = outcome.failed_checks
    else:
        failed_checks.pop((step.key, step.partition), None)


# ---------------------------------------------------------------------------------------------
# The multiprocess executor: partitions in parallel, device steps limited by the pool
# ---------------------------------------------------------------------------------------------


def pool_limit(instance: dg.DagsterInstance) -> int:
    """Slots of the `gpu` pool on this instance (dagster.yaml's default_limit unless set); 1 on an
    instance that keeps no pools or sets no limit (one device step at a time)."""
    info = pool_info(instance, POOL)
    return info.slot_count if info is not None and info.slot_count else 1


_worker: dict = {}


def _worker_init(rebuild, instance_ref, counter, share, verbose: bool) -> None:
    """Each worker process: its own definitions and instance handle, torch threads that follow the
    shared `share` of the cores, and on a machine with several GPUs its own GPU (worker i takes
    cuda:i mod n) unless the device was pinned."""
    import torch

    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if not verbose:
        _quiet_libraries()
    defs = rebuild()
    resources = dict(defs.resources)
    device = resources.get("device")
    if device is not None and device.device in ("auto", "cuda") and torch.cuda.device_count() > 1:
        resources["device"] = type(device)(device=f"cuda:{index % torch.cuda.device_count()}")
    _worker.update(assets=list(defs.assets), resources=resources, graph=defs.resolve_asset_graph(),
                   instance=dg.DagsterInstance.from_ref(instance_ref), verbose=verbose, share=share)
    progress.set_sink(_follow_share)


def _follow_share(_message: str = "") -> None:
    """Set torch's threads to the cores' share the runner gives each running step now. Called at a
    step's start and on each progress message (every few seconds of a long loop, in the thread that
    computes), so a step that began beside another gets every core once it runs alone, and gives
    half back when another starts."""
    import torch

    threads = _worker["share"].value
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def _worker_run(key_path: list[str], partition: str | None, reason: str) -> Outcome:
    """One partition in a worker."""
    _follow_share()
    step = Step(dg.AssetKey(key_path), partition, reason)
    try:
        return run_step(_worker["assets"], _worker["resources"], _worker["instance"], step, _worker["verbose"],
                        graph=_worker["graph"], echo=lambda m: None)
    except Exception as e:  # the run itself could not start (Dagster's errors are inside the Outcome)
        return Outcome(success=False, seconds=0.0, run_id="-", error=f"{type(e).__name__}: {e}")


def descendant_counts(defs: dg.Definitions) -> dict[tuple[dg.AssetKey, str | None], int]:
    """How many partitions are computed, directly or not, from each partition: the scheduler starts
    the ready partition with the most first, so the long chain (base model, fine-tunes, merge sweep)
    is never queued behind leaves."""
    graph = defs.resolve_asset_graph()
    plan = materialization_plan(defs)
    children: dict = {p: set() for p in plan}
    for key, pk in plan:
        for parent in graph.get_parents_partitions(key, pk).parent_partitions:
            children.setdefault((parent.asset_key, parent.partition_key), set()).add((key, pk))
    below: dict = {}
    for node in reversed(plan):  # children before parents
        below[node] = set().union(*({c} | below.get(c, set()) for c in children[node])) if children[node] else set()
    return {node: len(below[node]) for node in plan}


def _run_parallel(defs, instance, statuses, failed_checks, chosen, force, report, bar, width, echo,
                  workers: int, rebuild, verbose: bool) -> None:
    """Ready partitions (inputs done or fresh) start as workers free up, the one with the most
    descendants first; device steps stay within the pool's slots; the CPU cores are divided among the
    steps running at each moment (a step running alone, like the base model, gets them all)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if rebuild is None:
        raise ValueError("the multiprocess executor needs `rebuild`, a picklable function that builds the definitions")
    if instance.is_ephemeral:
        raise ValueError("the multiprocess executor needs a persistent Dagster instance (DAGSTER_HOME); this one is ephemeral")
    ref = instance.get_ref()
    graph = defs.resolve_asset_graph()
    on_device = {k for k in graph.toposorted_asset_keys if graph.get(k).pools}
    limit = pool_limit(instance)
    cores = os.cpu_count() or 1
    weight = descendant_counts(defs)
    ctx = mp.get_context("spawn")
    counter, share = ctx.Value("i", 0), ctx.Value("i", cores)
    running: dict = {}  # future -> Step
    failure: RunFailed | None = None
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(rebuild, ref, counter, share, verbose)) as pool:
        while True:
            busy = {(s.key, s.partition) for s in running.values()}
            pending = _pending(defs, statuses, failed_checks, chosen, force, report, busy)
            waiting = {(s.key, s.partition) for s in pending} | busy
            starting: list[Step] = []
            for step in sorted(pending, key=lambda s: -weight[(s.key, s.partition)]) if failure is None else []:
                parents = {(p.asset_key, p.partition_key) for p in graph.get_parents_partitions(step.key, step.partition).parent_partitions}
                if step.reason == "blocked":
                    if not parents & waiting:
                        report.blocked.append(step.label)
                        echo(f"blocked  {step.label}: an SAE it reads failed a quality check")
                    continue
                if len(running) + len(starting) >= workers:
                    break
                if parents & waiting:
                    continue  # something it reads is still to run (or running)
                if step.key in on_device and sum(s.key in on_device for s in [*running.values(), *starting]) >= limit:
                    continue  # the device pool is full; a CPU step may still start
                starting.append(step)
            share.value = max(1, cores // max(1, len(running) + len(starting)))
            for step in starting:
                running[pool.submit(_worker_run, list(step.key.path), step.partition, step.reason)] = step
            if not running:
                break
            bar.start(", ".join(s.label for s in running.values()))
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            bar.clear()
            for future in finished:
                step = running.pop(future)
                try:
                    _record(future.result(), step, report, failed_checks, width, echo)
                except RunFailed as e:
                    failure = failure or e  # let the running ones finish, start nothing new
            statuses = stale_statuses(defs, instance, statuses, set(report.done) | set(report.skipped))
    if failure is not None:
        raise failure


def _quiet_libraries() -> None:
    """No per-model 'Loading weights' bars or deprecation notes from transformers between the lines."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _only_blocking_checks_failed(result) -> bool:
    """The run materialized its asset and failed only because a blocking check failed (Dagster then
    fails the step so that nothing downstream in the same run uses the asset)."""
    failures = [e for e in result.all_events if e.is_step_failure]
    return bool(result.get_asset_materialization_events()) and all(
        e.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError" for e in failures)


def _failure(result) -> str:
    """The innermost error message of the run's failed step (the user code's exception, not Dagster's wrapper)."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return error.message.strip()
    return "see the run's log (featureflow ui)"
