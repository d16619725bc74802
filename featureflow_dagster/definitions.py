"""The Dagster definitions of one lineage: the only module of the library that builds `dg.Definitions`.

`dagster dev -m featureflow_dagster.definitions` and `dagster asset materialize -m
featureflow_dagster.definitions` load `defs`, built from FEATUREFLOW_LINEAGE (see `instance.py`).
"""

from __future__ import annotations

import warnings

import dagster as dg

from featureflow_dagster.assets import build_assets
from featureflow_dagster.automation import automation_sensor
from featureflow_dagster.instance import device_name, executor_name, tf32_enabled, featureflow_home, store_url, worker_count
from featureflow_dagster.lineage import Lineage, load_lineage
from featureflow_dagster.resources import ArtifactStore, DeviceResource, LLMResource



def build_definitions(lineage: Lineage | None = None, home: str | None = None, device: str | None = None,
                      executor: str | None = None, url: str | None = None) -> dg.Definitions:
    """`executor` ('in_process', 'multiprocess', 'k8s'; default $FEATUREFLOW_EXECUTOR) is what Dagster's
    own runs use (the UI, backfills, the automation sensor); `featureflow materialize` follows it too.
    `url` (default $FEATUREFLOW_STORE): shared storage for the artefacts, `home` then being its local mirror."""
    lineage = lineage or load_lineage()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # include_sources: the sensor also observes lineage_config
        return _definitions(lineage, home, device, build_executor(executor or executor_name()), url or store_url())


def build_executor(name: str) -> dg.ExecutorDefinition:
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        # independent steps of one run in parallel; steps that use the device still take a `gpu` pool slot
        return dg.multiprocess_executor.configured({"max_concurrent": worker_count()}, name="multiprocess")
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise RuntimeError("FEATUREFLOW_EXECUTOR=k8s needs dagster-k8s: pip install 'featureflow-dagster[k8s]'") from None
        # every step a Kubernetes job; a step that uses the device asks for a GPU through its op tags
        # (assets/config.py ON_DEVICE); job image, namespace and env come from the Helm values (deploy/)
        return k8s_job_executor
    raise ValueError(f"unknown executor '{name}'; use in_process, multiprocess or k8s")


def _definitions(lineage: Lineage, home: str | None, device: str | None, executor: dg.ExecutorDefinition,
                 url: str | None) -> dg.Definitions:
    a = lineage.autointerp
    llm = {"llm": LLMResource(base_url=a.base_url, model=a.model, api_key_env=a.api_key_env, timeout=a.timeout,
                              max_in_flight=a.max_in_flight, retries=a.retries)} if a.enabled else {}
    return dg.Definitions(
        assets=build_assets(lineage),
        executor=executor,
        # Declarative automation (each asset's AutomationCondition, see assets/__init__.py), evaluated by this
        # sensor while the Dagster daemon runs (`featureflow ui` starts one) whenever something was recorded
        sensors=[automation_sensor(lineage.schedule)],
        resources={
            "store": ArtifactStore(root=str(home or featureflow_home(lineage.name)), lineage_name=lineage.name, url=url),
            "device": DeviceResource(device=device or device_name(), tf32=tf32_enabled()),
            **llm,
        },
    )


defs = build_definitions()
