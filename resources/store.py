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

from featureflow_dagster.storage import atomic_dir, atomic_file


class PartitionBusy(RuntimeError):
    """Another process holds the lock of the asset partition this one was about to materialize."""


class ArtifactStore(dg.ConfigurableResource):
    root: str = Field(description="Folder that holds one lineage's artefacts ($FEATUREFLOW_HOME).")
    lineage_name: str = Field(description="The lineage these artefacts belong to; guards against mixing two.")

    @property
    def path(self) -> Path:
        return Path(self.root)

    def claim(self) -> None:
        """Record which lineage owns this folder; refuse to write another lineage's artefacts into it."""
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.path / "lineage.json"
        if marker.exists():
            owner = json.loads(marker.read_text())["lineage"]
            if owner != self.lineage_name:
                raise RuntimeError(
                    f"{self.path} holds artefacts of lineage '{owner}', not '{self.lineage_name}'; "
                    "set FEATUREFLOW_HOME to another folder for this lineage"
                )
        else:
            with atomic_file(marker) as tmp:
                tmp.write_text(json.dumps({"lineage": self.lineage_name}))

    def corpus_path(self, node: str) -> Path:
        return self.path / "corpus" / f"{node}.parquet"

    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    def tokens_path(self, node: str) -> Path:
        return self.path / "tokens" / f"{node}.safetensors"

    def model_dir(self, node: str) -> Path:
        return self.path / "model" / node

    def activation_dir(self, node: str) -> Path:
        return self.path / "activation_store" / node

    def sae_dir(self, node: str) -> Path:
        return self.path / "sae" / node

    def transfer_path(self, edge: str) -> Path:
        return self.path / "sae_transfer" / f"{edge}.parquet"

    def feature_activations_dir(self, edge: str) -> Path:
        return self.path / "feature_activations" / edge

    def feature_correlation_dir(self, edge: str) -> Path:
        return self.path / "feature_correlation" / edge

    def feature_flow_dir(self) -> Path:
        return self.path / "feature_flow"

    def examples_dir(self, node: str) -> Path:
        return self.path / "feature_examples" / node

    def autointerp_dir(self, node: str) -> Path:
        return self.path / "autointerp" / node

    def tasks_dir(self) -> Path:
        return self.path / "tasks"

    def task_performance_path(self, node: str) -> Path:
        return self.path / "task_performance" / f"{node}.parquet"

    def circuits_dir(self, node: str) -> Path:
        return self.path / "circuits" / node

    def cmap_dir(self, edge: str) -> Path:
        return self.path / "cmap" / edge

    def sweep_dir(self, node: str) -> Path:
        return self.path / "slerp_sweep" / node

    def report_dir(self, asset: str, key: str) -> Path:
        return self.path / "reports" / asset / key

    def plotly_js(self) -> Path:
        """The one plotly.js every report of this home loads (see plots.write_html)."""
        return self.path / "reports" / "plotly.min.js"

    def checkpoint_path(self, asset: str, key: str) -> Path:
        return self.path / "checkpoints" / asset / f"{key}.pt"

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
