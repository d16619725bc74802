"""Thin Dagster asset definitions, one module per asset group, built from a lineage."""

from __future__ import annotations

import dagster as dg

from featureflow_dagster.lineage import Lineage
from featureflow_dagster.assets.data import build_data_assets
from featureflow_dagster.assets.flow import build_flow_assets
from featureflow_dagster.assets.merges import build_merge_assets
from featureflow_dagster.assets.models import build_model_assets
from featureflow_dagster.assets.sae import build_sae_assets


def build_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    return [*build_data_assets(lineage), *build_model_assets(lineage), *build_merge_assets(lineage), *build_sae_assets(lineage), *build_flow_assets(lineage)]
