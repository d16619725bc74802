"""The compute device every compute asset uses; never a hard-coded 'cuda'."""

from __future__ import annotations

import dagster as dg
import torch
from pydantic import Field


class DeviceResource(dg.ConfigurableResource):
    """'auto' picks CUDA when available, else CPU; 'cuda' fails clearly on a machine without it."""

    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")

    def torch_device(self) -> torch.device:
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
