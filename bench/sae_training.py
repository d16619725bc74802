"""SAE trainers compared at equal budget: featureflow's `train_sae` against SAELens's `SAETrainer`, on the
same cached activation batches in the same order, with the same lr, Adam betas and schedule, each at
three or more sparsity settings, so that each draws a frontier of held-out MSE against L0.

Activations: one node's store of a materialized lineage, centred and scaled to mean norm sqrt(d_in)
once (SAELens's `expected_average_only_in`), then fed to both trainers as is (both told not to
normalise again). MSE below is per element on those normalised held-out activations.

- `relu`: ReLU + L1. SAELens's `StandardTrainingSAE` (decoder rows start at norm 0.1, move freely, L1
  weighted by row norm) against featureflow's ReLU SAE with `decoder_constraint: free` (the same
  recipe) and with `unit_norm` (the paper's). SAELens's MSE sums over d_in, featureflow's averages,
  so SAELens gets λ·d_in: the same objective up to a constant factor, which Adam ignores.
- `topk`: TopK with AuxK (coefficient 1/32 for both; featureflow keeps unit-norm decoder rows,
  SAELens rescales by decoder norms) at several k.

Reported: each point (L0, MSE, explained variance, tokens/s); for every SAELens point, featureflow's MSE
at SAELens's L0, interpolated linearly in log L0 on featureflow's frontier, and the ratio; and the mean
tokens/s ratio.

  python bench/sae_training.py --home .featureflow/demo [--node base] [--arch relu topk] [--steps N]
      [--l1 0.004 0.008 0.016] [--k 16 32 64]
"""

import argparse
import sys
import time

import numpy as np
import torch

from featureflow_dagster.activations import ActivationStore
from featureflow_dagster.assets.sae import ACTIVATION_STORE
from materialized import open_home, require
from featureflow_dagster.sae import ReLUSAE, SAEConfig, TopKSAE
from featureflow_dagster.sae.train import train_sae


def _held_out_quality(encode, decode, x: torch.Tensor) -> tuple[float, float, float]:
    with torch.no_grad():
        f = encode(x)
        err = ((decode(f) - x) ** 2).sum()
        sst = ((x - x.mean(0)) ** 2).sum()
        return float(err / x.numel()), float((f > 0).sum(-1).float().mean()), float(1 - err / sst)


def _ours(kind: str, setting: float, d_in: int, d_sae: int, batches, a) -> tuple[float, tuple]:
    if kind == "topk":
        sae = TopKSAE(SAEConfig("topk", d_in, d_sae, k=int(setting)), seed=0, aux_k_coefficient=a.aux)
    else:
        sae = ReLUSAE(SAEConfig("relu", d_in, d_sae), seed=0, l1_coefficient=setting,
                      decoder_constraint="free" if kind == "relu-free" else "unit_norm")
    t0 = time.perf_counter()
    train_sae(sae, lambda start: iter(batches[start:]), len(batches), a.lr, (0.9, a.beta2), torch.device("cpu"),
              dead_window_tokens=a.dead_steps * batches[0].shape[0], lr_warmup_steps=a.warmup, lr_decay_steps=a.decay,
              sparsity_warmup_steps=a.l1_warmup if kind != "topk" else 0)
    seconds = time.perf_counter() - t0
    sae.eval()
    return seconds, (sae.encode, sae.decode)


def _lens(kind: str, setting: float, d_in: int, d_sae: int, batches, a) -> tuple[float, tuple]:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    common = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu", apply_b_dec_to_input=True, normalize_activations="none")
    if kind == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=int(setting), aux_loss_coefficient=a.aux, **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=setting * d_in, l1_warm_up_steps=a.l1_warmup, **common))
    tokens = sum(b.shape[0] for b in batches)
    trainer = SAETrainer(
        SAETrainerConfig(total_training_samples=tokens, train_batch_size_samples=batches[0].shape[0], lr=a.lr, lr_end=a.lr,
                         lr_warm_up_steps=a.warmup, lr_decay_steps=a.decay, adam_beta1=0.9, adam_beta2=a.beta2,
                         device="cpu", dead_feature_window=a.dead_steps),
        sae, data_provider=iter(batches),
    )
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    sae.eval()
    return seconds, (sae.encode, sae.decode)


