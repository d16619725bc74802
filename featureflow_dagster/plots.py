"""Plotly figures, written as HTML pages that load one shared copy of plotly.js by a relative path
(`ensure_plotly_js`: written once per home, so the pages open offline without 4.8 MB each)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from featureflow_dagster.lineage import Edge
from featureflow_dagster.storage import atomic_file


def loss_curve_figure(curve: list[tuple[int, float]], title: str) -> go.Figure:
    steps, losses = zip(*curve) if curve else ((), ())
    fig = go.Figure(go.Scatter(x=list(steps), y=list(losses), mode="lines+markers", name="train loss"))
    fig.update_layout(title=title, xaxis_title="optimizer step", yaxis_title="train loss (nats/token)", template="plotly_white")
    return fig


def ensure_plotly_js(path: Path) -> Path:
    """One copy of plotly.js (about 4.8 MB) for every report of a home, written once, atomically."""
    import plotly.offline

    code = plotly.offline.get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(code.encode()):
        with atomic_file(path) as tmp:
            tmp.write_text(code)
    return path


def write_html(fig: go.Figure, path: Path, plotly_js: Path, final: Path | None = None, post_script: str | None = None,
               intro: str | None = None) -> Path:
    """The figure as an HTML page that loads the shared `plotly_js` by a path relative to where the page
    ends up (`final`, when `path` is a temporary file inside a folder renamed into place later);
    `post_script` runs after the plot is drawn ('{plot_id}' names its div); `intro` (HTML) is put above the figure."""
    import os

    src = os.path.relpath(ensure_plotly_js(plotly_js), (final or path).parent)
    with atomic_file(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=src, full_html=True, post_script=post_script)
        if intro:
            text = tmp.read_text()
            tmp.write_text(text.replace("<body>", '<body><div style="font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; '
                                                  f'margin: 8px 16px">{intro}</div>', 1))
    return path


def slerp_sweep_figure(table, domain_a: str, domain_b: str, chosen_t: float, crossed: bool,
                       baselines: dict[str, float], title: str) -> go.Figure:
    """Accuracy on each parent's own domain along t (Horn & Elliott's Figure 5), with the ancestor's
    accuracies as dashed baselines and the chosen t marked."""
    fig = go.Figure()
    for domain, color in ((domain_a, "#1f77b4"), (domain_b, "#d62728")):
        rows = table[table["domain"] == domain]
        fig.add_trace(go.Scatter(x=rows["t"], y=rows["accuracy"], mode="lines+markers", name=f"accuracy on {domain}",
                                 line={"color": color}))
        if domain in baselines:
            fig.add_hline(y=baselines[domain], line={"dash": "dash", "color": color},
                          annotation_text=f"ancestor on {domain}: {baselines[domain]:.3f}")
    fig.add_vline(x=chosen_t, line={"dash": "dot", "color": "black"},
                  annotation_text=f"t = {chosen_t:.3f}" + ("" if crossed else " (no crossing)"))
    fig.update_layout(title=title, xaxis_title="SLERP t (0 = first parent, 1 = second)",
                      yaxis_title="next-token accuracy", template="plotly_white")
    return fig


_MARKDOWN_SPECIAL = "\\`*_[]<>|"


def markdown_cell(value, float_format: str = "{:.4f}") -> str:
    """One table cell: floats formatted, text with markdown's special characters escaped (a token
    such as `__(` would otherwise turn into emphasis, a `|` into a new column)."""
    if isinstance(value, float):
        return float_format.format(value)
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in str(value))


def markdown_table(df, float_format: str = "{:.4f}") -> str:
    """A pandas DataFrame (index included) as a GitHub markdown table, for Dagster metadata."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for idx, row in df.iterrows():
        cells = [idx, *row.tolist()]
        lines.append("| " + " | ".join(markdown_cell(c, float_format) for c in cells) + " |")
    return "\n".join(lines)


