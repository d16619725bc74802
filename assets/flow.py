"""Feature-flow assets (Horn & Elliott 2024, §3): per lineage edge, both SAEs' codes on shared
tokens and their exact correlation; over the whole lineage, persistence, trajectories, headline
counts and the Sankey diagram."""

import json
import shutil
from typing import TYPE_CHECKING

import dagster as dg

from featureflow_dagster.lineage import Edge, Lineage
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.storage import file_sha256, tree_sha256
from featureflow_dagster.assets.data import TOKENS
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.models import MODEL
from featureflow_dagster.assets.partitions import edge_ends, edge_partitions, fan_out, per_node_models
from featureflow_dagster.assets.sae import ACTIVATION_STORE, ALIGNED_FILE, SAE, WARM_SAE, require_passing_saes
from featureflow_dagster.assets.spec import Artefact, edges
from featureflow_dagster.serve import reports_url

if TYPE_CHECKING:  # heavy modules are imported where an asset runs, not when the definitions are built
    import pandas as pd

FEATURE_ACTIVATIONS = Artefact(
    "feature_activations", "flow", "1", "feature_activations/{key}",
    settings=lambda lineage: edges(lineage, lineage.edge_activation_settings),
    key_figures=("parent_l0", "child_l0"), kinds=frozenset({"pytorch", "safetensors"}), on_device=True,
    description="Parent and child SAE codes (sparse: indices and values per token) on the same tokens, drawn "
    "uniformly from the data both models were trained on, with token ids and their origin.",
)
FEATURE_CORRELATION = Artefact(
    "feature_correlation", "flow", "2", "feature_correlation/{key}",  # 2: one_to_one.parquet
    settings=lambda lineage: edges(lineage, lambda p, c: {"top_k": lineage.flow.top_k, "full_matrix": lineage.flow.full_matrix,
                                                          "one_to_one_max": lineage.flow.one_to_one_max}),
    key_figures=("at_threshold/parent_persisting", "parent_features"), kinds=frozenset({"scipy", "parquet"}), on_device=True,
    description="Exact Pearson r over token positions between every parent and child feature (sparse-aware, "
    "float64), each feature's top-k partners both ways; the data-free decoder-cosine matches; and one-to-one pairs "
    "(the Hungarian assignment on r and on decoder cosine, one_to_one.parquet).",
)
FEATURE_FLOW = Artefact(
    "feature_flow", "flow", "2", "feature_flow",
    # warm_start only where set, so that a lineage without it keeps its version
    settings=lambda lineage: {None: {"threshold": lineage.flow.threshold, **({"warm_start": True} if lineage.flow.warm_start else {}),
                                     **({"null_seeds": lineage.flow.null_seeds} if lineage.flow.null_seeds else {}),
                                     **({"crosscoder": True} if lineage.flow.crosscoder else {})}},
    key_figures=("persisting_share",), kinds=frozenset({"pandas", "plotly"}),
    description="Persisting, disappearing and emerging features of every edge (splits and merges kept), "
    "trajectories along every base-to-leaf path, the paper's headline counts and the Sankey diagram; with "
    "flow.warm_start also every edge classified by aligned pairs (aligned_classification.parquet, aligned_counts.parquet).",
)
SEED_NULL = Artefact(
    "seed_null", "flow", "1", "seed_null/{key}",
    # no threshold here: the flow applies it, so changing it re-trains nothing
    settings=lambda lineage: {n: {"sae": lineage.sae_spec(n).versioned(), "top_k": lineage.flow.top_k,
                                  "one_to_one_max": lineage.flow.one_to_one_max,
                                  "seeds": [lineage.null_seed(n, k) for k in range(1, lineage.flow.null_seeds + 1)],
                                  **lineage.edge_activation_settings(n, n)} for n in lineage.seed_null_nodes()},
    key_figures=("reproducibility", "best_r_median"), kinds=frozenset({"pytorch", "parquet"}), on_device=True,
    description="flow.null_seeds (Paulo & Belrose 2025): per node, SAEs of the same recipe on the same store with other "
    "seeds, each correlated with the node's SAE on the same tokens exactly as an edge is (seed_<k>/: the SAE and "
    "matches.parquet). The flow reads which features SAE training reproduces.",
)
CROSSCODER = Artefact(
    "crosscoder", "flow", "2", "crosscoder/{key}",
    settings=lambda lineage: edges(lineage, lambda p, c: {"crosscoder": lineage.flow.crosscoder.model_dump(mode="json"),
                                                          "examples": lineage.examples.model_dump(mode="json", include={"top_k", "samples", "logit_k"}),
                                                          "seed": lineage.seed_of(c) + lineage.flow.seed_offset + 1,
                                                          "context": lineage.flow_context(p), "shared_data": lineage.shared_data(p, c)})
    if lineage.flow.crosscoder else {},
    key_figures=("parent_only", "child_only", "explained_variance_child"), kinds=frozenset({"pytorch", "parquet"}), on_device=True,
    description="flow.crosscoder: a BatchTopK crosscoder over the parent's and the child's activations on windows of the data "
    "both share (Minder et al. 2025): per latent its relative decoder norm Δ, class (parent-only, shared, child-only), "
    "decoder cosine, Latent Scaling ν of the specific latents, and its best-correlated SAE feature in each model "
    "(latents.parquet; the weights in crosscoder.safetensors), and the evidence of every latent over held-out windows in "
    "both models (examples, codes, logit effects) for its page. feature_flow compares its classes with the SAE flow.",
)
CROSSCODER_CHECKS = {
    "crosscoder_explained_variance": "Each model's explained variance on the held-out tokens at least "
                                     "flow.crosscoder.explained_variance_min (not blocking).",
    "crosscoder_dead_fraction": "At most flow.crosscoder.dead_fraction_max of the latents never fire on the held-out "
                                "tokens (not blocking).",
}
ARTEFACTS = [FEATURE_ACTIVATIONS, FEATURE_CORRELATION, FEATURE_FLOW, SEED_NULL, CROSSCODER]


