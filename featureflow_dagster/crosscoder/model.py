"""A BatchTopK crosscoder over two models' activations (Minder et al. 2025's recipe, scaled to the inputs).

Inputs x_m [tokens, d_in] per model m (0 = parent, 1 = child), each normalised by a constant so that its mean
norm is sqrt(d_in) (`fit_scales`), as the paper does per model. Encoder: pre = relu(sum_m (x_m - b_dec_m) W_enc_m
+ b_enc); BatchTopK keeps the k x batch largest values of the batch (inference: a single threshold θ, the running
mean of the smallest kept value, as featureflow's BatchTopK SAE). Decoder per model: x̂_m = f W_dec_m + b_dec_m.
Loss: sum over models of the mean squared error, plus AuxK (Gao et al. 2024) on latents unfired for a window,
reconstructing both models' residuals. Adam, linear warm-up and linear decay to zero over the last fifth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn


class BatchTopKCrosscoder(nn.Module):
    def __init__(self, d_in: int, d_latent: int, k: int, n_models: int = 2, seed: int = 0, aux_k_coefficient: float = 1 / 32,
                 threshold_momentum: float = 0.01):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.d_in, self.d_latent, self.k, self.n_models = d_in, d_latent, k, n_models
        dec = torch.nn.functional.normalize(torch.randn(d_latent, n_models, d_in, generator=g), dim=-1) / n_models ** 0.5
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.permute(1, 2, 0).clone())  # [models, d_in, latents]: the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(d_latent))
        self.b_dec = nn.Parameter(torch.zeros(n_models, d_in))
        self.register_buffer("scales", torch.ones(n_models))
        self.register_buffer("threshold", torch.zeros(()))
        self.aux_k_coefficient, self.threshold_momentum = aux_k_coefficient, threshold_momentum

    def fit_scales(self, xs: list[torch.Tensor]) -> None:
        """Per model the constant that brings its mean activation norm to sqrt(d_in)."""
        for m, x in enumerate(xs):
            self.scales[m] = self.d_in ** 0.5 / x.float().norm(dim=1).mean().clamp_min(1e-12)

    def pre(self, xs: torch.Tensor) -> torch.Tensor:
        """xs [tokens, models, d_in], normalised -> pre-activations [tokens, latents]."""
        return torch.relu(torch.einsum("tmd,mdh->th", xs - self.b_dec, self.W_enc) + self.b_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return pre * (pre > self.threshold)
        flat = pre.reshape(-1)
        values, indices = flat.topk(min(flat.numel(), self.k * pre.shape[0]), sorted=False)
        f = torch.zeros_like(flat).scatter(0, indices, values).reshape(pre.shape)
        with torch.no_grad():
            positive = values[values > 0]
            if positive.numel():
                self.threshold.mul_(1 - self.threshold_momentum).add_(self.threshold_momentum * positive.min())
        return f

    def normalise(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([x.float() * self.scales[m] for m, x in enumerate(xs)], dim=1)

    def encode(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Latent activations [tokens, latents] of raw activations, one tensor per model."""
        return self.activate(self.pre(self.normalise(xs)))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Normalised reconstructions [tokens, models, d_in]."""
        return torch.einsum("th,hmd->tmd", f, self.W_dec) + self.b_dec

    def losses(self, xs: torch.Tensor, dead: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        pre = self.pre(xs)
        f = self.activate(pre)
        x_hat = self.decode(f)
        mse = ((x_hat - xs) ** 2).sum(-1).mean(0)  # per model
        loss = mse.sum()
        aux = torch.zeros(())
        if dead is not None and dead.any() and self.aux_k_coefficient:
            k_aux = min(self.d_in // 2, int(dead.sum()))
            values, indices = torch.where(dead[None], pre, -torch.inf).topk(k_aux, dim=-1, sorted=False)
            z = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
            residual = (xs - x_hat).detach()
            aux_hat = torch.einsum("th,hmd->tmd", z, self.W_dec)
            aux = self.aux_k_coefficient * min(int(dead.sum()) / max(1, self.d_in // 2), 1.0) * ((aux_hat - residual) ** 2).sum(-1).mean()
            loss = loss + aux
        return loss, {"f": f, "mse": mse.detach(), "aux": float(aux.detach())}

    @torch.no_grad()
    def reconstruct(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Reconstructions in each model's own units [tokens, models, d_in]."""
        return self.decode(self.encode(xs)) / self.scales[None, :, None]


@dataclass
class CrosscoderTraining:
    steps: int
    tokens: int
    seconds: float
    curve: list[dict] = field(default_factory=list)
    dead_fraction: float = 0.0


def train_crosscoder(cc: BatchTopKCrosscoder, batches: Callable[[], Iterable[list[torch.Tensor]]], steps: int, lr: float,
                     device: torch.device, warmup_fraction: float = 0.05, decay_fraction: float = 0.2,
                     dead_window_tokens: int = 100_000, log: Callable[[str], None] | None = None) -> CrosscoderTraining:
    """Train in place on `batches()` (each a list of one raw activation tensor per model, the same tokens)."""
    import time

    cc.to(device).train()
    opt = torch.optim.Adam(cc.parameters(), lr=lr, betas=(0.9, 0.999))
    warm, decay = round(warmup_fraction * steps), round(decay_fraction * steps)
    last = torch.zeros(cc.d_latent, dtype=torch.long, device=device)
    seen, curve, started = 0, [], time.perf_counter()
    for step, xs in zip(range(steps), batches()):
        factor = min(1.0, (step + 1) / warm) if warm else 1.0
        if decay and step >= steps - decay:
            factor *= (steps - step) / decay
        for group in opt.param_groups:
            group["lr"] = lr * factor
        x = cc.normalise([t.to(device) for t in xs])
        dead = (seen - last) >= dead_window_tokens
        loss, out = cc.losses(x, dead)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += x.shape[0]
        with torch.no_grad():
            last.masked_fill_(out["f"].amax(0) > 0, seen)
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"crosscoder step {step + 1}/{steps}: mse {out['mse'].tolist()}")
        if (step + 1) % max(1, steps // 50) == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "mse_parent": float(out["mse"][0]), "mse_child": float(out["mse"][-1]),
                          "l0": float((out["f"] > 0).sum()) / out["f"].shape[0]})
    cc.eval()
    dead = ((seen - last) >= min(dead_window_tokens, seen)).float().mean()
    return CrosscoderTraining(steps, seen, time.perf_counter() - started, curve, float(dead))
