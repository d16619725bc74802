"""Feature flow along the lineage (Horn & Elliott 2024, §3).

Per edge parent → child, both SAEs encode the same tokens (sparse codes on disk); the correlation
(`correlation.correlate_features`) gives every feature's best partners. A parent feature *persists*
when some child feature correlates above the threshold (default 0.8, `DEFAULT_THRESHOLD`), else it *disappears*; a child
feature with no parent feature above the threshold *emerged*. A parent feature matched by several
child features is a *split*; a child feature matched by several parent features is a *merge*
(within the top-k partners kept). Dead features (never varying on these tokens) are their own class.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from featureflow_dagster.activations import gather_windows, run_to_hook, sample_windows
from featureflow_dagster.correlation import Correlation, TopMatches, correlate_features, correlation_matrix
from featureflow_dagster.lineage import DEFAULT_THRESHOLD, Edge

# A feature's status on one edge, said once (the feature pages get them in their data):
PERSISTS, DISAPPEARS = "persists", "disappears"  # a parent feature: some child feature above the threshold, or none
PERSISTED, EMERGED = "persisted", "emerged"  # a child feature: some parent feature above the threshold, or none
DEAD = "dead"  # never varies on the edge's tokens
STATUSES = {"parent": [PERSISTS, DISAPPEARS, DEAD], "child": [PERSISTED, EMERGED, DEAD]}
BASE_ORIGIN = "base"  # where a base feature comes from (node_origin's other values: PERSISTED, EMERGED, DEAD)


def lost_node(edge: Edge) -> str:
    """The Sankey node of the parent features that disappear on `edge`."""
    return f"lost {edge.parent} → {edge.child}"


def emerged_node(node: str) -> str:
    """The Sankey node of the features that emerged in `node`."""
    return f"emerged in {node}"

# ---------------------------------------------------------------------------------------------
# Sparse codes of both SAEs on the same tokens
# ---------------------------------------------------------------------------------------------


def _csr_tensors(csr: sp.csr_matrix, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.indptr": torch.from_numpy(csr.indptr.astype(np.int64)),
        f"{prefix}.indices": torch.from_numpy(csr.indices.astype(np.int32)),
        f"{prefix}.values": torch.from_numpy(csr.data.astype(np.float32)),
    }


def _to_csr(f: torch.Tensor) -> sp.csr_matrix:
    """Dense codes [tokens, d_sae] (any device) to scipy CSR without a dense host copy."""
    rows, cols = f.nonzero(as_tuple=True)
    vals = f[rows, cols].float().cpu().numpy()
    return sp.csr_matrix((vals, (rows.cpu().numpy(), cols.cpu().numpy())), shape=tuple(f.shape))


@torch.no_grad()
def write_codes(parent_model, child_model, parent_sae, child_sae, tokens: torch.Tensor, origin: torch.Tensor,
                folder: Path, chunk_windows: int, device: torch.device, batch_windows: int = 64, log=None
                ) -> tuple[list[str], dict[str, int]]:
    """Encode token windows [n, context] with each model's own SAE on its own activations and write
    chunk files of CSR codes (`parent.*`, `child.*`: indptr, indices, values; row = window × context
    + position) with the windows' token ids and origin (source, row, offset). Each batch is made
    sparse at once, so memory stays at one batch of dense codes. Returns the chunk file names and
    each side's count of non-zero codes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    nnz = {"parent": 0, "child": 0}
    n_chunks = -(-tokens.shape[0] // chunk_windows)
    for ci, start in enumerate(range(0, tokens.shape[0], chunk_windows)):
        part = tokens[start : start + chunk_windows]
        codes: dict[str, list[sp.csr_matrix]] = {"parent": [], "child": []}
        for b in range(0, part.shape[0], batch_windows):
            x = part[b : b + batch_windows].to(device, torch.long)
            for side, model, sae in (("parent", parent_model, parent_sae), ("child", child_model, child_sae)):
                acts = run_to_hook(model, x)
                codes[side].append(_to_csr(sae.encode(acts.reshape(-1, acts.shape[-1]).float())))
        out = {"tokens": part.contiguous(), "origin": origin[start : start + chunk_windows].contiguous()}
        for side in ("parent", "child"):
            csr = sp.vstack(codes[side], format="csr")
            nnz[side] += csr.nnz
            out.update(_csr_tensors(csr, side))
        name = f"chunk_{ci:05d}.safetensors"
        save_file(out, str(folder / name))
        files.append(name)
        if log:
            log(f"codes: chunk {ci + 1}/{n_chunks} ({min(tokens.shape[0], start + chunk_windows):,}/{tokens.shape[0]:,} windows)")
    return files, nnz


def encode_edge(edge: Edge, models: dict, saes: dict, settings: dict, token_files: dict[str, Path], folder: Path, device: torch.device,
                batch_windows: int = 64, log=None) -> tuple[dict, dict[str, int], float]:
    """One edge's codes (`write_codes`) into `folder` with its `manifest.json`: `settings`
    (`Lineage.edge_activation_settings`) say how many tokens, in which windows, drawn with which seed
    from the train blocks of `token_files` ({data node: its tokens file}, the data both models share);
    `models` and `saes` are keyed 'parent' and 'child'. Returns the manifest, each side's non-zero
    codes and the encoding seconds."""
    import json
    import time

    from featureflow_dagster.blocks import load_blocks
    from featureflow_dagster.storage import file_sha256

    refs, blocks, data_hashes = [], [], {}
    for owner, path in token_files.items():
        data_hashes[owner] = file_sha256(path)
        for source, b in load_blocks(path, "train").items():
            refs.append(f"{owner}/{source}")
            blocks.append(b)
    windows, origin = edge_windows(blocks, settings["context"], settings["tokens"], settings["seed"])
    n_chunks = -(-windows.shape[0] // max(1, settings["chunk_tokens"] // settings["context"]))
    chunk_windows = -(-windows.shape[0] // n_chunks)  # equal chunks, none nearly empty
    started = time.perf_counter()
    files, nnz = write_codes(models["parent"], models["child"], saes["parent"], saes["child"], windows, origin, folder,
                             chunk_windows, device, batch_windows=batch_windows, log=log)
    seconds = time.perf_counter() - started
    counts = torch.bincount(origin[:, 0].long(), minlength=len(refs)).tolist()
    manifest = {
        "parent": edge.parent, "child": edge.child, "tokens": windows.numel(), "windows": int(windows.shape[0]),
        "context": settings["context"], "seed": settings["seed"], "sources": refs,
        "windows_per_source": dict(zip(refs, counts)),
        "d_sae": {"parent": saes["parent"].cfg.d_sae, "child": saes["child"].cfg.d_sae},
        "files": [{"name": f, "sha256": file_sha256(folder / f)} for f in files],
        "tokens_data_sha256": data_hashes,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest, nnz, seconds


def read_code_chunks(folder: Path, files: list[str], m: int, n: int) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix]]:
    """(parent codes [t, m], child codes [t, n]) per chunk file, as scipy CSR."""
    for name in files:
        with safe_open(str(folder / name), framework="np") as f:
            sides = []
            for side, width in (("parent", m), ("child", n)):
                indptr = f.get_tensor(f"{side}.indptr")
                sides.append(sp.csr_matrix((f.get_tensor(f"{side}.values"), f.get_tensor(f"{side}.indices"), indptr),
                                           shape=(indptr.size - 1, width)))
        yield sides[0], sides[1]


# ---------------------------------------------------------------------------------------------
# Tables and classification
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Data-free matching: cosine similarity of decoder directions
# ---------------------------------------------------------------------------------------------


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


def classify_edge(matches: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD, method: str = "activation") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent features, child features) with their status and partners above the threshold, by
    `method` ('activation': Pearson r, the paper's; 'decoder': decoder cosine).

    parent status: persists | disappears | dead; child status: persisted | emerged | dead.
    `partners`: the features on the other side above the threshold (among the top-k kept);
    `split` (parent) / `merge` (child): more than one such partner."""
    out = []
    if "method" in matches:
        matches = matches[matches["method"] == method]
    for direction, ok, no in (("parent_to_child", PERSISTS, DISAPPEARS), ("child_to_parent", PERSISTED, EMERGED)):
        rows = matches[matches["direction"] == direction]
        best = rows[rows["rank"] == 0].set_index("feature")
        above = rows[(rows["r"] > threshold) & (rows["partner"] >= 0)]
        partners = above.groupby("feature")["partner"].apply(list)
        table = pd.DataFrame({
            "feature": best.index,
            "best_partner": best["partner"].to_numpy(),
            "best_r": best["r"].to_numpy(),
            "dead": best["dead"].to_numpy(),
        })
        table["partners"] = [partners.get(f, []) for f in table["feature"]]
        table["status"] = np.where(table["dead"], DEAD, np.where(table["partners"].map(len) > 0, ok, no))
        table["multiple"] = table["partners"].map(len) > 1
        out.append(table)
    parent, child = out
    return parent.rename(columns={"multiple": "split"}), child.rename(columns={"multiple": "merge"})


def edge_counts(parent: pd.DataFrame, child: pd.DataFrame) -> dict[str, int]:
    return {
        "parent_persisting": int((parent["status"] == PERSISTS).sum()),
        "parent_disappearing": int((parent["status"] == DISAPPEARS).sum()),
        "parent_dead": int((parent["status"] == DEAD).sum()),
        "child_persisted": int((child["status"] == PERSISTED).sum()),
        "child_emerged": int((child["status"] == EMERGED).sum()),
        "child_dead": int((child["status"] == DEAD).sum()),
        "splits": int(parent["split"].sum()),
        "merges": int(child["merge"].sum()),
    }


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


def correlate_edge(chunks: Callable[[], Iterator], m: int, n: int, w_parent: torch.Tensor, w_child: torch.Tensor, spec,
                   folder: Path, log=None) -> EdgeCorrelation:
    """Exact correlations between the `m` parent and `n` child features over the edge's codes (`chunks()`
    iterates them afresh), each feature's top-k partners both ways, and the data-free decoder-cosine
    matches (`w_*`: decoders [d_sae, d_in]); written into `folder` as matches.parquet (both methods,
    with cosines), features.parquet (moments, dead) and, with `spec.full_matrix`, matrix.safetensors.
    `spec` is the lineage's `FlowSpec`."""
    started = time.perf_counter()
    corr = correlate_features(chunks, m, n, top_k=spec.top_k, row_block=spec.row_block, log=log)
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
    if spec.full_matrix:
        full = correlation_matrix(chunks, corr.parent_moments, corr.child_moments, spec.row_block)
        save_file({"r": torch.from_numpy(full)}, str(folder / "matrix.safetensors"))
    parent_t, child_t = classify_edge(matches, spec.threshold)
    return EdgeCorrelation(corr.parent_moments.tokens, {"parent": int(corr.parent_moments.dead.sum()), "child": int(corr.child_moments.dead.sum())},
                           edge_counts(parent_t, child_t), corr.method, corr_seconds, dec_seconds, agreement(matches, spec.threshold))


@dataclass
class LineageFlow:
    """`classify_lineage`'s tables: what feature_flow writes."""

    classification: pd.DataFrame  # one row per (edge, side, feature): status, partners, best r
    trajectories: pd.DataFrame
    agreement: pd.DataFrame
    counts: pd.DataFrame  # edge_counts per edge label
    headline: dict
    volumes: dict
    summary: pd.DataFrame  # trajectory_summary

    def write(self, folder: Path) -> None:
        self.classification.to_parquet(folder / "classification.parquet", index=False)
        self.trajectories.to_parquet(folder / "trajectories.parquet", index=False)
        self.agreement.to_parquet(folder / "agreement.parquet", index=False)
        self.counts.reset_index().to_parquet(folder / "edge_counts.parquet", index=False)
        (folder / "headline_counts.json").write_text(json.dumps(self.headline, indent=1))
        (folder / "volumes.json").write_text(json.dumps(self.volumes, indent=1))


def classify_lineage(lineage, matches: dict[Edge, pd.DataFrame], threshold: float) -> LineageFlow:
    """Every edge classified at `threshold` from its matches, in the lineage's edge order, and what
    follows over the whole lineage: trajectories, headline counts, Sankey volumes."""
    tables, classified, agreements, counts = {}, [], [], []
    for edge in lineage.edges():
        pt, ct = tables[edge] = classify_edge(matches[edge], threshold)
        classified.append(pt.assign(edge=edge.label, side="parent", node=edge.parent))
        classified.append(ct.assign(edge=edge.label, side="child", node=edge.child))
        agreements.append(agreement(matches[edge], threshold).assign(edge=edge.label))
        counts.append({"edge": edge.label, **edge_counts(pt, ct)})
    traj = trajectories(lineage, tables)
    return LineageFlow(pd.concat(classified, ignore_index=True), traj, pd.concat(agreements, ignore_index=True),
                       pd.DataFrame(counts).set_index("edge"), headline_counts(lineage, tables), flow_volumes(lineage, tables),
                       trajectory_summary(traj))


def lineage_paths(lineage) -> list[list[str]]:
    """Every path from the base to a node without children (through each parent of a merge)."""
    paths, frontier = [], [[lineage.base.name]]
    while frontier:
        path = frontier.pop(0)
        children = lineage.children(path[-1])
        if not children:
            paths.append(path)
        frontier.extend(path + [c] for c in children)
    return paths


def trajectories(lineage, tables: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """Features followed along every base-to-leaf path of the lineage, hop by hop through each
    feature's best partner above the threshold.

    A trajectory starts at the base (every live base feature) or where a feature emerged (a child
    feature with no parent match on the path's previous edge) and ends where the feature disappears
    or at the path's end. Columns: path ('base>lua>merged'), start_node, start_feature, end_node,
    hops, reaches_end, features (the feature index at each node reached), r (each hop's r), min_r."""
    out = []
    for path in lineage_paths(lineage):
        if any((a, b) not in tables for a, b in zip(path, path[1:])):
            continue
        for s_i in range(len(path) - 1):
            first_parent = tables[(path[s_i], path[s_i + 1])][0]
            if s_i == 0:
                starts = first_parent.loc[first_parent["status"] != DEAD, "feature"].to_numpy()
            else:
                incoming = tables[(path[s_i - 1], path[s_i])][1]
                starts = incoming.loc[incoming["status"] == EMERGED, "feature"].to_numpy()
            chain = [starts.astype(np.int64)]
            rs: list[np.ndarray] = []
            alive = np.ones(starts.size, bool)
            for h in range(s_i, len(path) - 1):
                parent = tables[(path[h], path[h + 1])][0].set_index("feature")
                persists = (parent["status"] == PERSISTS).to_numpy()
                best = parent["best_partner"].to_numpy().astype(np.int64)
                best_r = parent["best_r"].to_numpy()
                cur = np.where(alive, chain[-1], 0)
                alive = alive & persists[cur]
                chain.append(np.where(alive, best[cur], -1))
                rs.append(np.where(alive, best_r[cur], np.nan))
            feats = np.stack(chain, 1)  # [starts, nodes from s_i on]
            hops = (feats[:, 1:] >= 0).sum(1)
            r = np.stack(rs, 1)
            for j in range(starts.size):
                h = int(hops[j])
                out.append({
                    "path": ">".join(path), "start_node": path[s_i], "start_feature": int(starts[j]),
                    "end_node": path[s_i + h], "hops": h, "reaches_end": s_i + h == len(path) - 1,
                    "features": feats[j, : h + 1].tolist(), "r": r[j, :h].tolist(),
                    "min_r": float(r[j, :h].min()) if h else float("nan"),
                })
    columns = ["path", "start_node", "start_feature", "end_node", "hops", "reaches_end", "features", "r", "min_r"]
    return pd.DataFrame(out, columns=columns)


def trajectory_summary(traj: pd.DataFrame) -> pd.DataFrame:
    """Features per (path, start node, end node): how far what starts at each node travels."""
    if traj.empty:
        return pd.DataFrame(columns=["path", "start_node", "end_node", "features"])
    return traj.groupby(["path", "start_node", "end_node"], sort=False).size().rename("features").reset_index()


def tables_from_classification(lineage, classification: pd.DataFrame) -> dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]]:
    """`classify_edge`'s (parent table, child table) per edge, read back from feature_flow's
    classification.parquet (one row per edge, side and feature), each sorted by feature."""
    tables = {}
    for p, c in lineage.edges():
        rows = classification[classification["edge"] == Edge(p, c).label]
        tables[(p, c)] = tuple(rows[rows["side"] == side].sort_values("feature").reset_index(drop=True)
                               for side in ("parent", "child"))
    return tables


