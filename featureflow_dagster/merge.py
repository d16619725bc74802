"""Model merging: mergekit in-process for the merged models, and an in-memory SLERP sweep.

The merged model a merge node saves is always mergekit's (`mergekit_merge`), the field's standard
and the tool Horn & Elliott used. The SLERP sweep needs dozens of merges of the same two models;
mergekit writes each to disk, so the sweep computes them itself (`SlerpPlan`), equal to mergekit's
`slerp` within 1e-6 relative error (tested), with the per-tensor geometry (norms, angle) computed
once and only the two coefficients changing with t.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass
from pathlib import Path

import torch

# mergekit's defaults: above this |cos| two tensors count as parallel and are interpolated linearly.
DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS):
    """Spherical linear interpolation of two whole tensors (Shoemake 1985), as mergekit does it.

    v0, v1: same shape; the tensors are treated as single vectors. Computed in float32 (float64 when
    the inputs are). Returns (result with v0's shape, True when it fell back to linear interpolation
    because |cos θ| > dot_threshold)."""
    plan = _SlerpGeometry.of(v0, v1, dot_threshold, eps)
    return plan.at(t, v0, v1), plan.linear


@dataclass
class _SlerpGeometry:
    theta: torch.Tensor  # angle between the two tensors, 0-d, in `dtype`
    linear: bool
    dtype: torch.dtype

    @classmethod
    def of(cls, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float, eps: float) -> "_SlerpGeometry":
        dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
        a, b = v0.reshape(-1).to(dtype), v1.reshape(-1).to(dtype)
        na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
        na = torch.where(na > eps, na, torch.ones_like(na))
        nb = torch.where(nb > eps, nb, torch.ones_like(nb))
        dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
        linear = bool(dot.abs() > dot_threshold)
        theta = torch.zeros((), dtype=dtype) if linear else torch.acos(dot)
        return cls(theta, linear, dtype)

    def coefficients(self, t: float) -> tuple[float, float]:
        if self.linear:
            return 1 - t, t
        tt = torch.tensor(t, dtype=self.dtype)
        sin_theta = torch.sin(self.theta)
        return float(torch.sin((1 - tt) * self.theta) / sin_theta), float(torch.sin(tt * self.theta) / sin_theta)

    def at(self, t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        ca, cb = self.coefficients(t)
        return (ca * v0.to(self.dtype) + cb * v1.to(self.dtype)).to(v0.dtype)


class SlerpPlan:
    """SLERP of two state dicts at many t, written straight into a model's parameters.

    state0, state1: {name: tensor} of identical keys and shapes (t = 0 gives state0)."""

    def __init__(self, state0: dict[str, torch.Tensor], state1: dict[str, torch.Tensor],
                 dot_threshold: float = DOT_THRESHOLD, eps: float = EPS):
        if state0.keys() != state1.keys():
            missing = sorted(set(state0) ^ set(state1))
            raise ValueError(f"the two models do not have the same tensors; differing: {missing[:5]}")
        for name in state0:
            if state0[name].shape != state1[name].shape:
                raise ValueError(f"tensor '{name}' has shape {tuple(state0[name].shape)} vs {tuple(state1[name].shape)}")
        self.state0, self.state1 = state0, state1
        self.geometry = {k: _SlerpGeometry.of(state0[k], state1[k], dot_threshold, eps) for k in state0}

    @property
    def linear_fallbacks(self) -> list[str]:
        """Tensors interpolated linearly because the parents' versions are nearly parallel."""
        return [k for k, g in self.geometry.items() if g.linear]

    def state_at(self, t: float) -> dict[str, torch.Tensor]:
        return {k: g.at(t, self.state0[k], self.state1[k]) for k, g in self.geometry.items()}

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, t: float) -> None:
        """Set `model`'s tensors to the merge at t, in place (no new model, no disk)."""
        # every state-dict key, tied ones included (named_parameters drops a tensor's second name,
        # e.g. lm_head.weight tied to the embedding); a tied tensor is written once per name, identically
        params = model.state_dict(keep_vars=True)
        for name, g in self.geometry.items():
            ca, cb = g.coefficients(t)
            target = params[name]
            if g.dtype == target.dtype:
                torch.add(self.state0[name].to(g.dtype) * ca, self.state1[name].to(g.dtype), alpha=cb, out=target.data)
            else:
                target.data.copy_(g.at(t, self.state0[name], self.state1[name]))


