"""What produced an artefact: package versions and the machine, recorded in every asset's metadata."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("featureflow-dagster", "torch", "transformers", "tokenizers", "dagster", "transformer-lens"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
