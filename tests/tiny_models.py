"""Tiny random-initialised causal LMs of several families, saved as Hugging Face folders (with a
tokenizer), and fine-tunes of them made outside featureflow: what a researcher's own checkpoints look like."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
import transformers as T

from featureflow_dagster.tokenizer import train_bpe

FAMILIES = {
    "llama": lambda v, n_ctx: T.LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_ctx),
    "mistral": lambda v, n_ctx: T.MistralConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_ctx),
    "gemma": lambda v, n_ctx: T.GemmaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=n_ctx),
    "gemma2": lambda v, n_ctx: T.Gemma2Config(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=n_ctx),
    "qwen2": lambda v, n_ctx: T.Qwen2Config(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_ctx),
    "neox": lambda v, n_ctx: T.GPTNeoXConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=n_ctx),
    "gpt2": lambda v, n_ctx: T.GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=n_ctx),
}


def stdlib_texts(pattern: str, limit: int) -> list[str]:
    """Real text: standard-library source files matching `pattern`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(errors="replace") for p in sorted(root.glob(pattern))[:limit]]


def tiny_tokenizer(vocab_size: int = 300):
    return train_bpe(stdlib_texts("[a-c]*.py", 20), vocab_size)


def tiny_model(family: str, tok, seed: int = 0, n_ctx: int = 64, layers: int | None = None, init_range: float | None = None):
    """`init_range`: the std of the initial weights (default the family's 0.02; larger gives the attention
    patterns and paths of a tiny random model effects well above float32 noise)."""
    torch.manual_seed(seed)
    config = FAMILIES[family](len(tok), n_ctx)
    if init_range is not None:
        config.initializer_range = init_range
    if layers is not None:
        setattr(config, "n_layer" if family == "gpt2" else "num_hidden_layers", layers)
    config.bos_token_id = config.eos_token_id = tok.eos_token_id
    config.pad_token_id = tok.pad_token_id
    return T.AutoModelForCausalLM.from_config(config).eval()


def save(model, tok, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def finetune_outside(model, tok, texts: list[str], steps: int = 5, seed: int = 1, lr: float = 1e-2, n_ctx: int = 32):
    """A few AdamW steps on other text, with plain PyTorch: a fine-tune made without featureflow."""
    torch.manual_seed(seed)
    ids = torch.tensor(tok("\n".join(texts))["input_ids"][: steps * 4 * n_ctx]).reshape(-1, n_ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = ids[(step * 4) % len(ids):][:4]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def pretrained_lineage(name: str, base, ft, hook: str) -> dict:
    """A lineage of two saved models as pretrained nodes (a base, its fine-tune) and a merge made here, on
    standard-library source: small budgets for every stage, a bracket task for circuits and CMAP."""
    return {
        "name": name, "seed": 0, "n_ctx": 32, "hook": hook,
        "sae": {"expansion": 4, "l1_coefficient": 1e-3, "lr": 1e-3, "batch_windows": 16, "epochs": 4, "context": 16,
                "tokens": 3200, "eval_tokens": 1600, "shard_tokens": 1600, "dead_window_tokens": 1600, "checkpoint_every": 10},
        "examples": {"top_k": 5, "samples": 10, "tokens": 1600},
        "flow": {"tokens": 1600, "chunk_tokens": 800, "top_k": 3, "batch_windows": 32},
        "tasks": [{"name": "brackets", "kind": "close_bracket", "examples": 32, "length": 12}],
        "patching": {"random_circuits": 3, "feature_null_draws": 2},
        "nodes": [
            {"name": "base", "kind": "base", "pretrained": {"path": str(base)},
             "data": {"tokens": 8000, "validation_tokens": 2048, "sources": [
                 {"name": "python", "kind": "stdlib", "what": "source", "include": ["[a-c]*.py"], "weight": 1, "validation_fraction": 0.2}]}},
            {"name": "ft", "kind": "finetune", "parents": ["base"], "pretrained": {"path": str(ft)},
             "data": {"validation_tokens": 2048, "sources": [
                 {"name": "packages", "kind": "stdlib", "what": "source", "include": ["json/*.py", "email/*.py"], "tokens": 4000,
                  "validation_fraction": 0.2}]}},
            {"name": "merged", "kind": "merge", "parents": ["base", "ft"], "merge": {"method": "slerp", "t": 0.5}},
        ],
    }
