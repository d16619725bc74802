"""What a lineage will cost before it runs (`featureflow plan`): tokens per asset, FLOPs, wall time on
this device from a measured throughput, disk, and which assets need the accelerator.

Token counts come from the corpora and budgets without training anything: for sources this machine
can read (files, the standard library, a local data set folder) the corpus, tokenizer and token blocks
are built in memory exactly as the `corpus`, `tokenizer` and `tokens` assets build them, so the counts
equal what the run records; for hub data sets the source's `tokens` budget or, failing that, its
`expected_tokens` (a planning figure, e.g. the paper's) is used, and a source with neither is unknown.

FLOPs per token (Kaplan et al. 2020): forward 2N + 2 L n_ctx d_attn with N the weights used in matrix
products (attention, MLP, unembedding); training 3x forward. SAE training 12 d_in d_sae (encoder and
decoder, forward and backward); encoding 2 d_in d_sae. Wall time = FLOPs / the FLOP/s this code
reached on this device in a short measurement of the lineage's own shapes (`measure`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from featureflow_dagster.hooks import parse_hook
from featureflow_dagster.lineage import Edge, Lineage, ModelSpec

# Each device step of an asset that is not priced here (plots, pages, patching, flow tables) is small
# next to training; they are listed with their kind and no estimate.
A100_BF16_PEAK = 312e12  # FLOP/s, dense bf16 (NVIDIA A100 datasheet)


@dataclass
class Row:
    asset: str
    partition: str | None
    tokens: int | None  # tokens the asset processes (None: unknown)
    flops: float | None
    kind: str  # which measured throughput prices it: lm_train, lm_forward, sae_train, sae_encode, cpu
    disk: float | None  # bytes written
    device: bool  # needs the accelerator (the `gpu` pool; a GPU pod on Kubernetes)
    seconds: float | None = None
    note: str = ""
    memory: float | None = None  # peak accelerator memory, bytes (weights, optimizer state, the largest batch or cache)

    @property
    def label(self) -> str:
        return self.asset + (f"[{self.partition}]" if self.partition else "")


@dataclass
class Estimate:
    lineage: str
    rows: list[Row]
    throughput: dict[str, float] = field(default_factory=dict)  # FLOP/s per kind, measured
    device: str = "cpu"
    note: str = ""  # why nothing was measured, when nothing was

    def total(self, attr: str) -> float:
        return sum(getattr(r, attr) or 0.0 for r in self.rows)

    @property
    def unknown(self) -> list[str]:
        return [r.label for r in self.rows if r.tokens is None and r.kind != "cpu"]


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def vocab_size(lineage: Lineage) -> int:
    spec = lineage.tokenizer
    if spec.kind == "bpe":
        return spec.vocab_size
    if spec.kind == "mistral":
        return 32000  # the Mistral-7B v0.1 SentencePiece model
    if spec.kind == "model":
        folder = _reachable_folder(lineage.base.name, lineage.base.pretrained)
        return lineage.base.pretrained.expect.d_vocab if folder is None else _saved_vocab_size(folder)
    return _saved_vocab_size(str(spec.path))


@functools.lru_cache(maxsize=None)
def _saved_vocab_size(path: str) -> int:
    """A saved tokenizer's size, loaded once (the shapes below ask for it per node, several times)."""
    from featureflow_dagster.tokenizer import load_tokenizer

    return len(load_tokenizer(path))


def model_shape(lineage: Lineage, node: str) -> ModelSpec:
    """The architecture of a node's model: its `model:` when trained here, else read from a pretrained node's
    config.json (resolved as `featureflow validate` does; a merge of pretrained parents has its first parent's)."""
    m = lineage.model_spec(node)
    if m is not None:
        return m
    spec = lineage.node(node)
    if spec.pretrained is None:
        return model_shape(lineage, spec.parents[0])
    return _pretrained_shape(node, spec.pretrained, lineage.block_n_ctx)


