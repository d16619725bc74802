"""Feature-flow assets (Horn & Elliott 2024, §3): per lineage edge, both SAEs' codes on shared
tokens and their exact correlation; over the whole lineage, persistence, trajectories, headline
counts and the Sankey diagram."""

import json

import dagster as dg
import pandas as pd

from featureflow_dagster.flow import classify_aligned_lineage, classify_lineage, correlate_edge, encode_edge, read_code_chunks, tables_from_classification
from featureflow_dagster.lineage import Edge, Lineage
from featureflow_dagster.model import load_model, weights_hash
from featureflow_dagster.plots import flow_sankey_figure, markdown_table, write_html
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.sae import load_sae
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.assets.data import TOKENS
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.models import MODEL
from featureflow_dagster.assets.partitions import edge_ends, edge_partitions, fan_out, per_node_models
from featureflow_dagster.assets.sae import ALIGNED_FILE, SAE, WARM_SAE, require_passing_saes
from featureflow_dagster.assets.spec import Artefact, edges

FEATURE_ACTIVATIONS = Artefact(
    "feature_activations", "flow", "1", "feature_activations/{key}",
    settings=lambda lineage: edges(lineage, lineage.edge_activation_settings),
    key_figures=("parent_l0", "child_l0"), kinds=frozenset({"pytorch", "safetensors"}), on_device=True,
    description="Parent and child SAE codes (sparse: indices and values per token) on the same tokens, drawn "
    "uniformly from the data both models were trained on, with token ids and their origin.",
)
FEATURE_CORRELATION = Artefact(
    "feature_correlation", "flow", "1", "feature_correlation/{key}",
    settings=lambda lineage: edges(lineage, lambda p, c: {"top_k": lineage.flow.top_k, "full_matrix": lineage.flow.full_matrix}),
    key_figures=("at_threshold/parent_persisting", "parent_features"), kinds=frozenset({"scipy", "parquet"}), on_device=True,
    description="Exact Pearson r over token positions between every parent and child feature (sparse-aware, "
    "float64), each feature's top-k partners both ways; and the data-free decoder-cosine matches.",
)
FEATURE_FLOW = Artefact(
    "feature_flow", "flow", "2", "feature_flow",
    # warm_start only where set, so that a lineage without it keeps its version
    settings=lambda lineage: {None: {"threshold": lineage.flow.threshold, **({"warm_start": True} if lineage.flow.warm_start else {})}},
    key_figures=("persisting_share",), kinds=frozenset({"pandas", "plotly"}),
    description="Persisting, disappearing and emerging features of every edge (splits and merges kept), "
    "trajectories along every base-to-leaf path, the paper's headline counts and the Sankey diagram; with "
    "flow.warm_start also every edge classified by aligned pairs (aligned_classification.parquet, aligned_counts.parquet).",
)
ARTEFACTS = [FEATURE_ACTIVATIONS, FEATURE_CORRELATION, FEATURE_FLOW]


def read_flow(store: ArtifactStore, *files: str) -> list:
    """feature_flow's files by name: parquet files as tables, JSON files as data."""
    folder = FEATURE_FLOW.at(store)
    return [pd.read_parquet(folder / f) if f.endswith(".parquet") else json.loads((folder / f).read_text()) for f in files]


def flow_tables(store: ArtifactStore, lineage: Lineage) -> dict:
    """Per edge (parent table, child table), read back from feature_flow's classification."""
    return tables_from_classification(lineage, *read_flow(store, "classification.parquet"))


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    if not lineage.edges():
        return []
    return [_feature_activations(lineage), _feature_correlation(lineage), _feature_flow(lineage)]


