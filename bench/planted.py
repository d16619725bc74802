"""A planted benchmark for feature flow: two synthetic activation distributions with known truth, and each method
featureflow has scored by precision and recall of "disappeared" and "emerged" against that truth, in one table.

The truth: `--features` parent feature directions (unit vectors in `--d-in` dimensions) that fire sparsely and
independently on each token (probability `--p`, magnitude 1 + |N(0, 0.5)|); the child's activations come from
the *same* latent activity on the same tokens through the child's dictionary, in which a share of the parent's
features is kept as it was, removed, rotated (by each of `--angles` degrees in turn), or rescaled (x0.5 or x2), and new features
are added. Removed features have *disappeared*, added ones *emerged*; kept, rotated and rescaled ones persist
(the same activity, a moved or rescaled direction). Small Gaussian noise is added to both.

Each model gets a TopK SAE (featureflow's, its trainer), two with different seeds for the seed null. The SAEs'
features are assigned to the true features by decoder cosine (> `--assign`); a true parent feature counts as
predicted "disappeared" when every SAE feature assigned to it is classified so (likewise "emerged" for a true
child feature), and features no SAE learned are left out (the table says how many were scored). Methods:

- matching at the threshold: featureflow's flow (exact r over the same tokens, best partner above 0.8);
- matching, reproducible only: the same, scoring only features whose SAE feature is reproducible across seeds
  (the seed null, `flow.null.seed_table`);
- one to one (Hungarian on r): a feature disappears / emerges when its one-to-one partner's r is not above 0.8;
- decoder cosine: matching on decoder cosine instead of r, at the same bar.

- crosscoder Δ: a BatchTopK crosscoder over both models (featureflow_dagster.crosscoder), latents classed by their
  relative decoder norm; and the same confirmed by Latent Scaling.

Goal: some method at F1 >= 0.9 on both.

    python bench/planted.py [--features 256] [--d-in 128] [--tokens 120000] [--epochs 24] [--angles 20,45,70] [--expansion 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd
import torch

from featureflow_dagster.correlation import correlate_features
from featureflow_dagster.flow import classify_edge, matches_table, to_csr
from featureflow_dagster.flow.matching import decoder_cosines, decoder_matches, decoder_table, one_to_one
from featureflow_dagster.flow.null import seed_table
from featureflow_dagster.sae import SAEConfig, TopKSAE
from featureflow_dagster.sae.train import train_sae

THRESHOLD = 0.8


def planted(args) -> dict:
    """The two dictionaries, the truth and a sampler of (parent, child) activations on the same tokens."""
    g = torch.Generator().manual_seed(args.seed)
    n, d = args.features, args.d_in
    parent = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    kinds = np.array(["kept"] * n, dtype=object)
    order = torch.randperm(n, generator=g).numpy()
    share = n // 8
    kinds[order[:share]] = "removed"
    kinds[order[share:2 * share]] = "rotated"
    kinds[order[2 * share:3 * share]] = "rescaled"
    child = parent.clone()
    scale = torch.ones(n)
    angles = [float(a) for a in str(args.angles).split(",")]
    for t, i in enumerate(np.flatnonzero(kinds == "rotated")):
        theta = math.radians(angles[t % len(angles)])
        other = torch.randn(d, generator=g)
        other = torch.nn.functional.normalize(other - (other @ parent[i]) * parent[i], dim=0)  # orthogonal to the feature
        child[i] = math.cos(theta) * parent[i] + math.sin(theta) * other
    rescaled = np.flatnonzero(kinds == "rescaled")
    scale[rescaled] = torch.tensor([0.5, 2.0])[torch.randint(0, 2, (len(rescaled),), generator=g)]
    added = torch.nn.functional.normalize(torch.randn(share, d, generator=g), dim=1)
    keep = torch.from_numpy(kinds != "removed")

    def sample(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.Generator().manual_seed(seed)
        fire = torch.rand(tokens, n + share, generator=s) < args.p
        z = fire * (1 + 0.5 * torch.randn(tokens, n + share, generator=s).abs())
        zp, za = z[:, :n], z[:, n:]
        x_parent = zp @ parent + 0.01 * torch.randn(tokens, d, generator=s)
        x_child = (zp * scale * keep) @ child + za @ added + 0.01 * torch.randn(tokens, d, generator=s)
        return x_parent, x_child

    return {"parent": parent, "child": torch.cat([child * scale[:, None], added]), "kinds": kinds, "share": share,
            "sample": sample}


def fit(x: torch.Tensor, d_sae: int, k: int, seed: int, epochs: int) -> TopKSAE:
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=x.shape[1], d_sae=d_sae, k=k, model_name="planted"), seed=seed)
    sae.data_mean.copy_(x.mean(0))
    batch = 4096
    order = torch.Generator().manual_seed(seed)

    def batches(start: int):
        for step in range(start, epochs * (x.shape[0] // batch)):
            if step % (x.shape[0] // batch) == 0:
                perm = torch.randperm(x.shape[0], generator=order)
            i = step % (x.shape[0] // batch)
            yield x[perm[i * batch:(i + 1) * batch]]

    train_sae(sae, batches, epochs * (x.shape[0] // batch), 2e-3, (0.9, 0.999), torch.device("cpu"), seed=seed,
              dead_window_tokens=50_000, lr_decay_steps=epochs * (x.shape[0] // batch) // 5)
    return sae.eval()


@torch.no_grad()
def codes(sae, x: torch.Tensor):
    return to_csr(sae.encode(x))


def score(predicted: dict[int, bool], truth: set[int]) -> dict:
    """Precision, recall and F1 of the true features predicted positive, over the scored ones."""
    pos = {j for j, p in predicted.items() if p}
    tp = len(pos & truth)
    relevant = truth & set(predicted)
    precision = tp / len(pos) if pos else float("nan")
    recall = tp / len(relevant) if relevant else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "scored": len(predicted), "positives": len(relevant)}


def by_true_feature(status: np.ndarray, owner: np.ndarray, positive: str, keep: np.ndarray | None = None) -> dict[int, bool]:
    """A true feature is predicted positive when every (kept) SAE feature assigned to it has that status."""
    out: dict[int, list[bool]] = {}
    for f, j in enumerate(owner):
        if j >= 0 and status[f] != "dead" and (keep is None or keep[f]):
            out.setdefault(int(j), []).append(status[f] == positive)
    return {j: all(v) for j, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--p", type=float, default=0.02, help="firing probability of each true feature on a token")
    ap.add_argument("--angles", default="20,45,70", help="rotations of the rotated features, degrees (in turn)")
    ap.add_argument("--expansion", type=int, default=4, help="SAE latents per true parent feature (the demo's SAEs: 4 per MLP unit)")
    ap.add_argument("--tokens", type=int, default=120_000)
    ap.add_argument("--epochs", type=int, default=24, help="SAE training epochs (at 8, weak rescaled features go unlearned)")
    ap.add_argument("--assign", type=float, default=0.9, help="decoder cosine at which an SAE feature is a true feature's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()
    world = planted(args)
    x_parent, x_child = world["sample"](args.tokens, args.seed + 1)
    e_parent, e_child = world["sample"](args.tokens // 4, args.seed + 2)  # the edge's tokens: both models, same latents
    d_sae, k = args.expansion * args.features, max(1, round(args.p * args.features * 1.25 * 1.2))
    saes = {name: fit(x_parent if name.startswith("parent") else x_child, d_sae, k, seed, args.epochs)
            for name, seed in (("parent", 1), ("child", 2), ("parent_seed", 11), ("child_seed", 12))}
    c = {name: codes(sae, e_parent if name.startswith("parent") else e_child) for name, sae in saes.items()}
    m = n = d_sae

    def matches(a: str, b: str) -> pd.DataFrame:
        corr = correlate_features(lambda: iter([(c[a], c[b])]), m, n, top_k=5)
        dec = decoder_matches(saes[a].W_dec.detach(), saes[b].W_dec.detach(), k=5)
        return pd.concat([matches_table(corr), decoder_table(*dec)], ignore_index=True), corr

    edge, corr = matches("parent", "child")
    owners = {side: assign_rows(saes[side].W_dec, world[side], args.assign) for side in ("parent", "child")}
    kinds = world["kinds"]
    removed = set(np.flatnonzero(kinds == "removed").tolist())
    emerged = set(range(args.features, args.features + world["share"]))
    rep = {side: seed_table([matches(side, f"{side}_seed")[0]], THRESHOLD)["reproducible"].to_numpy()
           for side in ("parent", "child")}
    rows = []
    for method, (pt, ct), keep in (
        ("matching at r > 0.8", classify_edge(edge, THRESHOLD), None),
        ("matching, seed-reproducible only", classify_edge(edge, THRESHOLD), rep),
        ("decoder cosine > 0.8", classify_edge(edge, THRESHOLD, method="decoder"), None),
    ):
        rows.append({"method": method, **_scores(pt["status"].to_numpy(), ct["status"].to_numpy(), owners, keep, removed, emerged)})
    from featureflow_dagster.correlation import correlation_matrix

    r = correlation_matrix(lambda: iter([(c["parent"], c["child"])]), corr.parent_moments, corr.child_moments)
    pairs, _ = one_to_one(r, decoder_cosines(saes["parent"].W_dec, saes["child"].W_dec), THRESHOLD)
    act = pairs[pairs["method"] == "activation"]
    p_status = np.full(m, "disappears", dtype=object)
    c_status = np.full(n, "emerged", dtype=object)
    p_status[corr.parent_moments.dead] = "dead"
    c_status[corr.child_moments.dead] = "dead"
    kept = act[act["similarity"] > THRESHOLD]
    p_status[kept["parent"].to_numpy()] = "persists"
    c_status[kept["child"].to_numpy()] = "persisted"
    rows.append({"method": "one to one (Hungarian on r) > 0.8", **_scores(p_status, c_status, owners, None, removed, emerged)})
    rows += crosscoder_rows(args, world, x_parent, x_child, e_parent, e_child, d_sae, k, removed, emerged)
    table = pd.DataFrame(rows).set_index("method")
    learned = {side: len(set(owners[side][owners[side] >= 0].tolist())) for side in owners}
    print(f"planted: {args.features} parent features in {args.d_in} dimensions ({world['share']} removed, {world['share']} rotated by "
          f"{args.angles} degrees, {world['share']} rescaled, {world['share']} added); TopK SAEs of {d_sae} latents, k {k}, "
          f"{args.tokens:,} training tokens x {args.epochs} epochs; {args.tokens // 4:,} edge tokens; seed {args.seed}")
    print(f"true features an SAE learned (decoder cosine > {args.assign}): parent {learned['parent']}/{args.features}, "
          f"child {learned['child']}/{args.features}; seed reproducibility "
          f"parent {rep['parent'].mean():.3f}, child {rep['child'].mean():.3f} (of all latents)")
    print(table.round(3).to_markdown())
    best = table[(table["disappeared_f1"] >= 0.9) & (table["emerged_f1"] >= 0.9)]
    print("F1 >= 0.9 on both:", ", ".join(best.index) if len(best) else "no method")
    print(f"({time.perf_counter() - started:.0f} s)")


def crosscoder_rows(args, world, x_parent, x_child, e_parent, e_child, d_latent, k, removed, emerged) -> list[dict]:
    """A BatchTopK crosscoder on both models' activations (the same tokens): a true parent feature disappeared when
    every latent assigned to it by its parent decoder vector is parent-only by Δ; a true child feature emerged when
    every latent assigned by its child decoder vector is child-only; and the same with child-only latents kept
    only where Latent Scaling says the parent holds nothing of them (ν on the error target < 0.5), likewise for
    parent-only latents."""
    from featureflow_dagster.crosscoder import BatchTopKCrosscoder, latent_scaling, latent_table, train_crosscoder

    cc = BatchTopKCrosscoder(args.d_in, d_latent, k, seed=3)
    cc.fit_scales([x_parent, x_child])
    batch = 4096
    steps = args.epochs * (x_parent.shape[0] // batch)
    g = torch.Generator().manual_seed(3)

    def batches():
        while True:
            perm = torch.randperm(x_parent.shape[0], generator=g)
            for i in range(x_parent.shape[0] // batch):
                sel = perm[i * batch:(i + 1) * batch]
                yield [x_parent[sel], x_child[sel]]

    trained = train_crosscoder(cc, batches, steps, 2e-3, torch.device("cpu"), dead_window_tokens=50_000)
    latents = latent_table(cc)
    with torch.no_grad():
        f = cc.encode([e_parent, e_child])
    alive = (f > 0).any(0).numpy()
    latents["class"] = np.where(alive, latents["class"], "dead")
    specific = latents[latents["class"].isin(["parent_only", "child_only"])]["latent"].tolist()
    nu = latent_scaling(cc, [e_parent, e_child], specific).set_index("latent")["nu_error"] if specific else pd.Series(dtype=float)
    w = cc.W_dec.detach()
    p_owner = assign_rows(w[:, 0], world["parent"], args.assign)
    c_owner = assign_rows(w[:, 1], world["child"], args.assign)
    p_owner[(latents["delta"] < 0.1).to_numpy()] = -1  # a child-only latent's parent decoder is noise
    c_owner[(latents["delta"] > 0.9).to_numpy()] = -1
    classes = latents["class"].to_numpy()
    rows = []
    for name, confirmed in (("crosscoder Δ", None), ("crosscoder Δ, ν < 0.5", nu)):
        p_status = np.where(classes == "dead", "dead", np.where(classes == "parent_only", "disappears", "persists")).astype(object)
        c_status = np.where(classes == "dead", "dead", np.where(classes == "child_only", "emerged", "persisted")).astype(object)
        if confirmed is not None:  # a specific latent whose other model holds its direction after all is shared
            for j, v in confirmed.items():
                if not v < 0.5:
                    p_status[j] = "persists" if p_status[j] == "disappears" else p_status[j]
                    c_status[j] = "persisted" if c_status[j] == "emerged" else c_status[j]
        rows.append({"method": name, **_scores(p_status, c_status, {"parent": p_owner, "child": c_owner}, None, removed, emerged)})
    counts = pd.Series(classes).value_counts().to_dict()
    print(f"crosscoder: {d_latent} latents, k {k}, {trained.steps} steps in {trained.seconds:.0f} s; final mse "
          f"{trained.curve[-1]['mse_parent']:.3f} / {trained.curve[-1]['mse_child']:.3f} (normalised); classes {counts}; "
          f"median ν (error) of the specific latents {float(nu.median()) if len(nu) else float('nan'):.3f}")
    return rows


def assign_rows(rows: torch.Tensor, truth: torch.Tensor, bar: float) -> np.ndarray:
    """Per row of a decoder, the true feature it points at (cosine > bar), else -1."""
    cos = decoder_cosines(rows, truth)
    return np.where(cos.max(1) > bar, cos.argmax(1), -1)


def _scores(p_status, c_status, owners, keep, removed, emerged) -> dict:
    d = score(by_true_feature(p_status, owners["parent"], "disappears", None if keep is None else keep["parent"]), removed)
    e = score(by_true_feature(c_status, owners["child"], "emerged", None if keep is None else keep["child"]), emerged)
    return {**{f"disappeared_{k}": v for k, v in d.items()}, **{f"emerged_{k}": v for k, v in e.items()}}


if __name__ == "__main__":
    main()
