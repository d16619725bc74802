"""Cost, estimated before any request: prompt tokens counted by the LLM's own tokenizer where the lineage names one
(`autointerp.tokenizer`), else bounded above by the prompt's UTF-8 bytes, and the worst-case USD of a list of
requests at a `Price`."""

from __future__ import annotations

from dataclasses import dataclass


def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def estimate_tokens(messages: list[dict], count=None) -> int:
    """A chat prompt's tokens, at most: each message's content counted by `count` (the LLM's tokenizer: exact) or,
    without one, its UTF-8 bytes (an upper bound: a byte-level BPE or SentencePiece token covers at least one byte),
    plus 4 per message and 2 for the chat template's framing (OpenAI's figures). The 4-characters-a-token rule used
    before is no bound: code and digits run to more tokens than that."""
    count = count or utf8_bytes
    return sum(count(m["content"]) + 4 for m in messages) + 2


def token_counter(tokenizer: str | None):
    """`estimate_tokens`' `count` for a tokenizer folder or name available offline (None: the byte bound)."""
    if not tokenizer:
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    return lambda text: len(tok.encode(text, add_special_tokens=False))


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
        return (f"{self.requests:,} requests, at most {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
                f"tokens, at most USD {self.usd:.2f}")


def estimate(requests: list[tuple[list[dict], int]], price: Price, count=None) -> Estimate:
    """(messages, max completion tokens) per request: the worst-case cost of sending them all (`count`: see
    `estimate_tokens`)."""
    p = sum(estimate_tokens(m, count) for m, _ in requests)
    c = sum(n for _, n in requests)
    return Estimate(len(requests), p, c, price.usd(p, c))


def is_loopback(base_url: str) -> bool:
    """Whether the endpoint is on this machine (localhost, 127.0.0.0/8, ::1)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(base_url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def unpriced_remote(base_url: str, spec) -> str | None:
    """Why a cost cap would cap nothing, or None: a server outside the loopback range with both prices at 0 and
    not declared `free` would be estimated at USD 0, so `max_usd` could never stop a paid API."""
    if is_loopback(base_url) or spec.free or spec.prompt_usd_per_mtok > 0 or spec.completion_usd_per_mtok > 0:
        return None
    return (f"autointerp.base_url {base_url} is not on this machine and autointerp.prompt_usd_per_mtok and "
            "autointerp.completion_usd_per_mtok are 0, so the cost cap (autointerp.max_usd) would cap nothing: set "
            "both prices (USD per million tokens, from the provider's price list), or `free: true` under autointerp: "
            "for a server that charges nothing")
