"""Analysis/synthesis transforms (g_a, g_s) and the hyperprior transforms (h_a, h_s)."""
from __future__ import annotations

from torch import Tensor, nn

from .blocks import NAFBlock, ResidualBottleneckBlock, at_least_float32, conv, deconv
from .config import ModelConfig

RESIDUAL_BLOCKS_PER_STAGE = 3


class AnalysisTransform(nn.Module):
    """g_a: image (B, 3, H, W) in [0, 1] -> y (B, M, H/16, W/16).

    Four stride-2 5x5 convs; after each of the first three a stage of residual bottleneck
    blocks followed by NAF-blocks. The last conv runs in at least float32 (`at_least_float32`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dims = [3, *cfg.ae_dims, cfg.latent_channels]
        self.down = nn.ModuleList(conv(dims[i], dims[i + 1], 5, 2) for i in range(4))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                *[ResidualBottleneckBlock(c) for _ in range(RESIDUAL_BLOCKS_PER_STAGE)],
                *[NAFBlock(c) for _ in range(n)],
            )
            for c, n in zip(cfg.ae_dims, cfg.ae_blocks)
        )

    def forward(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.down, self.blocks):
            x = stage(down(x))
        return at_least_float32(self.down[-1], x)


class SynthesisTransform(nn.Module):
    """g_s: y_hat (B, M, h, w) -> image (B, 3, 16h, 16w), unclamped.

    Mirrors g_a: stride-2 5x5 transposed convs, each of the first three followed by a stage of
    NAF-blocks then residual bottleneck blocks, widest stage first. The last transposed conv
    runs in at least float32 (`at_least_float32`).

    `float32_stages` (training's choice, not part of the weights; 0 by default): that many of the
    last stages, each with the transposed conv before it, also run outside autocast in float32,
    so that a bf16 training pass computes the finest features and their gradients in float32.
    """

    float32_stages: int = 0

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dims = [3, *cfg.ae_dims, cfg.latent_channels]
        self.up = nn.ModuleList(deconv(dims[i + 1], dims[i], 5, 2) for i in reversed(range(4)))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                *[NAFBlock(c) for _ in range(n)],
                *[ResidualBottleneckBlock(c) for _ in range(RESIDUAL_BLOCKS_PER_STAGE)],
            )
            for c, n in reversed(list(zip(cfg.ae_dims, cfg.ae_blocks)))
        )

    def forward(self, y: Tensor) -> Tensor:
        first_float32 = len(self.blocks) - self.float32_stages
        for i, (up, stage) in enumerate(zip(self.up, self.blocks)):
            y = at_least_float32(lambda t: stage(up(t)), y) if i >= first_float32 else stage(up(y))
        return at_least_float32(self.up[-1], y)


def hyper_analysis(cfg: ModelConfig) -> nn.Sequential:
    """h_a: y (B, M, h, w) -> z (B, Z, h/4, w/4)."""
    m, c, z = cfg.latent_channels, cfg.ae_dims[2], cfg.hyper_channels
    return nn.Sequential(conv(m, c, 3, 1), nn.GELU(), conv(c, c, 5, 2), nn.GELU(), conv(c, z, 5, 2))


def hyper_synthesis(cfg: ModelConfig) -> nn.Sequential:
    """h_mean_s / h_scale_s: z_hat (B, Z, h/4, w/4) -> latent means or scales (B, M, h, w)."""
    m, c, z = cfg.latent_channels, cfg.ae_dims[2], cfg.hyper_channels
    return nn.Sequential(
        deconv(z, c, 5, 2), nn.GELU(), deconv(c, c, 5, 2), nn.GELU(), deconv(c, m, 3, 1)
    )
