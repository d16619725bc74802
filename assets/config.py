"""`lineage_config`: the lineage file's settings as an observable source, one partition per asset
partition (`<asset>/<partition>`), versioned by exactly the settings that change that partition's bytes
(`Lineage.config_versions`).

Every asset depends on its own config partition, so Dagster's data-version staleness is per
partition: editing one node's `sae:` makes that node's SAE stale and nothing else. Observing is
cheap and is what makes an edit visible: `featureflow` observes before planning, the UI has an
"Observe" button, and the daemon observes on the lineage's `schedule:`."""

from __future__ import annotations

import dagster as dg

from featureflow_dagster.lineage import Lineage
from featureflow_dagster.runner import POOL

CONFIG_KEY = dg.AssetKey("lineage_config")

# What every asset that uses the `device` resource declares, and no other asset: one slot of the
# instance's `gpu` pool (how many such steps run at once on one machine), and on Kubernetes
# (dagster-k8s's executor and run launcher read the `dagster-k8s/config` tag) a pod with one GPU,
# schedulable on nodes tainted for GPUs. CPU-only assets request no GPU.
K8S_GPU_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}
ON_DEVICE = {"pool": POOL, "op_tags": {"dagster-k8s/config": K8S_GPU_CONFIG}}

# Implementation versions: bump one when the code that writes that asset's bytes changes, so that
# Dagster marks every partition of it stale. Settings are versioned per partition by lineage_config.
CODE_VERSIONS = {
    "corpus": "1", "tokenizer": "1", "tokens": "1", "model": "1", "slerp_sweep": "1", "activation_store": "1",
    "sae": "2", "sae_transfer": "1", "feature_activations": "1", "feature_correlation": "1", "feature_flow": "2",
    "feature_examples": "3", "case_studies": "1", "feature_pages": "1",
    "autointerp": "1", "autointerp_summary": "1",
    "tasks": "1", "task_performance": "1", "circuits": "1", "cmap": "1",
}


def build_config_asset(lineage: Lineage, automation_condition: dg.AutomationCondition | None = None):
    keys = sorted(lineage.config_versions())

    @dg.observable_source_asset(
        key=CONFIG_KEY,
        partitions_def=dg.StaticPartitionsDefinition(keys),
        group_name="config",
        automation_condition=automation_condition,
        description="Settings of the lineage file, one partition per asset partition, versioned by the settings "
        "that change its bytes. Observe it after editing the lineage file (featureflow does so itself).",
    )
    def lineage_config() -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition(lineage.config_versions())

    return lineage_config


def config_dep(asset: str, partitions: list[str] | None = None) -> dg.AssetDep:
    """The dep of `asset` on its own config partitions (`partitions` None: an unpartitioned asset)."""
    if partitions is None:
        mapping = dg.SpecificPartitionsPartitionMapping([asset])
    else:
        mapping = dg.StaticPartitionMapping({f"{asset}/{p}": p for p in partitions})
    return dg.AssetDep(CONFIG_KEY, partition_mapping=mapping)
