"""Warm-started SAEs along an edge (Kutsyk et al. 2024's suggestion; stage-wise model diffing): the child's
SAE trained starting from the parent's dictionary, so that feature i means the same feature on both sides
unless training moved it. `aligned_features` says, per feature, how far it moved:

- decoder_cosine: cosine between the parent's decoder row i and the warm-started child's row i;
- activation_r: Pearson r over token positions between parent feature i on the parent model and child
  feature i on the child model, on the same tokens (a feature that never fires on one side: NaN);
- aligned: activation_r above the lineage's flow threshold: the same-index pair persists, with no matching step.
"""

from __future__ import annotations

import pandas as pd
import torch

from featureflow_dagster.activations import run_to_hook


@torch.no_grad()
def aligned_features(parent_model, child_model, parent_sae, child_sae, windows: torch.Tensor, device, threshold: float,
                     batch_windows: int = 64) -> pd.DataFrame:
    """Per feature index: decoder_cosine, activation_r, parent_fired, child_fired, aligned (see the module)."""
    if parent_sae.cfg.d_sae != child_sae.cfg.d_sae:
        raise ValueError("aligned features need two SAEs of the same size (a warm start keeps the parent's)")
    d = parent_sae.cfg.d_sae
    sums = {k: torch.zeros(d, dtype=torch.float64) for k in ("x", "y", "xx", "yy", "xy", "fx", "fy")}
    n = 0
    for start in range(0, windows.shape[0], batch_windows):
        x = windows[start:start + batch_windows].to(device, torch.long)
        a = parent_sae.encode(run_to_hook(parent_model, x, parent_sae.cfg.hook_name).reshape(-1, parent_sae.cfg.d_in).float())
        b = child_sae.encode(run_to_hook(child_model, x, child_sae.cfg.hook_name).reshape(-1, child_sae.cfg.d_in).float())
        a, b = a.double().cpu(), b.double().cpu()
        for key, value in (("x", a), ("y", b), ("xx", a * a), ("yy", b * b), ("xy", a * b), ("fx", (a > 0).double()),
                           ("fy", (b > 0).double())):
            sums[key] += value.sum(0)
        n += a.shape[0]
    cov = sums["xy"] / n - sums["x"] * sums["y"] / n**2
    var_x, var_y = sums["xx"] / n - (sums["x"] / n) ** 2, sums["yy"] / n - (sums["y"] / n) ** 2
    r = torch.where((var_x > 0) & (var_y > 0), cov / (var_x.clamp_min(1e-300) * var_y.clamp_min(1e-300)).sqrt(),
                    torch.tensor(float("nan"), dtype=torch.float64))
    cosine = torch.nn.functional.cosine_similarity(parent_sae.W_dec.detach().double().cpu(), child_sae.W_dec.detach().double().cpu(), dim=1)
    table = pd.DataFrame({"feature": range(d), "decoder_cosine": cosine.numpy(), "activation_r": r.numpy(),
                          "parent_fired": sums["fx"].long().numpy(), "child_fired": sums["fy"].long().numpy()})
    table["aligned"] = table["activation_r"] > threshold
    table.attrs["tokens"] = n
    return table


def aligned_summary(table: pd.DataFrame) -> dict:
    """Figures of an edge's aligned pairs over the features live on both sides."""
    live = table[(table["parent_fired"] > 0) & (table["child_fired"] > 0)]
    return {"live_pairs": int(len(live)), "aligned": int(live["aligned"].sum()),
            "aligned_share": float(live["aligned"].mean()) if len(live) else float("nan"),
            "median_decoder_cosine": float(table["decoder_cosine"].median()),
            "median_activation_r": float(live["activation_r"].median()) if len(live) else float("nan")}
