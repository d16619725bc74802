"""Saved models as TransformerLens `HookedTransformer`s (circuits and CMAP patch heads by `attn.hook_z`).

Built with TransformerLens's own loaders: `get_pretrained_model_config` turns the Hugging Face config into
a `HookedTransformerConfig` and `get_pretrained_state_dict` converts the weights with the family's
converter (`convert_llama_weights`, `convert_neox_weights`, `convert_gpt2_weights`, ...), given the Hugging
Face model featureflow loaded. TransformerLens picks a config branch by the *name* when it contains
'llama' or 'gemma', so the config is read through a neutrally named folder holding only config.json.
No weight processing (LayerNorm folding, centring) is applied, so activations are those of the Hugging
Face model itself (tested per family).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from featureflow_dagster.arch import ArchitectureError
from featureflow_dagster.model import load_model

# the families whose HookedTransformer TransformerLens (3.9) builds from a Hugging Face model (Gemma it does not)
HOOKED_FAMILIES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPTNeoXForCausalLM", "GPT2LMHeadModel")


def load_hooked_model(path: str | Path, device: str | torch.device = "cpu") -> HookedTransformer:
    """A saved model (Hugging Face folder, any supported family) as a HookedTransformer on `device`, float32."""
    from transformer_lens import HookedTransformer  # here: building the asset graph does not need TransformerLens
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict

    hf_model = load_model(path, "cpu", dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="ff") as tmp:
        neutral = Path(tmp) / "model"
        neutral.mkdir()
        config = json.loads((Path(path) / "config.json").read_text())
        config.setdefault("n_ctx", config.get("n_positions"))  # GPT-2: TransformerLens reads n_ctx, transformers 5 writes n_positions
        (neutral / "config.json").write_text(json.dumps(config))
        try:
            cfg = get_pretrained_model_config(str(neutral), device=str(device), dtype=torch.float32, default_prepend_bos=False)
            state = get_pretrained_state_dict(str(neutral), cfg, hf_model=hf_model, dtype=torch.float32)
        except NotImplementedError as e:
            raise ArchitectureError(f"{path}: TransformerLens's HookedTransformer does not load this family ({e}); circuits and "
                                    f"CMAP need it (families it loads: {list(HOOKED_FAMILIES)})") from None
    cfg.tokenizer_name = None  # the tokenizer is the lineage's; HookedTransformer would look it up by the folder's name
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    return model.to(device, print_details=False).eval()
