"""Thin Dagster asset definitions, one module per asset group, built from a lineage.

Each module declares its assets' `Artefact`s (assets/spec.py) beside their bodies; `ARTEFACTS`
gathers them, and `lineage_config`, the shell's key figures and the store's layout come from it."""

from __future__ import annotations

import dagster as dg

from featureflow_dagster.lineage import Lineage
from featureflow_dagster.assets import autointerp, data, examples, flow, merges, models, patching, sae
from featureflow_dagster.assets.config import build_config_asset

# one module per asset group: each has `ARTEFACTS` (its Artefacts) and `build(lineage)` (its asset definitions)
GROUPS = (data, models, merges, sae, examples, flow, autointerp, patching)
ARTEFACTS = [a for group in GROUPS for a in group.ARTEFACTS]


def automation_condition(schedule: str | None) -> dg.AutomationCondition:
    """Every derived asset: recompute a partition when an upstream partition gets a new data version
    (a re-materialized model, an observed edit of its settings), once nothing it needs is missing or
    running and every blocking check upstream (the SAE quality bars) passed. With a lineage `schedule:`,
    also materialize missing partitions on each cron tick."""
    # Dagster's all_deps_blocking_checks_passed() needs every dep to map a partition onto this one, which
    # per-node and fan-out mappings do not: block instead when any SAE read has a failed check
    blocked = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.any_checks_match(dg.AutomationCondition.check_failed(), blocking_only=True)
    ).allow(dg.AssetSelection.assets("sae")).with_label("reads an SAE that failed a blocking check")
    # wait while something upstream (up to three hops) still has an update to make, so that a partition
    # fed by two branches of different length is recomputed once, after both, not once per branch
    pending = (dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.newly_missing()).since_last_handled()
    upstream_pending = pending
    for _ in range(3):
        upstream_pending = pending | dg.AutomationCondition.any_deps_match(upstream_pending)
    waiting = dg.AutomationCondition.any_deps_match(upstream_pending).with_label("something upstream will still change")
    cond = dg.AutomationCondition.eager() & ~blocked & ~waiting
    if schedule:
        cond = cond | (
            dg.AutomationCondition.cron_tick_passed(schedule).since_last_handled()
            & dg.AutomationCondition.missing()
            & ~dg.AutomationCondition.any_deps_missing()
            & ~dg.AutomationCondition.any_deps_in_progress()
            & ~dg.AutomationCondition.in_progress()
            & ~blocked
        ).with_label(f"missing, on {schedule}")
    return cond.with_label("eager, once upstream settles, not on a failed SAE" + (f"; missing on {schedule}" if schedule else ""))


def build_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    derived = [a for group in GROUPS for a in group.build(lineage)]
    cond = automation_condition(lineage.schedule)
    # observable sources (pretrained weights) carry their own condition: observed on the schedule, like the config
    derived = [a if isinstance(a, dg.SourceAsset) else a.with_attributes(automation_condition=cond) for a in derived]
    return [build_config_asset(lineage, ARTEFACTS, observe_condition(lineage)), *derived]


def observe_condition(lineage: Lineage) -> dg.AutomationCondition | None:
    """When the daemon observes the observable sources (the lineage file, pretrained weights): on the lineage's `schedule:`."""
    return dg.AutomationCondition.cron_tick_passed(lineage.schedule).since_last_handled() if lineage.schedule else None
