"""Activation collection at a middle layer of 4-layer models of two families: featureflow's hook, which
stops the forward at the hooked layer, against TransformerLens's `run_with_cache(..., stop_at_layer=L+1,
names_filter=hook)`, which stops there too (the fair baseline: the same trick). Same tokens, same batches,
one run; random-initialised models of a given width (the time of a forward does not depend on the weights).

  python bench/collection_families.py [--families llama,gpt2] [--d-model 256] [--layer 1] [--windows 512] [--context 128]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers as T

from featureflow_dagster.activations import run_to_hook
from featureflow_dagster.hooked import load_hooked_model
from featureflow_dagster.model import load_model

CONFIGS = {
    "llama": lambda d, n_ctx: T.LlamaConfig(vocab_size=4096, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=4,
                                            num_attention_heads=d // 64, num_key_value_heads=d // 64, max_position_embeddings=n_ctx),
    "neox": lambda d, n_ctx: T.GPTNeoXConfig(vocab_size=4096, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=4,
                                             num_attention_heads=d // 64, max_position_embeddings=n_ctx),
    "gpt2": lambda d, n_ctx: T.GPT2Config(vocab_size=4096, n_embd=d, n_layer=4, n_head=d // 64, n_positions=n_ctx),
}


def best_of(fn, repeats: int = 3) -> tuple[float, list]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="llama,gpt2")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--windows", type=int, default=512)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hooks", default="mlp.hook_post,hook_resid_post")
    args = ap.parse_args()
    torch.manual_seed(0)
    tokens = torch.randint(0, 4096, (args.windows, args.context))
    batches = list(tokens.split(args.batch))
    print(f"{args.windows} windows of {args.context} tokens, batch {args.batch}, d_model {args.d_model}, 4 layers, "
          f"hooks at layer {args.layer}, {torch.get_num_threads()} threads, best of 3")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            folder = Path(tmp) / family
            T.AutoModelForCausalLM.from_config(CONFIGS[family](args.d_model, args.context)).save_pretrained(folder)
            hf, tl = load_model(folder).eval(), load_hooked_model(folder)
            for site in args.hooks.split(","):
                hook = f"blocks.{args.layer}.{site}"

                def ours():
                    return [run_to_hook(hf, b, hook) for b in batches]

                def theirs():
                    with torch.no_grad():
                        return [tl.run_with_cache(b, names_filter=hook, stop_at_layer=args.layer + 1)[1][hook] for b in batches]

                ours(), theirs()  # warm-up
                t_ours, a = best_of(ours)
                t_theirs, b = best_of(theirs)
                diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
                n = tokens.numel()
                print(f"{family:6s} {hook:26s} featureflow {n / t_ours:10,.0f} tok/s   TransformerLens {n / t_theirs:10,.0f} tok/s   "
                      f"ratio {t_theirs / t_ours:.2f}x   max |difference| {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
