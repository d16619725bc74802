"""A crosscoder on one lineage edge (the `crosscoder` asset's body, Dagster-free): windows drawn from the data both
models share, both models' activations at the hook, the crosscoder trained on 10/11 of them and judged on the
rest (each model's explained variance, L0, dead latents), its latent table with Latent Scaling for the specific
latents, and each latent's best-correlated SAE feature in each model (exact r on the held-out tokens), which
`agreement` compares with the SAE flow's statuses."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from featureflow_dagster.activations import run_to_hook
from featureflow_dagster.correlation import correlate_features
from featureflow_dagster.crosscoder.analysis import latent_scaling, latent_table
from featureflow_dagster.crosscoder.model import BatchTopKCrosscoder, train_crosscoder
from featureflow_dagster.flow.classify import DEAD, DISAPPEARS, EMERGED, PERSISTED, PERSISTS
from featureflow_dagster.flow.codes import edge_windows, to_csr


@torch.no_grad()
def activations(model, windows: torch.Tensor, hook: str, device, batch_windows: int = 64) -> torch.Tensor:
    """A model's activations at `hook` over token windows [n, context], as [n * context, d_in] float32 on the host."""
    out = []
    for b in range(0, windows.shape[0], batch_windows):
        acts = run_to_hook(model, windows[b:b + batch_windows].to(device, torch.long), hook)
        out.append(acts.reshape(-1, acts.shape[-1]).float().cpu())
    return torch.cat(out)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def train_edge_crosscoder(spec, models: dict, saes: dict, blocks: list[torch.Tensor], hook: str, context: int, seed: int,
                          device, log=None, examples=None) -> tuple[BatchTopKCrosscoder, pd.DataFrame, dict, "LatentEvidence | None"]:
    """(crosscoder, per-latent table, figures, evidence) for one edge. `models` and `saes` are keyed 'parent' and
    'child'; `blocks` the shared data's training token blocks; `spec` the lineage's CrosscoderSpec. With `examples`
    (an ExamplesSpec) also the evidence the latent pages show (`latent_evidence`), over the held-out windows."""
    held = max(context, spec.tokens // 10)
    try:
        windows, _ = edge_windows(blocks, context, spec.tokens + held, seed)
    except ValueError as e:
        raise ValueError(f"flow.crosscoder.tokens = {spec.tokens:,} (+ {held:,} held out) is more than the data both models "
                         f"share can give: {e}") from None
    n_train = spec.tokens // context
    xs = {side: activations(models[side], windows, hook, device) for side in ("parent", "child")}
    cut = n_train * context
    train = [xs["parent"][:cut], xs["child"][:cut]]
    test = [xs["parent"][cut:], xs["child"][cut:]]
    d_in = train[0].shape[1]
    cc = BatchTopKCrosscoder(d_in, spec.expansion * d_in, spec.k, seed=seed)
    cc.fit_scales(train)
    steps = max(1, int(spec.epochs * cut) // spec.batch_tokens)
    g = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            perm = torch.randperm(cut, generator=g)
            for i in range(max(1, cut // spec.batch_tokens)):
                sel = perm[i * spec.batch_tokens:(i + 1) * spec.batch_tokens]
                yield [train[0][sel], train[1][sel]]

    started = time.perf_counter()
    trained = train_crosscoder(cc, batches, steps, spec.lr, device, spec.warmup_fraction, spec.decay_fraction, log=log)
    cc = cc.cpu().eval()
    with torch.no_grad():
        f = cc.encode(test)
        rec = cc.reconstruct(test)
    classes = {"parent_only_above": spec.parent_only_above, "child_only_below": spec.child_only_below,
               "shared_within": tuple(spec.shared_within)}
    table = latent_table(cc, classes)
    live = (f > 0).any(0).numpy()
    table.loc[~live, "class"] = "dead"
    specific = table.index[table["class"].isin(["parent_only", "child_only"])].tolist()
    if specific:
        table = table.merge(latent_scaling(cc, test, specific)[["latent", "nu_error", "nu_recon"]], on="latent", how="left")
    else:
        table["nu_error"], table["nu_recon"] = np.nan, np.nan
    # each latent's best-correlated SAE feature in each model, on the held-out tokens
    codes = to_csr(f)
    for side, x in zip(("parent", "child"), test):
        sae = saes[side]
        with torch.no_grad():
            sae_codes = to_csr(sae.encode(x.to(next(sae.parameters()).device)).cpu())
        corr = correlate_features(lambda: iter([(codes, sae_codes)]), cc.d_latent, sae.cfg.d_sae, top_k=1)
        table[f"{side}_sae_feature"] = corr.parent_top.index[:, 0]
        table[f"{side}_sae_r"] = corr.parent_top.r[:, 0]
    figures = {"tokens": cut, "held_out_tokens": test[0].shape[0], "steps": trained.steps,
               "train_seconds": round(time.perf_counter() - started, 2),
               "explained_variance_parent": explained_variance(test[0], rec[:, 0]),
               "explained_variance_child": explained_variance(test[1], rec[:, 1]),
               "l0": float((f > 0).sum()) / f.shape[0], "dead_fraction": float(1 - live.mean()),
               **{c: int((table["class"] == c).sum()) for c in ("parent_only", "child_only", "shared", "other", "dead")}}
    evidence = None
    if examples is not None:
        evidence = latent_evidence(cc, models, hook, windows[n_train:], f, codes, examples, seed)
    return cc, table, figures, evidence


@dataclass
class LatentEvidence:
    """What a crosscoder latent's page shows, over the held-out windows: the examples (`FeatureExamples`: top contexts,
    quantile samples, histogram, top tokens), the latent codes at every position of those windows (sparse, by latent)
    and each model's direct-path logit effects of the latent's decoder vector in that model's units."""

    examples: "FeatureExamples"
    codes: sp.csc_matrix
    logits: dict[str, torch.Tensor]  # '<side>_<top|bottom>_<values|ids>'

    def save(self, folder) -> None:
        from safetensors.torch import save_file

        self.examples.save(folder / "examples.safetensors")
        sp.save_npz(folder / "codes.npz", self.codes)
        save_file({k: v.contiguous() for k, v in self.logits.items()}, str(folder / "logit_effects.safetensors"))

    @classmethod
    def load(cls, folder) -> "LatentEvidence":
        from safetensors.torch import load_file

        from featureflow_dagster.examples import FeatureExamples

        return cls(FeatureExamples.load(folder / "examples.safetensors"), sp.load_npz(folder / "codes.npz").tocsc(),
                   load_file(str(folder / "logit_effects.safetensors")))


@torch.no_grad()
def latent_evidence(cc: BatchTopKCrosscoder, models: dict, hook: str, windows: torch.Tensor, codes: torch.Tensor,
                    sparse: sp.csr_matrix, spec, seed: int) -> LatentEvidence:
    """The pages' evidence for every latent from codes already computed: `windows` [n, context] the held-out token
    windows, `codes` the latents at every position of them [n * context, latents], dense, and `sparse` the same as CSR."""
    from featureflow_dagster.examples import collect_examples_from, direct_logit_effects, model_logit_path

    ctx = windows.shape[1]
    paths = {side: model_logit_path(models[side], hook) for side in ("parent", "child")}
    ex = collect_examples_from(lambda start, tok: codes[start * ctx:(start + tok.shape[0]) * ctx], cc.d_latent, windows,
                               paths["parent"].unembed.shape[0], spec.top_k, spec.samples, batch_windows=spec.batch_windows, seed=seed)
    logits = {}
    for m, side in enumerate(("parent", "child")):
        w = (cc.W_dec[:, m, :] / cc.scales[m]).detach().cpu()  # the decoder vector in the model's own units
        top, top_ids, bottom, bottom_ids = direct_logit_effects(w, paths[side], k=spec.logit_k)
        logits.update({f"{side}_top_values": top, f"{side}_top_ids": top_ids, f"{side}_bottom_values": bottom,
                       f"{side}_bottom_ids": bottom_ids})
    return LatentEvidence(ex, sparse.tocsc(), logits)


def agreement(latents: pd.DataFrame, parent_table: pd.DataFrame, child_table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Crosscoder classes against the SAE flow on one edge: per latent class, how its best-correlated SAE feature fares
    (the child's for child-only and shared latents: emerged / persisted; the parent's for parent-only latents:
    disappears / persists), or 'no SAE feature above the threshold'. Rows: class; columns: counts."""
    rows = []
    status = {"parent": parent_table.set_index("feature")["status"], "child": child_table.set_index("feature")["status"]}
    for cls, side in (("child_only", "child"), ("shared", "child"), ("parent_only", "parent")):
        sel = latents[latents["class"] == cls]
        r, partner = sel[f"{side}_sae_r"].to_numpy(), sel[f"{side}_sae_feature"].to_numpy()
        fate = np.where(np.nan_to_num(r, nan=-1) > threshold, status[side].reindex(partner).fillna(DEAD).to_numpy(), "no SAE feature above the threshold")
        counts = pd.Series(fate).value_counts()
        rows.append({"class": cls, "sae side": side, "latents": len(sel),
                     **{k: int(counts.get(k, 0)) for k in ((EMERGED, PERSISTED) if side == "child" else (DISAPPEARS, PERSISTS))},
                     "no SAE feature above the threshold": int(counts.get("no SAE feature above the threshold", 0))})
    table = pd.DataFrame(rows).set_index("class")
    counts = [c for c in table.columns if c != "sae side"]
    table[counts] = table[counts].fillna(0).astype(int)
    return table
