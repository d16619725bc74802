"""`Artefact`: everything an asset declares about itself besides its body, next to that body.

Each asset module defines one `Artefact` per asset (its name, group, code version, where it lives in
the store, the lineage settings that version each partition, the key figures the shell prints) and
builds its `@dg.asset` with `Artefact.asset`, which adds the dep on its own `lineage_config`
partitions, the `gpu` pool and GPU request of a device step, and the partition lock. From the list of
them (`assets/__init__.py: ARTEFACTS`) come `lineage_config`'s partitions and versions, the shell's key
figures and the store's layout; nothing else lists asset keys. docs/architecture.md has the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from featureflow_dagster.lineage import Lineage
from featureflow_dagster.provenance import versions
from featureflow_dagster.resources import ArtifactStore
from featureflow_dagster.runs import KEY_FIGURES_METADATA, POOL
from featureflow_dagster.assets.config import config_dep
from featureflow_dagster.assets.guard import locked

# What every asset that uses the `device` resource declares, and no other asset: one slot of the
# instance's `gpu` pool (how many such steps run at once on one machine), and on Kubernetes
# (dagster-k8s's executor and run launcher read the `dagster-k8s/config` tag) a pod with one GPU,
# schedulable on nodes tainted for GPUs. CPU-only assets request no GPU.
K8S_GPU_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}
ON_DEVICE = {"pool": POOL, "op_tags": {"dagster-k8s/config": K8S_GPU_CONFIG}}


def nodes(lineage: Lineage, settings: Callable[[str], Any]) -> dict[str, Any]:
    """Settings per node partition."""
    return {n: settings(n) for n in lineage.node_names}


def edges(lineage: Lineage, settings: Callable[[str, str], Any]) -> dict[str, Any]:
    """Settings per edge partition (`parent__child`)."""
    return {e.key: settings(e.parent, e.child) for e in lineage.edges()}


@dataclass(frozen=True)
class Artefact:
    name: str  # the asset key's first part: `sae`, or `model` for the per-node assets model/<node>
    group: str
    code_version: str  # bump when the code that writes its bytes changes: every partition goes stale
    place: str  # where it lives under the store's root; `{key}` is the partition key
    # the lineage settings that change each partition's bytes, by partition key (None: unpartitioned);
    # a partition missing here has no config partition (the asset is not built for it)
    settings: Callable[[Lineage], dict[str | None, Any]]
    key_figures: tuple[str, ...] = ()  # metadata the shell prints on the partition's line
    kinds: frozenset[str] = field(default_factory=frozenset)
    on_device: bool = False  # uses the `device` resource: takes a gpu pool slot, asks Kubernetes for a GPU
    description: str = ""

    def at(self, store: ArtifactStore, key: str | None = None, fetch: bool = True) -> Path:
        """The artefact of partition `key` in `store` (see ArtifactStore.at for `fetch`)."""
        if "{key}" in self.place and key is None:
            raise ValueError(f"{self.name} is partitioned: say which partition's artefact")
        return store.at(self.place.format(key=key), fetch)

    def result(self, path: Path, version: str, metadata: dict, check_results: list | None = None) -> dg.MaterializeResult:
        """What an asset body returns: the artefact's `version` (a content hash, so that a partition
        re-materialized to the same bytes leaves its children fresh), its path first in the metadata
        and the package versions last."""
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version), check_results=check_results,
            metadata={"path": dg.MetadataValue.path(str(path)), **metadata, "versions": dg.MetadataValue.json(versions())})

    def asset(self, *, deps: list, partitions_def: dg.PartitionsDefinition | None = None, key: dg.AssetKey | None = None,
              description: str | None = None, check_specs: list[dg.AssetCheckSpec] | None = None,
              kinds: set[str] | None = None):
        """`@dg.asset` of this artefact around a body `(context, store, ...)`, run holding its partition's lock."""
        partitions = partitions_def.get_partition_keys() if partitions_def is not None else None

        def decorate(fn):
            return dg.asset(
                key=key or dg.AssetKey(self.name),
                partitions_def=partitions_def,
                deps=[*deps, config_dep(self.name, partitions)],
                group_name=self.group,
                kinds=kinds or set(self.kinds) or None,
                code_version=self.code_version,
                description=description or self.description,
                check_specs=check_specs,
                metadata={KEY_FIGURES_METADATA: list(self.key_figures)} if self.key_figures else None,
                **(ON_DEVICE if self.on_device else {}),
            )(locked(fn))

        return decorate
