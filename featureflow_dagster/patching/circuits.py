"""Within one model (Prakash et al. §3, after Wang et al. 2022): activation patching as "denoising"
(run the counterfactual prompt, put back one unit's activation from the clean run, report
effect = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt) on the mean logit difference LD), path
patching from each head to the logits, to its own layer's MLP and to the query / key / value inputs of
later layers' head groups, the circuit (units above a threshold, found on one half of the prompts), and
its faithfulness on the other half with everything else mean-ablated, against random circuits drawn
from the units it could have used (the same layers at the same positions)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from featureflow_dagster.hooks import hook
from featureflow_dagster.patching.tasks import TaskBatch, task_metrics
from featureflow_dagster.patching.components import (Unit, cache_names, final_logits, gap_share, head_name, mean_ld,
                                                     parse_component, patch_hooks, positions, relative_position, run_cache,
                                                     split_qkv_inputs)


def activation_patching(model, batch: TaskBatch, components: list[str], size: int = 256, log=None,
                        last_positions: int | None = None, groups: dict | None = None) -> pd.DataFrame:
    """Denoising: every component at every position (or the last `last_positions`) and at all positions
    at once, clean -> corrupt; head groups as one unit. One row per unit: ld (mean logit difference
    patched), effect (share of the clean-corrupt gap)."""
    units = [(c, p) for c in components for p in [None, *positions(batch.length, last_positions)]]
    clean = run_cache(model, batch.clean, cache_names(units, groups), size)
    ld_clean = mean_ld(final_logits(model, batch.clean, batch=size), batch)
    ld_corrupt = mean_ld(final_logits(model, batch.corrupt, batch=size), batch)
    rows = []
    for i, unit in enumerate(units):
        ld = mean_ld(final_logits(model, batch.corrupt, patch_hooks([unit], clean, groups), size), batch)
        rows.append({"component": unit[0], "position": relative_position(unit[1], batch.length), "ld": ld,
                     "effect": gap_share(ld - ld_corrupt, ld_clean - ld_corrupt)})
        if log and (i + 1) % 50 == 0:
            log(f"patched {i + 1}/{len(units)} units")
    return pd.DataFrame(rows).astype({"position": "Int64"})


def _kv_index(model, head: int) -> int:
    """The key/value input a query head reads under grouped-query attention (its kv head), else itself."""
    n_kv = model.cfg.n_key_value_heads
    if n_kv is None or getattr(model.cfg, "ungroup_grouped_query_attention", False):
        return head
    return head // (model.cfg.n_heads // n_kv)


def path_patching(model, batch: TaskBatch, size: int = 256, layers=None, groups: dict | None = None, log=None) -> pd.DataFrame:
    """Per sender head (of `layers`, default all), the clean-minus-corrupt change of its output
    (z_h W_O_h, at every position) added to the corrupt run along one path only:
      receiver `logits`: at the last block's resid_post, read only by the final norm and the unembedding;
      receiver `L<l>.mlp` (input `mlp`): the sender's own layer's MLP input (resid_mid, taken back out of
        resid_post); absent where attention and MLP run in parallel (GPT-NeoX);
      receiver `group.<g>` (input q, k or v): the query / key / value input of each of the group's heads in
        a later layer (`blocks.L.hook_{q,k,v}_input`; under grouped-query attention a key/value input is
        its kv head's, shared by the query heads of that group).
    Every other component sees the corrupt run; the receivers' changed outputs propagate to the logits.
    effect as in `activation_patching`."""
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    z_names = [hook("attn.hook_z", layer) for layer in layers]
    clean = run_cache(model, batch.clean, z_names, size)
    corrupt = run_cache(model, batch.corrupt, z_names, size)
    ld_clean = mean_ld(final_logits(model, batch.clean, batch=size), batch)
    ld_corrupt = mean_ld(final_logits(model, batch.corrupt, batch=size), batch)
    last = hook("hook_resid_post", model.cfg.n_layers - 1)
    rows = []

    def record(sender, receiver, inp, hooks):
        ld = mean_ld(final_logits(model, batch.corrupt, hooks, size), batch)
        rows.append({"sender": sender, "receiver": receiver, "input": inp, "ld": ld,
                     "effect": gap_share(ld - ld_corrupt, ld_clean - ld_corrupt)})

    for layer, name in zip(layers, z_names):
        w_o = model.blocks[layer].attn.W_O  # [H, d_head, d_model]
        for h in range(model.cfg.n_heads):
            delta = torch.einsum("npd,dm->npm", clean[name][:, :, h] - corrupt[name][:, :, h], w_o[h])
            sender = head_name(layer, h)

            def add(act, hook, r, d=delta):
                return act + d[r]

            def sub(act, hook, r, d=delta):
                return act - d[r]

            record(sender, "logits", "resid", [(last, add)])
            if not model.cfg.parallel_attn_mlp:
                record(sender, f"L{layer}.mlp", "mlp", [(hook("hook_resid_mid", layer), add), (hook("hook_resid_post", layer), sub)])
            for g, heads in (groups or {}).items():
                later = [(lr, hr) for lr, hr in heads if lr > layer]
                if not later:
                    continue
                with split_qkv_inputs(model):
                    for inp in ("q", "k", "v"):
                        by_layer: dict[int, list[int]] = {}
                        for lr, hr in later:
                            idx = hr if inp == "q" else _kv_index(model, hr)
                            by_layer.setdefault(lr, []).append(idx)

                        def into(act, hook, r, d=delta, heads=None):
                            act = act.clone()
                            act[:, :, heads] += d[r][:, :, None]
                            return act

                        hooks = [(hook(f"hook_{inp}_input", lr), (lambda hs: lambda a, k, r: into(a, k, r, heads=hs))(sorted(set(hs))))
                                 for lr, hs in by_layer.items()]
                        record(sender, f"group.{g}", inp, hooks)
        if log:
            log(f"path patching: senders of layer {layer} done")
    return pd.DataFrame(rows)


def circuit_universe(model, length: int, layers=None) -> list[Unit]:
    """The units a circuit is made of: every head and the MLP of `layers` (default all) at every position."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    return [(c, p) for layer in layers for c in [*(head_name(layer, h) for h in range(model.cfg.n_heads)), f"L{layer}.mlp"]
            for p in range(length)]


