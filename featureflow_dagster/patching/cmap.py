"""Across models (CMAP, Prakash et al. §5): both models read the same clean prompt; a child unit
patched into the parent recovers share = (LD_patched - LD_parent) / (LD_child - LD_parent) of the gap;
the parent's unit patched into the child removes share = (LD_child - LD_patched) / (LD_child - LD_parent).
Feature-level CMAP puts the child's MLP output carried by a set of its SAE features in place of the
parent's, against random feature sets of the same sizes."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import torch

from featureflow_dagster.flow import DEAD, DISAPPEARS, EMERGED, PERSISTED, PERSISTS
from featureflow_dagster.hooks import hook, parse_hook
from featureflow_dagster.hooks import hook as hook_at
from featureflow_dagster.patching.tasks import TaskBatch, logit_diff
from featureflow_dagster.patching.components import (Unit, component_names, expand, final_logits, gap_share, hook_of, mean_ld,
                                                     parse_component, patch_hooks, positions, relative_position, run_cache,
                                                     unit_index)


def w_o_name(layer: int) -> str:
    """Where `cross_cache` keeps (a reference to) the donor's W_O of layer `layer` [H, d_head, d_model]."""
    return f"blocks.{layer}.attn.W_O"


def cross_hooks(units: list[Unit], donor: dict[str, torch.Tensor], recipient, groups: dict | None = None):
    """Forward hooks that put the donor model's activation of each unit into the `recipient` model on the
    same examples. A head's output is its residual contribution (z_h W_O_h, with the donor's own W_O): the
    recipient's attention output of that layer gets the donor's contribution minus the recipient's own in
    this very pass (read from its hook_z), exactly what patching hook_result does, without making
    TransformerLens materialise every head's result on every pass (nor caching [n, pos, heads, d_model]
    per layer: the donor's z and W_O are kept, the product taken for the patched rows). Head groups patch
    their heads together."""
    units = expand(units, groups)
    plain = [u for u in units if parse_component(u[0])[0] != "head"]
    hooks = patch_hooks(plain, donor)
    by_layer: dict[int, list] = {}
    for comp, pos in units:
        kind, layer, head = parse_component(comp)
        if kind == "head":
            by_layer.setdefault(layer, []).append((head, pos))
    for layer, heads in by_layer.items():
        w_o = recipient.blocks[layer].attn.W_O
        z_name = hook_at("attn.hook_z", layer)
        seen = {}

        def keep(act, hook, rows, seen=seen):
            seen["z"] = act
            return act

        def add(act, hook, rows, seen=seen, heads=heads, w_o=w_o, layer=layer, z_name=z_name):
            donor_z, donor_w = donor[z_name][rows], donor[w_o_name(layer)]
            for h, pos in heads:
                idx = unit_index(pos, None)
                change = donor_z[:, :, h] @ donor_w[h] - seen["z"][:, :, h] @ w_o[h]
                act[idx] = act[idx] + change[idx]
            return act
        hooks += [(z_name, keep), (hook_at("hook_attn_out", layer), add)]
    return hooks


def cross_cache(model, tokens: torch.Tensor, size: int = 256, units: list[Unit] | None = None,
                groups: dict | None = None) -> dict[str, torch.Tensor]:
    """The activations CMAP patches across models (of `units`' components; default every component):
    embed, attention and MLP outputs, each layer's head outputs z (with the layer's W_O, `w_o_name`)."""
    comps = component_names(model) if units is None else [c for c, _ in expand(units, groups)]
    names, z_layers = set(), set()
    for comp in comps:
        kind, layer, _ = parse_component(comp)
        names.add(hook_of(comp)[0])
        if kind == "head":
            z_layers.add(layer)
    cache = run_cache(model, tokens, sorted(names), size)
    for layer in z_layers:
        cache[w_o_name(layer)] = model.blocks[layer].attn.W_O
    return cache


