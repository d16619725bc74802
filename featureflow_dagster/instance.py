"""Where a lineage's artefacts and Dagster's run history live, chosen from the environment.

FEATUREFLOW_LINEAGE  a shipped lineage name (micro, demo, paper, paper-small, paper-released, prakash, kutsyk) or a path; default 'demo'
FEATUREFLOW_HOME     artefacts of that lineage; default ./.featureflow/<lineage name>
FEATUREFLOW_DEVICE   'auto' (default), 'cpu', 'cuda' or 'cuda:N'
FEATUREFLOW_EXECUTOR 'in_process' (default: one partition at a time), 'multiprocess' (independent
                     partitions at once on this machine) or 'k8s' (every step a Kubernetes pod; the [k8s] extra)
FEATUREFLOW_WORKERS  processes of the multiprocess executor; default: the number of CPU cores
FEATUREFLOW_STORE    where artefacts live when not on this machine's disk: a URL such as s3://bucket/prefix
                     (see resources/store.py); default FEATUREFLOW_HOME
DAGSTER_HOME         Dagster's instance (run history, data versions); default ./.dagster
"""

from __future__ import annotations

import os
from pathlib import Path

# Kept identical to the repository's dagster.yaml (a test compares them): the CLI writes it into a
# fresh DAGSTER_HOME so that an installed featureflow needs no checkout.
DAGSTER_YAML = """\
# Dagster instance settings for featureflow (copied into DAGSTER_HOME by `featureflow`).
telemetry:
  enabled: false

storage:
  sqlite:
    base_dir:
      env: DAGSTER_HOME

# One device step at a time: every asset that uses the device declares pool="gpu" (`featureflow materialize --device-slots N` or `dagster instance concurrency set gpu N` for more).
concurrency:
  pools:
    granularity: op
    default_limit: 1

# The daemon (featureflow ui) fails runs that never start and frees the pool slots of runs that ended.
# Runs whose process was killed mid-step are marked failed by the next `featureflow` command (every
# featureflow asset records its process id on its run).
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 60
"""


def featureflow_home(lineage_name: str) -> Path:
    value = os.environ.get("FEATUREFLOW_HOME")
    return Path(value).expanduser().resolve() if value else (Path.cwd() / ".featureflow" / lineage_name).resolve()


def store_url() -> str | None:
    """FEATUREFLOW_STORE, checked now (an unsupported backend is refused before any compute)."""
    url = os.environ.get("FEATUREFLOW_STORE") or None
    if url:
        from featureflow_dagster.remote import open_remote

        open_remote(url)
    return url


def device_name() -> str:
    return os.environ.get("FEATUREFLOW_DEVICE", "auto")


def tf32_enabled() -> bool:
    """FEATUREFLOW_TF32: '0', 'false' or 'no' keeps CUDA's float32 products in IEEE float32; anything else, TF32."""
    return os.environ.get("FEATUREFLOW_TF32", "1").strip().lower() not in ("0", "false", "no")


EXECUTORS = ("in_process", "multiprocess", "k8s")


def executor_name() -> str:
    name = os.environ.get("FEATUREFLOW_EXECUTOR", "in_process").strip().lower().replace("-", "_")
    if name not in EXECUTORS:
        raise ValueError(f"FEATUREFLOW_EXECUTOR is '{name}'; use one of {', '.join(EXECUTORS)}")
    return name


def worker_count() -> int:
    value = os.environ.get("FEATUREFLOW_WORKERS")
    if value is None:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"FEATUREFLOW_WORKERS is '{value}'; give a positive whole number")
    return int(value)


def ensure_dagster_home() -> Path:
    """Set DAGSTER_HOME (default ./.dagster) and write featureflow's dagster.yaml there if none exists."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