def mergekit_config(method: str, parent_dirs: list[Path], base_dir: Path | None, *, t: float | None = None,
                    weights: list[float] | None = None, density: float | None = None,
                    normalize: bool | None = None) -> dict:
    """A mergekit merge configuration (the YAML mergekit reads, as a dict) for one merge node."""
    models = []
    for i, p in enumerate(parent_dirs):
        params = {}
        if method != "slerp":
            params["weight"] = (weights or [1.0 / len(parent_dirs) if method == "linear" else 1.0] * len(parent_dirs))[i]
        if density is not None:
            params["density"] = density
        models.append({"model": str(p), **({"parameters": params} if params else {})})
    cfg: dict = {"merge_method": method, "dtype": "float32", "models": models}
    if method == "slerp":
        cfg["base_model"] = str(parent_dirs[0])
        cfg["parameters"] = {"t": t}
        cfg["models"] = [{"model": str(p)} for p in parent_dirs]
    elif method != "linear":
        cfg["base_model"] = str(base_dir)
    if normalize is not None:
        cfg.setdefault("parameters", {})["normalize"] = normalize
    return cfg


def mergekit_merge(config: dict, out_dir: Path, seed: int) -> None:
    """Run mergekit in-process on a configuration from `mergekit_config`, writing a Hugging Face folder.

    The seed drives DARE's random drops (mergekit seeds torch, numpy and random with it)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    merge_config = MergeConfiguration.model_validate(config)
    with _saved_weights_only([Path(m["model"]) for m in config["models"]]):
        run_merge(
            merge_config,
            str(out_dir),
            MergeOptions(copy_tokenizer=True, quiet=True, write_model_card=False, random_seed=seed, lazy_unpickle=False),
        )


@contextlib.contextmanager
def _saved_weights_only(model_dirs: list[Path]):
    """mergekit's architecture definitions list some buffers that transformers 5 no longer saves (GPT-NeoX's
    attention.bias, masked_bias and rotary inv_freq; GPT-2's attn.bias): with them required, mergekit refuses
    every model saved today. Within this block, a weight that none of the models' safetensors hold is optional
    (mergekit then skips it, as transformers rebuilds it on load); every saved tensor is still merged. mergekit
    has no option for this, so its lookup `mergekit.merge.get_architecture_info` is wrapped for the block."""
    import mergekit.merge as mm
    from mergekit.architecture.base import ModuleArchitecture, ModuleDefinition
    from safetensors import safe_open

    present: set[str] = set()
    for folder in model_dirs:
        for f in folder.glob("*.safetensors"):
            with safe_open(str(f), framework="pt") as st:
                present.update(st.keys())

    class SavedOnly(ModuleArchitecture):
        def __init__(self, inner, prefix):
            self.inner, self.prefix = inner, prefix or ""

        def _mark(self, weights):
            def saved(w):
                return any(self.prefix + n in present for n in (w.name, *(w.aliases or ()), *(w.tied_names or ())))
            return [w if w.optional or saved(w) else w.model_copy(update={"optional": True}) for w in weights]

        def pre_weights(self, config):
            return self._mark(self.inner.pre_weights(config))

        def post_weights(self, config):
            return self._mark(self.inner.post_weights(config))

        def layer_weights(self, index, config):
            return self._mark(self.inner.layer_weights(index, config))

        def num_layers_config_key(self):
            return self.inner.num_layers_config_key()

        def num_layers(self, config):
            return self.inner.num_layers(config)

    original = mm.get_architecture_info

    def saved_only(config, options):
        arch = original(config, options)
        modules = {k: ModuleDefinition(architecture=SavedOnly(m.architecture, m.weight_prefix), weight_prefix=m.weight_prefix,
                                       subfolder=m.subfolder) for k, m in arch.modules.items()}
        return arch.model_copy(update={"modules": modules})

    mm.get_architecture_info = saved_only
    try:
        yield
    finally:
        mm.get_architecture_info = original


@dataclass(frozen=True)
class BalancePoint:
    """Where two accuracy curves cross along t.

    t: the chosen t. crossed: whether the curves really cross (or touch) inside the grid.
    accuracy: the (interpolated) accuracy on both domains at t (equal when crossed).
    note: how t was chosen, in words, for the asset's metadata."""

    t: float
    crossed: bool
    accuracy_a: float
    accuracy_b: float
    note: str


