"""The reports home (`reports/index.html`, the root of `featureflow reports`): the lineage drawn as a graph in
generation order (base, fine-tunes, merges), each node with its model's validation accuracy per domain and its
SAE's quality figures, each edge with how many of the parent's features persist (raw, among seed-reproducible
ones, and what the seed null expects) and how well the parent's SAE reconstructs the child, and every plot of
every node and edge one click away.

Built from the files the assets write (no Dagster, no torch): `reports/model/<node>/metrics.json`, the SAE's
`checks.json`, `sae_transfer/<edge>.parquet`, `feature_flow/*.parquet`, and whatever HTML lies under
`reports/<asset>/<partition>/`. A figure whose file is not there yet shows as "–". `write_home` is called by
`featureflow materialize` when it ends and by the reports server each time its root is asked for, so the page
follows what is on disk."""

from __future__ import annotations

import html
import json
from pathlib import Path

from featureflow_dagster.serve import FEATURE_PAGES_DIR, REPORTS_DIR
from featureflow_dagster.storage import atomic_file

HOME = "index.html"


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _parquet(path: Path):
    if not path.is_file():
        return None
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError):
        return None


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return html.escape(str(x))
    return "–" if x != x else f"{x:.{digits}g}"


def _pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):.1f}%"


def flow_tables(home: Path) -> dict:
    """feature_flow's tables the home reads (each read once per page; None where not written yet)."""
    return {name: _parquet(home / "feature_flow" / f"{name}.parquet") for name in ("seed_null", "edge_counts", "null_counts")}


def node_figures(lineage, home: Path, name: str, tables: dict) -> dict:
    """What the home shows of one node: accuracy per domain, SAE figures, seed reproducibility, plot links."""
    reports = home / REPORTS_DIR
    metrics = _json(reports / "model" / name / "metrics.json") or {}
    checks = _json(home / "sae" / name / "checks.json") or {}
    sae = {k: (checks.get(c) or {}).get("value") for k, c in (("L0", "l0_in_range"), ("explained variance", "explained_variance_above"),
                                                              ("loss recovered", "loss_recovered_above"), ("dead share", "dead_fraction_below"))}
    seeds = tables["seed_null"]
    reproducible = None
    if seeds is not None and name in set(seeds["node"]):
        rows = seeds[(seeds["node"] == name) & ~seeds["dead"]]
        reproducible = float(rows["reproducible"].mean()) if len(rows) else None
    links = [("loss curve", f"model/{name}/loss_curve.html"), ("SLERP sweep", f"slerp_sweep/{name}/sweep.html"),
             ("SAE feature density", f"sae/{name}/density.html")]
    links += [(f"circuit: {p.stem}", f"circuits/{name}/{p.name}") for p in sorted((reports / "circuits" / name).glob("*.html"))]
    links += [(f"auto-interp: {p.stem}", f"autointerp/{name}/{p.name}") for p in sorted((reports / "autointerp" / name).glob("*.html"))]
    links = [(label, href) for label, href in links if (reports / href).is_file()]
    if (reports / FEATURE_PAGES_DIR / "index.html").is_file():
        links.append(("features", f"{FEATURE_PAGES_DIR}/index.html#node={name}"))
    return {"accuracy": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("val_accuracy/")},
            "sae": sae, "reproducible": reproducible, "links": links}


