"""The torch device a command runs on, from its --device option."""
from __future__ import annotations

import torch

from cca_codec.base.errors import UsageError


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
