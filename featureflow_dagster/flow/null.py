"""The seed null (Paulo & Belrose 2025: SAEs trained on the same data with other seeds share only part of their
features). Per node, `flow.null_seeds` more SAEs of the same recipe on the same store, each correlated with the
node's SAE exactly as an edge is (both on the node's model, the same tokens). A feature is *reproducible* when
some feature of every seed SAE correlates with it above the threshold. On an edge this separates what fine-tuning
changed from what SAE training fails to reproduce:

- raw: the parent features that persist (matching at the threshold), of the live ones;
- reproducible: the same among the parent features reproducible across the parent's own seeds;
- null-expected: how many would persist if the child were the parent itself: the parent's reproducible count
  (two seeds of the parent "persist" that many features);
- emerged, and emerged among the child's reproducible features (an emergence the child's own seeds reproduce).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from featureflow_dagster.flow.classify import DEAD, EMERGED, PERSISTS, classify_edge
from featureflow_dagster.lineage import Edge


def seed_table(matches: list[pd.DataFrame], threshold: float) -> pd.DataFrame:
    """Per feature of the node's SAE, against each seed SAE's matches (`matches_table` of node SAE -> seed k):
    best_r_<k>, partner_<k>, dead (never varies on these tokens), reproducible (live and above the threshold
    against every seed)."""
    out = None
    for k, m in enumerate(matches, start=1):
        parent, _ = classify_edge(m, threshold)
        cols = parent[["feature", "best_partner", "best_r", "dead", "status"]].rename(
            columns={"best_partner": f"partner_{k}", "best_r": f"best_r_{k}", "status": f"status_{k}"})
        out = cols if out is None else out.merge(cols.drop(columns="dead"), on="feature")
    if out is None:
        raise ValueError("a seed null needs at least one seed SAE")
    statuses = out[[c for c in out if c.startswith("status_")]].to_numpy()
    out["reproducible"] = ~out["dead"].to_numpy() & (statuses == PERSISTS).all(1)
    return out.drop(columns=[c for c in out if c.startswith("status_")])


def seed_summary(table: pd.DataFrame) -> dict:
    """A node's reproducibility: the share of its live features reproducible across seeds, and the best-partner r
    distribution (per seed, over live features)."""
    live = table[~table["dead"]]
    r = live[[c for c in table if c.startswith("best_r_")]].to_numpy(dtype=float)
    quantiles = np.nanquantile(r, [0.1, 0.5, 0.9]) if r.size else [np.nan] * 3
    return {"live": int(len(live)), "reproducible": int(live["reproducible"].sum()),
            "reproducibility": float(live["reproducible"].mean()) if len(live) else float("nan"),
            "best_r_p10": float(quantiles[0]), "best_r_median": float(quantiles[1]), "best_r_p90": float(quantiles[2])}


def null_edge_counts(parent: pd.DataFrame, child: pd.DataFrame, parent_seeds: pd.DataFrame | None,
                     child_seeds: pd.DataFrame | None) -> dict:
    """An edge's counts beside the seed null (see the module): `parent`, `child` are the edge's classification
    tables (matching); `*_seeds` each node's `seed_table` (None: that node has no seed null, e.g. a published SAE)."""
    live_parent = parent["status"] != DEAD
    persists = parent["status"] == PERSISTS
    out = {"parent_live": int(live_parent.sum()), "parent_persisting": int(persists.sum()),
           "child_emerged": int((child["status"] == EMERGED).sum())}
    if parent_seeds is not None:
        rep = parent_seeds.set_index("feature")["reproducible"].reindex(parent["feature"]).fillna(False).to_numpy(bool)
        out.update({"parent_persisting_reproducible": int((rep & persists.to_numpy()).sum()),
                    "null_expected_persisting": int((rep & live_parent.to_numpy()).sum())})
        out["persisting_vs_null"] = (out["parent_persisting_reproducible"] / out["null_expected_persisting"]
                                     if out["null_expected_persisting"] else float("nan"))
    if child_seeds is not None:
        rep = child_seeds.set_index("feature")["reproducible"].reindex(child["feature"]).fillna(False).to_numpy(bool)
        out["child_emerged_reproducible"] = int((rep & (child["status"] == EMERGED).to_numpy()).sum())
    return out


def null_table(lineage, flow, seeds: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """`null_edge_counts` for every edge of a classified lineage (`flow`: LineageFlow), indexed by edge label."""
    rows = [{"edge": Edge(p, c).label, **null_edge_counts(*flow.tables[(p, c)], seeds.get(p), seeds.get(c))} for p, c in lineage.edges()]
    return pd.DataFrame(rows).set_index("edge")
