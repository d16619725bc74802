"""Circuits and CMAP at every layer of a deeper model (a tiny 4-layer Llama made outside featureflow):
path patching across layers, head groups, faithfulness on held-out prompts against random circuits from
the same (layer, position) cells, each checked against hand-written hooks on the Hugging Face model."""

import pytest
import torch

from featureflow_dagster import patching as P
from featureflow_dagster.hooked import load_hooked_model
from featureflow_dagster.patching import tasks as T
from featureflow_dagster.tokenizer import token_strings
from tiny_models import finetune_outside, save, stdlib_texts, tiny_model, tiny_tokenizer

LAYERS, HEADS, KV = 4, 4, 2
D_HEAD = 32 // HEADS


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A 4-layer Llama (4 heads, 2 key-value heads), a fine-tune of it, both as HF and hooked models, and a task."""
    tok = tiny_tokenizer()
    hf = tiny_model("llama", tok, seed=5, layers=LAYERS, init_range=0.5)
    ft = finetune_outside(tiny_model("llama", tok, seed=5, layers=LAYERS, init_range=0.5), tok, stdlib_texts("json/*.py", 4),
                          steps=8, lr=3e-3)
    root = tmp_path_factory.mktemp("deep")
    hooked = load_hooked_model(save(hf, tok, root / "base"))
    hooked_ft = load_hooked_model(save(ft, tok, root / "ft"))
    ids = torch.tensor(tok("\n".join(stdlib_texts("[a-c]*.py", 20)))["input_ids"])
    rows = ids[: len(ids) // 32 * 32].reshape(-1, 32)
    batch = T.mine_close_bracket(rows, token_strings(tok), "brackets", 48, 12, seed=0)
    return hf, hooked, hooked_ft, batch


def _heads_cols(h: int) -> slice:
    return slice(h * D_HEAD, (h + 1) * D_HEAD)


def _z(hf, tokens, layer: int) -> torch.Tensor:
    """Layer `layer`'s per-head outputs before o_proj [n, pos, H * d_head], read on the HF model."""
    got = {}
    handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("z", a[0].clone()))
    with torch.no_grad():
        hf(input_ids=tokens)
    handle.remove()
    return got["z"]


def test_path_patching_across_layers_equals_a_hand_written_two_hook_computation(deep):
    """Sender head (layer 0 or 1) -> one later head's query, key or value input, the strongest path of each
    input: on the HF model, the sender's clean-minus-corrupt output through its o_proj columns is added to
    the receiver layer's input and only the receiver's q_proj (k_proj, v_proj) columns read it (under
    grouped-query attention a key/value input is the receiver's key-value head's)."""
    hf, hooked, _, batch = deep
    receivers = {f"r{l}{h}": [[l, h]] for l in (2, 3) for h in range(HEADS)}
    paths = P.path_patching(hooked, batch, layers=[0, 1], groups=receivers)
    corrupt_ld = P.mean_ld(P.final_logits(hooked, batch.corrupt), batch)
    paths["moved"] = paths["ld"] - corrupt_ld
    for inp in ("q", "k", "v"):
        rows = paths[paths["input"] == inp]
        best = rows.loc[rows["moved"].abs().idxmax()]
        sl, sh = P.parse_component(best["sender"])[1:]
        rl, rh = receivers[best["receiver"].split(".")[1]][0]
        z_clean, z_corrupt = _z(hf, batch.clean, sl), _z(hf, batch.corrupt, sl)
        cols = _heads_cols(sh)
        w_o = hf.model.layers[sl].self_attn.o_proj.weight  # [d_model, H * d_head]
        delta = (z_clean[..., cols] - z_corrupt[..., cols]) @ w_o[:, cols].T
        layer = hf.model.layers[rl]
        proj = getattr(layer.self_attn, f"{inp}_proj")
        head = rh if inp == "q" else rh // (HEADS // KV)
        seen = {}

        def grab(mod, args, kwargs):
            seen["resid"] = (args[0] if args else kwargs["hidden_states"]).clone()

        def swap(mod, args, out, head=head, proj=proj, layer=layer, delta=delta):
            moved = torch.nn.functional.linear(layer.input_layernorm(seen["resid"] + delta), proj.weight, proj.bias)
            out = out.clone()
            out[..., _heads_cols(head)] = moved[..., _heads_cols(head)]
            return out

        h1 = layer.register_forward_pre_hook(grab, with_kwargs=True)
        h2 = proj.register_forward_hook(swap)
        with torch.no_grad():
            want = hf(input_ids=batch.corrupt).logits[:, -1]
        h1.remove(), h2.remove()
        assert abs(best["moved"]) > 5e-3, inp  # the path moves the answer well above float32 noise: the check can fail
        assert best["moved"] == pytest.approx(P.mean_ld(want, batch) - corrupt_ld, rel=1e-3, abs=1e-5), inp
    # senders of layers 0 and 1 only; each receiver head lies in a later layer
    assert set(paths["sender"]) == {f"L{l}.H{h}" for l in (0, 1) for h in range(HEADS)}
    assert set(paths["receiver"]) == {"logits", "L0.mlp", "L1.mlp", *(f"group.{g}" for g in receivers)}
    assert len(paths) == 8 * (2 + 3 * len(receivers))