def density_histogram(density, title: str, bins: int = 40) -> go.Figure:
    """Histogram of log10 feature firing frequency; dead features (never fired) counted apart."""
    import torch

    alive = density[density > 0]
    dead = int((density == 0).sum())
    fig = go.Figure(go.Histogram(x=torch.log10(alive).tolist(), nbinsx=bins, name="alive features"))
    fig.update_layout(
        title=f"{title} ({dead} of {density.numel()} features never fired)",
        xaxis_title="log10 firing frequency (fraction of tokens)", yaxis_title="features", template="plotly_white",
    )
    return fig


def flow_sankey_figure(volumes: dict, threshold: float, title: str, links: dict[str, str] | None = None,
                       columns: dict[str, float] | None = None) -> go.Figure:
    """Sankey of feature volumes along the lineage (Horn & Elliott's Figure 2) from
    `flow.flow_volumes`, with the share of each parent's features persisting into each child
    written on the diagram; `links` gives each node a URL (its `customdata`), for the feature pages. With
    flow.null_seeds, `volumes["null"]` (per edge label: persisting among the parent's seed-reproducible features
    and the count the null expects) is written under it and on each traced link. `columns` places nodes by name at
    x in [0, 1] (`sankey_columns`: generations left to right, each node's emerged features just left of it and
    the features lost on an edge just right of the parent); nodes sharing a column are spread top to bottom."""
    live, shares = volumes["live_features"], volumes["shares"]
    null = volumes.get("null", {})
    labels: list[str] = []
    names: list[str] = []

    def node(name: str, value: int | None = None) -> int:
        if name not in names:
            names.append(name)
            labels.append(f"{name} ({live[name]:,} live)" if name in live else f"{name}: {value:,}")
        return names.index(name)

    colors = {"traced": "rgba(31,119,180,0.45)", "disappeared": "rgba(214,39,40,0.35)", "emerged": "rgba(44,160,44,0.45)"}
    src, dst, val, col, hover = [], [], [], [], []
    for link in volumes["links"]:
        s, t = node(link["source"], link["value"]), node(link["target"], link["value"])
        src.append(s), dst.append(t), val.append(link["value"]), col.append(colors[link["kind"]])
        if link["kind"] == "traced":
            label = Edge(link["source"], link["target"]).label
            share = shares[label]
            text = (f"{link['value']:,} features of {link['target']} trace to {link['source']}; "
                    f"{share:.0%} of {link['source']}'s features persist (r > {threshold})")
            if label in null:
                text += (f"; of the {null[label]['null_expected_persisting']:,} that SAE training reproduces in {link['source']}, "
                         f"{null[label]['parent_persisting_reproducible']:,} persist")
            hover.append(text)
        else:
            hover.append(f"{link['value']:,} features {link['kind']}")
    place = {}
    if columns and all(n in columns for n in names):
        by_x: dict[float, list[str]] = {}
        for n in names:
            by_x.setdefault(columns[n], []).append(n)
        for x, group in by_x.items():
            for i, n in enumerate(group):
                place[n] = (min(0.98, max(0.02, x)), (i + 0.5) / len(group))
    fig = go.Figure(go.Sankey(
        arrangement="snap" if place else None,
        node={"label": labels, "pad": 18, "thickness": 16,
              **({"x": [place[n][0] for n in names], "y": [place[n][1] for n in names]} if place else {}),
              **({"customdata": [links.get(n, "") for n in names], "hovertemplate": "%{label}<br>click: its features<extra></extra>"}
                 if links else {})},
        link={"source": src, "target": dst, "value": val, "color": col, "customdata": hover,
              "hovertemplate": "%{customdata}<extra></extra>"},
    ))
    note = " · ".join(f"{' → '.join(Edge.parse(edge))}: {share:.0%} persist" for edge, share in shares.items())
    subtitle = f"<br><sup>{note} (r > {threshold})</sup>"
    if null:  # flow.null_seeds: the same share among the features the parent's own seeds reproduce, beside what the null expects
        seeds = " · ".join(f"{' → '.join(Edge.parse(edge))}: {c['parent_persisting_reproducible']:,} of {c['null_expected_persisting']:,}"
                           for edge, c in null.items())
        subtitle += f"<br><sup>seed null, persisting among the parent's seed-reproducible features (all would, if nothing changed): {seeds}</sup>"
    # what the page's threshold slider needs to re-derive every link at another bar (site_static/sankey.js)
    meta = {"names": names, "threshold": threshold,
            "links": [{"kind": link["kind"], "source": link["source"], "target": link["target"]} for link in volumes["links"]]}
    legend = " ".join(f"<span style='color:{c.replace('0.45', '1').replace('0.35', '1')}'>■</span> {name}"
                      for name, c in (("persisting (traced to the parent)", colors["traced"]), ("disappeared", colors["disappeared"]),
                                      ("emerged", colors["emerged"])))
    fig.update_layout(title=f"{title}{subtitle}", font_size=12, template="plotly_white", margin={"t": 110 if null else 80, "b": 40}, height=640,
                      meta=meta, annotations=[{"text": legend, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0, "y": -0.06,
                                    "xanchor": "left", "font": {"size": 12}}])
    return fig


