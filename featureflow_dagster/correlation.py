"""Exact Pearson correlation between every feature of two SAEs over the same token positions.

Horn & Elliott (2024) correlate feature activations of a parent and a child SAE on shared data;
featureflow does it per token position (zeros included), exactly, and sparse-aware:

    r_ij = (Σ_t a_ti b_tj − T μ_i ν_j) / (T σ_i τ_j)

with a [T, m] and b [T, n] the two codes. Only the cross-moment Σ_t a_ti b_tj needs work, and it is a
product of two sparse matrices: its cost grows with T × L0(a) × L0(b), not T × m × n. Codes arrive
in token chunks (scipy CSR), moments are accumulated in float64 (float32 running sums drift by 1e-3
to 1e-2 at millions of tokens on dense features, enough to flip a 0.8 decision). Parent features are
processed in row blocks so memory stays at block × n float64.

A feature that never varies (σ = 0, e.g. never fires) is dead: its correlations are undefined, it
is flagged and never reported as anyone's match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sp


@dataclass
class FeatureMoments:
    """Per-feature first and second moments over T tokens (float64)."""

    tokens: int
    sum: np.ndarray  # [features]
    sum_sq: np.ndarray  # [features]

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.tokens

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (the T in Pearson's denominator)."""
        var = self.sum_sq / self.tokens - self.mean**2
        return np.sqrt(np.clip(var, 0.0, None))

    @property
    def dead(self) -> np.ndarray:
        # relative test: a variance at float64 round-off of the mean square is no variance
        return self.std <= 1e-12 * np.maximum(1.0, np.sqrt(self.sum_sq / self.tokens))


def moments(chunks: Iterable[sp.csr_matrix], n_features: int) -> FeatureMoments:
    total = np.zeros(n_features)
    total_sq = np.zeros(n_features)
    tokens = 0
    for c in chunks:
        c = c.astype(np.float64)
        total += np.asarray(c.sum(axis=0)).ravel()
        total_sq += np.asarray(c.multiply(c).sum(axis=0)).ravel()
        tokens += c.shape[0]
    return FeatureMoments(tokens, total, total_sq)


@dataclass
class TopMatches:
    """For every feature of one side, its k best partners on the other side, by r (descending)."""

    index: np.ndarray  # int [features, k]; -1 where fewer than k live partners exist
    r: np.ndarray  # float64 [features, k]; NaN where index is -1


@dataclass
class Correlation:
    parent_moments: FeatureMoments
    child_moments: FeatureMoments
    parent_top: TopMatches  # each parent feature's best child features
    child_top: TopMatches  # each child feature's best parent features
    full: np.ndarray | None = None  # [m, n] when asked for


def _merge_top(best_idx, best_r, cand_idx, cand_r, k):
    idx = np.concatenate([best_idx, cand_idx], axis=1)
    r = np.concatenate([best_r, cand_r], axis=1)
    order = np.argsort(-np.nan_to_num(r, nan=-np.inf), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, 1), np.take_along_axis(r, order, 1)


def _top_k_rows(r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, r.shape[1])
    filled = np.nan_to_num(r, nan=-np.inf)
    part = np.argpartition(-filled, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(filled, part, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, 1)
    vals = np.take_along_axis(vals, order, 1)
    idx = np.where(np.isfinite(vals), idx, -1)
    return idx, np.where(np.isfinite(vals), vals, np.nan)


def correlate_features(
    chunks: Callable[[], Iterable[tuple[sp.csr_matrix, sp.csr_matrix]]],
    m: int,
    n: int,
    top_k: int = 5,
    row_block: int = 2048,
    keep_full: bool = False,
    log: Callable[[str], None] | None = None,
) -> Correlation:
    """Pearson r between every parent feature (m) and child feature (n) over the tokens of `chunks`.

    chunks(): yields (parent codes [t, m], child codes [t, n]) as CSR for consecutive token chunks;
    called once for the moments and once per block of `row_block` parent features.
    Returns each side's top-k partners (and the full [m, n] matrix with keep_full)."""
    pa = moments((a for a, _ in chunks()), m)
    pb = moments((b for _, b in chunks()), n)
    if pa.tokens != pb.tokens:
        raise ValueError(f"the two codes cover {pa.tokens} and {pb.tokens} tokens; they must encode the same tokens")
    T = pa.tokens
    mu_a, sd_a, dead_a = pa.mean, pa.std, pa.dead
    mu_b, sd_b, dead_b = pb.mean, pb.std, pb.dead
    k_child = min(top_k, n)
    parent_idx = np.full((m, k_child), -1)
    parent_r = np.full((m, k_child), np.nan)
    k_parent = min(top_k, m)
    child_idx = np.full((n, k_parent), -1)
    child_r = np.full((n, k_parent), np.nan)
    full = np.full((m, n), np.nan) if keep_full else None
    for start in range(0, m, row_block):
        stop = min(m, start + row_block)
        cross = sp.csr_matrix((stop - start, n), dtype=np.float64)
        for a, b in chunks():
            a_block = a[:, start:stop].astype(np.float64).tocsc()
            if a_block.nnz:
                cross = cross + (a_block.T.tocsr() @ b.astype(np.float64))
        cov = cross.toarray() - T * np.outer(mu_a[start:stop], mu_b)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / (T * np.outer(sd_a[start:stop], sd_b))
        r[dead_a[start:stop], :] = np.nan
        r[:, dead_b] = np.nan
        np.clip(r, -1.0, 1.0, out=r)
        if full is not None:
            full[start:stop] = r
        parent_idx[start:stop], parent_r[start:stop] = _top_k_rows(r, k_child)
        cand_idx, cand_r = _top_k_rows(r.T, min(k_parent, stop - start))
        cand_idx = np.where(cand_idx >= 0, cand_idx + start, -1)
        child_idx, child_r = _merge_top(child_idx, child_r, cand_idx, cand_r, k_parent)
        if log:
            log(f"correlated parent features {start}-{stop - 1} of {m}")
    return Correlation(pa, pb, TopMatches(parent_idx, parent_r), TopMatches(child_idx, child_r), full)