def node_origin(lineage, tables: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]], node: str) -> np.ndarray | None:
    """Per feature of `node`, over all its incoming edges (a merge has several, each measured on its own
    shared data): 'persisted' when matched in some parent, else 'emerged' when live on some edge, else
    'dead'. None for the base (no incoming edge) or when an incoming edge's table is missing."""
    parents = lineage.node(node).parents
    if not parents or any((p, node) not in tables for p in parents):
        return None
    status = np.stack([tables[(p, node)][1].sort_values("feature")["status"].to_numpy() for p in parents], 1)
    return np.where((status == PERSISTED).any(1), PERSISTED, np.where((status == EMERGED).any(1), EMERGED, DEAD))


def headline_counts(lineage, tables: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]]) -> dict:
    """The paper's numbers for any lineage: base features persisting into any child; for every
    merge node, its features traceable to each parent, and of those how many the parent had
    gained in fine-tuning (emerged on the parent's own incoming edge) versus kept from its parent."""
    base = lineage.base.name
    persisting = set()
    for child in lineage.children(base):
        if (base, child) in tables:
            pa = tables[(base, child)][0]
            persisting |= set(pa.loc[pa["status"] == PERSISTS, "feature"])
    out: dict = {"base": base, "base_features_persisting_into_any_child": len(persisting), "merges": {}}
    for node in lineage.node_names:
        if lineage.node(node).kind != "merge":
            continue
        traced_any: set = set()
        per_parent = {}
        for p in lineage.node(node).parents:
            if (p, node) not in tables:
                continue
            child = tables[(p, node)][1]
            traced = child[child["status"] == PERSISTED]
            traced_any |= set(traced["feature"])
            # where the parent's matched features came from: gained on the parent's own incoming edges
            # (a fine-tune's one edge, a merge's several) or kept from further up
            origin = node_origin(lineage, tables, p)
            emerged_in_parent = persisted_from_grandparent = 0
            if origin is not None:
                at = origin[traced["best_partner"].to_numpy().astype(np.int64)]
                emerged_in_parent, persisted_from_grandparent = int((at == EMERGED).sum()), int((at == PERSISTED).sum())
            per_parent[p] = {"traceable": int(len(traced)), "emerged_in_finetuning": emerged_in_parent,
                             "persisted_from_ancestor": persisted_from_grandparent}
        out["merges"][node] = {"traceable_to_any_parent": len(traced_any), "per_parent": per_parent}
    return out


