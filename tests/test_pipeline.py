"""The micro lineage materialized through Dagster itself, and what Dagster then knows about staleness."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from featureflow_dagster.definitions import build_definitions
from featureflow_dagster.runner import materialization_plan, materialize_lineage, observe_config, stale_statuses
from featureflow_dagster.lineage import load_lineage, parse_lineage, resolve_lineage_path
from featureflow_dagster.model import parameter_distance, weights_hash

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    home = tmp_path_factory.mktemp("featureflow_home")
    lineage = load_lineage("micro")
    # the artefacts are also published to shared storage (fsspec's in-memory file system), as on a cluster
    defs = build_definitions(lineage, home=str(home), device="cpu", url=f"memory://featureflow-tests/{home.name}")
    instance = dg.DagsterInstance.ephemeral()
    done = materialize_lineage(defs, instance, echo=lambda *_: None).done
    return lineage, home, instance, defs, done


def _files(root: Path) -> dict[str, bytes]:
    skip = (".locks", ".remote")  # the home's bookkeeping; checkpoints are compared (there should be none on either side)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in skip and ".tmp-" not in p.name}


def test_every_artefact_round_trips_through_shared_storage_to_another_machine(micro, tmp_path):
    """A second machine (another local mirror of the same store URL) gets every artefact of every type,
    byte for byte, through the store's own accessors."""
    from featureflow_dagster.assets import ARTEFACTS
    from featureflow_dagster.resources import ArtifactStore

    lineage, home, instance, defs, done = micro
    here = defs.resources["store"]
    there = ArtifactStore(root=str(tmp_path / "other"), lineage_name=lineage.name, url=here.url)
    for artefact in ARTEFACTS:  # every asset's artefact, every partition the lineage builds
        for key in artefact.settings(lineage):
            assert artefact.at(there, key).exists(), (artefact.name, key)
    for path in (there.plotly_js(), there.report_dir("sae", "base")):
        assert path.exists(), path
    there.mirror.fetch()  # and whatever no accessor names (the lineage marker)
    # every training finished: its checkpoint was removed here and retracted from the shared store
    assert not [u for u in there.mirror.versions() if u.startswith("checkpoints/")]
    mine, theirs = _files(home), _files(Path(there.root))
    assert set(theirs) == set(mine)
    assert [f for f in mine if mine[f] != theirs[f]] == []
    assert len(mine) > 200


def _meta(instance, key):
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _status(defs, instance):
    observe_config(defs, instance)  # what featureflow does before planning: makes lineage edits visible
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
        for domain in lineage.domains(node):  # well above chance (1/vocab) and above where training started
            assert meta[f"val_accuracy/{domain}"] > max(10 / len(tok), meta[f"val_accuracy_before/{domain}"]), (node, domain)
        assert meta["weights_hash"] == weights_hash(model)
        assert meta["seed"] == lineage.seed_of(node) and meta["device"] == "cpu"
        assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"] == torch.__version__
    assert not list((home / "checkpoints").rglob("*.pt"))  # finished runs leave no checkpoint


def test_every_model_is_summarized_from_its_saved_folder(micro):
    lineage, home, instance, defs, done = micro
    for node in lineage.node_names:
        model = AutoModelForCausalLM.from_pretrained(home / "model" / node)
        summary = json.loads((home / "model_summary" / f"{node}.json").read_text())
        assert summary["parameters"] == sum(p.numel() for p in model.parameters())
        assert (summary["n_layers"], summary["d_model"], summary["d_mlp"]) == (1, lineage.model.d_model, lineage.model.d_mlp)
        meta = _meta_partition(instance, ["model_summary"], node)
        assert meta["parameters"] == summary["parameters"] and meta["path"] == str(home / "model_summary" / f"{node}.json")


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


def test_changing_one_node_marks_exactly_its_descendants_stale(micro):
    """New weights for the base (another seed) make everything computed from it stale; the base's old
    bytes back (the shipped seed, same weights) make it all fresh again without recomputing anything.
    (What a lineage *edit* marks stale before anything runs is test_staleness.py's table.)"""
    lineage, home, instance, defs, _ = micro
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    for node in raw["nodes"]:
        if node["name"] == "base":
            node["seed"] = 11
    changed_base = build_definitions(parse_lineage(raw, "micro-changed"), home=str(home), device="cpu")
    materialize_lineage(changed_base, instance, only={dg.AssetKey(["model", "base"])}, echo=lambda *_: None)
    assert _meta(instance, ["model", "base"])["seed"] == 11
    status = _status(changed_base, instance)
    stale = {k for k, s in status.items() if s != "FRESH"}
    nodes, edges = ["base", "code", "prose", "merged"], ["base__code", "base__prose", "code__merged", "prose__merged"]
    assert stale == {("model/code", "code"), ("model/prose", "prose"), ("slerp_sweep", "merged"), ("model/merged", "merged")} | {
        (a, n) for a in ("model_summary", "activation_store", "sae", "feature_examples", "task_performance", "circuits") for n in nodes} | {
        (a, e) for a in ("sae_transfer", "feature_activations", "feature_correlation", "cmap") for e in edges} | {
        ("feature_flow", None), ("case_studies", None), ("feature_pages", None)}
    materialize_lineage(defs, instance, only={dg.AssetKey(["model", "base"])}, echo=lambda *_: None)
    assert set(_status(defs, instance).values()) == {"FRESH"}


def test_changing_one_finetune_marks_only_its_sweep_and_merge_stale(micro):
    lineage, home, instance, defs, _ = micro
    assert set(_status(defs, instance).values()) == {"FRESH"}
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    for node in raw["nodes"]:
        if node["name"] == "prose":
            node["training"] = {**raw["training"], "lr": 1.0e-3}
    changed = build_definitions(parse_lineage(raw, "micro-changed"), home=str(home), device="cpu")
    materialize_lineage(changed, instance, only={dg.AssetKey(["model", "prose"])}, echo=lambda *_: None)
    stale = {k for k, s in _status(changed, instance).items() if s != "FRESH"}
    assert stale == {("slerp_sweep", "merged"), ("model/merged", "merged")} | {
        (a, n) for a in ("model_summary", "activation_store", "sae", "feature_examples", "task_performance", "circuits") for n in ("prose", "merged")} | {
        (a, e) for a in ("sae_transfer", "feature_activations", "feature_correlation", "cmap")
        for e in ("base__prose", "prose__merged", "code__merged")} | {("feature_flow", None), ("case_studies", None), ("feature_pages", None)}
    materialize_lineage(defs, instance, only={dg.AssetKey(["model", "prose"])}, echo=lambda *_: None)  # the old bytes back
    assert set(_status(defs, instance).values()) == {"FRESH"}


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


def test_micro_merge_is_mergekits_slerp_at_the_balance_point(micro):
    """The saved merge (mergekit, in-process) equals featureflow's in-memory SLERP at the chosen t."""
    import json

    from featureflow_dagster.merge import SlerpPlan

    lineage, home, instance, defs, _ = micro
    sweep_dir = home / "slerp_sweep" / "merged"
    balance = json.loads((sweep_dir / "balance.json").read_text())
    assert (sweep_dir / "sweep.html").is_file() and (sweep_dir / "sweep.parquet").is_file()
    assert 0.0 <= balance["t"] <= 1.0 and balance["parents"] == ["code", "prose"] and balance["ancestor"] == "base"
    sweep_meta = _meta(instance, ["slerp_sweep"])
    assert sweep_meta["grid_points"] == 51 and sweep_meta["chosen_t"] == balance["t"]
    meta = _meta(instance, ["model", "merged"])
    assert meta["method"] == "slerp" and meta["t"] == balance["t"]
    assert set(k for k in meta if k.startswith("val_accuracy/")) == {"val_accuracy/packages", "val_accuracy/docstrings"}
    code = AutoModelForCausalLM.from_pretrained(home / "model" / "code").state_dict()
    prose = AutoModelForCausalLM.from_pretrained(home / "model" / "prose").state_dict()
    merged = AutoModelForCausalLM.from_pretrained(home / "model" / "merged").state_dict()
    ours = SlerpPlan(code, prose).state_at(balance["t"])
    for name, tensor in merged.items():
        assert float((tensor - ours[name]).abs().max() / ours[name].abs().max()) < 1e-6, name


def _with_merge(merge: dict):
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    for node in raw["nodes"]:
        if node["name"] == "merged":
            node["merge"] = merge
    return parse_lineage(raw, "micro-merge")


