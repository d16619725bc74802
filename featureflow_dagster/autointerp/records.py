"""Records of a feature for auto-interp: whole windows with the feature's activation on every token,
quantised to Bills et al.'s 0–10 scale, chosen from a node's evidence (`examples.NodeEvidence`); which
features to explain; and each feature's group by its fate in the flow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featureflow_dagster.flow import DISAPPEARS, EMERGED, PERSISTED, PERSISTS


MAX_QUANT = 10


@dataclass
class Record:
    """One context of a feature: its tokens (as strings) and the feature's activation on each."""

    tokens: list[str]
    activations: list[float]


def quantize(values, max_activation: float) -> list[int]:
    """Activations on Bills et al.'s 0–10 scale relative to the feature's max (0 stays 0; a positive
    value rounds up to at least 1 so that "fires a little" is not shown as "does not fire")."""
    if max_activation <= 0:
        return [0 for _ in values]
    out = []
    for v in values:
        q = int(round(MAX_QUANT * float(v) / max_activation))
        out.append(max(1 if v > 0 else 0, min(MAX_QUANT, q)))
    return out


def inactive_records(ev, feature: int, vocab: list[str], n: int) -> list[Record]:
    """Up to n windows of the node's examples where the feature is zero on every token."""
    ex = ev.examples
    ctx = ex.windows.shape[1]
    start, end = ev.codes.indptr[feature], ev.codes.indptr[feature + 1]
    active_windows = set((ev.codes.indices[start:end] // ctx).tolist())
    out, seen = [], set()
    for p in ex.inactive_positions.tolist():
        w = p // ctx
        if w in active_windows:
            continue
        tokens = [vocab[i] for i in ex.windows[w].tolist()]
        if tuple(tokens) not in seen:  # one record per distinct window text
            seen.add(tuple(tokens))
            out.append(Record(tokens, [0.0] * ctx))
        if len(out) == n:
            break
    return out


def records_from_evidence(ev, feature: int, vocab: list[str], n_explain: int, n_score: int, seed: int
                          ) -> tuple[list[Record], list[Record]]:
    """(explain, score) records of a feature from an `examples.NodeEvidence`: whole windows with the
    feature's activation on every token. The explainer reads every other top context; the simulator
    gets the remaining top contexts and, for the rest, quantile samples drawn with `seed` (so a score
    covers weak activations too), none of them shown to the explainer."""
    ex = ev.examples
    ctx = ex.windows.shape[1]
    start, end = ev.codes.indptr[feature], ev.codes.indptr[feature + 1]
    rows, vals = ev.codes.indices[start:end], ev.codes.data[start:end]

    def record(window: int) -> Record:
        acts = [0.0] * ctx
        inside = (rows >= window * ctx) & (rows < (window + 1) * ctx)
        for r, v in zip(rows[inside].tolist(), vals[inside].tolist()):
            acts[r - window * ctx] = float(v)
        return Record([vocab[i] for i in ex.windows[window].tolist()], acts)

    top = list(dict.fromkeys(int(p) // ctx for p in ex.top_positions[feature].tolist() if p >= 0))
    explain = top[0::2][:n_explain]
    score = top[1::2][: n_score // 2]
    samples = [p // ctx for g in ex.quantile_groups(feature) for _, p in g]
    rng = np.random.default_rng(seed + feature)
    pool = [w for w in dict.fromkeys(samples) if w not in set(explain) | set(score)]
    rng.shuffle(pool)
    score += pool[: n_score - len(score)]
    return [record(w) for w in explain], [record(w) for w in score]


def choose_features(live: np.ndarray, persisting: np.ndarray, n: int, seed: int) -> tuple[list[int], list[int]]:
    """(persisting, others): up to n // 2 of the live persisting features and an equal number of the
    other live ones (n of them where nothing persists, e.g. a lineage of one node), drawn with `seed`,
    each list sorted."""
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(live & persisting)
    rest = np.flatnonzero(live & ~persisting)
    a = rng.permutation(keep)[: min(len(keep), n // 2)]
    b = rng.permutation(rest)[: min(len(rest), len(a) if len(a) else n)]
    return sorted(int(x) for x in a), sorted(int(x) for x in b)


def feature_groups(classification, node: str, features) -> list[str]:
    """Per feature of `node`, from feature_flow's classification (None: a lineage without edges):
    'persisting' (persisted from a parent or persists into a child), else 'emerged' (on an incoming
    edge), else 'disappearing' (on an outgoing edge), else 'other'."""
    if classification is None:
        return ["other"] * len(features)
    rows = classification[classification["node"] == node]
    by = {s: set(rows.loc[rows["status"] == s, "feature"].astype(int)) for s in (PERSISTS, PERSISTED, EMERGED, DISAPPEARS)}
    persisting = by[PERSISTS] | by[PERSISTED]
    return ["persisting" if f in persisting else "emerged" if f in by[EMERGED] else "disappearing" if f in by[DISAPPEARS]
            else "other" for f in map(int, features)]
