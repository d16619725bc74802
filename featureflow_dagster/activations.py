"""Activations at a hook point (TransformerLens names, e.g. `blocks.0.mlp.hook_post`, `blocks.3.hook_resid_post`)
of a Hugging Face causal LM of any supported family, and the on-disk store.

`mlp.hook_post` in TransformerLens is act(gate(x)) * up(x) (act(W_in x) without a gate), the input of the
MLP's output projection; a forward pre-hook on that projection captures it. The residual stream after a
layer is the layer's output, caught by a forward hook. `arch.adapter_for` says where those modules are
in each family. For collection the hook stops the forward pass there (nothing after it runs: no later
layer, no unembedding). The same hook can replace the activations (a spliced SAE reconstruction,
zero-ablation) for loss evaluation. Equality with TransformerLens's `run_with_cache` and with a
hand-written hook per family is tested.

Store layout (one folder per node and split):
  manifest.json                 hook, d_in, context, dtype, sources, shards with sha256, seed
  <split>/shard_00000.safetensors
      activations [n_windows * context, d_in]  (dtype from the lineage)
      tokens      [n_windows, context] int32
      origin      [n_windows, 3] int32: (source index, block row, offset) into the tokens files
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from featureflow_dagster.arch import adapter_for, parse_hook
from featureflow_dagster.storage import file_sha256

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def capture(model, hook: str, stop: bool = False, replace: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Within the block, each forward of `model` records the activations at `hook` (a TransformerLens
    name, `arch.SITES`) [batch, pos, width] into the yielded list; with `stop` the forward ends right
    after (call through `run_to_hook`); with `replace` the model goes on with replace(activations).
    The module is found by the model's architecture adapter (`arch.adapter_for`)."""
    point = parse_hook(hook)
    module = adapter_for(model).module(model, point)
    captured: list[torch.Tensor] = []

    def pre_hook(module, args):  # mlp.hook_post: the input of the MLP's output projection
        acts = args[0]
        captured.append(acts.detach())
        if stop:
            raise _StopForward
        if replace is not None:
            return (replace(acts), *args[1:])
        return None

    def post_hook(module, args, output):  # the other sites: a module's output (a layer returns a tuple in some families)
        acts = output[0] if isinstance(output, tuple) else output
        captured.append(acts.detach())
        if stop:
            raise _StopForward
        if replace is not None:
            new = replace(acts)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return None

    if point.site == "mlp.hook_post":
        handle = module.register_forward_pre_hook(pre_hook)
    else:
        handle = module.register_forward_hook(post_hook)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def run_to_hook(model, tokens: torch.Tensor, hook: str) -> torch.Tensor:
    """Activations at `hook` [batch, pos, width] of `tokens` [batch, pos]; runs the model only up to the hook
    (no later layer, no unembedding)."""
    with capture(model, hook, stop=True) as captured:
        try:
            model(input_ids=tokens)
        except _StopForward:
            pass
    return captured[0]


# ---------------------------------------------------------------------------------------------
# Sampling windows from a node's combined data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRef:
    node: str  # the node whose tokens file holds the source
    source: str


