"""Published SAEs: a node's SAE loaded from a SAELens release (release name and SAE id, e.g. jbloom's Gemma-2B
residual SAEs, `gemma-2b-res-jb` / `blocks.6.hook_resid_post`) or a SAELens folder instead of being trained.
SAELens itself reads it (`SAE.from_pretrained`, `SAE.load_from_disk`); its weights become featureflow's SAE of
the same function, which then passes through the same evaluations, null comparison and bars as a trained one."""

from __future__ import annotations

import torch

from featureflow_dagster.sae import SAE_REGISTRY, SAEConfig
from featureflow_dagster.sae.base import SAE

# SAELens architecture -> featureflow's class of the same function
ARCHITECTURES = {"standard": "relu", "topk": "topk"}


class PublishedSAEError(ValueError):
    """A published SAE featureflow cannot use as it is (architecture, normalisation, hook or width)."""


def read_saelens(spec, device: str | torch.device = "cpu"):
    """The SAELens SAE of a `PublishedSAESpec`: its release and id through SAELens's directory, or its folder."""
    from sae_lens import SAE as LensSAE

    if spec.path is not None:
        return LensSAE.load_from_disk(str(spec.local_path()), device=str(device))
    return LensSAE.from_pretrained(spec.release, spec.sae_id, device=str(device))


def from_saelens(lens, model_name: str = "") -> SAE:
    """featureflow's SAE computing what the SAELens SAE `lens` computes on raw activations (encode and decode)."""
    cfg = lens.cfg
    arch = cfg.architecture() if callable(getattr(cfg, "architecture", None)) else cfg.architecture
    if arch not in ARCHITECTURES:
        raise PublishedSAEError(f"SAELens architecture '{arch}' has no featureflow counterpart yet (it reads {sorted(ARCHITECTURES)})")
    norm = getattr(cfg, "normalize_activations", "none")
    if norm not in (None, "none"):
        raise PublishedSAEError(f"the SAE normalises its input ('{norm}'), which featureflow cannot fold into the weights; "
                                "only normalize_activations 'none' is read")
    if getattr(cfg, "reshape_activations", "none") not in (None, "none"):
        raise PublishedSAEError(f"the SAE reshapes its input ('{cfg.reshape_activations}'); featureflow reads flat sites only")
    meta = cfg.metadata
    hook = meta.hook_name if hasattr(meta, "hook_name") else meta["hook_name"]
    context = (meta.context_size if hasattr(meta, "context_size") else meta.get("context_size")) or 128
    k = getattr(cfg, "k", None)
    ours = SAE_REGISTRY[ARCHITECTURES[arch]](SAEConfig(ARCHITECTURES[arch], cfg.d_in, cfg.d_sae, k=k, hook_name=hook,
                                                       context_size=int(context), model_name=model_name))
    state = {k: v.detach().float().cpu() for k, v in lens.state_dict().items()}
    w_enc, b_enc, w_dec, b_dec = state["W_enc"], state["b_enc"], state["W_dec"], state["b_dec"]
    if not getattr(cfg, "apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ w_enc  # featureflow subtracts b_dec before encoding: add it back into the bias
    with torch.no_grad():
        ours.W_enc.copy_(w_enc)
        ours.b_enc.copy_(b_enc)
        ours.W_dec.copy_(w_dec)
        ours.b_dec.copy_(b_dec)
    return ours.eval()


def load_published(spec, hook: str, d_in: int, model_name: str = "") -> SAE:
    """The published SAE of `spec`, refused unless it reads `hook` and is `d_in` wide (the lineage's site)."""
    sae = from_saelens(read_saelens(spec), model_name)
    if sae.cfg.hook_name != hook:
        raise PublishedSAEError(f"{spec.label} reads {sae.cfg.hook_name}; the lineage's hook is {hook}")
    if sae.cfg.d_in != d_in:
        raise PublishedSAEError(f"{spec.label} is {sae.cfg.d_in} wide; the activations at {hook} are {d_in}")
    return sae
