"""The BatchTopK crosscoder (featureflow_dagster.crosscoder): its same-model null finds no model-specific latent, a
planted removal and addition are found as parent-only and child-only latents, and Latent Scaling is the closed-form
least-squares scale."""

import pytest
import torch

from featureflow_dagster.crosscoder import BatchTopKCrosscoder, classify_latents, latent_scaling, latent_table, relative_norm, train_crosscoder


def _world(seed=0, n=48, d=32, tokens=40_000, removed=8, added=8):
    """Sparse true features; the child drops the first `removed` and gains `added` new ones, on the same latents."""
    g = torch.Generator().manual_seed(seed)
    parent = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    new = torch.nn.functional.normalize(torch.randn(added, d, generator=g), dim=1)
    z = (torch.rand(tokens, n + added, generator=g) < 0.06) * (1 + torch.rand(tokens, n + added, generator=g))
    keep = torch.ones(n)
    keep[:removed] = 0
    return parent, new, z[:, :n] @ parent, (z[:, :n] * keep) @ parent + z[:, n:] @ new


def _train(xp, xc, latents=128, k=4, steps=600, seed=0):
    cc = BatchTopKCrosscoder(xp.shape[1], latents, k, seed=seed)
    cc.fit_scales([xp, xc])
    g = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            sel = torch.randint(0, xp.shape[0], (1024,), generator=g)
            yield [xp[sel], xc[sel]]

    train_crosscoder(cc, batches, steps, 3e-3, torch.device("cpu"), dead_window_tokens=20_000)
    return cc


def _live(cc, xs):
    with torch.no_grad():
        return (cc.encode(xs) > 0).any(0).numpy()


def test_relative_norm_and_classes_follow_the_definition():
    w = torch.zeros(4, 2, 3)
    w[0, 0, 0] = 1.0  # parent only
    w[1, 1, 0] = 2.0  # child only
    w[2, :, 1] = 1.0  # shared, equal norms
    w[3, 0, 2], w[3, 1, 2] = 1.0, 0.25  # Δ = ½(0.75 + 1)
    delta = relative_norm(w)
    assert delta.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.875])
    assert classify_latents(delta).tolist() == ["parent_only", "child_only", "shared", "other"]


def test_a_crosscoder_of_a_model_with_itself_finds_no_model_specific_latent():
    _, _, xp, _ = _world()
    cc = _train(xp, xp.clone())
    table = latent_table(cc)[_live(cc, [xp, xp])]
    assert len(table) > 40  # it learned something
    assert not table["class"].isin(["parent_only", "child_only"]).any(), table["class"].value_counts().to_dict()
    assert table["delta"].between(0.35, 0.65).all()
    assert table["decoder_cosine"].median() > 0.99  # (a rarely firing latent keeps some of its random start)


def test_a_planted_removal_and_addition_are_parent_only_and_child_only_latents():
    parent, new, xp, xc = _world()
    cc = _train(xp, xc)
    table = latent_table(cc)[_live(cc, [xp, xc])]
    w = cc.W_dec.detach()
    owner_p = (torch.nn.functional.normalize(w[:, 0], dim=1) @ parent.T).max(1)
    owner_c = (torch.nn.functional.normalize(w[:, 1], dim=1) @ new.T).max(1)
    for j, row in table.iterrows():
        if row["class"] == "parent_only":  # points at a removed feature in the parent
            assert owner_p.values[j] > 0.9 and owner_p.indices[j] < 8, (j, float(owner_p.values[j]), int(owner_p.indices[j]))
        if row["class"] == "child_only":  # points at an added feature in the child
            assert owner_c.values[j] > 0.9, (j, float(owner_c.values[j]))
    found_removed = {int(owner_p.indices[j]) for j in table.index[table["class"] == "parent_only"]}
    found_added = {int(owner_c.indices[j]) for j in table.index[table["class"] == "child_only"]}
    assert len(found_removed) >= 7 and len(found_added) >= 7, (found_removed, found_added)
    nu = latent_scaling(cc, [xp, xc], table.index[table["class"] == "child_only"].tolist())
    assert (nu["nu_error"].abs() < 0.2).all(), nu  # the parent holds nothing of an added feature


def test_latent_scaling_is_the_closed_form_least_squares_scale():
    torch.manual_seed(0)
    cc = BatchTopKCrosscoder(6, 5, 2, seed=1).eval()
    xs = [torch.randn(300, 6), torch.randn(300, 6)]
    with torch.no_grad():
        cc.W_dec[0, 1] *= 0.05  # latent 0: parent-dominant
        x = cc.normalise(xs)
        f = cc.activate(cc.pre(x))
        x_hat = cc.decode(f)
    j = 0
    assert f[:, j].abs().sum() > 0
    nu = latent_scaling(cc, xs, [j]).iloc[0]
    d = cc.W_dec[j, 0].detach()
    for target_model, column in ((0, "beta_error_own"), (1, "beta_error_other")):
        y = (x[:, target_model] - x_hat[:, target_model] + f[:, j:j + 1] * cc.W_dec[j, target_model][None]).detach()
        a = (f[:, j:j + 1] * d[None]).reshape(-1, 1).detach()  # the column f_t d, stacked over tokens
        beta = torch.linalg.lstsq(a.double(), y.reshape(-1, 1).double()).solution.item()
        assert nu[column] == pytest.approx(beta, rel=1e-4, abs=1e-6)
    assert nu["nu_error"] == pytest.approx(nu["beta_error_other"] / nu["beta_error_own"])
