"""Which device and precision a run uses."""

from __future__ import annotations

import contextlib

import torch

from rnnlm.errors import RnnlmError


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RnnlmError(f"device {name} asked for, but CUDA is not available here; use auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RnnlmError("device mps asked for, but MPS is not available here; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RnnlmError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None


def autocast_context(device: torch.device, precision: str):
    """A zero-argument factory of autocast contexts (nullcontext for fp32 or off CUDA)."""
    if precision == "fp32":
        return contextlib.nullcontext
    if device.type != "cuda":
        raise RnnlmError(f"train.precision={precision} needs a CUDA device (got {device.type}); "
                         "use train.precision=fp32")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise RnnlmError("train.precision=bf16 is not supported by this GPU; use fp16 or fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type="cuda", dtype=dtype)
