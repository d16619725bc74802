"""What a crosscoder says about an edge, per latent j (d_j^p, d_j^c its parent and child decoder vectors):

- Δ_j = ½((‖d_j^p‖ − ‖d_j^c‖) / max(‖d_j^p‖, ‖d_j^c‖) + 1): 1 parent-only, 0 child-only, ½ shared;
- its class by Δ (`DEFAULT_CLASSES`, Minder et al. 2025's bands): parent-only Δ > 0.9, child-only Δ < 0.1, shared
  0.4 <= Δ <= 0.6, else other;
- the cosine between d_j^p and d_j^c (a shared latent pointing two ways is not the same direction);
- Latent Scaling (Minder et al. 2025) for the model-specific latents: with f_j the latent's activations and d its
  decoder vector in the model it belongs to, β(y) = Σ_t f_t (d · y_t) / (‖d‖² Σ_t f_t²) is the scale that best
  explains targets y_t by f_t d in closed form. On the error target (each model's residual with latent j's own
  contribution put back, ε^-j = x − x̂ + f_j d_j^model) and on the reconstruction target (the reconstruction
  without latent j, x̂^-j), ν = β(other model) / β(own model): near 0 when the other model holds nothing of
  the latent's direction where it fires (truly specific), near 1 when it does (an artefact of sparsity: the
  other model's error or another latent carries it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

DEFAULT_CLASSES = {"parent_only_above": 0.9, "child_only_below": 0.1, "shared_within": (0.4, 0.6)}
LATENT_CLASSES = ("parent_only", "shared", "child_only", "other")  # what `classify_latents` names (a latent table adds "dead")


def relative_norm(w_dec: torch.Tensor) -> np.ndarray:
    """Δ per latent from decoders [latents, 2, d_in] (model 0 the parent, 1 the child)."""
    norms = w_dec.detach().float().norm(dim=-1).cpu().numpy()
    p, c = norms[:, 0], norms[:, 1]
    return 0.5 * ((p - c) / np.maximum(np.maximum(p, c), 1e-12) + 1)


def classify_latents(delta: np.ndarray, classes: dict = DEFAULT_CLASSES) -> np.ndarray:
    low, high = classes["shared_within"]
    return np.where(delta > classes["parent_only_above"], "parent_only",
                    np.where(delta < classes["child_only_below"], "child_only",
                             np.where((delta >= low) & (delta <= high), "shared", "other")))


@torch.no_grad()
def latent_scaling(cc, xs: list[torch.Tensor], latents: list[int], batch: int = 8192) -> pd.DataFrame:
    """ν on the error and on the reconstruction target (module) for `latents`, each judged in the model its Δ
    gives it to (Δ >= ½: parent), over the tokens of `xs` (raw activations, one tensor per model)."""
    delta = relative_norm(cc.W_dec)
    sums = {j: {k: 0.0 for k in ("ff", "e_own", "e_other", "r_own", "r_other")} for j in latents}
    idx = torch.tensor(latents, dtype=torch.long)
    for start in range(0, xs[0].shape[0], batch):
        x = cc.normalise([t[start:start + batch] for t in xs])
        f = cc.activate(cc.pre(x))
        x_hat = cc.decode(f)
        fj = f[:, idx]  # [tokens, len(latents)]
        for col, j in enumerate(latents):
            own = 0 if delta[j] >= 0.5 else 1
            other = 1 - own
            d = cc.W_dec[j, own]
            contrib = {m: fj[:, col:col + 1] * cc.W_dec[j, m][None] for m in (own, other)}
            err = {m: x[:, m] - x_hat[:, m] + contrib[m] for m in (own, other)}
            rec = {m: x_hat[:, m] - contrib[m] for m in (own, other)}
            ft = fj[:, col]
            s = sums[j]
            s["ff"] += float((ft * ft).sum())
            for name, target in (("e", err), ("r", rec)):
                s[f"{name}_own"] += float((ft * (target[own] @ d)).sum())
                s[f"{name}_other"] += float((ft * (target[other] @ d)).sum())
    rows = []
    for j in latents:
        s, d = sums[j], cc.W_dec[j, 0 if delta[j] >= 0.5 else 1]
        den = float(d @ d) * s["ff"]
        beta = {k: (s[k] / den if den > 0 else float("nan")) for k in ("e_own", "e_other", "r_own", "r_other")}
        rows.append({"latent": j, "delta": float(delta[j]), "beta_error_own": beta["e_own"], "beta_error_other": beta["e_other"],
                     "nu_error": beta["e_other"] / beta["e_own"] if beta["e_own"] else float("nan"),
                     "beta_recon_own": beta["r_own"], "beta_recon_other": beta["r_other"],
                     "nu_recon": beta["r_other"] / beta["r_own"] if beta["r_own"] else float("nan")})
    return pd.DataFrame(rows)


def latent_table(cc, classes: dict = DEFAULT_CLASSES) -> pd.DataFrame:
    """Per latent: delta, class, the cosine of its two decoder vectors and their norms."""
    w = cc.W_dec.detach().float().cpu()
    delta = relative_norm(w)
    return pd.DataFrame({"latent": np.arange(w.shape[0]), "delta": delta, "class": classify_latents(delta, classes),
                         "decoder_cosine": torch.nn.functional.cosine_similarity(w[:, 0], w[:, 1], dim=-1).numpy(),
                         "norm_parent": w[:, 0].norm(dim=-1).numpy(), "norm_child": w[:, 1].norm(dim=-1).numpy()})
