"""The scale a 7B pair needs, timed where it runs: activations collected at a deep hook in the model's dtype and
stored as bfloat16, then a TopK SAE of 4,096 x 65,536 latents trained from that store shard by shard.

The model has Llama-7B's layer shapes (hidden 4,096, MLP 11,008, 32 heads, 32,000 tokens), `--layers` of them,
with random weights (no hub here; no timing or memory figure below depends on the weights' values) and random
token ids as its input. It is saved as a Hugging Face folder and read back by featureflow's own `load_model`, so
the dtype on the accelerator is the one a pretrained node gets (bfloat16 stays bfloat16 on CUDA).

Prints: the collection's tokens/s beside the model's forward alone on the same windows in the same run (bringing
the activations to the host, writing nothing: what collection would cost if writing were free), and the store's size
on disk; SAE steps/s and tokens/s at PyTorch's default
float32 matmul precision and at 'high' (TF32); the accelerator's peak memory; the process's peak resident memory
against the store's size (a trainer that held the store would pass it), and the most shards held at once; the
plan's price for the same SAE (costs.py's 12 d_in d_sae FLOP a token at 30% of an A100's bf16 peak)
beside the measured time. With --patching: circuits' activation and path patching through TransformerLens on
the same model's weights (float32, as circuits load models), on CUDA and on the CPU, their tables compared.

    python bench/gpu_scale.py [--layers 2] [--train-tokens 1048576] [--device cuda] [--patching]
    python bench/gpu_scale.py --small        # CPU smoke run: d_model 256, 2,048 latents
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from featureflow_dagster.activations import ActivationStore, SourceRef, build_activation_store, run_to_hook
from featureflow_dagster.model import load_model
from featureflow_dagster.sae import SAEConfig, TopKSAE
from featureflow_dagster.sae.train import train_sae

A100_BF16_PEAK = 312e12  # costs.A100_BF16_PEAK: not imported, costs reads lineages (pydantic), absent on the GPU image
PLAN_UTILISATION = 0.30


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def make_model(folder: Path, layers: int, small: bool, device: torch.device) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4) if small else \
        dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
    config = LlamaConfig(**shape, num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=2048,
                         torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    del model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_only(model, hook: str, windows: torch.Tensor, batch_windows: int, device: torch.device) -> float:
    """Seconds to run the model up to `hook` over `windows` and bring the activations to the host, writing nothing
    (after one untimed batch: the first forward pays for kernel selection, and the baselines run first)."""
    run_to_hook(model, windows[:batch_windows].to(device, torch.long), hook)
    sync(device)
    t0 = time.perf_counter()
    for b in range(0, windows.shape[0], batch_windows):
        acts = run_to_hook(model, windows[b:b + batch_windows].to(device, torch.long), hook)
        acts.reshape(-1, acts.shape[-1]).to("cpu", torch.bfloat16)
    sync(device)
    return time.perf_counter() - t0


def patching_check(model_folder: Path, device: torch.device, layers: int) -> None:
    """Activation and path patching of a head group across layers, on `device` and on the CPU, compared."""
    import pandas as pd

    from featureflow_dagster.hooked import load_hooked_model
    from featureflow_dagster.patching import activation_patching, component_names, path_patching
    from featureflow_dagster.patching.tasks import TaskBatch

    g = torch.Generator().manual_seed(1)
    n, length = 4, 12
    clean = torch.randint(0, 32000, (n, length), generator=g)
    corrupt = clean.clone()
    corrupt[:, 6] = torch.randint(0, 32000, (n,), generator=g)
    answer, wrong = torch.randint(0, 32000, (n,), generator=g), torch.randint(0, 32000, (n,), generator=g)
    batch = TaskBatch("random", "bench", clean, corrupt, answer, wrong, torch.full((n,), 6))
    groups = {"g": [[0, 1], [layers - 1, 2]]}
    tables = {}
    for dev in dict.fromkeys((device, torch.device("cpu"))):
        model = load_hooked_model(model_folder, dev)
        comps = component_names(model, kinds=("attn", "mlp"), layers=[layers - 1], groups=groups)
        sync(dev)
        t0 = time.perf_counter()
        act = activation_patching(model, batch, comps, last_positions=2, groups=groups)
        path = path_patching(model, batch, layers=[0], groups=groups)
        sync(dev)
        tables[dev.type] = (act, path, time.perf_counter() - t0)
        print(f"patching on {dev}: {len(act)} activation-patching units and {len(path)} paths in {tables[dev.type][2]:.1f} s")
        del model
    if device.type != "cpu":
        for i, name in enumerate(("activation patching", "path patching")):
            a, b = tables[device.type][i], tables["cpu"][i]
            diff = (a["ld"].to_numpy() - b["ld"].to_numpy())
            scale = float(pd.Series(b["ld"]).abs().max())
            print(f"{name}: logit differences {device.type} vs cpu: max |diff| {abs(diff).max():.3g} on a scale of {scale:.3g}")


def train(store: ActivationStore, d_sae: int, k: int, batch_windows: int, steps: int, device: torch.device,
          precision: str) -> dict:
    torch.backends.cuda.matmul.fp32_precision = precision  # as DeviceResource(tf32=...) sets it
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=store.d_in, d_sae=d_sae, k=k, hook_name=store.hook_name,
                            context_size=store.context, model_name="bench"), seed=0)
    loads = {"now": 0, "most": 0}
    original = store.load_shard

    def counted(split, index, keys=("activations", "tokens", "origin")):
        shard = original(split, index, keys)
        loads["now"] += 1
        loads["most"] = max(loads["most"], loads["now"])
        return shard

    # a shard counts as held from its load until the next load replaces it (ActivationStore.batches keeps one)
    def held(split, index, keys=("activations", "tokens", "origin")):
        loads["now"] = 0
        return counted(split, index, keys)

    store.load_shard = held
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    result = train_sae(sae, lambda start: store.batches("train", batch_windows, 0, 1.0, start), steps, 2e-4, (0.9, 0.999), device)
    sync(device)
    store.load_shard = original
    tokens = result.tokens_seen
    return {"precision": precision, "steps": result.steps, "seconds": round(result.seconds, 2),
            "steps_per_s": round(result.steps / result.seconds, 2), "tokens_per_s": round(tokens / result.seconds),
            "final_mse": round(result.curve[-1]["mse"], 5) if result.curve else None,
            "peak_accelerator_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None,
            "most_shards_held": loads["most"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--train-tokens", type=int, default=1 << 20)
    ap.add_argument("--tf32-tokens", type=int, default=1 << 19, help="tokens of the second training run, at 'high' precision")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="d_model 256 and 2,048 latents: a CPU smoke run")
    ap.add_argument("--patching", action="store_true", help="also check circuits' patching on the device against the CPU")
    ap.add_argument("--home", type=Path, default=None, help="where the model and store go (default: a temporary folder)")
    args = ap.parse_args()
    device = torch.device(args.device)
    context, batch_windows, k = 128, 32, 64
    with tempfile.TemporaryDirectory(dir=args.home) as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        make_model(tmp / "model", args.layers, args.small, device)
        model = load_model(tmp / "model", device)
        d_model = model.config.hidden_size
        d_sae = 8 * d_model if args.small else 16 * d_model
        hook = f"blocks.{args.layers - 1}.hook_resid_post"
        print(f"model: {args.layers} layers of d_model {d_model}, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B "
              f"parameters, {next(model.parameters()).dtype} on {device} (saved and loaded in {time.perf_counter() - started:.1f} s)")
        g = torch.Generator().manual_seed(0)
        n_ctx = 1024
        rows = -(-args.train_tokens // n_ctx) + 8
        train_blocks = [torch.randint(0, 32000, (rows, n_ctx), generator=g, dtype=torch.int32)]
        val_blocks = [torch.randint(0, 32000, (64, n_ctx), generator=g, dtype=torch.int32)]
        from featureflow_dagster.activations import collection_batch
        bw = collection_batch(model, context)
        windows = train_blocks[0].reshape(-1, context)[:args.train_tokens // context]
        n_tok = windows.numel()
        base_forward = forward_only(model, hook, windows, bw, device)
        sync(device)
        t0 = time.perf_counter()
        manifest = build_activation_store(model, hook, train_blocks, val_blocks, [SourceRef("base", "random")], context,
                                          args.train_tokens, 0, "bfloat16", 131072, 0, tmp / "store", device)
        seconds = time.perf_counter() - t0
        store_gb = sum(f.stat().st_size for f in (tmp / "store").rglob("*.safetensors")) / 1e9
        tokens = manifest["splits"]["train"]["tokens"]
        print(f"collection at {hook}, {bw} windows a forward: featureflow {tokens:,} tokens in {seconds:.1f} s = "
              f"{tokens / seconds:,.0f} tokens/s; store {store_gb:.2f} GB in {len(manifest['splits']['train']['shards'])} shards (bfloat16)")
        print(f"  the forward alone on {n_tok:,} of those tokens: {n_tok / base_forward:,.0f} tokens/s; collection runs at "
              f"{(tokens / seconds) / (n_tok / base_forward):.2f}x its rate (the rest: copying, serialising, writing, hashing)")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.patching:
            patching_check(tmp / "model", device, args.layers)
        store = ActivationStore(tmp / "store")
        rss_before = rss_gb()
        runs = []
        for precision, tokens_run in (("ieee", args.train_tokens), ("tf32", args.tf32_tokens)):
            steps = min(store.steps("train", batch_windows), tokens_run // (batch_windows * context))
            runs.append(train(store, d_sae, k, batch_windows, steps, device, precision))
            print(f"SAE {store.d_in}x{d_sae} topk k={k}, {batch_windows * context} tokens a step: {json.dumps(runs[-1])}")
        print(f"peak resident memory: {rss_before:.2f} GB before training, {rss_gb():.2f} GB after; the store is {store_gb:.2f} GB")
        flops_per_token = 12.0 * store.d_in * d_sae  # costs.py's SAE training row
        for run in runs:
            planned = flops_per_token / (A100_BF16_PEAK * PLAN_UTILISATION)
            measured = 1 / run["tokens_per_s"]
            print(f"{run['precision']}: measured {measured * 1e6:.2f} us/token; the plan's price {planned * 1e6:.2f} us/token "
                  f"(A100 bf16 at 30%); measured / planned = {measured / planned:.2f}; achieved "
                  f"{flops_per_token * run['tokens_per_s'] / 1e12:.1f} TFLOP/s by the plan's count")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
