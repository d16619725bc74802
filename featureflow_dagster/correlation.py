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
    nnz: int = 0  # non-zero codes over all tokens and features

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
        """No variance: never fires, or always the same value. Relative test, because the variance
        of a constant computed as E[x²] − E[x]² is float64 round-off (~1e-16 E[x²]), not 0."""
        var = self.sum_sq / self.tokens - self.mean**2
        return var <= 1e-10 * (self.sum_sq / self.tokens) + 1e-300


def moments(chunks: Iterable[sp.csr_matrix], n_features: int) -> FeatureMoments:
    total = np.zeros(n_features)
    total_sq = np.zeros(n_features)
    tokens = nnz = 0
    for c in chunks:
        c = c.astype(np.float64)
        total += np.asarray(c.sum(axis=0)).ravel()
        total_sq += np.asarray(c.multiply(c).sum(axis=0)).ravel()
        tokens += c.shape[0]
        nnz += c.nnz
    return FeatureMoments(tokens, total, total_sq, nnz)


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
    method: str = "sparse"  # how the cross-moment was computed: 'sparse' or 'dense'
    matrix: np.ndarray | None = None  # the full [m, n] r (as `correlation_matrix`), kept when asked for on the dense path


def _top_from_csr(indptr: np.ndarray, cols: np.ndarray, r: np.ndarray, k: int):
    """Per row of a CSR pattern with values r, the k largest r and their columns, in O(k × nnz):
    k rounds of a segmented arg-max (rows without entries, or with fewer than k, keep -1 / NaN)."""
    n_rows = indptr.size - 1
    idx = np.full((n_rows, k), -1)
    val = np.full((n_rows, k), np.nan)
    counts = np.diff(indptr)
    nonempty = np.flatnonzero(counts)
    if nonempty.size == 0:
        return idx, val
    work = np.where(np.isnan(r), -np.inf, r)
    starts = indptr[nonempty]
    positions = np.arange(work.size)
    for rank in range(k):
        seg_max = np.maximum.reduceat(work, starts)
        is_max = work == np.repeat(seg_max, counts[nonempty])
        first = np.minimum.reduceat(np.where(is_max, positions, work.size), starts)
        found = np.isfinite(seg_max)
        rows = nonempty[found]
        idx[rows, rank] = cols[first[found]]
        val[rows, rank] = seg_max[found]
        work[first[found]] = -np.inf
    return idx, val


def _row_side_top(chunks, mom_rows: FeatureMoments, mom_cols: FeatureMoments, transpose: bool, k: int,
                  row_block: int, log, label: str) -> TopMatches:
    """Top-k partners of every row feature. Pairs that co-fire somewhere come from the sparse
    cross-moment; for all other pairs the cross-moment is 0 and r_ij = −(μ_i/σ_i)(ν_j/τ_j), so a
    row's best non-co-firing partners are the live columns with the smallest ν/τ it never meets."""
    m, n = mom_rows.sum.size, mom_cols.sum.size
    T = mom_rows.tokens
    mu_a, sd_a, dead_a = mom_rows.mean, mom_rows.std, mom_rows.dead
    mu_b, sd_b, dead_b = mom_cols.mean, mom_cols.std, mom_cols.dead
    k = min(k, int((~dead_b).sum())) or 1
    live_cols = np.flatnonzero(~dead_b)
    ratio_b = np.full(n, np.inf)
    ratio_b[live_cols] = mu_b[live_cols] / sd_b[live_cols]
    by_ratio = live_cols[np.argsort(ratio_b[live_cols], kind="stable")]
    out_idx = np.full((m, k), -1)
    out_r = np.full((m, k), np.nan)
    for start in range(0, m, row_block):
        stop = min(m, start + row_block)
        cross = sp.csr_matrix((stop - start, n), dtype=np.float64)
        for a, b in chunks():
            if transpose:
                a, b = b, a
            a_block = a[:, start:stop].astype(np.float64)
            if a_block.nnz:
                cross = cross + (a_block.T.tocsr() @ b.astype(np.float64))
        if not cross.has_canonical_format:  # _top_from_csr needs one entry per (row, column)
            cross.sum_duplicates()
        local = np.repeat(np.arange(stop - start), np.diff(cross.indptr))
        rows, cols = local + start, cross.indices
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (cross.data - T * mu_a[rows] * mu_b[cols]) / (T * sd_a[rows] * sd_b[cols])
        r[dead_a[rows] | dead_b[cols]] = np.nan
        co_idx, co_r = _top_from_csr(cross.indptr, cols, np.clip(r, -1.0, 1.0), k)
        # best partners among the columns each row never co-fires with: the first k of `by_ratio`
        # that the row does not meet; checked against the first `probe` candidates at once, and
        # row by row only for the rare rows that meet all of them
        probe = by_ratio[: k + 64]
        met = cross[:, probe].toarray() != 0  # [rows, probe]
        zero_idx = np.full((stop - start, k), -1)
        zero_r = np.full((stop - start, k), np.nan)
        free_rank = np.cumsum(~met, axis=1)
        for rank in range(k):
            hit = (~met) & (free_rank == rank + 1)
            has = hit.any(axis=1)
            zero_idx[has, rank] = probe[hit[has].argmax(axis=1)]
        for i in np.flatnonzero((zero_idx < 0).any(axis=1) & (free_rank[:, -1] < min(k, len(by_ratio)))):
            row_met = cross.indices[cross.indptr[i] : cross.indptr[i + 1]]
            take = by_ratio[~np.isin(by_ratio, row_met)][:k]
            zero_idx[i] = -1
            zero_idx[i, : take.size] = take
        live_rows = ~dead_a[start:stop]
        zero_idx[~live_rows] = -1
        has_zero = zero_idx >= 0
        scale = -(mu_a[start:stop] / np.where(live_rows, sd_a[start:stop], 1.0))[:, None]
        zero_r[has_zero] = np.clip((scale * ratio_b[np.where(has_zero, zero_idx, 0)])[has_zero], -1.0, 1.0)
        both_idx = np.concatenate([co_idx, zero_idx], axis=1)
        both_r = np.concatenate([co_r, zero_r], axis=1)
        order = np.argsort(-np.nan_to_num(both_r, nan=-np.inf), axis=1, kind="stable")[:, :k]
        out_idx[start:stop] = np.take_along_axis(both_idx, order, 1)
        out_r[start:stop] = np.take_along_axis(both_r, order, 1)
        out_idx[start:stop][np.isnan(out_r[start:stop])] = -1
        if log:
            log(f"{label}: features {start}-{stop - 1} of {m}")
    return TopMatches(out_idx, out_r)


