"""Components and units, their hooks, and running a `HookedTransformer` with hooks: what every
patching experiment is built from. A unit is (component, position); position None means every
position at once. Positions are indices into the prompt (0 .. length-1); reports show them relative
to the end (-length .. -1).

Components, at every layer L of the model (TransformerLens's names, `featureflow_dagster.hooks`):

  embed       `blocks.0.hook_resid_pre`   the embeddings (token, plus position where the family adds them)
  L<L>.attn   `blocks.L.hook_attn_out`    layer L's attention output
  L<L>.H<h>   head h of layer L: `blocks.L.attn.hook_z[:, :, h]` within one model (the same W_O on both
              sides); across models its contribution to the residual stream (z_h W_O_h), because the
              two models' W_O differ
  L<L>.mlp    `blocks.L.hook_mlp_out`     layer L's MLP output
  group.<g>   a head group named in the lineage (`patching.head_groups`: lists of [layer, head]), its
              heads patched together (Prakash et al.'s circuit is four such groups across layers)
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from featureflow_dagster.hooks import hook
from featureflow_dagster.patching.tasks import TaskBatch, logit_diff, task_metrics

Unit = tuple[str, "int | None"]
KINDS = ("embed", "attn", "heads", "mlp")
_NAME = re.compile(r"^(?:embed|L(\d+)\.(attn|mlp)|L(\d+)\.H(\d+)|group\.([A-Za-z0-9_]+))$")


def head_name(layer: int, head: int) -> str:
    return f"L{layer}.H{head}"


def component_names(model, kinds=KINDS, layers=None, groups: dict | None = None) -> list[str]:
    """['embed', 'L0.attn', 'L0.H0', ..., 'L0.mlp', 'L1.attn', ..., 'group.<g>', ...] for the chosen kinds,
    at `layers` (default every layer), then each head group."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    out = ["embed"] if "embed" in kinds else []
    for layer in layers:
        for k in KINDS[1:]:
            if k in kinds:
                out += [head_name(layer, h) for h in range(model.cfg.n_heads)] if k == "heads" else [f"L{layer}.{k}"]
    return out + [f"group.{g}" for g in (groups or {})]


def parse_component(component: str) -> tuple[str, int | None, int | None]:
    """(kind, layer, head): ('embed', None, None), ('attn'|'mlp', L, None), ('head', L, h), ('group', None, None)."""
    m = _NAME.match(component)
    if not m:
        raise ValueError(f"unknown component {component!r}; use embed, L<layer>.attn, L<layer>.mlp, L<layer>.H<head> or group.<name>")
    if component == "embed":
        return "embed", None, None
    if m.group(2):
        return m.group(2), int(m.group(1)), None
    if m.group(4):
        return "head", int(m.group(3)), int(m.group(4))
    return "group", None, None


def expand(units: list[Unit], groups: dict | None = None) -> list[Unit]:
    """Units with each head group replaced by its heads (at the group unit's position), in order, once each."""
    out = []
    for comp, pos in units:
        if comp.startswith("group."):
            g = comp.split(".", 1)[1]
            if not groups or g not in groups:
                raise ValueError(f"head group {g!r} is not in patching.head_groups ({sorted(groups or {})})")
            out += [(head_name(layer, h), pos) for layer, h in groups[g]]
        else:
            out.append((comp, pos))
    return list(dict.fromkeys(out))


def hook_of(component: str) -> tuple[str, int | None]:
    """(hook name, head index or None) of a component within one model (across models see cmap.cross_hooks)."""
    kind, layer, head = parse_component(component)
    if kind == "group":
        raise ValueError(f"{component} is a head group: expand it into its heads first (`expand`)")
    if kind == "embed":
        return hook("hook_resid_pre", 0), None
    if kind == "head":
        return hook("attn.hook_z", layer), head
    return hook(f"hook_{kind}_out", layer), None


def check_components(model, components: list[str], groups: dict | None = None) -> None:
    """ValueError naming the first component (or group head) the model does not have."""
    for comp, _ in expand([(c, None) for c in components], groups):
        kind, layer, head = parse_component(comp)
        if layer is not None and layer >= model.cfg.n_layers:
            raise ValueError(f"{comp}: the model has {model.cfg.n_layers} layers (0..{model.cfg.n_layers - 1})")
        if head is not None and head >= model.cfg.n_heads:
            raise ValueError(f"{comp}: the model has {model.cfg.n_heads} heads per layer (0..{model.cfg.n_heads - 1})")


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


@contextmanager
def split_qkv_inputs(model):
    """TransformerLens's per-head query/key/value inputs (`blocks.L.hook_{q,k,v}_input`, [n, pos, heads, d_model];
    key and value per key-value head under grouped-query attention) for the duration of the block."""
    before = model.cfg.use_split_qkv_input
    model.set_use_split_qkv_input(True)
    try:
        yield model
    finally:
        model.set_use_split_qkv_input(before)


def patch_hooks(units: list[Unit], source: dict[str, torch.Tensor], groups: dict | None = None):
    """Forward hooks that overwrite each unit's activation with the one in `source` (a cache of the
    same examples: another prompt in the same model, or the same prompt in another model)."""
    by_hook: dict[str, list] = {}
    for comp, pos in expand(units, groups):
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


def cache_names(units: list[Unit], groups: dict | None = None) -> list[str]:
    return sorted({hook_of(c)[0] for c, _ in expand(units, groups)})


def model_metrics(model, batch: TaskBatch, size: int = 256) -> dict[str, float]:
    """The task's metrics on clean prompts, plus the counterfactual prompts' mean logit difference."""
    clean = task_metrics(final_logits(model, batch.clean, batch=size), batch)
    corrupt = final_logits(model, batch.corrupt, batch=size)
    ld_c = logit_diff(corrupt, batch.answer.to(corrupt.device), batch.wrong.to(corrupt.device))
    return {**clean, "corrupt_logit_diff": float(ld_c.mean()), "examples": len(batch)}


def mean_ld(logits: torch.Tensor, batch: TaskBatch) -> float:
    return float(logit_diff(logits, batch.answer.to(logits.device), batch.wrong.to(logits.device)).mean())


def positions(length: int, last: int | None = None) -> list[int]:
    """The prompt positions patched one by one: all of them, or the last `last` (a budget)."""
    return list(range(0 if last is None else max(length - last, 0), length))


def relative_position(pos, length):
    return None if pos is None else pos - length


def gap_share(num: float, gap: float) -> float:
    return float(num / gap) if abs(gap) > 1e-9 else float("nan")
