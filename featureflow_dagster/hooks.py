"""Hook and component names, said once, in TransformerLens's spelling (`blocks.<layer>.<site>`).

Today every model featureflow trains has one block, so every name below is block 0's; `hook` spells
the same site at another layer.
"""

from __future__ import annotations


def hook(site: str, layer: int = 0) -> str:
    """`blocks.<layer>.<site>`, e.g. hook('mlp.hook_post') -> 'blocks.0.mlp.hook_post'."""
    return f"blocks.{layer}.{site}"


MLP_POST = hook("mlp.hook_post")  # act(gate(x)) * up(x): the MLP's hidden activations, where the SAEs read
RESID_PRE = hook("hook_resid_pre")  # the token embeddings in a one-block rotary model
RESID_MID = hook("hook_resid_mid")
RESID_POST = hook("hook_resid_post")
ATTN_OUT = hook("hook_attn_out")
MLP_OUT = hook("hook_mlp_out")
HEAD_Z = hook("attn.hook_z")  # per-head outputs before W_O [batch, pos, head, d_head]
HEAD_RESULT = hook("attn.hook_result")  # per-head contributions to the residual stream (z_h W_O_h)

# the patchable components other than heads, by the name reports use
COMPONENT_HOOKS = {"embed": RESID_PRE, "attn": ATTN_OUT, "mlp": MLP_OUT}
COMPONENT_KINDS = ("embed", "attn", "heads", "mlp")
