"""The `circuits` group (Prakash et al. 2024): the lineage's tasks (`tasks`), each node's accuracy on
them (`task_performance`), within-model activation and path patching with a circuit and its
faithfulness against random circuits (`circuits`), and per edge cross-model activation patching,
component by component and feature set by feature set (`cmap`). Built only when the lineage has `tasks:`."""

import html
import json
import time
from typing import TYPE_CHECKING

import dagster as dg

from featureflow_dagster.lineage import Edge, Lineage
from featureflow_dagster.serve import reports_url
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.storage import file_sha256, tree_sha256
from featureflow_dagster.tokenizer import load_tokenizer, token_strings
from featureflow_dagster.assets.data import TOKENIZER, TOKENS
from featureflow_dagster.assets.flow import FEATURE_CORRELATION
from featureflow_dagster.assets.models import MODEL
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.partitions import edge_ends, edge_partitions, fan_out, node_partitions, own_models, per_node_models
from featureflow_dagster.assets.sae import SAE, require_passing_saes
from featureflow_dagster.assets.spec import Artefact, edges, nodes

if TYPE_CHECKING:  # heavy modules are imported where an asset runs, not when the definitions are built
    from featureflow_dagster.patching.report import PatchingReport


def _with_tasks(lineage: Lineage, settings: dict) -> dict:
    return settings if lineage.tasks else {}


TASKS = Artefact(
    "tasks", "circuits", "1", "tasks",
    settings=lambda lineage: _with_tasks(lineage, {None: {
        "tasks": [t.model_dump(mode="json") for t in lineage.tasks], "seed": lineage.seed,
        "source": lineage.data_ancestry(lineage.base.name), "n_ctx": lineage.block_n_ctx}}),
    key_figures=("examples",), kinds=frozenset({"pytorch", "safetensors"}),
    description="The lineage's tasks: clean and counterfactual prompts with their answers, mined from the base "
    "node's held-out text (brackets, quotes, identifiers) or templated (entity tracking).",
)
TASK_PERFORMANCE = Artefact(
    "task_performance", "circuits", "1", "task_performance/{key}.parquet",
    settings=lambda lineage: _with_tasks(lineage, nodes(lineage, lambda n: {})),
    key_figures=("accuracy",), kinds=frozenset({"pytorch", "parquet"}), on_device=True,
    description="Per task: two-way accuracy (answer vs the counterfactual's answer), top-1 accuracy and mean "
    "logit difference on the clean prompts, and the logit difference on the counterfactual prompts.",
)
CIRCUITS = Artefact(
    "circuits", "circuits", "2", "circuits/{key}",
    settings=lambda lineage: _with_tasks(lineage, nodes(lineage, lambda n: lineage.patching.model_dump(
        mode="json", exclude={"feature_null_draws", "batch", "min_gap_se"}))),
    key_figures=("faithfulness", "random_faithfulness"), kinds=frozenset({"pytorch", "parquet", "plotly"}), on_device=True,
    description="Per task, within the node's model: activation patching clean -> counterfactual of every component "
    "(heads, attention and MLP outputs of every layer, head groups, embeddings) at every position, path patching from "
    "each head to the logits, its layer's MLP and later head groups' query/key/value inputs, the circuit (units above "
    "patching.circuit_threshold) found on half the prompts and its faithfulness on the other half with everything else "
    "mean-ablated, against random circuits drawn from the same layers at the same positions.",
)
CMAP = Artefact(
    "cmap", "circuits", "2", "cmap/{key}",
    settings=lambda lineage: _with_tasks(lineage, edges(lineage, lambda p, c: {
        **lineage.patching.model_dump(mode="json", include={"components", "feature_null_draws", "layers", "head_groups", "positions", "prompts"}),
        "seed": lineage.seed_of(c), "threshold": lineage.flow.threshold, "min_gap_se": lineage.patching.min_gap_se})),
    key_figures=("gap", "persisted_share", "emerged_share"), kinds=frozenset({"pytorch", "parquet", "plotly"}), on_device=True,
    description="Cross-model activation patching per edge and task, on the same clean prompts: each component at "
    "each position from the child into the parent (share of the parent-child gap it recovers) and back (share it "
    "removes); and feature-level CMAP: the child's MLP output carried by its persisted, or its emerged, SAE "
    "features put in place of the parent's persisting, or disappearing, ones, against random feature sets.",
)
ARTEFACTS = [TASKS, TASK_PERFORMANCE, CIRCUITS, CMAP]


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    if not lineage.tasks:
        return []
    out = [_tasks(lineage), _task_performance(lineage), _circuits(lineage)]
    return out + ([_cmap(lineage)] if lineage.edges() else [])


