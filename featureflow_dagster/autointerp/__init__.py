"""Automated interpretability (Bills et al. 2023, as Horn & Elliott 2024 use it): an explainer model
reads (token, activation) records of a feature and writes a one-line explanation; a simulator
predicts the activations of held-out records from the explanation alone; the score is the Pearson
correlation of simulated and true activations, pooled over the records (delphi's detection and
fuzzing scores beside it).

- `records`: a feature's records from a node's evidence, which features to explain, their groups;
- `prompts`: the messages (system prompts are files in `prompts/`);
- `scorers`: parsing answers, the scores, one feature explained and scored;
- `cost`: token and USD estimates made before any request;
- `cache`, `client`: the response cache on disk and `LLMClient` for any OpenAI-compatible server;
- `run`: one node's run, capped by the lineage's budget.
"""

from featureflow_dagster.autointerp.cache import ResponseCache
from featureflow_dagster.autointerp.client import LLMClient, LLMError, Usage
from featureflow_dagster.autointerp.cost import Estimate, Price, estimate, estimate_tokens
from featureflow_dagster.autointerp.prompts import (
    DETECTION_SYSTEM, EXPLAINER_SYSTEM, FUZZING_SYSTEM, SIMULATOR_SYSTEM, detection_messages, explainer_messages,
    fuzzing_messages, simulator_messages
)
from featureflow_dagster.autointerp.records import (
    MAX_QUANT, Record, choose_features, feature_groups, inactive_records, quantize, records_from_evidence
)
from featureflow_dagster.autointerp.run import OverBudget, explain_node
from featureflow_dagster.autointerp.scorers import (
    EXPLAIN_MAX_TOKENS, EXPLAIN_PARAMS, Malformed, balanced_accuracy, clean_explanation, detection_contexts,
    explain_and_score, feature_requests, fuzzing_contexts, parse_flags, parse_simulation, pooled_correlation,
    scoring_requests, simulate_max_tokens, uncached_requests
)

__all__ = [
    "DETECTION_SYSTEM", "EXPLAINER_SYSTEM", "EXPLAIN_MAX_TOKENS", "EXPLAIN_PARAMS", "FUZZING_SYSTEM", "MAX_QUANT",
    "SIMULATOR_SYSTEM", "Estimate", "LLMClient", "LLMError", "Malformed", "OverBudget", "Price", "Record", "ResponseCache",
    "Usage", "balanced_accuracy", "choose_features", "clean_explanation", "detection_contexts", "detection_messages",
    "estimate", "estimate_tokens", "explain_and_score", "explain_node", "explainer_messages", "feature_groups",
    "feature_requests", "fuzzing_contexts", "fuzzing_messages", "inactive_records", "parse_flags", "parse_simulation",
    "pooled_correlation", "quantize", "records_from_evidence", "scoring_requests", "simulate_max_tokens",
    "simulator_messages", "uncached_requests",
]
