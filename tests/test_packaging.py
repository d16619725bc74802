"""A built wheel installs featureflow_dagster with its assets and resources inside its namespace."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_built_wheel_works_without_the_checkout(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("featureflow_dagster-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "featureflow_dagster/assets/__init__.py" in names
    assert "featureflow_dagster/resources/store.py" in names
    assert "featureflow_dagster/lineages/demo.yaml" in names
    assert {f"featureflow_dagster/site_static/{n}" for n in ("index.html", "feature.html", "site.js", "site.css")} <= set(names)
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"featureflow_dagster"}, top_level  # no generic 'assets' or 'resources' module

    target = tmp_path / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]
    probe = (
        "import featureflow_dagster, featureflow_dagster.assets as a;"
        "from featureflow_dagster.definitions import defs;"
        "print(featureflow_dagster.__file__); print(a.__file__);"
        "print(sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()))"
    )
    env = dict(os.environ, PYTHONPATH=str(target), FEATUREFLOW_LINEAGE="micro", FEATUREFLOW_HOME=str(tmp_path / "home"))
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    pkg_file, assets_file, keys = run.stdout.strip().splitlines()[-3:]
    assert pkg_file.startswith(str(target)) and assets_file.startswith(str(target))
    assert "model/base" in keys and "tokens" in keys
