"""Model assets: one per lineage node (`model/<node>`), each holding that node's single partition.

A base trains from scratch; a fine-tune starts from its parent's saved weights; a pretrained node's
weights come from a repo or folder, observed as `pretrained/<node>`. Merged models are
built in merges.py under the same `MODEL` artefact. `model_summary` describes every node's saved model."""

import json

import dagster as dg

from featureflow_dagster.lineage import Lineage
from featureflow_dagster.pretrained import Unreachable, link_model_files, resolve
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.serve import reports_url
from featureflow_dagster.tokenizer import load_tokenizer
from featureflow_dagster.assets.data import TOKENIZER, TOKENS
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.partitions import model_key, node_partitions, own_models, same_node, single_node_partition
from featureflow_dagster.assets.spec import Artefact, nodes


def _model_settings(lineage: Lineage, n: str) -> dict:
    if lineage.node(n).pretrained is not None:  # its bytes are versioned by the `pretrained/<node>` observation
        return {"pretrained": lineage.node(n).pretrained.model_dump(mode="json")}
    if lineage.node(n).data is not None:
        return {"model": lineage.model_spec(n).model_dump(mode="json"),
                "training": lineage.training_spec(n).model_dump(mode="json"), "seed": lineage.seed_of(n)}
    merge = lineage.merge_spec(n)
    return {"merge": merge.model_dump(mode="json", exclude={"sweep"}), "seed": lineage.seed_of(n), "base": lineage.merge_base(n)}


MODEL = Artefact(
    "model", "models", "1", "model/{key}",
    settings=lambda lineage: nodes(lineage, lambda n: _model_settings(lineage, n)),
    key_figures=("final_train_loss", "t", "architecture", "parameters"), kinds=frozenset({"pytorch", "huggingface"}), on_device=True,
)
MODEL_SUMMARY = Artefact(
    "model_summary", "models", "1", "model_summary/{key}.json",
    settings=lambda lineage: nodes(lineage, lambda n: {}),  # nothing of the lineage file but its model changes its bytes
    key_figures=("parameters",), kinds=frozenset({"json"}),
    description="Each node's model at a glance, read from its saved folder without loading it: architecture in "
    "TransformerLens's names, parameters in total and per part (embed, attention, mlp, norm, unembed), dtypes, bytes.",
)
ARTEFACTS = [MODEL, MODEL_SUMMARY]


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    trained = [_trained_model_asset(lineage, n) for n in lineage.node_names if lineage.trains(n)]
    pretrained = [a for n in lineage.pretrained_nodes for a in _pretrained_model_assets(lineage, n)]
    return [*pretrained, *trained, _model_summary(lineage)]


def pretrained_key(node: str) -> dg.AssetKey:
    return dg.AssetKey(["pretrained", node])


