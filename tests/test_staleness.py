"""Exact incremental recompute: for each kind of edit to the micro lineage, the set of STALE asset
partitions is exactly the expected one and everything else stays FRESH; Dagster's automation then
requests exactly the descendants of a re-materialized node."""

import copy
import json

import dagster as dg
import pytest
import yaml

from featureflow_dagster.automation import NOT_EVALUATED, SENSOR_NAME, SHELL_RUNNING
from featureflow_dagster.runs import STEP_TAG
from featureflow_dagster.dagster_internals import stale_status_resolver
from featureflow_dagster.definitions import build_definitions
from featureflow_dagster.lineage import load_lineage, parse_lineage, resolve_lineage_path
from featureflow_dagster.runner import materialization_plan, materialize_lineage, observe_config, stale_statuses

pytestmark = pytest.mark.slow

NODES = ["base", "code", "prose", "merged"]
EDGES = ["base__code", "base__prose", "code__merged", "prose__merged"]
EDGE_ASSETS = ("feature_activations", "sae_transfer", "feature_correlation", "cmap")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    home = tmp_path_factory.mktemp("staleness_home")
    defs = build_definitions(load_lineage("micro"), home=str(home), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    materialize_lineage(defs, instance, echo=lambda *_: None)
    return home, defs, instance


def _stale(defs, instance) -> set[tuple[str, str | None]]:
    observe_config(defs, instance)
    return {(k.to_user_string(), pk) for (k, pk), s in stale_statuses(defs, instance).items() if s != "FRESH"}


def _node(raw, name):
    return next(n for n in raw["nodes"] if n["name"] == name)


def _node_stage(*nodes):
    """A node's model and everything per node below it (its summary, store, SAE)."""
    out = set()
    for n in nodes:
        out |= {(f"model/{n}", n), ("model_summary", n), ("activation_store", n), ("sae", n), ("feature_examples", n),
                ("task_performance", n), ("circuits", n)}
    return out


def _edges(*edges, assets=EDGE_ASSETS):
    return {(a, e) for a in assets for e in edges}


PAGES = {("case_studies", None), ("feature_pages", None)}  # read the flow and every node's examples
FLOW = {("feature_flow", None)} | PAGES
MERGE = {("slerp_sweep", "merged")} | _node_stage("merged")


def _edit_budget(raw):
    _node(raw, "code")["data"]["sources"][0]["tokens"] = 5000


def _edit_globs(raw):
    _node(raw, "code")["data"]["sources"][0]["include"] = ["json/*.py"]


def _edit_training(raw):
    _node(raw, "prose")["training"] = {**raw["training"], "lr": 1.0e-3}


def _edit_seed(raw):
    _node(raw, "code")["seed"] = 7


def _edit_merge(raw):
    _node(raw, "merged")["merge"] = {"method": "slerp", "t": "auto", "sweep": {"step": 0.05}}


def _edit_sae(raw):
    _node(raw, "prose")["sae"] = {**raw["sae"], "lr": 2.0e-3}


def _edit_store(raw):
    _node(raw, "prose")["sae"] = {**raw["sae"], "tokens": 7200}


def _edit_threshold(raw):
    raw["flow"] = {**raw["flow"], "threshold": 0.7}


def _edit_top_k(raw):
    raw["flow"] = {**raw["flow"], "top_k": 4}


def _edit_tokenizer(raw):
    raw["tokenizer"] = {**raw["tokenizer"], "vocab_size": 300}


def _edit_n_ctx(raw):
    raw["model"] = {**raw["model"], "n_ctx": 24}


def _edit_examples(raw):
    raw["examples"] = {**raw.get("examples", {}), "tokens": 2000}


def _edit_case_min_fired(raw):
    raw["examples"] = {**raw.get("examples", {}), "case_min_fired": 5}


def _edit_task(raw):
    raw["tasks"][0]["examples"] = 48


def _edit_circuit_threshold(raw):
    raw["patching"] = {**raw["patching"], "circuit_threshold": 0.2}


def _edit_feature_null(raw):
    raw["patching"] = {**raw["patching"], "feature_null_draws": 2}


def _edit_warm_start(raw):
    raw["flow"] = {**raw["flow"], "warm_start": True}


def _edit_null_seeds(raw):
    raw["flow"] = {**raw["flow"], "null_seeds": 1}


def _edit_one_to_one(raw):
    raw["flow"] = {**raw["flow"], "one_to_one_max": 512}


def _edit_crosscoder(raw):
    raw["flow"] = {**raw["flow"], "crosscoder": {"tokens": 4800}}


def _edit_description(raw):
    _node(raw, "code")["description"] = "words change no bytes"


TASKS = {("tasks", None)} | {(a, n) for a in ("task_performance", "circuits") for n in NODES} | _edges(*EDGES, assets=("cmap",))
EVERYTHING_BELOW_TOKENS = {("tokens", n) for n in ("base", "code", "prose")} | _node_stage(*NODES) | MERGE | _edges(*EDGES) | FLOW | TASKS

ROWS = {
    # one node's data: a budget re-cuts its token blocks (not its documents); a glob changes both
    "data budget (code)": (_edit_budget, {("tokens", "code")} | _node_stage("code") | MERGE
                           | _edges("base__code", "code__merged", "prose__merged") | FLOW),
    "data sources (code)": (_edit_globs, {("corpus", "code"), ("tokens", "code")} | _node_stage("code") | MERGE
                            | _edges("base__code", "code__merged", "prose__merged") | FLOW),
    # a fine-tune's training: its model, the merge that reads it, and what is computed from those
    "training (prose)": (_edit_training, _node_stage("prose") | MERGE | _edges("base__prose", "prose__merged", "code__merged") | FLOW),
    # a node's seed also draws its store windows, SAE init and its incoming edge's windows
    "seed (code)": (_edit_seed, _node_stage("code") | MERGE | _edges("base__code", "code__merged", "prose__merged") | FLOW),
    "merge parameters (sweep grid)": (_edit_merge, MERGE | _edges("code__merged", "prose__merged") | FLOW),
    # one node's SAE: that SAE only (its store keeps its settings), and the flow computed from it
    "sae training (prose)": (_edit_sae, {("sae", "prose"), ("feature_examples", "prose")} | _edges("base__prose", "prose__merged") | FLOW),
    "sae store tokens (prose)": (_edit_store, {("activation_store", "prose"), ("sae", "prose"), ("feature_examples", "prose")}
                                 | _edges("base__prose", "prose__merged") | FLOW),
    # feature flow's threshold also re-draws every edge's persisted/emerged feature sets for CMAP
    "flow threshold": (_edit_threshold, FLOW | _edges(*EDGES, assets=("cmap",))),
    "flow top_k": (_edit_top_k, _edges(*EDGES, assets=("feature_correlation", "cmap")) | FLOW),
    "tokenizer": (_edit_tokenizer, {("tokenizer", None)} | EVERYTHING_BELOW_TOKENS),
    "n_ctx": (_edit_n_ctx, EVERYTHING_BELOW_TOKENS),
    "examples budget": (_edit_examples, {("feature_examples", n) for n in NODES} | PAGES),
    "case studies min_fired": (_edit_case_min_fired, PAGES),
    "task examples": (_edit_task, TASKS),
    "circuit threshold": (_edit_circuit_threshold, {("circuits", n) for n in NODES}),
    "feature-level CMAP null draws": (_edit_feature_null, _edges(*EDGES, assets=("cmap",))),
    # warm-started SAEs are new (missing) edge partitions; the flow and pages read them; no SAE, store or correlation moves
    "flow warm_start on": (_edit_warm_start, _edges(*EDGES, assets=("warm_sae",)) | FLOW),
    # seed-null SAEs are new (missing) node partitions; the flow and pages read them; nothing else moves
    "flow null_seeds on": (_edit_null_seeds, {("seed_null", n) for n in NODES} | FLOW),
    # one-to-one pairs are written beside the matches: the correlations re-run, and what reads them shows stale until
    # then (their matches keep their bytes, so the data versions below do not move and nothing else re-runs)
    "flow one_to_one_max": (_edit_one_to_one, _edges(*EDGES, assets=("feature_correlation", "cmap")) | FLOW),
    # crosscoders are new (missing) edge partitions; the flow reads them (for its agreement table), and the pages the flow
    "flow crosscoder on": (_edit_crosscoder, _edges(*EDGES, assets=("crosscoder",)) | FLOW),
    "description only": (_edit_description, set()),
}


@pytest.mark.parametrize("edit", list(ROWS))
def test_each_kind_of_edit_marks_exactly_its_partitions_stale(micro, edit):
    home, defs, instance = micro
    apply, expected = ROWS[edit]
    assert _stale(defs, instance) == set(), "the micro home must start fresh"
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    apply(raw)
    changed = build_definitions(parse_lineage(copy.deepcopy(raw), "micro-edited"), home=str(home), device="cpu")
    assert _stale(changed, instance) == expected
    assert _stale(defs, instance) == set()  # editing back: nothing to recompute


def _requested(result, defs) -> set[tuple[str, str | None]]:
    keys = {k for k, _ in materialization_plan(defs)}
    return {(k.to_user_string(), pk) for k in keys for pk in result.get_requested_partitions(k)}


def _sensor_tick(defs, instance, cursor):
    """One tick of the `featureflow_automation` sensor as the daemon runs it: its data and the partitions it requests
    (a single run request, or a backfill of several)."""
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                        repository_def=defs.get_repository_def()))
    requested = set()
    for rr in data.run_requests:
        if rr.asset_graph_subset is not None:
            requested |= {(ap.asset_key.to_user_string(), ap.partition_key)
                          for ap in rr.asset_graph_subset.iterate_asset_partitions()}
        else:
            requested |= {(k.to_user_string(), rr.partition_key) for k in rr.asset_selection}
    return data, requested


