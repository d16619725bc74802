"""The device resource never hard-codes CUDA and fails clearly where it is missing."""

import pytest
import torch

from featureflow_dagster.resources import DeviceResource


def test_cpu_and_auto():
    assert DeviceResource(device="cpu").torch_device() == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert DeviceResource(device="auto").torch_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        DeviceResource(device="cuda").torch_device()


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        DeviceResource(device="tpu").torch_device()
