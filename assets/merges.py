"""Merge assets: the SLERP sweep of each `t: auto` merge node, and the merged models `model/<merge>`."""

import json
import dagster as dg

from featureflow_dagster.lineage import Lineage
from featureflow_dagster.serve import reports_url
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.assets.data import TOKENS
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.models import MODEL, write_metrics
from featureflow_dagster.assets.partitions import fan_out, model_key, same_node, single_node_partition
from featureflow_dagster.assets.spec import Artefact


def _auto_merges(lineage: Lineage) -> list[str]:
    """Merge nodes whose SLERP t is chosen by a sweep (`merge.slerp_t: auto`)."""
    return [n.name for n in lineage.topological_order()
            if n.kind == "merge" and n.pretrained is None and lineage.merge_spec(n.name).method == "slerp" and lineage.merge_spec(n.name).slerp_t == "auto"]


SLERP_SWEEP = Artefact(
    "slerp_sweep", "merges", "1", "slerp_sweep/{key}",
    settings=lambda lineage: {n: lineage.merge_spec(n).sweep.model_dump(mode="json") for n in _auto_merges(lineage)},
    key_figures=("chosen_t",), kinds=frozenset({"pytorch", "plotly"}), on_device=True,
    description="SLERP of the two parents at every t of a grid, scored on each parent's own domain; "
    "chooses the t where the two accuracies balance.",
)
ARTEFACTS = [SLERP_SWEEP]


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    auto = _auto_merges(lineage)
    assets = [_merged_model_asset(lineage, n.name, n.name in auto) for n in lineage.topological_order()
              if n.kind == "merge" and n.pretrained is None]  # a published merge is a pretrained node (models.py)
    if auto:
        assets.append(_slerp_sweep_asset(lineage, auto))
    return assets


