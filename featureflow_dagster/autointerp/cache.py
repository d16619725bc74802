"""The response cache: every LLM answer on disk, keyed by what was asked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from featureflow_dagster.storage import atomic_file


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
