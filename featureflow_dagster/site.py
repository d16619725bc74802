"""The feature pages of a lineage: a static site under `reports/features/` (issue 11).

One small client-side app (`site_static/`: index, feature page, case studies, Sankey) reads data
written here as JavaScript files, so that the site opens from disk (file://, where browsers refuse
to fetch JSON) as well as over HTTP:

  data/vocab.js              the tokenizer's token strings
  data/index.js              per node, one row per live feature (density, top token, LLR, status per edge, best r)
  data/cases.js              the case studies (`case_studies` asset)
  data/<node>/windows.js     the held-out windows the node's examples come from (token ids)
  data/<node>/<chunk>.js     CHUNK features per file: contexts with every token's activation, quantile
                             groups, histogram, top tokens, logit effects, LLR, partners and status on
                             every lineage edge, trajectories

A feature's contexts are shown with each token's activation of that feature, so the windows its
examples point into are encoded again (`examples.context_codes`, read with the rest of a node's
evidence by `examples.load_evidence`), sparse, once per node.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from featureflow_dagster.crosscoder.analysis import LATENT_CLASSES
from featureflow_dagster.examples import HIST_EDGES, NodeEvidence
from featureflow_dagster.flow import (BASE_ORIGIN, DEAD, DISAPPEARS, EMERGED, PERSISTED, PERSISTS, emerged_node, lost_node,
                                     node_origin, tables_from_classification)
from featureflow_dagster.lineage import Edge

CHUNK = 64  # features per data file
STATIC = ("index.html", "feature.html", "case_studies.html", "site.js", "site.css")


def _r(x: float, digits: int = 4) -> float | None:
    """A float for JSON: rounded to `digits` significant digits, None for NaN/inf."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


class _Partners:
    """One edge's matches as [features, k] arrays per (method, direction), read by feature."""

    def __init__(self, matches: pd.DataFrame):
        self.arrays = {}
        for (method, direction), rows in matches.groupby(["method", "direction"]):
            rows = rows.sort_values(["feature", "rank"])
            n, k = int(rows["feature"].max()) + 1, int(rows["rank"].max()) + 1
            cos = rows["cosine"].to_numpy() if "cosine" in rows else np.full(len(rows), np.nan)
            self.arrays[(method, direction)] = (rows["partner"].to_numpy().reshape(n, k), rows["r"].to_numpy().reshape(n, k),
                                                cos.reshape(n, k))

    def of(self, feature: int, direction: str) -> dict:
        out = {}
        for method in ("activation", "decoder"):
            if (method, direction) not in self.arrays:
                continue
            partner, r, cos = (a[feature] for a in self.arrays[(method, direction)])
            ok = partner >= 0
            # activation rows: [partner, r, decoder cosine]; decoder rows: [partner, cosine]
            out["by_r" if method == "activation" else "by_cos"] = (
                [[int(p), _r(v), _r(c)] for p, v, c in zip(partner[ok], r[ok], cos[ok])] if method == "activation"
                else [[int(p), _r(v)] for p, v in zip(partner[ok], r[ok])])
        return out


