"""The Dagster definitions of one lineage: the only module of the library that builds `dg.Definitions`.

`dagster dev -m featureflow_dagster.definitions` and `dagster asset materialize -m
featureflow_dagster.definitions` load `defs`, built from FEATUREFLOW_LINEAGE (see `instance.py`).
"""

from __future__ import annotations

import dagster as dg

from featureflow_dagster.assets import build_assets
from featureflow_dagster.instance import device_name, featureflow_home
from featureflow_dagster.lineage import Lineage, load_lineage
from featureflow_dagster.resources import ArtifactStore, DeviceResource


def build_definitions(lineage: Lineage | None = None, home: str | None = None, device: str | None = None) -> dg.Definitions:
    lineage = lineage or load_lineage()
    return dg.Definitions(
        assets=build_assets(lineage),
        resources={
            "store": ArtifactStore(root=str(home or featureflow_home(lineage.name)), lineage_name=lineage.name),
            "device": DeviceResource(device=device or device_name()),
        },
    )


defs = build_definitions()


# ---------------------------------------------------------------------------------------------
# Running a lineage from the shell (`featureflow materialize`): every asset partition in
# dependency order, skipping those Dagster reports fresh (same code version, same upstream data
# versions), so a changed fine-tune recomputes only what depends on it.
# ---------------------------------------------------------------------------------------------


def materialization_plan(defs: dg.Definitions) -> list[tuple[dg.AssetKey, str | None]]:
    """(asset key, partition key) pairs in an order where every upstream comes first."""
    graph = defs.resolve_asset_graph()
    order = graph.toposorted_asset_keys
    plan = []
    for key in order:
        partitions = graph.get(key).partitions_def
        if partitions is None:
            plan.append((key, None))
        else:
            plan.extend((key, pk) for pk in partitions.get_partition_keys())
    return plan


def stale_statuses(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[tuple[dg.AssetKey, str | None], str]:
    """'MISSING', 'STALE' or 'FRESH' for every (asset, partition), in dependency order.

    Dagster's own status marks a partition stale when a *direct* upstream changed (data or code
    version). Here staleness is also passed down: a partition below a stale or missing one is stale
    too, so re-materializing a base shows every descendant, not only its children, as out of date."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    out: dict[tuple[dg.AssetKey, str | None], str] = {}
    for key, pk in materialization_plan(defs):
        status = resolver.get_status(key, pk).value
        if status == "FRESH":
            parents = graph.get_parents_partitions(key, pk).parent_partitions
            if any(out.get((p.asset_key, p.partition_key), "FRESH") != "FRESH" for p in parents):
                status = "STALE"
        out[(key, pk)] = status
    return out


def materialize_lineage(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    only: set[dg.AssetKey] | None = None,
    partitions: set[str] | None = None,
    force: bool = False,
    echo=print,
) -> list[tuple[dg.AssetKey, str | None]]:
    """Materialize missing or stale partitions (all with `force`) in dependency order, one run each.

    `only`/`partitions` restrict the plan; returns what was materialized. Raises on the first failure."""
    assets = list(defs.assets)
    resources = defs.resources
    done = []
    statuses = stale_statuses(defs, instance)
    for key, pk in materialization_plan(defs):
        if only is not None and key not in only:
            continue
        if partitions is not None and pk is not None and pk not in partitions:
            continue
        status = statuses[(key, pk)]
        label = key.to_user_string() + (f"[{pk}]" if pk else "")
        if status == "FRESH" and not force:
            echo(f"fresh    {label}")
            continue
        echo(f"{status.lower():8} {label}: materializing")
        result = dg.materialize(
            assets, selection=[key], partition_key=pk, instance=instance, resources=resources, raise_on_error=True
        )
        if not result.success:
            raise RuntimeError(f"materializing {label} failed; see the run logs (featureflow ui)")
        done.append((key, pk))
        statuses = stale_statuses(defs, instance)  # what this run changed decides what is stale below
    return done
