"""Automated interpretability, offline and over real HTTP: a deterministic OpenAI-compatible server
(tests/llm_server.py) driven by the real `openai` client."""

import json
import math
import random

import numpy as np
import pytest

from featureflow_dagster.autointerp import (
    LLMClient,
    LLMError,
    Malformed,
    Price,
    Record,
    ResponseCache,
    estimate,
    explain_and_score,
    explainer_messages,
    feature_requests,
    parse_simulation,
    pooled_correlation,
    quantize,
)
from llm_server import MODEL, FakeLLM

KEY = "sk-test-key"


def _client(server, tmp_path, **kw) -> LLMClient:
    return LLMClient(server.base_url, kw.pop("model", MODEL), kw.pop("api_key", KEY), ResponseCache(tmp_path / "cache"),
                     price=Price(10.0, 30.0), backoff=0.01, **kw)


def _records(seed: int, n: int = 6, length: int = 16, target: str = "=", shuffled: bool = False) -> list[Record]:
    """Contexts of Python-ish tokens; the feature fires (3.0) on `target`, or, shuffled, on as many random other tokens."""
    rng = random.Random(seed)
    words = ["x", " =", "=", "(", ")", " 1", "\n", " def", " self", ".", ":", " return"]
    out = []
    for _ in range(n):
        tokens = [rng.choice(words) for _ in range(length)]
        tokens[rng.randrange(length)] = target
        acts = [3.0 if t == target else 0.0 for t in tokens]
        if shuffled:
            rng.shuffle(acts)
        out.append(Record(tokens, acts))
    return out


def test_quantize_and_parse_and_score():
    assert quantize([0.0, 0.01, 1.5, 3.0, 4.0], 3.0) == [0, 1, 5, 10, 10]  # tiny but non-zero is 1, above max clips
    assert quantize([1.0], 0.0) == [0]
    assert parse_simulation('{"activations": [0, 10, 3]}', None, 3) == ([0.0, 10.0, 3.0], "json")
    content = [{"token": '{"activations": ['}, {"token": "0", "top_logprobs": [{"token": "0", "logprob": math.log(0.5)},
                                                                                {"token": "10", "logprob": math.log(0.5)}]},
               {"token": ", "}, {"token": "10", "top_logprobs": [{"token": "10", "logprob": 0.0}]}, {"token": "]}"}]
    assert parse_simulation('{"activations": [0, 10]}', content, 2) == ([5.0, 10.0], "logprobs")
    for text, n, message in (("no json here", 2, "no JSON"), ('{"activations": [1]}', 2, "1 activations for 2"),
                             ('{"activations": [1, 11]}', 2, "outside 0"), ('{"other": 1}', 1, "not the JSON")):
        with pytest.raises(Malformed, match=message):
            parse_simulation(text, None, n)
    a, b = [[0.0, 1.0, 2.0], [3.0]], [[0.5, 0.7, 2.5], [2.0]]
    assert pooled_correlation(a, b) == pytest.approx(np.corrcoef([0, 1, 2, 3], [0.5, 0.7, 2.5, 2.0])[0, 1])
    assert math.isnan(pooled_correlation([[1.0, 1.0]], [[0.0, 1.0]]))  # no variance, no score
    prompt = explainer_messages(_records(0, n=1), 3.0)[1]["content"]
    assert "=\t10" in prompt and "<start>" in prompt and prompt.endswith("the main thing this neuron does is find")


def test_explain_and_score_over_http_against_a_shuffled_null(tmp_path):
    with FakeLLM() as server:
        client = _client(server, tmp_path)
        client.check()
        good = explain_and_score(client, _records(1), _records(2), 3.0)
        null = explain_and_score(client, _records(3, shuffled=True), _records(4, shuffled=True), 3.0)
    assert good["explanation"] == 'the token "="'
    assert good["simulation"] == "logprobs" and good["records_scored"] == 6
    assert good["score"] == pytest.approx(1.0)  # the simulator's expected values (8 on '=', 2 elsewhere) track the truth
    # the same machinery on activations shuffled within each context: the explanation predicts nothing
    assert abs(null["score"]) < 0.3 and good["score"] - null["score"] > 0.7
    assert client.usage.requests == 14 and client.usage.cache_hits == 0


