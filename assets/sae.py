"""SAE assets: activation stores and SAEs per lineage node, SAE transfer per lineage edge."""

import time
import warnings

import dagster as dg

from featureflow_dagster.hooks import MLP_POST
from featureflow_dagster.lineage import Edge, Lineage
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.assets.data import TOKENS
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.models import MODEL
from featureflow_dagster.assets.partitions import ancestry_token_edges, edge_ends, edge_partitions, fan_out, node_partitions, own_models, per_node_models
from featureflow_dagster.assets.spec import Artefact, edges, nodes
from featureflow_dagster.serve import reports_url

ACTIVATION_STORE = Artefact(
    "activation_store", "sae", "1", "activation_store/{key}",
    settings=lambda lineage: nodes(lineage, lambda n: {
        **lineage.sae_spec(n).model_dump(mode="json", include={"context", "tokens", "eval_tokens", "store_dtype", "shard_tokens"}),
        "seed": lineage.seed_of(n),
        **({"hook": lineage.hook} if lineage.hook != MLP_POST else {})}),  # the default hook versions nothing (stores made before `hook:` stay fresh)
    key_figures=("train_tokens",), kinds=frozenset({"pytorch", "safetensors"}), on_device=True,
    description="The lineage's hook (default blocks.0.mlp.hook_post) over context-token windows sampled uniformly from the "
    "node's and its ancestors' data.",
)
SAE = Artefact(
    "sae", "sae", "2", "sae/{key}",
    settings=lambda lineage: nodes(lineage, lambda n: {"sae": lineage.sae_spec(n).versioned(), "seed": lineage.sae_seed(n)}),
    key_figures=("l0", "explained_variance", "loss_recovered"), kinds=frozenset({"pytorch", "safetensors"}), on_device=True,
    description="Sparse autoencoder on the node's activations at the lineage's hook (SAELens layout), with its evaluations.",
)
SAE_TRANSFER = Artefact(
    "sae_transfer", "sae", "1", "sae_transfer/{key}.parquet",
    settings=lambda lineage: edges(lineage, lambda p, c: {n: lineage.sae_spec(n).ultra_low_density for n in (p, c)}),
    key_figures=("parent_sae_on_child/explained_variance",), kinds=frozenset({"pytorch", "parquet"}), on_device=True,
    description="Kutsyk et al. (2024): the parent's SAE on the child's activations and the reverse, "
    "beside each SAE on its own model.",
)
WARM_SAE = Artefact(
    "warm_sae", "sae", "1", "warm_sae/{key}",
    # built only with flow.warm_start, so only then has it partitions to version
    settings=lambda lineage: edges(lineage, lambda p, c: {"sae": lineage.sae_spec(c).versioned(), "seed": lineage.sae_seed(c),
                                                          "threshold": lineage.flow.threshold,
                                                          "lr_scale": lineage.flow.warm_start_lr_scale})
    if lineage.flow.warm_start else {},
    key_figures=("aligned_share", "median_decoder_cosine", "explained_variance"), kinds=frozenset({"pytorch", "safetensors"}),
    on_device=True,
    description="flow.warm_start: the child's SAE trained from the parent's dictionary (SAELens layout), and per feature "
    "index its decoder rotation and activation correlation with the parent's feature (aligned.parquet).",
)
ALIGNED_FILE = "aligned.parquet"  # in warm_sae/<edge>/: per feature index, the same-index pair (sae.warm.aligned_features)
ARTEFACTS = [ACTIVATION_STORE, SAE, SAE_TRANSFER, WARM_SAE]


def require_passing_saes(store: ArtifactStore, names) -> None:
    """Fail the step (no retries: nothing but new SAE settings helps) when an SAE of `names` failed a quality check."""
    from featureflow_dagster.sae.fit import FailedQualityChecks, require_passing
    try:
        require_passing({n: SAE.at(store, n) for n in names})
    except FailedQualityChecks as e:
        raise dg.Failure(description=str(e), allow_retries=False) from None


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    return [_activation_store(lineage), _sae(lineage), _sae_transfer(lineage), *([_warm_sae(lineage)] if lineage.flow.warm_start else [])]


