"""Activation patching, path patching, circuits and cross-model activation patching (CMAP).

Plain functions on TransformerLens `HookedTransformer`s (`hooked.load_hooked_model`) and a
`tasks.TaskBatch`; the assets only load, call and write. Components are block 0's:

  embed   `blocks.0.hook_resid_pre`  the token embeddings (rotary models add no position embedding)
  attn    `blocks.0.hook_attn_out`   the attention block's output
  head.h  head h's output: `blocks.0.attn.hook_z[:, :, h]` within one model (the same W_O on both
          sides); across models its contribution to the residual stream (`hook_result[:, :, h]`,
          z_h W_O_h), because the two models' W_O differ
  mlp     `blocks.0.hook_mlp_out`    the MLP's output

A unit is (component, position); position None means every position at once. Positions are indices
into the prompt (0 .. length-1); reports show them relative to the end (-length .. -1).

Within a model (Prakash et al. §3, after Wang et al. 2022) patching is "denoising": run the
counterfactual prompt, put back one unit's activation from the clean run, and report
effect = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt) on the mean logit difference LD.
Across models (CMAP, §5) both models read the same clean prompt; a child unit patched into the parent
recovers share = (LD_patched - LD_parent) / (LD_child - LD_parent) of the gap; the parent's unit
patched into the child removes share = (LD_child - LD_patched) / (LD_child - LD_parent).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from featureflow_dagster.tasks import TaskBatch, logit_diff, task_metrics

HOOKS = {"embed": "blocks.0.hook_resid_pre", "attn": "blocks.0.hook_attn_out", "mlp": "blocks.0.hook_mlp_out"}
HEAD_Z = "blocks.0.attn.hook_z"
HEAD_RESULT = "blocks.0.attn.hook_result"
MLP_POST = "blocks.0.mlp.hook_post"
COMPONENT_KINDS = ("embed", "attn", "heads", "mlp")

Unit = tuple[str, "int | None"]


def component_names(model, kinds=COMPONENT_KINDS) -> list[str]:
    """['embed', 'attn', 'head.0', ..., 'mlp'] for the chosen kinds, in that order."""
    out = []
    for k in COMPONENT_KINDS:
        if k in kinds:
            out += [f"head.{h}" for h in range(model.cfg.n_heads)] if k == "heads" else [k]
    return out


def hook_of(component: str) -> tuple[str, int | None]:
    """(hook name, head index or None) of a component within one model (across models see cross_hooks)."""
    if component.startswith("head."):
        return HEAD_Z, int(component.split(".")[1])
    if component not in HOOKS:
        raise ValueError(f"unknown component {component!r}; use embed, attn, mlp or head.<h>")
    return HOOKS[component], None


def _index(pos, head):
    return (slice(None), slice(None) if pos is None else pos) + (() if head is None else (head,))


def final_logits(model, tokens: torch.Tensor, hooks=(), batch: int = 256) -> torch.Tensor:
    """Logits [n, vocab] at the last position, in float32, with forward hooks `hooks`: a list of
    (hook name, fn(act, hook, rows)) where `rows` is the slice of examples in this chunk."""
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch):
            rows = slice(start, min(start + batch, tokens.shape[0]))
            fwd = [(name, (lambda f, r: lambda act, hook: f(act, hook, r))(fn, rows)) for name, fn in hooks]
            resid = model.run_with_hooks(tokens[rows].to(dev), fwd_hooks=fwd, stop_at_layer=model.cfg.n_layers)
            out.append(model.unembed(model.ln_final(resid[:, -1:]))[:, 0].float())
    return torch.cat(out)


def run_cache(model, tokens: torch.Tensor, names: list[str], batch: int = 256) -> dict[str, torch.Tensor]:
    """Activations of the named hooks on `tokens`, [n, ...] on the model's device."""
    dev = next(model.parameters()).device
    parts: dict[str, list] = {n: [] for n in names}
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch):
            _, cache = model.run_with_cache(tokens[start:start + batch].to(dev), names_filter=lambda n: n in parts,
                                            stop_at_layer=model.cfg.n_layers)
            for n in names:
                parts[n].append(cache[n])
    return {n: torch.cat(v) for n, v in parts.items()}


def patch_hooks(units: list[Unit], source: dict[str, torch.Tensor]):
    """Forward hooks that overwrite each unit's activation with the one in `source` (a cache of the
    same examples: another prompt in the same model, or the same prompt in another model)."""
    by_hook: dict[str, list] = {}
    for comp, pos in units:
        name, head = hook_of(comp)
        by_hook.setdefault(name, []).append(_index(pos, head))

    def make(name, indices):
        def hook(act, hook, rows):
            src = source[name][rows]
            for idx in indices:
                act[idx] = src[idx]
            return act
        return hook

    return [(name, make(name, idx)) for name, idx in by_hook.items()]


