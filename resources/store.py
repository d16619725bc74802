"""The artefact store: where every artefact of a lineage lives on disk, written atomically.

Layout under `root` ($FEATUREFLOW_HOME): each asset's artefact lives where its `Artefact.place` says
(assets/; `featureflow_dagster.assets.ARTEFACTS` lists them, the README's on-disk layout shows the tree), beside
  lineage.json                   which lineage owns this folder
  reports/<asset>/<key>/         plots (plotly HTML) and tables; reports/plotly.min.js, the one plotly.js they all load
  llm_cache/<xx>/<sha256>.json   every LLM answer, keyed by (model, messages, sampling parameters)
  checkpoints/<asset>/<key>.pt   resumable training state, removed when the asset completes
  .locks/<asset>[<key>].lock     held (flock) while a process materializes that partition

With `url` (FEATUREFLOW_STORE, e.g. s3://bucket/featureflow/demo) the artefacts live on shared storage
and `root` is this machine's mirror of them (featureflow_dagster/remote.py): `at` first
fetches what another machine published there (except where an asset asks with `fetch=False` for a
large artefact it is about to replace whole), and every atomic write an asset makes is published
as it completes (the asset guard installs the hook), checkpoints included, so a pod that is killed
resumes on another machine from the last published checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import dagster as dg
from pydantic import Field

from featureflow_dagster.serve import REPORTS_DIR
from featureflow_dagster.storage import atomic_dir, atomic_file, committing, file_lock, lock_name

_MIRRORS: dict = {}


class PartitionBusy(RuntimeError):
    """Another process holds the lock of the asset partition this one was about to materialize."""


class ArtifactStore(dg.ConfigurableResource):
    root: str = Field(description="Folder that holds one lineage's artefacts ($FEATUREFLOW_HOME).")
    lineage_name: str = Field(description="The lineage these artefacts belong to; guards against mixing two.")
    url: str | None = Field(default=None, description="Shared storage for the artefacts (s3://, gs://, az://, "
                            "file://, memory://); `root` is then this machine's mirror ($FEATUREFLOW_STORE).")

    @property
    def path(self) -> Path:
        return Path(self.root)

    @property
    def mirror(self):
        """The shared-storage side (None for a store on local disk only)."""
        if not self.url:
            return None
        key = (self.url, str(self.path))
        if key not in _MIRRORS:
            from featureflow_dagster.remote import Mirror

            _MIRRORS[key] = Mirror(self.url, self.path)
        return _MIRRORS[key]

    def at(self, rel: str, fetch: bool = True) -> Path:
        """`root/rel`, after fetching what was published at or below it elsewhere (shared storage only).

        `fetch=False` (the large artefacts' accessors take it) is for the path an asset is about to
        replace whole: nothing is downloaded only to be overwritten."""
        if self.url and fetch:
            self.mirror.fetch(rel)
        return self.path / rel

    def publishing(self):
        """While this block runs, every completed atomic write under the home is published (shared storage only)."""
        return committing(self.mirror.publish) if self.url else contextlib.nullcontext()

    def claim(self) -> None:
        """Record which lineage owns this folder; refuse to write another lineage's artefacts into it."""
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.at("lineage.json")
        where = self.url or self.path
        if marker.exists():
            owner = json.loads(marker.read_text())["lineage"]
            if owner != self.lineage_name:
                raise RuntimeError(
                    f"{where} holds artefacts of lineage '{owner}', not '{self.lineage_name}'; "
                    "set FEATUREFLOW_HOME (and FEATUREFLOW_STORE) to another place for this lineage"
                )
        else:
            with atomic_file(marker) as tmp:
                tmp.write_text(json.dumps({"lineage": self.lineage_name}))
        if self.url and self.mirror.local_version("lineage.json") is None:
            self.mirror.publish(marker)  # the shared store is claimed too, even by a write that stays local

    def llm_cache_dir(self) -> Path:
        return self.at("llm_cache")

    def report_dir(self, asset: str, key: str) -> Path:
        return self.at(f"{REPORTS_DIR}/{asset}/{key}")

    def plotly_js(self) -> Path:
        """The one plotly.js every report of this home loads (see plots.write_html)."""
        return self.at(f"{REPORTS_DIR}/plotly.min.js")

    def checkpoint_path(self, asset: str, key: str) -> Path:
        """Where a training of `asset[key]` keeps its resumable state (fetched: a killed run resumes from the
        checkpoint another machine published)."""
        return self.at(f"checkpoints/{asset}/{key}.pt")

    def retire_checkpoint(self, asset: str, key: str) -> None:
        """A finished training's checkpoint: deleted here and, on shared storage, retracted there too (every
        published version), so that no other machine downloads it or resumes from it."""
        path = self.path / "checkpoints" / asset / f"{key}.pt"
        path.unlink(missing_ok=True)
        if self.url:
            self.mirror.retract(path)

    @contextlib.contextmanager
    def partition_lock(self, label: str, holder: str = "") -> Iterator[None]:
        """Hold the lock of one asset partition (`label`, e.g. 'model/base[base]') while it is materialized.

        A second process (the UI and the shell on one home) is refused at once with who holds it;
        the operating system releases the lock when its holder dies, so a crash leaves none behind."""
        def refuse(other: str) -> None:
            raise PartitionBusy(
                f"{label} is being materialized by {other or 'another process'} on this home ({self.root}); "
                "wait for that run to finish (featureflow ui shows it) and materialize again"
            ) from None

        with file_lock(self.path / ".locks" / lock_name(label), f"pid {os.getpid()}{' ' + holder if holder else ''}", refuse):
            yield

    @contextlib.contextmanager
    def write_dir(self, final: Path) -> Iterator[Path]:
        self.claim()
        with atomic_dir(final) as tmp:
            yield tmp

    @contextlib.contextmanager
    def write_file(self, final: Path) -> Iterator[Path]:
        self.claim()
        with atomic_file(final) as tmp:
            yield tmp
