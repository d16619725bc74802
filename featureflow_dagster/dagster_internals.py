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


def stale_status_resolver(instance: dg.DagsterInstance, graph) -> CachingStaleStatusResolver:
    """Dagster's own answer to "is this partition MISSING, STALE or FRESH" (data versions, code
    versions, each dep's recorded version), the one the UI shows; there is no public entry to it."""
    return CachingStaleStatusResolver(instance, graph, _InstanceLoadingContext(instance))


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
