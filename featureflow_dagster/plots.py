"""Plotly figures, written as standalone HTML files (plotly.js inlined: they open offline)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from featureflow_dagster.storage import atomic_file


def loss_curve_figure(curve: list[tuple[int, float]], title: str) -> go.Figure:
    steps, losses = zip(*curve) if curve else ((), ())
    fig = go.Figure(go.Scatter(x=list(steps), y=list(losses), mode="lines+markers", name="train loss"))
    fig.update_layout(title=title, xaxis_title="optimizer step", yaxis_title="train loss (nats/token)", template="plotly_white")
    return fig


def write_html(fig: go.Figure, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    return path
