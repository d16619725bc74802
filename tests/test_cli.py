"""The `featureflow` shell as a person uses it: bad input, plans, the UI command, a killed run and
two writers on one home."""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from safetensors.torch import load_file

from featureflow_dagster.definitions import build_definitions
from featureflow_dagster.lineage import load_lineage, parse_lineage, resolve_lineage_path
from featureflow_dagster.runner import materialize_lineage, select

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, lineage: str = "micro") -> dict:
    return dict(os.environ, FEATUREFLOW_LINEAGE=lineage, FEATUREFLOW_HOME=str(tmp_path / "home"),
                DAGSTER_HOME=str(tmp_path / "dagster"), FEATUREFLOW_DEVICE="cpu", PYTHONUNBUFFERED="1")


def _featureflow(tmp_path, *args, lineage="micro", timeout=300):
    cmd = [sys.executable, "-m", "featureflow_dagster.cli", *args]
    return subprocess.run(cmd, env=_env(tmp_path, lineage), capture_output=True, text=True, timeout=timeout)


def test_a_malformed_lineage_is_invalid_with_exit_2_on_every_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["nodes"][1]["parents"] = ["nowhere"]
    bad.write_text(yaml.safe_dump(raw))
    for command in (["validate", str(bad)], ["plan"], ["materialize"], ["status"], ["ui"]):
        res = _featureflow(tmp_path, *command, lineage=str(bad), timeout=120)
        assert res.returncode == 2, (command, res.stderr[-2000:])
        assert res.stderr.startswith("INVALID") and "node 'code'" in res.stderr and "nowhere" in res.stderr, command
        assert "Traceback" not in res.stderr, command
    assert not (tmp_path / "home").exists()


def test_unknown_names_are_refused_with_the_valid_ones(tmp_path):
    res = _featureflow(tmp_path, "plan", "--asset", "modle/base")
    assert res.returncode == 2 and "unknown asset 'modle/base'" in res.stderr and "model/base" in res.stderr
    res = _featureflow(tmp_path, "materialize", "--node", "cod")
    assert res.returncode == 2 and "unknown node(s) cod" in res.stderr and "base, code, prose, merged" in res.stderr


def test_status_lists_every_partition_and_ends_with_their_counts(tmp_path):
    res = _featureflow(tmp_path, "status")
    assert res.returncode == 0, res.stderr[-2000:]
    *lines, summary = res.stdout.strip().splitlines()
    assert lines and all(line.split()[0] == "MISSING" for line in lines)  # an empty home
    assert summary == f"{len(lines)} asset partitions: {len(lines)} missing"


def test_plan_lists_a_node_and_its_ancestors_in_order_with_why(tmp_path):
    res = _featureflow(tmp_path, "plan", "--node", "code")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line.split() for line in res.stdout.splitlines() if line.startswith("missing")]
    labels = [label for _, label in lines]
    assert labels[:3] == ["corpus[base]", "corpus[code]", "tokenizer"]
    assert labels.index("model/base[base]") < labels.index("model/code[code]") < labels.index("sae[code]")
    assert set(labels) == {"corpus[base]", "corpus[code]", "tokenizer", "tokens[base]", "tokens[code]", "model/base[base]",
                           "model/code[code]", "model_summary[base]", "model_summary[code]", "activation_store[base]", "activation_store[code]", "sae[base]", "sae[code]",
                           "feature_activations[base__code]", "sae_transfer[base__code]", "feature_correlation[base__code]",
                           "feature_examples[base]", "feature_examples[code]", "tasks", "task_performance[base]",
                           "task_performance[code]", "circuits[base]", "circuits[code]", "cmap[base__code]"}
    assert "24 to materialize, 0 blocked" in res.stdout
    assert not (tmp_path / "home").exists()  # a plan writes no artefact