# what feature_flow writes beside classification.parquet with flow.warm_start or flow.null_seeds; the pages read them
EXTRA_FLOW_FILES = ("aligned_classification.parquet", "aligned_counts.parquet", "seed_null.parquet", "null_counts.parquet",
                    "crosscoder_agreement.parquet")


def flow_version(folder, extra: list[str]) -> str:
    """feature_flow's data version: the classification's sha256, and with `extra` files (warm start, seed null) a hash
    over them all, so that a downstream asset reading them goes stale when they change (the Sankey's HTML, whose
    plot id is random, stays out). Without extras it is what it always was: existing stores stay fresh."""
    digest = file_sha256(folder / "classification.parquet")
    if not extra:
        return digest
    import hashlib

    files = [*sorted(extra), "volumes.json"]  # the volumes carry the null for the pages' Sankey
    return hashlib.sha256("|".join([digest, *(f"{f}:{file_sha256(folder / f)}" for f in files)]).encode()).hexdigest()


def read_flow(store: ArtifactStore, *files: str) -> list:
    """feature_flow's files by name: parquet files as tables, JSON files as data."""
    import pandas as pd
    folder = FEATURE_FLOW.at(store)
    return [pd.read_parquet(folder / f) if f.endswith(".parquet") else json.loads((folder / f).read_text()) for f in files]


def flow_tables(store: ArtifactStore, lineage: Lineage) -> dict:
    """Per edge (parent table, child table), read back from feature_flow's classification."""
    from featureflow_dagster.flow import tables_from_classification
    return tables_from_classification(lineage, *read_flow(store, "classification.parquet"))


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    if not lineage.edges():
        return []
    return [_feature_activations(lineage), _feature_correlation(lineage), _feature_flow(lineage),
            *([_seed_null(lineage)] if lineage.seed_null_nodes() else []), *([_crosscoder(lineage)] if lineage.flow.crosscoder else [])]