def edge_figures(lineage, home: Path, edge, tables: dict) -> dict:
    """What the home shows of one edge: persisting counts beside the seed null, SAE transfer, plot links."""
    reports = home / REPORTS_DIR
    out: dict = {"persisting": None, "live": None, "reproducible": None, "null": None, "emerged": None, "transfer": None}
    counts = tables["edge_counts"]
    if counts is not None and edge.label in set(counts["edge"]):
        row = counts.set_index("edge").loc[edge.label]
        out.update(persisting=int(row["parent_persisting"]), live=int(row["parent_persisting"] + row["parent_disappearing"]),
                   emerged=int(row["child_emerged"]))
    null = tables["null_counts"]
    if null is not None and edge.label in set(null["edge"]):
        row = null.set_index("edge").loc[edge.label]
        out.update(reproducible=int(row["parent_persisting_reproducible"]), null=int(row["null_expected_persisting"]))
    transfer = _parquet(home / "sae_transfer" / f"{edge.key}.parquet")
    if transfer is not None:
        row = transfer[(transfer["sae"] == edge.parent) & (transfer["activations"] == edge.child)]
        out["transfer"] = float(row["explained_variance"].iloc[0]) if len(row) else None
    links = [(f"CMAP: {p.stem}", f"cmap/{edge.key}/{p.name}") for p in sorted((reports / "cmap" / edge.key).glob("*.html"))]
    if (reports / FEATURE_PAGES_DIR / "index.html").is_file():
        links.append(("disappearing features", f"{FEATURE_PAGES_DIR}/index.html#node={edge.parent}&edge={edge.label}&status=disappears"))
        links.append(("emerged features", f"{FEATURE_PAGES_DIR}/index.html#node={edge.child}&edge={edge.label}&status=emerged"))
        if (home / "crosscoder" / edge.key / "latents.parquet").is_file():
            links.append(("crosscoder latents", f"{FEATURE_PAGES_DIR}/index.html#node=crosscoder.{edge.key}"))
    out["links"] = links
    return out


def _graph(lineage, gen: dict[str, int], edges: dict) -> str:
    """The lineage as SVG: one column per generation, a box per node (linked to its card), a line per edge labelled
    with the share of the parent's features that persist (and what the seed null expects)."""
    cols: dict[int, list[str]] = {}
    for name in lineage.node_names:
        cols.setdefault(gen[name], []).append(name)
    rows = max(len(v) for v in cols.values())
    width, height = 260 * len(cols) - 130 + 40, 90 * rows + 20
    # each column centred vertically; boxes 130 x 40
    pos = {n: (20 + 260 * g, 10 + 90 * i + 45 * (rows - len(cols[g])) + 15)
           for g, names in cols.items() for i, n in enumerate(names)}
    parts = [f'<svg id="lineage" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="the lineage, in generation order">']
    for e in lineage.edges():
        (x1, y1), (x2, y2) = pos[e.parent], pos[e.child]
        f = edges[e.key]
        share = f"{f['persisting'] / f['live']:.0%} persist" if f["persisting"] is not None and f["live"] else "not computed"
        if f["null"]:
            share += f" (null {f['null'] / f['live']:.0%})"
        mx, my = (x1 + 130 + x2) / 2, (y1 + y2) / 2 + 20
        parts.append(f'<a href="#edge-{e.key}"><line x1="{x1 + 130}" y1="{y1 + 20}" x2="{x2}" y2="{y2 + 20}" class="edge"/>'
                     f'<text x="{mx}" y="{my + 4}" class="elabel">{html.escape(share)}</text></a>')
    for name, (x, y) in pos.items():
        kind = lineage.node(name).kind
        parts.append(f'<a href="#node-{name}"><rect x="{x}" y="{y}" width="130" height="40" rx="6" class="node {kind}"/>'
                     f'<text x="{x + 65}" y="{y + 18}" class="nlabel">{html.escape(name)}</text>'
                     f'<text x="{x + 65}" y="{y + 33}" class="nkind">{html.escape(kind)}</text></a>')
    parts.append("</svg>")
    return "".join(parts)


def _links(links: list[tuple[str, str]]) -> str:
    if not links:
        return '<p class="muted">no plots yet</p>'
    return "<p>" + " · ".join(f'<a href="{html.escape(href)}">{html.escape(label)}</a>' for label, href in links) + "</p>"


