"""Evidence for every SAE feature, in the conventions of sae_vis / SAEDashboard / Neuronpedia:
top activating contexts, samples from activation quantiles, an activation histogram and density,
the tokens with the highest mean activation, the direct-path logit effects, and Bricken et al.'s
log-likelihood-ratio proxy for a token hypothesis.

`collect_examples` makes one streaming pass over token windows: per batch it encodes, merges each
feature's running top-k, keeps a bounded random sample of each feature's non-zero activations
(priority sampling: the R smallest random keys), adds exact histogram counts on fixed log-spaced
bins and per-(feature, token) activation sums; no full code matrix is ever held.
"""

from __future__ import annotations

import math
from typing import NamedTuple
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from featureflow_dagster.activations import run_to_hook
from featureflow_dagster.arch import adapter_for, parse_hook
from featureflow_dagster.flow import edge_windows, to_csr

# Histogram bins shared by every feature: log-spaced edges from 1e-4 to 1e4 of the activation.
HIST_EDGES = np.logspace(-4, 4, 81)


@dataclass
class FeatureExamples:
    """Per feature f (d_sae of them), over `tokens` token positions of `windows` [n, context]:

    top_values/top_positions [d_sae, k]: the k largest activations and their flat positions
      (window * context + offset), descending; position -1 where fewer than k tokens fired.
    sample_values/sample_positions [d_sae, R]: a uniform random sample (without replacement) of the
      feature's non-zero activations, for quantile groups; -1 padded.
    histogram [d_sae, len(HIST_EDGES) - 1]: exact counts of non-zero activations per bin (values
      below the first edge count in the first bin, above the last in the last).
    fired [d_sae]: positions where the feature is non-zero; density = fired / tokens.
    token_feature/token_id/token_total: summed activation per (feature, token id) as parallel arrays,
      sorted by feature (then token id).
    token_counts [vocab]: occurrences of each token id among the positions.
    inactive_positions [P]: random positions whose full code row is kept sparse (inactive_codes) to
      draw non-activating contexts from."""

    windows: torch.Tensor
    top_values: torch.Tensor
    top_positions: torch.Tensor
    sample_values: torch.Tensor
    sample_positions: torch.Tensor
    histogram: torch.Tensor
    fired: torch.Tensor
    token_feature: torch.Tensor
    token_id: torch.Tensor
    token_total: torch.Tensor
    token_counts: torch.Tensor
    inactive_positions: torch.Tensor
    inactive_active: list[set[int]]

    _TENSORS = ("windows", "top_values", "top_positions", "sample_values", "sample_positions", "histogram", "fired",
                "token_feature", "token_id", "token_total", "token_counts", "inactive_positions")

    def save(self, path) -> None:
        """One safetensors file; the inactive pool's active sets as CSR (indptr, indices)."""
        from safetensors.torch import save_file

        lengths = torch.tensor([len(a) for a in self.inactive_active], dtype=torch.long)
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        indices = torch.tensor([f for a in self.inactive_active for f in sorted(a)], dtype=torch.long)
        save_file({**{k: getattr(self, k).contiguous() for k in self._TENSORS},
                   "inactive_indptr": indptr, "inactive_indices": indices}, str(path))

    @classmethod
    def load(cls, path) -> "FeatureExamples":
        from safetensors.torch import load_file

        t = load_file(str(path))
        indptr, indices = t.pop("inactive_indptr"), t.pop("inactive_indices")
        active = [set(indices[indptr[i]:indptr[i + 1]].tolist()) for i in range(indptr.numel() - 1)]
        return cls(**t, inactive_active=active)

    @property
    def tokens(self) -> int:
        return self.windows.numel()

    @property
    def density(self) -> torch.Tensor:
        return self.fired.double() / self.tokens

    def context(self, position: int, radius: int = 12) -> tuple[list[int], int]:
        """Token ids around a flat position within its window (clipped at the window's edges) and the
        index of the position inside that list."""
        ctx = self.windows.shape[1]
        w, o = divmod(int(position), ctx)
        lo, hi = max(0, o - radius), min(ctx, o + radius + 1)
        return self.windows[w, lo:hi].tolist(), o - lo

    def quantile_groups(self, feature: int, groups: int = 10, per_group: int = 5) -> list[list[tuple[float, int]]]:
        """`groups` groups of the sampled activations by quantile (lowest first), `per_group` evenly
        spread (value, position) pairs from each; empty groups where the feature fired too rarely."""
        pos = self.sample_positions[feature].numpy()
        keep = pos >= 0
        vals, pos = self.sample_values[feature].numpy()[keep], pos[keep]
        order = np.argsort(vals, kind="stable")
        vals, pos = vals[order], pos[order]
        out = []
        for g in range(groups):
            lo, hi = (g * vals.size) // groups, ((g + 1) * vals.size) // groups
            if hi <= lo:
                out.append([])
                continue
            pick = np.unique(np.round(np.linspace(lo, hi - 1, min(per_group, hi - lo))).astype(np.int64))
            out.append([(float(vals[i]), int(pos[i])) for i in pick])
        return out

    def inactive_examples(self, feature: int, n: int = 5) -> list[int]:
        """Up to n kept random positions where the feature is zero."""
        return [p for p, active in zip(self.inactive_positions.tolist(), self.inactive_active) if feature not in active][:n]

    def token_rows(self, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, summed activations) of the tokens the feature fired on (a slice: the arrays are sorted by feature)."""
        lo, hi = (int(torch.searchsorted(self.token_feature, feature, right=r)) for r in (False, True))
        return self.token_id[lo:hi], self.token_total[lo:hi]

    def top_tokens(self, feature: int, n: int = 10, min_count: int = 1) -> list[tuple[int, float, int]]:
        """(token id, mean activation over all occurrences of the token, occurrences), highest first."""
        toks, totals = self.token_rows(feature)
        counts = self.token_counts[toks]
        ok = counts >= min_count
        means = totals[ok] / counts[ok]
        order = torch.argsort(means, descending=True)[:n]
        return [(int(toks[ok][i]), float(means[i]), int(counts[ok][i])) for i in order]


@torch.no_grad()
def collect_examples(model, sae, windows: torch.Tensor, device, vocab_size: int, top_k: int = 20, samples: int = 64,
                     inactive_pool: int = 256, batch_windows: int = 64, seed: int = 0, log=None) -> FeatureExamples:
    """One pass over `windows` [n, context] (token ids): the model to the SAE's hook, the SAE's codes, and
    every per-feature statistic of `FeatureExamples`, batch by batch."""

    def encode(start: int, tok: torch.Tensor) -> torch.Tensor:
        acts = run_to_hook(model, tok.to(device), sae.cfg.hook_name).reshape(-1, sae.cfg.d_in)
        return sae.encode(acts.to(torch.float32)).float().cpu()

    return collect_examples_from(encode, sae.cfg.d_sae, windows, vocab_size, top_k, samples, inactive_pool, batch_windows, seed, log)


@torch.no_grad()
def collect_examples_from(encode, d_sae: int, windows: torch.Tensor, vocab_size: int, top_k: int = 20, samples: int = 64,
                          inactive_pool: int = 256, batch_windows: int = 64, seed: int = 0, log=None) -> FeatureExamples:
    """`collect_examples` for any dictionary: `encode(start, tokens)` gives the codes [tokens, d_sae] (host, float32)
    of the windows `tokens` = windows[start:start + batch_windows] (a crosscoder reads both models there)."""
    n, ctx = windows.shape
    gen = torch.Generator().manual_seed(seed)
    top_v = torch.zeros(d_sae, 0)
    top_p = torch.zeros(d_sae, 0, dtype=torch.long)
    smp_f, smp_k, smp_v, smp_p = (torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    hist = torch.zeros(d_sae, len(HIST_EDGES) - 1, dtype=torch.long)
    fired = torch.zeros(d_sae, dtype=torch.long)
    tf_keys, tf_tot = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    counts = torch.bincount(windows.reshape(-1).long(), minlength=vocab_size)
    pool = torch.randperm(n * ctx, generator=gen)[: min(inactive_pool, n * ctx)].sort().values
    pool_active: dict[int, set[int]] = {}
    edges = torch.tensor(HIST_EDGES[1:-1], dtype=torch.float32)
    batches = -(-n // batch_windows)
    for b, start in enumerate(range(0, n, batch_windows)):
        tok = windows[start:start + batch_windows].long()
        codes = encode(start, tok)  # [tokens, d_sae]
        base = start * ctx
        # top-k: this batch's top-k per feature merged with the running ones
        kb = min(top_k, codes.shape[0])
        v, i = torch.topk(codes.T, kb, dim=1)
        top_v, order = torch.topk(torch.cat([top_v, v], 1), min(top_k, top_v.shape[1] + kb), dim=1)
        top_p = torch.gather(torch.cat([top_p, i + base], 1), 1, order)
        rows, feats = codes.nonzero(as_tuple=True)
        vals = codes[rows, feats]
        fired += torch.bincount(feats, minlength=d_sae)
        bins = torch.bucketize(vals, edges)
        hist.view(-1).index_add_(0, feats * hist.shape[1] + bins, torch.ones_like(feats))
        # priority sample: keep each feature's `samples` smallest random keys
        keys = torch.rand(vals.numel(), generator=gen)
        smp_f, smp_k, smp_v, smp_p = (torch.cat([smp_f, feats]), torch.cat([smp_k, keys]), torch.cat([smp_v, vals]),
                                      torch.cat([smp_p, rows + base]))
        by_key = torch.argsort(smp_k)
        by_feat = by_key[torch.argsort(smp_f[by_key], stable=True)]
        f_sorted = smp_f[by_feat]
        first = torch.searchsorted(f_sorted, f_sorted, right=False)
        keep = by_feat[(torch.arange(f_sorted.numel()) - first) < samples]
        smp_f, smp_k, smp_v, smp_p = smp_f[keep], smp_k[keep], smp_v[keep], smp_p[keep]
        # activation sums per (feature, token id)
        key = feats * vocab_size + tok.reshape(-1)[rows]
        tf_keys = torch.cat([tf_keys, key])
        tf_tot = torch.cat([tf_tot, vals.double()])
        tf_keys, inverse = torch.unique(tf_keys, return_inverse=True)
        tf_tot = torch.zeros(tf_keys.numel(), dtype=torch.float64).index_add_(0, inverse, tf_tot)
        # inactive pool: which features fire at the kept random positions
        in_batch = pool[(pool >= base) & (pool < base + codes.shape[0])]
        for p in in_batch.tolist():
            pool_active[p] = set(codes[p - base].nonzero().flatten().tolist())
        if log and (b + 1) % max(1, batches // 10) == 0:
            log(f"examples: batch {b + 1}/{batches}")
    top_p = torch.where(top_v > 0, top_p, -1)
    top_v = torch.where(top_v > 0, top_v, torch.zeros(()))
    sample_v = torch.zeros(d_sae, samples)
    sample_p = torch.full((d_sae, samples), -1, dtype=torch.long)
    if smp_f.numel():
        first = torch.searchsorted(smp_f, smp_f, right=False)
        slot = torch.arange(smp_f.numel()) - first
        sample_v[smp_f, slot], sample_p[smp_f, slot] = smp_v, smp_p
    return FeatureExamples(
        windows=windows, top_values=top_v, top_positions=top_p, sample_values=sample_v, sample_positions=sample_p,
        histogram=hist, fired=fired, token_feature=tf_keys // vocab_size, token_id=tf_keys % vocab_size,
        token_total=tf_tot, token_counts=counts, inactive_positions=pool,
        inactive_active=[pool_active.get(int(p), set()) for p in pool],
    )


# ---------------------------------------------------------------------------------------------
# Logit effects (Bricken et al. 2023): the feature's direct path to the logits
# ---------------------------------------------------------------------------------------------


class LogitPath(NamedTuple):
    """A hook's direct path to the logits: activations [d_in] → residual (`to_residual` [d_model, d_in]: the
    MLP's output projection for mlp.hook_post, the identity for residual-width sites) → final norm's gain
    (`norm_weight` [d_model], after centring when `centre`: a LayerNorm) → `unembed` [vocab, d_model]."""

    to_residual: torch.Tensor
    norm_weight: torch.Tensor
    unembed: torch.Tensor
    centre: bool = False


@torch.no_grad()
def direct_logit_effects(w_dec: torch.Tensor, path: LogitPath, k: int = 10,
                         block: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top and bottom k output tokens of each feature's direct path, decoder row → `path` (output
    projection → final norm's gain → unembedding), each row median-centred (the final norm's scale by
    the residual's RMS is left out, as in sae_vis).

    w_dec [d_sae, d_in]. Returns (top values, top token ids, bottom values, bottom token ids), each
    [d_sae, k]; computed in blocks of features so that [d_sae, vocab] never exists at once."""
    to_res = path.to_residual.T.float()  # [d_in, d_model]
    if path.centre:
        to_res = to_res - to_res.mean(dim=1, keepdim=True)
    to_logits = (to_res * path.norm_weight.float()) @ path.unembed.T.float()  # [d_in, vocab]
    tops, top_ids, bots, bot_ids = [], [], [], []
    for start in range(0, w_dec.shape[0], block):
        effects = w_dec[start:start + block].float() @ to_logits
        effects = effects - effects.median(dim=1, keepdim=True).values
        v, i = torch.topk(effects, k, dim=1)
        tops.append(v), top_ids.append(i)
        v, i = torch.topk(effects, k, dim=1, largest=False)
        bots.append(v), bot_ids.append(i)
    return torch.cat(tops), torch.cat(top_ids), torch.cat(bots), torch.cat(bot_ids)