def case_studies(lineage, tables: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]], traj: pd.DataFrame,
                 scores: dict[str, np.ndarray], score_name: str = "score") -> dict:
    """Horn & Elliott's Figures 3–4 for any lineage: per base-to-leaf path, the base feature that
    persists through every model with the highest mean best-partner r (its feature index at each
    node and the r of each hop); per edge, the disappearing parent feature with the highest
    `scores[parent]` (NaN: not a candidate, e.g. too few activations to judge), with its best
    (sub-threshold) partner. None where a path has no such feature or an edge loses no candidate."""
    persisting = {}
    for path in lineage_paths(lineage):
        name = ">".join(path)
        rows = traj[(traj["path"] == name) & (traj["start_node"] == path[0]) & traj["reaches_end"]]
        if rows.empty:
            persisting[name] = None
            continue
        mean_r = rows["r"].map(lambda r: float(np.mean(r)) if len(r) else float("nan"))
        best = rows.loc[mean_r.idxmax()]
        persisting[name] = {"nodes": path, "features": [int(f) for f in best["features"]],
                            "r": [float(r) for r in best["r"]], "mean_r": float(mean_r.max())}
    disappearing = {}
    for (p, c), (pt, _) in tables.items():
        gone = pt[pt["status"] == DISAPPEARS]
        score = np.asarray(scores[p], dtype=np.float64)[gone["feature"].to_numpy()]
        if not np.isfinite(score).any():
            disappearing[Edge(p, c).label] = None
            continue
        at = int(np.nanargmax(np.where(np.isfinite(score), score, np.nan)))
        row = gone.iloc[at]
        disappearing[Edge(p, c).label] = {"parent": p, "child": c, "feature": int(row["feature"]), score_name: float(score[at]),
                                     "best_partner": int(row["best_partner"]), "best_r": float(row["best_r"])}
    return {"persisting": persisting, "disappearing": disappearing}