def test_automation_requests_exactly_the_descendants_of_a_rematerialized_node(micro):
    """Declarative automation through the sensor the daemon runs under `featureflow ui`: after one fine-tune is
    re-materialized with new weights, the ticks request exactly what is computed from it, each once; a tick with
    nothing recorded since the last evaluation skips without evaluating, and one after an event evaluates."""
    home, defs, instance = micro
    assert _stale(defs, instance) == set()
    first, now = _sensor_tick(defs, instance, None)
    assert now == set() and json.loads(first.cursor)["daemon"]  # a fresh lineage asks for nothing
    idle, now = _sensor_tick(defs, instance, first.cursor)
    assert now == set() and NOT_EVALUATED in idle.skip_message and idle.cursor == first.cursor
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    _edit_training(raw)
    changed = build_definitions(parse_lineage(raw, "micro-edited"), home=str(home), device="cpu")
    materialize_lineage(changed, instance, only={dg.AssetKey(["model", "prose"])}, echo=lambda *_: None)
    # the statuses read from records fetched up front (featureflow status) equal Dagster's own resolver's, causes too,
    # with a dependency re-materialized (its newer and older records both asked for)
    graph = changed.resolve_asset_graph()
    answers = [{(k, pk): (r.get_status(k, pk), sorted(map(str, r.get_stale_causes(k, pk))))
                for k, pk in materialization_plan(changed)}
               for r in (stale_status_resolver(instance, graph), stale_status_resolver(instance, graph, prefetch=False))]
    assert answers[0] == answers[1] and sum(s.value == "STALE" for s, _ in answers[0].values()) > 10
    # the daemon's loop: each tick requests what it can run now, the runs land, the next tick goes on
    requested, cursor, ticks = [], first.cursor, 0
    while True:
        tick, now = _sensor_tick(changed, instance, cursor)
        assert NOT_EVALUATED not in (tick.skip_message or "")  # every tick follows a run: it evaluates
        cursor = tick.cursor
        if not now:
            break
        ticks += 1
        assert ticks < 10
        requested += sorted(now, key=str)
        for key, pk in materialization_plan(changed):
            if (key.to_user_string(), pk) in now:
                assert dg.materialize(list(changed.assets), selection=[key], partition_key=pk, instance=instance,
                                      resources=changed.resources).success
    # settled: nothing recorded since the last evaluation, so the next tick does not evaluate
    assert NOT_EVALUATED in _sensor_tick(changed, instance, cursor)[0].skip_message
    assert len(requested) == len(set(requested))  # each partition once
    assert set(requested) == ROWS["training (prose)"][1] - {("model/prose", "prose")}
    assert ticks > 1 and _stale(changed, instance) == set()
    materialize_lineage(defs, instance, echo=lambda *_: None)  # back to the shipped micro lineage
    assert _stale(defs, instance) == set()