def _crosscoder(lineage: Lineage) -> dg.AssetsDefinition:
    pairs = edge_ends(lineage)
    token_edges = [(d, e.key) for e in lineage.edges() for d in lineage.shared_data(*e)]
    deps = [dg.AssetDep("tokens", partition_mapping=fan_out(token_edges)), dg.AssetDep("sae", partition_mapping=fan_out(pairs)),
            *per_node_models(pairs)]

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partitioned check specs are a Dagster preview
        check_specs = [dg.AssetCheckSpec(name, asset="crosscoder", blocking=False, partitions_def=edge_partitions(lineage),
                                         description=text) for name, text in CROSSCODER_CHECKS.items()]

    @CROSSCODER.asset(partitions_def=edge_partitions(lineage), deps=deps, check_specs=check_specs)
    def crosscoder(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        from featureflow_dagster.model import load_model
        from featureflow_dagster.sae import load_sae
        from safetensors.torch import save_file

        from featureflow_dagster.blocks import load_blocks
        from featureflow_dagster.crosscoder.edge import train_edge_crosscoder

        edge = Edge.parse(context.partition_key)
        require_passing_saes(store, edge)
        dev = device.torch_device()
        settings = CROSSCODER.settings(lineage)[edge.key]
        models = {side: load_model(MODEL.at(store, n), dev) for side, n in zip(("parent", "child"), edge)}
        saes = {side: load_sae(SAE.at(store, n), dev) for side, n in zip(("parent", "child"), edge)}
        blocks = [b for d in settings["shared_data"] for b in load_blocks(TOKENS.at(store, d), "train").values()]
        cc, latents, figures, evidence = train_edge_crosscoder(lineage.flow.crosscoder, models, saes, blocks, saes["parent"].cfg.hook_name,
                                                               settings["context"], settings["seed"], dev, log=step_log(context),
                                                               examples=lineage.examples)
        out = CROSSCODER.at(store, edge.key, fetch=False)
        with store.write_dir(out) as tmp:
            save_file({k: v.contiguous() for k, v in cc.state_dict().items()}, str(tmp / "crosscoder.safetensors"))
            latents.to_parquet(tmp / "latents.parquet", index=False)
            evidence.save(tmp)  # the latent pages' examples in both models (feature_pages)
        spec = lineage.flow.crosscoder
        ev = min(figures["explained_variance_parent"], figures["explained_variance_child"])
        checks = [
            dg.AssetCheckResult(check_name="crosscoder_explained_variance",
                                passed=spec.explained_variance_min is None or ev >= spec.explained_variance_min,
                                metadata={"value": round(ev, 4), "bound": spec.explained_variance_min, "edge": edge.label}),
            dg.AssetCheckResult(check_name="crosscoder_dead_fraction",
                                passed=spec.dead_fraction_max is None or figures["dead_fraction"] <= spec.dead_fraction_max,
                                metadata={"value": round(figures["dead_fraction"], 4), "bound": spec.dead_fraction_max, "edge": edge.label}),
        ]
        return CROSSCODER.result(out, file_sha256(out / "latents.parquet"), {
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()},
            "median_nu_error_child_only": float(latents.loc[latents["class"] == "child_only", "nu_error"].median()),
            "median_nu_error_parent_only": float(latents.loc[latents["class"] == "parent_only", "nu_error"].median()),
            "seed": settings["seed"], "device": str(dev)}, check_results=checks)

    return crosscoder


def seed_tables(store: ArtifactStore, lineage: Lineage) -> "dict[str, pd.DataFrame]":
    """Per node with a seed null, `flow.null.seed_table` at the lineage's threshold (from seed_null's matches)."""
    import pandas as pd
    from featureflow_dagster.flow.null import seed_table
    return {n: seed_table([pd.read_parquet(SEED_NULL.at(store, n) / f"seed_{k}" / "matches.parquet")
                           for k in range(1, lineage.flow.null_seeds + 1)], lineage.flow.threshold)
            for n in lineage.seed_null_nodes()}


