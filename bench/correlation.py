"""Sparse exact correlation against a dense chunked matrix product on the same codes.

Synthetic power-law codes (feature firing rates ~ rank^-1, scaled to mean L0 ≈ --l0, exponential
magnitudes, a planted set of correlated pairs), m = n = --features. featureflow correlates all
m × n pairs; the dense reference (float64 chunked matmul of the dense codes, then Pearson) is timed
on --dense-rows parent features and scaled to m, because the full dense product at T = 1M would take
hours. Gate, on those rows: best-match r within 1e-5 of the float64 dense reference and the same
persist sets (r > 0.8).

  python bench/correlation.py [--tokens 100000] [--features 16384] [--l0 30] [--dense-rows 256]
"""

import argparse
import sys
import time

import numpy as np
import scipy.sparse as sp

from featureflow_dagster.correlation import correlate_features


def power_law_codes(T: int, m: int, l0: float, rng: np.random.Generator) -> sp.csr_matrix:
    rates = 1.0 / np.arange(1, m + 1)
    rates *= l0 / rates.sum()
    rates = np.minimum(rates, 0.5)[rng.permutation(m)]
    counts = rng.poisson(rates * T)
    rows = np.concatenate([rng.integers(0, T, c) for c in counts])
    cols = np.repeat(np.arange(m), counts)
    vals = rng.exponential(1.0, rows.size)
    return sp.csr_matrix((vals, (rows, cols)), shape=(T, m))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--l0", type=float, default=30.0)
    ap.add_argument("--dense-rows", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=20_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    T, m = args.tokens, args.features
    a = power_law_codes(T, m, args.l0, rng)
    b = power_law_codes(T, m, args.l0, rng).tolil()
    planted = rng.choice(m, size=m // 8, replace=False)
    partners = rng.permutation(m)[: planted.size]
    a_csc = a.tocsc()
    for i, j in zip(planted, partners):  # child feature j follows parent feature i (with noise)
        col = a_csc[:, i]
        b[:, j] = col * rng.uniform(0.5, 2.0) + sp.random(T, 1, density=col.nnz / T * 0.2, random_state=1)
    b = b.tocsr()
    print(f"T = {T:,} tokens, m = n = {m:,}, mean L0 parent {a.getnnz(axis=1).mean():.1f}, child {b.getnnz(axis=1).mean():.1f}")

    def chunks():
        for s in range(0, T, args.chunk):
            yield a[s : s + args.chunk], b[s : s + args.chunk]

    t0 = time.perf_counter()
    res = correlate_features(chunks, m, m, top_k=1)
    sparse_s = time.perf_counter() - t0

    rows = np.sort(rng.choice(m, size=min(args.dense_rows, m), replace=False))
    t0 = time.perf_counter()
    cross = np.zeros((rows.size, m))
    for s in range(0, T, args.chunk):
        cross += a[s : s + args.chunk][:, rows].toarray().T @ b[s : s + args.chunk].toarray()
    mu_a, sd_a = res.parent_moments.mean[rows], res.parent_moments.std[rows]
    mu_b, sd_b = res.child_moments.mean, res.child_moments.std
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = (cross - T * np.outer(mu_a, mu_b)) / (T * np.outer(sd_a, sd_b))
    ref[:, res.child_moments.dead] = np.nan
    dense_s = (time.perf_counter() - t0) * m / rows.size

    live = ~res.parent_moments.dead[rows]
    best_ref = np.nanmax(ref[live], axis=1)
    best_ours = res.parent_top.r[rows][live, 0]
    worst = float(np.nanmax(np.abs(best_ref - best_ours)))
    same_persist = bool(((best_ref > 0.8) == (best_ours > 0.8)).all())
    print(f"featureflow sparse (all {m:,} x {m:,} pairs): {sparse_s:8.2f} s")
    print(f"dense float64 chunked matmul: {dense_s:8.2f} s (measured on {rows.size} parent rows, scaled x{m / rows.size:.0f})")
    print(f"ratio: {dense_s / sparse_s:.0f}x")
    print(f"gate on those rows: max |best r - dense best r| = {worst:.2e} (need <= 1e-5): {'PASS' if worst <= 1e-5 else 'FAIL'}; "
          f"persist sets identical: {'PASS' if same_persist else 'FAIL'} ({int((best_ref > 0.8).sum())} persisting)")
    return 0 if worst <= 1e-5 and same_persist else 1


if __name__ == "__main__":
    sys.exit(main())
