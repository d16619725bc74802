"""The private Dagster APIs the shell (runner.py) cannot do without, in one place, each with why.

Dagster 1.13 (pinned) has no public function for these; everything else featureflow does with Dagster
goes through `import dagster as dg`. When a public equivalent appears, replace it here and nowhere else.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver
from dagster._core.definitions.observe import observe
from dagster._core.loader import LoadingContext
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus


def observe_sources(sources: list, instance: dg.DagsterInstance, run_config: dict, tags: dict[str, str]) -> None:
    """Observe observable source assets (lineage_config) as one run. `dg.materialize` refuses source
    assets, and the UI's *Observe* button calls this same function."""
    observe(sources, instance=instance, run_config=run_config, tags=tags)


def recorded_versions(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, str]:
    """The data version of the newest observation of every partition of the observable source `key` (two queries).
    Reading a version back out of an event log entry has no public function."""
    from dagster._core.definitions.data_version import extract_data_version_from_entry
    from dagster._core.events import DagsterEventType

    ids = instance.event_log_storage.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_OBSERVATION)
    if not ids:
        return {}
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())),
                                          limit=len(ids)).records
    out = {}
    for record in records:
        version = extract_data_version_from_entry(record.event_log_entry)
        if version is not None:
            out[record.partition_key] = version.value
    return out


class _InstanceLoadingContext(LoadingContext):
    """The batching context Dagster's stale-status resolver reads the instance through; the UI builds
    one per request (its workspace context), a process like ours holds one per resolver."""

    def __init__(self, instance: dg.DagsterInstance):
        self._instance = instance
        self._loaders = {}

    @property
    def instance(self) -> dg.DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


class _LatestRecords:
    """The newest data-version record of every partition of the partitioned assets (materializations; observations
    for observable sources), fetched with two queries per asset; what the stale-status resolver asks of the
    instance once or twice per partition and dependency (369 queries, 1.9 s, on the demo's 60 partitions)."""

    def __init__(self, instance: dg.DagsterInstance, graph):
        from dagster._core.events import DagsterEventType

        self.latest: dict = {}
        self.kinds: dict = {}  # asset key -> is_source of the records fetched for it
        for key in graph.get_all_asset_keys():
            node = graph.get(key)
            if not node.is_partitioned:
                continue
            source = bool(node.is_external)
            kind = DagsterEventType.ASSET_OBSERVATION if source else DagsterEventType.ASSET_MATERIALIZATION
            ids = instance.event_log_storage.get_latest_storage_id_by_partition(key, kind)
            self.kinds[key] = source
            if ids:
                fetch = instance.fetch_observations if source else instance.fetch_materializations
                for record in fetch(dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())),
                                    limit=len(ids)).records:
                    self.latest[(key, record.partition_key)] = record

    def answer(self, key, is_source, partition_key, before_cursor=None, after_cursor=None):
        """(True, record or None) where the prefetched records answer the query, else (False, None)."""
        if partition_key is None or self.kinds.get(key) is not is_source or (before_cursor and after_cursor):
            return False, None
        record = self.latest.get((key, partition_key))
        if after_cursor is not None:
            return True, record if record is not None and record.storage_id > after_cursor else None
        if before_cursor is None or record is None or record.storage_id < before_cursor:
            return True, record
        return False, None  # an older record than the newest: ask the instance


class _PrefetchedInstance:
    """The instance as the resolver reads it, its one per-partition query answered from `_LatestRecords`."""

    def __init__(self, instance: dg.DagsterInstance, records: _LatestRecords):
        self._instance, self._records = instance, records

    def __getattr__(self, name):
        return getattr(self._instance, name)

    def get_latest_data_version_record(self, key, is_source=None, partition_key=None, before_cursor=None,
                                       after_cursor=None):
        known, record = self._records.answer(key, is_source, partition_key, before_cursor, after_cursor)
        if known:
            return record
        return self._instance.get_latest_data_version_record(key, is_source, partition_key, before_cursor, after_cursor)