def _slerp_sweep_asset(lineage: Lineage, nodes: list[str]) -> dg.AssetsDefinition:
    model_edges, token_edges = [], []
    for node in nodes:
        parents = lineage.node(node).parents
        model_edges += [(m, node) for m in [*parents, lineage.merge_base(node)]]
        token_edges += [(lineage.domain_owner(p, d), node) for p in parents for d in lineage.domains(p)]
    deps = [dg.AssetDep("tokens", partition_mapping=fan_out(sorted(set(token_edges))))]
    for upstream in sorted({m for m, _ in model_edges}):
        deps.append(dg.AssetDep(model_key(upstream), partition_mapping=fan_out([e for e in model_edges if e[0] == upstream])))

    @SLERP_SWEEP.asset(partitions_def=dg.StaticPartitionsDefinition(nodes), deps=deps)
    def slerp_sweep(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.merge import sweep_node
        from featureflow_dagster.plots import slerp_sweep_figure, write_html
        node = context.partition_key
        dev = device.torch_device()
        sweep, record = sweep_node(lineage, node, lambda n: MODEL.at(store, n), lambda n: TOKENS.at(store, n), dev, log=step_log(context))
        if sweep.linear_fallbacks:
            context.log.warning(f"{len(sweep.linear_fallbacks)} tensors nearly parallel, interpolated linearly")
        if not sweep.balance.crossed:
            context.log.warning(f"{node}: {sweep.balance.note}")
        parents, labels = record["parents"], list(record["accuracy_at_t"])
        figure = slerp_sweep_figure(sweep.table, labels[0], labels[1], sweep.balance.t, sweep.balance.crossed, sweep.ancestor_accuracy,
                                    f"{node}: SLERP {parents[0]} (t=0) to {parents[1]} (t=1)")
        out = SLERP_SWEEP.at(store, node)
        report = store.report_dir("slerp_sweep", node) / "sweep.html"  # served by the reports server, linked from the home
        write_html(figure, report, store.plotly_js())
        with store.write_dir(out) as tmp:
            sweep.table.to_parquet(tmp / "sweep.parquet", index=False)
            (tmp / "balance.json").write_text(json.dumps(record, indent=2))
            write_html(figure, tmp / "sweep.html", store.plotly_js(), final=out / "sweep.html")
        digest = pd.util.hash_pandas_object(sweep.table[["t", "domain", "loss", "accuracy"]], index=False).sum()
        return SLERP_SWEEP.result(out, f"{sweep.balance.t:.10f}-{digest}",
                                  {**_sweep_metadata(sweep, record, lineage.merge_spec(node).sweep.grid()),
                                   "plot": dg.MetadataValue.url(reports_url(f"slerp_sweep/{node}/sweep.html")),
                                   "plot_file": dg.MetadataValue.path(str(report)), "device": str(dev)})

    return slerp_sweep


def _sweep_metadata(sweep, record: dict, grid: list[float]) -> dict:
    from featureflow_dagster.plots import markdown_table
    return {
        "chosen_t": sweep.balance.t,
        "crossed": sweep.balance.crossed,
        "selection": sweep.balance.note,
        **{f"accuracy_at_t/{k}": v for k, v in record["accuracy_at_t"].items()},
        **{f"ancestor_accuracy/{k}": v for k, v in sweep.ancestor_accuracy.items()},
        **{f"accuracy_at_t={grid[0]:g}/{k}": v for k, v in sweep.accuracy_at(grid[0]).items()},
        **{f"accuracy_at_t={grid[-1]:g}/{k}": v for k, v in sweep.accuracy_at(grid[-1]).items()},
        "linear_fallback_tensors": len(sweep.linear_fallbacks),
        "grid_points": len(grid),
        "seconds_per_t": sweep.seconds / len(grid),
        "eval_tokens_per_second": round(float(sweep.table["tokens"].sum() / sweep.table["seconds_eval"].sum())),
        "accuracy_by_t": dg.MetadataValue.md(markdown_table(sweep.table.pivot(index="t", columns="domain", values="accuracy"))),
    }


def _merged_model_asset(lineage: Lineage, node: str, auto_t: bool) -> dg.AssetsDefinition:
    spec = lineage.merge_spec(node)
    parents = lineage.node(node).parents
    base = lineage.merge_reference(node)
    deps = [dg.AssetDep(model_key(p), partition_mapping=dg.StaticPartitionMapping({p: node})) for p in parents]
    if base is not None and base not in parents:
        deps.append(dg.AssetDep(model_key(base), partition_mapping=dg.StaticPartitionMapping({base: node})))
    owners = sorted({lineage.domain_owner(node, d) for d in lineage.domains(node)})
    deps.append(dg.AssetDep("tokens", partition_mapping=fan_out([(o, node) for o in owners])))
    if auto_t:
        deps.append(dg.AssetDep("slerp_sweep", partition_mapping=same_node(node)))

    @MODEL.asset(key=model_key(node), partitions_def=single_node_partition(node), deps=deps, kinds={"mergekit", "huggingface"},
                 description=f"{spec.method} merge of {', '.join(parents)} (mergekit, in-process)")
    def _merged(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        from featureflow_dagster.blocks import domain_validation_blocks
        from featureflow_dagster.merge import merge_node
        from featureflow_dagster.model import load_model, weights_hash
        from featureflow_dagster.training import evaluate
        dev = device.torch_device()
        sweep = json.loads((SLERP_SWEEP.at(store, node) / "balance.json").read_text()) if auto_t else None
        t = sweep["t"] if sweep is not None else spec.slerp_t if spec.method == "slerp" else None
        out = MODEL.at(store, node, fetch=False)
        with store.write_dir(out) as tmp:
            config = merge_node(lineage, node, lambda n: MODEL.at(store, n), tmp, t)
        merged = load_model(out, dev)
        batch = lineage.training_spec(parents[0]).eval_batch_size
        evaluation = {d: evaluate(merged, b, batch, dev)
                      for d, b in domain_validation_blocks(lineage, node, lambda n: TOKENS.at(store, n)).items()}
        metadata = {
            "method": spec.method,
            "parents": dg.MetadataValue.json(parents),
            "mergekit_config": dg.MetadataValue.json(json.loads(json.dumps(config, default=str))),
            "seed": lineage.seed_of(node),
            "weights_hash": weights_hash(merged),
            "device": str(dev),
            **({"base": base} if base is not None else {}),
            **({"t": t} if t is not None else {}),
        }
        if sweep is not None:
            metadata.update({"t_selection": sweep["note"], "t_crossed": sweep["crossed"],
                             "linear_fallback_tensors": len(sweep["linear_fallbacks"])})
        for domain, ev in evaluation.items():
            metadata[f"val_loss/{domain}"] = ev["loss"]
            metadata[f"val_accuracy/{domain}"] = ev["accuracy"]
        write_metrics(store, node, metadata)
        return MODEL.result(out, metadata["weights_hash"], metadata)

    return _merged