class LineageTables:
    """Everything the pages show about where a feature came from and where it went: per edge the
    matches (both methods), the classification, and the trajectories along every path."""

    def __init__(self, lineage, matches: dict[tuple[str, str], pd.DataFrame], classification: pd.DataFrame,
                 traj: pd.DataFrame, aligned: pd.DataFrame | None = None, seeds: pd.DataFrame | None = None):
        self.lineage = lineage
        # flow.null_seeds: per node, `flow.null.seed_table` (feature, dead, reproducible, partner_<k>, best_r_<k>)
        self.seeds: dict[str, pd.DataFrame] = {} if seeds is None else {
            node: rows.set_index("feature") for node, rows in seeds.groupby("node")}
        # flow.warm_start: per edge label, the parent side of `classify_aligned_lineage` (the same-index pair of the
        # parent's SAE and the child's SAE warm-started from it), by feature
        self.warm: dict[str, pd.DataFrame] = {} if aligned is None else {
            edge: rows.set_index("feature") for edge, rows in aligned[aligned["side"] == "parent"].groupby("edge")}
        self.partners = {e: _Partners(m) for e, m in matches.items()}
        self.tables = tables_from_classification(lineage, classification)
        # (edge 'p->c', side) -> status and best r per feature
        self.status: dict[tuple[str, str], np.ndarray] = {}
        self.best_r: dict[tuple[str, str], np.ndarray] = {}
        for (p, c), sides in self.tables.items():
            for side, table in zip(("parent", "child"), sides):
                self.status[(Edge(p, c).label, side)] = table["status"].to_numpy()
                self.best_r[(Edge(p, c).label, side)] = table["best_r"].to_numpy()
        self.trajectories: dict[tuple[str, int], list[dict]] = {}
        for row in traj.itertuples(index=False):
            nodes = row.path.split(">")
            first = nodes.index(row.start_node)
            entry = {"path": row.path, "nodes": nodes[first:first + len(row.features)], "features": [int(f) for f in row.features],
                     "r": [_r(x) for x in row.r], "reaches_end": bool(row.reaches_end)}
            for node, f in zip(entry["nodes"], entry["features"]):
                self.trajectories.setdefault((node, f), []).append(entry)

    def edges_of(self, node: str) -> tuple[list[str], list[str]]:
        parents = [p for p in self.lineage.node(node).parents if (p, node) in self.partners]
        children = [c for c in self.lineage.children(node) if (node, c) in self.partners]
        return parents, children

    def lineage_of(self, node: str, feature: int) -> dict:
        parents, children = self.edges_of(node)
        out = {"parents": [], "children": []}
        for p in parents:
            edge = Edge(p, node).label
            out["parents"].append({"node": p, "edge": edge, "status": str(self.status[(edge, "child")][feature]),
                                   **self.partners[(p, node)].of(feature, "child_to_parent")})
        for c in children:
            edge = Edge(node, c).label
            entry = {"node": c, "edge": edge, "status": str(self.status[(edge, "parent")][feature]),
                     **self.partners[(node, c)].of(feature, "parent_to_child")}
            if edge in self.warm:
                row = self.warm[edge].loc[feature]
                entry["warm"] = {"status": str(row["status"]), "r": _r(row["best_r"]), "cos": _r(row["decoder_cosine"])}
            out["children"].append(entry)
        out["trajectories"] = self.trajectories.get((node, feature), [])
        if node in self.seeds:
            row = self.seeds[node].loc[feature]
            ks = sorted(int(c.split("_")[-1]) for c in row.index if c.startswith("best_r_"))
            out["seed"] = {"reproducible": bool(row["reproducible"]),
                           "partners": [[k, int(row[f"partner_{k}"]), _r(row[f"best_r_{k}"])] for k in ks]}
        return out

    def origin(self, node: str) -> np.ndarray | None:
        """Per feature: persisted from some parent, else emerged (live on an incoming edge), else dead (flow.node_origin)."""
        return node_origin(self.lineage, self.tables, node)


