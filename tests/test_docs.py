"""What is said once stays consistent: every asset is an Artefact whose lineage_config partitions are
exactly its own partitions, and every Artefact's place is in the README's on-disk layout."""

import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from featureflow_dagster.assets import ARTEFACTS
from featureflow_dagster.definitions import build_definitions
from featureflow_dagster.lineage import parse_lineage, resolve_lineage_path
from featureflow_dagster.runner import key_figures, materialization_plan

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("name, autointerp", [("micro", False), ("micro", True), ("demo", False)])
def test_config_partitions_are_exactly_the_asset_partitions(tmp_path, name, autointerp):
    raw = yaml.safe_load(resolve_lineage_path(name).read_text())
    if autointerp:
        raw["autointerp"] = {"enabled": True, "model": "m"}
    defs = build_definitions(parse_lineage(raw), home=str(tmp_path))
    built = {k.path[0] + ("" if pk is None else f"/{pk}") for k, pk in materialization_plan(defs)}
    config_keys = set(next(a for a in defs.assets if getattr(a, "key", None) == dg.AssetKey("lineage_config"))
                      .partitions_def.get_partition_keys())
    # model/<node>[node]'s config partition is model/<node>
    assert {"/".join(k.split("/")[:2]) if k.startswith("model/") else k for k in built} == config_keys
    names = {a.name for a in ARTEFACTS}
    assert {k.path[0] for k, _ in materialization_plan(defs)} <= names
    for key, _ in materialization_plan(defs):
        artefact = next(a for a in ARTEFACTS if a.name == key.path[0])
        assert key_figures(defs.assets, key) == list(artefact.key_figures)


def test_every_place_is_in_the_readme_layout():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## On-disk layout"):readme.index("## Timings")]
    for a in ARTEFACTS:
        prefix = a.place.split("{key}")[0]
        assert re.search(rf"(^|\s){re.escape(prefix)}", layout, re.M), f"{a.name}: {a.place} is not in the README's on-disk layout"


def test_the_readmes_staleness_table_is_the_tests_table():
    """The README's table is what `python docs/staleness_table.py` prints from tests/test_staleness.py's ROWS."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("staleness_table", ROOT / "docs" / "staleness_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    start, end = readme.find(module.BEGIN), readme.find(module.END)
    assert 0 <= start < end, "the README has no generated staleness table (its markers are missing)"
    assert readme[start:end + len(module.END)] == module.table(), "README's staleness table differs: run python docs/staleness_table.py"
