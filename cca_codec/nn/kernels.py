"""Float64 convolutions for the CPU, where torch has no fast kernel for them.

The codec runs the entropy-parameter path in float64 (docs/FORMAT.md, *Numeric determinism*).
oneDNN has no float64 convolutions, so torch's CPU fallback builds an im2col matrix (Cin*k*k rows,
one column per pixel) and multiplies it: for a 3x3 conv over 300+ channels at 32x48 that matrix
is 30-40 MB, far beyond the L2 cache, and building it (single-threaded at batch 1) costs more
than the product. Depthwise convolutions are worse: one im2col and product per channel.

The functions here compute the same sums without that matrix:

* `conv2d_by_taps`: one matrix product per kernel tap, each over a shifted view of the padded
  input flattened row by row (the view is a strided matrix BLAS reads in place).
* `depthwise_conv2d_by_taps`: one per-channel multiply-add per tap over shifted views.

They agree with `F.conv2d` to a few float64 ulp (the taps are summed in a different order).
`conv2d` and `depthwise_conv2d` dispatch: float64 on the CPU here, everything else to torch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Tap = tuple[int, int]


def runs_by_taps(x: Tensor) -> bool:
    """Whether `x` takes the by-taps kernels: float64 on the CPU."""
    return x.dtype == torch.float64 and x.device.type == "cpu"


def conv2d_by_taps(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], taps: Sequence[Tap] | None = None
) -> Tensor:
    """Stride-1, ungrouped, zero-padded 2-D convolution: x (B, Cin, H, W), weight (Cout, Cin, kh, kw)
    -> (B, Cout, H + 2*ph - kh + 1, W + 2*pw - kw + 1).

    `taps`: the (row, column) kernel positions to sum, None for all; the others are taken as zero
    (for a masked kernel such as the checkerboard context's).
    """
    batch, cin, height, width = x.shape
    cout, _, kh, kw = weight.shape
    ph, pw = padding
    out_h, out_w = height + 2 * ph - kh + 1, width + 2 * pw - kw + 1
    row = width + 2 * pw
    # with kw > 1, one extra zero row at the bottom keeps the last tap's view inside the buffer;
    # a 1x1 kernel reads x itself (no copy)
    extra = int(kw > 1)
    flat = (F.pad(x, (pw, pw, ph, ph + extra)) if pw or ph or extra else x).reshape(batch, cin, -1)
    span = out_h * row  # output computed on the padded row pitch; the last 2*pw columns are dropped
    per_tap = weight.permute(2, 3, 0, 1).contiguous()  # (kh, kw, Cout, Cin)
    chosen = [(i, j) for i in range(kh) for j in range(kw)] if taps is None else list(taps)
    out = x.new_empty(batch, cout, span)
    for b in range(batch):
        acc = out[b]
        if bias is None:
            acc.zero_()
        else:
            acc.copy_(bias[:, None].expand(cout, span))
        for i, j in chosen:
            start = i * row + j
            acc.addmm_(per_tap[i, j], flat[b, :, start : start + span])
    return out.view(batch, cout, out_h, row)[..., :out_w].contiguous()


def depthwise_conv2d_by_taps(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """Stride-1 depthwise 'same' convolution: x (B, C, H, W), weight (C, 1, kh, kw), padding
    (kh // 2, kw // 2) -> (B, C, H, W), as one per-channel multiply-add per tap."""
    _, channels, height, width = x.shape
    _, _, kh, kw = weight.shape
    ph, pw = padding
    padded = F.pad(x, (pw, pw, ph, ph))
    out = torch.zeros_like(x) if bias is None else bias.view(1, -1, 1, 1).expand_as(x).clone()
    for i in range(kh):
        for j in range(kw):
            out.addcmul_(padded[:, :, i : i + height, j : j + width], weight[:, 0, i, j].view(1, channels, 1, 1))
    return out


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], taps: Sequence[Tap] | None = None) -> Tensor:
    """Stride-1 ungrouped convolution: `conv2d_by_taps` where `runs_by_taps(x)`, else `F.conv2d`
    (`taps` then only documents which kernel entries are non-zero)."""
    if runs_by_taps(x):
        return conv2d_by_taps(x, weight, bias, padding, taps)
    return F.conv2d(x, weight, bias, padding=padding)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """Stride-1 depthwise convolution: `depthwise_conv2d_by_taps` where `runs_by_taps(x)`, else `F.conv2d`."""
    if runs_by_taps(x):
        return depthwise_conv2d_by_taps(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])
