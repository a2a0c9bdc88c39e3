"""How the transforms g_a and g_s run: exact float32, or bf16 on CPUs that compute it natively.

Only g_a (whose output the encoder rounds into symbols) and g_s (which only shapes pixels after
every symbol is decoded) have a choice; the entropy-parameter path always runs in float64 (see
docs/FORMAT.md, *Numeric determinism*), so the precision never changes which tables are chosen.

* ``fp32``: the exact path, float32 in contiguous (NCHW) layout; g_s without oneDNN on the CPU,
  whose float32 convolutions sum in an order that depends on the thread count.
* ``bf16``: bf16 autocast with channels-last weights and activations, so that oneDNN runs its
  AMX / AVX512-BF16 kernels (several times faster than float32 on such CPUs). The last layer of
  each transform stays in float32 (cca_codec.nn.blocks.at_least_float32), so y and the pixels
  are not rounded to bf16. Decoded pixels do not depend on the thread count either (tested).
* ``auto`` (the default): bf16 on a CPU with native bf16, fp32 elsewhere (CUDA included).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cca_codec.base.errors import UsageError

PRECISIONS = ("auto", "bf16", "fp32")
FAST, EXACT = "bf16", "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a CPU with native bf16 support, else fp32; bf16 elsewhere is a usage
    error (it would be slower than float32, or untested on CUDA)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    native = device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision == "auto":
        return FAST if native else EXACT
    if precision == FAST and not native:
        raise UsageError(f"--precision bf16 needs a CPU with native bf16 (AMX or AVX512-BF16); not available on {device.type}")
    return precision


def layout_transforms(transforms: tuple[nn.Module, ...], precision: str) -> None:
    """Put the weights of the transforms in the memory layout `precision` runs them in
    (channels-last for bf16, contiguous for fp32; values are unchanged)."""
    fmt = torch.channels_last if precision == FAST else torch.contiguous_format
    for module in transforms:
        module.to(memory_format=fmt)


@contextlib.contextmanager
def transform_context(precision: str, device: torch.device, *, synthesis: bool) -> Iterator[None]:
    """Run a transform (g_s when `synthesis`, else g_a) in `precision` on `device`."""
    if precision == FAST:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = previous and not (synthesis and device.type == "cpu")
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def transform_input(x: torch.Tensor, precision: str) -> torch.Tensor:
    """`x` in the memory layout `precision` runs the transforms in."""
    return x.contiguous(memory_format=torch.channels_last) if precision == FAST else x