def test_the_simulation_score_is_against_the_true_activations_as_published(tmp_path):
    """Bills et al. correlate the simulation with the true activations. Records whose feature fires at two strengths
    (3.0 on '=', 0.4 on '('), and a simulator that is partly wrong: it predicts 10 on '=' and on ')' (never fires) and
    0 on '(' (fires weakly). The score is computed here by hand from the records and the simulator's answers; the
    quantised score (0.4 of 3.0 shows as 1 on the 0-10 scale) is a different number, kept beside."""
    def wrong(tokens, target):
        return [10 if t in ("=", ")") else 0 for t in tokens]

    rng = random.Random(5)
    words = ["x", " =", "(", ")", " 1", "\n", " def", ".", ":"]
    records = []
    for _ in range(6):
        tokens = [rng.choice(words) for _ in range(16)]
        tokens[rng.randrange(16)] = "="
        records.append(Record(tokens, [3.0 if t == "=" else 0.4 if t == "(" else 0.0 for t in tokens]))
    with FakeLLM(logprobs=False, simulate=wrong) as server:
        result = explain_and_score(_client(server, tmp_path), records, records, 3.0)
    true = np.concatenate([r.activations for r in records])
    simulated = np.concatenate([wrong(r.tokens, "=") for r in records]).astype(float)
    by_hand = np.corrcoef(true, simulated)[0, 1]
    quantised = np.concatenate([quantize(r.activations, 3.0) for r in records]).astype(float)
    assert 0.2 < by_hand < 0.95 and result["simulation"] == "json"
    assert result["score"] == pytest.approx(by_hand, abs=1e-12)
    assert result["score_quantised"] == pytest.approx(np.corrcoef(quantised, simulated)[0, 1], abs=1e-12)
    assert abs(result["score"] - result["score_quantised"]) > 0.005


def test_retries_timeouts_and_the_cache(tmp_path):
    messages = explainer_messages(_records(5), 3.0)
    with FakeLLM(slow_seconds=2.0) as server:
        client = _client(server, tmp_path, timeout=0.5)
        server.faults = ["429", "500", "slow"]
        first = client.chat(messages, max_tokens=20)
        assert first["text"] == ' the token "=".' and not first["cached"]
        assert client.usage.retries == 3 and server.requests == 4  # three failures, then the answer
        again = client.chat(messages, max_tokens=20)
        assert again["cached"] and again["text"] == first["text"] and server.requests == 4  # zero requests
        fresh = _client(server, tmp_path)  # another run on the same cache folder
        assert fresh.chat(messages, max_tokens=20)["cached"] and server.requests == 4
        fresh.chat(messages, max_tokens=21)  # another sampling parameter is another request
        assert server.requests == 5
        server.faults = ["500"] * 10
        with pytest.raises(LLMError, match="gave up after 5 retries"):
            _client(server, tmp_path).chat(messages + [{"role": "user", "content": "and again"}], max_tokens=20)
    keys = {ResponseCache.key(MODEL, messages, {"a": 1}), ResponseCache.key("other-model", messages, {"a": 1})}
    assert len(keys) == 2  # the model is part of the key
    stored = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert KEY not in stored and len(list((tmp_path / "cache").rglob("*.json"))) == 2


def test_malformed_answers_are_counted_not_raised(tmp_path):
    with FakeLLM() as server:
        client = _client(server, tmp_path)
        server.faults = [None, "garbage", "range"]  # the explainer answers; two of six simulations are broken
        result = explain_and_score(client, _records(6), _records(7), 3.0)
    assert result["records_scored"] == 4 and client.usage.malformed == 2
    assert any("no JSON" in m for m in result["malformed"]) and any("outside 0" in m for m in result["malformed"])
    assert result["score"] == pytest.approx(1.0)


def test_json_answers_where_the_server_gives_no_logprobs(tmp_path):
    with FakeLLM(logprobs=False) as server:
        result = explain_and_score(_client(server, tmp_path), _records(8), _records(9), 3.0)
    assert result["simulation"] == "json" and result["score"] == pytest.approx(1.0)


def test_check_names_the_setting_to_fix(tmp_path):
    with FakeLLM() as server:
        with pytest.raises(LLMError, match="does not list model 'gpt-nope'.*featureflow-test-model"):
            _client(server, tmp_path, model="gpt-nope").check()
        with pytest.raises(LLMError, match="refused the API key"):
            _client(server, tmp_path, api_key="sk-wrong").check()
        port = server.server.server_address[1]
    with pytest.raises(LLMError, match=f"cannot reach .*127.0.0.1:{port}.*autointerp.base_url"):
        LLMClient(f"http://127.0.0.1:{port}/v1", MODEL, KEY, ResponseCache(tmp_path / "c"), timeout=2, retries=0).check()


