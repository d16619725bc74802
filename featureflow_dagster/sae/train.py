"""SAE training: Adam, a learning rate with optional linear warm-up and linear decay to zero, an
optional linear warm-up of the sparsity penalty, unit-norm decoder rows (where the architecture keeps
them), dead-feature tracking (fed to AuxK), optional resampling (Bricken et al. 2023), resumable
checkpoints.

Per step, in the SAE's normalised space x_n = (x − data_mean)·s: f, losses = training_losses(x_n),
backward, remove the gradient component parallel to each decoder row, Adam step, renormalize rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from featureflow_dagster.sae.base import SAE
from featureflow_dagster.storage import atomic_file


@dataclass
class SAETrainResult:
    steps: int
    tokens_seen: int
    seconds: float
    curve: list[dict] = field(default_factory=list)  # step; loss, mse: means over the log window; l0: that step's batch
    dead_fraction: float = 0.0  # features unfired for the last dead_window_tokens at the end
    resampled: int = 0
    resumed_from_step: int = 0


@torch.no_grad()
def resample_dead(sae: SAE, optimizer: torch.optim.Adam, dead: torch.Tensor, xn: torch.Tensor, seed: int) -> int:
    """Anthropic's resampling (Bricken et al. 2023): each dead feature is re-pointed at a normalised
    input x_n [batch, d_in] drawn with probability ∝ its squared reconstruction error; encoder rows
    get 0.2 × the mean alive encoder norm, encoder bias 0, and their Adam state is reset."""
    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return 0
    err = ((sae.decode_normalized(sae.activate(sae.pre_activations_normalized(xn))) - xn) ** 2).sum(-1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    picks = torch.multinomial(err.cpu() + 1e-12, idx.numel(), replacement=True, generator=g).to(xn.device)
    directions = xn[picks] - sae.b_dec
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    alive = ~dead
    scale = 0.2 * (sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else 1.0)
    sae.W_dec[idx] = directions
    sae.W_enc[:, idx] = directions.T * scale
    sae.b_enc[idx] = 0.0
    for p, index_dim in ((sae.W_dec, 0), (sae.W_enc, 1), (sae.b_enc, 0)):
        state = optimizer.state.get(p)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].index_fill_(index_dim, idx, 0.0)
    return int(idx.numel())


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, decay_steps: int = 0) -> float:
    """Learning-rate factor at 0-based `step`: linear from 1/warmup to 1 over the first `warmup_steps`,
    1, then linear to 0 over the last `decay_steps` (Anthropic's April 2024 update decays over the
    final 20%)."""
    factor = 1.0
    if warmup_steps and step < warmup_steps:
        factor = (step + 1) / warmup_steps
    if decay_steps and step >= total_steps - decay_steps:
        factor = min(factor, (total_steps - step) / decay_steps)
    return factor


def train_sae(
    sae: SAE,
    batches: Callable[[int], Iterable[torch.Tensor]],
    total_steps: int,
    lr: float,
    betas: tuple[float, float],
    device: torch.device,
    seed: int = 0,
    dead_window_tokens: int = 1_000_000,
    resample_dead_every: int | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_every: int = 500,
    fingerprint: str = "",
    log: Callable[[str], None] | None = None,
    stop_after_step: int | None = None,
    lr_warmup_steps: int = 0,
    lr_decay_steps: int = 0,
    sparsity_warmup_steps: int = 0,
) -> SAETrainResult:
    """Train `sae` in place. `batches(start_step)` yields raw activation batches [tokens, d_in] from
    that step on (so a resumed run sees exactly the batches it would have); the SAE's own
    `normalize` maps them to its training space."""
    sae.to(device).train()
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=betas, fused=True)
    last_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    start, curve, tokens_seen, resampled = 0, [], 0, 0
    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            sae.load_state_dict(state["sae"])
            opt.load_state_dict(state["optimizer"])
            last_fired = state["last_fired"].to(device)
            start, tokens_seen, resampled = int(state["step"]), int(state["tokens_seen"]), int(state["resampled"])
            curve = list(state["curve"])
            if log:
                log(f"resuming SAE training from {checkpoint_path} at step {start}/{total_steps}")
    log_every = max(1, total_steps // 50)
    window: list[tuple[float, float, float]] = []
    done = start
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start, desc="sae", unit="step", disable=None)
    for step, x in zip(range(start, total_steps), batches(start)):
        for group in opt.param_groups:
            group["lr"] = lr * lr_multiplier(step, total_steps, lr_warmup_steps, lr_decay_steps)
        sparsity_scale = min(1.0, (step + 1) / sparsity_warmup_steps) if sparsity_warmup_steps else 1.0
        dead_now = (tokens_seen - last_fired) >= dead_window_tokens
        xn = sae.normalize(x.to(device))
        f, losses = sae.training_losses(xn, dead_now, sparsity_scale)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        sae.remove_parallel_gradient()
        opt.step()
        sae.normalize_decoder()
        tokens_seen += xn.shape[0]
        with torch.no_grad():
            fired = f.detach().amax(0) > 0  # f >= 0 for every architecture here
            last_fired.masked_fill_(fired, tokens_seen)
            window.append((float(losses["loss"]), float(losses["mse"])))
        done = step + 1
        if resample_dead_every and done % resample_dead_every == 0 and done < total_steps:
            dead = (tokens_seen - last_fired) >= dead_window_tokens
            n = resample_dead(sae, opt, dead, xn, seed + done)
            last_fired[dead] = tokens_seen
            resampled += n
            if log and n:
                log(f"step {done}: resampled {n} dead features")
        if done % log_every == 0 or done == total_steps:
            means = [sum(v) / len(v) for v in zip(*window)]
            with torch.no_grad():  # L0 of this step's batch only: counting every step costs more than Adam
                means.append(float((f > 0).sum()) / f.shape[0])
            curve.append({"step": done, "loss": means[0], "mse": means[1], "l0": means[2]})
            window = []
            bar.set_postfix(mse=f"{means[1]:.2e}", l0=f"{means[2]:.1f}")
            if log:
                log(f"sae step {done}/{total_steps} loss {means[0]:.4e} mse {means[1]:.4e} L0 {means[2]:.1f}")
        bar.update(1)
        if checkpoint_path is not None and done % checkpoint_every == 0 and done < total_steps:
            with atomic_file(checkpoint_path) as tmp:
                torch.save(
                    {"fingerprint": fingerprint, "sae": sae.state_dict(), "optimizer": opt.state_dict(),
                     "last_fired": last_fired.cpu(), "step": done, "tokens_seen": tokens_seen,
                     "resampled": resampled, "curve": curve},
                    tmp,
                )
        if stop_after_step is not None and done >= stop_after_step:
            break
    bar.close()
    dead = ((tokens_seen - last_fired) >= min(dead_window_tokens, tokens_seen)).float().mean()
    return SAETrainResult(done, tokens_seen, time.perf_counter() - t0, curve, float(dead), resampled, start)