def _seed_null(lineage: Lineage) -> dg.AssetsDefinition:
    names = lineage.seed_null_nodes()
    token_edges = [(d, n) for n in names for d in lineage.shared_data(n, n)]
    deps = [dg.AssetDep("tokens", partition_mapping=fan_out(token_edges)), dg.AssetDep("sae"), dg.AssetDep("activation_store"),
            *per_node_models([(n, n) for n in names])]

    @SEED_NULL.asset(partitions_def=dg.StaticPartitionsDefinition(names), deps=deps)
    def seed_null(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.activations import ActivationStore
        from featureflow_dagster.flow import correlate_edge, encode_edge, read_code_chunks
        from featureflow_dagster.flow.null import seed_summary, seed_table
        from featureflow_dagster.model import load_model
        from featureflow_dagster.sae import load_sae
        from featureflow_dagster.sae.fit import fit_sae, save_fitted
        node = context.partition_key
        require_passing_saes(store, [node])
        dev, log = device.torch_device(), step_log(context)
        model, sae = load_model(MODEL.at(store, node), dev), load_sae(SAE.at(store, node), dev)
        acts = ActivationStore(ACTIVATION_STORE.at(store, node))
        spec, settings = lineage.sae_spec(node), lineage.edge_activation_settings(node, node)
        out = SEED_NULL.at(store, node, fetch=False)
        quality, matches = {}, []
        with store.write_dir(out) as tmp:
            for k in range(1, lineage.flow.null_seeds + 1):
                seed = lineage.null_seed(node, k)
                fitted = fit_sae(spec, acts, model, seed, dev, f"{lineage.name}/{node} seed null {k}",
                                 checkpoint_path=store.checkpoint_path("seed_null", f"{node}_{k}"), log=log)
                save_fitted(fitted, tmp / f"seed_{k}")
                twin = fitted.sae.to(dev).eval()
                codes = tmp / f"codes_{k}"  # the codes are only the correlation's input: not kept
                manifest, _, _ = encode_edge(Edge(node, node), {"parent": model, "child": model}, {"parent": sae, "child": twin},
                                             settings, {d: TOKENS.at(store, d) for d in settings["shared_data"]}, codes, dev,
                                             batch_windows=lineage.flow.batch_windows, log=log)
                m, n = sae.cfg.d_sae, twin.cfg.d_sae
                files = [e["name"] for e in manifest["files"]]
                pairs = correlate_edge(lambda: read_code_chunks(codes, files, m, n), m, n, sae.W_dec.detach(), twin.W_dec.detach(),
                                       lineage.flow, tmp / f"seed_{k}", log=log).one_to_one
                shutil.rmtree(codes)
                matches.append(pd.read_parquet(tmp / f"seed_{k}" / "matches.parquet"))
                quality[f"seed_{k}"] = {"seed": seed, **{q: round(float(fitted.values[q]), 4) for q in ("l0", "explained_variance", "dead_fraction")},
                                        **({f"one_to_one_mean_{method}": round(fig["mean_similarity"], 4) for method, fig in pairs.items()}
                                           if pairs else {})}
        for k in range(1, lineage.flow.null_seeds + 1):  # resumable state, removed when the asset completes (store.py)
            store.retire_checkpoint("seed_null", f"{node}_{k}")
        summary = seed_summary(seed_table(matches, lineage.flow.threshold))
        return SEED_NULL.result(out, tree_sha256(out), {
            **{k: v for k, v in summary.items() if k != "reproducibility"},
            "reproducibility": summary["reproducibility"], "at_threshold": lineage.flow.threshold,
            "seed_saes": dg.MetadataValue.json(quality), "tokens": manifest["tokens"], "device": str(dev)})

    return seed_null


def _feature_activations(lineage: Lineage) -> dg.AssetsDefinition:
    pairs = edge_ends(lineage)
    token_edges = [(d, e.key) for e in lineage.edges() for d in lineage.shared_data(*e)]
    deps = [dg.AssetDep("tokens", partition_mapping=fan_out(token_edges)), dg.AssetDep("sae", partition_mapping=fan_out(pairs)),
            *per_node_models(pairs)]

    @FEATURE_ACTIVATIONS.asset(partitions_def=edge_partitions(lineage), deps=deps)
    def feature_activations(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        from featureflow_dagster.flow import encode_edge
        from featureflow_dagster.model import load_model, weights_hash
        from featureflow_dagster.sae import load_sae
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
        from featureflow_dagster.flow import correlate_edge, read_code_chunks
        from featureflow_dagster.plots import markdown_table
        from featureflow_dagster.sae import load_sae
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
                **({f"one_to_one/{method}/{k}": v for method, fig in result.one_to_one.items() for k, v in fig.items()}
                   if result.one_to_one else {"one_to_one": f"skipped: more than flow.one_to_one_max = {f.one_to_one_max} features"}),
                "full_matrix": f.full_matrix,
                "codes_manifest_sha256": file_sha256(codes / "manifest.json"),
            },
        )

    return feature_correlation