@torch.no_grad()
def norm_gain(norm: torch.nn.Module) -> tuple[torch.Tensor, bool]:
    """(per-channel gain, centres?) of a final norm: a LayerNorm centres and scales by its weight; an RMSNorm
    scales by its weight, or by 1 + weight in the families that store it so (Gemma), which a probe tells
    apart: the norm applied to a zero-mean ±1 vector and its negation."""
    w = norm.weight.detach()
    if isinstance(norm, torch.nn.LayerNorm):
        return w.float().cpu(), True
    x = torch.ones(1, w.numel(), device=w.device, dtype=w.dtype)
    x[:, 1::2] = -1
    gain = ((norm(x) - norm(-x)) / (2 * x))[0].float()
    w = w.float()
    return (w if (gain - w).abs().max() <= (gain - (1 + w)).abs().max() else 1 + w).cpu(), False


def model_logit_path(model, hook: str) -> LogitPath:
    """The direct path to the logits of the activations at `hook` in a Hugging Face model of any supported
    family (`arch.adapter_for`). At a layer before the last it is the logit lens of what the site writes."""
    point = parse_hook(hook)
    adapter = adapter_for(model)
    unembed = adapter.unembed_weight(model)
    to_residual = adapter.mlp_out_weight(model, point.layer) if point.site == "mlp.hook_post" else torch.eye(unembed.shape[1])
    gain, centre = norm_gain(adapter.final_norm(model))
    return LogitPath(to_residual.cpu(), gain, unembed.cpu(), centre)