def circuit_from_effects(effects: pd.DataFrame, length: int, threshold: float) -> list[Unit]:
    """Head and MLP units (single positions) whose patching effect is at least `threshold`."""
    e = effects[effects["position"].notna() & effects["component"].str.match(r"^L\d+\.(H\d+|mlp)$")]
    e = e[e["effect"] >= threshold]
    return sorted((c, int(p) + length) for c, p in zip(e["component"], e["position"]))


def _layers_of(model, layers) -> list[int]:
    return list(range(model.cfg.n_layers)) if layers is None else list(layers)


def ablation_means(model, batch: TaskBatch, size: int = 256, layers=None) -> dict[str, torch.Tensor]:
    """Each head's and MLP's output per position (of `layers`), averaged over the task's clean prompts."""
    names = [n for layer in _layers_of(model, layers) for n in (hook("attn.hook_z", layer), hook("hook_mlp_out", layer))]
    return {k: v.mean(0) for k, v in run_cache(model, batch.clean, names, size).items()}


def ablated_logits(model, batch: TaskBatch, keep: list[Unit], size: int = 256,
                   means: dict[str, torch.Tensor] | None = None, layers=None) -> torch.Tensor:
    """Clean-prompt logits with every circuit-universe unit (heads and MLPs of `layers`) outside `keep`
    mean-ablated (its mean over the task's clean prompts at that position, `ablation_means`), as Prakash
    et al. evaluate a circuit."""
    layers = _layers_of(model, layers)
    means = means if means is not None else ablation_means(model, batch, size, layers)
    L, H = batch.length, model.cfg.n_heads
    keep_heads = {layer: torch.zeros(L, H, dtype=torch.bool) for layer in layers}
    keep_mlp = {layer: torch.zeros(L, dtype=torch.bool) for layer in layers}
    for comp, pos in keep:
        kind, layer, head = parse_component(comp)
        if layer not in keep_heads:
            continue
        if kind == "head":
            keep_heads[layer][pos, head] = True
        elif kind == "mlp":
            keep_mlp[layer][pos] = True
    dev = next(model.parameters()).device
    hooks = []
    for layer in layers:
        z, m = hook("attn.hook_z", layer), hook("hook_mlp_out", layer)
        kh, km = keep_heads[layer].to(dev), keep_mlp[layer].to(dev)
        hooks.append((z, lambda act, hk, r, kh=kh, z=z: torch.where(kh[None, :, :, None], act, means[z][None])))
        hooks.append((m, lambda act, hk, r, km=km, m=m: torch.where(km[None, :, None], act, means[m][None])))
    return final_logits(model, batch.clean, hooks, size)


