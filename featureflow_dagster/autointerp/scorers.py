"""Scoring an explanation (Bills et al. 2023; delphi's cheaper scorers): parsing the model's answers,
the pooled correlation of simulated and true activations, balanced accuracy of detection and fuzzing
flags, and one feature explained and scored end to end through an `LLMClient`."""

from __future__ import annotations

import json
import math
import re

import numpy as np

from featureflow_dagster.autointerp.client import LLMClient
from featureflow_dagster.autointerp.prompts import (detection_messages, explainer_messages, fuzzing_messages,
                                                   simulator_messages)
from featureflow_dagster.autointerp.records import MAX_QUANT, Record, quantize


def clean_explanation(text: str) -> str:
    """The explainer's answer as one line (the prompt's own lead-in and trailing punctuation removed)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r"^(the main thing this neuron does is find)\s*", "", line, flags=re.I)
    return line.strip().rstrip(".")


class Malformed(ValueError):
    """A model answer that does not say what was asked (no JSON, wrong length, numbers out of range)."""


def parse_simulation(text: str, logprobs: list[dict] | None, n_tokens: int) -> tuple[list[float], str]:
    """Predicted activations for `n_tokens` tokens from a simulator answer: expected values from the
    logprobs of the numbers in the JSON array where the server returned them ('logprobs'), else the
    integers of the JSON answer ('json'). Raises Malformed."""
    match = re.search(r"\{.*\}", text, flags=re.S)
    if match is None:
        raise Malformed(f"no JSON object in the answer: {text[:80]!r}")
    try:
        values = json.loads(match.group(0))["activations"]
    except (ValueError, KeyError, TypeError) as e:
        raise Malformed(f"not the JSON asked for ({e.__class__.__name__}): {text[:80]!r}") from None
    if not isinstance(values, list) or len(values) != n_tokens:
        raise Malformed(f"{len(values) if isinstance(values, list) else 'no'} activations for {n_tokens} tokens")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_QUANT for v in values):
        raise Malformed(f"activations outside 0–{MAX_QUANT}: {values[:8]}")
    if logprobs:
        expected = _expected_from_logprobs(logprobs)
        if len(expected) == n_tokens:
            return expected, "logprobs"
    return [float(v) for v in values], "json"


def _expected_from_logprobs(content: list[dict]) -> list[float]:
    """Per number token inside the answer's JSON array, Σ p(k)·k over its top alternatives that are
    integers 0–10 (renormalised). A number split over several tokens yields a count that does not
    match, and the caller falls back to the JSON integers."""
    text = "".join(item.get("token", "") for item in content)
    key = text.find('"activations"')
    lo = text.find("[", key if key >= 0 else 0)
    hi = text.find("]", lo)
    if lo < 0 or hi < 0:
        return []
    out, at = [], 0
    for item in content:
        token = item.get("token", "")
        start, at = at, at + len(token)
        bare = token.strip().strip(",[]").strip()
        if not (lo < start + len(token) and start < hi) or not bare.isdigit():
            continue
        probs: dict[int, float] = {}
        for alt in item.get("top_logprobs") or [{"token": token, "logprob": item.get("logprob", 0.0)}]:
            t = alt["token"].strip().strip(",[]").strip()
            if t.isdigit() and int(t) <= MAX_QUANT:
                probs[int(t)] = probs.get(int(t), 0.0) + math.exp(alt["logprob"])
        if probs:
            total = sum(probs.values())
            out.append(sum(k * p for k, p in probs.items()) / total)
    return out


def pooled_correlation(true: list[list[float]], predicted: list[list[float]]) -> float:
    """Pearson r over all records' tokens at once (Bills et al.'s score); NaN without variance."""
    a = np.concatenate([np.asarray(t, dtype=np.float64) for t in true]) if true else np.zeros(0)
    b = np.concatenate([np.asarray(p, dtype=np.float64) for p in predicted]) if predicted else np.zeros(0)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def parse_flags(text: str, key: str, n: int) -> list[int]:
    """The 0/1 list under `key` of a JSON answer, n long. Raises Malformed."""
    match = re.search(r"\{.*\}", text, flags=re.S)
    try:
        values = json.loads(match.group(0))[key] if match else None
    except (ValueError, KeyError, TypeError):
        values = None
    if not isinstance(values, list) or len(values) != n or not all(v in (0, 1, True, False) for v in values):
        raise Malformed(f"expected {{\"{key}\": [{n} zeros and ones]}}, got {text[:80]!r}")
    return [int(v) for v in values]


def balanced_accuracy(truth: list[int], predicted: list[int]) -> float:
    """Mean of the recall on positives and on negatives; NaN when one class is absent."""
    t, p = np.asarray(truth, bool), np.asarray(predicted, bool)
    if t.all() or not t.any():
        return float("nan")
    return float(((p & t).sum() / t.sum() + (~p & ~t).sum() / (~t).sum()) / 2)


def detection_contexts(activating: list[Record], inactive: list[Record], seed: int) -> tuple[list[list[str]], list[int]]:
    """Activating and non-activating contexts in a seeded order, with the truth (1: activating)."""
    items = [(r.tokens, 1) for r in activating] + [(r.tokens, 0) for r in inactive]
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i][0] for i in order], [items[i][1] for i in order]


def fuzzing_contexts(activating: list[Record], seed: int) -> tuple[list[tuple[list[str], set[int]]], list[int]]:
    """Every activating context with its active tokens marked (truth 1) or, for every other one in a
    seeded choice, as many tokens where the feature is zero (truth 0)."""
    rng = np.random.default_rng(seed)
    out, truth = [], []
    for i, r in enumerate(activating):
        active = {j for j, a in enumerate(r.activations) if a > 0}
        zero = [j for j, a in enumerate(r.activations) if a <= 0]
        if i % 2 == 1 and zero and active:
            out.append((r.tokens, set(rng.choice(zero, size=min(len(active), len(zero)), replace=False).tolist())))
            truth.append(0)
        else:
            out.append((r.tokens, active))
            truth.append(1)
    return out, truth


EXPLAIN_MAX_TOKENS = 60
EXPLAIN_PARAMS = {"max_tokens": EXPLAIN_MAX_TOKENS, "temperature": 0.0, "logprobs": False, "top_logprobs": 0}


def simulate_max_tokens(n_tokens: int) -> int:
    return 16 + 4 * n_tokens


def scoring_requests(explanation: str, score_records: list[Record], inactive_records: list[Record],
                     scorers=("simulation",), seed: int = 0) -> list[tuple[str, list[dict], dict, list[int] | None]]:
    """Every request that scores an explanation: (scorer, messages, chat parameters, truth for the
    detection and fuzzing flags). Simulation: one per held-out record; detection: one over the
    held-out activating and the non-activating records; fuzzing: one over the held-out records, half
    of them with wrong tokens marked."""
    out = []
    if "simulation" in scorers:
        for r in score_records:
            out.append(("simulation", simulator_messages(explanation, r.tokens),
                        {"max_tokens": simulate_max_tokens(len(r.tokens)), "temperature": 0.0, "logprobs": True, "top_logprobs": 5},
                        None))
    if "detection" in scorers and score_records and inactive_records:
        contexts, truth = detection_contexts(score_records, inactive_records, seed)
        out.append(("detection", detection_messages(explanation, contexts),
                    {"max_tokens": 16 + 3 * len(contexts), "temperature": 0.0, "logprobs": False, "top_logprobs": 0}, truth))
    if "fuzzing" in scorers and score_records:
        contexts, truth = fuzzing_contexts(score_records, seed)
        out.append(("fuzzing", fuzzing_messages(explanation, contexts),
                    {"max_tokens": 16 + 3 * len(contexts), "temperature": 0.0, "logprobs": False, "top_logprobs": 0}, truth))
    return out


def feature_requests(explain_records: list[Record], score_records: list[Record], max_activation: float,
                     inactive_records: list[Record] = (), scorers=("simulation",), seed: int = 0,
                     explanation: str = "\u2042 " * EXPLAIN_MAX_TOKENS) -> list[tuple[list[dict], int]]:
    """The requests `explain_and_score` will send for one feature (scored with an explanation as long
    as the explainer may write), as (messages, max completion tokens), for the cost estimate. The stand-in
    explanation counts as at least EXPLAIN_MAX_TOKENS tokens under any tokenizer (a rare three-byte character and a
    space, repeated) and as 4 bytes a token under the byte bound, so either count bounds the real one."""
    out = [(explainer_messages(explain_records, max_activation), EXPLAIN_MAX_TOKENS)]
    out += [(m, p["max_tokens"]) for _, m, p, _ in scoring_requests(explanation, score_records, list(inactive_records), scorers, seed)]
    return out


def explain_and_score(client: LLMClient, explain_records: list[Record], score_records: list[Record],
                      max_activation: float, inactive_records: list[Record] = (), scorers=("simulation",), seed: int = 0) -> dict:
    """Explain from `explain_records`; score the explanation on the held-out `score_records` (and, for
    detection, `inactive_records`) with each of `scorers`: 'simulation' (Bills et al.: the pooled correlation of the
    simulated activations with the true ones; the simulator reads the explanation only, and the 0-10 scale it
    answers on is the explainer's quantisation of the records, so `score_quantised`, the correlation with those
    quantised values, is kept beside), 'detection' and 'fuzzing' (balanced accuracy). Malformed answers are counted
    and left out, not raised."""
    answer = client.chat(explainer_messages(explain_records, max_activation), **EXPLAIN_PARAMS)
    explanation = clean_explanation(answer["text"])
    true, quantised, predicted, malformed, how = [], [], [], [], set()
    result = {"explanation": explanation, "score": float("nan"), "score_quantised": float("nan"), "detection": float("nan"),
              "fuzzing": float("nan")}
    records = iter(score_records)
    for scorer, messages, params, truth in scoring_requests(explanation, score_records, list(inactive_records), scorers, seed):
        reply = client.chat(messages, **params)
        try:
            if scorer == "simulation":
                r = next(records)
                values, source = parse_simulation(reply["text"], reply["logprobs"], len(r.tokens))
                how.add(source)
                true.append([float(v) for v in r.activations])
                quantised.append([float(q) for q in quantize(r.activations, max_activation)])
                predicted.append(values)
            else:
                flags = parse_flags(reply["text"], "present" if scorer == "detection" else "correct", len(truth))
                result[scorer] = balanced_accuracy(truth, flags)
        except Malformed as e:
            malformed.append(f"{scorer}: {e}")
            client.usage.add(malformed=1)
    if "simulation" in scorers:
        result["score"] = pooled_correlation(true, predicted)
        result["score_quantised"] = pooled_correlation(quantised, predicted)
    return {**result, "records_scored": len(true), "malformed": malformed, "simulation": "+".join(sorted(how)) or "none"}


def uncached_requests(client: LLMClient, explain_records: list[Record], score_records: list[Record], max_activation: float,
                      inactive_records: list[Record] = (), scorers=("simulation",), seed: int = 0) -> list[tuple[list[dict], int]]:
    """The requests of `explain_and_score` for one feature that the client's cache cannot answer, as
    (messages, max completion tokens), for the cost estimate: all of them (scored with a worst-case
    explanation) when the explanation is not cached, else the scoring requests of the cached one."""
    explain = explainer_messages(explain_records, max_activation)
    hit = client.cached(explain, **EXPLAIN_PARAMS)
    if hit is None:
        return feature_requests(explain_records, score_records, max_activation, inactive_records, scorers, seed)
    return [(m, p["max_tokens"])
            for _, m, p, _ in scoring_requests(clean_explanation(hit["text"]), score_records, list(inactive_records), scorers, seed)
            if client.cached(m, **p) is None]
