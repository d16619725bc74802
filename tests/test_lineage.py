"""Lineage validation: every malformed lineage is rejected before compute, naming file, node and field."""

import copy
import subprocess
import sys

import pytest
import yaml

from featureflow_dagster.lineage import LineageError, load_lineage, parse_lineage, resolve_lineage_path
from featureflow_dagster.assets import ARTEFACTS
from featureflow_dagster.assets.config import config_versions

STD = {"name": "std", "kind": "stdlib", "what": "docs", "max_documents": 5}


def _lineage(**changes):
    raw = {
        "name": "t",
        "model": {"d_model": 16, "d_mlp": 32, "n_heads": 2, "n_ctx": 32},
        "nodes": [
            {"name": "base", "kind": "base", "data": {"sources": [dict(STD)]}},
            {"name": "lua", "kind": "finetune", "parents": ["base"], "data": {"sources": [dict(STD)]}},
            {"name": "stories", "kind": "finetune", "parents": ["base"], "data": {"sources": [dict(STD)]}},
            {"name": "luastories", "kind": "merge", "parents": ["lua", "stories"]},
        ],
    }
    raw.update(changes)
    return raw


def _node(raw, name):
    return next(n for n in raw["nodes"] if n["name"] == name)


def _rejects(raw, node, field, words, file="lineage.yaml"):
    with pytest.raises(LineageError) as e:
        parse_lineage(raw, file)
    err = e.value
    assert err.file == file and file in str(err)
    assert err.node == node, str(err)
    assert err.field == field, str(err)
    assert words in str(err), str(err)
    return err


def test_valid_lineage_graph_queries():
    lin = parse_lineage(_lineage())
    assert lin.node_names == ["base", "lua", "stories", "luastories"]
    assert lin.edges() == [("base", "lua"), ("base", "stories"), ("lua", "luastories"), ("stories", "luastories")]
    assert lin.ancestors("luastories") == ["lua", "stories", "base"]
    assert lin.descendants("lua") == ["luastories"]
    assert lin.nearest_common_ancestor(["lua", "stories"]) == "base"
    assert lin.depth("luastories") == 2


def test_cycle():
    raw = _lineage()
    _node(raw, "lua")["parents"] = ["luastories"]
    _rejects(raw, "lua", "parents", "cycle in the lineage")


def test_unknown_parent():
    raw = _lineage()
    _node(raw, "lua")["parents"] = ["bsae"]
    _rejects(raw, "lua", "parents", "unknown parent 'bsae'")


def test_duplicate_node():
    raw = _lineage()
    raw["nodes"].append(copy.deepcopy(_node(raw, "lua")))
    _rejects(raw, "lua", "name", "duplicate node name")


def test_base_with_parents():
    raw = _lineage()
    _node(raw, "base")["parents"] = ["lua"]
    _rejects(raw, "base", "parents", "has no parents")


def test_finetune_needs_exactly_one_parent():
    raw = _lineage()
    _node(raw, "lua")["parents"] = []
    _rejects(raw, "lua", "parents", "exactly one parent; got 0")
    raw = _lineage()
    _node(raw, "lua")["parents"] = ["base", "stories"]
    _rejects(raw, "lua", "parents", "exactly one parent; got 2")


def test_merge_needs_two_parents():
    raw = _lineage()
    _node(raw, "luastories")["parents"] = ["lua"]
    _rejects(raw, "luastories", "parents", "at least two parents")


def test_merge_parents_without_common_ancestor():
    raw = _lineage()
    raw["nodes"].insert(1, {"name": "other", "kind": "base", "data": {"sources": [dict(STD)]}})
    _node(raw, "stories")["parents"] = ["other"]
    _rejects(raw, "luastories", "parents", "share no common ancestor")


def test_two_bases_rejected():
    raw = _lineage()
    raw["nodes"].insert(1, {"name": "other", "kind": "base", "data": {"sources": [dict(STD)]}})
    _rejects(raw, None, "nodes", "exactly one base node")


def test_architecture_mismatch():
    raw = _lineage()
    _node(raw, "lua")["model"] = {"d_model": 16, "d_mlp": 64, "n_heads": 2, "n_ctx": 32}
    err = _rejects(raw, "lua", "model", "architecture differs from parent 'base'")
    assert "d_mlp" in str(err)


def test_unknown_source_kind():
    raw = _lineage()
    _node(raw, "lua")["data"]["sources"][0]["kind"] = "s3"
    _rejects(raw, "lua", "data.sources.0", "unknown source kind 's3'; use one of 'hf', 'files', 'stdlib'")


def test_missing_local_files(tmp_path):
    raw = _lineage()
    _node(raw, "lua")["data"]["sources"] = [{"name": "lua", "kind": "files", "paths": [str(tmp_path / "*.lua")]}]
    _rejects(raw, "lua", "data.sources.0.paths", "match no file")


