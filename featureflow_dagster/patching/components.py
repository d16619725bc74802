"""Components and units, their hooks, and running a `HookedTransformer` with hooks: what every
patching experiment is built from. A unit is (component, position); position None means every
position at once. Positions are indices into the prompt (0 .. length-1); reports show them relative
to the end (-length .. -1)."""

from __future__ import annotations


import torch

from featureflow_dagster.hooks import COMPONENT_HOOKS, COMPONENT_KINDS, HEAD_Z
from featureflow_dagster.patching.tasks import TaskBatch, logit_diff, task_metrics

HOOKS = COMPONENT_HOOKS

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


def unit_index(pos, head):
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
        by_hook.setdefault(name, []).append(unit_index(pos, head))

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


def model_metrics(model, batch: TaskBatch, size: int = 256) -> dict[str, float]:
    """The task's metrics on clean prompts, plus the counterfactual prompts' mean logit difference."""
    clean = task_metrics(final_logits(model, batch.clean, batch=size), batch)
    corrupt = final_logits(model, batch.corrupt, batch=size)
    ld_c = logit_diff(corrupt, batch.answer.to(corrupt.device), batch.wrong.to(corrupt.device))
    return {**clean, "corrupt_logit_diff": float(ld_c.mean()), "examples": len(batch)}


def mean_ld(logits: torch.Tensor, batch: TaskBatch) -> float:
    return float(logit_diff(logits, batch.answer.to(logits.device), batch.wrong.to(logits.device)).mean())


def relative_position(pos, length):
    return None if pos is None else pos - length


def gap_share(num: float, gap: float) -> float:
    return float(num / gap) if abs(gap) > 1e-9 else float("nan")
