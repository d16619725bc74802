"""Token blocks: documents tokenized, joined by the end-of-text token and cut into n_ctx-token rows.

Blocks are kept per source (domain), so that a model is evaluated on each domain's own validation
data and later stages know which source every token came from. On disk: one safetensors file per
node with int32 tensors `train.<source>` and `validation.<source>` of shape [n_blocks, n_ctx]
(memory-mappable with `safetensors.safe_open`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from featureflow_dagster.corpus import Document, documents_of
from featureflow_dagster.lineage import DataSpec


@dataclass
class SourceBlocks:
    train: torch.Tensor  # int32 [n_train_blocks, n_ctx]
    validation: torch.Tensor  # int32 [n_validation_blocks, n_ctx]
    train_tokens_available: int  # tokens the source had before the budget cut


def tokenize_to_blocks(
    tokenizer, docs: list[Document], n_ctx: int, budget: int | None, batch_docs: int = 64
) -> tuple[torch.Tensor, int]:
    """Tokenize documents in order until `budget` tokens (None: all); return ([n, n_ctx] int32, tokens seen).

    Each document is followed by the tokenizer's EOS token; the stream is cut into full blocks and
    the incomplete tail dropped."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for start in range(0, len(docs), batch_docs):
        batch = [d.text for d in docs[start : start + batch_docs]]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        if budget is not None and len(stream) >= budget:
            break
    seen = len(stream)
    if budget is not None:
        stream = stream[:budget]
    n_blocks = len(stream) // n_ctx
    arr = np.asarray(stream[: n_blocks * n_ctx], dtype=np.int32).reshape(n_blocks, n_ctx)
    return torch.from_numpy(arr), seen


def save_blocks(path: Path, blocks: dict[str, SourceBlocks], metadata: dict[str, str]) -> None:
    """`train.<source>` and `validation.<source>` blocks, with `metadata` as one sorted JSON string under
    the header key `featureflow`: safetensors writes several metadata keys in an order that changes from
    process to process, and the same blocks must give the same bytes (their sha256 is recorded downstream)."""
    import json

    tensors = {}
    for name, b in blocks.items():
        tensors[f"train.{name}"] = b.train.contiguous()
        tensors[f"validation.{name}"] = b.validation.contiguous()
    save_file(tensors, str(path), metadata={"featureflow": json.dumps(metadata, sort_keys=True)})


def load_blocks(path: Path, split: str) -> dict[str, torch.Tensor]:
    """{source: int32 [n_blocks, n_ctx]} for split 'train' or 'validation'."""
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            kind, _, name = key.partition(".")
            if kind == split:
                out[name] = f.get_tensor(key)
    return out


def build_blocks(tokenizer, corpus, data: DataSpec, n_ctx: int, log=None) -> tuple[dict[str, SourceBlocks], dict]:
    """Token blocks for every source of a node, within its budgets (`DataSpec.source_budgets`).

    A source with fewer tokens than its budget gives all it has; the shortfall is reported in the
    statistics rather than hidden."""
    budgets = data.source_budgets()
    out, stats = {}, {}
    for src in data.sources:
        train, seen = tokenize_to_blocks(tokenizer, documents_of(corpus, src.name, "train"), n_ctx, budgets[src.name])
        val, _ = tokenize_to_blocks(tokenizer, documents_of(corpus, src.name, "validation"), n_ctx, data.validation_tokens)
        if train.shape[0] == 0 or val.shape[0] == 0:
            raise ValueError(
                f"source '{src.name}' gives {train.shape[0]} train and {val.shape[0]} validation blocks of "
                f"{n_ctx} tokens; it needs at least one of each (add documents or lower n_ctx)"
            )
        out[src.name] = SourceBlocks(train, val, seen)
        stats[src.name] = {
            "budget": budgets[src.name],
            "train_tokens": int(train.numel()),
            "validation_tokens": int(val.numel()),
            "shortfall": max(0, (budgets[src.name] or 0) - int(train.numel())),
        }
        if log:
            log(f"source '{src.name}': {train.numel():,} train / {val.numel():,} validation tokens")
    return out, stats


def blocks_hash(blocks: dict[str, SourceBlocks]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(blocks):
        h.update(name.encode())
        h.update(blocks[name].train.numpy().tobytes())
        h.update(blocks[name].validation.numpy().tobytes())
    return h.hexdigest()


def domain_validation_blocks(lineage, node: str, tokens_path, domains: list[str] | None = None,
                             max_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """{domain: validation blocks} for a node's domains (default `lineage.domains(node)`), each read
    from the tokens file of the node that owns the domain; `tokens_path(owner)` gives that file.
    max_tokens caps each domain (whole blocks, from the start)."""
    out = {}
    for domain in domains or lineage.domains(node):
        owner = lineage.domain_owner(node, domain)
        blocks = load_blocks(tokens_path(owner), "validation")[domain]
        if max_tokens is not None:
            blocks = blocks[: max(1, max_tokens // blocks.shape[1])]
        out[domain] = blocks
    return out