def test_ui_runs_dagster_through_this_interpreter_without_path(tmp_path):
    env = dict(_env(tmp_path), PATH="/usr/bin:/bin")  # the venv's bin is not on PATH
    port, reports = 3917, 3918
    pages = tmp_path / "home" / "reports" / "features"
    pages.mkdir(parents=True)
    (pages / "index.html").write_text("<p>the feature index</p>")
    proc = subprocess.Popen([sys.executable, "-m", "featureflow_dagster.cli", "ui", "--port", str(port), "--reports-port", str(reports)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # read its output while it runs: Dagster logs every sensor tick, and a full pipe would block the processes'
    # writes, and with them their shutdown
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline, body = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(1)
        assert body is not None and "dagster_webserver_version" in body, "".join(lines)[-3000:]
        # the reports of the same home beside it; / is the reports home, built then, which links the feature index
        home = urllib.request.urlopen(f"http://127.0.0.1:{reports}/", timeout=5).read().decode()
        assert "featureflow · micro" in home and 'href="features/index.html"' in home
        assert urllib.request.urlopen(f"http://127.0.0.1:{reports}/features/index.html", timeout=5).read() == b"<p>the feature index</p>"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            reader.join(timeout=5)
            pytest.fail("featureflow ui did not stop on Ctrl-C; its output:\n" + "".join(lines)[-4000:])
    # started from the repository (which holds a dagster.yaml) with DAGSTER_HOME elsewhere: no warning that it "will
    # not be used", and no notice that `dg dev` supersedes `dagster dev` (nothing a user of featureflow can act on)
    reader.join(timeout=10)
    out = "".join(lines)
    assert Path("dagster.yaml").is_file() and "will not be used" not in out and "dg dev" not in out, out[-3000:]


def _long_base(tmp_path) -> Path:
    """micro with a base that trains for a few seconds (enough to be killed half-way)."""
    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    raw["name"] = "crash"
    base = next(n for n in raw["nodes"] if n["name"] == "base")
    base["training"] = {**raw["training"], "epochs": 8, "checkpoint_every": 5}
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


UP_TO_BASE = ["--asset", "corpus", "--asset", "tokenizer", "--asset", "tokens", "--asset", "model/base"]


def test_killed_run_is_recovered_resumes_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    lineage_file = _long_base(tmp_path)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    killed_dir.mkdir()
    env = _env(killed_dir, str(lineage_file))
    cmd = [sys.executable, "-m", "featureflow_dagster.cli", "materialize", *UP_TO_BASE]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    checkpoint = killed_dir / "home" / "checkpoints" / "model" / "base.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), first.stdout.read() if first.poll() is not None else "no checkpoint in time"

    # a second writer on the same partition (another instance: the UI's run, say) is refused at once
    other = build_definitions(parse_lineage(yaml.safe_load(lineage_file.read_text()), lineage_file),
                              home=str(killed_dir / "home"), device="cpu")
    with pytest.raises(Exception, match=rf"model/base\[base\] is being materialized by pid {first.pid}"):
        dg.materialize(list(other.assets), selection=[dg.AssetKey(["model", "base"])], partition_key="base",
                       instance=dg.DagsterInstance.ephemeral(), resources=other.resources)

    os.killpg(first.pid, signal.SIGKILL)  # out of memory, a closed laptop
    first.wait(timeout=30)
    assert not (killed_dir / "home" / "model" / "base").exists()  # nothing half-written in place

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "recovered: run" in again.stdout and "marked failed, its pool slots freed" in again.stdout
    assert "model/base[base]" in again.stdout
    monkeypatch.setenv("DAGSTER_HOME", str(killed_dir / "dagster"))
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["model", "base"]))
        assert event.asset_materialization.metadata["resumed_from_step"].value > 0

    # the same lineage uninterrupted, in another home: identical weights
    defs = build_definitions(parse_lineage(yaml.safe_load(lineage_file.read_text()), lineage_file),
                             home=str(clean_dir / "home"), device="cpu")
    materialize_lineage(defs, dg.DagsterInstance.ephemeral(), echo=lambda *_: None,
                        chosen=select(defs, ["corpus", "tokenizer", "tokens", "model/base"]))
    resumed = load_file(killed_dir / "home" / "model" / "base" / "model.safetensors")
    clean = load_file(clean_dir / "home" / "model" / "base" / "model.safetensors")
    assert resumed.keys() == clean.keys() and all(torch.equal(resumed[k], clean[k]) for k in clean)


