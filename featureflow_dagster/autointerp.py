"""Automated interpretability (Bills et al. 2023, as Horn & Elliott 2024 use it): an explainer model
reads (token, activation) records of a feature and writes a one-line explanation; a simulator
predicts the activations of held-out records from the explanation alone; the score is the Pearson
correlation of simulated and true activations, pooled over the records.

Plain functions and one client: prompts, parsing, scoring, a response cache on disk keyed by what
was asked, a token and cost estimate made before any request, and `LLMClient`, which talks to any
OpenAI-compatible server through the `openai` package with bounded concurrency and retries.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featureflow_dagster.storage import atomic_file

MAX_QUANT = 10

# ---------------------------------------------------------------------------------------------
# Records and prompts
# ---------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One context of a feature: its tokens (as strings) and the feature's activation on each."""

    tokens: list[str]
    activations: list[float]


def quantize(values, max_activation: float) -> list[int]:
    """Activations on Bills et al.'s 0–10 scale relative to the feature's max (0 stays 0; a positive
    value rounds up to at least 1 so that "fires a little" is not shown as "does not fire")."""
    if max_activation <= 0:
        return [0 for _ in values]
    out = []
    for v in values:
        q = int(round(MAX_QUANT * float(v) / max_activation))
        out.append(max(1 if v > 0 else 0, min(MAX_QUANT, q)))
    return out


def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t")


EXPLAINER_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short document. "
    "Look at the parts of the document the neuron activates for and summarize in a single sentence what the neuron "
    "is looking for. Don't list examples of words.\n\nThe activation format is token<tab>activation. Activation "
    "values range from 0 to 10. A neuron finding what it's looking for is represented by a non-zero activation "
    "value. The higher the activation value, the stronger the match."
)

SIMULATOR_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short document. "
    "Look at an explanation of what the neuron does, and try to predict its activations on each token.\n\nThe "
    "activation format is token<tab>activation, activations go from 0 to 10, \"unknown\" indicates an unknown "
    "activation. Most activations will be 0. Answer with JSON only: {\"activations\": [one integer from 0 to 10 "
    "per token, in order]}."
)


def explainer_messages(records: list[Record], max_activation: float) -> list[dict]:
    """Bills et al.'s explainer prompt over the records, activations quantised to 0–10."""
    blocks = []
    for r in records:
        q = quantize(r.activations, max_activation)
        blocks.append("<start>\n" + "\n".join(f"{_show(t)}\t{a}" for t, a in zip(r.tokens, q)) + "\n<end>")
    user = ("Neuron 1\nActivations:\n" + "\n".join(blocks) +
            "\n\nExplanation of neuron 1 behavior: the main thing this neuron does is find")
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": user}]


def simulator_messages(explanation: str, tokens: list[str]) -> list[dict]:
    """The all-at-once simulator prompt: the explanation and one record's tokens, every activation unknown."""
    user = (f"Neuron 1\nExplanation of neuron 1 behavior: the main thing this neuron does is find {explanation}\n"
            f"Activations ({len(tokens)} tokens):\n<start>\n" + "\n".join(f"{_show(t)}\tunknown" for t in tokens) + "\n<end>")
    return [{"role": "system", "content": SIMULATOR_SYSTEM}, {"role": "user", "content": user}]


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


# Cheaper scorers (EleutherAI's delphi): one request per feature each, balanced accuracy.

DETECTION_SYSTEM = (
    "You will read an explanation of a feature of a language model and a numbered list of short text contexts. "
    "For each context, say whether the feature as explained is present in it. Answer with JSON only: "
    "{\"present\": [1 or 0 for each context, in order]}."
)

FUZZING_SYSTEM = (
    "You will read an explanation of a feature of a language model and a numbered list of short text contexts in "
    "which some tokens are marked <<like this>>. For each context, say whether the marked tokens are the ones the "
    "explanation describes. Answer with JSON only: {\"correct\": [1 or 0 for each context, in order]}."
)


def detection_messages(explanation: str, contexts: list[list[str]]) -> list[dict]:
    lines = [f"{i + 1}. {''.join(_show(t) for t in c)}" for i, c in enumerate(contexts)]
    return [{"role": "system", "content": DETECTION_SYSTEM},
            {"role": "user", "content": f"Explanation: {explanation}\nContexts:\n" + "\n".join(lines)}]