@functools.lru_cache(maxsize=None)
def _pretrained_folder(node: str, pretrained) -> str:
    """A pretrained node's folder, resolved once per process (a repo asks the hub, or its cache, each time)."""
    from featureflow_dagster.pretrained import resolve

    return str(resolve(node, pretrained).folder)


def _reachable_folder(node: str, pretrained) -> str | None:
    """The node's folder, or None when its repo cannot be reached and the lineage gives `pretrained.expect`."""
    from featureflow_dagster.pretrained import Unreachable

    try:
        return _pretrained_folder(node, pretrained)
    except Unreachable:
        if pretrained.expect is None:
            raise
        return None


@functools.lru_cache(maxsize=None)
def _pretrained_shape(node: str, pretrained, n_ctx: int) -> ModelSpec:
    import json
    from pathlib import Path

    from featureflow_dagster.arch import config_dims

    folder = _reachable_folder(node, pretrained)
    if folder is None:  # offline: the shape the lineage says it was written for
        e = pretrained.expect
        return ModelSpec.model_construct(d_model=e.d_model, d_mlp=e.d_mlp, n_heads=e.n_heads, n_kv_heads=e.n_kv_heads,
                                         n_layers=e.n_layers, n_ctx=n_ctx, tie_word_embeddings=e.tie_word_embeddings)
    config = json.loads((Path(folder) / "config.json").read_text())
    d = config_dims(config)
    # model_construct: a real model's shape is what it is (Gemma's heads times head_dim need not equal d_model)
    return ModelSpec.model_construct(d_model=d["d_model"], d_mlp=d["d_mlp"], n_heads=d["n_heads"],
                                     n_kv_heads=config.get("num_key_value_heads"), n_layers=d["n_layers"], n_ctx=n_ctx,
                                     tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))


def hook_width(lineage: Lineage, node: str) -> int:
    """The width of the activations the node's SAE reads (d_mlp at mlp.hook_post, else d_model)."""
    m = model_shape(lineage, node)
    return m.d_mlp if parse_hook(lineage.hook).width == "d_mlp" else m.d_model


def lm_matmul_params(lineage: Lineage, node: str) -> int:
    m = model_shape(lineage, node)
    head = m.d_model // m.n_heads
    kv = (m.n_kv_heads or m.n_heads) * head
    attn = m.d_model * m.n_heads * head * 2 + m.d_model * kv * 2
    return m.n_layers * (attn + 3 * m.d_model * m.d_mlp) + m.d_model * vocab_size(lineage)


def lm_params(lineage: Lineage, node: str) -> int:
    m = model_shape(lineage, node)
    embed = 0 if m.tie_word_embeddings else m.d_model * vocab_size(lineage)
    return lm_matmul_params(lineage, node) + embed + m.n_layers * 2 * m.d_model + m.d_model


def lm_forward_flops_per_token(lineage: Lineage, node: str) -> float:
    m = model_shape(lineage, node)
    return 2 * lm_matmul_params(lineage, node) + 2 * m.n_layers * m.n_ctx * m.d_model


# ---------------------------------------------------------------------------------------------
# Token counts
# ---------------------------------------------------------------------------------------------


def _readable(src) -> bool:
    return src.kind in ("files", "stdlib") or (src.kind == "hf" and src.local_path() is not None)


