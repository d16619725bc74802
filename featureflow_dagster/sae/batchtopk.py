"""BatchTopK SAE (Bussmann et al. 2024): the k × batch largest pre-activations of a whole batch
survive, so tokens share a sparsity budget. At inference a single threshold θ replaces the batch:
f = pre · 1[pre > θ] (a JumpReLU), θ the running mean of the smallest kept activation in training.
Trained with the AuxK loss like TopK. Saved for SAELens as a `jumprelu` SAE with that threshold for
every feature."""

from __future__ import annotations

import torch

from featureflow_dagster.sae.base import SAE, SAEConfig
from featureflow_dagster.sae.topk import TopKSAE


class BatchTopKSAE(SAE):
    architecture = "batchtopk"
    saelens_architecture = "jumprelu"

    def __init__(self, cfg: SAEConfig, seed: int = 0, threshold_momentum: float = 0.01, aux_k_coefficient: float = 1 / 32):
        super().__init__(cfg, seed)
        self.register_buffer("threshold", torch.zeros(()))
        self.threshold_momentum = threshold_momentum
        self.aux_k_coefficient = aux_k_coefficient

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.cfg.k is None:
            raise ValueError("a batchtopk SAE needs k (mean active features per token)")
        if not self.training:
            return pre * (pre > self.threshold)
        pre = torch.relu(pre)
        flat = pre.reshape(-1)
        n_keep = min(flat.numel(), self.cfg.k * pre.shape[0])
        values, indices = flat.topk(n_keep, sorted=False)
        f = torch.zeros_like(flat).scatter(0, indices, values).reshape(pre.shape)
        with torch.no_grad():
            positive = values[values > 0]
            if positive.numel():
                smallest = positive.min()
                self.threshold.mul_(1 - self.threshold_momentum).add_(self.threshold_momentum * smallest)
        return f

    sparsity_loss = TopKSAE.sparsity_loss  # the same AuxK term

    def saelens_state(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_state(), "threshold": self.threshold.detach().expand(self.cfg.d_sae).clone()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if "threshold" in state:
            self.threshold.copy_(state["threshold"].reshape(-1)[0])
