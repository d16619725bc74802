"""Sparse autoencoders on MLP activations: one module per architecture, a registry keyed by name.

- `relu`: Bricken et al. (2023) / Horn & Elliott (2024): ReLU encoder, L1 penalty, unit-norm decoder rows (`W_dec` is [d_sae, d_in]).
- `topk`: Gao et al. (2024): keep the k largest pre-activations per token.
- `batchtopk`: Bussmann et al. (2024): keep the k x batch largest pre-activations per batch;
  at inference a single threshold learned during training (a JumpReLU).

Every SAE saves in the SAELens layout (`cfg.json` + `sae_weights.safetensors`)."""

from featureflow_dagster.sae.base import SAE, SAEConfig, load_sae
from featureflow_dagster.sae.batchtopk import BatchTopKSAE
from featureflow_dagster.sae.relu import ReLUSAE
from featureflow_dagster.sae.topk import TopKSAE

SAE_REGISTRY: dict[str, type[SAE]] = {"relu": ReLUSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE}

__all__ = ["SAE", "SAEConfig", "SAE_REGISTRY", "ReLUSAE", "TopKSAE", "BatchTopKSAE", "load_sae"]
