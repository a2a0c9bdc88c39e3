"""The CCA training objective (Han et al. 2024), per sample, in bits per image pixel.

With N = H*W image pixels, F the main entropy model, G the auxiliary one and q the factorized
prior over y:
    R      = [bits_F(y) + bits(z)] / N
    L_CCA  = [bits_F(y) - bits_G(y)] / N
    L_aux2 = sum(p_G(y) * -log2 q(y)) / N
    L      = d * 255^2 * MSE + beta * R + alpha * L_CCA + L_aux2
`official` (default) lets every gradient flow, as the authors' code does. `stop_gradient` trains G
to minimise its own rate on detached inputs, and the encoder sees L_CCA with G held fixed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .aux import AuxEntropyModel
from .context import LIKELIHOOD_FLOOR, bits
from .model import CCAModel

CCA_VARIANTS = ("official", "stop_gradient")


@dataclass
class LossTerms:
    """Batch means of every term, plus the per-sample PSNR inputs for logging."""

    loss: Tensor
    mse: Tensor
    bpp: Tensor
    cca: Tensor
    aux2: Tensor
    aux_bits_per_element: Tensor


class CCALoss(nn.Module):
    """Computes L for a batch; `aux` is the auxiliary model G."""

    def __init__(self, aux: AuxEntropyModel, alpha: float = 1.0, variant: str = "official") -> None:
        super().__init__()
        if variant not in CCA_VARIANTS:
            raise ValueError(f"unknown CCA variant {variant!r}; use one of {CCA_VARIANTS}")
        self.aux, self.alpha, self.variant = aux, alpha, variant

    def forward(
        self, net: CCAModel, x: Tensor, quality: Tensor, distortion_weight: Tensor, beta: Tensor, checkerboard: bool = False
    ) -> LossTerms:
        """x: (B, 3, H, W) in [0, 1]; quality, distortion_weight, beta: (B,) per sample."""
        out = net(x, quality, checkerboard)
        n_pixels = x.shape[-2] * x.shape[-1]
        y, lm, ls = out["y"], out["latent_means"], out["latent_scales"]
        bits_f = bits(out["likelihoods"]["y"])
        rate = (bits_f + bits(out["likelihoods"]["z"])) / n_pixels
        mse = (out["x_hat"].float() - x.float()).pow(2).flatten(1).mean(1)
        if self.variant == "official":
            g_lik, q_lik = self.aux(y, lm, ls)
            cca = (bits_f - bits(g_lik)) / n_pixels
            g_self = torch.zeros_like(cca)
        else:
            frozen = {k: v.detach() for k, v in self.aux.named_parameters()}
            frozen_g, _ = functional_call(self.aux, frozen, (y, lm, ls))
            cca = (bits_f - bits(frozen_g)) / n_pixels
            g_lik, q_lik = self.aux(y.detach(), lm.detach(), ls.detach())
            g_self = bits(g_lik) / n_pixels
        aux2 = (g_lik.float() * -torch.log2(q_lik.float().clamp_min(LIKELIHOOD_FLOOR))).flatten(1).sum(1) / n_pixels
        loss = distortion_weight * 255**2 * mse + beta * rate + self.alpha * cca + aux2 + g_self
        return LossTerms(
            loss=loss.mean(),
            mse=mse.mean(),
            bpp=rate.mean(),
            cca=cca.mean(),
            aux2=aux2.mean(),
            aux_bits_per_element=(bits(g_lik) / g_lik[0].numel()).mean().detach(),
        )
