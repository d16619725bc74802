"""Published SAEs: a SAELens SAE (folder or release) loaded as a node's SAE computes what SAELens computes."""

import pytest
import torch

from featureflow_dagster.lineage import LineageError, parse_lineage, resolve_lineage_path
from featureflow_dagster.lineage.schema import PublishedSAESpec
from featureflow_dagster.sae.published import PublishedSAEError, from_saelens, load_published

HOOK = "blocks.1.hook_resid_post"


def _saelens(kind: str, folder, apply_b_dec: bool = True, seed: int = 0, **extra):
    """A SAELens SAE of `kind` with random weights (non-zero biases), saved the way SAELens saves one."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    cls, cfg_cls = {"standard": (StandardSAE, StandardSAEConfig), "topk": (TopKSAE, TopKSAEConfig),
                    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig)}[kind]
    cfg = cfg_cls(d_in=16, d_sae=64, apply_b_dec_to_input=apply_b_dec, **extra)
    cfg.metadata.hook_name = HOOK
    cfg.metadata.context_size = 32
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    sae.save_model(str(folder))
    return sae


@pytest.mark.parametrize("kind,apply_b_dec,extra", [("standard", True, {}), ("standard", False, {}), ("topk", True, {"k": 5})])
def test_a_saelens_folder_loaded_as_a_published_sae_encodes_identically_to_saelens(kind, apply_b_dec, extra, tmp_path):
    from sae_lens import SAE as LensSAE

    _saelens(kind, tmp_path / "sae", apply_b_dec, **extra)
    lens = LensSAE.load_from_disk(str(tmp_path / "sae"))  # SAELens itself, from the folder
    ours = load_published(PublishedSAESpec(path=str(tmp_path / "sae")), HOOK, 16)
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_f, got_f = lens.encode(x), ours.encode(x)
        assert (want_f > 0).float().mean() > 0.05  # features fire: the comparison can fail
        torch.testing.assert_close(got_f, want_f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(got_f), lens.decode(want_f), atol=1e-5, rtol=1e-5)
    assert ours.cfg.hook_name == HOOK and ours.cfg.d_sae == 64 and ours.cfg.k == extra.get("k")


def test_published_saes_that_featureflow_cannot_read_as_they_are_are_refused_with_the_reason(tmp_path):
    _saelens("jumprelu", tmp_path / "jump")
    with pytest.raises(PublishedSAEError, match="'jumprelu' has no featureflow counterpart"):
        load_published(PublishedSAESpec(path=str(tmp_path / "jump")), HOOK, 16)
    _saelens("standard", tmp_path / "std")
    with pytest.raises(PublishedSAEError, match="reads blocks.1.hook_resid_post; the lineage's hook is blocks.0.mlp.hook_post"):
        load_published(PublishedSAESpec(path=str(tmp_path / "std")), "blocks.0.mlp.hook_post", 16)
    with pytest.raises(PublishedSAEError, match="is 16 wide; the activations at .* are 32"):
        load_published(PublishedSAESpec(path=str(tmp_path / "std")), HOOK, 32)
    with pytest.raises(ValueError, match="'release' and 'sae_id' go together"):
        PublishedSAESpec(release="gemma-2b-res-jb")


def test_the_published_sae_of_the_kutsyk_lineage_is_in_saelens_directory():
    """kutsyk.yaml names jbloom's Gemma-2B residual SAE at its hook: SAELens's own directory lists it there."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from featureflow_dagster.lineage import load_lineage

    lineage = load_lineage("kutsyk")
    spec = lineage.sae_spec(lineage.base.name).published
    release = get_pretrained_saes_directory()[spec.release]
    assert release.model == "gemma-2b" and spec.sae_id in release.saes_map and spec.sae_id == lineage.hook