def token_counts(lineage: Lineage, log=None, read: bool = True) -> dict[str, dict[str, int | None]]:
    """Training tokens per data node and source, as the `tokens` asset will record them (None: unknown); with
    `read=False` from the budgets and `expected_tokens` alone (no corpus is read)."""
    data_nodes = [n for n in lineage.node_names if lineage.node(n).data is not None]
    readable = read and all(_readable(s) for n in data_nodes for s in lineage.node(n).data.sources)
    out: dict[str, dict[str, int | None]] = {}
    if readable:
        from featureflow_dagster.blocks import build_blocks
        from featureflow_dagster.corpus import build_corpus
        from featureflow_dagster.tokenizer import build_tokenizer

        base = lineage.base.name
        base_table = build_corpus(lineage.node(base).data.sources)[0]
        # the tokenizer the `tokenizer` asset will build (a BPE is trained on the base corpus, as there)
        if lineage.tokenizer.kind == "model":  # the base model's own, as the `tokenizer` asset takes it
            from featureflow_dagster.tokenizer import load_tokenizer

            folder = _reachable_folder(base, lineage.base.pretrained)
            readable = folder is not None
            tok = load_tokenizer(folder) if readable else None
        else:
            tok = build_tokenizer(lineage.tokenizer, base_table if lineage.tokenizer.kind == "bpe" else None, log)
    for name in data_nodes:
        node = lineage.node(name)
        if readable:
            table = base_table if name == base else build_corpus(node.data.sources)[0]
            _, stats = build_blocks(tok, table, node.data, lineage.block_n_ctx)
            out[name] = {s: st["train_tokens"] for s, st in stats.items()}
        else:
            budgets = node.data.source_budgets()
            out[name] = {s.name: budgets.get(s.name) or s.expected_tokens for s in node.data.sources}
    return out


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------


