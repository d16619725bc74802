"""The shared SAE: parameters, normalisation, decode, decoder constraint, SAELens-layout save and load.

Shapes (TransformerLens/SAELens names): x [batch, d_in], f [batch, d_sae],
W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in].

Forward (Bricken et al. 2023, as Horn & Elliott use it), with an optional input scale s:
    x_n = (x − data_mean) · s;  f = act((x_n − b_dec) W_enc + b_enc);  x̂ = (f W_dec + b_dec) / s + data_mean
`data_mean` is a fixed buffer (the mean of the training activations, the paper's centring); `input_scale`
s is a fixed scalar buffer, √d_in / E‖x − data_mean‖ when a recipe normalises activations (SAELens's
`expected_average_only_in`), so that a sparsity coefficient means the same for every model. Training and
its losses work in the normalised space x_n.

Saved for SAELens, both are folded into the weights — W_enc·s, W_dec/s, b_dec/s + data_mean — which is
the same function, since SAELens computes f = act((x − b_dec) W_enc + b_enc) and x̂ = f W_dec + b_dec.
The feature activations f are unchanged by the folding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from featureflow_dagster.hooks import MLP_POST

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


@dataclass(frozen=True)
class SAEConfig:
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None  # topk / batchtopk: active features per token
    hook_name: str = MLP_POST
    context_size: int = 24
    model_name: str = ""


class SAE(nn.Module):
    architecture = "base"
    saelens_architecture = "standard"
    # Decoder rows at unit norm (projected gradient + renormalisation every step, Bricken et al. 2023).
    # A subclass that lets decoder norms move (and weights its penalty by them) sets this False.
    unit_norm_decoder = True

    def __init__(self, cfg: SAEConfig, seed: int = 0, decoder_init_norm: float = 1.0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * decoder_init_norm
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())  # tied initialisation (Conerly et al. 2024)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("data_mean", torch.zeros(cfg.d_in))
        self.register_buffer("input_scale", torch.ones(()))

    # -- the function ------------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, d_in] raw activations -> x_n = (x − data_mean) · s, the space training works in."""
        return (x - self.data_mean) * self.input_scale

    def pre_activations_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        """[batch, d_in] -> [batch, d_sae]: (x_n − b_dec) W_enc + b_enc.

        Written as x_n W_enc + (b_enc − b_dec W_enc): the same number, but b_dec's gradient then costs
        a vector-matrix product instead of a [batch, d_sae] x [d_sae, d_in] matrix product."""
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, xn, self.W_enc)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activations_normalized(self.normalize(x))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations f [batch, d_sae] of raw activations x [batch, d_in]."""
        return self.activate(self.pre_activations(x))

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the normalised space, [batch, d_sae] -> [batch, d_in]."""
        return f @ self.W_dec + self.b_dec

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction x̂ [batch, d_in] of features f [batch, d_sae], in raw units."""
        return self.decode_normalized(f) / self.input_scale + self.data_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # -- training objective (normalised space) ------------------------------------------------

    def training_losses(self, xn: torch.Tensor, dead: torch.Tensor | None = None,
                        sparsity_scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's losses on normalised activations x_n [batch, d_in].

        Returns (f [batch, d_sae], losses): `mse` (mean over elements of (x̂_n − x_n)²), the
        architecture's sparsity or auxiliary terms, and their sum `loss`. `dead` [d_sae] marks features
        unfired for the trainer's dead window (for AuxK); `sparsity_scale` in [0, 1] is the warm-up
        factor of a sparsity penalty."""
        pre = self.pre_activations_normalized(xn)
        f = self.activate(pre)
        xn_hat = self.decode_normalized(f)
        mse = ((xn_hat - xn) ** 2).mean()
        out = {"mse": mse}
        out["loss"] = mse + self.sparsity_loss(out, xn, pre, f, xn_hat, dead, sparsity_scale)
        return f, out

    def sparsity_loss(self, out: dict, xn, pre, f, xn_hat, dead, sparsity_scale) -> torch.Tensor | float:
        """Terms beyond the MSE (none here); subclasses record their parts in `out`."""
        return 0.0

    # -- the decoder constraint (Bricken et al. 2023) ---------------------------------------

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the component of each decoder row's gradient along the row (rows are features)."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.unit_norm_decoder:
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
            "normalize_activations": "none",  # the input scale is folded into the weights
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
        """Weights of the same function on raw activations: scale and data mean folded in."""
        s = self.input_scale
        return {
            "W_enc": (self.W_enc * s).detach().cpu().contiguous(),
            "b_enc": self.b_enc.detach().cpu().contiguous(),
            "W_dec": (self.W_dec / s).detach().cpu().contiguous(),
            "b_dec": (self.b_dec / s + self.data_mean).detach().cpu().contiguous(),
        }

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Architecture-specific tensors beyond W_enc, b_enc, W_dec, b_dec (none by default)."""

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.saelens_state(), str(folder / WEIGHTS_FILE))
        (folder / CFG_FILE).write_text(json.dumps(self.saelens_config(), indent=2))


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """An SAE saved by `SAE.save`, in inference mode (featureflow's section of cfg.json names the class).

    Scale and data mean are folded into the saved weights, so the loaded module has data_mean 0 and
    input_scale 1 and its decoder rows have norm 1/s: the same function and the same features."""
    from featureflow_dagster.sae import SAE_REGISTRY

    folder = Path(folder)
    raw = json.loads((folder / CFG_FILE).read_text())
    ours = raw.get("featureflow")
    if ours is None:
        raise ValueError(f"{folder} holds no featureflow SAE (cfg.json lacks the 'featureflow' section)")
    ours = {k: v for k, v in ours.items() if k != "extra"}  # an unused field that SAEs saved before 2026-12 carry
    cfg = SAEConfig(**ours)
    sae = SAE_REGISTRY[cfg.architecture](cfg)
    state = load_file(str(folder / WEIGHTS_FILE))
    with torch.no_grad():
        sae.W_enc.copy_(state["W_enc"])
        sae.b_enc.copy_(state["b_enc"])
        sae.W_dec.copy_(state["W_dec"])
        sae.b_dec.copy_(state["b_dec"])
        sae.load_extra_state(state)
    # Inference mode: a BatchTopK SAE in training mode would select per batch and move its threshold.
    return sae.to(device).eval()
