"""Activation collection: featureflow's hook that stops the forward at blocks.0.mlp.hook_post
against TransformerLens's plain `run_with_cache` on the same windows (which runs the whole model).

  python bench/activation_collection.py [--home .featureflow/demo] [--lineage demo] [--node base] [--windows 2048]
"""

import argparse
import sys
import time

import torch

from featureflow_dagster.activations import ActivationStore, run_to_hook
from featureflow_dagster.hooked import load_hooked_model
from featureflow_dagster.hooks import MLP_POST
from featureflow_dagster.assets.models import MODEL
from featureflow_dagster.assets.sae import ACTIVATION_STORE
from materialized import open_home, require
from featureflow_dagster.model import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="demo")
    ap.add_argument("--home", default=None)
    ap.add_argument("--node", default=None)
    ap.add_argument("--windows", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    lineage, home = open_home(args.lineage, args.home)
    node = args.node or lineage.base.name
    store = ActivationStore(require(ACTIVATION_STORE.at(home, node), f"activation store of '{node}'", home, args.lineage))
    tokens = torch.cat([s["tokens"] for s in store.iter_shards("train", ("tokens",))])[: args.windows].long()
    hf = load_model(MODEL.at(home, node)).eval()
    tl = load_hooked_model(MODEL.at(home, node))
    batches = list(tokens.split(args.batch))

    def ours():
        return [run_to_hook(hf, b, MLP_POST) for b in batches]

    def theirs():
        out = []
        with torch.no_grad():
            for b in batches:
                _, cache = tl.run_with_cache(b, names_filter=MLP_POST)
                out.append(cache[MLP_POST])
        return out

    ours(), theirs()  # warm-up
    timings = {}
    results = {}
    for name, fn in (("featureflow run_to_hook", ours), ("TransformerLens run_with_cache", theirs)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            results[name] = fn()
            best = min(best, time.perf_counter() - t0)
        timings[name] = best
    diff = max(float((a - b).abs().max()) for a, b in zip(*results.values()))
    n = tokens.numel()
    print(f"lineage {lineage.name}, node {node}: {tokens.shape[0]} windows of {tokens.shape[1]} tokens, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, best of 3")
    for name, seconds in timings.items():
        print(f"{name:32s} {n / seconds:12,.0f} tokens/s")
    print(f"ratio: {timings['TransformerLens run_with_cache'] / timings['featureflow run_to_hook']:.2f}x; max |difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
