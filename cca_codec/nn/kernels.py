"""Convolutions for the CPU where torch's own kernel is slow: float64, and RGB output layers.

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

`transposed_conv2d_by_phases` runs a strided transposed conv as one conv of the input per output
phase, stacked, then interleaved: faster than torch's kernel for few output channels (any dtype).

`conv2d`, `depthwise_conv2d` and `transposed_conv2d` dispatch between these and torch.
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


def _phase_offsets(kernel: int, stride: int, padding: int) -> list[list[tuple[int, int]]]:
    """For each output phase r (output index o = stride * a + r) of a transposed conv along one
    axis: the (kernel index t, input offset d) pairs with o = stride * (a + d) - padding + t, i.e.
    the kernel entries that land on output a of that phase from input a + d."""
    return [
        [(t, (r + padding - t) // stride) for t in range(kernel) if (t - r - padding) % stride == 0]
        for r in range(stride)
    ]


FEW_OUTPUT_CHANNELS = 4
"""Transposed convs with at most this many output channels run by phases (`transposed_conv2d`)."""


def transposed_conv2d_by_phases(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
    output_padding: tuple[int, int],
) -> Tensor:
    """Ungrouped, undilated transposed convolution as one ordinary convolution of the input and a
    pixel shuffle: x (B, Cin, H, W), weight (Cin, Cout, kh, kw) -> (B, Cout, (H-1)*sh - 2*ph + kh + oph, ...).

    Each of the sh*sw output phases is a stride-1 convolution of x with the kernel entries that
    land on it; stacked as sh*sw*Cout output channels (zeros where a phase has fewer entries) they
    are one `F.conv2d`, then interleaved (a pixel shuffle). The same products as
    `F.conv_transpose2d`, summed in another order; for few output channels (an RGB output layer)
    about 1.7x faster on the CPU than torch's transposed kernel, slower for wide ones.
    """
    cin, cout, kh, kw = weight.shape
    sh, sw = stride
    height, width = x.shape[-2:]
    out_h = (height - 1) * sh - 2 * padding[0] + kh + output_padding[0]
    out_w = (width - 1) * sw - 2 * padding[1] + kw + output_padding[1]
    rows, cols = _phase_offsets(kh, sh, padding[0]), _phase_offsets(kw, sw, padding[1])
    row_d = [d for phase in rows for _, d in phase]
    col_d = [d for phase in cols for _, d in phase]
    (r0, r1), (c0, c1) = (min(row_d), max(row_d)), (min(col_d), max(col_d))
    combined = weight.new_zeros(cout, sh, sw, cin, r1 - r0 + 1, c1 - c0 + 1)
    for rh, phase_rows in enumerate(rows):
        for rw, phase_cols in enumerate(cols):
            for th, dh in phase_rows:
                for tw, dw in phase_cols:
                    combined[:, rh, rw, :, dh - r0, dw - c0] = weight[:, :, th, tw].t()
    combined = combined.reshape(cout * sh * sw, cin, r1 - r0 + 1, c1 - c0 + 1)
    # output a of every phase reads input rows a + r0 .. a + r1: pad so that enough outputs exist
    per_phase_h, per_phase_w = -(-out_h // sh), -(-out_w // sw)
    left, right, top, bottom = -c0, per_phase_w - width + c1, -r0, per_phase_h - height + r1
    bias = None if bias is None else bias.repeat_interleave(sh * sw)
    if left == right >= 0 and top == bottom >= 0:  # the usual case: let the convolution pad (no copy)
        phases = F.conv2d(x, combined, bias, padding=(top, left))
    else:
        phases = F.conv2d(F.pad(x, (left, right, top, bottom)), combined, bias)
    batch = x.shape[0]
    # (B, Cout*sh*sw, A, B') -> (B, Cout, A, sh, B', sw) -> interleaved (B, Cout, A*sh, B'*sw)
    shuffled = phases.reshape(batch, cout, sh, sw, per_phase_h, per_phase_w).permute(0, 1, 4, 2, 5, 3)
    return shuffled.reshape(batch, cout, per_phase_h * sh, per_phase_w * sw)[..., :out_h, :out_w]


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], taps: Sequence[Tap] | None = None) -> Tensor:
    """Stride-1 ungrouped convolution: `conv2d_by_taps` where `runs_by_taps(x)`, else `F.conv2d`
    (`taps` then only documents which kernel entries are non-zero)."""
    if runs_by_taps(x):
        return conv2d_by_taps(x, weight, bias, padding, taps)
    return F.conv2d(x, weight, bias, padding=padding)


def transposed_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
    output_padding: tuple[int, int],
) -> Tensor:
    """Ungrouped, undilated transposed convolution: `transposed_conv2d_by_phases` for at most
    `FEW_OUTPUT_CHANNELS` outputs outside the float64 CPU path (where the phase convolution would
    fall back to im2col), else `F.conv_transpose2d`."""
    if weight.shape[1] <= FEW_OUTPUT_CHANNELS and not runs_by_taps(x):
        return transposed_conv2d_by_phases(x, weight, bias, stride, padding, output_padding)
    return F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding, output_padding=output_padding)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """Stride-1 depthwise convolution: `depthwise_conv2d_by_taps` where `runs_by_taps(x)`, else `F.conv2d`."""
    if runs_by_taps(x):
        return depthwise_conv2d_by_taps(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])
