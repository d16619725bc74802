"""The lineage's SAE quality bars (`sae.checks`) against an evaluation's values: plain Python, no torch, so the
asset definitions can name the checks without importing a model."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    value: float
    bound: str


def check_evaluation(values: Mapping[str, float], checks) -> list[CheckOutcome]:
    """Compare evaluation values (keys: l0, mse, explained_variance, dead_fraction, loss_recovered,
    decoder_init_cosine, top_token_share_margin) with the lineage's SAEChecks; a bound left unset
    is not checked. NaN fails every bound."""
    out = []
    if checks.l0_min is not None or checks.l0_max is not None:
        lo = checks.l0_min if checks.l0_min is not None else 0.0
        hi = checks.l0_max if checks.l0_max is not None else float("inf")
        out.append(CheckOutcome("l0_in_range", lo <= values["l0"] <= hi, values["l0"], f"[{lo}, {hi}]"))

    def at_least(name: str, key: str, bound: float | None) -> None:
        if bound is not None:
            out.append(CheckOutcome(name, values[key] >= bound, values[key], f">= {bound}"))

    def at_most(name: str, key: str, bound: float | None, strict: bool = False) -> None:
        if bound is not None:
            ok = values[key] < bound if strict else values[key] <= bound
            out.append(CheckOutcome(name, ok, values[key], f"{'<' if strict else '<='} {bound}"))

    at_most("mse_below", "mse", checks.mse_max, strict=True)
    at_least("explained_variance_above", "explained_variance", checks.explained_variance_min)
    at_most("dead_fraction_below", "dead_fraction", checks.dead_fraction_max)
    at_least("loss_recovered_above", "loss_recovered", checks.loss_recovered_min)
    at_most("decoder_left_init", "decoder_init_cosine", checks.decoder_init_cosine_max)
    at_least("features_beat_random", "top_token_share_margin", checks.top_token_share_margin_min)
    return out


def configured_checks(checks) -> list[str]:
    """Names of the checks an SAEChecks sets a bound for (the ones `check_evaluation` reports)."""
    return [c.name for c in check_evaluation(defaultdict(float), checks)]
