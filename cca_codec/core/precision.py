"""How the transforms g_a and g_s run: exact float32, fast float32, or bf16 on CPUs that compute it natively.

Only g_a (whose output the encoder rounds into symbols) and g_s (which only shapes pixels after
every symbol is decoded) have a choice; the entropy-parameter path always runs in float64 (see
docs/FORMAT.md, *Numeric determinism*), so the precision never changes which tables are chosen.

* ``fp32``: the exact path, float32 in contiguous (NCHW) layout; g_s without oneDNN on the CPU,
  whose NCHW float32 convolutions sum in an order that depends on the thread count. Decoded
  pixels are the same on every CPU we test (instruction sets, BLAS core types, thread counts).
* ``fp32-fast``: float32 with channels-last weights and activations through oneDNN: on a CPU
  without native bf16 (held to AVX2) g_s about 2.8x and g_a 1.5x faster than ``fp32``'s (docs/RESULTS.md,
  *Speed on a CPU without bf16*). oneDNN's channels-last kernels sum each
  output in an order fixed by the instruction set, not by the thread count: decoded pixels do not
  depend on the thread count, and differ from ``fp32``'s only where a float32 rounding difference
  crosses a grey level (a handful of pixels by one level; tested). CPU only.
* ``bf16``: bf16 autocast with channels-last weights and activations, so that oneDNN runs its
  AMX / AVX512-BF16 kernels (several times faster than float32 on such CPUs). The last layer of
  each transform stays in float32 (cca_codec.nn.blocks.at_least_float32), so y and the pixels
  are not rounded to bf16. Decoded pixels do not depend on the thread count either (tested).
* ``auto`` (the default): bf16 on a CPU with native bf16, fp32-fast on another CPU with oneDNN,
  fp32 elsewhere (CUDA included).

Training (cca_codec.training.train) chooses between bf16 autocast and float32 only:
TRAINING_PRECISIONS.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cca_codec.base.errors import UsageError

from .device import native_bf16

FAST, FAST_FP32, EXACT = "bf16", "fp32-fast", "fp32"
PRECISIONS = ("auto", FAST, FAST_FP32, EXACT)
TRAINING_PRECISIONS = ("auto", FAST, EXACT)
CHANNELS_LAST = (FAST, FAST_FP32)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a CPU with native bf16 support, fp32-fast on another CPU with oneDNN,
    else fp32; bf16 or fp32-fast where they do not apply is a usage error (bf16 would be slower
    than float32, or is untested on CUDA; fp32-fast is oneDNN's CPU path)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    onednn = device.type == "cpu" and torch.backends.mkldnn.is_available()
    native = onednn and native_bf16()
    if precision == "auto":
        return FAST if native else FAST_FP32 if onednn else EXACT
    if precision == FAST and not native:
        raise UsageError(f"--precision bf16 needs a CPU with native bf16 (AMX or AVX512-BF16); not available on {device.type}")
    if precision == FAST_FP32 and not onednn:
        raise UsageError(f"--precision fp32-fast runs on the CPU through oneDNN; not available on {device.type}")
    return precision


def layout_transforms(transforms: tuple[nn.Module, ...], precision: str) -> None:
    """Put the weights of the transforms in the memory layout `precision` runs them in
    (channels-last for bf16 and fp32-fast, contiguous for fp32; values are unchanged)."""
    fmt = torch.channels_last if precision in CHANNELS_LAST else torch.contiguous_format
    for module in transforms:
        module.to(memory_format=fmt)


@contextlib.contextmanager
def transform_context(precision: str, device: torch.device, *, synthesis: bool) -> Iterator[None]:
    """Run a transform (g_s when `synthesis`, else g_a) in `precision` on `device`."""
    if precision == FAST:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if precision != EXACT or not synthesis or device.type != "cpu":
        yield
        return
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def transform_input(x: torch.Tensor, precision: str) -> torch.Tensor:
    """`x` in the memory layout `precision` runs the transforms in."""
    return x.contiguous(memory_format=torch.channels_last) if precision in CHANNELS_LAST else x
