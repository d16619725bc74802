"""One node's circuits and one edge's CMAP over every task: the tables, the summary and the heatmaps
the `circuits` and `cmap` assets write, and the tables their metadata show."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from featureflow_dagster.flow import EMERGED, PERSISTED
from featureflow_dagster.lineage import Edge
from featureflow_dagster.patching.circuits import activation_patching, circuit_from_effects, faithfulness, path_patching
from featureflow_dagster.patching.cmap import cmap, feature_cmap, feature_summary
from featureflow_dagster.patching.components import check_components, component_names
from featureflow_dagster.plots import patching_heatmap_figure


@dataclass
class PatchingReport:
    tables: dict[str, list[pd.DataFrame]]  # parquet file name -> one frame per task (each with a `task` column)
    summary: dict  # per task, what the JSON file holds
    figures: dict = field(default_factory=dict)  # task -> heatmap


def _budget(batch, spec):
    """The task's examples within the `prompts` budget (the first ones; tasks are drawn in a seeded order)."""
    return batch if spec.prompts is None or len(batch) <= spec.prompts else batch.subset(range(spec.prompts))


def circuits_report(model, batches: dict, spec, seed: int, node: str, log=None) -> PatchingReport:
    """Per task, within `model`: activation patching clean -> counterfactual of every component of
    `spec.components` at each layer of `spec.layers` (and each head group) at every position (or the last
    `spec.positions`), path patching from each head to the logits, its layer's MLP and later head groups'
    query/key/value inputs, the circuit (units above `spec.circuit_threshold`) found on one half of the
    prompts and its faithfulness on the other half against `spec.random_circuits` random circuits drawn
    with `seed` + the task's index (`PatchingSpec`; without `split_halves`, one set of prompts does both)."""
    comps = component_names(model, spec.components, spec.layers, spec.head_groups)
    check_components(model, comps, spec.head_groups)
    effects, paths, summary, figures = [], [], {}, {}
    for i, (name, batch) in enumerate(batches.items()):
        batch = _budget(batch, spec)
        find, score = batch.halves(seed + i) if spec.split_halves else (batch, batch)
        e = activation_patching(model, find, comps, spec.batch, log, spec.positions, spec.head_groups).assign(task=name)
        pp = path_patching(model, find, spec.batch, spec.layers, spec.head_groups).assign(task=name)
        units = circuit_from_effects(e, batch.length, spec.circuit_threshold)
        f = faithfulness(model, score, units, spec.random_circuits, seed + i, spec.batch, spec.layers)
        summary[name] = {"units": [[c, p - batch.length] for c, p in units], **f.__dict__, "found_on": len(find),
                         "split_halves": spec.split_halves,
                         "groups": _group_effects(e, spec.head_groups)}
        effects.append(e)
        paths.append(pp)
        figures[name] = patching_heatmap_figure([("clean → counterfactual", e, "effect")],
                                                f"{node}, {name}: activation patching (share of the clean–counterfactual gap, "
                                                f"{len(find)} prompts)")
        if log:
            log(f"{name}: circuit of {len(units)} units found on {len(find)} prompts, faithfulness {f.faithfulness:.3f} "
                f"on {len(score)} others (random {f.random_faithfulness:.3f})")
    return PatchingReport({"patching": effects, "paths": paths}, summary, figures)


def _group_effects(effects: pd.DataFrame, groups: dict) -> dict:
    """Each head group's effect patched at all positions at once (the group as one unit)."""
    whole = effects[effects["position"].isna()].set_index("component")["effect"]
    return {g: float(whole.get(f"group.{g}", float("nan"))) for g in groups}


def circuits_table(summary: dict) -> pd.DataFrame:
    """One row per task: the circuit, accuracies and faithfulness beside the random circuits'."""
    return pd.DataFrame([{"task": n, "circuit": ", ".join(f"{c}@{p}" for c, p in s["units"]) or "(none)",
                          "prompts (found / scored)": f"{s['found_on']} / {s['examples']}",
                          "accuracy": s["full_accuracy"], "circuit accuracy": s["accuracy"], "faithfulness": s["faithfulness"],
                          "random (same cells)": s["random_faithfulness"], "random ≥ circuit": s["random_at_least"],
                          "LD faithfulness": s["ld_faithfulness"], "random LD": s["random_ld_faithfulness"],
                          **{f"group.{g}": v for g, v in s.get("groups", {}).items()}} for n, s in summary.items()]).set_index("task")


def cmap_report(models: dict, saes: dict, edge: Edge, batches: dict, sets: dict, spec, log=None) -> PatchingReport:
    """Per task, on the same clean prompts of the edge's two models (`models`, `saes` keyed by node):
    each component at each position from the child into the parent and back, and feature-level CMAP
    of the feature `sets` (`cmap.feature_sets`); `spec` is the lineage's `PatchingSpec`."""
    parent, child = edge
    comps = component_names(models[parent], spec.components, spec.layers, spec.head_groups)
    check_components(models[parent], comps, spec.head_groups)
    units, features, summary, figures = [], [], {}, {}
    for name, batch in batches.items():
        batch = _budget(batch, spec)
        c = cmap(models[parent], models[child], batch, comps, spec.batch, log, spec.min_gap_se, spec.positions, spec.head_groups)
        fc = feature_cmap(models[parent], models[child], saes[parent], saes[child], batch, sets, spec.batch, spec.min_gap_se)
        units.append(c.assign(task=name))
        features.append(fc.assign(task=name))
        summary[name] = {**c.attrs, "features": feature_summary(fc), "examples": len(batch)}
        whole = c[c["position"].isna()]
        summary[name]["top"] = {d: whole[whole["direction"] == d].nlargest(3, "share")[["component", "share"]].to_dict("records")
                                for d in ("child_into_parent", "parent_into_child")}
        summary[name]["groups"] = {d: {g: float(whole[(whole["direction"] == d) & (whole["component"] == f"group.{g}")]["share"].iloc[0])
                                       for g in spec.head_groups} for d in ("child_into_parent", "parent_into_child")}
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
