"""One node's circuits and one edge's CMAP over every task: the tables, the summary and the heatmaps
the `circuits` and `cmap` assets write, and the tables their metadata show."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from featureflow_dagster.flow import EMERGED, PERSISTED
from featureflow_dagster.lineage import Edge
from featureflow_dagster.patching.circuits import activation_patching, circuit_from_effects, faithfulness, path_patching
from featureflow_dagster.patching.cmap import cmap, feature_cmap, feature_summary
from featureflow_dagster.patching.components import component_names
from featureflow_dagster.plots import patching_heatmap_figure


@dataclass
class PatchingReport:
    tables: dict[str, list[pd.DataFrame]]  # parquet file name -> one frame per task (each with a `task` column)
    summary: dict  # per task, what the JSON file holds
    figures: dict = field(default_factory=dict)  # task -> heatmap


def circuits_report(model, batches: dict, spec, seed: int, node: str, log=None) -> PatchingReport:
    """Per task, within `model`: activation patching clean -> counterfactual of every component of
    `spec.components` (`PatchingSpec`) at every position, path patching of each head into the MLP and
    to the logits, the circuit (units above `spec.circuit_threshold`) and its faithfulness against
    `spec.random_circuits` random circuits drawn with `seed` + the task's index."""
    comps = component_names(model, spec.components)
    effects, paths, summary, figures = [], [], {}, {}
    for i, (name, batch) in enumerate(batches.items()):
        e = activation_patching(model, batch, comps, spec.batch, log).assign(task=name)
        pp = path_patching(model, batch, spec.batch).assign(task=name)
        units = circuit_from_effects(e, batch.length, spec.circuit_threshold)
        f = faithfulness(model, batch, units, spec.random_circuits, seed + i, spec.batch)
        summary[name] = {"units": [[c, p - batch.length] for c, p in units], **f.__dict__}
        effects.append(e)
        paths.append(pp)
        figures[name] = patching_heatmap_figure([("clean → counterfactual", e, "effect")],
                                                f"{node}, {name}: activation patching (share of the clean–counterfactual gap)")
        if log:
            log(f"{name}: circuit of {len(units)} units, faithfulness {f.faithfulness:.3f} (random {f.random_faithfulness:.3f})")
    return PatchingReport({"patching": effects, "paths": paths}, summary, figures)


def circuits_table(summary: dict) -> pd.DataFrame:
    """One row per task: the circuit, accuracies and faithfulness beside the random circuits'."""
    return pd.DataFrame([{"task": n, "circuit": ", ".join(f"{c}@{p}" for c, p in s["units"]) or "(none)",
                          "accuracy": s["full_accuracy"], "circuit accuracy": s["accuracy"], "faithfulness": s["faithfulness"],
                          "random": s["random_faithfulness"], "LD faithfulness": s["ld_faithfulness"],
                          "random LD": s["random_ld_faithfulness"]} for n, s in summary.items()]).set_index("task")


def cmap_report(models: dict, saes: dict, edge: Edge, batches: dict, sets: dict, spec, log=None) -> PatchingReport:
    """Per task, on the same clean prompts of the edge's two models (`models`, `saes` keyed by node):
    each component at each position from the child into the parent and back, and feature-level CMAP
    of the feature `sets` (`cmap.feature_sets`); `spec` is the lineage's `PatchingSpec`."""
    parent, child = edge
    comps = component_names(models[parent], spec.components)
    units, features, summary, figures = [], [], {}, {}
    for name, batch in batches.items():
        c = cmap(models[parent], models[child], batch, comps, spec.batch, log, spec.min_gap_se)
        fc = feature_cmap(models[parent], models[child], saes[parent], saes[child], batch, sets, spec.batch, spec.min_gap_se)
        units.append(c.assign(task=name))
        features.append(fc.assign(task=name))
        summary[name] = {**c.attrs, "features": feature_summary(fc)}
        whole = c[c["position"].isna()]
        summary[name]["top"] = {d: whole[whole["direction"] == d].nlargest(3, "share")[["component", "share"]].to_dict("records")
                                for d in ("child_into_parent", "parent_into_child")}
        figures[name] = patching_heatmap_figure(
            [(f"{child} → {parent} (share recovered)", c[c["direction"] == "child_into_parent"], "share"),
             (f"{parent} → {child} (share removed)", c[c["direction"] == "parent_into_child"], "share")],
            f"{parent} → {child}, {name}: CMAP (gap {c.attrs['gap']:+.3f} ± {c.attrs['gap_se']:.3f} logits"
            + ("" if c.attrs["gap_resolved"] else f"; within {spec.min_gap_se:g} se of zero: no shares") + ")")
        if log:
            log(f"{name}: gap {c.attrs['gap']:+.3f}; persisted features recover {summary[name]['features'][PERSISTED]:.3f}, "
                f"emerged {summary[name]['features'][EMERGED]:.3f}")
    return PatchingReport({"cmap": units, "features": features}, summary, figures)


def cmap_table(summary: dict, edge: Edge) -> pd.DataFrame:
    """One row per task: both models' logit differences, the gap, the top components each way, and the
    feature sets' shares beside random sets of the same sizes."""
    parent, child = edge
    return pd.DataFrame([{
        "task": n, f"LD {parent}": s["parent_ld"], f"LD {child}": s["child_ld"], "gap": s["gap"], "gap se": s["gap_se"],
        "top child→parent": ", ".join(f"{r['component']} {r['share']:.2f}" for r in s["top"]["child_into_parent"]),
        "top parent→child": ", ".join(f"{r['component']} {r['share']:.2f}" for r in s["top"]["parent_into_child"]),
        "persisted (random same size)": f"{s['features']['persisted']:.3f} ({s['features']['random_persisted_mean']:.3f} ± {s['features']['random_persisted_std']:.3f})",
        "emerged (random same size)": f"{s['features']['emerged']:.3f} ({s['features']['random_emerged_mean']:.3f} ± {s['features']['random_emerged_std']:.3f})",
    } for n, s in summary.items()]).set_index("task")