def render_home(lineage, home: Path) -> str:
    gen = lineage.generations()
    tables = flow_tables(home)
    nodes = {n: node_figures(lineage, home, n, tables) for n in lineage.node_names}
    edges = {e.key: edge_figures(lineage, home, e, tables) for e in lineage.edges()}
    reports = home / REPORTS_DIR
    top = [("features", f"{FEATURE_PAGES_DIR}/index.html"), ("feature flow (Sankey)", f"{FEATURE_PAGES_DIR}/sankey.html"),
           ("case studies", f"{FEATURE_PAGES_DIR}/case_studies.html"), ("auto-interp scores", "autointerp/lineage/scores.html")]
    top = [(label, href) for label, href in top if (reports / href.split("#")[0]).is_file()]
    out = ['<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">',
           f"<title>{html.escape(lineage.name)}: featureflow</title>",
           f'<link rel="stylesheet" href="{FEATURE_PAGES_DIR}/site.css"><style>{_CSS}</style></head><body>',
           f'<header><strong>featureflow · {html.escape(lineage.name)}</strong><a href="index.html">home</a>'
           + "".join(f'<a href="{html.escape(h)}">{html.escape(label)}</a>' for label, h in top) + "</header>",
           f"<h1>{html.escape(lineage.name)}</h1>",
           f'<p class="muted">{html.escape(lineage.description or "")} Generations left to right; a node or an edge opens '
           "its figures below. An edge's share is the parent's live features with a child feature above the flow's "
           f"threshold (r &gt; {lineage.flow.threshold}); the null is the share two SAEs of the parent itself, trained with "
           "different seeds, reach.</p>",
           _graph(lineage, gen, edges), "<h2>Nodes</h2>"]
    for name in sorted(lineage.node_names, key=lambda n: (gen[n], lineage.node_names.index(n))):
        f = nodes[name]
        acc = ", ".join(f"{html.escape(d)} {_fmt(v)}" for d, v in sorted(f["accuracy"].items())) or "–"
        sae = ", ".join(f"{k} {_fmt(v)}" for k, v in f["sae"].items())
        rep = f"; features reproducible across seeds {_pct(f['reproducible'])}" if f["reproducible"] is not None else ""
        out.append(f'<div class="card" id="node-{name}"><h3>{html.escape(name)} <span class="muted">({lineage.node(name).kind}, '
                   f"generation {gen[name]})</span></h3><p>validation accuracy: {acc}</p><p>SAE: {sae}{rep}</p>"
                   + _links(f["links"]) + "</div>")
    if edges:
        out.append("<h2>Edges</h2>")
    for e in lineage.edges():
        f = edges[e.key]
        if f["persisting"] is None:
            flow = "feature flow not computed yet"
        else:
            flow = f"{f['persisting']:,} of {f['live']:,} parent features persist, {f['emerged']:,} child features emerged"
            if f["null"] is not None:
                flow += (f"; among the parent's seed-reproducible features {f['reproducible']:,} persist, where the seed null "
                         f"expects {f['null']:,}")
        transfer = f"; the parent's SAE explains {_fmt(f['transfer'])} of the child's variance" if f["transfer"] is not None else ""
        out.append(f'<div class="card" id="edge-{e.key}"><h3>{html.escape(e.parent)} → {html.escape(e.child)}</h3>'
                   f"<p>{flow}{transfer}</p>" + _links(f["links"]) + "</div>")
    out.append("</body></html>")
    return "\n".join(out)


def write_home(lineage, home: Path) -> Path:
    """Write `reports/index.html` for the lineage whose artefacts are under `home` (atomically)."""
    final = Path(home) / REPORTS_DIR / HOME
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(final) as tmp:
        tmp.write_text(render_home(lineage, Path(home)))
    return final


_CSS = """
#lineage { max-width: 100%; height: auto; margin: 8px 0 4px; }
#lineage .edge { stroke: #9aa3b2; stroke-width: 2; }
#lineage .node { fill: #eef3fb; stroke: #0a58ca; stroke-width: 1.5; }
#lineage .node.finetune { fill: #eefaf0; stroke: #2e7d32; }
#lineage .node.merge { fill: #fdf3e7; stroke: #b26a00; }
#lineage .nlabel { font: 600 13px system-ui, sans-serif; text-anchor: middle; }
#lineage .nkind { font: 11px system-ui, sans-serif; fill: #666; text-anchor: middle; }
#lineage .elabel { font: 11px system-ui, sans-serif; fill: #333; text-anchor: middle; paint-order: stroke;
                   stroke: #fff; stroke-width: 4px; stroke-linejoin: round; }
#lineage a:hover .node { stroke-width: 3; }
.card { border: 1px solid #e3e3e8; border-radius: 6px; padding: 4px 14px; margin: 10px 0; }
.card h3 { margin: 8px 0 4px; font-size: 15px; }
.card:target { border-color: #0a58ca; box-shadow: 0 0 0 2px #cfe0fb; }
"""
