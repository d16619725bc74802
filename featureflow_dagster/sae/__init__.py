"""Sparse autoencoders on MLP activations: one module per architecture, a registry keyed by name.

- `relu`: Bricken et al. (2023) / Horn & Elliott (2024): ReLU encoder, L1 penalty, unit-norm decoder rows (`W_dec` is [d_sae, d_in]).
- `topk`: Gao et al. (2024): keep the k largest pre-activations per token.
- `batchtopk`: Bussmann et al. (2024): keep the k x batch largest pre-activations per batch;
  at inference a single threshold learned during training (a JumpReLU).

Every SAE saves in the SAELens layout (`cfg.json` + `sae_weights.safetensors`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The names below load their module (and torch) on first use, so that `featureflow_dagster.sae.checks` (the quality
# bars, which the asset definitions read) imports without torch (PEP 562).
_EXPORTS = {"SAE": "base", "SAEConfig": "base", "load_sae": "base", "BatchTopKSAE": "batchtopk", "ReLUSAE": "relu",
            "TopKSAE": "topk"}

if TYPE_CHECKING:
    from featureflow_dagster.sae.base import SAE, SAEConfig, load_sae
    from featureflow_dagster.sae.batchtopk import BatchTopKSAE
    from featureflow_dagster.sae.relu import ReLUSAE
    from featureflow_dagster.sae.topk import TopKSAE


def __getattr__(name: str):
    if name == "SAE_REGISTRY":
        registry: dict[str, type[SAE]] = {"relu": __getattr__("ReLUSAE"), "topk": __getattr__("TopKSAE"),
                                          "batchtopk": __getattr__("BatchTopKSAE")}
        globals()["SAE_REGISTRY"] = registry
        return registry
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"featureflow_dagster.sae.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featureflow_dagster.sae' has no attribute '{name}'")


__all__ = ["SAE", "SAEConfig", "SAE_REGISTRY", "ReLUSAE", "TopKSAE", "BatchTopKSAE", "load_sae"]