def test_an_estimate_with_nothing_to_materialize_times_nothing(tmp_path, monkeypatch, capsys):
    """`featureflow plan` on a fresh home prices the lineage from an empty folder without timing the device (that
    took ~40 s for a price nobody pays), and says so."""
    import torch

    import featureflow_dagster.costs as costs
    from featureflow_dagster.cli import _print_estimate

    def refuse(*args, **kwargs):
        raise AssertionError("measured the throughput with nothing to run")

    monkeypatch.setattr(costs, "measure", refuse)
    _print_estimate(load_lineage("micro"), torch.device("cpu"), tmp_path, timed=False)
    out = capsys.readouterr().out
    assert "from an empty folder" in out and "not timed: nothing is to materialize" in out
    assert "FLOP" in out and "disk:" in out  # the untimed figures are still there


def test_two_writers_on_one_home_compute_each_partition_once(tmp_path):
    """Two `featureflow materialize` on one empty home started a moment apart: both plan every partition as missing,
    but each partition is computed by one of them; the other waits for its lock, finds it fresh (same code and
    inputs) and reports it skipped. The partitions computed add up to the partitions selected, with none twice."""
    env = _env(tmp_path)
    cmd = [sys.executable, "-m", "featureflow_dagster.cli", "materialize", *UP_TO_BASE]
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(1.0)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    def lines(out, word):
        return {line.split()[1] for line in out.splitlines() if line.startswith(word + " ")}

    done = [lines(out, "done") for out in outs]
    skipped = [lines(out, "skipped") for out in outs]
    defs = build_definitions(load_lineage("micro"), home=str(tmp_path / "elsewhere"), device="cpu")
    selected = {(k.to_user_string() + (f"[{pk}]" if pk else "")) for k, pk in select(defs, ["corpus", "tokenizer", "tokens", "model/base"])}
    assert len(selected) > 4 and not (done[0] & done[1]), outs  # nothing computed twice
    assert done[0] | done[1] == selected, outs
    # whoever did not compute a partition it had planned found it done by the other
    assert all(skipped[i] <= done[1 - i] for i in (0, 1)) and skipped[0] | skipped[1], outs
    assert any("materialized by another process meanwhile, not run again" in out for out in outs), outs


def test_plan_prices_from_a_throughput_cached_per_machine_and_device(tmp_path, monkeypatch, capsys):
    """The first estimate times the device three times and keeps the median; the next one reuses it (times nothing)
    and says so; `--remeasure` times again; another device is another entry."""
    import torch

    import featureflow_dagster.costs as costs
    from featureflow_dagster.cli import _print_estimate

    calls = []

    def fake(lineage, device, steps=3, log=None):
        calls.append(str(device))
        return {"lm_train": 1e9 * len(calls), "lm_forward": 2e9, "sae_train": 3e9, "sae_encode": 4e9}

    monkeypatch.setattr(costs, "measure", fake)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    lineage = load_lineage("micro")
    _print_estimate(lineage, torch.device("cpu"), tmp_path, timed=True)
    first = capsys.readouterr().out
    assert calls == ["cpu"] * 3 and "median of 3" in first and "lm_train 2GFLOP/s" in first  # the median of 1, 2, 3
    _print_estimate(lineage, torch.device("cpu"), tmp_path, timed=True)
    again = capsys.readouterr().out
    assert calls == ["cpu"] * 3 and "cached" in again and "lm_train 2GFLOP/s" in again
    _print_estimate(lineage, torch.device("cpu"), tmp_path, timed=True, remeasure=True)
    assert len(calls) == 6 and "lm_train 5GFLOP/s" in capsys.readouterr().out
    _print_estimate(lineage, torch.device("meta"), tmp_path, timed=True)
    assert calls[-3:] == ["meta"] * 3
