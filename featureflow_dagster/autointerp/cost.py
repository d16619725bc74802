"""Cost, estimated before any request: a tokenizer-free token count and the worst-case USD of a list of
requests at a `Price`."""

from __future__ import annotations

import math
from dataclasses import dataclass


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