def _example(store: ArtifactStore, task: str) -> str:
    """One example of the task in words (tasks.json's first sample)."""
    index = json.loads((TASKS.at(store) / "tasks.json").read_text())
    sample = (index.get(task, {}).get("samples") or [None])[0]
    if sample is None:
        return ""
    esc = lambda t: html.escape(repr(t))  # noqa: E731 (token strings: quotes show their spaces and newlines)
    return (f"<p>An example ({html.escape(index[task]['kind'])}): the prompt ends <code>{html.escape(sample['prompt'][-80:])}</code> "
            f"and the model should answer {esc(sample['answer'])}; the counterfactual prompt has {esc(sample['corrupt_key_token'])} "
            f"instead of {esc(sample['key_token'])} at position {sample['key_position']} and answers {esc(sample['wrong'])}. "
            "The metric is the logit difference between the two answers at the last position.</p>")


def circuit_intro(task: str, s: dict, example: str) -> str:
    """What a circuits page says above its heatmap: the circuit, its faithfulness beside random circuits', an example."""
    units = ", ".join(f"{c} at position {p}" for c, p in s["units"])
    circuit = (f"<p><b>The circuit</b> (units whose patching moves at least the threshold's share of the gap, found on "
               f"{s['found_on']} prompts): {html.escape(units)}.</p>" if units else
               f"<p><b>No circuit</b>: no unit's patching reached the threshold on the {s['found_on']} prompts it was looked for on.</p>")
    score = (f"<p><b>Faithfulness</b> on {s['examples']} other prompts, everything outside the circuit mean-ablated: "
             f"{s['faithfulness']:.3f} (accuracy {s['accuracy']:.3f} against the whole model's {s['full_accuracy']:.3f}). Random "
             f"circuits of the same size from the same (layer, position) cells: {s['random_faithfulness']:.3f} ± {s['random_std']:.3f}; "
             f"{s['random_at_least']:.0%} of them at least as faithful"
             + (" — no better than chance there (5% or more of random circuits do as well)." if s["random_at_least"] >= 0.05 else ".") + "</p>") if units else ""
    return f"<h2 style='font-size:17px'>{html.escape(task)}</h2>{example}{circuit}{score}"


def cmap_intro(task: str, s: dict, edge: Edge, example: str) -> str:
    """What a CMAP page says above its heatmaps: the gap, whether it is resolved, the top components each way."""
    parent, child = edge
    gap = (f"<p><b>The gap</b>: {html.escape(child)}'s logit difference {s['child_ld']:+.3f} against {html.escape(parent)}'s "
           f"{s['parent_ld']:+.3f}, {s['gap']:+.3f} ± {s['gap_se']:.3f}.</p>")
    if not s.get("gap_resolved", True):
        return (f"<h2 style='font-size:17px'>{html.escape(task)}</h2>{example}{gap}<p><b>Unresolved</b>: the two models do "
                "this task equally well within the noise of these prompts, so there is no gap for a component to account for "
                "and the panels below are empty by design.</p>")
    tops = "; ".join(f"{'into ' + parent if d == 'child_into_parent' else 'into ' + child}: "
                     + ", ".join(f"{r['component']} {r['share']:.2f}" for r in rows) for d, rows in s["top"].items())
    return (f"<h2 style='font-size:17px'>{html.escape(task)}</h2>{example}{gap}<p>Components that carry most of it when patched "
            f"(share of the gap): {html.escape(tops)}.</p>")


