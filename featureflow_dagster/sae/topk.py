"""TopK SAE (Gao et al. 2024): per token, only the k largest pre-activations survive (then ReLU)."""

from __future__ import annotations

import torch

from featureflow_dagster.sae.base import SAE


class TopKSAE(SAE):
    architecture = "topk"
    saelens_architecture = "topk"

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        k = self.cfg.k
        if k is None:
            raise ValueError("a topk SAE needs k (active features per token)")
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def saelens_config(self) -> dict:
        return {**super().saelens_config(), "k": self.cfg.k}
