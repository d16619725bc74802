"""`featureflow`: validate a lineage, plan and materialize it in dependency order, open the web UI.

  featureflow validate [LINEAGE]
  featureflow plan [LINEAGE] [--node N ...] [--asset KEY ...] [--force] [--device D] [--no-estimate] [--remeasure]
  featureflow materialize [--lineage L] [--node N ...] [--asset KEY ...] [--force] [--dry-run] [--device D]
                          [--executor in_process|multiprocess] [--workers N] [--verbose]
  featureflow status [--lineage L]
  featureflow ui [--lineage L] [--port 3000] [--reports-port 3001]
  featureflow reports [--lineage L] [--port 3001]
  featureflow feature NODE ID [--hypothesis REGEX] [--lineage L]

Exit codes: 0 done, 1 a run failed or an SAE failed its checks (what depends on it was skipped),
2 bad input (a malformed lineage, an unknown node or asset).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

BAD_INPUT = 2


def _load(args):
    """The lineage named by --lineage / $FEATUREFLOW_LINEAGE, or None after printing the INVALID line."""
    from featureflow_dagster.lineage import LineageError, load_lineage

    if getattr(args, "lineage", None):
        os.environ["FEATUREFLOW_LINEAGE"] = args.lineage
    try:
        return load_lineage(getattr(args, "lineage", None))
    except LineageError as e:
        print(f"INVALID  {e}", file=sys.stderr)
        return None


def _check_models(lineage, args) -> bool:
    """The pretrained nodes' configs and tokenizers checked against the lineage (`pretrained.check_lineage_models`):
    False after printing the INVALID line. Reads config.json and the tokenizer only, never weights."""
    if not lineage.pretrained_nodes:
        return True
    from featureflow_dagster.lineage import LineageError, resolve_lineage_path
    from featureflow_dagster.pretrained import check_lineage_models

    try:
        checked = check_lineage_models(lineage, resolve_lineage_path(getattr(args, "lineage", None)))
    except LineageError as e:
        print(f"INVALID  {e}", file=sys.stderr)
        return False
    for node, why in checked.expected.items():
        print(f"OFFLINE  node '{node}': {why.split(':')[0]}; checked against its `pretrained.expect` shape instead "
              "(its config.json and tokenizer are checked once it is downloaded)", file=sys.stderr)
    return True


def _validate(args) -> int:
    from featureflow_dagster.lineage import resolve_lineage_path

    lineage = _load(args)
    if lineage is None or not _check_models(lineage, args):
        return BAD_INPUT
    print(f"VALID    lineage '{lineage.name}' ({resolve_lineage_path(args.lineage)})")
    for node in lineage.topological_order():
        line = f"  {node.name:<16} {node.kind:<9}"
        if node.parents:
            line += f" parents={','.join(node.parents)}"
        if node.data is not None:
            budgets = node.data.source_budgets()
            line += " data=" + ", ".join(f"{s.name}({s.kind}, {budgets[s.name] or 'all'} tokens)" for s in node.data.sources)
        if node.merge is not None:
            line += f" merge={node.merge.method} t={node.merge.t}"
        if node.pretrained is not None:
            line += f" pretrained={node.pretrained.label}"
        print(line)
    print(f"  hook: {lineage.hook}")
    print(f"  edges: {', '.join(f'{p}->{c}' for p, c in lineage.edges())}")
    if lineage.schedule:
        print(f"  schedule: {lineage.schedule} (while the Dagster daemon runs)")
    return 0


def _setup(args):
    """(lineage, defs, instance) for the commands that touch the Dagster instance, or None on bad input."""
    lineage = _load(args)
    if lineage is None:
        return None
    if getattr(args, "device", None):
        os.environ["FEATUREFLOW_DEVICE"] = args.device
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")
    import warnings

    warnings.filterwarnings("ignore", module="dagster")
    import dagster as dg

    from featureflow_dagster.instance import ensure_dagster_home

    ensure_dagster_home()
    from featureflow_dagster.remote import RemoteStoreError

    try:
        from featureflow_dagster.definitions import defs  # built from the lineage just validated (FEATUREFLOW_LINEAGE)
    except (RemoteStoreError, ValueError, RuntimeError) as e:  # FEATUREFLOW_STORE / _EXECUTOR / _WORKERS
        print(f"error: {e}", file=sys.stderr)
        return None

    return lineage, defs, dg.DagsterInstance.get()


def _selection(args):
    """(lineage, defs, instance, chosen partitions) for plan/materialize, or None after printing why not."""
    setup = _setup(args)
    if setup is None:
        return None
    lineage, defs, instance = setup
    from featureflow_dagster.runner import select

    nodes = None
    try:
        if args.node:
            unknown = [n for n in args.node if n not in lineage.by_name]
            if unknown:
                raise ValueError(f"unknown node(s) {', '.join(unknown)}; lineage '{lineage.name}' has {', '.join(lineage.node_names)}")
            nodes = {a for n in args.node for a in [n, *lineage.ancestors(n)]}
        return lineage, defs, instance, select(defs, args.asset, nodes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _print_plan(steps, echo=print) -> None:
    todo = [s for s in steps if s.reason not in ("fresh",)]
    for s in steps:
        echo(f"{s.reason:8} {s.label}")
    echo(f"{sum(s.reason in ('missing', 'stale', 'forced') for s in todo)} to materialize, "
         f"{sum(s.reason == 'blocked' for s in todo)} blocked, {len(steps) - len(todo)} fresh")


def _plan(args) -> int:
    if getattr(args, "lineage_arg", None):
        args.lineage = args.lineage_arg
    selection = _selection(args)
    if selection is None:
        return BAD_INPUT
    lineage, defs, instance, chosen = selection
    from featureflow_dagster.runner import observe_config, plan, recover_dead_runs

    with instance:
        recover_dead_runs(instance)
        observe_config(defs, instance)
        steps = plan(defs, instance, chosen, args.force)
        _print_plan(steps)
    if getattr(args, "estimate", False):
        todo = any(s.reason in ("missing", "stale", "forced") for s in steps)
        _print_estimate(lineage, defs.resources["device"].torch_device(), defs.resources["store"].root, timed=todo,
                        remeasure=getattr(args, "remeasure", False))
    return 0


def _print_estimate(lineage, device, store_root, timed: bool = True, remeasure: bool = False) -> None:
    """The whole lineage's costs from an empty folder; timed on `device` unless `timed` is False (nothing to run:
    timing the CPU for a price nobody pays costs tens of seconds)."""
    from featureflow_dagster.costs import estimate, format_estimate, measured_throughput, token_counts
    from featureflow_dagster.instance import ensure_dagster_home

    log = lambda m: print(f"  {m}", flush=True)  # noqa: E731
    how = (f"time from a throughput measured on {device}, where its models are small enough to time here" if timed
           else "not timed: nothing is to materialize; `featureflow plan --force` times a full run")
    print(f"\ncost estimate for lineage '{lineage.name}' from an empty folder (tokens from the corpora and budgets; "
          f"{how}):", flush=True)
    from featureflow_dagster.costs import lm_params, disk_budget, _num

    counts = token_counts(lineage, log)
    largest = max(lm_params(lineage, n) for n in lineage.node_names)
    note = ""
    if not timed:
        throughput, note = {}, "not timed: nothing is to materialize"
    elif device.type == "cpu" and largest > 1e9:  # a forward of a 7B model on this CPU says nothing about a GPU
        throughput, note = {}, (f"not timed: the largest model has {largest / 1e9:.1f}B parameters and this device is the CPU; "
                                "run `featureflow plan --device cuda` on the GPU machine for times")
    else:
        throughput, source = measured_throughput(lineage, device, ensure_dagster_home() / "featureflow_throughput.json",
                                                 remeasure, log=log)
        print(f"  throughput {source}")
    e = estimate(lineage, counts, throughput, str(device))
    e.note = note
    for line in format_estimate(e):
        print(line)
    budget, source = disk_budget(lineage, store_root)
    fits = "fits" if e.total("disk") <= budget else "does NOT fit: `featureflow materialize` will refuse"
    print(f"disk: {_num(e.total('disk'), 'B')} needed, {_num(budget, 'B')} allowed ({source}); {fits}")


def _materialize(args) -> int:
    if getattr(args, "dry_run", False):
        return _plan(args)
    selection = _selection(args)
    if selection is None:
        return BAD_INPUT
    lineage, defs, instance, chosen = selection
    if not _check_models(lineage, args):
        return BAD_INPUT
    from featureflow_dagster.costs import check_disk

    refusal = check_disk(lineage, defs.resources["store"].root)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return BAD_INPUT
    import functools

    from featureflow_dagster.definitions import build_definitions
    from featureflow_dagster.instance import executor_name, worker_count
    from featureflow_dagster.runner import RunFailed, materialize_lineage, pool_limit

    try:
        executor = args.executor or executor_name()
        workers = args.workers or worker_count()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    if executor == "k8s":
        print("error: with the k8s executor the cluster's Dagster launches the runs: open its UI and "
              "'Materialize all' (a backfill), or let the automation sensor do it (README, 'Beyond one machine'); "
              "`featureflow materialize --executor multiprocess` runs on this machine", file=sys.stderr)
        return BAD_INPUT
    store = defs.resources["store"]
    parallel = executor == "multiprocess" and workers > 1
    slots = args.device_slots
    if parallel and slots is None and defs.resources["device"].torch_device().type == "cpu":
        slots = workers  # no GPU to share: each worker may run a device step on its share of the cores
    how = (f"; {workers} worker processes, at most {slots or pool_limit(instance)} device step(s) at once (pool 'gpu')"
           if parallel else "")
    print(f"featureflow: lineage '{lineage.name}', artefacts under {store.root}, runs in {os.environ['DAGSTER_HOME']}{how}")
    rebuild = functools.partial(build_definitions, lineage, store.root, defs.resources["device"].device, "in_process", store.url)
    try:
        with instance:
            report = materialize_lineage(defs, instance, chosen=chosen, force=args.force, verbose=args.verbose, echo=_echo,
                                         workers=workers if parallel else 1, rebuild=rebuild, device_slots=slots)
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; artefacts already written are kept, a killed training resumes from its checkpoint", file=sys.stderr)
        return 130
    skipped = f"; {len(report.skipped)} materialized by another process meanwhile, not run again" if report.skipped else ""
    if report.done:
        print(f"materialized {len(report.done)} asset partition(s){skipped}; artefacts under {store.root}")
    elif report.skipped:
        print(f"materialized nothing{skipped}")
    else:
        print(f"nothing to do: all {len(chosen)} selected asset partitions are fresh (--force recomputes them)")
    from featureflow_dagster.home import write_home

    home = write_home(lineage, Path(store.root))
    print(f"reports: {home} (open it, or `featureflow reports` serves them on http://127.0.0.1:{_reports_port()}/)")
    if not report.ok:
        for label, checks in report.failed_checks.items():
            print(f"  {label} failed its checks: {', '.join(checks)}", file=sys.stderr)
        if report.blocked:
            print(f"  {len(report.blocked)} partition(s) below a failing SAE were not run: {', '.join(report.blocked)}", file=sys.stderr)
        return 1
    return 0


def _echo(line: str) -> None:
    print(line, flush=True)


def _status(args) -> int:
    setup = _setup(args)
    if setup is None:
        return BAD_INPUT
    lineage, defs, instance = setup
    from featureflow_dagster.runner import observe_config, stale_statuses

    with instance:
        observe_config(defs, instance)
        statuses = stale_statuses(defs, instance)
        for (key, pk), status in statuses.items():
            print(f"{status:8} {key.to_user_string()}" + (f"[{pk}]" if pk else ""))
    counts = {s: list(statuses.values()).count(s) for s in dict.fromkeys(statuses.values())}
    print(f"{len(statuses)} asset partitions: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    return 0


def _reports_port() -> int:
    from featureflow_dagster.serve import reports_port

    return reports_port()


def _start_reports(lineage, port: int, aliases: bool = False):
    """Serve the lineage's reports/ on 127.0.0.1:`port` (and, with `aliases`, on the other ports links in the Dagster
    instance's metadata were recorded with); a server whose `shutdown` stops them all, or None (with a warning)
    when `port` is taken."""
    from featureflow_dagster.home import write_home
    from featureflow_dagster.instance import featureflow_home
    from featureflow_dagster.serve import REPORTS_DIR, recorded_ports, reports_url, serve_with_aliases

    root = featureflow_home(lineage.name) / REPORTS_DIR
    recorded: set[int] = set()
    if aliases and os.environ.get("DAGSTER_HOME"):
        try:
            import dagster as dg

            with dg.DagsterInstance.get() as instance:
                recorded = recorded_ports(instance)
        except Exception:  # no instance yet: nothing was recorded
            recorded = set()
    try:
        servers, notes = serve_with_aliases(root, port, recorded, on_home=lambda: write_home(lineage, root.parent))
    except OSError as e:
        print(f"warning: cannot serve the reports on 127.0.0.1:{port} ({e.strerror}); set --reports-port or "
              "FEATUREFLOW_REPORTS_PORT to a free port", file=sys.stderr)
        return None
    os.environ["FEATUREFLOW_REPORTS_PORT"] = str(port)  # the metadata links of runs from here on point here
    print(f"featureflow: reports of '{lineage.name}' ({root}) on {reports_url('', port)}", flush=True)
    for note in notes:
        print(f"featureflow: {note}", flush=True)

    class _All:
        def shutdown(self):
            for server in servers:
                server.shutdown()

    return _All()


def _ui(args) -> int:
    """Dagster's webserver and daemon through this interpreter (no PATH needed), and the reports on a
    second port; Ctrl-C stops all."""
    import subprocess

    lineage = _load(args)
    if lineage is None:
        return BAD_INPUT
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")
    from featureflow_dagster.instance import ensure_dagster_home

    import signal

    # Ctrl-C stops the UI even when this process was started with SIGINT ignored (a background job of a
    # non-interactive shell, a test runner's worker): Python then installs no handler, and exec'd children inherit
    # the ignore; with a handler here, dagster dev starts with the default and installs its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    dagster_home = ensure_dagster_home()
    server = _start_reports(lineage, args.reports_port or _reports_port(), aliases=True)
    # `dagster dev` runs in DAGSTER_HOME, whose dagster.yaml is the one it uses (from the repository it would warn that
    # the repository's "will not be used"), with the paths it reads made absolute first; and without its notice that
    # `dg dev` supersedes it (featureflow starts it; nothing for a user to do)
    from featureflow_dagster.instance import featureflow_home

    env = dict(os.environ, FEATUREFLOW_HOME=str(featureflow_home(lineage.name)))
    lineage_arg = os.environ.get("FEATUREFLOW_LINEAGE")
    if lineage_arg and Path(lineage_arg).expanduser().is_file():  # a file given relative to here
        env["FEATUREFLOW_LINEAGE"] = str(Path(lineage_arg).expanduser().resolve())
    quiet = ("import sys, warnings; warnings.filterwarnings('ignore', message=\".*dg dev\"); "
             "from dagster._cli import main; sys.argv = ['dagster'] + sys.argv[1:]; main()")
    cmd = [sys.executable, "-c", quiet, "dev", "-h", "127.0.0.1", "-p", str(args.port), "-m", "featureflow_dagster.definitions"]
    child = subprocess.Popen(cmd, cwd=str(dagster_home), env=env)
    try:
        return child.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached dagster dev too: let it shut down its daemon
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C (or dagster dev's own) must not cut this short
        try:
            return child.wait(timeout=UI_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            # its daemon can wait for a sensor evaluation in the code server to finish (seconds to a minute on a busy
            # machine): past the grace, stop every process it started
            print(f"dagster dev did not stop within {UI_STOP_GRACE_S} s of Ctrl-C; stopping its processes", flush=True)
            _stop_tree(child.pid)
            return 130
    finally:
        if server is not None:  # the reports' threads are daemons: never wait on them for long
            import threading

            stopper = threading.Thread(target=server.shutdown, daemon=True)
            stopper.start()
            stopper.join(timeout=5)


UI_STOP_GRACE_S = 20  # seconds `featureflow ui` gives dagster dev to stop on Ctrl-C before stopping its processes


def _stop_tree(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM to `pid` and everything it started, SIGKILL to what is left after `timeout` seconds."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _reports(args) -> int:
    """Serve the lineage's reports (feature pages, Sankey, plots) until Ctrl-C."""
    import time

    lineage = _load(args)
    if lineage is None:
        return BAD_INPUT
    from featureflow_dagster.instance import featureflow_home
    from featureflow_dagster.serve import FEATURE_INDEX, REPORTS_DIR

    # the reports' own layout (serve.py), so that serving them imports no asset module (nor torch)
    reports = featureflow_home(lineage.name) / REPORTS_DIR
    if not (reports / FEATURE_INDEX).is_file():
        print(f"note: no feature pages yet under {reports}; "
              "`featureflow materialize` builds them", file=sys.stderr)
    server = _start_reports(lineage, args.port or _reports_port(), aliases=True)
    if server is None:
        return 1
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.shutdown()


