"""Tasks, activation and path patching, circuits and CMAP (featureflow_dagster.patching), on
real standard-library text and small Mistral models in the micro lineage's shape."""

import inspect
import json as json_module

import pytest
import torch

from featureflow_dagster import patching as P
from featureflow_dagster.patching import tasks as T
from featureflow_dagster.hooked import load_hooked_model
from featureflow_dagster.hooks import RESID_POST
from featureflow_dagster.lineage import ENTITY_BOXES, ENTITY_OBJECTS, LineageError, ModelSpec, load_lineage, parse_lineage, resolve_lineage_path
from featureflow_dagster.model import init_model
from featureflow_dagster.sae.base import SAEConfig
from featureflow_dagster.sae.relu import ReLUSAE
from featureflow_dagster.tokenizer import token_strings, train_bpe

SOURCE = inspect.getsource(json_module.decoder) + inspect.getsource(json_module.encoder) + inspect.getsource(json_module.scanner)
SPEC = ModelSpec(d_model=32, d_mlp=64, n_heads=2, n_layers=1, n_ctx=32)


@pytest.fixture(scope="module")
def text():
    """A tokenizer and 32-token rows of real Python (the json package's source)."""
    tok = train_bpe([SOURCE], vocab_size=400)
    ids = torch.tensor(tok.encode(SOURCE))
    n = len(ids) // 32
    return tok, token_strings(tok), ids[: n * 32].reshape(n, 32)


@pytest.fixture(scope="module")
def models(text, tmp_path_factory):
    """Two differently initialised micro-shaped models (the same architecture: a parent and a child),
    each with its Hugging Face form, saved and loaded the way the assets load them."""
    tok = text[0]
    out = {}
    for name, seed in (("parent", 1), ("child", 2)):
        hf = init_model(SPEC, tok, seed).eval()
        folder = tmp_path_factory.mktemp(name)
        hf.save_pretrained(folder)
        out[name] = (load_hooked_model(folder), hf)
    return out


@pytest.fixture(scope="module")
def brackets(text):
    _, strings, rows = text
    return T.mine_close_bracket(rows, strings, "brackets", 64, 12, seed=0)


def _find(rows, prompt, answer):
    L = len(prompt)
    for r in range(rows.shape[0]):
        for t in range(L, rows.shape[1]):
            if rows[r, t] == answer and torch.equal(rows[r, t - L:t], prompt):
                return True
    return False


@pytest.mark.parametrize("kind", sorted(T.MINED))
def test_mined_prompts_end_right_before_their_answer_in_the_text(text, kind):
    _, strings, rows = text
    extra = {"common": 20} if kind == "copy_identifier" else {}  # a 400-token vocabulary has few rare identifiers
    batch = T.MINED[kind](rows, strings, kind, 40, 12, seed=0, minimum=8, **extra)
    assert len(batch) >= 8 and batch.clean.shape == batch.corrupt.shape == (len(batch), 12)
    for i in range(len(batch)):
        # the answer is the token that follows the prompt in the real text: no off-by-one
        assert _find(rows, batch.clean[i], batch.answer[i])
        diff = (batch.clean[i] != batch.corrupt[i]).nonzero()[:, 0].tolist()
        assert diff and diff[-1] == batch.key[i]
        key, alt = strings[int(batch.clean[i, batch.key[i]])], strings[int(batch.corrupt[i, batch.key[i]])]
        answer, wrong = strings[int(batch.answer[i])], strings[int(batch.wrong[i])]
        if kind == "close_bracket":
            assert len(diff) == 1 and T.OPEN_CLOSE[key.strip()] == answer and T.OPEN_CLOSE[alt.strip()] == wrong != answer
        elif kind == "close_quote":
            assert len(diff) == 1 and key.strip() == answer and alt.strip() == wrong != answer
        else:  # every earlier occurrence of the answer replaced by the counterfactual's answer
            assert key == answer and alt == wrong and int(batch.answer[i]) not in batch.corrupt[i].tolist()
    # balanced over answers where the text allows: no closer holds most of the examples when others exist
    if kind == "close_bracket":
        counts = torch.bincount(batch.answer)
        assert counts.max() <= len(batch) - counts.max() + counts[counts > 0].min() + 1