def estimate(lineage: Lineage, counts: dict[str, dict[str, int | None]], throughput: dict[str, float] | None = None,
             device: str = "cpu") -> Estimate:
    throughput = throughput or {}
    rows: list[Row] = []
    node_tokens: dict[str, int | None] = {}
    for name, per_source in counts.items():
        values = list(per_source.values())
        node_tokens[name] = None if any(v is None for v in values) else sum(values)
        rows.append(Row("tokens", name, node_tokens[name], None, "cpu",
                        None if node_tokens[name] is None else node_tokens[name] * 4.0, False))
    for name in lineage.node_names:
        node = lineage.node(name)
        m = model_shape(lineage, name)
        fwd = lm_forward_flops_per_token(lineage, name)
        model_bytes = lm_params(lineage, name) * 4.0
        if node.pretrained is not None:
            rows.append(Row(f"model/{name}", name, 0, 0.0, "cpu", model_bytes, True, note=f"pretrained: {node.pretrained.label}"))
        elif node.kind == "merge":
            spec = node.merge
            points = len(_sweep_points(lineage, name))
            eval_tokens = points * len(lineage.domains(name)) * spec.sweep.eval_tokens if points else 0
            if points:
                rows.append(Row("slerp_sweep", name, eval_tokens, eval_tokens * fwd, "lm_forward", 1e5, True,
                                note=f"{points} values of t; at most (fewer where validation data is short)"))
            rows.append(Row(f"model/{name}", name, 0, 0.0, "cpu", model_bytes, True, note=f"{spec.method} merge"))
        else:
            t = lineage.training_spec(name)
            blocks = None if node_tokens.get(name) is None else node_tokens[name] // m.n_ctx
            if blocks is None:
                rows.append(Row(f"model/{name}", name, None, None, "lm_train", model_bytes * 3, True, note="data size unknown"))
            else:
                from featureflow_dagster.training import total_steps_for

                steps = total_steps_for(blocks, t)
                seen = steps * t.batch_size * m.n_ctx
                rows.append(Row(f"model/{name}", name, seen, 3 * fwd * seen, "lm_train", model_bytes * 3, True,
                                note=f"{steps:,} steps of {t.batch_size}x{m.n_ctx} ({3 * fwd * t.batch_size * m.n_ctx:.3g} FLOP/step)"))
        s = lineage.sae_spec(name)
        d_in = hook_width(lineage, name)
        d_sae = d_in * s.expansion
        fwd_store = fwd * (parse_hook(lineage.hook).layer + 1) / m.n_layers  # collection stops at the hooked layer
        windows = s.tokens // s.context
        store_tokens = windows * s.context
        eval_windows = s.eval_tokens // s.context
        itemsize = 2 if s.store_dtype in ("float16", "bfloat16") else 4
        collected = store_tokens + eval_windows * s.context  # training and held-out windows
        rows.append(Row("activation_store", name, collected, collected * fwd_store / 2, "lm_forward", collected * d_in * itemsize, True,
                        memory=lm_params(lineage, name) * 2.0 + 64 * s.context * m.d_model * 4.0 * 4,
                        note=f"{store_tokens:,} training + {eval_windows * s.context:,} held-out tokens"))
        sae_tokens = int(s.epochs * windows) // s.batch_windows * s.batch_windows * s.context
        if s.published is not None:  # loaded, then evaluated on the held-out windows: no training
            rows.append(Row("sae", name, eval_windows * s.context, 2.0 * 2 * d_in * d_sae * eval_windows * s.context, "sae_encode",
                            2 * d_in * d_sae * 4.0, True, memory=2 * d_in * d_sae * 4.0, note=f"published: {s.published.label}"))
            continue
        rows.append(Row("sae", name, sae_tokens, 12.0 * d_in * d_sae * sae_tokens, "sae_train", 2 * d_in * d_sae * 4.0, True,
                        memory=4 * 2 * d_in * d_sae * 4.0 + 3 * s.batch_windows * s.context * d_sae * 4.0, note=f"{d_sae:,} features, {s.batch_windows * s.context:,} tokens/step ({12.0 * d_in * d_sae * s.batch_windows * s.context:.3g} FLOP/step)"))
    f = lineage.flow
    for parent, child in lineage.edges():
        d_in = hook_width(lineage, child)
        n = f.tokens
        flops = n * (lm_forward_flops_per_token(lineage, parent) + lm_forward_flops_per_token(lineage, child)) / 2 \
            + n * 2 * d_in * d_in * (lineage.sae_spec(parent).expansion + lineage.sae_spec(child).expansion)
        rows.append(Row("feature_activations", Edge(parent, child).key, n, flops, "sae_encode", n * 2 * 40 * 8.0, True,
                        memory=2.0 * (lm_params(lineage, parent) + lm_params(lineage, child)) + 2 * 2 * d_in * d_in * 16 * 4.0, note="codes stored sparse (about 8 bytes per non-zero)"))
        if f.warm_start:  # the child's SAE trained again, from the parent's dictionary, then both encode the child's held-out windows
            s = lineage.sae_spec(child)
            d_sae = d_in * s.expansion
            sae_tokens = int(s.epochs * (s.tokens // s.context)) // s.batch_windows * s.batch_windows * s.context
            held_out = s.eval_tokens // s.context * s.context
            rows.append(Row("warm_sae", Edge(parent, child).key, sae_tokens, 12.0 * d_in * d_sae * sae_tokens, "sae_train",
                            2 * d_in * d_sae * 4.0, True, note=f"from {parent}'s dictionary; aligned pairs on {held_out:,} held-out tokens"))
    if lineage.tasks:
        rows += patching_rows(lineage)
    for row in rows:
        if row.flops and row.kind in throughput:
            row.seconds = row.flops / throughput[row.kind]
    return Estimate(lineage.name, rows, throughput, device)


def task_prompt_length(task) -> int:
    """Tokens per prompt of a task: its `length`; entity tracking's template is about 7 tokens per object and box
    ("the apple is in box A,") plus 5 for the query, under any of the shipped tokenizers."""
    return 7 * task.n_objects + 5 if task.kind == "entity_tracking" else task.length


def patching_passes(lineage: Lineage, node: str) -> dict[str, tuple[int, int]]:
    """Per asset kind, (forward passes, prompt tokens) of one node's circuits and one edge's CMAP over every task,
    as `patching.report` runs them under `lineage.patching`'s budgets (layers, positions, prompts, head groups,
    random circuits, feature null draws)."""
    spec, m = lineage.patching, model_shape(lineage, node)
    layers = len(spec.layers) if spec.layers is not None else m.n_layers
    per_layer = sum({"attn": 1, "heads": m.n_heads, "mlp": 1}.get(k, 0) for k in spec.components)
    comps = ("embed" in spec.components) + layers * per_layer + len(spec.head_groups)
    out = {"circuits": [0, 0], "cmap": [0, 0]}
    for t in lineage.tasks:
        length, n = task_prompt_length(t), min(t.examples, spec.prompts or t.examples)
        find = n // 2 if spec.split_halves else n
        score = n - find if spec.split_halves else n
        units = comps * ((spec.positions or length) + 1)
        senders = layers * m.n_heads
        paths = senders * (2 + 3 * len(spec.head_groups))  # logits, own MLP (none in parallel blocks), each group q/k/v: at most
        passes = [(units + 4, find), (paths + 4, find), (spec.random_circuits + 4, score)]
        out["circuits"][0] += sum(p for p, _ in passes)
        out["circuits"][1] += sum(p * k * length for p, k in passes)
        cmap = 2 * units + 4 + 3 + 2 * spec.feature_null_draws
        out["cmap"][0] += cmap
        out["cmap"][1] += cmap * n * length
    return {k: (v[0], v[1]) for k, v in out.items()}


def patching_rows(lineage: Lineage) -> list[Row]:
    """Circuits per node and CMAP per edge, priced as forward passes of float32 HookedTransformers."""
    rows = []
    for name in lineage.node_names:
        passes, tokens = patching_passes(lineage, name)["circuits"]
        m = model_shape(lineage, name)
        cache = max(t.examples for t in lineage.tasks) * max(task_prompt_length(t) for t in lineage.tasks) * m.d_model * 4.0
        rows.append(Row("circuits", name, tokens, tokens * lm_forward_flops_per_token(lineage, name), "lm_forward", 1e6, True,
                        memory=lm_params(lineage, name) * 4.0 + 4 * m.n_layers * cache,
                        note=f"{passes:,} forward passes (float32 HookedTransformer)"))
    for parent, child in lineage.edges():
        passes, tokens = patching_passes(lineage, child)["cmap"]
        m = model_shape(lineage, child)
        cache = max(t.examples for t in lineage.tasks) * max(task_prompt_length(t) for t in lineage.tasks) * m.d_model * 4.0
        rows.append(Row("cmap", Edge(parent, child).key, tokens, tokens * lm_forward_flops_per_token(lineage, child), "lm_forward",
                        1e6, True, memory=(lm_params(lineage, parent) + lm_params(lineage, child)) * 4.0 + 2 * 4 * m.n_layers * cache,
                        note=f"{passes:,} forward passes, both models in float32"))
    return rows


def _sweep_points(lineage: Lineage, node: str) -> list[float]:
    spec = lineage.node(node).merge
    if spec.t != "auto":
        return []
    return spec.sweep.grid()


# ---------------------------------------------------------------------------------------------
# Throughput on this device
# ---------------------------------------------------------------------------------------------


def measured_throughput(lineage: Lineage, device, cache: "Path | None" = None, remeasure: bool = False, rounds: int = 3,
                        log=None) -> tuple[dict[str, float], str]:
    """(FLOP/s per kind, where it came from): `measure` repeated `rounds` times, the median per kind (one short
    measurement moved 5x between runs on this machine), cached in `cache` (a JSON file) per machine, device, torch
    version and the lineage's LM and SAE shapes, so that `plan` prices alike from one call to the next and times
    nothing it has timed before (unless `remeasure`)."""
    import hashlib
    import json
    import socket
    import statistics

    import torch

    node = max(lineage.node_names, key=lambda n: lm_matmul_params(lineage, n))
    shapes = {"model": model_shape(lineage, node).model_dump(mode="json"), "sae": lineage.sae_spec(node).model_dump(mode="json"),
              "batch": lineage.training_spec(node).batch_size, "vocab": vocab_size(lineage)}
    key = hashlib.sha256(json.dumps([socket.gethostname(), str(device), torch.__version__, shapes], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    saved = {}
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
        except ValueError:
            saved = {}
    if key in saved and not remeasure:
        entry = saved[key]
        return entry["throughput"], f"measured on this machine at {entry['at']} (cached; `featureflow plan --remeasure` times again)"
    runs = [measure(lineage, device, log=log) for _ in range(rounds)]
    throughput = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in runs[0]}
    if cache is not None:
        from datetime import datetime, timezone

        from featureflow_dagster.storage import atomic_file

        saved[key] = {"throughput": throughput, "runs": runs, "at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "device": str(device)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache) as tmp:
            tmp.write_text(json.dumps(saved, indent=1))
    worst = max((hi / lo if lo else 1.0) for lo, hi in spread.values())
    return throughput, f"measured now, median of {rounds} (the runs differed by up to {worst:.2f}x)"


def measure(lineage: Lineage, device, steps: int = 3, log=None) -> dict[str, float]:
    """FLOP/s this code reaches on `device` for the lineage's largest LM shape (training and forward)
    and SAE shape (training and encoding), timed over a few real steps after one warm-up step. On a
    CPU the batches are cut down (the measurement stays short); on CUDA they are the lineage's, in bf16
    when the lineage trains in bf16."""
    import torch

    from featureflow_dagster.model import mistral_config
    from transformers import MistralForCausalLM

    node = max(lineage.node_names, key=lambda n: lm_matmul_params(lineage, n))
    # a Mistral of the largest model's shape stands in for every family (the matmuls are the same sizes)
    m, t, s = model_shape(lineage, node), lineage.training_spec(node), lineage.sae_spec(node)
    cuda = torch.device(device).type == "cuda"
    batch = t.batch_size if cuda else min(t.batch_size, 2)

    class _Vocab:  # what mistral_config reads from a tokenizer
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return vocab_size(lineage)

    torch.manual_seed(0)
    model = MistralForCausalLM(mistral_config(m, _Vocab())).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab_size(lineage), (batch, m.n_ctx), device=device)
    amp = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=cuda and t.dtype == "bfloat16")

    def timed(fn) -> float:
        fn()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    def train_step():
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward():
        with torch.no_grad(), amp:
            model(input_ids=ids)

    fwd = lm_forward_flops_per_token(lineage, node) * batch * m.n_ctx
    out = {"lm_train": 3 * fwd / timed(train_step), "lm_forward": fwd / timed(forward)}
    if log:
        log(f"LM {node} ({batch}x{m.n_ctx} tokens/step): {out['lm_train'] / 1e9:.1f} GFLOP/s training, "
            f"{out['lm_forward'] / 1e9:.1f} forward")
    del model, opt
    d_in = hook_width(lineage, node)
    d_sae = d_in * s.expansion
    n = s.batch_windows * s.context if cuda else min(s.batch_windows * s.context, 512)
    w_enc = torch.randn(d_in, d_sae, device=device, requires_grad=True)
    w_dec = torch.randn(d_sae, d_in, device=device, requires_grad=True)
    x = torch.randn(n, d_in, device=device)
    sae_opt = torch.optim.Adam([w_enc, w_dec], lr=1e-4)

    def sae_step():
        f = torch.relu(x @ w_enc)
        loss = ((f @ w_dec - x) ** 2).mean() + f.abs().mean()
        loss.backward()
        sae_opt.step()
        sae_opt.zero_grad(set_to_none=True)

    def encode():
        with torch.no_grad():
            torch.relu(x @ w_enc)

    out["sae_train"] = 12.0 * d_in * d_sae * n / timed(sae_step)
    out["sae_encode"] = 2.0 * d_in * d_sae * n / timed(encode)
    if log:
        log(f"SAE {d_in}x{d_sae} ({n} tokens/step): {out['sae_train'] / 1e9:.1f} GFLOP/s training, "
            f"{out['sae_encode'] / 1e9:.1f} encoding")
    return out


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "?"
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_estimate(e: Estimate) -> list[str]:
    width = max(len(r.label) for r in e.rows)
    lines = [f"{'asset':<{width}}  {'tokens':>13}  {'FLOP':>8}  {'time':>9}  {'disk':>8}  {'memory':>8}  gpu  note"]
    for r in e.rows:
        time_ = "-" if r.kind == "cpu" else _duration(r.seconds)
        tokens = "?" if r.tokens is None else f"{r.tokens:,}"  # exact: the count the run will record
        lines.append(f"{r.label:<{width}}  {tokens:>13}  {_num(r.flops) if r.kind != 'cpu' else '-':>8}  {time_:>9}  "
                     f"{_num(r.disk, 'B'):>8}  {_num(r.memory, 'B') if r.memory else '-':>8}  {'yes' if r.device else 'no ':<3}  {r.note}")
    flops, seconds = e.total("flops"), e.total("seconds")
    unknown = e.unknown
    more = " (+ the assets marked ?)" if unknown else ""
    peak = max((r.memory or 0.0) for r in e.rows)
    when = f"{_duration(seconds)} on {e.device}{more}" if e.throughput else f"not timed on {e.device}{more}"
    lines.append(f"total: {_num(flops)}FLOP, {when}, {_num(e.total('disk'), 'B')} on disk, "
                 f"{_num(peak, 'B')} peak accelerator memory (one asset at a time)")
    if e.throughput:
        lines.append("measured here: " + ", ".join(f"{k} {_num(v)}FLOP/s" for k, v in e.throughput.items()))
    elif e.note:
        lines.append(e.note)
    lines.append(f"GPU-hours: {flops / A100_BF16_PEAK / 3600:.3g} at an A100's bf16 peak ({_num(A100_BF16_PEAK)}FLOP/s), "
                 f"{flops / (0.3 * A100_BF16_PEAK) / 3600:.3g} at 30% of it: a lower bound from FLOPs alone (reading stores, "
                 "small matmuls and Python run far below peak; time a step on the GPU with `featureflow plan --device cuda`)")
    if unknown:
        lines.append(f"unknown sizes ({', '.join(unknown)}): give those sources a `tokens` budget or `expected_tokens`")
    return lines


# ---------------------------------------------------------------------------------------------
# The disk budget
# ---------------------------------------------------------------------------------------------


def _tree_bytes(root) -> int:
    import os

    total = 0
    for folder, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(folder, f)).st_size
            except OSError:
                pass
    return total


def disk_budget(lineage: Lineage, store_root) -> tuple[float, str]:
    """(bytes the lineage may use, where that number comes from): `max_disk_gb`, else the free space of the
    store's file system plus what the store holds already (a re-run replaces it)."""
    import shutil
    from pathlib import Path

    if lineage.max_disk_gb is not None:
        return lineage.max_disk_gb * 1e9, "the lineage's max_disk_gb"
    root = Path(store_root)
    probe = next((p for p in [root, *root.parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    held = _tree_bytes(root) if root.exists() else 0
    return float(free + held), f"free disk at {probe} ({_num(free, 'B')}) plus the store's {_num(held, 'B')}"


def check_disk(lineage: Lineage, store_root) -> str | None:
    """None when the estimate of the lineage's disk (from budgets, no corpus read) fits the budget, else the
    refusal with both numbers and the assets that need the most."""
    e = estimate(lineage, token_counts(lineage, read=False))
    need = e.total("disk")
    budget, source = disk_budget(lineage, store_root)
    if need <= budget:
        return None
    top = sorted((r for r in e.rows if r.disk), key=lambda r: -r.disk)[:3]
    return (f"lineage '{lineage.name}' needs about {_num(need, 'B')} on disk (`featureflow plan` estimate; largest: "
            + ", ".join(f"{r.label} {_num(r.disk, 'B')}" for r in top)
            + f") but may use {_num(budget, 'B')} ({source}); free space, raise `max_disk_gb`, or lower sae.tokens / store_dtype")
