"""Matching an edge's features: every feature's top-k partners by exact Pearson r over token positions,
and data-free by decoder cosine, with the agreement of the two methods."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from featureflow_dagster.correlation import Correlation, TopMatches, correlate_features, correlation_matrix
from featureflow_dagster.lineage import DEFAULT_THRESHOLD
from featureflow_dagster.flow.classify import classify_edge, edge_counts



def matches_table(corr: Correlation) -> pd.DataFrame:
    """Long table of each feature's top-k partners both ways by activation correlation:
    method, direction, feature, rank, partner, r, dead."""
    return _long_table("activation", corr.parent_top, corr.child_top, corr.parent_moments.dead, corr.child_moments.dead)


def _long_table(method: str, parent_top: TopMatches, child_top: TopMatches, parent_dead, child_dead) -> pd.DataFrame:
    frames = []
    for direction, top, dead in (("parent_to_child", parent_top, parent_dead), ("child_to_parent", child_top, child_dead)):
        n, k = top.index.shape
        frames.append(pd.DataFrame({
            "method": method,
            "direction": direction,
            "feature": np.repeat(np.arange(n), k),
            "rank": np.tile(np.arange(k), n),
            "partner": top.index.ravel(),
            "r": top.r.ravel(),
            "dead": np.repeat(np.asarray(dead, bool), k),
        }))
    return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def decoder_matches(w_parent: torch.Tensor, w_child: torch.Tensor, k: int = 5, block: int = 4096) -> tuple[TopMatches, TopMatches]:
    """Each feature's k most similar decoder directions on the other side (cosine), both ways,
    in blocks of `block` parent features: memory block × n, never m × n."""
    a = torch.nn.functional.normalize(w_parent.float(), dim=1)
    b = torch.nn.functional.normalize(w_child.float(), dim=1)
    m, n = a.shape[0], b.shape[0]
    k_p, k_c = min(k, n), min(k, m)
    p_idx = torch.empty(m, k_p, dtype=torch.long)
    p_val = torch.empty(m, k_p)
    c_val = torch.full((n, k_c), -torch.inf, device=a.device)
    c_idx = torch.full((n, k_c), -1, dtype=torch.long, device=a.device)
    for s in range(0, m, block):
        cos = a[s : s + block] @ b.T  # [block, n]
        v, i = cos.topk(k_p, dim=1)
        p_val[s : s + block], p_idx[s : s + block] = v.cpu(), i.cpu()
        v, i = cos.T.topk(min(k_c, cos.shape[0]), dim=1)  # this block's best parents of every child
        both_v, both_i = torch.cat([c_val, v], 1), torch.cat([c_idx, i + s], 1)
        keep = both_v.topk(k_c, dim=1).indices
        c_val, c_idx = both_v.gather(1, keep), both_i.gather(1, keep)
    return (TopMatches(p_idx.numpy(), p_val.double().numpy()),
            TopMatches(c_idx.cpu().numpy(), c_val.double().cpu().numpy()))


def add_cosines(matches: pd.DataFrame, w_parent: torch.Tensor, w_child: torch.Tensor) -> pd.DataFrame:
    """The decoder cosine of every (feature, partner) row of a matches table, whichever method found it."""
    a = torch.nn.functional.normalize(w_parent.float().cpu(), dim=1).numpy()
    b = torch.nn.functional.normalize(w_child.float().cpu(), dim=1).numpy()
    to_child = (matches["direction"] == "parent_to_child").to_numpy()
    feat, part = matches["feature"].to_numpy(), matches["partner"].to_numpy()
    p_idx = np.where(to_child, feat, part)
    c_idx = np.where(to_child, part, feat)
    ok = part >= 0
    cos = np.full(len(matches), np.nan)
    cos[ok] = np.einsum("ij,ij->i", a[p_idx[ok]], b[c_idx[ok]])
    return matches.assign(cosine=cos)


def decoder_table(parent_top: TopMatches, child_top: TopMatches) -> pd.DataFrame:
    """decoder_matches as a long table (method 'decoder'; r holds the cosine; no feature is dead by weights)."""
    return _long_table("decoder", parent_top, child_top, np.zeros(parent_top.index.shape[0], bool),
                       np.zeros(child_top.index.shape[0], bool))


def agreement(matches: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """How often decoder-cosine matching picks the same best partner as activation correlation, per
    side: over all live features, and over those activation matching calls persisting (r > threshold).
    Also the median decoder cosine of the activation-best pairs (needs the `cosine` column of
    `add_cosines`) beside that of the decoder-best pairs."""
    rows = []
    best = matches[matches["rank"] == 0]
    for direction, side in (("parent_to_child", "parent"), ("child_to_parent", "child")):
        act = best[(best["method"] == "activation") & (best["direction"] == direction)].set_index("feature")
        dec = best[(best["method"] == "decoder") & (best["direction"] == direction)].set_index("feature")
        live = act.index[~act["dead"].to_numpy() & (act["partner"].to_numpy() >= 0)]
        act, dec = act.loc[live], dec.loc[live]
        same = act["partner"].to_numpy() == dec["partner"].to_numpy()
        matched = act["r"].to_numpy() > threshold
        cos_of_act = act["cosine"].to_numpy() if "cosine" in act else np.full(live.size, np.nan)
        rows.append({
            "side": side,
            "live_features": int(live.size),
            "same_best_partner": int(same.sum()),
            "agreement": float(same.mean()) if live.size else float("nan"),
            "matched_by_activation": int(matched.sum()),
            "same_best_partner_when_matched": int((same & matched).sum()),
            "agreement_when_matched": float(same[matched].mean()) if matched.any() else float("nan"),
            "median_cosine_of_activation_best": float(np.nanmedian(cos_of_act)) if np.isfinite(cos_of_act).any() else float("nan"),
            "median_cosine_of_decoder_best": float(dec["r"].median()) if live.size else float("nan"),
        })
    return pd.DataFrame(rows)


@dataclass
class EdgeCorrelation:
    """What `correlate_edge` measured, for the asset's metadata."""

    tokens: int
    dead: dict[str, int]  # features that never vary on these tokens, per side
    counts: dict[str, int]  # edge_counts at the threshold
    method: str  # how the cross-moment was computed
    correlation_seconds: float
    decoder_seconds: float
    agreement: pd.DataFrame  # activation vs decoder matching (`agreement`)
    one_to_one: dict | None = None  # `one_to_one`'s summary per method; None above flow.one_to_one_max features


