"""A feature's status on one edge at a threshold on its best partners' r (Horn & Elliott 2024, §3):
a parent feature persists or disappears, a child feature persisted or emerged, a feature that never
varies is dead; the tables read back per edge, and each feature's origin over a node's incoming edges."""

from __future__ import annotations


import numpy as np
import pandas as pd

from featureflow_dagster.lineage import DEFAULT_THRESHOLD, Edge



# A feature's status on one edge, said once (the feature pages get them in their data):
PERSISTS, DISAPPEARS = "persists", "disappears"  # a parent feature: some child feature above the threshold, or none
PERSISTED, EMERGED = "persisted", "emerged"  # a child feature: some parent feature above the threshold, or none
DEAD = "dead"  # never varies on the edge's tokens
STATUSES = {"parent": [PERSISTS, DISAPPEARS, DEAD], "child": [PERSISTED, EMERGED, DEAD]}
BASE_ORIGIN = "base"  # where a base feature comes from (node_origin's other values: PERSISTED, EMERGED, DEAD)


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


def classify_aligned(aligned: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent features, warm-started child features) by aligned pairs instead of matching (`sae.warm.aligned_features`:
    the child's SAE trained from the parent's dictionary, so feature i is compared with feature i only).

    parent feature i: dead when it never fired on the edge's tokens, persists when the same-index pair's r exceeds
    the threshold, else disappears; the warm child's feature i: dead when it never fired, persisted at the same bar,
    else emerged (it turned into something else). Same columns as `classify_edge` (one partner at most: no splits
    or merges), plus decoder_cosine."""
    t = aligned.sort_values("feature").reset_index(drop=True)
    r = t["activation_r"].to_numpy()
    above = np.nan_to_num(r, nan=-1.0) > threshold
    out = []
    for fired, ok, no in ((t["parent_fired"], PERSISTS, DISAPPEARS), (t["child_fired"], PERSISTED, EMERGED)):
        dead = fired.to_numpy() == 0
        table = pd.DataFrame({"feature": t["feature"].to_numpy(), "best_partner": t["feature"].to_numpy(), "best_r": r,
                              "dead": dead, "decoder_cosine": t["decoder_cosine"].to_numpy()})
        table["partners"] = [[f] if a and not d else [] for f, a, d in zip(table["feature"], above, dead)]
        table["status"] = np.where(dead, DEAD, np.where(above, ok, no))
        table["multiple"] = False
        out.append(table)
    parent, child = out
    return parent.rename(columns={"multiple": "split"}), child.rename(columns={"multiple": "merge"})


def method_agreement(matched: pd.DataFrame, aligned: pd.DataFrame) -> dict[str, int]:
    """A parent table classified by matching beside the same parent features classified by aligned pairs: how many
    persist by both, by matching only, by aligned pairs only, by neither (features dead on either side left out)."""
    m = matched.sort_values("feature").set_index("feature")["status"]
    a = aligned.sort_values("feature").set_index("feature")["status"]
    live = (m != DEAD) & (a != DEAD)
    m, a = m[live] == PERSISTS, a[live] == PERSISTS
    return {"both": int((m & a).sum()), "matching_only": int((m & ~a).sum()), "aligned_only": int((~m & a).sum()),
            "neither": int((~m & ~a).sum())}


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
