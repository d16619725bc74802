"""Feature-flow assets (Horn & Elliott 2024, §3): per lineage edge, both SAEs' codes on shared
tokens and their exact correlation; over the whole lineage, persistence, trajectories, headline
counts and the Sankey diagram."""

import json
import time

import dagster as dg
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from featureflow_dagster.blocks import load_blocks
from featureflow_dagster.correlation import correlate_features, correlation_matrix
from featureflow_dagster.flow import (
    add_cosines,
    agreement,
    classify_edge,
    decoder_matches,
    decoder_table,
    edge_counts,
    edge_windows,
    flow_volumes,
    headline_counts,
    matches_table,
    read_code_chunks,
    trajectories,
    trajectory_summary,
    write_codes,
)
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.model import load_model, weights_hash
from featureflow_dagster.plots import flow_sankey_figure, markdown_table, write_html
from featureflow_dagster.provenance import versions
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.sae import load_sae
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.assets.guard import locked, require_passing_saes, step_log
from featureflow_dagster.assets.config import CODE_VERSIONS, ON_DEVICE, config_dep
from featureflow_dagster.assets.partitions import edge_ends, edge_key, edge_partitions, fan_out, per_node_models


def build_flow_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    if not lineage.edges():
        return []
    return [_feature_activations(lineage), _feature_correlation(lineage), _feature_flow(lineage)]