def balance_point(ts: list[float], acc_a: list[float], acc_b: list[float]) -> BalancePoint:
    """The t where accuracy on domain a equals accuracy on domain b, linearly interpolated.

    Let d(t) = acc_a(t) - acc_b(t) on the grid. A grid point with d = 0 is a crossing (touching
    counts); between two grid points where d changes sign the crossing is at the zero of the line
    through them. With several crossings, the one with the highest accuracy there is chosen (the
    best balanced merge). Without any, the grid point with the smallest |d| is chosen and
    `crossed` is False: the caller shows it, it does not hide it."""
    if not (len(ts) == len(acc_a) == len(acc_b)) or len(ts) < 2:
        raise ValueError("balance_point needs at least two grid points with both accuracies at each")
    d = [a - b for a, b in zip(acc_a, acc_b)]
    candidates: list[tuple[float, float, float]] = []  # (t, acc_a, acc_b)
    for i, di in enumerate(d):
        if di == 0:
            candidates.append((ts[i], acc_a[i], acc_b[i]))
        if i + 1 < len(d) and di * d[i + 1] < 0:
            w = di / (di - d[i + 1])
            t = ts[i] + w * (ts[i + 1] - ts[i])
            candidates.append((t, acc_a[i] + w * (acc_a[i + 1] - acc_a[i]), acc_b[i] + w * (acc_b[i + 1] - acc_b[i])))
    if candidates:
        t, a, b = max(candidates, key=lambda c: (c[1] + c[2], -abs(c[0] - 0.5)))
        note = f"accuracies cross at t = {t:.4f}" + (f" ({len(candidates)} crossings; kept the most accurate)" if len(candidates) > 1 else "")
        return BalancePoint(t, True, a, b, note)
    i = min(range(len(d)), key=lambda j: (abs(d[j]), abs(ts[j] - 0.5)))
    leader = "a" if d[i] > 0 else "b"
    note = (f"NO CROSSING: domain {leader} is ahead at every t of the grid; kept the grid point with the "
            f"smallest gap, t = {ts[i]:.4f} (|Δ| = {abs(d[i]):.4f})")
    return BalancePoint(ts[i], False, acc_a[i], acc_b[i], note)


