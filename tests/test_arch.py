"""Hooks at any layer of every supported family: equal to a hand-written hook on the Hugging Face module
and to TransformerLens where it loads the family; stopping early; splicing; direct logit paths; refusals."""

import pytest
import torch
import transformers as T

from featureflow_dagster.activations import capture, run_to_hook
from featureflow_dagster.arch import SUPPORTED, ArchitectureError, adapter_for, check_hook
from featureflow_dagster.examples import LogitPath, direct_logit_effects, model_logit_path, norm_gain
from featureflow_dagster.hooked import HOOKED_FAMILIES, load_hooked_model
from featureflow_dagster.hooks import HookError, parse_hook
from featureflow_dagster.model import load_model
from tiny_models import FAMILIES, save, tiny_model, tiny_tokenizer

# where each family keeps layer 1's MLP output projection and layer 1 itself, written out by hand
HAND = {
    "llama": lambda m: (m.model.layers[1].mlp.down_proj, m.model.layers[1]),
    "mistral": lambda m: (m.model.layers[1].mlp.down_proj, m.model.layers[1]),
    "gemma": lambda m: (m.model.layers[1].mlp.down_proj, m.model.layers[1]),
    "gemma2": lambda m: (m.model.layers[1].mlp.down_proj, m.model.layers[1]),
    "qwen2": lambda m: (m.model.layers[1].mlp.down_proj, m.model.layers[1]),
    "neox": lambda m: (m.gpt_neox.layers[1].mlp.dense_4h_to_h, m.gpt_neox.layers[1]),
    "gpt2": lambda m: (m.transformer.h[1].mlp.c_proj, m.transformer.h[1]),
}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def folders(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: save(tiny_model(f, tok, seed=i), tok, root / f) for i, f in enumerate(FAMILIES)}


def test_every_supported_family_is_covered():
    assert {type(tiny_model(f, tiny_tokenizer(260))).__name__ for f in FAMILIES} == set(SUPPORTED)


def _by_hand(model, x):
    proj, layer = HAND[model.config.model_type.replace("gpt_neox", "neox")](model)
    seen = {}
    h1 = proj.register_forward_pre_hook(lambda mod, args: seen.__setitem__("post", args[0].detach().clone()))
    h2 = layer.register_forward_hook(lambda mod, args, out: seen.__setitem__("resid", (out[0] if isinstance(out, tuple) else out).detach().clone()))
    with torch.no_grad():
        logits = model(input_ids=x).logits
    h1.remove(), h2.remove()
    return seen, logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hooks_at_layer_one_equal_a_hand_written_hook_and_transformer_lens(family, folders, tok):
    model = load_model(folders[family])
    x = torch.randint(0, len(tok), (3, 12), generator=torch.Generator().manual_seed(0))
    seen, _ = _by_hand(model, x)
    post, resid = run_to_hook(model, x, "blocks.1.mlp.hook_post"), run_to_hook(model, x, "blocks.1.hook_resid_post")
    assert post.shape[-1] == (64 if family != "gpt2" else 128) and resid.shape[-1] == 32
    assert torch.equal(post, seen["post"]) and torch.equal(resid, seen["resid"])
    if adapter_for(model).architecture in HOOKED_FAMILIES:
        hooked = load_hooked_model(folders[family])
        names = ["blocks.1.mlp.hook_post", "blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.0.hook_attn_out"]
        _, cache = hooked.run_with_cache(x, names_filter=names)
        for name in names:
            assert torch.allclose(run_to_hook(model, x, name), cache[name], atol=1e-5), name
        assert torch.allclose(hooked(x), model(input_ids=x).logits, atol=1e-4)
    else:  # Gemma: TransformerLens 3.9's HookedTransformer does not load it, and says so
        with pytest.raises(ArchitectureError, match="does not load this family"):
            load_hooked_model(folders[family])


