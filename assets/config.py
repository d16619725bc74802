"""`lineage_config`: the lineage file's settings as an observable source, one partition per asset
partition (`<asset>/<partition>`, or `<asset>` for an unpartitioned one), versioned by exactly the
settings that change that partition's bytes: each asset's `Artefact.settings` (assets/spec.py).

Every asset depends on its own config partition, so Dagster's data-version staleness is per
partition: editing one node's `sae:` makes that node's SAE stale and nothing else. Observing is
cheap and is what makes an edit visible: `featureflow` observes before planning, the UI has an
"Observe" button, and the daemon observes on the lineage's `schedule:`."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import dagster as dg

from featureflow_dagster.lineage import Lineage

if TYPE_CHECKING:
    from featureflow_dagster.assets.spec import Artefact

CONFIG_KEY = dg.AssetKey("lineage_config")


def config_key(asset: str, partition: str | None) -> str:
    """The `lineage_config` partition of one asset partition."""
    return asset if partition is None else f"{asset}/{partition}"


def config_versions(lineage: Lineage, artefacts: list["Artefact"]) -> dict[str, str]:
    """A version per asset partition from exactly the settings that change its bytes; upstream
    artefacts enter through their own content-hash data versions, not here."""
    out = {}
    for artefact in artefacts:
        for partition, settings in artefact.settings(lineage).items():
            out[config_key(artefact.name, partition)] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return out


def build_config_asset(lineage: Lineage, artefacts: list["Artefact"], automation_condition: dg.AutomationCondition | None = None):
    versions = config_versions(lineage, artefacts)

    @dg.observable_source_asset(
        key=CONFIG_KEY,
        partitions_def=dg.StaticPartitionsDefinition(sorted(versions)),
        group_name="config",
        automation_condition=automation_condition,
        description="Settings of the lineage file, one partition per asset partition, versioned by the settings "
        "that change its bytes. Observe it after editing the lineage file (featureflow does so itself).",
    )
    def lineage_config() -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition(versions)

    return lineage_config


def config_dep(asset: str, partitions: list[str] | None = None) -> dg.AssetDep:
    """The dep of `asset` on its own config partitions (`partitions` None: an unpartitioned asset)."""
    if partitions is None:
        mapping = dg.SpecificPartitionsPartitionMapping([asset])
    else:
        mapping = dg.StaticPartitionMapping({config_key(asset, p): p for p in partitions})
    return dg.AssetDep(CONFIG_KEY, partition_mapping=mapping)