def sample_windows(block_counts: list[int], n_ctx: int, context: int, n_windows: int, seed: int) -> torch.Tensor:
    """Uniform sample without replacement of `context`-token windows from several sources.

    block_counts[i]: rows of source i (each n_ctx tokens). Every row is cut into n_ctx // context
    non-overlapping windows; each window of every source is equally likely, so sources are drawn
    in proportion to their size. Returns int [n_windows, 3]: (source index, row, offset)."""
    per_row = n_ctx // context
    if per_row == 0:
        raise ValueError(f"context {context} is longer than the blocks ({n_ctx} tokens)")
    total = sum(block_counts) * per_row
    if n_windows > total:
        raise ValueError(
            f"asked for {n_windows * context:,} tokens of {context}-token windows but the combined data "
            f"holds {total * context:,}; lower the store's token budget or give the nodes more data"
        )
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(total, generator=g)[:n_windows]
    starts = torch.tensor([0, *torch.tensor(block_counts).cumsum(0).tolist()]) * per_row
    source = torch.searchsorted(starts, picks, right=True) - 1
    local = picks - starts[source]
    return torch.stack([source, local // per_row, (local % per_row) * context], dim=1).to(torch.int32)


def gather_windows(blocks: list[torch.Tensor], windows: torch.Tensor, context: int) -> torch.Tensor:
    """Token ids [n, context] of the windows from `sample_windows` over source blocks [rows, n_ctx]."""
    out = torch.empty(windows.shape[0], context, dtype=torch.int32)
    for i, b in enumerate(blocks):
        mask = windows[:, 0] == i
        if mask.any():
            rows, offs = windows[mask, 1].long(), windows[mask, 2].long()
            idx = offs[:, None] + torch.arange(context)[None, :]
            out[mask] = b[rows][torch.arange(rows.shape[0])[:, None], idx].to(torch.int32)
    return out


def collection_batch(model, context: int, budget: int = 1 << 24, cap: int = 64) -> int:
    """Windows per forward while collecting: at most `cap`, fewer for wide models so that one forward's
    widest hidden state (tokens x max(d_model, d_mlp)) stays within `budget` elements (64 MiB in float32)."""
    from featureflow_dagster.arch import config_dims

    dims = config_dims(model.config)
    return max(1, min(cap, budget // (context * max(dims["d_model"], dims["d_mlp"]))))


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


def write_store(
    model,
    hook: str,
    tokens: torch.Tensor,
    origin: torch.Tensor,
    folder: Path,
    split: str,
    dtype: str,
    shard_windows: int,
    batch_windows: int,
    device: torch.device,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run `model` up to `hook` over token windows [n, context] and write shards of at most
    `shard_windows` windows to folder/split/. Only one shard is ever held in memory. Returns the
    shard records (file, windows, sha256) for the manifest."""
    (folder / split).mkdir(parents=True, exist_ok=True)
    model.to(device).eval()
    records = []
    n = tokens.shape[0]
    bar = tqdm(total=n, desc=f"activations ({split})", unit="window", disable=None)
    for shard_index, start in enumerate(range(0, n, shard_windows)):
        stop = min(n, start + shard_windows)
        parts = []
        for b in range(start, stop, batch_windows):
            x = tokens[b : min(stop, b + batch_windows)].to(device, torch.long)
            acts = run_to_hook(model, x, hook)
            parts.append(acts.reshape(-1, acts.shape[-1]).to("cpu", DTYPES[dtype]))
            bar.update(x.shape[0])
        name = f"{split}/shard_{shard_index:05d}.safetensors"
        save_file(
            {"activations": torch.cat(parts), "tokens": tokens[start:stop].contiguous(), "origin": origin[start:stop].contiguous()},
            str(folder / name),
        )
        records.append({"file": name, "windows": stop - start, "sha256": file_sha256(folder / name)})
        if log:
            log(f"{split}: shard {shard_index} written ({stop:,}/{n:,} windows)")
    bar.close()
    return records


class ActivationStore:
    """Read side of a store folder: manifest, shard-by-shard iteration, streaming statistics."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())

    @property
    def d_in(self) -> int:
        return self.manifest["d_in"]

    @property
    def hook_name(self) -> str:
        return self.manifest["hook_name"]

    @property
    def context(self) -> int:
        return self.manifest["context"]

    def shards(self, split: str) -> list[dict]:
        return self.manifest["splits"][split]["shards"]

    def n_windows(self, split: str) -> int:
        return sum(s["windows"] for s in self.shards(split))

    def load_shard(self, split: str, index: int, keys=("activations", "tokens", "origin")) -> dict[str, torch.Tensor]:
        with safe_open(str(self.folder / self.shards(split)[index]["file"]), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def iter_shards(self, split: str, keys=("activations", "tokens", "origin")) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(self.shards(split))):
            yield self.load_shard(split, i, keys)

    def mean(self, split: str = "train") -> torch.Tensor:
        """Mean activation [d_in], accumulated in float64 one shard at a time."""
        total = torch.zeros(self.d_in, dtype=torch.float64)
        count = 0
        for shard in self.iter_shards(split, ("activations",)):
            total += shard["activations"].to(torch.float64).sum(0)
            count += shard["activations"].shape[0]
        return (total / count).to(torch.float32)

    def mean_norm(self, split: str = "train", center: torch.Tensor | None = None) -> float:
        """Mean Euclidean norm of (activation − center) over a split, one shard at a time (float64)."""
        total, count = 0.0, 0
        for shard in self.iter_shards(split, ("activations",)):
            x = shard["activations"].to(torch.float64)
            if center is not None:
                x = x - center.to(torch.float64)
            total += float(x.norm(dim=1).sum())
            count += x.shape[0]
        return total / count

    def positions(self, split: str, rows: int = 4096) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(activations [n, d_in] float32, token at each position [n]) in chunks of `rows` positions."""
        for shard in self.iter_shards(split, ("activations", "tokens")):
            acts, toks = shard["activations"], shard["tokens"].reshape(-1)
            for start in range(0, acts.shape[0], rows):
                yield acts[start : start + rows].to(torch.float32), toks[start : start + rows]

    def batches(self, split: str, batch_windows: int, seed: int, epochs: float = 1.0, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Shuffled batches of `batch_windows` windows, as activations [batch_windows * context, d_in]
        (float32). Order: per epoch a seeded permutation of shards, and of windows within each shard;
        only the shards a batch touches are loaded. `start_step` skips batches without loading them."""
        counts = [s["windows"] for s in self.shards(split)]
        total_windows = sum(counts)
        n_batches = int(epochs * total_windows) // batch_windows
        epoch_plans: dict[int, list[tuple[int, int]]] = {}

        def plan(epoch: int) -> list[tuple[int, int]]:
            if epoch not in epoch_plans:
                g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                order = []
                for shard in torch.randperm(len(counts), generator=g).tolist():
                    order.extend((shard, w) for w in torch.randperm(counts[shard], generator=g).tolist())
                epoch_plans.clear()
                epoch_plans[epoch] = order
            return epoch_plans[epoch]

        cache: dict[int, torch.Tensor] = {}
        for b in range(start_step, n_batches):
            picks = []
            for pos in range(b * batch_windows, (b + 1) * batch_windows):
                picks.append(plan(pos // total_windows)[pos % total_windows])
            rows = []
            for shard, w in picks:
                if shard not in cache:
                    cache.clear()
                    acts = self.load_shard(split, shard, ("activations",))["activations"]
                    cache[shard] = acts.reshape(counts[shard], self.context, self.d_in)
                rows.append(cache[shard][w])
            yield torch.stack(rows).reshape(-1, self.d_in).to(torch.float32)

    def steps(self, split: str, batch_windows: int, epochs: float = 1.0) -> int:
        return int(epochs * self.n_windows(split)) // batch_windows


def build_activation_store(
    model,
    hook: str,
    train_blocks: list[torch.Tensor],
    validation_blocks: list[torch.Tensor],
    sources: list[SourceRef],
    context: int,
    train_tokens: int,
    eval_tokens: int,
    dtype: str,
    shard_tokens: int,
    seed: int,
    folder: Path,
    device: torch.device,
    batch_windows: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Sample windows uniformly from every source's blocks (training blocks for 'train',
    validation blocks for 'eval'), collect the activations at `hook` for them and write the store and its manifest
    into `folder`. Windows per forward: `batch_windows`, or sized from the model's width (`collection_batch`).
    Returns the manifest."""
    n_ctx = train_blocks[0].shape[1]
    batch_windows = batch_windows or collection_batch(model, context)
    d_in = int(run_to_hook(model.to(device), train_blocks[0][:1, :2].to(device, torch.long), hook).shape[-1])
    splits = {}
    for split, blocks, budget, split_seed in (
        ("train", train_blocks, train_tokens, seed),
        ("eval", validation_blocks, eval_tokens, seed + 1),
    ):
        windows = sample_windows([b.shape[0] for b in blocks], n_ctx, context, max(1, budget // context), split_seed)
        tokens = gather_windows(blocks, windows, context)
        shards = write_store(model, hook, tokens, windows, folder, split, dtype, max(1, shard_tokens // context), batch_windows, device, log)
        per_source = torch.bincount(windows[:, 0].long(), minlength=len(sources)).tolist()
        splits[split] = {
            "shards": shards,
            "windows": int(windows.shape[0]),
            "tokens": int(windows.shape[0]) * context,
            "windows_per_source": {f"{s.node}/{s.source}": n for s, n in zip(sources, per_source)},
        }
    manifest = {
        "hook_name": hook,
        "d_in": d_in,
        "context": context,
        "dtype": dtype,
        "seed": seed,
        "sources": [{"node": s.node, "source": s.source} for s in sources],
        "origin_columns": ["source index", "block row in the node's tokens file", "token offset"],
        "splits": splits,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