def _warm_sae(lineage: Lineage) -> dg.AssetsDefinition:
    """A separate edge asset, not the child's `sae` started warm: Dagster refuses an asset that depends on
    its own other partitions (here sae[child] on sae[parent]) unless they are time windows."""
    edge_list = lineage.edges()
    deps = [dg.AssetDep("sae", partition_mapping=fan_out([(e.parent, e.key) for e in edge_list])),
            dg.AssetDep("activation_store", partition_mapping=fan_out([(e.child, e.key) for e in edge_list])),
            *per_node_models(edge_ends(lineage))]

    @WARM_SAE.asset(partitions_def=edge_partitions(lineage), deps=deps)
    def warm_sae(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        from featureflow_dagster.activations import ActivationStore
        from featureflow_dagster.model import load_model
        from featureflow_dagster.sae import load_sae
        from featureflow_dagster.sae.fit import eval_windows, fit_sae, save_fitted
        from featureflow_dagster.sae.warm import aligned_features, aligned_summary
        edge = Edge.parse(context.partition_key)
        require_passing_saes(store, [edge.parent])
        dev = device.torch_device()
        acts = ActivationStore(ACTIVATION_STORE.at(store, edge.child))
        models = {n: load_model(MODEL.at(store, n), dev) for n in edge}
        spec, seed = lineage.sae_spec(edge.child), lineage.sae_seed(edge.child)
        spec = spec.model_copy(update={"lr": spec.lr * lineage.flow.warm_start_lr_scale})
        parent_sae = load_sae(SAE.at(store, edge.parent), dev)  # the start (copied, not moved, by fit_sae) and the reference
        fitted = fit_sae(spec, acts, models[edge.child], seed, dev, f"{lineage.name}/{edge.child} from {edge.parent}",
                         checkpoint_path=store.checkpoint_path("warm_sae", edge.key), log=step_log(context), init=parent_sae)
        table = aligned_features(models[edge.parent], models[edge.child], parent_sae, fitted.sae.to(dev),
                                 eval_windows(acts), dev, lineage.flow.threshold)
        out = WARM_SAE.at(store, edge.key, fetch=False)
        with store.write_dir(out) as tmp:
            save_fitted(fitted, tmp)
            table.to_parquet(tmp / ALIGNED_FILE, index=False)
        store.retire_checkpoint("warm_sae", edge.key)  # as `sae` does once its SAE is written
        summary = aligned_summary(table)
        return WARM_SAE.result(out, file_sha256(out / "sae_weights.safetensors"), {
            **summary, **{k: fitted.values[k] for k in ("l0", "explained_variance", "loss_recovered", "dead_fraction")},
            "tokens": table.attrs["tokens"], "seed": seed, "lr": spec.lr, "device": str(dev)})

    return warm_sae


def _activation_store(lineage: Lineage) -> dg.AssetsDefinition:
    deps = [dg.AssetDep("tokens", partition_mapping=fan_out(ancestry_token_edges(lineage))),
            *own_models(lineage)]

    @ACTIVATION_STORE.asset(partitions_def=node_partitions(lineage), deps=deps)
    def activation_store(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        from featureflow_dagster.activations import SourceRef, build_activation_store
        from featureflow_dagster.blocks import load_blocks
        from featureflow_dagster.model import load_model, weights_hash
        node = context.partition_key
        spec = lineage.sae_spec(node)
        refs, train, validation = [], [], []
        for owner in lineage.data_ancestry(node):
            train_blocks = load_blocks(TOKENS.at(store, owner), "train")
            val_blocks = load_blocks(TOKENS.at(store, owner), "validation")
            for source in train_blocks:
                refs.append(SourceRef(owner, source))
                train.append(train_blocks[source])
                validation.append(val_blocks[source])
        dev = device.torch_device()
        model = load_model(MODEL.at(store, node), dev)
        out = ACTIVATION_STORE.at(store, node, fetch=False)
        started = time.perf_counter()
        with store.write_dir(out) as tmp:
            manifest = build_activation_store(
                model, lineage.hook, train, validation, refs, spec.context, spec.tokens, spec.eval_tokens, spec.store_dtype,
                spec.shard_tokens, lineage.seed_of(node), tmp, dev, log=step_log(context),
            )
        seconds = time.perf_counter() - started
        digest = file_sha256(out / "manifest.json")
        splits = manifest["splits"]
        return ACTIVATION_STORE.result(
            out, digest, {
                "train_tokens": splits["train"]["tokens"],
                "eval_tokens": splits["eval"]["tokens"],
                "windows_per_source": dg.MetadataValue.json(splits["train"]["windows_per_source"]),
                "shards": len(splits["train"]["shards"]) + len(splits["eval"]["shards"]),
                "dtype": spec.store_dtype,
                "seconds": round(seconds, 2),
                "tokens_per_second": round((splits["train"]["tokens"] + splits["eval"]["tokens"]) / max(seconds, 1e-9)),
                "model_weights_hash": weights_hash(model),
                "seed": lineage.seed_of(node),
                "device": str(dev),
                "manifest_hash": digest,
            },
        )

    return activation_store


def _check_specs(lineage: Lineage) -> list[dg.AssetCheckSpec]:
    """The SAE quality bars as blocking checks, partitioned like the SAE (a failure on one node blocks
    only what is computed from that node's SAE). Asset check specs are per asset, not per partition:
    every check some node's settings configure."""
    from featureflow_dagster.sae.checks import configured_checks
    names = list(dict.fromkeys(c for n in lineage.node_names for c in configured_checks(lineage.sae_spec(n).checks)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partitioned check specs are a Dagster preview
        return [dg.AssetCheckSpec(name, asset="sae", blocking=True, partitions_def=node_partitions(lineage),
                                  description=f"SAE quality bar from the lineage (blocking: a failing SAE feeds no "
                                  f"transfer, correlation or flow): {name}")
                for name in names]


def _sae(lineage: Lineage) -> dg.AssetsDefinition:
    check_specs = _check_specs(lineage)

    @SAE.asset(partitions_def=node_partitions(lineage), check_specs=check_specs,
               deps=[dg.AssetDep("activation_store"), *own_models(lineage)])
    def sae(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource):
        from featureflow_dagster.activations import ActivationStore
        from featureflow_dagster.model import load_model
        from featureflow_dagster.plots import density_histogram, write_html
        from featureflow_dagster.sae.fit import fit_sae, judge_published, save_fitted
        from featureflow_dagster.sae.published import PublishedSAEError, load_published
        node = context.partition_key
        spec, seed, dev = lineage.sae_spec(node), lineage.sae_seed(node), device.torch_device()
        acts = ActivationStore(ACTIVATION_STORE.at(store, node))
        if spec.published is not None:
            try:
                published = load_published(spec.published, acts.hook_name, acts.d_in, f"{lineage.name}/{node}")
            except PublishedSAEError as e:
                raise dg.Failure(description=f"node '{node}': sae.published: {e}", allow_retries=False) from None
            fitted = judge_published(published, spec, acts, load_model(MODEL.at(store, node), dev), seed, dev)
            context.log.info(f"{node}: published SAE {spec.published.label} ({published.cfg.d_sae} features) evaluated, not trained")
        else:
            fitted = fit_sae(spec, acts, load_model(MODEL.at(store, node), dev), seed, dev,
                             f"{lineage.name}/{node}", store.checkpoint_path("sae", node), step_log(context))
        out = SAE.at(store, node, fetch=False)
        with store.write_dir(out) as tmp:
            save_fitted(fitted, tmp)
        store.retire_checkpoint("sae", node)
        hist = write_html(density_histogram(fitted.evaluation.density, f"{node}: feature density"),
                          store.report_dir("sae", node) / "density.html", store.plotly_js())
        # the check results travel with the materialization, so Dagster knows they judge this one
        # (yielded before it, they would count for the previous materialization and be discarded)
        checks = [_check_result(c.name, fitted.checks.get(c.name), node) for c in check_specs]
        return SAE.result(out, file_sha256(out / "sae_weights.safetensors"),
                          {**_sae_metadata(fitted, spec, seed), "density_histogram": dg.MetadataValue.url(reports_url(f"sae/{node}/density.html")),
                           "density_histogram_file": dg.MetadataValue.path(str(hist)), "device": str(dev)},
                          check_results=checks)

    return sae


def _check_result(name: str, outcome, node: str) -> dg.AssetCheckResult:
    """A bar this node does not set passes, and says so."""
    return dg.AssetCheckResult(
        check_name=name, passed=True if outcome is None else outcome.passed,
        metadata={"value": None if outcome is None else outcome.value,
                  "bound": "not set for this node" if outcome is None else outcome.bound, "node": node})


def _sae_metadata(fitted, spec, seed: int) -> dict:
    import pandas as pd
    from featureflow_dagster.plots import markdown_table
    result, autoencoder = fitted.training, fitted.sae
    curve = pd.DataFrame(result.curve or [{"step": 0}]).set_index("step")
    return {
        **fitted.values,
        "input_scale": float(autoencoder.input_scale),
        "architecture": spec.architecture,
        "d_sae": autoencoder.cfg.d_sae,
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "seconds": round(result.seconds, 2),
        "tokens_per_second": round(result.tokens_seen / max(result.seconds, 1e-9)),
        "train_dead_fraction": result.dead_fraction,
        "resampled_features": result.resampled,
        "training_curve": dg.MetadataValue.md(markdown_table(curve.iloc[:: max(1, len(curve) // 12)])),
        "seed": seed,
        "published": spec.published.label if spec.published is not None else "no: trained here",
        "config": dg.MetadataValue.json(spec.model_dump(mode="json")),
    }


def _sae_transfer(lineage: Lineage) -> dg.AssetsDefinition:
    pairs = edge_ends(lineage)
    deps = [dg.AssetDep("sae", partition_mapping=fan_out(pairs)), dg.AssetDep("activation_store", partition_mapping=fan_out(pairs)),
            *per_node_models(pairs)]

    @SAE_TRANSFER.asset(partitions_def=edge_partitions(lineage), deps=deps)
    def sae_transfer(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.activations import ActivationStore
        from featureflow_dagster.model import load_model
        from featureflow_dagster.plots import markdown_table
        from featureflow_dagster.sae import load_sae
        from featureflow_dagster.sae.evaluate import evaluate_sae
        from featureflow_dagster.sae.fit import eval_windows
        parent, child = edge = Edge.parse(context.partition_key)
        require_passing_saes(store, edge)
        dev = device.torch_device()
        models = {n: load_model(MODEL.at(store, n), dev) for n in edge}
        windows = {n: eval_windows(ActivationStore(ACTIVATION_STORE.at(store, n))) for n in edge}
        rows = []
        for sae_node in edge:
            autoencoder = load_sae(SAE.at(store, sae_node), dev)
            for model_node in edge:
                ev = evaluate_sae(autoencoder, models[model_node], windows[model_node], dev,
                                  ultra_low_density=lineage.sae_spec(model_node).ultra_low_density)
                rows.append({"sae": sae_node, "activations": model_node, **ev.scalars()})
                context.log.info(f"SAE of {sae_node} on {model_node}: explained {ev.explained_variance:.3f}, L0 {ev.l0:.1f}, "
                                 f"loss recovered {ev.loss_recovered:.3f}")
        table = pd.DataFrame(rows)
        path = SAE_TRANSFER.at(store, edge.key)
        with store.write_file(path) as tmp:
            table.to_parquet(tmp, index=False)
        cell = {(r["sae"], r["activations"]): r for r in rows}
        metadata = {"table": dg.MetadataValue.md(markdown_table(table.set_index(["sae", "activations"])[["l0", "mse", "explained_variance", "loss_recovered", "dead_fraction", "ultra_low_fraction"]]))}
        for (s, a), label in (((parent, child), "parent_sae_on_child"), ((child, parent), "child_sae_on_parent"),
                              ((parent, parent), "parent_sae_on_parent"), ((child, child), "child_sae_on_child")):
            for metric in ("l0", "mse", "explained_variance", "loss_recovered", "dead_fraction"):
                metadata[f"{label}/{metric}"] = cell[(s, a)][metric]
        return SAE_TRANSFER.result(path, file_sha256(path), {**metadata, "device": str(dev)})

    return sae_transfer
