"""The auxiliary entropy model G of the CCA loss (training only).

G has the main model's per-slice structure with its own weights, but slice k is conditioned on
the hyperprior output and G's own reconstructions of slices 0 .. k-2: it never sees slice k-1.
G_0 and G_1 therefore use the hyperprior only. LRP exists for slices 0 .. n-3 (the ones some
later slice of G needs). G also holds a factorized prior over y (`EntropyBottleneck(M)`), whose
bits weighted by G's probabilities form the L_aux2 term.
"""
from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from .config import ModelConfig
from .context import ChannelContextModel, gaussian_likelihood


class AuxEntropyModel(nn.Module):
    """G: (y, latent means, latent scales) -> (likelihoods under G, factorized likelihoods),
    both (B, M, h, w), with additive-noise quantisation in training mode."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.context = ChannelContextModel(
            cfg, skip_previous=True, lrp_slices=max(cfg.num_slices - 2, 0), spatial_context=False
        )
        self.factorized = EntropyBottleneck(cfg.latent_channels)
        self.gaussian_conditional = GaussianConditional(None)

    def _likelihood(self, y: Tensor, scale: Tensor, mu: Tensor) -> Tensor:
        return gaussian_likelihood(self.gaussian_conditional, y, scale, mu)

    def forward(self, y: Tensor, latent_means: Tensor, latent_scales: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(y.device.type, enabled=False):
            _, factorized_likelihoods = self.factorized(y.float())
        _, g_likelihoods = self.context.forward_train(y, latent_means, latent_scales, self._likelihood)
        return g_likelihoods, factorized_likelihoods
