"""Within one model (Prakash et al. §3, after Wang et al. 2022): activation patching as "denoising"
(run the counterfactual prompt, put back one unit's activation from the clean run, report
effect = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt) on the mean logit difference LD), path
patching of each head into the MLP and to the logits, the circuit (units above a threshold), and its
faithfulness with everything else mean-ablated, against random circuits of the same size."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from featureflow_dagster.hooks import HEAD_Z, RESID_MID, RESID_POST
from featureflow_dagster.hooks import hook as hook_at
from featureflow_dagster.patching.tasks import TaskBatch, task_metrics
from featureflow_dagster.patching.components import (HOOKS, Unit, relative_position, gap_share, cache_names, component_names, final_logits, hook_of, mean_ld,
                                                   patch_hooks, run_cache)


def activation_patching(model, batch: TaskBatch, components: list[str], size: int = 256, log=None) -> pd.DataFrame:
    """Denoising: every (component, position) and every component at all positions, clean -> corrupt.
    One row per unit: ld (mean logit difference patched), effect (share of the clean-corrupt gap)."""
    units = [(c, p) for c in components for p in [None, *range(batch.length)]]
    clean = run_cache(model, batch.clean, cache_names(units), size)
    ld_clean = mean_ld(final_logits(model, batch.clean, batch=size), batch)
    ld_corrupt = mean_ld(final_logits(model, batch.corrupt, batch=size), batch)
    rows = []
    for i, unit in enumerate(units):
        ld = mean_ld(final_logits(model, batch.corrupt, patch_hooks([unit], clean), size), batch)
        rows.append({"component": unit[0], "position": relative_position(unit[1], batch.length), "ld": ld,
                     "effect": gap_share(ld - ld_corrupt, ld_clean - ld_corrupt)})
        if log and (i + 1) % 50 == 0:
            log(f"patched {i + 1}/{len(units)} units")
    return pd.DataFrame(rows).astype({"position": "Int64"})


def path_patching(model, batch: TaskBatch, size: int = 256) -> pd.DataFrame:
    """Per head (of block 0), the clean-minus-corrupt change of its output added (at every position) only along
    one path of the corrupt run: into block 0's MLP input (resid_mid, taken back out of resid_post; absent
    where attention and MLP run in parallel, GPT-NeoX, whose MLP never reads its block's heads) or straight
    to the logits (the last block's resid_post, read only by the final norm and the unembedding). effect as
    in `activation_patching`."""
    names = [HEAD_Z]
    clean = run_cache(model, batch.clean, names, size)[HEAD_Z]
    corrupt = run_cache(model, batch.corrupt, names, size)[HEAD_Z]
    w_o = model.blocks[0].attn.W_O  # [H, d_head, d_model]
    ld_clean = mean_ld(final_logits(model, batch.clean, batch=size), batch)
    ld_corrupt = mean_ld(final_logits(model, batch.corrupt, batch=size), batch)
    rows = []
    for h in range(model.cfg.n_heads):
        delta = torch.einsum("npd,dm->npm", clean[:, :, h] - corrupt[:, :, h], w_o[h])

        def add(act, hook, r, d=delta):
            return act + d[r]

        def sub(act, hook, r, d=delta):
            return act - d[r]

        paths = [("logits", [(hook_at("hook_resid_post", model.cfg.n_layers - 1), add)])]
        if not model.cfg.parallel_attn_mlp:
            paths.insert(0, ("mlp", [(RESID_MID, add), (RESID_POST, sub)]))
        for path, hooks in paths:
            ld = mean_ld(final_logits(model, batch.corrupt, hooks, size), batch)
            rows.append({"head": h, "path": path, "ld": ld, "effect": gap_share(ld - ld_corrupt, ld_clean - ld_corrupt)})
    return pd.DataFrame(rows)


def circuit_universe(model, length: int) -> list[Unit]:
    """The units a circuit is made of: every head and the MLP at every position."""
    return [(c, p) for c in component_names(model, ("heads", "mlp")) for p in range(length)]


def circuit_from_effects(effects: pd.DataFrame, length: int, threshold: float) -> list[Unit]:
    """Head and MLP units (single positions) whose patching effect is at least `threshold`."""
    e = effects[effects["position"].notna() & effects["component"].str.match(r"^(head\.\d+|mlp)$")]
    e = e[e["effect"] >= threshold]
    return sorted((c, int(p) + length) for c, p in zip(e["component"], e["position"]))


def ablation_means(model, batch: TaskBatch, size: int = 256) -> dict[str, torch.Tensor]:
    """Each head's and the MLP's output per position, averaged over the task's clean prompts."""
    return {k: v.mean(0) for k, v in run_cache(model, batch.clean, [HEAD_Z, HOOKS["mlp"]], size).items()}


def ablated_logits(model, batch: TaskBatch, keep: list[Unit], size: int = 256,
                   means: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Clean-prompt logits with every circuit-universe unit outside `keep` mean-ablated (its mean over
    the task's clean prompts at that position, `ablation_means`), as Prakash et al. evaluate a circuit."""
    means = means if means is not None else ablation_means(model, batch, size)
    L, H = batch.length, model.cfg.n_heads
    keep_heads = torch.zeros(L, H, dtype=torch.bool)
    keep_mlp = torch.zeros(L, dtype=torch.bool)
    for comp, pos in keep:
        head = hook_of(comp)[1]
        if head is None:
            keep_mlp[pos] = True
        else:
            keep_heads[pos, head] = True
    dev = next(model.parameters()).device
    kh, km = keep_heads.to(dev), keep_mlp.to(dev)

    def heads(act, hook, r):
        return torch.where(kh[None, :, :, None], act, means[HEAD_Z][None])

    def mlp(act, hook, r):
        return torch.where(km[None, :, None], act, means[HOOKS["mlp"]][None])

    return final_logits(model, batch.clean, [(HEAD_Z, heads), (HOOKS["mlp"], mlp)], size)


@dataclass
class Faithfulness:
    size: int  # units in the circuit
    universe: int
    accuracy: float  # the circuit's two-way accuracy, everything else mean-ablated
    full_accuracy: float
    faithfulness: float  # accuracy / full accuracy (the paper's measure)
    ld_faithfulness: float  # the same on mean logit difference
    random_faithfulness: float  # mean over random circuits of the same size
    random_std: float
    random_at_least: float  # share of random circuits at least as faithful as this one
    random_ld_faithfulness: float


def faithfulness(model, batch: TaskBatch, keep: list[Unit], random_draws: int = 20, seed: int = 0, size: int = 256) -> Faithfulness:
    full = final_logits(model, batch.clean, batch=size)
    full_m = task_metrics(full, batch)
    means = ablation_means(model, batch, size)  # once for the circuit and every random draw

    def score(units):
        m = task_metrics(ablated_logits(model, batch, units, size, means), batch)
        return gap_share(m["accuracy"], full_m["accuracy"]), gap_share(m["logit_diff"], full_m["logit_diff"]), m["accuracy"]

    f_acc, f_ld, acc = score(keep)
    universe = circuit_universe(model, batch.length)
    rng = random.Random(seed)
    draws = [score(rng.sample(universe, len(keep))) for _ in range(random_draws)]
    rand, rand_ld = [d[0] for d in draws], [d[1] for d in draws]
    nan = float("nan")
    return Faithfulness(len(keep), len(universe), acc, full_m["accuracy"], f_acc, f_ld,
                        float(np.mean(rand)) if rand else nan, float(np.std(rand)) if rand else nan,
                        float(np.mean([r >= f_acc for r in rand])) if rand else nan,
                        float(np.mean(rand_ld)) if rand else nan)
