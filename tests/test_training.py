"""Model construction, training, resuming and the TransformerLens view, on tiny shapes."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from featureflow_dagster.hooked import load_hooked_model
from featureflow_dagster.hooks import MLP_POST
from featureflow_dagster.lineage import ModelSpec, TrainingSpec
from featureflow_dagster.model import init_model, summarize_model, weights_hash
from featureflow_dagster.storage import atomic_dir
from featureflow_dagster.tokenizer import train_bpe
from featureflow_dagster.training import batch_indices, evaluate, lr_factor, train_causal_lm

SPEC = ModelSpec(d_model=16, d_mlp=32, n_heads=2, n_ctx=16)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():
    return train_bpe(["for i in range(10):\n    print(i)\n" * 30, "the cat sat on the mat. " * 30], 300)


def _blocks(n=64, vocab=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    # a learnable sequence: each row counts upward from a random start
    starts = torch.randint(0, vocab - 20, (n, 1), generator=g)
    return (starts + torch.arange(16)).clamp(max=vocab - 1).to(torch.int32)


def test_same_seed_same_init(tok):
    assert weights_hash(init_model(SPEC, tok, 3)) == weights_hash(init_model(SPEC, tok, 3))
    assert weights_hash(init_model(SPEC, tok, 3)) != weights_hash(init_model(SPEC, tok, 4))


def test_schedule_and_batch_order():
    spec = TrainingSpec(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, spec, 100) == pytest.approx(0.1)
    assert lr_factor(10, spec, 100) == pytest.approx(1.0)
    assert lr_factor(100, spec, 100) == pytest.approx(0.1)
    # one epoch of batches is a permutation of all blocks; the next epoch is a different one
    first = torch.cat([batch_indices(s, 12, 4, seed=0) for s in range(3)])
    second = torch.cat([batch_indices(s, 12, 4, seed=0) for s in range(3, 6)])
    assert sorted(first.tolist()) == list(range(12)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()
    assert torch.equal(batch_indices(4, 12, 4, seed=0), batch_indices(4, 12, 4, seed=0))


def test_training_lowers_loss(tok):
    model = init_model(SPEC, tok, 0)
    blocks = _blocks()
    before = evaluate(model, blocks, 32, CPU)
    res = train_causal_lm(model, blocks, TrainingSpec(batch_size=8, lr=1e-2, warmup_steps=2, max_steps=40), 0, CPU)
    after = evaluate(model, blocks, 32, CPU)
    assert res.steps == 40 and res.tokens_seen == 40 * 8 * 16
    assert after["loss"] < before["loss"] - 1.0
    assert after["accuracy"] > before["accuracy"] + 0.2


def test_killed_run_resumes_to_the_same_weights(tok, tmp_path):
    spec = TrainingSpec(batch_size=8, lr=5e-3, warmup_steps=2, max_steps=10, checkpoint_every=3)
    blocks = _blocks()
    straight = init_model(SPEC, tok, 0)
    train_causal_lm(straight, blocks, spec, 0, CPU)
    ckpt = tmp_path / "ckpt.pt"
    killed = init_model(SPEC, tok, 0)
    train_causal_lm(killed, blocks, spec, 0, CPU, checkpoint_path=ckpt, fingerprint="f", stop_after_step=5)
    assert ckpt.exists()  # the checkpoint of step 3 survives the "kill" at step 5
    resumed = init_model(SPEC, tok, 0)
    res = train_causal_lm(resumed, blocks, spec, 0, CPU, checkpoint_path=ckpt, fingerprint="f")
    assert res.resumed_from_step == 3
    assert weights_hash(resumed) == weights_hash(straight)
    other = init_model(SPEC, tok, 0)  # a checkpoint of another configuration is not resumed from
    assert train_causal_lm(other, blocks, spec, 0, CPU, checkpoint_path=ckpt, fingerprint="g").resumed_from_step == 0


def test_hooked_model_matches_hugging_face(tok, tmp_path):
    model = init_model(SPEC.model_copy(update={"n_kv_heads": 1}), tok, 0)
    train_causal_lm(model, _blocks(), TrainingSpec(batch_size=8, max_steps=5), 0, CPU)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    hooked = load_hooked_model(tmp_path)
    x = _blocks(4).long()
    with torch.no_grad():
        logits, cache = hooked.run_with_cache(x, names_filter=MLP_POST)
        ref = hf(input_ids=x).logits
    assert (logits - ref).abs().max() < 1e-4
    assert cache[MLP_POST].shape == (4, 16, SPEC.d_mlp)


def test_atomic_dir_keeps_old_artefact_on_failure(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "weights").write_text("half-written")
            raise RuntimeError("killed")
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_saved_model_is_summarized_without_loading_it(tok, tmp_path):
    model = init_model(SPEC.model_copy(update={"n_kv_heads": 1}), tok, 0)
    model.save_pretrained(tmp_path)
    summary = summarize_model(tmp_path)
    named = dict(model.named_parameters())
    assert summary["parameters"] == sum(p.numel() for p in named.values())
    assert summary["parameters_by_part"]["mlp"] == sum(p.numel() for n, p in named.items() if ".mlp." in n)
    assert summary["parameters_by_part"]["embed"] == len(tok) * SPEC.d_model
    assert "other" not in summary["parameters_by_part"]
    assert (summary["d_model"], summary["d_mlp"], summary["n_heads"], summary["n_key_value_heads"], summary["d_vocab"]) == \
        (SPEC.d_model, SPEC.d_mlp, SPEC.n_heads, 1, len(tok))
    assert summary["dtypes"] == ["F32"] and summary["weights_bytes"] == (tmp_path / "model.safetensors").stat().st_size
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no .*safetensors"):
        summarize_model(tmp_path)