def _sig(values, digits: int = 4) -> list:
    """`_r` over an array at once (non-finite values become None)."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x) & (x != 0)
    scale = np.where(finite, digits - 1 - np.floor(np.log10(np.abs(np.where(finite, x, 1.0)))), 0).astype(int)
    out = [float(round(v, int(k))) if np.isfinite(v) else None for v, k in zip(x.tolist(), scale.tolist())]
    return out


def _contexts(ev: NodeEvidence, f: int, col_rows: np.ndarray, col_vals: np.ndarray, inactive: int) -> tuple[dict, dict]:
    """The feature's top contexts, quantile groups and non-activating contexts as [window, offset, value]
    references, and its activations inside every window referenced ({window: [[offset, value], ...]})."""
    ex = ev.examples
    ctx = ex.windows.shape[1]

    def refs(pairs: list[tuple[float, int]]) -> list[list]:
        return [[p // ctx, p % ctx, _r(v)] for v, p in pairs]

    top = refs([(v, p) for v, p in zip(ex.top_values[f].tolist(), ex.top_positions[f].tolist()) if p >= 0])
    groups = [refs(group) for group in ex.quantile_groups(f)]
    off = [[p // ctx, p % ctx, 0.0] for p in ex.inactive_examples(f, inactive)]
    needed = np.array(sorted({c[0] for c in top} | {c[0] for g in groups for c in g}), dtype=np.int64)
    windows = col_rows // ctx
    keep = np.isin(windows, needed)
    acts: dict[str, list] = {}
    for w, o, v in zip(windows[keep].tolist(), (col_rows[keep] % ctx).tolist(), _sig(col_vals[keep])):
        acts.setdefault(str(w), []).append([o, v])
    return {"top": top, "quantiles": groups, "inactive": off}, acts


def crosscoder_site_node(edge_key: str) -> str:
    """The site's name for an edge's crosscoder (node names are [a-z0-9_]: no clash)."""
    return f"crosscoder.{edge_key}"


def crosscoder_evidence(edge: Edge, folder: Path, vocab: list[str]) -> NodeEvidence:
    """An edge's crosscoder (its asset folder: latents.parquet and `crosscoder.edge.LatentEvidence`) as a site node
    whose 'features' are the latents, with their examples over held-out windows of the data both models share."""
    from featureflow_dagster.crosscoder.edge import LatentEvidence
    from featureflow_dagster.examples import feature_table

    evidence = LatentEvidence.load(folder)
    latents = pd.read_parquet(folder / "latents.parquet").set_index("latent")
    return NodeEvidence(crosscoder_site_node(edge.key), evidence.examples,
                        feature_table(evidence.examples, vocab, evidence.logits["child_top_ids"]), evidence.logits, evidence.codes,
                        crosscoder={"edge": edge.label, "parent": edge.parent, "child": edge.child, "latents": latents})


def _logit_pairs(ev: NodeEvidence, f: int, prefix: str = "") -> dict:
    return {side: [[i, _r(v, 3)] for i, v in zip(ev.logit_lists[f"{prefix}{side}_ids"][f], ev.logit_lists[f"{prefix}{side}_values"][f])]
            for side in ("top", "bottom")}


def _crosscoder_record(ev: NodeEvidence, f: int) -> dict:
    """A latent's crosscoder figures: class, Δ, decoder norms and cosine, ν, its best SAE feature in each model, and
    its logit effects in the parent (the child's are the record's `logits`)."""
    cc, row = ev.crosscoder, ev.crosscoder["latents"].loc[f]
    return {"edge": cc["edge"], "parent": cc["parent"], "child": cc["child"], "class": str(row["class"]), "delta": _r(row["delta"]),
            "cosine": _r(row["decoder_cosine"]), "norm_parent": _r(row["norm_parent"]), "norm_child": _r(row["norm_child"]),
            "nu_error": _r(row.get("nu_error", float("nan"))), "nu_recon": _r(row.get("nu_recon", float("nan"))),
            "sae": {side: [int(row[f"{side}_sae_feature"]), _r(row[f"{side}_sae_r"])] for side in ("parent", "child")},
            "logits_parent": _logit_pairs(ev, f, "parent_")}


def feature_record(ev: NodeEvidence, f: int, lineage: LineageTables | None, inactive: int = 5) -> dict:
    """Everything one feature's page shows (see the module docstring); for a crosscoder's latent, its crosscoder
    figures and logit effects in both models instead of the lineage."""
    ex, row = ev.examples, {k: v[f] for k, v in ev.columns.items()}
    start, end = ev.codes.indptr[f], ev.codes.indptr[f + 1]
    contexts, acts = _contexts(ev, f, ev.codes.indices[start:end], ev.codes.data[start:end], inactive)
    hist = ex.histogram[f]
    nz = torch.nonzero(hist).flatten().tolist()
    crosscoder = ev.crosscoder is not None
    record = {
        "node": ev.node, "feature": f, "density": _r(row["density"]), "fired": int(ex.fired[f]), "tokens": ex.tokens,
        "max_activation": _r(row["max_activation"]), "top_token": int(row["top_token_id"]),
        "llr_top_token": _r(row["llr_top_token"]),
        "explanation": ({"text": ev.explanations[f][0], "score": _r(ev.explanations[f][1], 3)}
                        if ev.explanations and f in ev.explanations else None),
        "histogram": [[b, int(hist[b])] for b in nz],
        "top_tokens": [[t, _r(m), c] for t, m, c in ex.top_tokens(f, n=10, min_count=5) or ex.top_tokens(f, n=10)],
        "logits": _logit_pairs(ev, f, "child_" if crosscoder else ""),
        "contexts": contexts, "acts": acts,
        "lineage": lineage.lineage_of(ev.node, f) if lineage is not None and not crosscoder
        else {"parents": [], "children": [], "trajectories": []},
    }
    if crosscoder:
        record["crosscoder"] = _crosscoder_record(ev, f)
    return record


def index_rows(ev: NodeEvidence, lineage: LineageTables | None) -> dict:
    """Columns of the index for the node's live features (a crosscoder's: its class as the origin, and Δ,
    decoder cosine and the best SAE partner's r in each model as extra columns)."""
    t = ev.table
    live = np.flatnonzero(t["density"].to_numpy() > 0)
    cols = {
        "feature": live.tolist(),
        "density": [_r(x) for x in t["density"].to_numpy()[live]],
        "max": [_r(x, 3) for x in t["max_activation"].to_numpy()[live]],
        "top_token": [int(x) for x in t["top_token_id"].to_numpy()[live]],
        "llr": [_r(x, 3) for x in t["llr_top_token"].to_numpy()[live]],
        "origin": [BASE_ORIGIN] * live.size, "status": {}, "best_r": {},
    }
    if ev.crosscoder is not None:
        lat = ev.crosscoder["latents"].reindex(live)
        cols["origin"] = lat["class"].astype(str).tolist()
        cols["extra"] = {"Δ": _sig(lat["delta"], 3), "decoder cos": _sig(lat["decoder_cosine"], 3),
                         f"r {ev.crosscoder['parent']} SAE": _sig(lat["parent_sae_r"], 3),
                         f"r {ev.crosscoder['child']} SAE": _sig(lat["child_sae_r"], 3)}
        return cols
    if lineage is not None:
        origin = lineage.origin(ev.node)
        if origin is not None:
            cols["origin"] = origin[live].tolist()
        parents, children = lineage.edges_of(ev.node)
        for edge, side in [(Edge(p, ev.node).label, "child") for p in parents] + [(Edge(ev.node, c).label, "parent") for c in children]:
            cols["status"][edge] = lineage.status[(edge, side)][live].tolist()
            cols["best_r"][edge] = [_r(x, 3) for x in lineage.best_r[(edge, side)][live]]
    if ev.explanations:
        cols["explanation"] = [ev.explanations[f][0] if f in ev.explanations else "" for f in live.tolist()]
        cols["score"] = [_r(ev.explanations[f][1], 3) if f in ev.explanations else None for f in live.tolist()]
    return cols