def fuzzing_messages(explanation: str, contexts: list[tuple[list[str], set[int]]]) -> list[dict]:
    lines = [f"{i + 1}. " + "".join(f"<<{_show(t)}>>" if j in marked else _show(t) for j, t in enumerate(c))
             for i, (c, marked) in enumerate(contexts)]
    return [{"role": "system", "content": FUZZING_SYSTEM},
            {"role": "user", "content": f"Explanation: {explanation}\nContexts:\n" + "\n".join(lines)}]


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


# ---------------------------------------------------------------------------------------------
# Cost: estimated before any request
# ---------------------------------------------------------------------------------------------


def estimate_tokens(messages: list[dict]) -> int:
    """A tokenizer-free estimate of a chat prompt's tokens: 4 characters a token plus 4 per message
    (OpenAI's rule of thumb; English text is close, code and digits run higher)."""
    return sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages) + 2


@dataclass
class Price:
    """USD per million tokens."""

    prompt: float
    completion: float

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


@dataclass
class Estimate:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    usd: float

    def describe(self) -> str:
        return (f"{self.requests:,} requests, about {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
                f"tokens, about USD {self.usd:.2f}")


def estimate(requests: list[tuple[list[dict], int]], price: Price) -> Estimate:
    """(messages, max completion tokens) per request: the worst-case cost of sending them all."""
    p = sum(estimate_tokens(m) for m, _ in requests)
    c = sum(n for _, n in requests)
    return Estimate(len(requests), p, c, price.usd(p, c))


# ---------------------------------------------------------------------------------------------
# The client: cache, concurrency, retries, usage
# ---------------------------------------------------------------------------------------------


