"""The channel-wise (and optionally checkerboard) context model that computes the entropy
parameters of y slice by slice.

One module serves training, encoding and decoding: `stack_features`, `head_inputs`, `parameters`
and `refine` are the only places where means, scales and LRP corrections are computed. The codec calls them
step by step (in float64, with the stacks' output convs folded into the convs that read them:
`fold`); `forward_train` chains them with STE rounding for training.

Shapes: y and its slices are (B, C, h, w) at 1/16 of the image size; `latent_means` and
`latent_scales` come from the hyper-synthesis nets with M channels at the same size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from . import kernels
from .blocks import Conv2d, NAFStack, at_least_float32, conv
from .config import ModelConfig

if TYPE_CHECKING:
    from compressai.entropy_models import GaussianConditional

SPATIAL_KERNEL = 5

Likelihood = Callable[[Tensor, Tensor, Tensor], Tensor]


LIKELIHOOD_FLOOR = 1e-9
"""Likelihoods are floored here before -log2 (the rate of an escape is finite)."""


def bits(likelihoods: Tensor) -> Tensor:
    """-log2 of the likelihoods (floored at 1e-9), summed per sample: (B, ...) -> (B,)."""
    return -torch.log2(likelihoods.float().clamp_min(LIKELIHOOD_FLOOR)).flatten(1).sum(1)


def gaussian_likelihood(conditional: GaussianConditional, y: Tensor, scale: Tensor, mu: Tensor) -> Tensor:
    """Rate-term likelihoods of y (additive noise in training mode), always in float32 and outside
    autocast: bf16 probabilities would misstate the rate by several percent."""
    with torch.autocast(y.device.type, enabled=False):
        return conditional(y.float(), scale.float(), means=mu.float())[1]


def anchor_mask(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Checkerboard anchors: bool (1, 1, height, width), True where (row + col) is even."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return ((rows + cols) % 2 == 0)[None, None]


def parameter_head(in_ch: int, widths: tuple[int, int], out_ch: int) -> nn.Sequential:
    """conv3 in->w0, GELU, conv3 w0->w1, GELU, conv3 w1->out (module indices 0, 2, 4)."""
    w0, w1 = widths
    return nn.Sequential(
        conv(in_ch, w0, 3, 1), nn.GELU(), conv(w0, w1, 3, 1), nn.GELU(), conv(w1, out_ch, 3, 1)
    )


class CheckerboardContext(nn.Module):
    """5x5 conv over the *anchor* positions of one slice (ELIC-style spatial context).

    Input: the slice's reconstructed values (B, C, h, w); non-anchor positions are zeroed and the
    kernel taps that could land on a non-anchor are masked, so the output at a non-anchor depends
    on anchors only (never on itself or on another non-anchor). Output: (B, 2*W0, h, w), the
    contributions added to the first hidden layer of the mean head and of the scale head.
    Meaningful at non-anchor positions only. Only the 12 unmasked taps are summed where
    `kernels.conv2d` runs by taps (float64 coding on the CPU).
    """

    TAPS = tuple((i, j) for i in range(SPATIAL_KERNEL) for j in range(SPATIAL_KERNEL) if (i + j) % 2 == 1)
    """Kernel positions at odd offsets from the centre: the ones that land on anchors."""

    def __init__(self, channels: int, head_width: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, 2 * head_width, SPATIAL_KERNEL, padding=SPATIAL_KERNEL // 2)
        mask = torch.zeros(SPATIAL_KERNEL, SPATIAL_KERNEL)
        mask[tuple(zip(*self.TAPS))] = 1.0
        self.register_buffer("kernel_mask", mask[None, None], persistent=False)

    def forward(self, y_hat_slice: Tensor) -> Tensor:
        anchors = anchor_mask(*y_hat_slice.shape[-2:], device=y_hat_slice.device)
        x = y_hat_slice * anchors.to(y_hat_slice.dtype)
        weight = self.conv.weight * self.kernel_mask.to(self.conv.weight.dtype)
        return kernels.conv2d(x, weight, self.conv.bias, self.conv.padding, self.TAPS)


class FoldedConv:
    """A stride-1 conv Q that reads a 1x1 conv P's output in its first channels, folded into one
    conv over P's input: Q(cat[P(u), v]) = conv(cat[u, v], W) + B, where W holds Q's taps times P's
    weights (and Q's taps for v unchanged) and B is Q's bias plus P's bias carried through the
    taps that land inside the image (a bias map: at the borders fewer taps do). The same function
    as the two convs, with far fewer products when P widens (64 -> 300 channels, say); float64
    rounding differs by a few ulp.
    """

    def __init__(self, inner: nn.Conv2d, outer: nn.Conv2d) -> None:
        with torch.no_grad():
            p_weight = inner.weight[:, :, 0, 0]  # (C, E)
            q_weight = outer.weight  # (O, C + extra, k, k)
            c = p_weight.shape[0]
            folded = torch.einsum("ocij,ce->oeij", q_weight[:, :c], p_weight)
            self.weight = torch.cat([folded, q_weight[:, c:]], dim=1).contiguous()
            p_bias = inner.bias if inner.bias is not None else q_weight.new_zeros(c)
            # (O, 1, k, k): what P's bias adds through each tap
            self.edge_kernel = torch.einsum("ocij,c->oij", q_weight[:, :c], p_bias)[:, None].contiguous()
            self.bias = outer.bias
        self.padding = outer.padding
        self._bias_maps: dict[tuple[int, int], Tensor] = {}

    def bias_map(self, height: int, width: int) -> Tensor:
        """B for an (height, width) input: (1, O, height, width), computed once per size (every
        step of a tile has the same size; 0.36 ms each at 32x48)."""
        cached = self._bias_maps.get((height, width))
        if cached is None:
            inside = self.weight.new_ones(1, 1, height, width)
            cached = self._bias_maps[height, width] = kernels.conv2d(inside, self.edge_kernel, self.bias, self.padding)
        return cached

    def __call__(self, x: Tensor) -> Tensor:
        """x = cat[u, v] (B, E + extra, H, W) -> (B, O, H, W)."""
        return kernels.conv2d(x, self.weight, None, self.padding) + self.bias_map(*x.shape[-2:])


class _SliceFold:
    """Slice i's folds: each NAF stack's `out_conv` into the convs that read the stack features
    (the first conv of the mean and the scale head, the first conv of LRP)."""

    def __init__(self, ctx: ChannelContextModel, i: int) -> None:
        self.mean_head = FoldedConv(ctx.mean_stacks[i].out_conv, ctx.mean_heads[i][0])
        self.scale_head = FoldedConv(ctx.scale_stacks[i].out_conv, ctx.scale_heads[i][0])
        self.lrp = FoldedConv(ctx.mean_stacks[i].out_conv, ctx.lrp[i][0]) if i < ctx.lrp_slices else None


Folds = list[_SliceFold]
"""What `ChannelContextModel.fold` returns: one `_SliceFold` per slice."""


class ChannelContextModel(nn.Module):
    """Per-slice mean path, scale path and latent residual prediction (LRP).

    Slice i sees the hyperprior output and the reconstructed slices `context_slices(i)`:
    all earlier slices for the main model; with `skip_previous` (the CCA auxiliary model) the
    slice just before i is left out. `lrp_slices` slices get an LRP net (default: all).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        skip_previous: bool = False,
        lrp_slices: int | None = None,
        spatial_context: bool | None = None,
    ) -> None:
        super().__init__()
        self.sizes = cfg.slice_sizes
        self.skip_previous = skip_previous
        n, m = len(self.sizes), cfg.latent_channels
        self.lrp_slices = n if lrp_slices is None else lrp_slices
        cin = [m + sum(self.sizes[j] for j in self.context_slices(i)) for i in range(n)]

        def stacks() -> nn.ModuleList:
            return nn.ModuleList(NAFStack(c, cfg.stack_width, cfg.stack_depth, c) for c in cin)

        def heads() -> nn.ModuleList:
            return nn.ModuleList(parameter_head(c, cfg.head_widths, s) for c, s in zip(cin, self.sizes))

        self.mean_stacks, self.scale_stacks = stacks(), stacks()
        self.mean_heads, self.scale_heads = heads(), heads()
        self.lrp = nn.ModuleList(
            parameter_head(cin[i] + self.sizes[i], cfg.head_widths, self.sizes[i])
            for i in range(self.lrp_slices)
        )
        use_spatial = cfg.spatial_context if spatial_context is None else spatial_context
        self.spatial = (
            nn.ModuleList(CheckerboardContext(s, cfg.head_widths[0]) for s in self.sizes)
            if use_spatial
            else None
        )

    def fold(self) -> Folds:
        """Every NAF stack's output conv folded into the convs that read it (`FoldedConv`), for
        coding: given to `stack_features`, `head_inputs` and `refine`, the stack features are the
        stacks' E-channel inner features (`NAFStack.inner`) instead of their Cin-channel outputs,
        read through the folds: about 40 % fewer products in the entropy path. The folds hold
        copies: fold again after the weights, their dtype or their device change."""
        return [_SliceFold(self, i) for i in range(len(self.sizes))]

    def context_slices(self, i: int) -> range:
        """Indices of the reconstructed slices that slice i is conditioned on."""
        return range(max(i - 1, 0)) if self.skip_previous else range(i)

    def stack_features(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, y_hats: list[Tensor], folds: Folds | None = None
    ) -> tuple[Tensor, Tensor]:
        """NAF-stack features of slice i's mean and scale paths, each (B, Cin_i, h, w); with
        `folds`, the stacks' inner features, each (B, E, h, w)."""
        ctx = [y_hats[j] for j in self.context_slices(i)]
        mean_in, scale_in = torch.cat([latent_means, *ctx], dim=1), torch.cat([latent_scales, *ctx], dim=1)
        if folds is not None:
            return self.mean_stacks[i].inner(mean_in), self.scale_stacks[i].inner(scale_in)
        return self.mean_stacks[i](mean_in), self.scale_stacks[i](scale_in)

    def head_inputs(self, i: int, mean_feat: Tensor, scale_feat: Tensor, folds: Folds | None = None) -> tuple[Tensor, Tensor]:
        """The first conv of slice i's mean and scale heads on the stack features, each
        (B, W0, h, w): shared by the anchor and the non-anchor step of a checkerboard slice."""
        if folds is not None:
            return folds[i].mean_head(mean_feat), folds[i].scale_head(scale_feat)
        return self.mean_heads[i][0](mean_feat), self.scale_heads[i][0](scale_feat)

    def parameters(self, i: int, head_inputs: tuple[Tensor, Tensor], spatial: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and raw scale of slice i, each (B, C_i, h, w), from its `head_inputs`.

        `spatial` is the CheckerboardContext output for the non-anchor step, None for anchors
        and for grouped mode (spatial context zero).
        """
        mean_ctx = scale_ctx = None
        if spatial is not None:
            mean_ctx, scale_ctx = spatial.chunk(2, dim=1)
        mean_in, scale_in = head_inputs
        return _head(self.mean_heads[i], mean_in, mean_ctx), _head(self.scale_heads[i], scale_in, scale_ctx)

    def spatial_context(self, i: int, y_hat_anchors: Tensor) -> Tensor:
        """Checkerboard context of slice i from its reconstructed anchors."""
        if self.spatial is None:
            raise RuntimeError("this network has no checkerboard spatial context")
        return self.spatial[i](y_hat_anchors)

    def refine(self, i: int, mean_feat: Tensor, y_hat_slice: Tensor, folds: Folds | None = None) -> Tensor:
        """LRP: y_hat_i + 0.5 * tanh(lrp(concat[mean features, y_hat_i])) (identity past lrp_slices)."""
        if i >= self.lrp_slices:
            return y_hat_slice
        lrp_in = torch.cat([mean_feat, y_hat_slice], dim=1)
        if folds is not None:
            correction = self.lrp[i][1:](folds[i].lrp(lrp_in))
        else:
            correction = self.lrp[i](lrp_in)
        return y_hat_slice + 0.5 * torch.tanh(correction)

    def forward_train(
        self,
        y: Tensor,
        latent_means: Tensor,
        latent_scales: Tensor,
        likelihood: Likelihood,
        checkerboard: bool = False,
        quantize: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor | None, Tensor]:
        """Training pass: returns (y_hat (B, M, h, w), likelihoods of y (B, M, h, w)).

        `likelihood(y_slice, scale, mean)` gives the (noisy) rate-term likelihoods; context and
        decoder input use y_hat = STE-round(y - mu) + mu, LRP-refined. Slices no later slice
        needs are not reconstructed; y_hat is None unless all of them are (the auxiliary model).

        `quantize` replaces STE rounding of y - mu (the encoder's latent refinement: annealed
        soft rounding, cca_codec.core.refine); the likelihoods are then those of the quantized values
        mu + quantize(y - mu), not of y.
        """
        quantize_is_ste = quantize is None
        if quantize is None:
            from compressai.ops import quantize_ste as quantize  # training only: coding rounds without STE

        n = len(self.sizes)
        needed = set().union(*(self.context_slices(j) for j in range(n)))
        y_hats: list[Tensor] = []
        likelihoods = []
        for i, y_i in enumerate(y.split(self.sizes, dim=1)):
            mean_feat, scale_feat = self.stack_features(i, latent_means, latent_scales, y_hats)
            head_in = self.head_inputs(i, mean_feat, scale_feat)
            mu, scale = self.parameters(i, head_in)
            y_hat_i = quantize(y_i - mu) + mu
            if checkerboard:
                anchors = anchor_mask(*y_i.shape[-2:], device=y_i.device)
                mu_n, scale_n = self.parameters(i, head_in, self.spatial_context(i, y_hat_i))
                mu = torch.where(anchors, mu, mu_n)
                scale = torch.where(anchors, scale, scale_n)
                y_hat_i = torch.where(anchors, y_hat_i, quantize(y_i - mu_n) + mu_n)
            likelihoods.append(likelihood(y_i if quantize_is_ste else y_hat_i, scale, mu))
            if i in needed or not self.skip_previous:
                y_hats.append(self.refine(i, mean_feat, y_hat_i))
        y_hat = torch.cat(y_hats, dim=1) if len(y_hats) == n else None
        return y_hat, torch.cat(likelihoods, dim=1)


def _head(head: nn.Sequential, h: Tensor, spatial: Tensor | None) -> Tensor:
    """Run a parameter head from its first conv's output `h`, adding the spatial context to it.

    The last conv runs outside autocast in the input's precision at least float32 (float64 when
    coding), so a bf16 training pass rounds means and scales no coarser than inference does.
    """
    if spatial is not None:
        h = h + spatial
    for layer in head[1:-1]:
        h = layer(h)
    return at_least_float32(head[-1], h)
