"""Crosscoders over a lineage edge (Lindsey et al. 2024, Anthropic; Minder et al. 2025, BatchTopK crosscoders with
Latent Scaling, as the diffing-toolkit trains them): one dictionary over the parent's and the child's activations
at the same hook on the same tokens, with a decoder per model. Shared latents decode into both models; a latent
whose decoder norm is (nearly) zero in one model belongs to the other. No matching step.

- `model`: the BatchTopK crosscoder and its trainer;
- `analysis`: per latent the relative decoder norm Δ, its class, the cosine of its two decoder vectors, and
  Latent Scaling ν for the model-specific latents.
"""

from featureflow_dagster.crosscoder.analysis import (
    DEFAULT_CLASSES, classify_latents, latent_scaling, latent_table, relative_norm
)
from featureflow_dagster.crosscoder.model import BatchTopKCrosscoder, train_crosscoder

__all__ = ["DEFAULT_CLASSES", "BatchTopKCrosscoder", "classify_latents", "latent_scaling", "latent_table", "relative_norm",
           "train_crosscoder"]