def _pretrained_model_assets(lineage: Lineage, node: str) -> list:
    """An external model: `pretrained/<node>`, an observable source whose data version is the resolved
    revision (a repo's commit, a folder's weights hash), and `model/<node>`, its weights brought into the
    store (hard links to the Hugging Face cache where the file system allows, else copies), so that everything downstream reads
    every model from one place. A new revision makes `model/<node>` and exactly what depends on it stale."""
    spec = lineage.node(node).pretrained

    from featureflow_dagster.assets import observe_condition

    @dg.observable_source_asset(key=pretrained_key(node), group_name="models", automation_condition=observe_condition(lineage),
                                description=f"Pretrained weights of node "
                                f"'{node}': {spec.label}. Observed version: the commit or the weights' sha256.")
    def _observe() -> dg.DataVersion:
        try:
            return dg.DataVersion(resolve(node, spec).version)
        except Unreachable:
            if spec.expect is None:
                raise
            # offline with the shape the lineage expects: plannable; the model asset itself needs the weights and
            # says so, and the day the repo resolves, its commit replaces this version (what depends on it turns stale)
            return dg.DataVersion(f"unreachable:{spec.label}")

    @MODEL.asset(key=model_key(node), partitions_def=single_node_partition(node), deps=[pretrained_key(node)],
                 description=f"pretrained {lineage.node(node).kind} model of node '{node}' ({spec.label})")
    def _model(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        from featureflow_dagster.model import summarize_model
        resolved = resolve(node, spec, weights=True)
        out = MODEL.at(store, node, fetch=False)
        with store.write_dir(out) as tmp:
            copied = link_model_files(resolved.folder, tmp, link=spec.repo is not None)
        summary = summarize_model(out)
        metadata = {"source": spec.repo or str(spec.local_path()), "version": resolved.version,
                    **({"revision": spec.revision} if spec.revision else {}),
                    "architecture": summary["architecture"], "dtypes": dg.MetadataValue.json(summary["dtypes"]),
                    "parameters": summary["parameters"], "files": dg.MetadataValue.json(copied)}
        return MODEL.result(out, resolved.version, metadata)

    return [_observe, _model]


def _model_summary(lineage: Lineage) -> dg.AssetsDefinition:
    @MODEL_SUMMARY.asset(partitions_def=node_partitions(lineage), deps=own_models(lineage))
    def model_summary(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        from featureflow_dagster.model import summarize_model
        node = context.partition_key
        summary = summarize_model(MODEL.at(store, node))
        path = MODEL_SUMMARY.at(store, node)
        with store.write_file(path) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        return MODEL_SUMMARY.result(path, file_sha256(path), {
            "parameters": summary["parameters"], "architecture": summary["architecture"],
            "shape": f"{summary['n_layers']} layers, d_model {summary['d_model']}, d_mlp {summary['d_mlp']}, "
                     f"{summary['n_heads']} heads ({summary['n_key_value_heads']} key/value), d_vocab {summary['d_vocab']}",
            "parameters_by_part": dg.MetadataValue.json(summary["parameters_by_part"]), "weights_bytes": summary["weights_bytes"]})

    return model_summary


def _trained_model_asset(lineage: Lineage, node: str) -> dg.AssetsDefinition:
    spec = lineage.node(node)
    deps = [dg.AssetDep("tokens", partition_mapping=same_node(node)), dg.AssetDep("tokenizer")]
    deps += [dg.AssetDep(model_key(p), partition_mapping=dg.StaticPartitionMapping({p: node})) for p in spec.parents]

    @MODEL.asset(key=model_key(node), partitions_def=single_node_partition(node), deps=deps,
                 description=f"{spec.kind} model of node '{node}'" + (f" (from '{spec.parents[0]}')" if spec.parents else ""))
    def _model(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        from featureflow_dagster.blocks import load_blocks
        from featureflow_dagster.model import init_model, load_model, parameter_distance
        from featureflow_dagster.plots import loss_curve_figure, write_html
        from featureflow_dagster.training import train_lineage_node
        dev = device.torch_device()
        tok = load_tokenizer(TOKENIZER.at(store))
        if spec.parents:
            model = load_model(MODEL.at(store, spec.parents[0]), dev)
            parent = load_model(MODEL.at(store, spec.parents[0]), "cpu")
        else:
            model, parent = init_model(lineage.model_spec(node), tok, lineage.seed_of(node)), None
        tokens_file = TOKENS.at(store, node)
        trained = train_lineage_node(
            model, load_blocks(tokens_file, "train"), load_blocks(tokens_file, "validation"), lineage.training_spec(node),
            lineage.seed_of(node), dev, checkpoint_path=store.checkpoint_path("model", node),
            data_hash=file_sha256(tokens_file), log=step_log(context),
        )
        out = MODEL.at(store, node, fetch=False)
        with store.write_dir(out) as tmp:
            trained.model.to("cpu").save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
        store.retire_checkpoint("model", node)  # the training removed it here; on shared storage, there too
        curve_html = write_html(
            loss_curve_figure(trained.result.loss_curve, f"{node}: training loss"),
            store.report_dir("model", node) / "loss_curve.html", store.plotly_js(),
        )
        metadata = {"loss_curve": dg.MetadataValue.url(reports_url(f"model/{node}/loss_curve.html")),
                    "loss_curve_file": dg.MetadataValue.path(str(curve_html)),
                    **_metadata(lineage, node, trained, dev, file_sha256(tokens_file))}
        if parent is not None:
            metadata["relative_distance_from_parent"] = parameter_distance(trained.model, parent)
        write_metrics(store, node, metadata)
        return MODEL.result(out, metadata["weights_hash"], metadata)

    return _model


def write_metrics(store: ArtifactStore, node: str, metadata: dict) -> None:
    """The model's validation figures for the reports home (`reports/model/<node>/metrics.json`; a report beside the
    loss curve, not part of the model's bytes)."""
    figures = {k: v for k, v in metadata.items() if k.startswith(("val_accuracy/", "val_loss/")) or k in ("final_train_loss", "t")}
    with store.write_file(store.report_dir("model", node) / "metrics.json") as tmp:
        tmp.write_text(json.dumps(figures, indent=1, default=float))


def _metadata(lineage: Lineage, node: str, trained, dev, data_hash: str) -> dict:
    from featureflow_dagster.model import weights_hash
    result = trained.result
    metadata = {
        "loss_curve_table": dg.MetadataValue.md(_curve_markdown(result.loss_curve)),
        "initial_train_loss": result.loss_curve[0][1],
        "final_train_loss": result.loss_curve[-1][1],
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "seconds": round(result.seconds, 2),
        "tokens_per_second": round(result.tokens_seen / max(result.seconds, 1e-9)),
        "resumed_from_step": result.resumed_from_step,
        "device": str(dev),
        "seed": lineage.seed_of(node),
        "config": dg.MetadataValue.json(
            {"model": lineage.model_spec(node).model_dump(), "training": lineage.training_spec(node).model_dump()}
        ),
        "data_hash": data_hash,
        "weights_hash": weights_hash(trained.model),
        "init_weights_hash": trained.init_weights_hash,
    }
    for domain, ev in trained.evaluation.items():
        metadata[f"val_loss/{domain}"] = ev["loss"]
        metadata[f"val_accuracy/{domain}"] = ev["accuracy"]
        metadata[f"val_accuracy_before/{domain}"] = trained.start_evaluation[domain]["accuracy"]
    return metadata


def _curve_markdown(curve: list[tuple[int, float]], rows: int = 12) -> str:
    picked = curve[:: max(1, len(curve) // rows)]
    if curve and picked[-1] != curve[-1]:
        picked.append(curve[-1])
    return "| step | train loss |\n|---:|---:|\n" + "\n".join(f"| {s} | {l:.4f} |" for s, l in picked)