def cmap(parent, child, batch: TaskBatch, components: list[str], size: int = 256, log=None, min_gap_se: float = 2.0,
         last_positions: int | None = None, groups: dict | None = None) -> pd.DataFrame:
    """Cross-model activation patching on the clean prompts, both directions, for every component (heads,
    head groups, attention and MLP outputs at any layer, embeddings) at every position (or the last
    `last_positions`) and at all positions. One row per (direction, component, position): ld, share.
    Shares are NaN when the gap is within `min_gap_se` standard errors of zero (nothing to recover)."""
    units = [(c, p) for c in components for p in [None, *positions(batch.length, last_positions)]]
    cache = {"parent": cross_cache(parent, batch.clean, size, units, groups),
             "child": cross_cache(child, batch.clean, size, units, groups)}
    ld_p, ld_c, gap, se, real = edge_gap(parent, child, batch, size, min_gap_se)
    rows = []
    for i, unit in enumerate(units):
        into_parent = mean_ld(final_logits(parent, batch.clean, cross_hooks([unit], cache["child"], parent, groups), size), batch)
        into_child = mean_ld(final_logits(child, batch.clean, cross_hooks([unit], cache["parent"], child, groups), size), batch)
        pos = relative_position(unit[1], batch.length)
        rows.append({"direction": "child_into_parent", "component": unit[0], "position": pos, "ld": into_parent,
                     "share": gap_share(into_parent - ld_p, gap) if real else float("nan")})
        rows.append({"direction": "parent_into_child", "component": unit[0], "position": pos, "ld": into_child,
                     "share": gap_share(ld_c - into_child, gap) if real else float("nan")})
        if log and (i + 1) % 50 == 0:
            log(f"cross-patched {i + 1}/{len(units)} units")
    out = pd.DataFrame(rows).astype({"position": "Int64"})
    out.attrs.update(parent_ld=ld_p, child_ld=ld_c, gap=gap, gap_se=se, gap_resolved=real)
    return out


def edge_gap(parent, child, batch: TaskBatch, size: int = 256, min_gap_se: float = 2.0) -> tuple[float, float, float, float, bool]:
    """(parent LD, child LD, gap = child - parent, its standard error over examples (paired), whether
    |gap| is at least `min_gap_se` standard errors)."""
    d = [logit_diff(final_logits(m, batch.clean, batch=size), batch.answer.to(next(m.parameters()).device),
                    batch.wrong.to(next(m.parameters()).device)).double().cpu() for m in (parent, child)]
    diff = d[1] - d[0]
    se = float(diff.std() / len(diff) ** 0.5) if len(diff) > 1 else float("nan")
    gap = float(diff.mean())
    return float(d[0].mean()), float(d[1].mean()), gap, se, bool(abs(gap) >= min_gap_se * se)


def written_site(hook_name: str) -> str:
    """Where an SAE's features write into the residual stream: an MLP's hidden activations (mlp.hook_post)
    through its W_out into that layer's `hook_mlp_out`; a residual-width site (resid_post, mlp_out, attn_out) is its own."""
    point = parse_hook(hook_name)
    return hook_at("hook_mlp_out", point.layer) if point.site == "mlp.hook_post" else hook_name