def _feature(args) -> int:
    """A feature's evidence from its node's feature_examples: density, top tokens, logit effects, top
    contexts, and the LLR of its top-token hypothesis or of --hypothesis (a regex over token strings)."""
    import re

    lineage = _load(args)
    if lineage is None:
        return BAD_INPUT
    from featureflow_dagster.assets.autointerp import AUTOINTERP
    from featureflow_dagster.assets.data import TOKENIZER
    from featureflow_dagster.assets.examples import FEATURE_EXAMPLES
    from featureflow_dagster.instance import featureflow_home
    from featureflow_dagster.resources import ArtifactStore

    if args.node not in lineage.by_name:
        print(f"error: unknown node '{args.node}'; lineage '{lineage.name}' has {', '.join(lineage.node_names)}", file=sys.stderr)
        return BAD_INPUT
    store = ArtifactStore(root=str(featureflow_home(lineage.name)), lineage_name=lineage.name)
    folder = FEATURE_EXAMPLES.at(store, args.node)
    if not (folder / "examples.safetensors").is_file():
        print(f"error: feature_examples[{args.node}] is not materialized under {folder.parent.parent}; run "
              f"featureflow materialize --node {args.node}", file=sys.stderr)
        return BAD_INPUT
    from safetensors.torch import load_file

    from featureflow_dagster.examples import FeatureExamples, feature_llr
    from featureflow_dagster.tokenizer import load_tokenizer, token_strings

    ex = FeatureExamples.load(folder / "examples.safetensors")
    d_sae = ex.fired.numel()
    f = args.id
    if not 0 <= f < d_sae:
        print(f"error: feature ID {f} is out of range; node '{args.node}' has features 0 to {d_sae - 1}", file=sys.stderr)
        return BAD_INPUT
    tok = load_tokenizer(TOKENIZER.at(store))
    strings = token_strings(tok)  # each id as the text it reads as (token_strings: 'Ġwill' is ' will')
    if args.hypothesis is not None:
        pattern = re.compile(args.hypothesis)
        hypothesis = {i for i, t in enumerate(strings) if pattern.search(t)}
        if not hypothesis:
            print(f"error: hypothesis /{args.hypothesis}/ matches no token of the tokenizer ({len(strings)} tokens)", file=sys.stderr)
            return BAD_INPUT
    logits = load_file(str(folder / "logit_effects.safetensors"))
    show = lambda ids: " ".join(repr(strings[int(i)]) for i in ids)  # noqa: E731
    print(f"{args.node} feature {f}: density {float(ex.density[f]):.4%} of {ex.tokens:,} held-out tokens, "
          f"max activation {float(ex.top_values[f, 0]):.4g}")
    top = ex.top_tokens(f, n=5, min_count=5) or ex.top_tokens(f, n=5)
    print("  top tokens (mean activation, occurrences): " + ", ".join(
        f"{strings[t]!r} {m:.3g} ({c})" for t, m, c in top))
    print(f"  logits up:   {show(logits['top_ids'][f][:5])}")
    print(f"  logits down: {show(logits['bottom_ids'][f][:5])}")
    if top:
        print(f"  LLR of the top-token hypothesis {{{strings[top[0][0]]!r}}}: "
              f"{feature_llr(ex, f, {top[0][0]}):.3f}")
    if args.hypothesis is not None:
        print(f"  LLR of /{args.hypothesis}/ ({len(hypothesis)} tokens): {feature_llr(ex, f, hypothesis):.3f}")
    if top or args.hypothesis is not None:
        print("  (LLR: the activation-weighted mean over the positions it fires on of log P(token | hypothesis) / P(token),\n"
              "   Horn & Elliott's proxy: -log P(hypothesis) when it fires only on the hypothesis' tokens, log 1e-6 = -13.8\n"
              "   for each token outside it; higher is more specific)")
    scores = AUTOINTERP.at(store, args.node) / "scores.parquet"
    if scores.is_file():
        import pandas as pd

        t = pd.read_parquet(scores).set_index("feature")
        if f in t.index:
            print(f"  LLM explanation: {t.loc[f, 'explanation']} (simulation score {t.loc[f, 'score']:.3f})")
    print("  top contexts:")
    for value, pos in zip(ex.top_values[f][:5].tolist(), ex.top_positions[f][:5].tolist()):
        if pos < 0:
            break
        ids, at = ex.context(pos)
        text = "".join(strings[i] if j != at else f"[[{strings[i]}]]"
                       for j, i in enumerate(ids))
        print(f"    {value:8.3g}  {text!r}")
    from featureflow_dagster.serve import reports_url

    print(f"  page: {reports_url(f'features/feature.html#node={args.node}&f={f}')} (while `featureflow reports` or `featureflow ui` "
          "serves them)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="featureflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a lineage file and print the verdict")
    v.add_argument("lineage", nargs="?", default=None, help="shipped name (micro, demo, paper, paper-small, paper-released, prakash, kutsyk) or path; default $FEATUREFLOW_LINEAGE or demo")
    v.set_defaults(func=_validate)
    for name, helptext in (("materialize", "materialize missing or stale assets in dependency order"),
                           ("plan", "list what materialize would run, in order, and why")):
        m = sub.add_parser(name, help=helptext)
        m.add_argument("--lineage", default=None)
        m.add_argument("--node", action="append", help="only this node and its ancestors (repeatable)")
        m.add_argument("--asset", action="append", help="only this asset key (model/base, tokens) or group (model); repeatable")
        m.add_argument("--force", action="store_true", help="re-materialize fresh assets too")
        if name == "materialize":
            m.add_argument("--dry-run", action="store_true", help="print the plan and stop (same as `featureflow plan`)")
            m.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default $FEATUREFLOW_DEVICE or auto)")
            m.add_argument("--executor", choices=["in_process", "multiprocess", "k8s"], default=None,
                           help="one partition at a time, or independent ones at once (default $FEATUREFLOW_EXECUTOR or in_process)")
            m.add_argument("--workers", type=int, default=None, help="processes for multiprocess (default $FEATUREFLOW_WORKERS or the CPU cores)")
            m.add_argument("--device-slots", type=int, default=None,
                           help="device steps at once (the 'gpu' pool's slots, kept on the instance); default: "
                           "the instance's (1 per dagster.yaml), or the worker count when the device is a CPU")
            m.add_argument("--verbose", action="store_true", help="show Dagster's full event stream (DEBUG)")
            m.set_defaults(func=_materialize)
        else:
            m.add_argument("lineage_arg", nargs="?", default=None, metavar="LINEAGE", help="same as --lineage")
            m.add_argument("--device", default=None, help="where the throughput is measured (default $FEATUREFLOW_DEVICE or auto)")
            m.add_argument("--no-estimate", dest="estimate", action="store_false",
                           help="only the list of partitions, no token counts, FLOPs or time (faster)")
            m.add_argument("--remeasure", action="store_true",
                           help="time the device again (the throughput is cached per machine, device and shapes in DAGSTER_HOME)")
            m.set_defaults(func=_plan)
    s = sub.add_parser("status", help="MISSING / STALE / FRESH for every asset partition")
    s.add_argument("--lineage", default=None)
    s.set_defaults(func=_status)
    u = sub.add_parser("ui", help="Dagster's web UI and daemon (automation) on 127.0.0.1")
    u.add_argument("--lineage", default=None)
    u.add_argument("--port", type=int, default=3000)
    u.add_argument("--reports-port", type=int, default=None, help="where the reports are served (default $FEATUREFLOW_REPORTS_PORT or 3001)")
    u.set_defaults(func=_ui)
    r = sub.add_parser("reports", help="serve the feature pages and plots on 127.0.0.1 (no Dagster)")
    r.add_argument("--lineage", default=None)
    r.add_argument("--port", type=int, default=None, help="default $FEATUREFLOW_REPORTS_PORT or 3001")
    r.set_defaults(func=_reports)
    f = sub.add_parser("feature", help="print a feature's evidence and the LLR of a hypothesis")
    f.add_argument("node")
    f.add_argument("id", type=int)
    f.add_argument("--hypothesis", default=None, help="regex over token strings, e.g. '=' (default: the feature's top token)")
    f.add_argument("--lineage", default=None)
    f.set_defaults(func=_feature)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
