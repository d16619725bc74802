"""The `features` group: evidence per node (`feature_examples`: top contexts, quantile samples,
histograms, density, top tokens, direct-path logit effects, the LLR of each feature's top-token
hypothesis), the lineage's case studies (`case_studies`) and the static feature pages (`feature_pages`)."""

import hashlib
import json
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from featureflow_dagster.blocks import load_blocks
from featureflow_dagster.examples import collect_examples, direct_logit_effects, feature_llr, model_logit_path
from featureflow_dagster.flow import case_studies, edge_windows, tables_from_classification, trajectories
from featureflow_dagster.serve import reports_url
from featureflow_dagster import site
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.model import load_model
from featureflow_dagster.plots import markdown_table
from featureflow_dagster.provenance import versions
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.sae import load_sae
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.tokenizer import load_tokenizer, token_strings
from featureflow_dagster.assets.guard import locked, require_passing_saes, step_log
from featureflow_dagster.assets.config import CODE_VERSIONS, ON_DEVICE, config_dep
from featureflow_dagster.assets.partitions import ancestry_token_edges, fan_out, model_key, node_partitions, per_node_models


def build_examples_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    if not lineage.edges():
        return [_feature_examples(lineage), _feature_pages(lineage)]
    return [_feature_examples(lineage), _case_studies(lineage), _feature_pages(lineage)]


