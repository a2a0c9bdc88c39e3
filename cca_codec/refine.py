"""Encoder effort: refine the latents y of one tile for that image before they are coded.

The analysis transform g_a is a one-shot guess of the latents (the amortization gap). At higher
efforts the encoder optimizes y itself for the image, against the decoder that will be used:

    minimize  R(y) + lambda * 255^2 * MSE(g_s(y_hat), x),

R in bits per pixel of y under the entropy model (its channel and checkerboard context included, the
same :meth:`ChannelContextModel.forward_train` that training uses), with the hyperprior's z (so the
means and scales it gives) held at what the encoder already coded, and lambda the quality's
(:meth:`LoadedModel.lam`). Rounding is relaxed by stochastic Gumbel annealing (SGA; Yang, Bamler,
Mandt, "Improving Inference for Neural Image Compression", NeurIPS 2020): y - mu becomes a random mix
of its floor and ceiling whose temperature falls towards hard rounding, so the rate the optimizer
sees is that of (nearly) integer symbols. The result is an ordinary y: the codec rounds y - mu and
codes it as always, so the file, the decoder and its determinism are unchanged.

Pixels count as much as they count in the decoded image: the squared errors are weighted by the
tile's blending weights (cca_codec.tiling; 1 inside its core, ramping across the bands a
neighbouring tile codes too) and by 0 on the padding up to the network's alignment, and R and the
MSE are per pixel of that total weight.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import UsageError
from .nn.context import LIKELIHOOD_FLOOR, bits
from .nn.model import SCALE_MIN, CCAModel
from .precision import transform_context, transform_input


@dataclass(frozen=True)
class Schedule:
    """How hard the refinement works: Adam ``steps`` at learning rate ``lr`` (cosine-decayed), the
    SGA temperature falling geometrically from ``tau_start`` to ``tau_end``."""

    steps: int
    lr: float = 2e-2
    tau_start: float = 0.5
    tau_end: float = 0.05

    def tau(self, step: int) -> float:
        """The rounding temperature at ``step`` (0-based)."""
        if self.steps <= 1:
            return self.tau_end
        return self.tau_start * (self.tau_end / self.tau_start) ** (step / (self.steps - 1))

    def learning_rate(self, step: int) -> float:
        """The learning rate at ``step``: cosine from ``lr`` towards zero."""
        return 0.5 * self.lr * (1 + math.cos(math.pi * step / max(self.steps, 1)))


EFFORTS = range(1, 10)
"""The effort levels: 1 codes g_a's latents as they are; 2..9 refine them for more steps."""
EFFORT_STEPS = {1: 0, 2: 8, 3: 16, 4: 24, 5: 32, 6: 48, 7: 64, 8: 96, 9: 128}
"""Adam steps per tile at each effort level."""


def effort_schedule(effort: int) -> Schedule | None:
    """The refinement of an effort level (None for effort 1: no refinement).

    Raises:
        UsageError: an effort outside 1..9.
    """
    if effort not in EFFORTS:
        raise UsageError(f"effort must be a whole number from 1 to 9, got {effort!r}")
    steps = EFFORT_STEPS[effort]
    return Schedule(steps) if steps else None


def discretized_gaussian_likelihood(values: Tensor, scales: Tensor, means: Tensor) -> Tensor:
    """P(values) under N(means, scales) integrated over [values - 1/2, values + 1/2], floored at
    training's LIKELIHOOD_FLOOR; scales bounded below by SCALE_MIN, the coding scale table's first entry.
    Differentiable in values, scales and means; any float dtype."""
    scales = scales.clamp_min(SCALE_MIN)
    centred = (values - means).abs()
    upper = 0.5 * torch.erfc((centred - 0.5) / (scales * math.sqrt(2)))
    lower = 0.5 * torch.erfc((centred + 0.5) / (scales * math.sqrt(2)))
    return (upper - lower).clamp_min(LIKELIHOOD_FLOOR)


def sga_round(values: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic Gumbel annealing of rounding: each value becomes a random convex mix of its floor
    and ceiling, the nearer one likelier, hard rounding as ``tau`` -> 0. Differentiable in ``values``."""
    floor = torch.floor(values)
    fraction = values - floor
    eps = 1e-5
    logits = torch.stack([
        -torch.atanh(fraction.clamp(-1 + eps, 1 - eps)) / tau,
        -torch.atanh((1 - fraction).clamp(-1 + eps, 1 - eps)) / tau,
    ])
    uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-12)))
    weights = torch.softmax((logits + gumbel) / tau, dim=0)
    return floor + weights[1]


def refine_latents(
    net: CCAModel,
    x: Tensor,
    y: Tensor,
    latent_means: Tensor,
    latent_scales: Tensor,
    g_y_inv: Tensor,
    lam: float,
    checkerboard: bool,
    schedule: Schedule,
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
    pixel_weights: Tensor | None = None,
) -> Tensor:
    """Optimize the latents of one tile; returns the refined y (same shape and dtype as ``y``).

    Args:
        net: the coding network (its entropy path may be float64, its transforms float32).
        x: the tile (1, 3, H, W) in [0, 1]; y: g_a's latents (1, M, H/16, W/16), gains applied.
        latent_means, latent_scales: the hyperprior's outputs from the coded z (held fixed).
        g_y_inv: the quality's inverse gain on y; lam: its rate-distortion lambda.
        precision: how g_s runs (cca_codec.precision); the entropy model runs in float32 here,
            a copy of the network's, since only the final y, coded as always, must be exact.
        progress: called after each step with the step's index.
        seed: the SGA noise's seed: the same inputs give the same y on the same machine.
        pixel_weights: (1, 1, H, W) weight of each pixel's squared error, >= 0 (None: all 1).
    """
    context = copy.deepcopy(net.context).float()  # the coding copy runs in float64: too slow to differentiate
    target = x.detach().clone().float()
    means, scales = latent_means.detach().float(), latent_scales.detach().float()
    inverse_gain = g_y_inv.detach().float()
    latents = y.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([latents], lr=schedule.lr)
    generator = torch.Generator(device=latents.device).manual_seed(seed)
    if pixel_weights is None:
        pixel_weights = torch.ones_like(target[:, :1])
    pixel_weights = pixel_weights.detach().to(target.device, torch.float32)
    pixels = float(pixel_weights.sum())
    if not pixels > 0:
        raise ValueError("refine_latents: the pixel weights sum to zero")
    with torch.enable_grad():
        for step in range(schedule.steps):
            tau = schedule.tau(step)
            y_hat, likelihoods = context.forward_train(
                latents, means, scales, discretized_gaussian_likelihood, checkerboard,
                quantize=lambda v: sga_round(v, tau, generator),
            )
            with transform_context(precision, latents.device, synthesis=True):
                x_hat = net.g_s(transform_input(y_hat * inverse_gain, precision))
            rate = bits(likelihoods).sum() / pixels
            squared_error = (x_hat.float() - target).pow(2).mean(dim=1, keepdim=True)
            loss = rate + lam * 255**2 * (squared_error * pixel_weights).sum() / pixels
            (gradient,) = torch.autograd.grad(loss, [latents])
            for group in optimizer.param_groups:
                group["lr"] = schedule.learning_rate(step)
            latents.grad = gradient
            optimizer.step()
            if progress is not None:
                progress(step)
    return latents.detach().to(y.dtype)
