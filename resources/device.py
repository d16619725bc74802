"""The compute device every compute asset uses; never a hard-coded 'cuda'."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    import torch


class DeviceResource(dg.ConfigurableResource):
    """'auto' picks CUDA when available, else CPU; 'cuda' fails clearly on a machine without it."""

    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    tf32: bool = Field(default=True, description="On CUDA, float32 matrix products in TF32 (10-bit mantissa, float32 "
                       "range): SAE training at 4,096 x 65,536 ran 2.1x faster on an H200 (bench/gpu_scale.py). "
                       "False: IEEE float32 (FEATUREFLOW_TF32=0). No effect on a CPU.")

    def torch_device(self) -> torch.device:
        import torch  # here, not at the top: building the definitions (featureflow status) needs no torch

        dev = self._resolve()
        if dev.type == "cuda":
            # the per-backend setting (torch >= 2.9), never the legacy global one: mixing the two is an error
            torch.backends.cuda.matmul.fp32_precision = "tf32" if self.tf32 else "ieee"
        return dev

    def _resolve(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device '{self.device}' was asked for but torch sees no CUDA device "
                f"(torch {torch.__version__}); use device 'cpu' or 'auto' (FEATUREFLOW_DEVICE)"
            )
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"unknown device '{self.device}'; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return torch.device(self.device)