def _feature_activations(lineage: Lineage) -> dg.AssetsDefinition:
    pairs = edge_ends(lineage)
    token_edges = [(d, e.key) for e in lineage.edges() for d in lineage.shared_data(*e)]
    deps = [dg.AssetDep("tokens", partition_mapping=fan_out(token_edges)), dg.AssetDep("sae", partition_mapping=fan_out(pairs)),
            *per_node_models(pairs)]

    @FEATURE_ACTIVATIONS.asset(partitions_def=edge_partitions(lineage), deps=deps)
    def feature_activations(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        edge = Edge.parse(context.partition_key)
        require_passing_saes(store, edge)
        settings = lineage.edge_activation_settings(*edge)
        dev = device.torch_device()
        models = {side: load_model(MODEL.at(store, n), dev) for side, n in zip(("parent", "child"), edge)}
        saes = {side: load_sae(SAE.at(store, n), dev) for side, n in zip(("parent", "child"), edge)}
        out = FEATURE_ACTIVATIONS.at(store, edge.key, fetch=False)
        with store.write_dir(out) as tmp:
            manifest, nnz, seconds = encode_edge(edge, models, saes, settings, {d: TOKENS.at(store, d) for d in settings["shared_data"]},
                                                 tmp, dev, batch_windows=lineage.flow.batch_windows, log=step_log(context))
        digest = file_sha256(out / "manifest.json")
        n_tokens = manifest["tokens"]
        return FEATURE_ACTIVATIONS.result(
            out, digest, {
                "tokens": n_tokens,
                "windows_per_source": dg.MetadataValue.json(manifest["windows_per_source"]),
                "parent_l0": nnz["parent"] / n_tokens,
                "child_l0": nnz["child"] / n_tokens,
                "encode_seconds": round(seconds, 2),
                "tokens_per_second": round(n_tokens / max(seconds, 1e-9)),
                "chunks": len(manifest["files"]),
                "seed": settings["seed"],
                "parent_weights_hash": weights_hash(models["parent"]),
                "child_weights_hash": weights_hash(models["child"]),
                "parent_sae_sha256": file_sha256(SAE.at(store, edge.parent) / "sae_weights.safetensors"),
                "child_sae_sha256": file_sha256(SAE.at(store, edge.child) / "sae_weights.safetensors"),
                "tokens_data_sha256": dg.MetadataValue.json(manifest["tokens_data_sha256"]),
                "device": str(dev),
                "manifest_hash": digest,
            },
        )

    return feature_activations


def _feature_correlation(lineage: Lineage) -> dg.AssetsDefinition:
    f = lineage.flow

    @FEATURE_CORRELATION.asset(partitions_def=edge_partitions(lineage),
                               deps=[dg.AssetDep("feature_activations"), dg.AssetDep("sae", partition_mapping=fan_out(edge_ends(lineage)))])
    def feature_correlation(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        edge = Edge.parse(context.partition_key)
        require_passing_saes(store, edge)
        codes = FEATURE_ACTIVATIONS.at(store, edge.key)
        manifest = json.loads((codes / "manifest.json").read_text())
        m, n = manifest["d_sae"]["parent"], manifest["d_sae"]["child"]
        files = [e["name"] for e in manifest["files"]]
        dev = device.torch_device()
        decoders = [load_sae(SAE.at(store, node), dev).W_dec.detach() for node in edge]
        out = FEATURE_CORRELATION.at(store, edge.key)
        with store.write_dir(out) as tmp:
            result = correlate_edge(lambda: read_code_chunks(codes, files, m, n), m, n, *decoders, f, tmp, log=step_log(context))
        return FEATURE_CORRELATION.result(
            out, file_sha256(out / "matches.parquet"), {
                "tokens": result.tokens,
                "parent_features": m, "child_features": n,
                "parent_dead": result.dead["parent"], "child_dead": result.dead["child"],
                **{f"at_threshold/{k}": v for k, v in result.counts.items()},
                "threshold": f.threshold,
                "top_k": f.top_k,
                "correlation_seconds": round(result.correlation_seconds, 2),
                "cross_moment": result.method,
                "decoder_matching_seconds": round(result.decoder_seconds, 2),
                "matching_agreement": dg.MetadataValue.md(markdown_table(result.agreement.set_index("side"))),
                "full_matrix": f.full_matrix,
                "codes_manifest_sha256": file_sha256(codes / "manifest.json"),
            },
        )

    return feature_correlation


def _feature_flow(lineage: Lineage) -> dg.AssetsDefinition:
    threshold, warm = lineage.flow.threshold, lineage.flow.warm_start

    @FEATURE_FLOW.asset(deps=[dg.AssetDep("feature_correlation"), *([dg.AssetDep("warm_sae")] if warm else [])])
    def feature_flow(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        require_passing_saes(store, lineage.node_names)
        matches = {e: pd.read_parquet(FEATURE_CORRELATION.at(store, e.key) / "matches.parquet") for e in lineage.edges()}
        flow = classify_lineage(lineage, matches, threshold)
        aligned = aligned_counts = None
        if warm:
            aligned, aligned_counts = classify_aligned_lineage(
                lineage, flow, {e: pd.read_parquet(WARM_SAE.at(store, e.key) / ALIGNED_FILE) for e in lineage.edges()}, threshold)
        out = FEATURE_FLOW.at(store)
        with store.write_dir(out) as tmp:
            flow.write(tmp)
            if warm:
                aligned.to_parquet(tmp / "aligned_classification.parquet", index=False)
                aligned_counts.reset_index().to_parquet(tmp / "aligned_counts.parquet", index=False)
            write_html(flow_sankey_figure(flow.volumes, threshold, f"{lineage.name}: feature flow"), tmp / "sankey.html",
                       store.plotly_js(), final=out / "sankey.html")
        return FEATURE_FLOW.result(
            out, file_sha256(out / "classification.parquet"), {
                "sankey": dg.MetadataValue.path(str(out / "sankey.html")),
                "sankey_volumes": dg.MetadataValue.json(flow.volumes),
                "threshold": threshold,
                "headline_counts": dg.MetadataValue.json(flow.headline),
                "edge_counts": dg.MetadataValue.md(markdown_table(flow.counts)),
                "persisting_share": dg.MetadataValue.json({k: round(v, 4) for k, v in flow.volumes["shares"].items()}),
                "matching_agreement": dg.MetadataValue.md(markdown_table(flow.agreement.set_index(["edge", "side"]))),
                "trajectories": dg.MetadataValue.md(markdown_table(flow.summary.set_index(["path", "start_node", "end_node"]))),
                **({"aligned_counts": dg.MetadataValue.md(markdown_table(aligned_counts))} if warm else {}),
            },
        )

    return feature_flow
