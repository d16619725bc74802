"""`LLMClient`: one OpenAI-compatible endpoint through the `openai` package, answering from the
`ResponseCache` first, with bounded concurrency, retries with backoff, and usage (requests, tokens, USD)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from featureflow_dagster.autointerp.cache import ResponseCache
from featureflow_dagster.autointerp.cost import Price, estimate_tokens


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