def _write_report(store: ArtifactStore, artefact: Artefact, key: str, report: "PatchingReport", json_name: str,
                  intro=None) -> dict:
    """Write `<name>.parquet` per table (the tasks' frames concatenated) and `<json_name>.json` where
    `artefact` lives, one heatmap page per task under reports/<asset>/<key>/ (with `intro(task)` above it), each
    atomically; the heatmaps' metadata."""
    import pandas as pd
    from featureflow_dagster.plots import write_html
    with store.write_dir(artefact.at(store, key)) as tmp:
        for name, frames in report.tables.items():
            pd.concat(frames).to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / f"{json_name}.json").write_text(json.dumps(report.summary, indent=1))
    folder = store.report_dir(artefact.name, key)
    with store.write_dir(folder) as tmp:
        for name, fig in report.figures.items():
            write_html(fig, tmp / f"{name}.html", store.plotly_js(), final=folder / f"{name}.html",
                       intro=intro(name) if intro else None)
    return {f"heatmap/{name}": dg.MetadataValue.url(reports_url(f"{artefact.name}/{key}/{name}.html")) for name in report.figures}


def _tasks(lineage: Lineage) -> dg.AssetsDefinition:
    source = lineage.data_ancestry(lineage.base.name)

    @TASKS.asset(deps=[dg.AssetDep("tokenizer"), dg.AssetDep("tokens", partition_mapping=dg.SpecificPartitionsPartitionMapping(source))])
    def tasks_asset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        import pandas as pd
        import torch
        from featureflow_dagster.blocks import load_blocks
        from featureflow_dagster.patching.tasks import TaskError, build_task, describe, save_tasks
        from featureflow_dagster.plots import markdown_table
        tok = load_tokenizer(TOKENIZER.at(store))
        strings = token_strings(tok)
        rows = torch.cat([b.long() for owner in source for b in load_blocks(TOKENS.at(store, owner), "validation").values()])
        batches = {}
        for spec in lineage.tasks:
            try:
                batches[spec.name] = build_task(spec, tok, strings, rows, lineage.block_n_ctx, lineage.seed if spec.seed is None else spec.seed)
            except TaskError as e:
                raise dg.Failure(description=f"{e}; fix it in the lineage file's `tasks:`", allow_retries=False) from None
        out = TASKS.at(store)
        with store.write_dir(out) as tmp:
            save_tasks(tmp, batches, strings)
        table = pd.DataFrame([{"task": n, "kind": b.kind, "examples": len(b), "prompt tokens": b.length,
                               "found": b.meta.get("available", len(b))} for n, b in batches.items()]).set_index("task")
        samples = pd.DataFrame([{"task": n, **s} for n, b in batches.items() for s in describe(b, strings, k=2)])
        return TASKS.result(out, tree_sha256(out), {"tasks": dg.MetadataValue.md(markdown_table(table)),
                                                    "samples": dg.MetadataValue.md(markdown_table(samples.set_index("task"))),
                                                    "examples": dg.MetadataValue.json({n: len(b) for n, b in batches.items()}),
                                                    "source": ", ".join(source)})

    return tasks_asset