def feature_contribution(model, sae, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the SAE features in `mask` [d_sae] (bool) carry at `written_site(sae's hook)` [n, L, d_model]: their
    part of the reconstruction of `acts` (the SAE's hook [n, L, d_in]), through the layer's W_out for mlp.hook_post."""
    n, L, d = acts.shape
    f = sae.encode(acts.reshape(-1, d)) * mask.to(acts.device)
    part = sae.decode(f) - sae.decode(torch.zeros_like(f[:1]))
    point = parse_hook(sae.cfg.hook_name)
    if point.site == "mlp.hook_post":
        part = part @ model.blocks[point.layer].mlp.W_out
    return part.reshape(n, L, -1)


def feature_cmap(parent, child, sae_parent, sae_child, batch: TaskBatch, sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 size: int = 256, min_gap_se: float = 2.0) -> pd.DataFrame:
    """Feature-level CMAP at the SAEs' hook: per named set (child mask, parent mask), what the parent writes
    there (its MLP output for mlp.hook_post SAEs, else the site itself) at every position becomes its own minus
    what its features in the parent mask carry plus what the child's features in the child mask carry (on the
    same clean prompts); share of the gap recovered."""
    read = sae_parent.cfg.hook_name
    if sae_child.cfg.hook_name != read:
        raise ValueError(f"the parent's SAE reads {read} and the child's {sae_child.cfg.hook_name}; feature CMAP needs one site")
    write = written_site(read)
    with torch.no_grad():
        cp = run_cache(parent, batch.clean, sorted({read, write}), size)
        cc = run_cache(child, batch.clean, [read], size)
        ld_p, ld_c, gap, se, real = edge_gap(parent, child, batch, size, min_gap_se)
        rows = []
        for name, (child_mask, parent_mask) in sets.items():
            out = cp[write] - feature_contribution(parent, sae_parent, cp[read], parent_mask) \
                + feature_contribution(child, sae_child, cc[read], child_mask)

            def put(act, hook, r, o=out):
                return o[r]

            ld = mean_ld(final_logits(parent, batch.clean, [(write, put)], size), batch)
            rows.append({"set": name, "child_features": int(child_mask.sum()), "parent_features": int(parent_mask.sum()),
                         "ld": ld, "share": gap_share(ld - ld_p, gap) if real else float("nan")})
    out = pd.DataFrame(rows)
    out.attrs.update(parent_ld=ld_p, child_ld=ld_c, gap=gap, gap_se=se, gap_resolved=real)
    return out


def feature_sets(parent_table: pd.DataFrame, child_table: pd.DataFrame, draws: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The feature sets of one edge from feature flow's tables (classify_edge): persisted child features
    with the persisting parent features, emerged child features with the disappearing parent ones,
    all live features on both sides; and the null: per named set, `draws` random sets of live features
    of the same sizes on both sides (`random_persisted_<d>`, `random_emerged_<d>`)."""
    def mask(table, statuses, n):
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.as_tensor(table.loc[table["status"].isin(statuses), "feature"].to_numpy().copy())] = True
        return m

    nc, np_ = len(child_table), len(parent_table)
    sets = {PERSISTED: (mask(child_table, [PERSISTED], nc), mask(parent_table, [PERSISTS], np_)),
            EMERGED: (mask(child_table, [EMERGED], nc), mask(parent_table, [DISAPPEARS], np_)),
            "all_live": (mask(child_table, [PERSISTED, EMERGED], nc), mask(parent_table, [PERSISTS, DISAPPEARS], np_))}
    live_c = child_table.loc[child_table["status"] != DEAD, "feature"].tolist()
    live_p = parent_table.loc[parent_table["status"] != DEAD, "feature"].tolist()
    rng = random.Random(seed)
    for name in (PERSISTED, EMERGED):
        k_c, k_p = int(sets[name][0].sum()), int(sets[name][1].sum())
        for d in range(draws):
            mc, mp = torch.zeros(nc, dtype=torch.bool), torch.zeros(np_, dtype=torch.bool)
            mc[rng.sample(live_c, k_c)] = True
            mp[rng.sample(live_p, k_p)] = True
            sets[f"random_{name}_{d}"] = (mc, mp)
    return sets


def feature_summary(fc: pd.DataFrame) -> dict:
    """Shares recovered by the named sets, and per named set the mean and spread of its size-matched
    random sets (the null), and how many standard deviations the set lies above them."""
    named = fc[~fc["set"].str.startswith("random_")].set_index("set")["share"]
    out = {k: float(v) for k, v in named.items()}
    for name in (PERSISTED, EMERGED):
        rand = fc[fc["set"].str.startswith(f"random_{name}_")]["share"].to_numpy()
        mean, std = (float(np.mean(rand)), float(np.std(rand))) if len(rand) else (float("nan"), float("nan"))
        out[f"random_{name}_mean"], out[f"random_{name}_std"] = mean, std
        out[f"{name}_z"] = (out[name] - mean) / std if std > 0 else float("nan")
    return out
