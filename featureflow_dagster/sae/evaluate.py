"""SAE evaluations (Bricken et al. 2023; Kutsyk et al. 2024 for applying one model's SAE to another).

On token windows [n, context] run through a model:
- l0: mean number of active features per token.
- mse: mean over elements of (x̂ − x)²; explained_variance: 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖².
- ce_clean, ce_spliced, ce_zero: next-token cross-entropy (nats, positions 1..context−1 of each
  window) of the model as is, with the SAE's hook (`cfg.hook_name`) replaced by its reconstruction, and
  with it zero-ablated; loss_recovered = (ce_zero − ce_spliced) / (ce_zero − ce_clean).
- dead_fraction: features that never fire on these tokens; ultra_low_fraction: features that fire
  on a fraction of tokens in (0, ultra_low_density).
- density: per-feature firing frequency [d_sae] (for the histogram).
All sums are accumulated in float64.

Beside them, two checks against a null baseline: `decoder_init_cosine` (did the dictionary leave its
random start?) and `token_specificity` (are a feature's top activations on one token more often than
those of a random dictionary encoded at the same L0?).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from featureflow_dagster.activations import ActivationStore, capture
from featureflow_dagster.sae.checks import CheckOutcome, check_evaluation, configured_checks  # noqa: F401 (re-exported)
from featureflow_dagster.sae.base import SAE, SAEConfig


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
    """Evaluate `sae` on the activations of `model` at the SAE's hook over token windows [n, context]."""
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
        with capture(model, sae.cfg.hook_name) as captured:
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
        with capture(model, sae.cfg.hook_name, replace=lambda a: sae(a.reshape(-1, d_in).float()).reshape(a.shape).to(a.dtype)):
            ce["spliced"] += _ce(model(input_ids=tok).logits, tok)[0]
        with capture(model, sae.cfg.hook_name, replace=torch.zeros_like):
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


@torch.no_grad()
def decoder_init_cosine(w_dec: torch.Tensor, w_dec_init: torch.Tensor) -> float:
    """Median over features of the cosine between each trained decoder row and the same row at
    initialisation, both [d_sae, d_in]. Near 1: the dictionary never left its random start."""
    cos = torch.nn.functional.cosine_similarity(w_dec.float(), w_dec_init.float().to(w_dec.device), dim=1)
    return float(cos.median())


@dataclass
class TokenSpecificity:
    share: float  # median over counted features of the share of their top activations on their most common token
    features: int  # features counted: those firing at least `top` times
    top: int


@torch.no_grad()
def token_specificity(encode: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      d_sae: int, top: int = 20) -> TokenSpecificity:
    """How token-specific a dictionary's features are, in one streaming pass.

    `batches` yields (x [n, d_in] activations, tokens [n] the token at each position); `encode` maps x
    to feature activations [n, d_sae] (>= 0). For every feature that fires at least `top` times, the
    `top` largest activations are kept with their positions; the feature's share is the fraction of
    them that sit on its most common token. Returns the median share (NaN when no feature qualifies).
    Features firing fewer than `top` times are left out: a feature seen once has share 1 trivially."""
    top_vals = top_pos = None
    fires = torch.zeros(d_sae, dtype=torch.long)
    token_list, offset = [], 0
    for x, tok in batches:
        f = encode(x)
        dev = f.device
        if top_vals is None:
            top_vals = torch.zeros(top, d_sae, device=dev)
            top_pos = torch.zeros(top, d_sae, dtype=torch.long, device=dev)
        fires += (f > 0).sum(0).cpu()
        vals, idx = torch.cat([top_vals, f]).topk(top, dim=0)
        old = top_pos.gather(0, idx.clamp(max=top - 1))
        top_pos = torch.where(idx < top, old, offset + idx - top)
        top_vals = vals
        token_list.append(tok.reshape(-1).to(torch.long).cpu())
        offset += f.shape[0]
    if top_vals is None:
        raise ValueError("token_specificity got no batches")
    tokens = torch.cat(token_list)
    counted = fires >= top
    if not counted.any():
        return TokenSpecificity(float("nan"), 0, top)
    top_tokens = tokens[top_pos.cpu()[:, counted]]  # [top, counted]
    mode = top_tokens.mode(dim=0).values
    share = (top_tokens == mode).float().mean(0)
    return TokenSpecificity(float(share.median()), int(counted.sum()), top)


def random_dictionary(d_in: int, d_sae: int, l0: float, center: torch.Tensor, seed: int) -> SAE:
    """The null baseline for `token_specificity`: an untrained TopK SAE (d_sae random unit directions,
    encoder = decoder transposed) on activations centred at `center` [d_in], keeping round(l0)
    features per token, so it fires as often as the SAE it is compared with."""
    from featureflow_dagster.sae.topk import TopKSAE

    rand = TopKSAE(SAEConfig("topk", d_in, d_sae, k=max(1, round(l0))), seed=seed)
    rand.data_mean.copy_(center)
    return rand.eval()


def quality_against_null(sae, w_dec_init: torch.Tensor, acts: ActivationStore, l0: float, seed: int, dev: torch.device) -> dict[str, float]:
    """The SAE beside its null baselines on the store's held-out positions: decoder cosine to its
    random start, and top-20 token specificity against a random dictionary at the same L0."""
    center = acts.mean("eval").to(dev)
    rand = random_dictionary(sae.cfg.d_in, sae.cfg.d_sae, l0, center, seed + 1).to(dev)
    positions = lambda: ((x.to(dev), t) for x, t in acts.positions("eval"))  # noqa: E731
    ours = token_specificity(sae.encode, positions(), sae.cfg.d_sae)
    null = token_specificity(rand.encode, positions(), sae.cfg.d_sae)
    return {
        "decoder_init_cosine": decoder_init_cosine(sae.W_dec.detach(), w_dec_init),
        "top_token_share": ours.share,
        "top_token_share_features": ours.features,
        "random_top_token_share": null.share,
        "random_top_token_share_features": null.features,
        "top_token_share_margin": ours.share - null.share,
    }


