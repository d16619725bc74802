"""Merge assets: the SLERP sweep of each `t: auto` merge node, and the merged models `model/<merge>`."""

import json
import dagster as dg
import pandas as pd
import torch

from featureflow_dagster.blocks import domain_validation_blocks
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.merge import mergekit_config, mergekit_merge, run_slerp_sweep
from featureflow_dagster.model import load_model, weights_hash
from featureflow_dagster.plots import markdown_table, slerp_sweep_figure, write_html
from featureflow_dagster.provenance import versions
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.training import evaluate
from featureflow_dagster.assets.guard import locked, step_log
from featureflow_dagster.assets.config import CODE_VERSIONS, ON_DEVICE, config_dep
from featureflow_dagster.assets.partitions import fan_out, model_key, same_node, single_node_partition


def build_merge_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    merges = [n.name for n in lineage.topological_order() if n.kind == "merge"]
    auto = [n for n in merges if lineage.merge_spec(n).method == "slerp" and lineage.merge_spec(n).slerp_t == "auto"]
    assets = [_merged_model_asset(lineage, n, n in auto) for n in merges]
    if auto:
        assets.append(_slerp_sweep_asset(lineage, auto))
    return assets


def _sweep_inputs(lineage: Lineage, node: str) -> tuple[list[str], dict[str, list[str]]]:
    """(models the sweep of `node` reads: both parents and their nearest common ancestor,
    {parent: the domains it is scored on})."""
    parents = lineage.node(node).parents
    return [*parents, lineage.merge_base(node)], {p: lineage.domains(p) for p in parents}


def _owners(lineage: Lineage, node: str, domains_by_parent: dict[str, list[str]]) -> set[str]:
    return {lineage.domain_owner(p, d) for p, ds in domains_by_parent.items() for d in ds}


