"""Named network configurations.

`cca-paper` is the paper's network exactly (64.99 M inference parameters). `cca-compact` is the
configuration we ship: the same design, narrower, sized for a 2-core CPU. `cca-tiny` exists for
tests and smoke runs only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """Every width and depth of the network.

    ae_dims: channel widths of the three transform stages, finest first (N1, N2, N3).
    ae_blocks: NAF-blocks per transform stage (3 residual bottleneck blocks are always added).
    latent_channels: M, channels of y (at H/16). hyper_channels: channels of z (at H/64).
    slice_power: k in the slice proportions [1, 2^k, ..., n^k]. num_slices: n.
    stack_width / stack_depth: E and block count of each slice's NAF-stack.
    head_widths: widths of the two hidden 3x3 convs of every mean/scale/LRP head.
    spatial_context: whether each slice has a checkerboard spatial context (needed for the
    `checkerboard` mode; absent in the paper's network).
    """

    name: str
    ae_dims: tuple[int, int, int] = (192, 224, 256)
    ae_blocks: tuple[int, int, int] = (4, 4, 4)
    latent_channels: int = 320
    hyper_channels: int = 192
    num_slices: int = 5
    slice_power: float = 1.7
    stack_width: int = 224
    stack_depth: int = 4
    head_widths: tuple[int, int] = (224, 128)
    spatial_context: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def slice_sizes(self) -> list[int]:
        """Channels per slice: floor(M * p_i / sum p) with p_i = (i+1)^k, the last takes the rest."""
        props = [(i + 1) ** self.slice_power for i in range(self.num_slices)]
        sizes = [math.floor(self.latent_channels * p / sum(props)) for p in props]
        sizes[-1] += self.latent_channels - sum(sizes)
        return sizes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        for key in ("ae_dims", "ae_blocks", "head_widths"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


CONFIGS: dict[str, ModelConfig] = {
    "cca-paper": ModelConfig(name="cca-paper", spatial_context=False),
    "cca-compact": ModelConfig(
        name="cca-compact",
        ae_dims=(64, 96, 128),
        ae_blocks=(1, 1, 2),
        latent_channels=192,
        hyper_channels=128,
        stack_width=64,
        stack_depth=1,
        head_widths=(64, 48),
    ),
    "cca-tiny": ModelConfig(
        name="cca-tiny",
        ae_dims=(16, 16, 24),
        ae_blocks=(1, 1, 1),
        latent_channels=40,
        hyper_channels=16,
        stack_width=16,
        stack_depth=1,
        head_widths=(16, 16),
    ),
}


def get_config(name: str) -> ModelConfig:
    """Return the named configuration (KeyError lists the known names)."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}") from None
