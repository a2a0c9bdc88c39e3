"""Encoder effort: refine the latents y of one tile for that image before they are coded.

The analysis transform g_a is a one-shot guess of the latents (the amortization gap). At higher
efforts the encoder optimizes y itself for the image, against the decoder that will be used:

    minimize  R(y) + lambda * 255^2 * MSE(g_s(y_hat), x),

R in bits per pixel of y under the entropy model (its channel and checkerboard context included, the
same :meth:`ChannelContextModel.forward_train` that training uses) plus those of the hyperprior's z
under the z tables the file is coded with (:class:`TableRate`), and lambda the quality's
(:meth:`LoadedModel.lam`). z is optimized with y (so are the means and scales it gives y) unless the
schedule holds it at h_a's output. Rounding is relaxed by stochastic Gumbel annealing (SGA; Yang, Bamler,
Mandt, "Improving Inference for Neural Image Compression", NeurIPS 2020): y - mu becomes a random mix
of its floor and ceiling whose temperature falls towards hard rounding, so the rate the optimizer
sees is that of (nearly) integer symbols. The results are an ordinary y and z: the codec rounds
z - median and y - mu and codes them as always, so the file, the decoder and its determinism are
unchanged.

Pixels count as much as they count in the decoded image: the squared errors are weighted by the
tile's blending weights (cca_codec.format.tiling; 1 inside its core, ramping across the bands a
neighbouring tile codes too) and by 0 on the padding up to the network's alignment, and R and the
MSE are per pixel of that total weight.
"""
from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cca_codec.base.errors import UsageError
from cca_codec.entropy.tables import CDFTables
from cca_codec.nn.context import LIKELIHOOD_FLOOR, bits
from cca_codec.nn.model import SCALE_MIN, CCAModel

from .precision import transform_context, transform_input


@dataclass(frozen=True)
class Schedule:
    """How hard the refinement works: Adam ``steps`` at learning rate ``lr`` (cosine-decayed), the
    SGA temperature falling geometrically from ``tau_start`` to ``tau_end``; z optimized with y when
    ``refine_z``, else held at h_a's output (rounded)."""

    steps: int
    lr: float = 2e-2
    tau_start: float = 0.5
    tau_end: float = 0.05
    refine_z: bool = True

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


class TableRate:
    """Bits of the hyperprior's z under the frozen integer tables it is coded with, differentiable in
    soft (SGA) symbols: a symbol floor + w, 0 <= w <= 1, costs (1 - w) bits(floor) + w bits(floor + 1),
    the expected cost of coding floor or floor + 1 with those odds.

    Symbols past a table's range cost what its escape symbol costs (the escaped payload is left out:
    such symbols are rare, and the slope of the range's edge keeps them from growing).
    """

    def __init__(self, tables: CDFTables, device: torch.device) -> None:
        width = int(tables.length.max()) - 1  # values 0 .. L-2, the escape the last
        table = np.zeros((len(tables), width))
        for j, length in enumerate(tables.length):
            masses = np.diff(tables.cdf[j, :length]).astype(np.float64)
            costs = -np.log2(np.maximum(masses, 1) / float(tables.cdf[j, length - 1]))
            table[j] = np.concatenate([costs, np.full(width - costs.size, costs[-1])])
        self.bits = torch.from_numpy(table).float().to(device)
        self.offset = torch.from_numpy(tables.offset).to(device)
        self.last = torch.from_numpy(tables.length - 2).to(device)

    def __call__(self, symbols: Tensor) -> Tensor:
        """symbols: (1, C, h, w) soft symbols (z - median) of the C tables -> bits, same shape."""
        floor = torch.floor(symbols.detach())
        weight = symbols - floor
        value = floor.long() - self.offset.view(1, -1, 1, 1)
        tables = torch.arange(len(self.offset), device=symbols.device).view(1, -1, 1, 1)
        last = self.last.view(1, -1, 1, 1)

        def cost(v: Tensor) -> Tensor:
            return self.bits[tables, torch.minimum(v.clamp_min(0), last)]

        return (1 - weight) * cost(value) + weight * cost(value + 1)