def test_the_metric_reads_the_last_position_of_the_model_the_assets_load(models, brackets):
    hooked, hf = models["parent"]
    with torch.no_grad():
        want = hf(brackets.clean).logits[:, -1]
    got = P.final_logits(hooked, brackets.clean, batch=16)  # in chunks
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    m = T.task_metrics(want, brackets)
    d = want.gather(1, brackets.answer[:, None])[:, 0] - want.gather(1, brackets.wrong[:, None])[:, 0]
    assert m["logit_diff"] == pytest.approx(float(d.mean()), abs=1e-5)
    assert m["accuracy"] == pytest.approx(float((d > 0).float().mean()))


def test_entity_tracking_prompts_tokenize_to_the_answer_and_differ_only_in_the_queried_box():
    objects, boxes = ENTITY_OBJECTS[:6], ENTITY_BOXES[:6]
    sentences = [T.entity_prompt(objects[i:i + 3], boxes[j:j + 3], q) + " " + objects[i + q]
                 for i in range(4) for j in range(4) for q in range(3)]
    tok = train_bpe(sentences * 20, vocab_size=400)
    batch = T.entity_tracking(tok, "entities", 12, 3, objects, boxes, seed=0, n_ctx=64)
    for i in range(len(batch)):
        text = tok.decode(batch.clean[i].tolist())
        answer = tok.decode([int(batch.answer[i])])
        assert tok.encode(text + answer) == batch.clean[i].tolist() + [int(batch.answer[i])]
        diff = (batch.clean[i] != batch.corrupt[i]).nonzero()[:, 0].tolist()
        assert diff == [int(batch.key[i])]  # only the queried box label
        # the counterfactual asks for another box: its object is the wrong answer
        asked = tok.decode([int(batch.corrupt[i, batch.key[i]])]).strip()
        assert f"the{tok.decode([int(batch.wrong[i])])} is in box {asked}".lower() in tok.decode(batch.corrupt[i].tolist()).lower()
    with pytest.raises(T.TaskError, match=r"task 'entities' \(objects\): ' computer' is \d tokens"):
        T.entity_tracking(tok, "entities", 4, 3, objects + ["computer"], boxes, seed=0, n_ctx=64)
    with pytest.raises(T.TaskError, match=r"\(n_objects\).*longer than the model's n_ctx 8"):
        T.entity_tracking(tok, "entities", 4, 3, objects, boxes, seed=0, n_ctx=8)


def test_patching_a_model_into_itself_changes_nothing(models, brackets):
    model = models["parent"][0]
    comps = P.component_names(model)
    units = [(c, p) for c in comps for p in (None, 3, brackets.length - 1)]
    base = P.final_logits(model, brackets.clean)
    cache = P.run_cache(model, brackets.clean, P.cache_names(units))
    for unit in units:
        assert torch.equal(P.final_logits(model, brackets.clean, P.patch_hooks([unit], cache)), base)
    own = P.cross_cache(model, brackets.clean, 256)
    for unit in units:
        torch.testing.assert_close(P.final_logits(model, brackets.clean, P.cross_hooks([unit], own, model)), base, atol=1e-5, rtol=0)


def test_patching_every_component_reproduces_the_donor(models, brackets):
    model = models["parent"][0]
    everything = [(c, None) for c in ("embed", *[f"L0.H{h}" for h in range(SPEC.n_heads)], "L0.mlp")]
    clean = P.run_cache(model, brackets.clean, P.cache_names(everything))
    patched = P.final_logits(model, brackets.corrupt, P.patch_hooks(everything, clean))
    torch.testing.assert_close(patched, P.final_logits(model, brackets.clean), atol=1e-5, rtol=0)
    # across models: the child's every output in the parent gives the child's residual stream, read out by
    # the parent's own final norm and unembedding (weights are not activations)
    parent, child = models["parent"][0], models["child"][0]
    donor = P.cross_cache(child, brackets.clean, 256)
    got = P.final_logits(parent, brackets.clean, P.cross_hooks(everything, donor, parent))
    resid = P.run_cache(child, brackets.clean, [RESID_POST])[RESID_POST]
    with torch.no_grad():
        want = parent.unembed(parent.ln_final(resid[:, -1:]))[:, 0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, P.final_logits(parent, brackets.clean), atol=1e-2)


