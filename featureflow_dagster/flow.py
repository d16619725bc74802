"""Feature flow along the lineage (Horn & Elliott 2024, §3).

Per edge parent → child, both SAEs encode the same tokens (sparse codes on disk); the correlation
(`correlation.correlate_features`) gives every feature's best partners. A parent feature *persists*
when some child feature correlates above the threshold (default 0.8), else it *disappears*; a child
feature with no parent feature above the threshold *emerged*. A parent feature matched by several
child features is a *split*; a child feature matched by several parent features is a *merge*
(within the top-k partners kept). Dead features (never varying on these tokens) are their own class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from featureflow_dagster.activations import gather_windows, run_to_hook, sample_windows
from featureflow_dagster.correlation import Correlation, TopMatches

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


def agreement(matches: pd.DataFrame, threshold: float = 0.8) -> pd.DataFrame:
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


def classify_edge(matches: pd.DataFrame, threshold: float = 0.8, method: str = "activation") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent features, child features) with their status and partners above the threshold, by
    `method` ('activation': Pearson r, the paper's; 'decoder': decoder cosine).

    parent status: persists | disappears | dead; child status: persisted | emerged | dead.
    `partners`: the features on the other side above the threshold (among the top-k kept);
    `split` (parent) / `merge` (child): more than one such partner."""
    out = []
    if "method" in matches:
        matches = matches[matches["method"] == method]
    for direction, ok, no in (("parent_to_child", "persists", "disappears"), ("child_to_parent", "persisted", "emerged")):
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
        table["status"] = np.where(table["dead"], "dead", np.where(table["partners"].map(len) > 0, ok, no))
        table["multiple"] = table["partners"].map(len) > 1
        out.append(table)
    parent, child = out
    return parent.rename(columns={"multiple": "split"}), child.rename(columns={"multiple": "merge"})


def edge_counts(parent: pd.DataFrame, child: pd.DataFrame) -> dict[str, int]:
    return {
        "parent_persisting": int((parent["status"] == "persists").sum()),
        "parent_disappearing": int((parent["status"] == "disappears").sum()),
        "parent_dead": int((parent["status"] == "dead").sum()),
        "child_persisted": int((child["status"] == "persisted").sum()),
        "child_emerged": int((child["status"] == "emerged").sum()),
        "child_dead": int((child["status"] == "dead").sum()),
        "splits": int(parent["split"].sum()),
        "merges": int(child["merge"].sum()),
    }


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
                starts = first_parent.loc[first_parent["status"] != "dead", "feature"].to_numpy()
            else:
                incoming = tables[(path[s_i - 1], path[s_i])][1]
                starts = incoming.loc[incoming["status"] == "emerged", "feature"].to_numpy()
            chain = [starts.astype(np.int64)]
            rs: list[np.ndarray] = []
            alive = np.ones(starts.size, bool)
            for h in range(s_i, len(path) - 1):
                parent = tables[(path[h], path[h + 1])][0].set_index("feature")
                persists = (parent["status"] == "persists").to_numpy()
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
        rows = classification[classification["edge"] == f"{p}->{c}"]
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
    return np.where((status == "persisted").any(1), "persisted", np.where((status == "emerged").any(1), "emerged", "dead"))


def headline_counts(lineage, tables: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]]) -> dict:
    """The paper's numbers for any lineage: base features persisting into any child; for every
    merge node, its features traceable to each parent, and of those how many the parent had
    gained in fine-tuning (emerged on the parent's own incoming edge) versus kept from its parent."""
    base = lineage.base.name
    persisting = set()
    for child in lineage.children(base):
        if (base, child) in tables:
            pa = tables[(base, child)][0]
            persisting |= set(pa.loc[pa["status"] == "persists", "feature"])
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
            traced = child[child["status"] == "persisted"]
            traced_any |= set(traced["feature"])
            # where the parent's matched features came from: gained on the parent's own incoming edges
            # (a fine-tune's one edge, a merge's several) or kept from further up
            origin = node_origin(lineage, tables, p)
            emerged_in_parent = persisted_from_grandparent = 0
            if origin is not None:
                at = origin[traced["best_partner"].to_numpy().astype(np.int64)]
                emerged_in_parent, persisted_from_grandparent = int((at == "emerged").sum()), int((at == "persisted").sum())
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
        gone = pt[pt["status"] == "disappears"]
        score = np.asarray(scores[p], dtype=np.float64)[gone["feature"].to_numpy()]
        if not np.isfinite(score).any():
            disappearing[f"{p}->{c}"] = None
            continue
        at = int(np.nanargmax(np.where(np.isfinite(score), score, np.nan)))
        row = gone.iloc[at]
        disappearing[f"{p}->{c}"] = {"parent": p, "child": c, "feature": int(row["feature"]), score_name: float(score[at]),
                                     "best_partner": int(row["best_partner"]), "best_r": float(row["best_r"])}
    return {"persisting": persisting, "disappearing": disappearing}


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
            mask = (table.sort_values("feature")["status"] != "dead").to_numpy()
            alive[node] = mask if node not in alive else alive[node] | mask
    live = {n: int(m.sum()) for n, m in alive.items()}
    links, shares = [], {}
    for c in lineage.node_names:
        parents = [p for p in lineage.node(c).parents if (p, c) in tables]
        if not parents:
            continue
        child_tables = [tables[(p, c)][1].sort_values("feature") for p in parents]
        best_r = np.stack([np.where(ct["status"] == "persisted", ct["best_r"], -np.inf) for ct in child_tables], 1)
        dead = np.stack([ct["dead"].to_numpy() for ct in child_tables], 1).all(1)  # dead on every incoming edge
        owner = best_r.argmax(1)
        traced = np.isfinite(best_r.max(1))
        for i, p in enumerate(parents):
            pt = tables[(p, c)][0]
            persisting = int((pt["status"] == "persists").sum())
            shares[f"{p}->{c}"] = persisting / max(1, int((pt["status"] != "dead").sum()))  # of the parent's live on this edge
            links.append({"source": p, "target": c, "value": int((traced & (owner == i)).sum()), "kind": "traced",
                          "parent_features_persisting": persisting})
            links.append({"source": p, "target": f"lost {p} → {c}", "value": int((pt["status"] == "disappears").sum()),
                          "kind": "disappeared"})
        links.append({"source": f"emerged in {c}", "target": c, "value": int((~traced & ~dead).sum()), "kind": "emerged"})
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
