import pandas as pd

from featureflow_dagster.plots import markdown_table


def test_markdown_tables_escape_what_markdown_would_eat():
    """Token strings in metadata tables: `__(` is not emphasis, `a|b` is one cell, floats are formatted."""
    table = pd.DataFrame({"token": ["__(", "a|b", "*x*"], "llr": [5.4, -1.0, 0.25]}, index=pd.Index([1, 2, 3], name="feature"))
    lines = markdown_table(table).splitlines()
    assert lines[0] == "| feature | token | llr |"
    assert lines[2] == "| 1 | \\_\\_( | 5.4000 |"
    assert lines[3] == "| 2 | a\\|b | -1.0000 |"
    assert lines[4] == "| 3 | \\*x\\* | 0.2500 |"
    assert all(line.count(" | ") == 2 for line in lines[2:])  # three cells each: no '|' left unescaped


def test_the_sankey_columns_follow_generations():
    """The feature-flow Sankey of a diamond lineage (base; two fine-tunes; their merge): nodes placed left to right by
    generation, each node's emerged features just left of it and the features lost on an edge just right of the
    parent, so 'emerged in merged' is no longer beside the base nor 'merged' beside the lost nodes."""
    from featureflow_dagster.flow import emerged_node, lost_node
    from featureflow_dagster.lineage import load_lineage
    from featureflow_dagster.plots import flow_sankey_figure, sankey_columns

    lineage = load_lineage("micro")
    gen = lineage.generations()
    assert gen == {"base": 0, "code": 1, "prose": 1, "merged": 2}
    edges = lineage.edges()
    live = {n: 100 for n in gen}
    links = [{"source": e.parent, "target": e.child, "value": 30, "kind": "traced"} for e in edges]
    links += [{"source": e.parent, "target": lost_node(e), "value": 70, "kind": "disappeared"} for e in edges]
    links += [{"source": emerged_node(n), "target": n, "value": 40, "kind": "emerged"} for n in gen if gen[n]]
    volumes = {"live_features": live, "shares": {e.label: 0.3 for e in edges}, "links": links}
    fig = flow_sankey_figure(volumes, 0.8, "micro", columns=sankey_columns(gen, edges))
    node = fig.data[0].node
    x = {label.split(" (")[0].split(":")[0]: xi for label, xi in zip(node.label, node.x)}
    assert x["base"] < x[lost_node(edges[0])] < x[emerged_node("code")] < x["code"] == x["prose"]
    assert x["code"] < x[emerged_node("merged")] < x["merged"] and x["merged"] == max(x.values())
    assert x[lost_node(next(e for e in edges if e.child == "merged"))] < x[emerged_node("merged")]
    assert "persisting" in fig.layout.annotations[0].text and "emerged" in fig.layout.annotations[0].text  # the legend


def test_the_reports_home_imports_neither_torch_nor_the_assets():
    """`featureflow reports` builds the home on each request: its module stays light (no torch, no asset module)."""
    import subprocess
    import sys

    probe = "import sys, featureflow_dagster.home; print(sorted(m for m in ('torch', 'featureflow_dagster.assets') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_the_definitions_build_without_torch_or_the_data_libraries():
    """`featureflow status` and `plan` build every asset definition: the heavy libraries load where an asset runs, not
    then (the demo's status took 6.4 s with them, most of it importing)."""
    import subprocess
    import sys

    heavy = ("torch", "numpy", "pandas", "scipy", "plotly", "safetensors", "transformers", "transformer_lens")
    probe = ("import sys; from featureflow_dagster.definitions import build_definitions; "
             "from featureflow_dagster.lineage import SHIPPED_LINEAGES, load_lineage; "
             "[build_definitions(load_lineage(n), home='/nonexistent', device='cpu') for n in SHIPPED_LINEAGES]; "
             f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
