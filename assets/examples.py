"""The `features` group: evidence per node (`feature_examples`: top contexts, quantile samples,
histograms, density, top tokens, direct-path logit effects, the LLR of each feature's top-token
hypothesis), the lineage's case studies (`case_studies`) and the static feature pages (`feature_pages`)."""

import json
import time

import dagster as dg

from featureflow_dagster.serve import FEATURE_PAGES_DIR, REPORTS_DIR, reports_url
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.storage import file_sha256, tree_sha256
from featureflow_dagster.tokenizer import load_tokenizer, token_strings
from featureflow_dagster.assets.data import TOKENIZER, TOKENS
from featureflow_dagster.assets.flow import FEATURE_CORRELATION, flow_tables, read_flow
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.models import MODEL
from featureflow_dagster.assets.partitions import ancestry_token_edges, fan_out, model_key, node_partitions, own_models
from featureflow_dagster.assets.sae import SAE, require_passing_saes
from featureflow_dagster.assets.spec import Artefact, nodes

FEATURE_EXAMPLES = Artefact(
    "feature_examples", "features", "3", "feature_examples/{key}",
    settings=lambda lineage: nodes(lineage, lambda n: {**lineage.examples.model_dump(mode="json", exclude={"case_min_fired"}),
                                                       "context": lineage.sae_spec(n).context, "seed": lineage.seed_of(n)}),
    key_figures=("live_features", "median_llr_top_token"), kinds=frozenset({"pytorch", "safetensors", "parquet"}), on_device=True,
    description="Per SAE feature, over held-out windows of the node's data: top contexts, quantile samples, "
    "activation histogram and density, top tokens, direct-path logit effects, LLR of the top-token hypothesis.",
)
CASE_STUDIES = Artefact(
    "case_studies", "features", "1", "case_studies/case_studies.json",
    settings=lambda lineage: {None: {"min_fired": lineage.examples.case_min_fired}} if lineage.edges() else {},
    key_figures=("min_fired",), kinds=frozenset({"pandas"}),
    description="Horn & Elliott's Figures 3-4 for this lineage: per base-to-leaf path the feature persisting "
    "through every model with the highest mean r; per edge the disappearing feature with the highest LLR of "
    "its top-token hypothesis. Shown with highlighted contexts on the feature pages.",
)
FEATURE_PAGES = Artefact(
    "feature_pages", "features", "1", f"{REPORTS_DIR}/{FEATURE_PAGES_DIR}",
    settings=lambda lineage: {None: {}},  # nothing of the lineage file changes its bytes but what arrives from upstream
    key_figures=("pages", "megabytes"), kinds=frozenset({"html", "plotly"}), on_device=True,
    description="Static site under reports/features/: an index of every live feature (filter and sort by node, "
    "status, density, top token, best r), a page per feature with its evidence and its partners along the "
    "lineage, the case studies, and a Sankey whose nodes open their features. `featureflow reports` serves it.",
)
ARTEFACTS = [FEATURE_EXAMPLES, CASE_STUDIES, FEATURE_PAGES]


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    if not lineage.edges():
        return [_feature_examples(lineage), _feature_pages(lineage)]
    return [_feature_examples(lineage), _case_studies(lineage), _feature_pages(lineage)]


