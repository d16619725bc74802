"""The README's circuits and CMAP tables, printed from a materialized home (task_performance/, circuits/*/circuits.json,
cmap/*/summary.json), so that the figures there are re-generated, not retyped.

    python docs/patching_tables.py [HOME]     # default: ./.featureflow/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def _unit(unit: list) -> str:
    name, pos = unit
    return f"{name}" + ("" if pos is None else f" @{pos}")


def circuits_table(home: Path, nodes: list[str] | None = None) -> str:
    nodes = nodes or sorted(p.name for p in (home / "circuits").iterdir())
    tasks = None
    lines = []
    for node in nodes:
        perf = pd.read_parquet(home / "task_performance" / f"{node}.parquet").set_index("task")
        circuits = json.loads((home / "circuits" / node / "circuits.json").read_text())
        tasks = tasks or list(circuits)
        cells = [node]
        for task in tasks:
            p, c = perf.loc[task], circuits[task]
            cells.append(f"{p['accuracy']:.3f}, {p['top1']:.3f}, {p['logit_diff']:.2f} ({p['corrupt_logit_diff']:.2f})")
            random = ("–" if c["random_faithfulness"] != c["random_faithfulness"] else
                      f"{c['random_faithfulness']:.3f} ± {c['random_std']:.3f}, {100 * c['random_at_least']:.0f}% at least as faithful")
            cells.append(f"{', '.join(_unit(u) for u in c['units']) or '(empty)'}: {c['faithfulness']:.3f} ({random})")
        lines.append("| " + " | ".join(cells) + " |")
    head = ["node"] + [h for t in tasks for h in (f"{t}: accuracy, top-1, LD (cf. LD)", f"{t} circuit: faithfulness (random from the same cells)")]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines])


def cmap_table(home: Path, order: list[str] | None = None) -> str:
    edges = order or sorted(p.name for p in (home / "cmap").iterdir())
    lines = ["| edge | task | gap (± se) | child → parent | parent → child | persisted / emerged features (size-matched random) |",
             "|---|---|---|---|---|---|"]
    for edge in edges:
        summary = json.loads((home / "cmap" / edge / "summary.json").read_text())
        for task, s in summary.items():
            if s["gap_resolved"]:
                top = {d: ", ".join(f"{t['component']} {t['share']:.2f}" for t in s["top"][d]) for d in ("child_into_parent", "parent_into_child")}
                f = s["features"]
                feats = (f"{f['persisted']:.2f} ({f['random_persisted_mean']:.2f} ± {f['random_persisted_std']:.2f}) / "
                         f"{f['emerged']:.2f} ({f['random_emerged_mean']:.2f} ± {f['random_emerged_std']:.2f})")
            else:
                top, feats = {"child_into_parent": "not resolved", "parent_into_child": "not resolved"}, "–"
            lines.append(f"| {edge.replace('__', ' → ')} | {task} | {s['gap']:+.3f} ± {s['gap_se']:.3f} | {top['child_into_parent']} | "
                         f"{top['parent_into_child']} | {feats} |")
    return "\n".join(lines)


def main() -> None:
    home = Path(sys.argv[1] if len(sys.argv) > 1 else ".featureflow/demo")
    lineage = json.loads((home / "lineage.json").read_text())["lineage"]
    nodes = order = None
    try:
        from featureflow_dagster.lineage import load_lineage

        nodes, order = load_lineage(lineage).node_names, [e.key for e in load_lineage(lineage).edges()]
    except Exception:  # a lineage that is not shipped: names in order
        pass
    print(circuits_table(home, nodes))
    print()
    print(cmap_table(home, order))


if __name__ == "__main__":
    main()