@pytest.mark.parametrize(
    "merge, expected",
    [
        ({"method": "linear", "weights": [0.25, 0.75]}, lambda a, b, base: 0.25 * a + 0.75 * b),
        ({"method": "task_arithmetic", "weights": [1.0, 0.5]}, lambda a, b, base: base + (a - base) + 0.5 * (b - base)),
        ({"method": "slerp", "t": 0.0}, lambda a, b, base: a),
        ({"method": "ties", "weights": [1.0, 1.0], "density": 0.5}, None),
        ({"method": "dare_ties", "weights": [1.0, 1.0], "density": 0.5}, None),
        ({"method": "dare_linear", "weights": [0.5, 0.5], "density": 0.5}, None),
    ],
)
def test_every_merge_method_materializes_through_mergekit(micro, merge, expected, tmp_path):
    lineage, home, instance, defs, _ = micro
    changed = build_definitions(_with_merge(merge), home=str(home), device="cpu")
    materialize_lineage(changed, instance, only={dg.AssetKey(["model", "merged"])}, force=True, echo=lambda *_: None)
    merged = AutoModelForCausalLM.from_pretrained(home / "model" / "merged").state_dict()
    code, prose, base = (AutoModelForCausalLM.from_pretrained(home / "model" / n).state_dict() for n in ("code", "prose", "base"))
    meta = _meta(instance, ["model", "merged"])
    assert meta["method"] == merge["method"]
    if merge["method"] != "slerp":
        assert meta.get("base") == (None if merge["method"] == "linear" else "base")
    for name, tensor in merged.items():
        if expected is not None:
            assert torch.allclose(tensor, expected(code[name], prose[name], base[name]), atol=1e-5), name
    if expected is None:  # trimmed or dropped merges: different from every input, same again with the same seed
        assert any(not torch.equal(merged[n], code[n]) and not torch.equal(merged[n], prose[n]) for n in merged)
        first = meta["weights_hash"]
        materialize_lineage(changed, instance, only={dg.AssetKey(["model", "merged"])}, force=True, echo=lambda *_: None)
        assert _meta(instance, ["model", "merged"])["weights_hash"] == first
    materialize_lineage(defs, instance, only={dg.AssetKey(["model", "merged"])}, force=True, echo=lambda *_: None)


def _check_results(instance, name):
    from dagster._core.definitions.asset_checks.asset_check_spec import AssetCheckKey

    records = instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(dg.AssetKey("sae"), name), limit=50)
    return [r.event.dagster_event.event_specific_data for r in records if r.event and r.event.dagster_event]