class _PrefetchedResolver(CachingStaleStatusResolver):
    def __init__(self, instance: dg.DagsterInstance, graph, records: _LatestRecords):
        super().__init__(instance, graph, _InstanceLoadingContext(instance))
        self._records = records
        self.instance_queryer  # built on the instance itself, before the resolver's reads go through the proxy
        self._instance = _PrefetchedInstance(instance, records)

    def _get_latest_data_version_record(self, key):
        node = self.asset_graph.get(key.asset_key)
        known, record = self._records.answer(key.asset_key, bool(node.is_external), key.partition_key)
        return record if known else super()._get_latest_data_version_record(key)


def stale_status_resolver(instance: dg.DagsterInstance, graph, prefetch: bool = True) -> CachingStaleStatusResolver:
    """Dagster's own answer to "is this partition MISSING, STALE or FRESH" (data versions, code
    versions, each dep's recorded version), the one the UI shows; there is no public entry to it.
    With `prefetch`, the newest record of every partition is read up front (a few queries per asset) and the
    resolver's per-partition questions about it are answered from memory; its other questions (an older record
    than the newest, unpartitioned assets) still go to the instance."""
    if not prefetch:
        return CachingStaleStatusResolver(instance, graph, _InstanceLoadingContext(instance))
    return _PrefetchedResolver(instance, graph, _LatestRecords(instance, graph))


def failed_check_partitions(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, limit: int = 1000) -> set[str | None]:
    """Partitions whose latest evaluation of `check_key` failed. Check history per partition is only
    in the event log storage's records."""
    latest: dict[str | None, AssetCheckExecutionRecordStatus] = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=limit):
        latest.setdefault(record.partition, record.status)  # newest first
    return {pk for pk, status in latest.items() if status == AssetCheckExecutionRecordStatus.FAILED}


def pool_info(instance: dg.DagsterInstance, pool: str):
    """The pool's slots and who holds them; None on an instance whose storage keeps no pools (an
    ephemeral instance, in tests). Pools are read through the event log storage only."""
    storage = instance.event_log_storage
    return storage.get_concurrency_info(pool) if storage.supports_global_concurrency_limits else None


def latest_event_id(instance: dg.DagsterInstance) -> int:
    """The storage id of the newest event in the instance's event log (0 when empty): anything that can change an
    automation condition's answer (a materialization, an observation, a run starting or ending, a check) moves it.
    The event log storage is the only place that knows it."""
    return instance.event_log_storage.get_maximum_record_id() or 0


def evaluation_clock() -> float:
    """Now, by the clock Dagster's automation conditions read (tests freeze it with Dagster's `freeze_time`)."""
    from dagster._time import get_current_timestamp

    return get_current_timestamp()


def next_cron_tick(cron: str, after: float) -> float:
    """The first tick of `cron` (UTC, as `AutomationCondition.cron_tick_passed` reads it) after the timestamp
    `after`. Dagster's cron iterator is not public."""
    from dagster._utils.schedules import cron_string_iterator

    return next(cron_string_iterator(after + 1e-3, cron, "UTC")).timestamp()


def evaluate_automation_tick(context: dg.SensorEvaluationContext, serialized_cursor: str | None,
                             selection: dg.AssetSelection, emit_backfills: bool = True):
    """One evaluation of every AutomationCondition in `selection`, exactly what Dagster's
    AutomationConditionSensorDefinition does on a tick evaluated in the code server (its `_evaluate`), from and to its
    serialized cursor: (run requests, new serialized cursor, evaluations for the UI's Automation tab). featureflow's
    sensor calls it only when something happened since the previous evaluation; Dagster's sensor has no such gate."""
    from dagster._core.definitions.automation_tick_evaluation_context import AutomationTickEvaluationContext
    from dagster._daemon.asset_daemon import (
        asset_daemon_cursor_from_instigator_serialized_cursor,
        asset_daemon_cursor_to_instigator_serialized_cursor,
    )

    graph = context.repository_def.asset_graph
    cursor = asset_daemon_cursor_from_instigator_serialized_cursor(serialized_cursor, graph)
    tick = AutomationTickEvaluationContext(
        evaluation_id=cursor.evaluation_id, instance=context.instance, asset_graph=graph, cursor=cursor,
        materialize_run_tags={}, observe_run_tags={}, auto_observe_asset_keys=set(), asset_selection=selection,
        emit_backfills=emit_backfills, logger=context.log)
    run_requests, new_cursor, evaluations = tick.evaluate()
    return run_requests, asset_daemon_cursor_to_instigator_serialized_cursor(new_cursor), evaluations
