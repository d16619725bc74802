"""The LLM resource: one OpenAI-compatible endpoint for automated interpretability."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from featureflow_dagster.autointerp import LLMClient, Price


class LLMResource(dg.ConfigurableResource):
    """Where requests go and how. The API key is read from the environment variable `api_key_env`
    when a client is made, so it is never part of the run's config, logs or metadata."""

    base_url: str = Field(description="OpenAI-compatible endpoint, ending in /v1.")
    model: str = Field(description="Model name as the server lists it.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    timeout: float = Field(default=60.0, description="Seconds per request.")
    max_in_flight: int = Field(default=4, description="Requests in flight at once.")
    retries: int = Field(default=5, description="Retries on 429, 5xx, timeouts and dropped connections.")

    def client(self, cache_dir: Path, price: Price) -> LLMClient:
        from featureflow_dagster.autointerp import LLMClient, LLMError, ResponseCache  # torch-free definitions

        key = os.environ.get(self.api_key_env)
        if not key:
            raise LLMError(f"autointerp is enabled but the environment variable {self.api_key_env} (autointerp.api_key_env) "
                           "is not set; export the API key there (any non-empty value for a local server that needs none)")
        return LLMClient(self.base_url, self.model, key, ResponseCache(cache_dir), price=price, timeout=self.timeout,
                         max_in_flight=self.max_in_flight, retries=self.retries)