def test_one_patched_head_equals_a_hand_written_hook_on_the_hugging_face_model(models, brackets):
    hooked, hf = models["parent"]
    dh = SPEC.d_model // SPEC.n_heads
    o_proj = hf.model.layers[0].self_attn.o_proj
    for head, pos in ((0, brackets.length - 1), (1, brackets.length - 1), (1, None)):
        captured = {}
        grab = o_proj.register_forward_pre_hook(lambda mod, args: captured.__setitem__("z", args[0].clone()))
        with torch.no_grad():
            hf(brackets.clean)
        grab.remove()
        cols = slice(head * dh, (head + 1) * dh)
        rows = slice(None) if pos is None else pos

        def put(mod, args):
            z = args[0].clone()
            z[:, rows, cols] = captured["z"][:, rows, cols]
            return (z,)

        handle = o_proj.register_forward_pre_hook(put)
        with torch.no_grad():
            want = hf(brackets.corrupt).logits[:, -1]
        handle.remove()
        cache = P.run_cache(hooked, brackets.clean, [P.HEAD_Z])
        got = P.final_logits(hooked, brackets.corrupt, P.patch_hooks([(f"L0.H{head}", pos)], cache))
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        effects = P.activation_patching(hooked, brackets, [f"L0.H{head}"])
        rel = None if pos is None else pos - brackets.length
        row = effects[(effects["component"] == f"L0.H{head}") & (effects["position"].astype(object) == rel)
                      if rel is not None else (effects["component"] == f"L0.H{head}") & effects["position"].isna()]
        assert float(row["ld"].iloc[0]) == pytest.approx(P.mean_ld(want, brackets), abs=1e-4)


def test_outputs_at_earlier_positions_cannot_reach_a_one_layer_models_last_logit(models, brackets):
    """A property of one block: attention reads the embeddings, so head and MLP outputs before the last
    position change nothing; the embeddings there do (the heads read them)."""
    effects = P.activation_patching(models["parent"][0], brackets, P.component_names(models["parent"][0]))
    early = effects[effects["position"].notna() & (effects["position"].astype(float) < -1)]
    assert early[early["component"] != "embed"]["effect"].abs().max() < 1e-5
    assert early[early["component"] == "embed"]["effect"].abs().max() > 1e-3


def test_path_patching_to_the_logits_is_the_direct_path(models, brackets):
    model = models["parent"][0]
    paths = P.path_patching(model, brackets)
    z = {k: P.run_cache(model, t, [P.HEAD_Z])[P.HEAD_Z] for k, t in (("clean", brackets.clean), ("corrupt", brackets.corrupt))}
    resid = P.run_cache(model, brackets.corrupt, [RESID_POST])[RESID_POST]
    for h in range(SPEC.n_heads):
        delta = (z["clean"][:, -1, h] - z["corrupt"][:, -1, h]) @ model.blocks[0].attn.W_O[h]
        with torch.no_grad():
            logits = model.unembed(model.ln_final((resid[:, -1] + delta)[:, None]))[:, 0]
        row = paths[(paths["sender"] == f"L0.H{h}") & (paths["receiver"] == "logits")]
        assert float(row["ld"].iloc[0]) == pytest.approx(P.mean_ld(logits, brackets), abs=1e-4)
    assert set(paths["receiver"]) == {"L0.mlp", "logits"} and len(paths) == 2 * SPEC.n_heads


