"""Activation collection: featureflow's hook that stops the forward at blocks.0.mlp.hook_post
against TransformerLens's `run_with_cache` on the same windows, given the same trick (`stop_at_layer`: the
forward ends after the hook's block, no unembedding), and, for reference only, TransformerLens through the
whole model (what the plain call does; at the demo's shapes the unembedding is most of that work). The three
run in rotating order over `--repeats` rounds; minimum and median per side.

  python bench/activation_collection.py [--home .featureflow/demo] [--lineage demo] [--node base] [--windows 2048]
"""

import argparse
import statistics
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
    ap.add_argument("--repeats", type=int, default=4)
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

    stop = int(MLP_POST.split(".")[1]) + 1  # blocks.<l>.mlp.hook_post: stop after block l

    def theirs(stop_at_layer=stop):
        out = []
        with torch.no_grad():
            for b in batches:
                _, cache = tl.run_with_cache(b, names_filter=MLP_POST, stop_at_layer=stop_at_layer)
                out.append(cache[MLP_POST])
        return out

    sides = [("featureflow run_to_hook", ours), ("TransformerLens run_with_cache(stop_at_layer)", theirs),
             ("TransformerLens, whole model (reference)", lambda: theirs(None))]
    for _, fn in sides:
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    results = {}
    for r in range(args.repeats):
        for name, fn in sides[r % 3:] + sides[:r % 3]:  # rotate the order: drift hits every side alike
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    names = [name for name, _ in sides]
    diff = max(float((a - b).abs().max()) for a, b in zip(results[names[0]], results[names[1]]))
    n = tokens.numel()
    print(f"lineage {lineage.name}, node {node}: {tokens.shape[0]} windows of {tokens.shape[1]} tokens, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {args.repeats} rounds in rotating order")
    for name in names:
        print(f"{name:46s} best {n / min(times[name]):12,.0f} tokens/s   median {n / statistics.median(times[name]):12,.0f}")
    ratio = lambda a, b: (min(times[a]) / min(times[b]), statistics.median(times[a]) / statistics.median(times[b]))  # noqa: E731
    fair, whole = ratio(names[1], names[0]), ratio(names[2], names[0])
    print(f"ratio against TransformerLens with stop_at_layer (fair): {fair[0]:.2f}x best, {fair[1]:.2f}x median; "
          f"against the whole model (the old baseline): {whole[0]:.2f}x best, {whole[1]:.2f}x median; "
          f"max |difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
