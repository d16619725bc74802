"""How featureflow marks the Dagster runs it makes or takes part in, said once: the tags that
record which process materializes a partition (so that a later featureflow can tell a dead run),
the pool of the steps that use the device, and how a partition is named on the terminal and in locks.
Plain strings: the wiring (assets/) and the shell (runner.py) both read them."""

from __future__ import annotations

import os
import socket

PID_TAG, HOST_TAG, STEP_TAG = "featureflow/pid", "featureflow/host", "featureflow/partition"
KEY_FIGURES_METADATA = "featureflow/key_figures"  # an asset definition's metadata: what the shell prints of a run
POOL = "gpu"  # the instance's concurrency pool of every asset that uses the device (dagster.yaml sets its slots)


def partition_label(key: str, partition: str | None) -> str:
    """`model/base[base]`, `tokenizer`: how the shell, plans and locks name an asset partition (`key`
    as Dagster's user string, e.g. 'model/base')."""
    return key + (f"[{partition}]" if partition else "")


def process_tags() -> dict[str, str]:
    """This process on this host, as run tags."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
