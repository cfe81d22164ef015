"""Which device and precision a run uses (rnnlm.device): 'auto' always gives a device that
works, a device that is not there or an unknown name is one line that says what to use;
precision auto is bf16 only where the device computes it natively, bf16 on a CPU without
it runs with a warning, fp16 needs CUDA; the autocast contexts cast as chosen."""

import contextlib
import warnings

import pytest
import torch

import rnnlm.device
from rnnlm.device import autocast_context, choose_precision, resolve_device
from rnnlm.errors import RnnlmError


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_auto_gives_a_device_that_works():
    device = resolve_device("auto")
    assert device.type in ("cuda", "mps", "cpu")
    assert (torch.ones(3, device=device) * 2).sum().item() == 6.0
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_without_cuda_or_mps_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_says_to_use_auto_or_cpu(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RnnlmError) as e:
        resolve_device(name)
    assert one_line(e) == f"device {name} asked for, but CUDA is not available here; use auto or cpu"


def test_mps_without_mps_says_to_use_auto_or_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RnnlmError) as e:
        resolve_device("mps")
    assert one_line(e) == "device mps asked for, but MPS is not available here; use auto or cpu"


@pytest.mark.parametrize("name", ["tpu9", "gpu", ""])
def test_an_unknown_device_name_lists_the_valid_ones(name):
    with pytest.raises(RnnlmError) as e:
        resolve_device(name)
    assert one_line(e) == f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps"


def test_fp32_autocast_is_a_factory_of_null_contexts():
    factory = autocast_context(torch.device("cpu"), "fp32")
    assert factory is contextlib.nullcontext
    with factory() as entered, factory():  # a new context each call: the training loop enters one per step
        assert entered is None


def test_bf16_autocast_on_the_cpu_runs_matmuls_in_bf16():
    factory = autocast_context(torch.device("cpu"), "bf16")
    a = torch.ones(4, 4)
    with factory():
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32


CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.mark.parametrize("device", [CPU, CUDA, MPS], ids=str)
def test_fp32_is_fp32_everywhere(device):
    assert choose_precision(device, "fp32") == ("fp32", "as configured")


@pytest.mark.parametrize("native, expected", [
    ("amx_bf16", ("bf16", "auto: the CPU has amx_bf16")),
    ("avx512_bf16", ("bf16", "auto: the CPU has avx512_bf16")),
    (None, ("fp32", "auto: the CPU has no native bf16")),
])
def test_auto_on_the_cpu_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(rnnlm.device, "native_cpu_bf16", lambda: native)
    assert choose_precision(CPU, "auto") == expected


def test_bf16_on_a_cpu_without_native_bf16_runs_with_a_warning(monkeypatch):
    monkeypatch.setattr(rnnlm.device, "native_cpu_bf16", lambda: None)
    with pytest.warns(UserWarning, match="runs slower than fp32; use train.precision=auto or fp32"):
        assert choose_precision(CPU, "bf16") == ("bf16", "as configured")
    monkeypatch.setattr(rnnlm.device, "native_cpu_bf16", lambda: "amx_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # where it is native: no warning
        assert choose_precision(CPU, "bf16") == ("bf16", "as configured")


def test_native_cpu_bf16_names_an_instruction_set_or_none():
    assert rnnlm.device.native_cpu_bf16() in ("amx_bf16", "avx512_bf16", None)


@pytest.mark.parametrize("device", [CPU, MPS], ids=str)
def test_fp16_off_cuda_is_refused_in_one_line(device):
    with pytest.raises(RnnlmError) as e:
        choose_precision(device, "fp16")
    assert one_line(e) == f"train.precision=fp16 needs a CUDA device (got {device.type}); use bf16 or fp32"


def test_mps_has_no_mixed_precision():
    assert choose_precision(MPS, "auto") == ("fp32", "auto: no mixed precision on mps")
    with pytest.raises(RnnlmError) as e:
        choose_precision(MPS, "bf16")
    assert one_line(e) == "train.precision=bf16 is not supported on mps; use fp32"


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cuda_precision_follows_the_gpus_bf16_support(monkeypatch, has_bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: has_bf16)
    assert choose_precision(CUDA, "auto") == (("bf16", "auto: the GPU computes bf16") if has_bf16
                                              else ("fp32", "auto: the GPU has no bf16"))
    assert choose_precision(CUDA, "fp16") == ("fp16", "as configured")
    if has_bf16:
        assert choose_precision(CUDA, "bf16") == ("bf16", "as configured")
    else:
        with pytest.raises(RnnlmError) as e:
            choose_precision(CUDA, "bf16")
        assert one_line(e) == "train.precision=bf16 is not supported by this GPU; use fp16 or fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_mixed_precision_on_cuda_autocasts_matmuls(precision, dtype):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    factory = autocast_context(CUDA, precision)
    a = torch.ones(4, 4, device="cuda")
    with factory():
        assert (a @ a).dtype == dtype
    assert (a @ a).dtype == torch.float32
