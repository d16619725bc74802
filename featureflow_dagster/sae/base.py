"""The shared SAE: parameters, decode, decoder-norm constraint, SAELens-layout save and load.

Shapes (TransformerLens/SAELens names): x [batch, d_in], f [batch, d_sae],
W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in].

Forward (Bricken et al. 2023, as Horn & Elliott use it):
    x̄ = x − data_mean − b_dec;  f = act(x̄ W_enc + b_enc);  x̂ = f W_dec + b_dec + data_mean
`data_mean` is a fixed buffer (the mean of the training activations, the paper's centring).
Saved for SAELens, b_dec + data_mean is written as b_dec: the same function, since SAELens
computes f = act((x − b_dec) W_enc + b_enc) and x̂ = f W_dec + b_dec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


@dataclass(frozen=True)
class SAEConfig:
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None  # topk / batchtopk: active features per token
    hook_name: str = "blocks.0.mlp.hook_post"
    context_size: int = 24
    model_name: str = ""
    extra: dict = field(default_factory=dict)


class SAE(nn.Module):
    architecture = "base"
    saelens_architecture = "standard"

    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())  # tied initialisation (Conerly et al. 2024)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("data_mean", torch.zeros(cfg.d_in))

    # -- the function ------------------------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, d_in] -> [batch, d_sae]: (x − data_mean − b_dec) W_enc + b_enc.

        Written as (x − data_mean) W_enc + (b_enc − b_dec W_enc): the same number, but b_dec's
        gradient then costs a vector-matrix product instead of a [batch, d_sae] x [d_sae, d_in]
        matrix product (x itself needs no gradient)."""
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x - self.data_mean, self.W_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations f [batch, d_sae] of activations x [batch, d_in]."""
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction x̂ [batch, d_in] of features f [batch, d_sae]."""
        return f @ self.W_dec + self.b_dec + self.data_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction MSE, mean over elements; subclasses add their sparsity terms."""
        mse = ((x_hat - x) ** 2).mean()
        return {"loss": mse, "mse": mse}

    # -- the decoder constraint (Bricken et al. 2023) ---------------------------------------

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the component of each decoder row's gradient along the row (rows are features)."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8)

    # -- SAELens layout -----------------------------------------------------------------------

    def saelens_config(self) -> dict:
        cfg = {
            "architecture": self.saelens_architecture,
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {
                "hook_name": self.cfg.hook_name,
                "context_size": self.cfg.context_size,
                "model_name": self.cfg.model_name,
                "prepend_bos": False,
            },
            "featureflow": {**asdict(self.cfg), "architecture": self.architecture},
        }
        return cfg

    def saelens_state(self) -> dict[str, torch.Tensor]:
        return {
            "W_enc": self.W_enc.detach().cpu().contiguous(),
            "b_enc": self.b_enc.detach().cpu().contiguous(),
            "W_dec": self.W_dec.detach().cpu().contiguous(),
            "b_dec": (self.b_dec + self.data_mean).detach().cpu().contiguous(),
        }

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Architecture-specific tensors beyond W_enc, b_enc, W_dec, b_dec (none by default)."""

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.saelens_state(), str(folder / WEIGHTS_FILE))
        (folder / CFG_FILE).write_text(json.dumps(self.saelens_config(), indent=2))


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """An SAE saved by `SAE.save` (featureflow's own section of cfg.json names the class)."""
    from featureflow_dagster.sae import SAE_REGISTRY

    folder = Path(folder)
    raw = json.loads((folder / CFG_FILE).read_text())
    ours = raw.get("featureflow")
    if ours is None:
        raise ValueError(f"{folder} holds no featureflow SAE (cfg.json lacks the 'featureflow' section)")
    cfg = SAEConfig(**ours)
    sae = SAE_REGISTRY[cfg.architecture](cfg)
    state = load_file(str(folder / WEIGHTS_FILE))
    with torch.no_grad():
        sae.W_enc.copy_(state["W_enc"])
        sae.b_enc.copy_(state["b_enc"])
        sae.W_dec.copy_(state["W_dec"])
        sae.b_dec.copy_(state["b_dec"])  # data_mean stays zero: it is folded into b_dec on disk
        sae.load_extra_state(state)
    return sae.to(device)
