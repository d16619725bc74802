"""ReLU SAE with an L1 penalty (Bricken et al. 2023; Horn & Elliott 2024, λ = 3e-4).

loss = mean over elements of (x̂ − x)² + λ · mean over tokens of ‖f‖₁ (a sum over features).

Two decoder treatments:
- `unit_norm` (the paper's): decoder rows held at unit norm (projected gradient, renormalised every step).
- `free` (Anthropic's April 2024 update, SAELens's standard trainer): decoder rows start at norm 0.1 and
  move freely; the penalty weights each feature by its decoder-row norm, λ · Σ_i f_i ‖W_dec,i‖, so
  shrinking f while growing the row does not evade it.
"""

from __future__ import annotations

from typing import Literal

import torch

from featureflow_dagster.sae.base import SAE, SAEConfig


class ReLUSAE(SAE):
    architecture = "relu"
    saelens_architecture = "standard"

    def __init__(self, cfg: SAEConfig, seed: int = 0, l1_coefficient: float = 3e-4,
                 decoder_constraint: Literal["unit_norm", "free"] = "unit_norm"):
        if decoder_constraint not in ("unit_norm", "free"):
            raise ValueError(f"decoder_constraint must be 'unit_norm' or 'free', not {decoder_constraint!r}")
        super().__init__(cfg, seed, decoder_init_norm=1.0 if decoder_constraint == "unit_norm" else 0.1)
        self.l1_coefficient = l1_coefficient
        self.unit_norm_decoder = decoder_constraint == "unit_norm"

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def sparsity_loss(self, out, xn, pre, f, xn_hat, dead, sparsity_scale):
        # f >= 0 after the ReLU, so a plain sum is ‖f‖₁ without abs().
        l1 = f.sum(dim=-1).mean() if self.unit_norm_decoder else (f @ self.W_dec.norm(dim=1)).mean()
        out["l1"] = l1
        return self.l1_coefficient * sparsity_scale * l1