def describe_cases(cases: dict, features: dict[str, pd.DataFrame], decode) -> list[dict]:
    """Add to each case of `case_studies` the evidence of its features (`evidence`: node, feature, top
    token as text, LLR, density, from each node's feature table), in place; one summary row per case.
    `decode(token_id)` gives a token's text."""

    def describe(node: str, f: int) -> dict:
        row = features[node].iloc[f]
        return {"node": node, "feature": f, "top_token": decode(int(row["top_token_id"])) if row["top_token_id"] >= 0 else "",
                "llr_top_token": float(row["llr_top_token"]), "density": float(row["density"])}

    rows = []
    for path, c in cases["persisting"].items():
        if c is not None:
            c["evidence"] = [describe(n, f) for n, f in zip(c["nodes"], c["features"])]
            rows.append({"case": "persists " + path.replace(">", " → "), "features": " → ".join(f"{n}#{f}" for n, f in zip(c["nodes"], c["features"])),
                         "top tokens": " / ".join(repr(e["top_token"]) for e in c["evidence"]),
                         "LLR": " / ".join(f"{e['llr_top_token']:.2f}" for e in c["evidence"]),
                         "r": " / ".join(f"{r:.3f}" for r in c["r"])})
    for edge, d in cases["disappearing"].items():
        if d is not None:
            d["evidence"] = [describe(d["parent"], d["feature"]), describe(d["child"], d["best_partner"])]
            rows.append({"case": "disappears " + " → ".join(Edge.parse(edge)), "features": f"{d['parent']}#{d['feature']} (best: {d['child']}#{d['best_partner']})",
                         "top tokens": " / ".join(repr(e["top_token"]) for e in d["evidence"]),
                         "LLR": " / ".join(f"{e['llr_top_token']:.2f}" for e in d["evidence"]), "r": f"{d['best_r']:.3f}"})
    return rows


