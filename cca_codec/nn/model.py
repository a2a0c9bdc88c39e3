"""The CCA image compression network: transforms, hyperprior, gains and context model.

`CCAModel.forward` is the training pass. The codec (cca_codec.core.codec) drives the same modules step
by step for real encoding and decoding; nothing about the entropy parameters is computed twice.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .context import ChannelContextModel, gaussian_likelihood
from .priors import entropy_models
from .transforms import AnalysisTransform, SynthesisTransform, hyper_analysis, hyper_synthesis

SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64


def default_scale_table() -> Tensor:
    """64 log-spaced Gaussian standard deviations 0.11..256, float64. The exact values are frozen
    in each checkpoint (buffer `scale_bounds`), so decoders never recompute them."""
    return torch.exp(torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS, dtype=torch.float64))


class QualityGains(nn.Module):
    """Per-quality gain vectors (Cui et al., CVPR 2021) on y and z, stored as logarithms.

    Quality q in [1, Q] may be fractional: the log-gains of the neighbouring integer qualities
    are interpolated linearly (a geometric interpolation of the gains).
    """

    # Initial ratio of the y gains of neighbouring qualities. Starting every quality at gain 1
    # leaves them indistinguishable for thousands of steps (the gains learn slowly); a
    # geometric spread makes quality q quantise y with step ~ 1/1.3^(q - mid) from the start.
    INITIAL_STEP_RATIO = 1.3

    def __init__(self, num_qualities: int, latent_channels: int, hyper_channels: int) -> None:
        super().__init__()
        self.log_y = nn.Parameter(self.initial_log_y(num_qualities)[:, None].repeat(1, latent_channels))
        self.log_y_inv = nn.Parameter(-self.log_y.detach().clone())
        self.log_z = nn.Parameter(torch.zeros(num_qualities, hyper_channels))
        self.log_z_inv = nn.Parameter(torch.zeros(num_qualities, hyper_channels))

    @classmethod
    def initial_log_y(cls, num_qualities: int) -> Tensor:
        """(Q,) log-gains spaced by log(INITIAL_STEP_RATIO), centred on the middle quality."""
        centre = (num_qualities - 1) / 2
        return (torch.arange(num_qualities, dtype=torch.float32) - centre) * math.log(cls.INITIAL_STEP_RATIO)

    @property
    def num_qualities(self) -> int:
        return self.log_y.shape[0]

    def forward(self, quality: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """quality: (B,) in [1, Q] -> gains (y, y_inv, z, z_inv), each (B, C, 1, 1), on quality's
        device and in its dtype."""
        q = self.num_qualities
        pos = (quality - 1).clamp(0, q - 1)
        lo = pos.floor().long().clamp(max=max(q - 2, 0))
        hi = (lo + 1).clamp(max=q - 1)
        t = (pos - lo.to(pos.dtype))[:, None]

        def gain(table: Tensor) -> Tensor:
            table = table.to(quality.device, quality.dtype)
            return torch.exp((1 - t) * table[lo] + t * table[hi])[:, :, None, None]

        return gain(self.log_y), gain(self.log_y_inv), gain(self.log_z), gain(self.log_z_inv)


class CCAModel(nn.Module):
    """Autoencoder with NAF-blocks, hyperprior, uneven channel slices with LRP and an optional
    checkerboard spatial context in each slice.

    Image x: (B, 3, H, W) in [0, 1] with H, W multiples of 64. y: (B, M, H/16, W/16).
    z: (B, Z, H/64, W/64).

    `trainable` (default) gives CompressAI's entropy models, which training, `update` and
    `aux_loss` need; `trainable=False` gives the frozen stand-ins of cca_codec.nn.priors, enough
    to code with the tables a checkpoint holds, without importing CompressAI.
    """

    def __init__(self, cfg: ModelConfig, num_qualities: int = 8, *, trainable: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.trainable = trainable
        self.g_a = AnalysisTransform(cfg)
        self.g_s = SynthesisTransform(cfg)
        self.h_a = hyper_analysis(cfg)
        self.h_mean_s = hyper_synthesis(cfg)
        self.h_scale_s = hyper_synthesis(cfg)
        self.entropy_bottleneck, self.gaussian_conditional = entropy_models(cfg.hyper_channels, trainable)
        self.context = ChannelContextModel(cfg)
        self.gains = QualityGains(num_qualities, cfg.latent_channels, cfg.hyper_channels)
        self.register_buffer("scale_bounds", default_scale_table())

    alignment = 64  # H and W must be multiples of this (y at /16, z at /64)

    @classmethod
    def pad_to_alignment(cls, x: Tensor) -> Tensor:
        """Replicate-pad images (N, C, H, W) at the bottom and right so that H and W are multiples of
        :attr:`alignment` (unchanged when they are); crop the network's output back to (H, W)."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % cls.alignment, (-w) % cls.alignment
        return nn.functional.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def hyper_parameters(self, z_hat: Tensor, z_inv_gain: Tensor) -> tuple[Tensor, Tensor]:
        """Latent means and scales (B, M, h, w) from the dequantised z_hat (B, Z, h/4, w/4)."""
        z = z_hat * z_inv_gain
        return self.h_mean_s(z), self.h_scale_s(z)

    def _likelihood(self, y: Tensor, scale: Tensor, mu: Tensor) -> Tensor:
        return gaussian_likelihood(self.gaussian_conditional, y, scale, mu)

    def forward(self, x: Tensor, quality: Tensor, checkerboard: bool = False) -> dict:
        """Training pass. quality: (B,) float in [1, Q]. Returns x_hat (unclamped), y,
        likelihoods {"y", "z"}, and the hyperprior outputs the auxiliary model reuses.

        Under bf16 autocast the transforms run in bf16, while y, z, the hyperprior outputs, means,
        scales and every likelihood stay float32 (rounding y - mu in bf16 would be coarse)."""
        g_y, g_y_inv, g_z, g_z_inv = self.gains(quality)
        y = self.g_a(x).float() * g_y
        z = self.h_a(y).float() * g_z
        with torch.autocast(x.device.type, enabled=False):  # the z prior's CDF math stays float32
            _, z_likelihoods = self.entropy_bottleneck(z)
        from compressai.ops import quantize_ste

        medians = self.entropy_bottleneck._get_medians()
        z_hat = quantize_ste(z - medians) + medians
        latent_means, latent_scales = (p.float() for p in self.hyper_parameters(z_hat, g_z_inv))
        y_hat, y_likelihoods = self.context.forward_train(
            y, latent_means, latent_scales, self._likelihood, checkerboard
        )
        return {
            "x_hat": self.g_s(y_hat * g_y_inv),
            "y": y,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
            "latent_means": latent_means,
            "latent_scales": latent_scales,
        }

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False) -> Any:
        """Load weights; a trainable network first resizes its CDF tables to the state dict's
        (CompressAI's CompressionModel.load_state_dict), frozen entropy models take any size."""
        if self.trainable:
            return _compressai_model().load_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def update(self, scale_table: Tensor, force: bool = False) -> bool:
        """Build the integer CDF tables from the current weights (CompressionModel.update)."""
        return _compressai_model().update(self, scale_table=scale_table, force=force)

    def aux_loss(self) -> Tensor:
        """The z prior's quantile loss (CompressionModel.aux_loss)."""
        return _compressai_model().aux_loss(self)

    def inference_parameter_count(self) -> int:
        """Parameters used to encode/decode, without the per-quality gains (the paper's count)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("gains."))


def _compressai_model() -> type:
    """CompressAI's CompressionModel, whose training-time methods a trainable CCAModel uses."""
    from compressai.models import CompressionModel

    return CompressionModel
