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
def test_forward_is_decode_of_encode(arch, k):
    sae = SAE_REGISTRY[arch](_cfg(arch, k=k), seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.data_mean.normal_()
    x = torch.randn(5, 8)
    assert torch.allclose(sae(x), sae.decode(sae.encode(x)))
    f = sae.encode(x)
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


def test_decoder_rows_stay_unit_norm_and_gradient_is_orthogonal():
    sae = ReLUSAE(_cfg("relu"), seed=1)
    x = torch.randn(32, 8)
    sae.loss(x, sae.encode(x), sae(x))["loss"].backward()
    sae.remove_parallel_gradient()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-6)
    train_sae(sae, _batches(torch.randn(512, 8), 32), 20, lr=1e-2, betas=(0.9, 0.9999), device=CPU)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)


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
    train_sae(sae, _batches(torch.randn(512, 8) * 2 + 1, 32), 30, lr=1e-2, betas=(0.9, 0.9999), device=CPU)
    with torch.no_grad():
        sae.data_mean.copy_(torch.randn(8))  # the paper's centring must survive the round trip
    sae.eval().save(tmp_path)
    lens = LensSAE.load_from_disk(tmp_path)
    ours = load_sae(tmp_path).eval()
    x = torch.randn(20, 8) * 2 + 1
    with torch.no_grad():
        assert torch.allclose(lens.encode(x), sae.encode(x), atol=1e-5)
        assert torch.allclose(lens.decode(lens.encode(x)), sae(x), atol=1e-5)
        assert torch.allclose(ours(x), sae(x), atol=1e-5)


def test_checks_fail_on_bad_numbers():
    good = SAEEvaluation(30, 0.005, 0.9, 2.0, 2.1, 4.0, 0.95, 0.01, 0.0, 1000, torch.zeros(4))
    broken = SAEEvaluation(0, 0.5, -0.1, 2.0, 6.0, 4.0, -1.0, 1.0, 0.0, 1000, torch.zeros(4))
    checks = SAEChecks(l0_min=25, l0_max=35, mse_max=0.0067, explained_variance_min=0.88, dead_fraction_max=0.5)
    assert all(c.passed for c in check_evaluation(good, checks))
    outcomes = {c.name: c for c in check_evaluation(broken, checks)}
    assert not any(c.passed for c in outcomes.values())
    assert outcomes["l0_in_range"] == CheckOutcome("l0_in_range", False, 0, "[25.0, 35.0]")