def _feature_flow(lineage: Lineage) -> dg.AssetsDefinition:
    threshold, warm = lineage.flow.threshold, lineage.flow.warm_start

    nulls = bool(lineage.seed_null_nodes())
    crosscoders = lineage.flow.crosscoder is not None

    @FEATURE_FLOW.asset(deps=[dg.AssetDep("feature_correlation"), *([dg.AssetDep("warm_sae")] if warm else []),
                              *([dg.AssetDep("seed_null")] if nulls else []), *([dg.AssetDep("crosscoder")] if crosscoders else [])])
    def feature_flow(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.flow import classify_aligned_lineage, classify_lineage
        from featureflow_dagster.flow.null import null_table, seed_summary
        from featureflow_dagster.plots import flow_sankey_figure, markdown_table, write_html
        require_passing_saes(store, lineage.node_names)
        matches = {e: pd.read_parquet(FEATURE_CORRELATION.at(store, e.key) / "matches.parquet") for e in lineage.edges()}
        flow = classify_lineage(lineage, matches, threshold)
        aligned = aligned_counts = None
        if warm:
            aligned, aligned_counts = classify_aligned_lineage(
                lineage, flow, {e: pd.read_parquet(WARM_SAE.at(store, e.key) / ALIGNED_FILE) for e in lineage.edges()}, threshold)
        seeds = seed_tables(store, lineage) if nulls else {}
        null_counts = null_table(lineage, flow, seeds) if nulls else None
        if nulls:  # the Sankeys (here and on the pages) write the null under the shares
            flow.volumes["null"] = {edge: {k: int(row[k]) for k in ("parent_persisting_reproducible", "null_expected_persisting")}
                                    for edge, row in null_counts.iterrows() if row["null_expected_persisting"] == row["null_expected_persisting"]}
        cc_agreement = None
        if crosscoders:  # the crosscoder's classes beside the SAE flow's statuses, per edge
            from featureflow_dagster.crosscoder.edge import agreement as cc_agree

            cc_agreement = pd.concat([cc_agree(pd.read_parquet(CROSSCODER.at(store, e.key) / "latents.parquet"), *flow.tables[e], threshold)
                                      .reset_index().assign(edge=e.label) for e in lineage.edges()], ignore_index=True)
        out = FEATURE_FLOW.at(store)
        with store.write_dir(out) as tmp:
            flow.write(tmp)
            if crosscoders:
                cc_agreement.to_parquet(tmp / "crosscoder_agreement.parquet", index=False)
            if nulls:
                pd.concat([t.assign(node=n) for n, t in seeds.items()], ignore_index=True).to_parquet(tmp / "seed_null.parquet", index=False)
                null_counts.reset_index().to_parquet(tmp / "null_counts.parquet", index=False)
            if warm:
                aligned.to_parquet(tmp / "aligned_classification.parquet", index=False)
                aligned_counts.reset_index().to_parquet(tmp / "aligned_counts.parquet", index=False)
            write_html(flow_sankey_figure(flow.volumes, threshold, f"{lineage.name}: feature flow"), tmp / "sankey.html",
                       store.plotly_js(), final=out / "sankey.html")
        return FEATURE_FLOW.result(
            out, flow_version(out, [f for f in EXTRA_FLOW_FILES if (out / f).exists()]), {
                "sankey": dg.MetadataValue.url(reports_url("features/sankey.html")),  # feature_pages' linked copy
                "sankey_file": dg.MetadataValue.path(str(out / "sankey.html")),
                "sankey_volumes": dg.MetadataValue.json(flow.volumes),
                "threshold": threshold,
                "headline_counts": dg.MetadataValue.json(flow.headline),
                "edge_counts": dg.MetadataValue.md(markdown_table(flow.counts)),
                "persisting_share": dg.MetadataValue.json({k: round(v, 4) for k, v in flow.volumes["shares"].items()}),
                "matching_agreement": dg.MetadataValue.md(markdown_table(flow.agreement.set_index(["edge", "side"]))),
                "trajectories": dg.MetadataValue.md(markdown_table(flow.summary.set_index(["path", "start_node", "end_node"]))),
                **({"aligned_counts": dg.MetadataValue.md(markdown_table(aligned_counts))} if warm else {}),
                **({"null_counts": dg.MetadataValue.md(markdown_table(null_counts)),
                    "seed_reproducibility": dg.MetadataValue.json({n: round(seed_summary(t)["reproducibility"], 4) for n, t in seeds.items()})}
                   if nulls else {}),
                **({"crosscoder_agreement": dg.MetadataValue.md(markdown_table(cc_agreement.set_index(["edge", "class"])))}
                   if crosscoders else {}),
            },
        )

    return feature_flow
