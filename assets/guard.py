"""What every asset does around its body: record its process on the run, hold its partition's lock,
publish what it writes (shared storage), and report progress to the terminal."""

from __future__ import annotations

import contextlib
import functools
import inspect

import dagster as dg

from featureflow_dagster import progress
from featureflow_dagster.resources import ArtifactStore
from featureflow_dagster.runs import PID_TAG, partition_label, process_tags


@contextlib.contextmanager
def _hold(context, store: ArtifactStore):
    """Record this process on the run (whoever launched it: featureflow, the UI's daemon, `dagster asset
    materialize`), so that a later featureflow marks the run failed if the process dies, take the
    partition's lock, and on shared storage publish every artefact, report and checkpoint as it is written."""
    if PID_TAG not in context.run.tags:
        context.instance.add_run_tags(context.run_id, process_tags())
    label = partition_label(context.asset_key.to_user_string(), context.partition_key if context.has_partition_key else None)
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
