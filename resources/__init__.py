"""Dagster resources: the things with lifetimes (artefact store, compute device, LLM endpoint)."""

from featureflow_dagster.resources.device import DeviceResource
from featureflow_dagster.resources.llm import LLMResource
from featureflow_dagster.resources.store import ArtifactStore, PartitionBusy

__all__ = ["ArtifactStore", "DeviceResource", "LLMResource", "PartitionBusy"]
