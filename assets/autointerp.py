"""The `autointerp` group: LLM explanations and simulation scores per node (Bills et al. 2023), off
unless the lineage's `autointerp: enabled: true`."""

import json
import time
from typing import TYPE_CHECKING

import dagster as dg

from featureflow_dagster.lineage import Lineage
from featureflow_dagster.resources import ArtifactStore, DeviceResource, LLMResource
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.tokenizer import load_tokenizer, token_strings
from featureflow_dagster.assets.data import TOKENIZER
from featureflow_dagster.assets.examples import FEATURE_EXAMPLES
from featureflow_dagster.assets.flow import read_flow
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.models import MODEL
from featureflow_dagster.assets.partitions import node_partitions, own_models
from featureflow_dagster.assets.sae import SAE, require_passing_saes
from featureflow_dagster.assets.spec import Artefact, nodes
from featureflow_dagster.serve import reports_url

if TYPE_CHECKING:  # heavy modules are imported where an asset runs, not when the definitions are built
    import pandas as pd

# timeouts, concurrency and retries change how requests are sent, not what they ask
_HOW = {"timeout", "max_in_flight", "retries", "enabled", "api_key_env"}
# and prices and caps say how much may be spent, not what is asked
_HOW |= {"prompt_usd_per_mtok", "completion_usd_per_mtok", "free", "max_usd", "max_usd_lineage", "max_requests", "tokenizer"}

AUTOINTERP = Artefact(
    "autointerp", "autointerp", "1", "autointerp/{key}",
    settings=lambda lineage: nodes(lineage, lambda n: {**lineage.autointerp.model_dump(mode="json", exclude=_HOW),
                                                       "seed": lineage.seed_of(n)}) if lineage.autointerp.enabled else {},
    key_figures=("requests", "cache_hits", "usd", "mean_score_persisting", "mean_score_others"),
    kinds=frozenset({"openai", "parquet"}), on_device=True,
    description="Per node, LLM explanations of a seeded choice of features (persisting ones and as many others) "
    "and their simulation scores (Bills et al. 2023), with every answer cached and the cost capped.",
)
AUTOINTERP_SUMMARY = Artefact(
    "autointerp_summary", "autointerp", "1", "autointerp/summary.parquet",
    settings=lambda lineage: {None: {}} if lineage.autointerp.enabled else {},
    key_figures=("features",), kinds=frozenset({"plotly", "parquet"}),
    description="Explanation scores over the lineage, persisting against emerged and disappearing features "
    "(Horn & Elliott's comparison of score histograms).",
)
ARTEFACTS = [AUTOINTERP, AUTOINTERP_SUMMARY]
GROUP_COLORS = (("persisting", "#1f77b4"), ("emerged", "#2ca02c"), ("disappearing", "#d62728"), ("other", "#7f7f7f"))


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    return [_autointerp(lineage), _autointerp_summary(lineage)] if lineage.autointerp.enabled else []


def _classification(store: ArtifactStore, lineage: Lineage) -> "pd.DataFrame | None":
    return read_flow(store, "classification.parquet")[0] if lineage.edges() else None