def _interpolate(l0: float, frontier: list[tuple[float, float]]) -> float:
    """MSE at `l0` on a frontier of (L0, MSE) points, linear in log L0 (NaN outside its range)."""
    pts = sorted(frontier)
    xs, ys = np.log([p[0] for p in pts]), [p[1] for p in pts]
    if not xs[0] <= np.log(l0) <= xs[-1]:
        return float("nan")
    return float(np.interp(np.log(l0), xs, ys))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="demo")
    ap.add_argument("--home", default=None)
    ap.add_argument("--node", default=None)
    ap.add_argument("--arch", nargs="+", default=["relu", "topk"], choices=["relu", "topk"])
    ap.add_argument("--steps", type=int, default=None, help="default: the lineage's steps for this node's store")
    ap.add_argument("--expansion", type=int, default=None, help="default: the lineage's")
    ap.add_argument("--l1", type=float, nargs="+", default=[0.004, 0.008, 0.016], help="λ in featureflow's units (per-element MSE)")
    ap.add_argument("--k", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--lr", type=float, default=None, help="default: the lineage's")
    ap.add_argument("--beta2", type=float, default=None, help="default: the lineage's")
    ap.add_argument("--aux", type=float, default=1 / 32)
    ap.add_argument("--dead-steps", type=int, default=100, help="steps unfired = dead (AuxK), for both")
    args = ap.parse_args()
    lineage, home = open_home(args.lineage, args.home)
    node = args.node or lineage.base.name
    spec = lineage.sae_spec(node)
    store = ActivationStore(require(ACTIVATION_STORE.at(home, node), f"activation store of '{node}'", home, args.lineage))
    steps = args.steps or store.steps("train", spec.batch_windows, spec.epochs)
    args.lr = args.lr or spec.lr
    args.beta2 = args.beta2 or spec.beta2
    args.warmup, args.decay = round(spec.lr_warmup_fraction * steps), round(spec.lr_decay_fraction * steps)
    args.l1_warmup = round(spec.l1_warmup_fraction * steps)
    mean = store.mean("train")
    scale = store.d_in**0.5 / store.mean_norm("train", mean)
    batches = []
    for b in store.batches("train", spec.batch_windows, seed=0, epochs=spec.epochs):
        batches.append((b - mean) * scale)
        if len(batches) == steps:
            break
    held_out = (torch.cat([s["activations"] for s in store.iter_shards("eval", ("activations",))]).float() - mean) * scale
    d_in = store.d_in
    d_sae = (args.expansion or spec.expansion) * d_in
    tokens = sum(b.shape[0] for b in batches)
    print(f"lineage {lineage.name}, node {node}: d_in {d_in}, d_sae {d_sae}, {len(batches)} steps x {batches[0].shape[0]} tokens "
          f"= {tokens:,} tokens, lr {args.lr:g} (warm-up {args.warmup}, decay {args.decay} steps), beta2 {args.beta2:g}, "
          f"{torch.get_num_threads()} threads; held-out {held_out.shape[0]:,} tokens, activations scaled by {scale:.4g}")

    pairs = []
    if "relu" in args.arch:
        pairs += [("relu-free", "relu", args.l1), ("relu-unit", "relu", args.l1)]
    if "topk" in args.arch:
        pairs += [("topk", "topk", args.k)]
    frontiers: dict[str, list[tuple[float, float]]] = {}
    speed: dict[str, list[float]] = {}
    print(f"{'trainer':<22}{'setting':>10}{'L0':>9}{'MSE':>11}{'explained':>11}{'tokens/s':>11}")
    for ours_kind, lens_kind, settings in pairs:
        runs = [("featureflow " + ours_kind, _ours, ours_kind)]
        if ours_kind != "relu-unit":
            runs.append(("SAELens " + lens_kind, _lens, lens_kind))
        for label, fn, kind in runs:
            if label in frontiers:
                continue
            fn(kind, settings[0], d_in, d_sae, batches[:20], args)  # warm-up, untimed: first calls pay one-off costs
            frontiers[label], speed[label] = [], []
            for setting in settings:
                torch.manual_seed(0)
                seconds, (encode, decode) = fn(kind, setting, d_in, d_sae, batches, args)
                mse, l0, ev = _held_out_quality(encode, decode, held_out)
                frontiers[label].append((l0, mse))
                speed[label].append(tokens / seconds)
                print(f"{label:<22}{setting:>10g}{l0:>9.1f}{mse:>11.4e}{ev:>11.3f}{tokens / seconds:>11,.0f}", flush=True)

    print("\nfeatureflow's MSE at SAELens's L0 (interpolated in log L0 on featureflow's frontier):")
    for ours_label, lens_label in (("featureflow relu-free", "SAELens relu"), ("featureflow relu-unit", "SAELens relu"),
                                   ("featureflow topk", "SAELens topk")):
        if ours_label not in frontiers or lens_label not in frontiers:
            continue
        for l0, lens_mse in frontiers[lens_label]:
            ours_mse = _interpolate(l0, frontiers[ours_label])
            verdict = "outside featureflow's L0 range" if np.isnan(ours_mse) else f"ratio {ours_mse / lens_mse:.3f}"
            print(f"  {ours_label:<22} at {lens_label} L0 {l0:6.1f}: {ours_mse:.4e} vs {lens_mse:.4e}  {verdict}")
        ratio = np.mean(speed[ours_label]) / np.mean(speed[lens_label])
        print(f"  tokens/s, {ours_label} / {lens_label}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
