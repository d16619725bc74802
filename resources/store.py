"""The artefact store: where every artefact of a lineage lives on disk, written atomically.

Layout under `root` ($FEATUREFLOW_HOME):
  corpus/<node>.parquet          documents per source and split
  tokenizer/                     Hugging Face tokenizer folder
  tokens/<node>.safetensors      token blocks per source and split
  model/<node>/                  Hugging Face model folder (config.json, model.safetensors, tokenizer)
  activation_store/<node>/       manifest.json, train/ and eval/ safetensors shards of hook_post
  sae/<node>/                    cfg.json + sae_weights.safetensors (SAELens layout), feature_density.safetensors
  sae_transfer/<parent>__<child>.parquet   each SAE on each model's activations
  feature_activations/<parent>__<child>/  manifest.json + chunk_*.safetensors: both SAEs' CSR codes, token ids, origin
  feature_correlation/<parent>__<child>/  matches.parquet (top-k partners, both methods), features.parquet (moments, dead)
  feature_flow/                  classification, trajectories, agreement, edge counts (parquet), headline_counts.json, sankey.html
  feature_examples/<node>/       examples.safetensors (top contexts, quantile samples, histograms, token sums), logit_effects.safetensors, features.parquet
  case_studies/case_studies.json per path the persisting feature, per edge the disappearing one (Horn & Elliott's Figures 3-4)
  autointerp/<node>/             scores.parquet (explanation and score per chosen feature), usage.json, scores.html
  tasks/                         <task>.safetensors (clean/corrupt prompts, answers, key positions), tasks.json (settings, samples)
  task_performance/<node>.parquet  accuracy, top-1, logit difference per task
  circuits/<node>/               patching.parquet (per unit), paths.parquet (head -> MLP / logits), circuits.json (units, faithfulness)
  cmap/<parent>__<child>/        cmap.parquet (per unit, both directions), features.parquet (feature-level CMAP), summary.json
  llm_cache/<xx>/<sha256>.json   every LLM answer, keyed by (model, messages, sampling parameters)
  slerp_sweep/<node>/            sweep.parquet (loss, accuracy per t and domain), balance.json, sweep.html
  reports/<asset>/<key>/         plots (plotly HTML) and tables; reports/plotly.min.js, the one plotly.js they all load
  reports/features/              the feature pages (index.html, feature.html, case_studies.html, sankey.html, data/)
  checkpoints/<asset>/<key>.pt   resumable training state, removed when the asset completes
  .locks/<asset>[<key>].lock     held (flock) while a process materializes that partition

With `url` (FEATUREFLOW_STORE, e.g. s3://bucket/featureflow/demo) the artefacts live on shared storage
and `root` is this machine's mirror of them (featureflow_dagster/remote.py): every path accessor first
fetches what another machine published there (except where an asset asks with `fetch=False` for a
large artefact it is about to replace whole), and every atomic write an asset makes is published
as it completes (the asset guard installs the hook), checkpoints included, so a pod that is killed
resumes on another machine from the last published checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

import dagster as dg
from pydantic import Field

from featureflow_dagster.storage import atomic_dir, atomic_file, committing

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

    def _at(self, rel: str, fetch: bool = True) -> Path:
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
        marker = self._at("lineage.json")
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

    def corpus_path(self, node: str) -> Path:
        return self._at(f"corpus/{node}.parquet")

    def tokenizer_dir(self) -> Path:
        return self._at("tokenizer")

    def tokens_path(self, node: str) -> Path:
        return self._at(f"tokens/{node}.safetensors")

    def model_dir(self, node: str, fetch: bool = True) -> Path:
        return self._at(f"model/{node}", fetch)

    def activation_dir(self, node: str, fetch: bool = True) -> Path:
        return self._at(f"activation_store/{node}", fetch)

    def sae_dir(self, node: str, fetch: bool = True) -> Path:
        return self._at(f"sae/{node}", fetch)

    def transfer_path(self, edge: str) -> Path:
        return self._at(f"sae_transfer/{edge}.parquet")

    def feature_activations_dir(self, edge: str, fetch: bool = True) -> Path:
        return self._at(f"feature_activations/{edge}", fetch)

    def feature_correlation_dir(self, edge: str) -> Path:
        return self._at(f"feature_correlation/{edge}")

    def feature_flow_dir(self) -> Path:
        return self._at("feature_flow")

    def examples_dir(self, node: str, fetch: bool = True) -> Path:
        return self._at(f"feature_examples/{node}", fetch)

    def autointerp_dir(self, node: str) -> Path:
        return self._at(f"autointerp/{node}")

    def tasks_dir(self) -> Path:
        return self._at("tasks")

    def task_performance_path(self, node: str) -> Path:
        return self._at(f"task_performance/{node}.parquet")

    def circuits_dir(self, node: str) -> Path:
        return self._at(f"circuits/{node}")

    def cmap_dir(self, edge: str) -> Path:
        return self._at(f"cmap/{edge}")

    def case_studies_path(self) -> Path:
        return self._at("case_studies/case_studies.json")

    def autointerp_summary_path(self) -> Path:
        return self._at("autointerp/summary.parquet")

    def llm_cache_dir(self) -> Path:
        return self._at("llm_cache")

    def feature_pages_dir(self) -> Path:
        return self._at("reports/features")

    def sweep_dir(self, node: str) -> Path:
        return self._at(f"slerp_sweep/{node}")

    def report_dir(self, asset: str, key: str) -> Path:
        return self._at(f"reports/{asset}/{key}")

    def plotly_js(self) -> Path:
        """The one plotly.js every report of this home loads (see plots.write_html)."""
        return self._at("reports/plotly.min.js")

    def checkpoint_path(self, asset: str, key: str) -> Path:
        return self._at(f"checkpoints/{asset}/{key}.pt")

    @contextlib.contextmanager
    def partition_lock(self, label: str, holder: str = "") -> Iterator[None]:
        """Hold the lock of one asset partition (`label`, e.g. 'model/base[base]') while it is materialized.

        A second process (the UI and the shell on one home) is refused at once with who holds it;
        the operating system releases the lock when its holder dies, so a crash leaves none behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        folder = self.path / ".locks"
        folder.mkdir(exist_ok=True)
        path = folder / (label.replace("/", "__") + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                raise PartitionBusy(
                    f"{label} is being materialized by {other} on this home ({self.root}); "
                    "wait for that run to finish (featureflow ui shows it) and materialize again"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}{' ' + holder if holder else ''}".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock

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