def _js(path: Path, name: str, payload) -> None:
    """Write `payload` as a script that hands it to the site's loader."""
    path.write_text(f"FF.{name}({json.dumps(payload, separators=(',', ':'), allow_nan=False)});\n")


def write_site(out: Path, lineage_name: str, vocab: list[str], nodes: list[NodeEvidence], lineage: LineageTables | None,
               cases: dict | None, sankey_volumes: dict | None, threshold: float, plotly_js: Path,
               final: Path | None = None, log=None) -> dict:
    """The whole site into `out` (a fresh folder that becomes `final`): static files, data files, the
    linked Sankey page; pages load the shared `plotly_js` by a relative path. Returns counts for the
    asset's metadata (pages, files, bytes)."""
    import os

    from featureflow_dagster.plots import ensure_plotly_js

    out.mkdir(parents=True, exist_ok=True)
    plotly_src = os.path.relpath(ensure_plotly_js(plotly_js), final or out)
    static = resources.files("featureflow_dagster") / "site_static"
    for name in STATIC:
        text = (static / name).read_text().replace("{{PLOTLY}}", plotly_src).replace("{{LINEAGE}}", lineage_name)
        (out / name).write_text(text)
    data = out / "data"
    data.mkdir()
    _js(data / "vocab.js", "vocab", vocab)
    crosscoders = {ev.node: ev.crosscoder["edge"] for ev in nodes if ev.crosscoder is not None}
    index = {"lineage": lineage_name, "threshold": threshold, "nodes": [ev.node for ev in nodes if ev.crosscoder is None],
             "crosscoders": crosscoders, "classes": list(LATENT_CLASSES) if crosscoders else [],
             "d_sae": {ev.node: int(ev.examples.fired.numel()) for ev in nodes}, "chunk": CHUNK,
             "hist_edges_log10": [round(float(x), 4) for x in np.log10(HIST_EDGES)],
             "edges": [Edge(p, c).label for p, c in (lineage.partners if lineage is not None else {})],
             "origins": [BASE_ORIGIN, PERSISTED, EMERGED], "statuses": [PERSISTS, DISAPPEARS, PERSISTED, EMERGED],
             "rows": {}}
    if lineage is not None:  # every feature's best r per edge and side (dead: None): the index's threshold slider
        labels = [Edge(p, c).label for p, c in lineage.partners]
        index["flow"] = {e: {side: [None if st == DEAD else v for st, v in zip(lineage.status[(e, side)], _sig(lineage.best_r[(e, side)]))]
                             for side in ("parent", "child")} for e in labels}
    pages = files = 0
    for ev in nodes:
        folder = data / ev.node
        folder.mkdir()
        _js(folder / "windows.js", "windows", {"node": ev.node, "context": int(ev.examples.windows.shape[1]),
                                                       "ids": ev.examples.windows.reshape(-1).tolist()})
        index["rows"][ev.node] = index_rows(ev, lineage)
        live = ev.table["density"].to_numpy() > 0
        d_sae = live.size
        for c in range(0, d_sae, CHUNK):
            records = [feature_record(ev, f, lineage) if live[f] else None for f in range(c, min(d_sae, c + CHUNK))]
            _js(folder / f"{c // CHUNK:05d}.js", "chunk", {"node": ev.node, "chunk": c // CHUNK, "features": records})
            files += 1
        pages += int(live.sum())
        if log:
            log(f"pages: {ev.node}: {int(live.sum()):,} live features of {d_sae:,}")
    _js(data / "index.js", "index", index)
    _js(data / "cases.js", "cases", cases or {"persisting": {}, "disappearing": {}})
    if sankey_volumes is not None:
        from featureflow_dagster.plots import flow_sankey_figure, sankey_columns, write_html

        fig = flow_sankey_figure(sankey_volumes, threshold, f"{lineage_name}: feature flow", links=sankey_links(lineage.lineage),
                                 columns=sankey_columns(lineage.lineage.generations(), lineage.lineage.edges()))
        write_html(fig, out / "sankey.html", plotly_js, final=(final or out) / "sankey.html", post_script=sankey_script())
    # chunk files, vocab.js, index.js, cases.js and one windows.js per node
    return {"pages": pages, "data_files": files + 3 + len(nodes), "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def sankey_links(lineage) -> dict[str, str]:
    """Per Sankey node (`flow_volumes`' names), the index filtered to the features behind it."""
    out = {}
    for node in lineage.node_names:
        out[node] = f"index.html#node={node}"
        out[emerged_node(node)] = f"index.html#node={node}&origin={EMERGED}"
    for edge in lineage.edges():
        out[lost_node(edge)] = f"index.html#node={edge.parent}&edge={edge.label}&status={DISAPPEARS}"
    return out


def sankey_script() -> str:
    """What runs on the Sankey page after the figure (`{plot_id}` is the figure's element): clicking a
    node opens its feature list, and the same links are listed above the figure."""
    return (resources.files("featureflow_dagster") / "site_static" / "sankey.js").read_text()
