"""Feature examples from one streaming pass equal brute force over the dense codes; logit effects equal
the direct matrix product; the LLR proxy on a hand-built distribution."""

import math

import numpy as np
import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from featureflow_dagster.activations import run_to_hook
from featureflow_dagster.examples import (
    HIST_EDGES,
    FeatureExamples,
    collect_examples,
    direct_logit_effects,
    feature_llr,
    model_logit_path,
    token_llr,
)
from featureflow_dagster.sae import SAEConfig
from featureflow_dagster.sae.relu import ReLUSAE

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, head_dim=8, max_position_embeddings=16, sliding_window=None)
    model = MistralForCausalLM(cfg).eval()
    sae = ReLUSAE(SAEConfig(architecture="relu", d_in=24, d_sae=48), seed=3).eval()
    with torch.no_grad():
        sae.b_enc.zero_()  # random pre-activations: each feature fires on about half the tokens
    windows = torch.randint(0, 40, (23, 8), dtype=torch.int32)
    ex = collect_examples(model, sae, windows, CPU, vocab_size=40, top_k=5, samples=7, inactive_pool=30, batch_windows=4)
    with torch.no_grad():
        codes = sae.encode(run_to_hook(model, windows.long(), sae.cfg.hook_name).reshape(-1, 24)).numpy()
    return model, sae, windows, ex, codes


def test_top_activations_equal_a_brute_force_sort(setup):
    _, _, _, ex, codes = setup
    assert (codes > 0).any() and (codes == 0).any()
    for f in range(codes.shape[1]):
        ref = np.sort(codes[:, f])[::-1][:5]
        got = ex.top_values[f].numpy()
        assert np.allclose(got, np.where(ref > 0, ref, 0), atol=1e-6), f
        for v, p in zip(got, ex.top_positions[f].tolist()):
            assert (p == -1) == (v == 0)
            if p >= 0:
                assert codes[p, f] == pytest.approx(v, abs=1e-6)


def test_density_histogram_samples_and_token_means_equal_brute_force(setup):
    _, _, windows, ex, codes = setup
    fired = (codes > 0).sum(0)
    assert ex.fired.tolist() == fired.tolist() and ex.tokens == codes.shape[0]
    assert ex.histogram.sum(1).tolist() == fired.tolist()
    f = int(fired.argmax())
    vals = codes[codes[:, f] > 0, f]
    ref_hist = np.histogram(np.clip(vals, HIST_EDGES[0], HIST_EDGES[-1] * 0.999), HIST_EDGES)[0]
    assert ex.histogram[f].tolist() == ref_hist.tolist()
    for g in range(codes.shape[1]):
        kept = ex.sample_positions[g][ex.sample_positions[g] >= 0]
        assert kept.numel() == min(7, fired[g]) and kept.unique().numel() == kept.numel()
        assert np.allclose(ex.sample_values[g][: kept.numel()].numpy(), codes[kept.numpy(), g], atol=1e-6)
    flat = windows.reshape(-1).numpy()
    for tok, mean, count in ex.top_tokens(f, n=3):
        assert count == (flat == tok).sum() and mean == pytest.approx(codes[flat == tok, f].mean(), rel=1e-5)
    best = max(set(flat.tolist()), key=lambda t: codes[flat == t, f].mean())
    assert ex.top_tokens(f, n=1)[0][0] == best
    groups = ex.quantile_groups(f, groups=3, per_group=2)
    assert [len(g) for g in groups] == [2, 2, 2]
    assert max(v for v, _ in groups[0]) <= min(v for v, _ in groups[2])
    for p in ex.inactive_examples(f):
        assert codes[p, f] == 0


def test_contexts_are_clipped_to_their_window(setup):
    _, _, windows, ex, _ = setup
    tokens, at = ex.context(8 * 3 + 1, radius=2)  # window 3, offset 1
    assert tokens == windows[3, 0:4].tolist() and at == 1


def test_logit_effects_equal_the_direct_matrix_product(setup):
    model, sae, _, _, _ = setup
    path = model_logit_path(model, sae.cfg.hook_name)
    down, norm, unembed = path.to_residual, path.norm_weight, path.unembed
    top, top_ids, bottom, bottom_ids = direct_logit_effects(sae.W_dec.detach(), path, k=4, block=10)
    full = sae.W_dec.detach() @ down.T @ torch.diag(norm) @ unembed.T
    full = full - full.median(dim=1, keepdim=True).values
    ref_v, ref_i = torch.topk(full, 4, dim=1)
    assert torch.allclose(top, ref_v, atol=1e-5) and torch.equal(top_ids, ref_i)
    ref_v, ref_i = torch.topk(full, 4, dim=1, largest=False)
    assert torch.allclose(bottom, ref_v, atol=1e-5) and torch.equal(bottom_ids, ref_i)


def test_llr_on_a_hand_built_distribution():
    counts = torch.tensor([50, 30, 20])  # P = 0.5, 0.3, 0.2
    llr = token_llr({1, 2}, counts)
    assert llr[1].item() == pytest.approx(-math.log(0.5)) and llr[2].item() == pytest.approx(-math.log(0.5))
    assert llr[0].item() == pytest.approx(math.log(1e-6))
    with pytest.raises(ValueError, match="no token"):
        token_llr(set(), counts)
    # a feature firing only on token 2 against one firing on every token in proportion (the null)
    ex = FeatureExamples(
        windows=torch.zeros(1, 100, dtype=torch.int32), top_values=None, top_positions=None, sample_values=None,
        sample_positions=None, histogram=None, fired=None, token_feature=torch.tensor([0, 1, 1, 1]),
        token_id=torch.tensor([2, 0, 1, 2]), token_total=torch.tensor([4.0, 5.0, 3.0, 2.0], dtype=torch.float64),
        token_counts=counts, inactive_positions=torch.zeros(0), inactive_active=[])
    assert feature_llr(ex, 0, {2}) == pytest.approx(-math.log(0.2))
    spread = feature_llr(ex, 1, {2})
    assert spread == pytest.approx((5 * math.log(1e-6) + 3 * math.log(1e-6) + 2 * -math.log(0.2)) / 10)
    assert spread < feature_llr(ex, 0, {2})


def test_examples_round_trip_through_one_file(setup, tmp_path):
    _, _, _, ex, _ = setup
    ex.save(tmp_path / "examples.safetensors")
    back = FeatureExamples.load(tmp_path / "examples.safetensors")
    for name in FeatureExamples._TENSORS:
        assert torch.equal(getattr(back, name), getattr(ex, name)), name
    assert back.inactive_active == ex.inactive_active and back.inactive_examples(3) == ex.inactive_examples(3)
