"""Over the whole lineage: every edge classified, trajectories along every base-to-leaf path, the paper's
headline counts, the case studies (Figures 3-4) and the Sankey's volumes (Figure 2)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featureflow_dagster.lineage import Edge
from featureflow_dagster.flow.classify import (DISAPPEARS, EMERGED, PERSISTED, PERSISTS, DEAD, classify_aligned, classify_edge, edge_counts,
                                               method_agreement, node_origin)
from featureflow_dagster.flow.matching import agreement



def lost_node(edge: Edge) -> str:
    """The Sankey node of the parent features that disappear on `edge`."""
    return f"lost {edge.parent} → {edge.child}"


def emerged_node(node: str) -> str:
    """The Sankey node of the features that emerged in `node`."""
    return f"emerged in {node}"


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
    tables: dict  # per edge (parent table, child table): classify_edge's, as tables_from_classification reads them back

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
                       trajectory_summary(traj), tables)


def classify_aligned_lineage(lineage, flow: LineageFlow, aligned: dict[Edge, pd.DataFrame],
                             threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """With flow.warm_start: every edge classified by aligned pairs (`classify_aligned`, from warm_sae's
    aligned.parquet), and per edge its counts beside how the parent's features fare by matching and by aligned
    pairs (`method_agreement`). Returns (classification: one row per edge, side and feature, as `classify_lineage`'s
    plus decoder_cosine; counts indexed by edge label)."""
    rows, counts = [], []
    for edge in lineage.edges():
        pt, ct = classify_aligned(aligned[edge], threshold)
        rows.append(pt.assign(edge=edge.label, side="parent", node=edge.parent))
        rows.append(ct.assign(edge=edge.label, side="child", node=f"{edge.child} (warm from {edge.parent})"))
        counts.append({"edge": edge.label, **edge_counts(pt, ct),
                       **{f"vs_matching/{k}": v for k, v in method_agreement(flow.tables[edge][0], pt).items()}})
    table = pd.DataFrame(counts).set_index("edge").drop(columns=["splits", "merges"])
    return pd.concat(rows, ignore_index=True), table


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
                # a feature that never fired on the held-out examples has no top token and no LLR: None, not NaN (JSON)
                "llr_top_token": float(row["llr_top_token"]) if np.isfinite(row["llr_top_token"]) else None,
                "density": float(row["density"])}

    def llr(e: dict) -> str:
        return "–" if e["llr_top_token"] is None else f"{e['llr_top_token']:.2f}"

    rows = []
    for path, c in cases["persisting"].items():
        if c is not None:
            c["evidence"] = [describe(n, f) for n, f in zip(c["nodes"], c["features"])]
            rows.append({"case": "persists " + path.replace(">", " → "), "features": " → ".join(f"{n}#{f}" for n, f in zip(c["nodes"], c["features"])),
                         "top tokens": " / ".join(repr(e["top_token"]) for e in c["evidence"]),
                         "LLR": " / ".join(llr(e) for e in c["evidence"]),
                         "r": " / ".join(f"{r:.3f}" for r in c["r"])})
    for edge, d in cases["disappearing"].items():
        if d is not None:
            d["evidence"] = [describe(d["parent"], d["feature"]), describe(d["child"], d["best_partner"])]
            rows.append({"case": "disappears " + " → ".join(Edge.parse(edge)), "features": f"{d['parent']}#{d['feature']} (best: {d['child']}#{d['best_partner']})",
                         "top tokens": " / ".join(repr(e["top_token"]) for e in d["evidence"]),
                         "LLR": " / ".join(llr(e) for e in d["evidence"]), "r": f"{d['best_r']:.3f}"})
    return rows


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
