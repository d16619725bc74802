"""What every asset does around its body: hold its partition's lock, report progress to the
terminal, and refuse SAEs that failed their (blocking) quality checks."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json

import dagster as dg

import os
import socket

from featureflow_dagster import progress
from featureflow_dagster.resources import ArtifactStore
from featureflow_dagster.runner import HOST_TAG, PID_TAG, partition_label

CHECKS_FILE = "checks.json"


@contextlib.contextmanager
def _hold(context, store: ArtifactStore):
    """Record this process on the run (whoever launched it: featureflow, the UI's daemon, `dagster asset
    materialize`), so that a later featureflow marks the run failed if the process dies, take the
    partition's lock, and on shared storage publish every artefact, report and checkpoint as it is written."""
    if PID_TAG not in context.run.tags:
        context.instance.add_run_tags(context.run_id, {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})
    label = partition_label(context.asset_key, context.partition_key if context.has_partition_key else None)
    with store.partition_lock(label, f"run {context.run_id}"), store.publishing():
        yield


def locked(fn):
    """Run the asset body holding `<asset>[<partition>]`'s lock in the store (see ArtifactStore.partition_lock)."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(context, store: ArtifactStore, *args, **kwargs):
            with _hold(context, store):
                yield from fn(context, store, *args, **kwargs)

        return generator

    @functools.wraps(fn)
    def plain(context, store: ArtifactStore, *args, **kwargs):
        with _hold(context, store):
            return fn(context, store, *args, **kwargs)

    return plain


def step_log(context: dg.AssetExecutionContext):
    """`log` for library functions: Dagster's log and the terminal's progress line."""
    return progress.logger(context.log.info)


def require_passing_saes(store: ArtifactStore, nodes) -> None:
    """Raise (naming the node and the failed checks) when a node's SAE failed a quality check: a
    failing SAE feeds no transfer, correlation or flow. The SAE asset writes `checks.json` beside it."""
    for node in nodes:
        path = store.sae_dir(node) / CHECKS_FILE
        if not path.is_file():
            continue
        failed = {k: v for k, v in json.loads(path.read_text()).items() if not v["passed"]}
        if failed:
            detail = ", ".join(f"{k} (value {v['value']:.4g}, bound {v['bound']})" for k, v in failed.items())
            raise dg.Failure(
                description=f"the SAE of node '{node}' failed its quality checks: {detail}; fix its `sae:` settings "
                f"and materialize sae[{node}] again before anything is computed from it",
                allow_retries=False,
            )