@pytest.mark.parametrize("family", ["llama", "neox", "gpt2"])
def test_collection_stops_at_the_hooked_layer_and_splicing_changes_only_downstream(family, folders, tok):
    model = load_model(folders[family])
    x = torch.randint(0, len(tok), (2, 8), generator=torch.Generator().manual_seed(1))
    proj, layer1 = HAND[family](model)
    calls = []
    handle = layer1.register_forward_hook(lambda *a: calls.append(1))
    run_to_hook(model, x, "blocks.0.hook_resid_post")
    assert calls == []  # layer 1 never ran
    run_to_hook(model, x, "blocks.1.hook_resid_post")
    assert calls == [1]
    handle.remove()
    with torch.no_grad():
        clean = model(input_ids=x).logits
        with capture(model, "blocks.0.hook_resid_post", replace=lambda a: a) as got:
            same = model(input_ids=x).logits
        with capture(model, "blocks.0.hook_resid_post", replace=torch.zeros_like):
            zeroed = model(input_ids=x).logits
    assert len(got) == 1 and torch.equal(clean, same) and not torch.allclose(clean, zeroed)


def test_direct_logit_path_follows_each_familys_norm(folders):
    gpt2 = load_model(folders["gpt2"])
    path = model_logit_path(gpt2, "blocks.1.mlp.hook_post")
    # GPT-2: Conv1D's [d_mlp, d_model] weight transposed, a LayerNorm that centres
    assert path.centre and torch.equal(path.to_residual, gpt2.transformer.h[1].mlp.c_proj.weight.T)
    d = torch.randn(5, 128)
    top, top_ids, _, _ = direct_logit_effects(d, path, k=3)
    by_hand = (gpt2.transformer.h[1].mlp.c_proj.weight.T @ d.T).T
    by_hand = ((by_hand - by_hand.mean(1, keepdim=True)) * gpt2.transformer.ln_f.weight) @ gpt2.lm_head.weight.T
    by_hand = by_hand - by_hand.median(1, keepdim=True).values
    assert torch.allclose(top, by_hand.topk(3, dim=1).values, atol=1e-4)
    gemma = load_model(folders["gemma"])
    with torch.no_grad():
        gemma.model.norm.weight.normal_()
    gain, centre = norm_gain(gemma.model.norm)  # Gemma's RMSNorm scales by 1 + weight
    assert not centre and torch.allclose(gain, 1 + gemma.model.norm.weight)
    llama = load_model(folders["llama"])
    with torch.no_grad():
        llama.model.norm.weight.normal_()
    assert torch.equal(norm_gain(llama.model.norm)[0], llama.model.norm.weight)
    resid = model_logit_path(llama, "blocks.0.hook_resid_post")
    assert isinstance(resid, LogitPath) and torch.equal(resid.to_residual, torch.eye(32))


def test_bad_hooks_and_architectures_are_refused_before_compute(folders):
    config = T.AutoConfig.from_pretrained(folders["neox"])
    assert check_hook(config, "blocks.1.hook_resid_post").layer == 1
    with pytest.raises(ArchitectureError, match="layer 2 is beyond the model's depth"):
        check_hook(config, "blocks.2.mlp.hook_post")
    for bad in ("blocks.0.mlp.hook_pre", "blocks.x.hook_resid_post", "hook_embed"):
        with pytest.raises(HookError, match="not one featureflow reads"):
            parse_hook(bad)
    with pytest.raises(ArchitectureError, match="'OPTForCausalLM' is not supported"):
        adapter_for(T.OPTConfig(architectures=["OPTForCausalLM"]))
    model = load_model(folders["llama"])
    with pytest.raises(ArchitectureError, match="beyond the model's depth"):
        run_to_hook(model, torch.zeros(1, 4, dtype=torch.long), "blocks.5.hook_resid_post")


@pytest.mark.parametrize("family", ["neox", "gpt2", "gemma2"])
def test_model_summary_reads_every_familys_config_and_parts(family, folders):
    from featureflow_dagster.model import summarize_model

    model = load_model(folders[family])
    summary = summarize_model(folders[family])
    assert (summary["d_model"], summary["n_layers"], summary["n_heads"]) == (32, 2, 4)
    assert summary["d_mlp"] == (128 if family == "gpt2" else 64)
    saved = {n for n, _ in model.named_parameters()} & set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(folders[family] / "model.safetensors")))
    params = dict(model.named_parameters())
    assert summary["parameters_by_part"]["mlp"] == sum(params[n].numel() for n in saved if ".mlp." in n)
    assert summary["parameters_by_part"].get("other", 0) == 0
