"""Dagster resources: the things with lifetimes (artefact store, compute device)."""

from featureflow_dagster.resources.device import DeviceResource
from featureflow_dagster.resources.store import ArtifactStore, PartitionBusy

__all__ = ["ArtifactStore", "DeviceResource", "PartitionBusy"]
