"""ReLU SAE with an L1 penalty (Bricken et al. 2023; Horn & Elliott 2024, λ = 3e-4).

loss = mean over elements of (x̂ − x)² + λ · mean over tokens of ‖f‖₁ (a sum over features)."""

from __future__ import annotations

import torch

from featureflow_dagster.sae.base import SAE, SAEConfig


class ReLUSAE(SAE):
    architecture = "relu"
    saelens_architecture = "standard"

    def __init__(self, cfg: SAEConfig, seed: int = 0, l1_coefficient: float = 3e-4):
        super().__init__(cfg, seed)
        self.l1_coefficient = l1_coefficient

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def loss(self, x, f, x_hat):
        out = super().loss(x, f, x_hat)
        l1 = f.sum(dim=-1).mean()  # f >= 0 after the ReLU, so this is ‖f‖₁ without abs()
        out["l1"] = l1
        out["loss"] = out["mse"] + self.l1_coefficient * l1
        return out