def one_to_one(r: np.ndarray, cosine: np.ndarray, threshold: float) -> tuple[pd.DataFrame, dict]:
    """The Hungarian assignment (`scipy.optimize.linear_sum_assignment`) of parent to child features, once on 1 - r
    (activation) and once on 1 - decoder cosine (decoder): each feature matched to at most one on the other side,
    the pairing with the largest total similarity. Features dead on either side (r NaN) are left out of the
    activation assignment. Returns (pairs: method, parent, child, similarity; per method the mean matched
    similarity, pairs and pairs above `threshold`)."""
    from scipy.optimize import linear_sum_assignment

    rows, summary = [], {}
    for method, sim in (("activation", r), ("decoder", cosine)):
        live_p = np.flatnonzero(~np.isnan(sim).all(1))
        live_c = np.flatnonzero(~np.isnan(sim).all(0))
        block = np.nan_to_num(sim[np.ix_(live_p, live_c)].astype(np.float64), nan=0.0)
        i, j = linear_sum_assignment(block, maximize=True)
        values = block[i, j]
        rows.append(pd.DataFrame({"method": method, "parent": live_p[i], "child": live_c[j], "similarity": values}))
        summary[method] = {"pairs": int(values.size), "mean_similarity": float(values.mean()) if values.size else float("nan"),
                           "above_threshold": int((values > threshold).sum())}
    return pd.concat(rows, ignore_index=True), summary


def decoder_cosines(w_parent: torch.Tensor, w_child: torch.Tensor) -> np.ndarray:
    """The full [parent, child] cosine matrix of two decoders [d_sae, d_in] (float32)."""
    a = torch.nn.functional.normalize(w_parent.detach().float().cpu(), dim=1)
    b = torch.nn.functional.normalize(w_child.detach().float().cpu(), dim=1)
    return (a @ b.T).numpy()


def correlate_edge(chunks: Callable[[], Iterator], m: int, n: int, w_parent: torch.Tensor, w_child: torch.Tensor, spec,
                   folder: Path, log=None) -> EdgeCorrelation:
    """Exact correlations between the `m` parent and `n` child features over the edge's codes (`chunks()`
    iterates them afresh), each feature's top-k partners both ways, and the data-free decoder-cosine
    matches (`w_*`: decoders [d_sae, d_in]); written into `folder` as matches.parquet (both methods,
    with cosines), features.parquet (moments, dead) and, with `spec.full_matrix`, matrix.safetensors.
    `spec` is the lineage's `FlowSpec`."""
    started = time.perf_counter()
    need_full = spec.full_matrix or max(m, n) <= spec.one_to_one_max
    corr = correlate_features(chunks, m, n, top_k=spec.top_k, row_block=spec.row_block, log=log, keep_matrix=need_full)
    corr_seconds = time.perf_counter() - started
    started = time.perf_counter()
    dec_parent, dec_child = decoder_matches(w_parent, w_child, k=spec.top_k)
    dec_seconds = time.perf_counter() - started
    matches = add_cosines(pd.concat([matches_table(corr), decoder_table(dec_parent, dec_child)], ignore_index=True), w_parent, w_child)
    features = pd.concat([
        pd.DataFrame({"side": side, "feature": np.arange(mom.sum.size), "mean": mom.mean, "std": mom.std, "dead": mom.dead})
        for side, mom in (("parent", corr.parent_moments), ("child", corr.child_moments))], ignore_index=True)
    matches.to_parquet(folder / "matches.parquet", index=False)
    features.to_parquet(folder / "features.parquet", index=False)
    full, assignment = corr.matrix, None  # the dense path kept it; the sparse one never formed it
    if need_full and full is None:
        full = correlation_matrix(chunks, corr.parent_moments, corr.child_moments, spec.row_block)
    if spec.full_matrix:
        save_file({"r": torch.from_numpy(full)}, str(folder / "matrix.safetensors"))
    if max(m, n) <= spec.one_to_one_max:
        pairs, assignment = one_to_one(full, decoder_cosines(w_parent, w_child), spec.threshold)
        pairs.to_parquet(folder / "one_to_one.parquet", index=False)
        if log:
            log(f"one-to-one: mean matched r {assignment['activation']['mean_similarity']:.3f}, "
                f"decoder cosine {assignment['decoder']['mean_similarity']:.3f}")
    parent_t, child_t = classify_edge(matches, spec.threshold)
    return EdgeCorrelation(corr.parent_moments.tokens, {"parent": int(corr.parent_moments.dead.sum()), "child": int(corr.child_moments.dead.sum())},
                           edge_counts(parent_t, child_t), corr.method, corr_seconds, dec_seconds, agreement(matches, spec.threshold),
                           assignment)
