"""SAE evaluations (Bricken et al. 2023; Kutsyk et al. 2024 for applying one model's SAE to another).

On token windows [n, context] run through a model:
- l0: mean number of active features per token.
- mse: mean over elements of (x̂ − x)²; explained_variance: 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖².
- ce_clean, ce_spliced, ce_zero: next-token cross-entropy (nats, positions 1..context−1 of each
  window) of the model as is, with hook_post replaced by the SAE's reconstruction, and with
  hook_post zero-ablated; loss_recovered = (ce_zero − ce_spliced) / (ce_zero − ce_clean).
- dead_fraction: features that never fire on these tokens; ultra_low_fraction: features that fire
  on a fraction of tokens in (0, ultra_low_density).
- density: per-feature firing frequency [d_sae] (for the histogram).
All sums are accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featureflow_dagster.activations import capture_mlp_post
from featureflow_dagster.sae.base import SAE


@dataclass
class SAEEvaluation:
    l0: float
    mse: float
    explained_variance: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    loss_recovered: float
    dead_fraction: float
    ultra_low_fraction: float
    tokens: int
    density: torch.Tensor  # [d_sae]

    def scalars(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "density"}


def _ce(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[float, int]:
    pred, target = logits[:, :-1].float(), tokens[:, 1:]
    loss = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum")
    return float(loss), target.numel()


@torch.no_grad()
def evaluate_sae(sae: SAE, model, windows: torch.Tensor, device: torch.device, batch_windows: int = 64,
                 ultra_low_density: float = 1e-5) -> SAEEvaluation:
    """Evaluate `sae` on the hook_post activations of `model` over token windows [n, context]."""
    sae.to(device).eval()
    model.to(device).eval()
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    sse = torch.zeros((), dtype=torch.float64)
    sum_x = torch.zeros(d_in, dtype=torch.float64)
    sum_x2 = torch.zeros(d_in, dtype=torch.float64)
    l0_sum = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(d_sae, dtype=torch.float64)
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_tokens = n_pred = 0
    for start in range(0, windows.shape[0], batch_windows):
        tok = windows[start : start + batch_windows].to(device, torch.long)
        with capture_mlp_post(model) as captured:
            clean_logits = model(input_ids=tok).logits
        x = captured[0].reshape(-1, d_in).float()
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sse += ((x_hat - x).double() ** 2).sum().cpu()
        sum_x += x.double().sum(0).cpu()
        sum_x2 += (x.double() ** 2).sum(0).cpu()
        active = f > 0
        l0_sum += active.sum().double().cpu()
        fires += active.sum(0).double().cpu()
        n_tokens += x.shape[0]
        loss, count = _ce(clean_logits, tok)
        ce["clean"] += loss
        n_pred += count
        with capture_mlp_post(model, replace=lambda a: sae(a.reshape(-1, d_in).float()).reshape(a.shape).to(a.dtype)):
            ce["spliced"] += _ce(model(input_ids=tok).logits, tok)[0]
        with capture_mlp_post(model, replace=torch.zeros_like):
            ce["zero"] += _ce(model(input_ids=tok).logits, tok)[0]
    sst = float((sum_x2 - sum_x**2 / n_tokens).sum())
    density = fires / n_tokens
    clean, spliced, zero = (ce[k] / n_pred for k in ("clean", "spliced", "zero"))
    return SAEEvaluation(
        l0=float(l0_sum / n_tokens),
        mse=float(sse / (n_tokens * d_in)),
        explained_variance=1.0 - float(sse) / sst if sst > 0 else float("nan"),
        ce_clean=clean,
        ce_spliced=spliced,
        ce_zero=zero,
        loss_recovered=(zero - spliced) / (zero - clean) if zero != clean else float("nan"),
        dead_fraction=float((density == 0).double().mean()),
        ultra_low_fraction=float(((density > 0) & (density < ultra_low_density)).double().mean()),
        tokens=n_tokens,
        density=density.float(),
    )


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    value: float
    bound: str


def check_evaluation(ev: SAEEvaluation, checks) -> list[CheckOutcome]:
    """Compare an evaluation with the lineage's SAEChecks; a bound left unset is not checked."""
    out = []
    if checks.l0_min is not None or checks.l0_max is not None:
        lo = checks.l0_min if checks.l0_min is not None else 0.0
        hi = checks.l0_max if checks.l0_max is not None else float("inf")
        out.append(CheckOutcome("l0_in_range", lo <= ev.l0 <= hi, ev.l0, f"[{lo}, {hi}]"))
    if checks.mse_max is not None:
        out.append(CheckOutcome("mse_below", ev.mse < checks.mse_max, ev.mse, f"< {checks.mse_max}"))
    if checks.explained_variance_min is not None:
        out.append(CheckOutcome("explained_variance_above", ev.explained_variance > checks.explained_variance_min,
                                ev.explained_variance, f"> {checks.explained_variance_min}"))
    if checks.dead_fraction_max is not None:
        out.append(CheckOutcome("dead_fraction_below", ev.dead_fraction <= checks.dead_fraction_max,
                                ev.dead_fraction, f"<= {checks.dead_fraction_max}"))
    if checks.loss_recovered_min is not None:
        out.append(CheckOutcome("loss_recovered_above", ev.loss_recovered > checks.loss_recovered_min,
                                ev.loss_recovered, f"> {checks.loss_recovered_min}"))
    return out


def configured_checks(checks) -> list[str]:
    """Names of the checks an SAEChecks sets a bound for (the ones `check_evaluation` reports)."""
    blank = SAEEvaluation(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, torch.zeros(1))
    return [c.name for c in check_evaluation(blank, checks)]