@dataclass
class Faithfulness:
    size: int  # units in the circuit
    universe: int  # units that are mean-ablated unless kept
    pool: int  # units random circuits are drawn from: the universe's units in the circuit's (layer, position) cells
    accuracy: float  # the circuit's two-way accuracy, everything else mean-ablated
    full_accuracy: float
    faithfulness: float  # accuracy / full accuracy (the paper's measure)
    ld_faithfulness: float  # the same on mean logit difference
    random_faithfulness: float  # mean over random circuits of the same size
    random_std: float
    random_at_least: float  # share of random circuits at least as faithful as this one
    random_ld_faithfulness: float
    examples: int = 0  # prompts scored


def _cell(unit: Unit) -> tuple[int, int]:
    return parse_component(unit[0])[1], unit[1]


def random_circuit(rng: random.Random, keep: list[Unit], universe: list[Unit]) -> list[Unit]:
    """A circuit with as many units as `keep` in each (layer, position) cell, drawn from the universe's
    units of that cell (heads and the MLP): the units the circuit could have used instead."""
    pools: dict[tuple, list] = {}
    for u in universe:
        pools.setdefault(_cell(u), []).append(u)
    out = []
    for cell, n in sorted(Counter(_cell(u) for u in keep).items()):
        out += rng.sample(pools[cell], n)
    return out


def faithfulness(model, batch: TaskBatch, keep: list[Unit], random_draws: int = 20, seed: int = 0, size: int = 256,
                 layers=None) -> Faithfulness:
    """The circuit `keep` scored on `batch` (the prompts that did not choose it), against `random_draws`
    random circuits of the same (layer, position) make-up (`random_circuit`)."""
    layers = _layers_of(model, layers)
    full = final_logits(model, batch.clean, batch=size)
    full_m = task_metrics(full, batch)
    means = ablation_means(model, batch, size, layers)  # once for the circuit and every random draw

    def score(units):
        m = task_metrics(ablated_logits(model, batch, units, size, means, layers), batch)
        return gap_share(m["accuracy"], full_m["accuracy"]), gap_share(m["logit_diff"], full_m["logit_diff"]), m["accuracy"]

    f_acc, f_ld, acc = score(keep)
    universe = circuit_universe(model, batch.length, layers)
    cells = {_cell(u) for u in keep}
    pool = sum(1 for u in universe if _cell(u) in cells)
    rng = random.Random(seed)
    draws = [score(random_circuit(rng, keep, universe)) for _ in range(random_draws if keep else 0)]
    rand, rand_ld = [d[0] for d in draws], [d[1] for d in draws]
    nan = float("nan")
    return Faithfulness(len(keep), len(universe), pool, acc, full_m["accuracy"], f_acc, f_ld,
                        float(np.mean(rand)) if rand else nan, float(np.std(rand)) if rand else nan,
                        float(np.mean([r >= f_acc for r in rand])) if rand else nan,
                        float(np.mean(rand_ld)) if rand else nan, len(batch))
