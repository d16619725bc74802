"""Ground truth: can the trainers recover a planted dictionary in superposition?

`--features` unit directions in `--d-in` dimensions (Gaussian, normalised), each firing independently
with a power-law probability p_i ∝ i^(-alpha) scaled to `--active` expected active features per sample,
with non-negative magnitudes (uniform in [0.5, 1.5]). featureflow's SAE and SAELens's are trained side
by side on the same samples in the same order (same lr, Adam betas, warm-up and decay), and scored by the
mean over true features of the best cosine between the true direction and any learned decoder row,
over the true features firing at least once per 1,000 samples (all of them at the defaults). A random
dictionary of the same width is scored the same way, as the null baseline.

  python bench/sae_recovery.py [--arch topk|relu] [--samples 2000000] [--d-sae 4096] [--k 8] [--l1 0.004]
"""

import argparse
import sys
import time

import torch

from featureflow_dagster.sae import ReLUSAE, SAEConfig, TopKSAE
from featureflow_dagster.sae.train import train_sae


class PlantedDictionary:
    def __init__(self, n: int, d_in: int, active: float, alpha: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.directions = torch.nn.functional.normalize(torch.randn(n, d_in, generator=g), dim=1)  # [n, d_in]
        p = torch.arange(1, n + 1, dtype=torch.float64) ** -alpha
        self.p = (p * active / p.sum()).clamp(max=1.0).float()  # [n]
        self.seed = seed

    def batch(self, index: int, size: int) -> torch.Tensor:
        """Samples [size, d_in] of batch `index` (a pure function of seed and index)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        fire = torch.rand(size, self.p.numel(), generator=g) < self.p
        magnitude = 0.5 + torch.rand(size, self.p.numel(), generator=g)
        return (fire * magnitude) @ self.directions


def recovery(w_dec: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over true directions (rows of truth, where mask) of the best cosine to a row of w_dec."""
    cos = torch.nn.functional.normalize(truth, dim=1) @ torch.nn.functional.normalize(w_dec.detach().float(), dim=1).T
    return float(cos.max(dim=1).values[mask].mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--active", type=float, default=8.0)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--samples", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--arch", default="topk", choices=["topk", "relu"])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--l1", type=float, default=0.004, help="relu: λ in featureflow's units (per-element MSE)")
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--warmup", type=float, default=0.05)
    ap.add_argument("--decay", type=float, default=0.2)
    ap.add_argument("--aux", type=float, default=1 / 32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    planted = PlantedDictionary(args.features, args.d_in, args.active, args.alpha, args.seed)
    steps = args.samples // args.batch
    warmup, decay = round(args.warmup * steps), round(args.decay * steps)
    batches = [planted.batch(i, args.batch) for i in range(steps)]
    counted = planted.p >= 1e-3
    print(f"{args.features} true directions in {args.d_in} dims, p from {planted.p.max():.3g} to {planted.p.min():.3g} "
          f"(alpha {args.alpha}), {args.active:g} active per sample; {steps} steps x {args.batch} = {steps * args.batch:,} samples; "
          f"SAEs: {args.arch}, d_sae {args.d_sae}; scored on {int(counted.sum())} true features with p >= 1/1000")
    d_in = args.d_in

    # featureflow
    if args.arch == "topk":
        ours = TopKSAE(SAEConfig("topk", d_in, args.d_sae, k=args.k), seed=args.seed + 1, aux_k_coefficient=args.aux)
    else:
        ours = ReLUSAE(SAEConfig("relu", d_in, args.d_sae), seed=args.seed + 1, l1_coefficient=args.l1, decoder_constraint="free")
    t0 = time.perf_counter()
    train_sae(ours, lambda start: iter(batches[start:]), steps, args.lr, (0.9, args.beta2), torch.device("cpu"),
              dead_window_tokens=100 * args.batch, lr_warmup_steps=warmup, lr_decay_steps=decay)
    ours_s = time.perf_counter() - t0

    # SAELens
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(args.seed + 1)
    common = dict(d_in=d_in, d_sae=args.d_sae, dtype="float32", device="cpu", apply_b_dec_to_input=True, normalize_activations="none")
    if args.arch == "topk":
        lens = TopKTrainingSAE(TopKTrainingSAEConfig(k=args.k, aux_loss_coefficient=args.aux, **common))
    else:
        lens = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=args.l1 * d_in, **common))
    trainer = SAETrainer(
        SAETrainerConfig(total_training_samples=steps * args.batch, train_batch_size_samples=args.batch, lr=args.lr, lr_end=args.lr,
                         lr_warm_up_steps=warmup, lr_decay_steps=decay, adam_beta1=0.9, adam_beta2=args.beta2,
                         device="cpu", dead_feature_window=100),
        lens, data_provider=iter(batches),
    )
    t0 = time.perf_counter()
    trainer.fit()
    lens_s = time.perf_counter() - t0

    held_out = torch.cat([planted.batch(10**6 + i, args.batch) for i in range(4)])
    g = torch.Generator().manual_seed(args.seed + 2)
    random_dec = torch.randn(args.d_sae, d_in, generator=g)
    print(f"{'trainer':<14}{'recovery':>10}{'L0':>8}{'explained':>11}{'seconds':>9}")
    for label, w_dec, encode, decode, seconds in (
        ("featureflow", ours.W_dec, ours.encode, ours.decode, ours_s),
        ("SAELens", lens.W_dec, lens.encode, lens.decode, lens_s),
    ):
        with torch.no_grad():
            f = encode(held_out)
            err = ((decode(f) - held_out) ** 2).sum()
            ev = 1 - err / ((held_out - held_out.mean(0)) ** 2).sum()
        print(f"{label:<14}{recovery(w_dec, planted.directions, counted):>10.4f}{float((f > 0).sum(-1).float().mean()):>8.1f}"
              f"{float(ev):>11.3f}{seconds:>9.1f}")
    print(f"{'random':<14}{recovery(random_dec, planted.directions, counted):>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
