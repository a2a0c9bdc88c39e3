"""Widen the transform stages of a trained network without changing what it computes.

    python -m cca_codec.modeltools.widen models/cca-compact /tmp/wide --factor 2 --stages 0,1 [--model-id ID]

Capacity where the reconstruction ceiling is made (g_a's and g_s's stages at H/2 and H/4) can be
added to a trained network instead of training a wider one from scratch (Net2WiderNet, Chen et al.
2016). Every channel of a widened stage becomes `factor` copies: the layers writing the stage's
features repeat their output rows, the layers reading them split each input channel's weights over
its copies (shares that sum to one, drawn at random so that the copies receive different gradients
and grow apart), and the per-channel parameters (LayerNorm, NAF-block residual scales, depthwise
kernels) repeat. LayerNorm over the channels sees the same mean and variance in the repeated
features, and SimpleGate's halves are repeated half by half, so the widened network computes the
same function up to float rounding. Stage 2 (H/8) is not offered: its width is also the hidden
width of the hyper-transforms.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from cca_codec.nn.blocks import NAFBlock, ResidualBottleneckBlock
from cca_codec.nn.model import CCAModel

WIDENABLE_STAGES = (0, 1)


class _Channels:
    """How a widened feature space maps onto the original one: new channel j is a copy of old
    channel `index[j]`; `share[j]` is the part of old channel index[j]'s outgoing weight that copy
    j carries (the shares of one old channel's copies sum to 1)."""

    def __init__(self, index: Tensor, generator: torch.Generator | None, spread: float) -> None:
        self.index = index
        copies = torch.bincount(index, minlength=int(index.max()) + 1).float()[index]
        share = 1.0 / copies
        if generator is not None and spread > 0:
            jitter = (torch.rand(index.shape, generator=generator) * 2 - 1) * spread
            jitter = jitter - torch.zeros_like(jitter).index_add_(0, index, jitter)[index] / copies  # sums to 0 per old channel
            share = share * (1 + jitter)
        self.share = share

    @classmethod
    def same(cls, width: int) -> "_Channels":
        return cls(torch.arange(width), None, 0.0)

    @classmethod
    def repeated(cls, width: int, factor: int, generator: torch.Generator, spread: float) -> "_Channels":
        return cls(torch.arange(width * factor) % width, generator, spread)

    @classmethod
    def gated(cls, width: int, factor: int, generator: torch.Generator, spread: float) -> "_Channels":
        """The 2C channels SimpleGate splits in halves: each half repeated on its own."""
        half = torch.arange(width * factor) % width
        return cls(torch.cat([half, half + width]), generator, spread)


def _conv(old: nn.Conv2d, new: nn.Conv2d, inp: _Channels, out: _Channels) -> None:
    """Copy a convolution (or a depthwise one, groups = channels) into its widened counterpart."""
    with torch.no_grad():
        if old.groups == 1:
            w = old.weight[out.index][:, inp.index] * inp.share[None, :, None, None]
        else:
            w = old.weight[out.index]
        new.weight.copy_(w)
        if old.bias is not None:
            new.bias.copy_(old.bias[out.index])


def _deconv(old: nn.ConvTranspose2d, new: nn.ConvTranspose2d, inp: _Channels, out: _Channels) -> None:
    """The same for a transposed convolution, whose weight is (in, out, kh, kw)."""
    with torch.no_grad():
        new.weight.copy_(old.weight[inp.index][:, out.index] * inp.share[:, None, None, None])
        if old.bias is not None:
            new.bias.copy_(old.bias[out.index])


def _per_channel(old: Tensor, new: Tensor, channels: _Channels, dim: int = 0) -> None:
    with torch.no_grad():
        new.copy_(old.index_select(dim, channels.index))


def _block(old: nn.Module, new: nn.Module, width: int, factor: int, g: torch.Generator, spread: float) -> None:
    """One residual bottleneck block or NAF-block of a stage of `width` channels."""
    stage = _Channels.repeated(width, factor, g, spread)
    if isinstance(old, ResidualBottleneckBlock):
        mid = _Channels.repeated(width // 2, factor, g, spread)
        _conv(old.conv1, new.conv1, stage, mid)
        _conv(old.conv2, new.conv2, mid, mid)
        _conv(old.conv3, new.conv3, mid, stage)
    elif isinstance(old, NAFBlock):
        gated = _Channels.gated(width, factor, g, spread)
        for norm in ("norm1", "norm2"):
            _per_channel(getattr(old, norm).weight, getattr(new, norm).weight, stage)
            _per_channel(getattr(old, norm).bias, getattr(new, norm).bias, stage)
        _conv(old.dwconv[0], new.dwconv[0], stage, gated)
        _conv(old.dwconv[1], new.dwconv[1], gated, gated)
        _conv(old.sca[1], new.sca[1], stage, stage)
        _conv(old.conv1, new.conv1, stage, stage)
        _conv(old.ffn[0], new.ffn[0], stage, gated)
        _conv(old.ffn[2], new.ffn[2], stage, stage)
        _per_channel(old.beta, new.beta, stage, dim=1)
        _per_channel(old.gamma, new.gamma, stage, dim=1)
    else:
        raise TypeError(f"cannot widen a {type(old).__name__}")


def widen(net: CCAModel, factor: int, stages: Sequence[int] = WIDENABLE_STAGES, *, spread: float = 0.2, seed: int = 0) -> CCAModel:
    """A copy of `net` whose transform stages `stages` (0 = H/2, 1 = H/4) are `factor` times wider,
    computing the same function (float rounding aside). `spread`: the relative jitter of the
    shares the copies of a channel carry (0 gives equal shares, and copies that never grow apart)."""
    if factor < 1 or any(s not in WIDENABLE_STAGES for s in stages):
        raise ValueError(f"factor must be >= 1 and stages among {WIDENABLE_STAGES}, got {factor}, {list(stages)}")
    cfg = net.cfg
    dims = [d * factor if i in stages else d for i, d in enumerate(cfg.ae_dims)]
    new_cfg = dataclasses.replace(cfg, name=f"{cfg.name}-w{factor}x{''.join(map(str, sorted(stages)))}", ae_dims=tuple(dims))
    wide = CCAModel(new_cfg, num_qualities=net.gains.num_qualities, trainable=net.trainable)
    # everything outside the widened stages carries over unchanged (shapes that differ are filled below)
    wide.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith(("g_a.", "g_s."))}, strict=False)
    g = torch.Generator().manual_seed(seed)

    def space(stage: int | None, width: int) -> _Channels:
        return _Channels.repeated(width, factor, g, spread) if stage in stages else _Channels.same(width)

    # g_a: down[i] reads stage i-1 (the image for i = 0) and writes stage i (y for i = 3)
    old_dims = [3, *cfg.ae_dims, cfg.latent_channels]
    for i in range(4):
        inp = space(i - 1 if i > 0 else None, old_dims[i])
        out = space(i if i < 3 else None, old_dims[i + 1])
        _conv(net.g_a.down[i], wide.g_a.down[i], inp, out)
    for i, (old_stage, new_stage) in enumerate(zip(net.g_a.blocks, wide.g_a.blocks)):
        for old_block, new_block in zip(old_stage, new_stage):
            if i in stages:
                _block(old_block, new_block, cfg.ae_dims[i], factor, g, spread)
            else:
                new_block.load_state_dict(old_block.state_dict())
    # g_s: up[j] reads stage 3-j (y for j = 0) and writes stage 2-j (the image for j = 3)
    for j in range(4):
        src, dst = 3 - j, 2 - j
        inp = space(src if src < 3 else None, old_dims[src + 1])
        out = space(dst if dst >= 0 else None, old_dims[dst + 1])
        _deconv(net.g_s.up[j], wide.g_s.up[j], inp, out)
    for j, (old_stage, new_stage) in enumerate(zip(net.g_s.blocks, wide.g_s.blocks)):
        stage = 2 - j
        for old_block, new_block in zip(old_stage, new_stage):
            if stage in stages:
                _block(old_block, new_block, cfg.ae_dims[stage], factor, g, spread)
            else:
                new_block.load_state_dict(old_block.state_dict())
    return wide


