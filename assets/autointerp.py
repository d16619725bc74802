"""The `autointerp` group: LLM explanations and simulation scores per node (Bills et al. 2023), off
unless the lineage's `autointerp: enabled: true`."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import numpy as np
import pandas as pd

from featureflow_dagster import site
from featureflow_dagster.autointerp import (
    LLMError,
    Price,
    choose_features,
    estimate,
    explain_and_score,
    feature_groups,
    inactive_records,
    records_from_evidence,
    uncached_requests,
)
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.model import load_model
from featureflow_dagster.plots import markdown_table, score_histogram_figure, write_html
from featureflow_dagster.provenance import versions
from featureflow_dagster.resources import ArtifactStore, DeviceResource, LLMResource
from featureflow_dagster.sae import load_sae
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.tokenizer import load_tokenizer, token_strings
from featureflow_dagster.assets.guard import locked, require_passing_saes, step_log
from featureflow_dagster.assets.config import CODE_VERSIONS, ON_DEVICE, config_dep
from featureflow_dagster.assets.partitions import node_partitions, per_node_models


def build_autointerp_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    return [_autointerp(lineage), _autointerp_summary(lineage)] if lineage.autointerp.enabled else []


def _classification(store: ArtifactStore, lineage: Lineage) -> pd.DataFrame | None:
    return pd.read_parquet(store.feature_flow_dir() / "classification.parquet") if lineage.edges() else None


def _autointerp(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names
    spec = lineage.autointerp
    deps = [dg.AssetDep("feature_examples"), dg.AssetDep("sae"), dg.AssetDep("tokenizer"),
            *per_node_models([(n, n) for n in nodes]), config_dep("autointerp", nodes)]
    if lineage.edges():
        deps.append(dg.AssetDep("feature_flow"))

    @dg.asset(
        partitions_def=node_partitions(lineage),
        deps=deps,
        group_name="autointerp",
        kinds={"openai", "parquet"},
        **ON_DEVICE,
        code_version=CODE_VERSIONS["autointerp"],
        description="Per node, LLM explanations of a seeded choice of features (persisting ones and as many others) "
        "and their simulation scores (Bills et al. 2023), with every answer cached and the cost capped.",
    )
    @locked
    def autointerp(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource, llm: LLMResource
                   ) -> dg.MaterializeResult:
        node = context.partition_key
        require_passing_saes(store, [node])
        price = Price(spec.prompt_usd_per_mtok, spec.completion_usd_per_mtok)
        cache = store.llm_cache_dir()
        try:
            client = llm.client(cache, price)
            client.check()
        except LLMError as e:
            raise dg.Failure(description=str(e), allow_retries=False) from None
        dev = device.torch_device()
        ev = site.load_evidence(node, store.examples_dir(node), load_model(store.model_dir(node), dev),
                                load_sae(store.sae_dir(node), dev), dev, lineage.examples.batch_windows)
        vocab = token_strings(load_tokenizer(store.tokenizer_dir()))
        live = ev.table["density"].to_numpy() > 0
        persisting = np.array(feature_groups(_classification(store, lineage), node, range(live.size))) == "persisting"
        keep, others = choose_features(live, persisting, spec.features_per_node, lineage.seed_of(node))
        chosen = keep + others
        records = {f: records_from_evidence(ev, f, vocab, spec.explain_records, spec.score_records, lineage.seed_of(node))
                   for f in chosen}
        inactive = {f: inactive_records(ev, f, vocab, spec.score_records) if "detection" in spec.scorers else [] for f in chosen}
        max_act = {f: float(ev.examples.top_values[f, 0]) for f in chosen}
        seed = lineage.seed_of(node)
        # the cost of what is not cached yet, before any request: a cached explanation leads to its scoring requests
        pending = [req for f in chosen
                   for req in uncached_requests(client, *records[f], max_act[f], inactive[f], spec.scorers, seed)]
        est = estimate(pending, price)
        if est.usd > spec.max_usd or est.requests > spec.max_requests:
            raise dg.Failure(
                description=f"autointerp[{node}] would send {est.describe()}, above the cap (autointerp.max_usd = "
                f"{spec.max_usd}, autointerp.max_requests = {spec.max_requests}); raise them in the lineage file's "
                "`autointerp:` section or lower autointerp.features_per_node",
                allow_retries=False)
        log = step_log(context)
        log(f"autointerp: {len(chosen)} features of {node}, {est.describe()} not cached")
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=llm.max_in_flight) as pool:
            results = list(pool.map(lambda f: explain_and_score(client, *records[f], max_act[f], inactive[f], spec.scorers, seed),
                                    chosen))
        seconds = time.perf_counter() - started
        table = pd.DataFrame([{"feature": f, "persisting": f in set(keep), "explanation": r["explanation"], "score": r["score"],
                               "detection": r["detection"], "fuzzing": r["fuzzing"],
                               "records_scored": r["records_scored"], "malformed": len(r["malformed"]),
                               "simulation": r["simulation"]} for f, r in zip(chosen, results)])
        out = store.autointerp_dir(node)
        with store.write_dir(out) as tmp:
            table.to_parquet(tmp / "scores.parquet", index=False)
            (tmp / "usage.json").write_text(json.dumps(client.usage.as_dict(), indent=1))
            figure = score_histogram_figure(
                [("persisting", table.loc[table["persisting"], "score"], "#1f77b4"),
                 ("emerged / disappearing / others", table.loc[~table["persisting"], "score"], "#d62728")],
                f"{node}: explanation scores (Bills et al.), persisting vs other features")
            write_html(figure, tmp / "scores.html", store.plotly_js(), final=out / "scores.html")
        means = table.groupby("persisting")["score"].mean()
        scored = {k: float(table[k].mean()) for k in ("detection", "fuzzing") if k in spec.scorers}
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(out / "scores.parquet")),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "histogram": dg.MetadataValue.path(str(out / "scores.html")),
                "features": len(chosen), "persisting_features": len(keep),
                "mean_score_persisting": float(means.get(True, float("nan"))),
                "mean_score_others": float(means.get(False, float("nan"))),
                **{f"mean_{k}": v for k, v in scored.items()},
                "scorers": ", ".join(spec.scorers),
                "usage": dg.MetadataValue.json(client.usage.as_dict()),
                "requests": client.usage.requests, "cache_hits": client.usage.cache_hits, "usd": round(client.usage.usd, 6),
                "estimate_before_run": est.describe(),
                "model": llm.model, "base_url": llm.base_url,
                "seconds": round(seconds, 2),
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return autointerp


def _autointerp_summary(lineage: Lineage) -> dg.AssetsDefinition:
    deps = [dg.AssetDep("autointerp"), config_dep("autointerp_summary")]
    if lineage.edges():
        deps.append(dg.AssetDep("feature_flow"))

    @dg.asset(
        deps=deps,
        group_name="autointerp",
        kinds={"plotly", "parquet"},
        code_version=CODE_VERSIONS["autointerp_summary"],
        description="Explanation scores over the lineage, persisting against emerged and disappearing features "
        "(Horn & Elliott's comparison of score histograms).",
    )
    @locked
    def autointerp_summary(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        cls = _classification(store, lineage)
        frames = []
        for node in lineage.node_names:
            t = pd.read_parquet(store.autointerp_dir(node) / "scores.parquet")
            frames.append(t.assign(node=node, group=feature_groups(cls, node, t["feature"])))
        table = pd.concat(frames, ignore_index=True)
        fig = score_histogram_figure(
            [(g, table.loc[table["group"] == g, "score"], color)
             for g, color in (("persisting", "#1f77b4"), ("emerged", "#2ca02c"), ("disappearing", "#d62728"), ("other", "#7f7f7f"))],
            f"{lineage.name}: explanation scores by feature fate")
        out = store.autointerp_summary_path()
        with store.write_file(out) as tmp:
            table.to_parquet(tmp, index=False)
        page = store.report_dir("autointerp", "lineage") / "scores.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        write_html(fig, page, store.plotly_js())
        stats = table.groupby("group").agg(features=("feature", "size"), simulation_mean=("score", "mean"),
                                           simulation_median=("score", "median"), detection_mean=("detection", "mean"),
                                           fuzzing_mean=("fuzzing", "mean"))
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(out)),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "histogram": dg.MetadataValue.path(str(page)),
                "scores_by_group": dg.MetadataValue.md(markdown_table(stats)),
                "features": len(table),
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return autointerp_summary