def test_the_whole_model_is_a_fully_faithful_circuit_and_random_circuits_are_drawn_at_its_size(models, brackets):
    model = models["parent"][0]
    universe = P.circuit_universe(model, brackets.length)
    assert len(universe) == brackets.length * (SPEC.n_heads + 1)
    full = P.faithfulness(model, brackets, universe, random_draws=3)
    assert full.faithfulness == 1.0 and full.ld_faithfulness == 1.0 and full.random_faithfulness == 1.0
    # ablating everything but the last position's units leaves a one-layer model's last logit unchanged
    last = [u for u in universe if u[1] == brackets.length - 1]
    f = P.faithfulness(model, brackets, last, random_draws=5, seed=1)
    assert f.ld_faithfulness == pytest.approx(1.0, abs=1e-5) and f.size == SPEC.n_heads + 1
    # an empty circuit: everything mean-ablated
    empty = P.ablated_logits(model, brackets, [])
    assert not torch.allclose(empty, P.final_logits(model, brackets.clean), atol=1e-3)


def test_circuit_units_are_those_above_the_threshold():
    import pandas as pd

    effects = pd.DataFrame({"component": ["L0.H0", "L0.H0", "L0.H1", "L0.mlp", "embed", "L0.attn", "group.a", "L3.H12"],
                            "position": pd.array([-1, None, -1, -2, -1, -1, -1, -3], dtype="Int64"),
                            "effect": [0.5, 0.9, 0.05, 0.2, 0.9, 0.9, 0.9, 0.3]})
    assert P.circuit_from_effects(effects, 10, 0.1) == [("L0.H0", 9), ("L0.mlp", 8), ("L3.H12", 7)]