def test_a_head_group_patched_equals_its_heads_patched_together_by_hand(deep):
    hf, hooked, _, batch = deep
    group = [[1, 0], [3, 2], [3, 3]]
    effects = P.activation_patching(hooked, batch, ["group.g"], groups={"g": group})
    clean = {layer: _z(hf, batch.clean, layer) for layer in (1, 3)}
    corrupt_ld = P.mean_ld(P.final_logits(hooked, batch.corrupt), batch)
    for pos in (None, batch.length - 1):
        handles = []
        for layer, head in group:
            def put(mod, args, layer=layer, head=head):
                z = args[0].clone()
                rows = slice(None) if pos is None else pos
                z[:, rows, _heads_cols(head)] = clean[layer][:, rows, _heads_cols(head)]
                return (z,)
            handles.append(hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(put))
        with torch.no_grad():
            want = hf(input_ids=batch.corrupt).logits[:, -1]
        for h in handles:
            h.remove()
        rel = None if pos is None else pos - batch.length
        row = effects[effects["position"].isna()] if rel is None else effects[effects["position"].astype(object) == rel]
        assert float(row["ld"].iloc[0]) == pytest.approx(P.mean_ld(want, batch), abs=1e-4)
        assert abs(P.mean_ld(want, batch) - corrupt_ld) > 5e-3  # the group moves the answer: the check can fail
    # across models: a group of every head of a layer is that layer's attention output (Llama's o_proj has no bias)
    parent, child = hooked, deep[2]
    layer_heads = {"all2": [[2, h] for h in range(HEADS)]}
    both = P.cmap(parent, child, batch, ["group.all2", "L2.attn"], min_gap_se=0, groups=layer_heads)
    g = both[both["component"] == "group.all2"].reset_index(drop=True)
    a = both[both["component"] == "L2.attn"].reset_index(drop=True)
    torch.testing.assert_close(torch.tensor(g["ld"].to_numpy()), torch.tensor(a["ld"].to_numpy()), atol=1e-4, rtol=0)


def test_components_cover_every_layer_and_budgets_limit_them(deep):
    _, hooked, _, batch = deep
    names = P.component_names(hooked, groups={"A": [[0, 1]]})
    assert names[0] == "embed" and names[-1] == "group.A"
    assert len(names) == 1 + LAYERS * (HEADS + 2) + 1 and "L3.H3" in names and "L2.mlp" in names
    assert P.component_names(hooked, ("heads",), layers=[2]) == [f"L2.H{h}" for h in range(HEADS)]
    e = P.activation_patching(hooked, batch, ["L3.mlp", "L1.H2"], last_positions=3)
    assert sorted(set(e["position"].dropna().astype(int))) == [-3, -2, -1] and e["position"].isna().sum() == 2
    with pytest.raises(ValueError, match="4 layers"):
        P.check_components(hooked, ["L4.mlp"])
    with pytest.raises(ValueError, match="heads per layer"):
        P.check_components(hooked, ["group.x"], {"x": [[1, 7]]})


def test_circuits_are_scored_on_held_out_prompts_against_random_circuits_from_the_same_cells(deep):
    import random

    _, hooked, _, batch = deep
    find, score = batch.halves(3)
    assert len(find) + len(score) == len(batch) and len(find) == len(batch) // 2
    rows = {tuple(r.tolist()) + (int(a),) for r, a in zip(find.clean, find.answer)}
    assert not rows & {tuple(r.tolist()) + (int(a),) for r, a in zip(score.clean, score.answer)} or len(rows) < len(find)
    universe = P.circuit_universe(hooked, batch.length)
    assert len(universe) == LAYERS * (HEADS + 1) * batch.length
    keep = [("L3.H1", 11), ("L3.mlp", 11), ("L1.H0", 4)]
    rng = random.Random(0)
    for _ in range(20):
        drawn = P.random_circuit(rng, keep, universe)
        cells = sorted((P.parse_component(c)[1], p) for c, p in drawn)
        assert cells == [(1, 4), (3, 11), (3, 11)] and len(set(drawn)) == 3
    f = P.faithfulness(hooked, score, keep, random_draws=4)
    assert f.pool == 2 * (HEADS + 1) and f.examples == len(score) and f.universe == len(universe)
    # mean-ablating every unit but the whole last layer at the last position changes this deep model's answer
    everything_else = P.ablated_logits(hooked, score, [(f"L3.H{h}", 11) for h in range(HEADS)] + [("L3.mlp", 11)])
    assert not torch.allclose(everything_else, P.final_logits(hooked, score.clean), atol=1e-3)
