"""Beyond one process: executors by configuration, GPU requests on exactly the device assets, the micro
lineage materialized by the multiprocess executor within the device pool, and the plan's token counts
against what that run records."""

import functools
import itertools

import dagster as dg
import pytest

from featureflow_dagster.costs import estimate, token_counts
from featureflow_dagster.definitions import build_definitions
from featureflow_dagster.lineage import load_lineage
from featureflow_dagster.runner import descendant_counts, materialization_plan, materialize_lineage, select

CPU_ONLY = {"model_summary", "corpus", "tokenizer", "tokens", "tasks", "feature_flow", "case_studies", "autointerp_summary"}


def _with_autointerp():
    lineage = load_lineage("micro")
    return lineage.model_copy(update={"autointerp": lineage.autointerp.model_copy(update={"enabled": True})})


@pytest.mark.parametrize("name,expected", [("in_process", "in_process"), ("multiprocess", "multiprocess"),
                                           ("k8s", "k8s")])
def test_definitions_are_built_with_each_executor(tmp_path, name, expected):
    defs = build_definitions(load_lineage("micro"), home=str(tmp_path), device="cpu", executor=name)
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == expected
    if name == "multiprocess":  # bound to FEATUREFLOW_WORKERS (default: the cores), not Dagster's default
        assert job.executor_def is not dg.multiprocess_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        assert job.executor_def.executor_creation_fn is k8s_job_executor.executor_creation_fn


def test_an_unknown_executor_or_worker_count_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREFLOW_EXECUTOR", "gpu-cluster")
    with pytest.raises(ValueError, match="FEATUREFLOW_EXECUTOR is 'gpu_cluster'; use one of in_process, multiprocess, k8s"):
        build_definitions(load_lineage("micro"), home=str(tmp_path), device="cpu")
    monkeypatch.setenv("FEATUREFLOW_EXECUTOR", "multiprocess")
    monkeypatch.setenv("FEATUREFLOW_WORKERS", "0")
    with pytest.raises(ValueError, match="FEATUREFLOW_WORKERS is '0'"):
        build_definitions(load_lineage("micro"), home=str(tmp_path), device="cpu")


def test_gpu_requests_and_the_pool_are_on_exactly_the_assets_that_use_the_device(tmp_path):
    from dagster_k8s.job import get_user_defined_k8s_config

    defs = build_definitions(_with_autointerp(), home=str(tmp_path), device="cpu", executor="k8s")
    graph = defs.resolve_asset_graph()
    seen_device, seen_cpu = set(), set()
    for asset in defs.assets:
        if not isinstance(asset, dg.AssetsDefinition) or not asset.is_materializable:
            continue
        group = next(iter(asset.keys)).path[0]
        uses_device = "device" in asset.required_resource_keys
        k8s = get_user_defined_k8s_config(asset.op.tags)  # how dagster-k8s reads a step's tags
        limits = (k8s.container_config or {}).get("resources", {}).get("limits", {})
        assert (limits.get("nvidia.com/gpu") == "1") == uses_device, group
        assert all(graph.get(k).pools == ({"gpu"} if uses_device else set()) for k in asset.keys), group
        (seen_device if uses_device else seen_cpu).add(group)
    assert seen_cpu == CPU_ONLY
    assert {"model", "sae", "activation_store", "feature_correlation", "autointerp", "cmap"} <= seen_device


# the part of micro the multiprocess test runs: every partition that counts tokens (the plan's check
# below), CPU and device steps side by side, and the merge's fan-in
UP_TO_SAES = ["corpus", "tokenizer", "tokens", "model", "slerp_sweep", "activation_store", "sae"]


@pytest.fixture(scope="module")
def parallel_micro(tmp_path_factory):
    """Micro up to its SAEs materialized by two worker processes with one device slot, on a persistent instance."""
    home = tmp_path_factory.mktemp("home")
    lineage = load_lineage("micro")
    defs = build_definitions(lineage, home=str(home), device="cpu", executor="in_process")
    counts = token_counts(lineage)  # before anything runs
    instance = dg.DagsterInstance.local_temp(str(tmp_path_factory.mktemp("dagster")),
                                             overrides={"concurrency": {"pools": {"granularity": "op", "default_limit": 1}}})
    lines = []
    report = materialize_lineage(defs, instance, echo=lines.append, workers=2, device_slots=1, chosen=select(defs, UP_TO_SAES),
                                 rebuild=functools.partial(build_definitions, lineage, str(home), "cpu", "in_process"))
    yield lineage, home, defs, instance, report, counts, lines
    instance.dispose()