class ResponseCache:
    """Answers on disk, one JSON file per request, keyed by sha256 of (model, messages, sampling
    parameters): asking the same again costs nothing; another prompt or model is a new key."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @staticmethod
    def key(model: str, messages: list[dict], params: dict) -> str:
        blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, answer: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(answer))


@dataclass
class Usage:
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    malformed: int = 0
    usd: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items() if k != "lock"}


class LLMError(RuntimeError):
    """The server could not be used (unreachable, unknown model, out of retries); names the setting to fix."""


class LLMClient:
    """One OpenAI-compatible endpoint: `chat` answers from the cache or the server, at most
    `max_in_flight` requests at once, retrying 429, 5xx, timeouts and dropped connections with
    exponential backoff (base `backoff` seconds, doubling, `retries` times)."""

    def __init__(self, base_url: str, model: str, api_key: str, cache: ResponseCache, price: Price | None = None,
                 timeout: float = 60.0, max_in_flight: int = 4, retries: int = 5, backoff: float = 0.5):
        import openai

        self.model, self.cache, self.price = model, cache, price or Price(0.0, 0.0)
        self.base_url, self.retries, self.backoff = base_url, retries, backoff
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=0)
        self.slots = threading.Semaphore(max_in_flight)
        self.usage = Usage()

    def check(self) -> None:
        """Reach the server and find the model among those it lists, before any feature is processed."""
        import openai

        try:
            listed = [m.id for m in self.client.models.list()]
        except openai.AuthenticationError:
            raise LLMError(f"the server at {self.base_url} refused the API key; set autointerp's api key variable "
                           "(the key is read from the environment, never from the lineage file)") from None
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise LLMError(f"cannot reach an OpenAI-compatible server at {self.base_url}; set autointerp.base_url") from None
        if self.model not in listed:
            raise LLMError(f"the server at {self.base_url} does not list model '{self.model}'; set autointerp.model to "
                           f"one of: {', '.join(listed[:20]) or '(none listed)'}")

    def _key(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, logprobs: bool = False,
             top_logprobs: int = 0) -> str:
        params = {"max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs, "top_logprobs": top_logprobs}
        return ResponseCache.key(self.model, messages, params)

    def cached(self, messages: list[dict], **params) -> dict | None:
        """The stored answer `chat(messages, **params)` would return without a request, else None."""
        return self.cache.get(self._key(messages, **params))

    def chat(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, logprobs: bool = False,
             top_logprobs: int = 0) -> dict:
        """{'text', 'logprobs' (list of {token, logprob, top_logprobs}) or None, 'cached'}."""
        import openai

        key = self._key(messages, max_tokens, temperature, logprobs, top_logprobs)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.add(cache_hits=1)
            return {**hit, "cached": True}
        extra = {"logprobs": True, "top_logprobs": top_logprobs} if logprobs else {}
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                with self.slots:
                    response = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_tokens,
                                                                   temperature=temperature, **extra)
                break
            except (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError) as e:
                if attempt == self.retries:
                    raise LLMError(f"{self.base_url}: gave up after {self.retries} retries ({e.__class__.__name__})") from None
                self.usage.add(retries=1)
                time.sleep(delay)
                delay *= 2
        choice = response.choices[0]
        content = None
        if getattr(choice, "logprobs", None) is not None and choice.logprobs.content:
            content = [{"token": c.token, "logprob": c.logprob,
                        "top_logprobs": [{"token": t.token, "logprob": t.logprob} for t in (c.top_logprobs or [])]}
                       for c in choice.logprobs.content]
        answer = {"text": choice.message.content or "", "logprobs": content}
        u = response.usage
        p, c = (u.prompt_tokens, u.completion_tokens) if u is not None else (estimate_tokens(messages), max_tokens)
        self.usage.add(requests=1, prompt_tokens=p, completion_tokens=c, usd=self.price.usd(p, c))
        self.cache.put(key, answer)
        return {**answer, "cached": False}


# ---------------------------------------------------------------------------------------------
# One feature: explain, simulate, score
# ---------------------------------------------------------------------------------------------

EXPLAIN_MAX_TOKENS = 60
EXPLAIN_PARAMS = {"max_tokens": EXPLAIN_MAX_TOKENS, "temperature": 0.0, "logprobs": False, "top_logprobs": 0}
SCORERS = ("simulation", "detection", "fuzzing")


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
                     explanation: str = "x" * 4 * EXPLAIN_MAX_TOKENS) -> list[tuple[list[dict], int]]:
    """The requests `explain_and_score` will send for one feature (scored with an explanation as long
    as the explainer may write), as (messages, max completion tokens), for the cost estimate."""
    out = [(explainer_messages(explain_records, max_activation), EXPLAIN_MAX_TOKENS)]
    out += [(m, p["max_tokens"]) for _, m, p, _ in scoring_requests(explanation, score_records, list(inactive_records), scorers, seed)]
    return out


def explain_and_score(client: LLMClient, explain_records: list[Record], score_records: list[Record],
                      max_activation: float, inactive_records: list[Record] = (), scorers=("simulation",), seed: int = 0) -> dict:
    """Explain from `explain_records`; score the explanation on the held-out `score_records` (and, for
    detection, `inactive_records`) with each of `scorers`: 'simulation' (pooled correlation of simulated
    and true quantised activations), 'detection' and 'fuzzing' (balanced accuracy). Malformed answers
    are counted and left out, not raised."""
    answer = client.chat(explainer_messages(explain_records, max_activation), **EXPLAIN_PARAMS)
    explanation = clean_explanation(answer["text"])
    true, predicted, malformed, how = [], [], [], set()
    result = {"explanation": explanation, "score": float("nan"), "detection": float("nan"), "fuzzing": float("nan")}
    records = iter(score_records)
    for scorer, messages, params, truth in scoring_requests(explanation, score_records, list(inactive_records), scorers, seed):
        reply = client.chat(messages, **params)
        try:
            if scorer == "simulation":
                r = next(records)
                values, source = parse_simulation(reply["text"], reply["logprobs"], len(r.tokens))
                how.add(source)
                true.append([float(q) for q in quantize(r.activations, max_activation)])
                predicted.append(values)
            else:
                flags = parse_flags(reply["text"], "present" if scorer == "detection" else "correct", len(truth))
                result[scorer] = balanced_accuracy(truth, flags)
        except Malformed as e:
            malformed.append(f"{scorer}: {e}")
            client.usage.add(malformed=1)
    if "simulation" in scorers:
        result["score"] = pooled_correlation(true, predicted)
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


def inactive_records(ev, feature: int, vocab: list[str], n: int) -> list[Record]:
    """Up to n windows of the node's examples where the feature is zero on every token."""
    ex = ev.examples
    ctx = ex.windows.shape[1]
    start, end = ev.codes.indptr[feature], ev.codes.indptr[feature + 1]
    active_windows = set((ev.codes.indices[start:end] // ctx).tolist())
    out, seen = [], set()
    for p in ex.inactive_positions.tolist():
        w = p // ctx
        if w in active_windows:
            continue
        tokens = [vocab[i] for i in ex.windows[w].tolist()]
        if tuple(tokens) not in seen:  # one record per distinct window text
            seen.add(tuple(tokens))
            out.append(Record(tokens, [0.0] * ctx))
        if len(out) == n:
            break
    return out


# ---------------------------------------------------------------------------------------------
# From the feature pages' evidence to records, and which features to explain
# ---------------------------------------------------------------------------------------------


def records_from_evidence(ev, feature: int, vocab: list[str], n_explain: int, n_score: int, seed: int
                          ) -> tuple[list[Record], list[Record]]:
    """(explain, score) records of a feature from a `site.NodeEvidence`: whole windows with the
    feature's activation on every token. The explainer reads every other top context; the simulator
    gets the remaining top contexts and, for the rest, quantile samples drawn with `seed` (so a score
    covers weak activations too), none of them shown to the explainer."""
    ex = ev.examples
    ctx = ex.windows.shape[1]
    start, end = ev.codes.indptr[feature], ev.codes.indptr[feature + 1]
    rows, vals = ev.codes.indices[start:end], ev.codes.data[start:end]

    def record(window: int) -> Record:
        acts = [0.0] * ctx
        inside = (rows >= window * ctx) & (rows < (window + 1) * ctx)
        for r, v in zip(rows[inside].tolist(), vals[inside].tolist()):
            acts[r - window * ctx] = float(v)
        return Record([vocab[i] for i in ex.windows[window].tolist()], acts)

    top = list(dict.fromkeys(int(p) // ctx for p in ex.top_positions[feature].tolist() if p >= 0))
    explain = top[0::2][:n_explain]
    score = top[1::2][: n_score // 2]
    samples = [p // ctx for g in ex.quantile_groups(feature) for _, p in g]
    rng = np.random.default_rng(seed + feature)
    pool = [w for w in dict.fromkeys(samples) if w not in set(explain) | set(score)]
    rng.shuffle(pool)
    score += pool[: n_score - len(score)]
    return [record(w) for w in explain], [record(w) for w in score]


def choose_features(live: np.ndarray, persisting: np.ndarray, n: int, seed: int) -> tuple[list[int], list[int]]:
    """(persisting, others): up to n // 2 of the live persisting features and an equal number of the
    other live ones (n of them where nothing persists, e.g. a lineage of one node), drawn with `seed`,
    each list sorted."""
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(live & persisting)
    rest = np.flatnonzero(live & ~persisting)
    a = rng.permutation(keep)[: min(len(keep), n // 2)]
    b = rng.permutation(rest)[: min(len(rest), len(a) if len(a) else n)]
    return sorted(int(x) for x in a), sorted(int(x) for x in b)


def feature_groups(classification, node: str, features) -> list[str]:
    """Per feature of `node`, from feature_flow's classification (None: a lineage without edges):
    'persisting' (persisted from a parent or persists into a child), else 'emerged' (on an incoming
    edge), else 'disappearing' (on an outgoing edge), else 'other'."""
    if classification is None:
        return ["other"] * len(features)
    rows = classification[classification["node"] == node]
    by = {s: set(rows.loc[rows["status"] == s, "feature"].astype(int)) for s in ("persists", "persisted", "emerged", "disappears")}
    persisting = by["persists"] | by["persisted"]
    return ["persisting" if f in persisting else "emerged" if f in by["emerged"] else "disappearing" if f in by["disappears"]
            else "other" for f in map(int, features)]
