"""Sparse exact correlation against a dense chunked matrix product on the same codes.

Synthetic codes (default): power-law firing rates (rank^-1, scaled to mean L0 ≈ --l0), exponential
magnitudes, and m/8 planted child features that follow a parent feature (scaled, plus noise);
m = n = --features. Real codes (--home and --edge): the codes a materialized lineage's
`feature_activations` asset stored for one edge; SAE encoding (models + SAEs on the same tokens)
is re-run and timed on its own, apart from the correlation.

featureflow correlates all m × n pairs. Two baselines, given what featureflow gets (every chunk densified
once, float64): a dense chunked matrix product (BLAS) and scipy's sparse product a.T @ b, each followed
by Pearson from moments the bench computes itself (numpy, not featureflow's). Both are timed in full when
--dense-rows >= m; below that (the full dense product at T = 1M would take hours) only the part that grows
with the parent rows is timed on --dense-rows of them and scaled, and the child side's densification is
timed once and added unscaled. Gate, on those rows: best-match r within 1e-5 of the dense reference, and
identical persist sets (r > 0.8).

  python bench/correlation.py [--tokens 100000] [--features 16384] [--l0 30] [--dense-rows 256]
  python bench/correlation.py --home .featureflow/demo --edge base__packages [--dense-rows 4096]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from featureflow_dagster.correlation import correlate_features
from featureflow_dagster.assets.flow import FEATURE_ACTIVATIONS
from featureflow_dagster.assets.models import MODEL
from featureflow_dagster.assets.sae import SAE
from featureflow_dagster.flow import read_code_chunks
from featureflow_dagster.lineage import Edge
from featureflow_dagster.resources import ArtifactStore


def power_law_codes(T: int, m: int, l0: float, rng: np.random.Generator) -> sp.coo_matrix:
    rates = 1.0 / np.arange(1, m + 1)
    rates *= l0 / rates.sum()
    rates = np.minimum(rates, 0.5)[rng.permutation(m)]
    counts = rng.poisson(rates * T)
    rows = np.concatenate([rng.integers(0, T, c) for c in counts])  # a repeated row sums
    cols = np.repeat(np.arange(m), counts)
    return sp.coo_matrix((rng.exponential(1.0, rows.size), (rows, cols)), shape=(T, m))


def synthetic(T: int, m: int, l0: float, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    a = power_law_codes(T, m, l0, rng)
    b = power_law_codes(T, m, l0, rng)
    a_csc = a.tocsc()
    planted = rng.choice(m, size=m // 8, replace=False)
    partners = rng.permutation(m)[: planted.size]
    keep = ~np.isin(b.col, partners)  # a planted child column is replaced by its parent's, scaled, plus noise
    rows, cols, vals = [b.row[keep]], [b.col[keep]], [b.data[keep]]
    for i, j in zip(planted, partners):
        lo, hi = a_csc.indptr[i], a_csc.indptr[i + 1]
        noise = rng.integers(0, T, max(1, (hi - lo) // 5))
        rows += [a_csc.indices[lo:hi], noise]
        cols += [np.full(hi - lo + noise.size, j)]
        vals += [a_csc.data[lo:hi] * rng.uniform(0.5, 2.0), rng.exponential(1.0, noise.size)]
    b = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(T, m))
    return a.tocsr(), b.tocsr()  # duplicates (noise on a firing token) are summed


def encode_again(home: ArtifactStore, edge: str, manifest: dict) -> float:
    """Seconds to encode the edge's stored tokens with both models and SAEs again (CPU here)."""
    import torch
    from safetensors import safe_open

    from featureflow_dagster.flow import write_codes
    from featureflow_dagster.model import load_model
    from featureflow_dagster.sae import load_sae

    parent, child = Edge.parse(edge)
    dev = torch.device("cpu")
    models = [load_model(MODEL.at(home, n), dev) for n in (parent, child)]
    saes = [load_sae(SAE.at(home, n), dev) for n in (parent, child)]
    tokens, origin = [], []
    for f in manifest["files"]:
        with safe_open(str(FEATURE_ACTIVATIONS.at(home, edge) / f["name"]), framework="pt") as fh:
            tokens.append(fh.get_tensor("tokens"))
            origin.append(fh.get_tensor("origin"))
    tokens, origin = torch.cat(tokens), torch.cat(origin)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_codes(*models, *saes, tokens, origin, Path(tmp), tokens.shape[0], dev)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--l0", type=float, default=30.0)
    ap.add_argument("--dense-rows", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=20_000, help="tokens per dense reference product")
    ap.add_argument("--sparse-chunk", type=int, default=262_144, help="tokens per chunk featureflow reads (flow.chunk_tokens)")
    ap.add_argument("--home", type=Path, help="a lineage's artefact folder (FEATUREFLOW_HOME) with feature_activations")
    ap.add_argument("--edge", help="parent__child, with --home")
    args = ap.parse_args()
    rng = np.random.default_rng(1)

    if args.home:
        home = ArtifactStore(root=str(args.home), lineage_name="")
        folder = FEATURE_ACTIVATIONS.at(home, args.edge)
        if not (folder / "manifest.json").exists():
            ap.error(f"no codes at {folder}; materialize feature_activations[{args.edge}] first")
        manifest = json.loads((folder / "manifest.json").read_text())
        m, n = manifest["d_sae"]["parent"], manifest["d_sae"]["child"]
        parts = list(read_code_chunks(folder, [f["name"] for f in manifest["files"]], m, n))
        a = sp.vstack([p[0] for p in parts], format="csr")
        b = sp.vstack([p[1] for p in parts], format="csr")
        encode_s = encode_again(home, args.edge, manifest)
        print(f"real codes of {args.edge}: SAE encoding of both sides (models + SAEs, CPU) {encode_s:.2f} s, "
              f"{a.shape[0] / encode_s:,.0f} tokens/s — not part of the correlation timings below")
    else:
        a, b = synthetic(args.tokens, args.features, args.l0)
        m = n = args.features
    T = a.shape[0]
    print(f"T = {T:,} tokens, m = {m:,}, n = {n:,}, mean L0 parent {a.getnnz(axis=1).mean():.1f}, child {b.getnnz(axis=1).mean():.1f}")

    def chunks():
        for s in range(0, T, args.sparse_chunk):
            yield a[s : s + args.sparse_chunk], b[s : s + args.sparse_chunk]

    t0 = time.perf_counter()
    res = correlate_features(chunks, m, n, top_k=1)
    sparse_s = time.perf_counter() - t0

    rows = np.arange(m) if args.dense_rows >= m else np.sort(rng.choice(m, size=args.dense_rows, replace=False))
    scale = m / rows.size
    a_rows = a[:, rows].tocsr() if rows.size < m else a
    # the child side densified once per chunk (does not grow with the parent rows: timed once, not scaled)
    t0 = time.perf_counter()
    b_dense = [b[s : s + args.chunk].toarray().astype(np.float64) for s in range(0, T, args.chunk)]
    densify_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    cross = np.zeros((rows.size, n))
    for i, s in enumerate(range(0, T, args.chunk)):
        cross += a_rows[s : s + args.chunk].toarray().astype(np.float64).T @ b_dense[i]
    dense_s = densify_b + (time.perf_counter() - t0) * scale
    del b_dense
    # scipy's sparse product over the same rows, float64
    t0 = time.perf_counter()
    sparse_cross = (a_rows.T.astype(np.float64) @ b.astype(np.float64)).toarray()
    scipy_s = (time.perf_counter() - t0) * scale
    # moments of the bench's own (numpy, float64): the gate does not lean on featureflow's
    t0 = time.perf_counter()
    mu_a, mu_b = np.asarray(a_rows.mean(0), np.float64).ravel(), np.asarray(b.mean(0), np.float64).ravel()
    sd_a = np.sqrt(np.maximum(np.asarray(a_rows.multiply(a_rows).mean(0), np.float64).ravel() - mu_a ** 2, 0))
    sd_b = np.sqrt(np.maximum(np.asarray(b.multiply(b).mean(0), np.float64).ravel() - mu_b ** 2, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = (cross - T * np.outer(mu_a, mu_b)) / (T * np.outer(sd_a, sd_b))
    pearson_s = time.perf_counter() - t0
    dense_s += pearson_s * scale
    scipy_s += pearson_s * scale
    assert np.allclose(sparse_cross, cross, rtol=1e-9, atol=1e-9)
    plain_s = None
    if T * (rows.size + n) * 8 <= 4e9:  # the plainest baseline: both sides densified whole, one float64 product
        t0 = time.perf_counter()
        plain = a_rows.toarray().astype(np.float64).T @ b.toarray().astype(np.float64)
        plain_s = (time.perf_counter() - t0) * scale + pearson_s * scale
        assert np.allclose(plain, cross, rtol=1e-9, atol=1e-9)
        del plain
    ref[:, sd_b == 0] = np.nan

    live = sd_a > 0
    best_ref = np.nanmax(ref[live], axis=1)
    best_ours = res.parent_top.r[rows][live, 0]
    worst = float(np.nanmax(np.abs(best_ref - best_ours)))
    same_persist = bool(((best_ref > 0.8) == (best_ours > 0.8)).all())
    if rows.size == m:  # every row measured: the child side's best matches too
        ref[~live] = np.nan
        live_c = sd_b > 0
        best_ref_c = np.nanmax(ref[:, live_c], axis=0)
        best_ours_c = res.child_top.r[live_c, 0]
        worst = max(worst, float(np.nanmax(np.abs(best_ref_c - best_ours_c))))
        same_persist &= bool(((best_ref_c > 0.8) == (best_ours_c > 0.8)).all())
    scaled = (f"the row part measured on {rows.size} parent rows and scaled x{scale:.0f}, the child's densification "
              f"{densify_b:.2f} s once" if rows.size < m else "all rows, measured in full")
    print(f"featureflow, {res.method} cross-moment (all {m:,} x {n:,} pairs, top-1 both ways): {sparse_s:8.2f} s")
    print(f"dense float64 chunked matmul + Pearson: {dense_s:8.2f} s ({scaled})")
    print(f"scipy sparse a.T @ b (float64) + Pearson: {scipy_s:8.2f} s ({'scaled likewise' if rows.size < m else 'measured in full'})")
    if plain_s is not None:
        print(f"dense float64, whole codes densified, one product + Pearson: {plain_s:8.2f} s")
    print(f"ratio: {dense_s / sparse_s:.2f}x against the chunked dense product, {scipy_s / sparse_s:.2f}x against scipy's sparse "
          "product" + (f", {plain_s / sparse_s:.2f}x against the one dense product" if plain_s is not None else ""))
    print(f"gate: max |best r - dense best r| = {worst:.2e} (need <= 1e-5): {'PASS' if worst <= 1e-5 else 'FAIL'}; "
          f"persist sets identical: {'PASS' if same_persist else 'FAIL'} ({int((best_ref > 0.8).sum())} persisting parent rows)")
    return 0 if worst <= 1e-5 and same_persist else 1


if __name__ == "__main__":
    sys.exit(main())