def test_the_scheduler_starts_the_partition_with_most_descendants_first(tmp_path):
    defs = build_definitions(load_lineage("micro"), home=str(tmp_path), device="cpu")
    weight = {(k.to_user_string(), pk): n for (k, pk), n in descendant_counts(defs).items()}
    plan = materialization_plan(defs)
    # everything but itself and what it is trained from or beside: three corpora, the tokenizer, three token sets, tasks
    assert weight[("model/base", "base")] == len(plan) - 1 - 3 - 1 - 3 - 1
    # the merge sweep: the merged model, its summary, store, SAE, examples, task scores and circuits, the two
    # edges into the merge (activations, transfer, correlation, CMAP each), the flow, case studies and pages
    assert weight[("slerp_sweep", "merged")] == 7 + 2 * 4 + 3
    assert weight[("model/code", "code")] > weight[("slerp_sweep", "merged")] > weight[("sae", "merged")] > 0
    assert weight[("feature_pages", None)] == weight[("circuits", "base")] == 0


def _latest(instance, key: str, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key.split("/")), asset_partitions=[partition]), limit=1).records
    return records[0].asset_materialization


def _intervals(instance):
    """(asset group, start, end) of every run featureflow started for one partition."""
    from featureflow_dagster.runs import STEP_TAG

    out = []
    for record in instance.get_run_records():
        label = record.dagster_run.tags.get(STEP_TAG)
        if label:
            out.append((label.split("[")[0].split("/")[0], record.start_time, record.end_time))
    return out


@pytest.mark.slow
def test_multiprocess_runs_partitions_at_once_and_device_steps_one_at_a_time(parallel_micro):
    lineage, home, defs, instance, report, counts, lines = parallel_micro
    assert report.ok and sorted(report.done, key=str) == sorted(select(defs, UP_TO_SAES), key=str)
    assert lines[0] == f"{len(report.done)} asset partitions: {len(report.done)} missing; materializing up to 2 at once, each as soon as its inputs are done"
    assert sum(line.startswith("done") for line in lines) == len(report.done)
    runs = _intervals(instance)
    assert len(runs) == len(report.done)
    graph = defs.resolve_asset_graph()
    device_groups = {k.path[0] for k in graph.toposorted_asset_keys if graph.get(k).pools}

    def overlap(a, b):
        return a[1] < b[2] and b[1] < a[2]

    pairs = list(itertools.combinations(runs, 2))
    assert any(overlap(a, b) for a, b in pairs), "no two partitions ran at once"
    clashes = [(a[0], b[0]) for a, b in pairs if a[0] in device_groups and b[0] in device_groups and overlap(a, b)]
    assert not clashes, f"device steps ran at once with one pool slot: {clashes[:3]}"


@pytest.mark.slow
def test_the_same_partitions_in_process_give_the_same_bytes(parallel_micro):
    lineage, home, defs, instance, report, counts, lines = parallel_micro

    def versions():
        return {(k, pk): _latest(instance, k, pk).tags["dagster/data_version"]
                for k, pk in [("tokens", "base"), ("model/base", "base"), ("sae", "code")]}

    before = versions()
    materialize_lineage(defs, instance, only={dg.AssetKey("tokens"), dg.AssetKey(["model", "base"]), dg.AssetKey("sae")},
                        partitions={"base", "code"}, force=True, echo=lambda *_: None)
    assert versions() == before


@pytest.mark.slow
def test_the_plan_counts_the_tokens_the_run_records(parallel_micro):
    lineage, home, defs, instance, report, counts, lines = parallel_micro
    rows = {(r.asset, r.partition): r for r in estimate(lineage, counts).rows}

    def meta(key, pk):
        return {k: v.value for k, v in _latest(instance, key, pk).metadata.items()}

    for node in lineage.node_names:
        if lineage.node(node).data is not None:
            assert rows[("tokens", node)].tokens == meta("tokens", node)["train_tokens"], node
            assert rows[(f"model/{node}", node)].tokens == meta(f"model/{node}", node)["tokens_seen"], node
        assert rows[("activation_store", node)].tokens - lineage.sae_spec(node).eval_tokens // lineage.sae_spec(node).context \
            * lineage.sae_spec(node).context == meta("activation_store", node)["train_tokens"], node
        assert rows[("sae", node)].tokens == meta("sae", node)["tokens_seen"], node
