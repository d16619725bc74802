"""The three lineages that name the papers' models (paper-released, prakash, kutsyk) validate and plan offline,
with an empty Hugging Face cache: against their `pretrained.expect` shapes, which a real config.json overrules;
and a lineage whose plan needs more disk than it may use is refused before any compute, with the numbers."""

import os
import subprocess
import sys

import pytest

from featureflow_dagster.lineage import LineageError, load_lineage, parse_lineage

STUDIES = ("paper-released", "prakash", "kutsyk")


def _run(tmp_path, *args, lineage=None, timeout=300):
    env = dict(os.environ, FEATUREFLOW_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(tmp_path / "dagster"),
               FEATUREFLOW_DEVICE="cpu", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-hf-cache"), PYTHONUNBUFFERED="1")
    if lineage:
        env["FEATUREFLOW_LINEAGE"] = lineage
    return subprocess.run([sys.executable, "-m", "featureflow_dagster.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("name", STUDIES)
def test_each_study_lineage_validates_offline_against_its_expected_shapes(name, tmp_path):
    lineage = load_lineage(name)
    out = _run(tmp_path, "validate", name)
    assert out.returncode == 0, out.stderr
    assert f"VALID    lineage '{name}'" in out.stdout
    offline = [line for line in out.stderr.splitlines() if line.startswith("OFFLINE")]
    assert len(offline) == len(lineage.pretrained_nodes) == len(lineage.node_names)  # nothing is trained in these


@pytest.mark.slow
def test_the_prakash_lineage_plans_offline_with_patching_budgets_memory_and_gpu_hours(tmp_path):
    out = _run(tmp_path, "plan", "prakash", timeout=600)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for row in ("circuits[llama]", "cmap[llama__vicuna]", "cmap[llama__goat]", "cmap[llama__float]", "sae[float]"):
        assert row in text, row
    assert "not timed: the largest model has 6.7B parameters" in text and "GPU-hours:" in text
    assert "peak accelerator memory" in text and "disk:" in text


def test_a_real_config_overrules_a_wrong_expected_shape(tmp_path):
    from tiny_models import save, tiny_model, tiny_tokenizer

    from featureflow_dagster.pretrained import check_lineage_models

    tok = tiny_tokenizer()
    folder = save(tiny_model("llama", tok), tok, tmp_path / "m")
    raw = {"name": "x", "n_ctx": 32, "nodes": [{"name": "base", "kind": "base", "data": {"sources": [
        {"name": "py", "kind": "stdlib", "what": "source", "include": ["a*.py"]}]},
        "pretrained": {"path": str(folder), "expect": {"architecture": "LlamaForCausalLM", "d_model": 64, "d_mlp": 64,
                                                       "n_layers": 2, "n_heads": 4, "d_vocab": len(tok)}}}]}
    with pytest.raises(LineageError, match="pretrained.expect.d_model.*expects 64, the model's config.json says 32"):
        check_lineage_models(parse_lineage(raw))
    raw["nodes"][0]["pretrained"]["expect"]["d_model"] = 32
    checked = check_lineage_models(parse_lineage(raw))
    assert set(checked) == {"base"} and checked.expected == {}


@pytest.mark.slow
def test_a_lineage_over_its_disk_budget_is_refused_before_compute_with_the_numbers(tmp_path):
    import yaml

    from featureflow_dagster.lineage import resolve_lineage_path

    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["max_disk_gb"] = 0.001
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = _run(tmp_path, "materialize", lineage=str(path))
    assert out.returncode == 2
    assert "needs about" in out.stderr and "may use 1MB (the lineage's max_disk_gb)" in out.stderr and "activation_store" in out.stderr
    assert not list((tmp_path / "home").rglob("tokens*"))  # nothing computed