def _autointerp(lineage: Lineage) -> dg.AssetsDefinition:
    spec = lineage.autointerp
    deps = [dg.AssetDep("feature_examples"), dg.AssetDep("sae"), dg.AssetDep("tokenizer"), *own_models(lineage)]
    if lineage.edges():
        deps.append(dg.AssetDep("feature_flow"))

    @AUTOINTERP.asset(partitions_def=node_partitions(lineage), deps=deps)
    def autointerp(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource, llm: LLMResource
                   ) -> dg.MaterializeResult:
        from featureflow_dagster.autointerp import LLMError, OverBudget, Price, explain_node
        from featureflow_dagster.autointerp.cost import unpriced_remote
        from featureflow_dagster.examples import load_evidence
        from featureflow_dagster.model import load_model
        from featureflow_dagster.plots import score_histogram_figure, write_html
        from featureflow_dagster.sae import load_sae
        node = context.partition_key
        require_passing_saes(store, [node])
        unpriced = unpriced_remote(llm.base_url, spec)  # the resource's URL: a launch may have changed it
        if unpriced:
            raise dg.Failure(description=unpriced, allow_retries=False)
        spent = _spent_elsewhere(store, lineage, node)
        try:
            client = llm.client(store.llm_cache_dir(), Price(spec.prompt_usd_per_mtok, spec.completion_usd_per_mtok))
            client.check()
        except LLMError as e:
            raise dg.Failure(description=str(e), allow_retries=False) from None
        dev = device.torch_device()
        ev = load_evidence(node, FEATURE_EXAMPLES.at(store, node), load_model(MODEL.at(store, node), dev),
                           load_sae(SAE.at(store, node), dev), dev, lineage.examples.batch_windows)
        started = time.perf_counter()
        try:
            table, est = explain_node(client, ev, token_strings(load_tokenizer(TOKENIZER.at(store))), spec, _classification(store, lineage),
                                      lineage.seed_of(node), llm.max_in_flight, log=step_log(context), spent_elsewhere=spent)
        except OverBudget as e:
            raise dg.Failure(description=str(e), allow_retries=False) from None
        seconds = time.perf_counter() - started
        out = AUTOINTERP.at(store, node)
        with store.write_dir(out) as tmp:
            table.to_parquet(tmp / "scores.parquet", index=False)
            (tmp / "usage.json").write_text(json.dumps(client.usage.as_dict(), indent=1))
            figure = score_histogram_figure(
                [("persisting", table.loc[table["persisting"], "score"], "#1f77b4"),
                 ("emerged / disappearing / others", table.loc[~table["persisting"], "score"], "#d62728")],
                f"{node}: explanation scores (Bills et al.), persisting vs other features")
            write_html(figure, tmp / "scores.html", store.plotly_js(), final=out / "scores.html")
        write_html(figure, store.report_dir("autointerp", node) / "scores.html", store.plotly_js())  # served, linked from the home
        return AUTOINTERP.result(out, file_sha256(out / "scores.parquet"), {
            "histogram": dg.MetadataValue.url(reports_url(f"autointerp/{node}/scores.html")),
            "histogram_file": dg.MetadataValue.path(str(out / "scores.html")), **_metadata(table, client.usage, est, spec.scorers),
            "model": llm.model, "base_url": llm.base_url, "seconds": round(seconds, 2)})

    return autointerp


def _spent_elsewhere(store: ArtifactStore, lineage: Lineage, node: str) -> float:
    """USD the lineage's other nodes' auto-interp runs spent, as their usage.json in this store records it."""
    total = 0.0
    for n in lineage.node_names:
        usage = AUTOINTERP.at(store, n, fetch=False) / "usage.json"
        if n != node and usage.is_file():
            total += float(json.loads(usage.read_text()).get("usd", 0.0))
    return total


def _metadata(table: "pd.DataFrame", usage, est, scorers) -> dict:
    means = table.groupby("persisting")["score"].mean()
    return {
        "features": len(table), "persisting_features": int(table["persisting"].sum()),
        "mean_score_persisting": float(means.get(True, float("nan"))),
        "mean_score_others": float(means.get(False, float("nan"))),
        # Bills et al.'s score is against the true activations; the one against the 0-10 values the explainer saw, beside
        "mean_score_quantised": float(table["score_quantised"].mean()),
        **{f"mean_{k}": float(table[k].mean()) for k in ("detection", "fuzzing") if k in scorers},
        "scorers": ", ".join(scorers),
        "usage": dg.MetadataValue.json(usage.as_dict()),
        "requests": usage.requests, "cache_hits": usage.cache_hits, "usd": round(usage.usd, 6),
        "estimate_before_run": est.describe(),
    }


def _autointerp_summary(lineage: Lineage) -> dg.AssetsDefinition:
    deps = [dg.AssetDep("autointerp")] + ([dg.AssetDep("feature_flow")] if lineage.edges() else [])

    @AUTOINTERP_SUMMARY.asset(deps=deps)
    def autointerp_summary(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.autointerp import feature_groups
        from featureflow_dagster.plots import markdown_table, score_histogram_figure, write_html
        cls = _classification(store, lineage)
        frames = []
        for node in lineage.node_names:
            t = pd.read_parquet(AUTOINTERP.at(store, node) / "scores.parquet")
            frames.append(t.assign(node=node, group=feature_groups(cls, node, t["feature"])))
        table = pd.concat(frames, ignore_index=True)
        fig = score_histogram_figure([(g, table.loc[table["group"] == g, "score"], color) for g, color in GROUP_COLORS],
                                     f"{lineage.name}: explanation scores by feature fate")
        out = AUTOINTERP_SUMMARY.at(store)
        with store.write_file(out) as tmp:
            table.to_parquet(tmp, index=False)
        page = store.report_dir("autointerp", "lineage") / "scores.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        write_html(fig, page, store.plotly_js())
        stats = table.groupby("group").agg(features=("feature", "size"), simulation_mean=("score", "mean"),
                                           simulation_median=("score", "median"), detection_mean=("detection", "mean"),
                                           fuzzing_mean=("fuzzing", "mean"))
        return AUTOINTERP_SUMMARY.result(out, file_sha256(out), {"histogram": dg.MetadataValue.path(str(page)),
                                                                 "scores_by_group": dg.MetadataValue.md(markdown_table(stats)),
                                                                 "features": len(table)})

    return autointerp_summary
