"""Building blocks of the CCA network (Han et al. 2024), after NAFNet (Chen et al. 2022).

All blocks take and return NCHW tensors; channel counts are given per block, spatial size is
kept unless a stride says otherwise.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels

_SKIP_INIT: ContextVar[bool] = ContextVar("skip_parameter_init", default=False)


@contextlib.contextmanager
def weights_loaded_later() -> Iterator[None]:
    """Build the convolutions of this module without their random initialisation, for a network
    whose every parameter a checkpoint overwrites next (a strict `load_state_dict`): about 60 ms of
    a 0.17 s model load. Per thread (a context variable); outside it nothing changes."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


class _InitUnlessLoaded:
    """Mixin for torch's conv modules: `reset_parameters` does nothing inside `weights_loaded_later`."""

    def reset_parameters(self) -> None:
        if not _SKIP_INIT.get():
            super().reset_parameters()  # type: ignore[misc]


def conv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """Conv2d with 'same' padding (k//2): output size = ceil(input / stride)."""
    return Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)


class Conv2d(_InitUnlessLoaded, nn.Conv2d):
    """nn.Conv2d (same parameters, same state dict) whose stride-1 instances go through
    `kernels.conv2d`: the by-taps kernel in float64 on the CPU, torch's convolution otherwise."""

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != (1, 1) or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            return super().forward(x)
        return kernels.conv2d(x, self.weight, self.bias, self.padding)


class DepthwiseConv2d(Conv2d):
    """Depthwise 'same' convolution (groups = channels) through `kernels.depthwise_conv2d`."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.depthwise_conv2d(x, self.weight, self.bias, self.padding)


def at_least_float32(layer: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Run `layer` outside autocast on `x` promoted to at least float32 (float64 stays float64).

    The last layer of a transform or a parameter head runs so: under bf16 autocast (training,
    or coding with bf16 transforms) its outputs (y, pixels, means, scales) are otherwise rounded
    to bf16's 8 significant bits, coarser than the integer grid they are quantised on."""
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.to(torch.promote_types(x.dtype, torch.float32)))


def deconv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """ConvTranspose2d that multiplies the spatial size by exactly `stride`."""
    return TransposedConv2d(
        in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, output_padding=stride - 1
    )


class TransposedConv2d(_InitUnlessLoaded, nn.ConvTranspose2d):
    """ConvTranspose2d that runs a stride-1 instance as the equivalent convolution (kernel
    flipped in space, in/out channels swapped, padding k - 1 - p) through `kernels.conv2d`: the
    same sums, and in float64 on the CPU (the hyper-synthesis when coding) 2-4x faster than
    torch's transposed kernel. Strided instances go through `kernels.transposed_conv2d` (by
    phases for an RGB output layer)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or self.groups != 1 or self.dilation != (1, 1):
            return super().forward(x, output_size)
        if self.stride != (1, 1):
            return kernels.transposed_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)
        padding = tuple(k - 1 - p for k, p in zip(self.kernel_size, self.padding))
        return kernels.conv2d(x, self.weight.transpose(0, 1).flip(2, 3), self.bias, padding)


class ResidualBottleneckBlock(nn.Module):
    """1x1 C->C/2, ReLU, 3x3 C/2->C/2, ReLU, 1x1 C/2->C, plus identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = channels // 2
        self.conv1 = conv(channels, mid, 1, 1)
        self.conv2 = conv(mid, mid, 3, 1)
        self.conv3 = conv(mid, channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.conv1(x))
        out = torch.relu(self.conv2(out))
        return x + self.conv3(out)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of each pixel (biased variance, eps 1e-6, affine)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> same shape, dtype and memory layout.

        One fused `layer_norm` over the channel axis of the NHWC view: about 5x faster (forward
        plus backward) than the mean / variance / sqrt chain it replaces, and equal to it within
        a few ulp. It runs in the input's dtype, autocast or not (the kernel accumulates bf16 in
        float32): autocast would otherwise widen a bf16 NAF-block's whole residual stream to
        float32, twice the memory traffic of every elementwise op around it."""
        nhwc = x.permute(0, 2, 3, 1)
        with torch.autocast(x.device.type, enabled=False):
            out = F.layer_norm(nhwc, (x.shape[1],), self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        out = out.permute(0, 3, 1, 2)
        # keep the input's layout: the NCHW float32/float64 coding paths are slower on channels_last
        return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them: 2C -> C."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """NAFNet block without dropout: gated depthwise mixing with simplified channel attention,
    then a gated feed-forward part, each on a LayerNorm'd input with a learned per-channel
    residual scale (`beta`, `gamma`, initialised to zero so a new block starts as identity).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        c, c2 = channels, 2 * channels
        self.norm1 = LayerNorm2d(c)
        self.dwconv = nn.Sequential(conv(c, c2, 1, 1), DepthwiseConv2d(c2))
        self.sg = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv(c, c, 1, 1))
        self.conv1 = conv(c, c, 1, 1)
        self.norm2 = LayerNorm2d(c)
        self.ffn = nn.Sequential(conv(c, c2, 1, 1), SimpleGate(), conv(c, c, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.sg(self.dwconv(self.norm1(x)))
        h = self.conv1(h * self._attention(h))
        # x + h * beta in one pass over the tensors (addcmul), as is y + ffn * gamma
        y = torch.addcmul(x, h, self.beta.to(h.dtype))
        return torch.addcmul(y, self.ffn(self.norm2(y)), self.gamma.to(y.dtype))

    def _attention(self, h: Tensor) -> Tensor:
        """Simplified channel attention (global average pool, 1x1 conv): (B, C, 1, 1), in h's dtype.

        The pool sums each row in at least float32, then the rows in float64, and the 1x1 conv
        runs in float64 (outside autocast): a single reduction over the whole plane, or the pooled
        matrix-vector product, sums in an order that depends on the CPU thread count, and the
        decoder's pixels must not. (Widening all of h to float64 first costs 4x the traffic.)
        """
        conv = self.sca[1]
        with torch.autocast(h.device.type, enabled=False):
            # (B, H, C) row sums: reduced over W on the NHWC view, fast in either memory layout
            rows = h.permute(0, 2, 3, 1).sum(2, dtype=torch.promote_types(h.dtype, torch.float32))
            pooled = (rows.double().sum(1) / (h.shape[2] * h.shape[3]))[:, :, None, None]
            weights = F.conv2d(pooled, conv.weight.double(), conv.bias.double())
        return weights.to(h.dtype)


class NAFStack(nn.Module):
    """1x1 Cin->E, `depth` NAF-blocks of width E plus a skip around them, 1x1 E->Cout."""

    def __init__(self, in_ch: int, width: int, depth: int, out_ch: int) -> None:
        super().__init__()
        self.in_conv = conv(in_ch, width, 1, 1)
        self.blocks = nn.Sequential(*[NAFBlock(width) for _ in range(depth)])
        self.out_conv = conv(width, out_ch, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_conv(self.inner(x))

    def inner(self, x: Tensor) -> Tensor:
        """The features before `out_conv`: (B, E, H, W)."""
        h = self.in_conv(x)
        return self.blocks(h) + h
