"""Language models of lineage nodes as Hugging Face causal LMs.

Models featureflow trains are Mistral-like (`MistralForCausalLM`): Horn & Elliott (2024) use one
self-attention block and a gated SiLU MLP with RMSNorm and rotary positions, which is that family.
Pretrained nodes bring models of any supported family (`arch.SUPPORTED`); every saved model loads
with `load_model` (`AutoModelForCausalLM.from_pretrained`) and any tool built for `transformers`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
# transformers is imported where it is used: building the asset graph (`featureflow status`) does not need it

from featureflow_dagster.lineage import ModelSpec


def mistral_config(spec: ModelSpec, tokenizer) -> "MistralConfig":
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.d_model,
        intermediate_size=spec.d_mlp,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads or spec.n_heads,
        head_dim=spec.d_model // spec.n_heads,
        max_position_embeddings=spec.n_ctx,
        rope_theta=spec.rope_theta,
        rms_norm_eps=spec.rms_norm_eps,
        tie_word_embeddings=spec.tie_word_embeddings,
        sliding_window=None,
        hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )


def init_model(spec: ModelSpec, tokenizer, seed: int) -> "MistralForCausalLM":
    """A freshly initialised model; the same seed gives the same weights."""
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)
    return MistralForCausalLM(mistral_config(spec, tokenizer))


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """A saved causal LM (Hugging Face folder) of any supported family (`arch.SUPPORTED`; another is
    refused from its config, before the weights load) on `device`. On CUDA it keeps its saved dtype
    (bfloat16 stays bfloat16); on a CPU it computes in float32 (bfloat16 matmuls are slow there), unless
    `dtype` says otherwise."""
    from transformers import AutoConfig

    from featureflow_dagster.arch import adapter_for

    adapter_for(AutoConfig.from_pretrained(str(path)))
    device = torch.device(device)
    if dtype is None:
        dtype = "auto" if device.type == "cuda" else torch.float32
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device)


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over parameter names and float32 bytes, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def parameter_distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Relative L2 distance ||a - b|| / ||b|| over all parameters (b is the reference)."""
    num = den = 0.0
    sb = b.state_dict()
    for name, ta in a.state_dict().items():
        tb = sb[name].to(ta.device, torch.float32)
        num += float(((ta.float() - tb) ** 2).sum())
        den += float((tb**2).sum())
    return (num / den) ** 0.5


# which part of a causal LM a parameter belongs to, by the first marker in its (Hugging Face) name
# (norms before attention: 'post_attention_layernorm' is a norm), in the families' spellings
PARTS = (("embed_tokens", "embed"), ("embed_in", "embed"), ("wte", "embed"), ("wpe", "embed"), ("norm", "norm"), ("ln_", "norm"),
         ("self_attn", "attention"), ("attention", "attention"), ("attn", "attention"), ("mlp", "mlp"),
         ("lm_head", "unembed"), ("embed_out", "unembed"))


def summarize_model(folder: str | Path) -> dict:
    """A saved model (Hugging Face folder) without loading its weights: its architecture in
    TransformerLens's names (d_model, d_mlp, n_layers, n_heads, n_key_value_heads, d_vocab, n_ctx),
    parameter counts in total and per part (embed, attention, mlp, norm, unembed, other), the weights'
    dtypes and bytes on disk, from config.json and the safetensors headers."""
    import json
    import math

    from safetensors import safe_open

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors weights; materialize its model again")
    parts: dict[str, int] = {}
    dtypes: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_slice(name)
                part = next((p for marker, p in PARTS if marker in name), "other")
                parts[part] = parts.get(part, 0) + math.prod(tensor.get_shape())
                dtypes.add(tensor.get_dtype())
    from featureflow_dagster.arch import config_dims

    dims = config_dims(config)  # in every family's spelling (GPT-2: n_embd, n_inner, ...)
    return {
        "architecture": (config.get("architectures") or ["?"])[0], "model_type": config.get("model_type"),
        "d_model": dims["d_model"], "d_mlp": dims["d_mlp"], "n_layers": dims["n_layers"], "n_heads": dims["n_heads"],
        "n_key_value_heads": config.get("num_key_value_heads") or dims["n_heads"], "d_vocab": dims["d_vocab"],
        "n_ctx": dims["n_ctx"], "tied_embeddings": bool(config.get("tie_word_embeddings", False)),
        "parameters": sum(parts.values()), "parameters_by_part": dict(sorted(parts.items())),
        "dtypes": sorted(dtypes), "weights_bytes": sum(p.stat().st_size for p in files),
    }
