"""Saved models as TransformerLens `HookedTransformer`s, exposing `blocks.0.mlp.hook_post`.

`HookedTransformer.from_pretrained` only accepts model names it knows; our models are new, so the
config is built from the Hugging Face config and the weights go through TransformerLens's own
`convert_mistral_weights`. No weight processing (LayerNorm folding, centring) is applied, so
activations are those of the Hugging Face model itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_mistral_weights

from featureflow_dagster.model import load_model



def hooked_config(hf_config, device: str | torch.device = "cpu") -> HookedTransformerConfig:
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=head_dim,
        n_heads=hf_config.num_attention_heads,
        n_key_value_heads=hf_config.num_key_value_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=hf_config.max_position_embeddings,
        d_vocab=hf_config.vocab_size,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        eps=hf_config.rms_norm_eps,
        positional_embedding_type="rotary",
        rotary_dim=head_dim,
        rotary_base=rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)),
        final_rms=True,
        original_architecture="MistralForCausalLM",
        default_prepend_bos=False,
        device=str(device),
        dtype=torch.float32,
    )


def load_hooked_model(path: str | Path, device: str | torch.device = "cpu") -> HookedTransformer:
    """A saved lineage model (Hugging Face folder) as a HookedTransformer on `device`."""
    hf_model = load_model(path, "cpu")
    cfg = hooked_config(hf_model.config, device)
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_mistral_weights(hf_model, cfg), strict=False)
    return model.to(device, print_details=False).eval()
