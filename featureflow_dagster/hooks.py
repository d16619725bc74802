"""Hook and component names, said once, in TransformerLens's spelling (`blocks.<layer>.<site>`).

The constants below are block 0's (the paper's models have one block); `hook` spells a site at another
layer and `parse_hook` reads a lineage's `hook:` back (torch-free, so reading a lineage needs no torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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


# the sites featureflow reads, replaces and writes stores of (`arch.Adapter.module` says where each is, per family)
SITES = ("mlp.hook_post", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class HookError(ValueError):
    """A hook name featureflow does not read."""


@dataclass(frozen=True)
class HookPoint:
    layer: int
    site: str

    @property
    def name(self) -> str:
        return hook(self.site, self.layer)

    @property
    def width(self) -> str:
        """The config dimension the activations have: 'd_mlp' or 'd_model'."""
        return "d_mlp" if self.site == "mlp.hook_post" else "d_model"


def parse_hook(name: str) -> HookPoint:
    """`blocks.<L>.<site>` with a site of `SITES`, else HookError saying what is accepted."""
    m = _HOOK.match(name)
    if not m or m.group(2) not in SITES:
        raise HookError(f"hook '{name}' is not one featureflow reads; use blocks.<layer>.<site> with a site of {list(SITES)}")
    return HookPoint(int(m.group(1)), m.group(2))
