"""What the benches read of a materialized lineage: its home and each artefact where its `Artefact`
places it (assets/), never a path spelled again here."""

from __future__ import annotations

import sys
from pathlib import Path

from featureflow_dagster.lineage import Lineage, load_lineage
from featureflow_dagster.resources import ArtifactStore


def open_home(lineage_arg: str, home_arg: str | None) -> tuple[Lineage, ArtifactStore]:
    """The lineage (a shipped name or a path) and the store of its home (default .featureflow/<lineage>)."""
    lineage = load_lineage(lineage_arg)
    return lineage, ArtifactStore(root=str(Path(home_arg or f".featureflow/{lineage.name}")), lineage_name=lineage.name)


def require(path: Path, what: str, store: ArtifactStore, lineage_arg: str) -> Path:
    """`path`, or exit 2 saying which artefact is missing and how to make it."""
    if not path.exists():
        print(f"no {what} under {store.root}; run `featureflow materialize` with FEATUREFLOW_LINEAGE={lineage_arg}", file=sys.stderr)
        raise SystemExit(2)
    return path