def test_a_lineage_schedule_observes_the_lineage_file_then_materializes_what_is_missing(tmp_path):
    import datetime

    from featureflow_dagster.lineage import LineageError

    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    with pytest.raises(LineageError, match="schedule"):
        parse_lineage({**raw, "schedule": "every night"}, "bad")
    # micro's base and one fine-tune: the same assets, half the partitions (each evaluation walks them all)
    raw["nodes"] = [n for n in raw["nodes"] if n["name"] in ("base", "code")]
    t0 = datetime.datetime(2026, 11, 22, 1, 0, tzinfo=datetime.timezone.utc)
    roots = {("corpus", n) for n in ("base", "code")}
    # without a schedule nobody observes on the tick; an observation (featureflow status, the UI's
    # Observe button) is an update the eager rule follows, here to the missing corpora
    for schedule, expected in ((None, [set(), roots]), ("0 3 * * *", [{("lineage_config", None)}, roots])):
        defs = build_definitions(parse_lineage({**raw, "schedule": schedule}, "scheduled"), home=str(tmp_path), device="cpu")
        instance = dg.DagsterInstance.ephemeral()
        keys = [dg.AssetKey("lineage_config"), *{k for k, _ in materialization_plan(defs)}]
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=t0)
        assert first.total_requested == 0  # before the cron tick nothing, scheduled or not
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor,
                                                 evaluation_time=t0 + datetime.timedelta(hours=3))
        # on the tick the daemon re-reads the lineage file (observes lineage_config) ...
        assert {(k.to_user_string(), None) for k in keys if tick.get_requested_partitions(k)} == expected[0]
        observe_config(defs, instance)
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor,
                                                  evaluation_time=t0 + datetime.timedelta(hours=3, minutes=1))
        # ... then what is missing and can run now is asked for; the eager rule carries it downstream
        assert {(k.to_user_string(), pk) for k in keys for pk in after.get_requested_partitions(k)} == expected[1]