def test_missing_local_hf_dataset(tmp_path):
    raw = _lineage()
    _node(raw, "stories")["data"]["sources"] = [{"name": "s", "kind": "hf", "path": str(tmp_path / "nope")}]
    _rejects(raw, "stories", "data.sources.0.path", "no such local data set")


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("data", "sources", 0, "tokens"), 0, "data.sources.0.tokens"),
        (("data", "sources", 0, "weight"), -1.0, "data.sources.0.weight"),
        (("data", "tokens"), -5, "data.tokens"),
        (("data", "validation_tokens"), 0, "data.validation_tokens"),
    ],
)
def test_non_positive_budget(path, value, field):
    raw = _lineage()
    target = _node(raw, "lua")
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    _rejects(raw, "lua", field, "greater than 0")


def test_non_positive_model_size():
    raw = _lineage()
    raw["model"]["d_mlp"] = 0
    _rejects(raw, None, "model.d_mlp", "greater than 0")


def test_weight_needs_total():
    raw = _lineage()
    _node(raw, "lua")["data"]["sources"][0]["weight"] = 1.0
    _rejects(raw, "lua", "data", "need the node's 'data.tokens' total")


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(LineageError, match="not valid YAML") as e:
        load_lineage(bad)
    assert str(bad) in str(e.value)


def test_unknown_lineage_name():
    with pytest.raises(LineageError, match="shipped names"):
        resolve_lineage_path("no-such-lineage")


def test_source_budgets_by_weight():
    raw = _lineage()
    _node(raw, "base")["data"] = {
        "tokens": 1000,
        "sources": [dict(STD, name="a", weight=3.0), dict(STD, name="b", weight=1.0), dict(STD, name="c", tokens=200)],
    }
    budgets = parse_lineage(raw).node("base").data.source_budgets()
    assert budgets == {"a": 600, "b": 200, "c": 200}


@pytest.mark.parametrize("name", ["micro", "demo", "paper"])
def test_shipped_lineages_have_the_papers_shape(name):
    raw = yaml.safe_load(resolve_lineage_path(name).read_text())
    if name == "paper":  # the paper's hub data sets cannot be checked offline; the schema and graph can
        lin = parse_lineage(raw, name)
    else:
        lin = load_lineage(name)
    kinds = [lin.node(n).kind for n in lin.node_names]
    assert kinds == ["base", "finetune", "finetune", "merge"]


