"""Activations of blocks.0.mlp.hook_post: equal to TransformerLens, sampled uniformly, stored in shards."""

import json

import pytest
import torch

from featureflow_dagster.activations import (
    ActivationStore, gather_windows, run_to_hook, sample_windows, write_store,
)
from featureflow_dagster.hooked import load_hooked_model
from featureflow_dagster.hooks import MLP_POST
from featureflow_dagster.lineage import ModelSpec
from featureflow_dagster.model import init_model
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.tokenizer import train_bpe

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    tok = train_bpe(["def f(x):\n    return x\n" * 40, "the cat sat on the mat. " * 40], 300)
    model = init_model(ModelSpec(d_model=16, d_mlp=32, n_heads=2, n_ctx=32), tok, 0)
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model.eval(), folder, len(tok)


def test_run_to_hook_equals_transformer_lens_and_stops_early(saved_model):
    model, folder, vocab = saved_model
    x = torch.randint(0, vocab, (3, 24))
    acts = run_to_hook(model, x, MLP_POST)
    _, cache = load_hooked_model(folder).run_with_cache(x, names_filter=MLP_POST)
    assert acts.shape == (3, 24, 32)
    assert (acts - cache[MLP_POST]).abs().max() < 1e-5
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    run_to_hook(model, x, MLP_POST)
    handle.remove()
    assert calls == []  # the unembedding never ran


def test_windows_are_uniform_over_the_combined_data():
    counts = [300, 100, 600]  # rows of 3 sources; each row holds 4 windows of 24 tokens (n_ctx 96)
    w = sample_windows(counts, 96, 24, 2000, seed=0)
    assert w.shape == (2000, 3)
    assert len({tuple(r) for r in w.tolist()}) == 2000  # without replacement
    share = torch.bincount(w[:, 0].long(), minlength=3).float() / 2000
    assert torch.allclose(share, torch.tensor([0.3, 0.1, 0.6]), atol=0.03)
    assert set(w[:, 2].tolist()) == {0, 24, 48, 72}
    assert torch.equal(w, sample_windows(counts, 96, 24, 2000, seed=0))
    with pytest.raises(ValueError, match="combined data holds"):
        sample_windows([1], 96, 24, 5, seed=0)


def test_gather_windows_reads_the_right_tokens():
    blocks = [torch.arange(2 * 8).reshape(2, 8), 100 + torch.arange(3 * 8).reshape(3, 8)]
    w = torch.tensor([[1, 2, 4], [0, 0, 0]], dtype=torch.int32)
    assert gather_windows(blocks, w, 4).tolist() == [[120, 121, 122, 123], [0, 1, 2, 3]]


def test_store_shards_manifest_and_batches(saved_model, tmp_path):
    model, _, vocab = saved_model
    tokens = torch.randint(0, vocab, (50, 24), dtype=torch.int32)
    origin = torch.zeros(50, 3, dtype=torch.int32)
    shards = write_store(model, MLP_POST, tokens, origin, tmp_path, "train", "float32", shard_windows=16, batch_windows=7, device=CPU)
    assert [s["windows"] for s in shards] == [16, 16, 16, 2]
    assert all(s["sha256"] == file_sha256(tmp_path / s["file"]) for s in shards)
    (tmp_path / "manifest.json").write_text(json.dumps({"d_in": 32, "context": 24, "splits": {"train": {"shards": shards}}}))
    store = ActivationStore(tmp_path)
    everything = run_to_hook(model, tokens.long(), MLP_POST).reshape(-1, 32)
    assert torch.allclose(store.mean(), everything.mean(0), atol=1e-6)
    epoch = list(store.batches("train", 10, seed=3))
    assert len(epoch) == 5 and epoch[0].shape == (240, 32)
    # one epoch visits every window once
    got = torch.cat(epoch).reshape(-1, 24, 32)
    ref = everything.reshape(50, 24, 32)
    matched = sorted(int((ref - g).abs().amax(dim=(1, 2)).argmin()) for g in got)
    assert matched == list(range(50))
    resumed = list(store.batches("train", 10, seed=3, start_step=3))
    assert all(torch.equal(a, b) for a, b in zip(resumed, epoch[3:]))