def refine_latents(
    net: CCAModel,
    x: Tensor,
    y: Tensor,
    z: Tensor,
    g_y_inv: Tensor,
    g_z_inv: Tensor,
    z_rate: TableRate,
    lam: float,
    checkerboard: bool,
    schedule: Schedule,
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
    pixel_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Optimize the latents of one tile; returns the refined (y, z), same shapes and dtypes as given.

    Args:
        net: the coding network (its entropy path may be float64, its transforms float32).
        x: the tile (1, 3, H, W) in [0, 1]; y: g_a's latents (1, M, H/16, W/16), gains applied;
            z: h_a's output (1, Z, H/64, W/64), gains applied, not rounded.
        g_y_inv, g_z_inv: the quality's inverse gains; z_rate: the bits of z's symbols;
            lam: the quality's rate-distortion lambda.
        precision: how g_s runs (cca_codec.core.precision); the entropy model runs in float32 here, a
            copy of the network's, since only the final y and z, coded as always, must be exact.
        progress: called after each step with the step's index.
        seed: the SGA noise's seed: the same inputs give the same y and z on the same machine.
        pixel_weights: (1, 1, H, W) weight of each pixel's squared error, >= 0 (None: all 1).
    """
    context = copy.deepcopy(net.context).float()  # the coding copy runs in float64: too slow to differentiate
    hyper_dtype = next(net.h_mean_s.parameters()).dtype  # the hyperprior's synthesis is small: run as it is
    medians = net.entropy_bottleneck._get_medians().detach().float().to(z.device)
    target = x.detach().clone().float()
    inverse_gain = g_y_inv.detach().float()
    latents = y.detach().clone().float().requires_grad_(True)
    hyper = z.detach().clone().float().requires_grad_(schedule.refine_z)
    variables = [latents, hyper] if schedule.refine_z else [latents]
    optimizer = torch.optim.Adam(variables, lr=schedule.lr)
    generator = torch.Generator(device=latents.device).manual_seed(seed)
    if pixel_weights is None:
        pixel_weights = torch.ones_like(target[:, :1])
    pixel_weights = pixel_weights.detach().to(target.device, torch.float32)
    pixels = float(pixel_weights.sum())
    if not pixels > 0:
        raise ValueError("refine_latents: the pixel weights sum to zero")
    with torch.enable_grad():
        for step in range(schedule.steps):
            quantize = functools.partial(sga_round, tau=schedule.tau(step), generator=generator)
            z_symbols = quantize(hyper - medians) if schedule.refine_z else torch.round(hyper - medians)
            means, scales = (p.float() for p in net.hyper_parameters((z_symbols + medians).to(hyper_dtype), g_z_inv.to(hyper_dtype)))
            y_hat, likelihoods = context.forward_train(
                latents, means, scales, discretized_gaussian_likelihood, checkerboard, quantize=quantize,
            )
            with transform_context(precision, latents.device, synthesis=True):
                x_hat = net.g_s(transform_input(y_hat * inverse_gain, precision))
            rate = (bits(likelihoods).sum() + z_rate(z_symbols).sum()) / pixels
            squared_error = (x_hat.float() - target).pow(2).mean(dim=1, keepdim=True)
            loss = rate + lam * 255**2 * (squared_error * pixel_weights).sum() / pixels
            gradients = torch.autograd.grad(loss, variables)
            for group in optimizer.param_groups:
                group["lr"] = schedule.learning_rate(step)
            for variable, gradient in zip(variables, gradients):
                variable.grad = gradient
            optimizer.step()
            if progress is not None:
                progress(step)
    return latents.detach().to(y.dtype), hyper.detach().to(z.dtype)