# ---------------------------------------------------------------------------------------------
# Log-likelihood-ratio proxy (Bricken et al. 2023; Horn & Elliott 2024, §4)
# ---------------------------------------------------------------------------------------------

LLR_FLOOR = 1e-6  # P(s | H) / P(s) for a token outside the hypothesis: log of it is the penalty


def token_llr(hypothesis: set[int] | torch.Tensor, unigram: torch.Tensor) -> torch.Tensor:
    """log P(s | H) / P(s) for every token s, with P(s) the unigram distribution and P(s | H) the
    unigram restricted to the hypothesis' tokens, P(s) / P(H): -log P(H) inside H, log(1e-6) outside."""
    ids = torch.as_tensor(sorted(hypothesis) if isinstance(hypothesis, set) else hypothesis, dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError("the hypothesis holds no token")
    p = unigram.double() / unigram.sum()
    p_h = float(p[ids].sum())
    if p_h <= 0:
        raise ValueError("the hypothesis' tokens never occur in the data, so P(H) = 0")
    out = torch.full_like(p, math.log(LLR_FLOOR))
    out[ids] = -math.log(p_h)
    return out


def feature_llr(examples: FeatureExamples, feature: int, hypothesis) -> float:
    """The feature's activation-weighted mean of `token_llr` over every position it fired on (Horn &
    Elliott's proxy: high when the feature fires on the hypothesis' tokens and rarely elsewhere)."""
    llr = token_llr(hypothesis, examples.token_counts)
    toks, totals = examples.token_rows(feature)
    if totals.sum() <= 0:
        return float("nan")
    return float((totals * llr[toks]).sum() / totals.sum())


def examples_for_node(model, sae, blocks: list[torch.Tensor], vocab_size: int, spec, seed: int, device,
                      log=None) -> "FeatureExamples":
    """`collect_examples` over up to `spec.tokens` tokens of windows (the SAE's context) drawn with `seed`
    from `blocks` (held-out token blocks), with the recipe `spec` (`ExamplesSpec`: tokens, top_k, samples, batch)."""
    ctx = sae.cfg.context_size
    available = sum(b.shape[0] for b in blocks) * (blocks[0].shape[1] // ctx) * ctx
    windows, _ = edge_windows(blocks, ctx, min(spec.tokens, available), seed)
    return collect_examples(model, sae, windows, device, vocab_size=vocab_size, top_k=spec.top_k, samples=spec.samples,
                            batch_windows=spec.batch_windows, seed=seed, log=log)


def feature_table(ex: "FeatureExamples", vocab: list[str], top_ids: torch.Tensor) -> pd.DataFrame:
    """One row per feature: density, max activation, top token by mean activation and the LLR of the
    hypothesis 'this token', top logit (`vocab`: the tokenizer's token strings by id)."""
    rows = []
    for f in range(ex.fired.numel()):
        best = ex.top_tokens(f, n=1, min_count=5) or ex.top_tokens(f, n=1)
        token, mean = (best[0][0], best[0][1]) if best else (-1, float("nan"))
        rows.append({
            "feature": f, "density": float(ex.density[f]), "fired": int(ex.fired[f]), "max_activation": float(ex.top_values[f, 0]),
            "top_token_id": token, "top_token": vocab[token] if token >= 0 else "", "top_token_mean": mean,
            "llr_top_token": feature_llr(ex, f, {token}) if token >= 0 else float("nan"),
            "top_logit": vocab[int(top_ids[f, 0])],
        })
    return pd.DataFrame(rows).astype({"density": np.float64})


# ---------------------------------------------------------------------------------------------
# A node's evidence read back, with the codes over its windows (the feature pages and auto-interp)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def context_codes(model, sae, windows: torch.Tensor, device, batch_windows: int = 64) -> sp.csc_matrix:
    """The SAE's codes at every position of `windows` [n, context], [n * context, d_sae] sparse (by column)."""
    parts = []
    for start in range(0, windows.shape[0], batch_windows):
        acts = run_to_hook(model, windows[start:start + batch_windows].to(device, torch.long), sae.cfg.hook_name)
        parts.append(to_csr(sae.encode(acts.reshape(-1, acts.shape[-1]).float())))
    return sp.vstack(parts, format="csc")


@dataclass
class NodeEvidence:
    """What the pages show of one node: its feature_examples, their feature table and logit effects,
    and the codes over the examples' windows (`context_codes`)."""

    node: str
    examples: FeatureExamples
    table: pd.DataFrame
    logits: dict[str, torch.Tensor]
    codes: sp.csc_matrix
    explanations: dict[int, tuple[str, float]] | None = None  # feature -> (LLM explanation, its score), from autointerp
    # a crosscoder's latents instead of an SAE's features: {"edge", "parent", "child", "latents": latents.parquet by latent}
    crosscoder: dict | None = None

    def __post_init__(self):
        self.columns = {k: self.table[k].to_numpy() for k in ("density", "max_activation", "top_token_id", "llr_top_token")}
        self.logit_lists = {k: v.tolist() for k, v in self.logits.items()}


def load_evidence(node: str, examples_dir: Path, model, sae, device, batch_windows: int = 64,
                  autointerp_dir: Path | None = None) -> NodeEvidence:
    """A node's feature_examples folder, with the codes over its windows computed again, and the
    LLM explanations of `autointerp_dir` (scores.parquet) where there are any."""
    from safetensors.torch import load_file

    ex = FeatureExamples.load(examples_dir / "examples.safetensors")
    explanations = None
    if autointerp_dir is not None and (autointerp_dir / "scores.parquet").is_file():
        t = pd.read_parquet(autointerp_dir / "scores.parquet")
        explanations = {int(f): (str(e), float(sc)) for f, e, sc in zip(t["feature"], t["explanation"], t["score"])}
    return NodeEvidence(node, ex, pd.read_parquet(examples_dir / "features.parquet"),
                        load_file(str(examples_dir / "logit_effects.safetensors")),
                        context_codes(model, sae, ex.windows, device, batch_windows), explanations)
