"""Pretrained nodes: resolution from a folder and from the Hugging Face cache (offline, the path a connected
user takes), versions, and the checks that refuse a lineage before any compute."""

import shutil

import pytest
import yaml

from featureflow_dagster.lineage import LineageError, PretrainedSpec, parse_lineage
from featureflow_dagster.pretrained import check_lineage_models, folder_version, link_model_files, resolve
from tiny_models import finetune_outside, save, stdlib_texts, tiny_model, tiny_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def neox(tok, tmp_path_factory):
    return save(tiny_model("neox", tok), tok, tmp_path_factory.mktemp("neox") / "model")


def _hub_cache(cache, repo: str, folder, commit: str = COMMIT):
    """A Hugging Face hub cache holding `folder` as `repo` at `commit` (the layout `hf download` writes)."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (entry / "blobs").mkdir()
    for f in folder.iterdir():
        blob = entry / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(blob)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    return snapshot


def _lineage(nodes, **top):
    data = {"sources": [{"name": "python", "kind": "stdlib", "what": "source", "include": ["[a-c]*.py"], "validation_fraction": 0.3}]}
    raw = {"name": "pre", "n_ctx": 32, "sae": {"context": 16}, **top,
           "nodes": [{**n, "data": data} if n["kind"] != "merge" else n for n in nodes]}
    return parse_lineage(yaml.safe_load(yaml.safe_dump(raw)))


def test_a_folder_is_versioned_by_its_weights(neox, tok, tmp_path):
    spec = PretrainedSpec(path=str(neox))
    first = resolve("base", spec)
    assert first.folder == neox and first.version == folder_version(neox) and first.version.startswith("sha256:")
    copy = tmp_path / "copy"
    shutil.copytree(neox, copy)
    assert resolve("base", PretrainedSpec(path=str(copy))).version == first.version  # bytes, not place
    model = finetune_outside(tiny_model("neox", tok), tok, stdlib_texts("json/*.py", 3), steps=2)
    save(model, tok, copy)
    assert resolve("base", PretrainedSpec(path=str(copy))).version != first.version


def test_a_repo_resolves_from_the_local_hub_cache_offline(neox, tmp_path, monkeypatch):
    snapshot = _hub_cache(tmp_path / "hub", "someone/tiny-neox", neox)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    got = resolve("base", PretrainedSpec(repo="someone/tiny-neox"), weights=True)
    assert got.folder == snapshot and got.version == COMMIT
    assert resolve("base", PretrainedSpec(repo="someone/tiny-neox", revision=COMMIT)).version == COMMIT
    out = tmp_path / "store"
    out.mkdir()
    names = link_model_files(got.folder, out, link=True)
    assert "model.safetensors" in names and (out / "model.safetensors").stat().st_ino == snapshot.joinpath("model.safetensors").resolve().stat().st_ino
    with pytest.raises(LineageError) as err:
        resolve("lua", PretrainedSpec(repo="someone/not-there"))
    message = str(err.value)
    assert "node 'lua'" in message and "field 'pretrained.repo'" in message and "not in the local Hugging Face cache" in message
    assert "offline" in message


def test_lineage_checks_refuse_mismatches_naming_node_and_field(neox, tok, tmp_path):
    llama = save(tiny_model("llama", tok), tok, tmp_path / "llama")
    wide_tok = tiny_tokenizer(320)
    other_vocab = save(tiny_model("neox", wide_tok), wide_tok, tmp_path / "vocab")
    ft = save(finetune_outside(tiny_model("neox", tok), tok, stdlib_texts("json/*.py", 3), steps=2), tok, tmp_path / "ft")
    good = _lineage([{"name": "base", "kind": "base", "pretrained": {"path": str(neox)}},
                     {"name": "ft", "kind": "finetune", "parents": ["base"], "pretrained": {"path": str(ft)}}],
                    hook="blocks.1.hook_resid_post")
    assert good.tokenizer.kind == "model" and good.model is None and good.block_n_ctx == 32
    assert set(check_lineage_models(good)) == {"base", "ft"}
    cases = [
        (llama, "ft", "pretrained", "architecture LlamaForCausalLM differs from 'base'"),
        (other_vocab, "ft", "pretrained", "d_vocab"),
    ]
    for folder, node, field, words in cases:
        bad = _lineage([{"name": "base", "kind": "base", "pretrained": {"path": str(neox)}},
                        {"name": "ft", "kind": "finetune", "parents": ["base"], "pretrained": {"path": str(folder)}}])
        with pytest.raises(LineageError) as err:
            check_lineage_models(bad)
        assert f"node '{node}'" in str(err.value) and f"field '{field}'" in str(err.value) and words in str(err.value)
    deep = _lineage([{"name": "base", "kind": "base", "pretrained": {"path": str(neox)}}], hook="blocks.7.mlp.hook_post")
    with pytest.raises(LineageError, match=r"node 'base'.*field 'hook'.*layer 7 is beyond the model's depth \(2 layers"):
        check_lineage_models(deep)
    long = _lineage([{"name": "base", "kind": "base", "pretrained": {"path": str(neox)}}], n_ctx=128)
    with pytest.raises(LineageError, match=r"field 'n_ctx'.*exceed the model's context \(64 positions\)"):
        check_lineage_models(long)


def test_pretrained_lineage_files_are_validated_before_anything_is_read(neox, tmp_path):
    base = {"name": "base", "kind": "base", "pretrained": {"path": str(neox)}}
    with pytest.raises(LineageError, match="field 'pretrained.path'.*not a Hugging Face model folder"):
        _lineage([{**base, "pretrained": {"path": str(tmp_path / "nothing")}}])
    with pytest.raises(LineageError, match="give either 'repo'"):
        _lineage([{**base, "pretrained": {"repo": "a/b", "path": str(neox)}}])
    with pytest.raises(LineageError, match="neither trained nor merged here; remove 'training'"):
        _lineage([{**base, "training": {"lr": 1e-3}}])
    with pytest.raises(LineageError, match="tokenizer is 'bpe'"):
        _lineage([base], tokenizer={"kind": "bpe"})
    with pytest.raises(LineageError, match="field 'hook'.*not one featureflow reads"):
        _lineage([base], hook="blocks.0.attn.hook_pattern")
    with pytest.raises(LineageError, match="node 'base'.*field 'model'.*trained here and needs an architecture"):
        _lineage([{"name": "base", "kind": "base"}])
    with pytest.raises(LineageError, match="node 'ft'.*field 'pretrained'.*fine-tuning a pretrained model here is not supported"):
        _lineage([base, {"name": "ft", "kind": "finetune", "parents": ["base"]}],
                 model={"d_model": 32, "d_mlp": 64, "n_heads": 4, "n_ctx": 32}, n_ctx=None)


def test_plan_prices_a_pretrained_lineage_from_the_models_configs(neox, tok, tmp_path):
    from featureflow_dagster.costs import estimate, hook_width, token_counts

    gpt2 = save(tiny_model("gpt2", tok), tok, tmp_path / "gpt2")
    for folder, hook, width in ((neox, "blocks.0.hook_resid_post", 32), (gpt2, "blocks.1.mlp.hook_post", 128)):
        lineage = _lineage([{"name": "base", "kind": "base", "pretrained": {"path": str(folder)}},
                            {"name": "ft", "kind": "finetune", "parents": ["base"], "pretrained": {"path": str(folder)}}], hook=hook)
        assert hook_width(lineage, "ft") == width
        counts = token_counts(lineage)
        rows = {(r.asset, r.partition): r for r in estimate(lineage, counts).rows}
        assert rows[("model/base", "base")].flops == 0 and "pretrained" in rows[("model/base", "base")].note
        store = rows[("activation_store", "ft")]
        assert store.disk == store.tokens * width * 4
        assert counts["base"]["python"] > 0
    warm = _lineage([{"name": "base", "kind": "base", "pretrained": {"path": str(neox)}},
                     {"name": "ft", "kind": "finetune", "parents": ["base"], "pretrained": {"path": str(neox)}}],
                    flow={"warm_start": True})
    rows = {(r.asset, r.partition): r for r in estimate(warm, token_counts(warm)).rows}
    assert rows[("warm_sae", "base__ft")].flops == rows[("sae", "ft")].flops > 0  # the same recipe, trained again


def test_featureflow_validate_reads_the_models_and_refuses_before_compute(neox, tok, tmp_path, monkeypatch, capsys):
    import transformers as T

    from featureflow_dagster.cli import main

    opt = tmp_path / "opt"
    T.OPTForCausalLM(T.OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                 word_embed_proj_dim=32)).save_pretrained(opt)
    tok.save_pretrained(opt)
    gemma = save(tiny_model("gemma", tok), tok, tmp_path / "gemma")
    data = {"sources": [{"name": "python", "kind": "stdlib", "what": "source", "include": ["[a-c]*.py"], "validation_fraction": 0.3}]}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cases = [
        ({"path": str(neox)}, [], 0, "pretrained=" + str(neox)),
        ({"path": str(opt)}, [], 2, "node 'base': field 'pretrained.path': architecture 'OPTForCausalLM' is not supported"),
        ({"repo": "EleutherAI/pythia-70m", "revision": "step143000"}, [], 2,
         "node 'base': field 'pretrained.repo': 'EleutherAI/pythia-70m@step143000' is not in the local Hugging Face cache"),
        ({"path": str(gemma)}, [{"name": "brackets", "kind": "close_bracket"}], 2,
         "node 'base': field 'tasks': circuits and CMAP patch TransformerLens HookedTransformers"),
    ]
    for i, (pretrained, tasks, code, words) in enumerate(cases):
        path = tmp_path / f"lineage{i}.yaml"
        path.write_text(yaml.safe_dump({"name": "pre", "n_ctx": 32, "sae": {"context": 16}, "tasks": tasks,
                                        "nodes": [{"name": "base", "kind": "base", "pretrained": pretrained, "data": data}]}))
        assert main(["validate", str(path)]) == code
        out = capsys.readouterr()
        assert words in (out.out + out.err), out
