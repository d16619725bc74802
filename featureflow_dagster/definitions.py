"""The Dagster definitions of one lineage: the only module of the library that builds `dg.Definitions`.

`dagster dev -m featureflow_dagster.definitions` and `dagster asset materialize -m
featureflow_dagster.definitions` load `defs`, built from FEATUREFLOW_LINEAGE (see `instance.py`).
"""

from __future__ import annotations

import warnings

import dagster as dg

from featureflow_dagster.assets import build_assets
from featureflow_dagster.instance import device_name, featureflow_home
from featureflow_dagster.lineage import Lineage, load_lineage
from featureflow_dagster.resources import ArtifactStore, DeviceResource, LLMResource


def build_definitions(lineage: Lineage | None = None, home: str | None = None, device: str | None = None) -> dg.Definitions:
    lineage = lineage or load_lineage()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # include_sources: the sensor also observes lineage_config
        return _definitions(lineage, home, device)


def _definitions(lineage: Lineage, home: str | None, device: str | None) -> dg.Definitions:
    a = lineage.autointerp
    llm = {"llm": LLMResource(base_url=a.base_url, model=a.model, api_key_env=a.api_key_env, timeout=a.timeout,
                              max_in_flight=a.max_in_flight, retries=a.retries)} if a.enabled else {}
    return dg.Definitions(
        assets=build_assets(lineage),
        # Declarative automation (each asset's AutomationCondition, see assets/__init__.py) is evaluated
        # by this sensor while the Dagster daemon runs (`featureflow ui` starts one).
        sensors=[dg.AutomationConditionSensorDefinition(
            "featureflow_automation", target=dg.AssetSelection.all(include_sources=True),
            default_status=dg.DefaultSensorStatus.RUNNING,
            description="Recomputes what an update made stale (eager), and on the lineage's schedule what is missing.")],
        resources={
            "store": ArtifactStore(root=str(home or featureflow_home(lineage.name)), lineage_name=lineage.name),
            "device": DeviceResource(device=device or device_name()),
            **llm,
        },
    )


defs = build_definitions()