def main(argv: Sequence[str] | None = None) -> None:
    from cca_codec.core.checkpoint import export_weights, load_model

    p = argparse.ArgumentParser(prog="python -m cca_codec.modeltools.widen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model id or directory to widen")
    p.add_argument("out", type=Path, help="model directory to write")
    p.add_argument("--factor", type=int, default=2)
    p.add_argument("--stages", default="0,1", help="comma-separated stages: 0 (H/2), 1 (H/4)")
    p.add_argument("--model-id", default=None, help="id of the written model (default: the folder's name)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    loaded = load_model(a.model, trainable=True)
    if loaded.per_quality:
        sys.exit("error: a model with one network per quality cannot be widened")
    wide = widen(loaded.net.float(), a.factor, [int(s) for s in a.stages.split(",")], seed=a.seed)
    info = {**loaded.info, "widened_from": f"{loaded.model_id} (weights sha256 {loaded.weights_sha256.hex()[:12]})", "widen_factor": a.factor}
    out = export_weights(wide.cfg, loaded.qualities, wide.state_dict(), a.out, a.model_id or a.out.name, info)
    print(json.dumps({"model": str(out), "config": wide.cfg.to_dict(), "parameters": wide.inference_parameter_count()}, indent=2))


if __name__ == "__main__":
    main()
