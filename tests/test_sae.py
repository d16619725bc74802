"""SAE architectures on tiny tensors: the function, the decoder constraint, recovery of a planted
dictionary, resuming, SAELens interoperability, checks."""

import pytest
import torch

from featureflow_dagster.sae import SAE_REGISTRY, BatchTopKSAE, ReLUSAE, SAEConfig, TopKSAE, load_sae
from featureflow_dagster.sae.evaluate import CheckOutcome, SAEEvaluation, check_evaluation
from featureflow_dagster.sae.train import train_sae
from featureflow_dagster.lineage import SAEChecks

CPU = torch.device("cpu")


def _cfg(arch, d_in=8, d_sae=32, k=None):
    return SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=k)


@pytest.mark.parametrize("arch, k", [("relu", None), ("topk", 3), ("batchtopk", 3)])
def test_forward_equals_the_written_formula(arch, k):
    sae = SAE_REGISTRY[arch](_cfg(arch, k=k), seed=0).eval()
    with torch.no_grad():
        for t in (sae.b_dec, sae.b_enc, sae.data_mean):
            t.normal_()
        sae.input_scale.fill_(2.5)
    x = torch.randn(5, 8)
    pre = ((x - sae.data_mean) * 2.5 - sae.b_dec) @ sae.W_enc + sae.b_enc
    if arch == "relu":
        f = torch.relu(pre)
    elif arch == "topk":
        keep = pre >= pre.topk(3, dim=-1).values[:, -1:]
        f = torch.relu(pre) * keep
    else:
        f = pre * (pre > sae.threshold)
    x_hat = (f @ sae.W_dec + sae.b_dec) / 2.5 + sae.data_mean
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), f, atol=1e-5)
        assert torch.allclose(sae(x), x_hat, atol=1e-5)
    assert f.shape == (5, 32) and (f >= 0).all()


def test_topk_keeps_k_per_token_and_batchtopk_k_per_token_on_average():
    x = torch.randn(16, 8)
    assert ((TopKSAE(_cfg("topk", k=3)).encode(x) > 0).sum(-1) <= 3).all()
    b = BatchTopKSAE(_cfg("batchtopk", k=3)).train()
    assert (b.encode(x) > 0).sum() <= 3 * 16
    assert b.threshold > 0  # learned from the smallest kept activation
    b.eval()
    f = b.encode(x)
    assert torch.equal(f > 0, b.pre_activations(x) > b.threshold)


def _planted(n=4096, d_in=16, n_atoms=24, active=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, n_atoms)
    for i in range(n):
        idx = torch.randperm(n_atoms, generator=g)[:active]
        codes[i, idx] = torch.rand(active, generator=g) * 2 + 0.5
    return codes @ atoms, atoms


def _batches(x, size, seed=0):
    def gen(start):
        g = torch.Generator().manual_seed(seed)
        step = 0
        while True:
            perm = torch.randperm(x.shape[0], generator=g)
            for b in range(0, x.shape[0] - size + 1, size):
                if step >= start:
                    yield x[perm[b : b + size]]
                step += 1
    return gen


def test_relu_sae_recovers_a_planted_sparse_dictionary():
    x, atoms = _planted()
    sae = ReLUSAE(_cfg("relu", d_in=16, d_sae=48), seed=0, l1_coefficient=1e-2)
    res = train_sae(sae, _batches(x, 64), 4000, lr=1e-3, betas=(0.9, 0.9999), device=CPU)
    cos = (atoms @ sae.W_dec.detach().T)  # [atoms, features], rows of W_dec are unit norm
    best = cos.max(dim=1).values
    assert (best > 0.9).all(), best
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48), atol=1e-5)
    assert res.curve[-1]["mse"] < res.curve[0]["mse"] / 5


def test_dead_features_are_resampled_towards_badly_reconstructed_inputs():
    x, _ = _planted(n=1024)
    sae = ReLUSAE(_cfg("relu", d_in=16, d_sae=24), seed=0, l1_coefficient=1e-2)
    with torch.no_grad():
        sae.b_enc[:6] = -100.0  # six features that can never fire
    before = sae.W_dec[:6].detach().clone()
    res = train_sae(sae, _batches(x, 64), 40, lr=1e-3, betas=(0.9, 0.9999), device=CPU,
                    dead_window_tokens=64 * 10, resample_dead_every=20)
    assert res.resampled >= 6
    assert not torch.allclose(sae.W_dec[:6], before)
    assert (sae.b_enc[:6] > -100).all()


