"""The torch device a command runs on, from its --device option, and what the CPU offers the transforms."""
from __future__ import annotations

import os

import torch

from cca_codec.base.errors import UsageError
from cca_codec.base.runtime import cpu_info


def resolve_device(option: str = "auto", local_rank: int | None = None, *, any_device: bool = False) -> torch.device:
    """The device `option` names; 'auto' is the GPU when there is one, else the CPU.

    The coding commands' rule (the default): `option` is auto, cpu or cuda, and cuda needs a GPU
    (UsageError otherwise). `any_device` (the trainer's --device) takes any torch device string
    (`cuda:1`, ...) as it is. `local_rank` (under torchrun): a rank on the GPU takes cuda:LOCAL_RANK,
    and a --device naming another index is a UsageError.
    """
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    elif not any_device:
        if option not in ("cpu", "cuda"):
            raise UsageError(f"unknown device {option!r}; use auto, cpu or cuda")
        if option == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but no CUDA GPU is available")
    device = torch.device(option)
    if local_rank is not None and device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise UsageError(f"--device {option}: under torchrun every rank uses cuda:LOCAL_RANK; pass --device cuda")
        device = torch.device("cuda", local_rank)
    return device


def native_bf16() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AMX, AVX512-BF16; never above the
    ONEDNN_MAX_CPU_ISA limit): what makes bf16 transforms fast here."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "avx_vnni")
"""The instruction-set flags (/proc/cpuinfo names) that decide which kernels the transforms get."""


def cpu_features() -> dict:
    """What this CPU offers the transforms, and what the process lets them use: the CPU's model
    name and which of CPU_FLAGS it has (Linux; empty elsewhere), torch's CPU capability (its own
    kernels; ATEN_CPU_CAPABILITY lowers it), oneDNN's ISA limit (ONEDNN_MAX_CPU_ISA, unset: the
    CPU's best), and whether oneDNN computes bf16 natively (what `--precision auto` asks)."""
    info = cpu_info()
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or "unknown",
        "flags": [f for f in CPU_FLAGS if f in flags],
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa_limit": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
        "onednn": torch.backends.mkldnn.is_available(),
        "native_bf16": native_bf16(),
    }


def describe_cpu(features: dict) -> str:
    """One line for a report: 'AMD EPYC (avx2 fma avx512f avx512_bf16); torch kernels AVX2, oneDNN
    held to AVX2, no native bf16'."""
    limit = f"oneDNN held to {features['onednn_isa_limit']}" if features["onednn_isa_limit"] else "oneDNN unrestricted"
    bf16 = "native bf16" if features["native_bf16"] else "no native bf16"
    return f"{features['cpu']} ({' '.join(features['flags']) or 'no flags read'}); torch kernels {features['torch_capability']}, {limit}, {bf16}"
