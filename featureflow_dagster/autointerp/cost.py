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
