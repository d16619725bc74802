"""Where things live inside a Hugging Face causal LM of any common family: one small adapter.

featureflow reads and replaces activations with plain PyTorch hooks on the Hugging Face model itself
(exact, and the forward stops at the hooked layer), so it needs to know, per architecture, which
module is a layer, its attention and output projection, its MLP and MLP output projection, the final
norm and the unembedding. It does not keep that table by hand: TransformerLens keeps one for every
family it bridges (`transformer_lens.model_bridge.supported_architectures`, the adapters behind
`TransformerBridge`), and `adapter_for` reads the module paths from TransformerLens's adapter for the
model's `architectures[0]`. The families featureflow tests are `SUPPORTED`; another architecture is
refused by name before any compute.

Hook names are TransformerLens's (`blocks.<L>.<site>`); the sites featureflow reads and patches:

  mlp.hook_post     the MLP's hidden activations: the input of its output projection
                    (down_proj / dense_4h_to_h / c_proj); width d_mlp
  hook_resid_post   the residual stream after layer L: the layer's output; width d_model
  hook_mlp_out      the MLP's output (after Gemma-2's post-feed-forward norm); width d_model
  hook_attn_out     the attention's output (after Gemma-2's post-attention norm); width d_model
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from featureflow_dagster.hooks import SITES, HookError, HookPoint, parse_hook  # noqa: F401 (re-exported)

# the families featureflow is tested on (tests/test_arch.py builds a tiny random model of each)
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Qwen2ForCausalLM",
             "GPTNeoXForCausalLM", "GPT2LMHeadModel")


class ArchitectureError(HookError):
    """A model featureflow cannot hook: an unsupported family, a layer beyond its depth, an unknown site."""


@dataclass(frozen=True)
class Adapter:
    """Module paths (dotted, from the model's root; block-relative ones from a layer) of one architecture."""

    architecture: str
    embed: str
    blocks: str
    attn: str
    attn_out_proj: str  # relative to attn
    mlp: str
    mlp_out_proj: str  # relative to mlp
    ln_final: str
    unembed: str
    post_attn_norm: str | None = None  # Gemma-2: the norm applied to the attention's output
    post_mlp_norm: str | None = None  # Gemma-2: the norm applied to the MLP's output

    def layers(self, model) -> torch.nn.ModuleList:
        return model.get_submodule(self.blocks)

    def module(self, model, hook: HookPoint) -> torch.nn.Module:
        """The module whose forward (pre-hook for mlp.hook_post, else output) is the hook point."""
        _check_depth(hook, len(self.layers(model)))
        block = self.layers(model)[hook.layer]
        if hook.site == "mlp.hook_post":
            return block.get_submodule(f"{self.mlp}.{self.mlp_out_proj}")
        if hook.site == "hook_resid_post":
            return block
        if hook.site == "hook_mlp_out":
            return block.get_submodule(self.post_mlp_norm or self.mlp)
        return block.get_submodule(self.post_attn_norm or self.attn)

    def mlp_out_weight(self, model, layer: int) -> torch.Tensor:
        """The MLP output projection of `layer` as [d_model, d_mlp] (nn.Linear's layout; GPT-2's Conv1D transposed)."""
        proj = self.layers(model)[layer].get_submodule(f"{self.mlp}.{self.mlp_out_proj}")
        w = proj.weight.detach()
        return w if isinstance(proj, torch.nn.Linear) else w.T

    def final_norm(self, model) -> torch.nn.Module:
        return model.get_submodule(self.ln_final)

    def unembed_weight(self, model) -> torch.Tensor:
        return model.get_submodule(self.unembed).weight.detach()


def architecture_of(config) -> str:
    """The architecture name of a model (its class) or of a Hugging Face config (`architectures[0]`)."""
    if isinstance(config, torch.nn.Module):
        return type(config).__name__
    names = getattr(config, "architectures", None) or []
    if not names:
        raise ArchitectureError(f"the model's config names no architecture (config.architectures is empty); "
                                f"featureflow supports {list(SUPPORTED)}")
    return names[0]


def adapter_for(config) -> Adapter:
    """The adapter of a Hugging Face model or config; ArchitectureError outside `SUPPORTED`."""
    return _adapter(architecture_of(config))


@lru_cache(maxsize=None)
def _adapter(architecture: str) -> Adapter:
    if architecture not in SUPPORTED:
        raise ArchitectureError(f"architecture '{architecture}' is not supported; featureflow supports {list(SUPPORTED)} "
                                "(decoder-only causal LMs whose module layout TransformerLens's adapters describe)")
    mapping = _transformer_lens_mapping(architecture)
    blocks = mapping["blocks"]
    subs = blocks.submodules
    attn, mlp = subs["attn"], subs["mlp"]
    return Adapter(
        architecture=architecture, embed=mapping["embed"].name, blocks=blocks.name, attn=attn.name,
        attn_out_proj=attn.submodules["o"].name, mlp=mlp.name, mlp_out_proj=mlp.submodules["out"].name,
        ln_final=mapping["ln_final"].name, unembed=mapping["unembed"].name,
        post_attn_norm=subs["ln1_post"].name if "ln1_post" in subs else None,
        post_mlp_norm=subs["ln2_post"].name if "ln2_post" in subs else None,
    )


def _transformer_lens_mapping(architecture: str) -> dict:
    """TransformerLens's component mapping for an architecture, from its adapter built on a minimal
    config (the module paths do not depend on sizes)."""
    import transformers
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge.sources.transformers import map_default_transformer_lens_config

    hf_config = transformers.AutoConfig.for_model(_MODEL_TYPES[architecture])
    hf_config.architectures = [architecture]
    cfg = TransformerBridgeConfig.from_dict(dict(map_default_transformer_lens_config(hf_config).__dict__))
    cfg.architecture = architecture
    return ArchitectureAdapterFactory.select_architecture_adapter(cfg).component_mapping


_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "GemmaForCausalLM": "gemma",
                "Gemma2ForCausalLM": "gemma2", "Qwen2ForCausalLM": "qwen2", "GPTNeoXForCausalLM": "gpt_neox",
                "GPT2LMHeadModel": "gpt2"}


def config_dims(config) -> dict[str, int]:
    """d_model, d_mlp, n_layers, n_heads, d_vocab, n_ctx of a Hugging Face config (or its config.json as a
    dict), in TransformerLens's names (GPT-2's n_embd / n_inner / n_layer / n_head included)."""
    def get(*names, default=None):
        for n in names:
            v = config.get(n) if isinstance(config, dict) else getattr(config, n, None)
            if v is not None:
                return v
        return default

    d_model = get("hidden_size", "n_embd")
    return {"d_model": d_model, "d_mlp": get("intermediate_size", "n_inner", default=4 * d_model),
            "n_layers": get("num_hidden_layers", "n_layer"), "n_heads": get("num_attention_heads", "n_head"),
            "d_vocab": get("vocab_size"), "n_ctx": get("max_position_embeddings", "n_positions")}


def _check_depth(hook: HookPoint, n_layers: int) -> None:
    if not 0 <= hook.layer < n_layers:
        raise ArchitectureError(f"hook '{hook.name}': layer {hook.layer} is beyond the model's depth "
                                f"({n_layers} layers, 0..{n_layers - 1})")


def check_hook(config, hook_name: str) -> HookPoint:
    """The hook point of `hook_name` in a model of this config: ArchitectureError for an unknown site,
    a layer beyond the model's depth or an unsupported architecture."""
    hook = parse_hook(hook_name)
    adapter_for(config)
    _check_depth(hook, config_dims(config)["n_layers"])
    return hook
