"""`featureflow`: validate a lineage, materialize it in dependency order, open the web UI.

  featureflow validate [LINEAGE]
  featureflow materialize [--lineage L] [--node N ...] [--asset KEY ...] [--force] [--device D]
  featureflow status [--lineage L]
  featureflow ui [--lineage L] [--port 3000]
"""

from __future__ import annotations

import argparse
import os
import sys


def _validate(args) -> int:
    from featureflow_dagster.lineage import LineageError, load_lineage, resolve_lineage_path

    try:
        lineage = load_lineage(args.lineage)
    except LineageError as e:
        print(f"INVALID  {e}", file=sys.stderr)
        return 1
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
        print(line)
    print(f"  edges: {', '.join(f'{p}->{c}' for p, c in lineage.edges())}")
    return 0


def _set_env(args) -> None:
    if getattr(args, "lineage", None):
        os.environ["FEATUREFLOW_LINEAGE"] = args.lineage
    if getattr(args, "device", None):
        os.environ["FEATUREFLOW_DEVICE"] = args.device
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")


def _materialize(args) -> int:
    _set_env(args)
    import dagster as dg

    from featureflow_dagster.instance import ensure_dagster_home

    ensure_dagster_home()
    from featureflow_dagster.definitions import defs, materialize_lineage
    from featureflow_dagster.lineage import load_lineage

    lineage = load_lineage()
    partitions = None
    if args.node:
        unknown = [n for n in args.node if n not in lineage.by_name]
        if unknown:
            print(f"unknown node(s) {unknown}; lineage '{lineage.name}' has {lineage.node_names}", file=sys.stderr)
            return 2
        partitions = {a for n in args.node for a in [n, *lineage.ancestors(n)]}
    only = {dg.AssetKey.from_user_string(a) for a in args.asset} if args.asset else None
    with dg.DagsterInstance.get() as instance:
        done = materialize_lineage(defs, instance, only=only, partitions=partitions, force=args.force)
    store = defs.resources["store"]
    print(f"materialized {len(done)} asset partition(s); artefacts under {store.root}")
    return 0


def _status(args) -> int:
    _set_env(args)
    import dagster as dg

    from featureflow_dagster.instance import ensure_dagster_home

    ensure_dagster_home()
    from featureflow_dagster.definitions import defs, stale_statuses

    with dg.DagsterInstance.get() as instance:
        for (key, pk), status in stale_statuses(defs, instance).items():
            print(f"{status:8} {key.to_user_string()}" + (f"[{pk}]" if pk else ""))
    return 0


def _ui(args) -> int:
    _set_env(args)
    from featureflow_dagster.instance import ensure_dagster_home

    ensure_dagster_home()
    cmd = ["dagster", "dev", "-h", "127.0.0.1", "-p", str(args.port), "-m", "featureflow_dagster.definitions"]
    os.execvp(cmd[0], cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="featureflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a lineage file and print the verdict")
    v.add_argument("lineage", nargs="?", default=None, help="shipped name (micro, demo, paper) or path; default $FEATUREFLOW_LINEAGE or demo")
    v.set_defaults(func=_validate)
    m = sub.add_parser("materialize", help="materialize missing or stale assets in dependency order")
    m.add_argument("--lineage", default=None)
    m.add_argument("--node", action="append", help="only this node and the ancestors it needs (repeatable)")
    m.add_argument("--asset", action="append", help="only this asset key, e.g. model/base or tokens (repeatable)")
    m.add_argument("--force", action="store_true", help="re-materialize fresh assets too")
    m.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default $FEATUREFLOW_DEVICE or auto)")
    m.set_defaults(func=_materialize)
    s = sub.add_parser("status", help="MISSING / STALE / FRESH for every asset partition")
    s.add_argument("--lineage", default=None)
    s.set_defaults(func=_status)
    u = sub.add_parser("ui", help="open Dagster's web UI on 127.0.0.1")
    u.add_argument("--lineage", default=None)
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(func=_ui)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