def _lossless_sae(d: int) -> ReLUSAE:
    """A ReLU dictionary that reconstructs exactly: features relu(x) and relu(-x), decoder rows +e_i and -e_i."""
    sae = ReLUSAE(SAEConfig("relu", d, 2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_feature_level_cmap_adds_up_to_patching_the_whole_mlp(models, brackets):
    parent, child = models["parent"][0], models["child"][0]
    sae_p, sae_c = _lossless_sae(SPEC.d_mlp), _lossless_sae(SPEC.d_mlp)
    n = 2 * SPEC.d_mlp
    half = torch.zeros(n, dtype=torch.bool)
    half[: SPEC.d_mlp // 2] = True
    sets = {"all": (torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)),
            "none": (torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)), "half": (half, half)}
    fc = P.feature_cmap(parent, child, sae_p, sae_c, brackets, sets, min_gap_se=0).set_index("set")
    whole = P.cmap(parent, child, brackets, ["L0.mlp"], min_gap_se=0)
    mlp = whole[(whole["direction"] == "child_into_parent") & whole["position"].isna()]
    # swapping every feature of a lossless dictionary is patching the MLP output itself
    assert fc.loc["all", "share"] == pytest.approx(float(mlp["share"].iloc[0]), abs=1e-4)
    assert fc.loc["none", "ld"] == pytest.approx(fc.attrs["parent_ld"], abs=1e-5)
    assert 0 < fc.loc["half", "child_features"] < fc.loc["all", "child_features"]
    post = P.run_cache(child, brackets.clean, [P.MLP_POST])[P.MLP_POST]
    a = P.feature_contribution(child, sae_c, post, half)
    b = P.feature_contribution(child, sae_c, post, ~half)
    with torch.no_grad():
        torch.testing.assert_close(a + b, post @ child.blocks[0].mlp.W_out, atol=1e-4, rtol=1e-4)


def test_feature_sets_follow_the_flow_tables_with_random_sets_of_the_same_sizes():
    import pandas as pd

    parent = pd.DataFrame({"feature": range(6), "status": ["persists", "disappears", "dead", "persists", "disappears", "disappears"]})
    child = pd.DataFrame({"feature": range(6), "status": ["emerged", "persisted", "persisted", "dead", "emerged", "persisted"]})
    sets = P.feature_sets(parent, child, draws=4, seed=0)
    assert sets["persisted"][0].nonzero()[:, 0].tolist() == [1, 2, 5] and sets["persisted"][1].nonzero()[:, 0].tolist() == [0, 3]
    assert sets["emerged"][0].nonzero()[:, 0].tolist() == [0, 4] and sets["emerged"][1].nonzero()[:, 0].tolist() == [1, 4, 5]
    for d in range(4):
        c, p = sets[f"random_emerged_{d}"]
        assert int(c.sum()) == 2 and int(p.sum()) == 3 and not c[3] and not p[2]  # live features only
        c, p = sets[f"random_persisted_{d}"]
        assert int(c.sum()) == 3 and int(p.sum()) == 2 and not c[3] and not p[2]
    assert len(sets) == 3 + 2 * 4


def test_lineage_tasks_and_components_are_validated_with_the_field_named():
    import yaml

    raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
    cases = [({"tasks": [{"name": "a", "kind": "closing"}]}, "tasks.0.kind"),
             ({"tasks": [{"name": "a", "kind": "close_bracket", "length": 99}]}, "tasks.0.length.*n_ctx 32"),
             ({"tasks": [{"name": "a", "kind": "close_quote"}, {"name": "a", "kind": "close_bracket"}]}, "tasks.1.name.*duplicate"),
             ({"tasks": [{"name": "a", "kind": "entity_tracking", "n_objects": 4, "objects": ["x", "y", "z"]}]}, "tasks.0.n_objects"),
             ({"patching": {"components": ["embed", "neurons"]}}, "patching.components.1"),
             ({"patching": {"layers": [1]}}, "patching.layers.*beyond the model's 1 layers"),
             ({"patching": {"head_groups": {"a": [[0, 9]]}}}, "patching.head_groups.a.*1 layers of 2 heads"),
             ({"patching": {"head_groups": {"a": [[0, 1], [0, 1]]}}}, "head group 'a' names a head twice")]
    for change, message in cases:
        with pytest.raises(LineageError, match=message):
            parse_lineage({**raw, **change}, "bad")
    assert [t.kind for t in load_lineage("demo").tasks] == ["close_bracket", "close_quote"]
    assert [t.kind for t in load_lineage("paper").tasks] == ["entity_tracking", "close_bracket"]


def test_feature_summary_sets_each_named_set_against_its_size_matched_random_sets():
    import pandas as pd

    fc = pd.DataFrame({"set": ["persisted", "emerged", "all_live", "random_persisted_0", "random_persisted_1",
                               "random_emerged_0", "random_emerged_1"],
                       "share": [0.5, 0.2, 0.6, 0.1, 0.3, 0.2, 0.2]})
    s = P.feature_summary(fc)
    assert s["persisted"] == 0.5 and s["random_persisted_mean"] == pytest.approx(0.2)
    assert s["persisted_z"] == pytest.approx(3.0) and s["random_emerged_std"] == 0 and s["emerged_z"] != s["emerged_z"]


@pytest.mark.parametrize("name", ["paper", "prakash"])
def test_a_shipped_lineage_entity_tracking_builds_under_a_sentencepiece_tokenizer(name):
    """paper.yaml's task with its tokenizer (SentencePiece: ' apple' alone encodes differently from
    'the apple', so single-token checks read the word in context); prakash.yaml's under the same family's
    Mistral tokenizer (Llama's tokenizer.model comes with no package here; its word list was checked against
    it by hand, see the lineage file)."""
    from featureflow_dagster.tokenizer import mistral_tokenizer

    tok = mistral_tokenizer()
    spec = next(t for t in load_lineage(name).tasks if t.kind == "entity_tracking")
    batch = T.entity_tracking(tok, spec.name, 32, spec.n_objects, spec.objects, spec.boxes, seed=0, n_ctx=256)
    for i in range(len(batch)):
        full = tok.decode(batch.clean[i].tolist() + [int(batch.answer[i])])
        box = tok.decode([int(batch.clean[i, batch.key[i]])]).strip()
        obj = tok.decode([int(batch.answer[i])]).strip()
        assert full.endswith(f"Box {box} contains the {obj}") and f"the {obj} is in box {box}".lower() in full.lower()
