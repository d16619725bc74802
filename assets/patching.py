"""The `circuits` group (Prakash et al. 2024): the lineage's tasks (`tasks`), each node's accuracy on
them (`task_performance`), within-model activation and path patching with a circuit and its
faithfulness against random circuits (`circuits`), and per edge cross-model activation patching,
component by component and feature set by feature set (`cmap`). Built only when the lineage has `tasks:`."""

import hashlib
import json
import time

import dagster as dg
import pandas as pd
import torch

from featureflow_dagster import patching as P
from featureflow_dagster.blocks import load_blocks
from featureflow_dagster.flow import classify_edge
from featureflow_dagster.hooked import load_hooked_model
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.plots import markdown_table, patching_heatmap_figure, write_html
from featureflow_dagster.provenance import versions
from featureflow_dagster.serve import reports_url
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.sae import load_sae
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.tasks import TaskError, build_task, describe, load_tasks, save_tasks
from featureflow_dagster.tokenizer import load_tokenizer, token_strings
from featureflow_dagster.assets.guard import locked, require_passing_saes, step_log
from featureflow_dagster.assets.config import CODE_VERSIONS, ON_DEVICE, config_dep
from featureflow_dagster.assets.partitions import edge_ends, edge_partitions, fan_out, node_partitions, per_node_models


def build_patching_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    if not lineage.tasks:
        return []
    out = [_tasks(lineage), _task_performance(lineage), _circuits(lineage)]
    return out + ([_cmap(lineage)] if lineage.edges() else [])


def _write_results(store: ArtifactStore, out, report: tuple[str, str], tables: dict[str, list], json_name: str, summary: dict,
                   figures: dict) -> dict:
    """Write `<name>.parquet` per table (the tasks' frames concatenated) and `<json_name>.json` into `out`,
    one heatmap page per task under reports/<asset>/<key>/, each atomically; the heatmaps' metadata."""
    with store.write_dir(out) as tmp:
        for name, frames in tables.items():
            pd.concat(frames).to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / f"{json_name}.json").write_text(json.dumps(summary, indent=1))
    folder = store.report_dir(*report)
    with store.write_dir(folder) as tmp:
        for name, fig in figures.items():
            write_html(fig, tmp / f"{name}.html", store.plotly_js(), final=folder / f"{name}.html")
    return {f"heatmap/{name}": dg.MetadataValue.url(reports_url(f"{report[0]}/{report[1]}/{name}.html")) for name in figures}


