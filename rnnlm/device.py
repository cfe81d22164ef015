"""Which device and precision a run uses."""

from __future__ import annotations

import contextlib
import warnings

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


def native_cpu_bf16() -> str | None:
    """The CPU's native bf16 matrix instructions ('amx_bf16' or 'avx512_bf16'), or None."""
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.7
    if get is not None:
        caps = get()
        return next((name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)), None)
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return "avx512_bf16" if check is not None and check() else None


def choose_precision(device: torch.device, requested: str) -> tuple[str, str]:
    """(precision, why) for train.precision on `device`.

    auto is bf16 where the device multiplies bf16 matrices natively (a CUDA GPU with
    bf16, a CPU with AMX or AVX-512 BF16: several times its fp32 rate), else fp32. bf16
    on a CPU without them is allowed, with a warning: it runs, slower than fp32. fp16
    needs CUDA (its gradient scaler is CUDA's).
    """
    if requested == "fp32":
        return "fp32", "as configured"
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return ("bf16", "auto: the GPU computes bf16") if bf16 else ("fp32", "auto: the GPU has no bf16")
        if requested == "bf16" and not bf16:
            raise RnnlmError("train.precision=bf16 is not supported by this GPU; use fp16 or fp32")
        return requested, "as configured"
    if requested == "fp16":
        raise RnnlmError(f"train.precision=fp16 needs a CUDA device (got {device.type}); use bf16 or fp32")
    if device.type != "cpu":
        if requested == "bf16":
            raise RnnlmError(f"train.precision=bf16 is not supported on {device.type}; use fp32")
        return "fp32", f"auto: no mixed precision on {device.type}"
    native = native_cpu_bf16()
    if requested == "auto":
        return ("bf16", f"auto: the CPU has {native}") if native else ("fp32", "auto: the CPU has no native bf16")
    if not native:
        warnings.warn("train.precision=bf16 on a CPU without native bf16 (AMX or AVX-512 BF16) runs slower "
                      "than fp32; use train.precision=auto or fp32", stacklevel=2)
    return "bf16", "as configured"


def autocast_context(device: torch.device, precision: str):
    """A zero-argument factory of autocast contexts for a precision from `choose_precision`
    (nullcontext for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
