"""The micro lineage materialized through Dagster itself, and what Dagster then knows about staleness."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from featureflow_dagster.definitions import build_definitions, materialize_lineage, stale_statuses
from featureflow_dagster.lineage import load_lineage, parse_lineage, resolve_lineage_path
from featureflow_dagster.model import parameter_distance, weights_hash

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    home = tmp_path_factory.mktemp("featureflow_home")
    lineage = load_lineage("micro")
    defs = build_definitions(lineage, home=str(home), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    done = materialize_lineage(defs, instance, echo=lambda *_: None)
    return lineage, home, instance, defs, done


def _meta(instance, key):
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _status(defs, instance):
    return {(k.to_user_string(), pk): s for (k, pk), s in stale_statuses(defs, instance).items()}


def test_micro_models_are_hugging_face_models(micro):
    lineage, home, instance, defs, done = micro
    trained = [n for n in lineage.node_names if lineage.node(n).kind != "merge"]
    assert {k.to_user_string() for k, _ in done} >= {f"model/{n}" for n in trained}
    for node in trained:
        folder = home / "model" / node
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.config.model_type == "mistral" and model.config.num_hidden_layers == 1
        ids = tok("def f(x): return x", return_tensors="pt").input_ids
        assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))
        meta = _meta(instance, ["model", node])
        margin = 1.0 if lineage.node(node).kind == "base" else 0.1  # from scratch it falls far; a fine-tune less
        assert meta["final_train_loss"] < meta["initial_train_loss"] - margin, node
        for domain in lineage.domains(node):
            assert 0 <= meta[f"val_accuracy/{domain}"] <= 1
        assert meta["weights_hash"] == weights_hash(model)
        assert meta["seed"] == lineage.seed_of(node) and meta["device"] == "cpu"
        assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"] == torch.__version__
    assert not list((home / "checkpoints").rglob("*.pt"))  # finished runs leave no checkpoint


def test_finetune_starts_from_parent_and_moves_away(micro):
    lineage, home, instance, defs, _ = micro
    base = _meta(instance, ["model", "base"])
    for child in lineage.children("base"):
        meta = _meta(instance, ["model", child])
        assert meta["init_weights_hash"] == base["weights_hash"]
        a = AutoModelForCausalLM.from_pretrained(home / "model" / child)
        b = AutoModelForCausalLM.from_pretrained(home / "model" / "base")
        assert 1e-3 < parameter_distance(a, b) < 1.0
        # the fine-tune got better on its own domain than its parent was before fine-tuning
        domain = lineage.domains(child)[0]
        assert meta[f"val_accuracy/{domain}"] > meta[f"val_accuracy_before/{domain}"]


def test_everything_fresh_and_rematerializing_same_content_keeps_it_fresh(micro):
    lineage, home, instance, defs, _ = micro
    assert set(_status(defs, instance).values()) == {"FRESH"}
    # same config, same seed -> same weights hash -> same data version: nothing downstream is stale
    materialize_lineage(defs, instance, only={dg.AssetKey(["model", "base"])}, force=True, echo=lambda *_: None)
    assert set(_status(defs, instance).values()) == {"FRESH"}


def test_changing_one_node_marks_exactly_its_descendants_stale(micro, tmp_path):
    lineage, home, instance, defs, _ = micro
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    for node in raw["nodes"]:
        if node["name"] == "code":
            node["seed"] = 7
    changed = build_definitions(parse_lineage(raw, "micro-changed"), home=str(home), device="cpu")
    status = _status(changed, instance)
    assert status[("model/code", "code")] == "STALE"  # its code version (config fingerprint) changed
    assert status[("model/prose", "prose")] == "FRESH"
    assert status[("model/base", "base")] == "FRESH"
    materialize_lineage(changed, instance, echo=lambda *_: None)
    assert set(_status(changed, instance).values()) == {"FRESH"}

    for node in raw["nodes"]:
        if node["name"] == "base":
            node["seed"] = 11
    changed_base = build_definitions(parse_lineage(raw, "micro-changed"), home=str(home), device="cpu")
    materialize_lineage(changed_base, instance, only={dg.AssetKey(["model", "base"])}, echo=lambda *_: None)
    status = _status(changed_base, instance)
    stale = {k for k, s in status.items() if s != "FRESH"}
    assert stale == {("model/code", "code"), ("model/prose", "prose")}


def test_dagster_cli_materializes_one_partition(micro, tmp_path):
    """The documented shell command, against a fresh instance and home."""
    env = dict(os.environ, FEATUREFLOW_LINEAGE="micro", FEATUREFLOW_HOME=str(tmp_path / "home"),
               DAGSTER_HOME=str(tmp_path / "dagster"), FEATUREFLOW_DEVICE="cpu")
    (tmp_path / "dagster").mkdir()
    shutil.copy(Path(__file__).parents[1] / "dagster.yaml", tmp_path / "dagster")
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "featureflow_dagster.definitions",
           "--select", "corpus", "--partition", "base"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "home" / "corpus" / "base.parquet").is_file()


def test_repository_dagster_yaml_is_the_one_the_cli_writes():
    from featureflow_dagster.instance import DAGSTER_YAML

    assert (Path(__file__).parents[1] / "dagster.yaml").read_text() == DAGSTER_YAML


def test_a_home_of_another_lineage_is_refused(micro, tmp_path):
    lineage, home, instance, defs, _ = micro
    other = parse_lineage({**yaml.safe_load(resolve_lineage_path("micro").read_text()), "name": "other"}, "other")
    wrong = build_definitions(other, home=str(home), device="cpu")
    with pytest.raises(Exception, match="holds artefacts of lineage 'micro'"):
        materialize_lineage(wrong, dg.DagsterInstance.ephemeral(), only={dg.AssetKey("corpus")},
                            partitions={"base"}, echo=lambda *_: None)
