"""The reconstruction ceiling: how well the transforms alone reproduce an image.

    python -m cca_codec.measure.ceiling DIR [--model ID|DIR] [--quality Q] [--limit N] [--json]

The ceiling of a model at quality q is the PSNR-RGB of ``g_s(g_a(x) * g_y * g_y_inv)``: the
analysis and synthesis transforms with that quality's gains and no quantisation at all, in
float32, the output clamped to [0, 1] and rounded to 8 bits as a decoded image is. No bit rate
buys a better image than this, so it bounds what the top qualities can reach: when the ceiling
sits barely above the top quality's PSNR, extra bits buy almost nothing and it is the
transforms, not the entropy model, that need training or capacity. PSNR per image, then
averaged (as `ccacodec eval`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cca_codec.base.errors import CodecError
from cca_codec.core.checkpoint import LoadedModel, load_model
from cca_codec.image.io import load_image
from cca_codec.image.metrics import psnr


@torch.no_grad()
def reconstruct_unquantized(model: LoadedModel, rgb: np.ndarray, quality: float) -> np.ndarray:
    """``g_s(g_a(x) * g_y * g_y_inv)`` of an (H, W, 3) uint8 image at `quality` (float32, on the
    CPU), as (H, W, 3) uint8: replicate-padded to the network's alignment, cropped back."""
    chosen = model.at_quality(quality)
    net = chosen.net.float().eval()
    h, w = rgb.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255.0)
    x = net.pad_to_alignment(x)
    g_y, g_y_inv, _, _ = net.gains(torch.tensor([float(chosen.gain_quality)]))
    x_hat = net.g_s(net.g_a(x) * g_y * g_y_inv)[0, :, :h, :w].clamp(0, 1)
    return x_hat.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def autoencoder_ceiling(model: LoadedModel, images: Sequence[Path], quality: float | None = None) -> float:
    """Mean PSNR-RGB (dB) of the unquantised reconstruction over `images`, at `quality`
    (default: the model's top quality)."""
    if not images:
        raise ValueError("no images to measure the ceiling on")
    q = float(quality if quality is not None else model.qualities[-1].quality)
    values = []
    for path in images:
        rgb = load_image(path).rgb
        values.append(psnr(rgb, reconstruct_unquantized(model, rgb, q)))
    return statistics.fmean(values)


def main(argv: Sequence[str] | None = None, prog: str = "python -m cca_codec.measure.ceiling") -> None:
    from cca_codec.image.io import find_images

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", type=Path, metavar="DIR", help="folder of images")
    p.add_argument("--model", default=None, help="model id or directory (default: the default model)")
    p.add_argument("--quality", type=float, default=None, help="quality whose gains are applied (default: the top one)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--json", action="store_true", help="print a JSON record instead of a line")
    a = p.parse_args(argv)
    try:
        model = load_model(a.model)
        images = find_images(a.directory, a.limit)
        quality = a.quality if a.quality is not None else float(model.qualities[-1].quality)
        db = autoencoder_ceiling(model, images, quality)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if a.json:
        print(json.dumps({"model": model.model_id, "quality": quality, "images": len(images), "psnr": round(db, 4)}))
    else:
        print(f"{model.model_id}: autoencoder ceiling {db:.2f} dB at quality {quality:g} over {len(images)} images")


if __name__ == "__main__":
    main()