def _feature_examples(lineage: Lineage) -> dg.AssetsDefinition:
    deps = [dg.AssetDep("sae"), dg.AssetDep("tokens", partition_mapping=fan_out(ancestry_token_edges(lineage))),
            *own_models(lineage)]

    @FEATURE_EXAMPLES.asset(partitions_def=node_partitions(lineage), deps=deps)
    def feature_examples(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        from featureflow_dagster.blocks import load_blocks
        from featureflow_dagster.examples import direct_logit_effects, examples_for_node, feature_table, model_logit_path
        from featureflow_dagster.model import load_model
        from featureflow_dagster.plots import markdown_table
        from featureflow_dagster.sae import load_sae
        from safetensors.torch import save_file
        node = context.partition_key
        require_passing_saes(store, [node])
        dev = device.torch_device()
        sae, model = load_sae(SAE.at(store, node), dev), load_model(MODEL.at(store, node), dev)
        tok = load_tokenizer(TOKENIZER.at(store))
        blocks = [b for owner in lineage.data_ancestry(node) for b in load_blocks(TOKENS.at(store, owner), "validation").values()]
        started = time.perf_counter()
        ex = examples_for_node(model, sae, blocks, len(tok), lineage.examples, lineage.seed_of(node), dev, log=step_log(context))
        seconds = time.perf_counter() - started
        top, top_ids, bottom, bottom_ids = direct_logit_effects(sae.W_dec.detach().cpu(), model_logit_path(model, sae.cfg.hook_name),
                                                                k=lineage.examples.logit_k)
        table = feature_table(ex, token_strings(tok), top_ids)  # decoded: ' will', not 'Ġwill'
        out = FEATURE_EXAMPLES.at(store, node, fetch=False)
        with store.write_dir(out) as tmp:
            ex.save(tmp / "examples.safetensors")
            save_file({"top_values": top.contiguous(), "top_ids": top_ids.contiguous(), "bottom_values": bottom.contiguous(),
                       "bottom_ids": bottom_ids.contiguous()}, str(tmp / "logit_effects.safetensors"))
            table.to_parquet(tmp / "features.parquet", index=False)
        live = table[table["density"] > 0]
        summary = live.sort_values("density", ascending=False).head(15)[["feature", "density", "top_token", "top_token_mean", "llr_top_token", "top_logit"]]
        return FEATURE_EXAMPLES.result(
            out, file_sha256(out / "examples.safetensors"), {
                "pages": dg.MetadataValue.url(reports_url(f"features/index.html#node={node}")),
                "tokens": ex.tokens,
                "live_features": len(live),
                "median_llr_top_token": float(live["llr_top_token"].median()) if len(live) else float("nan"),
                "top_features_by_density": dg.MetadataValue.md(markdown_table(summary.set_index("feature"))),
                "seconds": round(seconds, 2),
                "tokens_per_second": round(ex.tokens / max(seconds, 1e-9)),
                "device": str(dev),
            },
        )

    return feature_examples


def _case_studies(lineage: Lineage) -> dg.AssetsDefinition:
    @CASE_STUDIES.asset(deps=[dg.AssetDep("feature_flow"), dg.AssetDep("feature_examples"), dg.AssetDep("tokenizer")])
    def case_studies_asset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        import numpy as np
        import pandas as pd
        from featureflow_dagster.flow import case_studies, describe_cases, trajectories
        from featureflow_dagster.plots import markdown_table
        tables = flow_tables(store, lineage)
        features = {n: pd.read_parquet(FEATURE_EXAMPLES.at(store, n) / "features.parquet") for n in lineage.node_names}
        min_fired = lineage.examples.case_min_fired
        scores = {n: np.where(t["fired"].to_numpy() >= min_fired, t["llr_top_token"].to_numpy(), np.nan) for n, t in features.items()}
        cases = case_studies(lineage, tables, trajectories(lineage, tables), scores, score_name="llr_top_token")
        tok = load_tokenizer(TOKENIZER.at(store))
        rows = describe_cases(cases, features, lambda i: tok.decode([i]))
        cases["min_fired"] = min_fired
        out = CASE_STUDIES.at(store)
        with store.write_file(out) as tmp:
            tmp.write_text(json.dumps(cases, indent=1))
        table = pd.DataFrame(rows, columns=["case", "features", "top tokens", "LLR", "r"]).set_index("case")
        return CASE_STUDIES.result(out, file_sha256(out), {"page": dg.MetadataValue.url(reports_url("features/case_studies.html")),
                                                           "cases": dg.MetadataValue.md(markdown_table(table)), "min_fired": min_fired})

    return case_studies_asset


def _feature_pages(lineage: Lineage) -> dg.AssetsDefinition:
    names = lineage.node_names
    has_edges = bool(lineage.edges())
    deps = [dg.AssetDep("feature_examples"), dg.AssetDep("sae"), dg.AssetDep("tokenizer"), *[dg.AssetDep(model_key(n)) for n in names]]
    if has_edges:
        deps += [dg.AssetDep("feature_correlation"), dg.AssetDep("feature_flow"), dg.AssetDep("case_studies")]
    if lineage.autointerp.enabled:
        deps.append(dg.AssetDep("autointerp"))  # its explanations appear on the pages
    if lineage.flow.crosscoder is not None:
        deps.append(dg.AssetDep("crosscoder"))  # its latents get pages beside the SAE features

    @FEATURE_PAGES.asset(deps=deps)
    def feature_pages(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster import site
        from featureflow_dagster.examples import load_evidence
        from featureflow_dagster.model import load_model
        from featureflow_dagster.sae import load_sae
        from featureflow_dagster.assets.autointerp import AUTOINTERP  # here: assets/autointerp.py imports this module

        require_passing_saes(store, names)
        started = time.perf_counter()
        dev = device.torch_device()
        log = step_log(context)
        evidence = []
        for n in names:
            evidence.append(load_evidence(n, FEATURE_EXAMPLES.at(store, n), load_model(MODEL.at(store, n), dev),
                                          load_sae(SAE.at(store, n), dev), dev, lineage.examples.batch_windows,
                                          AUTOINTERP.at(store, n) if lineage.autointerp.enabled else None))
            log(f"pages: encoded the examples' windows of {n}")
        vocab = token_strings(load_tokenizer(TOKENIZER.at(store)))
        if lineage.flow.crosscoder is not None:
            from featureflow_dagster.assets.flow import CROSSCODER

            for e in lineage.edges():
                evidence.append(site.crosscoder_evidence(e, CROSSCODER.at(store, e.key), vocab))
        tables = cases = volumes = None
        if has_edges:
            classification, traj, volumes = read_flow(store, "classification.parquet", "trajectories.parquet", "volumes.json")
            matches = {e: pd.read_parquet(FEATURE_CORRELATION.at(store, e.key) / "matches.parquet") for e in lineage.edges()}
            aligned = read_flow(store, "aligned_classification.parquet")[0] if lineage.flow.warm_start else None
            seeds = read_flow(store, "seed_null.parquet")[0] if lineage.seed_null_nodes() else None
            tables = site.LineageTables(lineage, matches, classification, traj, aligned, seeds)
            cases = json.loads(CASE_STUDIES.at(store).read_text())
        out = FEATURE_PAGES.at(store)
        with store.write_dir(out) as tmp:
            info = site.write_site(tmp, lineage.name, vocab, evidence, tables, cases,
                                   volumes, lineage.flow.threshold, store.plotly_js(), final=out, log=log)
        return FEATURE_PAGES.result(
            out / "index.html", tree_sha256(out), {
                "index": dg.MetadataValue.url(reports_url("features/index.html")),
                "sankey": dg.MetadataValue.url(reports_url("features/sankey.html")) if has_edges else None,
                "case_studies": dg.MetadataValue.url(reports_url("features/case_studies.html")) if has_edges else None,
                "pages": info["pages"],
                "data_files": info["data_files"],
                "megabytes": round(info["bytes"] / 1e6, 2),
                "seconds": round(time.perf_counter() - started, 2),
                "serve": "featureflow reports (or featureflow ui) serves them on " + reports_url(),
                "device": str(dev),
            },
        )

    return feature_pages