def _top_k_desc(r: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest values, largest first, ties to the lower index: what
    `np.argsort(-r, axis=1, kind="stable")[:, :k]` gives, in O(columns) per row (a partition, then a sort of
    the k; a row whose k-th value is tied with one left out is sorted whole, as the stable order would)."""
    if k >= r.shape[1]:
        return np.argsort(-r, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-r, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(r, part, 1)
    order = np.lexsort((part, -vals), axis=1)  # by value, descending, then by index
    part, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
    kth = vals[:, -1:]
    ties = np.flatnonzero((r == kth).sum(1) > (vals == kth).sum(1))
    if ties.size:
        part[ties] = np.argsort(-r[ties], axis=1, kind="stable")[:, :k]
    return part


def _dense_top(chunks, pa: FeatureMoments, pb: FeatureMoments, k: int, row_block: int, log, rows_per_product: int = 8192,
               full: np.ndarray | None = None):
    """Both sides' top-k from the dense cross-moment (BLAS), one pass over the codes per block of
    parent features: faster than the sparse product once codes are dense enough (see `choose_method`).
    `full` ([m, n] float32): filled with the full r matrix on the way (dead rows and columns NaN)."""
    m, n, T = pa.sum.size, pb.sum.size, pa.tokens
    k_p, k_c = min(k, max(1, int((~pb.dead).sum()))), min(k, max(1, int((~pa.dead).sum())))
    p_idx, p_r = np.full((m, k_p), -1), np.full((m, k_p), np.nan)
    c_idx, c_r = np.full((n, k_c), -1), np.full((n, k_c), -np.inf)
    for start in range(0, m, row_block):
        stop = min(m, start + row_block)
        cross = np.zeros((stop - start, n))
        whole = start == 0 and stop == m  # one block: no column slice of the CSR (slow), the chunk densified as is
        for a, b in chunks():
            for s in range(0, a.shape[0], rows_per_product):
                part = a[s : s + rows_per_product] if whole else a[s : s + rows_per_product, start:stop]
                cross += part.toarray().astype(np.float64, copy=False).T @ b[s : s + rows_per_product].toarray().astype(np.float64, copy=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (cross - T * np.outer(pa.mean[start:stop], pb.mean)) / (T * np.outer(pa.std[start:stop], pb.std))
        np.clip(r, -1.0, 1.0, out=r)
        if full is not None:
            full[start:stop] = r
            full[start:stop][pa.dead[start:stop], :] = np.nan
            full[start:stop][:, pb.dead] = np.nan
        r[pa.dead[start:stop], :] = -np.inf
        r[:, pb.dead] = -np.inf
        order = _top_k_desc(r, k_p)
        p_idx[start:stop], p_r[start:stop] = order, np.take_along_axis(r, order, 1)
        rt = np.ascontiguousarray(r.T)
        top_c = _top_k_desc(rt, k_c)
        cand_i = np.concatenate([c_idx, top_c + start], 1)
        cand_r = np.concatenate([c_r, np.take_along_axis(rt, top_c, 1)], 1)
        keep = np.argsort(-cand_r, axis=1, kind="stable")[:, :k_c]
        c_idx, c_r = np.take_along_axis(cand_i, keep, 1), np.take_along_axis(cand_r, keep, 1)
        if log:
            log(f"dense cross-moment: parent features {start}-{stop - 1} of {m}")
    for idx, val in ((p_idx, p_r), (c_idx, c_r)):
        bad = ~np.isfinite(val)
        idx[bad], val[bad] = -1, np.nan
    p_idx[pa.dead], p_r[pa.dead] = -1, np.nan
    c_idx[pb.dead], c_r[pb.dead] = -1, np.nan
    return TopMatches(p_idx, p_r), TopMatches(c_idx, c_r)


def choose_method(pa: FeatureMoments, pb: FeatureMoments, dense_above: float = 2e-3) -> str:
    """'sparse' or 'dense' for the cross-moment: the sparse product costs ~T·L0(a)·L0(b) scattered
    multiply-adds, the dense one T·m·n in BLAS, which on CPU runs ~600x more of them per second: on the demo's
    real codes (3.1% dense on both sides, densities' product 9.8e-4) the sparse path took 1.77 s and the dense one
    3.18 s (2 cores; bench/correlation.py --home), so dense wins only above a densities' product of ~1/600."""
    T, m, n = pa.tokens, pa.sum.size, pb.sum.size
    return "dense" if (pa.nnz / (T * m)) * (pb.nnz / (T * n)) > dense_above else "sparse"


def pearson_dense(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference: full [m, n] Pearson matrix of dense codes a [T, m], b [T, n], dead features NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    T = a.shape[0]
    ma, mb = moments([sp.csr_matrix(a)], a.shape[1]), moments([sp.csr_matrix(b)], b.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a.T @ b - T * np.outer(ma.mean, mb.mean)) / (T * np.outer(ma.std, mb.std))
    r[ma.dead, :] = np.nan
    r[:, mb.dead] = np.nan
    return np.clip(r, -1.0, 1.0)


def correlate_features(
    chunks: Callable[[], Iterable[tuple[sp.csr_matrix, sp.csr_matrix]]],
    m: int,
    n: int,
    top_k: int = 5,
    row_block: int = 4096,
    log: Callable[[str], None] | None = None,
    method: str = "auto",
    keep_matrix: bool = False,
) -> Correlation:
    """Pearson r between every parent feature (m) and child feature (n) over the tokens of `chunks`,
    reduced to each side's top-k partners, exactly.

    chunks(): yields (parent codes [t, m], child codes [t, n]) as CSR for consecutive token chunks;
    it is called once per side for the moments and once per block of `row_block` features per side.
    Cost: O(T × L0(parent) × L0(child)) for the cross-moments plus O(features × k) for the rest.
    method: 'sparse', 'dense' (BLAS on densified chunks; faster for dense codes) or 'auto'
    (`choose_method`). Both are exact; they agree to float64 round-off (tested). `keep_matrix`: on the dense
    path also keep the full r matrix it computes anyway (`Correlation.matrix`; the sparse path never forms it)."""
    pa = moments((a for a, _ in chunks()), m)
    pb = moments((b for _, b in chunks()), n)
    if pa.tokens != pb.tokens:
        raise ValueError(f"the two codes cover {pa.tokens} and {pb.tokens} tokens; they must encode the same tokens")
    if method == "auto":
        method = choose_method(pa, pb)
    if log:
        log(f"cross-moment: {method} product")
    if method == "dense":
        full = np.empty((m, n), dtype=np.float32) if keep_matrix else None
        parent_top, child_top = _dense_top(chunks, pa, pb, top_k, row_block, log, full=full)
        return Correlation(pa, pb, parent_top, child_top, method, full)
    parent_top = _row_side_top(chunks, pa, pb, False, top_k, row_block, log, "parent features")
    child_top = _row_side_top(chunks, pb, pa, True, top_k, row_block, log, "child features")
    return Correlation(pa, pb, parent_top, child_top, method)


def correlation_matrix(
    chunks: Callable[[], Iterable[tuple[sp.csr_matrix, sp.csr_matrix]]],
    parent: FeatureMoments,
    child: FeatureMoments,
    row_block: int = 4096,
) -> np.ndarray:
    """The full [m, n] Pearson matrix (float32, dead rows and columns NaN) from the sparse
    cross-moment, block by block of parent features: on request only (m × n floats)."""
    m, n, T = parent.sum.size, child.sum.size, parent.tokens
    out = np.empty((m, n), dtype=np.float32)
    for start in range(0, m, row_block):
        stop = min(m, start + row_block)
        cross = np.zeros((stop - start, n))
        for a, b in chunks():
            block = a[:, start:stop].astype(np.float64)
            if block.nnz:
                cross += (block.T.tocsr() @ b.astype(np.float64)).toarray()
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (cross - T * np.outer(parent.mean[start:stop], child.mean)) / (T * np.outer(parent.std[start:stop], child.std))
        r[parent.dead[start:stop], :] = np.nan
        r[:, child.dead] = np.nan
        out[start:stop] = np.clip(r, -1.0, 1.0)
    return out