def sankey_columns(generations: dict[str, int], edges) -> dict[str, float]:
    """x of every Sankey node for `flow_sankey_figure`: generation g at g / G, the features that emerged in a node a
    third of a column to its left, those lost on an edge a third of a column to the right of its parent."""
    from featureflow_dagster.flow import emerged_node, lost_node

    last = max(1, max(generations.values()))
    out = {n: g / last for n, g in generations.items()}
    out.update({emerged_node(n): (g - 0.35) / last for n, g in generations.items() if g > 0})
    out.update({lost_node(e): (generations[e.parent] + 0.35) / last for e in edges})
    return out


def score_histogram_figure(groups: list[tuple[str, object, str]], title: str) -> go.Figure:
    """Overlaid histograms of explanation scores on [-1, 1], one per (name, scores, colour) group
    (NaN scores left out, empty groups skipped), each named with its count."""
    fig = go.Figure()
    for name, scores, color in groups:
        scores = [float(x) for x in scores if x == x]
        if scores:
            fig.add_trace(go.Histogram(x=scores, name=f"{name} ({len(scores)})", opacity=0.55, marker_color=color,
                                       xbins={"start": -1, "end": 1, "size": 0.1}))
    fig.update_layout(barmode="overlay", title=title, xaxis_title="score (pooled correlation of simulated and true activations)",
                      yaxis_title="features", template="plotly_white")
    return fig


def patching_heatmap_figure(panels: list[tuple[str, object, str]], title: str) -> go.Figure:
    """Component x position heatmaps side by side, one per (subtitle, table, value column); a table holds
    rows (component, position relative to the end, value); the 'all' column is every position at once."""
    import pandas as pd
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.08)
    for i, (_, table, column) in enumerate(panels, start=1):
        comps = list(dict.fromkeys(table["component"]))
        positions = sorted(int(p) for p in table["position"].dropna().unique())
        cols = [str(p) for p in positions] + ["all"]
        z = [[None] * len(cols) for _ in comps]
        for comp, pos, value in zip(table["component"], table["position"].astype(object), table[column]):
            j = len(cols) - 1 if pd.isna(pos) else positions.index(int(pos))
            z[comps.index(comp)][j] = None if pd.isna(value) else float(value)
        fig.add_trace(go.Heatmap(z=z, x=cols, y=comps, colorscale="RdBu", zmid=0, zmin=-1, zmax=1,
                                 colorbar=dict(title="share of gap") if i == 1 else None, showscale=i == 1,
                                 hovertemplate="%{y} at %{x}: %{z:.3f}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="position (from the end; all = every position)", type="category", row=1, col=i)
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_layout(title=title, height=120 + 40 * max(len(set(p[1]["component"])) for p in panels),
                      width=max(700, 560 * len(panels)))
    return fig