def cache_names(units: list[Unit]) -> list[str]:
    return sorted({hook_of(c)[0] for c, _ in units})


# ---------------------------------------------------------------------------------------------
# Within one model
# ---------------------------------------------------------------------------------------------


def model_metrics(model, batch: TaskBatch, size: int = 256) -> dict[str, float]:
    """The task's metrics on clean prompts, plus the counterfactual prompts' mean logit difference."""
    clean = task_metrics(final_logits(model, batch.clean, batch=size), batch)
    corrupt = final_logits(model, batch.corrupt, batch=size)
    ld_c = logit_diff(corrupt, batch.answer.to(corrupt.device), batch.wrong.to(corrupt.device))
    return {**clean, "corrupt_logit_diff": float(ld_c.mean()), "examples": len(batch)}


def mean_ld(logits: torch.Tensor, batch: TaskBatch) -> float:
    return float(logit_diff(logits, batch.answer.to(logits.device), batch.wrong.to(logits.device)).mean())


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
        rows.append({"component": unit[0], "position": _rel(unit[1], batch.length), "ld": ld,
                     "effect": _share(ld - ld_corrupt, ld_clean - ld_corrupt)})
        if log and (i + 1) % 50 == 0:
            log(f"patched {i + 1}/{len(units)} units")
    return pd.DataFrame(rows).astype({"position": "Int64"})


def _rel(pos, length):
    return None if pos is None else pos - length


def _share(num: float, gap: float) -> float:
    return float(num / gap) if abs(gap) > 1e-9 else float("nan")


def path_patching(model, batch: TaskBatch, size: int = 256) -> pd.DataFrame:
    """Per head, the clean-minus-corrupt change of its output added (at every position) only along one
    path of the corrupt run: into the MLP's input (resid_mid, taken back out of resid_post) or straight
    to the logits (resid_post). effect as in `activation_patching`."""
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

        for path, hooks in (("mlp", [("blocks.0.hook_resid_mid", add), ("blocks.0.hook_resid_post", sub)]),
                            ("logits", [("blocks.0.hook_resid_post", add)])):
            ld = mean_ld(final_logits(model, batch.corrupt, hooks, size), batch)
            rows.append({"head": h, "path": path, "ld": ld, "effect": _share(ld - ld_corrupt, ld_clean - ld_corrupt)})
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
        return _share(m["accuracy"], full_m["accuracy"]), _share(m["logit_diff"], full_m["logit_diff"]), m["accuracy"]

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


# ---------------------------------------------------------------------------------------------
# Across models: CMAP
# ---------------------------------------------------------------------------------------------


def head_results(model, z: torch.Tensor) -> torch.Tensor:
    """Per-head contributions to the residual stream [n, L, H, d_model] from hook_z [n, L, H, d_head]."""
    return torch.einsum("nphd,hdm->nphm", z, model.blocks[0].attn.W_O)


def cross_hooks(units: list[Unit], donor: dict[str, torch.Tensor], recipient):
    """Forward hooks that put the donor model's activation of each unit into the `recipient` model on the
    same examples. A head's output is its residual contribution (`hook_result`): the recipient's
    attention output gets the donor's result minus the recipient's own result in this very pass (read
    from its hook_z), exactly what patching hook_result does, without making TransformerLens
    materialise every head's result on every pass."""
    plain = [u for u in units if not u[0].startswith("head.")]
    hooks = patch_hooks(plain, donor)
    heads = [u for u in units if u[0].startswith("head.")]
    if heads:
        w_o = recipient.blocks[0].attn.W_O
        seen = {}

        def keep(act, hook, rows):
            seen["z"] = act
            return act

        def add(act, hook, rows):
            for comp, pos in heads:
                h = hook_of(comp)[1]
                idx = _index(pos, None)
                own = seen["z"][:, :, h] @ w_o[h]
                act[idx] = act[idx] + (donor[HEAD_RESULT][rows][:, :, h] - own)[idx]
            return act
        hooks += [(HEAD_Z, keep), (HOOKS["attn"], add)]
    return hooks


def cross_cache(model, tokens: torch.Tensor, size: int = 256) -> dict[str, torch.Tensor]:
    """The activations CMAP patches across models: embed, attn, mlp outputs and each head's result."""
    cache = run_cache(model, tokens, [*HOOKS.values(), HEAD_Z], size)
    cache[HEAD_RESULT] = head_results(model, cache.pop(HEAD_Z))
    return cache