def test_micro_activation_stores_saes_and_transfer(micro):
    import json

    from sae_lens import SAE as LensSAE

    from featureflow_dagster.activations import ActivationStore

    lineage, home, instance, defs, _ = micro
    merged_store = ActivationStore(home / "activation_store" / "merged")
    sources = merged_store.manifest["splits"]["train"]["windows_per_source"]
    assert set(sources) == {"base/english", "base/python", "code/packages", "prose/docstrings"}
    assert all(n > 0 for n in sources.values())  # the merge's store samples its whole ancestry
    assert merged_store.manifest["hook_name"] == "blocks.0.mlp.hook_post" and merged_store.context == 24
    for node in lineage.node_names:
        meta = _meta_partition(instance, "sae", node)
        assert 0 < meta["l0"] < meta["d_sae"] and meta["mse"] > 0
        assert meta["explained_variance"] > 0.3 and meta["tokens_seen"] > 0
        sae = LensSAE.load_from_disk(home / "sae" / node)
        assert sae.cfg.d_sae == 16 * 64 and json.loads((home / "sae" / node / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.0.mlp.hook_post"
        # the null baselines beside the SAE: a trained decoder leaves its random start; the random
        # dictionary is encoded at the SAE's own L0, and both count features firing >= 20 times
        assert meta["decoder_init_cosine"] < 0.999
        assert meta["top_token_share_features"] > 0 and meta["random_top_token_share_features"] > 0
        assert meta["top_token_share_margin"] == pytest.approx(meta["top_token_share"] - meta["random_top_token_share"])
    for name in ("l0_in_range", "explained_variance_above", "loss_recovered_above", "decoder_left_init"):
        results = _check_results(instance, name)
        assert results and all(r.passed for r in results), name
    import pandas as pd

    table = pd.read_parquet(home / "sae_transfer" / "base__code.parquet")
    assert set(zip(table["sae"], table["activations"])) == {("base", "base"), ("base", "code"), ("code", "base"), ("code", "code")}
    meta = _meta_partition(instance, "sae_transfer", "base__code")
    assert meta["parent_sae_on_parent/explained_variance"] == pytest.approx(_meta_partition(instance, "sae", "base")["explained_variance"])


def _meta_partition(instance, key, partition):
    records = instance.fetch_materializations(dg.AssetKey(key), limit=100).records
    event = next(r for r in records if r.partition_key == partition)
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_an_asset_check_fails_on_a_deliberately_broken_sae(micro):
    lineage, home, instance, defs, _ = micro
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["sae"] = {**raw["sae"], "lr": 1.0e-9, "epochs": 1}  # an SAE that never leaves its random init
    broken = build_definitions(parse_lineage(raw, "micro-broken"), home=str(home), device="cpu")
    before = dg.evaluate_automation_conditions(defs=broken, instance=instance)
    materialize_lineage(broken, instance, only={dg.AssetKey("sae")}, partitions={"base"}, echo=lambda *_: None)
    # the daemon's automation asks for nothing computed from the failing SAE: feature_examples[base]
    # reads only sae[base] (and unchanged inputs), so only the blocking clause keeps it out; the other
    # SAEs are asked for because this edit changed their settings too
    tick = dg.evaluate_automation_conditions(defs=broken, instance=instance, cursor=before.cursor)
    requested = {(k.to_user_string(), pk) for k, _ in materialization_plan(broken) for pk in tick.get_requested_partitions(k)}
    assert requested == {("sae", "code"), ("sae", "prose"), ("sae", "merged")}
    latest = _check_results(instance, "explained_variance_above")[0]
    assert latest.passed is False
    assert latest.metadata["value"].value < 0.3
    stuck = _check_results(instance, "decoder_left_init")[0]
    assert stuck.passed is False and stuck.metadata["value"].value > 0.9999  # never left its random start
    # blocking: nothing below the failing SAE runs, through featureflow or through Dagster directly
    report = materialize_lineage(broken, instance, partitions={"base__code"}, echo=lambda *_: None)
    assert not report.done and set(report.blocked) == {
        "feature_activations[base__code]", "sae_transfer[base__code]", "feature_correlation[base__code]", "feature_flow",
        "case_studies", "feature_pages", "cmap[base__code]"}
    with pytest.raises(Exception, match="the SAE of node 'base' failed its quality checks"):
        dg.materialize(list(broken.assets), selection=["feature_examples"], partition_key="base",
                       instance=instance, resources=broken.resources)
    with pytest.raises(Exception, match="the SAE of node 'base' failed its quality checks: .*explained_variance_above"):
        dg.materialize(list(broken.assets), selection=["feature_activations"], partition_key="base__code",
                       instance=instance, resources=broken.resources)
    materialize_lineage(defs, instance, only={dg.AssetKey("sae")}, partitions={"base"}, echo=lambda *_: None)
    assert _check_results(instance, "explained_variance_above")[0].passed is True
    assert _check_results(instance, "decoder_left_init")[0].passed is True


def test_micro_feature_flow_end_to_end(micro):
    import json

    import numpy as np
    import pandas as pd

    from featureflow_dagster.correlation import pearson_dense
    from featureflow_dagster.flow import classify_edge, edge_counts, headline_counts, read_code_chunks

    lineage, home, instance, defs, _ = micro
    tables = {}
    for parent, child in lineage.edges():
        edge = f"{parent}__{child}"
        codes = home / "feature_activations" / edge
        manifest = json.loads((codes / "manifest.json").read_text())
        assert manifest["tokens"] == 4800 and manifest["context"] == 24
        # drawn only from the data both models were trained on
        assert {s.split("/")[0] for s, n in manifest["windows_per_source"].items() if n} == set(lineage.shared_data(parent, child))
        chunks = list(read_code_chunks(codes, [f["name"] for f in manifest["files"]], 1024, 1024))
        a = np.concatenate([c[0].toarray() for c in chunks])
        b = np.concatenate([c[1].toarray() for c in chunks])
        assert a.shape == (4800, 1024)
        # the asset's best partners are those of the dense float64 Pearson matrix of the stored codes
        ref = pearson_dense(a, b)
        matches = pd.read_parquet(home / "feature_correlation" / edge / "matches.parquet")
        best = matches[(matches["method"] == "activation") & (matches["rank"] == 0)]
        to_child = best[best["direction"] == "parent_to_child"].set_index("feature")
        live = ~np.isnan(ref).all(axis=1)
        assert np.allclose(to_child["r"].to_numpy()[live], np.nanmax(ref[live], axis=1), atol=1e-9)
        assert np.isnan(to_child["r"].to_numpy()[~live]).all() and to_child["dead"].to_numpy()[~live].all()
        to_parent = best[best["direction"] == "child_to_parent"].set_index("feature")
        live_c = ~np.isnan(ref).all(axis=0)
        assert np.allclose(to_parent["r"].to_numpy()[live_c], np.nanmax(ref[:, live_c], axis=0), atol=1e-9)
        assert set(matches["method"]) == {"activation", "decoder"}
        tables[(parent, child)] = classify_edge(matches, lineage.flow.threshold)
        meta = _meta_partition(instance, "feature_correlation", edge)
        assert meta["at_threshold/parent_persisting"] == int((np.nanmax(ref[live], axis=1) > 0.8).sum())
        # one-to-one pairs: a permutation of the live features whose r sums to the dense matrix's optimum
        from scipy.optimize import linear_sum_assignment

        pairs = pd.read_parquet(home / "feature_correlation" / edge / "one_to_one.parquet")
        act = pairs[pairs["method"] == "activation"]
        block = np.nan_to_num(ref[np.ix_(live, live_c)])
        i, j = linear_sum_assignment(block, maximize=True)
        assert act["parent"].is_unique and act["child"].is_unique and len(act) == min(live.sum(), live_c.sum())
        assert act["similarity"].sum() == pytest.approx(block[i, j].sum(), rel=1e-5)
        assert meta["one_to_one/activation/mean_similarity"] == pytest.approx(act["similarity"].mean(), rel=1e-9)

    flow = home / "feature_flow"
    assert json.loads((flow / "headline_counts.json").read_text()) == json.loads(json.dumps(headline_counts(lineage, tables)))
    counts = pd.read_parquet(flow / "edge_counts.parquet").set_index("edge")
    for (p, c), (pt, ct) in tables.items():
        assert counts.loc[f"{p}->{c}"].to_dict() == edge_counts(pt, ct)
    traj = pd.read_parquet(flow / "trajectories.parquet")
    assert set(traj["path"]) == {"base>code>merged", "base>prose>merged"}
    live_base = int((tables[("base", "code")][0]["status"] != "dead").sum())
    assert (traj[traj["path"] == "base>code>merged"]["start_node"] == "base").sum() == live_base
    # every report loads the home's one plotly.js by a relative path (opens offline, no 4.8 MB copy each)
    site = home / "reports" / "features"
    plots = [flow / "sankey.html", home / "slerp_sweep" / "merged" / "sweep.html",
             *(p for p in (home / "reports").rglob("*.html") if site not in p.parents)]
    # 3 loss curves, 4 densities, sweep (in the artefact and under reports/), Sankey; a heatmap per node (circuits) and edge (cmap)
    assert len(plots) == 10 + 4 + 4
    pages = plots + [site / "sankey.html", site / "feature.html"]
    assert all(p.stat().st_size < 100_000 for p in pages)
    for page in pages:
        src = re.search(r'<script[^>]+src="([^"]*plotly\.min\.js)"', page.read_text()).group(1)
        assert (page.parent / src).resolve() == (home / "reports" / "plotly.min.js").resolve(), page
    assert [p.name for p in home.rglob("plotly*.js")] == ["plotly.min.js"] and (home / "reports" / "plotly.min.js").stat().st_size > 3_000_000
    meta = _meta(instance, "feature_flow")
    assert meta["threshold"] == 0.8 and meta["headline_counts"]["base"] == "base"
    assert set(meta["persisting_share"]) == {"base->code", "base->prose", "code->merged", "prose->merged"}
    agree = pd.read_parquet(flow / "agreement.parquet")
    assert len(agree) == 8 and agree["agreement"].between(0, 1).all()


def test_a_tied_embedding_lineage_sweeps_and_merges(tmp_path):
    """Bug: SLERP sweeps crashed when lm_head is tied to the embedding (named_parameters drops it)."""
    from featureflow_dagster.runner import select

    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["name"], raw["model"] = "micro-tied", {**raw["model"], "tie_word_embeddings": True}
    defs = build_definitions(parse_lineage(raw, "micro-tied"), home=str(tmp_path / "home"), device="cpu")
    report = materialize_lineage(defs, dg.DagsterInstance.ephemeral(), echo=lambda *_: None,
                                 chosen=select(defs, ["corpus", "tokenizer", "tokens", "model", "slerp_sweep"]))
    assert ("slerp_sweep", "merged") in {(k.to_user_string(), pk) for k, pk in report.done}
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "home" / "model" / "merged")
    assert merged.config.tie_word_embeddings and merged.lm_head.weight is merged.model.embed_tokens.weight
    code, prose = (AutoModelForCausalLM.from_pretrained(tmp_path / "home" / "model" / n) for n in ("code", "prose"))
    assert not torch.equal(merged.lm_head.weight, code.lm_head.weight) and not torch.equal(merged.lm_head.weight, prose.lm_head.weight)


def test_micro_feature_examples_match_their_sae(micro):
    """The feature_examples asset through Dagster: its top activation of a feature equals the SAE's
    code at the stored position, and the table's density is fired / tokens."""
    import pandas as pd
    from safetensors.torch import load_file

    from featureflow_dagster.activations import run_to_hook
    from featureflow_dagster.model import load_model
    from featureflow_dagster.sae import load_sae

    lineage, home, instance, defs, _ = micro
    folder = home / "feature_examples" / "code"
    ex = load_file(folder / "examples.safetensors")
    table = pd.read_parquet(folder / "features.parquet")
    assert len(table) == 1024 and ex["windows"].shape[1] == 24
    assert torch.allclose(torch.tensor(table["density"].to_numpy()), ex["fired"].double() / ex["windows"].numel())
    f = int(table["density"].idxmax())
    window, offset = divmod(int(ex["top_positions"][f, 0]), 24)
    sae, model = load_sae(home / "sae" / "code"), load_model(home / "model" / "code", "cpu")
    with torch.no_grad():
        codes = sae.encode(run_to_hook(model, ex["windows"][window:window + 1].long(), sae.cfg.hook_name)[0])
    assert float(codes[offset, f]) == pytest.approx(float(ex["top_values"][f, 0]), rel=1e-4)
    assert float(codes[:, f].max()) <= float(ex["top_values"][f, 0]) + 1e-5
    assert _meta_partition(instance, "feature_examples", "code")["live_features"] == int((table["density"] > 0).sum())


def test_featureflow_feature_prints_evidence_and_refuses_bad_input(micro, monkeypatch, capsys):
    from featureflow_dagster.cli import main

    lineage, home, instance, defs, _ = micro
    monkeypatch.setenv("FEATUREFLOW_HOME", str(home))
    table = __import__("pandas").read_parquet(home / "feature_examples" / "code" / "features.parquet")
    f = int(table["density"].idxmax())
    assert main(["feature", "code", str(f), "--lineage", "micro", "--hypothesis", "e"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"code feature {f}: density {table.loc[f, 'density']:.4%}")
    llr_line = next(line for line in out.splitlines() if "LLR of the top-token hypothesis" in line)
    assert llr_line.endswith(f"{table.loc[f, 'llr_top_token']:.3f}")  # the same hypothesis and value as the asset's table
    assert "LLR of /e/" in out and "[[" in out  # a top context with its token marked
    assert "(LLR: the activation-weighted mean" in out  # what the number means
    monkeypatch.setenv("FEATUREFLOW_REPORTS_PORT", "3312")
    assert main(["feature", "code", str(f), "--lineage", "micro"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"  page: http://127.0.0.1:3312/features/feature.html#node=code&f={f} ")
    for argv, message in ((["feature", "cod", "1"], "unknown node 'cod'"), (["feature", "code", "1024"], "features 0 to 1023"),
                          (["feature", "code", "1", "--hypothesis", "qqqzzz"], "matches no token")):
        assert main([*argv, "--lineage", "micro"]) == 2
        assert message in capsys.readouterr().err


def _site_data(path: Path):
    """The payload of one of the site's data scripts (`FF.<kind>(<json>);`)."""
    import json

    text = path.read_text()
    return json.loads(text[text.index("(") + 1:text.rindex(")")])


def _record(site: Path, node: str, f: int) -> dict:
    index = _site_data(site / "data" / "index.js")
    chunk = _site_data(site / "data" / node / f"{f // index['chunk']:05d}.js")
    return chunk["features"][f % index["chunk"]]


def test_feature_pages_hold_each_live_feature_with_its_contexts_and_lineage(micro):
    """Each page's data against what it was built from: the contexts' activations (encoded again for the
    pages) agree with feature_examples' own top values at the highlighted token, partners and statuses
    are those of the correlation and the flow, the index lists exactly the live features."""
    import pandas as pd

    from featureflow_dagster.examples import FeatureExamples

    lineage, home, instance, defs, _ = micro
    site = home / "reports" / "features"
    index = _site_data(site / "data" / "index.js")
    cls = pd.read_parquet(home / "feature_flow" / "classification.parquet")
    matches = pd.read_parquet(home / "feature_correlation" / "base__code" / "matches.parquet")
    for node in lineage.node_names:
        table = pd.read_parquet(home / "feature_examples" / node / "features.parquet")
        live = table.index[table["density"] > 0].tolist()
        assert index["rows"][node]["feature"] == live
        assert _record(site, node, live[0])["feature"] == live[0]
    ex = FeatureExamples.load(home / "feature_examples" / "code" / "examples.safetensors")
    table = pd.read_parquet(home / "feature_examples" / "code" / "features.parquet")
    checked = 0
    for f in table.sort_values("density", ascending=False)["feature"].head(40):
        rec = _record(site, "code", int(f))
        for w, o, v in rec["contexts"]["top"]:
            acts = dict(map(tuple, rec["acts"][str(w)]))
            assert acts[o] == pytest.approx(v, rel=2e-3, abs=1e-3)  # the pages' codes agree with the examples' pass
            checked += 1
        assert [c[2] for c in rec["contexts"]["top"]] == pytest.approx(ex.top_values[f][ex.top_positions[f] >= 0].tolist(), rel=2e-3)
        assert all(int(f) not in ex.inactive_active[list(ex.inactive_positions.tolist()).index(w * 24 + o)]
                   for w, o, _ in rec["contexts"]["inactive"])
        parent = next(e for e in rec["lineage"]["parents"] if e["node"] == "base")
        row = cls[(cls["edge"] == "base->code") & (cls["side"] == "child") & (cls["feature"] == f)].iloc[0]
        assert parent["status"] == row["status"] and parent["by_r"][0][0] == row["best_partner"]
        dec = matches[(matches["method"] == "decoder") & (matches["direction"] == "child_to_parent") & (matches["feature"] == f)]
        assert [p[0] for p in parent["by_cos"]] == dec.sort_values("rank")["partner"].tolist()
        assert {e["node"] for e in rec["lineage"]["children"]} == {"merged"}
    assert checked >= 40 * 5
    cases = _site_data(site / "data" / "cases.js")
    assert set(cases["persisting"]) == {"base>code>merged", "base>prose>merged"}
    assert set(cases["disappearing"]) == {"base->code", "base->prose", "code->merged", "prose->merged"}
    meta = _meta(instance, "feature_pages")
    assert meta["pages"] == sum(len(index["rows"][n]["feature"]) for n in lineage.node_names)
    assert meta["index"].startswith("http://127.0.0.1:") and meta["index"].endswith("/features/index.html")
    assert "|" in _meta(instance, "case_studies")["cases"]


def test_case_studies_pick_a_feature_persisting_in_every_model_and_one_disappearing_per_edge(micro):
    import json

    import pandas as pd

    lineage, home, instance, defs, _ = micro
    cases = json.loads((home / "case_studies" / "case_studies.json").read_text())
    traj = pd.read_parquet(home / "feature_flow" / "trajectories.parquet")
    cls = pd.read_parquet(home / "feature_flow" / "classification.parquet")
    for path, case in cases["persisting"].items():
        full = traj[(traj["path"] == path) & (traj["start_node"] == "base") & traj["reaches_end"]]
        assert case["mean_r"] == pytest.approx(full["r"].map(lambda r: sum(r) / len(r)).max())
        assert min(case["r"]) > lineage.flow.threshold and case["nodes"] == path.split(">")
    for edge, case in cases["disappearing"].items():
        parent = cls[(cls["edge"] == edge) & (cls["side"] == "parent")].set_index("feature")
        table = pd.read_parquet(home / "feature_examples" / case["parent"] / "features.parquet")
        candidates = table[(parent["status"] == "disappears").to_numpy() & (table["fired"] >= cases["min_fired"]).to_numpy()]
        assert parent.loc[case["feature"], "status"] == "disappears"
        assert case["llr_top_token"] == pytest.approx(candidates["llr_top_token"].max())


def test_feature_pages_are_served_and_render_in_headless_chromium(micro):
    """The site as a researcher opens it: over HTTP (`featureflow reports`) and from disk, in headless
    Chromium, without console errors, showing a feature's top context and its lineage partners."""
    import urllib.request

    from browser import chromium_path, load_pages
    from featureflow_dagster.serve import serve_reports

    lineage, home, instance, defs, _ = micro
    site = home / "reports" / "features"
    server = serve_reports(home / "reports", 0)
    port = server.server_address[1]
    try:
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(base + "/").geturl() == base + "/features/index.html"  # / opens the index
        assert b"FF.indexPage" in urllib.request.urlopen(base + "/features/index.html").read()
        if chromium_path() is None:
            pytest.skip("Chromium is not installed (apt-get install chromium); the pages were not rendered")
        index = _site_data(site / "data" / "index.js")
        rows = index["rows"]["code"]
        f = rows["feature"][max(range(len(rows["feature"])), key=lambda i: rows["llr"][i] if rows["llr"][i] is not None else -99)]
        rec = _record(site, "code", f)
        vocab = _site_data(site / "data" / "vocab.js")
        windows = _site_data(site / "data" / "code" / "windows.js")
        w, o, _ = rec["contexts"]["top"][0]
        ids = windows["ids"][w * 24 + max(0, o - 3): w * 24 + o + 1]
        top_text = "".join(vocab[i] for i in ids).replace("\n", "↵").replace("\t", "⇥")
        emerged = sum(1 for x in rows["origin"] if x == "emerged")
        urls = [f"{base}/features/feature.html#node=code&f={f}", f"file://{site}/feature.html#node=code&f={f}",
                f"{base}/features/index.html#node=code&origin=emerged", f"{base}/features/case_studies.html",
                f"{base}/features/sankey.html", f"{base}/features/feature.html#node=code&f=99999"]
        ready = "document.body && document.body.dataset.ready === '1'"
        pages = load_pages(urls, ready=ready)
    finally:
        server.shutdown()
    for page in pages[:5]:
        assert page.ready and page.errors == [], (page.url, page.errors)
    for page in pages[:2]:  # over HTTP and from disk alike
        assert f"code · feature {f}" in page.text and top_text in page.text
        assert "base->code" in page.text and "code->merged" in page.text  # its status on both edges, with partners
    assert f"{emerged:,} of {len(rows['feature']):,} live features of code" in pages[2].text
    assert "Persisting through every model" in pages[3].text and "LLR" in pages[3].text and "error" not in pages[3].text.lower()
    assert "emerged in merged" in pages[4].text and "all features" in pages[4].text
    assert "feature 99999 is out of range; code has features 0 to 1023" in pages[5].text


def test_autointerp_through_dagster_against_a_local_server(micro, monkeypatch):
    """Off by default; enabled against the tests' OpenAI-compatible server: explanations and scores per
    node, a second materialization sends nothing, an over-cap configuration is refused before any
    request, and the API key appears nowhere in the run's logs or metadata."""
    import pandas as pd

    from llm_server import MODEL, FakeLLM

    lineage, home, instance, defs, _ = micro
    assert "autointerp" not in {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    key = "sk-secret-abc123"
    monkeypatch.setenv("FF_TEST_LLM_KEY", key)
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    with FakeLLM(api_key=key) as server:
        settings = {"enabled": True, "base_url": server.base_url, "model": MODEL, "api_key_env": "FF_TEST_LLM_KEY",
                    "features_per_node": 6, "explain_records": 4, "score_records": 4, "prompt_usd_per_mtok": 10.0,
                    "completion_usd_per_mtok": 30.0, "max_usd": 1.0, "scorers": ["simulation", "detection", "fuzzing"],
                    "max_in_flight": 1}  # one request at a time: the injected faults hit known requests
        on = build_definitions(parse_lineage({**raw, "autointerp": settings}, "micro-ai"), home=str(home), device="cpu")
        # without the key: one sentence naming the setting, before any request
        monkeypatch.delenv("FF_TEST_LLM_KEY")
        result = dg.materialize(list(on.assets), selection=["autointerp"], partition_key="code", instance=instance,
                                resources=on.resources, raise_on_error=False)
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "FF_TEST_LLM_KEY (autointerp.api_key_env) is not set" in str(failure.event_specific_data.error)
        assert server.requests == 0
        monkeypatch.setenv("FF_TEST_LLM_KEY", key)
        # the first explainer request is rate-limited, then meets a server error (both retried); the first
        # simulation gets an answer that is not JSON: counted, left out of that feature's score, the run goes on
        server.faults = ["429", "500", None, "garbage"]
        report = materialize_lineage(on, instance, only={dg.AssetKey("autointerp")}, partitions={"code"}, echo=lambda *_: None)
        assert [(k.to_user_string(), pk) for k, pk in report.done] == [("autointerp", "code")]
        sent = server.requests - 2  # answered requests (two were refused and retried)
        table = pd.read_parquet(home / "autointerp" / "code" / "scores.parquet")
        # per feature: the explainer, 4 simulations, fuzzing, and detection where non-activating windows exist
        assert len(table) == 6 and table["persisting"].sum() == 3 and sent == 6 * (1 + 4 + 1) + table["detection"].notna().sum()
        assert table["fuzzing"].notna().all() and table["detection"].notna().sum() >= 3
        assert table["explanation"].str.startswith("the token").all() and table["score"].notna().any()
        meta = _meta_partition(instance, "autointerp", "code")
        assert meta["usage"]["requests"] == sent and meta["usage"]["cache_hits"] == 0 and meta["usage"]["usd"] > 0
        assert meta["usage"]["retries"] == 2 and meta["usage"]["malformed"] == 1
        assert table["malformed"].tolist() == [1, 0, 0, 0, 0, 0] and table["records_scored"].tolist() == [3, 4, 4, 4, 4, 4]
        answered, sent = sent, server.requests
        # again, forced: every answer from the cache
        materialize_lineage(on, instance, only={dg.AssetKey("autointerp")}, partitions={"code"}, force=True, echo=lambda *_: None)
        assert server.requests == sent
        assert _meta_partition(instance, "autointerp", "code")["usage"]["cache_hits"] == answered
        # over the cap: refused before any request, naming the setting
        capped = build_definitions(parse_lineage({**raw, "autointerp": {**settings, "max_usd": 1e-6}}, "micro-ai"),
                                   home=str(home), device="cpu")
        result = dg.materialize(list(capped.assets), selection=["autointerp"], partition_key="prose", instance=instance,
                                resources=capped.resources, raise_on_error=False)
        assert not result.success and server.requests == sent
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "autointerp.max_usd = 1e-06" in str(failure.event_specific_data.error)
        # the rest of the lineage, the lineage-wide comparison, and the explanations on the pages and in the shell
        report = materialize_lineage(on, instance, only={dg.AssetKey("autointerp"), dg.AssetKey("autointerp_summary"),
                                                         dg.AssetKey("feature_pages")}, echo=lambda *_: None)
        done = {(k.to_user_string(), pk) for k, pk in report.done}
        assert done == {("autointerp", "base"), ("autointerp", "prose"), ("autointerp", "merged"),
                        ("autointerp_summary", None), ("feature_pages", None)}
        # the lineage-wide cap: what the other three nodes spent (their usage.json) plus code's estimate of requests not
        # cached yet (other records, so other prompts) is above a cap set at what the others spent: refused, nothing sent
        spent = sum(json.loads((home / "autointerp" / n / "usage.json").read_text())["usd"] for n in ("base", "prose", "merged"))
        assert spent > 0
        lineage_cap = build_definitions(parse_lineage({**raw, "autointerp": {**settings, "explain_records": 3,
                                                                             "max_usd_lineage": spent}}, "micro-ai"),
                                        home=str(home), device="cpu")
        before = server.requests
        result = dg.materialize(list(lineage_cap.assets), selection=["autointerp"], partition_key="code", instance=instance,
                                resources=lineage_cap.resources, raise_on_error=False)
        assert not result.success and server.requests == before
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert f"autointerp.max_usd_lineage = {spent}" in str(failure.event_specific_data.error)
        summary = pd.read_parquet(home / "autointerp" / "summary.parquet")
        assert len(summary) == 24 and set(summary["group"]) <= {"persisting", "emerged", "disappearing"}
        assert (summary["group"] == "persisting").sum() == summary["persisting"].sum()  # the asset's choice, the same rule
        assert "persisting" in _meta(instance, "autointerp_summary")["scores_by_group"]
        f = int(table["feature"][0])
        rec = _record(home / "reports" / "features", "code", f)
        assert rec["explanation"]["text"] == table["explanation"][0] and rec["explanation"]["text"].startswith("the token")
        from featureflow_dagster.cli import main

        monkeypatch.setenv("FEATUREFLOW_HOME", str(home))
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["feature", "code", str(f), "--lineage", "micro"]) == 0
        assert f"LLM explanation: {table['explanation'][0]}" in out.getvalue()
        from browser import chromium_path, load_pages

        if chromium_path() is not None:  # the page shows it (rendered where Chromium is installed)
            site = home / "reports" / "features"
            page, index = load_pages([f"file://{site}/feature.html#node=code&f={f}", f"file://{site}/index.html#node=code"],
                                     ready="document.body && document.body.dataset.ready === '1'")
            assert page.errors == [] and "LLM explanation: the token" in page.text and "simulation score" in page.text
            assert index.errors == [] and "explanation" in index.text
        # the key: sent to the server, never written anywhere
        assert server.keys and all(k == f"Bearer {key}" for k in server.keys)
        logs = "".join(str(e.dagster_event) + e.message for r in instance.get_runs() for e in instance.all_logs(r.run_id))
        assert len(logs) > 1000 and key not in logs and key not in str(meta)
        assert not any(key in p.read_text(errors="ignore") for p in home.rglob("*") if p.is_file() and p.suffix in (".json", ".html"))


def test_circuits_and_cmap_through_dagster_agree_with_each_other_and_the_models(micro):
    """Micro's tasks, circuits and CMAP, as the assets wrote them: the accuracies are the models' own on
    the stored prompts, every circuit is judged against random circuits of its size, each edge's gap is
    the two nodes' performance difference, and the heatmaps exist."""
    import json

    import pandas as pd

    from featureflow_dagster import patching as P
    from featureflow_dagster.hooked import load_hooked_model
    from featureflow_dagster.patching.tasks import load_tasks, task_metrics

    lineage, home, instance, defs, done = micro
    assert {k.to_user_string() for k, _ in done} >= {"tasks", "task_performance", "circuits", "cmap"}
    tasks = load_tasks(home / "tasks")
    assert list(tasks) == [t.name for t in lineage.tasks]
    perf = {}
    for node in lineage.node_names:
        table = pd.read_parquet(home / "task_performance" / f"{node}.parquet").set_index("task")
        model = load_hooked_model(home / "model" / node)
        for name, batch in tasks.items():
            again = task_metrics(P.final_logits(model, batch.clean), batch)
            assert table.loc[name, "accuracy"] == pytest.approx(again["accuracy"])
            assert table.loc[name, "logit_diff"] == pytest.approx(again["logit_diff"], abs=1e-4)
            perf[(node, name)] = again["logit_diff"]
        summary = json.loads((home / "circuits" / node / "circuits.json").read_text())
        effects = pd.read_parquet(home / "circuits" / node / "patching.parquet")
        for name, s in summary.items():
            e = effects[effects["task"] == name]
            above = e[e["position"].notna() & e["component"].str.match(r"^L\d+\.(H\d+|mlp)$") & (e["effect"] >= lineage.patching.circuit_threshold)]
            assert len(s["units"]) == s["size"] == len(above)
            # random circuits exist exactly when the circuit is not empty (an empty one has no cells to draw from)
            assert (s["size"] == 0) == (s["random_at_least"] != s["random_at_least"])
            assert s["universe"] == batch.length * (model.cfg.n_heads + 1) and s["pool"] >= s["size"]
            assert s["found_on"] == len(batch) // 2 and s["examples"] == len(batch) - len(batch) // 2
            assert (home / "reports" / "circuits" / node / f"{name}.html").is_file()
    for parent, child in lineage.edges():
        edge = f"{parent}__{child}"
        summary = json.loads((home / "cmap" / edge / "summary.json").read_text())
        units = pd.read_parquet(home / "cmap" / edge / "cmap.parquet")
        features = pd.read_parquet(home / "cmap" / edge / "features.parquet")
        for name, s in summary.items():
            assert s["gap"] == pytest.approx(perf[(child, name)] - perf[(parent, name)], abs=1e-4)
            u = units[units["task"] == name]
            assert len(u) == 2 * len(P.component_names(model, lineage.patching.components)) * (tasks[name].length + 1)
            assert u["share"].notna().all() == s["gap_resolved"]
            f = features[features["task"] == name]
            assert {"persisted", "emerged", "all_live"} <= set(f["set"])
            assert (f["set"].str.startswith("random_")).sum() == 2 * lineage.patching.feature_null_draws
            assert (home / "reports" / "cmap" / edge / f"{name}.html").is_file()
        meta = _meta_partition(instance, "cmap", edge)
        assert meta["persisted_child_features"] + meta["emerged_child_features"] <= 1024


def test_micro_models_imported_as_pretrained_nodes_give_identical_stores_and_flow(micro, tmp_path):
    """The identity: featureflow's own trained micro models, pointed at as pretrained folders (the merge as a
    published merge), give byte-identical activation stores and SAEs and the same flow classification."""
    import pandas as pd

    from featureflow_dagster.pretrained import check_lineage_models
    from featureflow_dagster.runner import select

    lineage, home, *_ = micro
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["name"] = "micro-pretrained"
    raw.pop("tokenizer"), raw.pop("training"), raw.pop("tasks")
    raw["n_ctx"] = raw.pop("model")["n_ctx"]
    for node in raw["nodes"]:
        node["pretrained"] = {"path": str(home / "model" / node["name"])}
        node.pop("merge", None)
    copy = parse_lineage(raw, "micro-pretrained")
    assert copy.tokenizer.kind == "model" and set(check_lineage_models(copy)) == set(lineage.node_names)
    defs = build_definitions(copy, home=str(tmp_path / "home"), device="cpu")
    report = materialize_lineage(defs, dg.DagsterInstance.ephemeral(), echo=lambda *_: None,
                                 chosen=select(defs, ["corpus", "tokenizer", "tokens", "model", "activation_store", "sae",
                                                      "feature_activations", "feature_correlation", "feature_flow"]))
    assert ("feature_flow", None) in {(k.to_user_string(), pk) for k, pk in report.done}
    ours = tmp_path / "home"
    for node in lineage.node_names:
        assert _files(ours / "activation_store" / node) == _files(home / "activation_store" / node), node
        # the SAEs trained on them: the same weights (cfg.json names the lineage, which differs)
        assert (ours / "sae" / node / "sae_weights.safetensors").read_bytes() == (home / "sae" / node / "sae_weights.safetensors").read_bytes()
    a, b = (pd.read_parquet(h / "feature_flow" / "classification.parquet") for h in (home, ours))
    pd.testing.assert_frame_equal(a, b)


def test_warm_started_saes_keep_the_parents_features_where_the_model_did_not_change(micro, tmp_path):
    """flow.warm_start through Dagster (on a copy of the micro home, so the shared one stays as it was), and the
    library check: an SAE warm-started on its own model keeps every decoder row; on a fine-tune its rows turn
    less from where they started than an independent SAE's turned from its random start."""
    import pandas as pd

    from featureflow_dagster.activations import ActivationStore
    from featureflow_dagster.model import load_model
    from featureflow_dagster.runner import select
    from featureflow_dagster.sae import load_sae
    from featureflow_dagster.sae.fit import fit_sae

    lineage, home, instance, *_ = micro
    copy = tmp_path / "home"
    for folder in ("model", "activation_store", "sae", "tokens", "tokenizer", "corpus", "feature_correlation"):
        shutil.copytree(home / folder, copy / folder)
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["flow"]["warm_start"] = True
    warm = parse_lineage(raw, "micro-warm")
    defs = build_definitions(warm, home=str(copy), device="cpu")
    report = materialize_lineage(defs, dg.DagsterInstance.ephemeral(), echo=lambda *_: None,
                                 chosen=select(defs, ["warm_sae", "feature_flow"]))
    assert {(k.to_user_string(), pk) for k, pk in report.done} == {("warm_sae", e.key) for e in lineage.edges()} | {("feature_flow", None)}
    assert not list((copy / "checkpoints").rglob("*.pt"))  # resumable state, removed when each partition completed
    aligned = pd.read_parquet(copy / "warm_sae" / "base__code" / "aligned.parquet")
    assert len(aligned) == load_sae(home / "sae" / "code").cfg.d_sae and aligned["activation_r"].notna().any()
    # the flow by aligned pairs beside matching: every parent feature counted once, the comparison over those live both ways
    flow = copy / "feature_flow"
    counts = pd.read_parquet(flow / "aligned_counts.parquet").set_index("edge")
    matched = pd.read_parquet(flow / "classification.parquet")
    by_pairs = pd.read_parquet(flow / "aligned_classification.parquet")
    assert list(counts.index) == [e.label for e in lineage.edges()]
    for e in lineage.edges():
        c = counts.loc[e.label]
        assert c["parent_persisting"] + c["parent_disappearing"] + c["parent_dead"] == load_sae(home / "sae" / e.parent).cfg.d_sae
        m = matched[(matched["edge"] == e.label) & (matched["side"] == "parent")].set_index("feature")["status"]
        a = by_pairs[(by_pairs["edge"] == e.label) & (by_pairs["side"] == "parent")].set_index("feature")["status"].reindex(m.index)
        live = (m != "dead") & (a != "dead")
        assert c["vs_matching/both"] + c["vs_matching/matching_only"] == int((m[live] == "persists").sum())
        assert c["vs_matching/both"] + c["vs_matching/aligned_only"] == int((a[live] == "persists").sum()) == c["parent_persisting"] - int(
            ((a == "persists") & (m == "dead")).sum())
    # the pages show each parent feature's same-index warm feature beside its matched partners
    from featureflow_dagster.site import LineageTables

    tables = LineageTables(warm, {e: pd.read_parquet(copy / "feature_correlation" / e.key / "matches.parquet") for e in lineage.edges()},
                           matched, pd.read_parquet(flow / "trajectories.parquet"), by_pairs)
    f = int(aligned["activation_r"].abs().idxmax())
    child = next(x for x in tables.lineage_of("base", f)["children"] if x["node"] == "code")
    assert child["warm"]["r"] == pytest.approx(aligned.loc[f, "activation_r"], rel=1e-3)
    assert child["warm"]["cos"] == pytest.approx(aligned.loc[f, "decoder_cosine"], rel=1e-3)
    assert child["warm"]["status"] == ("persists" if aligned.loc[f, "activation_r"] > warm.flow.threshold else "disappears")
    assert "warm" not in next(x for x in tables.lineage_of("code", 0)["parents"])  # a child's own SAE is not the warm one
    # the library: the same model and store (nothing changed) keeps every row; the fine-tune moves them less
    spec, dev = lineage.sae_spec("code"), torch.device("cpu")
    spec = spec.model_copy(update={"lr": spec.lr * warm.flow.warm_start_lr_scale})  # as the warm_sae asset trains
    code_model, store = load_model(home / "model" / "code"), ActivationStore(home / "activation_store" / "code")
    same = fit_sae(spec, store, code_model, 1, dev, "same", init=load_sae(home / "sae" / "code"))
    rows = torch.nn.functional.cosine_similarity(same.sae.W_dec, load_sae(home / "sae" / "code").W_dec, dim=1)
    assert float(rows.min()) > 0.95 and float(rows.median()) > 0.99, (float(rows.min()), float(rows.median()))
    from_base = fit_sae(spec, store, code_model, 1, dev, "from base", init=load_sae(home / "sae" / "base"))
    independent = _meta_partition(instance, "sae", "code")["decoder_init_cosine"]  # to its random start
    assert from_base.values["decoder_init_cosine"] > independent, (from_base.values["decoder_init_cosine"], independent)


def test_the_seed_null_trains_other_seeds_and_the_flow_counts_each_edge_beside_it(micro, tmp_path):
    """flow.null_seeds through Dagster on a copy of the micro home: one more SAE per node with another seed, correlated
    with the node's SAE as an edge is; the flow's null counts agree with the seed tables and the classification. And
    the null's own null: the node's SAE against itself through the same code reproduces every live feature at r 1."""
    import pandas as pd

    from featureflow_dagster.flow import correlate_edge, encode_edge, read_code_chunks
    from featureflow_dagster.flow.null import seed_summary, seed_table
    from featureflow_dagster.lineage import Edge
    from featureflow_dagster.model import load_model
    from featureflow_dagster.runner import select
    from featureflow_dagster.sae import load_sae
    from featureflow_dagster.site import LineageTables

    lineage, home, *_ = micro
    copy = tmp_path / "home"
    for folder in ("model", "activation_store", "sae", "tokens", "tokenizer", "corpus", "feature_correlation"):
        shutil.copytree(home / folder, copy / folder)
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["flow"]["null_seeds"] = 1
    nulled = parse_lineage(raw, "micro-null")
    defs = build_definitions(nulled, home=str(copy), device="cpu")
    report = materialize_lineage(defs, dg.DagsterInstance.ephemeral(), echo=lambda *_: None, chosen=select(defs, ["seed_null", "feature_flow"]))
    assert {(k.to_user_string(), pk) for k, pk in report.done} == {("seed_null", n) for n in lineage.node_names} | {("feature_flow", None)}
    assert not list((copy / "checkpoints").rglob("*.pt"))  # resumable state, removed when each partition completed
    twin = load_sae(copy / "seed_null" / "base" / "seed_1")
    own = load_sae(home / "sae" / "base")
    assert twin.cfg.d_sae == own.cfg.d_sae and not torch.equal(twin.W_dec, own.W_dec)  # another seed, the same recipe
    flow = copy / "feature_flow"
    seeds = pd.read_parquet(flow / "seed_null.parquet")
    assert set(seeds["node"]) == set(lineage.node_names)
    for n in lineage.node_names:
        s = seed_summary(seeds[seeds["node"] == n])
        assert 0 < s["reproducibility"] < 1, (n, s)  # SAE training finds some features again, not all
    counts = pd.read_parquet(flow / "null_counts.parquet").set_index("edge")
    classification = pd.read_parquet(flow / "classification.parquet")
    for e in lineage.edges():
        parent = classification[(classification["edge"] == e.label) & (classification["side"] == "parent")].set_index("feature")
        rep = seeds[seeds["node"] == e.parent].set_index("feature")["reproducible"].reindex(parent.index)
        c = counts.loc[e.label]
        assert c["parent_live"] == int((parent["status"] != "dead").sum())
        assert c["null_expected_persisting"] == int((rep & (parent["status"] != "dead")).sum())
        assert c["parent_persisting_reproducible"] == int((rep & (parent["status"] == "persists")).sum()) <= c["parent_persisting"]
    # the Sankey writes the null under the shares
    volumes = json.loads((flow / "volumes.json").read_text())
    assert volumes["null"] == {e: {k: int(counts.loc[e, k]) for k in ("parent_persisting_reproducible", "null_expected_persisting")}
                               for e in counts.index}
    assert "seed null" in (flow / "sankey.html").read_text()
    tables = LineageTables(nulled, {e: pd.read_parquet(copy / "feature_correlation" / e.key / "matches.parquet") for e in lineage.edges()},
                           classification, pd.read_parquet(flow / "trajectories.parquet"), seeds=seeds)
    f = int(seeds[(seeds["node"] == "code") & seeds["reproducible"]]["feature"].iloc[0])
    shown = tables.lineage_of("code", f)["seed"]
    assert shown["reproducible"] and shown["partners"][0][0] == 1 and shown["partners"][0][2] > nulled.flow.threshold
    # the machinery's own null: the base SAE against itself on the base model
    dev, settings = torch.device("cpu"), nulled.edge_activation_settings("base", "base")
    model = load_model(home / "model" / "base")
    manifest, _, _ = encode_edge(Edge("base", "base"), {"parent": model, "child": model}, {"parent": own, "child": own}, settings,
                                 {d: home / "tokens" / f"{d}.safetensors" for d in settings["shared_data"]}, tmp_path / "codes", dev)
    files = [x["name"] for x in manifest["files"]]
    d = own.cfg.d_sae
    (tmp_path / "self").mkdir()
    correlate_edge(lambda: read_code_chunks(tmp_path / "codes", files, d, d), d, d, own.W_dec.detach(), own.W_dec.detach(),
                   nulled.flow, tmp_path / "self")
    itself = seed_table([pd.read_parquet(tmp_path / "self" / "matches.parquet")], nulled.flow.threshold)
    live = itself[~itself["dead"]]
    assert live["reproducible"].all() and (live["best_r_1"] > 0.999).all() and (live["partner_1"] == live["feature"]).all()


def _crosscoder_pages_show_what_the_crosscoder_computes(lineage, home):
    """Each edge's crosscoder has a site node whose index rows carry the latents' classes and Δ, and a latent's page
    record its figures, both SAE partners, and a top context whose activation is the crosscoder's own encoding of both
    models' activations on that window (read back from the weights, not from the evidence it wrote)."""
    import pandas as pd
    from safetensors.torch import load_file

    from featureflow_dagster.activations import run_to_hook
    from featureflow_dagster.crosscoder import BatchTopKCrosscoder
    from featureflow_dagster.model import load_model
    from featureflow_dagster.sae import load_sae

    site = home / "reports" / "features"
    index = _site_data(site / "data" / "index.js")
    assert index["crosscoders"] == {f"crosscoder.{e.key}": e.label for e in lineage.edges()}
    e = lineage.edges()[0]
    node, folder = f"crosscoder.{e.key}", home / "crosscoder" / e.key
    latents = pd.read_parquet(folder / "latents.parquet").set_index("latent")
    rows = index["rows"][node]
    assert len(rows["feature"]) > 0 and set(rows["feature"]) == set(latents.index[latents["class"] != "dead"])
    assert rows["origin"] == latents.loc[rows["feature"], "class"].tolist()
    assert rows["extra"]["Δ"] == pytest.approx(latents.loc[rows["feature"], "delta"].tolist(), rel=2e-3)
    f = rows["feature"][max(range(len(rows["feature"])), key=lambda i: rows["density"][i])]
    rec = _record(site, node, f)
    cc_rec = rec["crosscoder"]
    assert cc_rec["class"] == latents.loc[f, "class"] and cc_rec["delta"] == pytest.approx(latents.loc[f, "delta"], rel=1e-3)
    assert cc_rec["sae"]["child"][0] == latents.loc[f, "child_sae_feature"] and len(cc_rec["logits_parent"]["top"]) == len(rec["logits"]["top"]) > 0
    state = load_file(str(folder / "crosscoder.safetensors"))
    cc = BatchTopKCrosscoder(state["W_dec"].shape[2], state["W_dec"].shape[0], 16)
    cc.load_state_dict(state)
    cc.eval()
    windows = _site_data(site / "data" / node / "windows.js")
    w, o, value = rec["contexts"]["top"][0]
    ctx = windows["context"]
    tokens = torch.tensor(windows["ids"][w * ctx:(w + 1) * ctx])[None]
    hook = load_sae(home / "sae" / e.parent).cfg.hook_name
    with torch.no_grad():
        xs = [run_to_hook(load_model(home / "model" / n, torch.device("cpu")), tokens, hook)[0] for n in e]
        codes = cc.encode(xs)
    assert value == pytest.approx(float(codes[o, f]), rel=1e-3) and value == pytest.approx(rec["max_activation"], rel=1e-3)
    from browser import chromium_path, load_pages

    if chromium_path() is not None:
        page, listing = load_pages([f"file://{site}/feature.html#node={node}&f={f}", f"file://{site}/index.html#node={node}"],
                                   ready="document.body && document.body.dataset.ready === '1'")
        assert page.errors == [] and f"crosscoder {e.parent}→{e.child} · latent {f}" in page.text
        assert "relative decoder norm Δ" in page.text and f"Logit effects in {e.parent}" in page.text
        assert listing.errors == [] and f"live latents of crosscoder {e.parent}→{e.child}" in listing.text


def test_a_crosscoder_per_edge_through_dagster_and_its_classes_beside_the_sae_flow(micro, tmp_path):
    """flow.crosscoder on a copy of the micro home: one crosscoder per edge, its latent table and held-out figures, and
    feature_flow's table of the crosscoder's classes against the SAE flow's statuses."""
    import pandas as pd

    from featureflow_dagster.runner import select
    from featureflow_dagster.sae import load_sae

    lineage, home, *_ = micro
    copy = tmp_path / "home"
    for folder in ("model", "sae", "tokens", "tokenizer", "corpus", "feature_correlation", "feature_examples"):
        shutil.copytree(home / folder, copy / folder)
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["flow"]["crosscoder"] = {"tokens": 4800, "expansion": 2, "k": 16, "epochs": 24, "batch_tokens": 1024,
                                 "explained_variance_min": 0.5, "dead_fraction_max": 0.5}
    crossed = parse_lineage(raw, "micro-cc")
    defs = build_definitions(crossed, home=str(copy), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    pages = ["crosscoder", "feature_flow", "case_studies", "feature_pages"]
    report = materialize_lineage(defs, instance, echo=lambda *_: None, chosen=select(defs, pages))
    assert {(k.to_user_string(), pk) for k, pk in report.done} == {("crosscoder", e.key) for e in lineage.edges()} | {
        (a, None) for a in pages[1:]}
    _crosscoder_pages_show_what_the_crosscoder_computes(crossed, copy)
    agreement = pd.read_parquet(copy / "feature_flow" / "crosscoder_agreement.parquet")
    for e in lineage.edges():
        latents = pd.read_parquet(copy / "crosscoder" / e.key / "latents.parquet")
        meta = _meta_partition(instance, "crosscoder", e.key)
        d_in = load_sae(home / "sae" / e.parent).cfg.d_in
        assert len(latents) == 2 * d_in and set(latents["class"]) <= {"parent_only", "child_only", "shared", "other", "dead"}
        assert sum(meta[c] for c in ("parent_only", "child_only", "shared", "other", "dead")) == len(latents)
        assert meta["explained_variance_parent"] > 0.5 and meta["explained_variance_child"] > 0.5, meta
        assert latents["delta"].between(0, 1).all() and latents.loc[latents["class"] == "shared", "delta"].between(0.4, 0.6).all()
        rows = agreement[agreement["edge"] == e.label].set_index("class")
        for cls in ("child_only", "shared", "parent_only"):
            row = rows.loc[cls]
            fates = [c for c in rows.columns if c not in ("edge", "sae side", "latents")]
            assert row["latents"] == int((latents["class"] == cls).sum()) == int(row[fates].fillna(0).sum())
    # its figures as (non-blocking) asset checks: met at these bars, failed at an impossible one, nothing blocked
    from dagster._core.definitions.asset_checks.asset_check_spec import AssetCheckKey

    def checks(name):
        records = instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(dg.AssetKey("crosscoder"), name), limit=50)
        return [r.event.dagster_event.event_specific_data for r in records if r.event and r.event.dagster_event]

    assert [c.passed for c in checks("crosscoder_explained_variance")] == [True] * len(lineage.edges())
    assert [c.passed for c in checks("crosscoder_dead_fraction")] == [True] * len(lineage.edges())
    raw["flow"]["crosscoder"]["explained_variance_min"] = 0.999
    strict = build_definitions(parse_lineage(raw, "micro-cc"), home=str(copy), device="cpu")
    assert materialize_lineage(strict, instance, echo=lambda *_: None, chosen=select(strict, ["crosscoder"]), force=True).done
    failed = checks("crosscoder_explained_variance")[0]
    assert failed.passed is False and failed.metadata["bound"].value == 0.999


def test_the_reports_home_draws_the_lineage_and_every_link_on_it_resolves(micro):
    """reports/index.html, as the reports server builds it at its root: every node and edge of micro with its figures
    (the SAE's explained variance as its checks recorded it, the edge's persisting count as the flow's table has
    it), and every link on the page answers 200 over HTTP (in headless Chromium where installed: no console error)."""
    import re
    import urllib.request

    import pandas as pd

    from featureflow_dagster.serve import serve_reports
    from featureflow_dagster.home import write_home

    lineage, home, *_ = micro
    server = serve_reports(home / "reports", 0, on_home=lambda: write_home(lineage, home))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = urllib.request.urlopen(base + "/").read().decode()
        links = sorted(set(re.findall(r'href="([^"#]+)(?:#[^"]*)?"', page)) - {"data:,"})  # the empty favicon
        status = {link: urllib.request.urlopen(f"{base}/{link}").status for link in links}
        from browser import chromium_path, load_pages

        rendered = load_pages([base + "/"], ready="document.getElementById('lineage') !== null")[0] if chromium_path() else None
    finally:
        server.shutdown()
    assert all(code == 200 for code in status.values()) and len(status) > 3 * len(lineage.node_names), status
    for n in lineage.node_names:
        assert f'id="node-{n}"' in page and f"model/{n}/loss_curve.html" in page or lineage.node(n).kind == "merge"
        ev = json.loads((home / "sae" / n / "checks.json").read_text())["explained_variance_above"]["value"]
        assert f"explained variance {ev:.3g}" in page
        acc = json.loads((home / "reports" / "model" / n / "metrics.json").read_text())
        assert any(k.startswith("val_accuracy/") for k in acc), n
    counts = pd.read_parquet(home / "feature_flow" / "edge_counts.parquet").set_index("edge")
    for e in lineage.edges():
        row = counts.loc[e.label]
        assert f'id="edge-{e.key}"' in page
        assert f"{row['parent_persisting']:,} of {row['parent_persisting'] + row['parent_disappearing']:,} parent features persist" in page
    assert "slerp_sweep/merged/sweep.html" in status and "features/sankey.html" in status
    if rendered is not None:
        assert rendered.ready and rendered.errors == [] and "persist" in rendered.text


def test_the_index_threshold_slider_counts_what_the_python_classification_counts(micro):
    """The index re-classifies every edge in the browser at another bar (`#r=` or the slider): at r > 0.7 and 0.9 its
    counts per edge equal flow.classify_edge's on the stored matches at those thresholds, and the table's statuses
    follow (a feature shown 'persists' at 0.7 has its best r above 0.7)."""
    import pandas as pd

    from browser import chromium_path, load_pages
    from featureflow_dagster.flow import classify_edge, edge_counts

    if chromium_path() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    lineage, home, *_ = micro
    site = home / "reports" / "features"
    ready = "document.body && document.body.dataset.ready === '1'"
    pages = load_pages([f"file://{site}/index.html#node=base&r={t}&status=persists" for t in ("0.70", "0.90")], ready=ready)
    for page, t in zip(pages, (0.7, 0.9)):
        assert page.ready and page.errors == [], page.errors
        for e in lineage.edges():
            matches = pd.read_parquet(home / "feature_correlation" / e.key / "matches.parquet")
            counts = edge_counts(*classify_edge(matches, threshold=t))
            assert (f"{e.label.replace('->', ' → ')} {counts['parent_persisting']} persist, {counts['parent_disappearing']} disappear, "
                    f"{counts['child_emerged']} emerged") in page.text, (t, e.label, page.text[:600])
    lower, higher = (int(p.text.split(" of ")[0].rsplit("\n", 1)[-1].replace(",", "")) for p in pages)
    assert lower > higher  # fewer base features persist (on some edge) at the higher bar


def test_metadata_links_resolve_with_the_reports_on_another_port(micro):
    """`featureflow ui --reports-port P` with links recorded at the default port: the reports are served on P and, as
    an alias, on every port the instance's metadata links were written with, so every URL in Dagster's metadata
    (feature pages, heatmaps, loss curves, density plots, the sweep) answers 200."""
    import socket
    import urllib.request

    from featureflow_dagster.serve import recorded_ports, serve_with_aliases

    lineage, home, instance, *_ = micro
    urls = sorted({v.url for key in instance.get_asset_keys() for e in [instance.get_latest_materialization_event(key)] if e
                   for v in e.asset_materialization.metadata.values() if isinstance(v, dg.UrlMetadataValue)})
    ports = recorded_ports(instance)
    assert len(urls) > 10 and ports
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert free not in ports
    try:
        servers, notes = serve_with_aliases(home / "reports", free, ports)
    except OSError:
        pytest.skip("no free port")
    try:
        taken = [n for n in notes if "which is taken" in n]
        if taken:
            pytest.skip(f"the recorded port is held by another program here: {taken}")
        for url in urls:
            path = url.split("#")[0]
            assert urllib.request.urlopen(path).status == 200, url
            moved = path.replace(f":{next(iter(ports))}/", f":{free}/")  # and the same file on the port in use
            assert urllib.request.urlopen(moved).status == 200, moved
    finally:
        for server in servers:
            server.shutdown()


def test_the_sankey_slider_re_derives_the_flow_python_derives_at_that_threshold(micro):
    """The Sankey page's threshold slider (`#r=`): at r > 0.7 every link's value (traced per parent, emerged, lost per
    edge) equals flow_volumes over flow.classify_edge's tables at 0.7 on the stored matches."""
    import pandas as pd

    from browser import chromium_path, load_pages
    from featureflow_dagster.flow import classify_edge, flow_volumes

    if chromium_path() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    lineage, home, *_ = micro
    tables = {tuple(e): classify_edge(pd.read_parquet(home / "feature_correlation" / e.key / "matches.parquet"), threshold=0.7)
              for e in lineage.edges()}
    expected = flow_volumes(lineage, tables)["links"]
    page = load_pages([f"file://{home}/reports/features/sankey.html#r=0.70"], ready="document.body && document.body.dataset.ready === '1'")[0]
    assert page.ready and page.errors == [], page.errors
    assert "At r > 0.70" in page.text
    for link in expected:
        piece = (f"{link['source']} → {link['target']} traced {link['value']}" if link["kind"] == "traced" else
                 f"{link['target']} emerged {link['value']}" if link["kind"] == "emerged" else f"{link['target']} {link['value']}")
        assert piece in page.text, (piece, page.text[:800])