def _feature_examples(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names
    deps = [dg.AssetDep("sae"), dg.AssetDep("tokens", partition_mapping=fan_out(ancestry_token_edges(lineage))),
            *per_node_models([(n, n) for n in nodes]), config_dep("feature_examples", nodes)]

    @dg.asset(
        partitions_def=node_partitions(lineage),
        deps=deps,
        group_name="features",
        kinds={"pytorch", "safetensors", "parquet"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["feature_examples"],
        description="Per SAE feature, over held-out windows of the node's data: top contexts, quantile samples, "
        "activation histogram and density, top tokens, direct-path logit effects, LLR of the top-token hypothesis.",
    )
    @locked
    def feature_examples(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        node = context.partition_key
        require_passing_saes(store, [node])
        spec = lineage.examples
        dev = device.torch_device()
        sae = load_sae(store.sae_dir(node), dev)
        model = load_model(store.model_dir(node), dev)
        tok = load_tokenizer(store.tokenizer_dir())
        blocks = [b for owner in lineage.data_ancestry(node)
                  for b in load_blocks(store.tokens_path(owner), "validation").values()]
        ctx = sae.cfg.context_size
        available = sum(b.shape[0] for b in blocks) * (blocks[0].shape[1] // ctx) * ctx
        windows, _ = edge_windows(blocks, ctx, min(spec.tokens, available), lineage.seed_of(node))
        started = time.perf_counter()
        ex = collect_examples(model, sae, windows, dev, vocab_size=len(tok), top_k=spec.top_k, samples=spec.samples,
                              batch_windows=spec.batch_windows, seed=lineage.seed_of(node), log=step_log(context))
        seconds = time.perf_counter() - started
        top, top_ids, bottom, bottom_ids = direct_logit_effects(sae.W_dec.detach().cpu(), *(t.cpu() for t in model_logit_path(model)),
                                                                k=spec.logit_k)
        table = _feature_table(ex, tok, top_ids)
        out = store.examples_dir(node, fetch=False)
        with store.write_dir(out) as tmp:
            ex.save(tmp / "examples.safetensors")
            save_file({"top_values": top.contiguous(), "top_ids": top_ids.contiguous(), "bottom_values": bottom.contiguous(),
                       "bottom_ids": bottom_ids.contiguous()}, str(tmp / "logit_effects.safetensors"))
            table.to_parquet(tmp / "features.parquet", index=False)
        live = table[table["density"] > 0]
        summary = live.sort_values("density", ascending=False).head(15)[["feature", "density", "top_token", "top_token_mean", "llr_top_token", "top_logit"]]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(out / "examples.safetensors")),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "pages": dg.MetadataValue.url(reports_url(f"features/index.html#node={node}")),
                "tokens": ex.tokens,
                "live_features": len(live),
                "median_llr_top_token": float(live["llr_top_token"].median()) if len(live) else float("nan"),
                "top_features_by_density": dg.MetadataValue.md(markdown_table(summary.set_index("feature"))),
                "seconds": round(seconds, 2),
                "tokens_per_second": round(ex.tokens / max(seconds, 1e-9)),
                "device": str(dev),
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return feature_examples


def _feature_table(ex, tok, top_ids: torch.Tensor) -> pd.DataFrame:
    """One row per feature: density, max activation, top token by mean activation and its LLR, top logit."""
    rows = []
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    for f in range(ex.fired.numel()):
        best = ex.top_tokens(f, n=1, min_count=5) or ex.top_tokens(f, n=1)
        token, mean = (best[0][0], best[0][1]) if best else (-1, float("nan"))
        rows.append({
            "feature": f, "density": float(ex.density[f]), "fired": int(ex.fired[f]), "max_activation": float(ex.top_values[f, 0]),
            "top_token_id": token, "top_token": vocab[token] if token >= 0 else "", "top_token_mean": mean,
            "llr_top_token": feature_llr(ex, f, {token}) if token >= 0 else float("nan"),
            "top_logit": vocab[int(top_ids[f, 0])],
        })
    return pd.DataFrame(rows).astype({"density": np.float64})


def _flow_tables(store: ArtifactStore, lineage: Lineage) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Per edge (parent table, child table) from feature_flow's classification, the classification, the trajectories."""
    folder = store.feature_flow_dir()
    cls = pd.read_parquet(folder / "classification.parquet")
    return tables_from_classification(lineage, cls), cls, pd.read_parquet(folder / "trajectories.parquet")


def _case_studies(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names

    @dg.asset(
        name="case_studies",
        deps=[dg.AssetDep("feature_flow"), dg.AssetDep("feature_examples"), dg.AssetDep("tokenizer"), config_dep("case_studies")],
        group_name="features",
        kinds={"pandas"},
        code_version=CODE_VERSIONS["case_studies"],
        description="Horn & Elliott's Figures 3-4 for this lineage: per base-to-leaf path the feature persisting "
        "through every model with the highest mean r; per edge the disappearing feature with the highest LLR of "
        "its top-token hypothesis. Shown with highlighted contexts on the feature pages.",
    )
    @locked
    def case_studies_asset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        tables, _, _ = _flow_tables(store, lineage)
        features = {n: pd.read_parquet(store.examples_dir(n) / "features.parquet") for n in nodes}
        min_fired = lineage.examples.case_min_fired
        scores = {n: np.where(t["fired"].to_numpy() >= min_fired, t["llr_top_token"].to_numpy(), np.nan)
                  for n, t in features.items()}
        cases = case_studies(lineage, tables, trajectories(lineage, tables), scores, score_name="llr_top_token")
        tok = load_tokenizer(store.tokenizer_dir())

        def describe(node: str, f: int) -> dict:
            row = features[node].iloc[f]
            return {"node": node, "feature": f, "top_token": tok.decode([int(row["top_token_id"])]) if row["top_token_id"] >= 0 else "",
                    "llr_top_token": float(row["llr_top_token"]), "density": float(row["density"])}

        rows = []
        for path, c in cases["persisting"].items():
            if c is not None:
                c["evidence"] = [describe(n, f) for n, f in zip(c["nodes"], c["features"])]
                rows.append({"case": "persists " + path.replace(">", " → "), "features": " → ".join(f"{n}#{f}" for n, f in zip(c["nodes"], c["features"])),
                             "top tokens": " / ".join(repr(e["top_token"]) for e in c["evidence"]),
                             "LLR": " / ".join(f"{e['llr_top_token']:.2f}" for e in c["evidence"]),
                             "r": " / ".join(f"{r:.3f}" for r in c["r"])})
        for edge, d in cases["disappearing"].items():
            if d is not None:
                d["evidence"] = [describe(d["parent"], d["feature"]), describe(d["child"], d["best_partner"])]
                rows.append({"case": "disappears " + edge.replace("->", " → "), "features": f"{d['parent']}#{d['feature']} (best: {d['child']}#{d['best_partner']})",
                             "top tokens": " / ".join(repr(e["top_token"]) for e in d["evidence"]),
                             "LLR": " / ".join(f"{e['llr_top_token']:.2f}" for e in d["evidence"]), "r": f"{d['best_r']:.3f}"})
        cases["min_fired"] = min_fired
        out = store.case_studies_path()
        with store.write_file(out) as tmp:
            tmp.write_text(json.dumps(cases, indent=1))
        table = pd.DataFrame(rows, columns=["case", "features", "top tokens", "LLR", "r"]).set_index("case")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(out)),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "page": dg.MetadataValue.url(reports_url("features/case_studies.html")),
                "cases": dg.MetadataValue.md(markdown_table(table)),
                "min_fired": min_fired,
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return case_studies_asset


def _feature_pages(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names
    has_edges = bool(lineage.edges())
    deps = [dg.AssetDep("feature_examples"), dg.AssetDep("sae"), dg.AssetDep("tokenizer"),
            *[dg.AssetDep(model_key(n)) for n in nodes], config_dep("feature_pages")]
    if has_edges:
        deps += [dg.AssetDep("feature_correlation"), dg.AssetDep("feature_flow"), dg.AssetDep("case_studies")]
    if lineage.autointerp.enabled:
        deps.append(dg.AssetDep("autointerp"))  # its explanations appear on the pages

    @dg.asset(
        deps=deps,
        group_name="features",
        kinds={"html", "plotly"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["feature_pages"],
        description="Static site under reports/features/: an index of every live feature (filter and sort by node, "
        "status, density, top token, best r), a page per feature with its evidence and its partners along the "
        "lineage, the case studies, and a Sankey whose nodes open their features. `featureflow reports` serves it.",
    )
    @locked
    def feature_pages(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        require_passing_saes(store, nodes)
        started = time.perf_counter()
        dev = device.torch_device()
        log = step_log(context)
        evidence = []
        for n in nodes:
            evidence.append(site.load_evidence(n, store.examples_dir(n), load_model(store.model_dir(n), dev),
                                               load_sae(store.sae_dir(n), dev), dev, lineage.examples.batch_windows,
                                               store.autointerp_dir(n) if lineage.autointerp.enabled else None))
            log(f"pages: encoded the examples' windows of {n}")
        vocab = token_strings(load_tokenizer(store.tokenizer_dir()))
        tables = cases = volumes = None
        if has_edges:
            _, cls, traj = _flow_tables(store, lineage)
            matches = {(p, c): pd.read_parquet(store.feature_correlation_dir(f"{p}__{c}") / "matches.parquet") for p, c in lineage.edges()}
            tables = site.LineageTables(lineage, matches, cls, traj)
            cases = json.loads((store.case_studies_path()).read_text())
            volumes = json.loads((store.feature_flow_dir() / "volumes.json").read_text())
        out = store.feature_pages_dir()
        with store.write_dir(out) as tmp:
            info = site.write_site(tmp, lineage.name, vocab, evidence, tables, cases, volumes, lineage.flow.threshold,
                                   store.plotly_js(), final=out, log=log)
        seconds = time.perf_counter() - started
        digest = _tree_hash(out)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                "index": dg.MetadataValue.url(reports_url("features/index.html")),
                "sankey": dg.MetadataValue.url(reports_url("features/sankey.html")) if has_edges else None,
                "case_studies": dg.MetadataValue.url(reports_url("features/case_studies.html")) if has_edges else None,
                "path": dg.MetadataValue.path(str(out / "index.html")),
                "pages": info["pages"],
                "data_files": info["data_files"],
                "megabytes": round(info["bytes"] / 1e6, 2),
                "seconds": round(seconds, 2),
                "serve": "featureflow reports (or featureflow ui) serves them on " + reports_url(),
                "device": str(dev),
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return feature_pages


def _tree_hash(folder: Path) -> str:
    """One hash over every file of a folder (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(bytes.fromhex(file_sha256(path)))
    return h.hexdigest()