def cmap(parent, child, batch: TaskBatch, components: list[str], size: int = 256, log=None, min_gap_se: float = 2.0) -> pd.DataFrame:
    """Cross-model activation patching on the clean prompts, both directions, for every component at
    every position and at all positions. One row per (direction, component, position): ld, share.
    Shares are NaN when the gap is within `min_gap_se` standard errors of zero (nothing to recover)."""
    units = [(c, p) for c in components for p in [None, *range(batch.length)]]
    cache = {"parent": cross_cache(parent, batch.clean, size), "child": cross_cache(child, batch.clean, size)}
    ld_p, ld_c, gap, se, real = edge_gap(parent, child, batch, size, min_gap_se)
    rows = []
    for i, unit in enumerate(units):
        into_parent = mean_ld(final_logits(parent, batch.clean, cross_hooks([unit], cache["child"], parent), size), batch)
        into_child = mean_ld(final_logits(child, batch.clean, cross_hooks([unit], cache["parent"], child), size), batch)
        pos = _rel(unit[1], batch.length)
        rows.append({"direction": "child_into_parent", "component": unit[0], "position": pos, "ld": into_parent,
                     "share": _share(into_parent - ld_p, gap) if real else float("nan")})
        rows.append({"direction": "parent_into_child", "component": unit[0], "position": pos, "ld": into_child,
                     "share": _share(ld_c - into_child, gap) if real else float("nan")})
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


def feature_contribution(model, sae, post: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The MLP output [n, L, d_model] carried by the SAE features in `mask` [d_sae] (bool): their part
    of the reconstruction of `post` (hook_post [n, L, d_mlp]) through the model's W_out."""
    n, L, d = post.shape
    f = sae.encode(post.reshape(-1, d)) * mask.to(post.device)
    part = sae.decode(f) - sae.decode(torch.zeros_like(f[:1]))
    return (part @ model.blocks[0].mlp.W_out).reshape(n, L, -1)


def feature_cmap(parent, child, sae_parent, sae_child, batch: TaskBatch, sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 size: int = 256, min_gap_se: float = 2.0) -> pd.DataFrame:
    """Feature-level CMAP: per named set (child mask, parent mask), the parent's MLP output at every
    position becomes its own minus what its features in the parent mask carry plus what the child's
    features in the child mask carry (on the same clean prompts); share of the gap recovered."""
    names = [MLP_POST, HOOKS["mlp"]]
    with torch.no_grad():
        cp = run_cache(parent, batch.clean, names, size)
        cc = run_cache(child, batch.clean, [MLP_POST], size)
        ld_p, ld_c, gap, se, real = edge_gap(parent, child, batch, size, min_gap_se)
        rows = []
        for name, (child_mask, parent_mask) in sets.items():
            out = cp[HOOKS["mlp"]] - feature_contribution(parent, sae_parent, cp[MLP_POST], parent_mask) \
                + feature_contribution(child, sae_child, cc[MLP_POST], child_mask)

            def put(act, hook, r, o=out):
                return o[r]

            ld = mean_ld(final_logits(parent, batch.clean, [(HOOKS["mlp"], put)], size), batch)
            rows.append({"set": name, "child_features": int(child_mask.sum()), "parent_features": int(parent_mask.sum()),
                         "ld": ld, "share": _share(ld - ld_p, gap) if real else float("nan")})
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
    sets = {"persisted": (mask(child_table, ["persisted"], nc), mask(parent_table, ["persists"], np_)),
            "emerged": (mask(child_table, ["emerged"], nc), mask(parent_table, ["disappears"], np_)),
            "all_live": (mask(child_table, ["persisted", "emerged"], nc), mask(parent_table, ["persists", "disappears"], np_))}
    live_c = child_table.loc[child_table["status"] != "dead", "feature"].tolist()
    live_p = parent_table.loc[parent_table["status"] != "dead", "feature"].tolist()
    rng = random.Random(seed)
    for name in ("persisted", "emerged"):
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
    for name in ("persisted", "emerged"):
        rand = fc[fc["set"].str.startswith(f"random_{name}_")]["share"].to_numpy()
        mean, std = (float(np.mean(rand)), float(np.std(rand))) if len(rand) else (float("nan"), float("nan"))
        out[f"random_{name}_mean"], out[f"random_{name}_std"] = mean, std
        out[f"{name}_z"] = (out[name] - mean) / std if std > 0 else float("nan")
    return out