def test_unit_norm_decoder_gets_an_orthogonal_gradient_and_a_free_one_moves():
    sae = ReLUSAE(_cfg("relu"), seed=1)
    x = torch.randn(32, 8)
    sae.training_losses(sae.normalize(x))[1]["loss"].backward()
    assert not torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-4)
    sae.remove_parallel_gradient()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-6)
    data = _batches(torch.randn(512, 8) * 3, 32)
    unit = ReLUSAE(_cfg("relu"), seed=1)
    free = ReLUSAE(_cfg("relu"), seed=1, decoder_constraint="free")
    assert torch.allclose(free.W_dec.norm(dim=1), torch.full((32,), 0.1))  # Anthropic's April 2024 start
    for sae in (unit, free):
        train_sae(sae, data, 40, lr=1e-2, betas=(0.9, 0.9999), device=CPU)
    assert torch.allclose(unit.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    assert (free.W_dec.norm(dim=1) - 0.1).abs().max() > 0.05


def test_free_decoder_weights_the_l1_penalty_by_row_norm():
    sae = ReLUSAE(_cfg("relu"), seed=0, l1_coefficient=0.5, decoder_constraint="free")
    with torch.no_grad():
        sae.W_dec[:16] *= 4
    xn = torch.randn(10, 8)
    f, losses = sae.training_losses(xn, sparsity_scale=0.5)
    penalty = (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    assert torch.allclose(losses["l1"], penalty)
    assert torch.allclose(losses["loss"], losses["mse"] + 0.5 * 0.5 * penalty)


def test_lr_schedule_warms_up_and_decays_to_zero():
    from featureflow_dagster.sae.train import lr_multiplier

    factors = [lr_multiplier(s, 10, warmup_steps=2, decay_steps=4) for s in range(10)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert [lr_multiplier(s, 5) for s in range(5)] == [1.0] * 5


def test_normalised_training_is_invariant_to_the_activations_scale():
    """With the input scale set to sqrt(d_in) / E||x - mean||, an SAE trained on 1000·x learns the
    same features as one trained on x: λ means the same for every model."""
    x, _ = _planted(n=1024)
    x = x + 0.3
    saes = []
    for c in (1.0, 1000.0):
        sae = ReLUSAE(_cfg("relu", d_in=16, d_sae=48), seed=0, l1_coefficient=1e-2)
        data = x * c
        with torch.no_grad():
            sae.data_mean.copy_(data.mean(0))
            sae.input_scale.fill_(16**0.5 / (data - sae.data_mean).norm(dim=1).mean())
        train_sae(sae, _batches(data, 64), 200, lr=1e-3, betas=(0.9, 0.9999), device=CPU)
        saes.append(sae)
    with torch.no_grad():
        f1, f2 = saes[0].encode(x[:50]), saes[1].encode(x[:50] * 1000)
        assert (f1 > 0).any()
        assert torch.allclose(f1, f2, atol=1e-3 * f1.abs().max())
        assert torch.allclose(saes[1](x[:50] * 1000) / 1000, saes[0](x[:50]), atol=1e-3)


def test_auxk_revives_latents_that_topk_never_selects():
    x, _ = _planted(n=2048)
    results = {}
    for coefficient in (0.0, 1 / 32):
        sae = TopKSAE(_cfg("topk", d_in=16, d_sae=48, k=3), seed=0, aux_k_coefficient=coefficient)
        with torch.no_grad():
            sae.b_enc[:12] = -3.0  # a quarter of the latents start out of TopK's reach
        train_sae(sae, _batches(x, 64), 600, lr=3e-3, betas=(0.9, 0.999), device=CPU, dead_window_tokens=64 * 5)
        with torch.no_grad():
            results[coefficient] = int(((sae.encode(x) > 0).sum(0) == 0).sum())
    assert results[0.0] >= 10, results  # without AuxK they stay dead
    assert results[1 / 32] <= results[0.0] // 2, results  # AuxK brings at least half of them back (12 -> 6 seen)


def test_auxk_term_is_zero_without_dead_latents_and_matches_its_formula():
    from featureflow_dagster.sae.topk import auxk_loss

    sae = TopKSAE(_cfg("topk", k=2), seed=0)
    xn = torch.randn(6, 8)
    pre = sae.pre_activations_normalized(xn)
    xn_hat = sae.decode_normalized(sae.activate(pre))
    assert auxk_loss(sae, xn, xn_hat, pre, torch.zeros(32, dtype=torch.bool), 1.0) == 0.0
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 5, 7]] = True  # fewer dead than k_aux = d_in / 2 = 4: all three used, scale 3/4
    z = torch.zeros_like(pre)
    z[:, [3, 5, 7]] = pre[:, [3, 5, 7]]
    expected = 0.75 * ((z @ sae.W_dec - (xn - xn_hat)) ** 2).mean()
    assert torch.allclose(auxk_loss(sae, xn, xn_hat, pre, dead, 1.0), expected)


def test_loaded_batchtopk_sae_uses_its_threshold_not_the_batch(tmp_path):
    sae = BatchTopKSAE(_cfg("batchtopk", k=3), seed=0)
    train_sae(sae, _batches(torch.randn(512, 8), 32), 30, lr=1e-2, betas=(0.9, 0.9999), device=CPU)
    sae.eval().save(tmp_path)
    loaded = load_sae(tmp_path)
    threshold = float(loaded.threshold)
    x = torch.randn(40, 8)
    with torch.no_grad():
        whole, part = loaded.encode(x), loaded.encode(x[:7])
    assert torch.allclose(whole[:7], part, atol=1e-6)  # a token's code does not depend on the rest of its batch
    assert float(loaded.threshold) == threshold


def test_killed_sae_training_resumes_to_the_same_weights(tmp_path):
    x = torch.randn(1024, 8)
    kw = dict(lr=1e-3, betas=(0.9, 0.9999), device=CPU, checkpoint_every=4, fingerprint="f")
    straight = ReLUSAE(_cfg("relu"), seed=0)
    train_sae(straight, _batches(x, 32), 12, **{**kw, "fingerprint": ""})
    ckpt = tmp_path / "sae.pt"
    train_sae(ReLUSAE(_cfg("relu"), seed=0), _batches(x, 32), 12, checkpoint_path=ckpt, stop_after_step=6, **kw)
    resumed = ReLUSAE(_cfg("relu"), seed=0)
    res = train_sae(resumed, _batches(x, 32), 12, checkpoint_path=ckpt, **kw)
    assert res.resumed_from_step == 4
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch, k", [("relu", None), ("topk", 4), ("batchtopk", 4)])
def test_saved_sae_loads_in_saelens_and_encodes_identically(arch, k, tmp_path):
    from sae_lens import SAE as LensSAE

    sae = SAE_REGISTRY[arch](_cfg(arch, k=k), seed=0)
    with torch.no_grad():
        sae.input_scale.fill_(0.37)  # normalised training: the scale is folded into the saved weights
    train_sae(sae, _batches(torch.randn(512, 8) * 2 + 1, 32), 30, lr=1e-2, betas=(0.9, 0.9999), device=CPU)
    with torch.no_grad():
        sae.data_mean.copy_(torch.randn(8))  # the paper's centring must survive the round trip
    sae.eval().save(tmp_path)
    lens = LensSAE.load_from_disk(tmp_path)
    ours = load_sae(tmp_path)
    assert not ours.training
    x = torch.randn(20, 8) * 2 + 1
    with torch.no_grad():
        assert torch.allclose(lens.encode(x), sae.encode(x), atol=1e-5)
        assert torch.allclose(lens.decode(lens.encode(x)), sae(x), atol=1e-5)
        assert torch.allclose(ours(x), sae(x), atol=1e-5)


def test_checks_fail_on_bad_numbers():
    good = {**SAEEvaluation(30, 0.005, 0.9, 2.0, 2.1, 4.0, 0.95, 0.01, 0.0, 1000, torch.zeros(4)).scalars(),
            "decoder_init_cosine": 0.3, "top_token_share_margin": 0.2}
    broken = {**SAEEvaluation(0, 0.5, -0.1, 2.0, 6.0, 4.0, -1.0, 1.0, 0.0, 1000, torch.zeros(4)).scalars(),
              "decoder_init_cosine": 0.99, "top_token_share_margin": -0.1}
    checks = SAEChecks(l0_min=25, l0_max=35, mse_max=0.0067, explained_variance_min=0.88, dead_fraction_max=0.5,
                       loss_recovered_min=0.9, decoder_init_cosine_max=0.5, top_token_share_margin_min=0.1)
    assert all(c.passed for c in check_evaluation(good, checks))
    outcomes = {c.name: c for c in check_evaluation(broken, checks)}
    assert len(outcomes) == 7 and not any(c.passed for c in outcomes.values())
    assert outcomes["l0_in_range"] == CheckOutcome("l0_in_range", False, 0, "[25.0, 35.0]")
    assert not check_evaluation({**good, "explained_variance": float("nan")}, checks)[2].passed


def test_token_specificity_equals_a_brute_force_count_and_separates_token_features_from_random():
    from featureflow_dagster.sae.evaluate import random_dictionary, token_specificity

    g = torch.Generator().manual_seed(0)
    n, d_in, vocab = 8000, 16, 100
    tokens = torch.randint(0, vocab, (n,), generator=g)
    emb = torch.randn(vocab, d_in, generator=g)
    x = emb[tokens] + 0.7 * torch.randn(n, d_in, generator=g)
    # A "dictionary" whose features are the token embeddings: each fires on its own token.
    token_features = lambda a: torch.relu(a @ emb.T - 0.5 * (emb**2).sum(1))  # noqa: E731
    chunks = lambda: ((x[i : i + 700], tokens[i : i + 700]) for i in range(0, n, 700))  # noqa: E731
    ours = token_specificity(token_features, chunks(), vocab, top=20)
    f = token_features(x)
    shares = []
    for j in range(vocab):
        if (f[:, j] > 0).sum() >= 20:
            top_tokens = tokens[f[:, j].topk(20).indices]
            shares.append(top_tokens.bincount().max().item() / 20)
    assert ours.features == len(shares) and ours.share == pytest.approx(torch.tensor(shares).median().item())
    assert ours.share > 0.9
    rand = random_dictionary(d_in, 64, l0=4, center=x.mean(0), seed=0)
    null = token_specificity(rand.encode, chunks(), 64, top=20)
    assert null.features > 32 and null.share < ours.share - 0.3  # 0.45 against 0.95 seen


def test_decoder_init_cosine_is_one_at_the_start_and_low_for_other_directions():
    from featureflow_dagster.sae.evaluate import decoder_init_cosine

    a, b = ReLUSAE(_cfg("relu", d_in=64, d_sae=128), seed=0), ReLUSAE(_cfg("relu", d_in=64, d_sae=128), seed=1)
    assert decoder_init_cosine(a.W_dec.detach(), a.W_dec.detach()) == pytest.approx(1.0)
    assert abs(decoder_init_cosine(b.W_dec.detach(), a.W_dec.detach())) < 0.1


def test_topk_sparse_decoder_path_gives_the_dense_losses_and_gradients():
    from featureflow_dagster.sae.base import SAE

    xn = torch.randn(12, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[::3] = True
    grads = []
    for path in (TopKSAE.training_losses, SAE.training_losses):
        sae = TopKSAE(_cfg("topk", k=3), seed=0)
        with torch.no_grad():
            sae.b_dec.copy_(torch.linspace(-1, 1, 8))
        f, losses = path(sae, xn, dead)
        losses["loss"].backward()
        grads.append((f.detach(), losses["loss"].detach(), [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]))
    (f1, l1, g1), (f2, l2, g2) = grads
    assert torch.allclose(f1, f2) and torch.allclose(l1, l2)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


def test_a_loaded_sae_unfolds_to_the_same_function_with_unit_rows(tmp_path):
    """A warm start reads a saved SAE (scale and mean folded in): its training form must compute the same
    reconstruction with rows at norm 1, else training's renormalisation rescales every reconstruction."""
    from featureflow_dagster.sae import load_sae
    from featureflow_dagster.sae.base import SAEConfig
    from featureflow_dagster.sae.fit import training_form
    from featureflow_dagster.sae.topk import TopKSAE

    sae = TopKSAE(SAEConfig("topk", 16, 64, k=4), seed=3)
    with torch.no_grad():
        sae.data_mean.copy_(torch.randn(16))
        sae.input_scale.fill_(2.5)
        sae.b_dec.copy_(torch.randn(16))
        sae.b_enc.copy_(torch.randn(64) * 0.1)
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert torch.allclose(loaded.W_dec.norm(dim=1), torch.full((64,), 1 / 2.5), atol=1e-6)
    again = TopKSAE(SAEConfig("topk", 16, 64, k=4), seed=9)
    again.load_state_dict(training_form(loaded, again.unit_norm_decoder))
    x = torch.randn(32, 16) * 3
    assert torch.allclose(again.W_dec.norm(dim=1), torch.ones(64), atol=1e-5) and float(again.input_scale) == pytest.approx(2.5)
    assert torch.allclose(again(x), sae(x), atol=1e-4) and torch.equal(again.encode(x) > 0, sae.encode(x) > 0)