def _folder_version(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def _tasks(lineage: Lineage) -> dg.AssetsDefinition:
    base = lineage.base.name
    source = lineage.data_ancestry(base)

    @dg.asset(
        name="tasks",
        deps=[dg.AssetDep("tokenizer"), dg.AssetDep("tokens", partition_mapping=dg.SpecificPartitionsPartitionMapping(source)),
              config_dep("tasks")],
        group_name="circuits",
        kinds={"pytorch", "safetensors"},
        code_version=CODE_VERSIONS["tasks"],
        description="The lineage's tasks: clean and counterfactual prompts with their answers, mined from the base "
        "node's held-out text (brackets, quotes, identifiers) or templated (entity tracking).",
    )
    @locked
    def tasks_asset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        tok = load_tokenizer(store.tokenizer_dir())
        strings = token_strings(tok)
        rows = torch.cat([b.long() for owner in source for b in load_blocks(store.tokens_path(owner), "validation").values()])
        batches = {}
        for spec in lineage.tasks:
            try:
                batches[spec.name] = build_task(spec, tok, strings, rows, lineage.model.n_ctx,
                                                lineage.seed if spec.seed is None else spec.seed)
            except TaskError as e:
                raise dg.Failure(description=f"{e}; fix it in the lineage file's `tasks:`", allow_retries=False) from None
        out = store.tasks_dir()
        with store.write_dir(out) as tmp:
            save_tasks(tmp, batches, strings)
        table = pd.DataFrame([{"task": n, "kind": b.kind, "examples": len(b), "prompt tokens": b.length,
                               "found": b.meta.get("available", len(b))} for n, b in batches.items()]).set_index("task")
        samples = pd.DataFrame([{"task": n, **s} for n, b in batches.items() for s in describe(b, strings, k=2)])
        return dg.MaterializeResult(
            data_version=dg.DataVersion(_folder_version(out)),
            metadata={"path": dg.MetadataValue.path(str(out)), "tasks": dg.MetadataValue.md(markdown_table(table)),
                      "samples": dg.MetadataValue.md(markdown_table(samples.set_index("task"))),
                      "examples": dg.MetadataValue.json({n: len(b) for n, b in batches.items()}),
                      "source": ", ".join(source), "versions": dg.MetadataValue.json(versions())},
        )

    return tasks_asset


def _task_performance(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names

    @dg.asset(
        name="task_performance",
        partitions_def=node_partitions(lineage),
        deps=[dg.AssetDep("tasks"), *per_node_models([(n, n) for n in nodes]), config_dep("task_performance", nodes)],
        group_name="circuits",
        kinds={"pytorch", "parquet"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["task_performance"],
        description="Per task: two-way accuracy (answer vs the counterfactual's answer), top-1 accuracy and mean "
        "logit difference on the clean prompts, and the logit difference on the counterfactual prompts.",
    )
    @locked
    def task_performance(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        node = context.partition_key
        model = load_hooked_model(store.model_dir(node), device.torch_device())
        batches = load_tasks(store.tasks_dir())
        table = pd.DataFrame([{"task": n, **P.model_metrics(model, b, lineage.patching.batch)} for n, b in batches.items()])
        path = store.task_performance_path(node)
        with store.write_file(path) as tmp:
            table.to_parquet(tmp, index=False)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(path)),
            metadata={"path": dg.MetadataValue.path(str(path)),
                      "performance": dg.MetadataValue.md(markdown_table(table.set_index("task"))),
                      "accuracy": dg.MetadataValue.json({r.task: round(float(r.accuracy), 4) for r in table.itertuples()}),
                      "logit_diff": dg.MetadataValue.json({r.task: round(float(r.logit_diff), 4) for r in table.itertuples()}),
                      "versions": dg.MetadataValue.json(versions())},
        )

    return task_performance


def _circuits(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names
    spec = lineage.patching

    @dg.asset(
        name="circuits",
        partitions_def=node_partitions(lineage),
        deps=[dg.AssetDep("tasks"), *per_node_models([(n, n) for n in nodes]), config_dep("circuits", nodes)],
        group_name="circuits",
        kinds={"pytorch", "parquet", "plotly"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["circuits"],
        description="Per task, within the node's model: activation patching clean -> counterfactual of every component "
        "at every position, path patching of each head into the MLP and to the logits, the circuit (units above "
        "patching.circuit_threshold) and its faithfulness with everything else mean-ablated, against random circuits.",
    )
    @locked
    def circuits(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        node = context.partition_key
        log = step_log(context)
        model = load_hooked_model(store.model_dir(node), device.torch_device())
        batches = load_tasks(store.tasks_dir())
        comps = P.component_names(model, spec.components)
        started = time.perf_counter()
        effects, paths, summary, figures = [], [], {}, {}
        for i, (name, batch) in enumerate(batches.items()):
            e = P.activation_patching(model, batch, comps, spec.batch, log).assign(task=name)
            pp = P.path_patching(model, batch, spec.batch).assign(task=name)
            units = P.circuit_from_effects(e, batch.length, spec.circuit_threshold)
            f = P.faithfulness(model, batch, units, spec.random_circuits, lineage.seed_of(node) + i, spec.batch)
            summary[name] = {"units": [[c, p - batch.length] for c, p in units], **f.__dict__}
            effects.append(e)
            paths.append(pp)
            figures[name] = patching_heatmap_figure([("clean → counterfactual", e, "effect")],
                                                    f"{node}, {name}: activation patching (share of the clean–counterfactual gap)")
            log(f"{name}: circuit of {len(units)} units, faithfulness {f.faithfulness:.3f} (random {f.random_faithfulness:.3f})")
        out = store.circuits_dir(node)
        heatmaps = _write_results(store, out, ("circuits", node), {"patching": effects, "paths": paths}, "circuits", summary, figures)
        table = pd.DataFrame([{"task": n, "circuit": ", ".join(f"{c}@{p}" for c, p in s["units"]) or "(none)",
                               "accuracy": s["full_accuracy"], "circuit accuracy": s["accuracy"], "faithfulness": s["faithfulness"],
                               "random": s["random_faithfulness"], "LD faithfulness": s["ld_faithfulness"],
                               "random LD": s["random_ld_faithfulness"]} for n, s in summary.items()]).set_index("task")
        top_paths = pd.concat(paths).sort_values("effect", ascending=False).groupby("task").head(3)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(_folder_version(out)),
            metadata={"path": dg.MetadataValue.path(str(out)),
                      **heatmaps,
                      "circuits": dg.MetadataValue.md(markdown_table(table)),
                      "faithfulness": dg.MetadataValue.json({n: round(s["faithfulness"], 4) for n, s in summary.items()}),
                      "random_faithfulness": dg.MetadataValue.json({n: round(s["random_faithfulness"], 4) for n, s in summary.items()}),
                      "top_paths": dg.MetadataValue.md(markdown_table(top_paths.set_index("task")[["head", "path", "effect"]])),
                      "seconds": round(time.perf_counter() - started, 2), "device": str(device.torch_device()),
                      "versions": dg.MetadataValue.json(versions())},
        )

    return circuits


def _cmap(lineage: Lineage) -> dg.AssetsDefinition:
    pairs = edge_ends(lineage)
    keys = edge_partitions(lineage).get_partition_keys()
    spec = lineage.patching

    @dg.asset(
        name="cmap",
        partitions_def=edge_partitions(lineage),
        deps=[dg.AssetDep("tasks"), dg.AssetDep("sae", partition_mapping=fan_out(pairs)), *per_node_models(pairs),
              dg.AssetDep("feature_correlation"), config_dep("cmap", keys)],
        group_name="circuits",
        kinds={"pytorch", "parquet", "plotly"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["cmap"],
        description="Cross-model activation patching per edge and task, on the same clean prompts: each component at "
        "each position from the child into the parent (share of the parent-child gap it recovers) and back (share it "
        "removes); and feature-level CMAP: the child's MLP output carried by its persisted, or its emerged, SAE "
        "features put in place of the parent's persisting, or disappearing, ones, against random feature sets.",
    )
    @locked
    def cmap(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        edge = context.partition_key
        parent, child = edge.split("__")
        require_passing_saes(store, (parent, child))
        log = step_log(context)
        dev = device.torch_device()
        models = {n: load_hooked_model(store.model_dir(n), dev) for n in (parent, child)}
        saes = {n: load_sae(store.sae_dir(n), dev) for n in (parent, child)}
        # the edge's own matches, classified as feature_flow does: an edit elsewhere leaves this edge fresh
        matches = pd.read_parquet(store.feature_correlation_dir(edge) / "matches.parquet")
        p_table, c_table = classify_edge(matches, lineage.flow.threshold)
        sets = P.feature_sets(p_table, c_table, spec.feature_null_draws, lineage.seed_of(child))
        batches = load_tasks(store.tasks_dir())
        comps = P.component_names(models[parent], spec.components)
        started = time.perf_counter()
        units, features, summary, figures = [], [], {}, {}
        for name, batch in batches.items():
            c = P.cmap(models[parent], models[child], batch, comps, spec.batch, log, spec.min_gap_se)
            fc = P.feature_cmap(models[parent], models[child], saes[parent], saes[child], batch, sets, spec.batch, spec.min_gap_se)
            units.append(c.assign(task=name))
            features.append(fc.assign(task=name))
            summary[name] = {**c.attrs, "features": P.feature_summary(fc)}
            whole = c[c["position"].isna()]
            summary[name]["top"] = {d: whole[whole["direction"] == d].nlargest(3, "share")[["component", "share"]].to_dict("records")
                                    for d in ("child_into_parent", "parent_into_child")}
            figures[name] = patching_heatmap_figure(
                [(f"{child} → {parent} (share recovered)", c[c["direction"] == "child_into_parent"], "share"),
                 (f"{parent} → {child} (share removed)", c[c["direction"] == "parent_into_child"], "share")],
                f"{parent} → {child}, {name}: CMAP (gap {c.attrs['gap']:+.3f} ± {c.attrs['gap_se']:.3f} logits"
                + ("" if c.attrs["gap_resolved"] else f"; within {spec.min_gap_se:g} se of zero: no shares") + ")")
            log(f"{name}: gap {c.attrs['gap']:+.3f}; persisted features recover {summary[name]['features']['persisted']:.3f}, "
                f"emerged {summary[name]['features']['emerged']:.3f}")
        out = store.cmap_dir(edge)
        heatmaps = _write_results(store, out, ("cmap", edge), {"cmap": units, "features": features}, "summary", summary, figures)
        table = pd.DataFrame([{
            "task": n, f"LD {parent}": s["parent_ld"], f"LD {child}": s["child_ld"], "gap": s["gap"], "gap se": s["gap_se"],
            "top child→parent": ", ".join(f"{r['component']} {r['share']:.2f}" for r in s["top"]["child_into_parent"]),
            "top parent→child": ", ".join(f"{r['component']} {r['share']:.2f}" for r in s["top"]["parent_into_child"]),
            "persisted (random same size)": f"{s['features']['persisted']:.3f} ({s['features']['random_persisted_mean']:.3f} ± {s['features']['random_persisted_std']:.3f})",
            "emerged (random same size)": f"{s['features']['emerged']:.3f} ({s['features']['random_emerged_mean']:.3f} ± {s['features']['random_emerged_std']:.3f})",
        } for n, s in summary.items()]).set_index("task")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(_folder_version(out)),
            metadata={"path": dg.MetadataValue.path(str(out)),
                      **heatmaps,
                      "cmap": dg.MetadataValue.md(markdown_table(table)),
                      "gap": dg.MetadataValue.json({n: round(s["gap"], 4) for n, s in summary.items()}),
                      "persisted_share": dg.MetadataValue.json({n: round(s["features"]["persisted"], 4) for n, s in summary.items()}),
                      "emerged_share": dg.MetadataValue.json({n: round(s["features"]["emerged"], 4) for n, s in summary.items()}),
                      "persisted_child_features": int(sets["persisted"][0].sum()),
                      "emerged_child_features": int(sets["emerged"][0].sum()),
                      "seconds": round(time.perf_counter() - started, 2), "device": str(dev),
                      "versions": dg.MetadataValue.json(versions())},
        )

    return cmap