def test_the_estimate_bounds_what_a_feature_costs_by_an_independent_count(tmp_path):
    """The server counts prompt tokens with a real byte-level BPE (trained here on standard-library source, like the
    demo's), not by the estimator's rule. Without a tokenizer the estimate is an upper bound on what the server
    counts (UTF-8 bytes); told the same tokenizer, it is a tighter bound; the old 4-characters-a-token rule falls
    below what the server counted on these code-like records, so it was no bound."""
    import sysconfig
    from pathlib import Path

    from featureflow_dagster.autointerp import estimate_tokens, feature_requests
    from featureflow_dagster.autointerp.cost import token_counter
    from featureflow_dagster.tokenizer import train_bpe

    texts = [p.read_text(errors="ignore") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]]
    tok = train_bpe(texts, 600)
    tok.save_pretrained(tmp_path / "tok")
    count = token_counter(str(tmp_path / "tok"))
    assert count("def f(x): return x") == len(tok.encode("def f(x): return x", add_special_tokens=False))
    explain, score = _records(10), _records(11)
    requests = feature_requests(explain, score, 3.0)
    bound = estimate(requests, Price(10.0, 30.0))
    exact = estimate(requests, Price(10.0, 30.0), count=count)
    assert bound.requests == exact.requests == 7
    assert exact.usd == pytest.approx((exact.prompt_tokens * 10 + exact.completion_tokens * 30) / 1e6)
    with FakeLLM(count=count) as server:
        client = _client(server, tmp_path)
        explain_and_score(client, explain, score, 3.0)
    used = client.usage
    assert used.requests == exact.requests and used.completion_tokens <= exact.completion_tokens
    # the scoring prompts are priced before the explanation exists (at the longest explanation allowed), so even
    # counted by the right tokenizer the estimate is a bound: what was sent is at most it, and at most the byte bound
    assert 0.5 * exact.prompt_tokens < used.prompt_tokens <= exact.prompt_tokens <= bound.prompt_tokens
    old_rule = sum(sum(-(-len(m["content"]) // 4) + 4 for m in messages) + 2 for messages, _ in requests)
    assert old_rule < used.prompt_tokens  # 4 characters a token undercounts these Python-like records
    assert estimate_tokens([{"content": "é"}]) == 2 + 4 + 2  # two bytes: the bound counts bytes, not characters
    assert json.dumps(used.as_dict())  # JSON-able, for metadata


def test_detection_and_fuzzing_score_balanced_accuracy_against_a_shuffled_null(tmp_path):
    from featureflow_dagster.autointerp import balanced_accuracy, fuzzing_contexts, parse_flags

    assert balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == 0.75 and math.isnan(balanced_accuracy([1, 1], [1, 0]))
    with pytest.raises(Malformed, match='expected {"present": \\[3'):
        parse_flags('{"present": [1, 0]}', "present", 3)
    contexts, truth = fuzzing_contexts(_records(12), seed=0)
    for (tokens, marked), ok in zip(contexts, truth):  # correct markings are the active tokens, wrong ones none of them
        assert ({tokens[j] for j in marked} == {"="}) == bool(ok)
    inactive = [Record(r.tokens, [0.0] * len(r.tokens)) for r in _records(13, target="x")]
    for r in inactive:
        r.tokens = [t if "=" not in t else "(" for t in r.tokens]  # no "=" anywhere: truly non-activating
    scorers = ("simulation", "detection", "fuzzing")
    with FakeLLM() as server:
        client = _client(server, tmp_path)
        good = explain_and_score(client, _records(14), _records(15), 3.0, inactive, scorers, seed=1)
        null = explain_and_score(client, _records(16), _records(17, shuffled=True), 3.0, inactive, scorers, seed=1)
        assert server.requests == 2 * (1 + 6 + 2)
    assert good["detection"] == 1.0 and good["fuzzing"] == 1.0 and good["score"] == pytest.approx(1.0)
    # shuffled held-out activations: fuzzing marks tokens the explanation does not describe; detection still
    # finds '=' in every context, the activating and the (shuffled) ones alike
    assert null["fuzzing"] <= 0.75 and null["score"] < 0.3
