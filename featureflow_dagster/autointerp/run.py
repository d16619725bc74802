"""One node's auto-interp run: choose features (persisting ones and as many others, seeded), build
their records from the node's evidence, price what the cache cannot answer before any request and
refuse above the cap, then explain and score them with bounded concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from featureflow_dagster.autointerp.client import LLMClient
from featureflow_dagster.autointerp.cost import Estimate, Price, estimate, token_counter
from featureflow_dagster.autointerp.records import choose_features, feature_groups, inactive_records, records_from_evidence
from featureflow_dagster.autointerp.scorers import explain_and_score, uncached_requests


class OverBudget(RuntimeError):
    """A run whose uncached requests would cost more than the lineage's `autointerp:` cap allows."""


def explain_node(client: LLMClient, ev, vocab: list[str], spec, classification: pd.DataFrame | None, seed: int,
                 max_in_flight: int, log=None, spent_elsewhere: float = 0.0) -> tuple[pd.DataFrame, Estimate]:
    """Explain and score `spec.features_per_node` features of the node whose evidence is `ev`
    (`examples.NodeEvidence`); `spec` is the lineage's `AutointerpSpec`, `classification` feature_flow's
    (None without edges). Returns one row per feature (explanation, scores, whether it persists) and the
    estimate made before the first request. Raises OverBudget before any request above the cap: the node's
    (`max_usd`, `max_requests`) or the lineage's (`max_usd_lineage`, with `spent_elsewhere` what its other nodes
    spent)."""
    node = ev.node
    live = ev.table["density"].to_numpy() > 0
    persisting = np.array(feature_groups(classification, node, range(live.size))) == "persisting"
    keep, others = choose_features(live, persisting, spec.features_per_node, seed)
    chosen = keep + others
    records = {f: records_from_evidence(ev, f, vocab, spec.explain_records, spec.score_records, seed) for f in chosen}
    inactive = {f: inactive_records(ev, f, vocab, spec.score_records) if "detection" in spec.scorers else [] for f in chosen}
    max_act = {f: float(ev.examples.top_values[f, 0]) for f in chosen}
    # the cost of what is not cached yet, before any request: a cached explanation leads to its scoring requests
    pending = [req for f in chosen for req in uncached_requests(client, *records[f], max_act[f], inactive[f], spec.scorers, seed)]
    est = estimate(pending, Price(spec.prompt_usd_per_mtok, spec.completion_usd_per_mtok), token_counter(spec.tokenizer))
    if est.usd > spec.max_usd or est.requests > spec.max_requests:
        raise OverBudget(
            f"autointerp[{node}] would send {est.describe()}, above the cap (autointerp.max_usd = "
            f"{spec.max_usd}, autointerp.max_requests = {spec.max_requests}); raise them in the lineage file's "
            "`autointerp:` section or lower autointerp.features_per_node")
    if spec.max_usd_lineage is not None and spent_elsewhere + est.usd > spec.max_usd_lineage:
        raise OverBudget(
            f"autointerp[{node}] would send {est.describe()}; with USD {spent_elsewhere:.2f} the lineage's other nodes "
            f"have spent, that is above the lineage's cap (autointerp.max_usd_lineage = {spec.max_usd_lineage}); raise it "
            "or lower autointerp.features_per_node")
    if log:
        log(f"autointerp: {len(chosen)} features of {node}, {est.describe()} not cached")
    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        results = list(pool.map(lambda f: explain_and_score(client, *records[f], max_act[f], inactive[f], spec.scorers, seed), chosen))
    table = pd.DataFrame([{"feature": f, "persisting": f in set(keep), "explanation": r["explanation"], "score": r["score"],
                           "score_quantised": r["score_quantised"],
                           "detection": r["detection"], "fuzzing": r["fuzzing"],
                           "records_scored": r["records_scored"], "malformed": len(r["malformed"]),
                           "simulation": r["simulation"]} for f, r in zip(chosen, results)])
    return table, est