def _slerp_sweep_asset(lineage: Lineage, nodes: list[str]) -> dg.AssetsDefinition:
    model_edges, token_edges = [], []
    for node in nodes:
        models, domains = _sweep_inputs(lineage, node)
        model_edges += [(m, node) for m in models]
        token_edges += [(o, node) for o in _owners(lineage, node, domains)]
    deps = [dg.AssetDep("tokens", partition_mapping=fan_out(token_edges)), config_dep("slerp_sweep", nodes)]
    for upstream in sorted({m for m, _ in model_edges}):
        deps.append(dg.AssetDep(model_key(upstream), partition_mapping=fan_out([e for e in model_edges if e[0] == upstream])))

    @dg.asset(
        partitions_def=dg.StaticPartitionsDefinition(nodes),
        deps=deps,
        group_name="merges",
        kinds={"pytorch", "plotly"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["slerp_sweep"],
        description="SLERP of the two parents at every t of a grid, scored on each parent's own domain; "
        "chooses the t where the two accuracies balance.",
    )
    @locked
    def slerp_sweep(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        node = context.partition_key
        spec = lineage.merge_spec(node).sweep
        parents = lineage.node(node).parents
        ancestor = lineage.merge_base(node)
        dev = device.torch_device()
        domains = {}
        for p in parents:  # each parent is scored on its own domain(s), concatenated
            own = domain_validation_blocks(lineage, p, store.tokens_path, max_tokens=spec.eval_tokens)
            domains["+".join(own)] = torch.cat(list(own.values()))
        batch = lineage.training_spec(parents[0]).eval_batch_size
        sweep = run_slerp_sweep(
            load_model(store.model_dir(parents[0]), "cpu"), load_model(store.model_dir(parents[1]), "cpu"),
            load_model(store.model_dir(ancestor), "cpu"), domains, spec.grid(),
            lambda m, b: evaluate(m, b, batch, dev), dev, log=step_log(context),
        )
        bp = sweep.balance
        if sweep.linear_fallbacks:
            context.log.warning(f"{len(sweep.linear_fallbacks)} tensors nearly parallel, interpolated linearly")
        if not bp.crossed:
            context.log.warning(f"{node}: {bp.note}")
        labels = list(domains)
        result = {
            "node": node, "parents": parents, "ancestor": ancestor, "t": bp.t, "crossed": bp.crossed,
            "note": bp.note, "accuracy_at_t": dict(zip(labels, (bp.accuracy_a, bp.accuracy_b))),
            "ancestor_accuracy": sweep.ancestor_accuracy, "linear_fallbacks": sweep.linear_fallbacks,
            "grid": spec.model_dump(),
        }
        figure = slerp_sweep_figure(sweep.table, labels[0], labels[1], bp.t, bp.crossed, sweep.ancestor_accuracy,
                                    f"{node}: SLERP {parents[0]} (t=0) to {parents[1]} (t=1)")
        out = store.sweep_dir(node)
        with store.write_dir(out) as tmp:
            sweep.table.to_parquet(tmp / "sweep.parquet", index=False)
            (tmp / "balance.json").write_text(json.dumps(result, indent=2))
            write_html(figure, tmp / "sweep.html", store.plotly_js(), final=out / "sweep.html")
        grid = spec.grid()
        metadata = {
            "chosen_t": bp.t,
            "crossed": bp.crossed,
            "selection": bp.note,
            **{f"accuracy_at_t/{k}": v for k, v in result["accuracy_at_t"].items()},
            **{f"ancestor_accuracy/{k}": v for k, v in sweep.ancestor_accuracy.items()},
            **{f"accuracy_at_t={grid[0]:g}/{k}": v for k, v in sweep.accuracy_at(grid[0]).items()},
            **{f"accuracy_at_t={grid[-1]:g}/{k}": v for k, v in sweep.accuracy_at(grid[-1]).items()},
            "linear_fallback_tensors": len(sweep.linear_fallbacks),
            "grid_points": len(grid),
            "seconds_per_t": sweep.seconds / len(grid),
            "eval_tokens_per_second": round(float(sweep.table["tokens"].sum() / sweep.table["seconds_eval"].sum())),
            "plot": dg.MetadataValue.path(str(out / "sweep.html")),
            "accuracy_by_t": dg.MetadataValue.md(markdown_table(sweep.table.pivot(index="t", columns="domain", values="accuracy"))),
            "device": str(dev),
            "versions": dg.MetadataValue.json(versions()),
        }
        digest = pd.util.hash_pandas_object(sweep.table[["t", "domain", "loss", "accuracy"]], index=False).sum()
        return dg.MaterializeResult(data_version=dg.DataVersion(f"{bp.t:.10f}-{digest}"), metadata=metadata)

    return slerp_sweep


def _merged_model_asset(lineage: Lineage, node: str, auto_t: bool) -> dg.AssetsDefinition:
    spec = lineage.merge_spec(node)
    parents = lineage.node(node).parents
    base = None if spec.method in ("slerp", "linear") else lineage.merge_base(node)
    deps = [dg.AssetDep(model_key(p), partition_mapping=dg.StaticPartitionMapping({p: node})) for p in parents]
    deps.append(config_dep("model", [node]))
    if base is not None and base not in parents:
        deps.append(dg.AssetDep(model_key(base), partition_mapping=dg.StaticPartitionMapping({base: node})))
    owners = sorted({lineage.domain_owner(node, d) for d in lineage.domains(node)})
    deps.append(dg.AssetDep("tokens", partition_mapping=fan_out([(o, node) for o in owners])))
    if auto_t:
        deps.append(dg.AssetDep("slerp_sweep", partition_mapping=same_node(node)))

    @dg.asset(
        key=model_key(node),
        partitions_def=single_node_partition(node),
        deps=deps,
        group_name="models",
        kinds={"mergekit", "huggingface"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["model"],
        description=f"{spec.method} merge of {', '.join(parents)} (mergekit, in-process)",
    )
    @locked
    def _merged(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        dev = device.torch_device()
        t = None
        sweep = None
        if spec.method == "slerp":
            if auto_t:
                sweep = json.loads((store.sweep_dir(node) / "balance.json").read_text())
                t = sweep["t"]
            else:
                t = spec.slerp_t
        config = mergekit_config(
            spec.method, [store.model_dir(p) for p in parents], store.model_dir(base) if base else None,
            t=t, weights=spec.weights, density=spec.density, normalize=spec.normalize,
        )
        out = store.model_dir(node, fetch=False)
        with store.write_dir(out) as tmp:
            mergekit_merge(config, tmp, seed=lineage.seed_of(node))
        merged = load_model(out, dev)
        batch = lineage.training_spec(parents[0]).eval_batch_size
        evaluation = {d: evaluate(merged, b, batch, dev) for d, b in domain_validation_blocks(lineage, node, store.tokens_path).items()}
        metadata = {
            "path": dg.MetadataValue.path(str(out)),
            "method": spec.method,
            "parents": dg.MetadataValue.json(parents),
            "mergekit_config": dg.MetadataValue.json(json.loads(json.dumps(config, default=str))),
            "seed": lineage.seed_of(node),
            "weights_hash": weights_hash(merged),
            "device": str(dev),
            "versions": dg.MetadataValue.json(versions()),
        }
        if base is not None:
            metadata["base"] = base
        if t is not None:
            metadata["t"] = t
        if sweep is not None:
            metadata["t_selection"] = sweep["note"]
            metadata["t_crossed"] = sweep["crossed"]
            metadata["linear_fallback_tensors"] = len(sweep["linear_fallbacks"])
        for domain, ev in evaluation.items():
            metadata[f"val_loss/{domain}"] = ev["loss"]
            metadata[f"val_accuracy/{domain}"] = ev["accuracy"]
        return dg.MaterializeResult(data_version=dg.DataVersion(metadata["weights_hash"]), metadata=metadata)

    return _merged
