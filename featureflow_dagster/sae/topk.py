"""TopK SAE (Gao et al. 2024): per token, only the k largest pre-activations survive (then ReLU),
trained with the AuxK loss that revives dead latents.

AuxK (Gao et al. 2024, §A.2; as SAELens and EleutherAI's sparsify): the k_aux = d_in / 2 largest
pre-activations among *dead* latents (unfired for the trainer's dead window) reconstruct the main
reconstruction's residual e = x_n − x̂_n (detached), ê = z_aux W_dec (no bias); the term
α · min(n_dead / k_aux, 1) · mean((ê − e)²) is added to the loss (α = 1/32 in the paper; mean over
elements, like the MSE here)."""

from __future__ import annotations

import torch

from featureflow_dagster.sae.base import SAE, SAEConfig


def auxk_loss(sae: SAE, xn: torch.Tensor, xn_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor | None,
              coefficient: float) -> torch.Tensor | float:
    """The AuxK term for pre-activations [batch, d_sae] and a dead mask [d_sae] (0 when none is dead)."""
    if dead is None or coefficient == 0:
        return 0.0
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0.0
    k_aux = max(1, sae.cfg.d_in // 2)
    scale = min(n_dead / k_aux, 1.0)
    k_aux = min(k_aux, n_dead)
    residual = (xn - xn_hat).detach()
    values, indices = torch.where(dead[None], pre, -torch.inf).topk(k_aux, dim=-1, sorted=False)
    z = torch.zeros_like(pre).scatter_(-1, indices, values)
    return coefficient * scale * ((z @ sae.W_dec - residual) ** 2).mean()


class TopKSAE(SAE):
    architecture = "topk"
    saelens_architecture = "topk"

    def __init__(self, cfg: SAEConfig, seed: int = 0, aux_k_coefficient: float = 1 / 32):
        super().__init__(cfg, seed)
        self.aux_k_coefficient = aux_k_coefficient

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        k = self.cfg.k
        if k is None:
            raise ValueError("a topk SAE needs k (active features per token)")
        values, indices = pre.topk(k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))

    def sparsity_loss(self, out, xn, pre, f, xn_hat, dead, sparsity_scale):
        aux = auxk_loss(self, xn, xn_hat, pre, dead, self.aux_k_coefficient)
        out["auxk"] = torch.as_tensor(aux)
        return aux

    def training_losses(self, xn, dead=None, sparsity_scale=1.0):
        """The base class's losses, with the decoder read sparsely: x̂_n = Σ_j f_j W_dec[j] + b_dec over
        the k kept features (an embedding bag: batch·k·d_in work instead of batch·d_sae·d_in; the same
        numbers, tested). The returned f carries no gradient; the trainer only counts firings with it."""
        pre = self.pre_activations_normalized(xn)
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        values = torch.relu(values)
        xn_hat = torch.nn.functional.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
        mse = ((xn_hat - xn) ** 2).mean()
        out = {"mse": mse}
        out["loss"] = mse + self.sparsity_loss(out, xn, pre, None, xn_hat, dead, sparsity_scale)
        with torch.no_grad():
            f = torch.zeros_like(pre).scatter_(-1, indices, values)
        return f, out

    def saelens_config(self) -> dict:
        # Decoder rows are unit norm in training; folded with the input scale they all have norm 1/s,
        # which rescales every pre-activation alike, so SAELens may rescale by them or not.
        return {**super().saelens_config(), "k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