def sweep_slerp(
    model: torch.nn.Module,
    plan: SlerpPlan,
    grid: list[float],
    domains: dict[str, torch.Tensor],
    evaluate,
    log=None,
) -> list[dict]:
    """Evaluate the SLERP merge at every t of `grid`, in memory.

    model: a model of the parents' architecture whose tensors are overwritten at each t.
    domains: {label: validation blocks int [n, n_ctx]}, e.g. each parent's own domain.
    evaluate: (model, blocks) -> {"loss", "accuracy", "tokens"}.
    Returns one row per (t, domain): t, domain, loss, accuracy, tokens, seconds_merge, seconds_eval."""
    import time

    rows = []
    for i, t in enumerate(grid):
        t0 = time.perf_counter()
        plan.load_into(model, t)
        t1 = time.perf_counter()
        for label, blocks in domains.items():
            ev = evaluate(model, blocks)
            rows.append({"t": t, "domain": label, **ev, "seconds_merge": t1 - t0, "seconds_eval": time.perf_counter() - t1})
        if log and (i % max(1, len(grid) // 10) == 0 or i == len(grid) - 1):
            accs = ", ".join(f"{r['domain']} {r['accuracy']:.3f}" for r in rows[-len(domains):])
            log(f"sweep t={t:.2f} ({i + 1}/{len(grid)}): accuracy {accs}")
    return rows


@dataclass
class SlerpSweep:
    table: "pd.DataFrame"  # one row per (t, domain): t, domain, loss, accuracy, tokens, seconds_merge, seconds_eval
    balance: BalancePoint
    ancestor_accuracy: dict[str, float]  # the nearest common ancestor on each domain
    linear_fallbacks: list[str]
    seconds: float

    def accuracy_at(self, t: float) -> dict[str, float]:
        rows = self.table[self.table["t"] == t]
        return dict(zip(rows["domain"], rows["accuracy"]))


def run_slerp_sweep(first: torch.nn.Module, second: torch.nn.Module, ancestor: torch.nn.Module,
                    domains: dict[str, torch.Tensor], grid: list[float], evaluate, device, log=None) -> SlerpSweep:
    """Horn & Elliott's merge sweep: SLERP first -> second at every t of `grid`, scored on each
    parent's own domain (`domains`: exactly two labels, the first parent's first), and the t where
    the two accuracies balance. `first` is used as the working copy and is overwritten."""
    import time

    import pandas as pd

    if len(domains) != 2:
        raise ValueError(f"a SLERP sweep scores two domains, one per parent; got {list(domains)}")
    # `first` becomes the working copy, so the plan keeps its own copy of the first parent's tensors
    plan = SlerpPlan({k: v.detach().clone() for k, v in first.state_dict().items()}, second.state_dict())
    work = first.to(device)
    started = time.perf_counter()
    table = pd.DataFrame(sweep_slerp(work, plan, grid, domains, lambda m, b: evaluate(m, b), log=log))
    seconds = time.perf_counter() - started
    label_a, label_b = domains
    by_t = table.pivot(index="t", columns="domain", values="accuracy").sort_index()
    balance = balance_point(list(by_t.index), by_t[label_a].tolist(), by_t[label_b].tolist())
    ancestor = ancestor.to(device)
    baselines = {label: evaluate(ancestor, blocks)["accuracy"] for label, blocks in domains.items()}
    return SlerpSweep(table, balance, baselines, plan.linear_fallbacks, seconds)


def sweep_node(lineage, node: str, model_dir, tokens_path, device, log=None) -> tuple[SlerpSweep, dict]:
    """The SLERP sweep of merge node `node` (`merge.slerp_t: auto`): its first parent (t=0) to its
    second (t=1), each parent scored on its own domain(s) concatenated, the parents' nearest common
    ancestor as the baseline. `model_dir(node)` and `tokens_path(node)` locate the artefacts read.
    Returns the sweep and its record (balance.json: the chosen t, how it was chosen, the grid)."""
    from featureflow_dagster.blocks import domain_validation_blocks
    from featureflow_dagster.model import load_model
    from featureflow_dagster.training import evaluate

    spec = lineage.merge_spec(node).sweep
    parents = lineage.node(node).parents
    ancestor = lineage.merge_base(node)
    domains = {}
    for p in parents:
        own = domain_validation_blocks(lineage, p, tokens_path, max_tokens=spec.eval_tokens)
        domains["+".join(own)] = torch.cat(list(own.values()))
    batch = lineage.training_spec(parents[0]).eval_batch_size
    sweep = run_slerp_sweep(
        load_model(model_dir(parents[0]), "cpu"), load_model(model_dir(parents[1]), "cpu"), load_model(model_dir(ancestor), "cpu"),
        domains, spec.grid(), lambda m, b: evaluate(m, b, batch, device), device, log=log,
    )
    bp = sweep.balance
    record = {
        "node": node, "parents": parents, "ancestor": ancestor, "t": bp.t, "crossed": bp.crossed,
        "note": bp.note, "accuracy_at_t": dict(zip(domains, (bp.accuracy_a, bp.accuracy_b))),
        "ancestor_accuracy": sweep.ancestor_accuracy, "linear_fallbacks": sweep.linear_fallbacks,
        "grid": spec.model_dump(),
    }
    return sweep, record


def merge_node(lineage, node: str, model_dir, out: Path, t: float | None) -> dict:
    """Merge node `node`'s parents into the folder `out` through mergekit (SLERP at `t`; the task-
    arithmetic family relative to the merge's base). Returns the mergekit configuration used."""
    spec = lineage.merge_spec(node)
    base = lineage.merge_reference(node)
    config = mergekit_config(
        spec.method, [model_dir(p) for p in lineage.node(node).parents], model_dir(base) if base else None,
        t=t, weights=spec.weights, density=spec.density, normalize=spec.normalize,
    )
    mergekit_merge(config, out, seed=lineage.seed_of(node))
    return config
