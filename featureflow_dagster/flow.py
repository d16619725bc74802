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

from featureflow_dagster.activations import run_to_hook
from featureflow_dagster.correlation import Correlation

# ---------------------------------------------------------------------------------------------
# Sparse codes of both SAEs on the same tokens
# ---------------------------------------------------------------------------------------------


def _csr_tensors(f: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    csr = sp.csr_matrix(f.numpy())
    return {
        f"{prefix}.indptr": torch.from_numpy(csr.indptr.astype(np.int64)),
        f"{prefix}.indices": torch.from_numpy(csr.indices.astype(np.int32)),
        f"{prefix}.values": torch.from_numpy(csr.data.astype(np.float32)),
    }


@torch.no_grad()
def write_codes(parent_model, child_model, parent_sae, child_sae, tokens: torch.Tensor, origin: torch.Tensor,
                folder: Path, chunk_windows: int, device: torch.device, batch_windows: int = 64, log=None) -> list[str]:
    """Encode token windows [n, context] with each model's own SAE on its own activations and write
    chunk files of CSR codes (`parent.*`, `child.*`: indptr, indices, values) with tokens and origin."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for ci, start in enumerate(range(0, tokens.shape[0], chunk_windows)):
        part = tokens[start : start + chunk_windows]
        codes = {"parent": [], "child": []}
        for b in range(0, part.shape[0], batch_windows):
            x = part[b : b + batch_windows].to(device, torch.long)
            for side, model, sae in (("parent", parent_model, parent_sae), ("child", child_model, child_sae)):
                acts = run_to_hook(model, x)
                codes[side].append(sae.encode(acts.reshape(-1, acts.shape[-1]).float()).cpu())
        out = {"tokens": part.contiguous(), "origin": origin[start : start + chunk_windows].contiguous()}
        for side in ("parent", "child"):
            out.update(_csr_tensors(torch.cat(codes[side]), side))
        name = f"chunk_{ci:05d}.safetensors"
        save_file(out, str(folder / name))
        files.append(name)
        if log:
            log(f"codes: chunk {ci} ({min(tokens.shape[0], start + chunk_windows):,}/{tokens.shape[0]:,} windows)")
    return files


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
    """Long table of each feature's top-k partners both ways: direction, feature, rank, partner, r."""
    frames = []
    for direction, top, dead in (("parent_to_child", corr.parent_top, corr.parent_moments.dead),
                                 ("child_to_parent", corr.child_top, corr.child_moments.dead)):
        n, k = top.index.shape
        frames.append(pd.DataFrame({
            "direction": direction,
            "feature": np.repeat(np.arange(n), k),
            "rank": np.tile(np.arange(k), n),
            "partner": top.index.ravel(),
            "r": top.r.ravel(),
            "dead": np.repeat(dead, k),
        }))
    return pd.concat(frames, ignore_index=True)


def classify_edge(matches: pd.DataFrame, threshold: float = 0.8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent features, child features) with their status and partners above the threshold.

    parent status: persists | disappears | dead; child status: persisted | emerged | dead.
    `partners`: the features on the other side above the threshold (among the top-k kept);
    `split` (parent) / `merge` (child): more than one such partner."""
    out = []
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


def trajectories(lineage, tables: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """Every two-hop path a → b → c of the lineage, following each feature of a through its best
    partner above the threshold: columns path, start feature, middle feature (or -1 where it
    disappeared), end feature (or -1), and r of each hop."""
    rows = []
    for (a, b), (pa, _) in tables.items():
        for c in lineage.children(b):
            if (b, c) not in tables:
                continue
            pb = tables[(b, c)][0].set_index("feature")
            for feat, status, mid, r1 in zip(pa["feature"], pa["status"], pa["best_partner"], pa["best_r"]):
                if status != "persists":
                    rows.append({"path": f"{a}>{b}>{c}", "start": feat, "middle": -1, "end": -1, "r1": r1, "r2": np.nan})
                    continue
                nxt = pb.loc[mid] if mid in pb.index else None
                end = int(nxt["best_partner"]) if nxt is not None and nxt["status"] == "persists" else -1
                rows.append({"path": f"{a}>{b}>{c}", "start": feat, "middle": int(mid), "end": end, "r1": r1,
                             "r2": float(nxt["best_r"]) if nxt is not None else np.nan})
    return pd.DataFrame(rows, columns=["path", "start", "middle", "end", "r1", "r2"])


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
            emerged_in_parent = persisted_from_grandparent = 0
            grand = lineage.node(p).parents
            if len(grand) == 1 and (grand[0], p) in tables:
                parent_child_table = tables[(grand[0], p)][1].set_index("feature")
                origin = parent_child_table.loc[traced["best_partner"].to_numpy(), "status"]
                emerged_in_parent = int((origin == "emerged").sum())
                persisted_from_grandparent = int((origin == "persisted").sum())
            per_parent[p] = {"traceable": int(len(traced)), "emerged_in_finetuning": emerged_in_parent,
                             "persisted_from_ancestor": persisted_from_grandparent}
        out["merges"][node] = {"traceable_to_any_parent": len(traced_any), "per_parent": per_parent}
    return out
