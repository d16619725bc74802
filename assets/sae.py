"""SAE assets: activation stores and SAEs per lineage node, SAE transfer per lineage edge."""

import json
import time
import warnings

import dagster as dg
import pandas as pd
import torch
from safetensors.torch import save_file

from featureflow_dagster.activations import ActivationStore, SourceRef, build_activation_store
from featureflow_dagster.blocks import load_blocks
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.model import load_model, weights_hash
from featureflow_dagster.plots import density_histogram, markdown_table, write_html
from featureflow_dagster.provenance import versions
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.sae import SAE_REGISTRY, SAEConfig, load_sae
from featureflow_dagster.sae.evaluate import check_evaluation, configured_checks, evaluate_sae, quality_against_null
from featureflow_dagster.sae.train import train_sae
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.assets.guard import CHECKS_FILE, locked, require_passing_saes, step_log
from featureflow_dagster.assets.config import CODE_VERSIONS, ON_DEVICE, config_dep
from featureflow_dagster.assets.partitions import ancestry_token_edges, edge_ends, edge_partitions, fan_out, node_partitions, per_node_models


def build_sae_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    return [_activation_store(lineage), _sae(lineage), _sae_transfer(lineage)]


def _activation_store(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names
    deps = [dg.AssetDep("tokens", partition_mapping=fan_out(ancestry_token_edges(lineage))), *per_node_models([(n, n) for n in nodes]),
            config_dep("activation_store", nodes)]

    @dg.asset(
        partitions_def=node_partitions(lineage),
        deps=deps,
        group_name="sae",
        kinds={"pytorch", "safetensors"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["activation_store"],
        description="blocks.0.mlp.hook_post over context-token windows sampled uniformly from the node's and its ancestors' data.",
    )
    @locked
    def activation_store(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        node = context.partition_key
        spec = lineage.sae_spec(node)
        refs, train, validation = [], [], []
        for owner in lineage.data_ancestry(node):
            train_blocks = load_blocks(store.tokens_path(owner), "train")
            val_blocks = load_blocks(store.tokens_path(owner), "validation")
            for source in train_blocks:
                refs.append(SourceRef(owner, source))
                train.append(train_blocks[source])
                validation.append(val_blocks[source])
        dev = device.torch_device()
        model = load_model(store.model_dir(node), dev)
        out = store.activation_dir(node, fetch=False)
        started = time.perf_counter()
        with store.write_dir(out) as tmp:
            manifest = build_activation_store(
                model, train, validation, refs, spec.context, spec.tokens, spec.eval_tokens, spec.store_dtype,
                spec.shard_tokens, lineage.seed_of(node), tmp, dev, log=step_log(context),
            )
        seconds = time.perf_counter() - started
        digest = file_sha256(out / "manifest.json")
        tokens = manifest["splits"]["train"]["tokens"] + manifest["splits"]["eval"]["tokens"]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "train_tokens": manifest["splits"]["train"]["tokens"],
                "eval_tokens": manifest["splits"]["eval"]["tokens"],
                "windows_per_source": dg.MetadataValue.json(manifest["splits"]["train"]["windows_per_source"]),
                "shards": len(manifest["splits"]["train"]["shards"]) + len(manifest["splits"]["eval"]["shards"]),
                "dtype": spec.store_dtype,
                "seconds": round(seconds, 2),
                "tokens_per_second": round(tokens / max(seconds, 1e-9)),
                "model_weights_hash": weights_hash(model),
                "seed": lineage.seed_of(node),
                "device": str(dev),
                "manifest_hash": digest,
            },
        )

    return activation_store


def _check_names(lineage: Lineage) -> list[str]:
    """Every check some node's SAE settings configure (asset check specs are per asset, not per partition)."""
    names: list[str] = []
    for n in lineage.node_names:
        names.extend(c for c in configured_checks(lineage.sae_spec(n).checks) if c not in names)
    return names


def _check_specs(lineage: Lineage) -> list[dg.AssetCheckSpec]:
    """The SAE quality bars as blocking checks, partitioned like the SAE (a failure on one node blocks
    only what is computed from that node's SAE)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partitioned check specs are a Dagster preview
        return [dg.AssetCheckSpec(name, asset="sae", blocking=True, partitions_def=node_partitions(lineage),
                                  description=f"SAE quality bar from the lineage (blocking: a failing SAE feeds no "
                                  f"transfer, correlation or flow): {name}")
                for name in _check_names(lineage)]


def _new_sae(lineage: Lineage, node: str, d_in: int, context: int):
    spec = lineage.sae_spec(node)
    cfg = SAEConfig(architecture=spec.architecture, d_in=d_in, d_sae=spec.expansion * d_in, k=spec.k,
                    context_size=context, model_name=f"{lineage.name}/{node}")
    if spec.architecture == "relu":
        extra = {"l1_coefficient": spec.l1_coefficient, "decoder_constraint": spec.decoder_constraint}
    else:
        extra = {"aux_k_coefficient": spec.aux_k_coefficient}
    return SAE_REGISTRY[spec.architecture](cfg, seed=lineage.sae_seed(node), **extra)


def _eval_windows(acts: ActivationStore) -> torch.Tensor:
    return torch.cat([s["tokens"] for s in acts.iter_shards("eval", ("tokens",))])


def _sae(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names
    deps = [dg.AssetDep("activation_store"), *per_node_models([(n, n) for n in nodes]), config_dep("sae", nodes)]
    check_names = _check_names(lineage)

    @dg.asset(
        partitions_def=node_partitions(lineage),
        deps=deps,
        group_name="sae",
        kinds={"pytorch", "safetensors"},
        **ON_DEVICE,
        check_specs=_check_specs(lineage),
        code_version=CODE_VERSIONS["sae"],
        description="Sparse autoencoder on the node's hook_post activations (SAELens layout), with its evaluations.",
    )
    @locked
    def sae(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource):
        node = context.partition_key
        spec = lineage.sae_spec(node)
        dev = device.torch_device()
        acts = ActivationStore(store.activation_dir(node))
        model = load_model(store.model_dir(node), dev)
        autoencoder = _new_sae(lineage, node, acts.d_in, acts.context)
        if spec.subtract_data_mean:
            autoencoder.data_mean.copy_(acts.mean("train"))
        if spec.normalize_activations == "expected_average_only_in":
            autoencoder.input_scale.fill_(acts.d_in**0.5 / acts.mean_norm("train", autoencoder.data_mean))
        w_dec_init = autoencoder.W_dec.detach().clone()
        seed = lineage.sae_seed(node)
        steps = acts.steps("train", spec.batch_windows, spec.epochs)
        if steps == 0:
            raise ValueError(f"node '{node}': the store holds fewer windows than one batch of {spec.batch_windows}")
        fingerprint = f"{json.dumps(spec.model_dump(), sort_keys=True)}|{acts.manifest['splits']['train']['shards'][0]['sha256']}|{seed}"
        result = train_sae(
            autoencoder, lambda start: acts.batches("train", spec.batch_windows, seed, spec.epochs, start), steps,
            spec.lr, (spec.beta1, spec.beta2), dev, seed=seed, dead_window_tokens=spec.dead_window_tokens,
            resample_dead_every=spec.resample_dead_every, checkpoint_path=store.checkpoint_path("sae", node),
            checkpoint_every=spec.checkpoint_every, fingerprint=fingerprint, log=step_log(context),
            lr_warmup_steps=round(spec.lr_warmup_fraction * steps), lr_decay_steps=round(spec.lr_decay_fraction * steps),
            sparsity_warmup_steps=round(spec.l1_warmup_fraction * steps),
        )
        autoencoder.eval()
        ev = evaluate_sae(autoencoder, model, _eval_windows(acts), dev, ultra_low_density=spec.ultra_low_density)
        baseline = quality_against_null(autoencoder, w_dec_init, acts, ev.l0, seed, dev)
        values = {**ev.scalars(), **baseline}
        outcomes = {c.name: c for c in check_evaluation(values, spec.checks)}
        out = store.sae_dir(node, fetch=False)
        with store.write_dir(out) as tmp:
            autoencoder.to("cpu").save(tmp)
            save_file({"density": ev.density}, str(tmp / "feature_density.safetensors"))
            (tmp / CHECKS_FILE).write_text(json.dumps({c.name: {"passed": c.passed, "value": c.value, "bound": c.bound}
                                                       for c in outcomes.values()}, indent=1))
        store.checkpoint_path("sae", node).unlink(missing_ok=True)
        hist = write_html(density_histogram(ev.density, f"{node}: feature density"), store.report_dir("sae", node) / "density.html",
                          store.plotly_js())
        # the check results travel with the materialization, so Dagster knows they judge this one
        # (yielded before it, they would count for the previous materialization and be discarded)
        checks = [dg.AssetCheckResult(
            check_name=name,
            passed=True if outcomes.get(name) is None else outcomes[name].passed,
            metadata={"value": None if name not in outcomes else outcomes[name].value,
                      "bound": "not set for this node" if name not in outcomes else outcomes[name].bound, "node": node},
        ) for name in check_names]
        curve = pd.DataFrame(result.curve).set_index("step")
        return dg.MaterializeResult(
            check_results=checks,
            data_version=dg.DataVersion(file_sha256(out / "sae_weights.safetensors")),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                **values,
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
                "density_histogram": dg.MetadataValue.path(str(hist)),
                "seed": seed,
                "config": dg.MetadataValue.json(spec.model_dump()),
                "device": str(dev),
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return sae


def _sae_transfer(lineage: Lineage) -> dg.AssetsDefinition:
    pairs = edge_ends(lineage)
    deps = [
        dg.AssetDep("sae", partition_mapping=fan_out(pairs)),
        dg.AssetDep("activation_store", partition_mapping=fan_out(pairs)),
        *per_node_models(pairs),
        config_dep("sae_transfer", edge_partitions(lineage).get_partition_keys()),
    ]

    @dg.asset(
        partitions_def=edge_partitions(lineage),
        deps=deps,
        group_name="sae",
        kinds={"pytorch", "parquet"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["sae_transfer"],
        description="Kutsyk et al. (2024): the parent's SAE on the child's activations and the reverse, "
        "beside each SAE on its own model.",
    )
    @locked
    def sae_transfer(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        parent, child = context.partition_key.split("__")
        require_passing_saes(store, (parent, child))
        dev = device.torch_device()
        rows = []
        models = {n: load_model(store.model_dir(n), dev) for n in (parent, child)}
        windows = {n: _eval_windows(ActivationStore(store.activation_dir(n))) for n in (parent, child)}
        for sae_node in (parent, child):
            autoencoder = load_sae(store.sae_dir(sae_node), dev)
            for model_node in (parent, child):
                ev = evaluate_sae(autoencoder, models[model_node], windows[model_node], dev,
                                  ultra_low_density=lineage.sae_spec(model_node).ultra_low_density)
                rows.append({"sae": sae_node, "activations": model_node, **ev.scalars()})
                context.log.info(f"SAE of {sae_node} on {model_node}: explained {ev.explained_variance:.3f}, L0 {ev.l0:.1f}, "
                                 f"loss recovered {ev.loss_recovered:.3f}")
        table = pd.DataFrame(rows)
        path = store.transfer_path(context.partition_key)
        with store.write_file(path) as tmp:
            table.to_parquet(tmp, index=False)
        cell = {(r["sae"], r["activations"]): r for r in rows}
        metadata = {"path": dg.MetadataValue.path(str(path)),
                    "table": dg.MetadataValue.md(markdown_table(table.set_index(["sae", "activations"])[["l0", "mse", "explained_variance", "loss_recovered", "dead_fraction", "ultra_low_fraction"]]))}
        for (s, a), label in (((parent, child), "parent_sae_on_child"), ((child, parent), "child_sae_on_parent"),
                              ((parent, parent), "parent_sae_on_parent"), ((child, child), "child_sae_on_child")):
            for metric in ("l0", "mse", "explained_variance", "loss_recovered", "dead_fraction"):
                metadata[f"{label}/{metric}"] = cell[(s, a)][metric]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(path)),
            metadata={**metadata, "device": str(dev), "versions": dg.MetadataValue.json(versions())},
        )

    return sae_transfer