def test_validate_command_prints_verdict(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "featureflow_dagster.cli", "validate", "micro"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("VALID")
    bad = tmp_path / "cycle.yaml"
    raw = _lineage()
    _node(raw, "lua")["parents"] = ["luastories"]
    bad.write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", "featureflow_dagster.cli", "validate", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2  # bad input
    assert "INVALID" in res.stderr and "cycle" in res.stderr and "node 'lua'" in res.stderr


def test_merge_of_mismatched_architectures():
    raw = _lineage()
    _node(raw, "luastories")["model"] = {"d_model": 32, "d_mlp": 32, "n_heads": 2, "n_ctx": 32}
    _rejects(raw, "luastories", "model", "architecture differs from parent 'lua'")


@pytest.mark.parametrize(
    "merge, field, words",
    [
        ({"method": "linear", "weights": [1.0]}, "merge.weights", "1 weights for 2 parents"),
        ({"method": "ties", "base": "nobody"}, "merge.base", "unknown node 'nobody'"),
        ({"method": "ties", "base": "lua"}, "merge.base", "not an ancestor of every parent"),
        ({"method": "slerp", "t": 1.5}, "merge", "slerp t must lie in [0, 1]"),
        ({"method": "linear", "t": 0.5}, "merge", "'t' belongs to slerp"),
        ({"method": "slerp", "sweep": {"start": 0.5, "stop": 0.2}}, "merge.sweep", "must be above start"),
    ],
)
def test_merge_parameters(merge, field, words):
    raw = _lineage()
    _node(raw, "luastories")["merge"] = merge
    _rejects(raw, "luastories", field, words)


def test_three_parent_merge_and_merge_of_merges():
    raw = _lineage()
    raw["nodes"].append({"name": "third", "kind": "finetune", "parents": ["base"], "data": {"sources": [dict(STD)]}})
    raw["nodes"].append({"name": "all3", "kind": "merge", "parents": ["lua", "stories", "third"], "merge": {"method": "ties", "density": 0.5}})
    raw["nodes"].append({"name": "deep", "kind": "merge", "parents": ["luastories", "all3"]})
    _rejects(raw, "deep", "merge.base", "equally near common ancestors ['lua', 'stories']")
    _node(raw, "deep")["merge"] = {"method": "slerp", "base": "lua"}
    lin = parse_lineage(raw)
    assert lin.merge_base("all3") == "base" and lin.merge_base("deep") == "lua"
    assert lin.domains("deep") == ["std"]
    _node(raw, "all3")["merge"] = {"method": "slerp"}
    _rejects(raw, "all3", "merge.method", "slerp merges exactly two parents")


def test_windows_longer_than_the_models_context_are_rejected():
    raw = _lineage(sae={"context": 40})
    _rejects(raw, "base", "sae.context", "exceed the model's n_ctx 32")
    _rejects(_lineage(flow={"context": 33}), None, "flow.context", "exceed the models' n_ctx 32")


@pytest.mark.parametrize("flow, field", [({"threshold": 1.0}, "flow.threshold"), ({"top_k": 0}, "flow.top_k"),
                                         ({"tokens": 0}, "flow.tokens"), ({"bogus": 1}, "flow.bogus")])
def test_flow_settings_are_checked(flow, field):
    with pytest.raises(LineageError) as e:
        parse_lineage(_lineage(flow=flow), "lineage.yaml")
    assert e.value.field == field, str(e.value)


def test_an_edge_draws_from_the_data_both_models_share():
    lin = parse_lineage(_lineage(flow={"context": 8}))
    assert lin.shared_data("base", "lua") == ["base"]
    assert lin.shared_data("lua", "luastories") == ["base", "lua"]
    assert lin.flow_context("base") == 8 and parse_lineage(_lineage()).flow_context("base") == 24


def test_sae_initialisation_shared_or_independent():
    shared = parse_lineage(_lineage(sae={"init": "shared"}))
    assert {shared.sae_seed(n) for n in shared.node_names} == {0}
    independent = parse_lineage(_lineage())  # the default
    seeds = [independent.sae_seed(n) for n in independent.node_names]
    assert len(set(seeds)) == 4 and seeds == [parse_lineage(_lineage()).sae_seed(n) for n in independent.node_names]


@pytest.mark.parametrize("sae, words", [
    ({"architecture": "topk", "k": 8, "decoder_constraint": "free"}, "decoder_constraint 'free' is a relu setting"),
    ({"lr_warmup_fraction": 0.6, "lr_decay_fraction": 0.6}, "must not exceed 1"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations"),
    ({"checks": {"top_token_share_margin_min": 2}}, "less than or equal to 1"),
])
def test_sae_recipe_settings_are_checked(sae, words):
    with pytest.raises(LineageError) as e:
        parse_lineage(_lineage(sae=sae), "lineage.yaml")
    assert words in str(e.value), str(e.value)


def test_a_paid_server_without_prices_is_refused_before_any_request():
    """With both prices at 0 the estimate of a paid API is USD 0 and max_usd caps nothing: a server outside the
    loopback range needs prices (or `free: true`); one on this machine does not."""
    remote = {"enabled": True, "model": "m", "base_url": "https://api.example.org/v1"}
    _rejects(_lineage(autointerp=remote), None, "autointerp", "autointerp.prompt_usd_per_mtok and autointerp.completion_usd_per_mtok are 0")
    _rejects(_lineage(autointerp={**remote, "base_url": "http://10.0.0.7:8000/v1"}), None, "autointerp", "not on this machine")
    for ok in ({**remote, "prompt_usd_per_mtok": 0.15}, {**remote, "completion_usd_per_mtok": 0.6}, {**remote, "free": True},
               {**remote, "base_url": "http://127.0.0.2:8000/v1"}, {**remote, "base_url": "http://localhost:8000/v1"},
               {**remote, "base_url": "http://[::1]:8000/v1"}):
        assert parse_lineage(_lineage(autointerp=ok)).autointerp.enabled
    from featureflow_dagster.autointerp.cost import is_loopback

    assert [is_loopback(u) for u in ("http://127.0.0.1/v1", "http://localhost.example.org/v1", "http://128.0.0.1/v1")] == [True, False, False]


def test_autointerp_is_off_by_default_and_needs_a_model_when_on():
    assert parse_lineage(_lineage()).autointerp.enabled is False
    _rejects(_lineage(autointerp={"enabled": True}), None, "autointerp", "needs autointerp.model")
    _rejects(_lineage(autointerp={"enabled": True, "model": "m", "max_usd": -1}), None, "autointerp.max_usd", "greater than or equal")
    _rejects(_lineage(autointerp={"enabled": True, "model": "m", "scorers": ["vibes"]}), None, "autointerp.scorers.0", "simulation")
    _rejects(_lineage(autointerp={"enabled": True, "model": "m", "scorers": []}), None, "autointerp.scorers", "at least 1")
    on = parse_lineage(_lineage(autointerp={"enabled": True, "model": "m"}))
    versions = config_versions(on, ARTEFACTS)
    assert {k for k in versions if k.startswith("autointerp/")} == {f"autointerp/{n}" for n in on.node_names}
    # how requests are sent (timeout, concurrency, retries, the key's variable) does not change what they ask
    same = config_versions(parse_lineage(_lineage(autointerp={"enabled": True, "model": "m", "timeout": 5, "max_in_flight": 1,
                                              "api_key_env": "OTHER"})), ARTEFACTS)
    assert same["autointerp/base"] == versions["autointerp/base"]
    other = config_versions(parse_lineage(_lineage(autointerp={"enabled": True, "model": "m2"})), ARTEFACTS)
    assert other["autointerp/base"] != versions["autointerp/base"]
