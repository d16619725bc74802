"""SAE training throughput: featureflow's trainer against SAELens's `SAETrainer` on identical
cached activations, with equal hyperparameters, then MSE and L0 of both on held-out activations.

Equal objective: featureflow's MSE is a mean over elements, SAELens's a sum over d_in, so SAELens
gets l1_coefficient × d_in (the same loss up to a constant factor, which Adam ignores). Both: ReLU
SAE, d_sae = expansion × d_in, Adam (β1, β2) and lr from the lineage, constant schedule, no
activation normalization, the same batches in the same order, from memory.

  python bench/sae_training.py [--home .featureflow/demo] [--lineage demo] [--node base] [--steps 300] [--ours-l1-scale 1]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from featureflow_dagster.activations import ActivationStore
from featureflow_dagster.lineage import load_lineage
from featureflow_dagster.sae import ReLUSAE, SAEConfig
from featureflow_dagster.sae.train import train_sae


def _mse_l0(encode, decode, x):
    with torch.no_grad():
        f = encode(x)
        return float(((decode(f) - x) ** 2).mean()), float((f > 0).sum(-1).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="demo")
    ap.add_argument("--home", default=None)
    ap.add_argument("--node", default=None)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ours-l1-scale", type=float, default=1.0,
                    help="multiply featureflow's l1_coefficient (to compare MSE at a matched L0)")
    args = ap.parse_args()
    lineage = load_lineage(args.lineage)
    home = Path(args.home or f".featureflow/{lineage.name}")
    node = args.node or lineage.base.name
    if not (home / "activation_store" / node / "manifest.json").is_file():
        print(f"no activation store for '{node}' under {home}; run `featureflow materialize --lineage {args.lineage}`", file=sys.stderr)
        return 2
    spec = lineage.sae_spec(node)
    store = ActivationStore(home / "activation_store" / node)
    batches = []
    for b in store.batches("train", spec.batch_windows, seed=0, epochs=spec.epochs):
        batches.append(b)
        if len(batches) == args.steps:
            break
    held_out = torch.cat([s["activations"] for s in store.iter_shards("eval", ("activations",))]).float()
    d_in, d_sae = store.d_in, spec.expansion * store.d_in
    tokens = sum(b.shape[0] for b in batches)

    ours = ReLUSAE(SAEConfig("relu", d_in, d_sae), seed=0, l1_coefficient=spec.l1_coefficient * args.ours_l1_scale)
    t0 = time.perf_counter()
    train_sae(ours, lambda start: iter(batches[start:]), len(batches), spec.lr, (spec.beta1, spec.beta2), torch.device("cpu"))
    ours_s = time.perf_counter() - t0
    ours.eval()

    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    lens = StandardTrainingSAE(StandardTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, l1_coefficient=spec.l1_coefficient * d_in, dtype="float32", device="cpu",
        apply_b_dec_to_input=True, normalize_activations="none"))
    trainer = SAETrainer(
        SAETrainerConfig(total_training_samples=tokens, train_batch_size_samples=batches[0].shape[0], lr=spec.lr, lr_end=spec.lr,
                         adam_beta1=spec.beta1, adam_beta2=spec.beta2, device="cpu"),
        lens, data_provider=iter(batches),
    )
    t0 = time.perf_counter()
    trainer.fit()
    lens_s = time.perf_counter() - t0
    lens.eval()

    ours_mse, ours_l0 = _mse_l0(ours.encode, ours.decode, held_out)
    lens_mse, lens_l0 = _mse_l0(lens.encode, lens.decode, held_out)
    print(f"lineage {lineage.name}, node {node}: d_in {d_in}, d_sae {d_sae}, {len(batches)} steps x {batches[0].shape[0]} tokens "
          f"= {tokens:,} tokens, {torch.get_num_threads()} threads; held-out {held_out.shape[0]:,} tokens")
    print(f"featureflow train_sae (l1 x {args.ours_l1_scale:g}) {tokens / ours_s:10,.0f} tokens/s   MSE {ours_mse:.3e}   L0 {ours_l0:7.1f}")
    print(f"SAELens SAETrainer             {tokens / lens_s:10,.0f} tokens/s   MSE {lens_mse:.3e}   L0 {lens_l0:7.1f}")
    print(f"ratio (featureflow / SAELens tokens/s): {lens_s / ours_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