def test_the_automation_sensor_skips_until_an_event_or_a_cron_tick(tmp_path):
    """The daemon's sensor evaluates the conditions only when something they read moved: on an empty instance with a
    nightly schedule, ticks before 03:00 skip without evaluating; the tick after 03:00 evaluates and asks for the
    lineage file to be observed (through Dagster's asset job, as the UI's Observe button does); an observation (an
    event) makes the next tick evaluate again."""
    import datetime

    from dagster._core.test_utils import freeze_time

    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["nodes"] = [n for n in raw["nodes"] if n["name"] in ("base", "code")]
    defs = build_definitions(parse_lineage({**raw, "schedule": "0 3 * * *"}, "scheduled"), home=str(tmp_path), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    t0 = datetime.datetime(2026, 11, 22, 1, 0, tzinfo=datetime.timezone.utc)

    def tick(cursor, hours):
        with freeze_time(t0 + datetime.timedelta(hours=hours)):
            return _sensor_tick(defs, instance, cursor)

    first, now = tick(None, 0)
    assert now == set() and NOT_EVALUATED not in (first.skip_message or "")
    before, now = tick(first.cursor, 1.5)
    assert now == set() and NOT_EVALUATED in before.skip_message and before.cursor == first.cursor
    at_three, now = tick(before.cursor, 3.01)
    assert NOT_EVALUATED not in (at_three.skip_message or "")
    assert {k for k, _ in now} == {"lineage_config"} and {r.job_name for r in at_three.run_requests} == {"__ASSET_JOB"}
    assert NOT_EVALUATED in tick(at_three.cursor, 3.02)[0].skip_message
    observe_config(defs, instance)
    # while the shell materializes (a run with featureflow's partition tag), the sensor waits for it to end
    from dagster._core.test_utils import create_run_for_test

    shell = create_run_for_test(instance, job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED,
                                tags={STEP_TAG: "model/base[base]"})
    waiting, now = tick(at_three.cursor, 3.03)
    assert now == set() and SHELL_RUNNING in waiting.skip_message and waiting.cursor == at_three.cursor
    instance.delete_run(shell.run_id)
    assert NOT_EVALUATED not in (tick(at_three.cursor, 3.04)[0].skip_message or "")


def test_observing_an_unchanged_lineage_records_nothing(micro):
    """`featureflow status` observes the lineage file each time; when the instance already holds exactly its
    versions nothing is written (an observation run would wake the automation sensor for nothing), and an edit is."""
    home, defs, instance = micro
    observe_config(defs, instance)
    before = instance.event_log_storage.get_maximum_record_id()
    observe_config(defs, instance)
    assert instance.event_log_storage.get_maximum_record_id() == before
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    _edit_seed(raw)
    observe_config(build_definitions(parse_lineage(raw, "micro-edited"), home=str(home), device="cpu"), instance)
    assert instance.event_log_storage.get_maximum_record_id() > before
    observe_config(defs, instance)  # back to the shipped micro lineage
