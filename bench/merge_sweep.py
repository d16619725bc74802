"""Seconds per t of featureflow's in-memory SLERP sweep against mergekit-to-disk-and-reload.

Both sides produce the merged model at the same t from the same two parents of a materialized
lineage; the baseline is what the authors' sweep did (mergekit writes the merge, the model is read
back). Evaluation is timed separately (tokens/s), as it is the same work on both sides.

  python bench/merge_sweep.py [--home .featureflow/demo] [--lineage demo] [--node merged] [--points 6]

Needs a lineage whose two parents are materialized (`featureflow materialize`).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from featureflow_dagster.blocks import domain_validation_blocks
from featureflow_dagster.assets.data import TOKENS
from featureflow_dagster.assets.models import MODEL
from materialized import open_home
from featureflow_dagster.merge import SlerpPlan, mergekit_config, mergekit_merge
from featureflow_dagster.model import load_model
from featureflow_dagster.training import evaluate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="demo")
    ap.add_argument("--home", default=None, help="FEATUREFLOW_HOME of the lineage (default .featureflow/<lineage>)")
    ap.add_argument("--node", default=None, help="a SLERP merge node (default: the first merge node)")
    ap.add_argument("--points", type=int, default=6, help="values of t timed on each side")
    args = ap.parse_args()
    lineage, home = open_home(args.lineage, args.home)
    node = args.node or next(n for n in lineage.node_names if lineage.node(n).kind == "merge")
    p0, p1 = lineage.node(node).parents
    dirs = [MODEL.at(home, p) for p in (p0, p1)]
    if not all((d / "config.json").is_file() for d in dirs):
        print(f"parents {p0}, {p1} are not materialized under {home}; run `featureflow materialize --lineage {args.lineage}`", file=sys.stderr)
        return 2
    ts = [i / (args.points - 1) for i in range(args.points)]
    torch.set_num_threads(torch.get_num_threads())

    # featureflow: geometry once, then an in-place update of one model per t
    start = time.perf_counter()
    first, second = load_model(dirs[0]), load_model(dirs[1])
    plan = SlerpPlan({k: v.clone() for k, v in first.state_dict().items()}, second.state_dict())
    setup = time.perf_counter() - start
    ours = []
    for t in ts:
        t0 = time.perf_counter()
        plan.load_into(first, t)
        ours.append(time.perf_counter() - t0)

    # baseline: mergekit writes each merge to disk, and it is loaded back
    theirs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, t in enumerate(ts):
            out = Path(tmp) / f"t{i}"
            t0 = time.perf_counter()
            mergekit_merge(mergekit_config("slerp", dirs, None, t=t), out, seed=0)
            load_model(out)
            theirs.append(time.perf_counter() - t0)

    blocks = domain_validation_blocks(lineage, node, lambda n: TOKENS.at(home, n))
    x = torch.cat(list(blocks.values()))
    t0 = time.perf_counter()
    evaluate(first, x, lineage.training_spec(p0).eval_batch_size, torch.device("cpu"))
    eval_seconds = time.perf_counter() - t0

    n_params = sum(v.numel() for v in first.state_dict().values())
    print(f"lineage {lineage.name}, node {node} ({p0} -> {p1}), {n_params:,} parameters, {len(ts)} values of t, "
          f"{torch.get_num_threads()} threads")
    print(f"featureflow in-memory SLERP: {statistics.median(ours) * 1e3:9.2f} ms per t (median; one-off setup {setup * 1e3:.1f} ms)")
    print(f"mergekit to disk + reload:   {statistics.median(theirs) * 1e3:9.2f} ms per t (median)")
    print(f"ratio (baseline / featureflow): {statistics.median(theirs) / statistics.median(ours):.1f}x")
    print(f"evaluation: {x.numel():,} tokens in {eval_seconds:.2f} s = {x.numel() / eval_seconds:,.0f} tokens/s "
          f"(per t of a sweep over both domains: {eval_seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