# ---------------------------------------------------------------------------------------------
# Volumes for the Sankey diagram (Horn & Elliott's Figure 2)
# ---------------------------------------------------------------------------------------------


def flow_volumes(lineage, tables: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]]) -> dict:
    """Nodes and links of the feature-flow Sankey.

    Every model is a node sized by its live features. Into a child flow its features traced to a
    parent (a child feature matched in several parents counts once, for the parent with the highest
    r) and its emerged features (from an 'emerged in <child>' node); out of a parent flow, per
    child, its features that disappear there (into a 'lost <parent> → <child>' node). A merge's
    incoming edges are measured on different data: its feature is dead only when dead on all of
    them, and live (in `live_features`) when live on any edge touching the node. `shares` gives, per
    edge, the share of the parent's features live on that edge that persist into the child."""
    alive: dict[str, np.ndarray] = {}  # a feature is live when it fires on the data of any edge touching its node
    for (p, c), (pt, ct) in tables.items():
        for node, table in ((p, pt), (c, ct)):
            mask = (table.sort_values("feature")["status"] != DEAD).to_numpy()
            alive[node] = mask if node not in alive else alive[node] | mask
    live = {n: int(m.sum()) for n, m in alive.items()}
    links, shares = [], {}
    for c in lineage.node_names:
        parents = [p for p in lineage.node(c).parents if (p, c) in tables]
        if not parents:
            continue
        child_tables = [tables[(p, c)][1].sort_values("feature") for p in parents]
        best_r = np.stack([np.where(ct["status"] == PERSISTED, ct["best_r"], -np.inf) for ct in child_tables], 1)
        dead = np.stack([ct["dead"].to_numpy() for ct in child_tables], 1).all(1)  # dead on every incoming edge
        owner = best_r.argmax(1)
        traced = np.isfinite(best_r.max(1))
        for i, p in enumerate(parents):
            pt = tables[(p, c)][0]
            persisting = int((pt["status"] == PERSISTS).sum())
            shares[Edge(p, c).label] = persisting / max(1, int((pt["status"] != DEAD).sum()))  # of the parent's live on this edge
            links.append({"source": p, "target": c, "value": int((traced & (owner == i)).sum()), "kind": "traced",
                          "parent_features_persisting": persisting})
            links.append({"source": p, "target": lost_node(Edge(p, c)), "value": int((pt["status"] == DISAPPEARS).sum()),
                          "kind": "disappeared"})
        links.append({"source": emerged_node(c), "target": c, "value": int((~traced & ~dead).sum()), "kind": "emerged"})
    return {"live_features": live, "links": links, "shares": shares}


# ---------------------------------------------------------------------------------------------
# The tokens an edge's two SAEs encode
# ---------------------------------------------------------------------------------------------


def edge_windows(blocks: list[torch.Tensor], context: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`tokens // context` windows drawn uniformly without replacement from the shared sources'
    blocks [rows, n_ctx]: (token ids int32 [n, context], origin int32 [n, 3] = source, row, offset)."""
    n_ctx = blocks[0].shape[1]
    n_windows = tokens // context
    available = sum(b.shape[0] for b in blocks) * (n_ctx // context) * context
    if n_windows == 0 or n_windows * context > available:
        raise ValueError(f"flow.tokens = {tokens:,} but the data both models share holds {available:,} tokens "
                         f"in {context}-token windows; set flow.tokens between {context} and {available:,}")
    origin = sample_windows([b.shape[0] for b in blocks], n_ctx, context, n_windows, seed)
    return gather_windows(blocks, origin, context), origin