def _feature_activations(lineage: Lineage) -> dg.AssetsDefinition:
    pairs = edge_ends(lineage)
    token_edges = [(d, edge_key(p, c)) for p, c in lineage.edges() for d in lineage.shared_data(p, c)]
    deps = [
        dg.AssetDep("tokens", partition_mapping=fan_out(token_edges)),
        dg.AssetDep("sae", partition_mapping=fan_out(pairs)),
        *per_node_models(pairs),
        config_dep("feature_activations", edge_partitions(lineage).get_partition_keys()),
    ]

    @dg.asset(
        partitions_def=edge_partitions(lineage),
        deps=deps,
        group_name="flow",
        kinds={"pytorch", "safetensors"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["feature_activations"],
        description="Parent and child SAE codes (sparse: indices and values per token) on the same tokens, drawn "
        "uniformly from the data both models were trained on, with token ids and their origin.",
    )
    @locked
    def feature_activations(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        parent, child = context.partition_key.split("__")
        require_passing_saes(store, (parent, child))
        settings = lineage.edge_activation_settings(parent, child)
        refs, blocks, data_hashes = [], [], {}
        for owner in settings["shared_data"]:
            path = store.tokens_path(owner)
            data_hashes[owner] = file_sha256(path)
            for source, b in load_blocks(path, "train").items():
                refs.append(f"{owner}/{source}")
                blocks.append(b)
        windows, origin = edge_windows(blocks, settings["context"], settings["tokens"], settings["seed"])
        dev = device.torch_device()
        models = {n: load_model(store.model_dir(n), dev) for n in (parent, child)}
        saes = {n: load_sae(store.sae_dir(n), dev) for n in (parent, child)}
        out = store.feature_activations_dir(context.partition_key, fetch=False)
        n_chunks = -(-windows.shape[0] // max(1, settings["chunk_tokens"] // settings["context"]))
        chunk_windows = -(-windows.shape[0] // n_chunks)  # equal chunks, none nearly empty
        started = time.perf_counter()
        with store.write_dir(out) as tmp:
            files, nnz = write_codes(models[parent], models[child], saes[parent], saes[child], windows, origin, tmp,
                                     chunk_windows, dev, batch_windows=lineage.flow.batch_windows, log=step_log(context))
            seconds = time.perf_counter() - started
            n_tokens = windows.numel()
            counts = torch.bincount(origin[:, 0].long(), minlength=len(refs)).tolist()
            manifest = {
                "parent": parent, "child": child, "tokens": n_tokens, "windows": int(windows.shape[0]),
                "context": settings["context"], "seed": settings["seed"], "sources": refs,
                "windows_per_source": dict(zip(refs, counts)),
                "d_sae": {"parent": saes[parent].cfg.d_sae, "child": saes[child].cfg.d_sae},
                "files": [{"name": f, "sha256": file_sha256(tmp / f)} for f in files],
                "tokens_data_sha256": data_hashes,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        digest = file_sha256(out / "manifest.json")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "tokens": n_tokens,
                "windows_per_source": dg.MetadataValue.json(manifest["windows_per_source"]),
                "parent_l0": nnz["parent"] / n_tokens,
                "child_l0": nnz["child"] / n_tokens,
                "encode_seconds": round(seconds, 2),
                "tokens_per_second": round(n_tokens / max(seconds, 1e-9)),
                "chunks": len(files),
                "seed": settings["seed"],
                "parent_weights_hash": weights_hash(models[parent]),
                "child_weights_hash": weights_hash(models[child]),
                "parent_sae_sha256": file_sha256(store.sae_dir(parent) / "sae_weights.safetensors"),
                "child_sae_sha256": file_sha256(store.sae_dir(child) / "sae_weights.safetensors"),
                "tokens_data_sha256": dg.MetadataValue.json(data_hashes),
                "device": str(dev),
                "manifest_hash": digest,
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return feature_activations


def _feature_correlation(lineage: Lineage) -> dg.AssetsDefinition:
    f = lineage.flow

    @dg.asset(
        partitions_def=edge_partitions(lineage),
        deps=[dg.AssetDep("feature_activations"), dg.AssetDep("sae", partition_mapping=fan_out(edge_ends(lineage))),
              config_dep("feature_correlation", edge_partitions(lineage).get_partition_keys())],
        group_name="flow",
        kinds={"scipy", "parquet"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["feature_correlation"],
        description="Exact Pearson r over token positions between every parent and child feature (sparse-aware, "
        "float64), each feature's top-k partners both ways; and the data-free decoder-cosine matches.",
    )
    @locked
    def feature_correlation(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        parent, child = context.partition_key.split("__")
        require_passing_saes(store, (parent, child))
        codes = store.feature_activations_dir(context.partition_key)
        manifest = json.loads((codes / "manifest.json").read_text())
        m, n = manifest["d_sae"]["parent"], manifest["d_sae"]["child"]
        files = [e["name"] for e in manifest["files"]]
        chunks = lambda: read_code_chunks(codes, files, m, n)  # noqa: E731
        started = time.perf_counter()
        corr = correlate_features(chunks, m, n, top_k=f.top_k, row_block=f.row_block, log=step_log(context))
        corr_seconds = time.perf_counter() - started
        dev = device.torch_device()
        started = time.perf_counter()
        w_parent, w_child = (load_sae(store.sae_dir(n), dev).W_dec.detach() for n in (parent, child))
        dec_parent, dec_child = decoder_matches(w_parent, w_child, k=f.top_k)
        dec_seconds = time.perf_counter() - started
        matches = add_cosines(pd.concat([matches_table(corr), decoder_table(dec_parent, dec_child)], ignore_index=True),
                              w_parent, w_child)
        features = pd.concat([
            pd.DataFrame({"side": side, "feature": np.arange(mom.sum.size), "mean": mom.mean, "std": mom.std, "dead": mom.dead})
            for side, mom in (("parent", corr.parent_moments), ("child", corr.child_moments))], ignore_index=True)
        out = store.feature_correlation_dir(context.partition_key)
        with store.write_dir(out) as tmp:
            matches.to_parquet(tmp / "matches.parquet", index=False)
            features.to_parquet(tmp / "features.parquet", index=False)
            if f.full_matrix:
                full = correlation_matrix(chunks, corr.parent_moments, corr.child_moments, f.row_block)
                save_file({"r": torch.from_numpy(full)}, str(tmp / "matrix.safetensors"))
        parent_t, child_t = classify_edge(matches, f.threshold)
        counts = edge_counts(parent_t, child_t)
        agree = agreement(matches, f.threshold)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(out / "matches.parquet")),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "tokens": corr.parent_moments.tokens,
                "parent_features": m, "child_features": n,
                "parent_dead": int(corr.parent_moments.dead.sum()), "child_dead": int(corr.child_moments.dead.sum()),
                **{f"at_threshold/{k}": v for k, v in counts.items()},
                "threshold": f.threshold,
                "top_k": f.top_k,
                "correlation_seconds": round(corr_seconds, 2),
                "cross_moment": corr.method,
                "decoder_matching_seconds": round(dec_seconds, 2),
                "matching_agreement": dg.MetadataValue.md(markdown_table(agree.set_index("side"))),
                "full_matrix": f.full_matrix,
                "codes_manifest_sha256": file_sha256(codes / "manifest.json"),
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return feature_correlation


def _feature_flow(lineage: Lineage) -> dg.AssetsDefinition:
    threshold = lineage.flow.threshold

    @dg.asset(
        deps=[dg.AssetDep("feature_correlation"), config_dep("feature_flow")],
        group_name="flow",
        kinds={"pandas", "plotly"},
        code_version=CODE_VERSIONS["feature_flow"],
        description="Persisting, disappearing and emerging features of every edge (splits and merges kept), "
        "trajectories along every base-to-leaf path, the paper's headline counts and the Sankey diagram.",
    )
    @locked
    def feature_flow(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        require_passing_saes(store, lineage.node_names)
        tables, classified, agreements, counts = {}, [], [], []
        for p, c in lineage.edges():
            matches = pd.read_parquet(store.feature_correlation_dir(edge_key(p, c)) / "matches.parquet")
            tables[(p, c)] = classify_edge(matches, threshold)
            pt, ct = tables[(p, c)]
            classified.append(pt.assign(edge=f"{p}->{c}", side="parent", node=p))
            classified.append(ct.assign(edge=f"{p}->{c}", side="child", node=c))
            agreements.append(agreement(matches, threshold).assign(edge=f"{p}->{c}"))
            counts.append({"edge": f"{p}->{c}", **edge_counts(pt, ct)})
        traj = trajectories(lineage, tables)
        heads = headline_counts(lineage, tables)
        volumes = flow_volumes(lineage, tables)
        counts_t = pd.DataFrame(counts).set_index("edge")
        agree_t = pd.concat(agreements, ignore_index=True)
        summary = trajectory_summary(traj)
        out = store.feature_flow_dir()
        with store.write_dir(out) as tmp:
            pd.concat(classified, ignore_index=True).to_parquet(tmp / "classification.parquet", index=False)
            traj.to_parquet(tmp / "trajectories.parquet", index=False)
            agree_t.to_parquet(tmp / "agreement.parquet", index=False)
            counts_t.reset_index().to_parquet(tmp / "edge_counts.parquet", index=False)
            (tmp / "headline_counts.json").write_text(json.dumps(heads, indent=1))
            (tmp / "volumes.json").write_text(json.dumps(volumes, indent=1))
            write_html(flow_sankey_figure(volumes, threshold, f"{lineage.name}: feature flow"), tmp / "sankey.html",
                       store.plotly_js(), final=out / "sankey.html")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(out / "classification.parquet")),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "sankey": dg.MetadataValue.path(str(out / "sankey.html")),
                "sankey_volumes": dg.MetadataValue.json(volumes),
                "threshold": threshold,
                "headline_counts": dg.MetadataValue.json(heads),
                "edge_counts": dg.MetadataValue.md(markdown_table(counts_t)),
                "persisting_share": dg.MetadataValue.json({k: round(v, 4) for k, v in volumes["shares"].items()}),
                "matching_agreement": dg.MetadataValue.md(markdown_table(agree_t.set_index(["edge", "side"]))),
                "trajectories": dg.MetadataValue.md(markdown_table(summary.set_index(["path", "start_node", "end_node"]))),
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return feature_flow