def _task_performance(lineage: Lineage) -> dg.AssetsDefinition:
    @TASK_PERFORMANCE.asset(partitions_def=node_partitions(lineage),
                            deps=[dg.AssetDep("tasks"), *own_models(lineage)])
    def task_performance(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.hooked import load_hooked_model
        from featureflow_dagster.patching import model_metrics
        from featureflow_dagster.patching.tasks import load_tasks
        from featureflow_dagster.plots import markdown_table
        node = context.partition_key
        model = load_hooked_model(MODEL.at(store, node), device.torch_device())
        batches = load_tasks(TASKS.at(store))
        table = pd.DataFrame([{"task": n, **model_metrics(model, b, lineage.patching.batch)} for n, b in batches.items()])
        path = TASK_PERFORMANCE.at(store, node)
        with store.write_file(path) as tmp:
            table.to_parquet(tmp, index=False)
        return TASK_PERFORMANCE.result(path, file_sha256(path), {
            "performance": dg.MetadataValue.md(markdown_table(table.set_index("task"))),
            "accuracy": dg.MetadataValue.json({r.task: round(float(r.accuracy), 4) for r in table.itertuples()}),
            "logit_diff": dg.MetadataValue.json({r.task: round(float(r.logit_diff), 4) for r in table.itertuples()})})

    return task_performance


def _circuits(lineage: Lineage) -> dg.AssetsDefinition:
    @CIRCUITS.asset(partitions_def=node_partitions(lineage), deps=[dg.AssetDep("tasks"), *own_models(lineage)])
    def circuits(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.hooked import load_hooked_model
        from featureflow_dagster.patching.report import circuits_report, circuits_table
        from featureflow_dagster.patching.tasks import load_tasks
        from featureflow_dagster.plots import markdown_table
        node = context.partition_key
        model = load_hooked_model(MODEL.at(store, node), device.torch_device())
        started = time.perf_counter()
        report = circuits_report(model, load_tasks(TASKS.at(store)), lineage.patching, lineage.seed_of(node), node, step_log(context))
        heatmaps = _write_report(store, CIRCUITS, node, report, "circuits",
                                 intro=lambda t: circuit_intro(t, report.summary[t], _example(store, t)))
        summary = report.summary
        top_paths = pd.concat(report.tables["paths"]).sort_values("effect", ascending=False).groupby("task").head(5)
        return CIRCUITS.result(
            CIRCUITS.at(store, node), tree_sha256(CIRCUITS.at(store, node)), {
                      **heatmaps,
                      "circuits": dg.MetadataValue.md(markdown_table(circuits_table(summary))),
                      "faithfulness": dg.MetadataValue.json({n: round(s["faithfulness"], 4) for n, s in summary.items()}),
                      "random_faithfulness": dg.MetadataValue.json({n: round(s["random_faithfulness"], 4) for n, s in summary.items()}),
                      "top_paths": dg.MetadataValue.md(markdown_table(top_paths.set_index("task")[["sender", "receiver", "input", "effect"]])),
                      "seconds": round(time.perf_counter() - started, 2), "device": str(device.torch_device())},
        )

    return circuits


def _cmap(lineage: Lineage) -> dg.AssetsDefinition:
    pairs = edge_ends(lineage)
    spec = lineage.patching

    @CMAP.asset(partitions_def=edge_partitions(lineage),
                deps=[dg.AssetDep("tasks"), dg.AssetDep("sae", partition_mapping=fan_out(pairs)), *per_node_models(pairs),
                      dg.AssetDep("feature_correlation")])
    def cmap(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.flow import EMERGED, PERSISTED, classify_edge
        from featureflow_dagster.hooked import load_hooked_model
        from featureflow_dagster.patching import feature_sets
        from featureflow_dagster.patching.report import cmap_report, cmap_table
        from featureflow_dagster.patching.tasks import load_tasks
        from featureflow_dagster.plots import markdown_table
        from featureflow_dagster.sae import load_sae
        edge = Edge.parse(context.partition_key)
        require_passing_saes(store, edge)
        dev = device.torch_device()
        models = {n: load_hooked_model(MODEL.at(store, n), dev) for n in edge}
        saes = {n: load_sae(SAE.at(store, n), dev) for n in edge}
        # the edge's own matches, classified as feature_flow does: an edit elsewhere leaves this edge fresh
        matches = pd.read_parquet(FEATURE_CORRELATION.at(store, edge.key) / "matches.parquet")
        sets = feature_sets(*classify_edge(matches, lineage.flow.threshold), spec.feature_null_draws, lineage.seed_of(edge.child))
        started = time.perf_counter()
        report = cmap_report(models, saes, edge, load_tasks(TASKS.at(store)), sets, spec, step_log(context))
        heatmaps = _write_report(store, CMAP, edge.key, report, "summary",
                                 intro=lambda t: cmap_intro(t, report.summary[t], edge, _example(store, t)))
        summary = report.summary
        return CMAP.result(
            CMAP.at(store, edge.key), tree_sha256(CMAP.at(store, edge.key)), {
                      **heatmaps,
                      "cmap": dg.MetadataValue.md(markdown_table(cmap_table(summary, edge))),
                      "gap": dg.MetadataValue.json({n: round(s["gap"], 4) for n, s in summary.items()}),
                      "persisted_share": dg.MetadataValue.json({n: round(s["features"][PERSISTED], 4) for n, s in summary.items()}),
                      "emerged_share": dg.MetadataValue.json({n: round(s["features"][EMERGED], 4) for n, s in summary.items()}),
                      "persisted_child_features": int(sets[PERSISTED][0].sum()),
                      "emerged_child_features": int(sets[EMERGED][0].sum()),
                      "seconds": round(time.perf_counter() - started, 2), "device": str(dev)},
        )

    return cmap
